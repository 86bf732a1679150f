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

A seed whose loss is not finite stops there (status ``diverged``, its weights at that step written as
``train_model`` would) and leaves the stack; the others go on. Every seed gets ``final.pt`` and
``result.json`` in its own directory, exactly as from ``train_model``, so resuming and skipping are
unchanged downstream. While training, the group checkpoints to ``group_dir/checkpoint.pt`` (every
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
import math
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from landscape.models import MLP, has_batch_norm
from landscape.training import (
    CHECKPOINT,
    FINAL,
    RESULT,
    StopRequested,
    TrainResult,
    TrainSettings,
    _lr_lambda,
    atomic_torch_save,
    make_loss,
    train_model,
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
            raise ValueError(f"train.vectorize=on: cannot train {type(model).__name__} seeds together: {reason}; "
                             "use train.vectorize=auto or off")
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
        return functional_call(base, params, (x,))

    return vmap(one)


def stacked_forward(model: nn.Module) -> tuple[str, StackedForward]:
    """The fastest available stacked forward for ``model``: ``("grouped" | "vmap", fn)``."""
    if isinstance(model, MLP):
        return "grouped", grouped_mlp_forward(model)
    return "vmap", vmap_forward(model)


# ---------------------------------------------------------------------------------------- SGD on stacks
@torch.no_grad()
def sgd_step_(
    params: list[Tensor], grads: list[Tensor], buffers: list[Tensor] | None, lr: float, momentum: float,
    weight_decay: float,
) -> list[Tensor] | None:
    """One ``torch.optim.SGD`` step (no dampening, no Nesterov) on ``params`` in place; returns the momentum
    buffers (created from the first step's gradients when ``buffers`` is None; None when ``momentum == 0``)."""
    new_buffers: list[Tensor] = []
    for i, (p, g) in enumerate(zip(params, grads)):
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
def _seed_state(stacked: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    return {name: t[k].detach().clone() for name, t in stacked.items()}


def train_together(
    models: dict[int, nn.Module],
    x: Tensor,
    y: Tensor,
    settings: TrainSettings,
    seed_dirs: dict[int, Path],
    group_dir: Path,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[int, TrainResult]:
    """Train ``models`` (seed -> model initialised with that seed, all of one architecture) together, in place.

    Seeds whose ``seed_dirs[s]/result.json`` exists are loaded, not trained; a seed with a serial
    ``checkpoint.pt`` (from a run with ``train.vectorize=off``) is resumed serially by ``train_model``. The
    rest train stacked (see the module docstring), checkpointing to ``group_dir``. ``progress(epoch,
    epochs, mean loss over the active seeds)`` after every epoch; ``should_stop()`` polled after every step
    (checkpoint, then ``StopRequested``). Returns seed -> TrainResult with ``vectorized=True`` for the seeds
    trained here.
    """
    results: dict[int, TrainResult] = {}
    group: list[int] = []
    for s, model in models.items():
        d = seed_dirs[s]
        d.mkdir(parents=True, exist_ok=True)
        if (d / RESULT).exists() or (d / CHECKPOINT).exists():
            if (d / CHECKPOINT).exists():
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

    kind, forward = stacked_forward(models[group[0]])
    loss_fn = make_loss(settings.loss)
    n = x.shape[0]
    epochs = settings.total_epochs(n)
    per_epoch = settings.steps_per_epoch(n)
    total_steps = settings.steps if settings.steps is not None else epochs * per_epoch
    lr_at = _lr_lambda(settings, epochs)

    stacked_init, _ = stack_module_state([models[s] for s in group])
    params = {k: v.detach().clone().requires_grad_(True) for k, v in stacked_init.items()}
    buffers: list[Tensor] | None = None
    gens = {s: torch.Generator().manual_seed(int(s)) for s in group}
    active = list(group)
    start_epoch, start_batch, step, seconds, epoch_batches = 0, 0, 0, 0.0, 0
    history: dict[int, list[float]] = {s: [] for s in group}
    loss_sums: dict[int, float] = {s: 0.0 for s in group}

    group_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = group_dir / CHECKPOINT
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=x.device, weights_only=False)
        if set(group) <= set(state["seeds"]):
            rows = torch.tensor([state["seeds"].index(s) for s in group], device=x.device)
            params = {k: v.index_select(0, rows).detach().clone().requires_grad_(True) for k, v in state["params"].items()}
            if state["buffers"] is not None:
                buffers = [b.index_select(0, rows).clone() for b in state["buffers"]]
            for s in group:
                gens[s].set_state(state["generators"][s].cpu())  # CPU generators
                history[s] = list(state["history"][s])
                loss_sums[s] = state["loss_sums"][s]
            start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
            seconds, epoch_batches = state["seconds"], state["epoch_batches"]
            log.info("seeds %s: resumed together at epoch %d, step %d", group, start_epoch, step)
        else:
            log.warning("group checkpoint %s holds seeds %s, not %s: ignored", ckpt_path, state["seeds"], group)

    t0 = time.perf_counter()

    def elapsed() -> float:
        return seconds + time.perf_counter() - t0

    def save(epoch: int, batch: int, gen_states: dict[int, Tensor]) -> None:
        atomic_torch_save(
            {"seeds": list(active), "kind": kind,
             "params": {k: v.detach() for k, v in params.items()},
             "buffers": buffers, "generators": gen_states, "epoch": epoch, "batch": batch, "step": step,
             "history": {s: history[s] for s in active}, "loss_sums": {s: loss_sums[s] for s in active},
             "seconds": elapsed(), "epoch_batches": epoch_batches},
            ckpt_path,
        )

    def finish(s: int, k: int, status: str) -> None:
        """Write seed ``s`` (row ``k`` of the stack) like ``train_model`` does at its end."""
        model = models[s]
        model.load_state_dict(_seed_state(params, k))
        if status == "done" and not all(math.isfinite(p.detach().abs().sum().item()) for p in model.parameters()):
            status = "diverged"
        result = TrainResult(status=status, epochs=len(history[s]), steps=step, seconds=elapsed(),
                             history=history[s], resumed_from_epoch=start_epoch, vectorized=True)
        atomic_torch_save(model.state_dict(), seed_dirs[s] / FINAL)
        result.save(seed_dirs[s] / RESULT)
        results[s] = result

    def drop(rows: list[int]) -> None:
        nonlocal params, buffers, perms
        keep = torch.tensor([k for k in range(len(active)) if k not in rows], dtype=torch.long, device=x.device)
        params = {k: v.detach().index_select(0, keep).requires_grad_(True) for k, v in params.items()}
        if buffers is not None:
            buffers = [b.index_select(0, keep) for b in buffers]
        perms = perms.index_select(0, keep)
        for k in sorted(rows, reverse=True):
            del active[k]

    perms = torch.empty(0)
    for epoch in range(start_epoch, epochs):
        epoch_gen_states = {s: gens[s].get_state() for s in active}
        perms = torch.stack([torch.randperm(n, generator=gens[s]) for s in active]).to(x.device)
        first = start_batch if epoch == start_epoch else 0
        if first == 0:
            loss_sums = {s: 0.0 for s in active}
            epoch_batches = 0
        lr = settings.lr * lr_at(epoch)
        for b in range(first, per_epoch):
            if step >= total_steps:
                break
            while True:
                idx = perms[:, b * settings.batch_size : (b + 1) * settings.batch_size]
                logits = forward(params, x[idx])
                yb = y[idx]
                losses = torch.stack([loss_fn(logits[k], yb[k]) for k in range(len(active))])
                values = losses.detach().tolist()
                bad = [k for k, v in enumerate(values) if not math.isfinite(v)]
                if not bad:
                    break
                for k in bad:
                    log.info("seed %d diverged at step %d", active[k], step)
                    finish(active[k], k, "diverged")
                drop(bad)
                if not active:
                    break
            if not active:
                break
            plist = list(params.values())
            grads = torch.autograd.grad(losses.sum(), plist)
            buffers = sgd_step_(plist, list(grads), buffers, lr, settings.momentum, settings.weight_decay)
            step += 1
            epoch_batches += 1
            for k, s in enumerate(active):
                loss_sums[s] += values[k]
            if should_stop is not None and should_stop():
                save(epoch, b + 1, {s: epoch_gen_states[s] for s in active})
                raise StopRequested(f"stopped at epoch {epoch}, step {step}")
        if not active:
            break
        for s in active:
            history[s].append(loss_sums[s] / max(epoch_batches, 1))
        if progress is not None:
            progress(epoch + 1, epochs, sum(history[s][-1] for s in active) / len(active))
        if epoch + 1 == epochs or step >= total_steps:
            break
        if (epoch + 1) % settings.checkpoint_every == 0:
            save(epoch + 1, 0, {s: gens[s].get_state() for s in active})

    for k, s in enumerate(active):
        finish(s, k, "done")
    ckpt_path.unlink(missing_ok=True)
    return results


def group_name(seeds: list[int]) -> str:
    """Directory name of a group of seeds trained together: ``seeds=0,1,2``."""
    return "seeds=" + ",".join(str(s) for s in seeds)


__all__ = ["MODES", "group_name", "sgd_step_", "stacked_forward", "train_together", "unsupported_reason",
           "use_vectorized"]
