"""Phase aggregation, the phase rule and rank correlations: exact small cases, and the published results of
Yang et al. 2021 (tests/data/taxonomy2021, imported by analysis/taxonomy2021.py)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landscape.phase import PHASES, PhaseRule, aggregate_cells, parse_overrides, phase_summary, rank_correlations

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "taxonomy2021"


def _load_reader():
    spec = importlib.util.spec_from_file_location("taxonomy2021", ROOT / "analysis" / "taxonomy2021.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tax = _load_reader()


@pytest.fixture(scope="module")
def reference_cells() -> pd.DataFrame:
    models, pairs = tax.read_reference(REFERENCE)
    models = models[models["model.width"].isin(tax.PAPER_WIDTHS) & models["train.batch_size"].isin(tax.PAPER_BATCH_SIZES)]
    cells = aggregate_cells(models, pairs, ["model.width", "train.batch_size"])
    cells["phase"] = PhaseRule().labels(cells)
    return cells


# --- the reader of the published results -------------------------------------------------------------------

def test_mode_connectivity_formula():
    # barrier in the middle: mid = 10, u = t=0.5, mc = 10 - 30
    assert tax.mode_connectivity([0, .25, .5, .75, 1], [10, 20, 30, 20, 10]) == -20.0
    # under-trained endpoints, the curve is better: mc > 0
    assert tax.mode_connectivity([0, .25, .5, .75, 1], [40, 30, 20, 30, 40]) == 20.0
    # unsorted t is sorted first
    assert tax.mode_connectivity([1, 0, .5], [10, 10, 16]) == -6.0
    # endpoints included in the argmax (README formula, endpoints="paper"): |e - 5| is largest at t=0 -> 5 - 0;
    # the library's default takes the interior maximiser (landscape.connectivity.mode_connectivity)
    assert tax.mode_connectivity([0, .5, 1], [0, 5.5, 10], endpoints="paper") == 5.0
    assert tax.mode_connectivity([0, .5, 1], [0, 5.5, 10]) == -0.5
    assert math.isnan(tax.mode_connectivity([0, .5, 1], [1, float("nan"), 1]))


def test_reader_rows_match_the_csvs():
    raw_m = pd.read_csv(REFERENCE / "models.csv")
    raw_p = pd.read_csv(REFERENCE / "pairs.csv")
    raw_c = pd.read_csv(REFERENCE / "curves.csv")
    models, pairs = tax.read_reference(REFERENCE)
    assert len(models) == len(raw_m) and (models["status"] == "done").all()
    # accuracies become fractions
    r = raw_m.iloc[7]
    row = models.iloc[7]
    assert row["test_acc"] == pytest.approx(r["test_acc"] / 100) or (np.isnan(row["test_acc"]) and np.isnan(r["test_acc"]))
    assert row["train_acc"] == pytest.approx(r["train_acc"] / 100)
    assert row["hessian.trace"] == r["trace"] and row["model.width"] == r["width"]
    # each unordered pair once: 10 pairs per cell of 5 models
    assert (pairs["seed_a"] < pairs["seed_b"]).all()
    assert pairs.groupby("cell_id").size().eq(10).all()
    # cka = mean of the two orders; l2 identical in both orders
    w, b = 64, 128
    sel = raw_p[(raw_p.width == w) & (raw_p.batch_size == b)]
    ab = sel[(sel.seed_a == 1) & (sel.seed_b == 3)].iloc[0]
    ba = sel[(sel.seed_a == 3) & (sel.seed_b == 1)].iloc[0]
    mine = pairs[(pairs.cell_id == tax.cell_id(w, b)) & (pairs.seed_a == 1) & (pairs.seed_b == 3)].iloc[0]
    assert mine["cka"] == pytest.approx((ab.cka_softmax + ba.cka_softmax) / 2)
    assert mine["l2_distance"] == pytest.approx(ab.l2_distance)
    # the cell mean of cka equals the paper's mean over the 20 off-diagonal ordered pairs
    assert pairs[pairs.cell_id == tax.cell_id(w, b)]["cka"].mean() == pytest.approx(sel.cka_softmax.mean())
    # mc only on pair (0, 1), from the curve
    cell = pairs[pairs.cell_id == tax.cell_id(w, b)]
    assert cell["connectivity.mc"].notna().sum() == 1
    assert cell.loc[(cell.seed_a == 0) & (cell.seed_b == 1), "connectivity.mc"].notna().all()
    cur = raw_c[(raw_c.width == w) & (raw_c.batch_size == b)].sort_values("t")
    e = cur.train_err.to_numpy()
    mid = (e[0] + e[-1]) / 2
    expected = mid - e[np.argmax(np.abs(e - mid))]
    assert cell["connectivity.mc"].dropna().iloc[0] == pytest.approx(expected)


def test_reader_writes_typed_parquet_per_cell(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = tax.import_reference(tmp_path, REFERENCE, widths=[2, 64], batch_sizes=[16, 1024])
    assert sorted(p.name for p in paths["models"]) == sorted(
        f"{tax.cell_id(w, b)}.parquet" for w in (2, 64) for b in (16, 1024))
    t = pq.read_table(paths["models"][0])
    assert t.schema.field("model.width").type == pa.int64()
    assert t.schema.field("test_acc").type == pa.float64()
    tp = pq.read_table(paths["pairs"][0])
    assert tp.num_rows == 10 and tp.schema.field("connectivity.mc").type == pa.float64()


# --- aggregation -------------------------------------------------------------------------------------------

def _rows():
    m = pd.DataFrame(
        {
            "cell_id": ["a", "a", "a", "b", "b", "c"],
            "seed": [0, 1, 2, 0, 1, 0],
            "status": ["done", "done", "diverged", "done", "done", "failed"],
            "model.width": [4, 4, 4, 8, 8, 16],
            "train.batch_size": [32, 32, 32, 32, 32, 32],
            "train_loss": [0.1, 0.3, np.nan, 1.0, np.inf, np.nan],
            "test_acc": [0.8, 0.6, np.nan, 0.5, 0.7, np.nan],
        }
    )
    p = pd.DataFrame(
        {
            "cell_id": ["a", "a", "a", "b"],
            "seed_a": [0, 0, 1, 0],
            "seed_b": [1, 2, 2, 1],
            "status": ["done", "failed", "done", "done"],
            "cka": [0.4, 0.99, 0.6, 0.9],
            "connectivity.mc": [-3.0, np.nan, np.nan, 1.5],
        }
    )
    return m, p


def test_aggregate_cells_mean_std_count_over_done_rows():
    m, p = _rows()
    cells = aggregate_cells(m, p, ["model.width", "train.batch_size"]).set_index("model.width")
    a, b, c = cells.loc[4], cells.loc[8], cells.loc[16]
    assert a["train_loss"] == pytest.approx(0.2) and a["train_loss_std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert a["train_loss_n"] == 2 and a["n_rows"] == 3 and a["n_done"] == 2 and a["status"] == "done"
    # inf is not a value: mean of the finite one, count 1, std undefined
    assert b["train_loss"] == 1.0 and b["train_loss_n"] == 1 and np.isnan(b["train_loss_std"])
    assert b["test_acc"] == pytest.approx(0.6)
    # a cell with no completed model: status of its rows, no values
    assert c["status"] == "failed" and c["n_done"] == 0 and np.isnan(c["train_loss"]) and c["train_loss_n"] == 0
    # pairs: the failed pair (cka 0.99) is left out
    assert a["cka"] == pytest.approx(0.5) and a["cka_n"] == 2
    assert a["connectivity.mc"] == -3.0 and a["connectivity.mc_n"] == 1
    assert b["cka"] == pytest.approx(0.9) and np.isnan(c["cka"])


def test_aggregate_cells_refuses_to_average_over_a_hidden_knob():
    m, _ = _rows()
    m["train.lr"] = [0.1, 0.2, 0.1, 0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match="train.lr"):
        aggregate_cells(m, None, ["model.width", "train.batch_size"])
    cells = aggregate_cells(m, None, ["model.width", "train.batch_size", "train.lr"])
    assert len(cells) == 4


# --- the phase rule -------------------------------------------------------------------------------------

def test_phase_rule_branches_and_boundaries():
    r = PhaseRule()
    assert r.label(0.5, -1.0, 0.9) == "I"
    assert r.label(0.5, 0.0, 0.1) == "II"          # mc == mc_underfit: not a barrier
    assert r.label(0.05, -0.6, 0.9) == "III"       # loss == threshold counts as low
    assert r.label(0.01, -0.5, 0.69) == "IV-A"     # mc == mc_barrier: connected
    assert r.label(0.01, 2.0, 0.7) == "IV-B"       # cka == threshold: similar
    assert r.label(np.nan, 0.0, 0.9) is None
    assert r.label(0.5, -1.0, np.nan) == "I"       # CKA not needed on the high-loss side
    assert r.label(0.01, 0.0, np.nan) is None
    r2 = r.with_overrides(parse_overrides(["cka=0.5,train_loss=1"]))
    assert (r2.cka, r2.train_loss) == (0.5, 1.0)
    assert r2.label(0.5, 0.0, 0.6) == "IV-B"
    with pytest.raises(KeyError, match="unknown"):
        r.with_overrides({"loss": 1})


def test_rank_correlations_exact():
    cells = pd.DataFrame({"test_acc": [0.1, 0.2, 0.3, 0.4], "up": [1, 5, 7, 100], "down": [4, 3, 2, 1],
                          "flat": [1, 1, 1, 1], "gap": [1, np.nan, 3, 4]})
    rc = rank_correlations(cells, ["up", "down", "flat", "gap"]).set_index("metric")
    assert rc.loc["up", "rho"] == pytest.approx(1.0) and rc.loc["down", "rho"] == pytest.approx(-1.0)
    assert np.isnan(rc.loc["flat", "rho"]) and rc.loc["gap", "n_cells"] == 3


# --- the published results -----------------------------------------------------------------------------

def test_reference_phases_reproduce_the_paper(reference_cells):
    """Default thresholds on the 13 x 13 grid: mean test accuracy per phase as in the reference README
    (I 74.0, II 81.1, III 81.0, IV-A 85.4, IV-B 88.3 %), IV-B highest and I lowest."""
    cells = reference_cells
    assert len(cells) == 169 and cells["phase"].notna().all()
    summary = phase_summary(cells, cells["phase"]).set_index("phase")
    expected = {"I": 74.0, "II": 81.1, "III": 81.0, "IV-A": 85.4, "IV-B": 88.3}
    for ph, pct in expected.items():
        assert 100 * summary.loc[ph, "test_acc_mean"] == pytest.approx(pct, abs=0.05), ph
    assert summary["n_cells"].tolist() == [42, 25, 38, 38, 26]
    means = summary["test_acc_mean"]
    assert means.idxmax() == "IV-B" and means.idxmin() == "I"
    assert means["IV-B"] > means["IV-A"] > max(means["II"], means["III"]) > means["I"]
    # the phase geometry of Figure 1: the narrowest nets are phase I, wide nets at mid batch sizes IV-B
    by = cells.set_index(["model.width", "train.batch_size"])["phase"]
    assert by.loc[2].eq("I").all()
    assert by.loc[(128, 64)] == "IV-B" and by.loc[(128, 16)] == "II" and by.loc[(8, 1024)] == "III"
    assert list(PHASES) == ["I", "II", "III", "IV-A", "IV-B"]


def test_reference_rank_correlations_have_the_papers_signs(reference_cells):
    """Over the 169 cells: lower training loss, flatter minima (smaller top eigenvalue and trace), better
    connectivity (mc closer to/above 0) and more similar representations (CKA) go with higher test
    accuracy. L2 distance between seeds also correlates positively in these data (wider nets sit further
    apart and generalise better)."""
    metrics = ["train_loss", "hessian.top_eigenvalue", "hessian.trace", "connectivity.mc", "cka", "l2_distance"]
    rc = rank_correlations(reference_cells, metrics).set_index("metric")
    assert (rc["n_cells"] == 169).all() and (rc["p_value"] < 1e-6).all()
    for m in ("train_loss", "hessian.top_eigenvalue", "hessian.trace"):
        assert rc.loc[m, "rho"] < -0.7, m
    assert rc.loc["cka", "rho"] > 0.8
    assert rc.loc["connectivity.mc", "rho"] > 0.5
    assert 0.3 < rc.loc["l2_distance", "rho"] < 0.6
