"""Batches drawn by index on the device (``landscape.batches``) and the seeded crop-and-flip augmentation.

Each test compares against an independent computation: the batch order rebuilt from ``torch.randperm`` with the
seed's own generator (what training did before batches were drawn through ``batches.draw``), and a numpy crop
and flip (``np.pad``, slicing, ``[..., ::-1]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import train_settings
from omegaconf import OmegaConf

import landscape.vectorized as vec
from landscape.batches import AUGMENT_STREAM, PAD, Augmenter, augment_draws, crop_flip
from landscape.models import build_model
from landscape.params import hashed_seed
from landscape.training import StopRequested, TrainSettings, train_model
from landscape.vectorized import train_together

SHAPE = (3, 8, 8)
SEEDS = [0, 1]


def _data(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 4, (n,), generator=g)


def _settings(**kw) -> TrainSettings:
    # 50 samples in batches of 16: 3 batches of 16 and a trailing batch of 2 per epoch
    return train_settings(**{"batch_size": 16, **kw})


def _mlp(seed: int) -> torch.nn.Module:
    cfg = OmegaConf.create(dict(name="mlp", width=8, depth=1, activation="relu", batch_norm=False))
    return build_model(cfg, SHAPE, 4, seed=seed)


def _reference_indices(n: int, batch: int, seed: int, epochs: int) -> list[tuple[int, torch.Tensor]]:
    """``(epoch, indices)`` of every step, rebuilt independently: one ``randperm`` per epoch from the seed's own
    generator, consecutive slices, a trailing batch of one sample dropped."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for e in range(epochs):
        perm = torch.randperm(n, generator=g)
        out += [(e, perm[a : a + batch]) for a in range(0, n, batch) if len(perm[a : a + batch]) > 1]
    return out


def _numpy_crop_flip(img: np.ndarray, dy: int, dx: int, flip: bool, pad: int = PAD) -> np.ndarray:
    """One image ``[C, H, W]``: zero-padded, its window at ``(dy, dx)``, mirrored left-right if ``flip``."""
    c, h, w = img.shape
    win = np.pad(img, ((0, 0), (pad, pad), (pad, pad)))[:, dy : dy + h, dx : dx + w]
    return win[:, :, ::-1] if flip else win


def _recorded_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    return seen


# ------------------------------------------------------------------------------------------- batches
def test_batches_are_todays_batches(tmp_path: Path):
    """Without augmentation a model sees exactly ``x[idx]`` for the indices of the seeded order (same tensors,
    bitwise), one seed alone and each seed of a stack."""
    x, y = _data()
    st = _settings()
    model = _mlp(3)
    seen = _recorded_inputs(model)
    train_model(model, x, y, st, 3, tmp_path / "one")
    ref = _reference_indices(50, 16, 3, 2)
    assert len(seen) == len(ref) == 8
    for got, (_, idx) in zip(seen, ref, strict=True):
        assert torch.equal(got, x[idx])


def test_stacked_batches_are_each_seeds_batches(tmp_path: Path, monkeypatch):
    x, y = _data()
    seen: list[torch.Tensor] = []
    original = vec.stacked_forward

    def spy(model):
        kind, fn = original(model)

        def recording(params, xb, buffers=None):
            seen.append(xb.detach().clone())
            return fn(params, xb, buffers)

        return kind, recording

    monkeypatch.setattr(vec, "stacked_forward", spy)
    models = {s: _mlp(s) for s in SEEDS}
    train_together(models, x, y, _settings(), {s: tmp_path / str(s) for s in SEEDS}, tmp_path / "g")
    refs = {s: _reference_indices(50, 16, s, 2) for s in SEEDS}
    assert len(seen) == 8
    for step, got in enumerate(seen):
        for k, s in enumerate(SEEDS):
            assert torch.equal(got[k], x[refs[s][step][1]])


# ------------------------------------------------------------------------------------------ augmentation
def test_augmentation_draws_are_seeded():
    o1, f1 = augment_draws(500, seed=7, epoch=2)
    o2, f2 = augment_draws(500, seed=7, epoch=2)
    assert torch.equal(o1, o2) and torch.equal(f1, f2)
    for other in (augment_draws(500, seed=8, epoch=2), augment_draws(500, seed=7, epoch=3)):
        assert not torch.equal(o1, other[0]) and not torch.equal(f1, other[1])
    # the documented stream: a CPU generator seeded with hashed_seed(seed, AUGMENT_STREAM, epoch), offsets then flips
    g = torch.Generator().manual_seed(hashed_seed(7, AUGMENT_STREAM, 2))
    assert torch.equal(o1, torch.randint(0, 2 * PAD + 1, (500, 2), generator=g))
    # the range and both flip values are drawn
    assert int(o1.min()) == 0 and int(o1.max()) == 2 * PAD and 0.4 < float(f1.float().mean()) < 0.6


def test_crop_flip_equals_numpy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, 6, 7, generator=g)  # leading dims [K=2, B=5], non-square images
    offsets = torch.randint(0, 2 * PAD + 1, (2, 5, 2), generator=g)
    offsets[0, 0] = torch.tensor([0, 2 * PAD])  # the corners of the padded image
    offsets[0, 1] = torch.tensor([2 * PAD, 0])
    flips = torch.randint(0, 2, (2, 5), generator=g).bool()
    out = crop_flip(x, offsets, flips)
    assert out.shape == x.shape
    for k in range(2):
        for b in range(5):
            dy, dx = offsets[k, b].tolist()
            ref = _numpy_crop_flip(x[k, b].numpy(), dy, dx, bool(flips[k, b]))
            np.testing.assert_array_equal(out[k, b].numpy(), ref)
    # the centre window without a flip is the image itself; a flip alone is torch.flip
    centre = torch.full((2, 5, 2), PAD)
    assert torch.equal(crop_flip(x, centre, torch.zeros(2, 5, dtype=torch.bool)), x)
    assert torch.equal(crop_flip(x, centre, torch.ones(2, 5, dtype=torch.bool)), x.flip(-1))


def test_training_sees_the_seeded_crops_and_flips(tmp_path: Path):
    """With ``augment``, the model's inputs are the numpy crops and flips of today's batches under the seed's
    draws of each epoch; the same seed trains to the same weights, another seed sees other crops."""
    x, y = _data()
    st = _settings(augment=True)
    model = _mlp(3)
    seen = _recorded_inputs(model)
    train_model(model, x, y, st, 3, tmp_path / "a")
    draws = {e: augment_draws(50, 3, e) for e in range(2)}
    for got, (e, idx) in zip(seen, _reference_indices(50, 16, 3, 2), strict=True):
        off, fl = draws[e]
        ref = np.stack([_numpy_crop_flip(x[i].numpy(), *off[i].tolist(), bool(fl[i])) for i in idx.tolist()])
        np.testing.assert_array_equal(got.numpy(), ref)
    again = _mlp(3)
    train_model(again, x, y, st, 3, tmp_path / "b")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))
    plain = _mlp(3)
    train_model(plain, x, y, _settings(), 3, tmp_path / "c")
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), plain.parameters(), strict=True))


def test_augmented_seeds_together_equal_serial_and_resume_bitwise(tmp_path: Path):
    x, y = _data()
    st = _settings(augment=True, epochs=3)
    ser = {s: _mlp(s) for s in SEEDS}
    for s in SEEDS:
        train_model(ser[s], x, y, st, s, tmp_path / "serial" / str(s))
    tog = {s: _mlp(s) for s in SEEDS}
    train_together(tog, x, y, st, {s: tmp_path / "vec" / str(s) for s in SEEDS}, tmp_path / "vec" / "g")
    for s in SEEDS:
        for p, q in zip(ser[s].parameters(), tog[s].parameters(), strict=True):
            assert float((p - q).detach().abs().max()) < 1e-5
    # stopped at step 6 (mid-epoch 2), resumed: bitwise the uninterrupted serial run
    polls = [0]

    def stop() -> bool:
        polls[0] += 1
        return polls[0] == 6

    m = _mlp(0)
    with pytest.raises(StopRequested):
        train_model(m, x, y, st, 0, tmp_path / "stop", should_stop=stop)
    m = _mlp(0)
    train_model(m, x, y, st, 0, tmp_path / "stop")
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ser[0].parameters(), strict=True))


def test_augmenter_keeps_rows_and_refuses_non_images(tmp_path: Path):
    aug = Augmenter([4, 5, 6])
    aug.begin_epoch(0, 20, "cpu")
    aug.select([0, 2])
    assert aug.seeds == [4, 6] and torch.equal(aug.offsets[1], augment_draws(20, 6, 0)[0])
    xv, yv = torch.randn(20, 16), torch.randint(0, 4, (20,))
    cfg = OmegaConf.create(dict(name="mlp", width=8, depth=1, activation="relu", batch_norm=False))
    with pytest.raises(ValueError, match="train.augment=true"):
        train_model(build_model(cfg, (16,), 4, seed=0), xv, yv, _settings(augment=True), 0, tmp_path / "v")
