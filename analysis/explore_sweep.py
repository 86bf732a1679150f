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
# models finished, what each knob does on average, one metric as a heatmap over two knobs, and how the
# metrics correlate with test accuracy.
#
# Run as a script: `python analysis/explore_sweep.py SWEEP_DIR [OUT_DIR]` (or set `LANDSCAPE_SWEEP_DIR` and
# `LANDSCAPE_EXPLORE_OUT`); open in Jupyter with jupytext. Figures go to `OUT_DIR`
# (default `SWEEP_DIR/analysis/explore`). The published results of Yang et al. 2021 make a ready example:
# `python analysis/taxonomy2021.py /tmp/tax21 && python analysis/explore_sweep.py /tmp/tax21`.

# %%
import logging
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from landscape import phase  # noqa: E402
from landscape.cli.phase import load_rows  # noqa: E402
from landscape.phase_diagram import INVERTED_KNOBS  # noqa: E402

logging.basicConfig(level=logging.WARNING)
pd.set_option("display.width", 160)
pd.set_option("display.max_columns", 20)

_args = [a for a in sys.argv[1:] if not a.startswith("-")]  # (Jupyter passes -f KERNEL.json)
SWEEP_DIR = Path(_args[0] if _args else os.environ.get("LANDSCAPE_SWEEP_DIR", "outputs/demo"))
OUT_DIR = Path(_args[1] if len(_args) > 1 else os.environ.get("LANDSCAPE_EXPLORE_OUT", SWEEP_DIR / "analysis" / "explore"))
OUT_DIR.mkdir(parents=True, exist_ok=True)

models = load_rows(SWEEP_DIR, "models")
pairs = load_rows(SWEEP_DIR, "pairs")
print(f"{SWEEP_DIR}: {len(models)} model rows, {len(pairs)} pair rows")

# %% [markdown]
# ## Status of the sweep
# One row per trained model: `done`, `diverged` (NaN/inf during training: a result) or `failed` (an error).

# %%
knobs = phase.knob_columns(models)
swept = [k for k in knobs if models[k].astype(str).nunique() > 1]
print("swept knobs:", swept)
status_counts = models.groupby("status").size().rename("models")
print(status_counts.to_string())
cells_per_status = models.groupby("cell_id")["status"].agg(lambda s: "done" if (s == "done").all() else
                                                            "partly done" if (s == "done").any() else "none done")
print(cells_per_status.value_counts().rename("cells").to_string())

# %% [markdown]
# ## What each knob does on average
# Mean of the training outcomes over all completed models at each value of a swept knob (marginalising the
# other knobs: a first look, not a controlled comparison).

# %%
done = models[models["status"].astype(object).eq("done").to_numpy(dtype=bool)]
outcomes = [c for c in ("train_loss", "train_acc", "test_loss", "test_acc", "hessian.top_eigenvalue", "hessian.trace")
            if c in done.columns and done[c].notna().any()]
for k in swept:
    print(f"\n-- by {k}")
    print(done.groupby(k)[outcomes].mean().round(4).to_string())

# %% [markdown]
# ## One metric over two knobs
# Cell means of test accuracy (pairs metrics joined through `cell_id`), as a seaborn heatmap, oriented as
# `landscape-phase` draws it: the hot end of a temperature-like knob on top, i.e. small batch sizes on top
# (`landscape.phase_diagram.INVERTED_KNOBS`) and large values on top for every other knob (a heatmap draws
# its first row at the top). `landscape-phase` draws the same on real log axes.

# %%
x_knob, y_knob = (swept + swept)[:2] if swept else (None, None)
if x_knob is not None and x_knob != y_knob:
    cells = phase.aggregate_cells(models, pairs if not pairs.empty else None, [x_knob, y_knob])
    rule = phase.PhaseRule.paper()
    cells["phase"] = rule.labels(cells)
    value = "test_acc" if "test_acc" in cells.columns else outcomes[0]
    small_on_top = y_knob in INVERTED_KNOBS
    table = cells.pivot(index=y_knob, columns=x_knob, values=value).sort_index(ascending=small_on_top)
    print(f"heatmap rows, top to bottom: {' '.join(f'{v:g}' for v in table.index)}")
    fig, ax = plt.subplots(figsize=(7, 5.5))
    sns.heatmap(table, annot=table.shape[0] * table.shape[1] <= 64, fmt=".2f", cmap="viridis", ax=ax,
                cbar_kws={"label": value})
    ax.set_title(f"{value}: mean over seeds")
    fig.tight_layout()
    fig.savefig(OUT_DIR / f"heatmap_{value}.png", dpi=120)
    plt.close(fig)
    print(f"wrote {OUT_DIR / f'heatmap_{value}.png'}")
    if cells["phase"].notna().any():
        print(rule.describe())
        print(phase.phase_summary(cells, cells["phase"], value).round(4).to_string(index=False))

# %% [markdown]
# ## Correlations
# Spearman rank correlation, over cells, of the main metrics' cell means with test accuracy, over all cells
# and within the well-trained and poorly-trained cells (the phase rule's training-loss split), with n and p;
# and the full correlation matrix of the main metrics as a heatmap.

# %%
if x_knob is not None and x_knob != y_knob and "test_acc" in cells.columns:
    main = [m for m in ("test_acc", "train_loss", "hessian.top_eigenvalue", "hessian.trace", "connectivity.mc",
                        "cka", "l2_distance") if m in cells.columns and cells[m].notna().any()]
    corr = phase.rank_correlations(cells, main, "test_acc", rule=rule)
    print(corr.round(3).to_string(index=False))
    corr.to_csv(OUT_DIR / "rank_correlations.csv", index=False)
    matrix = cells[main].corr(method="spearman")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(matrix, vmin=-1, vmax=1, center=0, cmap="RdBu_r", annot=True, fmt=".2f", ax=ax)
    ax.set_title("Spearman correlation of cell means")
    fig.tight_layout()
    fig.savefig(OUT_DIR / "correlations.png", dpi=120)
    plt.close(fig)
    print(f"wrote {OUT_DIR / 'correlations.png'}")
