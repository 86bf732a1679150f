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
# # Jump and retrain: well- vs poorly-generalising networks
#
# Horoi et al. (2021) explore the basin around a trained network by jumping away from it along
# filter-normalised directions and retraining; the embedded trajectories (PHATE) and the persistent homology
# of the loss over them differ between networks that generalise and networks that memorise. This notebook
# reads a sweep over `data.label_noise` (e.g. `sweeps/jump_retrain_noise.yaml`: clean labels vs 50 % random
# labels) with the `jump_retrain` and `surfaces` families enabled and shows
#
# 1. how well each model fits its (noisy) training labels and the clean ones;
# 2. the `topology.*` summaries and the retrained losses per label-noise level (mean over seeds), and the
#    bottleneck distances between the models' loss-filtration diagrams;
# 3. figures: the PHATE (or PCA) embedding of the trajectories coloured by train loss, the persistence
#    diagrams per noise level, and the 2D loss surface around each model.
#
# The compared knob is the sweep's `phase.x` when the sweep varies it, else the first knob it varies
# (`landscape.cli.phase.swept_knobs`: from its launches, never a derived size such as `model.n_params`); "fits"
# uses the training-loss (or error) threshold of the sweep's `phase:` section, as `landscape-phase` does.
#
# Open it in Jupyter (`jupytext --to notebook analysis/jump_retrain.py`), set the sweep in the parameter cell
# below (papermill: `-p SWEEP_DIR DIR`) or in `LANDSCAPE_SWEEP_DIR`; figures are shown inline and saved. Run as
# a script: `python analysis/jump_retrain.py SWEEP_DIR [OUT_DIR]`. Figures go to `OUT_DIR`
# (`LANDSCAPE_JUMP_RETRAIN_OUT`; default `SWEEP_DIR/analysis/jump_retrain`).

# %% tags=["parameters"]
# Parameters: None = the command line (as a script), then $LANDSCAPE_SWEEP_DIR / $LANDSCAPE_JUMP_RETRAIN_OUT,
# then outputs/jump_retrain_noise and SWEEP_DIR/analysis/jump_retrain.
SWEEP_DIR = None
OUT_DIR = None

# %%
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from landscape import phase, results
from landscape.cli.phase import resolve_settings, swept_knobs
from landscape.notebook import notebook_paths
from landscape.surfaces import Surface, plot_contour
from landscape.trajectories.embedding import plot_embedding
from landscape.trajectories.homology import diagram_distance, plot_diagrams

logging.basicConfig(level=logging.WARNING)
pd.set_option("display.width", 180)
pd.set_option("display.max_columns", 30)

paths = notebook_paths(
    SWEEP_DIR, OUT_DIR, "LANDSCAPE_JUMP_RETRAIN_OUT", "outputs/jump_retrain_noise", "analysis/jump_retrain"
)
SWEEP_DIR, OUT_DIR, IN_KERNEL = paths.sweep, paths.out, paths.kernel


def show(fig: plt.Figure, name: str) -> Path:
    """Save ``fig`` as ``OUT_DIR/name``, show it inline in a notebook, close it; return the path."""
    return paths.show(fig, name, dpi=110)


def _done(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"].astype(object).eq("done").to_numpy(dtype=bool)] if "status" in df.columns else df


all_models = results.load(SWEEP_DIR, "models")
models = _done(all_models)
trajectories = _done(results.load(SWEEP_DIR, "trajectories"))
persistence = _done(results.load(SWEEP_DIR, "persistence"))
try:
    surfaces = _done(results.load(SWEEP_DIR, "surfaces"))
except Exception as exc:  # noqa: BLE001 - a sweep without the surfaces family: no surface figure
    print(f"no surfaces rows ({exc})")
    surfaces = pd.DataFrame()
print(
    f"{SWEEP_DIR}: {len(models)} completed models, {len(trajectories)} trajectory points, "
    f"{len(persistence)} persistence bars, {len(surfaces)} surface points"
)
if models.empty or trajectories.empty:
    raise SystemExit(f"{SWEEP_DIR}: no completed models with jump_retrain rows (enable metrics.jump_retrain)")
settings, threshold_overrides, origin, sweep_file = resolve_settings(SWEEP_DIR, {})
swept = swept_knobs(SWEEP_DIR, all_models)
print(f"swept knobs: {swept}")
KNOB = settings["x"] if settings["x"] in swept else (swept[0] if swept else None)
if KNOB is None:
    raise SystemExit(f"{SWEEP_DIR}: the sweep varies no knob: nothing to compare")
NAME, SHORT = ("label noise", "noise") if KNOB == "data.label_noise" else (KNOB, KNOB.split(".")[-1])
if len(swept) > 1:
    print(
        f"comparing along {KNOB} ({'phase.x' if KNOB == settings['x'] else 'the first swept knob'}); "
        f"averaged over the other swept knobs {[k for k in swept if k != KNOB]}"
    )
levels = sorted(float(v) for v in models[KNOB].unique())
print(f"{KNOB} levels: {levels}; seeds: {sorted(int(s) for s in models['seed'].unique())}")

# %% [markdown]
# ## How well each model fits
# `train_acc` is the accuracy on the labels it was trained on (noisy ones for label noise > 0),
# `train_acc_clean` on the original labels. A memorising model has `train_acc` near 1 but `train_acc_clean`
# near `1 - noise` (plus chance) and a poor `test_acc`.

# %%
fit_cols = [c for c in ("train_loss", "train_acc", "train_acc_clean", "test_loss", "test_acc") if c in models.columns]
fit = models.groupby(KNOB)[fit_cols].mean()
print(fit.round(4).to_string())

# %% [markdown]
# Whether the models of each level fit, by the fit threshold of the sweep's `phase:` section (the first split of
# the phase rule: `train_loss` in nats, or `train_error` in % of the training set; the paper's value where the
# sweep sets none).

# %%
level_cells = phase.aggregate_cells(all_models, None, [KNOB])
rule, _ = phase.resolve_rule(settings["thresholds"], threshold_overrides, level_cells)
print(rule.describe())
fit_col = rule.fit_column
for _, c in level_cells.iterrows():
    value = c.get(fit_col, np.nan)
    verdict = "fits" if value <= rule.fit_threshold else "does not fit" if np.isfinite(value) else "unknown"
    print(f"{KNOB} = {c[KNOB]:g}: {fit_col} {value:.4g} -> {verdict} (threshold {rule.fit_threshold:g})")

# %% [markdown]
# ## Topology summaries per label-noise level
# Mean over seeds of the sublevel-set persistence of the train loss on the nearest-neighbour graph of the
# embedding (`topology.h0_*`, `topology.h1_*`: bars with persistence above `jump_retrain.persistence_threshold`,
# total and largest persistence in loss units, persistent entropy), the largest H1 bar of the Rips filtration of
# the embedding, and the mean train/test loss at the end of the retraining runs.

# %%
topo_cols = [c for c in models.columns if c.startswith("topology.")]
topo_cols += [
    c
    for c in (
        "jump_retrain.final_train_loss",
        "jump_retrain.final_test_loss",
        "jump_retrain.n_points",
        "jump_retrain.seconds",
        "surfaces.center_train_loss",
        "surfaces.max_train_loss",
        "surfaces.seconds",
    )
    if c in models.columns and models[c].notna().any()
]
summary = models.groupby(KNOB)[topo_cols].agg(["mean", "std"])
means = models.groupby(KNOB)[topo_cols].mean()
print(means.T.round(4).to_string())
summary.to_csv(OUT_DIR / "topology_summary.csv")
print(f"wrote {OUT_DIR / 'topology_summary.csv'}")

# %% [markdown]
# The comparison, stated: for each summary, the value at the lowest and the highest noise level and their
# ratio (run times and point counts left out). Printed, not asserted: the notebook reports what the sweep found.

# %%
if len(levels) >= 2:
    lo, hi = levels[0], levels[-1]
    outcome_cols = [c for c in topo_cols if not c.endswith((".seconds", ".n_points"))]  # not run bookkeeping
    cmp = pd.DataFrame({f"{SHORT}={lo:g}": means.loc[lo, outcome_cols], f"{SHORT}={hi:g}": means.loc[hi, outcome_cols]})
    cmp["ratio hi/lo"] = cmp.iloc[:, 1] / cmp.iloc[:, 0].replace(0, np.nan)
    cmp["differs"] = ~np.isclose(cmp.iloc[:, 0], cmp.iloc[:, 1], rtol=1e-3, atol=1e-9)
    print(cmp.round(4).to_string())
    n_diff = int(cmp["differs"].sum())
    print(f"{n_diff} of {len(cmp)} summaries differ between {NAME} {lo:g} and {hi:g}")
else:
    print(f"only one {KNOB} level: nothing to compare")

# %% [markdown]
# ### Retraining: where the runs end, per jump scale
# Mean train and test loss of the last recorded point of each retraining run, by jump scale.

# %%
runs = trajectories[trajectories["jump"] >= 0]
last = runs.sort_values("step").groupby(["cell_id", "seed", "jump"], as_index=False).tail(1)
by_scale = last.groupby([KNOB, "scale"])[["train_loss", "test_loss", "test_acc"]].mean().unstack(KNOB)
print(by_scale.round(4).to_string())

# %% [markdown]
# ### Distances between persistence diagrams
# Bottleneck distance (persim) between the H0 diagrams of the loss filtration of every two models: are models
# of the same noise level closer to each other than to models of the other level?


# %%
def diagrams(df: pd.DataFrame, filtration: str = "loss", maxdim: int = 1) -> list[np.ndarray]:
    """The diagrams ``[n, 2]`` (birth, death) per dimension of one model's ``persistence`` rows."""
    sel = df[df["filtration"] == filtration]
    return [
        sel.loc[sel["dim"] == d, ["birth", "death"]].to_numpy(dtype=np.float64).reshape(-1, 2)
        for d in range(maxdim + 1)
    ]


keys = [(float(n), int(s)) for n, s in models[[KNOB, "seed"]].itertuples(index=False)]
dgm = {k: diagrams(persistence[(persistence[KNOB] == k[0]) & (persistence["seed"] == k[1])]) for k in keys}
names = [f"{SHORT}={n:g} seed={s}" for n, s in keys]
dist = pd.DataFrame([[diagram_distance(dgm[a][0], dgm[b][0]) for b in keys] for a in keys], index=names, columns=names)
print(dist.round(4).to_string())
same = [dist.iloc[i, j] for i in range(len(keys)) for j in range(i + 1, len(keys)) if keys[i][0] == keys[j][0]]
cross = [dist.iloc[i, j] for i in range(len(keys)) for j in range(i + 1, len(keys)) if keys[i][0] != keys[j][0]]
if same and cross:
    print(f"mean H0 bottleneck distance: within a {NAME} level {np.mean(same):.4f}, across levels {np.mean(cross):.4f}")

# %% [markdown]
# ## Figures
# ### Embedding of the trajectories coloured by train loss
# One panel per model (rows: noise level, columns: seed); the embedding is the one the job computed
# (`jump_retrain.embedding`, PHATE by default), the trained model itself is the red cross.

# %%
seeds = sorted(models["seed"].unique())
method = (
    str(models["jump_retrain.embedding"].dropna().iloc[0]).upper()
    if "jump_retrain.embedding" in models
    else "embedding"
)
fig, axes = plt.subplots(len(levels), len(seeds), figsize=(4.8 * len(seeds), 4.2 * len(levels)), squeeze=False)
for i, n in enumerate(levels):
    for j, s in enumerate(seeds):
        t = trajectories[(trajectories[KNOB] == n) & (trajectories["seed"] == s)]
        ax = axes[i, j]
        if t.empty:
            ax.set_axis_off()
            continue
        xy = t[["embed_x", "embed_y"]].to_numpy(dtype=np.float64)
        plot_embedding(
            xy, t["train_loss"].to_numpy(), ax=ax, label="train loss", title=f"{method}: {SHORT} {n:g}, seed {s}"
        )
        start = t[t["jump"] < 0]
        ax.scatter(start["embed_x"], start["embed_y"], marker="x", color="red", s=60, zorder=3)
fig.tight_layout()
show(fig, "embedding_train_loss.png")

# %% [markdown]
# ### Persistence diagrams per noise level
# Top row: the sublevel-set filtration of the train loss (loss units); bottom row: the Rips filtration of the
# embedding. All seeds of a level are overlaid (one diagram per seed would look alike).

# %%
fig, axes = plt.subplots(2, len(levels), figsize=(4.5 * len(levels), 8.4), squeeze=False)
for j, n in enumerate(levels):
    p = persistence[persistence[KNOB] == n]
    for i, filtration in enumerate(("loss", "rips")):
        plot_diagrams(diagrams(p, filtration), ax=axes[i, j], title=f"{filtration} filtration, {SHORT} {n:g}")
fig.tight_layout()
show(fig, "persistence_diagrams.png")

# %% [markdown]
# ### Loss surfaces
# Train loss (log scale) on the 2D grid along two filter-normalised random directions around each model
# (seed 0 of each level when present); the surface of a memorising model rises faster.


# %%
def surface_from_rows(df: pd.DataFrame) -> Surface:
    """A ``Surface`` from one model's ``surfaces`` rows (grid alpha x beta)."""
    alphas, betas = np.sort(df["alpha"].unique()), np.sort(df["beta"].unique())
    grid = {}
    for col in ("train_loss", "train_acc", "test_loss", "test_acc"):
        if col in df.columns and df[col].notna().all():
            grid[col] = (
                df.pivot_table(index="alpha", columns="beta", values=col)
                .reindex(index=alphas, columns=betas)
                .to_numpy()
            )
    return Surface(
        alphas=alphas,
        betas=betas,
        train_loss=grid["train_loss"],
        train_acc=grid["train_acc"],
        test_loss=grid.get("test_loss"),
        test_acc=grid.get("test_acc"),
    )


if not surfaces.empty and surfaces["beta"].nunique() > 1:
    fig, axes = plt.subplots(1, len(levels), figsize=(5.2 * len(levels), 4.2), squeeze=False)
    for j, n in enumerate(levels):
        sf = surfaces[surfaces[KNOB] == n]
        s0 = sorted(sf["seed"].unique())[0]
        surf = surface_from_rows(sf[sf["seed"] == s0])
        plot_contour(surf, "train_loss", ax=axes[0, j], log_scale=True)
        axes[0, j].set_title(f"train loss, {SHORT} {n:g}, seed {s0}")
        c = surf.train_loss[len(surf.alphas) // 2, len(surf.betas) // 2]
        print(
            f"{SHORT} {n:g} seed {s0}: surface train loss at centre {c:.4g}, mean {np.mean(surf.train_loss):.4g}, "
            f"max {np.max(surf.train_loss):.4g}"
        )
    fig.tight_layout()
    show(fig, "loss_surface.png")
else:
    print("no 2D surfaces rows: skipped the surface figure")
