# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exploring a sweep's rows
#
# A walk through the `models` and `pairs` rows of one sweep directory with pandas and seaborn: how many
# models finished, what each swept knob does on average, test accuracy as a heatmap over the sweep's phase
# axes with the phase labels `landscape-phase` gives, and how the metrics correlate with test accuracy.
#
# The sweep is read as `landscape-phase` reads it: the axes, facet, thresholds and setting choices of its
# `phase:` section (kept in `SWEEP_DIR/multirun.yaml`), and as knobs only the keys the sweep varies
# (`landscape.cli.phase.swept_knobs`: from its launches, not the derived sizes such as `model.n_params`).
#
# Open it in Jupyter (`make notebook`, or `jupytext --to notebook analysis/explore_sweep.py`), set the sweep in
# the parameter cell below (papermill: `-p SWEEP_DIR DIR`) or in `LANDSCAPE_SWEEP_DIR`; figures are shown
# inline and saved. Run as a script: `python analysis/explore_sweep.py SWEEP_DIR [OUT_DIR]`. Figures and tables
# go to `OUT_DIR` (`LANDSCAPE_EXPLORE_OUT`; default `SWEEP_DIR/analysis/explore`). The published results of
# Yang et al. 2021 make a ready example:
# `python analysis/taxonomy2021.py /tmp/tax21 && python analysis/explore_sweep.py /tmp/tax21`.

# %% tags=["parameters"]
# Parameters: None = the command line (as a script), then $LANDSCAPE_SWEEP_DIR / $LANDSCAPE_EXPLORE_OUT, then
# outputs/demo and SWEEP_DIR/analysis/explore.
SWEEP_DIR = None
OUT_DIR = None

# %%
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from landscape import phase
from landscape.cli.phase import load_rows, phase_table, resolve_settings, swept_knobs
from landscape.notebook import notebook_paths
from landscape.phase_diagram import INVERTED_KNOBS
from landscape.settings_choice import choose_for_cells, parse_select

logging.basicConfig(level=logging.WARNING)
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)

paths = notebook_paths(SWEEP_DIR, OUT_DIR, "LANDSCAPE_EXPLORE_OUT", "outputs/demo", "analysis/explore")
SWEEP_DIR, OUT_DIR, IN_KERNEL = paths.sweep, paths.out, paths.kernel


def show(fig: plt.Figure, name: str) -> Path:
    """Save ``fig`` as ``OUT_DIR/name``, show it inline in a notebook, close it; return the path."""
    return paths.show(fig, name, dpi=120)


models = load_rows(SWEEP_DIR, "models")
pairs = load_rows(SWEEP_DIR, "pairs")
if models.empty:
    raise SystemExit(f"{SWEEP_DIR}: no models rows (run a sweep first, e.g. `make demo`)")
print(f"{SWEEP_DIR}: {len(models)} model rows, {len(pairs)} pair rows")

# the sweep's phase: section (axes, facet, thresholds, setting choices), as landscape-phase reads it
settings, threshold_overrides, origin, sweep_file = resolve_settings(SWEEP_DIR, {})
print(
    f"phase settings ({'sweeps/' + sweep_file + '.yaml' if sweep_file else 'no sweep file'}): "
    + ", ".join(f"{k}={settings[k]!r} ({origin[k]})" for k in ("x", "y", "facet", "thresholds"))
    + "".join(f", {k}={v!r}" for k, v in threshold_overrides.items())
)

# %% [markdown]
# ## Status of the sweep
# One row per trained model: `done`, `diverged` (NaN/inf during training: a result) or `failed` (an error).

# %%
swept = swept_knobs(SWEEP_DIR, models)
print("swept knobs:", swept)
status_counts = models.groupby("status").size().rename("models")
print(status_counts.to_string())
cells_per_status = models.groupby("cell_id")["status"].agg(
    lambda s: "done" if (s == "done").all() else "partly done" if (s == "done").any() else "none done"
)
print(cells_per_status.value_counts().rename("cells").to_string())

# %% [markdown]
# ## What each knob does on average
# Mean of the training outcomes over all completed models at each value of a swept knob (marginalising the
# other knobs: a first look, not a controlled comparison).

# %%
done = models[models["status"].astype(object).eq("done").to_numpy(dtype=bool)]
outcomes = [
    c
    for c in ("train_loss", "train_acc", "test_loss", "test_acc", "hessian.top_eigenvalue", "hessian.trace")
    if c in done.columns and done[c].notna().any()
]
for k in swept:
    print(f"\n-- by {k}")
    print(done.groupby(k)[outcomes].mean().round(4).to_string())

# %% [markdown]
# ## Test accuracy over the phase axes
# Cell means of test accuracy over the sweep's `phase.x` (columns) and `phase.y` (rows) (the first two swept
# knobs where the sweep names none), one heatmap per value of `phase.facet`; a swept knob on neither axis nor
# the facet is held at its first value. Oriented as `landscape-phase` draws it: the hot end of a
# temperature-like knob on top, i.e. small batch sizes on top (`landscape.phase_diagram.INVERTED_KNOBS`) and
# large values on top for every other knob. The phase labels come from the same functions as
# `landscape-phase`'s (thresholds of the sweep's `phase:` section; a label only where curves still moving
# cannot change it), without its confidence draws.

# %%
x_knob, y_knob, facet = settings["x"], settings["y"], settings["facet"]
if not (x_knob in models.columns and y_knob in models.columns and x_knob != y_knob):
    print(f"phase.x={x_knob!r}, phase.y={y_knob!r}: not two knob columns of the rows; using the first two swept knobs")
    x_knob, y_knob = (swept + [None, None])[:2]
facet = facet if facet in models.columns and facet not in (x_knob, y_knob) else None
cells = None
if x_knob is not None and y_knob is not None:
    by = [x_knob, y_knob] + ([facet] if facet else [])
    rows_m, rows_p = models, pairs
    for k in [k for k in swept if k not in by]:
        first = sorted(models[k].dropna().unique().tolist())[0]
        print(
            f"{k} is swept but on no axis: showing {k} = {first!r} (other values: "
            f"{sorted(models[k].dropna().unique().tolist())[1:]}; set phase.facet to see them)"
        )
        rows_m = rows_m[rows_m[k] == first]
        if not rows_p.empty and k in rows_p.columns:
            rows_p = rows_p[rows_p[k] == first]
    rows_m, rows_p, choices = choose_for_cells(
        rows_m, rows_p if not rows_p.empty else None, parse_select(list(settings["select"] or [])), by
    )
    for c in choices:
        if c.several or c.selected:
            print(c.describe())
    cells = phase.aggregate_cells(rows_m, rows_p, by)
    rule, calibration = phase.resolve_rule(settings["thresholds"], threshold_overrides, cells)
    labels, reasons = phase.bounded_labels(cells, rule, phase.resolution_counts(rows_m, rows_p, cells, by, rule))
    cells["phase"], cells["phase_reason"] = labels, reasons
    cells[by + ["phase", "phase_reason"]].to_csv(OUT_DIR / "phases.csv", index=False)
    value = "test_acc" if "test_acc" in cells.columns else outcomes[0]
    top_small = y_knob in INVERTED_KNOBS
    print(f"heatmap of {value}: columns {x_knob} (x), rows {y_knob} (y)")
    for fv in [None] if facet is None else sorted(cells[facet].dropna().unique().tolist()):
        sub = cells if facet is None else cells[cells[facet] == fv]
        suffix = "" if facet is None else f"__{facet}={fv}"
        table = sub.pivot(index=y_knob, columns=x_knob, values=value).sort_index(ascending=top_small)
        table = table.reindex(columns=sorted(table.columns))
        table.to_csv(OUT_DIR / f"heatmap_{value}{suffix}.csv")
        print(
            (f"{facet} = {fv}:\n" if facet else "")
            + f"heatmap rows, top to bottom: {' '.join(f'{v:g}' for v in table.index)}\n"
            f"heatmap columns, left to right: {' '.join(f'{v:g}' for v in table.columns)}"
        )
        fig, ax = plt.subplots(figsize=(7, 5.5))
        sns.heatmap(
            table,
            annot=table.shape[0] * table.shape[1] <= 64,
            fmt=".2f",
            cmap="viridis",
            ax=ax,
            cbar_kws={"label": value},
        )
        ax.set_xlabel(x_knob)
        ax.set_ylabel(y_knob + ("\n(small = hot, on top)" if top_small else ""))
        ax.set_title(f"{value}: mean over seeds" + (f", {facet} = {fv}" if facet else ""))
        fig.tight_layout()
        show(fig, f"heatmap_{value}{suffix}.png")
        print(f"phases ({y_knob} rows, {x_knob} columns):")
        print(phase_table(sub, x_knob, y_knob).to_string())
    print(rule.describe())
    if cells["phase"].notna().any():
        print(phase.phase_summary(cells, cells["phase"], value).round(4).to_string(index=False))
    else:
        print("no cell has a phase label (the phase rule needs connectivity.mc and a fit value per cell)")
else:
    print("fewer than two swept knobs: no heatmap")

# %% [markdown]
# ## Correlations
# Spearman rank correlation, over cells, of the main metrics' cell means with test accuracy, over all cells
# and within the well-trained and poorly-trained cells (the phase rule's split), with n and p; and the full
# correlation matrix of the main metrics as a heatmap.

# %%
if cells is not None and "test_acc" in cells.columns:
    main = [
        m
        for m in (
            "test_acc",
            "train_loss",
            "hessian.top_eigenvalue",
            "hessian.trace",
            "connectivity.mc",
            "cka",
            "l2_distance",
        )
        if m in cells.columns and cells[m].notna().any()
    ]
    corr = phase.rank_correlations(cells, main, "test_acc", rule=rule)
    print(corr.round(3).to_string(index=False))
    corr.to_csv(OUT_DIR / "rank_correlations.csv", index=False)
    matrix = cells[main].corr(method="spearman")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(matrix, vmin=-1, vmax=1, center=0, cmap="RdBu_r", annot=True, fmt=".2f", ax=ax)
    ax.set_title("Spearman correlation of cell means")
    fig.tight_layout()
    show(fig, "correlations.png")
