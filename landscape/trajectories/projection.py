"""A fixed, seeded random projection of flat parameter vectors ``[P] -> [k]``, and a trajectory recorder.

``RandomProjection(P, k, seed)`` is the linear map ``z = R^T theta / sqrt(k)`` with ``R [P, k]`` i.i.d. standard
Gaussian, so ``E ||z||^2 = ||theta||^2`` and distances are preserved up to ``O(1/sqrt(k))`` relative error
(Johnson-Lindenstrauss). ``R`` is never held whole unless it is small: row block ``b`` (parameters
``[b * block_rows, (b + 1) * block_rows)``) is regenerated on demand from the seed ``(seed, b)``, so an 11M-parameter
ResNet projected to 1024 dimensions needs only one block (``block_rows x k`` floats) in memory at a time.
Projecting many vectors at once (``[m, P]``) amortises the generation.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from landscape.params import flat_parameters, linear_seed

log = logging.getLogger(__name__)


class RandomProjection:
    """Seeded Gaussian projection ``[.., P] -> [.., k]`` generated in row blocks (see the module docstring).

    ``cache_bytes``: if the whole matrix fits (``P * k * 4`` bytes), it is generated once and kept.
    Numbers depend only on ``(n_params, dim, seed, block_rows)``, not on the device.
    """

    def __init__(self, n_params: int, dim: int, seed: int, block_rows: int = 8192, cache_bytes: int = 64 * 2**20):
        if dim < 1 or n_params < 1:
            raise ValueError(f"RandomProjection: n_params={n_params}, dim={dim}: both must be >= 1")
        self.n_params, self.dim, self.seed = int(n_params), int(dim), int(seed)
        self.block_rows = int(block_rows)
        self._full: Tensor | None = None
        if self.n_params * self.dim * 4 <= cache_bytes:
            self._full = torch.cat([self._block(b) for b in range(self.n_blocks)])

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_params / self.block_rows)

    def _block(self, b: int) -> Tensor:
        rows = min(self.block_rows, self.n_params - b * self.block_rows)
        gen = torch.Generator().manual_seed(linear_seed(self.seed, b))
        return torch.randn(rows, self.dim, generator=gen) / math.sqrt(self.dim)

    def matrix(self) -> Tensor:
        """The whole ``[P, k]`` matrix (for tests and small models)."""
        return self._full if self._full is not None else torch.cat([self._block(b) for b in range(self.n_blocks)])

    @torch.no_grad()
    def __call__(self, vecs: Tensor) -> Tensor:
        """Project ``[P]`` or ``[m, P]`` to ``[k]`` or ``[m, k]`` (float32, on the input's device)."""
        single = vecs.dim() == 1
        v = vecs.reshape(1, -1) if single else vecs
        if v.shape[1] != self.n_params:
            raise ValueError(f"vectors have {v.shape[1]} entries, the projection expects {self.n_params}")
        v = v.float()
        if self._full is not None:
            out = v @ self._full.to(v.device)
        else:
            out = torch.zeros(v.shape[0], self.dim, device=v.device)
            for b in range(self.n_blocks):
                a = b * self.block_rows
                blk = self._block(b).to(v.device)
                out += v[:, a : a + blk.shape[0]] @ blk
        return out[0] if single else out


class TrajectoryRecorder:
    """Records the projected parameters of a model plus scalar metrics along a training run.

    ``record(step, **metrics)`` stores ``projection(theta)`` and the metrics; ``every`` skips steps not divisible
    by it (``force=True`` records anyway). ``as_progress()`` returns a ``progress(epoch, total, loss)`` callback
    for ``landscape.training.train_model`` that records once per epoch. ``points()`` -> ``[n, k]`` numpy,
    ``rows()`` -> list of dicts (``step``, metrics, ``coords`` as a list).
    """

    def __init__(self, model: nn.Module, projection: RandomProjection, every: int = 1):
        self.model, self.projection, self.every = model, projection, max(1, int(every))
        self._coords: list[np.ndarray] = []
        self._meta: list[dict[str, Any]] = []

    def record(self, step: int, force: bool = False, **metrics: Any) -> bool:
        if not force and step % self.every:
            return False
        self._coords.append(self.projection(flat_parameters(self.model)).cpu().numpy())
        self._meta.append({"step": int(step), **metrics})
        return True

    def as_progress(self) -> Callable[[int, int, float], None]:
        def progress(epoch: int, total: int, loss: float) -> None:
            self.record(epoch, force=True, epoch=epoch, batch_loss=float(loss))

        return progress

    def points(self) -> np.ndarray:
        return np.stack(self._coords) if self._coords else np.zeros((0, self.projection.dim), dtype=np.float32)

    def rows(self) -> list[dict[str, Any]]:
        return [{**m, "coords": c.tolist()} for m, c in zip(self._meta, self._coords)]
