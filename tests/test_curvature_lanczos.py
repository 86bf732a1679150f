"""One Lanczos run for both ends of a spectrum (and a density probe), the memory-sized batching of the Hessian
operator and its per-column products: checked against explicit matrices and the exact Hessian (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import dense_hessian
from helpers import with_spectrum as _with_spectrum

from landscape.curvature import (
    HessianOperator,
    MatrixOperator,
    eigenvalues,
    extreme_eigenpairs,
    first_probe,
    lanczos_quadrature,
    spectral_density,
)
from landscape.models import MLP

N = 300


def _hessian_like(seed: int = 0) -> torch.Tensor:
    """A few large positive outliers, a wide bulk and a small negative tail close to it."""
    g = torch.Generator().manual_seed(seed)
    bulk = -0.3 + 3.3 * torch.rand(N - 8, generator=g, dtype=torch.float64)
    return torch.cat([torch.tensor([50.0, 31.0, 20.0, 12.0, 7.0]), bulk, torch.tensor([-0.8, -0.5, -0.45])])


@pytest.mark.parametrize("basis_size", [None, 25])
def test_one_run_serves_both_ends(basis_size):
    lam = _hessian_like().sort().values
    A = _with_spectrum(lam)
    op = MatrixOperator(A)
    ends = extreme_eigenpairs(op, k_largest=2, k_smallest=2, tol=1e-9, max_iter=2000, seed=0, basis_size=basis_size)
    assert ends.largest is not None and ends.smallest is not None
    assert ends.largest.converged and ends.smallest.converged
    scale = float(lam.abs().max())
    assert torch.allclose(ends.largest.values, lam.flip(0)[:2], atol=1e-8 * scale, rtol=0)
    assert torch.allclose(ends.smallest.values, lam[:2], atol=1e-8 * scale, rtol=0)
    for r in (ends.largest, ends.smallest):  # the reported residuals are the true ones
        res = torch.linalg.vector_norm(A @ r.vectors - r.vectors * r.values, dim=0)
        assert torch.allclose(res, r.residuals, atol=1e-12 * scale)
        assert bool((res <= 1e-9 * scale * 1.0001).all())
    assert ends.n_matvecs == op.n_products
    if basis_size:
        assert ends.n_matvecs > basis_size  # it had to restart, and still found both ends
    # no more products than the two separate runs together
    sep = eigenvalues(
        MatrixOperator(A), k=2, which="largest", tol=1e-9, max_iter=2000, seed=0, basis_size=basis_size
    ).n_matvecs
    sep += eigenvalues(
        MatrixOperator(A), k=2, which="smallest", tol=1e-9, max_iter=2000, seed=0, basis_size=basis_size
    ).n_matvecs
    assert ends.n_matvecs < sep


def test_the_run_hands_its_first_steps_to_the_density():
    lam = _hessian_like(1)
    op = MatrixOperator(_with_spectrum(lam, 1))
    n_probes, steps, seed = 5, 40, 7
    v0 = first_probe(N, n_probes, seed, 4, op.dtype, op.device)
    ends = extreme_eigenpairs(op, k_largest=1, k_smallest=1, tol=1e-6, max_iter=500, seed=0, v0=v0, min_steps=steps)
    assert len(ends.alpha) >= steps  # it went on past convergence for the density probe
    nodes, weights, spent = lanczos_quadrature(op, n_probes, steps, seed=seed, block=4)
    nodes2, weights2, spent2 = lanczos_quadrature(
        op, n_probes, steps, seed=seed, block=4, first=(ends.alpha, ends.beta)
    )
    assert spent == n_probes * steps and spent2 == (n_probes - 1) * steps
    # the eigenvalue run's tridiagonal is the first probe's: the same quadrature
    assert torch.allclose(nodes2, nodes, atol=1e-9 * float(lam.abs().max()))
    assert torch.allclose(weights2, weights, atol=1e-9)
    d = spectral_density(op, n_probes=n_probes, n_steps=steps, seed=seed, block=4)
    d2 = spectral_density(op, n_probes=n_probes, n_steps=steps, seed=seed, block=4, first=(ends.alpha, ends.beta))
    assert d2.trace == pytest.approx(d.trace, rel=1e-9) and d2.negative_mass == pytest.approx(d.negative_mass)


def test_a_too_short_first_probe_is_recomputed():
    op = MatrixOperator(_with_spectrum(_hessian_like(2), 2))
    v0 = first_probe(N, 3, 0, 8, op.dtype, op.device)
    ends = extreme_eigenpairs(op, k_largest=1, k_smallest=0, tol=1e-3, max_iter=6, v0=v0)
    assert len(ends.alpha) == 6
    _, _, spent = lanczos_quadrature(op, 3, 20, seed=0, first=(ends.alpha, ends.beta))
    assert spent == 3 * 20


def _mlp_problem():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(90, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (90,), generator=g)
    torch.manual_seed(3)
    model = MLP(6, 4, width=7, depth=2, activation="tanh").double().eval()
    return model, x, y


def test_memory_sized_batches_give_the_exact_hessian():
    model, x, y = _mlp_problem()
    exact = dense_hessian(model, F.cross_entropy, x, y)  # torch.func.hessian of the loss of a flat vector
    assert exact.shape == (137, 137) and float(exact.abs().max()) > 1e-2  # 6*7+7 + 7*7+7 + 7*4+4 parameters
    whole = HessianOperator(model, F.cross_entropy, (x, y), batch_size=None)
    one = HessianOperator(model, F.cross_entropy, (x, y), batch_size="auto")
    assert len(one.batches) == 1  # plenty of memory: the whole set in one graph
    per_sample = one.graph_bytes_per_sample(x, y)
    tight = HessianOperator(model, F.cross_entropy, (x, y), batch_size="auto", memory_budget=int(2 * per_sample * 30))
    assert len(tight.batches) == 3 and {int(b[0].shape[0]) for b in tight.batches} == {30}
    for op in (whole, one, tight):
        torch.testing.assert_close(op.dense(), exact, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="batch_size='big'"):
        HessianOperator(model, F.cross_entropy, (x, y), batch_size="big")


def test_per_column_and_batched_products_agree():
    model, x, y = _mlp_problem()
    H = dense_hessian(model, F.cross_entropy, x, y)
    V = torch.randn(H.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # 40-sample batches: 40, 40, 10 (unequal weights); blocks of 2 columns: 2, 2, 1
    cols = HessianOperator(model, F.cross_entropy, (x, y), batch_size=40, batched=False)
    blocks = HessianOperator(model, F.cross_entropy, (x, y), batch_size=40, batched=True, max_block=2)
    assert not cols.batched  # CPU default is per column, too
    for op in (cols, blocks):
        torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(op.matvec(V[:, 0]), H @ V[:, 0], rtol=1e-10, atol=1e-12)
    assert cols.n_products == blocks.n_products == 6


def test_trace_deflated_by_the_eigenvalue_run():
    from landscape.curvature import deflated_hutchinson, hutch_plus_plus

    lam = _hessian_like(4)
    op = MatrixOperator(_with_spectrum(lam, 4))
    exact = float(lam.sum())
    ends = extreme_eigenpairs(op, k_largest=1, k_smallest=1, tol=1e-4, max_iter=300, seed=0)
    j = ends.basis.shape[0]
    assert j < N and torch.allclose(ends.basis @ ends.basis.T, torch.eye(j, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(ends.projected, ends.basis @ op.matrix @ ends.basis.T, atol=1e-10)
    z, err_defl, err_pp = [], [], []
    for seed in range(1, 21):
        before = op.n_products
        r = deflated_hutchinson(op, ends.basis, ends.projected, n_probes=20, seed=seed)
        assert r.n_matvecs == 20 == op.n_products - before and r.method == "krylov"
        z.append((r.estimate - exact) / r.stderr)
        err_defl.append(abs(r.estimate - exact))
        err_pp.append(abs(hutch_plus_plus(op, n_matvecs=60, seed=seed).estimate - exact))
    z = torch.tensor(z)
    assert float(z.abs().max()) < 4 and abs(float(z.mean())) < 1.0  # unbiased, honest standard errors
    assert sum(err_defl) < sum(err_pp)  # 20 products after the run beat Hutch++'s 60 here
    with pytest.raises(ValueError, match="n_probes=1"):
        deflated_hutchinson(op, ends.basis, ends.projected, n_probes=1)
