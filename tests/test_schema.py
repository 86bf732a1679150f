"""The results schema: its version follows its columns; every family column is typed and owned by one family."""

from __future__ import annotations

import pyarrow as pa
import pytest

from landscape import metrics
from landscape.results import schema


def test_schema_version_changes_with_the_columns():
    """Fails when a column is added, removed, renamed or retyped without bumping ``SCHEMA_VERSION``: bump it,
    then set ``SCHEMA_FINGERPRINT`` to the value printed here."""
    now = schema.schema_fingerprint()
    assert now == schema.SCHEMA_FINGERPRINT, (
        f"the results columns changed (fingerprint {now}, stored {schema.SCHEMA_FINGERPRINT} for version "
        f"{schema.SCHEMA_VERSION}): bump SCHEMA_VERSION and set SCHEMA_FINGERPRINT = {now!r}"
    )


def test_the_fingerprint_sees_a_new_column_of_a_family():
    """The check can fail: registering a family with one more column changes the fingerprint."""
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        enabled: bool = False
        probes: int = 3

    before = schema.schema_fingerprint()
    fam = metrics.Family(
        name="zz_probe",
        table="models",
        config=Cfg,
        metrics={"zz_probe.value": pa.float64()},
        compute=lambda c, s: metrics.Result(),
    )
    metrics.register(fam)
    try:
        changed = schema.schema_fingerprint()
        cols = schema.schema_for("models").names
        assert cols[-3:] == ["zz_probe.value", "zz_probe.probes", "zz_probe.error"]
        assert schema.schema_for("models").field("zz_probe.probes").type == pa.int64()
    finally:
        metrics.unregister("zz_probe")
    assert changed != before and schema.schema_fingerprint() == before


def test_metric_columns_are_metrics_only_and_family_of_finds_every_column():
    models, pairs = metrics.metric_columns("models"), metrics.metric_columns("pairs")
    assert models[:5] == ["train_loss", "train_acc", "test_loss", "test_acc", "train_acc_clean"]
    assert {"hessian.top_eigenvalue", "hessian.trace", "topology.h1_count"} <= set(models)
    assert pairs[:2] == ["l2_distance", "cka"] and "connectivity.mc" in pairs
    for col in models + pairs:  # no settings, counts, timings, residuals or errors
        assert not col.endswith((".seconds", ".error", "_stderr", "_residual", ".n_matvecs", ".converged")), col
    assert "hessian.n_matvecs" not in models and "cka.seconds" not in pairs and "hessian.tol" not in models
    assert metrics.family_of("topology.h0_count") == "jump_retrain"
    assert metrics.family_of("cka.seconds") == metrics.family_of("cka.error") == metrics.family_of("cka") == "cka"
    assert metrics.family_of("training.steps") == "training"
    with pytest.raises(KeyError, match="model.width"):
        metrics.family_of("model.width")
    for table in ("models", "pairs"):
        sch = schema.schema_for(table)
        for fam in metrics.families(table):
            assert all(c in sch.names for c in fam.columns)
            assert sch.field(fam.error_column).type == pa.string()


def test_settings_columns_come_from_the_config_dataclass():
    import dataclasses

    for fam in metrics.families():
        fields = [f.name for f in dataclasses.fields(fam.config) if f.name != "enabled"]
        assert list(fam.setting_columns) == [f"{fam.name}.{f}" for f in fields]
    hs = metrics.get("hessian").setting_columns
    assert hs["hessian.n_top"] == pa.int64() and hs["hessian.tol"] == pa.float64()
    assert metrics.get("jump_retrain").setting_columns["jump_retrain.scales"] == pa.list_(pa.float64())
    values = metrics.get("cka").settings_values(metrics.get("cka").config(enabled=True, n_samples=64))
    assert values["cka.n_samples"] == 64 and values["cka.kernel"] == "linear" and "cka.enabled" not in values


def test_a_family_that_collides_or_misdeclares_is_refused():
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        enabled: bool = False
        value: int = 1

    with pytest.raises(ValueError, match="declared as metric and setting"):
        metrics.Family(
            name="x", table="models", config=Cfg, metrics={"x.value": pa.float64()}, compute=lambda c, s: None
        )
    with pytest.raises(ValueError, match="already belong to cka"):
        metrics.register(
            metrics.Family(
                name="y", table="pairs", config=Cfg, metrics={"cka": pa.float64()}, compute=lambda c, s: None
            )
        )
    assert "y" not in [f.name for f in metrics.families()]

    @dataclass
    class NoSwitch:
        value: int = 1

    with pytest.raises(ValueError, match="first field of NoSwitch must be `enabled`"):
        metrics.Family(name="z", table="models", config=NoSwitch, metrics={}, compute=lambda c, s: None)


def test_figure_styles_are_declared_by_the_families_and_are_what_the_figures_draw():
    """Every metric column has its style in its family, and the figures use exactly that style (no second
    table in ``phase_diagram``: it styles only derived columns); the scale names its base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.colors as mcolors
    import numpy as np
    import pandas as pd

    from landscape import phase_diagram as pdg

    styles = metrics.figure_styles()
    family_columns = {c for f in metrics.families() for c in f.columns}
    assert not set(pdg.DERIVED_STYLES) & family_columns  # the figure module keeps no family's style
    for table in ("models", "pairs"):
        for col in metrics.metric_columns(table):
            assert col in styles, f"{col}: its family declares no figure style"
            assert pdg.style_for(col) is styles[col]
            assert styles[col].unit and styles[col].scale in metrics.FIGURE_SCALES
    # the disagreements resolved: training loss on log10 (paper's range linear 0-3 nats), the Hessian's paper
    # ranges in its own units (the paper's natural logs 0-6 and 3-8), a base always explicit
    assert styles["train_loss"].scale == "log10" and styles["train_loss"].paper == (0.0, 3.0)
    assert styles["train_loss"].paper_scale_used == "linear"
    assert styles["hessian.top_eigenvalue"].paper == pytest.approx((1.0, np.exp(6.0)))
    assert styles["hessian.trace"].paper == pytest.approx((np.exp(3.0), np.exp(8.0)))
    with pytest.raises(ValueError, match="log10, not log"):
        metrics.FigureStyle("x", scale="log")
    # drawn: the norm and colour bar of a panel follow the family's style, in data and in paper limits
    cells = pd.DataFrame(
        {
            "model.width": [2, 4, 2, 4],
            "train.lr": [0.1, 0.1, 0.2, 0.2],
            "status": "done",
            "train_loss": [0.01, 0.5, 0.02, 2.0],
            "hessian.trace": [30.0, 60.0, 90.0, 500.0],
            "connectivity.mc": [-3.0, -1.0, 0.5, 4.0],
        }
    )
    for limits in ("data", "paper"):
        fig = pdg.metrics_figure(
            cells, "model.width", "train.lr", ["train_loss", "hessian.trace", "connectivity.mc"], limits=limits
        )
        try:
            meshes = {
                c.get_gid()[7:]: c for ax in fig.axes for c in ax.collections if str(c.get_gid()).startswith("metric:")
            }
            bars = {ax._colorbar.mappable: ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None)}
            for col, mesh in meshes.items():
                st = styles[col]
                scale = st.scale if limits == "data" else st.paper_scale_used
                kind = {"log10": mcolors.LogNorm, "symlog": mcolors.SymLogNorm, "linear": mcolors.Normalize}[scale]
                assert type(mesh.norm) is kind, (col, limits)
                if limits == "paper":
                    assert (mesh.norm.vmin, mesh.norm.vmax) == pytest.approx(st.paper)
                label = bars[mesh].ax.get_xlabel().replace("\n", " ")
                assert label.startswith(f"{st.label} [{st.unit}]"), label
        finally:
            matplotlib.pyplot.close(fig)


def test_rows_of_schema_version_1_are_read_beside_version_2(tmp_path):
    """Version 1 had ``hessian.top_k`` as the list of top eigenvalues; version 2 calls it
    ``hessian.top_eigenvalues`` (``top_k`` became the setting ``n_top``), so no column changed type and the
    two versions union by name."""
    import pyarrow.parquet as pq

    from landscape.results import load, write_table

    d = tmp_path / "results" / "models"
    d.mkdir(parents=True)
    pq.write_table(
        pa.table(
            {
                "schema_version": pa.array([1], pa.int32()),
                "cell_id": ["old"],
                "seed": [0],
                "status": ["done"],
                "hessian.top_eigenvalue": [3.0],
                "hessian.top_k": pa.array([[3.0, 2.0]], pa.list_(pa.float64())),
            }
        ),
        d / "old.parquet",
    )
    write_table(
        d / "new.parquet",
        [
            {
                "schema_version": schema.SCHEMA_VERSION,
                "cell_id": "new",
                "seed": 0,
                "status": "done",
                "hessian.top_eigenvalue": 4.0,
                "hessian.n_top": 2,
                "hessian.top_eigenvalues": [4.0, 1.0],
            }
        ],
        schema.schema_for("models"),
    )
    df = load(tmp_path).set_index("cell_id")
    assert list(df.loc["old", "hessian.top_k"]) == [3.0, 2.0]
    assert list(df.loc["new", "hessian.top_eigenvalues"]) == [4.0, 1.0] and df.loc["new", "hessian.n_top"] == 2
    assert df.loc["old", "hessian.top_eigenvalue"] == 3.0 and df.loc["new", "hessian.top_eigenvalue"] == 4.0
