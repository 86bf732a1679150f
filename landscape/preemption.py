"""Process-wide stop request of a job: set by a preemption/timeout signal, polled by the training engine.

A signal is process-wide, so the request is too: ``request_stop()`` (called from a signal handler) sets it,
``stop_requested()`` is the ``should_stop`` callable that ``landscape.job.run_cell`` passes to training by
default, which then checkpoints at the current step and raises ``StopRequested``. ``last_poll_age()`` tells a
signal handler whether anything is polling (training) or not (data loading, metrics), in which case waiting
for a cooperative stop is pointless.

``stop_on_signals`` makes SIGINT (Ctrl-C) and SIGTERM such a request in a process where nothing else handles
them (the ``landscape`` script running one cell, or Hydra's in-process launcher), with a fallback to an
immediate ``KeyboardInterrupt`` when nothing polls, when the stop is not taken within ``GRACE_S``, or at a second
signal.

``NotStarted`` and ``WorkerDied`` say how a stop ended a cell of a launch (raised by the launchers of
``landscape.launching``; the sweeper's summary counts such cells as pending or interrupted, not failed).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

GRACE_S = 3.0
"""Seconds a polling loop gets, after ``stop_on_signals``' signal, to checkpoint and stop before the job is
interrupted where it is (``KeyboardInterrupt``)."""
POLLING_S = 1.0
"""A loop that polled ``stop_requested`` within this many seconds counts as polling (training polls after every
step); otherwise a signal interrupts the job at once."""

_event = threading.Event()
_last_poll = [float("-inf")]
_reason: list[str] = []


def request_stop(reason: str = "stop requested") -> None:
    """Ask the running job to stop at its next poll (safe to call from a signal handler)."""
    _reason[:] = [reason]
    _event.set()


def stop_requested() -> bool:
    """True once ``request_stop`` was called; records the time of this poll."""
    _last_poll[0] = time.monotonic()
    return _event.is_set()


def stop_reason() -> str | None:
    """The reason given to ``request_stop``, or None (the engine puts it in its ``StopRequested`` message)."""
    return _reason[0] if _event.is_set() and _reason else None


def last_poll_age() -> float:
    """Seconds since ``stop_requested`` was last polled (``inf`` if never)."""
    return time.monotonic() - _last_poll[0]


class stop_on_signals:
    """Context manager: while active, SIGINT and SIGTERM (each only if its handler is Python's default: a pool
    worker or a submitit task handles its own) call ``request_stop``, so that training checkpoints at its next
    step and raises ``StopRequested``. If nothing has polled within ``POLLING_S`` (data loading, a metric
    without a training loop), or the stop is not taken within ``GRACE_S``, or the signal comes again, the job is
    interrupted where it is (``KeyboardInterrupt``; checkpoints and cached results of finished work stay).
    ``signum`` is the first signal received (None if none)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.old: dict[int, Any] = {}

    def __enter__(self) -> "stop_on_signals":
        if threading.current_thread() is not threading.main_thread():
            return self
        defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
        for sig, default in defaults.items():
            if signal.getsignal(sig) is default:
                self.old[sig] = signal.signal(sig, self._on_signal)
        if self.old:
            self.old[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_alarm)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {name} again")
        self.signum = signum
        request_stop(f"signal {name}")
        if last_poll_age() > POLLING_S:
            log.warning(
                "signal %s: stopping the cell now (its finished work is kept); rerun the same command to resume", name
            )
            raise KeyboardInterrupt(f"signal {name}")
        log.warning(
            "signal %s: checkpointing at the next training step and stopping (again: stop at once); "
            "rerun the same command to resume",
            name,
        )
        signal.setitimer(signal.ITIMER_REAL, GRACE_S)

    def _on_alarm(self, signum: int, frame: Any) -> None:
        log.warning("the stop was not taken within %g s: stopping the cell now", GRACE_S)
        raise KeyboardInterrupt(
            f"signal {signal.Signals(self.signum or signum).name}: stop not taken within {GRACE_S:g} s"
        )

    def __exit__(self, *exc: Any) -> None:
        if not self.old:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def reset() -> None:
    """Clear the request (a new job in the same process starts fresh)."""
    _event.clear()
    _reason.clear()
    _last_poll[0] = float("-inf")


# ------------------------------------------------------------ how a stop ends a cell of a launch (the running layer)
class NotStarted(RuntimeError):
    """The launch was stopped (a signal) before this cell started: the cell is pending, not failed."""


class WorkerDied(RuntimeError):
    """A pool worker ended (killed, out of memory) while it ran a cell: that cell is interrupted (its
    checkpoints stay; rerunning the same command resumes it), the other cells of the launch go on."""
