"""Visible progress of a long phase of work (training a seed, a curve, a Hessian estimate, ...).

In an interactive terminal a tqdm bar; elsewhere (a SLURM job's log) a first log line ``FIRST_PROGRESS_S``
seconds (5) after the phase starts, then one every ``$LANDSCAPE_PROGRESS_S`` seconds (default 60), with the
phase, epoch, step, running loss and accuracy, learning rate, rate and the time left. Each line starts with
what the job is working on (``working_on``: the cell id and the phase of its work, e.g. ``cell 3f2a9c01d2e4
pairs 0-1,0-2,1-2: connectivity``), so that the lines of two workers are told apart. Imports no torch: any
module can report progress.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import sys
import time
from typing import Any, Iterator

log = logging.getLogger(__name__)

PROGRESS_ENV = "LANDSCAPE_PROGRESS_S"
DEFAULT_PROGRESS_S = 60.0
FIRST_PROGRESS_S = 5.0  # the first log line of a phase comes this soon (or after the interval, if shorter)
BAR_REFRESH_S = 0.5  # how often a bar's loss/accuracy are refreshed

#: What the job is working on (set by ``working_on``); the label every ``Progress`` line and bar starts with.
_WORK: contextvars.ContextVar[str | None] = contextvars.ContextVar("landscape_progress_work", default=None)


@contextlib.contextmanager
def working_on(label: str) -> Iterator[None]:
    """Within the block, every ``Progress`` started (in this thread or task) names ``label`` first, e.g.
    ``cell 3f2a9c01d2e4 seed=0: hessian``: the job says which cell and which phase of its work, the code that
    reports the steps (a training loop, a curve) says what it steps through. Nested blocks: the innermost label."""
    token = _WORK.set(label)
    try:
        yield
    finally:
        _WORK.reset(token)


def current_work() -> str | None:
    """The label of the innermost ``working_on`` block, None outside any."""
    return _WORK.get()


def labelled(phase: str) -> str:
    """``phase`` after the label of the innermost ``working_on`` block (``cell 3f2a9c01d2e4: training seed 0``);
    unchanged outside any block or when it starts with the label already."""
    work = current_work()
    return f"{work}: {phase}" if work and not phase.startswith(work) else phase


def progress_interval() -> float:
    """Seconds between two progress log lines: ``$LANDSCAPE_PROGRESS_S``, default 60."""
    raw = os.environ.get(PROGRESS_ENV)
    if raw is None or raw == "":
        return DEFAULT_PROGRESS_S
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r: expected a number of seconds; using %g", PROGRESS_ENV, raw, DEFAULT_PROGRESS_S)
        return DEFAULT_PROGRESS_S
    return max(0.0, value)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Visible progress of one phase of work (``phase``, e.g. ``training seed 3``) over ``total`` steps.

    In an interactive terminal (``bar=None`` and stderr is a TTY, or ``bar=True``) a tqdm bar; otherwise a log
    line (logger ``landscape.progress``, INFO): the first ``min(FIRST_PROGRESS_S, interval)`` seconds after the
    start, then at most every ``interval`` seconds (default ``progress_interval()``), and a closing line if any
    was logged or the phase lasted longer than the first line's wait. ``phase`` is prefixed with the label of the enclosing ``working_on`` block (the cell and its
    phase of work), if any. ``done`` steps were taken before (a resumed run): the rate and the time left count
    this run's steps only.
    """

    def __init__(
        self,
        phase: str,
        total: int,
        done: int = 0,
        epochs: int | None = None,
        unit: str = "step",
        interval: float | None = None,
        bar: bool | None = None,
    ):
        phase = labelled(phase)
        self.phase, self.total, self.epochs, self.unit = phase, int(total), epochs, unit
        self.interval = progress_interval() if interval is None else float(interval)
        self.start_done = self.done = int(done)
        self.t0 = self.last = time.monotonic()
        self.lines = 0
        self.fields: dict[str, Any] = {}
        self.on_demand = False  # the caller asks ``due`` and passes its fields when due: a line waits for them
        use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None
        if use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=self.done, desc=phase, leave=False, unit=unit)

    def _wait(self) -> float:
        """Seconds from the last line (or the start) to the next log line."""
        return self.interval if self.lines else min(FIRST_PROGRESS_S, self.interval)

    def due(self) -> bool:
        """Whether the next ``update`` will show its fields (a log line, or a bar's postfix refresh): callers
        compute costly fields (e.g. an accuracy) only then; a caller that asks gets its log lines from the
        updates that pass fields."""
        self.on_demand = True
        return time.monotonic() - self.last >= (self._wait() if self.bar is None else BAR_REFRESH_S)

    def rate(self) -> float:
        """Steps per second of this run."""
        dt = time.monotonic() - self.t0
        return (self.done - self.start_done) / dt if dt > 0 else float("nan")

    def line(self) -> str:
        """``phase: epoch e/E, step s/S, loss L, acc A, lr R, X steps/s, ETA h:mm:ss`` (fields known so far)."""
        parts = []
        if self.fields.get("epoch") is not None and self.epochs:
            parts.append(f"epoch {self.fields['epoch']}/{self.epochs}")
        parts.append(f"{self.unit} {self.done}/{self.total}")
        for key, fmt in (("loss", "{:.4g}"), ("acc", "{:.3f}"), ("lr", "{:.3g}")):
            v = self.fields.get(key)
            if v is not None:
                parts.append(f"{key} " + fmt.format(v))
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate and rate > 0 else float("nan")
        parts.append(f"{rate:.3g} {self.unit}s/s" if math.isfinite(rate) else f"? {self.unit}s/s")
        parts.append(f"ETA {_clock(eta)}")
        return f"{self.phase}: " + ", ".join(parts)

    def update(self, done: int, **fields: Any) -> None:
        """``done`` steps taken in all; ``fields``: ``epoch`` (1-based), ``loss``, ``acc``, ``lr`` (None: unknown)."""
        step = int(done) - self.done
        self.done = int(done)
        self.fields.update(fields)
        if self.bar is not None:
            self.bar.update(step)
            post = {k: f"{v:.4g}" for k, v in fields.items() if k in ("loss", "acc") and v is not None}
            if post:
                self.last = time.monotonic()
                self.bar.set_postfix(post, refresh=False)
            return
        now = time.monotonic()
        if now - self.last >= self._wait() and (fields or not self.on_demand):
            self.last = now
            self.lines += 1
            log.info("%s", self.line())

    def close(self, outcome: str = "finished") -> None:
        """Close the bar, or log a closing line (``outcome``) when the phase was long enough to report."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            return
        if self.lines or time.monotonic() - self.t0 >= self._wait():
            log.info("%s [%s]", self.line(), outcome)
