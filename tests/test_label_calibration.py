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

from label_calibration import (  # noqa: E402 - after benchmarks/ is put on sys.path
    calibration,
    cell_bootstrap_gap,
    markdown,
    paired_labels,
    rerun_variance_ratio,
    wilson_interval,
)


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
    # the 4 labels >= 0.9 come from 2 cells (widths 4 and 64, in both runs); the others from one cell each
    assert [r["n_cells"] for r in res["bins"]] == [1, 1, 1, 2]
    assert sum(r["n"] for r in res["bins"]) == res["n_labels"] == 9
    text = markdown(res, "toy", paired, ["model.width"])
    # gaps per cell in [0.9, 1]: width 4 (0.95, 0.92 kept) 1 - 0.935 = +0.065, width 64 (1.0, 1.0) 0: resampling
    # the two cells gives 0, 0.0325 or 0.065 -> (+0.00 to +0.06) (0.065 is just below it in binary)
    assert "| [0.9, 1] | 4 (2) | 0.97 | 1.00 | 0.51-1.00 | +0.03 (+0.00 to +0.06) |" in text
    assert "| [0, 0.5) | 1 (1) | 0.30 | 0.00 | 0.00-0.79 | -0.30 (-0.30 to -0.30) |" in text
    assert "labels agree in 75 % of the cells labelled in both runs" in text
    assert "| 16 | III (0.80) | IV-A (0.75) |" in text and "| 32 | IV-B (0.30) | - |" in text


@pytest.mark.parametrize("kept,n", [(0, 1), (4, 4), (17, 18), (68, 77), (14, 20), (3, 10)])
def test_wilson_interval_equals_scipys(kept, n):
    from scipy.stats import binomtest

    ci = binomtest(kept, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(kept, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_cell_bootstrap_gap_resamples_cells_not_labels():
    """Two cells: A with 3 labels (confidence 0.5, none kept: gap -0.5 each), B with 1 label (0.7, kept: +0.3).
    Resampling the 2 cells gives AA (gap -0.5, probability 1/4), AB or BA (4 labels: (1 - 1.5 - 0.7) / 4 = -0.3,
    1/2) and BB (+0.3, 1/4): the 95 % percentile interval is (-0.5, +0.3), whatever the label counts. Resampled
    as 4 independent labels instead, the upper end would be the chance of drawing B 4 times in 4 (1/256): below
    the 97.5 % point, so an interval that treated labels as the unit would not reach +0.3."""
    labels = pd.DataFrame(
        {"conf": [0.5, 0.5, 0.5, 0.7], "kept": [False, False, False, True], "cell": [("a",)] * 3 + [("b",)]}
    )
    assert cell_bootstrap_gap(labels, n_boot=20000, seed=1) == pytest.approx((-0.5, 0.3))
    assert cell_bootstrap_gap(labels.iloc[:3]) == pytest.approx((-0.5, -0.5))
    assert all(np.isnan(cell_bootstrap_gap(labels.iloc[:0])))


def _runs_of_a_random_effects_grid(n_runs=4, n_cells=150, seed=0):
    """Runs of one grid with disjoint seeds: per cell 3 models (training loss log-normal, independent) and their
    3 pairs; a pair's mc is the sum of its two models' effects (all of its variance model-level), its CKA an
    independent draw per pair."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-2, 2, n_cells)
    runs = []
    for _ in range(n_runs):
        models, pairs = [], []
        for c in range(n_cells):
            a = rng.normal(size=3)
            for s in range(3):
                models.append(
                    {"cell_id": f"c{c}", "seed": s, "status": "done", "model.width": c, "train.batch_size": 1,
                     "train_loss": float(np.exp(-3 + 0.5 * rng.normal()))}
                )  # fmt: skip
            for i, j in ((0, 1), (0, 2), (1, 2)):
                pairs.append(
                    {"cell_id": f"c{c}", "seed_a": i, "seed_b": j, "status": "done", "model.width": c,
                     "train.batch_size": 1, "connectivity.mc": centre[c] + a[i] + a[j], "cka": 0.5 + 0.1 * rng.normal()}
                )  # fmt: skip
        runs.append((pd.DataFrame(models), pd.DataFrame(pairs)))
    return runs


def test_rerun_variance_ratio_tells_model_level_pairs_from_independent_values():
    """Independent values (the training loss, one per model; CKA drawn per pair) vary between runs as their
    within-run spread predicts (ratio ~1); an mc that is all model effect varies 4x more (3 seeds: the pairs' mean
    is (2/3) sum a_i, variance 4/3, while s^2 / 3 of the three pairs is 1/3 on average)."""
    r = rerun_variance_ratio(_runs_of_a_random_effects_grid(), ["model.width", "train.batch_size"])
    assert r["train_loss"]["cells"] == 150 and r["connectivity.mc"]["cells"] == 150
    assert r["train_loss"]["total"] == pytest.approx(1.0, abs=0.2)
    assert r["cka"]["total"] == pytest.approx(1.0, abs=0.2)
    assert r["connectivity.mc"]["total"] == pytest.approx(4.0, rel=0.15)


GRID = [
    "-m",
    "data.subsample=0.25",
    "model.width=4,8",
    "train.epochs=3",
    "train.batch_size=32",
    "metrics.connectivity.enabled=true",
    "metrics.connectivity.line=false",
    "metrics.connectivity.test=false",
]


def test_label_calibration_on_two_tiny_sweeps_with_disjoint_seeds(cli, tmp_path):
    cli([*GRID, "hydra.sweep.dir=a", "train.seeds=[0,1]"])
    cli([*GRID, "hydra.sweep.dir=b", "train.seeds=[2,3]"])
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "label_calibration.py"),
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--x",
            "model.width",
            "--y",
            "train.batch_size",
            "--bootstrap",
            "50",
            "--cells",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, MPLBACKEND="Agg"),
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "### a vs b (model.width, train.batch_size)" in out and "- cells: 2;" in out
    assert "| confidence | labels (cells) | mean confidence | fraction kept | 95 % interval |" in out
    # the labels it compares are landscape-phase's own (cells.csv of each run)
    ca, cb = (pd.read_csv(tmp_path / "out" / s / "cells.csv") for s in ("0", "1"))  # the sweeps in order
    for w in (4, 8):
        la, lb = (c.set_index("model.width").loc[w] for c in (ca, cb))
        row = next(ln for ln in out.splitlines() if ln.startswith(f"| {w} | 32 |"))
        for lab, cell in zip(row.strip("| ").split(" | ")[2:], (la, lb), strict=True):
            assert lab == ("-" if pd.isna(cell["phase"]) else f"{cell['phase']} ({cell['phase_confidence']:.2f})")


def test_mc_rounding_floor_keeps_one_noisy_cell_from_setting_every_cells_prior():
    """The demo with seeds 6-8: every fitted cell's converged pairs have mc = 0 exactly, one cell has two
    converged values 6.2 pp apart (and a bound). Without a floor that single cell was the grid's whole mc prior
    (s0^2 = 19 pp^2, nu0 = 4) and fitted cells far from every threshold got confidence ~0.55. mc is quantised
    (half a training sample, 50 / n_train pp), so a cell of equal values has at least the rounding variance
    q^2 / 12: the prior is
    then Smyth's moment estimate over every cell (checked by hand with scipy) and the certain cells are certain."""
    import itertools

    from scipy import special

    from landscape.phase import PhaseRule, aggregate_cells, label_confidence, rounding_variance

    n_train = 718
    q2 = (50.0 / n_train) ** 2 / 12
    fitted = {w: [0.0, 0.0, 0.0] for w in (16, 32, 64, 128, 256)}
    noisy = {8: [1.0, 7.2, 3.0]}  # the last pair is a bound (not converged): only two exact values
    models, pairs = [], []
    for w, mcs in {**fitted, **noisy}.items():
        for s in range(3):
            models.append(
                {
                    "cell_id": f"w{w}",
                    "seed": s,
                    "status": "done",
                    "model.width": w,
                    "train.batch_size": 32,
                    "train_loss": 3e-4 if w in fitted else 1.2,
                    "data.n_train": n_train,
                }
            )
        for k, ((a, b), mc) in enumerate(zip(itertools.combinations(range(3), 2), mcs, strict=True)):
            exact = w in fitted or k < 2
            pairs.append(
                {
                    "cell_id": f"w{w}",
                    "seed_a": a,
                    "seed_b": b,
                    "status": "done",
                    "model.width": w,
                    "train.batch_size": 32,
                    "connectivity.mc": mc,
                    "cka": 0.99 if w in fitted else 0.3,
                    "connectivity.converged": exact,
                    "connectivity.mc_bound": None if exact else "lower",
                    "data.n_train": n_train,
                }
            )
    models, pairs = pd.DataFrame(models), pd.DataFrame(pairs)
    pairs["connectivity.converged"] = pairs["connectivity.converged"].astype("boolean")
    by = ["model.width", "train.batch_size"]
    cells_ = aggregate_cells(models, pairs, by)
    rule = PhaseRule.paper()
    assert rounding_variance(pairs, "connectivity.mc") == pytest.approx(q2)
    conf = label_confidence(models, pairs, cells_, by, rule, n_boot=4000, seed=0)
    prior = conf.attrs["priors"]["connectivity.mc"]
    # by hand: the five fitted cells at the floor (2 df each), the noisy cell's three measured values (2 df: its
    # bound is a measured value too)
    v = np.array([q2] * 5 + [np.var([1.0, 7.2, 3.0], ddof=1)])
    d = np.array([2.0] * 5 + [2.0])
    e = np.log(v) - special.digamma(d / 2) + np.log(d / 2)
    rhs = e.var(ddof=1) - special.polygamma(1, d / 2).mean()
    assert rhs > 0 and prior["n_cells"] == 6
    nu0 = prior["nu0"]
    assert special.polygamma(1, nu0 / 2) == pytest.approx(rhs, rel=1e-6) or nu0 in (1.0, 100.0)
    assert prior["s0_sq"] == pytest.approx(np.exp(e.mean() + special.digamma(nu0 / 2) - np.log(nu0 / 2)), rel=1e-9)
    c = conf.set_index(cells_["model.width"])["phase_confidence"]
    assert (c[list(fitted)] > 0.99).all(), c.to_dict()
    # without the floor (no data.n_train: the old behaviour) the noisy cell alone set the prior: ~0.55
    old = label_confidence(models, pairs.drop(columns="data.n_train"), cells_, by, rule, n_boot=4000, seed=0)
    assert old.attrs["priors"]["connectivity.mc"]["n_cells"] == 1
    assert (old.set_index(cells_["model.width"])["phase_confidence"][list(fitted)] < 0.8).all()
