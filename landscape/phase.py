"""Phases of a loss-landscape grid: per-cell aggregation, the phase rule and its thresholds, label confidence,
calibration of thresholds from a sweep's own cells, and rank correlations.

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

Every label gets a confidence (:func:`label_confidence`): the share of bootstrap resamples of the cell's
models and pairs (seeded) whose means give the same label.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PHASES: tuple[str, ...] = ("I", "II", "III", "IV-A", "IV-B")

#: The paper's thresholds (fitted to the published CIFAR-10 results, tests/data/taxonomy2021): the one place
#: they are written down. ``train_loss`` nats, ``mc_*`` percentage points of training error, ``cka`` unitless.
PAPER_THRESHOLDS: dict[str, float] = {"train_loss": 0.05, "mc_underfit": 0.0, "mc_barrier": -0.5, "cka": 0.7}

#: Named threshold sets of ``landscape-phase --thresholds NAME`` and of a sweep file's ``phase.thresholds``.
THRESHOLD_PRESETS: tuple[str, ...] = ("paper", "calibrate")

#: Unit of each threshold (for tables, manifests and colour bars).
THRESHOLD_UNITS: dict[str, str] = {
    "train_loss": "nats", "train_error": "% of training set", "mc_underfit": "pp of training error",
    "mc_barrier": "pp of training error", "cka": "unitless",
}

#: Row columns that are never metrics (provenance, identity, bookkeeping).
NON_METRIC_COLUMNS: frozenset[str] = frozenset(
    {"cell_id", "sweep", "seed", "seed_a", "seed_b", "status", "error", "config", "schema_version", "git_commit",
     "git_dirty", "versions", "host", "device", "started_at", "finished_at", "seconds"}
)

#: Top-level config groups whose flat dotted columns are knobs (``model.width``, ``train.batch_size``, ...).
KNOB_GROUPS: tuple[str, ...] = ("data", "model", "train")

#: Metric columns of the training family that have no dotted family prefix.
_UNPREFIXED_FAMILY: dict[str, str] = {
    "train_loss": "training", "train_acc": "training", "test_loss": "training", "test_acc": "training",
    "train_acc_clean": "training", "train_error": "training", "l2_distance": "l2", "cka": "cka",
}


def knob_columns(df: pd.DataFrame) -> list[str]:
    """The knob columns of a row table: dotted columns under ``data.``, ``model.`` or ``train.``."""
    return [c for c in df.columns if "." in c and c.split(".", 1)[0] in KNOB_GROUPS]


# --------------------------------------------------------------------------- which columns are metrics
@functools.lru_cache(maxsize=1)
def _contract():
    """The family contract's ``(metric_columns, family_of)`` (``landscape.metrics``) where it exists, else
    None. This is the one place that switches between the contract and the local fallback below. The package
    is imported only when its source defines the contract (an older one imports torch, seconds for nothing)."""
    import importlib.util

    spec = importlib.util.find_spec("landscape.metrics")
    try:
        if spec is None or spec.origin is None or "def metric_columns" not in Path(spec.origin).read_text():
            return None
    except OSError:
        return None
    try:
        from landscape.metrics import family_of as contract_family_of
        from landscape.metrics import metric_columns as contract_metric_columns
    except ImportError:
        return None
    return contract_metric_columns, contract_family_of


@functools.lru_cache(maxsize=1)
def _family_setting_fields() -> dict[str, frozenset[str]]:
    """``{family: names of its Config fields}``, read from the source of ``landscape/metrics/<family>.py``
    without importing it (the family modules import torch)."""
    out: dict[str, frozenset[str]] = {}
    for path in sorted((Path(__file__).parent / "metrics").glob("*.py")):
        try:
            tree = ast.parse(path.read_text())
        except (OSError, SyntaxError):  # pragma: no cover - a broken file is reported by its own import
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == "Config":
                names = {n.target.id for n in node.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
                out[path.stem] = frozenset(names)
    return out


def family_of(column: str) -> str:
    """The metric family that writes ``column`` (``connectivity.mc`` -> ``connectivity``, ``cka`` -> ``cka``,
    ``train_loss`` -> ``training``, ``topology.h1_total`` -> ``jump_retrain``)."""
    c = _contract()
    if c is not None:
        try:
            return c[1](column)
        except KeyError:
            pass  # e.g. a derived column (train_error): named by the rule below
    if column in _UNPREFIXED_FAMILY:
        return _UNPREFIXED_FAMILY[column]
    prefix = column.split(".", 1)[0]
    return "jump_retrain" if prefix == "topology" else prefix


def _is_setting_or_count(column: str) -> bool:
    last = column.rsplit(".", 1)[-1]
    if column.endswith(("seconds", "stderr", "residual", ".error")) or last.startswith("n_"):
        return True
    if "." in column:
        fam = family_of(column)
        if last in _family_setting_fields().get(fam, frozenset()):
            return True
    return False


def metric_columns(df: pd.DataFrame, table: str | None = None) -> list[str]:
    """The metric columns of a row table (``table``: ``models`` or ``pairs``; default: ``pairs`` when it has a
    ``seed_a`` column): measured values, not knobs, provenance, settings, counts, timings or uncertainties.
    Uses the family contract (``landscape.metrics.metric_columns(table)``) when it is there, keeping the
    numeric columns present in ``df``; otherwise: float columns that are not knobs/provenance, not named ``*seconds``, ``*stderr``,
    ``*residual``, ``*.error`` or ``n_*``, and not a field of the writing family's ``Config`` (settings)."""
    c = _contract()
    if c is not None:
        table = table or ("pairs" if "seed_a" in df.columns else "models")
        return [m for m in c[0](table) if m in df.columns and pd.api.types.is_numeric_dtype(df[m].dtype)
                and not pd.api.types.is_bool_dtype(df[m].dtype)]
    knobs = set(knob_columns(df))
    out = []
    for col in df.columns:
        if col in knobs or col in NON_METRIC_COLUMNS or _is_setting_or_count(col):
            continue
        if not pd.api.types.is_float_dtype(df[col].dtype):
            continue  # ints are counts or settings; strings, bools, lists are not cell values
        out.append(col)
    return out


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
) -> pd.DataFrame:
    """One row per grid cell (= one combination of the knob columns ``by``).

    For each metric ``m`` of the models table (over the cell's ``done`` models) and of the pairs table (over
    its ``done`` pairs): ``m`` (mean), ``m_std`` (sample std, ddof=1) and ``m_n`` (number of finite values;
    NaN/inf values are left out). Also ``n_rows`` (model rows of any status), ``n_done`` (done model rows),
    ``n_pairs`` (done pair rows), ``status`` (``done`` if any model of the cell completed, else the cell's most
    common model status) and the first reason of each ``<family>.error`` column. Pair rows are joined to cells
    through ``cell_id``. Metric lists default to :func:`metric_columns` (``train_error`` in % is derived from
    ``train_acc``).

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
    models = add_train_error(models)
    model_metrics = list(model_metrics) if model_metrics is not None else metric_columns(models, "models")
    if "train_error" in models.columns and "train_error" not in model_metrics:
        model_metrics.append("train_error")
    done = _completed(models)
    cells = _stats(done, by, model_metrics)

    status = (models["status"].astype(object) if "status" in models.columns
              else pd.Series("done", index=models.index, dtype=object))
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


def _pairs_with_knobs(models: pd.DataFrame, pairs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The done pair rows with the cell's knob values ``by`` (joined through ``cell_id``)."""
    cell_knobs = models[["cell_id"] + by].drop_duplicates("cell_id")
    p = _completed(pairs)
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
                raise ValueError(f"phase threshold {key}={value!r}: expected a number ({THRESHOLD_UNITS[key]})") from None
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
        fit = (f"training error {t[first]['value']:g} %" if first == "train_error"
               else f"training loss {t[first]['value']:g} nats")
        return (f"thresholds ({self.source}): {fit}; mc_underfit {self.mc_underfit:g} pp, "
                f"mc_barrier {self.mc_barrier:g} pp (of training error); CKA {self.cka:g}")

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
@dataclass(frozen=True)
class Mixture2:
    """A two-component 1-D Gaussian mixture (tied variance) fitted by EM: weights, means (ascending), variances, the
    log-likelihood, BIC of it and of one Gaussian, Ashman's D and the decision threshold between the means."""

    weights: tuple[float, float]
    means: tuple[float, float]
    variances: tuple[float, float]
    loglik: float
    bic: float
    bic_one: float
    ashman_d: float
    threshold: float
    counts: tuple[int, int]

    @property
    def bimodal(self) -> bool:
        """Two groups: Ashman's D > 2, a lower BIC than one Gaussian, and at least two points on each side."""
        return self.ashman_d > 2.0 and self.bic < self.bic_one and min(self.counts) >= 2


def fit_mixture2(values: Sequence[float], n_iter: int = 500, tol: float = 1e-10) -> Mixture2:
    """Fit a 2-component Gaussian mixture with one shared variance (no degenerate narrow component) to the
    finite ``values`` (>= 4) by EM, starting from the split at the median; the threshold is where the two
    weighted densities are equal between the means."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    x = x[np.isfinite(x)]
    n = x.size
    if n < 4:
        raise ValueError(f"a mixture needs at least 4 values, got {n}")
    span = float(x[-1] - x[0])
    floor = max((1e-3 * span) ** 2, 1e-12)
    half = n // 2
    w = np.array([0.5, 0.5])
    mu = np.array([x[:half].mean(), x[half:].mean()])
    var = np.full(2, max(0.5 * (x[:half].var() + x[half:].var()), floor))
    prev = -np.inf
    ll = prev
    for _ in range(n_iter):
        logp = np.log(w)[None, :] - 0.5 * np.log(2 * np.pi * var)[None, :] - (x[:, None] - mu[None, :]) ** 2 / (2 * var[None, :])
        mx = logp.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(logp - mx).sum(axis=1))
        ll = float(lse.sum())
        r = np.exp(logp - lse[:, None])
        nk = r.sum(axis=0) + 1e-12
        w = nk / n
        mu = (r * x[:, None]).sum(axis=0) / nk
        var = np.full(2, max(float((r * (x[:, None] - mu[None, :]) ** 2).sum()) / n, floor))  # tied
        if abs(ll - prev) < tol * max(1.0, abs(ll)):
            break
        prev = ll
    order = np.argsort(mu)
    w, mu, var = w[order], mu[order], var[order]
    var1 = max(float(x.var()), floor)
    ll1 = float(-0.5 * n * (np.log(2 * np.pi * var1) + 1))
    bic2 = -2 * ll + 4 * np.log(n)
    bic1 = -2 * ll1 + 2 * np.log(n)
    d = float(np.sqrt(2.0) * abs(mu[1] - mu[0]) / np.sqrt(var[0] + var[1]))
    grid = np.linspace(mu[0], mu[1], 2001)
    dens = np.log(w)[:, None] - 0.5 * np.log(2 * np.pi * var)[:, None] - (grid[None, :] - mu[:, None]) ** 2 / (2 * var[:, None])
    diff = dens[0] - dens[1]
    cross = np.nonzero(np.diff(np.sign(diff)) != 0)[0]
    thr = float(0.5 * (grid[cross[0]] + grid[cross[0] + 1])) if cross.size else float(0.5 * (mu[0] + mu[1]))
    counts = (int((x <= thr).sum()), int((x > thr).sum()))
    return Mixture2((float(w[0]), float(w[1])), (float(mu[0]), float(mu[1])), (float(var[0]), float(var[1])),
                    ll, float(bic2), float(bic1), d, thr, counts)


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
        entry.update(ashman_d=round(mix.ashman_d, 3), bic_two=round(mix.bic, 3), bic_one=round(mix.bic_one, 3),
                     groups=list(mix.counts), means=[float(10 ** m) for m in mix.means])
        if mix.bimodal:
            new[first] = float(10 ** mix.threshold)
            entry.update(value=new[first], derived=True)
        else:
            entry.update(value=getattr(base, first), derived=False,
                         reason="no two groups of cells (Ashman's D <= 2, or one Gaussian fits as well)")
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
        entry.update(ashman_d=round(mix.ashman_d, 3), bic_two=round(mix.bic, 3), bic_one=round(mix.bic_one, 3),
                     groups=list(mix.counts), means=list(mix.means), range=[float(c.min()), float(c.max())])
        if mix.bimodal:
            new_cka = float(mix.threshold)
            rule = rule.with_overrides({"cka": new_cka})
            entry.update(value=new_cka, derived=True)
        else:
            entry.update(value=rule.cka, derived=False,
                         reason=f"CKA of these cells is one group ({c.min():.3f}-{c.max():.3f}): no IV-A/IV-B split")
    else:
        entry.update(value=rule.cka, derived=False, reason=f"only {c.size} well-trained, well-connected cells (need 4)")
    report["cka"] = entry
    for k in ("mc_underfit", "mc_barrier"):
        report[k] = {"value": getattr(rule, k), "derived": False, "reason": "pp of training error: kept from " + base.source}
    return dataclasses.replace(rule, source="calibrate"), report


def resolve_rule(preset: str | None = None, overrides: Mapping[str, Any] | None = None,
                 cells: pd.DataFrame | None = None) -> tuple[PhaseRule, dict[str, Any]]:
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
        changed = {k: getattr(rule, k) for k in PhaseRule.THRESHOLD_NAMES
                   if getattr(rule, k) != getattr(PhaseRule.paper(), k)}
        if changed:
            rule = dataclasses.replace(rule, source="paper with " + ", ".join(f"{k}={v:g}" for k, v in changed.items()))
    return rule, report


# --------------------------------------------------------------------------- confidence of the labels
def _cell_key(values: Sequence[Any]) -> int:
    return zlib.crc32(repr(tuple(str(v) for v in values)).encode())


def label_confidence(
    models: pd.DataFrame,
    pairs: pd.DataFrame | None,
    cells: pd.DataFrame,
    by: Sequence[str],
    rule: PhaseRule,
    labels: pd.Series | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Bootstrap confidence of every cell's label: the finite values of the fit column over the cell's done
    models, and of mc and of CKA over its done pairs, are each resampled with replacement (to their own count)
    ``n_boot`` times, and each resample's means are labelled by ``rule``; the confidence is the share of
    resamples whose label equals the cell's label (from all its rows). Each metric is resampled over the
    models/pairs that have it (e.g. the paper measured mc on one pair per cell, CKA on all ten). Seeded per
    cell (``seed`` and the cell's knob values), so the same rows give the same numbers.

    Returns a DataFrame on ``cells``' index: ``phase_confidence`` (in [0, 1]; NaN for an unlabelled cell),
    ``n_models`` (done models with a finite fit value) and ``n_pairs_mc`` (done pairs with a finite mc).
    A value measured once (one model, one pair) has no spread to resample: it adds no doubt to the label.
    """
    by = list(by)
    labels = rule.labels(cells) if labels is None else labels
    fit_col, mc_col, cka_col = rule.columns
    m = add_train_error(_completed(models))
    mgroups = {}
    if fit_col in m.columns:
        fv = _col(m, fit_col)
        for key, idx in m.groupby(by, dropna=False).indices.items():
            mgroups[key if isinstance(key, tuple) else (key,)] = fv[idx]
    pgroups = {}
    if pairs is not None and not pairs.empty and "cell_id" in models.columns:
        p = _pairs_with_knobs(models, pairs, by)
        if not p.empty:
            pv = np.stack([_col(p, mc_col), _col(p, cka_col)], axis=1)
            for key, idx in p.groupby(by, dropna=False).indices.items():
                pgroups[key if isinstance(key, tuple) else (key,)] = pv[idx]
    conf = np.full(len(cells), np.nan)
    n_models = np.zeros(len(cells), dtype=np.int64)
    n_pairs = np.zeros(len(cells), dtype=np.int64)
    keys = cells[by].itertuples(index=False, name=None)
    for i, (key, lab) in enumerate(zip(keys, labels.to_numpy())):
        fv = mgroups.get(key, np.empty(0))
        fv = fv[np.isfinite(fv)]
        pv = pgroups.get(key, np.empty((0, 2)))
        n_models[i] = fv.size
        n_pairs[i] = int(np.isfinite(pv[:, 0]).sum()) if pv.size else 0
        if lab is None or (isinstance(lab, float) and np.isnan(lab)):
            continue
        rng = np.random.default_rng([seed, _cell_key(key)])
        fit_b = _boot_means(rng, fv, n_boot)
        mc_b = _boot_means(rng, pv[:, 0] if pv.size else np.empty(0), n_boot)
        ck_b = _boot_means(rng, pv[:, 1] if pv.size else np.empty(0), n_boot)
        codes = rule.codes(fit_b, mc_b, ck_b)
        conf[i] = float(np.mean(codes == PHASES.index(lab)))
    return pd.DataFrame({"phase_confidence": conf, "n_models": n_models, "n_pairs_mc": n_pairs}, index=cells.index)


def _boot_means(rng: np.random.Generator, values: np.ndarray, n_boot: int) -> np.ndarray:
    """``[n_boot]`` means of resamples (with replacement, of the same size) of the finite ``values``; NaN
    when there is none."""
    v = values[np.isfinite(values)]
    if not v.size:
        return np.full(n_boot, np.nan)
    return v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)


# --------------------------------------------------------------------------- missing metrics
def missing_metric_warnings(cells: pd.DataFrame, rule: PhaseRule, by: Sequence[str],
                            labels: pd.Series | None = None, max_named: int = 6) -> list[str]:
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
        out.append(f"{notdone.size} cells have no completed model ({', '.join(f'{k}: {v}' for k, v in states.items())}): "
                   + "; ".join(name(i) for i in notdone[:max_named]) + (" ..." if notdone.size > max_named else "")
                   + " (see landscape-status)")
    done = unl & (status == "done")
    need = [(rule.fit_column, ~np.isfinite(fit)), (rule.mc_column, np.isfinite(fit) & ~np.isfinite(mc)),
            (rule.cka_column, np.isfinite(fit) & (fit <= rule.fit_threshold) & np.isfinite(mc)
             & (mc >= rule.mc_barrier) & ~np.isfinite(ck))]
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


# --------------------------------------------------------------------------- summaries
def phase_summary(cells: pd.DataFrame, labels: pd.Series, target: str = "test_acc",
                  confidence: pd.Series | None = None) -> pd.DataFrame:
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
            row["confidence_mean"] = float(np.nanmean(conf[sel])) if sel.any() and np.isfinite(conf[sel]).any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho of two equal-length finite arrays (Pearson correlation of their average ranks) and its
    two-sided p-value from Student's t with n - 2 degrees of freedom (NaN, NaN for n < 3 or a constant)."""
    n = len(x)
    if n < 3:
        return np.nan, np.nan
    rx = pd.Series(x).rank().to_numpy()
    ry = pd.Series(y).rank().to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return np.nan, np.nan
    rho = float(np.corrcoef(rx, ry)[0, 1])
    rho = max(-1.0, min(1.0, rho))
    if abs(rho) >= 1.0:
        return rho, 0.0
    t = rho * math.sqrt((n - 2) / (1.0 - rho * rho))
    return rho, student_t_two_sided(t, n - 2)


def student_t_two_sided(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom: ``I_{df/(df+t^2)}(df/2, 1/2)``, the
    regularised incomplete beta function (:func:`_betainc`), so no scipy import is needed."""
    return _betainc(0.5 * df, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)`` from its continued fraction (evaluated with the
    modified Lentz method; the symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)`` keeps it in its fast region)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            h *= step
        if abs(step - 1.0) < eps:
            break
    return math.exp(log_front) * h / a


REGIMES: tuple[str, ...] = ("all", "well-trained", "poorly-trained")


def rank_correlations(
    cells: pd.DataFrame, metrics: Sequence[str], target: str = "test_acc", min_cells: int = 3,
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
            rows.append({"metric": m, "family": family_of(m), "regime": regime, "target": target,
                         "rho": rho, "p_value": p, "n_cells": n})
    return pd.DataFrame(rows, columns=["metric", "family", "regime", "target", "rho", "p_value", "n_cells"])
