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
import pytest

from landscape.cli.status import sweep_report

GRID = [
    "-m",
    "model.width=4,8,16,32",
    "data.subsample=0.5",
    "train.epochs=12",
    "train.batch_size=32",
    "train.checkpoint_every=1",
    "sweep_name=killme",
    "hydra.sweep.dir=sweep",
]


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "landscape.cli.app", *GRID],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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


TRAIN_SCRIPT = r"""
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from omegaconf import OmegaConf
from landscape.config import TrainConfig, data_config, model_config
from landscape.data import load_data
from landscape.models import build_model
from landscape.training import TrainSettings, train_model
from landscape.vectorized import train_together

mode, root = sys.argv[1], Path(sys.argv[2])
data = load_data(OmegaConf.structured(data_config(subsample=0.5)))
mcfg = OmegaConf.structured(model_config(width=32))
s = TrainSettings.from_config(OmegaConf.structured(TrainConfig(epochs=40, batch_size=32, checkpoint_every=1,
                                                               schedule="cosine", weight_decay=1e-3)), data.n_train)
models = {k: build_model(mcfg, data.input_shape, 10, seed=k) for k in (0, 1)}
if mode == "serial":
    for k, m in models.items():
        train_model(m, data.x_train, data.y_train, s, k, root / str(k))
else:
    train_together(models, data.x_train, data.y_train, s, {k: root / str(k) for k in models}, root / "group")
"""


def _run_training(mode: str, root: Path, kills: int, seed: int) -> None:
    """Run the training script, SIGKILL it ``kills`` times at random moments after a checkpoint appeared, then
    let it finish."""
    import random

    rng = random.Random(seed)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ckpts = [root / "0" / "checkpoint.pt", root / "1" / "checkpoint.pt", root / "group" / "checkpoint.pt"]
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, mode, str(root)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        before = {p: p.stat().st_mtime_ns if p.exists() else None for p in ckpts}
        while proc.poll() is None and time.monotonic() < deadline:  # wait for a new checkpoint, then kill soon
            if any(p.exists() and p.stat().st_mtime_ns != before[p] for p in ckpts):
                time.sleep(rng.uniform(0.0, 0.4))
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait()
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, mode, str(root)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_at_random_moments_of_training_resumes_bitwise(tmp_path):
    import torch

    for mode in ("serial", "together"):
        resumed: list[int] = []
        _run_training(mode, tmp_path / mode / "ref", kills=0, seed=0)
        _run_training(mode, tmp_path / mode / "run", kills=3, seed=1)
        for k in (0, 1):
            ref = torch.load(tmp_path / mode / "ref" / str(k) / "final.pt", weights_only=True)
            run = torch.load(tmp_path / mode / "run" / str(k) / "final.pt", weights_only=True)
            assert ref.keys() == run.keys() and all(torch.equal(ref[n], run[n]) for n in ref), (mode, k)
            a = json.loads((tmp_path / mode / "ref" / str(k) / "result.json").read_text())
            b = json.loads((tmp_path / mode / "run" / str(k) / "result.json").read_text())
            assert a["history"] == b["history"] and a["steps"] == b["steps"], (mode, k)
            resumed.append(b["resumed_from_epoch"])
        assert any(r > 0 for r in resumed), (mode, resumed)  # the kills landed mid-training
