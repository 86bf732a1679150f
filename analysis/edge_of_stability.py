"""Edge of stability (Cohen et al. 2021) through the CLI: the ``sharpness`` family on full-batch gradient descent.

A tanh MLP trained on digits with the squared error (``train.loss=mse``) by full-batch gradient descent
(``train.batch_size=full``, ``train.momentum=0``) at each learning rate ``lr``: the top Hessian eigenvalue, tracked
every ``--every`` steps by ``metrics.sharpness`` (warm-started Lanczos), rises (progressive sharpening) until it
reaches the stability threshold ``2 / lr`` and then hovers there. One ``landscape`` run per learning rate (one
cell each, in one sweep directory), then the rows of the ``sharpness`` long table are read back and drawn.

Run: ``python analysis/edge_of_stability.py [--out DIR] [--lrs 0.04 0.05] [--steps 3000] [--every 200]``. Writes
``DIR/edge_of_stability.png`` (the tracked sharpness against the step, dashed at ``2 / lr``; below, its ratio to
``2 / lr``) and ``DIR/edge_of_stability.json`` (per learning rate: the plateau's mean and largest deviation from
``2 / lr`` over the second half of training, the tracking's cost as a share of training), and prints them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def cli_args(lr: float, steps: int, every: int, subsample: int, width: int, sweep_name: str) -> list[str]:
    """The ``landscape`` overrides of one edge-of-stability cell (one seed, checkpoints every 1000 steps)."""
    return [
        f"sweep_name={sweep_name}",
        f"data.subsample={subsample}",
        "model.activation=tanh",
        f"model.width={width}",
        "model.depth=2",
        "train.loss=mse",
        "train.batch_size=full",
        "train.momentum=0",
        f"train.lr={lr}",
        f"train.steps={steps}",
        "train.checkpoint_every=1000",
        "train.seeds=[0]",
        "metrics.sharpness.enabled=true",
        f"metrics.sharpness.every={every}",
        "metrics.sharpness.samples=0",
    ]


def run_cell(args: list[str], cwd: Path, timeout: float = 900) -> None:
    """``python -m landscape.cli.app ARGS`` in ``cwd``, on this checkout's code (``PYTHONPATH``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "landscape.cli.app", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"landscape {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")


def summarise(sharp: Any, models: Any, lrs: Sequence[float]) -> dict[str, dict[str, float]]:
    """Per learning rate: ``2/lr``, the first and largest tracked values, the plateau (measurements in the
    second half of training: mean, relative error of the mean, largest relative deviation from ``2/lr``), the
    tracking's products and its cost: ``sharpness.cost_share`` (tracking / the training's own seconds, the
    tracker's clock) and tracking seconds / (``training.seconds`` - tracking seconds)."""
    out: dict[str, dict[str, float]] = {}
    for lr in lrs:
        rows = sharp[(sharp["lr"] - lr).abs() < 1e-12].sort_values("step")
        row = models[(models["train.lr"] - lr).abs() < 1e-12].iloc[-1]
        edge = 2.0 / lr
        late = rows[rows["step"] > rows["step"].max() / 2]
        own = float(row["training.seconds"]) - float(row["sharpness.seconds"])
        out[f"{lr:g}"] = {
            "lr": lr,
            "two_over_lr": edge,
            "first": float(rows["value"].iloc[0]),
            "max": float(rows["value"].max()),
            "plateau_mean": float(late["value"].mean()),
            "plateau_rel_err": float(late["value"].mean() / edge - 1.0),
            "plateau_max_abs_dev": float((late["value"] / edge - 1.0).abs().max()),
            "measurements": int(len(rows)),
            "products_per_measurement": float(rows["products"].mean()),
            "edge_ratio": float(row["sharpness.edge_ratio"]),
            "cost_share": float(row["sharpness.cost_share"]),
            "cost_share_vs_training_seconds": float(row["sharpness.seconds"]) / own,
            "training_seconds": float(row["training.seconds"]),
            "sharpness_seconds": float(row["sharpness.seconds"]),
        }
    return out


def draw(sharp: Any, lrs: Sequence[float], path: Path) -> None:
    """The tracked sharpness against the step per learning rate (dashed: ``2 / lr``), and its ratio to ``2/lr``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, height_ratios=(2, 1))
    for i, lr in enumerate(lrs):
        rows = sharp[(sharp["lr"] - lr).abs() < 1e-12].sort_values("step")
        colour = f"C{i}"
        top.plot(rows["step"], rows["value"], "o-", ms=3, color=colour, label=f"lr = {lr:g}")
        top.axhline(2.0 / lr, ls="--", color=colour, lw=1, label=f"2 / lr = {2.0 / lr:.1f}")
        bottom.plot(rows["step"], rows["value"] * lr / 2.0, "o-", ms=3, color=colour)
    bottom.axhspan(0.9, 1.1, color="0.9", label="within 10 %")
    bottom.axhline(1.0, color="k", lw=0.8)
    top.set_ylabel("top Hessian eigenvalue (tracked)")
    top.set_title("full-batch GD, tanh MLP, MSE, digits: sharpness rises, then hovers at 2/lr", fontsize=10)
    top.legend(fontsize=8, ncol=2)
    bottom.set_ylabel("sharpness / (2 / lr)")
    bottom.set_xlabel("gradient-descent step")
    bottom.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/edge_of_stability")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.04, 0.05])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=200)
    p.add_argument("--subsample", type=int, default=500)
    p.add_argument("--width", type=int, default=64)
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for lr in a.lrs:
        run_cell(cli_args(lr, a.steps, a.every, a.subsample, a.width, "eos"), out)
    sys.path.insert(0, str(REPO))
    from landscape.results.io import read_table

    sweep = out / "outputs" / "eos"  # hydra.sweep.dir: outputs/${sweep_name}
    sharp = read_table(sweep, "sharpness").to_pandas()
    models = read_table(sweep, "models").to_pandas()
    summary = summarise(sharp, models, a.lrs)
    draw(sharp, a.lrs, out / "edge_of_stability.png")
    (out / "edge_of_stability.json").write_text(json.dumps(summary, indent=2))
    for s in summary.values():
        print(
            f"lr {s['lr']:g}: 2/lr {s['two_over_lr']:.2f}, first {s['first']:.2f}, plateau {s['plateau_mean']:.2f} "
            f"({100 * s['plateau_rel_err']:+.1f} %, max |dev| {100 * s['plateau_max_abs_dev']:.1f} %), "
            f"{s['products_per_measurement']:.1f} products per measurement, cost {100 * s['cost_share']:.1f} % "
            f"of training ({100 * s['cost_share_vs_training_seconds']:.1f} % by training.seconds)"
        )
    print(f"figure: {out / 'edge_of_stability.png'}")
    return summary


if __name__ == "__main__":
    main()
