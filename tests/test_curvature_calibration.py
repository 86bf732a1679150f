"""Estimators' uncertainties are calibrated, and the Hessian operator's uncached path is exact.

* The standard errors that the trace estimators report describe their real spread: over many seeds, the
  standard deviation of the estimates divided by the mean reported standard error is in [0.8, 1.25]
  (an explicit matrix, so the check is fast and needs no model).
* ``HessianOperator(cache_graph=False)`` (chosen automatically above 5M parameters, e.g. ResNet18 at k >= 64)
  equals ``torch.func.hessian`` in float64 column by column, as does the cached path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from landscape.curvature import HessianOperator, trace
from landscape.models import MLP


def _matrix(n: int = 60, seed: int = 0) -> torch.Tensor:
    """A symmetric indefinite matrix with a decaying spectrum (the shape of a trained network's Hessian)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.tensor([10.0 / (i + 1) for i in range(n)], dtype=torch.float64)
    lam[-5:] = -0.3
    return (q * lam) @ q.T


@pytest.mark.parametrize("method,n_matvecs", [("hutchinson", 20), ("hutch++", 30), ("hutch++", 60)])
def test_reported_stderr_matches_the_spread_over_seeds(method, n_matvecs):
    A = _matrix()
    runs = [trace(A, method=method, n_matvecs=n_matvecs, seed=s) for s in range(400)]
    est = np.array([r.estimate for r in runs])
    err = np.array([r.stderr for r in runs])
    ratio = est.std(ddof=1) / err.mean()
    assert 0.8 <= ratio <= 1.25, (method, n_matvecs, ratio)
    # and the estimator is unbiased: the mean of 400 runs is within 4 standard errors of the mean of tr(A)
    assert abs(est.mean() - float(torch.trace(A))) <= 4 * est.std(ddof=1) / np.sqrt(len(est))


def test_krylov_trace_stderr_matches_the_spread_over_probe_seeds():
    """The hessian family's default trace (``krylov``): the eigenvalue run's Krylov basis exactly, the rest by
    projected Hutchinson probes. Its basis is fixed by the eigenvalue run's seed; the probes vary."""
    from landscape.curvature import deflated_hutchinson, extreme_eigenpairs

    A = _matrix()
    ends = extreme_eigenpairs(A, k_largest=1, k_smallest=1, tol=1e-3, max_iter=60, seed=1234)
    assert ends.basis.shape[0] < A.shape[0]  # a real remainder is left to the probes
    runs = [deflated_hutchinson(A, ends.basis, ends.projected, n_probes=20, seed=s) for s in range(400)]
    est = np.array([r.estimate for r in runs])
    ratio = est.std(ddof=1) / np.mean([r.stderr for r in runs])
    assert 0.8 <= ratio <= 1.25, ratio
    assert abs(est.mean() - float(torch.trace(A))) <= 4 * est.std(ddof=1) / np.sqrt(len(est))


def test_the_calibration_check_can_fail():
    """A stderr reported 2x too small (e.g. forgetting the sqrt(m)) is caught by the same bound."""
    A = _matrix()
    runs = [trace(A, method="hutchinson", n_matvecs=20, seed=s) for s in range(400)]
    ratio = np.std([r.estimate for r in runs], ddof=1) / np.mean([r.stderr / 2 for r in runs])
    assert not 0.8 <= ratio <= 1.25


def _exact(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = dict(zip(names, (c.reshape(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.func.hessian(loss)(theta)


@pytest.mark.parametrize("cache_graph", [False, True])
def test_hessian_operator_equals_torch_func_hessian(cache_graph):
    torch.manual_seed(0)
    model = MLP(6, 3, width=7, depth=2, activation="tanh").double()
    x = torch.randn(50, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    H = _exact(model, x, y)
    op = HessianOperator(model, F.cross_entropy, (x, y), batch_size=16, dtype=torch.float64, max_block=5,
                         cache_graph=cache_graph)
    P = H.shape[0]
    eye = torch.eye(P, dtype=torch.float64)
    cols = op.matmat(eye)  # blocks of 5 columns, 4 batches of unequal size (16, 16, 16, 2)
    torch.testing.assert_close(cols, H, rtol=1e-10, atol=1e-12)
    v = torch.randn(P, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-10, atol=1e-12)
    assert op.n_products == P + 1
