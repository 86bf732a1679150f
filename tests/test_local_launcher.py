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
    out = run_cli(
        [
            "-m",
            *FAST,
            "train.epochs=1",
            "model.width=4,6,8,10",
            "hydra/launcher=local",
            "hydra.launcher.max_parallel=2",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
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
    again = run_cli(
        [
            "-m",
            *FAST,
            "train.epochs=1",
            "model.width=4,6,8,10",
            "hydra/launcher=local",
            "hydra.launcher.max_parallel=2",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    assert "nothing to launch" in again.stderr + again.stdout


def test_a_signal_checkpoints_the_running_cells_and_the_same_command_resumes(tmp_path):
    args = [
        "-m",
        "data.subsample=0.25",
        "model.width=8",
        "train.batch_size=8",
        "train.epochs=40",
        "train.checkpoint_every=1",
        "train.seeds=[0]",
        "metrics.l2.enabled=false",
        "model.depth=1,2",
        "hydra/launcher=local",
        "hydra.launcher.max_parallel=2",
        "hydra.sweep.dir=sweep",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [*LANDSCAPE, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
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
    done = run_cli([a if not a.startswith("train.epochs=") else "train.epochs=40" for a in args], tmp_path, timeout=600)
    assert all(s["state"] == "done" for s in _statuses(sweep))
    assert done.stdout.count("resumed at epoch") + done.stderr.count("resumed at epoch") >= 2


def test_job_composer_gives_hydras_job_config():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import landscape.cli.app as app
    from landscape.launching import JobComposer

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
        except Exception as exc:  # noqa: BLE001 - a typo is refused as by Hydra
            assert "widht" in str(exc)
        else:
            raise AssertionError("a misspelt key was accepted")
        # from the planner's verified composer (what a forked worker inherits): no Hydra compose at all
        from landscape.cli.sweeper import CellComposer

        planner = CellComposer(master, loader)
        assert planner.verify(jobs, 3) and len(planner.verified) == 3
        made = planner.n_full
        inherited = JobComposer(master, loader, planner)
        for ov in jobs:
            fast = OmegaConf.to_container(inherited.compose(ov))
            assert fast == OmegaConf.to_container(loader.load_sweep_config(master, ov)), ov
        assert inherited.n_checks == 0 and planner.n_full == made == 3


def test_spawned_workers_run_cells_too(tmp_path):
    run_cli(
        [
            "-m",
            *FAST,
            "train.epochs=1",
            "model.width=4,8",
            "hydra/launcher=local",
            "hydra.launcher.max_parallel=2",
            "hydra.launcher.start_method=spawn",
            "hydra.sweep.dir=sweep",
        ],
        tmp_path,
    )
    statuses = _statuses(tmp_path / "sweep")
    assert len(statuses) == 2 and all(s["state"] == "done" for s in statuses)
    bad = run_cli(
        [
            "-m",
            *FAST,
            "model.width=4,8",
            "hydra/launcher=local",
            "hydra.launcher.start_method=teleport",
            "hydra.sweep.dir=bad",
        ],
        tmp_path,
        check=False,
    )
    assert bad.returncode != 0 and "hydra.launcher.start_method='teleport'" in bad.stdout + bad.stderr


SPY = """
import gc, json, os, sys
import landscape.job as job

real = job.run_cell
out = sys.argv[1]


def spy(*args, **kwargs):  # records, in the process that runs the cell, the collector's state and the composer
    from landscape.launching import _WORKER

    comp = _WORKER.get("composer")
    with open(out, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count(),
                            "planner": comp is not None and comp.cells is _WORKER.get("planner"),
                            "n_full": comp.n_full if comp is not None else None}) + "\\n")
    return real(*args, **kwargs)


job.run_cell = spy
from landscape.cli.app import run

sys.argv = ["landscape", *sys.argv[2:]]
run()
"""


def test_cells_run_with_the_collector_on_and_the_start_up_frozen(tmp_path):
    # `landscape` starts with the garbage collector off (faster start-up) and must turn it on before any cell
    # runs, in every way a cell is run: one cell, a grid in one process, a pool of forked workers. A cell run
    # with the collector off would leak every reference cycle of a long sweep.
    script = tmp_path / "spy.py"
    script.write_text(SPY)
    runs = {
        "single": [*FAST, "train.epochs=1", "hydra.run.dir=one"],
        "basic": ["-m", *FAST, "train.epochs=1", "model.width=4,6", "hydra/launcher=basic", "hydra.sweep.dir=b"],
        "pool": [
            "-m",
            *FAST,
            "train.epochs=1",
            "model.width=4,6",
            "hydra/launcher=local",
            "hydra.launcher.max_parallel=2",
            "hydra.sweep.dir=p",
        ],
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name, args in runs.items():
        seen = tmp_path / f"{name}.jsonl"
        proc = subprocess.run(
            [LANDSCAPE[0], str(script), str(seen), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        records = [json.loads(line) for line in seen.read_text().splitlines()]
        assert len(records) == (1 if name == "single" else 2), (name, records)
        assert all(r["enabled"] for r in records), (name, records)
        assert all(r["frozen"] > 100_000 for r in records), (name, records)  # torch & co. in the permanent generation
        if name == "pool":
            assert len({r["pid"] for r in records}) == 2
            # each forked worker composes from the planner's verified compositions: not one Hydra compose of its own
            assert all(r["planner"] and r["n_full"] == 1 for r in records), records


def test_startup_done_freezes_once_and_leaves_a_running_collector_alone():
    code = (
        "import gc\nfrom landscape.cli.app import startup_done\n"
        "startup_done(); assert gc.isenabled() and gc.get_freeze_count() == 0\n"
        "gc.disable(); startup_done(); n = gc.get_freeze_count(); assert gc.isenabled() and n > 0\n"
        "junk = [[] for _ in range(1000)]; startup_done(); assert gc.get_freeze_count() == n\n"
    )
    proc = subprocess.run([LANDSCAPE[0], "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_job_view_that_differs_from_hydras_turns_the_fast_path_off(monkeypatch):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import landscape.cli.app as app
    from landscape.cli.sweeper import CellComposer
    from landscape.launching import JobComposer

    real = CellComposer.job

    def wrong(self, overrides):  # e.g. a Hydra version that records the task overrides differently
        cfg = real(self, overrides)
        cfg.hydra.job.override_dirname = "something else"
        return cfg

    monkeypatch.setattr(CellComposer, "job", wrong)
    with initialize_config_dir(config_dir=str(app.CONF_DIR), version_base="1.3"):
        master = compose("config", overrides=["hydra.sweep.dir=somewhere"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        jobs = [[f"model.width={w}"] for w in (4, 8)]
        planner = CellComposer(master, loader)
        assert not planner.verify(jobs, 3) and not planner.fast and not planner.verified
        jc = JobComposer(master, loader)  # a worker's own check catches it too, and serves Hydra's compose
        cfg = jc.compose(jobs[0])
        assert not jc.fast and cfg.hydra.job.override_dirname == "model.width=4"
