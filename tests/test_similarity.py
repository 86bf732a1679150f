"""CKA: exact identities, invariances, estimator agreement, minibatch convergence, errors on degenerate input."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from landscape.data import CellData
from landscape.models import MLP
from landscape.similarity import (
    MinibatchCKA,
    cka,
    cka_value,
    gram,
    hsic_unbiased,
    minibatch_cka,
    model_features,
    probe_inputs,
)


def _pair(n: int, seed: int = 0, p: int = 10, q: int = 6, noise: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    W = torch.randn(p, q, generator=g, dtype=torch.float64)
    Y = torch.tanh(X @ W) + noise * torch.randn(n, q, generator=g, dtype=torch.float64)
    return X, Y


def _orthogonal(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


SETTINGS = list(itertools.product(["linear", "rbf"], [False, True]))


def test_linear_cka_matches_feature_space_formula():
    # Kornblith et al. 2019: with centred features, linear CKA = |Y'X|_F^2 / (|X'X|_F |Y'Y|_F).
    X, Y = _pair(50)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    expected = torch.linalg.norm(Yc.T @ Xc) ** 2 / (torch.linalg.norm(Xc.T @ Xc) * torch.linalg.norm(Yc.T @ Yc))
    assert cka(X, Y) == pytest.approx(float(expected), rel=1e-12)


def test_unbiased_hsic_equals_the_u_statistic():
    # The Song et al. (2012) closed form equals the order-4 U-statistic over ordered tuples of distinct indices.
    X, Y = _pair(6, seed=3)
    K, L = gram(X), gram(Y, "rbf")
    n = 6
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += float(K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2 * K[i, j] * L[i, q])
        count += 1
    assert hsic_unbiased(K, L) == pytest.approx(total / count, rel=1e-10)


@pytest.mark.parametrize("kernel,debiased", SETTINGS)
def test_cka_of_a_matrix_with_itself_is_one(kernel, debiased):
    X, _ = _pair(80)
    assert cka(X, X, kernel, debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel,debiased", SETTINGS)
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(kernel, debiased):
    X, Y = _pair(120)
    base = cka(X, Y, kernel, debiased)
    assert 0.05 < base < 0.999  # a non-trivial value, so invariance is not vacuous
    Qx, Qy = _orthogonal(X.shape[1], 1), _orthogonal(Y.shape[1], 2)
    for Xt, Yt in [(X @ Qx, Y), (X, Y @ Qy), (3.7 * X, Y), (X, 0.02 * Y), (-5.0 * X @ Qx, 11.0 * Y @ Qy)]:
        assert cka(Xt, Yt, kernel, debiased) == pytest.approx(base, abs=1e-6)


@pytest.mark.parametrize("debiased", [False, True])
def test_not_invariant_to_a_general_invertible_linear_map(debiased):
    X, _ = _pair(200)
    Y = X[:, :2].clone()
    # invertible, not a multiple of an orthogonal map: stretches the 8 directions Y does not see by 30
    A = torch.diag(torch.tensor([1.0, 1.0] + [30.0] * 8, dtype=torch.float64))
    assert abs(cka(X @ A, Y, debiased=debiased) - cka(X, Y, debiased=debiased)) > 0.1


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_biased_and_debiased_agree_as_n_grows(kernel):
    gaps = []
    for n in (40, 2000):
        X, Y = _pair(n, seed=7, noise=2.0)
        gaps.append(abs(cka(X, Y, kernel, False) - cka(X, Y, kernel, True)))
    assert gaps[1] < 0.01
    assert gaps[1] < gaps[0] / 5


def test_minibatch_with_one_batch_is_the_debiased_estimate():
    X, Y = _pair(100)
    assert minibatch_cka(X, Y, batch_size=100) == pytest.approx(cka(X, Y, debiased=True), rel=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_minibatch_estimate_converges_to_the_full_one(kernel):
    X, Y = _pair(1600, seed=11)
    full = cka(X, Y, kernel, debiased=True)
    errors = [abs(minibatch_cka(X, Y, b, kernel) - full) for b in (16, 160, 800)]
    assert errors[2] < 0.005
    assert errors[2] < errors[0] / 5


def test_minibatch_accumulator_streams_batches():
    X, Y = _pair(256, seed=4)
    acc = MinibatchCKA()
    for i in range(0, 256, 64):
        acc.update(X[i : i + 64], Y[i : i + 64])
    assert acc.n_batches == 4 and acc.n_samples == 256
    assert acc.value() == pytest.approx(minibatch_cka(X, Y, 64), rel=1e-12)


@pytest.mark.parametrize("kernel,debiased", SETTINGS)
def test_constant_features_give_nan_with_reason(kernel, debiased):
    """A collapsed network's constant outputs: CKA is undefined, NaN with the reason, never an exception."""
    X, Y = _pair(20)
    const = torch.ones(20, 3, dtype=torch.float64) * 2.5
    for a, b, name in [(const, Y, "X"), (X, const, "Y")]:
        res = cka_value(a, b, kernel, debiased)
        assert math.isnan(res.value) and math.isnan(cka(a, b, kernel, debiased))
        assert res.reason.startswith(f"{name}: ") and re.search("zero variance|distinct rows", res.reason)
        acc = MinibatchCKA(kernel)
        acc.update(a, b)
        assert math.isnan(acc.value()) and re.search("zero variance|distinct rows", acc.result().reason)
    assert cka_value(X, Y, kernel, debiased).reason is None


def test_other_degenerate_inputs_raise():
    X, Y = _pair(20)
    with pytest.raises(ValueError, match="at least 4"):
        cka(X[:3], Y[:3], debiased=True)
    with pytest.raises(ValueError, match="same n"):
        cka(X, Y[:10])
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cka(bad, Y)
    with pytest.raises(ValueError, match="kernel='cosine'"):
        cka(X, Y, kernel="cosine")
    with pytest.raises(ValueError, match="no minibatch"):
        MinibatchCKA().value()
    with pytest.raises(ValueError, match="at least 4"):
        MinibatchCKA().update(X[:3], Y[:3])


# ------------------------------------------------------------------------------------------------ features
def _data(n: int = 40) -> CellData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return CellData("toy", x, y, y, x[: n // 2] + 1.0, y[: n // 2], 3)


def test_model_features_logits_softmax_and_layer():
    torch.manual_seed(0)
    model = MLP(5, 3, width=7, depth=2)
    x = torch.randn(11, 5)
    logits = model_features(model, x, "logits", batch_size=4)
    assert logits.shape == (11, 3) and logits.dtype == torch.float64
    torch.testing.assert_close(logits, model(x).double())
    soft = model_features(model, x, "softmax")
    torch.testing.assert_close(soft.sum(1), torch.ones(11, dtype=torch.float64))
    hidden = model_features(model, x, "layer", layer="net.2", batch_size=4)  # ReLU after the first Linear
    torch.testing.assert_close(hidden, torch.relu(model.net[1](x)).double())
    with pytest.raises(ValueError, match="layer='nope'"):
        model_features(model, x, "layer", layer="nope")


def _as_mixtures(m: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each row of ``m`` the pair ``(i, j)`` of rows of ``x`` and the weight ``lam`` in [0, 1] with
    ``m = lam x_i + (1 - lam) x_j`` that fits best (least squares over every ordered pair ``i != j``), and its
    residual: an independent reading of a mixup probe set, with no knowledge of how it was drawn."""
    x, m = x.double().reshape(len(x), -1), m.double().reshape(len(m), -1)
    d = x[:, None, :] - x[None, :, :]  # [n, n, p]: x_i - x_j
    r = m[:, None, None, :] - x[None, None, :, :]  # [k, 1, n, p]: m - x_j
    lam = ((r * d[None]).sum(-1) / (d * d).sum(-1).clamp_min(1e-30)[None]).clamp(0, 1)  # [k, n, n]
    res = (r - lam[..., None] * d[None]).norm(dim=-1)
    n = len(x)
    res = res + torch.eye(n, dtype=res.dtype)[None] * 1e9  # i == j is not a mixture
    best = res.reshape(len(m), -1).argmin(1)
    i, j = best // n, best % n
    k = torch.arange(len(m))
    return lam[k, i, j], res[k, i, j], torch.stack([i, j], 1)


def test_probe_sets_are_seeded_and_sized():
    from scipy import stats

    data = _data()
    a = probe_inputs(data, "test", 768, seed=1)
    assert a.shape == (20, 5)  # capped at the test-set size
    assert torch.equal(a, probe_inputs(data, "test", 768, seed=1))
    # test/train probes are distinct rows of their own split (drawn without replacement)
    rows = {tuple(r.tolist()) for r in data.x_test}
    assert {tuple(r.tolist()) for r in a} == rows
    t = probe_inputs(data, "train", 10, 2)
    assert torch.equal(t, probe_inputs(data, "train", 10, 2))
    assert len({tuple(r.tolist()) for r in t}) == 10 and {tuple(r.tolist()) for r in t} <= {
        tuple(r.tolist()) for r in data.x_train
    }
    m = probe_inputs(data, "mixup", 50, seed=3)
    assert m.shape == (50, 5)
    assert torch.equal(m, probe_inputs(data, "mixup", 50, seed=3))
    assert not torch.equal(m, probe_inputs(data, "mixup", 50, seed=4))
    # content: every mixup input is a convex combination of two *training* inputs (not test inputs) ...
    big = probe_inputs(data, "mixup", 1500, seed=5)
    lam, res, pairs = _as_mixtures(big, data.x_train)
    assert float(res.max()) < 1e-5 * float(data.x_train.abs().max())
    _, res_test, _ = _as_mixtures(big[:50], data.x_test)
    assert float(res_test.min()) > 1e-2  # (the test inputs here are shifted training inputs: no fit)
    # ... with i == j (the input itself: fit with lam at 0 or 1) for about 1 draw in 40 (Binomial(1500, 1/40):
    # 37.5 +- 6) ...
    same = torch.minimum(lam, 1 - lam) < 1e-6
    assert 15 <= int(same.sum()) <= 60
    pairs[same, 1] = torch.where(lam[same] > 0.5, pairs[same, 0], pairs[same, 1])  # the input twice
    pairs[same, 0] = pairs[same, 1]
    # ... lam ~ Beta(16, 16) otherwise (lam and 1 - lam are one draw read from either end: fold to [0, .5]) ...
    folded = torch.minimum(lam, 1 - lam)[~same].numpy()
    ks = stats.kstest(folded, lambda v: 2 * stats.beta.cdf(v, 16, 16))  # the documented Beta(16, 16)
    assert ks.pvalue > 1e-3, ks
    assert stats.kstest(folded, lambda v: 2 * stats.beta.cdf(v, 8, 8)).pvalue < 1e-6  # the test tells alphas apart
    # ... and i, j uniform over the training set: each of the 40 inputs used about 1500 * 2 / 40 = 75 times
    counts = torch.bincount(pairs.reshape(-1), minlength=40).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3 and counts.min() > 0
    with pytest.raises(ValueError, match="probe='val'"):
        probe_inputs(data, "val", 10, 0)
