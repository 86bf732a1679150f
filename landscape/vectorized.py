"""Training the seeds of one cell together: K models stacked along a leading seed dimension, one step for all.

Each seed keeps everything it has when trained alone by ``training.train_model``: its initial model
(``build_model(seed=s)``, stacked with ``torch.func.stack_module_state``), its batch order (its own
``torch.Generator(seed)``, one ``randperm`` per epoch, the trailing batch of one sample dropped), its own SGD
momentum buffers and the same epoch-wise learning-rate schedule. The SGD update is the one of
``torch.optim.SGD`` (coupled weight decay ``g += wd * p``; momentum ``b = mu * b + g``, ``b = g`` on the first
step; ``p -= lr * b``) applied to the stacked tensors, element by element, so it rounds like the serial one.

Forward passes of the stack (logits ``[K, B, n_classes]`` from inputs ``[K, B, ...]``):

* ``grouped``: MLPs as batched matrix products (``baddbmm`` over the seed dimension), the fast path;
* ``vmap``: any model without buffers (e.g. a CNN without BatchNorm) through ``torch.func.functional_call``
  vectorised with ``torch.func.vmap`` over the seed dimension.

Gradients come from one reverse pass over the sum of the per-seed mean losses; seeds share no parameter, so
each slice of the gradient is exactly that seed's gradient. The result equals serial training within float
rounding (the batched kernels sum in another order), not bitwise.

The loop is ``landscape.engine``'s (this module is the step function over the stacked parameters). A seed
that diverges (the engine's check: a loss not finite or far above its initial loss, or parameters not finite)
stops there (status ``diverged``, its weights at that step written as ``train_model`` would) and leaves the
stack; the others go on. Every seed gets ``final.pt`` and ``result.json`` in its own directory, exactly as
from ``train_model``, so resuming and skipping are unchanged downstream. While training, the group checkpoints to ``group_dir/checkpoint.pt`` (every
``checkpoint_every`` epochs, and at a stop request); a resumed group is bitwise identical to an
uninterrupted one on the same device.

Choice (``train.vectorize``): ``on`` forces it (an error for unsupported models), ``off`` never, ``auto``
where measured faster than serial runs (``benchmarks/run.py``, section ``seeds``): MLPs with at least two
seeds to train (grouped path: 2-5x on one CPU thread for the demo widths 8-128; about even for width 512).
CNNs go through ``vmap``, whose per-operation overhead made it no faster on CPU, so ``auto`` leaves them
serial.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.func import stack_module_state, vmap

from landscape.engine import MemberResult, StepOut, StepTask, batch_slice, epoch_permutation, run
from landscape.models import MLP, has_batch_norm
from landscape.params import functional_forward
from landscape.training import (
    CHECKPOINT,
    RESULT,
    TrainResult,
    TrainSettings,
    load_finished,
    lr_at,
    make_loss,
    train_model,
    training_plan,
    write_final,
)

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
StackedForward = Callable[[dict[str, Tensor], Tensor], Tensor]


# ------------------------------------------------------------------------------------------ the choice
def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained stacked (None if it can): BatchNorm or any other buffer."""
    if has_batch_norm(model):
        return "it has BatchNorm layers (per-seed running statistics are not stacked)"
    if any(True for _ in model.buffers()):
        return "it has buffers"
    return None


def use_vectorized(mode: str, model: nn.Module, n_seeds: int) -> bool:
    """Whether to train ``n_seeds`` seeds of ``model`` together under ``train.vectorize = mode``.

    ``on`` with an unsupported model raises ``ValueError`` naming the key; ``auto`` is True for MLPs with
    at least two seeds (the measured-faster case, see the module docstring).
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
    return reason is None and isinstance(model, MLP) and n_seeds >= 2


# ------------------------------------------------------------------------------------- stacked forward
def grouped_mlp_forward(model: MLP) -> StackedForward:
    """Forward of K stacked copies of ``model``: ``(params, x [K, B, ...]) -> logits [K, B, C]``.

    ``params`` maps the model's parameter names to tensors stacked on a leading seed dimension.
    """
    names = {i: f"net.{i}" for i, layer in enumerate(model.net) if isinstance(layer, nn.Linear)}
    layers = list(model.net)

    def forward(params: dict[str, Tensor], x: Tensor) -> Tensor:
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
    """Forward of K stacked copies of any buffer-free ``model`` via ``functional_call`` under ``vmap``."""
    base = copy.deepcopy(model).to("meta")

    def one(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_forward(base, params, x)

    return vmap(one)


def stacked_forward(model: nn.Module) -> tuple[str, StackedForward]:
    """The fastest available stacked forward for ``model``: ``("grouped" | "vmap", fn)``."""
    if isinstance(model, MLP):
        return "grouped", grouped_mlp_forward(model)
    return "vmap", vmap_forward(model)


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
        self.buffers: list[Tensor] | None = None  # SGD momentum buffers, stacked
        self.gens = {g: torch.Generator().manual_seed(int(g)) for g in group}
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
        self.lr = lr_at(self.s, epoch, self.epochs)
        return self.lr

    def forward(self, epoch: int, batch: int, accuracy: bool) -> StepOut:
        idx = batch_slice(self.perms, batch, self.s.batch_size)  # [K, B]
        logits = self.forward_fn(self.params, self.x[idx])
        yb = self.y[idx]
        self.losses = torch.stack([self.loss_fn(logits[k], yb[k]) for k in range(len(self.members))])
        acc = (logits.detach().argmax(dim=-1) == yb).float().mean(dim=1) if accuracy else None
        return StepOut(self.losses, acc)

    def update(self, out: StepOut) -> None:
        plist = list(self.params.values())
        grads = torch.autograd.grad(self.losses.sum(), plist)
        self.buffers = sgd_step_(plist, list(grads), self.buffers, self.lr, self.s.momentum, self.s.weight_decay)
        self.losses = None

    def _select(self, keep: Tensor) -> None:
        self.params = {k: v.detach().index_select(0, keep).requires_grad_(True) for k, v in self.params.items()}
        if self.buffers is not None:
            self.buffers = [b.index_select(0, keep) for b in self.buffers]

    def drop(self, rows: list[int]) -> None:
        keep = [k for k in range(len(self.members)) if k not in rows]
        self._select(torch.tensor(keep, dtype=torch.long, device=self.x.device))
        if self.perms.numel():
            self.perms = self.perms.index_select(0, torch.tensor(keep, dtype=torch.long, device=self.perms.device))
        self.members = [self.members[k] for k in keep]

    def nonfinite_rows(self) -> list[int]:
        ok = torch.stack([torch.isfinite(v.detach()).flatten(1).all(dim=1) for v in self.params.values()]).all(dim=0)
        return [k for k, good in enumerate(ok.tolist()) if not good]

    def finish(self, row: int, r: MemberResult) -> None:
        """Seed ``members[row]``'s weights into its model and its result, written by ``commit``."""
        g = self.members[row]
        self.models[g].load_state_dict({name: t[row].detach().clone() for name, t in self.params.items()})
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
        return {"kind": self.kind, "params": {k: v.detach() for k, v in self.params.items()}, "buffers": self.buffers}

    def load_state_dict(self, state: dict[str, Any], members: list) -> bool:
        if state["kind"] != self.kind:
            return False
        rows = torch.tensor([members.index(g) for g in self.members], device=self.x.device)
        self.params = {
            k: v.index_select(0, rows).detach().clone().requires_grad_(True) for k, v in state["params"].items()
        }
        if state["buffers"] is not None:
            self.buffers = [b.index_select(0, rows).clone() for b in state["buffers"]]
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
