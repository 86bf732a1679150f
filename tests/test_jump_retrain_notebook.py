"""The jump-and-retrain label-noise sweep (sweeps/jump_retrain_noise.yaml) through the real CLI, shrunk on the
command line, then analysis/jump_retrain.py run as a script on its rows (issue 7: "a small sweep comparing well-
and poorly-generalising networks produces jump-and-retrain rows whose summaries differ, shown in the notebook")
and executed as a notebook by nbclient (issue 22)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from landscape.results import load
from notebook_support import execute_notebook, images
from notebook_support import stdout as nb_stdout

NOTEBOOK = REPO / "analysis" / "jump_retrain.py"

# The sweep's grid (label noise 0 vs 0.5) with everything else made small: one seed, a narrow MLP trained for
# a few epochs, 2 jumps at one scale retrained for one epoch, PCA embedding, a 5x5 surface.
TINY = ["train.seeds=[0]", "model.width=32", "train.epochs=8", "train.batch_size=64",
        "metrics.jump_retrain.n_jumps=2", "metrics.jump_retrain.scales=[0.5]", "metrics.jump_retrain.epochs=1",
        "metrics.jump_retrain.batch_size=128", "metrics.jump_retrain.record_every=2",
        "metrics.jump_retrain.eval_samples=256", "metrics.jump_retrain.projection_dim=64",
        "metrics.jump_retrain.embedding=pca", "metrics.surfaces.resolution=5", "metrics.surfaces.eval_samples=256"]

SUMMARIES = ["topology.h0_count", "topology.h0_total", "topology.h0_max", "topology.h0_entropy",
             "jump_retrain.final_train_loss", "jump_retrain.final_test_loss"]


def _sweep_and_notebook(cli, tmp_path, extra: list[str]):
    cli(["-m", "+sweep=jump_retrain_noise", "hydra.sweep.dir=sweep", *TINY, *extra], timeout=600)
    sweep = tmp_path / "sweep"
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, str(NOTEBOOK), str(sweep), str(out)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return sweep, out, proc.stdout


def _check(sweep, out, stdout):
    models = load(sweep, "models")
    assert (models["status"] == "done").all() and sorted(models["data.label_noise"].unique()) == [0.0, 0.5]
    by = models.groupby("data.label_noise").mean(numeric_only=True)
    # the noisy model fits the clean labels worse (it was shown half of them wrong), and its own labels worse too
    assert by.loc[0.5, "train_acc_clean"] < by.loc[0.0, "train_acc_clean"] - 0.05
    assert by.loc[0.5, "train_acc"] < by.loc[0.0, "train_acc"]
    # jump-and-retrain rows: every model has summaries, trajectories and loss/rips bars
    assert models[SUMMARIES].notna().all().all()
    traj, pers = load(sweep, "trajectories"), load(sweep, "persistence")
    assert set(traj["data.label_noise"]) == {0.0, 0.5} and set(pers["filtration"]) == {"loss", "rips"}
    points = traj.groupby(["cell_id", "seed"]).size()
    assert [points[(c, s)] for c, s in zip(models["cell_id"], models["seed"])] == models["jump_retrain.n_points"].tolist()
    # the summaries differ between the levels: retraining ends at a higher train loss for the memorising model
    # (its basin is on noisy labels) and the H0 summaries are not identical
    assert by.loc[0.5, "jump_retrain.final_train_loss"] > by.loc[0.0, "jump_retrain.final_train_loss"]
    h0 = by[["topology.h0_total", "topology.h0_max", "topology.h0_entropy"]]
    assert not np.allclose(h0.loc[0.0].to_numpy(), h0.loc[0.5].to_numpy(), rtol=1e-3)
    # the notebook printed the comparison and wrote the three figures (non-trivial PNGs)
    assert "summaries differ between label noise 0 and 0.5" in stdout, stdout[-3000:]
    assert "train_acc_clean" in stdout and "topology.h0_total" in stdout
    for name in ("embedding_train_loss.png", "persistence_diagrams.png", "loss_surface.png"):
        f = out / name
        assert f.exists() and f.stat().st_size > 2000, name
    assert "topology.h0_total" in (out / "topology_summary.csv").read_text()


def test_tiny_label_noise_sweep_gives_differing_topology_in_the_notebook(cli, tmp_path):
    sweep, out, stdout = _sweep_and_notebook(cli, tmp_path, ["phase.train_loss=0.123"])
    _check(sweep, out, stdout)
    # the same notebook executed as a notebook (nbclient, a real kernel), the sweep given in its parameter cell
    # as papermill would: the same comparison printed, its three figures shown inline, the compared knob the
    # one the sweep varies (model.width is fixed on the command line: no knob; model.n_params: never), the fit
    # threshold from the sweep's phase section
    nb_out = tmp_path / "nb_figs"
    nb = execute_notebook(NOTEBOOK, parameters={"SWEEP_DIR": str(sweep), "OUT_DIR": str(nb_out)}, cwd=tmp_path)
    text = nb_stdout(nb)
    assert len(images(nb)) >= 3, text[-3000:]
    assert "swept knobs: ['data.label_noise']" in text, text[:2000]
    assert "summaries differ between label noise 0 and 0.5" in text, text[-3000:]
    assert "training loss 0.123 nats" in text and "(threshold 0.123)" in text, text[-3000:]
    for name in ("embedding_train_loss.png", "persistence_diagrams.png", "loss_surface.png"):
        assert (nb_out / name).stat().st_size > 2000, name


@pytest.mark.slow
def test_label_noise_sweep_with_phate_and_two_seeds(cli, tmp_path):
    """As above, with the sweep's PHATE embedding and both seeds (slower: PHATE import and fit)."""
    sweep, out, stdout = _sweep_and_notebook(cli, tmp_path, ["train.seeds=[0,1]", "metrics.jump_retrain.embedding=phate"])
    _check(sweep, out, stdout)
    assert set(load(sweep, "models")["jump_retrain.embedding"]) == {"phate"}
    assert "mean H0 bottleneck distance" in stdout
