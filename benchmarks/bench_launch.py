"""Time to plan a 2,000-cell grid: compose + validate every cell with ``dry_run=true`` (nothing trained).

Grid: model.width = 1..40 x train.batch_size = 16, 32, 64, 128, 256 x data.label_noise = 0, 0.1, 0.2, 0.3,
0.4, 0.5, 0.6, 0.7, 0.8, 0.9 = 2,000 cells, through the real ``landscape`` CLI in a subprocess. Reports the
sweeper's own "planned N cells in S s" and the whole command's wall time, for the fast planner (Hydra
compose once per config-group set, OmegaConf for value overrides) and, with ``--full``, for Hydra's full
compose of every cell on a 100-cell slice (extrapolated: it costs ~0.3-1.5 s per cell). Target: < 30 s.

    .venv/bin/python benchmarks/bench_launch.py [--full]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LANDSCAPE = Path(sys.executable).with_name("landscape")
GRID = [
    "model.width=range(1,41)",
    "train.batch_size=16,32,64,128,256",
    "data.label_noise=0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
]


def plan(grid: list[str], full: bool) -> tuple[int, float, float]:
    """(cells, sweeper's planning seconds, wall seconds of the whole dry-run command)."""
    env = dict(os.environ, LANDSCAPE_FULL_COMPOSE="1" if full else "0")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(LANDSCAPE), "-m", *grid, "dry_run=true", f"hydra.sweep.dir={tmp}/sweep"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - t0
    m = re.search(r"planned (\d+) cells in ([\d.]+) s", proc.stdout + proc.stderr)
    assert m, proc.stderr[-2000:]
    return int(m.group(1)), float(m.group(2)), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also time Hydra's full compose on 100 cells")
    args = parser.parse_args()
    n, s, wall = plan(GRID, full=False)
    print(
        f"fast planner: {n} cells composed + validated in {s:.1f} s ({1e3 * s / n:.1f} ms/cell); "
        f"dry-run command wall time {wall:.1f} s; target < 30 s: {'OK' if s < 30 else 'MISSED'}"
    )
    if args.full:
        small = ["model.width=range(1,11)", "train.batch_size=16,32,64,128,256", "data.label_noise=0,0.5"]
        n_f, s_f, _ = plan(small, full=True)
        n_q, s_q, _ = plan(small, full=False)
        print(
            f"on {n_f} cells: full Hydra compose {s_f:.1f} s ({1e3 * s_f / n_f:.0f} ms/cell), fast {s_q:.1f} s "
            f"({1e3 * s_q / n_q:.1f} ms/cell): {s_f / s_q:.0f}x; full compose of {n} cells ~ {s_f / n_f * n:.0f} s"
        )


if __name__ == "__main__":
    main()
