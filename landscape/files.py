"""Atomic file writes: the one writer behind every file the project rewrites in place (status markers, caches,
checkpoints, result files, snapshots).

A file is written to a temporary name beside it (``.<name>.tmp-<pid>-<thread>``), optionally flushed to the
disk, then renamed over ``path``: a reader sees the old file or the new one, never a part. A failed write (a
full disk, a killed writer's exception) removes its temporary file; what a SIGKILL leaves behind has that
pattern, which ``cell.clean_temporaries`` and ``engine`` clean on the next run. Imports nothing of the package.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

TEMPORARY_MARK = ".tmp-"
"""What every temporary name contains (``.<name>.tmp-<pid>-<thread>``)."""
STALE_TEMPORARY_S = 60.0
"""Age (seconds since last modification) from which another process's temporary file counts as abandoned."""


def temporary_name(path: Path) -> Path:
    """The temporary name of ``path`` for this process and thread."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{threading.get_ident()}")


def atomic_write(path: str | Path, write: Callable[[Path], None], fsync: bool = False) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` writes the content to a temporary file beside it, which (after an
    ``fsync`` when asked: the content survives a machine crash) is renamed over ``path``. Creates the parent
    directory; on any failure the temporary file is removed and the exception propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
