"""HessianOperator and the estimators against the exact Hessian (torch.func.hessian, float64) of small models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import small_bn_cnn_f64 as _cnn_bn
from helpers import small_mlp_f64 as _mlp
from torch import nn
from torch.func import functional_call

from landscape.curvature import HessianOperator, eigenvalues, spectral_density, trace
from landscape.models import MLP


def _saddle() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    # A tanh MLP at a random point with large weights and noisy labels: strongly indefinite Hessian.
    torch.manual_seed(2)
    model = MLP(4, 3, width=8, depth=2, activation="tanh").double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    x = torch.randn(25, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (25,))
    return model, x, y


MODELS = {"mlp": _mlp, "cnn_bn": _cnn_bn, "saddle": _saddle}


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Dense Hessian of the mean cross-entropy in eval mode, via torch.func.hessian over the flat parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    buffers = dict(model.named_buffers())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    model.eval()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, theta.split(sizes), shapes, strict=True)}
        return F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y)

    return torch.func.hessian(loss)(flat)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    model, x, y = MODELS[request.param]()
    H = exact_hessian(model, x, y)
    return request.param, model, x, y, H, torch.linalg.eigvalsh(H)


def test_operator_equals_exact_hessian(case):
    name, model, x, y, H, _ = case
    op = HessianOperator(model, F.cross_entropy, (x, y))
    assert op.shape == H.shape
    dense = op.dense()
    assert torch.allclose(dense, H, rtol=0, atol=1e-12 * float(H.abs().max()))
    v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(op.matvec(v), H @ v, atol=1e-12 * float(H.abs().max()) * float(v.norm()))


def test_unequal_batches_give_the_same_operator(case):
    name, model, x, y, H, _ = case
    n = x.shape[0]
    cuts = [0, 3, 3 + n // 2, n]  # batches of 3, n//2 and the rest
    batches = [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    V = torch.randn(H.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    one = HessianOperator(model, F.cross_entropy, (x, y)).matmat(V)
    many = HessianOperator(model, F.cross_entropy, batches).matmat(V)
    chunked = HessianOperator(model, F.cross_entropy, (x, y), batch_size=7, max_block=2).matmat(V)
    assert torch.allclose(one, H @ V, atol=1e-12 * float(H.abs().max()) * 10)
    assert torch.allclose(many, one, atol=1e-13 * float(one.abs().max()) * 10)
    assert torch.allclose(chunked, one, atol=1e-13 * float(one.abs().max()) * 10)
    # the unweighted mean of per-batch Hessians differs: the weighting matters here
    per_batch = torch.stack([HessianOperator(model, F.cross_entropy, b).matmat(V) for b in batches]).mean(0)
    assert not torch.allclose(per_batch, one, atol=1e-6 * float(one.abs().max()))


def test_extreme_eigenvalues_match_exact(case):
    name, model, x, y, H, lam = case
    op = HessianOperator(model, F.cross_entropy, (x, y))
    top = eigenvalues(op, k=3, which="largest", tol=1e-9, max_iter=2000, seed=0)
    low = eigenvalues(op, k=2, which="smallest", tol=1e-9, max_iter=2000, seed=1)
    scale = float(lam.abs().max())
    assert top.converged and low.converged
    assert torch.allclose(top.values, lam.flip(0)[:3], rtol=1e-6, atol=1e-9 * scale)
    assert torch.allclose(low.values, lam[:2], rtol=1e-6, atol=1e-9 * scale)
    # reported residuals are the true ones
    Hv = H @ top.vectors
    true_res = torch.linalg.vector_norm(Hv - top.vectors * top.values, dim=0)
    assert torch.allclose(top.residuals, true_res, atol=1e-10 * scale)
    if name == "saddle":
        assert float(lam[0]) < -0.05 * scale  # the exact spectrum is indefinite
        assert float(low.values[0]) < 0


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_stderr(case, method):
    name, model, x, y, H, lam = case
    op = HessianOperator(model, F.cross_entropy, (x, y))
    exact = float(torch.trace(H))
    for seed in range(3):
        r = trace(op, method=method, n_matvecs=60, seed=seed)
        assert r.n_matvecs == 60 and r.stderr > 0
        assert abs(r.estimate - exact) <= 3 * r.stderr, (name, method, seed, r.estimate, exact, r.stderr)


def test_density_moments_match_exact(case):
    name, model, x, y, H, lam = case
    op = HessianOperator(model, F.cross_entropy, (x, y))
    d = spectral_density(op, n_probes=12, n_steps=20, grid=201, seed=0)
    exact = torch.stack([(lam**p).mean() for p in range(1, 5)])
    # Gauss quadrature with 20 nodes is exact for degree <= 39: only the probe noise remains
    assert torch.all((d.moments - exact).abs() <= 3.5 * d.moments_stderr + 1e-10 * exact.abs()), (
        d.moments,
        exact,
        d.moments_stderr,
    )
    assert abs(d.trace - float(lam.sum())) <= 3.5 * d.trace_stderr
    # the broadened density is a probability density on the grid
    mass = torch.trapezoid(d.density, d.grid)
    assert abs(float(mass) - 1.0) < 1e-3
    exact_negative = float((lam < -1e-6 * lam.abs().max()).double().mean())
    assert abs(d.negative_mass - exact_negative) < 0.2
    if name == "saddle":
        assert d.negative_mass > 0.02 and d.negative_weight > 0


def test_float32_and_eval_mode():
    model, x, y = _cnn_bn()
    H = exact_hessian(model, x, y)
    model.train()  # the operator must still use running statistics and leave the flag alone
    op32 = HessianOperator(model, F.cross_entropy, (x, y), dtype=torch.float32)
    assert op32.dtype == torch.float32
    V = torch.randn(H.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = op32.matmat(V.float()).double()
    assert torch.allclose(out, H @ V, atol=1e-4 * float((H @ V).abs().max()))
    assert model.training
    assert next(model.parameters()).dtype == torch.float64  # the model itself is untouched
