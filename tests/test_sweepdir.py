"""A sweep directory many launches share: nothing computed is ever lost, one process per cell (lease), no torn
cell (issue 14, points 1, 2 and 6), through the real ``landscape`` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import FAST, LANDSCAPE
from landscape.cell import CellDir, Lease
from landscape.results import load

METRICS = ["train_loss", "train_acc", "test_loss", "test_acc", "train_acc_clean", "training.steps"]


def _rows(sweep: Path, table: str = "models") -> pd.DataFrame:
    df = load(sweep, table)
    keys = ["cell_id", "seed"] if table != "pairs" else ["cell_id", "seed_a", "seed_b"]
    return df.sort_values(keys + ["config"]).reset_index(drop=True)


def test_two_seed_lists_in_one_grid_keep_all_four_models(cli, tmp_path):
    cli(["-m", "hydra.sweep.dir=s", *FAST, "train.seeds=[0,1],[2,3]"])
    rows = _rows(tmp_path / "s")
    assert sorted(rows["seed"]) == [0, 1, 2, 3] and rows["cell_id"].nunique() == 1
    pairs = _rows(tmp_path / "s", "pairs")
    assert sorted(zip(pairs["seed_a"], pairs["seed_b"])) == [(0, 1), (2, 3)]
    # the same rows as one request of each seed list alone
    cli(["hydra.sweep.dir=ref", *FAST, "train.seeds=[2,3]"])
    ref = _rows(tmp_path / "ref")
    got = rows[rows["seed"] >= 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[METRICS], ref[METRICS], check_exact=True)


def test_a_smaller_request_after_a_larger_one_loses_nothing(cli, tmp_path):
    hess = ["metrics.hessian.enabled=true", "metrics.hessian.top_k=1", "metrics.hessian.min_eigenvalue=false", "metrics.hessian.eval_samples=64", "metrics.hessian.trace_matvecs=9"]
    cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,1,2]", *hess])
    first = _rows(tmp_path / "s")
    first_pairs = _rows(tmp_path / "s", "pairs")
    assert len(first) == 3 and first["hessian.top_eigenvalue"].notna().all() and len(first_pairs) == 3
    proc = cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,1]"])
    rows, pairs = _rows(tmp_path / "s"), _rows(tmp_path / "s", "pairs")
    with_h = rows[rows["hessian.top_eigenvalue"].notna()].reset_index(drop=True)
    pd.testing.assert_frame_equal(with_h, first, check_exact=True)  # seed 2 and every Hessian value still there
    assert sorted(rows.loc[rows["hessian.top_eigenvalue"].isna(), "seed"]) == [0, 1]  # the new request's rows
    # the pair family settings are the same: the pairs are those of the first request, none lost, none doubled
    assert sorted(zip(pairs["seed_a"], pairs["seed_b"])) == [(0, 1), (0, 2), (1, 2)]
    pd.testing.assert_frame_equal(pairs[["l2_distance"]], first_pairs[["l2_distance"]], check_exact=True)
    # asking again for what is there runs nothing
    again = cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,2]", *hess])
    assert "is done: skipped" in again.stdout + again.stderr


def test_a_swept_metric_setting_keeps_both_values(cli, tmp_path):
    conn = ["metrics.connectivity.enabled=true", "metrics.connectivity.epochs=1", "metrics.connectivity.n_points=3",
            "metrics.connectivity.test=false", "metrics.l2.enabled=false"]
    cli(["-m", "hydra.sweep.dir=s", *FAST, *conn, "metrics.connectivity.lr=5,50"])
    pairs = load(tmp_path / "s", "pairs")
    assert len(pairs) == 2 and pairs["cell_id"].nunique() == 1
    lrs = sorted(json.loads(c)["metrics"]["connectivity"]["lr"] for c in pairs["config"])
    assert lrs == [5.0, 50.0]
    assert pairs["connectivity.mc_loss"].nunique() == 2 or pairs["connectivity.mc"].isna().any()
    assert len(load(tmp_path / "s")) == 2  # the model rows do not depend on a pair setting: not doubled
