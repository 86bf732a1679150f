"""Straight-line barriers with and without weight matching, against the model width, from a sweep's rows.

Reads the ``pairs`` rows of a sweep directory (``landscape.results.load``) and draws, for every label-noise
level (one colour), the loss barrier (``connectivity.barrier``, solid) and the barrier between A and B with B's
hidden units matched to A's (``connectivity.barrier_aligned``, dashed) against ``model.width``; a second panel
the same for the training-error barriers (``connectivity.barrier_error``, ``..._aligned``). Points: the mean over
the cell's pairs; bars: their range. Prints the table behind the figure (per width and noise: mean barriers,
aligned and not, and the cosine similarity of the parameters before and after the matching).

Run: ``python analysis/align_barriers.py outputs/demo --out outputs/demo/analysis/align_barriers.png`` (after
``make demo``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

PANELS = (
    ("connectivity.barrier", "connectivity.barrier_aligned", "loss barrier on the straight line [nats]"),
    ("connectivity.barrier_error", "connectivity.barrier_error_aligned", "error barrier on the line [pp]"),
)
COLUMNS = [
    "model.width",
    "data.label_noise",
    "seed_a",
    "seed_b",
    "connectivity.align_objective_before",
    "connectivity.align_objective",
    *[c for p in PANELS for c in p[:2]],
]


def barrier_table(sweep_dir: str | Path) -> pd.DataFrame:
    """Per (``model.width``, ``data.label_noise``): mean over pairs of the barriers, aligned and not, and of the
    matching's cosine similarity before and after; ``pairs``: how many pairs had an aligned value."""
    from landscape.results import load

    rows = load(sweep_dir, "pairs", columns=COLUMNS)
    if rows["connectivity.barrier_aligned"].isna().all():
        raise SystemExit(f"{sweep_dir}: no row has connectivity.barrier_aligned (metrics.connectivity.align=none?)")
    keys = ["model.width", "data.label_noise"]
    value_cols = COLUMNS[4:]
    rows[value_cols] = rows[value_cols].astype(float)
    out = rows.groupby(keys)[value_cols].mean()
    out["pairs"] = rows.groupby(keys)["connectivity.barrier_aligned"].count()
    return out.reset_index()


def draw(sweep_dir: str | Path, out: str | Path) -> pd.DataFrame:
    """Draw the figure (module docstring) into ``out`` (format from its suffix); returns :func:`barrier_table`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from landscape.results import load

    rows = load(sweep_dir, "pairs", columns=COLUMNS)
    noises = sorted(rows["data.label_noise"].dropna().unique())
    colours = plt.get_cmap("viridis")([i / max(1, len(noises) - 1) * 0.9 for i in range(len(noises))])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, (plain, aligned, label) in zip(axes, PANELS, strict=True):
        for noise, colour in zip(noises, colours, strict=True):
            sub = rows[rows["data.label_noise"] == noise]
            for col, style, what in ((plain, "-", "not aligned"), (aligned, "--", "aligned")):
                g = sub.groupby("model.width")[col].agg(["mean", "min", "max"]).astype(float)
                ax.errorbar(
                    g.index,
                    g["mean"],
                    yerr=[g["mean"] - g["min"], g["max"] - g["mean"]],
                    fmt="o" + style,
                    color=colour,
                    mfc="white" if what == "aligned" else colour,
                    capsize=2,
                    label=f"noise {noise:g}, {what}",
                )
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(rows["model.width"].dropna().unique()))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        # barriers are >= 0: linear below the threshold (zero is drawn), logarithmic above
        ax.set_yscale("symlog", linthresh=0.01 if "nats" in label else 0.1)
        ax.set_ylim(bottom=0.0)
        ax.set_xlabel("model width (model.width)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"barriers between two seeds, with and without weight matching of the hidden units ({Path(sweep_dir).name})"
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return barrier_table(sweep_dir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dir")
    p.add_argument("--out", default=None, help="figure path (default: <sweep_dir>/analysis/align_barriers.png)")
    a = p.parse_args(argv)
    from landscape import sweepdir

    out = a.out or sweepdir.analysis_dir(a.sweep_dir) / "align_barriers.png"
    table = draw(a.sweep_dir, out)
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))
        by_width = table.groupby("model.width")[[c for p in PANELS for c in p[:2]]].mean()
        print("\nmean over noise levels:\n" + by_width.to_string())
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
