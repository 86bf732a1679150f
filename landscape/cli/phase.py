"""``landscape-phase``: phase diagrams of a sweep directory.

    landscape-phase SWEEP_DIR --x model.width --y train.batch_size [--metrics M ...] [--facet KNOB]
                    [--filter KNOB=VALUE ...] [--out DIR] [--thresholds NAME=VALUE[,NAME=VALUE...]]

Reads the ``models`` and ``pairs`` rows of the sweep, keeps the rows of the filters, aggregates the completed
rows of every cell (mean, std, count; :func:`landscape.phase.aggregate_cells`), labels the phases
(:class:`landscape.phase.PhaseRule`) and writes into ``--out`` (default ``SWEEP_DIR/analysis/phase/<x>__<y>``):

* ``phase_diagram.png`` / ``.pdf``: one panel per metric (rows: facet values);
* ``phase_map.png`` / ``.pdf``: phase labels and boundaries over the test-accuracy panel;
* ``cells.csv``: one row per cell (means, stds, counts, status, phase);
* ``pivot_<metric>.csv`` (``pivot_<metric>__<facet>=<value>.csv`` with a facet): cell means, rows = y values,
  columns = x values; ``pivot_phase.csv`` likewise;
* ``phase_summary.csv``: number of cells and mean test accuracy per phase;
* ``rank_correlations.csv``: Spearman correlation of each metric's cell means with test accuracy;
* ``manifest.json``: inputs, filters, thresholds, metrics, git commit, time, outputs.

Every output is rewritten on each run, so re-running as cells finish refreshes them. The output paths are
printed, one per line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from landscape import phase as ph
from landscape import phase_diagram as pd_fig

log = logging.getLogger(__name__)


def load_rows(sweep_dir: Path, table: str) -> pd.DataFrame:
    """All rows of ``table`` of a sweep (``<sweep_dir>/results/<table>/*.parquet``); empty if none."""
    try:
        from landscape.results import load

        return load(sweep_dir, table=table)
    except Exception as e:  # noqa: BLE001 - the files alone suffice: read them without the schema module
        log.warning("landscape.results.load(%s, table=%r) failed (%s: %s); reading the Parquet files directly",
                    sweep_dir, table, type(e).__name__, e)
        return read_parquet_dir(Path(sweep_dir) / "results" / table)


def read_parquet_dir(directory: Path) -> pd.DataFrame:
    """Every ``*.parquet`` of ``directory`` (hidden/temporary names skipped) as one DataFrame, schemas
    unified by column name (a column absent from a file is null there); empty DataFrame if none."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    files = sorted(str(f) for f in Path(directory).glob("*.parquet") if not f.name.startswith("."))
    if not files:
        return pd.DataFrame()
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    return pads.dataset(files, schema=schema, format="parquet").to_table().to_pandas()


def _parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)


def parse_filters(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["train.lr=0.1", "data.name=cifar10,mnist1d"]`` -> ``{"train.lr": [0.1], "data.name": [...]}``."""
    out: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--filter {item!r}: expected KNOB=VALUE (VALUE may be a comma-separated list)")
        k, v = item.split("=", 1)
        out.setdefault(k.strip(), []).extend(_parse_value(x.strip()) for x in v.split(","))
    return out


def apply_filters(df: pd.DataFrame, filters: dict[str, list[Any]]) -> pd.DataFrame:
    """Rows whose column ``k`` is one of ``filters[k]`` for every ``k`` (numbers compared as floats)."""
    keep = np.ones(len(df), dtype=bool)
    for k, values in filters.items():
        if k not in df.columns:
            raise KeyError(f"--filter {k}: no such column; knobs: {ph.knob_columns(df)}")
        col = df[k]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and \
                pd.api.types.is_numeric_dtype(col):
            c = col.astype("float64").to_numpy()
            keep &= np.isclose(c[:, None], np.asarray(values, dtype=np.float64)[None, :], rtol=1e-9).any(axis=1)
        else:
            keep &= col.astype(object).isin(values).to_numpy(dtype=bool)
    return df[keep]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text))


def _git_commit() -> dict[str, Any]:
    try:
        from landscape.provenance import git_info

        commit, dirty = git_info()
    except Exception:  # pragma: no cover - provenance is best effort
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def run(
    sweep_dir: Path,
    x: str,
    y: str,
    metrics: Sequence[str] | None = None,
    facet: str | None = None,
    filters: dict[str, list[Any]] | None = None,
    out: Path | None = None,
    rule: ph.PhaseRule = ph.PhaseRule(),
    formats: Sequence[str] = ("png", "pdf"),
) -> dict[str, Path]:
    """The whole command (see the module docstring); returns ``{output name: path}``."""
    sweep_dir = Path(sweep_dir)
    filters = filters or {}
    out = Path(out) if out is not None else sweep_dir / "analysis" / "phase" / f"{_slug(x)}__{_slug(y)}"
    models = load_rows(sweep_dir, "models")
    pairs = load_rows(sweep_dir, "pairs")
    if models.empty:
        raise FileNotFoundError(f"no models rows under {sweep_dir / 'results' / 'models'}")
    models = apply_filters(models, filters)
    if not pairs.empty:
        pairs = apply_filters(pairs, {k: v for k, v in filters.items() if k in pairs.columns})
    if models.empty:
        raise ValueError(f"no models rows left after filters {filters}")
    by = [x, y] + ([facet] if facet else [])
    cells = ph.aggregate_cells(models, pairs if not pairs.empty else None, by)

    have = [m for m in pd_fig.DEFAULT_METRICS if m in cells.columns and cells[m].notna().any()]
    if metrics:
        unknown = [m for m in metrics if m not in cells.columns]
        if unknown:
            raise KeyError(f"--metrics {unknown}: not in the rows; available: {ph.metric_columns(models)} "
                           f"{ph.metric_columns(pairs) if not pairs.empty else []}")
        metrics = list(metrics)
    else:
        metrics = have or [c for c in ph.metric_columns(models)][:4]

    can_label = all(c in cells.columns for c in (rule.train_loss_column, rule.mc_column, rule.cka_column))
    cells["phase"] = rule.labels(cells) if can_label else None
    if not can_label:
        log.warning("no phase labels: the rule needs columns %s, %s, %s",
                    rule.train_loss_column, rule.mc_column, rule.cka_column)

    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    fig = pd_fig.metrics_figure(cells, x, y, metrics, facet)
    for fmt in formats:
        paths[f"phase_diagram.{fmt}"] = out / f"phase_diagram.{fmt}"
        fig.savefig(paths[f"phase_diagram.{fmt}"], dpi=150)
    pd_fig.plt.close(fig)
    background = "test_acc" if "test_acc" in cells.columns else metrics[0]
    fig = pd_fig.phase_map_figure(cells, x, y, "phase", facet, background)
    for fmt in formats:
        paths[f"phase_map.{fmt}"] = out / f"phase_map.{fmt}"
        fig.savefig(paths[f"phase_map.{fmt}"], dpi=150)
    pd_fig.plt.close(fig)

    paths["cells.csv"] = out / "cells.csv"
    cells.to_csv(paths["cells.csv"], index=False)
    for fv in ([None] if facet is None else sorted(cells[facet].dropna().unique().tolist())):
        sub = cells if facet is None else cells[cells[facet] == fv]
        suffix = "" if facet is None else f"__{_slug(facet)}={_slug(fv)}"
        for m in list(metrics) + ["phase"]:
            name = f"pivot_{_slug(m)}{suffix}.csv"
            pd_fig.pivot(sub, x, y, m).to_csv(out / name)
            paths[name] = out / name
    target = "test_acc"
    if target in cells.columns:
        corr_metrics = [m for m in ph.metric_columns(cells.drop(columns=[c for c in cells.columns
                        if c.endswith(("_std", "_n")) or c in ("n_rows", "n_done")]))
                        if m not in by]
        paths["rank_correlations.csv"] = out / "rank_correlations.csv"
        ph.rank_correlations(cells, corr_metrics, target).to_csv(paths["rank_correlations.csv"], index=False)
        paths["phase_summary.csv"] = out / "phase_summary.csv"
        ph.phase_summary(cells, cells["phase"], target).to_csv(paths["phase_summary.csv"], index=False)

    manifest = {
        "command": "landscape-phase",
        "sweep_dir": str(sweep_dir.resolve()),
        "inputs": {t: sorted(str(p) for p in (sweep_dir / "results" / t).glob("*.parquet"))
                   for t in ("models", "pairs")},
        "x": x, "y": y, "facet": facet, "metrics": list(metrics), "filters": filters,
        "thresholds": dataclasses.asdict(rule),
        "n_model_rows": int(len(models)), "n_pair_rows": int(len(pairs)), "n_cells": int(len(cells)),
        "cells_by_status": {str(k): int(v) for k, v in cells["status"].value_counts().items()},
        "git": _git_commit(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "outputs": {},
    }
    paths["manifest.json"] = out / "manifest.json"
    manifest["outputs"] = {k: str(v) for k, v in paths.items()}
    tmp = paths["manifest.json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(paths["manifest.json"])
    return paths


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="landscape-phase", description="Phase diagrams of a sweep directory.")
    ap.add_argument("sweep_dir", type=Path, help="sweep directory holding results/models and results/pairs")
    ap.add_argument("--x", required=True, help="knob on the x axis, e.g. model.width")
    ap.add_argument("--y", required=True, help="knob on the y axis, e.g. train.batch_size")
    ap.add_argument("--metrics", nargs="+", default=None,
                    help=f"metric columns, one panel each (default: those of {list(pd_fig.DEFAULT_METRICS)} present)")
    ap.add_argument("--facet", default=None, help="knob whose values get one row of panels each")
    ap.add_argument("--filter", dest="filters", action="append", default=[], metavar="KNOB=VALUE",
                    help="keep rows with KNOB equal to VALUE (comma-separated: any of them); repeatable")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default SWEEP_DIR/analysis/phase/X__Y)")
    ap.add_argument("--thresholds", action="append", default=[], metavar="NAME=VALUE",
                    help="phase-rule overrides: train_loss, mc_underfit, mc_barrier, cka (and *_column names)")
    ap.add_argument("--formats", nargs="+", default=["png", "pdf"], help="figure file formats (default: png pdf)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        rule = ph.PhaseRule().with_overrides(ph.parse_overrides(args.thresholds))
        paths = run(args.sweep_dir, args.x, args.y, args.metrics, args.facet, parse_filters(args.filters),
                    args.out, rule, args.formats)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"landscape-phase: error: {e}", file=sys.stderr)
        return 2
    for p in paths.values():
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
