"""A fixed, seeded random projection of flat parameter vectors ``[P] -> [k]``.

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

import torch
from torch import Tensor

from landscape.params import linear_seed

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
