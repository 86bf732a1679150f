"""Phase aggregation, the phase rule and rank correlations: exact small cases, and the published results of
Yang et al. 2021 (tests/data/taxonomy2021, imported by analysis/taxonomy2021.py)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import taxonomy2021

from landscape.phase import (
    PAPER_THRESHOLDS,
    PHASES,
    PhaseRule,
    aggregate_cells,
    calibrate,
    fit_mixture2,
    label_confidence,
    metric_columns,
    missing_metric_warnings,
    parse_overrides,
    phase_summary,
    rank_correlations,
    resolve_rule,
    spearman,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "taxonomy2021"


tax = taxonomy2021()


@pytest.fixture(scope="module")
def reference_cells() -> pd.DataFrame:
    models, pairs = tax.read_reference(REFERENCE)
    models = models[
        models["model.width"].isin(tax.PAPER_WIDTHS) & models["train.batch_size"].isin(tax.PAPER_BATCH_SIZES)
    ]
    cells = aggregate_cells(models, pairs, ["model.width", "train.batch_size"])
    rule, _ = resolve_rule("paper")
    cells["phase"] = rule.labels(cells)
    return cells


# --- the reader of the published results -------------------------------------------------------------------


def test_mode_connectivity_formula():
    # barrier in the middle: mid = 10, u = t=0.5, mc = 10 - 30
    assert tax.mode_connectivity([0, 0.25, 0.5, 0.75, 1], [10, 20, 30, 20, 10]) == -20.0
    # under-trained endpoints, the curve is better: mc > 0
    assert tax.mode_connectivity([0, 0.25, 0.5, 0.75, 1], [40, 30, 20, 30, 40]) == 20.0
    # unsorted t is sorted first
    assert tax.mode_connectivity([1, 0, 0.5], [10, 10, 16]) == -6.0
    # endpoints included in the argmax (README formula, endpoints="paper"): |e - 5| is largest at t=0 -> 5 - 0;
    # the library's default takes the interior maximiser (landscape.connectivity.mode_connectivity)
    assert tax.mode_connectivity([0, 0.5, 1], [0, 5.5, 10], endpoints="paper") == 5.0
    assert tax.mode_connectivity([0, 0.5, 1], [0, 5.5, 10]) == -0.5
    assert math.isnan(tax.mode_connectivity([0, 0.5, 1], [1, float("nan"), 1]))


def test_reader_rows_match_the_csvs():
    raw_m = pd.read_csv(REFERENCE / "models.csv")
    raw_p = pd.read_csv(REFERENCE / "pairs.csv")
    raw_c = pd.read_csv(REFERENCE / "curves.csv")
    models, pairs = tax.read_reference(REFERENCE)
    assert len(models) == len(raw_m) and (models["status"] == "done").all()
    # accuracies become fractions
    r = raw_m.iloc[7]
    row = models.iloc[7]
    assert row["test_acc"] == pytest.approx(r["test_acc"] / 100) or (
        np.isnan(row["test_acc"]) and np.isnan(r["test_acc"])
    )
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
        f"{tax.cell_id(w, b)}.parquet" for w in (2, 64) for b in (16, 1024)
    )
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


def test_a_model_with_rows_from_two_requests_counts_once(cli, tmp_path):
    """A sweep directory keeps the rows of every request (issue 14): seeds 0 and 1 with the Hessian, then the
    same seeds without it, give two rows per model; the cell still has two models, the Hessian values of the
    first request and the training values (equal in both requests)."""
    from conftest import FAST

    from landscape.results import load

    hess = [
        "metrics.hessian.enabled=true",
        "metrics.hessian.n_top=1",
        "metrics.hessian.smallest_eigenvalue=false",
        "metrics.hessian.eval_samples=64",
        "metrics.hessian.trace_matvecs=9",
    ]
    cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,1]", *hess])
    cli(["hydra.sweep.dir=s", *FAST, "train.seeds=[0,1]"])
    models, pairs = load(tmp_path / "s"), load(tmp_path / "s", "pairs")
    assert len(models) == 4 and sorted(models["seed"]) == [0, 0, 1, 1]  # nothing lost: both requests' rows
    cells = aggregate_cells(models, pairs, ["model.width"])
    assert len(cells) == 1
    cell = cells.iloc[0]
    assert cell["n_done"] == 2 and cell["train_loss_n"] == 2 and cell["hessian.top_eigenvalue_n"] == 2
    with_h = models[models["hessian.top_eigenvalue"].notna()]
    assert sorted(with_h["seed"]) == [0, 1]
    assert cell["hessian.top_eigenvalue"] == pytest.approx(with_h["hessian.top_eigenvalue"].mean(), rel=1e-12)
    assert cell["train_loss"] == pytest.approx(with_h["train_loss"].mean(), rel=1e-12)
    rule, _ = resolve_rule("paper")
    conf = label_confidence(models, pairs, cells, ["model.width"], rule)
    assert int(conf["n_models"].iloc[0]) == 2


def test_aggregate_cells_refuses_to_average_over_a_hidden_knob():
    m, _ = _rows()
    m["train.lr"] = [0.1, 0.2, 0.1, 0.1, 0.1, 0.1]
    with pytest.raises(ValueError, match="train.lr"):
        aggregate_cells(m, None, ["model.width", "train.batch_size"])
    cells = aggregate_cells(m, None, ["model.width", "train.batch_size", "train.lr"])
    assert len(cells) == 4


# --- the phase rule ---------------------------------------------------------------------------------------


def test_phase_rule_branches_and_boundaries():
    r = PhaseRule()
    assert r.label(0.5, -1.0, 0.9) == "I"
    assert r.label(0.5, 0.0, 0.1) == "II"  # mc == mc_underfit: not a barrier
    assert r.label(0.05, -0.6, 0.9) == "III"  # loss == threshold counts as low
    assert r.label(0.01, -0.5, 0.69) == "IV-A"  # mc == mc_barrier: connected
    assert r.label(0.01, 2.0, 0.7) == "IV-B"  # cka == threshold: similar
    assert r.label(np.nan, 0.0, 0.9) is None
    assert r.label(0.5, -1.0, np.nan) == "I"  # CKA not needed on the high-loss side
    assert r.label(0.01, 0.0, np.nan) is None
    r2 = r.with_overrides(parse_overrides(["cka=0.5,train_loss=1"]))
    assert (r2.cka, r2.train_loss) == (0.5, 1.0)
    assert r2.label(0.5, 0.0, 0.6) == "IV-B"
    with pytest.raises(KeyError, match="unknown"):
        r.with_overrides({"loss": 1})
    with pytest.raises(ValueError, match="cka"):
        r.with_overrides({"cka": 1.5})
    with pytest.raises(ValueError, match="mc_barrier"):
        r.with_overrides({"mc_barrier": "low"})


def _published_rule() -> tuple[dict[str, float], dict[str, float]]:
    """The thresholds and the mean test accuracy per phase (%) as the reference README states them, read
    from its text (tests/data/taxonomy2021/README.md: the published results, copied unchanged)."""
    import re

    text = " ".join((REFERENCE / "README.md").read_text().split())
    loss = re.search(r"high training loss \(> ([-0-9.]+)\) splits I/II from III/IV", text)
    sign = re.search(
        r"splits I \(mc < ([-0-9.]+)\) from II \(mc > ([-0-9.]+)\) and III \(mc < ([-0-9.]+)\) from IV", text
    )
    cka = re.search(r"CKA >= ([-0-9.]+) splits IV-B from IV-A", text)
    acc = re.search(
        r"Mean test accuracy per phase is then I ([0-9.]+) %, II ([0-9.]+) %, III ([0-9.]+) %, "
        r"IV-A ([0-9.]+) %, IV-B ([0-9.]+) %",
        text,
    )
    assert loss and sign and cka and acc, "the reference README no longer states the rule in these words"
    assert sign[1] == sign[2]  # one threshold: the sign of mc
    thresholds = {
        "train_loss": float(loss[1]),
        "mc_underfit": float(sign[1]),
        "mc_barrier": float(sign[3]),
        "cka": float(cka[1]),
    }
    return thresholds, dict(zip(PHASES, map(float, acc.groups()), strict=True))


def test_paper_thresholds_live_in_one_place_and_carry_units(reference_cells):
    """``PAPER_THRESHOLDS`` are the published ones (read from the reference's README, not from the code), the
    rule they make gives the published mean test accuracy per phase on the 13 x 13 reference grid, the units
    are the data's (cross-entropy in nats; mc in percentage points of training error, README: ``train_err`` in
    %), and ``PhaseRule()`` / ``resolve_rule("paper")`` use exactly these."""
    published, accuracy = _published_rule()
    assert published == {"train_loss": 0.05, "mc_underfit": 0.0, "mc_barrier": -0.5, "cka": 0.7}  # the text read
    assert PAPER_THRESHOLDS == published
    assert {k: getattr(PhaseRule(), k) for k in published} == published
    assert {k: getattr(PhaseRule.paper(), k) for k in published} == published
    rule, report = resolve_rule("paper", {"mc_barrier": "-1"})
    assert rule.mc_barrier == -1.0 and rule.train_loss == published["train_loss"] and report == {}
    labels = PhaseRule(**published).labels(reference_cells)
    assert len(reference_cells) == 169 and labels.notna().all()
    got = 100 * reference_cells.groupby(labels)["test_acc"].mean()
    for ph, pct in accuracy.items():
        assert got[ph] == pytest.approx(pct, abs=0.05), ph
    t = PhaseRule.paper().thresholds()
    assert t["train_loss"]["unit"] == "nats" and t["mc_barrier"]["unit"] == "pp of training error"
    assert t["mc_underfit"]["unit"] == "pp of training error" and t["cka"]["unit"] == "unitless"
    with pytest.raises(ValueError, match="paper, calibrate"):
        resolve_rule("papers")


def test_training_error_threshold_in_percent():
    # 3 % training error, mc = 0: low side with a 5 % threshold (IV), high side with a 2 % one (II)
    cells = pd.DataFrame({"train_error": [3.0], "train_loss": [0.5], "connectivity.mc": [0.0], "cka": [0.9]})
    assert PhaseRule.paper().with_overrides({"train_error": 5}).labels(cells).iloc[0] == "IV-B"
    assert PhaseRule.paper().with_overrides({"train_error": 2}).labels(cells).iloc[0] == "II"
    # the loss alone (0.5 nats > 0.05) says high
    assert PhaseRule.paper().labels(cells).iloc[0] == "II"
    m = pd.DataFrame(
        {
            "cell_id": ["a", "a"],
            "seed": [0, 1],
            "status": "done",
            "model.width": 4,
            "train.batch_size": 8,
            "train_acc": [0.97, 0.95],
            "train_loss": [0.1, 0.2],
        }
    )
    c = aggregate_cells(m, None, ["model.width", "train.batch_size"])
    assert c["train_error"].iloc[0] == pytest.approx(4.0)


# --- calibration ---------------------------------------------------------------------------------------------


def test_mixture_split_of_a_symmetric_bimodal_sample_is_the_midpoint():
    e = np.array([-0.3, -0.1, 0.0, 0.1, 0.3])
    x = np.concatenate([-2 + e, 2 + e])
    mix = fit_mixture2(x)
    assert mix.means == pytest.approx((-2.0, 2.0), abs=1e-6)
    assert mix.variances[0] == pytest.approx(np.var(e), rel=1e-4)
    assert mix.threshold == pytest.approx(0.0, abs=2e-3) and mix.bimodal and mix.counts == (5, 5)
    uni = fit_mixture2(np.linspace(0, 1, 12))
    assert not uni.bimodal


def _synthetic_cells(seed=0, cka_split=True):
    """40 cells: 20 poorly trained (loss ~ 10^0) and 20 well trained (loss ~ 10^-3, +-0.25 decades); the well
    trained ones are connected (mc 0 +- 0.2) and have CKA ~ 0.55 (10 cells) or ~ 0.9 (10 cells)."""
    rng = np.random.default_rng(seed)
    high = 10 ** rng.normal(0.0, 0.25, 20)
    low = 10 ** rng.normal(-3.0, 0.25, 20)
    cka_low = np.r_[rng.normal(0.55, 0.03, 10), rng.normal(0.9, 0.03, 10)] if cka_split else rng.normal(0.9, 0.02, 20)
    return pd.DataFrame(
        {
            "train_loss": np.r_[high, low],
            "connectivity.mc": np.r_[rng.normal(3.0, 1.0, 20), rng.normal(0.0, 0.2, 20)],
            "cka": np.r_[rng.uniform(0.2, 0.6, 20), cka_low],
            "truth": ["II"] * 20 + (["IV-A"] * 10 + ["IV-B"] * 10 if cka_split else ["IV-B"] * 20),
        }
    )


def test_calibration_recovers_a_known_split():
    cells = _synthetic_cells()
    rule, report = calibrate(cells)
    high, low = cells["train_loss"][:20], cells["train_loss"][20:]
    assert low.max() < rule.train_loss < high.min()
    # the split sits between the groups in log space, near the geometric middle of 10^-3 and 10^0
    assert -2.2 < np.log10(rule.train_loss) < -0.8
    well = cells["cka"][20:]
    assert well[:10].max() < rule.cka < well[10:].min()
    assert report["train_loss"]["derived"] and report["cka"]["derived"] and report["cka"]["n"] == 20
    assert rule.source == "calibrate" and rule.mc_barrier == PAPER_THRESHOLDS["mc_barrier"]
    assert (rule.labels(cells) == cells["truth"]).all()
    # the paper's CKA threshold (0.7) happens to fall between these groups too; move them to show the difference
    shifted = cells.assign(cka=np.where(cells.index >= 20, cells["cka"] + 0.25, cells["cka"]).clip(0, 1))
    rule2, _ = calibrate(shifted)
    assert shifted["cka"][20:30].max() < rule2.cka < shifted["cka"][30:].min() and rule2.cka > 0.75
    # explicit values win over calibration
    rule3, rep3 = resolve_rule("calibrate", {"cka": 0.5}, cells)
    assert rule3.cka == 0.5 and rep3["cka"]["reason"] == "set explicitly" and rule3.train_loss == rule.train_loss


def test_calibration_keeps_the_base_value_when_there_is_no_second_group():
    cells = _synthetic_cells(cka_split=False)
    rule, report = calibrate(cells)
    assert rule.cka == PAPER_THRESHOLDS["cka"] and not report["cka"]["derived"]
    assert "one group" in report["cka"]["reason"]
    flat = pd.DataFrame({"train_loss": np.geomspace(1e-3, 1, 30), "connectivity.mc": 0.0, "cka": 0.9})
    rule2, report2 = calibrate(flat)
    assert rule2.train_loss == PAPER_THRESHOLDS["train_loss"] and not report2["train_loss"]["derived"]


# --- confidence -------------------------------------------------------------------------------------------


def _conf_rows():
    models = pd.DataFrame(
        {
            "cell_id": ["a"] * 3 + ["b"] * 3,
            "seed": [0, 1, 2] * 2,
            "status": "done",
            "model.width": [8] * 3 + [16] * 3,
            "train.batch_size": 32,
            # a: every seed well trained; b: one seed of three is not -> mean 0.0767 > 0.05
            "train_loss": [0.01, 0.02, 0.03, 0.01, 0.2, 0.02],
        }
    )
    pairs = pd.DataFrame(
        {
            "cell_id": ["a"] * 3 + ["b"] * 3,
            "seed_a": [0, 0, 1] * 2,
            "seed_b": [1, 2, 2] * 2,
            "status": "done",
            "connectivity.mc": [1.0, 2.0, 3.0, 1.0, 2.0, 3.0],
            "cka": [0.9, 0.95, 0.92, 0.9, 0.95, 0.92],
        }
    )
    return models, pairs


def _grid_rows(cells: dict[int, tuple[list[float], list[dict]]]):
    """Rows of a grid: ``{width: ([fit value per model], [pair dict (mc, cka, extra columns)])}``; models are
    seeds 0.., pairs (0, 1), (0, 2), (1, 2), ... in order."""
    models, pairs = [], []
    for w, (fits, prs) in cells.items():
        for s, f in enumerate(fits):
            models.append(
                {
                    "cell_id": f"w{w}",
                    "seed": s,
                    "status": "done" if np.isfinite(f) else "diverged",
                    "model.width": w,
                    "train.batch_size": 32,
                    "train_loss": f,
                }
            )
        seeds = list(itertools.combinations(range(max(len(fits), 2)), 2))
        # a cell may list fewer pairs than its seeds make (the rest never ran): truncation is meant
        for (a, b), pr in zip(seeds, prs, strict=False):
            pairs.append(
                {
                    "cell_id": f"w{w}",
                    "seed_a": a,
                    "seed_b": b,
                    "status": "done",
                    "model.width": w,
                    "train.batch_size": 32,
                    **pr,
                }
            )
    p = pd.DataFrame(pairs)
    if "connectivity.converged" in p.columns:
        p["connectivity.converged"] = p["connectivity.converged"].astype("boolean")
    return pd.DataFrame(models), p


WELL = [1.0e-4, 1.1e-4, 0.9e-4]  # well trained (nats), relative spread ~10 %
#: background cells: mc centres on both sides of the thresholds, each with its own spread (pp)
BACKGROUND = {
    w: (WELL, [{"connectivity.mc": c + d * k, "cka": 0.95 + 0.01 * k} for k in (-1, 0, 1)])
    for w, c, d in ((1, -3.0, 0.2), (2, -1.0, 0.5), (3, 0.5, 0.3), (4, 2.0, 0.8), (5, 4.0, 0.4))
}


def _mc_prior_by_hand(mc_by_cell: list[list[float]], nu0: float) -> float:
    """s0^2 of Smyth's moment method with a given nu0, written out with scipy (cells with >= 2 values)."""
    from scipy import special

    e = [
        np.log(np.var(v, ddof=1)) - special.digamma((len(v) - 1) / 2) + np.log((len(v) - 1) / 2)
        for v in mc_by_cell
        if len(v) >= 2
    ]
    return float(np.exp(np.mean(e) + special.digamma(nu0 / 2) - np.log(nu0 / 2)))


def test_confidence_is_the_predictive_probability_of_the_closed_form():
    """(a) three exact pairs of three models: P(rerun mean >= -0.5) = P(xbar + s sqrt(2.5 (1/3 + 1/3)) T_df >=
    -0.5) with the shrunk variance s^2 = (nu0 s0^2 + 2 s_cell^2) / (nu0 + 2), df = nu0 + 2 (scipy.stats.t) and
    the pairs' design effect 2.5; (b) one model and one pair: s = s0, df = nu0, factor sqrt(1 + 1) (one pair:
    no design effect): below 1 although the old bootstrap gave 1.00."""
    from scipy import stats

    nu0 = 3.0
    target_mc = [-0.2, 0.1, -0.6]
    rows = {
        **BACKGROUND,
        100: (WELL, [{"connectivity.mc": v, "cka": 0.96} for v in target_mc]),
        200: ([2.0], [{"connectivity.mc": 0.4, "cka": 0.5}]),
    }
    models, pairs = _grid_rows(rows)
    by = ["model.width", "train.batch_size"]
    cells = aggregate_cells(models, pairs, by)
    rule = PhaseRule.paper()
    labels = rule.labels(cells)
    conf = label_confidence(models, pairs, cells, by, rule, labels, n_boot=40000, seed=3, nu0=nu0)
    c = conf.set_index(cells["model.width"])
    lab = labels.set_axis(cells["model.width"])
    assert lab[100] == "IV-B" and lab[200] == "II"
    s0_sq = _mc_prior_by_hand([[p["connectivity.mc"] for p in prs] for _, prs in rows.values()], nu0)
    assert conf.attrs["priors"]["connectivity.mc"]["s0_sq"] == pytest.approx(s0_sq, rel=1e-9)
    # (a)
    x = np.array(target_mc)
    s = math.sqrt((nu0 * s0_sq + 2 * x.var(ddof=1)) / (nu0 + 2))
    deff = 1 + 3 * 0.5  # 3 pairs of 3 models, half of a pair's variance model-level: Var(mean) = 2.5 s^2 / 3
    p_a = stats.t.sf((-0.5 - x.mean()) / (s * math.sqrt(deff * (1 / 3 + 1 / 3))), nu0 + 2)
    mc_err = 4 * math.sqrt(p_a * (1 - p_a) / 40000)
    assert 0.6 < p_a < 0.95 and c.loc[100, "phase_confidence"] == pytest.approx(p_a, abs=mc_err)
    # (b) one value: doubt from the grid's variance prior alone
    p_b = stats.t.sf((0.0 - 0.4) / (math.sqrt(s0_sq) * math.sqrt(2.0)), nu0)
    assert c.loc[200, "phase_confidence"] == pytest.approx(p_b, abs=4 * math.sqrt(p_b * (1 - p_b) / 40000))
    assert c.loc[200, "phase_confidence"] < 0.95
    assert c.loc[200, ["n_models", "n_pairs_mc", "n_pairs_exact", "n_pairs_total"]].tolist() == [1, 1, 1, 1]
    # background cells far from every threshold stay (nearly) certain
    assert c.loc[5, "phase_confidence"] > 0.99 and c.loc[1, "phase_confidence"] > 0.99
    # seeded: the same numbers again
    again = label_confidence(models, pairs, cells, by, rule, labels, n_boot=40000, seed=3, nu0=nu0)
    assert again.equals(conf)


def test_an_unknown_pair_is_imputed_from_the_grid_and_lowers_confidence():
    """(c) two exact pairs and one whose curve did not converge (an older sweep's row: mc nulled,
    converged = false): the unknown slot is drawn from the grid's exact mc values, so the probability is the
    average over that pool of the closed form with r = 2 of n = 3 slots; lower than with the two pairs alone;
    the counts name it."""
    from scipy import stats

    nu0 = 3.0
    known = [
        {"connectivity.mc": -0.2, "cka": 0.96, "connectivity.converged": True},
        {"connectivity.mc": 0.1, "cka": 0.96, "connectivity.converged": True},
    ]
    unknown = {"connectivity.mc": np.nan, "cka": 0.96, "connectivity.converged": False}
    bg = {w: (f, [{**p, "connectivity.converged": True} for p in prs]) for w, (f, prs) in BACKGROUND.items()}
    by = ["model.width", "train.batch_size"]
    rule = PhaseRule.paper()
    out = {}
    for name, prs in (("two", known), ("two+unknown", known + [unknown])):
        models, pairs = _grid_rows({**bg, 100: (WELL, prs)})
        cells = aggregate_cells(models, pairs, by)
        conf = label_confidence(models, pairs, cells, by, rule, n_boot=40000, seed=0, nu0=nu0)
        out[name] = conf.set_index(cells["model.width"]).loc[100]
        assert rule.labels(cells).set_axis(cells["model.width"])[100] == "IV-B"
    two, unk = out["two"], out["two+unknown"]
    assert (unk["n_pairs_total"], unk["n_pairs_exact"], unk["n_pairs_unknown"], unk["n_pairs_mc"]) == (3, 2, 1, 2)
    assert unk["share_unresolved"] == pytest.approx(1 / 3) and two["share_unresolved"] == 0
    assert unk["phase_confidence"] < two["phase_confidence"] - 0.05
    pool = np.array([p["connectivity.mc"] for _, prs in BACKGROUND.values() for p in prs] + [-0.2, 0.1])
    s0_sq = _mc_prior_by_hand(
        [[p["connectivity.mc"] for p in prs] for _, prs in BACKGROUND.values()] + [[-0.2, 0.1]], nu0
    )
    s = math.sqrt((nu0 * s0_sq + np.var([-0.2, 0.1], ddof=1)) / (nu0 + 1))
    means = (-0.2 + 0.1 + pool) / 3
    p = float(np.mean(stats.t.sf((-0.5 - means) / (s * math.sqrt(2.5 * (2 / 9 + 1 / 3))), nu0 + 1)))
    assert unk["phase_confidence"] == pytest.approx(p, abs=0.012)


def test_variance_prior_recovers_a_known_prior_and_pools_a_homogeneous_grid():
    """Smyth's moment estimates on 4000 cells whose true variances follow the scaled inverse chi-square prior
    (nu0 = 6, s0^2 = 2) and whose sample variances have 2 degrees of freedom; equal variances everywhere give
    the largest nu0 (the grid's pool)."""
    from landscape.phase import NU0_MAX, variance_prior

    rng = np.random.default_rng(0)
    sigma_sq = 6 * 2.0 / rng.chisquare(6, 4000)
    s_sq = sigma_sq * rng.chisquare(2, 4000) / 2
    prior = variance_prior(s_sq, np.full(4000, 2.0))
    assert prior.nu0 == pytest.approx(6.0, rel=0.25) and prior.s0_sq == pytest.approx(2.0, rel=0.1)
    flat = variance_prior(np.full(20, 1.5), np.full(20, 2.0))
    assert flat.nu0 == NU0_MAX


def test_bounded_pairs_keep_a_label_only_where_the_bound_decides_it():
    """Lower bounds (mc still rising) keep a label that holds up to mc = +inf, upper bounds one that holds down
    to -inf; otherwise no label and the reason; an older sweep's unconverged value is not a value."""
    from landscape.phase import bounded_labels, resolution_counts

    def prs(values, bounds):
        return [
            {"connectivity.mc": v, "cka": 0.9, "connectivity.converged": b is None, "connectivity.mc_bound": b}
            for v, b in zip(values, bounds, strict=True)
        ]

    high = [0.5, 0.6, 0.55]  # poorly trained (nats)
    rows = {
        1: (WELL, prs([0.2, -0.1, 0.0], [None, "lower", None])),  # IV-B, rising: stays IV-B
        2: (WELL, prs([-1.0, -1.2, -0.9], [None, "lower", None])),  # III, rising: could become IV
        3: (high, prs([-1.0, -2.0, -1.5], ["upper", None, None])),  # I, falling: stays I
        4: (high, prs([1.0, 2.0, 1.5], ["upper", None, None])),  # II, falling: could become I
        5: (high, prs([1.0, 2.0, 1.5], ["upper", "lower", None])),  # both: never decided
        6: (WELL, prs([0.2, 0.3, 0.1], [None, None, None])),
    }
    models, pairs = _grid_rows(rows)
    pairs["connectivity.mc_bound"] = pairs["connectivity.mc_bound"].astype(object)
    old = pairs.drop(columns="connectivity.mc_bound")
    old.loc[
        (old["model.width"] == 6) & (old["seed_b"] == 2) & (old["seed_a"] == 1),
        ["connectivity.mc", "connectivity.converged"],
    ] = [-30.0, False]
    by = ["model.width", "train.batch_size"]
    rule = PhaseRule.paper()
    cells = aggregate_cells(models, pairs, by)
    counts = resolution_counts(models, pairs, cells, by, rule)
    labels, reasons = bounded_labels(cells, rule, counts)
    got = dict(zip(cells["model.width"], labels, strict=True))
    assert got == {1: "IV-B", 2: None, 3: "I", 4: None, 5: None, 6: "IV-B"}
    why = dict(zip(cells["model.width"], reasons, strict=True))
    assert why[2] == "mc still moving in 1 of 3 pairs" and why[5] == "mc still moving in 2 of 3 pairs"
    assert why[1] is None and why[6] is None
    c = counts.set_index(cells["model.width"])
    assert c.loc[5, ["n_pairs_lower", "n_pairs_upper", "n_pairs_bounded", "n_pairs_exact"]].tolist() == [1, 1, 2, 1]
    assert c.loc[1, "share_unresolved"] == pytest.approx(1 / 3) and c.loc[1, "n_pairs_mc"] == 3
    # the bound's mean is over exact and bounded values
    assert cells.set_index("model.width").loc[1, "connectivity.mc"] == pytest.approx(0.1 / 3)
    # an older sweep (no mc_bound column): converged = false is not a value, whatever the row holds
    cells_old = aggregate_cells(models, old, by)
    assert cells_old.set_index("model.width").loc[6, "connectivity.mc"] == pytest.approx(0.25)
    c_old = resolution_counts(models, old, cells_old, by, rule).set_index(cells_old["model.width"])
    assert c_old.loc[6, ["n_pairs_exact", "n_pairs_unknown", "n_pairs_total"]].tolist() == [2, 1, 3]


@pytest.mark.parametrize("n,share", [(3, 0.0), (3, 0.5), (3, 1.0), (4, 0.5), (5, 0.8)])
def test_pair_design_effect_matches_a_simulated_random_effects_model(n, share):
    """v_ij = a_i + a_j + e_ij over all pairs of n models, sigma_a^2 = share, sigma_e^2 = 1 - share, simulated
    200,000 times: the variance of the pairs' mean over the mean of s^2 / P is the design effect (to 2 %)."""
    from landscape.phase import pair_design_effect

    rng = np.random.default_rng(n)
    reps = 200_000
    a = rng.normal(0.0, math.sqrt(share), size=(reps, n))
    pairs = list(itertools.combinations(range(n), 2))
    v = np.stack([a[:, i] + a[:, j] for i, j in pairs], axis=1)
    v += rng.normal(0.0, math.sqrt(1.0 - share), size=v.shape)
    ratio = v.mean(axis=1).var() / (v.var(axis=1, ddof=1).mean() / len(pairs))
    assert pair_design_effect(n, len(pairs), share) == pytest.approx(ratio, rel=0.02)
    if n == 3:
        assert pair_design_effect(3, 3, share) == pytest.approx(1 + 3 * share)
    assert pair_design_effect(n, 1, share) == 1.0 and pair_design_effect(n, len(pairs) - 1, share) == 1.0


def test_bounded_values_inform_the_variance_prior():
    """The variance prior of mc is fitted to every cell's measured values, bounds included (a bound is what the
    protocol reports for that pair, so its spread between seeds is a rerun's spread). A 9-cell grid like a
    measured one (MNIST-style fine grid, seeds 12-14): eight cells whose curves all stopped as lower bounds,
    spread 0.002-1.3 pp^2, and one cell with two converged pairs at 0 and 3.13 pp. Fitted to the converged values
    alone the prior is that one cell's 4.9 pp^2 (times the nu0 factor) and a bounded cell whose three pairs read
    0.07-0.14 pp gets confidence 0.69 in a label no rerun changed. With the bounds: s0^2 as
    Smyth's formula over all nine cells (written out here), and that cell keeps its label with confidence
    > 0.95."""
    from landscape.phase import bounded_labels, resolution_counts

    nu0 = 3.0

    def prs(values, bounds, ckas):
        return [
            {"connectivity.mc": v, "cka": c, "connectivity.converged": b is None, "connectivity.mc_bound": b}
            for v, b, c in zip(values, bounds, ckas, strict=True)
        ]

    low, lo3 = [3e-3, 4e-3, 2e-3], ["lower"] * 3
    high = [0.3, 0.2, 0.4]
    rows = {
        1: (low, prs([0.07, 0.07, 0.14], lo3, [0.88, 0.88, 0.86])),  # IV-B: the cell the old prior doubted
        2: (high, prs([9.33, 8.5, 7.1], lo3, [0.46, 0.4, 0.45])),
        3: (high, prs([8.22, 8.64, 9.61], lo3, [0.25, 0.26, 0.26])),
        4: (low, prs([0.07, 0.07, 0.14], lo3, [0.9, 0.94, 0.89])),
        5: (low, prs([1.46, 1.46, 0.0], ["lower", "lower", None], [0.65, 0.57, 0.66])),
        6: (high, prs([6.96, 6.06, 5.36], lo3, [0.28, 0.33, 0.38])),
        7: (low, prs([0.0, 0.07, 0.07], [None, "lower", "lower"], [0.95, 0.93, 0.95])),
        8: (low, prs([0.07, 0.0, 0.07], ["lower", None, "lower"], [0.79, 0.82, 0.77])),
        9: (low, prs([3.13, 3.13, 0.0], [None, "lower", None], [0.34, 0.39, 0.55])),
    }
    models, pairs = _grid_rows(rows)
    pairs["connectivity.mc_bound"] = pairs["connectivity.mc_bound"].astype(object)
    by = ["model.width", "train.batch_size"]
    rule = PhaseRule.paper()
    cells = aggregate_cells(models, pairs, by)
    counts = resolution_counts(models, pairs, cells, by, rule)
    labels, _ = bounded_labels(cells, rule, counts)
    conf = label_confidence(models, pairs, cells, by, rule, labels, n_boot=20000, seed=1, nu0=nu0)
    measured = [[p["connectivity.mc"] for p in prs_] for _, prs_ in rows.values()]
    by_hand = _mc_prior_by_hand(measured, nu0)
    exact_only = _mc_prior_by_hand([[3.13, 0.0]], nu0)  # the one cell with two converged pairs
    got = conf.attrs["priors"]["connectivity.mc"]["s0_sq"]
    assert got == pytest.approx(by_hand, rel=1e-9) and by_hand < 0.05 * exact_only
    c = conf.set_index(cells["model.width"])
    assert labels.iloc[0] == "IV-B" and c.loc[1, "phase_confidence"] > 0.95 and c.loc[4, "phase_confidence"] > 0.95


# --- calibration of the confidence ----------------------------------------------------------------------------


def _synthetic_truth(rng, n_cells):
    """True cell means across the thresholds and per-cell noise that differs between cells (heteroscedastic):
    training loss (nats; relative sd per model 10-60 %), mc (pp; sd per pair 0.1-3 pp), CKA (sd 0.01-0.08); the
    share of a pair value's variance that belongs to its models (``share``, 0-1: pairs that share a model are
    correlated, as measured pairs are)."""
    return dict(
        fit=10 ** rng.uniform(-3, 0, n_cells),
        mc=rng.uniform(-4, 3, n_cells),
        cka=rng.uniform(0.5, 0.9, n_cells),
        rel=rng.uniform(0.1, 0.6, n_cells),
        smc=10 ** rng.uniform(-1, 0.5, n_cells),
        sck=rng.uniform(0.01, 0.08, n_cells),
        share=rng.uniform(0.0, 1.0, n_cells),
    )


def _seed_set(rng, truth, n_seed=3, p_unconverged=0.0):
    """One seed set of every cell: n_seed models and their pairs, drawn from the truth (a pair's mc and CKA: the
    cell mean, an effect of each of its two models and one of the pair, with ``share`` of the variance in the
    models'); a pair's curve fails to converge at random with probability p_unconverged (mc nulled,
    converged = false)."""
    models, pairs = [], []
    for c in range(len(truth["fit"])):
        sig = math.sqrt(math.log1p(truth["rel"][c] ** 2))
        sa, se = math.sqrt(truth["share"][c]), math.sqrt(1.0 - truth["share"][c])
        a_mc, a_ck = rng.normal(size=n_seed), rng.normal(size=n_seed)
        for s in range(n_seed):
            models.append(
                {
                    "cell_id": f"c{c}",
                    "seed": s,
                    "status": "done",
                    "model.width": c,
                    "train.batch_size": 1,
                    "train_loss": truth["fit"][c] * math.exp(sig * rng.normal() - sig**2 / 2),
                }
            )
        for a in range(n_seed):
            for b in range(a + 1, n_seed):
                conv = bool(rng.random() >= p_unconverged)
                mc = truth["mc"][c] + truth["smc"][c] * (sa * (a_mc[a] + a_mc[b]) / math.sqrt(2) + se * rng.normal())
                ck = truth["cka"][c] + truth["sck"][c] * (sa * (a_ck[a] + a_ck[b]) / math.sqrt(2) + se * rng.normal())
                pairs.append(
                    {
                        "cell_id": f"c{c}",
                        "seed_a": a,
                        "seed_b": b,
                        "status": "done",
                        "connectivity.mc": mc if conv else np.nan,
                        "connectivity.converged": conv,
                        "cka": ck,
                    }
                )
    return pd.DataFrame(models), pd.DataFrame(pairs)


def _old_bootstrap(models, pairs, cells, rule, labels, n_boot=1000, seed=0):
    """The former confidence (written out here for the comparison): the share of bootstrap resamples of the
    cell's finite values (each metric resampled to its own count) whose means give the same label."""
    rng = np.random.default_rng(seed)
    fit = {k: v.to_numpy() for k, v in models.groupby("model.width")["train_loss"]}
    pv = {
        k: v[["connectivity.mc", "cka"]].to_numpy()
        for k, v in pairs.merge(models[["cell_id", "model.width"]].drop_duplicates(), on="cell_id").groupby(
            "model.width"
        )
    }

    def means(v):
        v = v[np.isfinite(v)]
        return v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1) if v.size else np.full(n_boot, np.nan)

    out = []
    for w, lab in zip(cells["model.width"], labels, strict=True):
        codes = rule.codes(means(fit[w]), means(pv[w][:, 0]), means(pv[w][:, 1]))
        out.append(np.mean(codes == PHASES.index(lab)) if lab is not None else np.nan)
    return np.array(out)


def _calibration(n_grids=6, n_cells=60, p_unconverged=0.0, n_seed=3):
    """Each synthetic grid run twice with disjoint seed sets (2 seeds per cell in even grids: one pair, as the
    paper measured mc; 3 in odd ones); for every labelled cell of each run its confidence (new and old) and
    whether the other run gave the same label."""
    rule = PhaseRule.paper()
    by = ["model.width", "train.batch_size"]
    out = []
    for g in range(n_grids):
        rng = np.random.default_rng([7, g])
        truth = _synthetic_truth(rng, n_cells)
        runs = []
        for _ in range(2):
            models, pairs = _seed_set(rng, truth, n_seed=n_seed, p_unconverged=p_unconverged)
            cells = aggregate_cells(models, pairs, by)
            labels = rule.labels(cells)
            conf = label_confidence(models, pairs, cells, by, rule, labels, n_boot=1000, seed=g)
            runs.append(
                (
                    labels.to_numpy(),
                    conf["phase_confidence"].to_numpy(),
                    _old_bootstrap(models, pairs, cells, rule, labels, seed=g),
                )
            )
        for a, b in ((0, 1), (1, 0)):
            kept = np.array([x is not None and x == y for x, y in zip(runs[a][0], runs[b][0], strict=True)])
            out.append(
                pd.DataFrame({"new": runs[a][1], "old": runs[a][2], "kept": kept, "labelled": pd.notna(runs[a][0])})
            )
    return pd.concat(out, ignore_index=True)


CONF_BINS = [0.0, 0.6, 0.8, 0.9, 0.99, 1.0 + 1e-9]


def _calibration_table(df, column, min_n=30):
    """Per confidence bin (with >= min_n labels): number of labels, mean confidence, share kept by the rerun."""
    d = df[df["labelled"]]
    d = d.assign(bin=pd.cut(d[column], CONF_BINS, right=False))
    t = d.groupby("bin", observed=True).agg(n=("kept", "size"), conf=(column, "mean"), kept=("kept", "mean"))
    return t[t["n"] >= min_n], float(d.loc[d[column] >= 0.9, "kept"].mean())


def test_confidence_is_calibrated_on_reruns_with_disjoint_seeds():
    """(d) 6 synthetic grids x 60 cells (known means, noise that differs between cells, pairs correlated through
    their models), each run twice with disjoint seed sets (3 models, 3 pairs per cell): in every bin of
    confidence (>= 30 labels) the share of labels the other run keeps is within 0.1 of the bin's mean confidence,
    and >= 90 % above 0.9."""
    table, above = _calibration_table(_calibration(), "new")
    assert len(table) >= 4, table
    assert ((table["kept"] - table["conf"]).abs() <= 0.1).all(), table
    assert above >= 0.9, table


def test_confidence_with_unconverged_pairs_is_calibrated_where_the_old_bootstrap_was_not():
    """The same with 30 % of the curves unconverged at random (mc unknown): labels with confidence >= 0.9 agree
    >= 90 %, every bin from 0.6 up is within 0.1, and none is overconfident by more than 0.1 (below 0.6 the
    new confidence is conservative: imputing from the whole grid allows for missingness that is not random).
    The former bootstrap over the surviving pairs fails: labels it gives >= 0.9 agree < 90 %, and a bin is
    off by more than 0.1 (a label from the one pair left gets 1.00)."""
    df = _calibration(p_unconverged=0.3)
    table, above = _calibration_table(df, "new")
    assert above >= 0.9, table
    assert (table["kept"] >= table["conf"] - 0.1).all(), table
    upper = table[table["conf"] >= 0.6]
    assert len(upper) >= 3 and ((upper["kept"] - upper["conf"]).abs() <= 0.1).all(), table
    old, old_above = _calibration_table(df, "old")
    assert old_above < 0.9 and ((old["kept"] - old["conf"]).abs() > 0.1).any(), old


# --- missing metrics --------------------------------------------------------------------------------------


def test_missing_metric_warning_names_the_cells_and_the_family_to_enable():
    models, pairs = _conf_rows()
    by = ["model.width", "train.batch_size"]
    cells = aggregate_cells(models, pairs.drop(columns=["connectivity.mc"]), by)
    msgs = missing_metric_warnings(cells, PhaseRule.paper(), by)
    assert len(msgs) == 1
    assert "metrics.connectivity.enabled=true" in msgs[0] and "model.width=8" in msgs[0] and "2 cells" in msgs[0]
    # a family that ran but failed in one cell: its recorded reason is quoted
    p2 = pairs.assign(**{"cka.error": None})
    p2.loc[0:2, "cka"] = np.nan
    p2.loc[0:2, "cka.error"] = "constant features"
    cells = aggregate_cells(models, p2, by)
    msgs = missing_metric_warnings(cells, PhaseRule.paper(), by)
    assert len(msgs) == 1 and "constant features" in msgs[0] and "cka" in msgs[0] and "model.width=8" in msgs[0]


# --- rank correlations ------------------------------------------------------------------------------------


def test_spearman_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    y[3] = y[4]  # a tie
    rho, p = spearman(x, y)
    ref = stats.spearmanr(x, y)
    assert rho == pytest.approx(ref.statistic, abs=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-9)
    # the t distribution's two-sided p-value against scipy over a range of t and degrees of freedom
    from landscape.phase import student_t_two_sided

    for df in (1, 2, 3, 7.5, 30, 167):
        for t in (0.0, 0.3, 1.0, 2.5, 6.0, 40.0):
            assert student_t_two_sided(t, df) == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9, abs=1e-300)


def test_rank_correlations_exact_and_by_regime():
    cells = pd.DataFrame(
        {
            "test_acc": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            "up": [1, 5, 7, 100, 101, 102],
            "down": [6, 5, 4, 3, 2, 1],
            "flat": [1] * 6,
            "gap": [1, np.nan, 3, 4, 5, 6],
            "train_loss": [1.0, 0.9, 0.8, 0.01, 0.02, 0.03],
        }
    )
    rc = rank_correlations(cells, ["up", "down", "flat", "gap"], rule=PhaseRule.paper())
    a = rc[rc.regime == "all"].set_index("metric")
    assert a.loc["up", "rho"] == pytest.approx(1.0) and a.loc["down", "rho"] == pytest.approx(-1.0)
    assert np.isnan(a.loc["flat", "rho"]) and a.loc["gap", "n_cells"] == 5
    w = rc[rc.regime == "well-trained"].set_index("metric")
    assert (w["n_cells"] <= 3).all() and w.loc["up", "rho"] == pytest.approx(1.0)
    assert set(rc.regime) == {"all", "well-trained", "poorly-trained"}
    assert (rc.loc[rc.metric == "up", "family"] == "up").all()


def test_rank_correlations_hold_only_metrics_of_families_that_ran():
    n = 8
    rng = np.random.default_rng(0)
    models = pd.DataFrame(
        {
            "cell_id": [f"c{i}" for i in range(n)],
            "seed": 0,
            "status": "done",
            "seconds": 1.0,
            "model.width": np.arange(n) + 1,
            "train.batch_size": 16,
            "model.n_params": 100 * (np.arange(n) + 1),
            "train_loss": rng.uniform(0, 1, n),
            "test_acc": rng.uniform(0, 1, n),
            "hessian.top_eigenvalue": rng.uniform(1, 9, n),
            "hessian.trace": rng.uniform(1, 9, n),
            "hessian.trace_stderr": rng.uniform(0, 1, n),
            "hessian.top_residual": 1e-5,
            "hessian.seconds": 0.5,
            "hessian.n_matvecs": pd.array(rng.integers(10, 90, n), dtype="Int64"),
            "hessian.tol": 1e-4,
            "training.seconds": 1.2,
            "training.epochs": pd.array([30] * n, dtype="Int64"),
            "projection_trace.estimate": np.nan,
            "projection_trace.stderr": np.nan,  # a family that did not run
        }
    )
    pairs = pd.DataFrame(
        {
            "cell_id": models["cell_id"],
            "seed_a": 0,
            "seed_b": 1,
            "status": "done",
            "cka": rng.uniform(0, 1, n),
            "cka.n_samples": pd.array([768] * n, dtype="Int64"),
            "cka.seconds": 0.1,
            "connectivity.mc": rng.normal(size=n),
            "connectivity.lr": 0.05,
            "connectivity.curve_seconds": 1.0,
        }
    )
    mm, pm = metric_columns(models), metric_columns(pairs)
    assert set(mm) == {"train_loss", "test_acc", "hessian.top_eigenvalue", "hessian.trace", "projection_trace.estimate"}
    assert set(pm) == {"cka", "connectivity.mc"}
    cells = aggregate_cells(models, pairs, ["model.width", "train.batch_size"])
    rc = rank_correlations(cells, mm + pm, rule=PhaseRule.paper())
    assert set(rc["metric"]) == {"train_loss", "hessian.top_eigenvalue", "hessian.trace", "cka", "connectivity.mc"}
    assert (rc.loc[rc.regime == "all", "n_cells"] == n).all()


# --- the published results -----------------------------------------------------------------------------


def test_regression_snapshot_of_our_phase_rule_on_the_reference_grid(reference_cells):
    """A regression snapshot of our own phase rule, not a reproduction of the paper (whose phases are drawn by
    hand): the paper's thresholds (PAPER_THRESHOLDS, fitted on these same data) on the 13 x 13 grid give the
    mean test accuracy per phase of the reference README (I 74.0, II 81.1, III 81.0, IV-A 85.4, IV-B 88.3 %),
    IV-B highest and I lowest."""
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


def test_reference_confidence_and_calibration(reference_cells):
    """On the published results: every label gets a confidence from the 5 models and 10 pairs, mc from one
    curve per cell (the other nine pairs are no mc slots: not computed by design, not unknown). No cell has a
    second mc, so nothing measures how much a rerun moves mc: its spread is the grid's (conservative), no label
    is certain, and labels whose mc lies far from the thresholds are surer than those near one. Calibration
    derives a training-loss split from the bimodal log loss."""
    models, pairs = tax.read_reference(REFERENCE)
    models = models[
        models["model.width"].isin(tax.PAPER_WIDTHS) & models["train.batch_size"].isin(tax.PAPER_BATCH_SIZES)
    ]
    by = ["model.width", "train.batch_size"]
    conf = label_confidence(models, pairs, reference_cells, by, PhaseRule.paper(), n_boot=400)
    assert conf["phase_confidence"].between(0, 1).all() and (conf["n_models"] == 5).all()
    assert (
        (conf["n_pairs_mc"] == 1).all() and (conf["n_pairs_total"] == 1).all() and (conf["n_pairs_unknown"] == 0).all()
    )
    assert conf.attrs["priors"]["connectivity.mc"]["n_cells"] == 0 and conf.attrs["priors"]["cka"]["n_cells"] == 169
    assert (conf["phase_confidence"] < 1).all()
    mc = reference_cells["connectivity.mc"].to_numpy()
    margin = np.minimum(np.abs(mc - PAPER_THRESHOLDS["mc_underfit"]), np.abs(mc - PAPER_THRESHOLDS["mc_barrier"]))
    assert spearman(margin, conf["phase_confidence"].to_numpy())[0] > 0.3
    rule, report = calibrate(reference_cells)
    assert report["train_loss"]["n"] == 169 and "ashman_d" in report["train_loss"]
    # the split against sklearn's EM on the same values: a tied-variance 2-Gaussian mixture of log10(train loss),
    # split where the weighted densities cross, w0 N(x; m0, v) = w1 N(x; m1, v), i.e. in closed form
    # x = (m0 + m1) / 2 + v log(w0 / w1) / (m1 - m0); calibrate scans a 2001-point grid between the means
    from sklearn.mixture import GaussianMixture

    v = np.log10(np.maximum(reference_cells["train_loss"].to_numpy(), 1e-6)).reshape(-1, 1)
    gm = GaussianMixture(2, covariance_type="tied", tol=1e-12, max_iter=5000, n_init=3, random_state=0).fit(v)
    order = np.argsort(gm.means_.ravel())
    m, w, var = gm.means_.ravel()[order], gm.weights_[order], float(gm.covariances_.ravel()[0])
    split = (m[0] + m[1]) / 2 + var * math.log(w[0] / w[1]) / (m[1] - m[0])
    assert abs(math.log10(rule.train_loss) - split) <= (m[1] - m[0]) / 2000  # one grid step (measured 0.3 steps)
    assert report["train_loss"]["derived"] and report["train_loss"]["means"] == pytest.approx(10**m, rel=1e-4)
    assert report["train_loss"]["groups"] == [int((v <= split).sum()), int((v > split).sum())] == [93, 76]
    assert report["train_loss"]["bic_two"] == pytest.approx(gm.bic(v), abs=2e-3)
    # CKA: the well-trained (loss below the new split), well-connected (mc >= -0.5) cells are one group for BIC
    # (one Gaussian fits better than two): the paper's 0.7 is kept
    well = reference_cells[
        (reference_cells["train_loss"] <= rule.train_loss)
        & (reference_cells["connectivity.mc"] >= PAPER_THRESHOLDS["mc_barrier"])
    ]
    c = well["cka"].dropna().to_numpy().reshape(-1, 1)
    assert report["cka"]["n"] == len(c) == 62
    one = GaussianMixture(1).fit(c).bic(c)
    two = GaussianMixture(2, covariance_type="tied", n_init=3, random_state=0).fit(c).bic(c)
    assert one < two and not report["cka"]["derived"] and rule.cka == PAPER_THRESHOLDS["cka"]


def test_reference_rank_correlations_have_the_papers_signs(reference_cells):
    """Over the 169 cells: lower training loss, flatter minima (smaller top eigenvalue and trace), better
    connectivity (mc closer to/above 0) and more similar representations (CKA) go with higher test
    accuracy. L2 distance between seeds also correlates positively in these data (wider nets sit further
    apart and generalise better)."""
    metrics = ["train_loss", "hessian.top_eigenvalue", "hessian.trace", "connectivity.mc", "cka", "l2_distance"]
    rc = rank_correlations(reference_cells, metrics)
    rc = rc[rc.regime == "all"].set_index("metric")
    assert (rc["n_cells"] == 169).all() and (rc["p_value"] < 1e-6).all()
    for m in ("train_loss", "hessian.top_eigenvalue", "hessian.trace"):
        assert rc.loc[m, "rho"] < -0.7, m
    assert rc.loc["cka", "rho"] > 0.8
    assert rc.loc["connectivity.mc", "rho"] > 0.5
    assert 0.3 < rc.loc["l2_distance", "rho"] < 0.6


# --- the sweep file's phase section -------------------------------------------------------------------------


def test_phase_section_is_typed_checked_and_not_part_of_the_cell(compose):
    from landscape.cell import cell_id
    from landscape.config import ConfigError, check

    base = compose([])
    cfg = compose(["phase.thresholds=calibrate", "phase.cka=0.6", "phase.x=model.width"])
    assert cfg.phase.cka == 0.6 and cell_id(cfg) == cell_id(base)
    check(cfg)
    with pytest.raises(ConfigError, match=r"phase.thresholds='calibrated': expected one of paper, calibrate"):
        check(compose(["phase.thresholds=calibrated"]))
    with pytest.raises(Exception, match="cak"):
        compose(["phase.cak=0.6"])
    demo = compose(["+sweep=demo"])
    assert (demo.phase.x, demo.phase.y, demo.phase.train_loss, demo.phase.mc_barrier) == (
        "model.width",
        "data.label_noise",
        0.05,
        -0.5,
    )
