"""Phases of a loss-landscape grid: per-cell aggregation, the phase rule and its thresholds, label confidence,
calibration of thresholds from a sweep's own cells, and rank correlations. The statistics these use (the
two-component mixture of the calibration, the variance prior and predictive draws of the confidence, Spearman's
rho and its p-value) are in :mod:`landscape.phase_stats`, re-exported here.

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

=====================================  ====================================  =======
training loss (or training error)      mode connectivity ``mc`` / CKA         phase
=====================================  ====================================  =======
high (``> train_loss``)                ``mc < mc_underfit``  (barrier)        I
high                                   ``mc >= mc_underfit``                  II
low (``<= train_loss``)                ``mc < mc_barrier``   (barrier)        III
low                                    ``mc >= mc_barrier``, ``cka < cka``    IV-A
low                                    ``mc >= mc_barrier``, ``cka >= cka``   IV-B
=====================================  ====================================  =======

Units: ``train_loss`` in nats (mean cross-entropy per training sample); or, instead, ``train_error`` in percent
of the training set misclassified (``100 (1 - train_acc)``); ``mc_underfit`` and ``mc_barrier`` in percentage
points of training error (the unit of ``connectivity.mc``); ``cka`` unitless in [0, 1].

The paper's values (:data:`PAPER_THRESHOLDS`: 0.05 nats, 0 pp, -0.5 pp, 0.7), fitted to the published CIFAR-10
results, are the default and are available by name (``paper``). :func:`calibrate` derives thresholds from a
sweep's own cells instead (``calibrate``): the training-loss threshold is the split of a two-component Gaussian
mixture (one shared variance, fitted by EM) of the cells' log10 training loss, used only when the two components are clearly separated
(Ashman's D > 2 and a better BIC than one Gaussian); the CKA threshold likewise from the CKA of the
well-trained, well-connected cells. Where the data show no two groups, the base (paper) value is kept and the
reason recorded.

Labels hold whatever further curve training does (:func:`bounded_labels`: a pair whose mc was still moving when
its curve's protocol stopped is a bound, used only where it decides the label). Every label gets a confidence
(:func:`label_confidence`): the probability that a rerun of the cell with new seeds gives the same label, by
seeded Monte Carlo from a predictive distribution of each mean the rule reads; unknown values (models without
a fit value, pairs without an mc) are imputed from the grid's values, so they count as doubt, never dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

import landscape.metrics as metrics_contract
from landscape.phase_stats import (  # noqa: F401 - re-exported: the statistics live in landscape.phase_stats
    EXACT,
    LOWER,
    NOT_A_SLOT,
    NU0_DEFAULT,
    NU0_MAX,
    NU0_MIN,
    PAIR_MODEL_SHARE,
    UNKNOWN,
    UPPER,
    Mixture2,
    VariancePrior,
    fit_mixture2,
    measured_values,
    pair_design_effect,
    predictive_means,
    rounding_variance,
    spearman,
    student_t_two_sided,
    variance_prior,
    variance_scale,
)

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("I", "II", "III", "IV-A", "IV-B")

#: The paper's thresholds (fitted to the published CIFAR-10 results, tests/data/taxonomy2021): the one place
#: they are written down. ``train_loss`` nats, ``mc_*`` percentage points of training error, ``cka`` unitless.
PAPER_THRESHOLDS: dict[str, float] = {"train_loss": 0.05, "mc_underfit": 0.0, "mc_barrier": -0.5, "cka": 0.7}

#: Named threshold sets of ``landscape-phase --thresholds NAME`` and of a sweep file's ``phase.thresholds``.
THRESHOLD_PRESETS: tuple[str, ...] = ("paper", "calibrate")

#: Unit of each threshold (for tables, manifests and colour bars).
THRESHOLD_UNITS: dict[str, str] = {
    "train_loss": "nats",
    "train_error": "% of training set",
    "mc_underfit": "pp of training error",
    "mc_barrier": "pp of training error",
    "cka": "unitless",
}

#: Top-level config groups whose flat dotted columns are knobs (``model.width``, ``train.batch_size``, ...).
KNOB_GROUPS: tuple[str, ...] = ("data", "model", "train")

#: Columns derived here from a family's metric (``train_error`` in % from ``train_acc``) and their family.
DERIVED_METRICS: dict[str, str] = {"train_error": "training"}


def knob_columns(df: pd.DataFrame) -> list[str]:
    """The knob columns of a row table: dotted columns under ``data.``, ``model.`` or ``train.``."""
    return [c for c in df.columns if "." in c and c.split(".", 1)[0] in KNOB_GROUPS]


# --------------------------------------------------------------------------- which columns are metrics
def family_of(column: str) -> str:
    """The metric family that writes ``column`` (``connectivity.mc`` -> ``connectivity``, ``cka`` -> ``cka``,
    ``train_loss`` -> ``training``), from the family contract (``landscape.metrics.family_of``); a derived
    column (``train_error``) is named after the family of its source; anything else after its dotted prefix."""
    if column in DERIVED_METRICS:
        return DERIVED_METRICS[column]
    try:
        return metrics_contract.family_of(column)
    except KeyError:
        return column.split(".", 1)[0]


def metric_columns(df: pd.DataFrame, table: str | None = None) -> list[str]:
    """The metric columns of a row table present in ``df`` with numeric values (``table``: ``models`` or
    ``pairs``; default: ``pairs`` when it has a ``seed_a`` column), as the family contract declares them
    (``landscape.metrics.metric_columns``): measured values, never knobs, provenance, settings, counts, timings
    or uncertainties."""
    table = table or ("pairs" if "seed_a" in df.columns else "models")
    return [
        m
        for m in metrics_contract.metric_columns(table)
        if m in df.columns
        and pd.api.types.is_numeric_dtype(df[m].dtype)
        and not pd.api.types.is_bool_dtype(df[m].dtype)
    ]


def one_row_per_model(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per model (``cell_id``, ``seed``) of a ``models`` table, or per pair (``cell_id``, ``seed_a``,
    ``seed_b``) of a ``pairs`` table. A sweep directory keeps a row for every request of a cell with other
    metric settings (nothing computed is lost), so a model can have several rows, e.g. one from a run without
    the Hessian and one with it; for analysis each column takes the newest non-null value of the model's rows
    (rows ordered by ``finished_at``), so a model counts once in a cell's means and bootstrap."""
    keys = ["cell_id", "seed_a", "seed_b"] if "seed_a" in rows.columns else ["cell_id", "seed"]
    if rows.empty or not set(keys) <= set(rows.columns) or not rows.duplicated(keys).any():
        return rows
    ordered = rows.sort_values("finished_at", kind="stable") if "finished_at" in rows.columns else rows
    out = ordered.groupby(keys, sort=False, dropna=False).last().reset_index()
    return out[list(rows.columns)].astype(rows.dtypes.to_dict())


def ran(cells_or_rows: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` holds at least one finite value (its family ran somewhere)."""
    if column not in cells_or_rows.columns:
        return False
    v = pd.to_numeric(cells_or_rows[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.isfinite(v).any())


# --------------------------------------------------------------------------- aggregation
def _completed(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with ``status == "done"`` (all rows when there is no status column)."""
    if "status" not in df.columns:
        return df
    return df[df["status"].astype(object).eq("done").to_numpy(dtype=bool)]


def _float_frame(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    out = {}
    for m in cols:
        v = pd.to_numeric(df[m], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        out[m] = np.where(np.isfinite(v), v, np.nan)
    return pd.DataFrame(out, index=df.index)


def _stats(done: pd.DataFrame, by: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Per group of ``by``: mean, sample std (ddof=1; NaN for one value) and count of the finite values."""
    if done.empty or not metrics:
        return pd.DataFrame(columns=by).set_index(by) if by else pd.DataFrame()
    vals = pd.concat([done[list(by)], _float_frame(done, metrics)], axis=1)
    g = vals.groupby(by, dropna=False)
    mean, std, count = g[list(metrics)].mean(), g[list(metrics)].std(ddof=1), g[list(metrics)].count()
    cols: dict[str, pd.Series] = {}
    for m in metrics:
        cols[m] = mean[m]
        cols[f"{m}_std"] = std[m]
        cols[f"{m}_n"] = count[m]
    return pd.DataFrame(cols)


def _cell_status(statuses: pd.Series) -> str:
    """``done`` if any row of the cell completed, else its most common status (e.g. ``failed``, ``diverged``)."""
    s = statuses.dropna().astype(str)
    if (s == "done").any():
        return "done"
    if s.empty:
        return "missing"
    return str(s.value_counts().index[0])


def add_train_error(models: pd.DataFrame) -> pd.DataFrame:
    """``models`` with a ``train_error`` column: percent of the training set misclassified, ``100 (1 -
    train_acc)`` (unchanged when there is no ``train_acc`` or already a ``train_error``)."""
    if "train_acc" not in models.columns or "train_error" in models.columns:
        return models
    acc = pd.to_numeric(models["train_acc"], errors="coerce").astype("float64")
    return models.assign(train_error=100.0 * (1.0 - acc))


def _first_errors(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Per cell, the first non-null reason of every ``<family>.error`` string column (the contract's typed
    null with a reason)."""
    cols = [c for c in rows.columns if c.endswith(".error")]
    if not cols or rows.empty:
        return pd.DataFrame()
    g = rows[list(by) + cols].groupby(by, dropna=False)
    return g[cols].first()


def aggregate_cells(
    models: pd.DataFrame,
    pairs: pd.DataFrame | None,
    by: Sequence[str],
    model_metrics: Sequence[str] | None = None,
    pair_metrics: Sequence[str] | None = None,
    mc_column: str = "connectivity.mc",
) -> pd.DataFrame:
    """One row per grid cell (= one combination of the knob columns ``by``).

    For each metric ``m`` of the models table (over the cell's ``done`` models) and of the pairs table (over
    its ``done`` pairs): ``m`` (mean), ``m_std`` (sample std, ddof=1) and ``m_n`` (number of finite values;
    NaN/inf values are left out). Also ``n_rows`` (model rows of any status), ``n_done`` (done model rows),
    ``n_pairs`` (done pair rows), ``status`` (``done`` if any model of the cell completed, else the cell's most
    common model status) and the first reason of each ``<family>.error`` column. Pair rows are joined to cells
    through ``cell_id``. Metric lists default to :func:`metric_columns` (``train_error`` in % is derived from
    ``train_acc``).

    A model (pair) with several rows (requests with other metric settings) counts once: see
    :func:`one_row_per_model`. The mean of ``mc_column`` is over the pairs with a finite value, exact or a
    bound (:func:`resolved_mc` nulls the values of older sweeps' curves that did not converge).

    Raises ``ValueError`` when a cell of ``by`` mixes rows that differ in another knob (the grid would
    silently average over it): fix that knob with a filter or make it a facet.
    """
    by = list(by)
    missing = [k for k in by if k not in models.columns]
    if missing:
        raise ValueError(f"knob columns {missing} are not in the models rows; available knobs: {knob_columns(models)}")
    if models.empty:
        raise ValueError("no models rows to aggregate")
    models = one_row_per_model(models)
    pairs = resolved_mc(one_row_per_model(pairs), mc_column) if pairs is not None else None
    _check_no_hidden_knob(models, by)
    models = add_train_error(models)
    model_metrics = list(model_metrics) if model_metrics is not None else metric_columns(models, "models")
    if "train_error" in models.columns and "train_error" not in model_metrics:
        model_metrics.append("train_error")
    done = _completed(models)
    cells = _stats(done, by, model_metrics)

    status = (
        models["status"].astype(object)
        if "status" in models.columns
        else pd.Series("done", index=models.index, dtype=object)
    )
    base = models[by].assign(_status=status, _done=status.eq("done").astype("int64"))
    grouped = base.groupby(by, dropna=False)
    meta = pd.DataFrame(
        {
            "n_rows": grouped.size(),
            "n_done": grouped["_done"].sum(),
            "status": grouped["_status"].agg(_cell_status),
        }
    )
    cells = meta.join(cells, how="left")
    errors = [_first_errors(done, by)]

    if pairs is not None and not pairs.empty:
        if "cell_id" not in pairs.columns or "cell_id" not in models.columns:
            raise ValueError("pairs rows are joined to cells by 'cell_id', which is missing from the rows")
        pair_metrics = list(pair_metrics) if pair_metrics is not None else metric_columns(pairs, "pairs")
        p = _pairs_with_knobs(models, pairs, by)
        pstats = _stats(p, by, pair_metrics)
        cells = cells.join(pstats, how="left")
        cells = cells.join(p.groupby(by, dropna=False).size().rename("n_pairs"), how="left")
        errors.append(_first_errors(p, by))
    for e in errors:
        if not e.empty:
            cells = cells.join(e, how="left")
    for c in cells.columns:
        if c.endswith("_n") or c in ("n_rows", "n_done", "n_pairs"):
            cells[c] = cells[c].fillna(0).astype("int64")
    if "n_pairs" not in cells.columns:
        cells["n_pairs"] = 0
    return cells.reset_index()


def _pairs_with_knobs(models: pd.DataFrame, pairs: pd.DataFrame, by: list[str], done_only: bool = True) -> pd.DataFrame:
    """The done pair rows (every pair row with ``done_only=False``) with the cell's knob values ``by`` (joined
    through ``cell_id``)."""
    cell_knobs = models[["cell_id"] + by].drop_duplicates("cell_id")
    p = _completed(pairs) if done_only else pairs
    return p[[c for c in p.columns if c not in by]].merge(cell_knobs, on="cell_id", how="inner")


def _check_no_hidden_knob(models: pd.DataFrame, by: list[str]) -> None:
    others = [k for k in knob_columns(models) if k not in by and k != "train.seeds"]
    varying = []
    for k in others:
        col = models[k]
        if col.dtype == object and col.map(lambda v: isinstance(v, (list, dict, np.ndarray))).any():
            continue
        n = models.groupby(by, dropna=False)[k].nunique(dropna=False)
        if (n > 1).any():
            varying.append(f"{k} (values {sorted(map(str, col.dropna().unique()))[:6]})")
    if varying:
        raise ValueError(
            f"knobs {varying} vary inside cells of {by}; fix them with a filter (KNOB=VALUE) or use one as a facet"
        )


# --------------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class PhaseRule:
    """Thresholds and column names of the phase rule (see the module docstring for the decision tree).

    ``train_loss`` (nats): a cell's mean training loss above it is "high" (phases I, II). Or ``train_error``
    (% of the training set misclassified) instead, when set: then ``train_loss`` is not used.
    ``mc_underfit`` (pp of training error): in the high-loss branch, ``mc`` below it is a barrier (I), else II.
    ``mc_barrier`` (pp of training error): in the low-loss branch, ``mc`` below it is a barrier (III), else IV.
    ``cka`` (unitless): in phase IV, mean CKA at or above it is IV-B, below it IV-A.
    ``*_column``: the cell columns the rule reads. ``source``: where each value came from (for reports).
    """

    train_loss: float = PAPER_THRESHOLDS["train_loss"]
    mc_underfit: float = PAPER_THRESHOLDS["mc_underfit"]
    mc_barrier: float = PAPER_THRESHOLDS["mc_barrier"]
    cka: float = PAPER_THRESHOLDS["cka"]
    train_error: float | None = None
    train_loss_column: str = "train_loss"
    train_error_column: str = "train_error"
    mc_column: str = "connectivity.mc"
    cka_column: str = "cka"
    source: str = "paper"

    @classmethod
    def paper(cls) -> "PhaseRule":
        """The paper's thresholds (:data:`PAPER_THRESHOLDS`)."""
        return cls(**PAPER_THRESHOLDS, source="paper")

    THRESHOLD_NAMES = ("train_loss", "train_error", "mc_underfit", "mc_barrier", "cka")

    def with_overrides(self, overrides: Mapping[str, Any]) -> "PhaseRule":
        """A copy with fields replaced, e.g. ``{"cka": "0.6"}``; unknown names raise ``KeyError``, values
        that are not numbers ``ValueError`` (both naming the key and what is allowed)."""
        fields = {f.name for f in dataclasses.fields(self)} - {"source"}
        new: dict[str, object] = {}
        for key, value in overrides.items():
            if key not in fields:
                raise KeyError(f"phase threshold {key}={value!r}: unknown; allowed: {', '.join(sorted(fields))}")
            if key.endswith("_column"):
                new[key] = str(value)
                continue
            if value is None or (key == "train_error" and str(value).lower() in ("none", "null", "")):
                if key != "train_error":
                    raise ValueError(f"phase threshold {key}={value!r}: expected a number ({THRESHOLD_UNITS[key]})")
                new[key] = None
                continue
            try:
                new[key] = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"phase threshold {key}={value!r}: expected a number ({THRESHOLD_UNITS[key]})"
                ) from None
            if key == "cka" and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"phase threshold cka={value!r}: expected a number in [0, 1]")
            if key in ("train_loss", "train_error") and float(value) <= 0:
                raise ValueError(f"phase threshold {key}={value!r}: expected a number > 0 ({THRESHOLD_UNITS[key]})")
        return dataclasses.replace(self, **new)

    @property
    def fit_column(self) -> str:
        """The cell column of the first split: ``train_error`` when that threshold is set, else ``train_loss``."""
        return self.train_error_column if self.train_error is not None else self.train_loss_column

    @property
    def fit_threshold(self) -> float:
        return float(self.train_error) if self.train_error is not None else float(self.train_loss)

    @property
    def columns(self) -> tuple[str, str, str]:
        """``(fit column, mc column, cka column)``: the cell columns the rule reads."""
        return self.fit_column, self.mc_column, self.cka_column

    def thresholds(self) -> dict[str, dict[str, Any]]:
        """``{name: {"value", "unit"}}`` of the thresholds in use (``train_loss`` or ``train_error``)."""
        names = ["train_error" if self.train_error is not None else "train_loss", "mc_underfit", "mc_barrier", "cka"]
        return {n: {"value": getattr(self, n), "unit": THRESHOLD_UNITS[n]} for n in names}

    def describe(self) -> str:
        """One line: the thresholds with their units and where they came from."""
        t = self.thresholds()
        first = "train_error" if self.train_error is not None else "train_loss"
        fit = (
            f"training error {t[first]['value']:g} %"
            if first == "train_error"
            else f"training loss {t[first]['value']:g} nats"
        )
        return (
            f"thresholds ({self.source}): {fit}; mc_underfit {self.mc_underfit:g} pp, "
            f"mc_barrier {self.mc_barrier:g} pp (of training error); CKA {self.cka:g}"
        )

    def codes(self, fit: np.ndarray, mc: np.ndarray, cka: np.ndarray) -> np.ndarray:
        """Vectorised rule: index into :data:`PHASES` of each element (int8, -1 where undecidable). Arrays of
        any common shape: the fit-column, mc and CKA means."""
        fit, mc, cka = (np.asarray(a, dtype=np.float64) for a in (fit, mc, cka))
        out = np.full(np.broadcast(fit, mc, cka).shape, -1, dtype=np.int8)
        ok = np.isfinite(fit) & np.isfinite(mc)
        high = ok & (fit > self.fit_threshold)
        low = ok & ~(fit > self.fit_threshold)
        out[high & (mc < self.mc_underfit)] = 0
        out[high & ~(mc < self.mc_underfit)] = 1
        out[low & (mc < self.mc_barrier)] = 2
        conn = low & ~(mc < self.mc_barrier) & np.isfinite(cka)
        out[conn & (cka < self.cka)] = 3
        out[conn & ~(cka < self.cka)] = 4
        return out

    def label(self, fit: float, mc: float, cka: float) -> str | None:
        """The phase of one cell from its mean training loss (or error), mode connectivity and CKA (None if
        undecidable: the fit value or mc is missing, or CKA where it is needed)."""
        code = int(self.codes(np.array(fit), np.array(mc), np.array(cka)))
        return PHASES[code] if code >= 0 else None

    def labels(self, cells: pd.DataFrame) -> pd.Series:
        """Phase label of every cell row (object Series, None where undecidable), index of ``cells``.
        A needed column that is absent is treated as missing everywhere."""
        arrays = [_col(cells, c) for c in self.columns]
        codes = self.codes(*arrays)
        return pd.Series([PHASES[c] if c >= 0 else None for c in codes], index=cells.index, dtype=object)


def _col(cells: pd.DataFrame, column: str) -> np.ndarray:
    if column not in cells.columns:
        return np.full(len(cells), np.nan)
    return pd.to_numeric(cells[column], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["cka=0.6", "train_loss=0.1,mc_barrier=-1"]`` -> ``{"cka": "0.6", ...}`` (comma or separate items)."""
    out: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"threshold {part!r}: expected NAME=VALUE or one of {', '.join(THRESHOLD_PRESETS)}")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


# --------------------------------------------------------------------------- calibration
#: Floors of the log10 transform of the fit column before calibration (nats; percent).
_LOG_FLOOR = {"train_loss": 1e-6, "train_error": 1e-2}


def calibrate(cells: pd.DataFrame, base: PhaseRule | None = None) -> tuple[PhaseRule, dict[str, Any]]:
    """Thresholds from the sweep's own cells (see the module docstring). Returns the rule (``source =
    "calibrate"``) and a report ``{threshold: {"value", "method", "n", ...}}`` saying for each threshold
    whether it was derived (and from what) or kept from ``base`` (and why). The mc thresholds are kept:
    they are in percentage points of training error, a unit that travels between datasets."""
    base = base or PhaseRule.paper()
    report: dict[str, Any] = {}
    new: dict[str, float] = {}
    first = "train_error" if base.train_error is not None else "train_loss"
    v = _col(cells, base.fit_column)
    v = v[np.isfinite(v)]
    floor = _LOG_FLOOR[first]
    entry: dict[str, Any] = {"n": int(v.size), "method": f"2-Gaussian mixture of log10({first})"}
    if v.size >= 4:
        mix = fit_mixture2(np.log10(np.maximum(v, floor)))
        entry.update(
            ashman_d=round(mix.ashman_d, 3),
            bic_two=round(mix.bic, 3),
            bic_one=round(mix.bic_one, 3),
            groups=list(mix.counts),
            means=[float(10**m) for m in mix.means],
        )
        if mix.bimodal:
            new[first] = float(10**mix.threshold)
            entry.update(value=new[first], derived=True)
        else:
            entry.update(
                value=getattr(base, first),
                derived=False,
                reason="no two groups of cells (Ashman's D <= 2, or one Gaussian fits as well)",
            )
    else:
        entry.update(value=getattr(base, first), derived=False, reason=f"only {v.size} cells with a value (need 4)")
    report[first] = entry
    rule = base.with_overrides(new)

    fit, mc, ck = (_col(cells, c) for c in rule.columns)
    well = np.isfinite(fit) & (fit <= rule.fit_threshold) & np.isfinite(mc) & (mc >= rule.mc_barrier) & np.isfinite(ck)
    c = ck[well]
    entry = {"n": int(c.size), "method": "2-Gaussian mixture of the CKA of well-trained, well-connected cells"}
    if c.size >= 4:
        mix = fit_mixture2(c)
        entry.update(
            ashman_d=round(mix.ashman_d, 3),
            bic_two=round(mix.bic, 3),
            bic_one=round(mix.bic_one, 3),
            groups=list(mix.counts),
            means=list(mix.means),
            range=[float(c.min()), float(c.max())],
        )
        if mix.bimodal:
            new_cka = float(mix.threshold)
            rule = rule.with_overrides({"cka": new_cka})
            entry.update(value=new_cka, derived=True)
        else:
            entry.update(
                value=rule.cka,
                derived=False,
                reason=f"CKA of these cells is one group ({c.min():.3f}-{c.max():.3f}): no IV-A/IV-B split",
            )
    else:
        entry.update(value=rule.cka, derived=False, reason=f"only {c.size} well-trained, well-connected cells (need 4)")
    report["cka"] = entry
    for k in ("mc_underfit", "mc_barrier"):
        report[k] = {
            "value": getattr(rule, k),
            "derived": False,
            "reason": "pp of training error: kept from " + base.source,
        }
    return dataclasses.replace(rule, source="calibrate"), report


def resolve_rule(
    preset: str | None = None, overrides: Mapping[str, Any] | None = None, cells: pd.DataFrame | None = None
) -> tuple[PhaseRule, dict[str, Any]]:
    """The rule of a preset (``paper`` | ``calibrate``; default ``paper``) with explicit ``overrides`` on top
    (``{name: value}``, applied before calibrating so that calibration starts from them, and again after so that
    an explicit value always wins). ``cells`` are needed for ``calibrate``. Returns ``(rule, calibration report)``."""
    preset = preset or "paper"
    if preset not in THRESHOLD_PRESETS:
        raise ValueError(f"phase thresholds {preset!r}: expected one of {', '.join(THRESHOLD_PRESETS)} (or NAME=VALUE)")
    overrides = dict(overrides or {})
    rule = PhaseRule.paper().with_overrides(overrides)
    report: dict[str, Any] = {}
    if preset == "calibrate":
        if cells is None:
            raise ValueError("phase thresholds 'calibrate' need the sweep's cells")
        rule, report = calibrate(cells, rule)
        explicit = {k: v for k, v in overrides.items() if not k.endswith("_column")}
        if explicit:
            rule = rule.with_overrides(explicit)
            for k in explicit:
                report[k] = {"value": getattr(rule, k), "derived": False, "reason": "set explicitly"}
    else:
        changed = {
            k: getattr(rule, k) for k in PhaseRule.THRESHOLD_NAMES if getattr(rule, k) != getattr(PhaseRule.paper(), k)
        }
        if changed:
            rule = dataclasses.replace(rule, source="paper with " + ", ".join(f"{k}={v:g}" for k, v in changed.items()))
    return rule, report


# --------------------------------------------------------------------------- resolution of values
# (the kinds of a value slot, EXACT, LOWER, UPPER, UNKNOWN and NOT_A_SLOT: landscape.phase_stats)
#: A value of mc past every threshold, standing for "+infinity" (the rule needs finite values).
_FAR = 1e300


def slot_kinds(rows: pd.DataFrame, column: str, table: str, bounds: bool = False) -> np.ndarray:
    """``[len(rows)]`` int8: the kind of each row's ``column`` value (:data:`EXACT`, :data:`LOWER`, :data:`UPPER`,
    :data:`UNKNOWN`, :data:`NOT_A_SLOT`).

    ``models`` rows: every model is a slot of its fit value: exact when the row is ``done`` with a finite value,
    unknown otherwise (diverged, failed, any status). ``pairs`` rows: a pair that is not ``done`` is an unknown
    slot; a done pair with a finite value is exact; a done pair without one is an unknown slot when its family
    says it tried (``<family>.error`` set, or for a bounded column a ``<family>.converged`` flag) and no slot
    otherwise (not computed by design). ``bounds`` (the mc column): ``<column>_bound`` = ``lower``/``upper``
    makes a finite value a bound; a finite value with ``<family>.converged = false`` and no bound (rows of
    older sweeps) is unknown."""
    n = len(rows)
    v = _col(rows, column)
    fin = np.isfinite(v)
    done = (
        rows["status"].astype(object).eq("done").to_numpy(dtype=bool)
        if "status" in rows.columns
        else np.ones(n, dtype=bool)
    )
    out = np.full(n, UNKNOWN, dtype=np.int8)
    if table == "models":
        out[done & fin] = EXACT
        return out
    fam = family_of(column)
    tried = np.zeros(n, dtype=bool)
    if f"{fam}.error" in rows.columns:
        tried |= rows[f"{fam}.error"].notna().to_numpy(dtype=bool)
    exact = done & fin
    if bounds:
        conv_col, bound_col = f"{fam}.converged", f"{column}_bound"
        if conv_col in rows.columns:
            conv = rows[conv_col].astype("boolean")
            tried |= conv.notna().to_numpy(dtype=bool)
            exact &= ~(~conv).fillna(False).to_numpy(dtype=bool)
        if bound_col in rows.columns:
            b = rows[bound_col].astype("string").fillna("").to_numpy(dtype=object)
            tried |= b != ""
            lower, upper = done & fin & (b == "lower"), done & fin & (b == "upper")
            out[lower], out[upper] = LOWER, UPPER
            exact &= ~(lower | upper)
    out[exact] = EXACT
    out[done & ~fin & ~tried] = NOT_A_SLOT
    return out


def resolved_mc(pairs: pd.DataFrame, column: str = "connectivity.mc") -> pd.DataFrame:
    """``pairs`` with ``column`` nulled where the value is not a result: a finite mc of a curve that did not
    converge and carries no bound (rows of older sweeps, ``<family>.converged = false``). Exact values and
    bounds are kept."""
    if column not in pairs.columns or pairs.empty:
        return pairs
    kinds = slot_kinds(pairs, column, "pairs", bounds=True)
    drop = (kinds == UNKNOWN) & np.isfinite(_col(pairs, column))
    if not drop.any():
        return pairs
    out = pairs.copy()
    out[column] = _col(pairs, column)
    out.loc[drop, column] = np.nan
    return out


def _cell_slots(
    models: pd.DataFrame, pairs: pd.DataFrame | None, by: list[str], rule: PhaseRule
) -> tuple[dict[tuple, np.ndarray], dict[str, dict[tuple, tuple[np.ndarray, np.ndarray]]]]:
    """Per cell key (tuple of ``by`` values): its model rows' statuses, and for each of the rule's columns the
    ``(values, kinds)`` of its slots (NOT_A_SLOT rows left out)."""
    fit_col, mc_col, cka_col = rule.columns
    m = add_train_error(one_row_per_model(models))
    slots: dict[str, dict[tuple, tuple[np.ndarray, np.ndarray]]] = {fit_col: {}, mc_col: {}, cka_col: {}}
    n_models: dict[tuple, np.ndarray] = {}
    fv, fk = _col(m, fit_col), slot_kinds(m, fit_col, "models")
    for key, idx in m.groupby(by, dropna=False).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        slots[fit_col][key] = (fv[idx], fk[idx])
        n_models[key] = idx
    if pairs is not None and not pairs.empty and "cell_id" in m.columns:
        p = _pairs_with_knobs(m, one_row_per_model(pairs), by, done_only=False)
        if not p.empty:
            cols = {
                mc_col: (_col(p, mc_col), slot_kinds(p, mc_col, "pairs", bounds=True)),
                cka_col: (_col(p, cka_col), slot_kinds(p, cka_col, "pairs")),
            }
            for key, idx in p.groupby(by, dropna=False).indices.items():
                key = key if isinstance(key, tuple) else (key,)
                for c, (v, k) in cols.items():
                    keep = idx[k[idx] != NOT_A_SLOT]
                    slots[c][key] = (v[keep], k[keep])
    return n_models, slots


def resolution_counts(
    models: pd.DataFrame, pairs: pd.DataFrame | None, cells: pd.DataFrame, by: Sequence[str], rule: PhaseRule
) -> pd.DataFrame:
    """Per cell (on ``cells``' index): ``n_models_total`` (model rows, any status), ``n_models`` (done, with a
    finite fit value), ``n_pairs_total`` (pairs that are slots of mc: see :func:`slot_kinds`), ``n_pairs_exact``
    (converged), ``n_pairs_lower`` / ``n_pairs_upper`` (bounds), ``n_pairs_bounded`` (their sum),
    ``n_pairs_unknown``, ``n_pairs_mc`` (a finite mc: exact or bounded), ``n_pairs_resolved`` (exact, or a bound
    beyond every mc threshold of ``rule``: a lower bound above both, an upper bound below both, which no further
    training moves across a threshold) and ``share_unresolved`` (pairs not resolved / pairs total; NaN without
    pairs)."""
    by = list(by)
    fit_col, mc_col, _ = rule.columns
    top, bottom = max(rule.mc_underfit, rule.mc_barrier), min(rule.mc_underfit, rule.mc_barrier)
    n_idx, slots = _cell_slots(models, pairs, by, rule)
    rows = []
    for key in cells[by].itertuples(index=False, name=None):
        _, fk = slots[fit_col].get(key, (np.empty(0), np.empty(0, dtype=np.int8)))
        mv, mk = slots[mc_col].get(key, (np.empty(0), np.empty(0, dtype=np.int8)))
        resolved = int(((mk == EXACT) | ((mk == LOWER) & (mv > top)) | ((mk == UPPER) & (mv < bottom))).sum())
        counts = {
            k: int((mk == code).sum())
            for k, code in (
                ("n_pairs_exact", EXACT),
                ("n_pairs_lower", LOWER),
                ("n_pairs_upper", UPPER),
                ("n_pairs_unknown", UNKNOWN),
            )
        }
        total = int(mk.size)
        rows.append(
            {
                "n_models_total": int(len(n_idx.get(key, ()))),
                "n_models": int((fk == EXACT).sum()),
                "n_pairs_total": total,
                **counts,
                "n_pairs_bounded": counts["n_pairs_lower"] + counts["n_pairs_upper"],
                "n_pairs_mc": total - counts["n_pairs_unknown"],
                "n_pairs_resolved": resolved,
                "share_unresolved": (total - resolved) / total if total else np.nan,
            }
        )
    cols = [
        "n_models_total",
        "n_models",
        "n_pairs_total",
        "n_pairs_exact",
        "n_pairs_lower",
        "n_pairs_upper",
        "n_pairs_bounded",
        "n_pairs_unknown",
        "n_pairs_mc",
        "n_pairs_resolved",
        "share_unresolved",
    ]
    return pd.DataFrame(rows, columns=cols, index=cells.index)


def bounded_labels(cells: pd.DataFrame, rule: PhaseRule, counts: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Labels that hold whatever further curve training does: ``(labels, reasons)`` on ``cells``' index.

    A cell's mc mean (``cells[rule.mc_column]``, over its pairs with a finite mc, exact and bounded) is a lower
    bound of the converged mean when some of its pairs are lower bounds (``counts["n_pairs_lower"] > 0``), an
    upper bound with upper bounds. The rule is monotone in mc, so its label at the mean is kept only where it
    equals the label at the far end of the possible interval (``[mean, +inf)`` for lower bounds, ``(-inf,
    mean]`` for upper ones, both ends with both kinds); otherwise the label is None and ``reasons`` says ``mc
    still moving in k of n pairs``. ``reasons`` is None for every other cell."""
    fit, mc, ck = (_col(cells, c) for c in rule.columns)
    base = rule.codes(fit, mc, ck)
    lower = counts["n_pairs_lower"].to_numpy() > 0
    upper = counts["n_pairs_upper"].to_numpy() > 0
    at_top = rule.codes(fit, np.where(np.isfinite(mc), _FAR, mc), ck)
    at_bottom = rule.codes(fit, np.where(np.isfinite(mc), -_FAR, mc), ck)
    decided = (~lower | (at_top == base)) & (~upper | (at_bottom == base))
    labels, reasons = [], []
    moving = (counts["n_pairs_lower"] + counts["n_pairs_upper"]).to_numpy()
    total = counts["n_pairs_total"].to_numpy()
    for i, code in enumerate(base):
        if code >= 0 and decided[i]:
            labels.append(PHASES[code])
            reasons.append(None)
        elif code >= 0:
            labels.append(None)
            reasons.append(f"mc still moving in {int(moving[i])} of {int(total[i])} pairs")
        else:
            labels.append(None)
            reasons.append(None)
    return (pd.Series(labels, index=cells.index, dtype=object), pd.Series(reasons, index=cells.index, dtype=object))


# --------------------------------------------------------------------------- confidence of the labels
#: A label from fewer exact (converged) pairs than this is marked on the map and named in a warning.
MIN_RESOLVED_PAIRS = 2


def _prior_for(
    slots: Mapping[tuple, tuple[np.ndarray, np.ndarray]],
    log_floor: float | None,
    nu0: float | None,
    min_var: float = 0.0,
) -> tuple[VariancePrior, np.ndarray]:
    """A metric's variance prior and its imputation pool.

    The prior is fitted to each cell's spread between seeds of its measured values (on the log scale for the fit
    column): the exact values and the bounds (mc of a curve still moving when the protocol stopped at its last
    budget). A bound is what the protocol reports for that seed pair, so the spread of a cell's bounds is the
    spread a rerun's values would have; leaving them out left the prior to the few cells whose curves all
    converged (often cells with mc 0 in every pair, or a single cell with one outlying pair, which then set the
    noise of every other cell: on a 9-cell grid, s0^2 = 13 pp^2 from the one cell with two converged pairs, 0
    and 3.1 pp, while the measured values of the other cells spread by 0.002-1.3 pp^2).
    The pool (what an unknown slot is imputed from) is every exact value of the grid, in the metric's units (every
    finite value if none is exact). ``min_var``: the variance of the measurement's rounding
    (:func:`rounding_variance`), the least a cell's sample variance can be: cells whose values agree to the
    measurement's resolution count with it."""
    var, dfs, exact_all, finite_all = [], [], [], []
    for v, k in slots.values():
        finite = np.isfinite(v)
        x = v[(k == EXACT) & finite]
        exact_all.append(x)
        finite_all.append(v[finite])
        measured = measured_values(v, k)
        if measured.size >= 2:
            t = variance_scale(measured, log_floor)
            var.append(max(float(t.var(ddof=1)), min_var))
            dfs.append(measured.size - 1)
    pool = np.concatenate(exact_all) if exact_all else np.empty(0)
    if not pool.size:
        pool = np.concatenate(finite_all) if finite_all else np.empty(0)
    pool = np.sort(pool)  # its order (the cells' order, which follows the axes) must not change the draws
    fallback = float(np.var(variance_scale(pool, log_floor), ddof=1)) if pool.size >= 2 else np.nan
    return variance_prior(var, dfs, nu0, fallback), pool


def fit_log_floor(rule: PhaseRule) -> float:
    """The floor of the fit column's values before their log is taken (its within-cell spread is relative, on a
    log scale, floored as in calibration); mc's and CKA's spreads are absolute."""
    return _LOG_FLOOR["train_error" if rule.train_error is not None else "train_loss"]


def _cell_key(values: Sequence[Any], names: Sequence[str] | None = None) -> int:
    """A stable integer of a cell: of its ``(knob, value)`` pairs sorted by knob name when ``names`` are given,
    so that the cell's random stream does not depend on the order of the axes (``--x``/``--y`` swapped)."""
    if names is None:
        return zlib.crc32(repr(tuple(str(v) for v in values)).encode())
    return zlib.crc32(repr(sorted((str(k), str(v)) for k, v in zip(names, values, strict=True))).encode())


def label_confidence(
    models: pd.DataFrame,
    pairs: pd.DataFrame | None,
    cells: pd.DataFrame,
    by: Sequence[str],
    rule: PhaseRule,
    labels: pd.Series | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    nu0: float | None = None,
) -> pd.DataFrame:
    """Confidence of every cell's label: the probability that a rerun of the cell with new seeds gives the same
    label, by seeded Monte Carlo (``n_boot`` draws per cell, seeded by ``seed`` and the cell's knob values).

    Each draw takes, for each value the rule reads (the fit column's mean over the cell's models, mc's and
    CKA's over its pairs), a rerun's mean from :func:`predictive_means`: unknown slots (models without a finite
    fit value, any status; pairs without a finite mc/CKA that should have one) imputed from the grid's values,
    bounds kept as bounds, and Student-t noise whose variance shrinks the cell's own toward the grid's
    (:func:`variance_prior`, empirical Bayes, or ``nu0`` given), so that a value measured once adds doubt; for
    mc and CKA that variance is multiplied by the design effect of pairs that share models
    (:func:`pair_design_effect`: 2.5 for the 3 pairs of 3 seeds), since a rerun draws new models, not new pairs.
    The draws are labelled by ``rule``; the confidence is the share equal to the cell's label.

    Returns a DataFrame on ``cells``' index: ``phase_confidence`` (in [0, 1]; NaN for an unlabelled cell) and
    the counts of :func:`resolution_counts` (``n_models``: done models with a finite fit value; ``n_pairs_mc``:
    pairs with a finite mc, exact or bounded; ``n_pairs_exact``, ``n_pairs_unknown``, ``share_unresolved``,
    ...). ``.attrs["priors"]``: the variance prior used per column."""
    by = list(by)
    labels = rule.labels(cells) if labels is None else labels
    cols = rule.columns
    floors = {cols[0]: fit_log_floor(rule), cols[1]: None, cols[2]: None}
    _, slots = _cell_slots(models, pairs, by, rule)
    priors, pools = {}, {}
    min_var = {c: rounding_variance(pairs, c) for c in cols}
    for c in cols:
        priors[c], pools[c] = _prior_for(slots[c], floors[c], nu0, min_var[c])
    counts = resolution_counts(models, pairs, cells, by, rule)
    conf = np.full(len(cells), np.nan)
    empty = (np.empty(0), np.empty(0, dtype=np.int8))
    keys = cells[by].itertuples(index=False, name=None)
    for i, (key, lab) in enumerate(zip(keys, labels.to_numpy(), strict=True)):
        if lab is None or (isinstance(lab, float) and np.isnan(lab)):
            continue
        rng = np.random.default_rng([seed, _cell_key(key, by)])  # the cell's stream, whatever the axis order
        cell = {c: slots[c].get(key, empty) for c in cols}
        n_models = cell[cols[0]][0].size
        means = [
            predictive_means(
                rng,
                *cell[c],
                pools[c],
                priors[c],
                n_boot,
                floors[c],
                min_var[c],
                1.0 if c == cols[0] else pair_design_effect(n_models, cell[c][0].size),
            )
            for c in cols
        ]
        codes = rule.codes(*means)
        conf[i] = float(np.mean(codes == PHASES.index(lab)))
    out = pd.concat([pd.DataFrame({"phase_confidence": conf}, index=cells.index), counts], axis=1)
    out.attrs["priors"] = {c: dataclasses.asdict(p) for c, p in priors.items()}
    return out


# --------------------------------------------------------------------------- missing metrics
def missing_metric_warnings(
    cells: pd.DataFrame, rule: PhaseRule, by: Sequence[str], labels: pd.Series | None = None, max_named: int = 6
) -> list[str]:
    """Why unlabelled cells have no label: for each needed column (the fit column, mc, CKA where it is needed)
    the cells lacking it, named by their knob values, and what to do: enable its family
    (``metrics.<family>.enabled=true``) when the family did not run there, or the recorded reason
    (``<family>.error``) when it ran and failed. Cells that are not done are reported by their status."""
    labels = rule.labels(cells) if labels is None else labels
    fit, mc, ck = (_col(cells, c) for c in rule.columns)
    status = cells["status"].astype(str).to_numpy() if "status" in cells.columns else np.full(len(cells), "done")
    unl = labels.isna().to_numpy()
    out: list[str] = []

    def name(i: int) -> str:
        return " ".join(f"{k}={cells[k].iloc[i]}" for k in by)

    notdone = np.nonzero(unl & (status != "done"))[0]
    if notdone.size:
        states = pd.Series(status[notdone]).value_counts().to_dict()
        out.append(
            f"{notdone.size} cells have no completed model ({', '.join(f'{k}: {v}' for k, v in states.items())}): "
            + "; ".join(name(i) for i in notdone[:max_named])
            + (" ..." if notdone.size > max_named else "")
            + " (see landscape-status)"
        )
    done = unl & (status == "done")
    need = [
        (rule.fit_column, ~np.isfinite(fit)),
        (rule.mc_column, np.isfinite(fit) & ~np.isfinite(mc)),
        (
            rule.cka_column,
            np.isfinite(fit)
            & (fit <= rule.fit_threshold)
            & np.isfinite(mc)
            & (mc >= rule.mc_barrier)
            & ~np.isfinite(ck),
        ),
    ]
    for col, lacking in need:
        idx = np.nonzero(done & lacking)[0]
        if not idx.size:
            continue
        fam = family_of(col)
        err_col = f"{fam}.error"
        reasons = []
        if err_col in cells.columns:
            reasons = [str(r) for r in cells[err_col].iloc[idx].dropna().unique()[:2]]
        ran_somewhere = ran(cells, col)
        names = "; ".join(name(i) for i in idx[:max_named]) + (" ..." if idx.size > max_named else "")
        if reasons:
            what = f"the {fam} family failed there ({' | '.join(reasons)})"
        elif ran_somewhere:
            what = f"rerun them with metrics.{fam}.enabled=true (the value is missing in these cells only)"
        else:
            what = f"the {fam} family did not run: enable it with metrics.{fam}.enabled=true"
        out.append(f"no phase label for {idx.size} cells: {col} is missing ({names}); {what}")
    return out


def resolution_warnings(cells: pd.DataFrame, by: Sequence[str], max_named: int = 6) -> list[str]:
    """Lines naming (by knob values) the cells left unlabelled because mc is still moving
    (``phase_reason``, from :func:`bounded_labels`) and the labelled cells with fewer than
    :data:`MIN_RESOLVED_PAIRS` resolved pairs (``n_pairs_resolved``, ``n_pairs_total``)."""
    out: list[str] = []

    def names(idx: np.ndarray, what) -> str:
        return "; ".join(" ".join(f"{k}={cells[k].iloc[i]}" for k in by) + f" ({what(i)})" for i in idx[:max_named]) + (
            " ..." if idx.size > max_named else ""
        )

    if "phase_reason" in cells.columns:
        idx = np.nonzero(cells["phase"].isna().to_numpy() & cells["phase_reason"].notna().to_numpy())[0]
        if idx.size:
            out.append(
                f"no phase label for {idx.size} cells: the label depends on where mc converges, "
                f"{names(idx, lambda i: cells['phase_reason'].iloc[i])}; a larger curve budget decides them"
            )
    if {"n_pairs_resolved", "n_pairs_total"} <= set(cells.columns):
        few = cells["phase"].notna().to_numpy() & (_col(cells, "n_pairs_resolved") < MIN_RESOLVED_PAIRS)
        idx = np.nonzero(few)[0]
        if idx.size:
            out.append(
                f"{idx.size} cells are labelled from fewer than {MIN_RESOLVED_PAIRS} resolved pairs "
                f"(converged, or a bound beyond every mc threshold; marked on the map), "
                + names(
                    idx, lambda i: f"{int(cells['n_pairs_resolved'].iloc[i])} of {int(cells['n_pairs_total'].iloc[i])}"
                )
            )
    return out


# --------------------------------------------------------------------------- summaries
def phase_summary(
    cells: pd.DataFrame, labels: pd.Series, target: str = "test_acc", confidence: pd.Series | None = None
) -> pd.DataFrame:
    """Per phase (in :data:`PHASES` order): number of labelled cells, of those with a finite ``target``, the
    mean/std of the cells' ``target`` means, and (given ``confidence``) the mean label confidence."""
    values = _col(cells, target)
    lab = labels.to_numpy(dtype=object)
    conf = confidence.to_numpy(dtype=np.float64) if confidence is not None else None
    rows = []
    for ph in PHASES:
        sel = lab == ph
        v = values[sel]
        fin = v[np.isfinite(v)]
        row = {
            "phase": ph,
            "n_cells": int(sel.sum()),
            f"n_{target}": int(fin.size),
            f"{target}_mean": float(fin.mean()) if fin.size else np.nan,
            f"{target}_std": float(fin.std(ddof=1)) if fin.size > 1 else np.nan,
        }
        if conf is not None:
            row["confidence_mean"] = (
                float(np.nanmean(conf[sel])) if sel.any() and np.isfinite(conf[sel]).any() else np.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


REGIMES: tuple[str, ...] = ("all", "well-trained", "poorly-trained")


def rank_correlations(
    cells: pd.DataFrame,
    metrics: Sequence[str],
    target: str = "test_acc",
    min_cells: int = 3,
    rule: PhaseRule | None = None,
) -> pd.DataFrame:
    """Spearman rank correlation of each metric's cell means with the cell means of ``target``, over all
    cells and, given ``rule``, within the well-trained (fit value <= threshold) and poorly-trained cells.

    One row per metric and regime: ``metric``, ``family``, ``regime``, ``rho`` (in [-1, 1]), two-sided
    ``p_value`` and ``n_cells`` (cells where both are finite). Fewer than ``min_cells`` cells, or a constant
    column, gives NaN. Metrics with no finite value (a family that did not run) are left out.
    """
    rows = []
    y_all = _col(cells, target)
    regimes: dict[str, np.ndarray] = {"all": np.ones(len(cells), dtype=bool)}
    if rule is not None:
        fit = _col(cells, rule.fit_column)
        regimes["well-trained"] = np.isfinite(fit) & (fit <= rule.fit_threshold)
        regimes["poorly-trained"] = np.isfinite(fit) & (fit > rule.fit_threshold)
    for m in metrics:
        if m == target or m not in cells.columns or not ran(cells, m):
            continue
        x_all = _col(cells, m)
        for regime, sel in regimes.items():
            ok = sel & np.isfinite(x_all) & np.isfinite(y_all)
            n = int(ok.sum())
            rho, p = spearman(x_all[ok], y_all[ok]) if n >= min_cells else (np.nan, np.nan)
            rows.append(
                {
                    "metric": m,
                    "family": family_of(m),
                    "regime": regime,
                    "target": target,
                    "rho": rho,
                    "p_value": p,
                    "n_cells": n,
                }
            )
    return pd.DataFrame(rows, columns=["metric", "family", "regime", "target", "rho", "p_value", "n_cells"])
