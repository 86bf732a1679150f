"""Killing a whole local multirun (SIGKILL of its process group) mid-way and rerunning it with the command
that ``landscape-status`` prints loses nothing and repeats no finished cell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from landscape.cli.status import sweep_report

GRID = ["-m", "model.width=4,8,16,32", "data.subsample=0.5", "train.epochs=12", "train.batch_size=32",
        "train.checkpoint_every=1", "sweep_name=killme", "hydra.sweep.dir=sweep"]


def _done_cells(sweep: Path) -> set[str]:
    out = set()
    for path in (sweep / "cells").glob("*/status.json"):
        try:
            if json.loads(path.read_text())["state"] == "done":
                out.add(path.parent.name)
        except (json.JSONDecodeError, FileNotFoundError):
            pass
    return out


def _mtimes(sweep: Path, cells: set[str]) -> dict[str, float]:
    files = [p for c in cells for p in (sweep / "results" / "models").glob(f"{c}-*.parquet")]
    files += [p for c in cells for p in (sweep / "cells" / c / "seeds").glob("*/result.json")]
    return {str(p): p.stat().st_mtime_ns for p in files}


def test_kill_whole_multirun_then_rerun_loses_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "landscape.cli.app", *GRID], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(_done_cells(sweep)) < 2:
            assert proc.poll() is None, "the multirun ended before it could be killed"
            assert time.monotonic() < deadline, "two cells did not finish within 180 s"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = _done_cells(sweep)
    assert 2 <= len(done_before) < 4
    before = _mtimes(sweep, done_before)
    assert len(before) == 3 * len(done_before)  # a result file and two seeds' result.json per done cell

    rep = sweep_report(sweep)
    assert rep.counts["done"] == len(done_before) and rep.counts["failed"] == 0
    assert rep.counts["interrupted"] + rep.counts["pending"] == 4 - len(done_before)
    assert rep.counts["running"] == 0  # the killed cell's process is gone: interrupted, not running
    assert rep.rerun is not None and rep.rerun.startswith(f"cd {tmp_path} && landscape -m model.width=4,8,16,32")

    rerun = subprocess.run(rep.rerun, shell=True, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(done_before)} already done, skipped" in rerun.stderr + rerun.stdout

    after = sweep_report(sweep)
    assert after.counts["done"] == 4 and after.rerun is None
    assert _mtimes(sweep, done_before) == before  # finished cells and seeds were not repeated
    attempts = {c.cell_id: c.attempts for c in after.cells}
    assert all(attempts[c] == 1 for c in done_before)
    for c in rep.cells:  # the cell that was killed mid-training ran a second time and resumed
        if c.state == "interrupted":
            assert attempts[c.cell_id] == 2
    rows = pd.read_parquet(sweep / "results" / "models")
    assert len(rows) == 8 and not rows.duplicated(["cell_id", "seed"]).any()
    assert sorted(rows["model.width"].unique()) == [4, 8, 16, 32] and set(rows["status"]) == {"done"}
