"""Multiruns on the real local SLURM cluster (scripts/slurm_cluster.sh) through ``hydra/launcher=slurm``:
the same rows as a local run, a preempted task that resumes without lost or repeated work, and a failing
cell reported by ``landscape-status`` while the others finish. Skipped with a reason without a cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from slurm_support import LANDSCAPE, SLURM, SMALL, landscape, requires_slurm, rows, wait_for

from landscape.cli.status import sweep_report
from landscape.metrics import metric_columns
from landscape.results import SCHEMA_VERSION


def status_of(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (sweep / "cells").glob("*/status.json")}


@requires_slurm
def test_slurm_multirun_gives_the_rows_of_the_local_run(tmp_path):
    from landscape.launching import cluster_max_array_size

    assert cluster_max_array_size() is not None  # read from `scontrol show config`
    grid = [
        "-m",
        *SMALL,
        "train.batch_size=32,64,128",
        "metrics.hessian.enabled=true",
        "metrics.hessian.eval_samples=100",
        "metrics.hessian.trace_matvecs=12",
        "metrics.cka.enabled=true",
    ]
    landscape([*grid, "hydra.sweep.dir=local"], tmp_path)
    t0 = time.monotonic()
    # a grid larger than the array size: chunks, all submitted before any is awaited
    out = landscape([*grid, *SLURM, "hydra.launcher.max_array_size=2", "hydra.sweep.dir=slurm"], tmp_path)
    assert "submitted 3 cells as 2 SLURM array(s) of <= 2 tasks" in out.stderr + out.stdout, out.stderr[-2000:]
    arrays = sorted(
        {p.name.split("_")[0] for p in (tmp_path / "slurm" / ".submitit").iterdir() if p.name.split("_")[0].isdigit()},
        key=int,
    )
    assert len(arrays) == 2
    acct = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,Submit,End", "-j", ",".join(arrays)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    times = {line.split("|")[0]: line.split("|")[1:] for line in acct}
    first_end = min(end for jid, (_, end) in times.items() if jid.split("_")[0] == arrays[0])
    second_submit = min(sub for jid, (sub, _) in times.items() if jid.split("_")[0] == arrays[1])
    assert second_submit <= first_end  # ISO timestamps: the second chunk did not wait for the first
    for table, n in (("models", 6), ("pairs", 3)):
        local, slurm = rows(tmp_path / "local", table), rows(tmp_path / "slurm", table)
        assert len(slurm) == n and list(slurm["cell_id"]) == list(local["cell_id"])
        assert (slurm["schema_version"] == SCHEMA_VERSION).all()  # the jobs ran this checkout's code
        computed = [c for c in metric_columns(table) if local[c].notna().any()]
        expected = {
            "models": {"train_loss", "test_acc", "hessian.top_eigenvalue", "hessian.trace"},
            "pairs": {"l2_distance", "cka"},
        }[table]
        assert expected <= set(computed), computed
        for col in computed + (["training.steps"] if table == "models" else []):
            # bitwise: same config, same seeds, same numbers (NaN where both are NaN)
            pd.testing.assert_series_equal(slurm[col], local[col], check_exact=True, obj=f"{table}.{col}")
    statuses = status_of(tmp_path / "slurm")
    assert all(s["state"] == "done" and s["slurm_job_id"] for s in statuses.values())
    assert (tmp_path / "slurm" / ".submitit").is_dir()
    print(f"SLURM multirun of 3 cells: {time.monotonic() - t0:.1f} s")


@requires_slurm
def test_preempted_task_checkpoints_requeues_and_resumes(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "model.width=8",
        "train.epochs=30",
        "train.batch_size=16",
        "train.checkpoint_every=1",
        "train.vectorize=off",
        *SLURM,
        "hydra.sweep.dir=sweep",
    ]
    proc = subprocess.Popen(
        [LANDSCAPE, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        seed_dir: list[Path] = []

        def training_seed_1() -> bool:
            found = list(sweep.glob("cells/*/seeds/1/checkpoint.pt"))
            seed_dir[:] = [p.parents[1] for p in found]
            assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
            return bool(found)

        wait_for(training_seed_1, 120, "seed 1 of the cell to write its first checkpoint")
        cell_dir = seed_dir[0].parent
        seed0 = cell_dir / "seeds" / "0" / "result.json"
        seed0_mtime = seed0.stat().st_mtime_ns
        job_id = json.loads((cell_dir / "status.json").read_text())["slurm_job_id"]
        # what SLURM sends before a preemption or the time limit (--signal=USR2@signal_delay_s)
        subprocess.run(["scancel", "--signal=USR2", str(job_id)], check=True, timeout=30)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]

    status = json.loads((cell_dir / "status.json").read_text())
    assert status["state"] == "done" and status["attempts"] == 2
    assert seed0.stat().st_mtime_ns == seed0_mtime  # the trained seed was loaded, not retrained
    seed1 = json.loads((cell_dir / "seeds" / "1" / "result.json").read_text())
    assert seed1["resumed_from_epoch"] > 0 and seed1["epochs"] == 30
    logs = "".join(p.read_text() for p in cell_dir.glob("*.log"))  # the job's log, both attempts
    assert "cell checkpointed (stopped at epoch" in logs and "Requeued job" in logs
    assert "seed 1: resumed at epoch" in logs
    table = rows(sweep)
    assert sorted(table["seed"]) == [0, 1] and set(table["status"]) == {"done"}
    assert table.set_index("seed").loc[1, "training.resumed"]
    assert sweep_report(sweep).counts["done"] == 1


@requires_slurm
def test_failing_cell_is_reported_while_the_others_finish(tmp_path):
    from helpers import write_tiny_cifar10

    good = write_tiny_cifar10(tmp_path / "good")
    bad = write_tiny_cifar10(tmp_path / "bad")
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "data=cifar10",
        f"data.root={good},{bad}",
        "model.width=8",
        "train.epochs=2",
        "train.batch_size=10",
        *SLURM,
        "hydra.sweep.dir=sweep",
    ]
    proc = subprocess.Popen(
        [LANDSCAPE, *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for(lambda: any((sweep / "launches").glob("*.json")), 60, "the launch record")
        for f in bad.iterdir():  # planned and validated, then the data disappears before the job reads it
            f.unlink()
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0  # a failed cell fails the multirun ...

    rep = sweep_report(sweep)  # ... and the files say which one and why
    assert rep.counts["done"] == 1 and rep.counts["failed"] == 1, (rep.counts, output[-3000:])
    failed = next(c for c in rep.cells if c.state == "failed")
    assert f"data.root={bad}" in " ".join(failed.overrides)
    assert "data_batch_1" in failed.error
    assert rep.rerun is not None and "hydra/launcher=slurm" in rep.rerun
    status_cli = subprocess.run(
        [str(Path(sys.executable).with_name("landscape-status")), str(sweep)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "failed 1" in status_cli.stdout and failed.error in status_cli.stdout and rep.rerun in status_cli.stdout
    assert len(rows(sweep)) == 2  # the good cell's two seeds


@pytest.mark.slow
@requires_slurm
def test_time_limit_signal_checkpoints_and_requeues(tmp_path):
    """The real time-limit path: --time=1 min, --signal=USR2@45 (delivered at SLURM's ~30 s limit check).

    The cell must outlast that first check on any machine: 1000 epochs are ~40 s of training on an idle core
    (150 epochs, ~6 s, finished before the signal once the machine was quiet), and a busy or slow machine only
    adds attempts (up to max_num_timeout: a 3x slower machine trained ~130 epochs per 30-s attempt, after ~19 s
    of start-up and resume, so the two seeds needed ~16 attempts)."""
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "model.width=8",
        "train.epochs=1000",
        "train.batch_size=16",
        "train.vectorize=off",
        *SLURM,
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=45",
        "hydra.launcher.max_num_timeout=40",
        "hydra.sweep.dir=sweep",
    ]
    landscape(args, tmp_path, timeout=1500)
    (cell_dir,) = list((sweep / "cells").glob("*/status.json"))
    status = json.loads(cell_dir.read_text())
    assert status["state"] == "done" and status["attempts"] >= 2
    logs = "".join(p.read_text() for p in cell_dir.parent.glob("*.log"))
    assert "cell checkpointed (stopped at epoch" in logs and "Requeued job" in logs
    table = rows(sweep)
    assert sorted(table["seed"]) == [0, 1] and table["training.epochs"].tolist() == [1000, 1000]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
