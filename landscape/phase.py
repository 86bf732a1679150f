"""Phases of a loss-landscape grid: per-cell aggregation of result rows, the phase rule, rank correlations.

Pure functions over pandas tables (no files, no figures). The inputs are the project's result rows:

* ``models`` rows, one per trained model: knob columns (``model.width``, ``train.batch_size``, ...),
  ``cell_id``, ``seed``, ``status`` and the local metrics (``train_loss``, ``test_acc``,
  ``hessian.top_eigenvalue``, ``hessian.trace``, ...);
* ``pairs`` rows, one per unordered pair of models of a cell (``seed_a < seed_b``): ``cell_id``, ``status``
  (when present) and the global metrics (``l2_distance``, ``cka``, ``connectivity.mc``, ...).

:func:`aggregate_cells` reduces them to one row per grid cell: for every metric ``m`` the mean ``m``, the
sample standard deviation ``m_std`` and the number of finite values ``m_n`` over the completed models
(resp. pairs) of the cell, plus ``n_rows``/``n_done`` and a cell ``status``.

The phase rule (:class:`PhaseRule`) follows Yang et al. 2021, "Taxonomizing local versus global structure in
neural network loss landscapes" (their Figure 1, drawn by hand there), as a decision tree on cell means:

=========================  ====================================  =======
training loss              mode connectivity ``mc`` / CKA         phase
=========================  ====================================  =======
high (``> train_loss``)    ``mc < mc_underfit``  (barrier)        I
high                       ``mc >= mc_underfit``                  II
low (``<= train_loss``)    ``mc < mc_barrier``   (barrier)        III
low                        ``mc >= mc_barrier``, ``cka < cka``    IV-A
low                        ``mc >= mc_barrier``, ``cka >= cka``   IV-B
=========================  ====================================  =======

Defaults: ``train_loss = 0.05`` (cross-entropy), ``mc_underfit = 0``, ``mc_barrier = -0.5`` (``mc`` in
percentage points of training error), ``cka = 0.7``. Phases I/II are poorly trained (globally
poorly / well connected); III is well trained but poorly connected; IV-A/IV-B are well trained and well
connected, with dissimilar (A) or similar (B) representations. A cell whose needed metric is missing gets
no label (``None``); CKA is only needed in the low-loss, well-connected branch.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("I", "II", "III", "IV-A", "IV-B")

#: Row columns that are never metrics (provenance, identity, bookkeeping).
NON_METRIC_COLUMNS: frozenset[str] = frozenset(
    {"cell_id", "sweep", "seed", "seed_a", "seed_b", "status", "error", "config", "schema_version", "git_commit",
     "git_dirty", "versions", "host", "device", "started_at", "finished_at", "seconds"}
)

#: Top-level config groups whose flat dotted columns are knobs (``model.width``, ``train.batch_size``, ...).
KNOB_GROUPS: tuple[str, ...] = ("data", "model", "train")


def knob_columns(df: pd.DataFrame) -> list[str]:
    """The knob columns of a row table: dotted columns under ``data.``, ``model.`` or ``train.``."""
    return [c for c in df.columns if "." in c and c.split(".", 1)[0] in KNOB_GROUPS]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric (float/int, not bool) columns of a row table that are neither knobs nor provenance."""
    knobs = set(knob_columns(df))
    out = []
    for c in df.columns:
        if c in knobs or c in NON_METRIC_COLUMNS:
            continue
        dt = df[c].dtype
        if pd.api.types.is_bool_dtype(dt) or not pd.api.types.is_numeric_dtype(dt):
            continue
        out.append(c)
    return out


def _completed(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``status == "done"`` (all rows when there is no status column)."""
    if "status" not in df.columns:
        return df
    return df[df["status"].astype(object).eq("done").to_numpy(dtype=bool)]


def _stats(done: pd.DataFrame, by: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Per group of ``by``: mean, sample std (ddof=1; NaN for one value) and count of the finite values."""
    cols: dict[str, pd.Series] = {}
    if done.empty or not metrics:
        return pd.DataFrame(columns=by).set_index(by) if by else pd.DataFrame()
    vals = done[list(by) + list(metrics)].copy()
    for m in metrics:
        vals[m] = pd.to_numeric(vals[m], errors="coerce").astype("float64")
        vals.loc[~np.isfinite(vals[m]), m] = np.nan
    g = vals.groupby(by, dropna=False)
    for m in metrics:
        cols[m] = g[m].mean()
        cols[f"{m}_std"] = g[m].std(ddof=1)
        cols[f"{m}_n"] = g[m].count()
    return pd.DataFrame(cols)


def _cell_status(statuses: pd.Series) -> str:
    """``done`` if any row of the cell completed, else its most common status (e.g. ``failed``, ``diverged``)."""
    s = statuses.dropna().astype(str)
    if (s == "done").any():
        return "done"
    if s.empty:
        return "missing"
    return str(s.value_counts().index[0])


def aggregate_cells(
    models: pd.DataFrame,
    pairs: pd.DataFrame | None,
    by: Sequence[str],
    model_metrics: Sequence[str] | None = None,
    pair_metrics: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per grid cell (= one combination of the knob columns ``by``).

    For each metric ``m`` of the models table (over the cell's ``done`` models) and of the pairs table (over
    its ``done`` pairs): ``m`` (mean), ``m_std`` (sample std, ddof=1) and ``m_n`` (number of finite values;
    NaN/inf values are left out). Also ``n_rows`` (model rows of any status), ``n_done`` (done model rows)
    and ``status``: ``done`` if any model of the cell completed, else the cell's most common model status.
    Pair rows are joined to cells through ``cell_id``. Metric lists default to every numeric non-knob,
    non-provenance column.

    Raises ``ValueError`` when a cell of ``by`` mixes rows that differ in another knob (the grid would
    silently average over it): fix that knob with a filter or make it a facet.
    """
    by = list(by)
    missing = [k for k in by if k not in models.columns]
    if missing:
        raise ValueError(f"knob columns {missing} are not in the models rows; available knobs: {knob_columns(models)}")
    if models.empty:
        raise ValueError("no models rows to aggregate")
    _check_no_hidden_knob(models, by)
    model_metrics = list(model_metrics) if model_metrics is not None else metric_columns(models)
    done = _completed(models)
    cells = _stats(done, by, model_metrics)

    status = (models["status"].astype(object) if "status" in models.columns
              else pd.Series("done", index=models.index, dtype=object))
    base = models[by].assign(_status=status)
    grouped = base.groupby(by, dropna=False)
    meta = pd.DataFrame(
        {
            "n_rows": grouped.size(),
            "n_done": grouped["_status"].agg(lambda s: int((s == "done").sum())),
            "status": grouped["_status"].agg(_cell_status),
        }
    )
    cells = meta.join(cells, how="left")

    if pairs is not None and not pairs.empty:
        if "cell_id" not in pairs.columns or "cell_id" not in models.columns:
            raise ValueError("pairs rows are joined to cells by 'cell_id', which is missing from the rows")
        pair_metrics = list(pair_metrics) if pair_metrics is not None else metric_columns(pairs)
        cell_knobs = models[["cell_id"] + by].drop_duplicates("cell_id")
        p = _completed(pairs)
        p = p[[c for c in p.columns if c not in by]].merge(cell_knobs, on="cell_id", how="inner")
        pstats = _stats(p, by, pair_metrics)
        cells = cells.join(pstats, how="left")
    for c in cells.columns:
        if c.endswith("_n") or c in ("n_rows", "n_done"):
            cells[c] = cells[c].fillna(0).astype("int64")
    return cells.reset_index()


def _check_no_hidden_knob(models: pd.DataFrame, by: list[str]) -> None:
    others = [k for k in knob_columns(models) if k not in by and k != "train.seeds"]
    varying = []
    for k in others:
        col = models[k]
        if col.map(lambda v: isinstance(v, (list, dict, np.ndarray))).any():
            continue
        n = models.groupby(by, dropna=False)[k].nunique(dropna=False)
        if (n > 1).any():
            varying.append(f"{k} (values {sorted(map(str, col.dropna().unique()))[:6]})")
    if varying:
        raise ValueError(
            f"knobs {varying} vary inside cells of {by}; fix them with a filter (KNOB=VALUE) or use one as a facet"
        )


@dataclass(frozen=True)
class PhaseRule:
    """Thresholds and column names of the phase rule (see the module docstring for the decision tree).

    ``train_loss``: a cell's mean training loss above it is "high" (phases I, II).
    ``mc_underfit``: in the high-loss branch, ``mc`` below it is a barrier (phase I), else phase II.
    ``mc_barrier``: in the low-loss branch, ``mc`` below it is a barrier (phase III), else phase IV.
    ``cka``: in phase IV, mean CKA at or above it is IV-B, below it IV-A.
    ``*_column``: the cell columns the rule reads.
    """

    train_loss: float = 0.05
    mc_underfit: float = 0.0
    mc_barrier: float = -0.5
    cka: float = 0.7
    train_loss_column: str = "train_loss"
    mc_column: str = "connectivity.mc"
    cka_column: str = "cka"

    def with_overrides(self, overrides: Mapping[str, str | float]) -> "PhaseRule":
        """A copy with fields replaced, e.g. ``{"cka": "0.6"}``; unknown names raise ``KeyError``."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        new: dict[str, object] = {}
        for key, value in overrides.items():
            if key not in fields:
                raise KeyError(f"phase threshold {key!r}={value!r}: unknown; allowed: {', '.join(fields)}")
            new[key] = value if key.endswith("_column") else float(value)
        return dataclasses.replace(self, **new)

    def label(self, train_loss: float, mc: float, cka: float) -> str | None:
        """The phase of one cell from its mean training loss, mode connectivity and CKA (None if undecidable)."""
        if not np.isfinite(train_loss) or not np.isfinite(mc):
            return None
        if train_loss > self.train_loss:
            return "I" if mc < self.mc_underfit else "II"
        if mc < self.mc_barrier:
            return "III"
        if not np.isfinite(cka):
            return None
        return "IV-B" if cka >= self.cka else "IV-A"

    def labels(self, cells: pd.DataFrame) -> pd.Series:
        """Phase label of every cell row (object Series, None where undecidable), index of ``cells``."""
        needed = [self.train_loss_column, self.mc_column, self.cka_column]
        absent = [c for c in needed if c not in cells.columns]
        if absent:
            raise KeyError(f"phase rule needs cell columns {absent}; cells have {list(cells.columns)}")
        tl, mc, ck = (cells[c].astype("float64").to_numpy() for c in needed)
        return pd.Series([self.label(a, b, c) for a, b, c in zip(tl, mc, ck)], index=cells.index, dtype=object)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["cka=0.6", "train_loss=0.1,mc_barrier=-1"]`` -> ``{"cka": "0.6", ...}`` (comma or separate items)."""
    out: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"threshold {part!r}: expected NAME=VALUE")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def phase_summary(cells: pd.DataFrame, labels: pd.Series, target: str = "test_acc") -> pd.DataFrame:
    """Per phase (in :data:`PHASES` order): number of labelled cells, of those with a finite ``target``,
    and the mean/std of the cells' ``target`` means."""
    df = pd.DataFrame({"phase": labels, "value": cells[target].astype("float64")})
    rows = []
    for ph in PHASES:
        v = df.loc[df["phase"] == ph, "value"]
        fin = v[np.isfinite(v)]
        rows.append(
            {
                "phase": ph,
                "n_cells": int(len(v)),
                f"n_{target}": int(len(fin)),
                f"{target}_mean": float(fin.mean()) if len(fin) else np.nan,
                f"{target}_std": float(fin.std(ddof=1)) if len(fin) > 1 else np.nan,
            }
        )
    return pd.DataFrame(rows)


def rank_correlations(
    cells: pd.DataFrame, metrics: Sequence[str], target: str = "test_acc", min_cells: int = 3
) -> pd.DataFrame:
    """Spearman rank correlation of each metric's cell means with the cell means of ``target``.

    One row per metric: ``rho`` (in [-1, 1]), two-sided ``p_value`` and ``n_cells`` (cells where both are
    finite). Fewer than ``min_cells`` cells, or a constant column, gives NaN.
    """
    rows = []
    y_all = cells[target].astype("float64")
    for m in metrics:
        if m == target or m not in cells.columns:
            continue
        x_all = cells[m].astype("float64")
        ok = np.isfinite(x_all) & np.isfinite(y_all)
        n = int(ok.sum())
        rho = p = np.nan
        if n >= min_cells and x_all[ok].nunique() > 1 and y_all[ok].nunique() > 1:
            res = stats.spearmanr(x_all[ok], y_all[ok])
            rho, p = float(res.statistic), float(res.pvalue)
        rows.append({"metric": m, "target": target, "rho": rho, "p_value": p, "n_cells": n})
    return pd.DataFrame(rows, columns=["metric", "target", "rho", "p_value", "n_cells"])
