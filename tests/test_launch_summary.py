"""Issue 22, points 2, 3 and 9: the truth at the end of a launch and in ``landscape-status``. Ctrl-C ends a
launch with a summary (done / diverged / interrupted / pending / failed cells), the signal named as received,
no traceback, and the command that completes every grid launched into the directory; after two different grids
``landscape-status``'s command covers every pending cell of both; ``-v`` lists cells in grid order."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LANDSCAPE

from landscape.cell import CellDir, CellStatus
from landscape.cli import status as st
from landscape.cli.status import sweep_report

ENV = {
    **os.environ,
    "PYTHONUNBUFFERED": "1",
    "HYDRA_FULL_ERROR": "0",
    "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
}
# Grid A: two cells whose training takes seconds (so that Ctrl-C finds the first one training)
GRID_A = [
    "-m",
    "model.width=4,8",
    "data.subsample=0.25",
    "train.epochs=150",
    "train.batch_size=16",
    "train.checkpoint_every=1",
    "train.seeds=[0]",
    "metrics.l2.enabled=false",
    "hydra.sweep.dir=sweep",
]
LOCAL = ["hydra/launcher=local", "hydra.launcher.max_parallel=1"]


def _training(sweep: Path) -> bool:
    """A cell of the sweep has written a training checkpoint."""
    return any(sweep.glob("cells/*/seeds/*/checkpoint.pt")) or any(sweep.glob("cells/*/seeds/**/checkpoint.pt"))


def _ctrl_c_once_training(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``landscape ARGS`` in its own process group and press Ctrl-C (SIGINT to the group, as a terminal
    does) once a cell trains."""
    proc = subprocess.Popen(
        [*LANDSCAPE, *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while not _training(cwd / "sweep"):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no cell trained within 180 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _commands(text: str) -> list[str]:
    """The completing command(s) printed under the "complete the grid(s)" line."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("complete the grid"))
    return [ln.strip() for ln in lines[start + 1 :] if ln.startswith("  cd ") or ln.startswith("  landscape ")]


@pytest.mark.parametrize("launcher", [LOCAL, []], ids=["local-pool", "in-process"])
def test_ctrl_c_ends_the_launch_with_a_summary_and_the_completing_command(tmp_path, launcher):
    proc = _ctrl_c_once_training([*GRID_A, *launcher], tmp_path)
    err = proc.stderr
    assert proc.returncode == 128 + signal.SIGINT, (proc.returncode, err[-3000:])
    assert (
        "launch stopped by SIGINT (Ctrl-C): 2 cells: 0 done, 0 diverged, 1 interrupted, 1 pending, 0 failed" in err
    ), err[-3000:]
    out = proc.stdout + err
    assert "Traceback" not in out and "SIGTERM" not in out and "did not finish" not in out, out[-3000:]
    assert "RuntimeError" not in out and "launch stopped before this cell started" not in out
    stopped = [json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("cells/*/status.json")]
    assert len(stopped) == 1 and "signal SIGINT" in stopped[0]["error"], stopped  # named as received
    (command,) = _commands(err)
    assert command.startswith(f"cd {tmp_path} && landscape -m model.width=4,8 ") and "hydra.sweep.dir=" in command
    if launcher:  # the command as printed completes the grid (the in-process case runs the same code)
        done = subprocess.run(command, shell=True, env=ENV, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "resumed at epoch" in done.stdout + done.stderr
        rep = sweep_report(tmp_path / "sweep")
        assert rep.counts["done"] == 2 and rep.rerun is None


def test_after_two_grids_the_command_covers_every_pending_cell(tmp_path):
    # grid A is stopped with one cell interrupted and one pending; a different, smaller grid B runs to its end
    stopped = _ctrl_c_once_training([*GRID_A, *LOCAL], tmp_path)
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    grid_b = [
        "-m",
        "model.width=16",
        "data.subsample=0.25",
        "train.epochs=2",
        "train.seeds=[0]",
        "metrics.l2.enabled=false",
        "hydra.sweep.dir=sweep",
        *LOCAL,
    ]
    b = subprocess.run([*LANDSCAPE, *grid_b], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    # B's own end says that the directory holds A's cells not done, and gives A's command
    said = b.stdout + b.stderr
    assert "2 cell(s) of other launches" in said and "launch finished: 1 cells: 1 done" in said, said[-3000:]
    assert any("model.width=4,8" in c for c in _commands(said)), said[-3000:]

    status = subprocess.run(
        [sys.executable, "-m", "landscape.cli.status", "sweep"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "done 1" in status.stdout and "interrupted 1" in status.stdout and "pending 1" in status.stdout
    commands = _commands(status.stdout)
    assert len(commands) == 1 and "model.width=4,8" in commands[0], status.stdout  # not B's (nothing to do)
    rep = sweep_report(tmp_path / "sweep")
    assert rep.rerun == commands[0]
    done = subprocess.run(rep.rerun, shell=True, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "nothing to launch" not in done.stdout + done.stderr, done.stderr[-3000:]
    after = sweep_report(tmp_path / "sweep")
    assert after.counts["done"] == 3 and after.rerun is None, after.counts


def _record(sweep: Path, name: str, argv: list[str], cells: list[tuple[str, list[str]]]) -> None:
    (sweep / "launches").mkdir(parents=True, exist_ok=True)
    (sweep / "launches" / f"{name}.json").write_text(
        json.dumps(
            {
                "arguments": argv[1:],
                "argv": argv,
                "cwd": None,
                "cells": [{"cell_id": c, "overrides": o} for c, o in cells],
            }
        )
    )


def test_the_command_covers_pending_cells_of_every_launch_with_as_few_commands_as_needed(tmp_path):
    sweep = tmp_path / "sweep"
    grid1 = [(f"a{w}", [f"model.width={w}"]) for w in (4, 8)]
    grid2 = [(f"b{w}", [f"model.width={w}", "train.lr=0.1"]) for w in (4, 8)]
    _record(sweep, "20260101T000000-1", ["-m", "model.width=4,8"], grid1)
    _record(sweep, "20260101T000001-2", ["-m", "model.width=4,8", "train.lr=0.1"], grid2)
    _record(sweep, "20260101T000002-3", ["-m", "model.width=8"], grid1[1:])  # a subset of grid 1, done
    CellDir(sweep, "a8").write_status(CellStatus(cell_id="a8", state="done", seeds={"0": "done"}))
    CellDir(sweep, "b8").write_status(CellStatus(cell_id="b8", state="done", seeds={"0": "done"}))
    rep = sweep_report(sweep)
    assert rep.counts["pending"] == 2  # a4 (grid 1) and b4 (grid 2)
    where = f"hydra.sweep.dir={sweep.resolve()}"
    assert rep.rerun_commands == [
        f"landscape -m model.width=4,8 {where}",
        f"landscape -m model.width=4,8 train.lr=0.1 {where}",
    ]
    assert rep.rerun == " ; ".join(rep.rerun_commands)
    text = st.format_report(rep)
    assert "complete the grids (2 launches" in text and all(c in text for c in rep.rerun_commands)
    # only grid 2 left: one command, grid 2's
    CellDir(sweep, "a4").write_status(CellStatus(cell_id="a4", state="done", seeds={"0": "done"}))
    assert sweep_report(sweep).rerun_commands == [f"landscape -m model.width=4,8 train.lr=0.1 {where}"]


def test_verbose_lists_cells_in_grid_order(tmp_path):
    sweep = tmp_path / "sweep"
    grid = [(w, b) for w in (4, 8, 16, 128) for b in (16, 1024)]
    ids = [f"{(7 * i + 3) % 11:02x}{i}" for i in range(len(grid))]  # ids whose order is not the grid's
    assert sorted(ids) != ids
    _record(
        sweep,
        "20260101T000000-1",
        ["-m", "model.width=4,8,16,128", "train.batch_size=16,1024"],
        [
            (cid, [f"model.width={w}", f"train.batch_size={b}", "+sweep=demo"])
            for cid, (w, b) in zip(ids, grid, strict=True)
        ],
    )
    text = st.format_report(sweep_report(sweep), verbose=True)
    listed = re.findall(r"^  (\w+)\s+pending\s+model\.width=(\d+) train\.batch_size=(\d+)", text, re.MULTILINE)
    assert [(int(w), int(b)) for _, w, b in listed] == grid, text
    assert [c for c, _, _ in listed] == ids
