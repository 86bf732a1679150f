"""``landscape-phase``: phase diagrams of a sweep directory.

    landscape-phase SWEEP_DIR [--x KNOB --y KNOB] [--metrics M ...] [--facet KNOB] [--filter KNOB=VALUE ...]
                    [--out DIR] [--thresholds paper|calibrate|NAME=VALUE ...] [--train-loss NATS]
                    [--train-error PERCENT] [--mc-underfit PP] [--mc-barrier PP] [--cka C]
                    [--limits data|paper] [--uncertain-below C] [--bootstrap N] [--seed S] [--formats png pdf]
                    [--select FAMILY.SETTING=VALUE ...]

Reads the ``models`` and ``pairs`` rows of the sweep and the cells it planned (``launches/*.json``, with each
cell's ``status.json``: a cell that never wrote a row is still drawn, masked), keeps the rows of the filters,
chooses one setting per cell of every metric family whose rows hold several (:mod:`landscape.settings_choice`:
the setting covering the most cells, ties to the newest; ``--select`` forces one; printed, with every cell
that uses another setting named), aggregates the completed rows of every cell (:func:`landscape.phase.aggregate_cells`), labels the phases
(:class:`landscape.phase.PhaseRule`; a label only where mc bounds of curves still moving cannot change it),
computes each label's confidence (:func:`landscape.phase.label_confidence`: the probability that a rerun with
new seeds gives the same label), prints the phase table and the
mean test accuracy per phase, and writes into ``--out`` (default ``SWEEP_DIR/analysis/phase/<x>__<y>``):

* ``phase_diagram.png`` (and ``.pdf``/``.svg`` with ``--formats``): one panel per metric (rows: facet
  values), colour limits from the data;
* ``phase_map.png`` (likewise): one colour per phase, boundaries, a legend saying what each phase means,
  confidence and counts per cell, the dataset, model, epochs, seeds and thresholds in its title;
* ``cells.csv``: one row per cell (means, stds, counts, status, phase, phase_reason, phase_confidence, n_models,
  n_models_total, n_pairs_total/_exact/_lower/_upper/_bounded/_unknown/_resolved, n_pairs_mc, share_unresolved,
  few_pairs;
  metrics of families that did not run are left out); on an adaptive sweep (``hydra/sweeper=adaptive``) one row
  per point of its grid, ``label_source`` saying ``measured``, ``inferred`` (the phase rule applied to the rule's
  values interpolated from the nearest measured cells, else their majority label: :func:`landscape.adaptive.infer`;
  ``phase_support`` says from which) or ``unmeasured`` (no measured cell to infer from), the inferred cells drawn
  lighter and dotted on the phase map;
* ``pivot_<metric>.csv`` (``pivot_<metric>__<facet>=<value>.csv`` with a facet): cell means, rows = y values,
  columns = x values; ``pivot_phase.csv`` likewise;
* ``phase_summary.csv``: cells, mean test accuracy and mean confidence per phase;
* ``rank_correlations.csv``: Spearman correlation of each metric's cell means with test accuracy, over all
  cells and within the well- and poorly-trained ones, with n and p (metric columns of families that ran);
* ``mc_budget.png`` (likewise), when the pairs rows hold mode connectivity at two or more curve budgets (all
  settings' rows: each stage of each curve, ``connectivity.mc_by_budget``): cell mean mc against the budget, one
  panel per ``y`` value, one line per ``x`` value, the phase rule's mc thresholds dashed;
* ``manifest.json``: inputs, filters, thresholds with units and where they came from, calibration, the setting
  chosen per family (``settings_choice``), warnings.

Settings come from, in increasing precedence: the defaults (the paper's thresholds, data colour limits), the
sweep file's ``phase:`` section (kept in ``SWEEP_DIR/multirun.yaml`` by every launch; the sweep file's name is
``hydra.runtime.choices.sweep`` there), and the flags. Every output is rewritten on each run.
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
import pyarrow.types as pa_types

from landscape import phase as ph
from landscape import sweepdir
from landscape.settings_choice import parse_value

log = logging.getLogger(__name__)

#: Defaults of the settings (overridden by the sweep file's ``phase:`` section, then by flags).
DEFAULTS: dict[str, Any] = {
    "x": None,
    "y": None,
    "facet": None,
    "thresholds": "paper",
    "limits": "data",
    "uncertain_below": 0.9,
    "bootstrap": 1000,
    "seed": 0,
    "select": [],
}
THRESHOLD_KEYS = ("train_loss", "train_error", "mc_underfit", "mc_barrier", "cka")
#: States of ``cells/<id>/status.json`` that mean no result yet.
_PENDING_STATES = ("running", "pending", "interrupted")


def load_rows(sweep_dir: Path, table: str) -> pd.DataFrame:
    """All rows of ``table`` of a sweep, through ``landscape.results.load`` (typed; only committed, intact
    result files; its snapshot makes re-reading fast); empty if none. Where that fails, the Parquet files
    are read directly (logged)."""
    try:
        from landscape.results import load

        return load(sweep_dir, table=table)
    except Exception as e:  # noqa: BLE001 - the files alone suffice: read them without the schema module
        log.warning(
            "landscape.results.load(%s, table=%r) failed (%s: %s); reading the Parquet files directly",
            sweep_dir,
            table,
            type(e).__name__,
            e,
        )
        return read_parquet_dir(sweepdir.table_dir(sweep_dir, table))


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


def sweep_settings(sweep_dir: Path) -> tuple[dict[str, Any], str | None]:
    """``(phase section, sweep file name)`` recorded in ``SWEEP_DIR/multirun.yaml`` (the composed config of
    the last launch: the sweep file's ``phase:`` keys and ``hydra.runtime.choices.sweep``); empty/None when
    there is no such file (e.g. rows imported from elsewhere). Null values are left out."""
    path = sweepdir.multirun_path(sweep_dir)
    if not path.is_file():
        return {}, None
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        log.warning("%s: not readable (%s); ignoring its phase settings", path, e)
        return {}, None
    section = doc.get("phase") or {}
    sweep = ((doc.get("hydra") or {}).get("runtime") or {}).get("choices", {}).get("sweep")
    return {k: v for k, v in section.items() if v is not None}, sweep


def parse_filters(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["train.lr=0.1", "data.name=cifar10,mnist1d"]`` -> ``{"train.lr": [0.1], "data.name": [...]}``."""
    out: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--filter {item!r}: expected KNOB=VALUE (VALUE may be a comma-separated list)")
        k, v = item.split("=", 1)
        out.setdefault(k.strip(), []).extend(parse_value(x.strip()) for x in v.split(","))
    return out


def _keep(col: pd.Series, values: list[Any]) -> np.ndarray:
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and pd.api.types.is_numeric_dtype(
        col
    ):
        c = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return np.isclose(c[:, None], np.asarray(values, dtype=np.float64)[None, :], rtol=1e-9).any(axis=1)
    return col.astype(object).isin(values).to_numpy(dtype=bool)


def apply_filters(df: pd.DataFrame, filters: dict[str, list[Any]]) -> pd.DataFrame:
    """Rows whose column ``k`` is one of ``filters[k]`` for every ``k`` (numbers compared as floats)."""
    keep = np.ones(len(df), dtype=bool)
    for k, values in filters.items():
        if k not in df.columns:
            raise KeyError(f"--filter {k}: no such column; knobs: {ph.knob_columns(df)}")
        keep &= _keep(df[k], values)
    return df[keep]


def planned_cells(sweep_dir: Path) -> pd.DataFrame:
    """Every cell the sweep's launches planned (``launches/*.json``): ``cell_id``, ``state`` (its
    ``cells/<id>/status.json`` state, ``pending`` without one) and one column per override key (parsed values)."""
    rows: dict[str, dict[str, Any]] = {}
    for f in sweepdir.launch_record_paths(sweep_dir):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            log.warning("%s: not readable; its planned cells are not drawn", f)
            continue
        for c in doc.get("cells", []):
            row: dict[str, Any] = {"cell_id": c.get("cell_id")}
            for o in c.get("overrides", []):
                if "=" in o and not o.startswith(("+", "~", "hydra")):
                    k, v = o.split("=", 1)
                    row[k] = parse_value(v)
            rows[str(row["cell_id"])] = row
    if not rows:
        return pd.DataFrame(columns=["cell_id", "state"])
    for cid, row in rows.items():
        state = "pending"
        status = sweepdir.status_path(sweepdir.cell_dir(sweep_dir, cid))
        if status.is_file():
            try:
                state = str(json.loads(status.read_text()).get("state", "pending"))
            except (OSError, ValueError):
                state = "damaged"
        row["state"] = state
    return pd.DataFrame(list(rows.values()))


def swept_knobs(sweep_dir: Path, rows: pd.DataFrame | None = None) -> list[str]:
    """The knobs a sweep varies: the override keys of its planned cells (``launches/*.json``, every launch
    into the directory) that take more than one value across them, in the order of the overrides (a config
    group choice such as ``data=digits,mnist1d`` as its ``<group>.name`` column). Without recorded launches
    (rows imported from elsewhere), the knob columns of ``rows`` whose values differ, the derived sizes
    (``data.n_train``, ``model.n_params``: they follow from the knobs) left out. Given ``rows``, only
    keys that are columns of ``rows`` are returned."""
    from landscape.results.schema import DERIVED

    planned = planned_cells(sweep_dir)
    keys: list[str] = []
    if not planned.empty:
        for k in planned.columns:
            if k in ("cell_id", "state") or planned[k].astype(str).nunique(dropna=False) < 2:
                continue
            keys.append(f"{k}.name" if "." not in k and k in ph.KNOB_GROUPS else k)
    elif rows is not None:
        keys = [k for k in ph.knob_columns(rows) if k not in DERIVED and rows[k].astype(str).nunique() > 1]
    if rows is not None:
        keys = [k for k in keys if k in rows.columns]
    return keys


def _placeholders(sweep_dir: Path, models: pd.DataFrame, by: list[str], filters: dict[str, list[Any]]) -> pd.DataFrame:
    """Cells planned by the sweep that have no model row, as cell rows with the knob values ``by`` and a status
    (``failed``, or ``missing`` for a cell not run yet), so that they stay on the axes."""
    planned = planned_cells(sweep_dir)
    if planned.empty:
        return pd.DataFrame()
    have = set(models["cell_id"].astype(str)) if "cell_id" in models.columns else set()
    todo = planned[~planned["cell_id"].astype(str).isin(have)].copy()
    if todo.empty:
        return pd.DataFrame()
    for k in by:
        if k not in todo.columns:
            fixed = models[k].dropna().unique() if k in models.columns else []
            if len(fixed) != 1:
                log.warning(
                    "%d planned cells without rows are not drawn: their %s is not in their overrides", len(todo), k
                )
                return pd.DataFrame()
            todo[k] = fixed[0]
    todo = todo.dropna(subset=by)
    for k, values in filters.items():
        if k in todo.columns:
            todo = todo[_keep(todo[k], values)]
    out = todo[["cell_id"] + by].copy()
    out["status"] = ["failed" if s in ("failed", "damaged") else "missing" for s in todo["state"]]
    out["n_rows"] = 0
    out["n_done"] = 0
    return out.drop(columns="cell_id")


def _has_values(df: pd.DataFrame | None, column: str) -> bool:
    return df is not None and column in df.columns and ph.ran(df, column)


def drawable_columns(models: pd.DataFrame, pairs: pd.DataFrame | None) -> dict[str, str]:
    """``{column: table}`` of the columns ``--metrics`` may draw: the metric columns of the families
    (``landscape.metrics``) and the derived ``train_error`` that hold at least one finite value in these rows,
    then the families' numeric diagnostics with values (e.g. ``connectivity.middle_excess``), in column order."""
    from landscape import metrics as contract

    out: dict[str, str] = {}
    for table, rows in (("models", models), ("pairs", pairs)):
        if rows is None or rows.empty:
            continue
        for col in ph.metric_columns(rows, table):
            if ph.ran(rows, col):
                out[col] = table
        if table == "models" and _has_values(rows, "train_acc"):
            out["train_error"] = "models"
    for table, rows in (("models", models), ("pairs", pairs)):
        if rows is None or rows.empty:
            continue
        for fam in contract.families(table):  # type: ignore[arg-type]
            for col, typ in fam.diagnostics.items():
                if (
                    col in rows.columns
                    and (pa_types.is_floating(typ) or pa_types.is_integer(typ))
                    and ph.ran(rows, col)
                ):
                    out.setdefault(col, table)
    return out


def choose_metrics(
    requested: Sequence[str] | None, models: pd.DataFrame, pairs: pd.DataFrame | None
) -> tuple[list[str] | None, list[str], list[str]]:
    """``(metrics, extra model columns, extra pair columns)``: the ``--metrics`` asked for, each checked
    against :func:`drawable_columns`, and the diagnostics among them (aggregated beside the metrics). None
    when none were asked for (the default panels are chosen from the cells). ``KeyError`` naming every column
    refused and why (not in the rows, no value in any row and which family to enable, not a measured value),
    with the metric columns that hold values."""
    if not requested:
        return None, [], []
    from landscape import metrics as contract

    ok = drawable_columns(models, pairs)
    problems = []
    for m in requested:
        if m in ok:
            continue
        try:
            fam = contract.get(contract.family_of(m))
        except KeyError:
            fam = None
        in_rows = m in models.columns or (pairs is not None and m in pairs.columns)
        if fam is not None and (m in fam.metrics or m in fam.diagnostics) and (in_rows or m in fam.metrics):
            fam_ran = any(_has_values(r, c) for r in (models, pairs) for c in fam.metrics)
            problems.append(
                f"{m}: no value in any row (all null: "
                + (
                    f"its family {fam.name} ran, but wrote no {m} in these rows)"
                    if fam_ran
                    else f"its family {fam.name} did not run in these rows; run it with metrics.{fam.name}.enabled=true)"
                )
            )
        elif fam is not None:
            problems.append(f"{m}: a setting or error column of the family {fam.name}, not a measured value")
        elif in_rows:
            problems.append(f"{m}: not a measured value (a knob or provenance column)")
        else:
            problems.append(f"{m}: not a column of the rows")
    if problems:
        metric_cols = [
            c
            for c in ok
            if c in contract.metric_columns("models") + contract.metric_columns("pairs") or c == "train_error"
        ]
        others = [c for c in ok if c not in metric_cols]
        raise KeyError(
            f"--metrics: {'; '.join(problems)}. Metric columns with values: {', '.join(metric_cols) or 'none'}"
            + (f"; diagnostics with values: {', '.join(others)}" if others else "")
        )
    known_m = set(ph.metric_columns(models, "models")) | {"train_error"}
    known_p = set(ph.metric_columns(pairs, "pairs")) if pairs is not None and not pairs.empty else set()
    extra_m = [m for m in requested if ok[m] == "models" and m not in known_m]
    extra_p = [m for m in requested if ok[m] == "pairs" and m not in known_p]
    return list(requested), extra_m, extra_p


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text))


def _git_commit() -> dict[str, Any]:
    try:
        from landscape.provenance import git_info

        commit, dirty = git_info()
    except Exception:  # noqa: BLE001 - provenance is best effort
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def resolve_settings(
    sweep_dir: Path, cli: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, str], str | None]:
    """``(settings, threshold overrides, origin of each, sweep file name)``: defaults < the sweep file's
    ``phase:`` section < flags (``cli``: None for a flag not given). A threshold set named by a flag
    (``--thresholds paper|calibrate``) drops the sweep file's threshold values."""
    section, sweep_file = sweep_settings(sweep_dir)
    if cli.get("thresholds") is not None:
        # a threshold set named by a flag replaces the sweep file's thresholds (flag values still apply)
        section = {k: v for k, v in section.items() if k not in THRESHOLD_KEYS}
    settings = dict(DEFAULTS)
    origin = {k: "default" for k in settings}
    thresholds: dict[str, Any] = {}
    for src, values in (("sweep file", section), ("flag", cli)):
        for k, v in values.items():
            if v is None:
                continue
            if k in THRESHOLD_KEYS:
                thresholds[k] = v
                origin[k] = src
            elif k == "threshold_overrides":
                thresholds.update(v)
                origin.update({kk: src for kk in v})
            elif k in settings:
                settings[k] = v
                origin[k] = src
            else:
                raise KeyError(
                    f"phase.{k}={v!r} ({src}): unknown; allowed: {', '.join(list(DEFAULTS) + list(THRESHOLD_KEYS))}"
                )
    if settings["limits"] not in ("data", "paper"):
        raise ValueError(f"limits={settings['limits']!r} ({origin['limits']}): expected data or paper")
    return settings, thresholds, origin, sweep_file


def run(
    sweep_dir: Path,
    x: str | None = None,
    y: str | None = None,
    metrics: Sequence[str] | None = None,
    facet: str | None = None,
    filters: dict[str, list[Any]] | None = None,
    out: Path | None = None,
    rule: ph.PhaseRule | None = None,
    formats: Sequence[str] = ("png",),
    thresholds: str | None = None,
    threshold_overrides: dict[str, Any] | None = None,
    limits: str | None = None,
    uncertain_below: float | None = None,
    bootstrap: int | None = None,
    seed: int | None = None,
    report: list[str] | None = None,
    select: Sequence[str] | None = None,
) -> dict[str, Path]:
    """The whole command (see the module docstring); returns ``{output name: path}``. ``rule`` (a ready rule)
    replaces ``thresholds``/``threshold_overrides`` and the sweep file's thresholds. ``report`` (a list) gets the
    lines the command prints. ``select``: ``["FAMILY.SETTING=VALUE", ...]`` (see
    :mod:`landscape.settings_choice`; replaces the sweep file's ``phase.select``). The steps below, in order."""
    sweep_dir = Path(sweep_dir)
    filters = filters or {}
    settings, t_over, origin, sweep_file = resolve_settings(
        sweep_dir,
        {
            "x": x,
            "y": y,
            "facet": facet,
            "thresholds": thresholds,
            "limits": limits,
            "uncertain_below": uncertain_below,
            "bootstrap": bootstrap,
            "seed": seed,
            "threshold_overrides": threshold_overrides or None,
            "select": list(select) if select else None,
        },
    )
    x, y, facet = settings["x"], settings["y"], settings["facet"]
    if not x or not y:
        raise ValueError("--x and --y: the knobs of the axes are needed (or phase.x / phase.y in the sweep file)")
    out = Path(out) if out is not None else sweepdir.phase_output_dir(sweep_dir, f"{_slug(x)}__{_slug(y)}")
    by = [x, y] + ([facet] if facet else [])
    rows = load_filtered_rows(sweep_dir, filters, by)
    rows = choose_settings(rows, settings["select"], by)
    metrics, extra_m, extra_p = choose_metrics(metrics, rows.models, rows.pairs_or_none)
    cells = aggregate_with_placeholders(sweep_dir, rows, by, filters, extra_m, extra_p)
    if rule is None:
        rule, calibration = ph.resolve_rule(settings["thresholds"], t_over, cells)
    else:
        calibration = {}
    cells, labels, conf = label_cells(cells, rows, by, rule, settings)
    warnings = collect_warnings(cells, rows, by, rule, labels)
    measured = cells
    cells = complete_adaptive_map(sweep_dir, cells, by, filters, rule)  # an adaptive sweep: every grid point
    available = available_metrics(rows)
    metrics = metrics or default_metrics(cells, available)

    out.mkdir(parents=True, exist_ok=True)
    paths, budget_points = write_figures(out, cells, rows, x, y, facet, metrics, by, rule, settings, formats)
    summary, corr = write_tables(out, paths, cells, labels, x, y, facet, metrics, available, by, rule, measured)
    manifest = build_manifest(
        sweep_dir,
        sweep_file,
        rows,
        cells,
        labels,
        conf,
        x,
        y,
        facet,
        metrics,
        filters,
        settings,
        origin,
        rule,
        calibration,
        warnings,
    )
    write_manifest(out, paths, manifest)
    if report is not None:
        report.extend(
            report_lines(
                rows,
                cells,
                x,
                y,
                facet,
                rule,
                summary,
                corr,
                out,
                calibration,
                settings,
                sweep_file,
                paths,
                budget_points,
            )
        )
    return paths


@dataclasses.dataclass
class Rows:
    """The rows one ``landscape-phase`` run reads: ``models``; ``pairs`` (after :func:`choose_settings`: one
    setting per cell and family); ``all_pairs`` (every setting's pairs rows, for the mc-against-budget figure);
    ``choices`` (the setting chosen per family, :class:`landscape.settings_choice` choices)."""

    models: pd.DataFrame
    pairs: pd.DataFrame
    all_pairs: pd.DataFrame
    choices: list[Any] = dataclasses.field(default_factory=list)

    @property
    def pairs_or_none(self) -> pd.DataFrame | None:
        """``pairs``, or None where there is none (what the aggregation and the rule take)."""
        return self.pairs if not self.pairs.empty else None


def load_filtered_rows(sweep_dir: Path, filters: dict[str, list[Any]], by: list[str]) -> Rows:
    """The ``models`` and ``pairs`` rows of the sweep (:func:`load_rows`) that the ``filters`` keep (a filter on a
    column the pairs rows lack filters the models only). ``FileNotFoundError`` without any models row (naming the
    cells the sweep planned and their states), ``KeyError`` for a filter or a knob of ``by`` that is no column,
    ``ValueError`` when the filters leave no models row."""
    models = load_rows(sweep_dir, "models")
    pairs = load_rows(sweep_dir, "pairs")
    if models.empty:
        planned = planned_cells(sweep_dir)
        hint = (
            (
                f"; the sweep planned {len(planned)} cells ({', '.join(f'{k}: {v}' for k, v in planned['state'].value_counts().items())}):"
                f" see landscape-status {sweep_dir}"
            )
            if not planned.empty
            else ""
        )
        raise FileNotFoundError(f"no models rows under {sweepdir.table_dir(sweep_dir, 'models')}{hint}")
    models = apply_filters(models, filters)
    if not pairs.empty:
        pairs = apply_filters(pairs, {k: v for k, v in filters.items() if k in pairs.columns})
    if models.empty:
        raise ValueError(f"no models rows left after filters {filters}")
    for k in by:
        if k not in models.columns:
            raise KeyError(f"knob {k!r} is not a column of the rows; knobs: {ph.knob_columns(models)}")
    return Rows(models, pairs, pairs)


def choose_settings(rows: Rows, select: Sequence[str] | None, by: list[str]) -> Rows:
    """One setting per cell of every metric family whose rows hold several (:func:`landscape.settings_choice.
    choose_for_cells`: the setting covering the most cells, ties to the newest; ``select`` forces one). The
    returned rows keep every setting's pairs rows in ``all_pairs`` (the mc-against-budget figure draws them)."""
    from landscape import settings_choice as sc

    models, pairs_chosen, choices = sc.choose_for_cells(
        rows.models, rows.pairs if not rows.pairs.empty else None, sc.parse_select(list(select or [])), by
    )
    pairs = pairs_chosen if pairs_chosen is not None else rows.pairs
    return Rows(models, pairs, rows.pairs, list(choices))


def aggregate_with_placeholders(
    sweep_dir: Path, rows: Rows, by: list[str], filters: dict[str, list[Any]], extra_m: list[str], extra_p: list[str]
) -> pd.DataFrame:
    """One row per cell (:func:`landscape.phase.aggregate_cells` of the completed rows: means, stds, counts,
    status), the diagnostics asked for by ``--metrics`` (``extra_m``/``extra_p``) aggregated beside the metrics,
    then one placeholder row per planned cell without a models row (:func:`_placeholders`: ``failed`` or
    ``missing``, no values) so that it stays on the axes."""
    models, pairs = rows.models, rows.pairs_or_none
    cells = ph.aggregate_cells(
        models,
        pairs,
        by,
        model_metrics=ph.metric_columns(models, "models") + extra_m if extra_m else None,
        pair_metrics=ph.metric_columns(rows.pairs, "pairs") + extra_p if extra_p and pairs is not None else None,
    )
    extra = _placeholders(sweep_dir, models, by, filters)
    if not extra.empty:
        cells = pd.concat([cells, extra], ignore_index=True)
        for c in ("n_rows", "n_done", "n_pairs"):
            if c in cells.columns:
                cells[c] = cells[c].fillna(0).astype("int64")
    return cells.copy()  # consolidated (built column by column; later column writes would each warn)


def label_cells(
    cells: pd.DataFrame, rows: Rows, by: list[str], rule: ph.PhaseRule, settings: dict[str, Any]
) -> tuple[pd.DataFrame, pd.Series, pd.DataFrame]:
    """``(cells, labels, confidence)``: each cell's phase where it holds whatever further curve training does
    (:func:`landscape.phase.bounded_labels`: mc bounds of curves still moving cannot change it; ``phase``,
    ``phase_reason``), its confidence (:func:`landscape.phase.label_confidence`, ``settings["bootstrap"]`` draws
    seeded by ``settings["seed"]``: ``phase_confidence`` and the resolution counts), ``uncertain`` (confidence
    below ``settings["uncertain_below"]``) and ``few_pairs`` (labelled from fewer than
    :data:`landscape.phase.MIN_RESOLVED_PAIRS` resolved pairs), as columns of the returned cells."""
    models, pairs = rows.models, rows.pairs_or_none
    labels, reasons = ph.bounded_labels(cells, rule, ph.resolution_counts(models, pairs, cells, by, rule))
    cells["phase"] = labels
    cells["phase_reason"] = reasons
    conf = ph.label_confidence(
        models, pairs, cells, by, rule, labels, n_boot=int(settings["bootstrap"]), seed=int(settings["seed"])
    )
    # one consolidated frame (the aggregation builds it column by column: pandas warns of a fragmented frame)
    cells = pd.concat([cells.drop(columns=[c for c in conf.columns if c in cells.columns]), conf], axis=1).copy()
    cells["uncertain"] = cells["phase_confidence"] < float(settings["uncertain_below"])
    cells["few_pairs"] = cells["phase"].notna() & (cells["n_pairs_resolved"] < ph.MIN_RESOLVED_PAIRS)
    return cells, labels, conf


def complete_adaptive_map(
    sweep_dir: Path,
    cells: pd.DataFrame,
    by: list[str],
    filters: dict[str, list[Any]],
    rule: ph.PhaseRule | None = None,
) -> pd.DataFrame:
    """On an adaptive sweep (``hydra/sweeper=adaptive``: ``<sweep>/adaptive/waves.jsonl``) whose grid's axes are
    ``by``, ``cells`` with every point of the grid (:func:`landscape.adaptive.complete_cells`: a ``label_source``
    column, ``measured``/``inferred``/``unmeasured``; the cells not measured labelled by ``rule``, the one that
    labelled ``cells``, on its values interpolated from the nearest measured cells); otherwise ``cells`` as they
    are."""
    from landscape import adaptive

    state = adaptive.read_state(sweep_dir)
    if state is None or state.grid is None:
        return cells
    axes = [a.column for a in state.grid.axes]
    if sorted(axes) != sorted(by):
        log.warning(
            "adaptive sweep over %s drawn over %s: unmeasured cells are not inferred (draw it over its axes)",
            ", ".join(axes),
            ", ".join(by),
        )
        return cells
    return adaptive.complete_cells(state.grid, cells, filters, phase_rule=rule)


def collect_warnings(
    cells: pd.DataFrame, rows: Rows, by: list[str], rule: ph.PhaseRule, labels: pd.Series
) -> list[str]:
    """The warnings of the run, in the manifest's order: the settings choice's (cells using another setting,
    unknown ``--select`` values), then the cells a metric the rule reads is missing from and the labels from
    few resolved pairs (these logged)."""
    warnings = ph.missing_metric_warnings(cells, rule, by, labels) + ph.resolution_warnings(cells, by)
    for w in warnings:
        log.warning("%s", w)
    return [w for c in rows.choices for w in c.warnings()] + list(warnings)


def available_metrics(rows: Rows) -> set[str]:
    """The metric columns of the families in the rows (models and chosen pairs), with a value or not."""
    return set(ph.metric_columns(rows.models, "models")) | (
        set(ph.metric_columns(rows.pairs, "pairs")) if not rows.pairs.empty else set()
    )


def default_metrics(cells: pd.DataFrame, available: set[str]) -> list[str]:
    """The panels drawn without ``--metrics``: the paper's panels (``phase_diagram.DEFAULT_METRICS``) that hold a
    value in the cells, else the first four metrics with a value (by name). ``ValueError`` when no metric has one."""
    from landscape import phase_diagram as pd_fig

    metrics = [m for m in pd_fig.DEFAULT_METRICS if ph.ran(cells, m)] or sorted(
        m for m in available if ph.ran(cells, m)
    )[:4]
    if not metrics:
        raise ValueError("no metric with a value in the rows")
    return metrics


def write_figures(
    out: Path,
    cells: pd.DataFrame,
    rows: Rows,
    x: str,
    y: str,
    facet: str | None,
    metrics: Sequence[str],
    by: list[str],
    rule: ph.PhaseRule,
    settings: dict[str, Any],
    formats: Sequence[str],
) -> tuple[dict[str, Path], pd.DataFrame | None]:
    """``phase_diagram`` (one panel per metric), ``phase_map`` (the labels, hatched below
    ``settings["uncertain_below"]``) and, where the pairs rows hold mc at two or more curve budgets,
    ``mc_budget``, in each of ``formats``. Returns ``({file name: path}, the mc_budget points or None)``."""
    from landscape import phase_diagram as pd_fig

    paths: dict[str, Path] = {}
    fig = pd_fig.metrics_figure(cells, x, y, metrics, facet, limits=settings["limits"], rule=rule)
    paths.update(pd_fig.save(fig, out / "phase_diagram", formats))
    fig = pd_fig.phase_map_figure(
        cells,
        x,
        y,
        "phase",
        facet,
        float(settings["uncertain_below"]),
        rule,
        caption=pd_fig.caption_from_rows(rows.models, by),
    )
    paths.update(pd_fig.save(fig, out / "phase_map", formats))
    budget_points = _mc_budget_points(pd_fig, rows.models, rows.all_pairs, x, y, facet)
    if budget_points is not None:
        fig = pd_fig.mc_budget_figure(budget_points, x, y, facet, rule)
        paths.update(pd_fig.save(fig, out / "mc_budget", formats))
    return paths, budget_points


def write_tables(
    out: Path,
    paths: dict[str, Path],
    cells: pd.DataFrame,
    labels: pd.Series,
    x: str,
    y: str,
    facet: str | None,
    metrics: Sequence[str],
    available: set[str],
    by: list[str],
    rule: ph.PhaseRule,
    measured: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The CSV files, each added to ``paths``: ``cells.csv`` (metrics of families that did not run left out,
    with their std and count), ``pivot_<column>[__<facet>=<value>].csv`` of each drawn metric, the phase and its
    confidence, ``phase_summary.csv`` (per phase: cells, mean test accuracy, mean confidence) and, with a
    ``test_acc`` column, ``rank_correlations.csv`` (:func:`landscape.phase.rank_correlations` of every other
    metric). ``measured``: the cells ``labels`` label, when ``cells`` holds more (an adaptive sweep's inferred
    cells): the summary and correlations are of those. Returns ``(summary, correlations or None)``."""
    from landscape import phase_diagram as pd_fig

    paths["cells.csv"] = out / "cells.csv"
    # metrics of families that did not run (no value in any cell) are left out, with their std and count
    empty = [m for m in available if m in cells.columns and not ph.ran(cells, m)]
    drop = [c for m in empty for c in (m, f"{m}_std", f"{m}_n") if c in cells.columns]
    cells.drop(columns=drop).to_csv(paths["cells.csv"], index=False)
    for fv in [None] if facet is None else sorted(cells[facet].dropna().unique().tolist()):
        sub = cells if facet is None else cells[cells[facet] == fv]
        suffix = "" if facet is None else f"__{_slug(facet)}={_slug(fv)}"
        for m in list(metrics) + ["phase", "phase_confidence"]:
            name = f"pivot_{_slug(m)}{suffix}.csv"
            pd_fig.pivot(sub, x, y, m).to_csv(out / name)
            paths[name] = out / name
    target = "test_acc"
    cells = cells if measured is None else measured
    summary = ph.phase_summary(cells, labels, target, cells["phase_confidence"])
    paths["phase_summary.csv"] = out / "phase_summary.csv"
    summary.to_csv(paths["phase_summary.csv"], index=False)
    corr = None
    if target in cells.columns:
        corr_metrics = sorted(m for m in available if m not in by and m != target)
        corr = ph.rank_correlations(cells, corr_metrics, target, rule=rule)
        paths["rank_correlations.csv"] = out / "rank_correlations.csv"
        corr.to_csv(paths["rank_correlations.csv"], index=False)
    return summary, corr


def build_manifest(
    sweep_dir: Path,
    sweep_file: str | None,
    rows: Rows,
    cells: pd.DataFrame,
    labels: pd.Series,
    conf: pd.DataFrame,
    x: str,
    y: str,
    facet: str | None,
    metrics: Sequence[str],
    filters: dict[str, list[Any]],
    settings: dict[str, Any],
    origin: dict[str, str],
    rule: ph.PhaseRule,
    calibration: dict[str, Any],
    warnings: list[str],
) -> dict[str, Any]:
    """The content of ``manifest.json`` (its ``outputs`` filled in by :func:`write_manifest`): inputs, axes,
    filters, settings and where each came from, thresholds with units and their source, calibration, the
    confidence's definition and variance priors, the setting chosen per family, warnings, counts, git commit."""
    models, pairs, choices = rows.models, rows.pairs, rows.choices
    manifest = {
        "command": "landscape-phase",
        "sweep_dir": str(sweep_dir.resolve()),
        "sweep_file": f"sweeps/{sweep_file}.yaml" if sweep_file else None,
        "inputs": {t: sweepdir.table_files(sweep_dir, t) for t in ("models", "pairs")},
        "x": x,
        "y": y,
        "facet": facet,
        "metrics": list(metrics),
        "filters": filters,
        "settings": settings,
        "settings_origin": origin,
        "thresholds": {
            **rule.thresholds(),
            "source": rule.source,
            "columns": dict(zip(("fit", "mc", "cka"), rule.columns, strict=True)),
        },
        "calibration": calibration,
        "confidence": {
            "definition": "probability that a rerun of the cell with new seeds gives the same label "
            "(landscape.phase.label_confidence)",
            "draws": int(settings["bootstrap"]),
            "seed": int(settings["seed"]),
            "variance_priors": conf.attrs.get("priors", {}),
        },
        "settings_choice": [c.to_dict() for c in choices],
        "warnings": warnings,
        "n_model_rows": int(len(models)),
        "n_pair_rows": int(len(pairs)),
        "n_cells": int(len(cells)),
        "cells_by_status": {str(k): int(v) for k, v in cells["status"].value_counts().items()},
        "cells_by_phase": {str(k): int(v) for k, v in labels.value_counts().items()},
        **_adaptive_manifest(cells),
        "git": _git_commit(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "outputs": {},
    }
    return manifest


def _adaptive_manifest(cells: pd.DataFrame) -> dict[str, Any]:
    """``{"adaptive": ...}`` for an adaptive sweep's map (points per ``label_source``, inferred labels per phase,
    the inference rule), else nothing."""
    if "label_source" not in cells.columns:
        return {}
    inferred = cells[cells["label_source"] == "inferred"]
    return {
        "adaptive": {
            "points_by_source": {str(k): int(v) for k, v in cells["label_source"].value_counts().items()},
            "inferred_by_phase": {str(k): int(v) for k, v in inferred["phase"].value_counts().items()},
            "inference": "an unmeasured cell is labelled by the phase rule on its values (training loss, mc, CKA) "
            "interpolated by inverse distance from the measured cells within one grid step of the nearest; where "
            "the rule cannot decide, the majority label of its nearest labelled measured cells "
            "(landscape.adaptive.infer)",
        }
    }


def write_manifest(out: Path, paths: dict[str, Path], manifest: dict[str, Any]) -> None:
    """``manifest.json`` (added to ``paths``), its ``outputs`` every file of ``paths``; written to a temporary
    name and renamed into place."""
    paths["manifest.json"] = out / "manifest.json"
    manifest["outputs"] = {k: str(v) for k, v in paths.items()}
    tmp = paths["manifest.json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(paths["manifest.json"])


def report_lines(
    rows: Rows,
    cells: pd.DataFrame,
    x: str,
    y: str,
    facet: str | None,
    rule: ph.PhaseRule,
    summary: pd.DataFrame,
    corr: pd.DataFrame | None,
    out: Path,
    calibration: dict[str, Any],
    settings: dict[str, Any],
    sweep_file: str | None,
    paths: dict[str, Path],
    budget_points: pd.DataFrame | None,
) -> list[str]:
    """The lines the command prints: the settings chosen where the rows hold several (with their warnings),
    then :func:`format_report`, then the mc-against-budget figure when it was drawn."""
    choice_lines = [
        line
        for c in rows.choices
        if c.several or c.selected
        for line in [c.describe()] + ["  " + w for w in c.warnings()]
    ]
    lines = choice_lines + ([""] if choice_lines else [])
    lines += format_report(
        cells, x, y, facet, rule, summary, corr, out, calibration, float(settings["uncertain_below"]), sweep_file
    )
    if "mc_budget.png" in paths:
        lines.append(
            f"mc against curve budget (the rows hold {budget_points['budget'].nunique()} budgets): "
            f"{paths['mc_budget.png']}"
        )
    return lines


def _mc_budget_points(
    pd_fig: Any, models: pd.DataFrame, pairs: pd.DataFrame, x: str, y: str, facet: str | None
) -> pd.DataFrame | None:
    """The points of ``mc_budget.png`` (``landscape.phase_diagram.mc_budget_points`` over every pairs row, the
    cells' knobs joined from the models rows), or None when they hold mc at fewer than two curve budgets."""
    if pairs.empty or "cell_id" not in pairs.columns or "connectivity.mc" not in pairs.columns:
        return None
    knobs = [k for k in dict.fromkeys([x, y] + ([facet] if facet else []))]
    p = pairs[[c for c in pairs.columns if c not in knobs]].merge(
        models[["cell_id", *knobs]].drop_duplicates("cell_id"), on="cell_id", how="inner"
    )
    panel_by = [k for k in (facet, y) if k]
    points = pd_fig.mc_budget_points(p, x, panel_by)
    if points.empty or points["budget"].nunique() < 2:
        return None
    return points


def phase_table(cells: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The phase labels as a table in the figure's orientation (rows: ``y``, hot/small batches on top;
    columns: ``x`` ascending); each entry ``LABEL c`` (c: confidence; ``*`` after it: labelled from fewer than
    two resolved pairs), ``moving`` (no label: mc still moving), or the cell's status / ``-``; an adaptive sweep's
    cell not measured ``(LABEL)`` (inferred) or ``(?)``."""
    from landscape.phase_diagram import INVERTED_KNOBS

    def entry(r) -> str:
        if r.get("label_source") in ("inferred", "unmeasured"):  # an adaptive sweep's cell not measured
            return f"({r['phase']})" if isinstance(r["phase"], str) else "(?)"
        if isinstance(r["phase"], str):
            c = r.get("phase_confidence", np.nan)
            star = "*" if bool(r.get("few_pairs", False)) else ""
            return (f"{r['phase']} {c:.2f}" if np.isfinite(c) else r["phase"]) + star
        if isinstance(r.get("phase_reason"), str):
            return "moving"
        return str(r["status"]) if r["status"] != "done" else "-"

    t = cells.assign(_e=cells.apply(entry, axis=1)).pivot(index=y, columns=x, values="_e")
    t = t.sort_index(ascending=y in INVERTED_KNOBS).reindex(columns=sorted(t.columns))
    return t.fillna("")


def format_report(
    cells: pd.DataFrame,
    x: str,
    y: str,
    facet: str | None,
    rule: ph.PhaseRule,
    summary: pd.DataFrame,
    corr: pd.DataFrame | None,
    out: Path,
    calibration: dict[str, Any],
    uncertain_below: float,
    sweep_file: str | None,
) -> list[str]:
    """The lines ``landscape-phase`` prints: thresholds, the phase table(s), the per-phase summary, the
    strongest correlations, the output directory."""
    lines = [("sweep file: sweeps/" + sweep_file + ".yaml; " if sweep_file else "") + rule.describe()]
    for name, entry in calibration.items():
        if name in ("train_loss", "train_error", "cka"):
            how = "derived" if entry.get("derived") else f"kept ({entry.get('reason', '')})"
            lines.append(f"  calibration {name}: {entry['value']:.4g} {how}; n={entry.get('n')}")
    for fv in [None] if facet is None else sorted(cells[facet].dropna().unique().tolist()):
        sub = cells if facet is None else cells[cells[facet] == fv]
        head = (
            f"phases ({y} rows, {x} columns; label and confidence = P(same label on a rerun with new "
            f"seeds); * fewer than {ph.MIN_RESOLVED_PAIRS} resolved pairs"
            + ("; (label) inferred, (?) not measured" if "label_source" in cells.columns else "")
            + (f"; {facet} = {fv})" if facet else ")")
        )
        lines += ["", head, phase_table(sub, x, y).to_string()]
    from landscape.phase_diagram import PHASE_MEANINGS

    lines += ["phases: " + "; ".join(f"{p} = {m}" for p, m in PHASE_MEANINGS.items())]
    unc = int(cells["uncertain"].sum()) if "uncertain" in cells.columns else 0
    lines += ["", f"per phase (test_acc: mean over cells; {unc} cells with confidence < {uncertain_below:g}):"]
    show = summary[summary["n_cells"] > 0]
    if show.empty:
        lines.append("  no cell has a label")
    else:
        lines.append(show.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if corr is not None and not corr.empty:
        top = corr[corr["regime"] == "all"].dropna(subset=["rho"])
        top = top.reindex(top["rho"].abs().sort_values(ascending=False).index).head(6)
        if not top.empty:
            lines += ["", "strongest rank correlations with test_acc (all cells; by regime in rank_correlations.csv):"]
            lines += [f"  {r.metric:<28s} rho {r.rho:+.2f}  p {r.p_value:.2g}  n {r.n_cells}" for r in top.itertuples()]
    lines += [
        "",
        f"outputs: {out} (phase_map.png, phase_diagram.png, cells.csv, phase_summary.csv, "
        "rank_correlations.csv, manifest.json)",
    ]
    return lines


def build_parser() -> argparse.ArgumentParser:
    from landscape.cli.console import plain

    parts = plain(__doc__).split("\n\n")  # the module docstring without its usage block (argparse writes one)
    ap = argparse.ArgumentParser(
        prog="landscape-phase",
        description="\n\n".join([parts[0], *parts[2:]]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("sweep_dir", type=Path, help="sweep directory holding results/models and results/pairs")
    ap.add_argument(
        "--x", default=None, help="knob on the x axis, e.g. model.width (default: the sweep file's phase.x)"
    )
    ap.add_argument("--y", default=None, help="knob on the y axis, e.g. train.batch_size (default: phase.y)")
    ap.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="columns to draw, one panel each: metric columns with a value in the rows (and the "
        "families' numeric diagnostics, e.g. connectivity.middle_excess); an unknown or all-null "
        "column is refused, naming those that hold values (default: those of the paper's panels "
        "that have values)",
    )
    ap.add_argument("--facet", default=None, help="knob whose values get one row of panels each")
    ap.add_argument(
        "--filter",
        dest="filters",
        action="append",
        default=[],
        metavar="KNOB=VALUE",
        help="keep rows with KNOB equal to VALUE (comma-separated: any of them); repeatable",
    )
    ap.add_argument("--out", type=Path, default=None, help="output directory (default SWEEP_DIR/analysis/phase/X__Y)")
    ap.add_argument(
        "--thresholds",
        action="append",
        default=[],
        metavar="paper|calibrate|NAME=VALUE",
        help="threshold set (paper: the paper's values; calibrate: from this sweep's cells) and/or "
        "NAME=VALUE overrides (train_loss, train_error, mc_underfit, mc_barrier, cka); repeatable",
    )
    ap.add_argument(
        "--train-loss",
        type=float,
        default=None,
        metavar="NATS",
        help="training-loss threshold in nats (mean cross-entropy)",
    )
    ap.add_argument(
        "--train-error",
        type=float,
        default=None,
        metavar="PERCENT",
        help="use training error (%% of the training set) instead of loss, with this threshold",
    )
    ap.add_argument(
        "--mc-underfit",
        type=float,
        default=None,
        metavar="PP",
        help="mc threshold of phases I/II, percentage points of training error",
    )
    ap.add_argument(
        "--mc-barrier",
        type=float,
        default=None,
        metavar="PP",
        help="mc threshold of phases III/IV, percentage points of training error",
    )
    ap.add_argument("--cka", type=float, default=None, metavar="C", help="CKA threshold of IV-A/IV-B (unitless)")
    ap.add_argument(
        "--limits",
        choices=("data", "paper"),
        default=None,
        help="colour limits: data (2nd-98th percentiles, default) or the paper's ranges",
    )
    ap.add_argument(
        "--uncertain-below",
        type=float,
        default=None,
        metavar="C",
        help="hatch cells whose label confidence is below C (default 0.9)",
    )
    ap.add_argument(
        "--bootstrap", type=int, default=None, metavar="N", help="Monte Carlo draws of the confidence per cell (1000)"
    )
    ap.add_argument("--seed", type=int, default=None, help="seed of the confidence's Monte Carlo (0)")
    ap.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="FAMILY.SETTING=VALUE",
        help="where the rows hold a metric family at several settings (e.g. two curve budgets), use "
        "this one (e.g. connectivity.budget=8; cells without it are left without the family's "
        "values, named); repeatable. Default: the setting covering the most cells, ties to the "
        "newest (printed)",
    )
    ap.add_argument(
        "--formats",
        nargs="+",
        default=["png"],
        help="figure file formats (default: png; add pdf or svg for vector figures, about 1 s each)",
    )
    return ap


def _split_thresholds(items: Sequence[str]) -> tuple[str | None, dict[str, str]]:
    preset = None
    rest = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part in ph.THRESHOLD_PRESETS:
                preset = part
            elif part:
                rest.append(part)
    return preset, ph.parse_overrides(rest)


def main(argv: Sequence[str] | None = None) -> int:
    from landscape.cli.console import pipe_safe_stdout

    pipe_safe_stdout()  # `landscape-phase DIR | head`: no BrokenPipeError, the figures are still written
    args = build_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (the library leaves the backend to its caller)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        preset, overrides = _split_thresholds(args.thresholds)
        for key in ("train_loss", "train_error", "mc_underfit", "mc_barrier", "cka"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        report: list[str] = []
        run(
            args.sweep_dir,
            args.x,
            args.y,
            args.metrics,
            args.facet,
            parse_filters(args.filters),
            args.out,
            None,
            args.formats,
            thresholds=preset,
            threshold_overrides=overrides,
            limits=args.limits,
            uncertain_below=args.uncertain_below,
            bootstrap=args.bootstrap,
            seed=args.seed,
            report=report,
            select=args.select,
        )
    except (KeyError, ValueError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"landscape-phase: error: {msg}", file=sys.stderr)
        return 2
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
