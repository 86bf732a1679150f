"""``hydra/launcher=local``: cells run in a pool of warm worker processes (many cells per worker), CPU when no
GPU; a signal to the launcher checkpoints the running cells, and the same command resumes them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pandas as pd
import torch
from conftest import FAST, LANDSCAPE, run_cli


def _statuses(sweep):
    return [json.loads(p.read_text()) for p in (sweep / "cells").glob("*/status.json")]


def test_local_launcher_runs_cells_in_warm_worker_processes(tmp_path):
    out = run_cli(["-m", *FAST, "train.epochs=1", "model.width=4,6,8,10", "hydra/launcher=local",
                   "hydra.launcher.max_parallel=2", "hydra.sweep.dir=sweep"], tmp_path)
    assert "running 4 cells locally, at most 2 at a time" in out.stderr + out.stdout
    statuses = _statuses(tmp_path / "sweep")
    assert len(statuses) == 4 and all(s["state"] == "done" for s in statuses)
    pids = {s["pid"] for s in statuses}
    assert len(pids) == 2 and os.getpid() not in pids  # two workers, each ran two cells
    rows = pd.read_parquet(tmp_path / "sweep" / "results" / "models")
    assert len(rows) == 8
    if not torch.cuda.is_available():
        assert set(rows["device"]) == {"cpu"}
    # a second launch skips the done cells
    again = run_cli(["-m", *FAST, "train.epochs=1", "model.width=4,6,8,10", "hydra/launcher=local",
                     "hydra.launcher.max_parallel=2", "hydra.sweep.dir=sweep"], tmp_path)
    assert "nothing to launch" in again.stderr + again.stdout


def test_a_signal_checkpoints_the_running_cells_and_the_same_command_resumes(tmp_path):
    args = ["-m", "data.subsample=0.25", "model.width=8", "train.batch_size=8", "train.epochs=40",
            "train.checkpoint_every=1", "train.seeds=[0]", "metrics.l2.enabled=false", "model.depth=1,2", "hydra/launcher=local",
            "hydra.launcher.max_parallel=2", "hydra.sweep.dir=sweep"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*LANDSCAPE, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    sweep = tmp_path / "sweep"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both cells training, with a checkpoint each
        if len(list(sweep.glob("cells/*/**/checkpoint.pt"))) >= 2:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("the cells did not start training: " + (proc.communicate()[0] or "")[-3000:])
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0, output[-3000:]
    assert "asking the workers to checkpoint and stop" in output
    statuses = _statuses(sweep)
    assert len(statuses) == 2
    assert all(s["state"] != "done" and "preempted" in (s["error"] or "") for s in statuses), statuses
    # the same command resumes both cells from their checkpoints (shorter: fewer epochs left)
    done = run_cli([a if not a.startswith("train.epochs=") else "train.epochs=40" for a in args], tmp_path,
                   timeout=600)
    assert all(s["state"] == "done" for s in _statuses(sweep))
    assert done.stdout.count("resumed at epoch") + done.stderr.count("resumed at epoch") >= 2


def test_job_composer_gives_hydras_job_config():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import landscape.cli.app as app
    from landscape.cli.launchers import JobComposer

    with initialize_config_dir(config_dir=str(app.CONF_DIR), version_base="1.3"):
        master = compose("config", overrides=["hydra.sweep.dir=somewhere"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        jc = JobComposer(master, loader)
        jobs = [[f"model.width={w}", f"train.lr={lr}"] for w in (4, 8) for lr in (0.1, 0.2)]
        jobs += [["model=cnn", f"model.width={w}"] for w in (4, 8, 16)]
        jobs += [["+sweep=demo", "model.width=8", "train.seeds=[0,1,2]"]]
        for ov in jobs:
            fast = OmegaConf.to_container(jc.compose(ov))
            assert fast == OmegaConf.to_container(loader.load_sweep_config(master, ov)), ov
        assert jc.fast and jc.n_full == 3 * 2  # one composition + one check per base, not per job
        try:
            jc.compose(["model.widht=3"])
        except Exception as exc:  # a typo is refused as by Hydra
            assert "widht" in str(exc)
        else:
            raise AssertionError("a misspelt key was accepted")


def test_spawned_workers_run_cells_too(tmp_path):
    run_cli(["-m", *FAST, "train.epochs=1", "model.width=4,8", "hydra/launcher=local", "hydra.launcher.max_parallel=2",
             "hydra.launcher.start_method=spawn", "hydra.sweep.dir=sweep"], tmp_path)
    statuses = _statuses(tmp_path / "sweep")
    assert len(statuses) == 2 and all(s["state"] == "done" for s in statuses)
    bad = run_cli(["-m", *FAST, "model.width=4,8", "hydra/launcher=local", "hydra.launcher.start_method=teleport",
                   "hydra.sweep.dir=bad"], tmp_path, check=False)
    assert bad.returncode != 0 and "hydra.launcher.start_method='teleport'" in bad.stdout + bad.stderr
