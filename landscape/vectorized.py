"""Training the seeds of one cell together: K models stacked along a leading seed dimension, one step for all.

Each seed keeps everything it has when trained alone by ``training.train_model``: its initial model
(``build_model(seed=s)``, stacked with ``torch.func.stack_module_state``), its batch order (its own
``torch.Generator(seed)``, one ``randperm`` per epoch, the trailing batch of one sample dropped), its own SGD
momentum buffers and the same epoch-wise learning-rate schedule. The SGD update is the one of
``torch.optim.SGD`` (coupled weight decay ``g += wd * p``; momentum ``b = mu * b + g``, ``b = g`` on the first
step; ``p -= lr * b``) applied to the stacked tensors, element by element, so it rounds like the serial one.

Forward passes of the stack (logits ``[K, B, n_classes]`` from inputs ``[K, B, ...]``):

* ``grouped``: MLPs as batched matrix products (``baddbmm`` over the seed dimension), the fast path;
* ``vmap``: any other model (CNN, ResNet18) through ``torch.func.functional_call`` vectorised with
  ``torch.func.vmap`` over the seed dimension (convolutions become one grouped convolution).

BatchNorm (CNN with ``batch_norm``, ResNet18): each seed has its own running statistics, stacked like the
parameters (``{name: [K, ...]}``, ``num_batches_tracked`` included) and mapped over by ``vmap`` with them; in
training mode each seed's batch is normalised by its own batch statistics and ``batch_norm`` updates that seed's
row of the stacked statistics in place (vmap's batching rule for batched running statistics), exactly what
``model(x)`` does to its own buffers in a serial step. They are checkpointed with the stack and written into each
seed's ``final.pt`` (the model's usual state-dict names). Other buffers, and BatchNorm with ``momentum=None``
(a cumulative average that reads the step count), are not stacked (``unsupported_reason``).

Gradients come from one reverse pass over the sum of the per-seed mean losses; seeds share no parameter, so
each slice of the gradient is exactly that seed's gradient. The result equals serial training within float
rounding (the batched kernels sum in another order), not bitwise. Measured on CPU (the BatchNorm tests): the
weights, running statistics and losses of 3 seeds after 8 steps agree to ~2e-15 in float64 (CNN, width-2
ResNet18) and to ~2e-7 in float32 (CNN, 8 steps; ResNet18, 3 steps). Small-batch SGD is chaotic: a small
ResNet18 in float32 amplifies those differences to ~1e-2 within 8 steps, as it amplifies a 1e-7 perturbation
of one serial run's initial weights (so ``train.vectorize`` is part of the cell id).

The loop is ``landscape.engine``'s (this module is the step function over the stacked parameters). A seed
that diverges (the engine's check: a loss not finite or far above its initial loss, or parameters not finite)
stops there (status ``diverged``, its weights at that step written as ``train_model`` would) and leaves the
stack; the others go on. Every seed gets ``final.pt`` and ``result.json`` in its own directory, exactly as
from ``train_model``, so resuming and skipping are unchanged downstream. While training, the group checkpoints to ``group_dir/checkpoint.pt`` (every
``checkpoint_every`` epochs, and at a stop request); a resumed group is bitwise identical to an
uninterrupted one on the same device.

Choice (``train.vectorize``): ``on`` forces it (an error for unsupported models), ``off`` never, ``auto``
(:func:`auto_stacks`) where measured faster than serial runs, by the device of the model's parameters:

* MLPs with at least two seeds to train, on every device (``benchmarks/run.py``, section ``seeds``: grouped
  path 2-5x on one CPU thread for the demo widths 8-128; about even for width 512);
* CNNs (with or without BatchNorm) and ResNet18 only on CUDA, where one grouped kernel for K small models is
  expected to beat K launches per layer: *unmeasured on a GPU so far* (``benchmarks/bench_bn_stack.py
  --device cuda`` measures it); on CPU they stay serial: one thread, 3 seeds, CIFAR-shaped batches of 64
  (``benchmarks/bench_bn_stack.py``), stacking took 1.6-1.9x the serial time for the BatchNorm CNN at widths
  8-32 and 1.02-1.14x for ResNet18 at widths 2-8 (two runs at load average 5-8 on 2 cores).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn
from torch.func import stack_module_state, vmap

from landscape.batches import draw
from landscape.engine import MemberResult, StepOut, StepTask, batch_slice, epoch_permutation, run
from landscape.models import MLP
from landscape.params import functional_forward
from landscape.precision import check_precision, step_precision
from landscape.training import (
    CHECKPOINT,
    RESULT,
    TrainResult,
    TrainSettings,
    augmenter,
    load_finished,
    lr_at,
    make_loss,
    train_model,
    training_plan,
    write_final,
)

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


# ------------------------------------------------------------------------------------------ the choice
def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained stacked (None if it can): a buffer that is not a BatchNorm running
    statistic, or a BatchNorm with a cumulative average (``momentum=None``: its factor reads the step count)."""
    bns = _bn_modules(model)
    if any(m.momentum is None and m.track_running_stats for m in bns):
        return "a BatchNorm layer has momentum=None (a cumulative running average is not stacked)"
    bn_buffers = {id(b) for m in bns for b in m.buffers(recurse=False)}
    if any(id(b) not in bn_buffers for b in model.buffers()):
        return "it has buffers other than BatchNorm running statistics"
    return None


def _device_type(model: nn.Module) -> str:
    return next((t.device.type for t in model.parameters()), "cpu")


def auto_stacks(model: nn.Module, n_seeds: int) -> bool:
    """``train.vectorize=auto``'s rule for a stackable ``model`` (``unsupported_reason`` is None) on the device
    of its parameters, from the measurements in the module docstring: MLPs with >= 2 seeds on every device; other
    models (convolutions through ``vmap``, with or without BatchNorm) only on CUDA (expected faster there:
    unmeasured on GPU), never on CPU (measured slower: ``benchmarks/bench_bn_stack.py``)."""
    if n_seeds < 2:
        return False
    if isinstance(model, MLP):
        return True
    return _device_type(model) == "cuda"


def use_vectorized(mode: str, model: nn.Module, n_seeds: int) -> bool:
    """Whether to train ``n_seeds`` seeds of ``model`` together under ``train.vectorize = mode``.

    ``on`` with an unsupported model raises ``ValueError`` naming the key; ``auto`` follows :func:`auto_stacks`
    (MLPs with at least two seeds; convolutional models only on CUDA; see the module docstring).
    """
    if mode not in MODES:
        raise ValueError(f"train.vectorize={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        return False
    reason = unsupported_reason(model)
    if mode == "on":
        if reason is not None:
            raise ValueError(
                f"train.vectorize=on: cannot train {type(model).__name__} seeds together: {reason}; "
                "use train.vectorize=auto or off"
            )
        return True
    return reason is None and auto_stacks(model, n_seeds)


# ------------------------------------------------------------------------------------- stacked forward
class StackedForward(Protocol):
    """Forward of K stacked copies of a model in training mode: ``(params, x [K, B, ...], buffers) -> logits
    [K, B, C]``. ``params`` (and ``buffers``: the BatchNorm running statistics, or None for a model without
    buffers) map the model's names to tensors stacked on a leading seed dimension; BatchNorm normalises each
    seed's batch by its own batch statistics and updates that seed's row of ``buffers`` in place, as
    ``model(x[k])`` does to its own buffers."""

    def __call__(self, params: dict[str, Tensor], x: Tensor, buffers: dict[str, Tensor] | None = None) -> Tensor: ...


def grouped_mlp_forward(model: MLP) -> StackedForward:
    """Forward of K stacked copies of ``model`` (no buffers): batched matrix products over the seed dimension."""
    names = {i: f"net.{i}" for i, layer in enumerate(model.net) if isinstance(layer, nn.Linear)}
    layers = list(model.net)

    def forward(params: dict[str, Tensor], x: Tensor, buffers: dict[str, Tensor] | None = None) -> Tensor:
        h = x.reshape(x.shape[0], x.shape[1], -1)
        for i, layer in enumerate(layers):
            if i in names:
                w, b = params[names[i] + ".weight"], params[names[i] + ".bias"]
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            elif not isinstance(layer, nn.Flatten):
                h = layer(h)  # element-wise activation
        return h

    return forward


def vmap_forward(model: nn.Module) -> StackedForward:
    """Forward of K stacked copies of ``model`` via ``functional_call`` under ``vmap``, in training mode.

    With ``buffers`` the stacked running statistics are mapped over too (``in_dims = 0``): inside the vmapped
    call each BatchNorm updates its seed's row in place (``vmap``'s batching rule of ``batch_norm`` with batched
    running statistics), so ``buffers`` holds each seed's statistics after the step, as serial training's
    ``model(x)`` leaves them in its model (equal within float rounding: the batched kernels sum in another order).
    """
    base = copy.deepcopy(model).to("meta").train()
    plain = vmap(lambda p, x: functional_forward(base, p, x))
    buffered = vmap(lambda p, b, x: functional_forward(base, p, x, b))

    def forward(params: dict[str, Tensor], x: Tensor, buffers: dict[str, Tensor] | None = None) -> Tensor:
        return plain(params, x) if not buffers else buffered(params, buffers, x)

    return forward


def stacked_forward(model: nn.Module) -> tuple[str, StackedForward]:
    """The fastest available stacked forward for ``model``: ``("grouped" | "vmap", fn)``."""
    if isinstance(model, MLP):
        return "grouped", grouped_mlp_forward(model)
    return "vmap", vmap_forward(model)


def stacked_buffers(models: list[nn.Module]) -> dict[str, Tensor]:
    """The buffers (BatchNorm running statistics) of ``models`` (one architecture) stacked: ``{name: [K, ...]}``
    (fresh tensors; empty for models without buffers)."""
    per_model = [dict(m.named_buffers()) for m in models]
    return {n: torch.stack([b[n].detach() for b in per_model]).clone() for n in per_model[0]}


# ---------------------------------------------------------------------------------------- SGD on stacks
@torch.no_grad()
def sgd_step_(
    params: list[Tensor],
    grads: list[Tensor],
    buffers: list[Tensor] | None,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> list[Tensor] | None:
    """One ``torch.optim.SGD`` step (no dampening, no Nesterov) on ``params`` in place; returns the momentum
    buffers (created from the first step's gradients when ``buffers`` is None; None when ``momentum == 0``)."""
    new_buffers: list[Tensor] = []
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        if weight_decay != 0:
            g = g.add(p, alpha=weight_decay)
        if momentum != 0:
            if buffers is None:
                buf = g.detach().clone()
            else:
                buf = buffers[i]
                buf.mul_(momentum).add_(g)
            new_buffers.append(buf)
            g = buf
        p.add_(g, alpha=-lr)
    return new_buffers if momentum != 0 else None


# --------------------------------------------------------------------------------------------- training
class _StackTask(StepTask):
    """The step function over stacked parameters: the seeds of ``group`` (members, in stack-row order)."""

    def __init__(
        self,
        models: dict[int, nn.Module],
        group: list[int],
        x: Tensor,
        y: Tensor,
        s: TrainSettings,
        seed_dirs: dict[int, Path],
    ):
        self.models, self.x, self.y, self.s, self.seed_dirs = models, x, y, s, seed_dirs
        self.members = list(group)
        self.kind, self.forward_fn = stacked_forward(models[group[0]])
        self.loss_fn = make_loss(s.loss)
        self.epochs = s.total_epochs(x.shape[0])
        stacked, _ = stack_module_state([models[g] for g in group])
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in stacked.items()}
        self.model_buffers = stacked_buffers([models[g] for g in group])  # BatchNorm statistics, per seed
        self.buffers: list[Tensor] | None = None  # SGD momentum buffers, stacked
        self.gens = {g: torch.Generator().manual_seed(int(g)) for g in group}
        self.augment = augmenter(s, x, self.members)  # each seed its own crops and flips (landscape.batches)
        check_precision(s.precision)
        if s.compile:
            log.info("train.compile: seeds trained together are not compiled (their forward is vmap's)")
        self.perms = torch.empty(0, dtype=torch.long)
        self.lr = s.lr
        self.losses: Tensor | None = None
        self.results: dict[int, TrainResult] = {}
        self.pending: list[int] = []  # finished seeds whose files are not written yet

    def rng_state(self) -> dict[str, Tensor]:
        return {str(g): self.gens[g].get_state() for g in self.members}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        for g in self.members:
            self.gens[g].set_state(state[str(g)])

    def begin_epoch(self, epoch: int) -> float:
        self.perms = torch.stack([epoch_permutation(self.x.shape[0], self.gens[g]) for g in self.members]).to(
            self.x.device
        )
        if self.augment is not None:
            self.augment.begin_epoch(epoch, self.x.shape[0], self.x.device)
        self.lr = lr_at(self.s, epoch, self.epochs)
        return self.lr

    def forward(self, epoch: int, batch: int, accuracy: bool) -> StepOut:
        idx = batch_slice(self.perms, batch, self.s.batch_size)  # [K, B]
        xb, yb = draw(self.x, self.y, idx)
        if self.augment is not None:
            xb = self.augment.apply(xb, idx)
        with step_precision(self.s.precision, self.x.device.type):
            logits = self.forward_fn(self.params, xb, self.model_buffers)
            self.losses = torch.stack([self.loss_fn(logits[k], yb[k]) for k in range(len(self.members))])
        acc = (logits.detach().argmax(dim=-1) == yb).float().mean(dim=1) if accuracy else None
        return StepOut(self.losses, acc)

    def update(self, out: StepOut) -> None:
        plist = list(self.params.values())
        with step_precision(self.s.precision, self.x.device.type, backward=True):
            grads = torch.autograd.grad(self.losses.sum(), plist)
        self.buffers = sgd_step_(plist, list(grads), self.buffers, self.lr, self.s.momentum, self.s.weight_decay)
        self.losses = None

    def _select(self, keep: Tensor) -> None:
        self.params = {k: v.detach().index_select(0, keep).requires_grad_(True) for k, v in self.params.items()}
        self.model_buffers = {k: v.index_select(0, keep) for k, v in self.model_buffers.items()}
        if self.buffers is not None:
            self.buffers = [b.index_select(0, keep) for b in self.buffers]

    def drop(self, rows: list[int]) -> None:
        keep = [k for k in range(len(self.members)) if k not in rows]
        self._select(torch.tensor(keep, dtype=torch.long, device=self.x.device))
        if self.perms.numel():
            self.perms = self.perms.index_select(0, torch.tensor(keep, dtype=torch.long, device=self.perms.device))
        if self.augment is not None:
            self.augment.select(keep)
        self.members = [self.members[k] for k in keep]

    def nonfinite_rows(self) -> list[int]:
        ok = torch.stack([torch.isfinite(v.detach()).flatten(1).all(dim=1) for v in self.params.values()]).all(dim=0)
        return [k for k, good in enumerate(ok.tolist()) if not good]

    def finish(self, row: int, r: MemberResult) -> None:
        """Seed ``members[row]``'s weights into its model and its result, written by ``commit``."""
        g = self.members[row]
        state = {name: t[row].detach().clone() for name, t in self.params.items()}
        state.update({name: t[row].clone() for name, t in self.model_buffers.items()})
        self.models[g].load_state_dict(state)
        self.results[g] = TrainResult(
            status=r.status,
            epochs=r.epochs,
            steps=r.steps,
            seconds=r.seconds,
            history=r.history,
            resumed_from_epoch=r.resumed_from_epoch,
            vectorized=True,
            reason=r.reason,
        )
        self.pending.append(g)

    def commit(self) -> None:
        """Write ``final.pt`` and ``result.json`` of the finished seeds, like ``train_model`` does at its end."""
        for g in self.pending:
            self.results[g].final_sha256 = write_final(self.models[g], self.seed_dirs[g])
            self.results[g].save(self.seed_dirs[g] / RESULT)
        self.pending = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "params": {k: v.detach() for k, v in self.params.items()},
            "buffers": self.buffers,
            "model_buffers": self.model_buffers,
        }

    def load_state_dict(self, state: dict[str, Any], members: list) -> bool:
        saved = state.get("model_buffers") or {}  # absent in checkpoints of models without buffers
        if state["kind"] != self.kind or saved.keys() != self.model_buffers.keys():
            return False
        rows = torch.tensor([members.index(g) for g in self.members], device=self.x.device)
        self.params = {
            k: v.index_select(0, rows).detach().clone().requires_grad_(True) for k, v in state["params"].items()
        }
        if state["buffers"] is not None:
            self.buffers = [b.index_select(0, rows).clone() for b in state["buffers"]]
        self.model_buffers = {k: v.index_select(0, rows).clone() for k, v in saved.items()}
        return True


def train_together(
    models: dict[int, nn.Module],
    x: Tensor,
    y: Tensor,
    settings: TrainSettings,
    seed_dirs: dict[int, Path],
    group_dir: Path,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    phase: str | None = None,
) -> dict[int, TrainResult]:
    """Train ``models`` (seed -> model initialised with that seed, all of one architecture) together, in place.

    Seeds whose ``seed_dirs[s]/result.json`` exists are loaded, not trained; a seed with a serial
    ``checkpoint.pt`` (from a run with ``train.vectorize=off``) is resumed serially by ``train_model``. The
    rest train stacked (see the module docstring) in ``landscape.engine``, checkpointing to ``group_dir``.
    ``progress(epoch, epochs, mean loss over the active seeds)`` after every epoch; ``should_stop()`` polled
    after every step (checkpoint, then ``StopRequested``); ``phase`` names the work in progress lines
    (default ``training seeds 0,1,2 together``). Returns seed -> TrainResult with ``vectorized=True`` for the
    seeds trained here.
    """
    results: dict[int, TrainResult] = {}
    group: list[int] = []
    for s, model in models.items():
        d = seed_dirs[s]
        d.mkdir(parents=True, exist_ok=True)
        done = load_finished(model, d, map_location=x.device)  # None also when damaged (then set aside)
        if done is not None:
            results[s] = done
        elif (d / CHECKPOINT).exists():
            log.info("seed %d: resuming its serial checkpoint serially", s)
            results[s] = train_model(model, x, y, settings, s, d, should_stop=should_stop)
        else:
            group.append(s)
    if not group:
        return results
    for s in group:
        reason = unsupported_reason(models[s])
        if reason is not None:
            raise ValueError(f"train.vectorize: cannot train {type(models[s]).__name__} seeds together: {reason}")
    task = _StackTask(models, group, x, y, settings, seed_dirs)
    group_dir.mkdir(parents=True, exist_ok=True)
    run(
        task,
        training_plan(settings, x.shape[0]),
        phase or f"training seeds {','.join(map(str, group))} together",
        group_dir / CHECKPOINT,
        should_stop=should_stop,
        on_epoch=progress,
        map_location=x.device,
    )
    results.update(task.results)
    return results


def group_name(seeds: list[int]) -> str:
    """Directory name of a group of seeds trained together: ``seeds=0,1,2``."""
    return "seeds=" + ",".join(str(s) for s in seeds)


__all__ = [
    "MODES",
    "group_name",
    "sgd_step_",
    "stacked_forward",
    "train_together",
    "unsupported_reason",
    "use_vectorized",
]
