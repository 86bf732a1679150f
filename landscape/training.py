"""Training one model (one seed of a cell) with SGD, resumable from checkpoints, and evaluating it.

Losses (``train.loss``):

* ``cross_entropy``: mean over samples of the softmax cross-entropy of the logits;
* ``mse``: mean over samples of the squared error between logits and one-hot targets, summed over classes.

A run is deterministic given its seed: the initial model comes from ``models.build_model(seed=...)`` and
the batch order from a ``torch.Generator`` seeded with the same seed, whose state is checkpointed, so a
run resumed from a checkpoint is bitwise identical to an uninterrupted one (on the same device).
A non-finite loss stops the run with status ``diverged`` (a result, not an error).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]
LOSSES = ("cross_entropy", "mse")
SCHEDULES = ("constant", "step", "cosine")
CHECKPOINT = "checkpoint.pt"
FINAL = "final.pt"
RESULT = "result.json"


# ----------------------------------------------------------------------------------------------- losses
def _mse_one_hot(logits: Tensor, y: Tensor) -> Tensor:
    target = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
    return (logits - target).pow(2).sum(dim=-1).mean()


def make_loss(name: str) -> LossFn:
    """Mean loss of logits ``[n, C]`` against integer targets ``[n]`` (see the module docstring)."""
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "mse":
        return _mse_one_hot
    raise ValueError(f"train.loss={name!r}: expected one of {', '.join(LOSSES)}")


# ------------------------------------------------------------------------------------------- evaluation
def batches(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive ``(inputs, targets)`` slices of at most ``batch_size`` samples."""
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, batch_size: int = 2048) -> tuple[float, float]:
    """Mean loss and accuracy (fraction in [0, 1]) of ``model`` in eval mode over ``(x, y)``.

    Batches are weighted by their size, so the result does not depend on ``batch_size``.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for xb, yb in batches(x, y, batch_size):
        logits = model(xb)
        total_loss += float(loss_fn(logits, yb)) * len(yb)
        correct += int((logits.argmax(dim=-1) == yb).sum())
        n += len(yb)
    model.train(was_training)
    return total_loss / n, correct / n


@torch.no_grad()
def recompute_bn(model: nn.Module, x: Tensor, batch_size: int = 512) -> bool:
    """Reset and recompute every BatchNorm's running statistics over ``x`` with train-mode forward passes.

    Batches are weighted by their size: the running mean is exactly the mean of the layer's inputs over
    ``x``; the running variance is the size-weighted mean of the per-batch (unbiased) variances, which equals
    the dataset variance when ``batch_size >= len(x)``. Returns False (and does nothing) for models without BN.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return False
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
    model.train()
    seen = 0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        if xb.shape[0] < 2:
            continue
        for m in bns:
            m.momentum = xb.shape[0] / (seen + xb.shape[0])  # running average weighted by batch size
        model(xb)
        seen += xb.shape[0]
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return True


# --------------------------------------------------------------------------------------------- training
@dataclass
class TrainSettings:
    """What the training loop needs from the ``train`` config node (see ``config.TrainConfig``)."""

    loss: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int  # resolved: an int <= n_train
    epochs: int
    steps: int | None
    schedule: str
    lr_decay: float
    lr_milestones: list[int]
    checkpoint_every: int

    @classmethod
    def from_config(cls, cfg: Any, n_train: int) -> "TrainSettings":
        bs = cfg.batch_size
        batch_size = n_train if bs == "full" else int(bs)
        return cls(
            loss=str(cfg.loss),
            lr=float(cfg.lr),
            momentum=float(cfg.momentum),
            weight_decay=float(cfg.weight_decay),
            batch_size=min(batch_size, n_train),
            epochs=int(cfg.epochs),
            steps=None if cfg.steps is None else int(cfg.steps),
            schedule=str(cfg.schedule),
            lr_decay=float(cfg.lr_decay),
            lr_milestones=[int(m) for m in cfg.lr_milestones],
            checkpoint_every=int(cfg.checkpoint_every),
        )

    def steps_per_epoch(self, n_train: int) -> int:
        full, rest = divmod(n_train, self.batch_size)
        return full + (1 if rest > 1 else 0)  # a trailing batch of one sample is dropped (BatchNorm)

    def total_epochs(self, n_train: int) -> int:
        if self.steps is None:
            return self.epochs
        return math.ceil(self.steps / self.steps_per_epoch(n_train))


@dataclass
class TrainResult:
    """Outcome of training one seed. ``status`` is ``done`` or ``diverged``."""

    status: str
    epochs: int
    steps: int
    seconds: float
    history: list[float] = field(default_factory=list)  # mean training-batch loss per epoch
    resumed_from_epoch: int = 0
    vectorized: bool = False  # trained together with other seeds (torch.func + vmap)

    def save(self, path: Path) -> None:
        _atomic_write_bytes(path, json.dumps(asdict(self)).encode())

    @classmethod
    def load(cls, path: Path) -> "TrainResult":
        return cls(**json.loads(Path(path).read_text()))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name in the same directory, then rename into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _lr_lambda(s: TrainSettings, epochs: int) -> Callable[[int], float]:
    if s.schedule == "constant":
        return lambda e: 1.0
    if s.schedule == "step":
        return lambda e: s.lr_decay ** sum(e >= m for m in s.lr_milestones)
    if s.schedule == "cosine":
        return lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / max(epochs, 1)))
    raise ValueError(f"train.schedule={s.schedule!r}: expected one of {', '.join(SCHEDULES)}")


def make_optimizer(model: nn.Module, s: TrainSettings, epochs: int) -> tuple[torch.optim.SGD, Any]:
    """SGD with momentum and (coupled, L2) weight decay, and an epoch-wise learning-rate schedule."""
    opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(s, epochs))
    return opt, sched


class StopRequested(Exception):
    """Raised by the training loop after checkpointing when ``should_stop()`` turned true (preemption)."""


def train_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: TrainSettings,
    seed: int,
    workdir: Path,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)``; checkpoint to ``workdir`` and resume from it.

    ``workdir`` holds ``checkpoint.pt`` (latest epoch boundary), then ``final.pt`` and ``result.json`` when the
    run has finished. If ``result.json`` exists the final weights are loaded and nothing is trained.
    ``progress(epoch, total_epochs, loss)`` is called after every epoch. ``should_stop()`` is polled after every
    step; when it returns True the state is checkpointed at that step and ``StopRequested`` is raised.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / RESULT).exists():
        model.load_state_dict(torch.load(workdir / FINAL, map_location=x.device, weights_only=True))
        return TrainResult.load(workdir / RESULT)

    loss_fn = make_loss(settings.loss)
    n = x.shape[0]
    epochs = settings.total_epochs(n)
    per_epoch = settings.steps_per_epoch(n)
    total_steps = settings.steps if settings.steps is not None else epochs * per_epoch
    opt, sched = make_optimizer(model, settings, epochs)
    gen = torch.Generator().manual_seed(int(seed))
    start_epoch, start_batch, step, history, seconds = 0, 0, 0, [], 0.0
    epoch_loss_sum, epoch_batches = 0.0, 0

    ckpt_path = workdir / CHECKPOINT
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=x.device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"].cpu())  # CPU generator; map_location moved it
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        history, seconds = state["history"], state["seconds"]
        epoch_loss_sum, epoch_batches = state["epoch_loss_sum"], state["epoch_batches"]
        log.info("seed %d: resumed at epoch %d, step %d", seed, start_epoch, step)

    def save(epoch: int, batch: int, gen_state: Tensor) -> None:
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen_state,
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "history": history,
                "seconds": seconds + time.perf_counter() - t0,
                "epoch_loss_sum": epoch_loss_sum,
                "epoch_batches": epoch_batches,
            },
            ckpt_path,
        )

    t0 = time.perf_counter()
    model.train()
    status = "done"
    for epoch in range(start_epoch, epochs):
        epoch_gen_state = gen.get_state()  # the state that produces this epoch's permutation
        perm = torch.randperm(n, generator=gen).to(x.device)
        first = start_batch if epoch == start_epoch else 0
        if first == 0:
            epoch_loss_sum, epoch_batches = 0.0, 0
        for b in range(first, per_epoch):
            if step >= total_steps:
                break
            idx = perm[b * settings.batch_size : (b + 1) * settings.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            if not torch.isfinite(loss):
                status = "diverged"
                break
            loss.backward()
            opt.step()
            step += 1
            epoch_batches += 1
            epoch_loss_sum += float(loss.detach())
            if should_stop is not None and should_stop():
                save(epoch, b + 1, epoch_gen_state)
                raise StopRequested(f"stopped at epoch {epoch}, step {step}")
        if status == "diverged":
            break
        sched.step()
        history.append(epoch_loss_sum / max(epoch_batches, 1))
        if progress is not None:
            progress(epoch + 1, epochs, history[-1])
        last = epoch + 1 == epochs or step >= total_steps
        if last:
            break
        if (epoch + 1) % settings.checkpoint_every == 0:
            save(epoch + 1, 0, gen.get_state())

    seconds += time.perf_counter() - t0
    result = TrainResult(status=status, epochs=len(history), steps=step, seconds=seconds, history=history,
                         resumed_from_epoch=start_epoch)
    if status == "done" and not all(math.isfinite(p.detach().abs().sum().item()) for p in model.parameters()):
        result.status = "diverged"
    atomic_torch_save(model.state_dict(), workdir / FINAL)
    result.save(workdir / RESULT)
    ckpt_path.unlink(missing_ok=True)
    return result
