"""Start-up time of ``landscape-status`` (a file reader: it should not pay for torch or the metric families).

Measures, interleaved in one run (so load changes hit every variant alike), the wall time of fresh processes:

* ``python -c pass`` (the interpreter's own start-up, the floor);
* ``landscape-status --help``;
* ``landscape-status DIR`` on a small sweep (4 cells written here: 3 done, one pending);
* optionally the same two commands with another checkout on ``PYTHONPATH`` (``--compare /work/main``), e.g.
  the code before the start-up work.

Run: ``.venv/bin/python benchmarks/status_startup.py [--reps 7] [--compare OTHER_CHECKOUT]``. Target: < 1 s each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def small_sweep(root: Path) -> Path:
    """A sweep directory with one launch record and 4 cells (status markers only: what the reader reads)."""
    sys.path.insert(0, str(REPO))
    from dataclasses import asdict

    from landscape.cell import CellDir, CellStatus

    sweep = root / "sweep"
    (sweep / "launches").mkdir(parents=True)
    import json

    cells = [{"cell_id": f"c{i}", "overrides": [f"model.width={2 ** (i + 1)}"]} for i in range(4)]
    (sweep / "launches" / "20260101T000000-000000001.json").write_text(
        json.dumps(
            {
                "arguments": ["model.width=2,4,8,16"],
                "argv": ["-m", "model.width=2,4,8,16"],
                "cwd": str(root),
                "cells": cells,
            }
        )
    )
    for i in range(3):  # only the fields every version has: an older checkout reads them too (--compare)
        status = asdict(CellStatus(state="done", cell_id=f"c{i}", seeds={"0": "done", "1": "done"}, updated_at=0.0))
        status.pop("metric_errors", None)
        path = CellDir(sweep, f"c{i}").status_path
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(status))
    return sweep


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = time.perf_counter()  # cwd outside any checkout: `python -m` puts the cwd first on sys.path
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--compare", type=Path, default=None, help="another checkout to time the same way")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sweep = small_sweep(Path(tmp))
        py = sys.executable
        variants: dict[str, tuple[list[str], dict[str, str]]] = {}
        base_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        here = {**base_env, "PYTHONPATH": str(REPO)}
        variants["python -c pass"] = ([py, "-c", "pass"], base_env)
        variants["status --help"] = ([py, "-m", "landscape.cli.status", "--help"], here)
        variants["status DIR"] = ([py, "-m", "landscape.cli.status", str(sweep)], here)
        if args.compare:
            other = {**base_env, "PYTHONPATH": str(args.compare)}
            variants[f"status --help ({args.compare})"] = ([py, "-m", "landscape.cli.status", "--help"], other)
            variants[f"status DIR ({args.compare})"] = ([py, "-m", "landscape.cli.status", str(sweep)], other)
        times: dict[str, list[float]] = {k: [] for k in variants}
        load0 = os.getloadavg()
        for _ in range(args.reps):
            for name, (cmd, env) in variants.items():
                times[name].append(timed(cmd, env, tmp))
        load1 = os.getloadavg()
    print(f"load average {load0[0]:.2f} -> {load1[0]:.2f}; {args.reps} interleaved repetitions; median (min) s")
    for name, ts in times.items():
        print(f"  {name:50s} {statistics.median(ts):6.3f} ({min(ts):.3f})")


if __name__ == "__main__":
    main()
