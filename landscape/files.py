"""Atomic file writes: the one writer behind every file the project rewrites in place (status markers, caches,
checkpoints, result files, snapshots).

A file is written to a temporary name beside it (``.<name>.tmp-<pid>-<thread>``), optionally flushed to the
disk, then renamed over ``path``: a reader sees the old file or the new one, never a part. A failed write (a
full disk, a killed writer's exception) removes its temporary file; what a SIGKILL leaves behind has that
pattern, which ``cell.clean_temporaries`` and ``engine`` clean on the next run. Imports nothing of the package.

Fencing: while a process holds a cell's lease, its writes under the cell (``Fence``: the cell's directory and
its result files) go through the holder's own directory (``cells/<id>/.holder-<token>``): a file is written there
and renamed into place. A process that takes the lease over renames that directory away first, so every later
write of the old holder (paused, slow, skewed clock) fails inside the rename itself, an atomic check no pause
can split: the old holder gets ``LeaseLost`` and writes nothing.
"""

from __future__ import annotations

import errno
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

TEMPORARY_MARK = ".tmp-"
"""What every temporary name contains (``.<name>.tmp-<pid>-<thread>``)."""
STALE_TEMPORARY_S = 60.0
"""Age (seconds since last modification) from which another process's temporary file counts as abandoned."""


def temporary_name(path: Path) -> Path:
    """The temporary name of ``path`` for this process and thread."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{threading.get_ident()}")


class LeaseLost(RuntimeError):
    """This process's lease on a cell was taken over: it must not (and, fenced, cannot) write the cell."""


@dataclass(frozen=True)
class Fence:
    """The writes of one lease holder: paths under ``root`` (the cell's directory) and result files named
    ``<prefix>*`` (or ``.<prefix>*``) in the table directories under ``results``; ``holder_dir`` is the holder's
    own directory, which exists exactly as long as the lease is this process's."""

    holder_dir: Path
    root: str
    results: str
    prefix: str

    @classmethod
    def for_cell(cls, holder_dir: Path, cell_dir: Path, results_dir: Path, cell_id: str) -> "Fence":
        return cls(
            Path(os.path.abspath(holder_dir)),
            os.path.abspath(cell_dir) + os.sep,
            os.path.abspath(results_dir),
            f"{cell_id}-",
        )

    def covers(self, path: Path) -> bool:
        full = os.path.abspath(path)
        if full.startswith(self.root):
            return True
        parent, name = os.path.split(full)
        return os.path.dirname(parent) == self.results and name.lstrip(".").startswith(self.prefix)

    def lost(self, path: Path | str) -> LeaseLost:
        return LeaseLost(
            f"{path}: not written, the lease of its cell was taken over by another process ({self.holder_dir} is gone)"
        )

    def check(self, path: Path | str) -> None:
        """Raise ``LeaseLost`` unless this holder still holds the lease (for a write that cannot go through
        ``holder_dir``: a removal; a check before the act, not an atomic fence)."""
        if not os.path.isdir(self.holder_dir):
            raise self.lost(path)


_FENCES: list[Fence] = []
_FENCES_LOCK = threading.Lock()


@contextmanager
def fenced(fence: Fence) -> Iterator[Fence]:
    """Within the block, every ``atomic_write`` (any thread of this process) of a path ``fence`` covers is
    written through ``fence.holder_dir`` (see the module docstring)."""
    with _FENCES_LOCK:
        _FENCES.append(fence)
    try:
        yield fence
    finally:
        with _FENCES_LOCK:
            _FENCES.remove(fence)


def fence_of(path: Path | str) -> Fence | None:
    """The active fence that covers ``path`` (None: the path is written as it is)."""
    with _FENCES_LOCK:
        fences = list(_FENCES)
    return next((f for f in fences if f.covers(Path(path))), None)


def check_fence(path: Path | str) -> None:
    """``LeaseLost`` if ``path`` is fenced and this process lost the lease (before a removal or a rename in place)."""
    fence = fence_of(path)
    if fence is not None:
        fence.check(path)


def fenced_replace(src: Path | str, dst: Path | str) -> None:
    """``os.replace(src, dst)``; a ``FileNotFoundError`` because the holder directory of ``dst``'s fence is gone
    (``src`` was staged there) is ``LeaseLost``. Creates ``dst``'s directory."""
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        fence = fence_of(dst)
        if fence is not None and not os.path.isdir(fence.holder_dir):
            raise fence.lost(dst) from None
        raise


def staging_name(path: Path, suffix: str = ".staged") -> Path:
    """Where a file to be renamed over ``path`` later is staged: in the holder directory when ``path`` is fenced
    (the rename then fails if the lease was lost; named after ``path``'s folder too, since a request stages files
    of the same name for several tables at once), else ``.<name><suffix>`` beside ``path``."""
    fence = fence_of(path)
    if fence is not None:
        return fence.holder_dir / f"{path.parent.name}-{path.name}{suffix}-{threading.get_ident()}"
    return path.with_name(f".{path.name}{suffix}")


def atomic_write(path: str | Path, write: Callable[[Path], None], fsync: bool = False) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes the content to a temporary file beside it, which (after an
    ``fsync`` when asked: the content survives a machine crash) is renamed over ``path``. Creates the parent
    directory; on any failure the temporary file is removed and the exception propagates.

    A fenced path (``fenced``) is written in the holder's directory instead and renamed from there: when the
    lease was taken over, that directory is gone and the write raises ``LeaseLost`` without touching ``path``."""
    path = Path(path)
    fence = fence_of(path)
    if fence is not None:
        fence.check(path)
    inside = fence is not None and os.path.abspath(path).startswith(os.path.join(fence.holder_dir, ""))
    if not inside:  # the holder directory is never created by a write: gone is gone
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    if fence is not None and not inside:
        tmp = fence.holder_dir / tmp.name
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:
            if fence is None or exc.errno != errno.EXDEV:
                raise
            beside = temporary_name(path)  # another filesystem: checked, then renamed beside the target
            _copy(tmp, beside)
            tmp.unlink(missing_ok=True)
            tmp = beside
            fence.check(path)
            os.replace(tmp, path)
    except Exception:
        tmp.unlink(missing_ok=True)
        if fence is not None and not os.path.isdir(fence.holder_dir):  # any writer's error (torch.save: a
            raise fence.lost(path) from None  # RuntimeError) once the holder directory is gone: the lease was lost
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _copy(src: Path, dst: Path) -> None:
    import shutil

    shutil.copyfile(src, dst)
