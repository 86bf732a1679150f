"""Directions in parameter space: flat parameter vectors, filter-normalised random directions, Hessian directions.

A *flat vector* ``[P]`` lists every trainable parameter of a model in ``model.named_parameters()`` order
(``landscape.params``, where the flat-vector helpers re-exported here live). Buffers (BatchNorm running
statistics) are not part of it; they stay as they are in the model.

Filter normalisation (Li et al. 2018, "Visualizing the loss landscape of neural nets"): draw ``d ~ N(0, I)``
and, for every weight tensor with at least two dimensions, rescale each *filter* -- the slice along dim 0,
i.e. one output neuron of a linear layer (a row ``[in]``) or one output channel of a convolution
(``[in, *kernel]``) -- to the Euclidean norm of the matching filter of the trained weights. Biases and
BatchNorm parameters (every parameter with fewer than two dimensions) get zero.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from landscape.params import (
    ParamLayout,
    flat_parameters,
    named_trainable,
    set_flat_parameters,
    unflatten,
    unflatten_batch,
)
from landscape.training import LossFn

log = logging.getLogger(__name__)

__all__ = [
    "flat_parameters",
    "l2_distance",
    "named_trainable",
    "unflatten",
    "unflatten_batch",
    "set_flat_parameters",
    "gaussian_direction",
    "filter_normalise",
    "filter_normalised_direction",
    "filter_norms",
    "hessian_directions",
]


def l2_distance(a: nn.Module, b: nn.Module) -> float:
    """||theta_a - theta_b||_2 over the trainable parameters of two models of one architecture, in float64."""
    return float(torch.linalg.vector_norm(flat_parameters(a).double() - flat_parameters(b).double()))


def gaussian_direction(model: nn.Module, seed: int, dtype: torch.dtype | None = None) -> Tensor:
    """A standard Gaussian vector ``[P]`` drawn on the CPU from ``seed`` (device-independent numbers), then
    moved to the model's device; ``dtype`` defaults to the parameters' dtype."""
    ref = flat_parameters(model)
    gen = torch.Generator().manual_seed(int(seed))
    d = torch.randn(ref.numel(), generator=gen, dtype=torch.float64)
    return d.to(device=ref.device, dtype=dtype or ref.dtype)


def filter_norms(model: nn.Module) -> dict[str, Tensor]:
    """Per-filter Euclidean norms ``[shape[0]]`` of every trainable parameter with >= 2 dimensions."""
    return {n: p.detach().reshape(p.shape[0], -1).norm(dim=1) for n, p in named_trainable(model) if p.dim() >= 2}


def filter_normalise(direction: Tensor, model: nn.Module, eps: float = 1e-10) -> Tensor:
    """Filter-normalise ``direction [P]`` against ``model``'s weights (see the module docstring).

    Returns a new vector ``[P]``: filter ``i`` of a weight ``W`` becomes ``d_i * ||W_i|| / ||d_i||``;
    entries of parameters with fewer than two dimensions (biases, BatchNorm) are zero.
    """
    out = torch.zeros_like(direction)
    params = dict(named_trainable(model))
    layout = ParamLayout.of_model(model)
    parts, out_parts = layout.unflatten(direction), layout.unflatten(out)  # views
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        if len(shape) < 2:
            continue
        d = parts[name].reshape(shape[0], -1)
        w = params[name].detach().to(direction.dtype).reshape(shape[0], -1)
        scale = w.norm(dim=1, keepdim=True) / (d.norm(dim=1, keepdim=True) + eps)
        out_parts[name].copy_((d * scale).reshape(shape))
    return out


def filter_normalised_direction(model: nn.Module, seed: int, dtype: torch.dtype | None = None) -> Tensor:
    """A Gaussian direction ``[P]`` from ``seed``, filter-normalised against ``model`` (Li et al. 2018)."""
    return filter_normalise(gaussian_direction(model, seed, dtype), model)


def hessian_directions(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    **eig_kwargs: Any,
) -> tuple[Tensor, Tensor, float, float]:
    """Unit eigenvectors ``[P]`` of the Hessian of the mean loss over ``(x, y)`` at ``model``'s parameters for
    its largest and its smallest (most negative) eigenvalue, and those two eigenvalues.

    Uses ``landscape.curvature`` (``HessianOperator`` with ``batch_size``/``dtype``, then ``eigenvalues`` with
    ``eig_kwargs``, e.g. ``seed``, ``tol``, ``max_iter``). The vectors are in the operator's dtype.
    """
    from landscape import curvature

    op = curvature.HessianOperator(model, loss_fn, (x, y), batch_size=batch_size, dtype=dtype)
    top = curvature.eigenvalues(op, k=1, which="largest", **eig_kwargs)
    bottom = curvature.eigenvalues(op, k=1, which="smallest", **eig_kwargs)
    v_max = top.vectors[:, 0] / top.vectors[:, 0].norm()
    v_min = bottom.vectors[:, 0] / bottom.vectors[:, 0].norm()
    return v_max, v_min, float(top.values[0]), float(bottom.values[0])
