"""Phase-diagram figures from a small synthetic sweep (masked cells, orientation, log axes, data-driven colour
limits, clipping, the phase map's legend, hatching and boundaries), read from the figure objects; the
landscape-phase command end to end (planned cells without rows, a collapsed cell without CKA, the sweep file's
phase section); the demo's grid through the real CLI; the exploration notebook as a script."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import taxonomy2021

from landscape import phase_diagram as pdg
from landscape.cli import phase as cli
from landscape.phase import PHASES, PhaseRule, aggregate_cells

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [2, 4, 8, 32]  # non-uniform in log space (8 -> 32 is a factor 4)
BATCHES = [16, 64, 256]
MISSING = (8, 64)  # no rows at all
FAILED = (4, 256)  # every model failed
DIVERGED = (32, 16)  # every model diverged


def _synthetic_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two seeds per cell; metrics are simple functions of the knobs (so expected values are known)."""
    models, pairs = [], []
    for w in WIDTHS:
        for b in BATCHES:
            if (w, b) == MISSING:
                continue
            status = "failed" if (w, b) == FAILED else "diverged" if (w, b) == DIVERGED else "done"
            cid = f"w{w}_b{b}"
            for s in (0, 1):
                ok = status == "done"
                models.append(
                    {
                        "cell_id": cid,
                        "sweep": "synthetic",
                        "seed": s,
                        "status": status,
                        "model.width": w,
                        "train.batch_size": b,
                        "train_loss": (1.0 / w + 0.01 * s) if ok else None,
                        "test_acc": (0.6 + 0.01 * np.log2(w) + 0.001 * s) if ok else None,
                        "hessian.top_eigenvalue": float(b) if ok else None,
                        "hessian.trace": 1000.0 if ok else None,
                    }
                )
            pairs.append(
                {
                    "cell_id": cid,
                    "sweep": "synthetic",
                    "seed_a": 0,
                    "seed_b": 1,
                    "status": status,
                    "model.width": w,
                    "train.batch_size": b,
                    "connectivity.mc": (-5.0 if w <= 4 else 0.0) if status == "done" else None,
                    "cka": (0.5 if b == 256 else 0.75) if status == "done" else None,
                    "l2_distance": 10.0 * w if status == "done" else None,
                }
            )
    return pd.DataFrame(models), pd.DataFrame(pairs)


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    m, p = _synthetic_rows()
    c = aggregate_cells(m, p, ["model.width", "train.batch_size"])
    c["phase"] = PhaseRule().labels(c)
    c["phase_confidence"] = 1.0
    return c


def _ij(x, y):
    return BATCHES.index(y), WIDTHS.index(x)


def test_cell_edges_geometric_midpoints():
    e = pdg.cell_edges([2, 8, 32])
    assert np.allclose(e, [1, 4, 16, 64])  # geometric midpoints, mirrored outer edges
    assert np.allclose(pdg.cell_edges([0.0, 0.1, 0.3]), [-0.05, 0.05, 0.2, 0.4])  # 0 present: linear
    assert pdg.axis_scale([0.0, 0.1]) == "linear" and pdg.axis_scale([1, 2]) == "log"


def _panels(fig):
    return {
        c.get_gid()[len("metric:") :]: (ax, c)
        for ax in fig.axes
        for c in ax.collections
        if str(c.get_gid() or "").startswith("metric:")
    }


def _cbar_of(fig, mesh):
    return next(
        ax for ax in fig.axes if getattr(ax, "_colorbar", None) is not None and ax._colorbar.mappable is mesh
    )._colorbar


def test_metric_panels_masks_orientation_and_data_colour_limits(cells):
    metrics = ["test_acc", "hessian.top_eigenvalue", "connectivity.mc", "cka"]
    fig = pdg.metrics_figure(cells, "model.width", "train.batch_size", metrics)
    try:
        panels = _panels(fig)
        assert list(panels) == metrics
        for metric, (ax, mesh) in panels.items():
            # log axes on the real knob values, cell edges at geometric midpoints
            assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
            coords = mesh.get_coordinates()  # [ny+1, nx+1, 2]
            assert np.allclose(coords[0, :, 0], pdg.cell_edges(WIDTHS))
            assert np.allclose(coords[:, 0, 1], pdg.cell_edges(BATCHES))
            # batch size axis inverted: small batches at the top
            y0, y1 = ax.get_ylim()
            assert y0 > y1 and y1 == pytest.approx(pdg.cell_edges(BATCHES)[0])
            # masked (never interpolated) exactly where there is no value; every cell stays on the axes
            arr = mesh.get_array().reshape(len(BATCHES), len(WIDTHS))
            mask = np.ma.getmaskarray(arr)
            expected = np.zeros_like(mask)
            for cell in (MISSING, FAILED, DIVERGED):
                expected[_ij(*cell)] = True
            assert (mask == expected).all(), metric
            assert mcolors.same_color(mesh.get_cmap().get_bad(), pdg.MISSING_COLOUR)
            marks = {ln.get_gid(): list(zip(*ln.get_data(), strict=True)) for ln in ax.lines}
            assert marks["mask:missing"] == [MISSING]
            assert marks["mask:failed"] == [FAILED]
            assert marks["mask:diverged"] == [DIVERGED]
        # data-driven limits: the 2nd and 98th percentiles of the cell means (log10 for the eigenvalue)
        acc = cells["test_acc"].dropna().to_numpy()
        assert panels["test_acc"][1].get_clim() == pytest.approx(tuple(np.percentile(acc, [2, 98])))
        eig = cells["hessian.top_eigenvalue"].dropna().to_numpy()
        norm = panels["hessian.top_eigenvalue"][1].norm
        assert isinstance(norm, mcolors.LogNorm)
        assert (norm.vmin, norm.vmax) == pytest.approx(tuple(10 ** np.percentile(np.log10(eig), [2, 98])))
        # the values drawn are the cell means themselves
        a = panels["hessian.top_eigenvalue"][1].get_array().reshape(len(BATCHES), len(WIDTHS))
        assert a[_ij(2, 256)] == pytest.approx(256.0)
        # mode connectivity: symmetric-log scale, limits from the data's sign and range (-5 and 0 pp here: no
        # colour spent on positive values), 0 drawn in the diverging map's middle colour, -5 in its end colour
        mc_mesh = panels["connectivity.mc"][1]
        mc_norm = mc_mesh.norm
        assert isinstance(mc_norm, mcolors.SymLogNorm) and (mc_norm.vmin, mc_norm.vmax) == (-5.0, 0.0)
        rdbu = plt.get_cmap("RdBu_r")
        assert np.allclose(mc_mesh.cmap(mc_norm(0.0)), rdbu(0.5), atol=0.01)
        assert np.allclose(mc_mesh.cmap(mc_norm(-5.0)), rdbu(0.0), atol=0.01)
        # labelled colour bars: unit and scale
        labels = [_cbar_of(fig, panels[m][1]).ax.get_xlabel() for m in metrics]
        assert "[fraction]" in labels[0] and "log10 scale" in labels[1] and "pp of training error" in labels[2]
        assert "symlog" in labels[2] and "[unitless]" in labels[3]
    finally:
        plt.close(fig)


def test_clipped_cells_get_extend_arrows_and_marks(cells):
    c = cells.copy()
    i_hi = c.index[(c["model.width"] == 8) & (c["train.batch_size"] == 16)][0]
    i_lo = c.index[(c["model.width"] == 2) & (c["train.batch_size"] == 64)][0]
    c.loc[i_hi, "test_acc"] = 0.99  # far above every other cell: beyond the 98th percentile
    c.loc[i_lo, "test_acc"] = 0.10
    fig = pdg.metrics_figure(c, "model.width", "train.batch_size", ["test_acc", "cka"])
    try:
        ax, mesh = _panels(fig)["test_acc"]
        assert _cbar_of(fig, mesh).extend == "both"
        lo, hi = mesh.get_clim()
        assert lo > 0.10 and hi < 0.99
        marks = {ln.get_gid(): ln for ln in ax.lines}
        assert "clipped:high" in marks and "clipped:low" in marks
        # one mark each, inside the clipped cell (x between its edges)
        ex, ey = pdg.cell_edges(WIDTHS), pdg.cell_edges(BATCHES)
        (xh,), (yh,) = marks["clipped:high"].get_data()
        assert ex[WIDTHS.index(8)] < xh < ex[WIDTHS.index(8) + 1] and ey[0] < yh < ey[1]
        (xl,), _ = marks["clipped:low"].get_data()
        assert ex[0] < xl < ex[1]
        # cka of the synthetic sweep holds two values only: the percentiles are the values, nothing is clipped
        ax2, mesh2 = _panels(fig)["cka"]
        assert _cbar_of(fig, mesh2).extend == "neither" and not any(
            str(ln.get_gid()).startswith("clipped") for ln in ax2.lines
        )
    finally:
        plt.close(fig)


def test_facets_share_colour_limits_and_the_paper_limits_are_an_option(cells):
    two = pd.concat(
        [cells.assign(**{"train.lr": 0.1}), cells.assign(**{"train.lr": 0.2, "test_acc": cells["test_acc"] - 0.3})]
    )
    fig = pdg.metrics_figure(two, "model.width", "train.batch_size", ["test_acc"], facet="train.lr")
    try:
        meshes = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "metric:test_acc"]
        assert len(meshes) == 2
        both = two["test_acc"].dropna().to_numpy()
        assert meshes[0].get_clim() == meshes[1].get_clim() == pytest.approx(tuple(np.percentile(both, [2, 98])))
    finally:
        plt.close(fig)
    fig = pdg.metrics_figure(cells, "model.width", "train.batch_size", ["test_acc", "hessian.trace"], limits="paper")
    try:
        p = _panels(fig)
        assert p["test_acc"][1].get_clim() == (0.56, 0.91)
        assert p["hessian.trace"][1].get_clim() == pytest.approx((np.exp(3.0), np.exp(8.0)))
        assert "paper's limits" in _cbar_of(fig, p["test_acc"][1]).ax.get_xlabel()
    finally:
        plt.close(fig)


def test_learning_rate_axis_is_not_inverted():
    c = pd.DataFrame(
        {
            "model.width": [2, 4, 2, 4],
            "train.lr": [0.01, 0.01, 0.1, 0.1],
            "test_acc": [0.6, 0.7, 0.8, 0.9],
            "status": "done",
        }
    )
    fig, ax = plt.subplots()
    try:
        pdg.draw_metric(ax, pdg.Grid.from_cells(c, "model.width", "train.lr"), c, "test_acc")
        y0, y1 = ax.get_ylim()
        assert y0 < y1 and ax.get_yscale() == "log"
    finally:
        plt.close(fig)


def test_phase_map_colours_legend_hatching_and_boundaries(cells):
    c = cells.copy()
    sel = (c["model.width"] == 2) & (c["train.batch_size"] == 16)
    c.loc[sel, "phase_confidence"] = 0.6
    c["n_models"], c["n_pairs_mc"] = 2, 1
    fig = pdg.phase_map_figure(c, "model.width", "train.batch_size", uncertain_below=0.9)
    try:
        ax = fig.axes[0]
        mesh = next(m for m in ax.collections if m.get_gid() == "phase-map")
        codes = mesh.get_array().reshape(len(BATCHES), len(WIDTHS))
        # one discrete colour per phase: the mesh holds the phase index, the colour map the phase colours
        assert codes[_ij(2, 16)] == PHASES.index("I") and codes[_ij(32, 256)] == PHASES.index("IV-A")
        assert mcolors.same_color(mesh.cmap(mesh.norm(PHASES.index("IV-B"))), pdg.PHASE_COLOURS["IV-B"])
        texts = {(t.get_position(), t.get_text().split("\n")[0]) for t in ax.texts if t.get_gid() == "phase-label"}
        assert ((2, 16), "I") in texts and ((8, 16), "II") in texts
        assert ((32, 64), "IV-B") in texts and ((32, 256), "IV-A") in texts
        assert len(texts) == len(WIDTHS) * len(BATCHES) - 3
        full = next(t.get_text() for t in ax.texts if t.get_position() == (2, 16))
        assert full.split("\n")[1:] == ["0.60", "2m/1p"]
        # the uncertain cell is hatched, no other
        unc = next(c_ for c_ in ax.collections if c_.get_gid() == "uncertain")
        assert unc.cells == [(2.0, 16.0)] and unc.get_hatch() == "////"
        # legend: every phase in order, what it means (one line each), its cells and mean accuracy (the
        # phases absent from the map faded); hatch and boundary entries
        legend = fig.legends[0]
        names = [t.get_text() for t in legend.get_texts()]
        assert [n.split(":")[0] for n in names[: len(PHASES)]] == list(PHASES)
        n_i = int((c["phase"] == "I").sum())
        acc_i = c.loc[c["phase"] == "I", "test_acc"].mean()
        assert names[0] == f"I: under-fitted, barrier ({n_i} cells, test acc. {acc_i:.3f})"
        assert names[PHASES.index("III")] == "III: fitted, barrier (0 cells)"
        assert all("\n" not in n for n in names[: len(PHASES)])
        patches = legend.get_patches()[: len(PHASES)]
        assert [p.get_alpha() for p in patches] == [1.0 if (c["phase"] == p).any() else 0.35 for p in PHASES]
        assert "confidence < 0.9" in names and "phase boundary" in names
        # masked cells are marked on the map and named in the legend
        assert any(n == pdg.MASK_LABELS["failed"] for n in names)
        lc = next(c_ for c_ in ax.collections if c_.get_gid() == "phase-boundaries")
        segs = [np.asarray(s) for s in lc.get_segments()]
        e_x, e_y = pdg.cell_edges(WIDTHS), pdg.cell_edges(BATCHES)
        # the vertical edge between width 4 (I) and 8 (II) in the top row
        assert any(np.allclose(s, [[e_x[2], e_y[0]], [e_x[2], e_y[1]]]) for s in segs)
        # the horizontal edge between batch 64 (IV-B) and 256 (IV-A) at width 32
        assert any(np.allclose(s, [[e_x[3], e_y[2]], [e_x[4], e_y[2]]]) for s in segs)
        # no boundary between two equal labels (widths 2 and 4 are both phase I at batch 16)
        assert not any(np.allclose(s, [[e_x[1], e_y[0]], [e_x[1], e_y[1]]]) for s in segs)
    finally:
        plt.close(fig)


def _write_sweep(root: Path, models: pd.DataFrame, pairs: pd.DataFrame) -> None:
    for table, df in (("models", models), ("pairs", pairs)):
        d = root / "results" / table
        d.mkdir(parents=True, exist_ok=True)
        for cid, part in df.groupby("cell_id"):
            pq.write_table(
                pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False), d / f"{cid}-0.parquet"
            )  # <cell_id>-<settings key>.parquet, as the job names them


def test_cli_end_to_end_and_refresh(tmp_path, capsys):
    m, p = _synthetic_rows()
    keep = m["model.width"] != 32
    sweep = tmp_path / "sweep"
    _write_sweep(sweep, m[keep], p[p["model.width"] != 32])
    out = tmp_path / "out"
    args = [
        str(sweep),
        "--x",
        "model.width",
        "--y",
        "train.batch_size",
        "--out",
        str(out),
        "--metrics",
        "test_acc",
        "connectivity.mc",
        "--thresholds",
        "cka=0.6",
    ]
    assert cli.main(args + ["--formats", "png", "pdf"]) == 0
    printed = capsys.readouterr().out
    for name in (
        "phase_diagram.png",
        "phase_diagram.pdf",
        "phase_map.png",
        "pivot_test_acc.csv",
        "pivot_phase.csv",
        "rank_correlations.csv",
        "manifest.json",
        "cells.csv",
        "phase_summary.csv",
    ):
        assert (out / name).stat().st_size > 0
    assert str(out) in printed and "phases (train.batch_size rows, model.width columns" in printed
    # the printed table: small batches on top, as on the figure
    table = printed[printed.index("phases (") :].splitlines()
    rows = [ln.split()[0] for ln in table[3:6]]
    assert rows == ["16", "64", "256"]
    assert "test_acc_mean" in printed
    piv = pd.read_csv(out / "pivot_test_acc.csv", index_col=0)
    assert list(piv.columns) == ["2", "4", "8"] and list(piv.index) == BATCHES
    assert np.isnan(piv.loc[64, "8"]) and np.isnan(piv.loc[256, "4"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["thresholds"]["cka"] == {"value": 0.6, "unit": "unitless"} and manifest["n_cells"] == 8
    assert manifest["thresholds"]["train_loss"]["unit"] == "nats" and manifest["settings_origin"]["cka"] == "flag"
    assert len(manifest["inputs"]["models"]) == 8 and "commit" in manifest["git"]
    cells_csv = pd.read_csv(out / "cells.csv")
    assert {"phase", "phase_confidence", "n_models", "n_pairs_mc", "uncertain"} <= set(cells_csv.columns)
    # more cells finish: re-running refreshes every output
    _write_sweep(sweep, m[~keep], p[p["model.width"] == 32])
    before = (out / "phase_map.png").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert (out / "phase_map.png").stat().st_mtime_ns > before
    piv = pd.read_csv(out / "pivot_test_acc.csv", index_col=0)
    assert list(piv.columns) == ["2", "4", "8", "32"]
    assert json.loads((out / "manifest.json").read_text())["n_cells"] == 11
    # a filter on a knob, and a bad filter key / bad threshold named in the error
    assert cli.main(args + ["--filter", "model.width=2,4"]) == 0
    assert list(pd.read_csv(out / "pivot_test_acc.csv", index_col=0).columns) == ["2", "4"]
    capsys.readouterr()
    assert cli.main(args + ["--filter", "model.depth=3"]) == 2
    assert "model.depth" in capsys.readouterr().err
    assert cli.main(args + ["--thresholds", "cka=high"]) == 2
    assert "cka='high'" in capsys.readouterr().err
    assert cli.main(args + ["--thresholds", "papers"]) == 2
    assert "papers" in capsys.readouterr().err


def _launch_record(sweep: Path, cells: list[tuple[str, dict]], states: dict[str, str]) -> None:
    (sweep / "launches").mkdir(parents=True, exist_ok=True)
    (sweep / "launches" / "20260101T000000-000000001.json").write_text(
        json.dumps(
            {
                "arguments": [],
                "argv": [],
                "cwd": str(sweep),
                "cells": [{"cell_id": cid, "overrides": [f"{k}={v}" for k, v in kv.items()]} for cid, kv in cells],
            }
        )
    )
    for cid, state in states.items():
        (sweep / "cells" / cid).mkdir(parents=True, exist_ok=True)
        (sweep / "cells" / cid / "status.json").write_text(json.dumps({"state": state, "cell_id": cid}))
    # a sweep with cells/ serves only the result files a cell's status records (by content): record the rows
    for table in ("models", "pairs"):
        for f in sorted((sweep / "results" / table).glob("*.parquet")):
            cid = f.name.partition("-")[0]
            status = sweep / "cells" / cid / "status.json"
            doc = json.loads(status.read_text()) if status.exists() else {"state": "done", "cell_id": cid}
            doc.setdefault("results", {})[f"{table}/{f.name}"] = {
                "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                "covers": [],
            }
            status.parent.mkdir(parents=True, exist_ok=True)
            status.write_text(json.dumps(doc))


def test_failed_row_and_collapsed_cell_stay_on_the_axes_marked(tmp_path, caplog):
    """A row of cells that failed before writing any row (width 64, known only from the launch record and
    their status.json) and a collapsed width-2 cell that is done with a null CKA (h2's contract) are drawn,
    masked and marked, in every panel and on the phase map; the missing CKA is named in the warnings."""
    m, p = _synthetic_rows()
    p.loc[(p["model.width"] == 2) & (p["train.batch_size"] == 16), "cka"] = np.nan
    p["cka.error"] = None
    p.loc[(p["model.width"] == 2) & (p["train.batch_size"] == 16), "cka.error"] = "constant features (collapsed net)"
    sweep = tmp_path / "sweep"
    _write_sweep(sweep, m, p)
    planned = [(f"w{w}_b{b}", {"model.width": w, "train.batch_size": b}) for w in WIDTHS + [64] for b in BATCHES]
    _launch_record(sweep, planned, {f"w64_b{b}": "failed" for b in BATCHES})
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        paths = cli.run(
            sweep,
            "model.width",
            "train.batch_size",
            out=out,
            formats=("png",),
            metrics=["test_acc", "cka"],
            threshold_overrides={"cka": 0.6},
        )
    cells_csv = pd.read_csv(paths["cells.csv"])
    w64 = cells_csv[cells_csv["model.width"] == 64]
    assert len(w64) == 3 and (w64["status"] == "failed").all() and w64["phase"].isna().all()
    assert any("no completed model" in r.getMessage() and "model.width=64" in r.getMessage() for r in caplog.records)

    c = cells_csv.copy()
    fig = pdg.metrics_figure(c, "model.width", "train.batch_size", ["test_acc", "cka"])
    try:
        for metric, (ax, mesh) in _panels(fig).items():
            assert np.allclose(mesh.get_coordinates()[0, :, 0], pdg.cell_edges(WIDTHS + [64]))
            marks = {ln.get_gid(): sorted(zip(*ln.get_data(), strict=True)) for ln in ax.lines}
            assert marks["mask:failed"] == sorted([FAILED] + [(64, b) for b in BATCHES]), metric
        ax, mesh = _panels(fig)["cka"]
        marks = {ln.get_gid(): list(zip(*ln.get_data(), strict=True)) for ln in ax.lines}
        assert marks["mask:nan"] == [(2, 16)]
        arr = mesh.get_array().reshape(len(BATCHES), len(WIDTHS) + 1)
        assert np.ma.getmaskarray(arr)[0, 0]
    finally:
        plt.close(fig)
    # on the phase map the collapsed cell keeps its label (CKA is not needed on the high-loss side)
    assert cells_csv.set_index(["model.width", "train.batch_size"]).loc[(2, 16), "phase"] == "I"
    fig = pdg.phase_map_figure(c, "model.width", "train.batch_size")
    try:
        ax = fig.axes[0]
        marks = {ln.get_gid(): sorted(zip(*ln.get_data(), strict=True)) for ln in ax.lines}
        assert marks["mask:failed"] == sorted([FAILED] + [(64, b) for b in BATCHES])
        assert ax.get_xlim()[1] == pytest.approx(pdg.cell_edges(WIDTHS + [64])[-1])
    finally:
        plt.close(fig)


def test_sweep_file_phase_section_is_read(tmp_path, capsys):
    m, p = _synthetic_rows()
    sweep = tmp_path / "sweep"
    _write_sweep(sweep, m, p)
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      sweep: mygrid\n"
        "phase:\n  x: model.width\n  y: train.batch_size\n  thresholds: paper\n  cka: 0.6\n  train_loss: null\n"
        "  limits: paper\n"
    )
    out = tmp_path / "out"
    assert cli.main([str(sweep), "--out", str(out), "--mc-barrier", "-2"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["sweep_file"] == "sweeps/mygrid.yaml" and man["x"] == "model.width"
    assert man["thresholds"]["cka"]["value"] == 0.6 and man["settings_origin"]["cka"] == "sweep file"
    assert man["thresholds"]["mc_barrier"]["value"] == -2.0 and man["settings_origin"]["mc_barrier"] == "flag"
    assert man["settings"]["limits"] == "paper"
    assert "sweeps/mygrid.yaml" in capsys.readouterr().out
    # a threshold set named by a flag replaces the sweep file's values
    assert cli.main([str(sweep), "--out", str(out), "--thresholds", "paper"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["thresholds"]["cka"]["value"] == 0.7 and man["thresholds"]["source"] == "paper"
    capsys.readouterr()
    (sweep / "multirun.yaml").write_text("phase:\n  thresholds: calibrated\n")
    assert cli.main([str(sweep), "--x", "model.width", "--y", "train.batch_size", "--out", str(out)]) == 2
    assert "calibrated" in capsys.readouterr().err


def test_demo_grid_through_the_cli_gives_its_phases_with_confidences(tmp_path):
    """The demo sweep (sweeps/demo.yaml) on its corners (widths 8, 256 x label noise 0, 0.6, its settings kept but
    the curve protocol's largest budget, 4x instead of 16x, to keep the test short) through the real `landscape`
    multirun and `landscape-phase` (axes and thresholds from the sweep file's phase section): the three phases the
    demo shows under the protocol, each with a confidence, and correlations of metrics only."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    sweep = tmp_path / "demo"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "landscape.cli.app",
            "-m",
            "+sweep=demo",
            "hydra/launcher=local",  # both cores: the 4 cells in ~30 s, not 45 s one after the other
            f"hydra.sweep.dir={sweep}",
            "model.width=8,256",
            "data.label_noise=0,0.6",
            "metrics.connectivity.max_budget=4",
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(
        [sys.executable, "-m", "landscape.cli.phase", str(sweep)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = sweep / "analysis" / "phase" / "model.width__data.label_noise"
    cells_csv = pd.read_csv(out / "cells.csv")
    assert len(cells_csv) == 4 and (cells_csv["status"] == "done").all()
    assert (cells_csv["n_models"] == 3).all() and (cells_csv["n_pairs_total"] == 3).all()
    labelled = cells_csv.dropna(subset=["phase"])
    assert labelled["phase_confidence"].between(0, 1).all()
    # physics, not thresholds: width 8 cannot memorise 60 % of random labels (training loss > 1 nat) and the curve
    # between two seeds, trained longer than they were, finds a path below their error (II); width 256 fits the
    # clean and the noisy labels alike (< 0.01 nats) with no barrier, its outputs similar on clean labels (IV-B)
    # and dissimilar where each seed memorised the noise its own way (IV-A, CKA about 0.55)
    by = cells_csv.set_index(["model.width", "data.label_noise"])
    assert by.loc[(8, 0.6), "phase"] == "II" and by.loc[(8, 0.6), "train_loss"] > 1.0, by.to_dict()
    assert by.loc[(256, 0.0), "phase"] == "IV-B" and by.loc[(256, 0.6), "phase"] == "IV-A", by["phase"].to_dict()
    assert by.loc[(256, 0.6), "cka"] < 0.7 < by.loc[(256, 0.0), "cka"]
    assert (by.xs(256, level=0)["train_loss"] < 0.01).all()
    assert "sweeps/demo.yaml" in res.stdout and "per phase" in res.stdout
    rc = pd.read_csv(out / "rank_correlations.csv")
    bad = [
        mm
        for mm in rc["metric"]
        if mm.endswith(("seconds", "stderr", "residual"))
        or mm.rsplit(".", 1)[-1].startswith("n_")
        or mm.startswith(("model.", "train.", "data."))
    ]
    assert not bad and rc.groupby("metric")["n_cells"].max().min() > 0
    assert {"cka", "connectivity.mc", "hessian.trace", "l2_distance"} <= set(rc["metric"])
    assert not any(mm.startswith(("projection_trace", "surfaces", "topology", "jump_retrain")) for mm in rc["metric"])
    assert set(rc["regime"]) == {"all", "well-trained", "poorly-trained"}
    for f in ("phase_map.png", "phase_diagram.png"):
        assert (out / f).stat().st_size > 10_000


def test_notebook_runs_as_a_script_on_a_small_reference_sweep(tmp_path):
    tax = taxonomy2021()
    sweep = tmp_path / "tax"
    tax.import_reference(sweep, widths=[2, 8, 64], batch_sizes=[16, 128, 1024])
    out = tmp_path / "explore"
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "explore_sweep.py"), str(sweep), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "45 model rows, 90 pair rows" in res.stdout
    assert (out / "heatmap_test_acc.png").stat().st_size > 0 and (out / "correlations.png").stat().st_size > 0
    rc = pd.read_csv(out / "rank_correlations.csv")
    rc = rc[rc.regime == "all"].set_index("metric")
    assert rc.loc["train_loss", "rho"] < 0 and rc.loc["cka", "rho"] > 0
    # orientation as landscape-phase: small batches on top (the heatmap's first row), widths left to right
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("heatmap rows, top to bottom"))
    assert line.split(":", 1)[1].split() == ["16", "128", "1024"]


def test_cli_marks_a_label_from_one_of_three_pairs_and_a_cell_whose_mc_is_still_moving(tmp_path, monkeypatch, capsys):
    """Three seeds per cell (three pairs): in cell (16, 32) two of the three curves did not give an mc (one not
    converged, one diverged), so its label comes from 1 of 3 pairs: cells.csv has confidence < 1 and the counts,
    the map marks it (the drawn few-pairs marker, read from the figure the command saves) and writes "1/3p"; in
    cell (8, 128) mc is still rising in one pair and the label at the mean (III) could become IV: no label,
    drawn as unresolved with its reason, not as missing data."""
    widths, batches = [4, 8, 16, 32], [32, 128]
    models, pairs = [], []
    rng = np.random.default_rng(0)
    for w in widths:
        for b in batches:
            cid = f"w{w}-b{b}"
            for s in range(3):
                models.append(
                    {
                        "cell_id": cid,
                        "sweep": "s",
                        "seed": s,
                        "status": "done",
                        "model.width": w,
                        "train.batch_size": b,
                        "train_loss": (0.5 if w == 4 else 1e-3) * (1 + 0.1 * s),
                        "test_acc": 0.8,
                    }
                )
            for k, (a, c) in enumerate([(0, 1), (0, 2), (1, 2)]):
                mc = (-5.0 if w == 4 else 0.3) + 0.2 * rng.normal()
                row = {
                    "cell_id": cid,
                    "sweep": "s",
                    "seed_a": a,
                    "seed_b": c,
                    "status": "done",
                    "model.width": w,
                    "train.batch_size": b,
                    "connectivity.mc": mc,
                    "connectivity.converged": True,
                    "connectivity.mc_bound": None,
                    "connectivity.error": None,
                    "cka": 0.9 + 0.01 * k,
                }
                if (w, b) == (16, 32) and k == 1:
                    row.update({"connectivity.mc": None, "connectivity.converged": False})  # not converged, no bound
                if (w, b) == (16, 32) and k == 2:
                    row.update(
                        {
                            "connectivity.mc": None,
                            "connectivity.converged": None,
                            "connectivity.error": "curve diverged (non-finite loss)",
                        }
                    )
                if (w, b) == (8, 128):
                    row["connectivity.mc"] = [-1.0, -0.8, -0.9][k]
                    if k == 0:
                        row.update({"connectivity.converged": False, "connectivity.mc_bound": "lower"})
                pairs.append(row)
    p = pd.DataFrame(pairs)  # object columns with None, as pyarrow reads the family's nullable bool/string
    sweep = tmp_path / "sweep"
    _write_sweep(sweep, pd.DataFrame(models), p)
    figures = {}
    real_save = pdg.save

    def keep(fig, stem, formats=("png",), **kw):
        fig.canvas.draw()  # the layout as saved, measured before save closes the figure
        r = fig.canvas.get_renderer()
        figures[Path(stem).name] = (
            fig,
            fig.bbox.frozen(),
            [a.get_window_extent(r) for a in fig.axes],
            [lg.get_window_extent(r) for lg in fig.legends],
            [t.get_window_extent(r) for t in fig.texts],
        )
        return real_save(fig, stem, formats, **kw)

    monkeypatch.setattr(pdg, "save", keep)
    out = tmp_path / "out"
    assert cli.main([str(sweep), "--x", "model.width", "--y", "train.batch_size", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cells_csv = pd.read_csv(out / "cells.csv").set_index(["model.width", "train.batch_size"])
    one = cells_csv.loc[(16, 32)]
    assert one["phase"] == "IV-B" and one["phase_confidence"] < 1
    assert (one["n_pairs_total"], one["n_pairs_exact"], one["n_pairs_unknown"], one["n_pairs_mc"]) == (3, 1, 2, 1)
    assert one["n_pairs_resolved"] == 1
    assert one["share_unresolved"] == pytest.approx(2 / 3) and bool(one["few_pairs"])
    full = cells_csv.loc[(16, 128)]
    assert full["phase"] == "IV-B" and full["n_pairs_exact"] == 3 and not bool(full["few_pairs"])
    assert one["phase_confidence"] < full["phase_confidence"]
    moving = cells_csv.loc[(8, 128)]
    assert pd.isna(moving["phase"]) and moving["phase_reason"] == "mc still moving in 1 of 3 pairs"
    assert moving["n_pairs_resolved"] == moving["n_pairs_exact"] == 2  # its lower bound lies below the thresholds
    assert moving["n_pairs_lower"] == 1 and moving["connectivity.mc"] == pytest.approx(-0.9)
    assert "IV-B " in printed and "*" in printed and "moving" in printed
    warnings = json.loads((out / "manifest.json").read_text())["warnings"]
    assert any(
        "fewer than 2 resolved pairs" in w and "model.width=16 train.batch_size=32 (1 of 3)" in w for w in warnings
    )
    assert any("mc still moving in 1 of 3 pairs" in w and "model.width=8 train.batch_size=128" in w for w in warnings)
    # the map the command drew
    fig, fig_box, ax_boxes, legend_boxes, title_boxes = figures["phase_map"]
    ax = fig.axes[0]
    few = next(ln for ln in ax.lines if ln.get_gid() == "few-pairs")
    assert few.cells == [(16.0, 32.0)] and len(few.get_xdata()) == 1
    text = next(t.get_text() for t in ax.texts if t.get_gid() == "phase-label" and t.get_position() == (16, 32))
    assert text.split("\n")[0] == "IV-B" and text.split("\n")[2] == "3m 1/3p"
    marks = {ln.get_gid(): list(zip(*ln.get_data(), strict=True)) for ln in ax.lines}
    assert marks["mask:moving"] == [(8, 128)] and "mask:nan" not in marks
    assert any(t.get_gid() == "unresolved-reason" and "1/3 pairs" in t.get_text() for t in ax.texts)
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert pdg.MOVING_LABEL in names and "labelled from < 2 resolved pairs" in names
    # as saved: the map, legend and title inside the figure; the legend and title clear of the map
    for bb in ax_boxes + legend_boxes + title_boxes:
        assert (
            bb.x0 >= fig_box.x0 - 1 and bb.x1 <= fig_box.x1 + 1 and bb.y0 >= fig_box.y0 - 1 and bb.y1 <= fig_box.y1 + 1
        )
    assert not ax_boxes[0].overlaps(legend_boxes[0]) and not ax_boxes[0].overlaps(title_boxes[0])
