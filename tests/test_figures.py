"""The phase-diagram figures as a reader sees them: nothing clipped on grids of several sizes and with long knob
names (text extents checked against the figure after drawing), colour scales fitted to the data's sign, the
columns ``--metrics`` offers and refuses, readable names for panels without a built-in style, the phase legend
and caption, and a label confidence that does not depend on the order of the axes."""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import taxonomy2021

from landscape import metrics
from landscape import phase_diagram as pdg
from landscape.cli import phase as cli
from landscape.phase import PHASES, PhaseRule


def _grid_cells(x: str, y: str, nx: int, ny: int) -> pd.DataFrame:
    """A synthetic grid with every phase, a masked cell, clipped values and all metrics of the paper's panels."""
    rng = np.random.default_rng(0)
    xs, ys = 2.0 ** np.arange(1, nx + 1), 16.0 * 2.0 ** np.arange(ny)
    rows = []
    for i, xv in enumerate(xs):
        for j, yv in enumerate(ys):
            fit = i / max(nx - 1, 1)
            rows.append(
                {
                    x: xv,
                    y: yv,
                    "status": "done",
                    "test_acc": 0.6 + 0.3 * fit + 0.01 * rng.standard_normal(),
                    "train_loss": 10 ** (-3 * fit + 0.3),
                    "hessian.top_eigenvalue": 10 ** (1 + j),
                    "hessian.trace": 10 ** (2 + fit),
                    "connectivity.mc": -20 * (1 - fit) + 2 * j,
                    "cka": 0.5 + 0.4 * fit,
                    "l2_distance": 10 * xv,
                    "n_models": 3,
                    "n_models_total": 3,
                    "n_pairs_mc": 3,
                    "n_pairs_resolved": 3,
                    "n_pairs_total": 3,
                    "phase_confidence": 0.8,
                }
            )
    cells = pd.DataFrame(rows)
    cells.loc[0, "status"] = "failed"
    cells.loc[0, [c for c in pdg.DEFAULT_METRICS]] = np.nan
    cells["phase"] = [PHASES[k % len(PHASES)] for k in range(len(cells))]
    cells.loc[0, "phase"] = None
    return cells


def _outside(fig) -> list[str]:
    """What ``fig`` draws outside itself (1 px tolerance), after a draw: each axes with everything it draws
    (title, axis labels, the tick labels drawn; a colour bar's too), the figure's title, caption and texts,
    its legends."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    named = [
        (f"axes {ax.get_title()!r} / {ax.get_xlabel()!r}", ax.get_tightbbox(renderer))
        for ax in fig.axes
        if ax.get_visible()
    ]
    texts = [t for t in [fig._suptitle, fig._supxlabel, fig._supylabel, *fig.texts] if t is not None]
    named += [(repr(t.get_text()), t.get_window_extent(renderer)) for t in texts if t.get_text().strip()]
    named += [
        (f"legend {[t.get_text() for t in lg.get_texts()][:2]}", lg.get_window_extent(renderer)) for lg in fig.legends
    ]
    return [
        f"{name} at {tuple(round(v) for v in bb.bounds)} (figure {tuple(round(v) for v in box.bounds)})"
        for name, bb in named
        if bb is not None and (bb.x0 < box.x0 - 1 or bb.y0 < box.y0 - 1 or bb.x1 > box.x1 + 1 or bb.y1 > box.y1 + 1)
    ]


def _overlapping_titles(fig) -> list[str]:
    """Pairs of texts that run into each other: axes titles, axis and colour-bar labels, the legend, and each
    of them against every other axes' drawing area (a title over the colour bar of the row above)."""
    renderer = fig.canvas.get_renderer()
    texts = [
        (t.get_text(), t.get_window_extent(renderer))
        for ax in fig.axes
        for t in (ax.title, ax.xaxis.label, ax.yaxis.label)
        if t.get_text()
    ]
    texts += [(f"legend {i}", lg.get_window_extent(renderer)) for i, lg in enumerate(fig.legends)]
    out = []
    for i, (na, a) in enumerate(texts):
        for nb, b in texts[i + 1 :]:
            if a.overlaps(b):
                out.append(f"{na!r} / {nb!r}")
        for ax in fig.axes:
            own = na in (ax.get_title(), ax.get_xlabel(), ax.get_ylabel())
            if not own and a.overlaps(ax.get_window_extent(renderer)):
                out.append(f"{na!r} over the axes of {ax.get_title() or ax.get_xlabel()!r}")
    return out


LONG_X = "model.an_unusually_long_knob_name_for_the_width_of_every_hidden_layer"
LONG_Y = "train.batch_size"


@pytest.mark.parametrize(
    "nx,ny,x,y",
    [
        (2, 2, "model.width", "train.batch_size"),
        (6, 4, "model.width", "data.label_noise_level"),
        (12, 3, LONG_X, LONG_Y),
        (3, 6, "train.an_equally_long_temperature_knob_name_on_the_vertical_axis", "model.width"),
    ],
)
def test_nothing_is_clipped_on_several_grids_and_knob_names(nx, ny, x, y):
    cells = _grid_cells(x, y, nx, ny)
    rule = PhaseRule()
    caption = (
        "dataset a_dataset_with_a_long_name, model resnet18 (depth 18, width 2-64), 100 epochs, seeds 0-9 (10 per cell)"
    )
    # panels with long titles (styles of families' other metrics; a column without a built-in style)
    wordy = [
        "surfaces.hessian_min_eigenvalue",
        "topology.rips_h1_max",
        "connectivity.mc_loss",
        "hessian.negative_weight",
        "zz.an_unstyled_column_with_a_rather_long_name_of_its_own",
    ]
    for col in wordy:
        cells[col] = np.linspace(-1.0, 2.0, len(cells))
    for chosen in ([pdg.DEFAULT_METRICS[0]], list(pdg.DEFAULT_METRICS)[:3], list(pdg.DEFAULT_METRICS), wordy):
        n_metrics = len(chosen)
        fig = pdg.metrics_figure(cells, x, y, chosen, rule=rule)
        try:
            fig.savefig(io.BytesIO(), format="png", dpi=60)
            assert not _outside(fig), (n_metrics, _outside(fig))
            assert not _overlapping_titles(fig)
        finally:
            plt.close(fig)
    fig = pdg.phase_map_figure(cells, x, y, rule=rule, caption=caption)
    try:
        fig.savefig(io.BytesIO(), format="png", dpi=60)
        assert not _outside(fig), _outside(fig)
        # the title names what was measured and every threshold, wrapped, not cut
        title = fig._suptitle.get_text().replace("\n", " ")
        assert caption in title and "0.05 nats" in title and "CKA 0.7" in title
    finally:
        plt.close(fig)
    # facets (a constrained layout) too
    two = pd.concat([cells.assign(**{"train.momentum": 0.0}), cells.assign(**{"train.momentum": 0.9})])
    fig = pdg.metrics_figure(two, x, y, ["test_acc", "connectivity.mc"], facet="train.momentum")
    try:
        fig.savefig(io.BytesIO(), format="png", dpi=60)
        assert not _outside(fig), _outside(fig)
    finally:
        plt.close(fig)


def test_the_clip_check_can_fail():
    """The check above sees a clipped title: one the figure does not wrap."""
    fig, ax = plt.subplots(figsize=(3, 2))
    try:
        fig.suptitle("a title much too long for a figure three inches wide, which is not wrapped at all here")
        assert _outside(fig)
    finally:
        plt.close(fig)


def test_axes_are_labelled_by_names_a_person_reads():
    assert pdg.knob_label("train.batch_size") == "batch size (train.batch_size)"
    assert pdg.knob_label("data.label_noise") == "label noise (data.label_noise)"
    assert pdg.knob_label("model.blocks") == "model.blocks"
    cells = _grid_cells("model.width", "data.label_noise", 3, 2)
    fig = pdg.metrics_figure(cells, "model.width", "data.label_noise", ["test_acc"])
    try:
        ax = fig.axes[0]
        assert ax.get_xlabel().replace("\n", " ") == "model width (model.width)"
        assert ax.get_ylabel().replace("\n", " ") == "label noise (data.label_noise)"
    finally:
        plt.close(fig)


def test_symlog_ticks_on_the_sides_the_data_reaches():
    assert pdg.symlog_ticks(-8.0, 0.0) == [-5.0, -2.0, -1.0, 0.0]
    assert pdg.symlog_ticks(-30.0, 3.0) == [-10.0, -1.0, 0.0, 1.0, 2.0]
    assert pdg.symlog_ticks(-0.4, 0.0, linthresh=1.0) == [-0.2, -0.1, 0.0]


def test_an_all_negative_connectivity_panel_spends_no_colour_on_positive_values():
    """The demo's complaint: every mc negative, half the colour bar was positive and no tick below -1."""
    cells = _grid_cells("model.width", "train.batch_size", 3, 3)
    cells["connectivity.mc"] = np.linspace(-12.0, -0.2, len(cells))
    fig = pdg.metrics_figure(cells, "model.width", "train.batch_size", ["connectivity.mc"])
    try:
        mesh = next(c for ax in fig.axes for c in ax.collections if c.get_gid() == "metric:connectivity.mc")
        cbar = next(ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None))
        lo, hi = mesh.norm.vmin, mesh.norm.vmax
        v = cells["connectivity.mc"].dropna().to_numpy()
        assert lo == pytest.approx(np.percentile(v, 2)) and hi == 0.0  # the centre, not +|lo|
        ticks = [t for t in cbar.get_ticks() if lo <= t <= hi]
        assert min(ticks) <= -5 and max(ticks) == 0.0 and all(t <= 0 for t in ticks)
        # 0 keeps the map's middle colour (white), the most negative value its blue end
        rdbu = plt.get_cmap("RdBu_r")
        assert np.allclose(mesh.cmap(mesh.norm(0.0)), rdbu(0.5), atol=0.01)
        assert np.allclose(mesh.cmap(mesh.norm(lo)), rdbu(0.0), atol=0.01)
    finally:
        plt.close(fig)
    # values on both sides: both sides ticked beyond the linear part where they reach it
    cells["connectivity.mc"] = np.linspace(-12.0, 6.0, len(cells))
    fig = pdg.metrics_figure(cells, "model.width", "train.batch_size", ["connectivity.mc"])
    try:
        cbar = next(ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None))
        ticks = list(cbar.get_ticks())
        assert min(ticks) <= -10 and max(ticks) >= 5 and 0.0 in ticks
    finally:
        plt.close(fig)


def test_a_column_without_a_built_in_style_gets_a_readable_name():
    from dataclasses import dataclass

    import pyarrow as pa

    @dataclass
    class Cfg:
        enabled: bool = False

    fam = metrics.Family(
        name="zz_fig",
        table="models",
        config=Cfg,
        metrics={"zz_fig.mean_step_seconds": pa.float64()},
        compute=lambda c, s: metrics.Result(),
    )
    metrics.register(fam)
    try:
        st = pdg.style_for("zz_fig.mean_step_seconds")
        assert st.label == "mean step seconds (zz_fig)" and st.unit == "s"
    finally:
        metrics.unregister("zz_fig")
    # a family's own style carries its unit, e.g. a diagnostic drawn on request
    assert pdg.style_for("connectivity.middle_excess").unit == "pp of training error"


@pytest.fixture(scope="module")
def tax_sweep(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("figs") / "tax"
    taxonomy2021().import_reference(sweep, widths=[2, 8, 64], batch_sizes=[16, 128, 1024])
    return sweep


def test_metrics_offers_exactly_the_columns_with_values_and_refuses_all_null_ones(tax_sweep, tmp_path, capsys):
    base = [str(tax_sweep), "--x", "model.width", "--y", "train.batch_size", "--bootstrap", "50"]
    assert cli.main(base + ["--out", str(tmp_path / "a"), "--metrics", "topology.h0_count", "foo.bar"]) == 2
    err = capsys.readouterr().err
    assert "topology.h0_count: no value in any row" in err and "metrics.jump_retrain.enabled=true" in err
    assert "foo.bar: not a column of the rows" in err
    offered = re.search(r"Metric columns with values: ([^;\n]*)", err).group(1).rstrip(".").split(", ")
    models = cli.load_rows(tax_sweep, "models")
    pairs = cli.load_rows(tax_sweep, "pairs")
    with_values = {
        c
        for df in (models, pairs)
        for c in df.columns
        if c in metrics.metric_columns("models") + metrics.metric_columns("pairs")
        and pd.to_numeric(df[c], errors="coerce").notna().any()
    }
    assert set(offered) == with_values | {"train_error"}
    assert "hessian.min_eigenvalue" not in offered and "topology.h0_count" not in offered


def test_a_diagnostic_column_is_drawn_with_its_family_style(tax_sweep, tmp_path):
    """``connectivity.middle_excess`` (a numeric diagnostic) is drawn when asked for, aggregated per cell."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    sweep = tmp_path / "sweep"
    shutil.copytree(tax_sweep, sweep)
    for f in (sweep / "results" / "pairs").glob("*.parquet"):
        t = pq.read_table(f).to_pandas()
        t["connectivity.middle_excess"] = t["connectivity.mc"].astype("float64") + 1.0
        pq.write_table(pa.Table.from_pandas(t, preserve_index=False), f)
    out = tmp_path / "out"
    assert (
        cli.main(
            [
                str(sweep),
                "--x",
                "model.width",
                "--y",
                "train.batch_size",
                "--bootstrap",
                "50",
                "--out",
                str(out),
                "--metrics",
                "connectivity.middle_excess",
                "cka",
            ]
        )
        == 0
    )
    piv = pd.read_csv(out / "pivot_connectivity.middle_excess.csv", index_col=0)
    assert np.isfinite(piv.to_numpy()).all()
    cells = pd.read_csv(out / "cells.csv")
    assert np.allclose(cells["connectivity.middle_excess"], cells["connectivity.mc"] + 1.0)


def _with_holes(src: Path, dst: Path) -> Path:
    """A copy of the sweep ``src`` in which some values are unknown (one model's training loss per cell of width
    8), so that the confidence imputes them from the grid's values (drawn from a pool of the grid's values)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(src, dst)
    for table, cols in (("models", ["train_loss"]),):
        for f in (dst / "results" / table).glob("*w008*.parquet"):
            t = pq.read_table(f)
            df = t.to_pandas()
            df.loc[df.index[0], cols] = np.nan
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False, schema=t.schema), f)
    return dst


def test_the_map_says_what_it_shows_and_the_confidence_ignores_the_axis_order(tax_sweep, tmp_path, capsys):
    sweep = _with_holes(tax_sweep, tmp_path / "holes")
    outs = []
    for x, y in (("model.width", "train.batch_size"), ("train.batch_size", "model.width")):
        out = tmp_path / f"{x}__{y}"
        assert cli.main([str(sweep), "--x", x, "--y", y, "--bootstrap", "400", "--out", str(out)]) == 0
        outs.append(pd.read_csv(out / "cells.csv"))
    printed = capsys.readouterr().out
    assert (
        "phases: I = under-fitted, barrier; II = under-fitted, no barrier; III = fitted, barrier; "
        "IV-A = fitted, connected, dissimilar; IV-B = fitted, connected, similar" in printed
    )
    keys = ["model.width", "train.batch_size"]
    a, b = (o.set_index(keys).sort_index() for o in outs)
    assert (a["phase"].fillna("-") == b["phase"].fillna("-")).all() and a["phase"].notna().all()
    # the same cell gets the same confidence whichever knob is on which axis (each cell's own random stream)
    assert np.array_equal(a["phase_confidence"].to_numpy(), b["phase_confidence"].to_numpy())
    assert (a.loc[8, "n_models"] == 4).all()  # the holes are there: 4 of 5 models with a value
    # the caption from the rows' config columns
    models = cli.load_rows(tax_sweep, "models")
    cap = pdg.caption_from_rows(models, keys)
    assert cap == "dataset cifar10, model resnet18, 100 epochs, seeds 0-4 (5 per cell)"
