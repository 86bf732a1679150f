"""Training one model (one seed of a cell) with SGD, resumable from checkpoints, and evaluating it.

Losses (``train.loss``):

* ``cross_entropy``: mean over samples of the softmax cross-entropy of the logits;
* ``mse``: mean over samples of the squared error between logits and one-hot targets, summed over classes.

A run is deterministic given its seed: the initial model comes from ``models.build_model(seed=...)`` and
the batch order from a ``torch.Generator`` seeded with the same seed, whose state is checkpointed, so a
run resumed from a checkpoint is bitwise identical to an uninterrupted one (on the same device).
Batches are drawn by index on the data's device (``landscape.batches``), with the seeded crop-and-flip
augmentation there under ``train.augment``; ``train.precision`` and ``train.compile`` act on the training
steps only (``landscape.precision``).
The loop, its checkpoints, stop requests, progress lines and divergence check are those of
``landscape.engine``: a loss that is not finite or far above the initial loss, or parameters that are not
finite, end the run with status ``diverged`` (a result, not an error).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.batches import Augmenter, check_augmentable, draw
from landscape.engine import (
    DamagedCheckpoint,
    MemberResult,
    Plan,
    ShuffledTask,
    StepOut,
    StopRequested,  # noqa: F401 - re-exported (job, launchers, tests)
    UnsafeCheckpoint,
    atomic_torch_save,
    batch_slice,
    load_checkpoint,
    lr_factor,
    remove_stale_temporaries,
    run,
    set_aside,
    state_digest,
    steps_per_epoch,
)
from landscape.files import atomic_write
from landscape.precision import check_precision, compiled, step_precision

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]
StepCallback = Callable[[nn.Module, int, int], None]
"""``on_step(model, step, epoch)`` after every optimiser step of ``train_model``: the model (updated, in train
mode), the steps taken so far (1-based, counted across resumes) and the 0-based epoch. It must leave the model's
parameters, mode and the global RNG as they were (``landscape.metrics.sharpness`` measures there); its time
counts in the run's ``seconds``."""
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
    for m, mom in zip(bns, momenta, strict=True):
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
    augment: bool = False  # random crop + flip of image batches on the device (landscape.batches)
    precision: str = "fp32"  # fp32 | tf32 | bf16 of the training steps (landscape.precision)
    compile: bool = False  # torch.compile the model of a serial run (landscape.precision)

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
            augment=bool(getattr(cfg, "augment", False)),
            precision=str(getattr(cfg, "precision", "fp32")),
            compile=bool(getattr(cfg, "compile", False)),
        )

    def steps_per_epoch(self, n_train: int) -> int:
        """Batches per epoch (``engine.steps_per_epoch``: a trailing batch of one sample is dropped)."""
        return steps_per_epoch(n_train, self.batch_size)

    def total_epochs(self, n_train: int) -> int:
        if self.steps is None:
            return self.epochs
        return math.ceil(self.steps / self.steps_per_epoch(n_train))


@dataclass
class TrainResult:
    """Outcome of training one seed. ``status`` is ``done`` or ``diverged``; ``reason``: why it diverged."""

    status: str
    epochs: int
    steps: int
    seconds: float
    history: list[float] = field(default_factory=list)  # mean training-batch loss per epoch
    resumed_from_epoch: int = 0
    vectorized: bool = False  # trained together with other seeds (torch.func + vmap)
    reason: str | None = None
    final_sha256: str | None = None  # state_digest of final.pt's state dict, checked when it is loaded

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(asdict(self))), fsync=True)

    @classmethod
    def load(cls, path: Path) -> "TrainResult":
        return cls(**json.loads(Path(path).read_text()))


def lr_at(s: TrainSettings, epoch: int, epochs: int) -> float:
    """The learning rate of ``epoch`` (0-based) of ``epochs`` under the settings' schedule."""
    if s.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule={s.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    return s.lr * lr_factor(s.schedule, epoch, epochs, s.lr_decay, s.lr_milestones)


def training_plan(s: TrainSettings, n_train: int) -> Plan:
    """The engine's plan of a training run: epochs, steps per epoch, the step budget, checkpoint interval."""
    return Plan(
        epochs=s.total_epochs(n_train),
        per_epoch=s.steps_per_epoch(n_train),
        total_steps=s.steps,
        checkpoint_every=s.checkpoint_every,
    )


def params_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite."""
    return all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters())


def minibatch_forward(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    perm: Tensor,
    batch: int,
    batch_size: int,
    loss_fn: LossFn,
    accuracy: bool,
    transform: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, StepOut]:
    """The forward half of one plain minibatch step of one model: zero ``opt``'s gradients, evaluate batch ``batch``
    of the epoch's order ``perm [n]`` (``x[idx]`` on the data's device, then ``transform(inputs, idx)`` if given:
    the augmentation); returns the mean loss (a scalar with its graph, for ``backward``) and the step's output
    (loss ``[1]``, the batch's accuracy ``[1]`` as a fraction when ``accuracy``)."""
    idx = batch_slice(perm, batch, batch_size)
    opt.zero_grad(set_to_none=True)
    xb, yb = draw(x, y, idx)
    logits = model(xb if transform is None else transform(xb, idx))
    loss = loss_fn(logits, yb)
    acc = (logits.detach().argmax(dim=-1) == yb).float().mean().reshape(1) if accuracy else None
    return loss, StepOut(loss.reshape(1), acc)


class _ModelTask(ShuffledTask):
    """One model trained with ``torch.optim.SGD`` (momentum, coupled weight decay), epoch-wise learning rate."""

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        s: TrainSettings,
        seed: int,
        workdir: Path,
        on_step: StepCallback | None = None,
    ):
        self.model, self.x, self.y, self.s, self.workdir = model, x, y, s, workdir
        self.on_step, self.epoch = on_step, 0
        self.members = [int(seed)]
        self.loss_fn = make_loss(s.loss)
        self.epochs = s.total_epochs(x.shape[0])
        self.opt = torch.optim.SGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        self.seed_batches(seed)
        self.augment = augmenter(s, x, [seed])
        check_precision(s.precision)
        self.forward_model = compiled(model, s.compile)  # the model itself unless train.compile
        self.loss: Tensor | None = None
        self.result: TrainResult | None = None

    def begin_epoch(self, epoch: int) -> float:
        self.epoch = epoch
        lr = lr_at(self.s, epoch, self.epochs)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.shuffle(self.x.shape[0], self.x.device)
        if self.augment is not None:
            self.augment.begin_epoch(epoch, self.x.shape[0], self.x.device)
        self.model.train()
        return lr

    def forward(self, epoch: int, batch: int, accuracy: bool) -> StepOut:
        with step_precision(self.s.precision, self.x.device.type):
            self.loss, out = minibatch_forward(
                self.forward_model,
                self.opt,
                self.x,
                self.y,
                self.perm,
                batch,
                self.s.batch_size,
                self.loss_fn,
                accuracy,
                None if self.augment is None else self.augment.apply,
            )
        return out

    def update(self, out: StepOut) -> None:
        with step_precision(self.s.precision, self.x.device.type, backward=True):
            self.loss.backward()
        self.opt.step()
        self.loss = None

    def after_step(self, step: int) -> None:
        if self.on_step is not None:
            self.on_step(self.model, step, self.epoch)

    def nonfinite_rows(self) -> list[int]:
        return [] if params_finite(self.model) else [0]

    def finish(self, row: int, r: MemberResult) -> None:
        self.result = TrainResult(
            status=r.status,
            epochs=r.epochs,
            steps=r.steps,
            seconds=r.seconds,
            history=r.history,
            resumed_from_epoch=r.resumed_from_epoch,
            reason=r.reason,
        )
        self.result.final_sha256 = write_final(self.model, self.workdir)
        self.result.save(self.workdir / RESULT)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any], members: list) -> bool:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        return True


def augmenter(s: TrainSettings, x: Tensor, seeds: list[int]) -> Augmenter | None:
    """The on-device augmentation of ``seeds`` (one per stack row) under ``s.augment``, or None when it is off;
    ``ValueError`` naming ``train.augment`` when the inputs ``x [n, ...]`` are not images."""
    if not s.augment:
        return None
    check_augmentable(tuple(x.shape[1:]))
    return Augmenter(seeds)


def write_final(model: nn.Module, workdir: Path) -> str:
    """Write ``model``'s state dict to ``workdir/final.pt`` (plain, ``torch.load(weights_only=True)``-able);
    return its digest (kept in ``result.json``, written after it)."""
    state = model.state_dict()
    atomic_torch_save(state, workdir / FINAL)
    return state_digest(state)


def load_finished(model: nn.Module, workdir: Path, map_location: Any = None) -> TrainResult | None:
    """The result of a finished run in ``workdir`` with its final weights loaded into ``model``; None if the run
    has not finished, or if ``final.pt`` / ``result.json`` are damaged or missing (then both are renamed
    ``*.damaged`` with a warning naming them, and the run is trained again). A ``final.pt`` that asks to run code
    raises ``UnsafeCheckpoint``."""
    if not (workdir / RESULT).exists():
        return None
    try:
        state = load_checkpoint(workdir / FINAL, map_location=map_location)
        result = TrainResult.load(workdir / RESULT)
        if result.final_sha256 is not None and state_digest(state) != result.final_sha256:
            raise DamagedCheckpoint(f"{workdir / FINAL}: checksum mismatch with {RESULT} (changed or damaged)")
        model.load_state_dict(state)
        return result
    except UnsafeCheckpoint:
        raise
    except (DamagedCheckpoint, ValueError, TypeError, KeyError, RuntimeError) as exc:  # JSON errors are ValueErrors
        for name in (FINAL, RESULT):
            if (workdir / name).exists():
                set_aside(workdir / name, exc)
        return None


def train_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: TrainSettings,
    seed: int,
    workdir: Path,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    phase: str | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``(x, y)``; checkpoint to ``workdir`` and resume from it (``landscape.engine``).

    ``workdir`` holds ``checkpoint.pt`` (latest epoch boundary or stop request), then ``final.pt`` and
    ``result.json`` when the run has finished. If ``result.json`` exists the final weights are loaded and
    nothing is trained. ``progress(epoch, total_epochs, loss)`` is called after every epoch. ``should_stop()``
    is polled after every step; when it returns True the state is checkpointed at that step and
    ``StopRequested`` is raised. ``phase`` names the work in progress lines (default ``training seed <seed>``).
    ``on_step(model, step, epoch)`` (``StepCallback``) is called after every optimiser step (not when the run had
    finished before: then nothing is trained).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for name in (FINAL, RESULT):
        remove_stale_temporaries(workdir / name)
    done = load_finished(model, workdir, map_location=x.device)
    if done is not None:
        return done
    task = _ModelTask(model, x, y, settings, seed, workdir, on_step)
    run(
        task,
        training_plan(settings, x.shape[0]),
        phase or f"training seed {seed}",
        workdir / CHECKPOINT,
        should_stop=should_stop,
        on_epoch=progress,
        map_location=x.device,
    )
    assert task.result is not None
    return task.result
