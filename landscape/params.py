"""Parameter-space helpers shared by every module that treats a model as a point ``theta [P]``.

* Flat vectors: a *flat vector* ``[P]`` lists every trainable parameter of a model (``requires_grad``) in
  ``model.named_parameters()`` order, each flattened row-major. Buffers (BatchNorm running statistics) are
  not part of it. ``ParamLayout`` does the same for any ``{name: tensor}`` dict (e.g. a Bezier curve's
  control points or a Hessian operator's parameters).
* Functional evaluation: the model's output / mean loss at a parameter dict, without touching the model
  (``torch.func.functional_call``; composable with ``vmap``).
* Seeded evaluation subsets: the first ``n`` items of a permutation drawn from a seed (CPU generator, so the
  same subset on every device).
* Seed derivation: the integer seeds of a family's random choices for one model, one pair of models or a
  sub-task, from the family's configured seed. Each scheme is kept exactly as it was when it had its own copy
  in its module, so every number computed before stays the same (see each function).

Imports torch only (no other ``landscape`` module), so math and adapter modules alike can use it.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "ParamLayout",
    "eval_subset",
    "flat_parameters",
    "functional_forward",
    "functional_loss",
    "hashed_seed",
    "linear_seed",
    "load_parameters",
    "named_trainable",
    "pair_seed",
    "set_flat_parameters",
    "subset_indices",
    "trainable_parameters",
    "unflatten",
    "unflatten_batch",
]


# ------------------------------------------------------------------------------------------ flat vectors
def named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every trainable parameter, in the order of the flat vector."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """``{name: detached clone}`` of the trainable parameters of ``model`` (flat-vector order)."""
    return {n: p.detach().clone() for n, p in named_trainable(model)}


def flat_parameters(model: nn.Module) -> Tensor:
    """All trainable parameters of ``model`` concatenated into one flat vector ``[P]`` (detached)."""
    return torch.cat([p.detach().reshape(-1) for _, p in named_trainable(model)])


class ParamLayout:
    """Names, shapes and sizes of a parameter dict: converts between ``{name: tensor}`` and flat vectors.

    ``flatten(dict or sequence, leading=k)`` keeps ``k`` leading batch dimensions: ``{name: [*B, *shape]}``
    -> ``[*B, P]``; ``unflatten([P])`` -> ``{name: view}``; ``unflatten_rows([m, P])`` -> ``{name: [m, *shape]}``.
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[Sequence[int]]):
        self.names = list(names)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.numels = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]

    @classmethod
    def of(cls, params: Mapping[str, Tensor]) -> "ParamLayout":
        """The layout of a parameter dict (its key order)."""
        return cls(list(params), [tuple(t.shape) for t in params.values()])

    @classmethod
    def of_model(cls, model: nn.Module) -> "ParamLayout":
        """The layout of ``model``'s flat vector (trainable parameters only)."""
        named = named_trainable(model)
        return cls([n for n, _ in named], [tuple(p.shape) for _, p in named])

    @property
    def size(self) -> int:
        """``P``, the length of a flat vector."""
        return sum(self.numels)

    def flatten(self, tensors: Mapping[str, Tensor] | Sequence[Tensor], leading: int = 0) -> Tensor:
        """``{name: [*B, *shape]}`` (or the tensors in layout order) -> ``[*B, P]`` (``B``: ``leading`` dims)."""
        seq = [tensors[n] for n in self.names] if isinstance(tensors, Mapping) else list(tensors)
        return torch.cat([t.reshape(*t.shape[:leading], -1) for t in seq], dim=leading)

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Flat ``[P]`` -> ``{name: tensor of the parameter's shape}`` (views of ``vec``, no copy)."""
        return {n: c.view(s) for n, c, s in zip(self.names, vec.split(self.numels), self.shapes, strict=True)}

    def unflatten_rows(self, rows: Tensor) -> dict[str, Tensor]:
        """``[m, P]`` -> ``{name: [m, *shape]}``."""
        m = rows.shape[0]
        return {
            n: c.reshape(m, *s) for n, c, s in zip(self.names, rows.split(self.numels, dim=1), self.shapes, strict=True)
        }


def unflatten(vec: Tensor, model: nn.Module) -> dict[str, Tensor]:
    """Split a flat vector ``[P]`` into ``{name: tensor}`` shaped like ``model``'s trainable parameters
    (views of ``vec``; usable with ``torch.func.functional_call``, also under ``vmap``)."""
    return ParamLayout.of_model(model).unflatten(vec)


def unflatten_batch(points: Tensor, model: nn.Module) -> dict[str, Tensor]:
    """Split ``[m, P]`` into ``{name: tensor [m, *shape]}`` (views)."""
    return ParamLayout.of_model(model).unflatten_rows(points)


@torch.no_grad()
def set_flat_parameters(model: nn.Module, vec: Tensor) -> None:
    """Copy the flat vector ``vec [P]`` into ``model``'s trainable parameters, in place."""
    layout = ParamLayout.of_model(model)
    if vec.numel() != layout.size:
        raise ValueError(f"flat vector has {vec.numel()} entries, the model has {layout.size} trainable parameters")
    for (_, p), part in zip(named_trainable(model), layout.unflatten(vec.reshape(-1)).values(), strict=True):
        p.copy_(part)


@torch.no_grad()
def load_parameters(model: nn.Module, params: Mapping[str, Tensor]) -> None:
    """Copy ``params`` into ``model``'s parameters of the same names (in place, no autograd)."""
    for n, p in model.named_parameters():
        if n in params:
            p.copy_(params[n])


# ------------------------------------------------------------------------------------ functional calls
def functional_forward(
    model: nn.Module, params: Mapping[str, Tensor], x: Tensor, buffers: Mapping[str, Tensor] | None = None
) -> Tensor:
    """``model``'s output at ``params`` (and ``buffers``, default: the model's own) for inputs ``x``; the model's
    own tensors are not used for the names given and are never modified."""
    if buffers is None:
        return functional_call(model, dict(params), (x,))
    return functional_call(model, (dict(params), dict(buffers)), (x,))


def functional_loss(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    buffers: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``loss_fn(model_params(x), y)``: the (mean) loss at ``params``, differentiable in ``params``."""
    return loss_fn(functional_forward(model, params, x, buffers), y)


# ------------------------------------------------------------------------------------------ subsets
def subset_indices(n_total: int, n: int, seed: int) -> Tensor:
    """The first ``min(n, n_total)`` entries of a permutation of ``range(n_total)`` drawn from ``seed`` on a CPU
    generator (a permutation of all of them when ``n >= n_total``)."""
    perm = torch.randperm(int(n_total), generator=torch.Generator().manual_seed(int(seed)))
    return perm[: min(int(n), int(n_total))]


def eval_subset(x: Tensor, y: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(x, y)`` at ``subset_indices(len(x), n, seed)``; all of ``(x, y)`` in its own order if ``n <= 0`` or
    ``n >= len(x)``."""
    if n <= 0 or n >= x.shape[0]:
        return x, y
    idx = subset_indices(x.shape[0], n, seed).to(x.device)
    return x[idx], y[idx]


# ------------------------------------------------------------------------------------ seed derivation
def linear_seed(base: int, index: int, stride: int = 1_000_003) -> int:
    """``base * stride + index``: seed number ``index`` of a family seeded ``base``.

    Used for one model of a cell (``jump_retrain``: ``linear_seed(family seed, model seed)``), one block of a
    projection (``stride`` 1,000,003) and one jump of jump-and-retrain (``stride`` 100,003). Python integers:
    no overflow; ``torch.Generator.manual_seed`` accepts any non-negative value below 2**64.
    """
    return int(base) * int(stride) + int(index)


def hashed_seed(*parts: int) -> int:
    """A 31-bit seed from several integers (stable across runs and platforms): a multiplicative hash.

    Used by the loss surfaces for the direction of one model: ``hashed_seed(family seed, model seed, k)``.
    """
    h = 0x345678
    for p in parts:
        h = (h * 1_000_003 ^ (int(p) & 0xFFFFFFFF)) & 0x7FFFFFFF
    return h


def pair_seed(base: int, seed_a: int, seed_b: int) -> int:
    """The seed of a pair of models ``(a, b)`` of a family seeded ``base``: the first 32-bit word of numpy's
    ``SeedSequence([base, a, b])`` (used by the connectivity curve: its initial points and batch order)."""
    return int(np.random.SeedSequence([int(base), int(seed_a), int(seed_b)]).generate_state(1)[0])
