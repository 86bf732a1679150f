"""One setting per cell (issue 19): the rule of ``landscape.settings_choice`` on rows built by hand, and
``landscape-phase`` on a real sweep launched twice with two connectivity budgets."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from landscape.settings_choice import choose_for_cells, choose_settings, parse_select, signatures

ROOT = Path(__file__).resolve().parents[1]
T0 = pd.Timestamp("2026-01-01", tz="UTC")


def pair(
    width: int,
    a: int,
    b: int,
    budget: float,
    mc: float | None,
    minute: int,
    barrier: float | None = 0.3,
    cka: float | None = None,
    **extra,
) -> dict:
    """A pairs row of cell ``c<width>`` (knob ``model.width``) from a request with curve budget ``budget``."""
    row = {
        "cell_id": f"c{width}",
        "seed_a": a,
        "seed_b": b,
        "model.width": width,
        "status": "done",
        "finished_at": T0 + pd.Timedelta(minutes=minute),
        "connectivity.budget": float(budget),
        "connectivity.mc": mc,
        "connectivity.barrier": barrier,
        "cka": cka,
        "cka.n_samples": 100 if cka is not None else None,
    }
    row.update(extra)
    return row


def frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in ("connectivity.mc", "connectivity.barrier", "cka", "connectivity.budget"):
        df[c] = df[c].astype("float64")
    return df


def by_pair(df: pd.DataFrame) -> dict:
    return {(r["cell_id"], r["seed_a"], r["seed_b"]): r for _, r in df.iterrows()}


def the(reports, family="connectivity"):
    return next(r for r in reports if r.family == family)


def test_the_setting_covering_most_cells_wins_over_a_newer_one():
    # budget 2 in all three cells (older), budget 8 (newer) in two: budget 2 is the sweep's setting
    rows = [pair(w, 0, 1, 2, -1.0, 0) for w in (8, 16, 32)] + [pair(w, 0, 1, 8, 0.5, 60) for w in (8, 16)]
    out, reports = choose_settings(frame(rows), name_by=["model.width"])
    rep = the(reports)
    assert rep.several and rep.signature["budget"] == 2.0 and rep.label == "budget=2"
    assert (rep.n_using, rep.n_cells, rep.others, rep.without) == (3, 3, [], [])
    assert len(out) == 3 and (out["connectivity.mc"] == -1.0).all()
    assert sorted((a["label"], a["cells"]) for a in rep.available) == [("budget=2", 3), ("budget=8", 2)]
    assert (
        "connectivity: 2 settings in the pairs rows; using budget=2 in 3 of 3 cells (--select to choose)"
        == rep.describe()
    )


def test_ties_go_to_the_newest_setting():
    rows = [pair(w, 0, 1, 2, -1.0, 0) for w in (8, 16)] + [pair(w, 0, 1, 8, 0.5, 60) for w in (8, 16)]
    out, reports = choose_settings(frame(rows))
    assert the(reports).signature["budget"] == 8.0 and (out["connectivity.mc"] == 0.5).all()
    # the same rows, the older request written last in the table: the order of rows does not matter
    rows = [pair(w, 0, 1, 2, -1.0, 90) for w in (8, 16)] + [pair(w, 0, 1, 8, 0.5, 60) for w in (8, 16)]
    out, reports = choose_settings(frame(rows[::-1]))
    assert the(reports).signature["budget"] == 2.0 and (out["connectivity.mc"] == -1.0).all()


def test_a_cell_without_the_chosen_setting_uses_its_own_and_is_named(caplog):
    rows = [pair(w, 0, 1, 2, -1.0, 0) for w in (8, 16)] + [pair(32, 0, 1, 8, 0.5, 60)]
    with caplog.at_level(logging.WARNING, logger="landscape.settings_choice"):
        out, reports = choose_settings(frame(rows), name_by=["model.width"])
    rep = the(reports)
    assert rep.signature["budget"] == 2.0 and rep.n_using == 2 and rep.n_cells == 3
    assert rep.others == [("model.width=32", "budget=8")]
    assert "model.width=32 (budget=8)" in caplog.text and "1 cell(s) without rows at budget=2" in caplog.text
    mc = out.set_index("cell_id")["connectivity.mc"]
    assert (mc["c8"], mc["c16"], mc["c32"]) == (-1.0, -1.0, 0.5)


def test_select_forces_a_setting_and_names_the_cells_left_without_it():
    rows = [pair(w, 0, 1, 2, -1.0, 0) for w in (8, 16)] + [pair(w, 0, 1, 8, 0.5, 60) for w in (8, 32)]
    rows += [pair(16, 0, 1, 2, -1.0, 0, cka=0.9) | {"seed_b": 2}]  # a second pair of cell 16, budget 2 only
    models = pd.DataFrame({"cell_id": ["c8", "c16", "c32"], "seed": [0, 0, 0], "model.width": [8, 16, 32]})
    _, pairs, reports = choose_for_cells(models, frame(rows), parse_select(["connectivity.budget=8"]), ["model.width"])
    rep = the(reports)
    assert rep.signature["budget"] == 8.0 and rep.selected == {"connectivity.budget": 8}
    assert rep.without == ["model.width=16"] and rep.n_using == 2 and rep.others == []
    assert "left without its values: model.width=16" in " ".join(rep.warnings())
    assert "selected by connectivity.budget=8" in rep.describe()
    p = by_pair(pairs)
    assert p[("c8", 0, 1)]["connectivity.mc"] == 0.5 and p[("c32", 0, 1)]["connectivity.mc"] == 0.5
    # cell 16 keeps its pairs (and their other families) but no connectivity value of another budget
    assert np.isnan(p[("c16", 0, 1)]["connectivity.mc"]) and np.isnan(p[("c16", 0, 2)]["connectivity.mc"])
    assert p[("c16", 0, 2)]["cka"] == 0.9 and len(pairs) == 4
    # without --select: a tie on cells (2 each), the newest is budget 8; cell 16 keeps its own budget 2, named
    _, pairs, reports = choose_for_cells(models, frame(rows), None, ["model.width"])
    assert the(reports).label == "budget=8" and the(reports).others == [("model.width=16", "budget=2")]
    assert by_pair(pairs)[("c16", 0, 2)]["connectivity.mc"] == -1.0
    with pytest.raises(
        ValueError,
        match=r"connectivity.budget=4: no pairs rows of connectivity have it; the rows "
        r"hold connectivity.budget in \['2', '8'\]",
    ):
        choose_for_cells(models, frame(rows), {"connectivity.budget": 4})
    with pytest.raises(KeyError, match="connectivity.budgett is not a settings column"):
        parse_select(["connectivity.budgett=8"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_select(["connectivity.budget"])
    with pytest.raises(ValueError, match="no rows of that family"):
        choose_for_cells(models, frame(rows), {"hessian.n_top": 2})


def test_no_column_is_mixed_across_requests_and_families_are_chosen_independently():
    # request 1 (older): budget 2, line on (barrier), CKA on; request 2 (newer): budget 8, line off, CKA off.
    old = [pair(8, 0, 1, 2, -1.0, 0, barrier=0.3, cka=0.9), pair(16, 0, 1, 2, -2.0, 0, barrier=0.4, cka=0.8)]
    new = [pair(8, 0, 1, 8, 0.5, 60, barrier=None), pair(16, 0, 1, 8, 0.7, 60, barrier=None)]
    df = frame(old + new)
    out, reports = choose_settings(df)
    assert the(reports).signature["budget"] == 8.0  # a tie on cells: the newest
    p = by_pair(out)
    # the newest non-null value per column (the old reading) would pair mc 0.5 with the old curve's barrier 0.3
    assert p[("c8", 0, 1)]["connectivity.mc"] == 0.5 and np.isnan(p[("c8", 0, 1)]["connectivity.barrier"])
    assert p[("c16", 0, 1)]["connectivity.mc"] == 0.7 and np.isnan(p[("c16", 0, 1)]["connectivity.barrier"])
    # CKA ran in request 1 only: its values come from there, whatever connectivity chose
    assert (p[("c8", 0, 1)]["cka"], p[("c16", 0, 1)]["cka"]) == (0.9, 0.8)
    assert [r.family for r in reports] == ["cka", "connectivity"] or {"cka", "connectivity"} <= {
        r.family for r in reports
    }
    assert not the(reports, "cka").several


def test_the_signature_is_the_request_not_the_value_a_family_reports():
    # connectivity.epochs = null asks for budget-derived epochs; the rows report the epochs used (3 and 6):
    # one request, one signature
    cfg = json.dumps({"metrics": {"connectivity": {"enabled": True, "epochs": None, "budget": 2.0}}})
    rows = frame(
        [
            pair(8, 0, 1, 2, -1.0, 0, config=cfg, **{"connectivity.epochs": 3}),
            pair(16, 0, 1, 2, -1.0, 0, config=cfg, **{"connectivity.epochs": 6}),
        ]
    )
    from landscape.metrics import get

    sig = signatures(rows, get("connectivity"))
    assert sig.nunique() == 1 and dict(sig.iloc[0])["epochs"] is None
    _, reports = choose_settings(rows)
    assert not the(reports).several and the(reports).n_using == 2


# ---------------------------------------------------------------------------------------------- the CLI
SWEEP = [
    "-m",
    "hydra.sweep.dir=s",
    "data.subsample=0.25",
    "model.width=4,8",
    "train.epochs=3",
    "train.batch_size=32",
    "train.seeds=[0,1]",
    "metrics.connectivity.enabled=true",
    "metrics.connectivity.line=false",
    "metrics.connectivity.test=false",
]


def test_landscape_phase_on_a_sweep_with_two_connectivity_budgets(cli, tmp_path):
    """Two launches of one 2-cell grid into one directory, curve budgets 1 and 2: both sets of pairs rows are
    kept; landscape-phase says it uses one budget in every cell, cells.csv's mc is the mean of that budget's
    rows (read here from the Parquet files), --select picks the other, and mc_budget.png is drawn."""
    cli([*SWEEP, "metrics.connectivity.budget=1"])
    cli([*SWEEP, "metrics.connectivity.budget=2"])
    files = sorted((tmp_path / "s" / "results" / "pairs").glob("*.parquet"))
    raw = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert len(files) == 4 and len(raw) == 4  # 2 cells x 2 budgets, one pair each
    budgets = sorted(raw["connectivity.budget"].unique())
    assert budgets == [1.0, 2.0]
    widths = {cid: json.loads(c)["model"]["width"] for cid, c in zip(raw["cell_id"], raw["config"], strict=True)}
    raw["model.width"] = raw["cell_id"].map(widths)
    # both budgets cover both cells: the tie goes to the newest launch (budget 2)
    expected = {
        b: raw[raw["connectivity.budget"] == b].groupby("model.width")["connectivity.mc"].mean() for b in budgets
    }

    def run(*extra: str) -> tuple[pd.DataFrame, str, dict]:
        out = tmp_path / ("out" + "_".join(extra).replace("=", ""))
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "landscape.cli.phase",
                str(tmp_path / "s"),
                "--x",
                "model.width",
                "--y",
                "train.batch_size",
                "--bootstrap",
                "20",
                "--out",
                str(out),
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env=dict(os.environ, MPLBACKEND="Agg"),
        )
        assert res.returncode == 0, res.stderr[-3000:]
        return pd.read_csv(out / "cells.csv"), res.stdout, json.loads((out / "manifest.json").read_text())

    cells, stdout, manifest = run()
    # (other fields are named too where they differ between the launches, e.g. one added to the family since)
    assert re.search(
        r"^connectivity: 2 settings in the pairs rows; using budget=2\b.* in 2 of 2 cells "
        r"\(--select to choose\)$",
        stdout,
        re.M,
    ), stdout
    mc = cells.set_index("model.width")["connectivity.mc"]
    assert mc.to_dict() == pytest.approx(expected[2.0].to_dict(), rel=1e-12)
    assert expected[1.0].to_dict() != pytest.approx(expected[2.0].to_dict(), rel=1e-6)  # the choice matters
    choice = next(c for c in manifest["settings_choice"] if c["family"] == "connectivity")
    assert choice["signature"]["budget"] == 2.0 and choice["n_using"] == 2
    # single-setting families print nothing new
    assert "cka:" not in stdout and "training:" not in stdout and "l2:" not in stdout
    out = Path(manifest["outputs"]["mc_budget.png"])
    assert out.name == "mc_budget.png" and out.stat().st_size > 10_000

    cells, stdout, manifest = run("--select", "connectivity.budget=1")
    assert re.search(r"using budget=1\b.* in 2 of 2 cells \(selected by connectivity.budget=1\)$", stdout, re.M), stdout
    assert cells.set_index("model.width")["connectivity.mc"].to_dict() == pytest.approx(
        expected[1.0].to_dict(), rel=1e-12
    )
    assert manifest["settings"]["select"] == ["connectivity.budget=1"]
