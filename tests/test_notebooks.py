"""The exploration notebook (analysis/explore_sweep.py) executed as a notebook by nbclient on a small real sweep
(issue 22): it reads the sweep from the environment with a kernel's own argv in place, shows its figures
inline, takes the heatmap's axes and the thresholds from the sweep's ``phase:`` section, treats only swept
keys as knobs, and gives the phase labels ``landscape-phase`` gives. It still runs as a script.
(The jump-and-retrain notebook's notebook run is in test_jump_retrain_notebook.py, beside its sweep.)"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from notebook_support import execute_notebook, images, stdout

from landscape.results import load

NOTEBOOK = REPO / "analysis" / "explore_sweep.py"

# 6 cells of a fast MLP with two seeds, CKA and a fixed-budget curve per pair; the phase section puts batch
# size on x and width on y (the other way round from the order of the overrides) and sets two thresholds.
GRID = [
    "-m",
    "data.subsample=0.25",
    "train.epochs=3",
    "model.width=4,16",
    "train.batch_size=16,64,128",
    "train.seeds=[0,1]",
    "metrics.cka.enabled=true",
    "metrics.connectivity.enabled=true",
    "metrics.connectivity.protocol=fixed",
    "phase.x=train.batch_size",
    "phase.y=model.width",
    "phase.cka=0.5",
    "phase.train_loss=0.3",
    "hydra.sweep.dir=sweep",
]


@pytest.fixture
def sweep(cli, tmp_path):
    cli(GRID, timeout=300)
    return tmp_path / "sweep"


def test_explore_notebook_under_nbclient(sweep, tmp_path):
    out = tmp_path / "explore"
    nb = execute_notebook(
        NOTEBOOK, env={"LANDSCAPE_SWEEP_DIR": str(sweep), "LANDSCAPE_EXPLORE_OUT": str(out)}, cwd=tmp_path
    )
    text = stdout(nb)
    # figures inline: the heatmap and the correlation matrix, and saved
    assert len(images(nb)) >= 2, text[-3000:]
    assert (out / "heatmap_test_acc.png").stat().st_size > 2000 and (out / "correlations.png").exists()
    # only the swept keys are knobs (model.n_params varies with the width but is no knob)
    swept = ast.literal_eval(re.search(r"swept knobs: (\[.*\])", text).group(1))
    assert swept == ["model.width", "train.batch_size"], text[:2000]
    # the phase section's axes: batch size on x (columns), width on y (rows, large on top)
    assert "heatmap of test_acc: columns train.batch_size (x), rows model.width (y)" in text, text[-3000:]
    assert "heatmap rows, top to bottom: 16 4\nheatmap columns, left to right: 16 64 128" in text, text[-3000:]
    heat = pd.read_csv(out / "heatmap_test_acc.csv", index_col=0)
    assert heat.index.name == "model.width" and heat.index.tolist() == [16, 4]
    assert [float(c) for c in heat.columns] == [16.0, 64.0, 128.0]
    models = load(sweep, "models")
    expected = models[models["status"] == "done"].groupby(["model.width", "train.batch_size"])["test_acc"].mean()
    for w in heat.index:
        for b in heat.columns:
            assert heat.loc[w, b] == pytest.approx(expected[(w, int(float(b)))], rel=1e-9)
    # the phase section's thresholds, and the labels landscape-phase gives with them
    assert "training loss 0.3 nats" in text and "CKA 0.5" in text, text[-3000:]
    from landscape.cli.phase import run

    paths = run(sweep, out=tmp_path / "phase", bootstrap=20)
    theirs = pd.read_csv(paths["cells.csv"]).set_index(["train.batch_size", "model.width"])["phase"]
    ours = pd.read_csv(out / "phases.csv").set_index(["train.batch_size", "model.width"])["phase"]
    assert theirs.notna().sum() >= 3, theirs.to_dict()
    assert ours.sort_index().fillna("-").to_dict() == theirs.sort_index().fillna("-").to_dict()


def test_explore_notebook_as_a_script(sweep, tmp_path):
    out = tmp_path / "script"
    proc = subprocess.run(
        [sys.executable, str(NOTEBOOK), str(sweep), str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows model.width (y)" in proc.stdout and (out / "heatmap_test_acc.png").stat().st_size > 2000
    assert np.isfinite(pd.read_csv(out / "heatmap_test_acc.csv", index_col=0).to_numpy()).all()
