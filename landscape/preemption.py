"""Process-wide stop request of a job: set by a preemption/timeout signal, polled by the training engine.

A signal is process-wide, so the request is too: ``request_stop()`` (called from a signal handler) sets it,
``stop_requested()`` is the ``should_stop`` callable that ``landscape.job.run_cell`` passes to training by
default, which then checkpoints at the current step and raises ``StopRequested``. ``last_poll_age()`` tells a
signal handler whether anything is polling (training) or not (data loading, metrics), in which case waiting
for a cooperative stop is pointless.
"""

from __future__ import annotations

import threading
import time

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


def reset() -> None:
    """Clear the request (a new job in the same process starts fresh)."""
    _event.clear()
    _reason.clear()
    _last_poll[0] = float("-inf")
