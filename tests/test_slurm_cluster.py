"""The local SLURM cluster of scripts/slurm_cluster.sh does what the launcher and resume tests rely on.

Each test submits real jobs; all are skipped with a reason where no cluster is reachable (see
tests/slurm_support.py). Job ids restart at 1 on a fresh cluster, so every test uses its own tmp_path.
"""

from __future__ import annotations

import operator
import subprocess
from pathlib import Path

import pytest
from slurm_support import (
    PARTITION,
    queue_state,
    requires_slurm,
    sacct_states,
    sbatch,
    wait_for,
    wait_for_states,
)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@requires_slurm
def test_wrap_job_runs_and_sacct_reports_completed(tmp_path: Path) -> None:
    job = sbatch(["-o", "%j.out", "--wrap", "echo $((6 * 7)) > answer.txt"], cwd=tmp_path)
    states = wait_for_states(job, timeout_s=60)
    assert states == {str(job): "COMPLETED"}
    assert _lines(tmp_path / "answer.txt") == ["42"]


@requires_slurm
def test_failing_job_is_reported_failed(tmp_path: Path) -> None:
    job = sbatch(["-o", "%j.out", "--wrap", "exit 3"], cwd=tmp_path)
    assert wait_for_states(job, timeout_s=60) == {str(job): "FAILED"}


@requires_slurm
def test_array_job_runs_every_task(tmp_path: Path) -> None:
    job = sbatch(
        ["--array=0-3", "-o", "%A_%a.out", "--wrap", "echo $SLURM_ARRAY_TASK_ID > task_$SLURM_ARRAY_TASK_ID"],
        cwd=tmp_path,
    )
    states = wait_for_states(job, n_allocations=4, timeout_s=90)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    for i in range(4):
        assert _lines(tmp_path / f"task_{i}") == [str(i)]


@requires_slurm
def test_array_larger_than_max_array_size_is_refused(tmp_path: Path) -> None:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    max_array = int(next(line.split("=")[1] for line in config.splitlines() if line.startswith("MaxArraySize")))
    # indices 0..MaxArraySize-1 are allowed, MaxArraySize itself is not: a launcher must chunk above it
    proc = subprocess.run(
        ["sbatch", "--parsable", "--hold", f"--chdir={tmp_path}", f"--array={max_array}", "--wrap", "true"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "array" in proc.stderr.lower()


@requires_slurm
def test_scancel_of_running_job_ends_cancelled_in_accounting(tmp_path: Path) -> None:
    job = sbatch(["-o", "%j.out", "--wrap", "sleep 120"], cwd=tmp_path)
    wait_for(lambda: queue_state(job) == "RUNNING", 60, f"job {job} to start")
    subprocess.run(["scancel", str(job)], check=True)
    assert wait_for_states(job, timeout_s=60) == {str(job): "CANCELLED"}


# the test cluster itself (12 s); the project's requeue path is in test_slurm_sweep, run by default
@pytest.mark.slow
@requires_slurm
def test_scontrol_requeue_restarts_running_batch_job(tmp_path: Path) -> None:
    # first run records restart count 0 and sleeps; after the requeue the second run records 1 and exits
    script = 'echo "${SLURM_RESTART_COUNT:-0}" >> runs.txt; if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 120; fi'
    job = sbatch(["-o", "%j.out", "--wrap", script], cwd=tmp_path)
    runs = tmp_path / "runs.txt"
    wait_for(lambda: _lines(runs) == ["0"], 60, f"job {job} to start")
    subprocess.run(["scontrol", "requeue", str(job)], check=True)
    # a requeued job waits AuthInfo cred_expire (10 s in this cluster) before it may start again
    wait_for(lambda: sacct_states(job).get(str(job)) == "COMPLETED", 90, f"requeued job {job} to complete")
    assert _lines(runs) == ["0", "1"]
    history = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-D", "-j", str(job), "-o", "State"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert history == ["REQUEUED", "COMPLETED"]


# the test cluster's --signal (5-30 s of waiting for the controller's time-limit check); the project's USR2
# handling is in test_slurm_sweep and test_gpu_placement, run by default
@pytest.mark.slow
@requires_slurm
def test_signal_reaches_batch_script_before_time_limit(tmp_path: Path) -> None:
    # --time=1 with a 90 s warning: the controller sends USR2 at its next time-limit check (every <= 30 s)
    script = "trap 'echo USR2 > signal.txt; exit 0' USR2; sleep 100 & wait"
    job = sbatch(["-o", "%j.out", "--time=1", "--signal=B:USR2@90", "--wrap", script], cwd=tmp_path)
    assert wait_for_states(job, timeout_s=75) == {str(job): "COMPLETED"}
    assert _lines(tmp_path / "signal.txt") == ["USR2"]


@requires_slurm
def test_submitit_submit_and_map_array_return_results(tmp_path: Path) -> None:
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit")
    assert executor.cluster == "slurm"
    executor.update_parameters(slurm_partition=PARTITION, timeout_min=5, cpus_per_task=1)
    # stdlib callables: the job's interpreter unpickles them without the tests directory on sys.path
    job = executor.submit(operator.add, 2, 3)
    jobs = executor.map_array(operator.mul, [1, 2, 3], [4, 5, 6])
    wait_for(lambda: all(j.done() for j in [job, *jobs]), 120, "submitit jobs to finish")
    assert job.result() == 5
    assert [j.result() for j in jobs] == [4, 10, 18]
    assert len({j.job_id.split("_")[0] for j in jobs}) == 1  # one array job, three tasks
    assert wait_for_states(jobs[0].job_id.split("_")[0], n_allocations=3, timeout_s=30) == {
        j.job_id: "COMPLETED" for j in jobs
    }
