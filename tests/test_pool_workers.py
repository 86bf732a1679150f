"""Issue 20, point 9: the local pool's workers are supervised one by one. A killed worker costs only the cell it
was running (named as interrupted in the launch's summary, no traceback; the same command resumes it), and
workers whose launcher was killed checkpoint and exit within seconds (the same command resumes their cells)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import LANDSCAPE

ARGS = [
    "-m",
    "data.subsample=0.25",
    "model.width=8",
    "train.batch_size=8",
    "train.checkpoint_every=1",
    "train.seeds=[0]",
    "metrics.l2.enabled=false",
    "hydra/launcher=local",
    "hydra.launcher.max_parallel=2",
    "hydra.sweep.dir=sweep",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "LANDSCAPE_HEARTBEAT_S": "0.5"}


def _rerun(args: list[str], cwd: Path) -> str:
    """The same command again, to its end; its output."""
    proc = subprocess.run([*LANDSCAPE, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _statuses(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (sweep / "cells").glob("*/status.json")}


def _training(sweep: Path) -> dict[str, int]:
    """``{cell_id: worker pid}`` of the cells that have a training checkpoint."""
    out = {}
    for cid, st in _statuses(sweep).items():
        if st.get("state") == "running" and list((sweep / "cells" / cid).glob("**/checkpoint.pt")):
            out[cid] = int(st["pid"])
    return out


def _wait_for(what, timeout: float, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise AssertionError("not reached")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone (nothing reaps it here)
    except FileNotFoundError:
        return False


def test_a_killed_worker_costs_only_its_cell_and_the_launch_ends_with_a_summary(tmp_path):
    args = [*ARGS, "train.epochs=40", "model.depth=1,2,3"]
    proc = subprocess.Popen(
        [*LANDSCAPE, *args], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sweep = tmp_path / "sweep"
    victim, pid = sorted(_wait_for(lambda: _training(sweep), 180, proc).items())[0]
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    assert "Traceback" not in out + err and "Error executing job" not in out + err, err[-3000:]
    assert "launch finished: 3 cells: 2 done, 0 diverged, 1 interrupted, 0 pending, 0 failed" in err, err[-3000:]
    line = next(ln for ln in err.splitlines() if ln.strip().startswith("interrupted: cell"))
    assert f"interrupted: cell {victim} (" in line and f"pid {pid}" in line and "SIGKILL" in line, line
    statuses = _statuses(sweep)
    assert len(statuses) == 3 and [c for c, s in statuses.items() if s["state"] != "done"] == [victim], statuses
    report = json.loads(
        subprocess.run(
            [*LANDSCAPE[:2], "landscape.cli.status", "--json", str(sweep)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    assert {c["cell_id"]: c["state"] for c in report["cells"]}[victim] == "interrupted", report
    # the same command resumes the interrupted cell from its checkpoint and skips the others
    again = _rerun(args, tmp_path)
    assert all(s["state"] == "done" for s in _statuses(sweep).values())
    assert "resumed at epoch" in again and "launching 1 cells (2 already done, skipped)" in again


def test_workers_of_a_killed_launcher_checkpoint_and_exit_and_the_rerun_resumes(tmp_path):
    # 200 epochs (about 7 s of training per cell here, 1.4 s at 40): the launcher is killed while both cells
    # train, and a loaded machine cannot finish a cell in the half second a worker takes to notice
    args = [*ARGS, "train.epochs=200", "model.depth=1,2"]
    with open(tmp_path / "launch.log", "w") as log:  # a file, not a pipe: orphaned workers would hold a pipe open
        proc = subprocess.Popen([*LANDSCAPE, *args], cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    sweep = tmp_path / "sweep"
    workers = _wait_for(lambda: (lambda t: t if len(t) == 2 else None)(_training(sweep)), 180, proc)
    proc.kill()  # SIGKILL: the launcher gets no chance to stop its workers
    proc.wait(timeout=60)
    killed = time.monotonic()
    while any(_alive(p) for p in workers.values()) and time.monotonic() - killed < 10:
        time.sleep(0.1)
    left = [p for p in workers.values() if _alive(p)]
    for p in left:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} still running 10 s after their launcher was killed"
    statuses = _statuses(sweep)
    assert all(s["state"] != "done" for s in statuses.values())
    again = _rerun(args, tmp_path)
    assert all(s["state"] == "done" for s in _statuses(sweep).values())
    assert again.count("resumed at epoch") >= 2
