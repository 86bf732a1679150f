"""``landscape-status``: sweep state from the files on disk (launch records + status markers)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict

from helpers import make_status_sweep, write_cell_status

from landscape.cell import CellDir, CellStatus
from landscape.cli import status as st


def test_counts_failed_errors_stale_and_rerun_command(tmp_path):
    sweep = tmp_path / "sweep"
    make_status_sweep(sweep)
    rep = st.sweep_report(sweep, stale_after_s=60.0, now=time.time() + 30.0)  # c5's heartbeat is 30 s old: fresh
    assert rep.counts == {
        "done": 1,
        "diverged": 1,
        "failed": 1,
        "running": 2,
        "interrupted": 1,
        "pending": 1,
        "damaged": 0,
    }
    by_id = {c.cell_id: c for c in rep.cells}
    assert by_id["c4"].state == "interrupted" and "is gone" in by_id["c4"].note
    assert by_id["c2"].error.startswith("FileNotFoundError: data.root='/x'")
    assert by_id["c6"].overrides == ["model.width=6", "+sweep=demo"]
    # the launch's command, into the directory asked about (the launch directory /some/where does not exist here)
    assert rep.rerun == (
        f"landscape -m model.width=0,1,2,3,4,5,6 +sweep=demo hydra/launcher=slurm hydra.sweep.dir={sweep.resolve()}"
    )

    later = st.sweep_report(sweep, stale_after_s=60.0, now=time.time() + 120.0)  # now c5 (other host) is stale
    assert {c.cell_id: c.state for c in later.cells}["c5"] == "interrupted"
    assert "no heartbeat" in {c.cell_id: c for c in later.cells}["c5"].note

    text = st.format_report(rep)
    assert "failed 1" in text and "c2" in text and "missing data_batch_1" in text and rep.rerun in text


def test_cli_json_and_nothing_to_rerun(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_status_sweep(sweep)
    assert st.main([str(sweep), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["counts"]["failed"] == 1 and out["counts"]["pending"] == 1
    assert out["rerun"].endswith(f"hydra/launcher=slurm hydra.sweep.dir={sweep.resolve()}")
    assert {c["cell_id"]: c["state"] for c in out["cells"]}["c1"] == "diverged"

    # every cell done: no rerun command
    for cid in ["c2", "c3", "c4", "c5", "c6"]:
        write_cell_status(sweep, cid, state="done", seeds={"0": "done"})
    rep = st.sweep_report(sweep)
    assert rep.rerun is None and rep.counts["done"] == 6 and rep.counts["diverged"] == 1
    assert "every cell is done" in st.format_report(rep)
    assert st.main([str(tmp_path / "missing")]) == 2


def test_heartbeat_refreshes_a_running_status(tmp_path):
    from landscape.job import _Heartbeat

    cell = CellDir(tmp_path, "abc")
    status = CellStatus(state="running", cell_id="abc", pid=os.getpid())
    cell.write_status(status)
    first = cell.read_status().updated_at
    with _Heartbeat(cell, status, interval=0.05):
        time.sleep(0.3)
    beat = cell.read_status()
    assert beat.updated_at > first and beat.state == "running"
    status.state = "done"
    cell.write_status(status)
    with _Heartbeat(cell, status, interval=0.05):  # a finished status is never overwritten
        time.sleep(0.2)
    assert cell.read_status().state == "done"
    assert asdict(cell.read_status())["cell_id"] == "abc"
