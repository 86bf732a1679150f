"""``hydra/launcher=local``: cells run as concurrent local processes through submitit, CPU when no GPU."""

from __future__ import annotations

import json
import os

import pandas as pd
import torch
from conftest import FAST, run_cli


def test_local_launcher_runs_cells_in_parallel_processes(tmp_path):
    out = run_cli(["-m", *FAST, "train.epochs=1", "model.width=4,8", "hydra/launcher=local",
                   "hydra.launcher.max_parallel=2", "hydra.sweep.dir=sweep"], tmp_path)
    assert "running 2 cells locally, at most 2 at a time" in out.stderr + out.stdout
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / "cells").glob("*/status.json")]
    assert len(statuses) == 2 and all(s["state"] == "done" for s in statuses)
    pids = {s["pid"] for s in statuses}
    assert len(pids) == 2 and os.getpid() not in pids  # one process per cell, not the launcher's
    rows = pd.read_parquet(tmp_path / "sweep" / "results" / "models")
    assert len(rows) == 4
    if not torch.cuda.is_available():
        assert set(rows["device"]) == {"cpu"}
    assert (tmp_path / "sweep" / ".submitit").is_dir()
