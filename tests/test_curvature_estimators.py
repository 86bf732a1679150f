"""Eigenvalue, trace and density estimators on explicit symmetric matrices with known spectra."""

from __future__ import annotations

import pytest
import torch
from helpers import with_spectrum as _with_spectrum

from landscape.curvature import (
    MatrixOperator,
    eigenvalues,
    hutch_plus_plus,
    hutchinson,
    power_iteration,
    spectral_density,
    taxonomy_trace,
    trace,
)

N = 200


def _spectra() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    clustered = torch.cat(
        [
            torch.tensor([10.0, 9.999, 9.998]),
            1 + 0.01 * torch.rand(N - 6, generator=g, dtype=torch.float64),
            torch.tensor([-4.0, -3.999, -3.998]),
        ]
    )
    low_rank = torch.cat(
        [torch.tensor([300.0, 120.0, 60.0, 30.0, 10.0]), 1e-2 * torch.randn(N - 5, generator=g, dtype=torch.float64)]
    )
    indefinite = torch.linspace(-3.0, 5.0, N, dtype=torch.float64)
    return {"clustered": clustered, "low_rank": low_rank, "indefinite": indefinite}


SPECTRA = _spectra()


@pytest.mark.parametrize("name", list(SPECTRA))
@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_lanczos_extreme_eigenpairs(name, which):
    lam = SPECTRA[name].sort().values
    op = MatrixOperator(_with_spectrum(lam))
    r = eigenvalues(op, k=3, which=which, tol=1e-10, max_iter=3000, seed=0)
    want = lam.flip(0)[:3] if which == "largest" else lam[:3]
    assert r.converged
    assert torch.allclose(r.values, want, rtol=1e-9, atol=1e-9 * float(lam.abs().max()))
    assert r.n_matvecs == op.n_products
    # vectors are orthonormal eigenvectors with the reported residuals
    assert torch.allclose(r.vectors.T @ r.vectors, torch.eye(3, dtype=torch.float64), atol=1e-8)
    res = torch.linalg.vector_norm(op.matrix @ r.vectors - r.vectors * r.values, dim=0)
    assert torch.allclose(res, r.residuals, atol=1e-12 * float(lam.abs().max()))


def test_lanczos_restarts_and_finds_the_most_negative_eigenvalue():
    lam = SPECTRA["indefinite"]
    op = MatrixOperator(_with_spectrum(lam))
    r = eigenvalues(op, k=1, which="smallest", tol=1e-8, max_iter=3000, basis_size=12, seed=3)
    assert r.converged and abs(float(r.values[0]) + 3.0) < 1e-8
    assert r.n_matvecs > 12  # it had to restart


def test_lanczos_reports_non_convergence_honestly():
    op = MatrixOperator(_with_spectrum(SPECTRA["indefinite"]))
    r = eigenvalues(op, k=1, which="largest", tol=1e-12, max_iter=5, seed=0)
    assert not r.converged and r.n_matvecs == 5 and float(r.residuals[0]) > 1e-12


def test_lanczos_on_an_exactly_low_rank_matrix():
    lam = torch.zeros(N, dtype=torch.float64)
    lam[:3] = torch.tensor([5.0, -2.0, 1.0])
    r = eigenvalues(_with_spectrum(lam), k=2, which="smallest", tol=1e-10, max_iter=500)
    assert torch.allclose(r.values, torch.tensor([-2.0, 0.0], dtype=torch.float64), atol=1e-9)


def test_power_iteration_matches_pyhessian_rules():
    lam = SPECTRA["low_rank"]
    op = MatrixOperator(_with_spectrum(lam))
    r = power_iteration(op, k=2, max_iter=100, tol=1e-3, seed=0)
    assert r.converged
    assert torch.allclose(r.values, torch.tensor([300.0, 120.0], dtype=torch.float64), rtol=2e-3)
    capped = power_iteration(MatrixOperator(_with_spectrum(SPECTRA["clustered"])), k=1, max_iter=3, tol=1e-12)
    assert not capped.converged and capped.n_matvecs == 4  # 3 iterations + the residual product


@pytest.mark.parametrize("name", list(SPECTRA))
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_trace_within_three_stderr(name, method):
    lam = SPECTRA[name]
    op = MatrixOperator(_with_spectrum(lam))
    for seed in range(4):
        r = trace(op, method=method, n_matvecs=60, seed=seed)
        assert r.n_matvecs == 60 and op.n_products == 60 * (seed + 1)
        assert abs(r.estimate - float(lam.sum())) <= 3 * r.stderr


def test_hutch_plus_plus_beats_hutchinson_on_low_rank():
    op = MatrixOperator(_with_spectrum(SPECTRA["low_rank"]))
    exact = float(SPECTRA["low_rank"].sum())
    plain = hutchinson(op, n_matvecs=30, seed=0)
    pp = hutch_plus_plus(op, n_matvecs=30, seed=0)
    assert plain.stderr >= 3 * pp.stderr
    assert abs(pp.estimate - exact) < abs(plain.estimate - exact)
    assert abs(pp.estimate - exact) <= 3 * pp.stderr


def test_taxonomy_trace_stops_by_pyhessian_rule():
    op = MatrixOperator(torch.eye(N, dtype=torch.float64) * 2.0)  # z^T A z = 2N for every Rademacher z
    r = taxonomy_trace(op, max_iter=100, tol=1e-3, seed=0)
    assert r.n_matvecs == 2 and r.estimate == pytest.approx(2.0 * N) and r.stderr == 0.0


@pytest.mark.parametrize("name", list(SPECTRA))
def test_density_moments_and_negative_mass(name):
    lam = SPECTRA[name]
    op = MatrixOperator(_with_spectrum(lam))
    d = spectral_density(op, n_probes=16, n_steps=30, grid=301, seed=0)
    exact = torch.stack([(lam**p).mean() for p in range(1, 5)])
    assert torch.all((d.moments - exact).abs() <= 3.5 * d.moments_stderr + 1e-10 * exact.abs())
    assert d.n_matvecs == 16 * 30
    assert abs(float(torch.trapezoid(d.density, d.grid)) - 1.0) < 1e-3
    exact_neg = float((lam < 0).double().mean())
    if name != "low_rank":  # there, half of the noise eigenvalues are negative but tiny: still counted
        assert abs(d.negative_mass - exact_neg) < 0.1
    # the density peaks where the spectrum is
    peak = float(d.grid[torch.argmax(d.density)])
    if name == "clustered":
        assert 0.9 < peak < 1.1


def test_density_exact_with_full_lanczos():
    lam = SPECTRA["indefinite"][::10].contiguous()  # n = 20: 20 steps give the exact spectral measure per probe
    d = spectral_density(_with_spectrum(lam), n_probes=3, n_steps=20, grid=101)
    assert torch.allclose(d.nodes.sort(dim=1).values, lam.sort().values.expand(3, -1), atol=1e-9)


def test_bad_arguments_are_named():
    A = _with_spectrum(SPECTRA["indefinite"])
    with pytest.raises(ValueError, match="which='middle'"):
        eigenvalues(A, which="middle")
    with pytest.raises(ValueError, match="method='exact'"):
        trace(A, method="exact")
    with pytest.raises(ValueError, match="n_matvecs=3"):
        hutch_plus_plus(A, n_matvecs=3)
    with pytest.raises(ValueError, match="not symmetric"):
        MatrixOperator(torch.triu(torch.ones(4, 4)))
