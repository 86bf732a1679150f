"""landscape.params: flat vectors against torch's own flattening, functional calls against the module, subsets
and the seed derivations (their values are frozen: changing one changes every number that used it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from landscape import params as P


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))
    m[1].weight.requires_grad_(False)  # a frozen parameter is not part of the flat vector
    return m


def test_flat_vectors_match_torch_and_round_trip():
    m = _model()
    trainable = [p for p in m.parameters() if p.requires_grad]
    theta = P.flat_parameters(m)
    assert torch.equal(theta, parameters_to_vector(trainable))
    layout = P.ParamLayout.of_model(m)
    assert layout.size == theta.numel() and layout.names == [n for n, p in m.named_parameters() if p.requires_grad]
    parts = P.unflatten(theta, m)
    assert all(torch.equal(parts[n], p) for n, p in m.named_parameters() if p.requires_grad)
    assert torch.equal(layout.flatten(parts), theta)
    rows = torch.stack([theta, 2 * theta, -theta])
    batch = P.unflatten_batch(rows, m)
    assert torch.equal(layout.flatten(batch, leading=1), rows)
    new = torch.randn_like(theta)
    P.set_flat_parameters(m, new)
    assert torch.equal(P.flat_parameters(m), new)
    with pytest.raises(ValueError, match="trainable parameters"):
        P.set_flat_parameters(m, new[:-1])
    d = P.trainable_parameters(m)
    d["4.bias"].add_(1.0)  # a clone: the model is untouched
    assert not torch.equal(d["4.bias"], m[4].bias)
    P.load_parameters(m, d)
    assert torch.equal(d["4.bias"], m[4].bias)


def test_functional_forward_and_loss_equal_the_module():
    m = _model().eval()
    x, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    params = {n: p.detach() * 1.5 for n, p in m.named_parameters() if p.requires_grad}
    ref = _model().eval()
    P.load_parameters(ref, params)
    torch.testing.assert_close(P.functional_forward(m, params, x), ref(x), rtol=0, atol=0)
    buffers = {n: b.clone() for n, b in m.named_buffers()}
    buffers["1.running_mean"] += 0.5
    with torch.no_grad():
        ref[1].running_mean += 0.5
    loss = P.functional_loss(m, params, x, y, nn.functional.cross_entropy, buffers)
    assert float(loss) == float(nn.functional.cross_entropy(ref(x), y).detach())
    assert torch.equal(m[1].running_mean, torch.zeros(3))  # the module's own buffers are untouched


def test_subsets():
    idx = P.subset_indices(10, 4, seed=3)
    assert torch.equal(idx, torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4])
    assert sorted(P.subset_indices(10, 99, seed=3).tolist()) == list(range(10))  # all of them, permuted
    x, y = torch.arange(10.0)[:, None], torch.arange(10)
    xs, ys = P.eval_subset(x, y, 4, seed=3)
    assert torch.equal(ys, idx) and torch.equal(xs[:, 0], idx.float())
    assert P.eval_subset(x, y, 0, seed=3)[1] is y and P.eval_subset(x, y, 10, seed=3)[1] is y


def test_seed_derivations_are_frozen():
    # regression values: the numbers of surfaces directions, curves and jump-retrain depend on them
    assert P.hashed_seed(0, 0, 1) == 2049415337 and P.hashed_seed(3, 1, 2) == 2031759106
    assert P.pair_seed(0, 0, 1) == 3831201730 == int(np.random.SeedSequence([0, 0, 1]).generate_state(1)[0])
    assert P.linear_seed(3, 2) == 3 * 1_000_003 + 2 and P.linear_seed(2, 7920, stride=100_003) == 207926
    assert len({P.pair_seed(0, a, b) for a in range(4) for b in range(4)}) == 16
