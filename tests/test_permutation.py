"""Permutation symmetry (landscape.permutation): specs, permuted models, weight matching, REPAIR."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from landscape.models import CNN, MLP, ResNet18
from landscape.permutation import (
    PermutationSpec,
    UnsupportedModel,
    align,
    apply_permutation,
    assignment_matrix,
    permutation_spec,
    permuted_model,
    repair,
    unit_statistics,
    weight_matching,
)

torch.set_num_threads(1)


def _models() -> dict[str, tuple[nn.Module, nn.Module, torch.Tensor]]:
    """Pairs of independently initialised models with inputs; BatchNorm models with non-trivial running stats."""
    out = {}
    g = torch.Generator().manual_seed(0)
    cases = {
        "mlp": (lambda: MLP(64, 10, width=128, depth=2), (64,)),
        "mlp_tanh_depth3": (lambda: MLP(12, 3, width=8, depth=3, activation="tanh"), (12,)),
        "cnn_bn_2d": (lambda: CNN((1, 8, 8), 10, width=4, depth=2, batch_norm=True), (1, 8, 8)),
        "cnn_1d": (lambda: CNN((16,), 3, width=3, depth=3), (16,)),
        "resnet18": (lambda: ResNet18((3, 8, 8), 5, width=4), (3, 8, 8)),
    }
    for seed, (name, (make, shape)) in enumerate(cases.items()):
        torch.manual_seed(2 * seed)
        a = make()
        torch.manual_seed(2 * seed + 1)
        b = make()
        x = torch.randn(32, *shape, generator=g)
        for m in (a, b):  # running statistics far from the defaults (mean 0, var 1)
            m.train()
            with torch.no_grad():
                for _ in range(3):
                    m(3.0 * x + 1.5)
            m.eval()
        out[name] = (a, b, x)
    return out


MODELS = _models()


def _random_perms(spec: PermutationSpec, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randperm(n, generator=g) for p, n in spec.sizes.items()}


@pytest.mark.parametrize("name", list(MODELS))
def test_a_permuted_model_computes_the_same_function(name):
    """Random permutations of every hidden layer (and of ResNet18's residual streams), running statistics
    included: same outputs in eval mode, and in train mode (batch statistics), up to float round-off."""
    _, b, x = MODELS[name]
    spec = permutation_spec(b)
    perms = _random_perms(spec, 1)
    pb = permuted_model(b, spec, perms)
    moved = [
        k for k, v in pb.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, b.state_dict()[k])
    ]
    assert len(moved) >= len(spec.sizes)  # not vacuous: the weights did move
    with torch.no_grad():
        torch.testing.assert_close(pb(x), b(x), rtol=1e-5, atol=1e-5)
        pb.train(), b.train()
        torch.testing.assert_close(pb(x), b(x), rtol=1e-5, atol=1e-5)
        pb.eval(), b.eval()
    # each permutation alone leaves the function unchanged too (no permutation stands in for another)
    for p in spec.sizes:
        one = {q: (v if q == p else torch.arange(v.numel())) for q, v in perms.items()}
        with torch.no_grad():
            torch.testing.assert_close(permuted_model(b, spec, one)(x), b(x), rtol=1e-5, atol=1e-5)


def test_the_spec_breaks_the_function_when_an_entry_is_missing():
    """The equality above can fail: dropping one entry of the spec (a BatchNorm running mean, a residual stream's
    shortcut) changes the outputs."""
    for name, key in (("cnn_bn_2d", "features.2.running_mean"), ("resnet18", "layers.2.shortcut.0.weight")):
        _, b, x = MODELS[name]
        spec = permutation_spec(b)
        broken = PermutationSpec({k: v for k, v in spec.axes.items() if k != key}, spec.sizes, spec.repair)
        perms = _random_perms(spec, 1)
        with torch.no_grad():
            assert (permuted_model(b, broken, perms)(x) - b(x)).abs().max() > 1e-3, key


def test_resnet18_shares_one_permutation_along_each_residual_stream():
    _, b, _ = MODELS["resnet18"]
    spec = permutation_spec(b)
    streams = [p for p in spec.sizes if p.startswith("S_")]
    inner = [p for p in spec.sizes if p.startswith("P_")]
    assert len(streams) == 4 and len(inner) == 8  # stem + 3 projections; one inner per block
    # the stem, both stage-1 blocks' outputs and the second stage-2 block's input read/write one stream
    s0 = spec.axes["stem.1.weight"][0]
    assert spec.axes["layers.0.conv2.weight"][0] == spec.axes["layers.1.conv2.weight"][0] == s0
    assert spec.axes["layers.1.conv1.weight"][1] == spec.axes["layers.2.conv1.weight"][1] == s0
    assert spec.axes["layers.2.shortcut.0.weight"][:2] == ("S_layers.2", s0)
    assert spec.axes["head.weight"] == (None, "S_layers.6")
    assert spec.repair == ()  # BatchNorm everywhere: REPAIR's counterpart is recomputing its statistics
    with pytest.raises(UnsupportedModel, match="Sequential"):
        permutation_spec(nn.Sequential(nn.Linear(2, 2)))


def test_assignment_matrix_of_an_mlp_layer_written_out():
    """S of the first hidden layer of a depth-2 MLP, others fixed: W1a W1b^T + b1a b1b^T + W2a^T W2b[:, pi2]."""
    a, b, _ = MODELS["mlp"]
    spec = permutation_spec(a)
    pa = {k: v.detach().double().numpy() for k, v in a.named_parameters()}
    pb = {k: v.detach().double().numpy() for k, v in b.named_parameters()}
    pi2 = np.random.default_rng(0).permutation(128)
    perms = {"P_net.1": np.arange(128), "P_net.3": pi2}
    s = assignment_matrix(spec, "P_net.1", pa, pb, perms)
    w1a, w1b, b1a, b1b = pa["net.1.weight"], pb["net.1.weight"], pa["net.1.bias"], pb["net.1.bias"]
    w2a, w2b = pa["net.3.weight"], pb["net.3.weight"][pi2]  # net.3's rows follow pi2 in the aligned B
    expected = w1a @ w1b.T + np.outer(b1a, b1b) + w2a.T @ w2b
    np.testing.assert_allclose(s, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "cnn_bn_2d", "resnet18"])
def test_weight_matching_recovers_a_hidden_permutation(name):
    """B = A with its units shuffled (and a little noise): matching B to A undoes the shuffle, so the aligned B's
    state equals A's (up to the noise) and the cosine objective goes to ~1."""
    a, _, x = MODELS[name]
    spec = permutation_spec(a)
    shuffled = permuted_model(a, spec, _random_perms(spec, 7))
    with torch.no_grad():
        for p in shuffled.parameters():
            p.add_(1e-4 * torch.randn_like(p))
    aligned, m = align(a, shuffled, seed=3)
    assert m.converged and m.objective_before < 0.99 and m.objective > 1 - 1e-4 and m.moved > 0.5
    for k, v in a.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(aligned.state_dict()[k], v, rtol=0, atol=1e-3, msg=k)
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), shuffled(x), rtol=1e-5, atol=1e-5)


def test_converged_means_no_single_permutation_can_improve():
    """The ``converged`` claim, checked by brute force on a narrow MLP (4 units per layer: 24 permutations): with
    the others fixed, every permutation the matching returns is the best of all 24, and the objective rose."""
    torch.manual_seed(0)
    a, b = MLP(5, 3, width=4, depth=3), MLP(5, 3, width=4, depth=3)
    spec = permutation_spec(a)
    pa = {k: v.detach() for k, v in a.named_parameters()}
    pb = {k: v.detach() for k, v in b.named_parameters()}
    m = weight_matching(spec, pa, pb, seed=0)
    assert m.converged and m.sweeps >= 2 and m.objective >= m.objective_before

    def dot(perms: dict[str, torch.Tensor]) -> float:  # <theta_a, pi(theta_b)>, written out
        q = apply_permutation(spec, perms, pb)
        return sum(float((pa[k].double() * q[k].double()).sum()) for k in pa)

    best = dot(m.perms)
    for p in spec.sizes:
        for cand in itertools.permutations(range(4)):
            trial = {**m.perms, p: torch.tensor(cand)}
            assert dot(trial) <= best + 1e-9, (p, cand)
    # and the reported cosine is that inner product over the norms
    na = float(sum((v.double() ** 2).sum() for v in pa.values())) ** 0.5
    nb = float(sum((v.double() ** 2).sum() for v in pb.values())) ** 0.5
    assert m.objective == pytest.approx(best / (na * nb), rel=1e-12)
    # a single sweep is not enough here: the claim is not trivially true
    assert not weight_matching(spec, pa, pb, seed=0, max_iter=1).converged


def test_weight_matching_refuses_non_finite_weights():
    a, b, _ = MODELS["mlp"]
    bad = copy.deepcopy(b)
    with torch.no_grad():
        bad.net[1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="net.1.weight"):
        align(a, bad)


@torch.no_grad()
def _hidden_preactivations(model: MLP, x: torch.Tensor) -> list[torch.Tensor]:
    """Pre-activations of each hidden layer, by explicit matrix products (float64)."""
    h, out = x.double().flatten(1), []
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    for lin in linears[:-1]:
        z = h @ lin.weight.double().T + lin.bias.double()
        out.append(z)
        h = torch.relu(z)
    return out


def test_repair_sets_the_interpolated_units_to_the_interpolated_statistics():
    a, b, x = MODELS["mlp"]
    spec = permutation_spec(a)
    assert spec.repair == ("net.1", "net.3")
    aligned, _ = align(a, b)
    sa, sb = unit_statistics(a, spec.repair, x), unit_statistics(aligned, spec.repair, x)
    za = _hidden_preactivations(a, x)
    torch.testing.assert_close(sa["net.1"][0], za[0].mean(0))
    torch.testing.assert_close(sa["net.3"][1], za[1].std(0, unbiased=False))
    t = 0.4
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for p, q in zip(mid.parameters(), aligned.parameters(), strict=True):
            p.mul_(1 - t).add_(t * q)
    before = _hidden_preactivations(mid, x)
    repair(mid, spec.repair, sa, sb, t, x)
    after = _hidden_preactivations(mid, x)
    for i, name in enumerate(spec.repair):
        goal_mean = (1 - t) * sa[name][0] + t * sb[name][0]
        goal_std = (1 - t) * sa[name][1] + t * sb[name][1]
        torch.testing.assert_close(after[i].mean(0), goal_mean, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(after[i].std(0, unbiased=False), goal_std, rtol=1e-4, atol=1e-4)
        # not vacuous: the interpolated net's units had collapsed variance before
        assert float(before[i].std(0, unbiased=False).mean()) < 0.95 * float(goal_std.mean())
