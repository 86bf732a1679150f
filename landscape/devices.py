"""Choosing the torch device of a job, and giving concurrent jobs on one machine a GPU each.

With several visible GPUs (e.g. ``hydra/launcher=local`` on a multi-GPU workstation, where every job sees
all of them), ``device=auto`` claims one GPU through an exclusive ``fcntl.flock`` on a lock file per
physical GPU under a lock directory (``$LANDSCAPE_GPU_LOCK_DIR``, default ``<tmp>/landscape-gpu-locks``);
the lock is held until the process exits, so concurrent cells each get their own GPU. With exactly one
visible GPU (e.g. SLURM's ``--gpus-per-task=1`` already isolated it) that GPU is used; with none, the CPU.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Sequence

import torch

log = logging.getLogger(__name__)

_held: dict[str, IO[bytes]] = {}  # lock files held by this process (closing one releases its lock)
_claimed: list[int] = []  # index of the visible GPU this process claimed (at most one)


def lock_dir() -> Path:
    """Directory of the per-GPU lock files (shared by every job of this machine)."""
    return Path(os.environ.get("LANDSCAPE_GPU_LOCK_DIR", Path(tempfile.gettempdir()) / "landscape-gpu-locks"))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def claim_gpu(gpu_ids: Sequence[str], directory: Path, wait_s: float = 0.0, poll_s: float = 0.5) -> int | None:
    """Claim the first free GPU of ``gpu_ids`` (stable identities, e.g. UUIDs) by an exclusive non-blocking
    flock on ``directory/gpu-<id>.lock``; return its index in ``gpu_ids``, or None if all stay taken for
    ``wait_s`` seconds. The lock is held by this process until it exits (or ``release_gpus``)."""
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for i, gid in enumerate(gpu_ids):
            path = directory / f"gpu-{_safe(gid)}.lock"
            if str(path) in _held:
                return i
            fh = open(path, "ab")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            fh.truncate(0)
            fh.write(f"{os.getpid()}\n".encode())
            fh.flush()
            _held[str(path)] = fh
            return i
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)


def release_gpus() -> None:
    """Release every GPU lock this process holds."""
    for fh in _held.values():
        fh.close()
    _held.clear()
    _claimed.clear()


def _visible_gpu_ids() -> list[str]:
    ids = []
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        ids.append(str(uuid) if uuid is not None else f"index{i}")
    return ids


def resolve_device(name: str) -> torch.device:
    """``auto``: a GPU of its own if several are visible (see the module docstring), the only visible GPU,
    or the CPU; otherwise ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        ids = _visible_gpu_ids()
        if len(ids) == 1:
            return torch.device("cuda:0")
        if not _claimed:
            index = claim_gpu(ids, lock_dir(), wait_s=float(os.environ.get("LANDSCAPE_GPU_WAIT_S", "0")))
            if index is None:
                index = os.getpid() % len(ids)
                log.warning(
                    "all %d GPUs are claimed by other jobs (locks in %s): sharing cuda:%d", len(ids), lock_dir(), index
                )
            _claimed.append(index)
        return torch.device(f"cuda:{_claimed[0]}")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine; use device=cpu or auto")
    return dev
