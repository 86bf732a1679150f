"""A sweep directory many launches share: nothing computed is ever lost, one process per cell (lease), no torn
cell (issue 14, points 1, 2 and 6), through the real ``landscape`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST, LANDSCAPE

from landscape.cell import CellDir, Lease
from landscape.results import load

METRICS = ["train_loss", "train_acc", "test_loss", "test_acc", "train_acc_clean", "training.steps"]


def _rows(sweep: Path, table: str = "models") -> pd.DataFrame:
    df = load(sweep, table)
    keys = ["cell_id", "seed"] if table != "pairs" else ["cell_id", "seed_a", "seed_b"]
    return df.sort_values(keys + ["config"]).reset_index(drop=True)


def test_two_seed_lists_in_one_grid_keep_all_four_models(cli, tmp_path):
    cli(["-m", "hydra.sweep.dir=s", *FAST, "train.seeds=[0,1],[2,3]"])
    rows = _rows(tmp_path / "s")
    assert sorted(rows["seed"]) == [0, 1, 2, 3] and rows["cell_id"].nunique() == 1
    pairs = _rows(tmp_path / "s", "pairs")
    assert sorted(zip(pairs["seed_a"], pairs["seed_b"], strict=True)) == [(0, 1), (2, 3)]
    # the same rows as one request of each seed list alone
    cli(["hydra.sweep.dir=ref", *FAST, "train.seeds=[2,3]"])
    ref = _rows(tmp_path / "ref")
    got = rows[rows["seed"] >= 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[METRICS], ref[METRICS], check_exact=True)


def test_a_smaller_request_after_a_larger_one_loses_nothing(cli, tmp_path):
    hess = [
        "metrics.hessian.enabled=true",
        "metrics.hessian.n_top=1",
        "metrics.hessian.smallest_eigenvalue=false",
        "metrics.hessian.eval_samples=64",
        "metrics.hessian.trace_matvecs=9",
    ]
    cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,1,2]", *hess])
    first = _rows(tmp_path / "s")
    first_pairs = _rows(tmp_path / "s", "pairs")
    assert len(first) == 3 and first["hessian.top_eigenvalue"].notna().all() and len(first_pairs) == 3
    cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,1]"])
    rows, pairs = _rows(tmp_path / "s"), _rows(tmp_path / "s", "pairs")
    with_h = rows[rows["hessian.top_eigenvalue"].notna()].reset_index(drop=True)
    pd.testing.assert_frame_equal(with_h, first, check_exact=True)  # seed 2 and every Hessian value still there
    assert sorted(rows.loc[rows["hessian.top_eigenvalue"].isna(), "seed"]) == [0, 1]  # the new request's rows
    # the pair family settings are the same: the pairs are those of the first request, none lost, none doubled
    assert sorted(zip(pairs["seed_a"], pairs["seed_b"], strict=True)) == [(0, 1), (0, 2), (1, 2)]
    pd.testing.assert_frame_equal(pairs[["l2_distance"]], first_pairs[["l2_distance"]], check_exact=True)
    # asking again for what is there runs nothing
    again = cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,2]", *hess])
    assert "is done: skipped" in again.stdout + again.stderr


def test_a_swept_metric_setting_keeps_both_values(cli, tmp_path):
    conn = [
        "metrics.connectivity.enabled=true",
        "metrics.connectivity.epochs=1",
        "metrics.connectivity.n_points=3",
        "metrics.connectivity.test=false",
        "metrics.l2.enabled=false",
    ]
    cli(["-m", "hydra.sweep.dir=s", *FAST, *conn, "metrics.connectivity.lr=5,50"])
    pairs = load(tmp_path / "s", "pairs")
    assert len(pairs) == 2 and pairs["cell_id"].nunique() == 1
    lrs = sorted(json.loads(c)["metrics"]["connectivity"]["lr"] for c in pairs["config"])
    assert lrs == [5.0, 50.0]
    assert pairs["connectivity.mc_loss"].nunique() == 2 or pairs["connectivity.mc"].isna().any()
    assert len(load(tmp_path / "s")) == 2  # the model rows do not depend on a pair setting: not doubled


# ------------------------------------------------------------------------------------------ the cell lease
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lease_is_exclusive_and_a_dead_holders_lease_is_taken_over(tmp_path):
    cell = CellDir(tmp_path, "abc")
    leases = [Lease(cell, interval=10.0) for _ in range(8)]
    won: list[int] = []
    barrier = threading.Barrier(len(leases))

    def grab(i: int) -> None:
        barrier.wait()
        if leases[i].try_acquire():
            won.append(i)

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(len(leases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1  # exactly one of eight simultaneous takers
    holder = leases[won[0]]
    other = Lease(cell, interval=10.0)
    assert not other.try_acquire() and holder.renew() and holder.held()
    holder.release()
    assert cell.lease_path.exists() is False and other.try_acquire()
    other.release()

    # a killed holder on this host: its lease is taken over at once
    rec = {
        "token": "dead",
        "host": os.uname().nodename,
        "pid": _dead_pid(),
        "beat_at": time.time(),
        "beats": 3,
        "interval": 10.0,
    }
    cell.lease_path.write_text(json.dumps(rec))
    import socket

    rec["host"] = socket.gethostname()
    cell.lease_path.write_text(json.dumps(rec))
    taker = Lease(cell, interval=10.0)
    assert taker.try_acquire() and taker.held()
    taker.release()

    # a holder on another host that stopped beating: stale after `stale_beats` intervals, then taken over
    cell.lease_path.write_text(json.dumps({**rec, "host": "elsewhere", "pid": 1, "beat_at": time.time()}))
    waiter = Lease(cell, interval=0.1, stale_beats=3)
    t0 = time.monotonic()
    assert waiter.acquire(wait=True, timeout_s=10.0)
    assert 0.3 <= time.monotonic() - t0 < 5.0
    # the old holder notices on its next beat that it lost the cell
    loser = Lease(cell, interval=0.1)
    loser.token = "dead"
    assert not loser.renew() and loser.lost


def _launch(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.Popen(
        [*LANDSCAPE, *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _status(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (sweep / "cells").glob("*/status.json")}


def test_two_launches_of_one_grid_at_once_train_each_cell_once(cli, tmp_path):
    grid = ["-m", *FAST, "model.width=4,8,16"]
    env = {"LANDSCAPE_HEARTBEAT_S": "0.5"}
    procs = [_launch([*grid, "hydra.sweep.dir=s"], tmp_path, env) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    status = _status(tmp_path / "s")
    assert len(status) == 3 and all(s["state"] == "done" and s["attempts"] == 1 for s in status.values())
    ran = sum(o.count("done in") for o in outs)
    assert ran == 3, outs  # every cell trained by exactly one of the two launches
    cli([*grid, "hydra.sweep.dir=ref"])
    got, ref = _rows(tmp_path / "s"), _rows(tmp_path / "ref")
    pd.testing.assert_frame_equal(
        got[METRICS + ["cell_id", "seed"]], ref[METRICS + ["cell_id", "seed"]], check_exact=True
    )
    assert (
        _rows(tmp_path / "s", "pairs")["l2_distance"].tolist()
        == _rows(tmp_path / "ref", "pairs")["l2_distance"].tolist()
    )


def test_overlapping_grids_with_a_pause_between_writes_leave_no_torn_cell(cli, tmp_path):
    a = ["-m", *FAST, "model.width=4,8", "train.seeds=[0,1]"]
    b = ["-m", *FAST, "model.width=8,16", "train.seeds=[1,2]"]
    env = {"LANDSCAPE_HEARTBEAT_S": "0.5", "LANDSCAPE_TEST_PAUSE": "between_tables:1.5"}
    procs = [_launch([*g, "hydra.sweep.dir=s"], tmp_path, env) for g in (a, b)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    for g in (a, b):  # the reference: the two grids one after the other
        cli([*g, "hydra.sweep.dir=ref"])
    models, pairs = _rows(tmp_path / "s"), _rows(tmp_path / "s", "pairs")
    ref_m, ref_p = _rows(tmp_path / "ref"), _rows(tmp_path / "ref", "pairs")
    cols = METRICS + ["cell_id", "seed", "model.width"]
    pd.testing.assert_frame_equal(models[cols], ref_m[cols], check_exact=True)
    pcols = ["cell_id", "seed_a", "seed_b", "l2_distance"]
    pd.testing.assert_frame_equal(pairs[pcols], ref_p[pcols], check_exact=True)
    w8 = models[models["model.width"] == 8]
    assert sorted(w8["seed"]) == [0, 1, 2]
    assert sorted(zip(*(pairs[pairs["model.width"] == 8][k] for k in ("seed_a", "seed_b")), strict=True)) == [
        (0, 1),
        (1, 2),
    ]
    assert all(s["state"] == "done" and not s["pending"] for s in _status(tmp_path / "s").values())


# ------------------------------------------------------------------------------------------- point 6
def test_disk_full_is_recorded_and_temporary_files_are_cleaned_on_the_next_run(compose, tmp_path, monkeypatch):
    """A write that fails for lack of space (ENOSPC injected into the Parquet writer, after it wrote part of its
    temporary file) marks the cell failed with the reason, leaves no temporary file; stray temporary files of
    a killed writer are removed by the next run of the cell."""
    import errno

    import pyarrow.parquet as pq

    from landscape.cell import cell_id
    from landscape.job import run_cell

    cfg = compose([*FAST, "train.vectorize=off"])
    sweep = tmp_path / "s"

    def full(table, where, *a, **kw):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(OSError):
        run_cell(cfg, sweep)
    monkeypatch.undo()
    cell = CellDir(sweep, cell_id(cfg))
    status = cell.read_status()
    assert status.state == "failed" and status.error.startswith("disk full: OSError") and "No space" in status.error
    leftovers = [p for p in sweep.rglob(".*") if ".tmp-" in p.name or p.name.endswith(".staged")]
    assert leftovers == [] and load(sweep).empty

    stray = [
        cell.path / "seeds" / "0" / ".checkpoint.pt.tmp-4242",
        sweep / "results" / "models" / f".{cell.cell_id}-0123456789.parquet.tmp-4242",
    ]
    for p in stray:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    out = run_cell(cfg, sweep)
    assert out.action == "ran" and not any(p.exists() for p in stray)
    assert len(load(sweep)) == 2 and cell.read_status().state == "done"


def test_rows_of_a_request_killed_between_its_table_writes_are_not_served(cli, tmp_path):
    """SIGKILL between the models and the pairs file of a request (paused there by the test hook): the new
    models file is not served (its checksum is not committed), its last committed version is; the rerun
    completes the request."""

    cli(["hydra.sweep.dir=s", *FAST])
    before, before_pairs = _rows(tmp_path / "s"), _rows(tmp_path / "s", "pairs")
    proc = _launch(
        ["hydra.sweep.dir=s", *FAST, "train.seeds=[0,1,2]"], tmp_path, {"LANDSCAPE_TEST_PAUSE": "between_tables:30"}
    )
    sweep = tmp_path / "s"
    deadline = time.time() + 120
    while True:  # wait until the new models file is renamed into place (the pause follows it)
        pending = json.loads(_one_status(sweep)).get("pending", {})
        models = [n for n in pending if n.startswith("models/")]
        if models and (sweep / "results" / models[0]).exists():
            from landscape.cell import sha256_file

            if sha256_file(sweep / "results" / models[0]) == pending[models[0]]:
                break
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    rows, pairs = _rows(sweep), _rows(sweep, "pairs")
    # the unfinished request is not served; the last committed rows are, exactly (the models file's committed
    # version is kept beside it until the commit is written)
    pd.testing.assert_frame_equal(rows, before, check_exact=True)
    pd.testing.assert_frame_equal(pairs, before_pairs, check_exact=True)
    cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,1,2]"])
    assert sorted(_rows(sweep)["seed"]) == [0, 1, 2] and len(load(sweep, "pairs")) == 3


def _one_status(sweep: Path) -> str:
    files = list((sweep / "cells").glob("*/status.json"))
    assert len(files) == 1
    return files[0].read_text()


def test_the_holders_clean_up_leaves_the_lease_files_other_processes_are_writing(tmp_path):
    """A launch that holds a cell removes the temporaries of killed writers, but not the lease temporary that a
    second launch is writing at that moment to try the same cell (it removed it once, under the writer, and the
    writer's ``os.link`` failed: the second launch lost the cell; seen in CI)."""
    from landscape.cell import clean_temporary_files
    from landscape.files import STALE_TEMPORARY_S

    cell = CellDir(tmp_path, "abc123def456")
    cell.path.mkdir(parents=True)
    trying = cell.path / ".lease.json.tmp-999-1"  # another process between writing and linking its lease
    guard = cell.path / ".lease.json.takeover.tmp-999-1"
    beat = cell.path / f".lease.json.tmp-{os.getpid()}-2"  # the holder's own heartbeat thread
    abandoned = cell.path / ".lease.json.tmp-998-1"  # an acquirer killed long ago
    killed = cell.path / ".status.json.tmp-997-1"  # a holder killed while writing its status
    result = tmp_path / "results" / "models" / f".{cell.cell_id}-k.parquet.tmp-997-1"
    result.parent.mkdir(parents=True)
    for p in (trying, guard, beat, abandoned, killed, result):
        p.write_text("{}")
    old = time.time() - STALE_TEMPORARY_S - 5
    os.utime(abandoned, (old, old))
    removed = set(clean_temporary_files(cell))
    assert removed == {abandoned, killed, result}
    assert trying.exists() and guard.exists() and beat.exists()

    # the race itself: one process acquires and releases the lease in a loop while the holder-side clean-up runs
    other, errors, stop = Lease(cell, 0.5), [], threading.Event()

    def contend():
        while not stop.is_set():
            try:
                if other.try_acquire():
                    other.release()
            except Exception as exc:  # noqa: BLE001 - collected and asserted empty by the test
                errors.append(exc)
                return

    t = threading.Thread(target=contend)
    t.start()
    try:
        for _ in range(2000):
            clean_temporary_files(cell)
    finally:
        stop.set()
        t.join()
    assert not errors, errors
