"""Filter-normalised directions, flat-vector round trips and loss surfaces (analytic quadratic, vmap = loop)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landscape.directions import (
    filter_normalised_direction,
    flat_parameters,
    gaussian_direction,
    set_flat_parameters,
    unflatten,
)
from landscape.models import CNN, MLP
from landscape.surfaces import PointEvaluator, grid_axis, loss_surface


class Quadratic(nn.Module):
    """Outputs ``q(theta) = 0.5 theta' A theta + b' theta`` for every sample (logits ``[n, 1]``)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, theta: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("b", b)
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = 0.5 * self.theta @ self.a @ self.theta + self.b @ self.theta
        return q.expand(x.shape[0], 1)


def mean_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.mean()


def test_filter_normalisation_matches_trained_filter_norms():
    model = CNN((1, 8, 8), 10, width=4, depth=2, batch_norm=True)
    for p in model.parameters():  # make BN/bias parameters non-trivial so "zero" is a real check
        nn.init.normal_(p)
    d = filter_normalised_direction(model, seed=3)
    parts = unflatten(d, model)
    n_filters = 0
    for name, p in model.named_parameters():
        dp = parts[name]
        if p.dim() >= 2:
            got = dp.reshape(p.shape[0], -1).norm(dim=1)
            want = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            n_filters += p.shape[0]
            # the direction is not the weight itself (it is random within each filter)
            assert not torch.allclose(dp, p.detach())
        else:
            assert torch.count_nonzero(dp) == 0, name  # biases and BatchNorm weight/bias
    assert n_filters == 4 + 8 + 10
    # seeded: same seed same direction, other seed other direction
    torch.testing.assert_close(d, filter_normalised_direction(model, seed=3))
    assert not torch.allclose(d, filter_normalised_direction(model, seed=4))


def test_flat_round_trip():
    model = MLP(6, 3, width=5, depth=2)
    theta = flat_parameters(model)
    new = gaussian_direction(model, seed=0)
    set_flat_parameters(model, new)
    torch.testing.assert_close(flat_parameters(model), new)
    assert theta.shape == new.shape
    with pytest.raises(ValueError, match="trainable parameters"):
        set_flat_parameters(model, new[:-1])


def test_grid_on_quadratic_matches_analytic_surface(tmp_path):
    torch.manual_seed(0)
    p = 7
    m = torch.randn(p, p, dtype=torch.float64)
    a = m @ m.T - 2 * torch.eye(p, dtype=torch.float64)  # indefinite
    b = torch.randn(p, dtype=torch.float64)
    theta0 = torch.randn(p, dtype=torch.float64)
    model = Quadratic(a, b, theta0).double()
    d1, d2 = torch.randn(p, dtype=torch.float64), torch.randn(p, dtype=torch.float64)
    x, y = torch.zeros(10, 1, dtype=torch.float64), torch.zeros(10, dtype=torch.long)
    alphas, betas = grid_axis(1.5, 7), grid_axis(0.5, 5)
    surf = loss_surface(
        model, mean_logit, (x, y), d1, d2, alphas, betas, test=(x[:3], y[:3]), chunk=6, workdir=tmp_path
    )

    def q(t):
        return float(0.5 * t @ a @ t + b @ t)

    want = np.array([[q(theta0 + al * d1 + be * d2) for be in betas] for al in alphas])
    np.testing.assert_allclose(surf.train_loss, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(surf.test_loss, want, rtol=1e-12, atol=1e-12)
    # the long table
    df = surf.frame()
    assert list(df.columns) == ["alpha", "beta", "train_loss", "train_acc", "test_loss", "test_acc"]
    assert len(df) == 35
    row = df[(df.alpha == alphas[0]) & (df.beta == betas[-1])].iloc[0]
    assert row.train_loss == pytest.approx(want[0, -1], rel=1e-12)
    # the model itself was not moved
    torch.testing.assert_close(flat_parameters(model), theta0)
    # resumable: cached row blocks are reused (poison one and see it come back)
    files = sorted(tmp_path.glob("surface-*.pt"))
    assert len(files) == 7  # chunk 6 // 5 betas = one grid row per cached block
    block = torch.load(files[0], weights_only=True)
    block["train_loss"][:] = -1.0
    torch.save(block, files[0])
    again = loss_surface(
        model, mean_logit, (x, y), d1, d2, alphas, betas, test=(x[:3], y[:3]), chunk=6, workdir=tmp_path
    )
    assert (again.train_loss[0] == -1.0).all()
    np.testing.assert_allclose(again.train_loss[1:], want[1:], rtol=1e-12)
    # a 1-D line
    line = loss_surface(model, mean_logit, (x, y), d1, None, alphas)
    np.testing.assert_allclose(line.train_loss[:, 0], [q(theta0 + al * d1) for al in alphas], rtol=1e-12)
    assert line.test_loss is None and list(line.betas) == [0.0]


def test_vmap_batched_evaluation_equals_loop():
    torch.manual_seed(1)
    model = CNN((1, 8, 8), 10, width=3, depth=2, batch_norm=True)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model(torch.randn(64, 1, 8, 8) * 2 + 0.5)
    model.eval()
    x, y = torch.randn(50, 1, 8, 8), torch.randint(0, 10, (50,))
    theta = flat_parameters(model)
    points = theta + 0.3 * torch.randn(9, theta.numel())
    lf = nn.functional.cross_entropy
    lv, av = PointEvaluator(model, lf, x, y, batch_size=16, chunk=4, use_vmap=True)(points)
    ll, al = PointEvaluator(model, lf, x, y, batch_size=16, chunk=4, use_vmap=False)(points)
    np.testing.assert_allclose(lv, ll, rtol=1e-5)
    np.testing.assert_array_equal(av, al)
    # and both equal a plain forward pass of a model holding those parameters (eval mode)
    for k in (0, 5):
        set_flat_parameters(model, points[k])
        with torch.no_grad():
            logits = model(x)
        assert lv[k] == pytest.approx(float(lf(logits, y)), rel=1e-5)
        assert av[k] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert len(set(np.round(lv, 6))) == 9  # distinct points give distinct losses
