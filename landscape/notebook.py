"""What the analysis notebooks (``analysis/*.py``, jupytext percent format) share: where they read and write, and
how a figure is shown.

A notebook runs three ways: executed by nbclient/``jupyter execute`` (``analysis/run_notebook.py``, ``make
notebook``: parameters injected after the cell tagged ``parameters``), opened in Jupyter, or as a script
(``python analysis/NAME.py SWEEP_DIR [OUT_DIR]``). In a kernel ``sys.argv`` is the kernel's own (its connection
file), never a sweep directory.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def in_kernel() -> bool:
    """True inside an IPython/Jupyter kernel."""
    try:
        get_ipython  # type: ignore[name-defined]  # noqa: B018 - defined in an IPython kernel only
    except NameError:
        return False
    return True


@dataclass
class NotebookPaths:
    """The sweep a notebook reads and the folder it writes (created), and whether it runs in a kernel."""

    sweep: Path
    out: Path
    kernel: bool

    def show(self, fig: Any, name: str, dpi: int = 120) -> Path:
        """Save ``fig`` as ``out/name``, show it inline in a kernel, close it; return the path."""
        import matplotlib.pyplot as plt

        path = self.out / name
        fig.savefig(path, dpi=dpi)
        if self.kernel:
            from IPython.display import display

            display(fig)
        plt.close(fig)
        print(f"wrote {path}")  # noqa: T201 - a notebook cell's output
        return path


def notebook_paths(
    sweep: str | Path | None, out: str | Path | None, out_env: str, default_sweep: str, default_out: str
) -> NotebookPaths:
    """The first given of: the parameter cell's ``sweep``/``out``; the command line (as a script: ``SWEEP
    [OUT]``); ``$LANDSCAPE_SWEEP_DIR`` / ``$<out_env>``; ``default_sweep`` / ``SWEEP/<default_out>``."""
    kernel = in_kernel()
    args = [] if kernel else [a for a in sys.argv[1:] if not a.startswith("-")]
    sweep_dir = Path(sweep or (args[0] if args else None) or os.environ.get("LANDSCAPE_SWEEP_DIR") or default_sweep)
    out_dir = Path(out or (args[1] if len(args) > 1 else None) or os.environ.get(out_env) or sweep_dir / default_out)
    out_dir.mkdir(parents=True, exist_ok=True)
    return NotebookPaths(sweep_dir, out_dir, kernel)
