"""SLURM tasks carrying several cells vs one cell per task, on the local test cluster (scripts/slurm_cluster.sh).

The grid: 8 short cells (MLP on a quarter of digits), launched by the real ``landscape`` CLI with
``hydra/launcher=slurm`` into a fresh sweep directory, once with ``hydra.launcher.cells_per_task=1`` and once
with ``cells_per_task=4`` (alternating, ``--reps`` times). Reported: wall seconds of the whole multirun and
seconds per cell, and the load average. Each task start pays Python, torch and Hydra imports (~3-5 s here).

Run: ``python benchmarks/bench_slurm_cells.py [--reps 1] [--per-task 4] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = ["data.subsample=0.25", "model.width=4,8,12,16", "train.batch_size=32,64", "train.epochs=3"]
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]


def run(per_task: int, env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory(prefix="landscape-bench-slurm-", dir=str(Path.home())) as tmp:
        t = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "landscape.cli.app",
                "-m",
                *GRID,
                *SLURM,
                f"hydra.launcher.cells_per_task={per_task}",
                f"hydra.sweep.dir={tmp}/sweep",
            ],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--per-task", type=int, default=4)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    times: dict[str, list[float]] = {"1": [], str(args.per_task): []}
    load = [os.getloadavg()]
    for r in range(args.reps):
        for k in list(times) if r % 2 == 0 else list(times)[::-1]:
            times[k].append(run(int(k), env))
        load.append(os.getloadavg())
    n = 8
    res = {
        "cells": n,
        "seconds": times,
        "seconds_per_cell": {k: sum(v) / len(v) / n for k, v in times.items()},
        "speedup": sum(times["1"]) / sum(times[str(args.per_task)]),
        "loadavg": load,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
