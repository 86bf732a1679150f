"""benchmarks/label_calibration.py: the agreement and calibration numbers of two labellings of one grid, by hand
and end to end on two tiny sweeps with disjoint seed sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from label_calibration import calibration, markdown, paired_labels  # noqa: E402


def cells(labels, confs):
    return pd.DataFrame({"model.width": [4, 8, 16, 32, 64], "phase": labels, "phase_confidence": confs})


def test_agreement_high_confidence_share_and_bins_pool_both_directions():
    a = cells(["I", "II", "III", "IV-B", "IV-B"], [0.95, 0.6, 0.8, 0.3, 1.0])
    b = cells(["I", "II", "IV-A", None, "IV-B"], [0.92, 0.55, 0.75, np.nan, 1.0])
    paired = paired_labels(a, b, ["model.width"])
    res = calibration(paired)
    assert (res["n_cells"], res["n_both"], res["n_one"]) == (5, 4, 1)
    assert res["agree"] == pytest.approx(3 / 4)
    # labels >= 0.9: A 0.95, 1.0 and B 0.92, 1.0, all kept
    assert (res["n_high"], res["high_kept"]) == (4, 1.0)
    bins = {(r["lo"], r["hi"]): r for r in res["bins"]}
    # [0, .5): A's 0.3, whose cell B left unlabelled: not kept
    assert (bins[(0.0, 0.5)]["n"], bins[(0.0, 0.5)]["kept"]) == (1, 0.0)
    assert (bins[(0.5, 0.7)]["n"], bins[(0.5, 0.7)]["kept"]) == (2, 1.0)
    assert bins[(0.5, 0.7)]["mean_conf"] == pytest.approx(0.575)
    assert (bins[(0.7, 0.9)]["n"], bins[(0.7, 0.9)]["kept"]) == (2, 0.0)
    assert bins[(0.9, 1.0)]["n"] == 4  # confidence 1.0 falls in the last, closed bin
    assert sum(r["n"] for r in res["bins"]) == res["n_labels"] == 9
    text = markdown(res, "toy", paired, ["model.width"])
    assert "| [0.9, 1] | 4 | 0.97 | 1.00 |" in text and "| [0, 0.5) | 1 | 0.30 | 0.00 |" in text
    assert "labels agree in 75 % of the cells labelled in both runs" in text
    assert "| 16 | III (0.80) | IV-A (0.75) |" in text and "| 32 | IV-B (0.30) | - |" in text


GRID = ["-m", "data.subsample=0.25", "model.width=4,8", "train.epochs=3", "train.batch_size=32",
        "metrics.connectivity.enabled=true", "metrics.connectivity.line=false", "metrics.connectivity.test=false"]


def test_label_calibration_on_two_tiny_sweeps_with_disjoint_seeds(cli, tmp_path):
    cli([*GRID, "hydra.sweep.dir=a", "train.seeds=[0,1]"])
    cli([*GRID, "hydra.sweep.dir=b", "train.seeds=[2,3]"])
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "label_calibration.py"), str(tmp_path / "a"),
                          str(tmp_path / "b"), "--x", "model.width", "--y", "train.batch_size", "--bootstrap", "50",
                          "--cells", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ, MPLBACKEND="Agg"))
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "### a vs b (model.width, train.batch_size)" in out and "- cells: 2;" in out
    assert "| confidence | labels | mean confidence | fraction kept |" in out
    # the labels it compares are landscape-phase's own (cells.csv of each run)
    ca, cb = (pd.read_csv(tmp_path / "out" / s / "cells.csv") for s in ("a", "b"))
    for w in (4, 8):
        la, lb = (c.set_index("model.width").loc[w] for c in (ca, cb))
        row = next(ln for ln in out.splitlines() if ln.startswith(f"| {w} | 32 |"))
        for lab, cell in zip(row.strip("| ").split(" | ")[2:], (la, lb)):
            assert lab == ("-" if pd.isna(cell["phase"]) else f"{cell['phase']} ({cell['phase_confidence']:.2f})")
