"""Phase-diagram figures from a small synthetic sweep: masked cells, orientation, log axes, colour limits;
the landscape-phase command end to end; the exploration notebook as a script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from landscape import phase_diagram as pdg  # noqa: E402
from landscape.cli import phase as cli  # noqa: E402
from landscape.phase import PhaseRule, aggregate_cells  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = [2, 4, 8, 32]          # non-uniform in log space (8 -> 32 is a factor 4)
BATCHES = [16, 64, 256]
MISSING = (8, 64)               # no rows at all
FAILED = (4, 256)               # every model failed
DIVERGED = (32, 16)             # every model diverged


def _synthetic_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two seeds per cell; metrics are simple functions of the knobs (so expected values are known)."""
    models, pairs = [], []
    for w in WIDTHS:
        for b in BATCHES:
            if (w, b) == MISSING:
                continue
            status = "failed" if (w, b) == FAILED else "diverged" if (w, b) == DIVERGED else "done"
            cid = f"w{w}-b{b}"
            for s in (0, 1):
                ok = status == "done"
                models.append({
                    "cell_id": cid, "sweep": "synthetic", "seed": s, "status": status,
                    "model.width": w, "train.batch_size": b,
                    "train_loss": (1.0 / w + 0.01 * s) if ok else None,
                    "test_acc": (0.6 + 0.01 * np.log2(w) + 0.001 * s) if ok else None,
                    "hessian.top_eigenvalue": float(b) if ok else None,
                    "hessian.trace": 1000.0 if ok else None,
                })
            pairs.append({
                "cell_id": cid, "sweep": "synthetic", "seed_a": 0, "seed_b": 1, "status": status,
                "model.width": w, "train.batch_size": b,
                "connectivity.mc": (-5.0 if w <= 4 else 0.0) if status == "done" else None,
                "cka": (0.5 if b == 256 else 0.75) if status == "done" else None,
                "l2_distance": 10.0 * w if status == "done" else None,
            })
    return pd.DataFrame(models), pd.DataFrame(pairs)


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    m, p = _synthetic_rows()
    c = aggregate_cells(m, p, ["model.width", "train.batch_size"])
    c["phase"] = PhaseRule().labels(c)
    return c


def _ij(x, y):
    return BATCHES.index(y), WIDTHS.index(x)


def test_cell_edges_geometric_midpoints():
    e = pdg.cell_edges([2, 8, 32])
    assert np.allclose(e, [1, 4, 16, 64])              # geometric midpoints, mirrored outer edges
    assert np.allclose(pdg.cell_edges([0.0, 0.1, 0.3]), [-0.05, 0.05, 0.2, 0.4])  # 0 present: linear
    assert pdg.axis_scale([0.0, 0.1]) == "linear" and pdg.axis_scale([1, 2]) == "log"


def test_metric_panels_masks_orientation_and_colour_limits(cells):
    metrics = ["test_acc", "hessian.top_eigenvalue", "connectivity.mc", "cka"]
    fig = pdg.metrics_figure(cells, "model.width", "train.batch_size", metrics)
    try:
        axes = [ax for ax in fig.axes if any(c.get_gid() and str(c.get_gid()).startswith("metric:")
                                             for c in ax.collections)]
        assert len(axes) == 4
        for ax, metric in zip(axes, metrics):
            mesh = next(c for c in ax.collections if c.get_gid() == f"metric:{metric}")
            style = pdg.METRIC_STYLES[metric]
            # fixed colour limits of the metric, whatever the data range
            assert mesh.get_clim() == (style.vmin, style.vmax)
            # log axes on the real knob values, cell edges at geometric midpoints
            assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
            coords = mesh.get_coordinates()          # [ny+1, nx+1, 2]
            assert np.allclose(coords[0, :, 0], pdg.cell_edges(WIDTHS))
            assert np.allclose(coords[:, 0, 1], pdg.cell_edges(BATCHES))
            # batch size axis inverted: small batches at the top
            y0, y1 = ax.get_ylim()
            assert y0 > y1 and y1 == pytest.approx(pdg.cell_edges(BATCHES)[0])
            # masked (never interpolated) exactly where there is no value
            arr = mesh.get_array().reshape(len(BATCHES), len(WIDTHS))
            mask = np.ma.getmaskarray(arr)
            expected = np.zeros_like(mask)
            for cell in (MISSING, FAILED, DIVERGED):
                expected[_ij(*cell)] = True
            assert (mask == expected).all(), metric
            assert mcolors.same_color(mesh.get_cmap().get_bad(), pdg.MISSING_COLOUR)
            # and marked, by reason, at the cell centres
            marks = {ln.get_gid(): list(zip(*ln.get_data())) for ln in ax.lines}
            assert marks["mask:missing"] == [MISSING]
            assert marks["mask:failed"] == [FAILED]
            assert marks["mask:diverged"] == [DIVERGED]
        # values: test accuracy as is, eigenvalue as natural log of the mean
        acc = axes[0].collections[0].get_array().reshape(len(BATCHES), len(WIDTHS))
        assert acc[_ij(2, 16)] == pytest.approx(0.6 + 0.01 + 0.0005)
        eig = axes[1].collections[0].get_array().reshape(len(BATCHES), len(WIDTHS))
        assert eig[_ij(2, 256)] == pytest.approx(np.log(256.0))
        # mode connectivity: diverging map centred at 0
        mc_norm = axes[2].collections[0].norm
        assert isinstance(mc_norm, mcolors.TwoSlopeNorm) and mc_norm.vcenter == 0.0
        assert mc_norm(0.0) == pytest.approx(0.5)
    finally:
        plt.close(fig)


def test_facets_share_colour_limits_and_grid(cells):
    two = pd.concat([cells.assign(**{"train.lr": 0.1}),
                     cells.assign(**{"train.lr": 0.2, "test_acc": cells["test_acc"] - 0.3})])
    fig = pdg.metrics_figure(two, "model.width", "train.batch_size", ["test_acc"], facet="train.lr")
    try:
        meshes = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "metric:test_acc"]
        assert len(meshes) == 2
        assert meshes[0].get_clim() == meshes[1].get_clim() == (0.56, 0.91)
    finally:
        plt.close(fig)


def test_learning_rate_axis_is_not_inverted():
    c = pd.DataFrame({"model.width": [2, 4, 2, 4], "train.lr": [0.01, 0.01, 0.1, 0.1],
                      "test_acc": [0.6, 0.7, 0.8, 0.9], "status": "done"})
    fig, ax = plt.subplots()
    try:
        pdg.draw_metric(ax, pdg.Grid.from_cells(c, "model.width", "train.lr"), c, "test_acc")
        y0, y1 = ax.get_ylim()
        assert y0 < y1 and ax.get_yscale() == "log"
    finally:
        plt.close(fig)


def test_phase_map_labels_and_boundaries(cells):
    fig = pdg.phase_map_figure(cells, "model.width", "train.batch_size")
    try:
        ax = fig.axes[0]
        texts = {(t.get_position(), t.get_text()) for t in ax.texts if t.get_gid() == "phase-label"}
        # widths 2, 4: mc = -5 with loss 1/w > 0.05 -> phase I; width 8, 32: low loss only at w=32
        assert ((2, 16), "I") in texts and ((8, 16), "II") in texts
        assert ((32, 64), "IV-B") in texts and ((32, 256), "IV-A") in texts
        assert len(texts) == len(WIDTHS) * len(BATCHES) - 3
        lc = next(c for c in ax.collections if c.get_gid() == "phase-boundaries")
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
            pq.write_table(pa.Table.from_pandas(part.reset_index(drop=True), preserve_index=False), d / f"{cid}.parquet")


def test_cli_end_to_end_and_refresh(tmp_path, capsys):
    m, p = _synthetic_rows()
    keep = m["model.width"] != 32
    sweep = tmp_path / "sweep"
    _write_sweep(sweep, m[keep], p[p["model.width"] != 32])
    out = tmp_path / "out"
    args = [str(sweep), "--x", "model.width", "--y", "train.batch_size", "--out", str(out),
            "--metrics", "test_acc", "connectivity.mc", "--thresholds", "cka=0.6"]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out.split()
    for name in ("phase_diagram.png", "phase_diagram.pdf", "phase_map.png", "pivot_test_acc.csv",
                 "pivot_phase.csv", "rank_correlations.csv", "manifest.json", "cells.csv"):
        assert str(out / name) in printed and (out / name).stat().st_size > 0
    piv = pd.read_csv(out / "pivot_test_acc.csv", index_col=0)
    assert list(piv.columns) == ["2", "4", "8"] and list(piv.index) == BATCHES
    assert np.isnan(piv.loc[64, "8"]) and np.isnan(piv.loc[256, "4"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["thresholds"]["cka"] == 0.6 and manifest["n_cells"] == 8
    assert len(manifest["inputs"]["models"]) == 8 and "commit" in manifest["git"]
    # more cells finish: re-running refreshes every output
    _write_sweep(sweep, m[~keep], p[p["model.width"] == 32])
    args += ["--formats", "png"]
    before = (out / "phase_map.png").stat().st_mtime_ns
    assert cli.main(args) == 0
    assert (out / "phase_map.png").stat().st_mtime_ns > before
    piv = pd.read_csv(out / "pivot_test_acc.csv", index_col=0)
    assert list(piv.columns) == ["2", "4", "8", "32"]
    assert json.loads((out / "manifest.json").read_text())["n_cells"] == 11
    # a filter on a knob, and a bad filter key named in the error
    assert cli.main(args + ["--filter", "model.width=2,4"]) == 0
    assert list(pd.read_csv(out / "pivot_test_acc.csv", index_col=0).columns) == ["2", "4"]
    assert cli.main(args + ["--filter", "model.depth=3"]) == 2
    assert "model.depth" in capsys.readouterr().err


def test_notebook_runs_as_a_script_on_a_small_reference_sweep(tmp_path):
    spec = importlib.util.spec_from_file_location("taxonomy2021", ROOT / "analysis" / "taxonomy2021.py")
    tax = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tax)
    sweep = tmp_path / "tax"
    tax.import_reference(sweep, widths=[2, 8, 64], batch_sizes=[16, 128, 1024])
    out = tmp_path / "explore"
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, str(ROOT / "analysis" / "explore_sweep.py"), str(sweep), str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "45 model rows, 90 pair rows" in res.stdout
    assert (out / "heatmap_test_acc.png").stat().st_size > 0 and (out / "correlations.png").stat().st_size > 0
    rc = pd.read_csv(out / "rank_correlations.csv").set_index("metric")
    assert rc.loc["train_loss", "rho"] < 0 and rc.loc["cka", "rho"] > 0
