"""Training batches drawn by index on the device, and the paper's image augmentation done there.

The training set lives on the training device (``data.CellData.to(device)``: CIFAR-10's 50,000 images are 600 MB
as float32). An epoch's order is ``engine.epoch_permutation``: ``randperm`` from the model's CPU generator (the
same order on every device), moved to the device once per epoch; batch ``b`` is ``x[idx]`` for the index tensor
``idx = order[b * B:(b + 1) * B]`` on the device (:func:`draw`), so no batch passes through the host.

Augmentation (``train.augment``, off by default; image inputs ``[n, C, H, W]`` only): random crop with
``pad``-pixel zero padding, then a horizontal flip with probability 1/2 (the CIFAR-10 recipe of He et al. 2016,
used by Yang et al. 2021). Zero is the per-channel mean of the standardised inputs (``landscape.data``), so the
padding is the mean pixel, not black. For each epoch, every training sample gets a crop offset
``(dy, dx)`` in ``[0, 2 * pad]^2`` and a flip bit, drawn at once from a CPU generator seeded with
``params.hashed_seed(seed, AUGMENT_STREAM, epoch)`` (``seed``: the model's seed from ``train.seeds``): the same
draws on every device, and nothing to checkpoint (an epoch's draws follow from its number, so a resumed run is
bitwise the uninterrupted one). A batch's augmented images are one gather on the device (:func:`crop_flip`):
``out[i, j] = padded[dy + i, dx + j]``, or ``padded[dy + i, dx + W - 1 - j]`` when flipped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from landscape.params import hashed_seed

AUGMENT_STREAM = 0x61756720  # tags the augmentation random stream (ASCII "aug ")
PAD = 4  # pixels of padding of the random crop (the CIFAR-10 recipe)


def draw(x: Tensor, y: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """The batch ``(x[idx], y[idx])`` for indices ``idx`` (``[B]``, or ``[K, B]`` for K stacked seeds) on the
    data's device: inputs ``[*idx.shape, *input_shape]``, targets ``[*idx.shape]``."""
    return x[idx], y[idx]


def augment_draws(n: int, seed: int, epoch: int, pad: int = PAD) -> tuple[Tensor, Tensor]:
    """One epoch's augmentation of ``n`` samples: crop offsets ``[n, 2]`` (int64 ``(dy, dx)`` in
    ``[0, 2 * pad]``) and flip bits ``[n]`` (bool), from a CPU generator seeded with
    ``hashed_seed(seed, AUGMENT_STREAM, epoch)``; indexed by sample (row ``i`` is sample ``i``'s)."""
    g = torch.Generator().manual_seed(hashed_seed(int(seed), AUGMENT_STREAM, int(epoch)))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
    flips = torch.randint(0, 2, (n,), generator=g).bool()
    return offsets, flips


def crop_flip(x: Tensor, offsets: Tensor, flips: Tensor, pad: int = PAD) -> Tensor:
    """Random-crop-and-flip of images ``x [*lead, C, H, W]``: each image zero-padded by ``pad`` on every side,
    its ``H x W`` window at ``offsets [*lead, 2]`` = ``(dy, dx)`` taken, and mirrored left-right where
    ``flips [*lead]`` is set. Returns ``[*lead, C, H, W]`` (one gather, on ``x``'s device)."""
    if x.dim() < 3:
        raise ValueError(f"crop_flip: expected images [..., C, H, W], got a tensor of shape {tuple(x.shape)}")
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    m = x[..., 0, 0, 0].numel()
    xs = x.reshape(m, c, h, w)
    off = offsets.reshape(m, 2).to(x.device)
    fl = flips.reshape(m).to(x.device)
    wp = w + 2 * pad
    padded = F.pad(xs, (pad, pad, pad, pad)).reshape(m, c, (h + 2 * pad) * wp)
    i = torch.arange(h, device=x.device)
    j = torch.arange(w, device=x.device)
    rows = off[:, :1] + i  # [m, H]
    cols = off[:, 1:] + torch.where(fl[:, None], w - 1 - j, j)  # [m, W]
    lin = (rows[:, :, None] * wp + cols[:, None, :]).reshape(m, 1, h * w).expand(m, c, h * w)
    return padded.gather(2, lin).reshape(*lead, c, h, w)


class Augmenter:
    """The augmentation of one or several seeds trained together (``seeds``: one per stack row).

    ``begin_epoch(epoch, n, device)`` draws the epoch's offsets ``[K, n, 2]`` and flips ``[K, n]`` and moves them
    to the device; ``apply(xb, idx)`` augments a batch ``xb [K, B, C, H, W]`` (or ``[B, C, H, W]`` for one seed)
    drawn with indices ``idx [K, B]`` (or ``[B]``); ``select(rows)`` keeps those stack rows (seeds that left)."""

    def __init__(self, seeds: list[int], pad: int = PAD):
        self.seeds, self.pad = [int(s) for s in seeds], int(pad)
        self.offsets = torch.empty(0, dtype=torch.long)
        self.flips = torch.empty(0, dtype=torch.bool)

    def begin_epoch(self, epoch: int, n: int, device: torch.device | str) -> None:
        draws = [augment_draws(n, s, epoch, self.pad) for s in self.seeds]
        self.offsets = torch.stack([o for o, _ in draws]).to(device)
        self.flips = torch.stack([f for _, f in draws]).to(device)

    def apply(self, xb: Tensor, idx: Tensor) -> Tensor:
        if idx.dim() == 1:
            return crop_flip(xb, self.offsets[0, idx], self.flips[0, idx], self.pad)
        rows = torch.arange(idx.shape[0], device=idx.device)[:, None]
        return crop_flip(xb, self.offsets[rows, idx], self.flips[rows, idx], self.pad)

    def select(self, rows: list[int]) -> None:
        self.seeds = [self.seeds[k] for k in rows]
        if self.offsets.numel():
            keep = torch.tensor(rows, dtype=torch.long, device=self.offsets.device)
            self.offsets, self.flips = self.offsets.index_select(0, keep), self.flips.index_select(0, keep)


def check_augmentable(input_shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` naming ``train.augment`` unless inputs are images ``[C, H, W]``."""
    if len(input_shape) != 3:
        raise ValueError(
            f"train.augment=true: random crop and flip need image inputs [C, H, W], got samples of shape "
            f"{list(input_shape)}; use train.augment=false"
        )


__all__ = ["AUGMENT_STREAM", "PAD", "Augmenter", "augment_draws", "check_augmentable", "crop_flip", "draw"]
