"""The statistics of the phase analysis (:mod:`landscape.phase`): pure functions of numbers, no knowledge of
families, rows' meaning beyond the columns named, files or figures.

* calibration: a two-component 1-D Gaussian mixture with one shared variance, fitted by EM (:class:`Mixture2`,
  :func:`fit_mixture2`), whose split ``landscape.phase.calibrate`` uses as a threshold;
* the predictive distribution of a cell's mean under a rerun with new seeds (the label confidence of
  ``landscape.phase.label_confidence``): the kinds of a value slot (:data:`EXACT`, :data:`LOWER`,
  :data:`UPPER`, :data:`UNKNOWN`, :data:`NOT_A_SLOT`), an empirical-Bayes prior of the within-cell variance
  (:class:`VariancePrior`, :func:`variance_prior`, Smyth 2004), the rounding floor of that variance
  (:func:`rounding_variance`), the design effect of pairs that share models (:func:`pair_design_effect`) and the
  Monte Carlo draws of a rerun's mean (:func:`predictive_means`);
* rank correlation: Spearman's rho with its two-sided p-value from Student's t (:func:`spearman`,
  :func:`student_t_two_sided`), through a hand-written regularised incomplete beta function (no scipy needed
  for the p-value; ``tests/test_phase.py`` checks it against scipy).

``landscape.phase`` re-exports every public name here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd


# --------------------------------------------------------------------- calibration: a two-component mixture
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
        logp = (
            np.log(w)[None, :]
            - 0.5 * np.log(2 * np.pi * var)[None, :]
            - (x[:, None] - mu[None, :]) ** 2 / (2 * var[None, :])
        )
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
    dens = (
        np.log(w)[:, None]
        - 0.5 * np.log(2 * np.pi * var)[:, None]
        - (grid[None, :] - mu[:, None]) ** 2 / (2 * var[:, None])
    )
    diff = dens[0] - dens[1]
    cross = np.nonzero(np.diff(np.sign(diff)) != 0)[0]
    thr = float(0.5 * (grid[cross[0]] + grid[cross[0] + 1])) if cross.size else float(0.5 * (mu[0] + mu[1]))
    counts = (int((x <= thr).sum()), int((x > thr).sum()))
    return Mixture2(
        (float(w[0]), float(w[1])),
        (float(mu[0]), float(mu[1])),
        (float(var[0]), float(var[1])),
        ll,
        float(bic2),
        float(bic1),
        d,
        thr,
        counts,
    )


# ----------------------------------------------------- the predictive distribution of a cell's mean (label confidence)
#: Kinds of a value slot (a model's fit value, a pair's mc or CKA): measured exactly, a lower/upper bound of the
#: converged value (mc still rising/falling when the curve protocol stopped), or unknown (diverged, failed,
#: not converged in an older sweep). A row that is not a slot of that metric at all (its family did not run on
#: it by design, e.g. the paper's one curve per cell) is :data:`NOT_A_SLOT`.
EXACT, LOWER, UPPER, UNKNOWN, NOT_A_SLOT = 0, 1, 2, 3, -1

#: Bounds of the prior degrees of freedom of a metric's within-cell variance (:func:`variance_prior`), and
#: the value used where too few cells (< 3 with two values) show how their variances spread.
NU0_MIN, NU0_MAX, NU0_DEFAULT = 1.0, 100.0, 4.0


@dataclass(frozen=True)
class VariancePrior:
    """The grid's prior of a metric's within-cell variance: ``s0_sq`` (squared units of the metric, or of its
    natural log for the fit column) with ``nu0`` degrees of freedom; ``n_cells`` cells with two or more exact
    values informed it; ``method`` says how."""

    nu0: float
    s0_sq: float
    n_cells: int
    method: str


def variance_prior(
    variances: Sequence[float], dfs: Sequence[float], nu0: float | None = None, fallback_sq: float = np.nan
) -> VariancePrior:
    """Empirical-Bayes prior of the within-cell variance from the cells' sample variances ``variances`` with
    ``dfs`` degrees of freedom (``r - 1`` for ``r`` values), by Smyth's moment method on log variances (Smyth
    2004, the moderated t of limma): ``e_i = log s_i^2 - digamma(d_i/2) + log(d_i/2)``; ``trigamma(nu0/2) =
    var(e) - mean(trigamma(d_i/2))`` (``nu0 = inf`` when the right side is <= 0: the cells' variances spread
    no more than chi-square sampling does); ``s0^2 = exp(mean(e) + digamma(nu0/2) - log(nu0/2))``. ``nu0`` is
    clamped to [:data:`NU0_MIN`, :data:`NU0_MAX`] (so that one value still has spread) and is
    :data:`NU0_DEFAULT` with fewer than 3 informative cells; a given ``nu0`` is used as is. Cells with a zero
    variance carry no log-moment. Without any informative cell, ``s0^2 = fallback_sq`` (the caller passes the
    grid's spread of the values)."""
    from scipy import special

    v = np.asarray(variances, dtype=np.float64)
    d = np.asarray(dfs, dtype=np.float64)
    ok = np.isfinite(v) & (v > 0) & (d >= 1)
    zero = np.isfinite(v) & (v == 0) & (d >= 1)
    if not ok.any():
        s0 = 0.0 if zero.any() else float(fallback_sq)
        how = (
            "no cell with two differing values: the grid's spread of the values"
            if not zero.any()
            else "every cell's values are equal"
        )
        return VariancePrior(float(nu0) if nu0 is not None else NU0_DEFAULT, s0, 0, how)
    v, d = v[ok], d[ok]
    e = np.log(v) - special.digamma(d / 2) + np.log(d / 2)
    ebar = float(e.mean())
    if nu0 is not None:
        d0, how = float(nu0), "nu0 given"
    elif e.size < 3:
        d0, how = NU0_DEFAULT, f"nu0 default ({e.size} cells with two values)"
    else:
        rhs = float(e.var(ddof=1) - special.polygamma(1, d / 2).mean())
        d0 = 2.0 * _trigamma_inverse(rhs) if rhs > 0 else np.inf
        d0 = float(min(max(d0, NU0_MIN), NU0_MAX))
        how = f"empirical Bayes over {e.size} cells"
    s0_sq = float(np.exp(ebar + special.digamma(d0 / 2) - np.log(d0 / 2)))
    return VariancePrior(d0, s0_sq, int(e.size), how)


def _trigamma_inverse(x: float) -> float:
    """The ``y > 0`` with ``trigamma(y) = x`` (``x > 0``), by Smyth's (2004) Newton iteration."""
    from scipy import special

    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        step = tri * (1.0 - tri / x) / float(special.polygamma(2, y))
        y += step
        if -step / y < 1e-8:
            break
    return y


def measured_values(values: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """The finite values of the slots that were measured: exact values and bounds (what the protocol reported
    for that model or pair), not unknown slots."""
    return values[np.isin(kinds, (EXACT, LOWER, UPPER)) & np.isfinite(values)]


def variance_scale(values: np.ndarray, log_floor: float | None) -> np.ndarray:
    """``values`` on the scale their within-cell spread is measured: the natural log of the values floored at
    ``log_floor`` (the fit column: a relative spread), or the values as they are (``log_floor`` None)."""
    return np.log(np.maximum(values, log_floor)) if log_floor is not None else values


def rounding_variance(pairs: pd.DataFrame | None, column: str) -> float:
    """The variance of a pair value's rounding, ``q^2 / 12`` for a value quantised in steps of ``q``: mc (pp of
    training error) moves in steps of half a training sample, ``q = 50 / n_train`` (``data.n_train`` of the
    rows; the largest, i.e. the finest step, where cells differ); 0 for any other column or without
    ``data.n_train``. Without this floor a grid whose converged pairs agree exactly (mc = 0 in every fitted
    cell) has no within-cell variance, and a single cell with two differing values sets every cell's prior."""
    if pairs is None or column != "connectivity.mc" or "data.n_train" not in pairs.columns:
        return 0.0
    n = pd.to_numeric(pairs["data.n_train"], errors="coerce").dropna()
    if n.empty or not n.max() > 0:
        return 0.0
    q = 50.0 / float(n.max())
    return q * q / 12.0


#: The share of a pair value's variance that belongs to its two models (``sigma_a^2 / (sigma_a^2 + sigma_e^2)`` in
#: :func:`pair_design_effect`) where the cell cannot tell it: with 3 seeds the pairs' spread is confounded with
#: it. 0 would treat the pairs as independent draws (too narrow: on the demo, fine and MNIST-1D grids rerun with
#: disjoint seed sets the cell means of mc and CKA varied 1-5x, typically 2-3x, more than that predicts); 1
#: treats their spread as all model-level (the delete-one-model jackknife, 4x for 3 seeds). The midpoint gives
#: 2.5x for 3 seeds.
PAIR_MODEL_SHARE = 0.5


def pair_design_effect(n_models: int, n_pairs: int, model_share: float = PAIR_MODEL_SHARE) -> float:
    """How much more a cell's mean over the pairs of its models varies than the mean of ``n_pairs`` independent
    values with the pairs' spread: ``Var(mean) / (E[s^2] / P)``.

    A pair value is ``v_ij = mu + a_i + a_j + e_ij`` (a model effect ``a`` of variance ``sigma_a^2`` shared by
    every pair a model is in, a pair effect ``e`` of variance ``sigma_e^2``). Over all ``P = n(n-1)/2`` pairs of
    ``n`` models: ``Var(mean) = 4 sigma_a^2 / n + 2 sigma_e^2 / (n (n - 1))`` (the mean is ``(2/n) sum a_i`` plus
    the pair effects' mean) and ``E[s^2] = (2 - f) sigma_a^2 + sigma_e^2`` with ``f = 2 (n - 2) / (P - 1)``
    the share of distinct pairs that share a model (their covariance is ``sigma_a^2``). ``model_share`` is
    ``sigma_a^2 / (sigma_a^2 + sigma_e^2)``. 1 where the pairs are not all pairs of the cell's models (the
    paper's one curve per cell; a partial set: its overlap is not known here) or ``P <= 1``. For 3 models:
    ``(1 + 3 model_share)``, from 1 (independent pairs) to 4."""
    n, p = int(n_models), int(n_pairs)
    if p <= 1 or n < 3 or p != n * (n - 1) // 2:
        return 1.0
    sa, se = float(model_share), 1.0 - float(model_share)
    var_mean = 4.0 * sa / n + 2.0 * se / (n * (n - 1))
    f = 2.0 * (n - 2) / (p - 1)
    e_s2 = (2.0 - f) * sa + se
    return float(var_mean / (e_s2 / p))


def predictive_means(
    rng: np.random.Generator,
    values: np.ndarray,
    kinds: np.ndarray,
    pool: np.ndarray,
    prior: VariancePrior,
    n_draw: int,
    log_floor: float | None = None,
    min_var: float = 0.0,
    design_effect: float = 1.0,
) -> np.ndarray:
    """``[n_draw]`` draws of the mean a rerun of the cell with new seeds would give for one metric (NaN when
    the cell has no slot of it).

    In every draw the cell's ``n`` slots are completed: exact values as measured; unknown slots drawn from
    ``pool`` (the grid's values: "a value this grid produces, nothing more is known"); a lower bound ``lb`` as
    ``max(lb, draw)``, an upper bound as ``min(ub, draw)``. The rerun's mean is the completed mean plus
    Student-t noise: ``s t_df sqrt(r/n^2 + 1/n)`` (our ``r`` measured values' share of our estimate's error,
    and the rerun's own noise; ``s^2 (1/r + 1/n)`` when every slot is measured), where ``s^2 = (nu0 s0^2 + (r -
    1) s_cell^2) / (nu0 + r - 1)`` shrinks the cell's sample variance of its exact values toward the grid's
    prior (``prior``) and ``df = nu0 + r - 1``. With ``log_floor`` (the fit column) the spread is relative:
    the variances are of the log values and the noise multiplies the mean by ``exp(...)``. ``min_var``: the
    least sample variance of two or more values (the measurement's rounding, :func:`rounding_variance`).
    ``design_effect``: the factor on that noise variance for slots that are not independent draws (pairs that
    share models, :func:`pair_design_effect`)."""
    n = values.size
    if n == 0:
        return np.full(n_draw, np.nan)
    exact = (kinds == EXACT) & np.isfinite(values)
    x = values[exact]
    r = x.size
    comp = np.broadcast_to(np.where(exact, values, 0.0), (n_draw, n)).copy()
    fill = ~exact
    if fill.any():
        if not pool.size:
            return np.full(n_draw, np.nan)
        draws = pool[rng.integers(0, pool.size, size=(n_draw, int(fill.sum())))]
        kv, vv = kinds[fill], values[fill]
        draws = np.where(kv == LOWER, np.maximum(vv, draws), draws)
        draws = np.where(kv == UPPER, np.minimum(vv, draws), draws)
        comp[:, fill] = draws
    mean = comp.mean(axis=1)
    t_vals = variance_scale(x, log_floor)
    s_cell_sq = max(float(t_vals.var(ddof=1)), min_var) if r >= 2 else 0.0
    s0_sq = prior.s0_sq if np.isfinite(prior.s0_sq) else 0.0
    df = prior.nu0 + max(r - 1, 0)
    s_sq = (prior.nu0 * s0_sq + max(r - 1, 0) * s_cell_sq) / df
    scale = np.sqrt(design_effect * s_sq * (r / n**2 + 1.0 / n))
    if scale <= 0:
        return mean
    noise = scale * rng.standard_t(df, size=n_draw)
    return mean * np.exp(noise) if log_floor is not None else mean + noise


# --------------------------------------------------------------------------- rank correlation
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
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            h *= step
        if abs(step - 1.0) < eps:
            break
    return math.exp(log_front) * h / a
