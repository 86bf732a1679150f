"""Estimators' uncertainties are calibrated, and the Hessian operator's uncached path is exact.

* The standard errors that the trace estimators report describe their real spread: over many seeds, the
  standard deviation of the estimates divided by the mean reported standard error is in [0.8, 1.25]
  (an explicit matrix, so the check is fast and needs no model).
* ``HessianOperator(cache_graph=False)`` (chosen automatically above 5M parameters, e.g. ResNet18 at k >= 64)
  equals ``torch.func.hessian`` in float64 column by column, as does the cached path.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import dense_hessian

from landscape.curvature import HessianOperator, trace
from landscape.models import MLP

trace_module = importlib.import_module("landscape.curvature.trace")  # the module (the package exports the function)


def _matrix(n: int = 60, seed: int = 0) -> torch.Tensor:
    """A symmetric indefinite matrix with a decaying spectrum (the shape of a trained network's Hessian)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.tensor([10.0 / (i + 1) for i in range(n)], dtype=torch.float64)
    lam[-5:] = -0.3
    return (q * lam) @ q.T


def _calibration(A: torch.Tensor, method: str, n_matvecs: int, n_seeds: int = 400) -> tuple[float, float]:
    """Over ``n_seeds`` seeds of ``trace(A, method, n_matvecs)``: the spread of the estimates over the mean
    reported standard error (1 if the errors are honest) and the z-score of the mean estimate's bias."""
    runs = [trace(A, method=method, n_matvecs=n_matvecs, seed=s) for s in range(n_seeds)]
    est = np.array([r.estimate for r in runs])
    err = np.array([r.stderr for r in runs])
    z = (est.mean() - float(torch.trace(A))) / (est.std(ddof=1) / np.sqrt(len(est)))
    return float(est.std(ddof=1) / err.mean()), float(z)


def _calibrated(ratio: float, z: float) -> bool:
    """The check: the spread/stderr ratio in [0.8, 1.25] and the mean of the runs within 4 of their standard
    errors of tr(A) (unbiased)."""
    return 0.8 <= ratio <= 1.25 and abs(z) <= 4


@pytest.mark.parametrize("method,n_matvecs", [("hutchinson", 20), ("hutch++", 30), ("hutch++", 60)])
def test_reported_stderr_matches_the_spread_over_seeds(method, n_matvecs):
    ratio, z = _calibration(_matrix(), method, n_matvecs)
    assert _calibrated(ratio, z), (method, n_matvecs, ratio, z)


def _stderr_without_sqrt_m(samples):
    """The classic slip: the probes' standard deviation reported as the estimate's standard error."""
    return float(samples.mean()), float(samples.std(unbiased=True))


def _stderr_halved(samples):
    return float(samples.mean()), float(samples.std(unbiased=True) / math.sqrt(samples.numel())) / 2


def _mean_off_by_5_percent(samples):
    """A normalisation slip (e.g. a scaled probe): every estimate 5 % high, its standard error honest."""
    return 1.05 * float(samples.mean()), 1.05 * float(samples.std(unbiased=True) / math.sqrt(samples.numel()))


@pytest.mark.parametrize("broken", [_stderr_without_sqrt_m, _stderr_halved, _mean_off_by_5_percent])
def test_the_calibration_check_can_fail(monkeypatch, broken):
    """The same check, fed a deliberately miscalibrated estimator (the library's own ``hutchinson`` with its
    mean/standard-error step replaced), flags it; the unmodified estimator passes it on the same seeds."""
    A = _matrix()
    assert _calibrated(*_calibration(A, "hutchinson", 20))
    monkeypatch.setattr(trace_module, "_mean_stderr", broken)
    ratio, z = _calibration(A, "hutchinson", 20)
    assert not _calibrated(ratio, z), (broken.__name__, ratio, z)


@pytest.mark.parametrize("cache_graph", [False, True])
def test_hessian_operator_equals_torch_func_hessian(cache_graph):
    torch.manual_seed(0)
    model = MLP(6, 3, width=7, depth=2, activation="tanh").double()
    x = torch.randn(50, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    H = dense_hessian(model, F.cross_entropy, x, y)
    op = HessianOperator(
        model, F.cross_entropy, (x, y), batch_size=16, dtype=torch.float64, max_block=5, cache_graph=cache_graph
    )
    P = H.shape[0]
    eye = torch.eye(P, dtype=torch.float64)
    cols = op.matmat(eye)  # blocks of 5 columns, 4 batches of unequal size (16, 16, 16, 2)
    torch.testing.assert_close(cols, H, rtol=1e-10, atol=1e-12)
    v = torch.randn(P, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert op.n_products == P + 1
