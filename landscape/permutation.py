"""Permutation symmetry of hidden units: where each permutation acts, weight matching, and REPAIR.

Permuting the units of a hidden layer (rows of its incoming weights and bias, its BatchNorm's weight, bias and
running statistics, columns of its outgoing weights) leaves the network's function unchanged: every activation
of ``landscape.models`` acts elementwise, max-pooling and global average pooling act per channel. A
:class:`PermutationSpec` says which permutation acts on which axis of which state-dict entry; a residual
connection forces one permutation on every layer that writes into (or reads from) its stream.

Weight matching (Ainsworth et al., Git Re-Basin, ICLR 2023, Algorithm 1): find permutations ``pi`` of model B's
hidden units maximising ``sum_k <theta_a[k], pi(theta_b)[k]>`` over the trainable parameters. One permutation at
a time, the others fixed, the problem is a linear assignment: ``S[i, j] = sum_{(k, axis) acted on by p}
<a unit i of theta_a[k] along axis, unit j of pi(theta_b)[k] along axis>`` (incoming and outgoing weights, biases,
BatchNorm affine parameters), solved by ``scipy.optimize.linear_sum_assignment``. The permutations are visited in
a seeded random order, sweep after sweep, until a whole sweep improves none of them (each step never lowers the
objective, so it terminates) or ``max_iter`` sweeps have run.

REPAIR (Jordan et al., ICLR 2023) for networks without BatchNorm: on the interpolated network at ``t``, every
hidden unit's pre-activation is rescaled so that its mean and standard deviation over the data equal the
interpolation ``(1 - t) s_a + t s_b`` of the endpoints' statistics (the correction folded into the producing
layer's weight and bias, layer after layer in forward order). For networks with BatchNorm, recomputing the
running statistics of the interpolated network on the training data is its counterpart (what
``landscape.connectivity.evaluate_path`` does at every ``t``).

Pure functions over models, state dicts and tensors; imports nothing of the package but the model classes.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from landscape.models import CNN, MLP, ResNet18

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d)
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class UnsupportedModel(ValueError):
    """The model has no permutation spec (an architecture other than ``landscape.models``' MLP, CNN, ResNet18)."""


@dataclass(frozen=True)
class PermutationSpec:
    """Where the permutations of a model's hidden units act.

    ``axes``: state-dict key -> one entry per axis of the tensor, the name of the permutation acting on that
    axis or None (keys not listed are left alone: the read-out's bias, ``num_batches_tracked``); ``sizes``:
    permutation name -> number of units (channels) it permutes; ``repair``: names of the modules whose outputs
    are hidden pre-activations that REPAIR rescales (the hidden Linear/Conv layers of a network without
    BatchNorm; empty for networks with BatchNorm)."""

    axes: dict[str, tuple[str | None, ...]]
    sizes: dict[str, int]
    repair: tuple[str, ...] = field(default=())

    def acted_on(self, perm: str) -> list[tuple[str, int]]:
        """``(state-dict key, axis)`` pairs the permutation ``perm`` acts on, in key order."""
        return [(k, ax) for k, axs in self.axes.items() for ax, p in enumerate(axs) if p == perm]

    def check(self, state: Mapping[str, Tensor | np.ndarray], partial: bool = False) -> None:
        """Raise ``ValueError`` naming the entry if ``state`` lacks a key of the spec (unless ``partial``: a dict
        of parameters, without the BatchNorm statistics) or a permuted axis has another length than its
        permutation."""
        for k, axs in self.axes.items():
            if k not in state:
                if partial:
                    continue
                raise ValueError(f"permutation spec: state has no entry {k!r}")
            shape = tuple(state[k].shape)
            if len(shape) != len(axs):
                raise ValueError(f"permutation spec: {k!r} has shape {shape}, spec expects {len(axs)} axes")
            for ax, p in enumerate(axs):
                if p is not None and shape[ax] != self.sizes[p]:
                    raise ValueError(
                        f"permutation spec: {k!r} axis {ax} has {shape[ax]} units, {p} has {self.sizes[p]}"
                    )


def _weight_axes(out: str | None, inp: str | None, ndim: int) -> tuple[str | None, ...]:
    return (out, inp, *([None] * (ndim - 2)))


def _bn_axes(axes: dict[str, tuple[str | None, ...]], prefix: str, perm: str) -> None:
    for k in _BN_KEYS:
        axes[f"{prefix}.{k}"] = (perm,)


def _mlp_spec(model: MLP) -> PermutationSpec:
    linears = [(f"net.{i}", m) for i, m in enumerate(model.net) if isinstance(m, nn.Linear)]
    axes: dict[str, tuple[str | None, ...]] = {}
    sizes: dict[str, int] = {}
    prev: str | None = None
    for j, (name, m) in enumerate(linears):
        out = f"P_{name}" if j < len(linears) - 1 else None
        if out is not None:
            sizes[out] = m.out_features
        axes[f"{name}.weight"] = (out, prev)
        if m.bias is not None and out is not None:
            axes[f"{name}.bias"] = (out,)
        prev = out
    return PermutationSpec(axes, sizes, tuple(name for name, _ in linears[:-1]))


def _cnn_spec(model: CNN) -> PermutationSpec:
    axes: dict[str, tuple[str | None, ...]] = {}
    sizes: dict[str, int] = {}
    prev: str | None = None
    convs, has_bn = [], False
    for i, m in enumerate(model.features):
        name = f"features.{i}"
        if isinstance(m, _CONV):
            out = f"P_{name}"
            sizes[out] = m.out_channels
            axes[f"{name}.weight"] = _weight_axes(out, prev, m.weight.dim())
            if m.bias is not None:
                axes[f"{name}.bias"] = (out,)
            prev = out
            convs.append(name)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if prev is None:
                raise UnsupportedModel(f"CNN: BatchNorm {name} before any convolution")
            _bn_axes(axes, name, prev)
            has_bn = True
    axes["head.weight"] = (None, prev)
    return PermutationSpec(axes, sizes, () if has_bn else tuple(convs))


def _resnet_spec(model: ResNet18) -> PermutationSpec:
    axes: dict[str, tuple[str | None, ...]] = {}
    sizes: dict[str, int] = {}
    stem_conv, stem_bn = model.stem[1], model.stem[2]
    stream = "S_stem"  # the residual stream: one permutation for every layer writing into it or reading it
    sizes[stream] = stem_conv.out_channels
    axes["stem.1.weight"] = _weight_axes(stream, None, stem_conv.weight.dim())
    _bn_axes(axes, "stem.2", stream)
    assert isinstance(stem_bn, nn.modules.batchnorm._BatchNorm)
    for i, block in enumerate(model.layers):
        pre = f"layers.{i}"
        inner = f"P_{pre}"
        sizes[inner] = block.conv1.out_channels
        if isinstance(block.shortcut, nn.Identity):
            out = stream  # identity shortcut: the block writes into the stream it reads
        else:
            out = f"S_{pre}"  # projection shortcut: a new stream (its 1x1 conv maps the old one into it)
            sizes[out] = block.conv2.out_channels
            proj = block.shortcut[0]
            axes[f"{pre}.shortcut.0.weight"] = _weight_axes(out, stream, proj.weight.dim())
            _bn_axes(axes, f"{pre}.shortcut.1", out)
        axes[f"{pre}.conv1.weight"] = _weight_axes(inner, stream, block.conv1.weight.dim())
        _bn_axes(axes, f"{pre}.bn1", inner)
        axes[f"{pre}.conv2.weight"] = _weight_axes(out, inner, block.conv2.weight.dim())
        _bn_axes(axes, f"{pre}.bn2", out)
        stream = out
    axes["head.weight"] = (None, stream)
    return PermutationSpec(axes, sizes, ())


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation spec of a ``landscape.models`` network: MLP (one permutation per hidden layer), CNN (one
    per convolution's output channels, shared by its BatchNorm), ResNet18 (one per block's inner channels, and
    one per residual stream: the stem and the blocks with an identity shortcut share their stream's, a projection
    shortcut starts a new one). Raises :class:`UnsupportedModel` for any other module."""
    if isinstance(model, MLP):
        return _mlp_spec(model)
    if isinstance(model, CNN):
        return _cnn_spec(model)
    if isinstance(model, ResNet18):
        return _resnet_spec(model)
    raise UnsupportedModel(f"{type(model).__name__}: no permutation spec (supported: MLP, CNN, ResNet18)")


def apply_permutation(
    spec: PermutationSpec, perms: Mapping[str, Tensor], state: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """``state`` with each spec entry's axes re-indexed: along an axis acted on by ``p``, unit ``i`` of the
    result is unit ``perms[p][i]`` of ``state`` (``perms[p]``: long ``[sizes[p]]``). Entries the spec does not
    name, or that ``state`` lacks (a dict of parameters only), are passed through (not copied)."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        axs = spec.axes.get(k)
        if axs is not None:
            for ax, p in enumerate(axs):
                if p is not None:
                    v = v.index_select(ax, perms[p].to(v.device))
        out[k] = v
    return out


def permuted_model(model: nn.Module, spec: PermutationSpec, perms: Mapping[str, Tensor]) -> nn.Module:
    """A copy of ``model`` with its hidden units permuted (parameters and BatchNorm running statistics): it
    computes the same function as ``model`` (up to float summation order)."""
    out = copy.deepcopy(model)
    out.load_state_dict(apply_permutation(spec, perms, model.state_dict()))
    return out


@dataclass
class Matching:
    """Result of :func:`weight_matching`. ``perms``: name -> long ``[n]`` (aligned unit ``i`` is B's unit
    ``perms[name][i]``); ``objective_before``/``objective``: cosine similarity of the two parameter vectors
    (all trainable parameters given) before and after the matching, ``<theta_a, pi(theta_b)> / (|theta_a|
    |theta_b|)`` (the matched objective over constant norms); ``sweeps``: sweeps over the permutations run;
    ``converged``: the last sweep improved none of them (each is then an optimal assignment given the others);
    ``moved``: share of hidden units not mapped to themselves."""

    perms: dict[str, Tensor]
    objective_before: float
    objective: float
    sweeps: int
    converged: bool
    moved: float


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _cosine(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    dot = sum(float(np.vdot(a[k], b[k])) for k in a)
    na = np.sqrt(sum(float(np.vdot(a[k], a[k])) for k in a))
    nb = np.sqrt(sum(float(np.vdot(b[k], b[k])) for k in b))
    return dot / max(na * nb, 1e-300)


def assignment_matrix(
    spec: PermutationSpec,
    perm: str,
    params_a: Mapping[str, np.ndarray],
    params_b: Mapping[str, np.ndarray],
    perms: Mapping[str, np.ndarray],
) -> np.ndarray:
    """``S [n, n]`` (float64) of permutation ``perm``: ``S[i, j]`` = sum over the parameters ``perm`` acts on of
    the inner product of A's unit ``i`` with B's unit ``j`` along that axis, B's other axes permuted by
    ``perms``. Entries of the spec missing from the parameter dicts (BatchNorm running statistics) are skipped."""
    n = spec.sizes[perm]
    s = np.zeros((n, n), dtype=np.float64)
    for k, ax in spec.acted_on(perm):
        if k not in params_a:
            continue
        wb = params_b[k]
        for ax2, q in enumerate(spec.axes[k]):
            if ax2 != ax and q is not None:
                wb = np.take(wb, perms[q], axis=ax2)
        s += np.moveaxis(params_a[k], ax, 0).reshape(n, -1) @ np.moveaxis(wb, ax, 0).reshape(n, -1).T
    return s


def weight_matching(
    spec: PermutationSpec,
    params_a: Mapping[str, Tensor],
    params_b: Mapping[str, Tensor],
    seed: int = 0,
    max_iter: int = 100,
) -> Matching:
    """Permutations of B's hidden units that maximise ``<theta_a, pi(theta_b)>`` by coordinate ascent over the
    permutations (module docstring), in float64 on the CPU. ``params_a``/``params_b``: ``{name: tensor}`` of the
    trainable parameters of two models of one architecture (BatchNorm statistics are not matched; they are
    permuted with their units by :func:`apply_permutation`). ``seed`` orders the permutations of each sweep.
    Raises ``ValueError`` for non-finite parameters."""
    a = {k: _np(v) for k, v in params_a.items()}
    b = {k: _np(v) for k, v in params_b.items()}
    for name, arr in (*a.items(), *b.items()):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"weight matching: parameter {name!r} is not finite")
    if set(a) != set(b):
        raise ValueError(f"weight matching: parameters differ: {sorted(set(a) ^ set(b))}")
    spec.check(a, partial=True)
    spec.check(b, partial=True)
    perms = {p: np.arange(n) for p, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    names = list(spec.sizes)
    before = _cosine(a, b)
    sweeps, converged = 0, not names
    while names and sweeps < max_iter:
        sweeps += 1
        improved = False
        for idx in rng.permutation(len(names)):
            p = names[int(idx)]
            s = assignment_matrix(spec, p, a, b, perms)
            _, cols = linear_sum_assignment(s, maximize=True)
            rows = np.arange(s.shape[0])
            old, new = float(s[rows, perms[p]].sum()), float(s[rows, cols].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[p], improved = cols, True
        if not improved:
            converged = True
            break
    out = {p: torch.as_tensor(v, dtype=torch.long) for p, v in perms.items()}
    after = apply_permutation(spec, out, {k: torch.from_numpy(v) for k, v in b.items()})
    total = sum(spec.sizes.values())
    moved = sum(int((v != np.arange(v.size)).sum()) for v in perms.values()) / total if total else 0.0
    obj = _cosine(a, {k: v.numpy() for k, v in after.items()})
    log.debug(
        "weight matching: %d sweeps, cosine %.4f -> %.4f, %.0f%% of units moved", sweeps, before, obj, 100 * moved
    )
    return Matching(out, before, obj, sweeps, converged, moved)


def align(model_a: nn.Module, model_b: nn.Module, seed: int = 0, max_iter: int = 100) -> tuple[nn.Module, Matching]:
    """Model B with its hidden units matched to model A's (:func:`weight_matching` on their trainable parameters),
    BatchNorm running statistics permuted with the units, and the matching. Raises :class:`UnsupportedModel`."""
    spec = permutation_spec(model_a)
    pa = {n: p for n, p in model_a.named_parameters() if p.requires_grad}
    pb = {n: p for n, p in model_b.named_parameters() if p.requires_grad}
    m = weight_matching(spec, pa, pb, seed=seed, max_iter=max_iter)
    return permuted_model(model_b, spec, m.perms), m


# ----------------------------------------------------------------------------------------------------- REPAIR
@torch.no_grad()
def unit_statistics(
    model: nn.Module, modules: Sequence[str], x: Tensor, batch_size: int = 2048
) -> dict[str, tuple[Tensor, Tensor]]:
    """Mean and standard deviation ``([C], [C])`` (float64; population std) of each named module's output units
    over the inputs ``x`` (channels: over samples and positions), the model in eval mode."""
    sums: dict[str, list[Tensor]] = {}
    hooks = []

    def hook(name: str):
        def fn(_m: nn.Module, _inp: object, out: Tensor) -> None:
            z = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)  # [C, n * positions]
            acc = sums.setdefault(name, [z.new_zeros(z.shape[0]), z.new_zeros(z.shape[0]), z.new_zeros(())])
            acc[0] += z.sum(1)
            acc[1] += (z * z).sum(1)
            acc[2] += z.shape[1]

        return fn

    for name in modules:
        hooks.append(model.get_submodule(name).register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, x.shape[0], batch_size):
            model(x[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for name in modules:
        s, ss, n = sums[name]
        mean = s / n
        out[name] = (mean, (ss / n - mean * mean).clamp_min(0.0).sqrt())
    return out


@torch.no_grad()
def repair(
    model: nn.Module,
    modules: Sequence[str],
    stats_a: Mapping[str, tuple[Tensor, Tensor]],
    stats_b: Mapping[str, tuple[Tensor, Tensor]],
    t: float,
    x: Tensor,
    eps: float = 1e-8,
) -> None:
    """REPAIR in place (module docstring): for each module of ``modules`` in order (forward order), rescale its
    output units so that their mean and std over ``x`` become ``(1 - t) stats_a + t stats_b`` (the endpoints'
    :func:`unit_statistics`), folded into the module's weight (rows scaled) and bias (which must exist). Costs
    one pass over ``x`` per module. A unit with zero std (dead on ``x``) keeps its scale and is shifted."""
    for name in modules:
        m = model.get_submodule(name)
        if getattr(m, "bias", None) is None:
            raise ValueError(f"REPAIR: module {name!r} has no bias to fold the correction into")
        mean, std = unit_statistics(model, [name], x)[name]
        goal_mean = (1.0 - t) * stats_a[name][0] + t * stats_b[name][0]
        goal_std = (1.0 - t) * stats_a[name][1] + t * stats_b[name][1]
        scale = torch.where(std > eps, goal_std / std.clamp_min(eps), torch.ones_like(std))
        w, b = m.weight, m.bias
        w.mul_(scale.to(w.dtype).reshape(-1, *[1] * (w.dim() - 1)))
        b.copy_(((b.double() - mean) * scale + goal_mean).to(b.dtype))
