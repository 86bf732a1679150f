"""Boettcher & Wheeler: trace from random second differences vs exact/Hutchinson traces; the saddle check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from landscape.directions import flat_parameters, unflatten
from landscape.models import MLP
from landscape.projection_trace import projection_trace, saddle_check


def exact_hessian(model: nn.Module, loss_fn, x, y) -> torch.Tensor:
    theta = flat_parameters(model)

    def f(flat):
        return loss_fn(functional_call(model, unflatten(flat, model), (x,)), y)

    return hessian(f)(theta)


@pytest.fixture(scope="module")
def small_problem():
    torch.manual_seed(0)
    model = MLP(5, 3, width=6, depth=1, activation="tanh").double()
    x = torch.randn(60, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (60,))
    h = exact_hessian(model, nn.functional.cross_entropy, x, y)
    return model, x, y, h


def test_projection_trace_matches_exact_trace_and_stderr_formula(small_problem):
    model, x, y, h = small_problem
    tr, tr2 = float(torch.trace(h)), float(torch.trace(h @ h))
    n = 400
    est = projection_trace(model, nn.functional.cross_entropy, x, y, n_directions=n, epsilon=1e-3, seed=1)
    assert est.n_directions == n and est.samples.shape == (n,)
    assert abs(est.estimate - tr) < 3 * est.stderr, (est.estimate, tr, est.stderr)
    formula = np.sqrt(2 * tr2 / n)
    assert 0.75 < est.stderr / formula < 1.33, (est.stderr, formula)
    # each sample is d'Hd up to O(eps^2): check against the exact quadratic form for the same directions
    gen = torch.Generator().manual_seed(1)
    d = torch.randn(16, h.shape[0], generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(est.samples[:16], torch.einsum("ip,pq,iq->i", d, h, d).numpy(), rtol=1e-4, atol=1e-6)


def test_projection_trace_spread_across_seeds_follows_formula(small_problem):
    model, x, y, h = small_problem
    tr2 = float(torch.trace(h @ h))
    n = 40
    ests = [
        projection_trace(model, nn.functional.cross_entropy, x, y, n_directions=n, seed=s).estimate for s in range(40)
    ]
    ratio = np.std(ests, ddof=1) / np.sqrt(2 * tr2 / n)
    assert 0.7 < ratio < 1.4, ratio  # chi-square spread of a 40-sample std: about +-12 %


def test_projection_trace_agrees_with_hutchinson_on_a_larger_model():
    from landscape import curvature

    torch.manual_seed(2)
    model = MLP(64, 10, width=32, depth=2, activation="tanh").double()  # smooth: see the ReLU note below
    x, y = torch.randn(100, 64, dtype=torch.float64), torch.randint(0, 10, (100,))
    lf = nn.functional.cross_entropy
    ours = projection_trace(model, lf, x, y, n_directions=200, epsilon=1e-3, seed=0)
    op = curvature.HessianOperator(model, lf, (x, y))
    ref = curvature.trace(op, method="hutch++", n_matvecs=150, seed=0)
    sigma = np.hypot(ours.stderr, float(ref.stderr))
    assert abs(ours.estimate - float(ref.estimate)) < 3.5 * sigma, (ours.estimate, ref.estimate, sigma)


class Quadratic(nn.Module):
    """Logits ``[n, 1]`` all equal to ``0.5 theta' A theta``; theta starts at 0 (a critical point of A)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.theta = nn.Parameter(torch.zeros(a.shape[0], dtype=a.dtype))

    def forward(self, x):
        return (0.5 * self.theta @ self.a @ self.theta).expand(x.shape[0], 1)


def test_saddle_looks_like_a_minimum_in_random_projections_but_not_in_hessian_directions():
    gen = torch.Generator().manual_seed(0)
    p = 60
    eig = torch.cat(
        [torch.rand(p - 1, generator=gen, dtype=torch.float64) * 1.5 + 0.5, torch.tensor([-0.2], dtype=torch.float64)]
    )
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(eig) @ q.T  # many positive eigenvalues, one small negative one
    model = Quadratic(a)
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    lf = lambda logits, t: logits.mean()  # noqa: E731 - a one-line helper used on the next lines
    v_max, v_min = q[:, int(eig.argmax())], q[:, int(eig.argmin())]
    res = saddle_check(model, lf, x, y, n_draws=40, step=0.1, seed=3, hessian_dirs=(v_max, v_min))
    assert res.share_minimum >= 0.9
    assert res.random_curvatures.shape == (40, 2)
    np.testing.assert_allclose(res.hessian_curvatures, [-0.2, float(eig.max())], rtol=1e-8, atol=1e-10)
    # the exact Hessian confirms it is a saddle: one negative eigenvalue
    assert int((torch.linalg.eigvalsh(a) < 0).sum()) == 1


def test_hessian_directions_from_the_curvature_module_show_the_saddle():
    from landscape.directions import hessian_directions

    gen = torch.Generator().manual_seed(1)
    p = 40
    eig = torch.cat(
        [torch.rand(p - 1, generator=gen, dtype=torch.float64) + 0.5, torch.tensor([-0.1], dtype=torch.float64)]
    )
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    model = Quadratic(q @ torch.diag(eig) @ q.T)
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    lf = lambda logits, t: logits.mean()  # noqa: E731 - a one-line helper used on the next lines
    v_max, v_min, lam_max, lam_min = hessian_directions(model, lf, x, y, tol=1e-10, max_iter=200)
    assert lam_max == pytest.approx(float(eig.max()), rel=1e-8) and lam_min == pytest.approx(-0.1, rel=1e-8)
    assert abs(float(v_min @ q[:, int(eig.argmin())])) == pytest.approx(1.0, abs=1e-6)
    res = saddle_check(model, lf, x, y, n_draws=20, step=0.1, seed=0, hessian_dirs=(v_max, v_min))
    assert res.share_minimum >= 0.9
    assert res.hessian_curvatures[0] == pytest.approx(-0.1, abs=1e-6) and res.hessian_curvatures[1] > 0


def test_relative_step_is_local_and_the_hessian_check_is_exact(small_problem):
    model, x, y, h = small_problem
    lf = nn.functional.cross_entropy
    theta = flat_parameters(model)
    est = projection_trace(model, lf, x, y, n_directions=32, epsilon=1e-2, seed=3, check_hessian=True)
    assert est.step == "relative" and est.step_length == pytest.approx(1e-2 * float(theta.norm()), rel=1e-12)
    # the check's quadratic forms are the exact d'Hd of the same directions (explicit float64 Hessian)
    gen = torch.Generator().manual_seed(3)
    d = torch.randn(32, h.shape[0], generator=gen, dtype=torch.float64)
    exact = torch.einsum("ip,pq,iq->i", d, h, d).numpy()
    np.testing.assert_allclose(est.hvp_samples, exact, rtol=1e-10, atol=1e-12)
    # second differences: the same numbers up to the O(h^2) bias of a smooth model
    np.testing.assert_allclose(est.samples, exact, rtol=1e-3, atol=1e-6)
    assert abs(est.bias) < 1e-3 * abs(est.hvp_estimate) and abs(est.bias) < 0.1 * est.stderr
    # the absolute step of the formula moves the parameters by about eps * sqrt(P)
    absolute = projection_trace(model, lf, x, y, n_directions=32, epsilon=1e-2, seed=3, step="absolute")
    assert absolute.step_length == pytest.approx(1e-2 * np.sqrt(theta.numel()), rel=0.2)
    with pytest.raises(ValueError, match="step='big'"):
        projection_trace(model, lf, x, y, step="big")


def _trace_rows(cli, tmp_path, activation: str):
    from landscape.results.io import load

    cli(
        [
            "-m",
            f"hydra.sweep.dir={activation}",
            "model.width=32",
            f"model.activation={activation}",
            "train.epochs=10",
            "metrics.l2.enabled=false",
            "metrics.hessian.enabled=true",
            "metrics.projection_trace.enabled=true",
        ]
    )
    return load(tmp_path / activation)


def test_projection_trace_agrees_with_the_hessian_trace_on_tanh_through_the_cli(cli, tmp_path):
    """Digits, tanh MLP (width 32, depth 2), default settings of both families (same evaluation subset):
    the projection trace is within 3 combined standard errors of ``hessian.trace`` and flagged as agreeing."""
    m = _trace_rows(cli, tmp_path, "tanh")
    assert len(m) == 2
    sigma = np.hypot(m["projection_trace.stderr"], m["hessian.trace_stderr"])
    z = (m["projection_trace.estimate"] - m["hessian.trace"]) / sigma
    assert (z.abs() < 3).all(), z.tolist()
    assert m["projection_trace.agrees"].all() and (m["projection_trace.step"] == "relative").all()
    assert (m["projection_trace.bias"].abs() < 0.1 * m["projection_trace.stderr"]).all()


def test_projection_trace_on_relu_is_flagged_through_the_cli(cli, tmp_path):
    """The same on a ReLU MLP: the second differences see the kinks, the flag is set on every model."""
    m = _trace_rows(cli, tmp_path, "relu")
    assert len(m) == 2
    assert (~m["projection_trace.agrees"].astype(bool)).all(), m["projection_trace.z_vs_hessian"].tolist()
    assert (m["projection_trace.z_vs_hessian"].abs() > 3).all()
    # the exact quadratic forms of the same directions agree with the Hessian family's trace
    sigma = np.hypot(m["projection_trace.stderr"], m["hessian.trace_stderr"])
    assert ((m["projection_trace.hvp_estimate"] - m["hessian.trace"]).abs() < 3 * sigma).all()


def test_bad_projection_trace_settings_are_named():
    from landscape.metrics import projection_trace as fam

    problems = fam.FAMILY.problems  # the contract's check: each field's rule (the family has no cross-field rules)
    assert problems(fam.Config()) == []
    assert problems(fam.Config(step="big")) == [
        "metrics.projection_trace.step='big': expected one of relative, absolute"
    ]
    assert problems(fam.Config(epsilon=0.0)) == [
        "metrics.projection_trace.epsilon=0.0: expected a finite number > 0, at most 3.4e38 (float32)"
    ]
