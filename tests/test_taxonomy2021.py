"""The import of the published results uses the library's one mode connectivity; fitting the phase-rule
thresholds on it (analysis/taxonomy2021.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import taxonomy2021

from landscape.connectivity import mode_connectivity
from landscape.phase import PhaseRule, aggregate_cells, phase_summary

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "taxonomy2021"


tax = taxonomy2021()


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    models, pairs = tax.read_reference(REFERENCE)
    keep = models["model.width"].isin(tax.PAPER_WIDTHS) & models["train.batch_size"].isin(tax.PAPER_BATCH_SIZES)
    return aggregate_cells(models[keep], pairs, ["model.width", "train.batch_size"])


def test_the_import_computes_mc_with_the_library_function_on_the_published_grid():
    _, pairs = tax.read_reference(REFERENCE)
    curves = pd.read_csv(REFERENCE / "curves.csv")
    g = curves[(curves["width"] == 8) & (curves["batch_size"] == 1024)]
    assert sorted(g["t"]) == list(tax.PAPER_T_GRID)
    row = pairs[
        (pairs["model.width"] == 8)
        & (pairs["train.batch_size"] == 1024)
        & (pairs["seed_a"] == 0)
        & (pairs["seed_b"] == 1)
    ]
    expected = mode_connectivity(g["train_err"].to_numpy(), t=g["t"].to_numpy())
    assert row["connectivity.mc"].item() == expected
    # hand check of this curve: the interior maximum of |e - mean| against the endpoints' mean
    e = g.sort_values("t")["train_err"].to_numpy()
    mid = (e[0] + e[-1]) / 2
    assert expected == pytest.approx(mid - e[1:-1][np.argmax(np.abs(e[1:-1] - mid))], abs=1e-12)
    # the only published curve where the paper's argmax lands on an endpoint (width 1, outside Figure 1)
    assert tax.mode_connectivity([0, 0.5, 1], [0, 5.5, 10], endpoints="paper") == 5.0
    assert tax.mode_connectivity([0, 0.5, 1], [0, 5.5, 10]) == -0.5
    assert math.isnan(tax.mode_connectivity([0, 0.5, 1], [1, float("nan"), 1]))


def test_threshold_margins_on_a_small_grid_are_the_nearest_deciding_cells():
    cells = pd.DataFrame(
        {
            "train_loss": [0.5, 0.3, 0.01, 0.02, 0.03, 0.04],
            "connectivity.mc": [-3.0, 2.0, -4.0, -0.1, 0.0, -0.2],
            "cka": [0.5, 0.5, 0.5, 0.9, 0.6, 0.75],
        }
    )
    rule = PhaseRule()
    assert rule.labels(cells).tolist() == ["I", "II", "III", "IV-B", "IV-A", "IV-B"]
    m = tax.threshold_margins(cells, rule).set_index("threshold")
    assert (m.loc["train_loss", "low"], m.loc["train_loss", "high"]) == (0.04, 0.3)
    assert (m.loc["mc_underfit", "low"], m.loc["mc_underfit", "high"]) == (-3.0, 2.0)
    assert (m.loc["mc_barrier", "low"], m.loc["mc_barrier", "high"]) == (-4.0, -0.2)
    assert (m.loc["cka", "low"], m.loc["cka", "high"]) == (0.6, 0.75)
    fitted, _ = tax.fit_phase_thresholds(cells, rule)
    assert fitted.train_loss == pytest.approx(math.sqrt(0.04 * 0.3))
    assert (fitted.mc_underfit, fitted.mc_barrier, fitted.cka) == pytest.approx((-0.5, -2.1, 0.675))
    assert fitted.labels(cells).tolist() == rule.labels(cells).tolist()
    # a threshold just outside its interval changes a label
    assert PhaseRule(cka=0.76).labels(cells).tolist() != rule.labels(cells).tolist()
    assert PhaseRule(mc_barrier=-0.15).labels(cells).tolist() != rule.labels(cells).tolist()


def test_refitting_on_the_published_results_keeps_every_phase_and_its_accuracy(cells):
    rule = PhaseRule()
    fitted, margins = tax.fit_phase_thresholds(cells, rule)
    before, after = rule.labels(cells), fitted.labels(cells)
    assert before.notna().all() and (before == after).all()
    acc = 100 * phase_summary(cells, after).set_index("phase")["test_acc_mean"]
    expected = {"I": 74.0, "II": 81.1, "III": 81.0, "IV-A": 85.4, "IV-B": 88.3}
    for ph, pct in expected.items():
        assert acc[ph] == pytest.approx(pct, abs=0.05), ph
    m = margins.set_index("threshold")
    # every hand-set threshold lies in its interval; mc_barrier has little room: cells at -0.56 and -0.49
    for name in ("train_loss", "mc_underfit", "mc_barrier", "cka"):
        assert m.loc[name, "low"] <= m.loc[name, "value"] <= m.loc[name, "high"], name
    assert (m.loc["mc_barrier", "low"], m.loc["mc_barrier", "high"]) == pytest.approx((-0.56, -0.49))
    assert fitted.mc_barrier == pytest.approx(-0.525)


def test_every_endpoint_option_gives_the_same_phases_on_the_published_grid(cells):
    """On the 13 x 13 grid the default equals the paper's formula on every curve; the sign-stable band form
    shifts values by half the endpoint gap but no label crosses a threshold."""
    rule = PhaseRule()
    base = rule.labels(cells)
    for endpoints in ("paper", "band"):
        models, pairs = tax.read_reference(REFERENCE, endpoints=endpoints)
        keep = models["model.width"].isin(tax.PAPER_WIDTHS) & models["train.batch_size"].isin(tax.PAPER_BATCH_SIZES)
        other = aggregate_cells(models[keep], pairs, ["model.width", "train.batch_size"])
        if endpoints == "paper":
            np.testing.assert_array_equal(other["connectivity.mc"], cells["connectivity.mc"])
        else:
            assert (other["connectivity.mc"] != cells["connectivity.mc"]).sum() > 10
        assert (rule.labels(other) == base).all(), endpoints
