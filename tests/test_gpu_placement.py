"""Several cells per GPU (issue 23): the choice of ``cells_per_gpu`` from a cell's memory and compute estimate,
the worker slot -> GPU mapping, and a real pool of worker processes on fake GPUs (``LANDSCAPE_GPU_COUNT``) that
puts each cell on the GPU of its worker and never lets a GPU's running cells hold more than one GPU."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import subprocess
import time

import cloudpickle
import pytest
from conftest import FAST, run_cli
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from slurm_support import LANDSCAPE, SLURM, SMALL, landscape, requires_slurm, rows, wait_for

from landscape import placement
from landscape.launching import CellSlurmLauncher, _WorkerPool


def _cell(width: int, batch: int, dataset: str = "cifar10", model: str = "resnet18", vectorize: str = "auto"):
    return OmegaConf.create(
        {
            "data": {"name": dataset, "subsample": 1.0},
            "model": {"name": model, "width": width, "depth": 2, "activation": "relu", "batch_norm": True},
            "train": {"batch_size": batch, "seeds": [0, 1, 2, 3, 4], "vectorize": vectorize},
        }
    )


# ------------------------------------------------------------------------------------------- pure rules
def test_gpu_count_is_injectable_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.setenv(placement.GPU_COUNT_ENV, "3")
    assert placement.gpu_count() == 3
    monkeypatch.setenv(placement.GPU_COUNT_ENV, "two")
    with pytest.raises(ValueError, match="LANDSCAPE_GPU_COUNT='two': expected a number of GPUs"):
        placement.gpu_count()


def test_slots_go_round_robin_over_the_visible_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [placement.gpu_of_slot(s, 3) for s in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert placement.visible_gpus(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # e.g. SLURM's allocation: its ids, not 0..n-1
    assert placement.visible_gpus(2) == ["4", "6"]
    with pytest.raises(ValueError, match="n_gpus=0"):
        placement.gpu_of_slot(0, 0)


@pytest.mark.parametrize("value", [0, -1, "two", 1.5, "3x"])
def test_a_bad_cells_per_gpu_is_refused_naming_key_value_and_what_is_allowed(value):
    with pytest.raises(ValueError, match=r"hydra\.launcher\.cells_per_gpu=.*expected auto or an integer >= 1"):
        placement.parse_cells_per_gpu(value)
    assert placement.parse_cells_per_gpu("auto") is None and placement.parse_cells_per_gpu(4) == 4


def test_auto_packs_small_resnets_and_gives_big_ones_a_gpu_alone():
    """The FLOPs are counted exactly on the meta device (a ResNet18's training step is ~3x its forward's) and
    the choice follows the documented bounds: compute (small step -> many cells), memory, at most 8."""
    gpu = 80 * 10**9
    n64, flops64, acts64 = placement.model_flops_and_activations(_cell(64, 1).model, (3, 32, 32), 10)
    assert n64 == 11_173_962  # the CIFAR ResNet18
    assert 3.0e9 < flops64 < 3.6e9  # forward ~1.11 GFLOP (2 per multiply-add) + backward ~2x
    k = {
        (w, b): placement.auto_cells_per_gpu(placement.cell_demand(_cell(w, b)), gpu)
        for w in (4, 16, 64, 128)
        for b in (16, 128, 1024)
    }
    assert k[(4, 16)] == k[(4, 128)] == k[(16, 128)] == placement.MAX_AUTO_CELLS_PER_GPU
    assert k[(64, 128)] == k[(128, 128)] == k[(128, 1024)] == 1
    assert k[(64, 16)] == int(placement.SATURATING_STEP_FLOPS // (flops64 * 16))
    for w in (4, 16, 64):  # never more cells for a wider model or a larger batch
        assert k[(w, 16)] >= k[(w, 128)] >= k[(w, 1024)]
    # memory bound: a small GPU holds fewer small cells
    d = placement.cell_demand(_cell(4, 128))
    assert placement.auto_cells_per_gpu(d, int(3.5 * 2**30)) == int(
        0.8 * 3.5 * 2**30 // (d.bytes + placement.CONTEXT_BYTES)
    )
    assert placement.auto_cells_per_gpu(None, gpu) == 1  # unknown dataset: a GPU alone


def test_place_fixed_and_auto_and_the_cpu_cap():
    p = placement.place(None, 3, 5, 80 * 10**9)
    assert p.workers_per_gpu == 3 and p.shares == [pytest.approx(1 / 3)] * 5
    cfgs = [_cell(4, 128), _cell(64, 128), _cell(64, 16)]
    a = placement.place(cfgs, "auto", 3, 80 * 10**9)
    k16 = placement.auto_cells_per_gpu(placement.cell_demand(cfgs[2]), 80 * 10**9)
    assert a.workers_per_gpu == 8 and a.shares == [1 / 8, 1.0, pytest.approx(1 / k16)]
    capped = placement.place(cfgs, "auto", 3, 80 * 10**9, max_workers_per_gpu=2)
    assert capped.workers_per_gpu == 2 and capped.shares == [0.5, 1.0, 0.5]
    assert placement.max_workers_per_gpu(8, 1, 64) == 8 and placement.max_workers_per_gpu(8, 2, 4) == 1


def test_pick_starts_only_cells_that_fit_their_gpu():
    shares = [1.0, 0.5, 0.25, 0.25]
    assert placement.pick([0, 1], shares, 0.0) == 0  # an idle GPU takes any cell, a big one too
    assert placement.pick([0, 1, 2], shares, 0.5) == 1  # the first that fits: 0.5 + 0.5
    assert placement.pick([0, 1], shares, 0.75) is None  # nothing fits: the worker waits
    assert placement.pick([0, 3], shares, 0.75) == 3
    assert placement.pick([2], None, 5.0) == 2  # no GPU: no shares, the next cell


def test_slurm_task_gpus_and_cells_per_task(monkeypatch):
    monkeypatch.delenv(placement.GPU_COUNT_ENV, raising=False)
    assert placement.task_gpus({"gpus_per_task": 2}) == 2
    assert placement.task_gpus({"gpus_per_node": 8, "tasks_per_node": 4}) == 2
    assert placement.task_gpus({"gres": "gpu:h100:4"}) == 4
    assert placement.task_gpus({}) == 0
    monkeypatch.setenv(placement.GPU_COUNT_ENV, "1")
    assert placement.task_gpus({}) == 1  # fake devices (tests)
    launcher = CellSlurmLauncher(
        submitit_folder="x", gpus_per_task=2, cpus_per_task=8, cells_per_gpu=3, array_parallelism=256
    )
    gpus, place = launcher.task_placement([["model.width=4"]] * 10)
    assert gpus == 2 and place.workers_per_gpu == 3 and place.shares == [pytest.approx(1 / 3)] * 10
    assert launcher.cells_per_task(10, gpus * place.workers_per_gpu) == 6  # one task's 6 workers all busy
    assert launcher.cells_per_task(4, 6) == 4 and launcher.cells_per_task(2000, 6) == 8  # ceil(2000 / 256)
    with pytest.raises(ValueError, match=r"hydra\.launcher\.cells_per_gpu='many'"):
        CellSlurmLauncher(submitit_folder="x", cells_per_gpu="many")
    with pytest.raises(ValueError, match=r"hydra\.launcher\.gpu_memory_gb=-1: expected null .* or a number of GB > 0"):
        CellSlurmLauncher(submitit_folder="x", gpu_memory_gb=-1)


# ------------------------------------------------------------------------------- a real pool, fake GPUs
class _FakeLauncher:
    """Stands for the launcher in a pool worker: a 'cell' records its worker, its CUDA_VISIBLE_DEVICES and
    when it ran."""

    def run_in_worker(self, overrides, key, num):
        from landscape.launching import _WORKER

        start = time.monotonic()
        time.sleep(0.4)
        ret = JobReturn()
        ret.status = JobStatus.COMPLETED
        ret.return_value = {
            "num": num,
            "slot": _WORKER["slot"],
            "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "start": start,
            "end": time.monotonic(),
        }
        return ret


def test_a_real_pool_puts_each_cell_on_its_workers_gpu_within_the_gpus_shares(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # the launcher's two (fake) GPUs
    shares = [1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 1.0]
    pool = _WorkerPool(mp.get_context("fork"), 4, cloudpickle.dumps((_FakeLauncher(), {})), 2, shares)
    try:
        results = pool.run([([f"cell={i}"], "hydra.sweep.dir", i) for i in range(len(shares))])
    finally:
        pool.close()
    runs = [r.return_value for r in results]
    assert [r["num"] for r in runs] == list(range(len(shares)))
    assert {r["slot"] for r in runs} == {0, 1, 2, 3}
    for r in runs:  # worker s sees the launcher's GPU s mod 2, and only it
        assert r["gpu"] == ["5", "7"][r["slot"] % 2], r
    for gpu in ("5", "7"):  # at every start of a cell, the cells running on its GPU hold at most one GPU
        on = [r for r in runs if r["gpu"] == gpu]
        for r in on:
            load = sum(shares[o["num"]] for o in on if o["start"] <= r["start"] < o["end"])
            assert load <= 1.0 + 1e-9, (gpu, r, on)
    overlapping = [
        (a["num"], b["num"])
        for a in runs
        for b in runs
        if a["num"] < b["num"] and a["gpu"] == b["gpu"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert overlapping  # several cells did share a GPU
    assert all(shares[a] < 1 and shares[b] < 1 for a, b in overlapping)  # never a whole-GPU cell


def test_the_local_launcher_places_cells_on_fake_gpus_end_to_end(tmp_path, monkeypatch):
    """Two fake GPUs, two cells per GPU: four workers, each cell logged on the GPU of its worker (slot mod 2),
    the cells run to the end on the CPU (a fake GPU is no CUDA device)."""
    monkeypatch.setenv(placement.GPU_COUNT_ENV, "2")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = run_cli(
        [
            "-m",
            *FAST,
            "train.epochs=1",
            "model.width=4,6,8,10",
            "hydra/launcher=local",
            "hydra.launcher.cells_per_gpu=2",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    text = out.stdout + out.stderr
    assert "running 4 cells locally, at most 4 at a time" in text
    assert "2 GPU(s) x 2 worker(s) per GPU (cells_per_gpu=2)" in text
    placed = re.findall(r"cell #(\d+) on GPU (\d+) \(worker (\d+), pid (\d+)", text)
    assert sorted(int(n) for n, *_ in placed) == [0, 1, 2, 3]
    assert all(int(gpu) == int(slot) % 2 for _, gpu, slot, _ in placed)
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / "cells").glob("*/status.json")]
    assert len(statuses) == 4 and all(s["state"] == "done" for s in statuses)
    assert {s["pid"] for s in statuses} == {int(pid) for *_, pid in placed}


# ------------------------------------------------------------------------------------------ on SLURM
@requires_slurm
def test_a_slurm_task_runs_its_cells_at_once_on_its_fake_gpu(tmp_path, monkeypatch):
    """One (fake) GPU per task, two cells per GPU: 4 cells in 2 tasks (``cells_per_task=auto`` is at least the
    task's 2 workers), each task running its 2 cells at once in 2 worker processes forked from it. The cells
    train for 600 epochs (~0.5 s per 100 alone) so that each lasts seconds, far longer than the workers'
    start-up stagger (0.3 s measured under load): with 3-epoch cells one could end before the other began."""
    monkeypatch.setenv(placement.GPU_COUNT_ENV, "1")  # exported to the tasks by sbatch
    out = landscape(
        ["-m", *SMALL, "train.epochs=600", "train.batch_size=32,64", "model.width=6,8", *SLURM]
        + ["hydra.launcher.cells_per_gpu=2", "hydra.sweep.dir=sweep"],
        tmp_path,
        timeout=600,
    )
    text = out.stdout + out.stderr
    assert "submitted 4 cells as 1 SLURM array(s)" in text and "(2 cell(s) per task)" in text, text[-3000:]
    assert "1 GPU(s) x 2 worker(s) per GPU (cells_per_gpu=2) per task" in text
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / "cells").glob("*/status.json")]
    assert len(statuses) == 4 and all(s["state"] == "done" for s in statuses)
    tasks: dict[str, set[int]] = {}
    for s in statuses:
        tasks.setdefault(s["slurm_job_id"], set()).add(s["pid"])
    assert len(tasks) == 2 and all(len(pids) == 2 for pids in tasks.values()), tasks  # two workers per task
    tasks_logs = [sorted(d.glob("*_log.*")) for d in (tmp_path / "sweep" / ".submitit").iterdir()]
    assert len([logs for logs in tasks_logs if logs]) == 2
    stamp = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
    for logs in filter(None, tasks_logs):  # in each task both cells started before either ended (log times)
        lines = [ln for log in logs for ln in log.read_text().splitlines()]

        def times(pattern: str, lines=lines) -> list[str]:
            return sorted(stamp.match(ln).group(1) for ln in lines if stamp.match(ln) and re.search(pattern, ln))

        starts, ends = times(r"cell \w+ start:"), times(r"cell \w+ done in")
        assert len(starts) == len(ends) == 2 and max(starts) < min(ends), (starts, ends)
    assert len(rows(tmp_path / "sweep")) == 8


@pytest.mark.slow  # 21 s; make test-all runs it (the default run keeps SLURM preemption of a one-cell task and a
# signal to the local pool: test_slurm_sweep.py, test_local_launcher.py)
@requires_slurm
def test_a_preempted_slurm_task_checkpoints_every_cell_of_its_pool_and_resumes_them(tmp_path, monkeypatch):
    """USR2 (what SLURM sends before a preemption) to a task running 2 cells at once on its (fake) GPU: both
    workers checkpoint their cell, the task is requeued, and both cells resume from their checkpoints."""
    monkeypatch.setenv(placement.GPU_COUNT_ENV, "1")
    sweep = tmp_path / "sweep"
    args = ["-m", "model.width=8", "model.depth=1,2", "train.epochs=30", "train.batch_size=16"]
    args += ["train.checkpoint_every=1", "train.seeds=[0]", "metrics.l2.enabled=false", *SLURM]
    args += ["hydra.launcher.cells_per_gpu=2", "hydra.sweep.dir=sweep"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [LANDSCAPE, *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    try:
        wait_for(lambda: len(list(sweep.glob("cells/*/seeds/0/checkpoint.pt"))) == 2, 120, "both cells to checkpoint")
        (job_id,) = {json.loads(p.read_text())["slurm_job_id"] for p in sweep.glob("cells/*/status.json")}
        subprocess.run(["scancel", "--signal=USR2", str(job_id)], check=True, timeout=30)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    statuses = [json.loads(p.read_text()) for p in sweep.glob("cells/*/status.json")]
    assert len(statuses) == 2 and all(s["state"] == "done" and s["attempts"] == 2 for s in statuses), statuses
    for cell in sweep.glob("cells/*"):
        seed = json.loads((cell / "seeds" / "0" / "result.json").read_text())
        assert seed["resumed_from_epoch"] > 0 and seed["epochs"] == 30
