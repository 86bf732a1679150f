"""The one resumable training loop: epochs of minibatch steps, checkpoints, stop requests, divergence, progress.

Every trainer of the project is a ``StepTask`` run by ``run``: one model (``training.train_model``), the
seeds of a cell stacked together (``vectorized.train_together``), a Bezier curve
(``connectivity.train_curve``) and the retraining after a jump (``trajectories.jump_retrain``). The task
knows how to draw an epoch's batch order, compute the losses of one batch and take one optimiser step; the
engine owns everything else, once:

* **Members.** A task trains ``K >= 1`` members at once (the seeds of a stack; a single model is ``K = 1``),
  each with its own loss history, divergence check and result. A member that diverges is finished (its
  weights at that step) and dropped; the others go on.
* **Checkpoints** (``checkpoint_path``): every ``checkpoint_every`` epochs at an epoch boundary (not after the
  last epoch), and at a stop request in the middle of an epoch; written to a temporary name and renamed into
  place, holding tensors and plain Python values only (loaded with ``torch.load(weights_only=True)``) and a
  SHA-256 of its content. A file that asks to run code is refused (``UnsafeCheckpoint``, naming it); one that
  is unreadable or fails its checksum is renamed ``*.damaged`` with a warning and training starts over. A
  checkpoint stores the task's state, the engine's counters and the task's random-generator state *at the
  start of the epoch*, so a resumed run redraws the same batch order and continues at the next batch:
  bitwise identical to an uninterrupted run on the same device. A checkpoint whose ``meta`` differs from the
  run's (or that the task rejects) is ignored with a warning. Members that end are checkpointed out before
  their results are written (``StepTask.commit``): after a divergence the members left are checkpointed at
  once, and a task with several members saves its trained state before writing their results one after the
  other. So a kill at any point resumes the members left as the stack they were (a smaller stack need not
  round like a larger one) -- or, between that checkpoint and the write, from scratch.
* **Stop request** (``should_stop``, e.g. ``preemption.stop_requested``), polled after every step: the engine
  checkpoints at that step and raises ``StopRequested``.
* **Divergence**: a member *diverges* when a batch loss is not finite or exceeds
  ``DIVERGENCE_FACTOR * max(initial loss, 1)`` (``DIVERGENCE_FACTOR = 1e6``; the initial loss is the member's
  first batch loss of the run, before any update, and is kept in checkpoints), checked before the step is
  taken; or when its parameters are not finite at the end of an epoch. A diverged member ends with status
  ``diverged`` (a result, not an error). The factor is far above what trainable settings reach (measured on
  digits, MLP of width 32 and depth 2, SGD with momentum 0.9, batches of 64, 20 epochs): MSE at lr 1 peaks at
  6e4 times its initial loss and comes back; cross-entropy at lr 10 and 100 reaches 5e11 and 5e27 times its
  initial loss while staying finite, and ends near chance accuracy.
* **Progress** (``landscape.progress.Progress``): a tqdm bar over the steps in an interactive terminal; elsewhere (a
  SLURM job's log) it logs a first line within seconds (``progress.FIRST_PROGRESS_S``), then one every
  ``LANDSCAPE_PROGRESS_S`` seconds (default 60), with the phase (after the cell and phase of work of the
  enclosing ``progress.working_on``, as are the resume, divergence and stop messages), epoch, step, running mean
  loss of the epoch, accuracy of the latest batch (computed only for the line), learning
  rate, steps per second and the time left (means over the members). ``on_epoch(epoch,
  epochs, loss)`` is called after every epoch (after its checkpoint) with the mean loss over the members.

Batching rule (``steps_per_epoch``): ``ceil(n / batch_size)`` batches per epoch from one permutation, except
that a trailing batch of a single sample is dropped (BatchNorm needs two).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import torch
from torch import Tensor

from landscape import preemption
from landscape.files import STALE_TEMPORARY_S, TEMPORARY_MARK, atomic_write, check_fence
from landscape.progress import PROGRESS_ENV, Progress, labelled, progress_interval  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

DIVERGENCE_FACTOR = 1e6
"""A batch loss above ``DIVERGENCE_FACTOR * max(initial loss, 1)`` counts as diverged (see the module docstring)."""
SCHEDULES = ("constant", "step", "cosine", "garipov")
FORMAT = 2  # checkpoint format of this engine


class StopRequested(Exception):
    """Raised by the engine after checkpointing when ``should_stop()`` turned true (preemption)."""


# -------------------------------------------------------------------------------------- plan and schedule
def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch of ``n`` samples: ``ceil(n / batch_size)``, less a trailing batch of one sample."""
    full, rest = divmod(int(n), int(batch_size))
    return full + (1 if rest > 1 else 0)


def epoch_permutation(n: int, generator: torch.Generator, device: Any = None) -> Tensor:
    """An epoch's batch order: ``randperm(n)`` from ``generator`` (a CPU generator: the same order on every
    device), moved to ``device``."""
    return torch.randperm(int(n), generator=generator).to(device)


def batch_slice(perm: Tensor, batch: int, batch_size: int) -> Tensor:
    """Indices of batch ``batch`` of an epoch's permutation (the last dimension of ``perm [n]`` or ``[K, n]``)."""
    a, b = batch * batch_size, (batch + 1) * batch_size
    return perm[a:b] if perm.dim() == 1 else perm[:, a:b]  # (``perm[..., a:b]`` costs 25 us more per step)


def lr_factor(schedule: str, epoch: int, epochs: int, decay: float = 1.0, milestones: Sequence[int] = ()) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based) of ``epochs``.

    ``constant``: 1; ``step``: ``decay ** (number of milestones <= epoch)``; ``cosine``:
    ``(1 + cos(pi * min(epoch, epochs) / epochs)) / 2``; ``garipov`` (Garipov et al. 2018): 1 for the first half,
    then linear down to 0.01 at 90 % of the epochs, then 0.01.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return decay ** sum(epoch >= m for m in milestones)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / max(epochs, 1)))
    if schedule == "garipov":
        a = epoch / max(epochs, 1)
        if a <= 0.5:
            return 1.0
        if a <= 0.9:
            return 1.0 - (a - 0.5) / 0.4 * 0.99
        return 0.01
    raise ValueError(f"schedule={schedule!r}: expected one of {', '.join(SCHEDULES)}")


@dataclass
class Plan:
    """How long to train: ``epochs`` of ``per_epoch`` steps, at most ``total_steps`` steps in all (None: no cap),
    a checkpoint every ``checkpoint_every`` epochs."""

    epochs: int
    per_epoch: int
    total_steps: int | None = None
    checkpoint_every: int = 1

    @property
    def steps(self) -> int:
        full = self.epochs * self.per_epoch
        return full if self.total_steps is None else min(full, self.total_steps)


# ------------------------------------------------------------------------------------------------ tasks
@dataclass
class StepOut:
    """One batch's ``losses [K]`` (with their graph, for ``update``) and, where asked for and known, the batch's
    accuracies ``[K]`` (fractions)."""

    losses: Tensor
    accuracy: Tensor | None = None


@dataclass
class MemberResult:
    """How one member ended: ``status`` (``done`` | ``diverged``), the steps taken, its per-epoch mean batch
    losses, training seconds (summed over resumed runs), the epoch this run resumed from, and why it
    diverged (None if it did not)."""

    status: str
    steps: int
    history: list[float]
    seconds: float
    resumed_from_epoch: int
    reason: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history)


class StepTask:
    """What the engine trains. ``members`` are the ids (ints or strings) of the members still training, in the
    order of the rows of ``forward``'s losses. Subclasses implement the methods that raise."""

    members: list[Hashable]

    def rng_state(self) -> dict[str, Tensor]:
        """The random-generator state(s) that draw an epoch (CPU ``ByteTensor``s), by name."""
        raise NotImplementedError

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def begin_epoch(self, epoch: int) -> float:
        """Draw the epoch's batch order, set its learning rate; return the learning rate."""
        raise NotImplementedError

    def forward(self, epoch: int, batch: int, accuracy: bool) -> StepOut:
        """Losses of batch ``batch`` of the epoch for every active member (no parameter changes yet), and their
        accuracies on the batch if ``accuracy`` (asked for only when progress will show it)."""
        raise NotImplementedError

    def update(self, out: StepOut) -> None:
        """Take the optimiser step for ``out`` (the last ``forward``)."""
        raise NotImplementedError

    def drop(self, rows: list[int]) -> None:
        """Remove the members at ``rows`` (already finished) from the task. Default: for a single member."""
        if len(self.members) != len(rows):
            raise NotImplementedError(f"{type(self).__name__} cannot drop some of its {len(self.members)} members")
        self.members = []

    def nonfinite_rows(self) -> list[int]:
        """Rows of the members whose parameters are not all finite."""
        raise NotImplementedError

    def finish(self, row: int, result: MemberResult) -> None:
        """Called once per member when it ends (diverged at a step, or done), before it is dropped: take its
        outputs (a task may keep them in memory until ``commit``). Default: nothing."""

    def commit(self) -> None:
        """Write the outputs of the members finished so far. The engine calls it after checkpointing the members
        still training, so a kill in between never pairs a written result with a checkpoint still holding that
        member. Default: nothing."""

    def after_step(self, step: int) -> None:
        """Called after every optimiser step with the number of steps taken so far. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """Everything but the generators that a resumed run needs: tensors and plain values only."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any], members: list[Hashable]) -> bool:
        """Restore from ``state`` saved with ``members`` active; False if it does not fit this task."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------- checkpoints
class UnsafeCheckpoint(ValueError):
    """A checkpoint file that asks to run code when loaded (refused by ``weights_only=True``)."""


class ShuffledTask(StepTask):
    """A step task whose batch orders come from one CPU generator seeded from the config (``seed_batches``),
    saved in checkpoints under ``rng_name``; ``shuffle`` draws an epoch's order into ``perm``."""

    rng_name = "batches"

    def seed_batches(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(int(seed))
        self.perm = torch.empty(0, dtype=torch.long)

    def rng_state(self) -> dict[str, Tensor]:
        return {self.rng_name: self.gen.get_state()}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        self.gen.set_state(state[self.rng_name])

    def shuffle(self, n: int, device: Any) -> None:
        self.perm = epoch_permutation(n, self.gen, device)


class DamagedCheckpoint(ValueError):
    """A checkpoint file that cannot be read or whose content does not match its stored checksum."""


def _digest(obj: Any, h: Any = None) -> Any:
    """SHA-256 over a nest of dicts/lists/tuples of tensors and plain values (keys, dtypes, shapes, bytes)."""
    h = h if h is not None else hashlib.sha256()
    if isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj))
        for v in obj:
            _digest(v, h)
    elif isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    else:
        h.update(repr(obj).encode())
    return h


def atomic_torch_save(obj: Any, path: Path, checksum: bool = False) -> None:
    """``torch.save`` to a temporary name in the same directory, then rename into place. With ``checksum``, the
    file holds ``{"sha256": digest of obj, "body": obj}`` (read back by ``load_checkpoint``).

    No fsync (it cost 8 ms per checkpoint, 6 % of a small model's training): a killed process loses nothing
    (the page cache survives it), and a file emptied by a machine crash fails its checksum (or, for
    ``final.pt``, the digest kept in ``result.json``) and is recomputed."""
    if checksum:
        obj = {"sha256": _digest(obj).hexdigest(), "body": obj}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``, checking the checksum of a file saved with ``checksum=True``.

    Raises ``UnsafeCheckpoint`` (the file asks to run code; nothing of it runs) or ``DamagedCheckpoint``
    (unreadable, truncated, or content not matching its checksum), both naming the file.
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file named
        msg = str(exc)
        if "Unsupported global" in msg:  # a GLOBAL opcode: the file names a callable to run
            first = next((ln.strip() for ln in msg.splitlines() if "Unsupported" in ln), msg[:200])
            raise UnsafeCheckpoint(
                f"{path}: refused, loading it would run code ({first}); delete the file if you did not put it there"
            ) from None
        first = msg.splitlines()[0][:200] if msg else ""
        raise DamagedCheckpoint(f"{path}: unreadable checkpoint ({type(exc).__name__}: {first})") from None
    if isinstance(obj, dict) and set(obj) == {"sha256", "body"}:
        if _digest(obj["body"]).hexdigest() != obj["sha256"]:
            raise DamagedCheckpoint(f"{path}: checksum mismatch (the file was changed or damaged)")
        return obj["body"]
    return obj


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of ``path`` (``files.temporary_name``: ``.<name>.tmp-<pid>-<thread>``)
    left by a killed writer: those of other processes not modified for ``STALE_TEMPORARY_S`` seconds."""
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}{TEMPORARY_MARK}*"):
        try:
            if f"{TEMPORARY_MARK}{os.getpid()}-" in tmp.name or now - tmp.stat().st_mtime < STALE_TEMPORARY_S:
                continue
            check_fence(tmp)
            tmp.unlink()
            log.info("removed %s, the temporary file of a writer that was killed", tmp)
        except FileNotFoundError:
            continue


def state_digest(obj: Any) -> str:
    """Hex SHA-256 of a nest of tensors and plain values (what ``checksum=True`` stores)."""
    return _digest(obj).hexdigest()


def set_aside(path: Path, exc: Exception) -> None:
    """Rename a damaged file to ``<name>.damaged`` (kept for inspection) and log why."""
    target = path.with_name(path.name + ".damaged")
    check_fence(path)  # a holder that lost its cell's lease moves nothing (``files.Fence``)
    log.warning("%s; moved to %s, recomputing", exc, target.name)
    os.replace(path, target)


# ------------------------------------------------------------------------------------------------ engine
@dataclass
class _Counters:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    seconds: float = 0.0
    epoch_batches: int = 0
    trained: bool = False  # all epochs done: only the members' results remain to be written
    history: dict[Any, list[float]] = field(default_factory=dict)
    loss_sums: dict[Any, float] = field(default_factory=dict)
    initial: dict[Any, float] = field(default_factory=dict)

    def plain(self, members: list[Hashable]) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "seconds": self.seconds,
            "epoch_batches": self.epoch_batches,
            "trained": self.trained,
            "history": {m: list(self.history[m]) for m in members},
            "loss_sums": {m: self.loss_sums[m] for m in members},
            "initial": {m: self.initial[m] for m in members if m in self.initial},
        }


def divergence_reason(loss: float, initial: float | None) -> str | None:
    """Why a batch loss counts as diverged (None if it does not): not finite, or above
    ``DIVERGENCE_FACTOR * max(initial, 1)``."""
    if not math.isfinite(loss):
        return f"loss {loss}"
    if initial is not None and loss > DIVERGENCE_FACTOR * max(initial, 1.0):
        return f"loss {loss:.3g} > {DIVERGENCE_FACTOR:g} x max(initial loss {initial:.3g}, 1)"
    return None


class _Run:
    """One call of ``run``: the counters, the member bookkeeping and the checkpoint of a task's training."""

    def __init__(
        self,
        task: StepTask,
        plan: Plan,
        phase: str,
        checkpoint_path: Path | None,
        meta: dict[str, Any],
        should_stop: Callable[[], bool] | None,
        on_epoch: Callable[[int, int, float], None] | None,
    ):
        self.task, self.plan, self.phase, self.path, self.meta = task, plan, phase, checkpoint_path, meta
        self.should_stop, self.on_epoch = should_stop, on_epoch
        self.c = _Counters()
        for m in task.members:
            self.c.history[m], self.c.loss_sums[m] = [], 0.0
        self.results: dict[Hashable, MemberResult] = {}
        self.t0 = time.perf_counter()
        self.start_epoch = 0
        self.rng: dict[str, Tensor] = {}

    def elapsed(self) -> float:
        return self.c.seconds + time.perf_counter() - self.t0

    # ------------------------------------------------------------------------------------- checkpoints
    def resume(self, map_location: Any) -> None:
        """Restore the task and the counters from the checkpoint, if there is one of this run."""
        task, c, path = self.task, self.c, self.path
        if path is not None:
            remove_stale_temporaries(path)
        if path is None or not path.exists():
            return
        try:
            state = load_checkpoint(path, map_location)
        except DamagedCheckpoint as exc:
            set_aside(path, exc)
            return
        saved = list(state.get("members", []))
        if state.get("format") != FORMAT or state.get("meta") != self.meta:
            log.warning("%s: checkpoint of another run (format or settings differ): ignored", path)
            return
        if not set(task.members) <= set(saved):
            log.warning("%s holds members %s, not %s: ignored", path, saved, task.members)
            return
        if not task.load_state_dict(state["task"], saved):
            log.warning("%s: rejected by the task: ignored", path)
            return
        task.set_rng_state({k: v.cpu() for k, v in state["rng"].items()})
        e = state["engine"]
        c.epoch, c.batch, c.step, c.seconds, c.epoch_batches, c.trained = (
            e["epoch"],
            e["batch"],
            e["step"],
            e["seconds"],
            e["epoch_batches"],
            e["trained"],
        )
        for m in task.members:
            c.history[m] = list(e["history"][m])
            c.loss_sums[m] = e["loss_sums"][m]
            if m in e["initial"]:
                c.initial[m] = e["initial"][m]
        log.info("%s: resumed at epoch %d, step %d", self.phase, c.epoch, c.step)

    def save(self, epoch: int, batch: int, rng: dict[str, Tensor]) -> None:
        if self.path is None:
            return
        members = list(self.task.members)
        engine = self.c.plain(members)
        engine.update(epoch=epoch, batch=batch, seconds=self.elapsed())
        atomic_torch_save(
            {
                "format": FORMAT,
                "meta": self.meta,
                "members": members,
                "engine": engine,
                "rng": rng,
                "task": self.task.state_dict(),
            },
            self.path,
            checksum=True,
        )

    # ----------------------------------------------------------------------------------------- members
    def end(self, rows: list[int], status: str, reasons: dict[int, str] | None = None) -> None:
        """Finish the members at ``rows`` with ``status`` (the task writes their outputs)."""
        for k in rows:
            m = self.task.members[k]
            reason = (reasons or {}).get(k)
            if status == "diverged":
                log.info("%s: member %s diverged at step %d: %s", self.phase, m, self.c.step, reason)
            self.results[m] = MemberResult(
                status=status,
                steps=self.c.step,
                history=list(self.c.history[m]),
                seconds=self.elapsed(),
                resumed_from_epoch=self.start_epoch,
                reason=reason,
            )
            self.task.finish(k, self.results[m])

    def end_diverged(self, reasons: dict[int, str], epoch: int, batch: int, rng: dict[str, Tensor]) -> None:
        """End the members at ``reasons``' rows as diverged; if others go on, checkpoint them at ``(epoch, batch)``
        (``rng``: the generators' state that draws that epoch) before the ended ones' results are written."""
        rows = sorted(reasons)
        self.end(rows, "diverged", reasons)
        self.task.drop(rows)
        if self.task.members:
            self.save(epoch, batch, rng)
        self.task.commit()

    # ------------------------------------------------------------------------------------------- steps
    def forward(self, epoch: int, batch: int, accuracy: bool) -> tuple[StepOut, list[float], list[float] | None] | None:
        """The batch's losses for the members that have not diverged (diverged ones are ended and dropped,
        then the rest computed again); None when no member is left."""
        task, c = self.task, self.c
        while task.members:
            out = task.forward(epoch, batch, accuracy)
            losses = out.losses.detach().tolist()  # one device sync per step
            accs = None if out.accuracy is None else out.accuracy.detach().tolist()
            for k, m in enumerate(task.members):
                c.initial.setdefault(m, losses[k])
            bad = {
                k: r
                for k, m in enumerate(task.members)
                if (r := divergence_reason(losses[k], c.initial.get(m))) is not None
            }
            if not bad:
                return out, losses, accs
            self.end_diverged(bad, epoch, batch, self.rng)
        return None

    def step(self, epoch: int, batch: int, lr: float, progress: Progress) -> bool:
        """One step of every member; False when no member is left."""
        task, c = self.task, self.c
        detail = progress.due()  # the accuracy is computed only when progress shows it
        got = self.forward(epoch, batch, detail)
        if got is None:
            return False
        out, losses, accs = got
        task.update(out)
        c.step += 1
        c.epoch_batches += 1
        for k, m in enumerate(task.members):
            c.loss_sums[m] += losses[k]
        task.after_step(c.step)
        if not detail:
            progress.update(c.step)
            return True
        n = len(task.members) * c.epoch_batches
        progress.update(
            c.step,
            epoch=epoch + 1,
            lr=lr,
            loss=sum(c.loss_sums[m] for m in task.members) / n,
            acc=None if accs is None else sum(accs) / len(accs),
        )
        return True

    def epoch(self, epoch: int, progress: Progress) -> bool:
        """Train one epoch (from the resumed batch in the first); True when training is over."""
        task, c, plan = self.task, self.c, self.plan
        self.rng = rng = task.rng_state()  # the state that draws this epoch (saved by a mid-epoch checkpoint)
        lr = task.begin_epoch(epoch)
        first = c.batch if epoch == self.start_epoch else 0
        if first == 0:
            c.epoch_batches = 0
            for m in task.members:
                c.loss_sums[m] = 0.0
        for b in range(first, plan.per_epoch):
            if plan.total_steps is not None and c.step >= plan.total_steps:
                break
            if not self.step(epoch, b, lr, progress):
                return True
            if self.should_stop is not None and self.should_stop():
                self.save(epoch, b + 1, rng)
                why = preemption.stop_reason() or "stop requested"
                raise StopRequested(f"stopped at epoch {epoch}, step {c.step} ({self.phase}; {why})")
        return self.end_epoch(epoch)

    def end_epoch(self, epoch: int) -> bool:
        """History, parameter check, checkpoint and callback after an epoch; True when training is over."""
        task, c, plan = self.task, self.c, self.plan
        for m in task.members:
            c.history[m].append(c.loss_sums[m] / max(c.epoch_batches, 1))
        nonfinite = task.nonfinite_rows()
        if nonfinite:
            self.end_diverged({k: "parameters not finite" for k in nonfinite}, epoch + 1, 0, task.rng_state())
        last = epoch + 1 == plan.epochs or (plan.total_steps is not None and c.step >= plan.total_steps)
        if not last and task.members and (epoch + 1) % plan.checkpoint_every == 0:
            self.save(epoch + 1, 0, task.rng_state())
        if self.on_epoch is not None:
            done = [c.history[m][-1] for m in task.members] or [float("nan")]
            self.on_epoch(epoch + 1, plan.epochs, sum(done) / len(done))
        return last or not task.members

    def finish(self) -> None:
        """End the members still training: ``done``, or ``diverged`` if their parameters are not finite."""
        nonfinite = set(self.task.nonfinite_rows()) if self.task.members else set()
        for k in range(len(self.task.members)):
            if k in nonfinite:
                self.end([k], "diverged", {k: "parameters not finite"})
            else:
                self.end([k], "done")
        self.task.commit()


def run(
    task: StepTask,
    plan: Plan,
    phase: str,
    checkpoint_path: Path | None = None,
    meta: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
    map_location: Any = None,
) -> dict[Hashable, MemberResult]:
    """Train ``task`` for ``plan``; return member id -> ``MemberResult`` (see the module docstring).

    Resumes from ``checkpoint_path`` if it holds a checkpoint of this run (same ``meta``, accepted by the
    task); removes it at the end. ``map_location``: where checkpoint tensors go (the task's device).
    """
    phase = labelled(phase)  # the cell and phase of work (``progress.working_on``) in every line and message
    r = _Run(task, plan, phase, checkpoint_path, meta or {}, should_stop, on_epoch)
    r.resume(map_location)
    r.start_epoch = r.c.epoch
    progress = Progress(phase, plan.steps, done=r.c.step, epochs=plan.epochs)
    outcome = "stopped"
    try:
        for epoch in range(r.start_epoch, plan.epochs if not r.c.trained else 0):
            if not task.members or r.epoch(epoch, progress):
                break
        if len(task.members) > 1 and not r.c.trained:
            # several results are written one after the other: a kill between two of them must find the
            # trained state, not an older checkpoint (a smaller stack need not round like the full one)
            r.c.trained = True
            r.save(plan.epochs, 0, task.rng_state())
        r.finish()
        outcome = "finished"
    finally:
        progress.close(outcome)
    if checkpoint_path is not None:
        check_fence(checkpoint_path)
        checkpoint_path.unlink(missing_ok=True)
    return r.results
