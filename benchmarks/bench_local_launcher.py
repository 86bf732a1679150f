"""``hydra/launcher=local`` (a pool of warm workers) vs all cells in one process (Hydra's basic launcher).

The grid: 8 short cells (MLP on a quarter of digits, widths 4..32, 260 epochs; about 1 s of work each on an idle
2-core machine: the issue's "~1-second cells"), launched by the
real ``landscape`` CLI in a subprocess, into a fresh sweep directory each time. The two ways alternate
(``--reps`` times each); reported: whole-command wall times and the cells' phase (from the sweeper's
"launching" log line to the last cell's "done" line; the command's start-up, planning and exit are the same
for both), their ratios (one process / two workers), the load average, and a control measured before and after:
the throughput of two one-thread matrix-product processes over one (2.0 on two free cores; on a machine shared
with other jobs it shows how much a second worker can gain at all). Target: >= 1.6x with two workers on 2 cores.

Run: ``python benchmarks/bench_local_launcher.py [--reps 2] [--workers 2] [--out FILE] [--grid "OVERRIDES"]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GRID = ["data.subsample=0.25", "model.width=4,8,12,16,20,24,28,32", "train.epochs=260", "train.batch_size=32"]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _stamp(line: str) -> float:
    import datetime as dt

    m = STAMP.match(line)
    assert m, line
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_grid(launcher: list[str], env: dict[str, str], grid: list[str] | None = None) -> tuple[float, float]:
    """Wall seconds of ``landscape -m GRID LAUNCHER`` in a fresh directory and of its cells' phase (checks
    every cell is done)."""
    with tempfile.TemporaryDirectory(prefix="landscape-bench-launch-") as tmp:
        t = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "landscape.cli.app",
                "-m",
                *(grid or GRID),
                *launcher,
                f"hydra.sweep.dir={tmp}/sweep",
            ],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        states = [json.loads(p.read_text())["state"] for p in Path(tmp, "sweep", "cells").glob("*/status.json")]
        if len(states) < 2 or states.count("done") != len(states):
            raise RuntimeError(f"expected every cell done, got {states}")
    lines = (proc.stdout + proc.stderr).splitlines()
    start = min(_stamp(x) for x in lines if f"launching {len(states)} cells" in x)
    end = max(_stamp(x) for x in lines if "] - cell " in x and " done in " in x)
    return wall, end - start


def _n_cells(grid: list[str]) -> int:
    n = 1
    for ov in grid:
        n *= len(ov.split("=", 1)[1].split(",")) if "=" in ov and "[" not in ov else 1
    return n


SPIN = """
import sys, time, torch
torch.set_num_threads(1)
a = torch.randn(256, 256)
t, n = time.perf_counter(), 0
while time.perf_counter() - t < float(sys.argv[1]):
    for _ in range(20):
        a @ a
    n += 20
print(n / (time.perf_counter() - t))
"""


def parallel_capacity(seconds: float = 4.0) -> float:
    """Throughput of two one-thread matrix-product processes at once over one alone (a control: 2.0 on two free
    cores, ~1.0 when other jobs already use them), measured right now."""
    one = float(
        subprocess.run([sys.executable, "-c", SPIN, str(seconds)], capture_output=True, text=True, check=True).stdout
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    two = sum(float(p.communicate()[0]) for p in procs)
    return two / one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--grid", default=" ".join(GRID), help="the multirun's overrides (default: the 8-cell grid above)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ways = {
        "one_process": ["hydra/launcher=basic"],
        "local_pool": ["hydra/launcher=local", f"hydra.launcher.max_parallel={args.workers}"],
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    cells: dict[str, list[float]] = {k: [] for k in ways}
    load = [os.getloadavg()]
    capacity = [parallel_capacity()]
    for r in range(args.reps):
        for name in list(ways) if r % 2 == 0 else list(ways)[::-1]:
            wall, phase = run_grid(ways[name], env, args.grid.split())
            times[name].append(wall)
            cells[name].append(phase)
        load.append(os.getloadavg())
    capacity.append(parallel_capacity())
    n_cells = _n_cells(args.grid.split())
    res: dict[str, Any] = {
        "grid": args.grid.split(),
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "command_seconds": times,
        "cells_phase_seconds": cells,
        "command_speedup_per_rep": [a / b for a, b in zip(times["one_process"], times["local_pool"], strict=True)],
        "command_speedup_total": sum(times["one_process"]) / sum(times["local_pool"]),
        "cells_speedup_per_rep": [a / b for a, b in zip(cells["one_process"], cells["local_pool"], strict=True)],
        "cells_speedup_total": sum(cells["one_process"]) / sum(cells["local_pool"]),
        "seconds_per_cell_one_process": [c / n_cells for c in cells["one_process"]],
        "parallel_capacity_2_procs": capacity,
        "loadavg": load,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
