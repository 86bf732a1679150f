"""Issue 20, points 1-6: a lease that fences a holder that lost it, result files the reader proves by their
content, only recorded files served, and every state file parsed through one schema (damage is named, set aside
and repaired by the next launch, never a traceback)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST, LANDSCAPE, run_cli

from landscape.results import load

METRICS = ["seed", "train_loss", "train_acc", "test_loss", "test_acc", "train_acc_clean", "training.steps"]
RUN = [*FAST, "train.vectorize=off", "hydra.sweep.dir=s"]  # seeds trained one by one: a seed's row is the same
# whatever the other seeds of the request


def _models(sweep: Path) -> pd.DataFrame:
    return load(sweep).sort_values("seed").reset_index(drop=True)


def _same_rows(got: pd.DataFrame, ref: pd.DataFrame, seeds: list[int]) -> None:
    """The rows of ``seeds`` in ``got`` equal those of the reference, bitwise."""
    assert sorted(got["seed"]) == sorted(seeds), sorted(got["seed"])
    want = ref[ref["seed"].isin(seeds)].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[METRICS].reset_index(drop=True), want[METRICS], check_exact=True)


def _one(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def _launch(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.Popen(
        [*(prefix or LANDSCAPE), *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _tree(sweep: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under the sweep with its modification time and, for files, bytes; aside: the read snapshot, and
    Hydra's own job outputs in the cell directory (``.hydra/``, the job's log ``*.log``: every launch writes
    them before it asks for the lease, and a stale holder's log says that it stops)."""
    out = {}
    for p in sorted(sweep.rglob("*")):
        if ".cache" in p.parts or ".hydra" in p.parts or p.suffix == ".log":
            continue
        st = p.lstat()
        out[str(p.relative_to(sweep))] = (st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


def _lease_pid(cell_dir: Path) -> int | None:
    try:
        return json.loads((cell_dir / "lease.json").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def _wait(what, timeout: float = 240.0, procs: tuple = ()) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        for p in procs:
            assert p.poll() is None, f"a launch ended early:\n{p.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ 1. fencing
SLOW_CELL = [
    "data.subsample=0.25",
    "model.width=8",
    "train.epochs=40",
    "train.batch_size=32",
    "train.vectorize=off",
    "train.checkpoint_every=1",
]
HEARTBEAT = {"LANDSCAPE_HEARTBEAT_S": "0.5"}  # a lease not moving for 4 beats (2 s) is stale


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("slowref")
    run_cli([*SLOW_CELL, "train.seeds=[0,1,2,3,4,5]", "hydra.sweep.dir=s"], root, timeout=900)
    return _models(root / "s")


def test_a_paused_holder_that_lost_its_lease_never_writes_again(tmp_path, slow_reference):
    """The issue's pause/resume scenario: seeds [0,1] done; a launch of seeds [2,3] is SIGSTOPped mid-training;
    a launch of seeds [4,5] takes the lease over and finishes; SIGCONT: the stopped launch writes nothing (not
    a byte, not a status, no staged file), stops at once, and the rows are those of a clean run; a relaunch of
    seeds [2,3] resumes from its checkpoints and adds their rows."""
    sweep = tmp_path / "s"
    run_cli([*SLOW_CELL, "train.seeds=[0,1]", "hydra.sweep.dir=s"], tmp_path, timeout=900)
    cell = _one([p for p in (sweep / "cells").iterdir() if p.is_dir()])

    b = _launch([*SLOW_CELL, "train.seeds=[2,3]", "hydra.sweep.dir=s"], tmp_path, HEARTBEAT)
    try:
        _wait(
            lambda: _lease_pid(cell) == b.pid and any((cell / "seeds" / s / "checkpoint.pt").exists() for s in "23"),
            procs=(b,),
        )
        os.kill(b.pid, signal.SIGSTOP)  # mid-training, holding the lease
        c = _launch([*SLOW_CELL, "train.seeds=[4,5]", "hydra.sweep.dir=s"], tmp_path, HEARTBEAT)
        c_out = c.communicate(timeout=900)[0]
        assert c.returncode == 0 and "taking over the stale lease" in c_out, c_out[-3000:]
        before = _tree(sweep)
        os.kill(b.pid, signal.SIGCONT)
        b_out = b.communicate(timeout=300)[0]
    finally:
        if b.poll() is None:
            os.kill(b.pid, signal.SIGCONT)
            b.kill()
            b.wait()
    assert "stops without writing" in b_out, b_out[-3000:]
    assert "done in" not in b_out, b_out[-3000:]
    assert _tree(sweep) == before  # not one file written, renamed, removed or touched by the stale holder
    assert not [p for p in sweep.rglob("*") if p.name.endswith(".staged") or ".tmp-" in p.name]
    status = json.loads((cell / "status.json").read_text())
    assert status["state"] == "done" and sorted(status["seeds"]) == ["0", "1", "4", "5"]
    _same_rows(_models(sweep), slow_reference, [0, 1, 4, 5])

    again = run_cli([*SLOW_CELL, "train.seeds=[2,3]", "hydra.sweep.dir=s"], tmp_path, timeout=900)
    assert "Traceback" not in again.stderr
    _same_rows(_models(sweep), slow_reference, [0, 1, 2, 3, 4, 5])


SKEWED = [
    sys.executable,
    "-c",
    "import sys, time; real = time.time; time.time = lambda: real() - 1000.0; "  # the clock 1000 s behind
    "sys.argv[0] = 'landscape'; from landscape.cli.app import main; main()",
]


def test_a_holder_whose_clock_is_far_behind_is_not_taken_over(tmp_path, slow_reference):
    """A holder whose wall clock is 1000 s behind (every ``time.time`` of its process) keeps its lease while
    its heartbeat moves: a second launch waits for it (no takeover, no two writers) and then runs its seeds;
    the rows are those of a clean run."""
    sweep = tmp_path / "s"
    hold = {**HEARTBEAT, "LANDSCAPE_TEST_PAUSE": "before_rename:7"}  # holds the lease (beating) 3.5x the stale age
    a = _launch([*SLOW_CELL, "train.seeds=[0,1]", "hydra.sweep.dir=s"], tmp_path, hold, prefix=SKEWED)
    try:
        _wait(
            lambda: (sweep / "cells").is_dir() and any(_lease_pid(c) == a.pid for c in (sweep / "cells").iterdir()),
            procs=(a,),
        )
        b = _launch([*SLOW_CELL, "train.seeds=[2,3]", "hydra.sweep.dir=s"], tmp_path, HEARTBEAT)
        b_out = b.communicate(timeout=900)[0]
        a_out = a.communicate(timeout=900)[0]
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 0 and b.returncode == 0, a_out[-2000:] + b_out[-2000:]
    assert "waiting for its lease" in b_out and "taking over" not in b_out, b_out[-3000:]
    assert "stops without writing" not in a_out and "done in" in a_out, a_out[-3000:]
    _same_rows(_models(sweep), slow_reference, [0, 1, 2, 3])


def test_lease_takeover_needs_the_heartbeat_to_stop_not_an_old_timestamp(tmp_path):
    """In one process: a holder whose lease file carries timestamps 1000 s old but whose heartbeat moves is
    never stale to a taker; once the heartbeat stops, the taker takes over after ``stale_beats`` intervals of
    its own clock and the old holder's writes fail (``LeaseLost``), its lease renewal too."""
    import threading

    from landscape.cell import CellDir, Lease, LeaseLost
    from landscape.files import atomic_write, fenced

    cell = CellDir(tmp_path, "abcdef012345")
    holder = Lease(cell, interval=0.05, stale_beats=3)
    assert holder.try_acquire()
    rec = json.loads(cell.lease_path.read_text())
    old = {**rec, "acquired_at": time.time() - 1000.0, "beat_at": time.time() - 1000.0, "beats": 0}
    os.replace(_write(tmp_path / "x", json.dumps(old)), cell.lease_path)  # the holder's clock far behind
    stop = threading.Event()

    def beat():
        while not stop.wait(0.05):
            holder.renew()

    t = threading.Thread(target=beat)
    t.start()
    try:
        taker = Lease(cell, interval=0.05, stale_beats=3)
        assert not taker.acquire(timeout_s=1.0)  # 20 intervals: the heartbeat moves, the lease is not stale
    finally:
        stop.set()
        t.join()
    target = cell.path / "seeds" / "0" / "result.json"
    with fenced(holder.fence()):
        atomic_write(target, lambda tmp: tmp.write_text("{}"))  # still the holder: written
        assert taker.acquire(timeout_s=5.0)  # the heartbeat stopped: taken over
        with pytest.raises(LeaseLost, match="result.json"):
            atomic_write(target, lambda tmp: tmp.write_text('{"stale": 1}'))
    assert target.read_text() == "{}" and not holder.renew() and holder.lost and taker.held()
    taker.release()
    assert not cell.lease_path.exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------- 2-4. files the reader proves
def status_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "landscape.cli.status", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    run_cli([*RUN, "train.seeds=[0,1,2]"], root)
    return _models(root / "s")


@pytest.fixture(scope="module")
def done_sweep(tmp_path_factory):
    """A sweep of one done cell (seeds 0, 1), copied by each test that damages it."""
    root = tmp_path_factory.mktemp("done")
    run_cli(RUN, root)
    return root / "s"


def _copy(done_sweep: Path, tmp_path: Path) -> Path:
    sweep = tmp_path / "s"
    shutil.copytree(done_sweep, sweep, symlinks=True)
    shutil.rmtree(sweep / "results" / ".cache", ignore_errors=True)
    return sweep


def _flip_a_value(path: Path, value: float) -> float:
    """Flip the lowest bit of the first stored copy of the float64 ``value`` in the Parquet file ``path`` (its data
    page), restoring the modification time; returns the value a plain read now gives."""
    import pyarrow.parquet as pq

    st = path.stat()
    data = bytearray(path.read_bytes())
    i = data.find(struct.pack("<d", value))
    assert i >= 0
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    flipped = struct.unpack("<d", bytes(data[i : i + 8]))[0]
    assert flipped in pq.read_table(path).column("train_loss").to_pylist()  # a plain read gives the wrong value
    return flipped


def test_a_flipped_bit_with_its_mtime_restored_is_never_served_and_is_recomputed(
    cli, tmp_path, done_sweep, reference, caplog
):
    sweep = _copy(done_sweep, tmp_path)
    assert len(load(sweep)) == 2  # read once: the snapshot holds the rows
    models = _one(list((sweep / "results" / "models").glob("*.parquet")))
    flipped = _flip_a_value(models, float(load(sweep)["train_loss"].iloc[0]))

    with caplog.at_level(logging.WARNING, logger="landscape.results.io"):
        served = load(sweep)
    assert flipped not in served["train_loss"].tolist() and served.empty
    assert any(str(models) in r.getMessage() and "SHA-256" in r.getMessage() for r in caplog.records)
    shutil.rmtree(sweep / "results" / ".cache")  # the read snapshot removed: the file is read again, refused again
    assert load(sweep).empty

    plain = status_cli([str(sweep)], tmp_path)
    assert "damaged 1" in plain.stdout and str(models) in plain.stdout and "rerun" in plain.stdout, plain.stdout
    proc = cli(["-m", *RUN])  # the next launch, without --repair, sees the cell as not done
    assert "nothing to launch" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    _same_rows(_models(sweep), reference, [0, 1])
    final = status_cli([str(sweep), "--verify"], tmp_path)
    assert final.returncode == 0 and "every file is intact" in final.stdout, final.stdout


def test_a_wrong_checksum_in_the_status_record_is_damage_recomputed_by_the_next_launch(
    cli, tmp_path, done_sweep, reference
):
    sweep = _copy(done_sweep, tmp_path)
    status_path = _one(list((sweep / "cells").glob("*/status.json")))
    status = json.loads(status_path.read_text())
    name = _one([n for n in status["results"] if n.startswith("models/")])
    status["results"][name]["sha256"] = "0" * 64
    status_path.write_text(json.dumps(status))

    assert load(sweep).empty  # not served: its bytes do not have the recorded checksum
    plain = status_cli([str(sweep)], tmp_path)
    assert "damaged 1" in plain.stdout and name.split("/")[1] in plain.stdout, plain.stdout
    checked = status_cli([str(sweep), "--verify"], tmp_path)
    assert checked.returncode == 1 and "SHA-256 differs" in checked.stdout, checked.stdout
    cli(["-m", *RUN])
    _same_rows(_models(sweep), reference, [0, 1])
    assert status_cli([str(sweep), "--verify"], tmp_path).returncode == 0


def test_only_recorded_files_inside_the_sweep_are_served(cli, tmp_path, done_sweep, reference, caplog):
    """A result file copied from another sweep (its cell is not here), a link to a file outside the sweep, and a
    recorded result file replaced by a link to an identical copy outside: none is served, ``--verify`` names
    each, and the next launch replaces the link by the cell's own file."""
    sweep = _copy(done_sweep, tmp_path)
    models = _one(list((sweep / "results" / "models").glob("*.parquet")))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(models, outside / models.name)
    foreign = models.with_name("0123456789ab-0123456789.parquet")  # copied from another sweep: no such cell here
    shutil.copy(models, foreign)
    link = models.with_name("link.parquet")
    link.symlink_to(outside / models.name)
    models.unlink()
    models.symlink_to(outside / models.name)  # the recorded name, identical bytes, but outside the sweep

    with caplog.at_level(logging.WARNING, logger="landscape.results.io"):
        assert load(sweep).empty
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert all(str(p) in messages for p in (foreign, link, models)), messages
    checked = status_cli([str(sweep), "--verify"], tmp_path)
    assert checked.returncode == 1, checked.stdout
    for p in (foreign, link, models):
        assert str(p) in checked.stdout, checked.stdout
    assert "link leaving the sweep" in checked.stdout and "no cell of this sweep records" in checked.stdout

    cli(["-m", *RUN])  # the recorded file (a link leaving the sweep) is damage: recomputed
    assert not models.is_symlink()
    _same_rows(_models(sweep), reference, [0, 1])


# ---------------------------------------------------------------------------------- 5-6. one schema per file
def _status_case(status: dict, kind: str) -> dict:
    name = next(iter(status["results"]))
    if kind == "results_entry_a_string":
        status["results"][name] = "abc"
    elif kind == "covers_5":
        status["results"][name]["covers"] = 5
    elif kind == "files_a_list":
        status["files"] = ["a"]
    elif kind == "metric_errors_a_string":
        status["metric_errors"] = "oops"
    elif kind == "updated_at_a_string":
        status["updated_at"] = "yesterday"
    elif kind == "pid_a_list":
        status["pid"] = [1]
    elif kind == "state_missing":
        del status["state"]
    else:
        raise ValueError(kind)
    return status


STATUS_CASES = [
    "results_entry_a_string",
    "covers_5",
    "files_a_list",
    "metric_errors_a_string",
    pytest.param("updated_at_a_string", marks=pytest.mark.slow),
    "pid_a_list",
    pytest.param("state_missing", marks=pytest.mark.slow),
]
KEYS = {
    "results_entry_a_string": "results[",
    "covers_5": ".covers=5",
    "files_a_list": "files=['a']",
    "metric_errors_a_string": "metric_errors='oops'",
    "updated_at_a_string": "updated_at='yesterday'",
    "pid_a_list": "pid=[1]",
    "state_missing": "state: missing",
}


@pytest.mark.parametrize("kind", STATUS_CASES)
def test_a_status_of_wrong_types_is_named_and_repaired_by_the_next_launch(
    cli, tmp_path, done_sweep, reference, kind, capsys
):
    from landscape.cli import status as status_mod

    sweep = _copy(done_sweep, tmp_path)
    path = _one(list((sweep / "cells").glob("*/status.json")))
    path.write_text(json.dumps(_status_case(json.loads(path.read_text()), kind)))

    assert status_mod.main([str(sweep)]) == 0  # no traceback; the file, the key and the value named
    out = capsys.readouterr().out
    assert "damaged 1" in out and str(path) in out and KEYS[kind] in out, out
    assert status_mod.main([str(sweep), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"damaged: {path}" in out and KEYS[kind] in out, out
    assert load(sweep).empty  # nothing of the cell served, no traceback

    proc = cli(["-m", *RUN])  # the grid is not refused: the cell is launched and repaired
    assert "Traceback" not in proc.stderr
    _same_rows(_models(sweep), reference, [0, 1])
    assert list(path.parent.glob(".status.json.damaged-*"))  # set aside, kept for inspection
    assert status_mod.main([str(sweep), "--verify"]) == 0


LEASES = {
    "beats_a_list": {"beats": [1]},
    "token_an_object": {"token": {}},
    "interval_a_string": {"interval": "abc"},
    "a_directory": None,
}


@pytest.mark.parametrize(
    "kind",
    ["beats_a_list", "token_an_object", pytest.param("interval_a_string", marks=pytest.mark.slow), "a_directory"],
)
def test_a_hand_made_lease_of_wrong_types_is_named_set_aside_and_taken_over(
    cli, tmp_path, done_sweep, reference, kind, capsys
):
    """The job meets the damaged lease (the request needs a new seed): it names the file, sets it aside and
    works on the cell; no traceback, a status is written, the rows are those of a clean run."""
    from landscape.cli import status as status_mod

    sweep = _copy(done_sweep, tmp_path)
    cell = _one([p for p in (sweep / "cells").iterdir() if p.is_dir()])
    lease = cell / "lease.json"
    if LEASES[kind] is None:
        (lease / "inside").mkdir(parents=True)
    else:
        rec = {
            "token": "f" * 32,
            "host": "elsewhere",
            "pid": 12345,
            "interval": 30.0,
            "beats": 3,
            "beat_at": time.time(),
            **LEASES[kind],
        }
        lease.write_text(json.dumps(rec))
    assert status_mod.main([str(sweep), "--verify"]) == 1
    assert f"damaged: {lease}" in capsys.readouterr().out

    proc = cli(["-m", *RUN, "train.seeds=[0,1,2]"], timeout=300)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and f"damaged lease file {lease}" in out, out[-3000:]
    assert json.loads((cell / "status.json").read_text())["state"] == "done"
    assert not lease.exists() and list(cell.glob(".lease.json.damaged-*"))
    _same_rows(_models(sweep), reference, [0, 1, 2])


def test_damaged_metric_caches_and_training_results_of_valid_json_are_named_and_recomputed(
    cli, tmp_path, done_sweep, reference
):
    from landscape.cell import CellDir, inspect_cell_files

    sweep = _copy(done_sweep, tmp_path)
    cell_dir = _one([p for p in (sweep / "cells").iterdir() if p.is_dir()])
    cache = _one(list((cell_dir / "metrics").glob("seed=0-*/training.json")))
    cache.write_text(json.dumps({"values": [1, 2]}))
    result = cell_dir / "seeds" / "1" / "result.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "steps": "many"}))
    found = {p.path: p.reason for p in inspect_cell_files(CellDir(sweep, cell_dir.name), checkpoints=False)}
    assert "values=[1, 2]" in found[cache] and "steps='many'" in found[result], found
    cli([*RUN, "train.seeds=[0,1,2]"])
    _same_rows(_models(sweep), reference, [0, 1, 2])


def test_stray_files_in_a_results_folder_are_named_and_skipped(tmp_path, done_sweep, caplog, capsys):
    """A ``notes.parquet`` whose ``seed`` column holds strings and a directory named ``x.parquet``: the table is
    read (the cell's rows served), each stray named; ``--verify`` names them too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from landscape.cli import status as status_mod
    from landscape.results import schema_for
    from landscape.results.io import _read_all

    sweep = _copy(done_sweep, tmp_path)
    d = sweep / "results" / "models"
    notes = d / "notes.parquet"
    pq.write_table(pa.table({"seed": ["zero", "one"], "note": ["a", "b"]}), notes)
    (d / "x.parquet").mkdir()
    with caplog.at_level(logging.WARNING, logger="landscape.results.io"):
        assert len(load(sweep)) == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert str(notes) in messages and str(d / "x.parquet") in messages, messages
    assert status_mod.main([str(sweep), "--verify"]) == 1
    out = capsys.readouterr().out
    assert str(notes) in out and str(d / "x.parquet") in out, out

    # the reader itself (a folder of another tool's files, served unchecked): the stray is skipped, named
    good = _one([p for p in d.glob("*-*.parquet")])
    problems: dict[str, str] = {}
    table = _read_all([str(good), str(notes), str(d / "x.parquet")], schema_for("models"), None, problems)
    assert table.num_rows == 2 and set(problems) == {str(notes), str(d / "x.parquet")}, problems
