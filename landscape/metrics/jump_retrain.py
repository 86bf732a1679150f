"""Model family ``jump_retrain``: jump-and-retrain trajectories and their topology (Horoi et al. 2021).

From each trained model: ``n_jumps`` jumps per scale in ``scales`` along filter-normalised directions, each
retrained for ``epochs`` epochs of SGD at constant ``lr`` (``landscape.trajectories.jump_retrain``), recorded
every ``record_every`` steps through a seeded random projection to ``projection_dim`` dimensions; the points
are embedded (``embedding``: PHATE with ``phate_*`` pinned, or PCA) and the sublevel-set persistence of the
train loss on the ``graph_knn``-nearest-neighbour graph of the embedding gives the ``topology.*`` columns
(bars with persistence above ``persistence_threshold``, loss units). Long tables: ``trajectories`` (one row
per recorded point, with its 2-D embedding and, if ``store_coords``, its projected coordinates) and
``persistence`` (the bars of the loss filtration and of the Rips filtration of the embedding).

The retraining polls the job's stop request (``ctx.should_stop``) after every step and, with the finished jumps,
is saved under ``ctx.workdir``: a stopped or killed cell resumes where it was, with the same numbers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from landscape.metrics.contract import Family, FigureStyle, ModelContext, Result
from landscape.rules import ints, nums, one_of, rule, text

log = logging.getLogger(__name__)

EMBEDDINGS = ("phate", "pca")


@dataclass
class Config:
    """Settings of the ``jump_retrain`` family (mounted at ``metrics.jump_retrain``); defaults are cheap."""

    enabled: Any = False
    n_jumps: int = field(default=3, metadata=rule(ints(1)))  # jumps per scale
    # relative to filter norms
    scales: list[float] = field(
        default_factory=lambda: [0.25, 0.5], metadata=rule(nums(0.0, lo_open=True, items=True, min_items=1))
    )
    epochs: int = field(default=1, metadata=rule(ints(1)))  # retraining epochs per jump
    # constant SGD learning rate of the retraining
    lr: float = field(default=0.01, metadata=rule(nums(0.0, lo_open=True)))
    batch_size: int = field(default=128, metadata=rule(ints(1)))
    record_every: int = field(default=2, metadata=rule(ints(1)))  # steps between recorded points
    projection_dim: int = field(default=256, metadata=rule(ints(1)))
    eval_samples: int = field(default=512, metadata=rule(ints(2)))  # train/test samples for the recorded losses
    # "phate" (needs the optional package: ``check``) | "pca"
    embedding: str = field(default="phate", metadata=rule(one_of(EMBEDDINGS)))
    phate_knn: int = field(default=5, metadata=rule(ints(1)))
    phate_decay: float = field(default=40.0, metadata=rule(nums(0.0, lo_open=True)))
    # "auto" or an integer diffusion time
    phate_t: str = field(default="auto", metadata=rule(text(r"auto|0*[1-9][0-9]*", "'auto' or a positive integer")))
    phate_random_state: int = 0
    graph_knn: int = field(default=6, metadata=rule(ints(1)))  # neighbours of the loss-filtration graph
    persistence_threshold: float = field(default=0.01, metadata=rule(nums(0.0)))  # loss units
    store_coords: bool = False  # keep the projected coordinates in the trajectories table
    seed: int = 0


METRICS: dict[str, pa.DataType] = {
    **{
        f"topology.h{d}_{m}": (pa.int64() if m == "count" else pa.float64())
        for d in (0, 1)
        for m in ("count", "total", "max", "entropy")
    },
    "topology.h1_essential": pa.int64(),
    "topology.rips_h1_max": pa.float64(),
    "jump_retrain.final_train_loss": pa.float64(),
    "jump_retrain.final_test_loss": pa.float64(),
}
DIAGNOSTICS: dict[str, pa.DataType] = {
    "jump_retrain.n_points": pa.int64(),
    "jump_retrain.seconds": pa.float64(),
}

TRAJECTORIES: dict[str, pa.DataType] = {
    "jump": pa.int64(),
    "scale": pa.float64(),
    "step": pa.int64(),
    "train_loss": pa.float64(),
    "train_acc": pa.float64(),
    "test_loss": pa.float64(),
    "test_acc": pa.float64(),
    "embed_x": pa.float64(),
    "embed_y": pa.float64(),
    "coords": pa.list_(pa.float64()),
}

PERSISTENCE: dict[str, pa.DataType] = {
    "filtration": pa.string(),  # "loss" | "rips"
    "dim": pa.int64(),
    "birth": pa.float64(),
    "death": pa.float64(),  # inf for essential bars
}


def check(settings: Any) -> list[str]:
    """What the environment must provide for ``metrics.jump_retrain.*`` (each key's own rule is its field's)."""
    if settings.embedding == "phate" and not _installed("phate"):
        return [
            "metrics.jump_retrain.embedding='phate': needs the optional package phate, which is not "
            "installed here (pip install phate; non-commercial licence); or metrics.jump_retrain.embedding=pca"
        ]
    return []


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (cheap enough for planning)."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def settings_from(settings: Any) -> Any:
    """``JumpRetrainSettings`` from the family's (checked) config node."""
    from landscape.trajectories.jump_retrain import JumpRetrainSettings

    t = str(settings.phate_t)
    s = JumpRetrainSettings.from_config(settings)
    s.phate_t = t if t == "auto" else int(t)
    return s


def compute(ctx: ModelContext, settings: Any) -> Result:
    import numpy as np

    from landscape.params import linear_seed
    from landscape.trajectories.jump_retrain import analyse, jump_and_retrain

    t0 = time.perf_counter()
    s = settings_from(settings)
    s.seed = linear_seed(settings.seed, ctx.seed)  # different jumps for each model of a cell
    traj = jump_and_retrain(ctx.model, ctx.loss_fn, ctx.data, s, should_stop=ctx.should_stop, workdir=ctx.workdir)
    topo = analyse(traj, s)
    rows = []
    for r, e, c in zip(traj.rows, topo.embedding, traj.coords, strict=True):
        rows.append(
            {
                **r,
                "embed_x": float(e[0]),
                "embed_y": float(e[1]),
                "coords": [float(v) for v in c] if settings.store_coords else None,
            }
        )
    bars = [
        {"filtration": name, "dim": d, "birth": float(b), "death": float(de)}
        for name, dgms in (("loss", topo.loss_diagrams), ("rips", topo.rips_diagrams))
        for d, dgm in enumerate(dgms)
        for b, de in dgm
    ]
    last = [r for r in traj.rows if r["jump"] >= 0]
    last_per_jump = {r["jump"]: r for r in last}  # rows are in step order: the last one per jump wins
    rips_h1 = topo.rips_diagrams[1] if len(topo.rips_diagrams) > 1 else np.zeros((0, 2))
    out = {
        **topo.summary,
        "topology.rips_h1_max": float((rips_h1[:, 1] - rips_h1[:, 0]).max()) if len(rips_h1) else 0.0,
        "jump_retrain.n_points": len(rows),
        "jump_retrain.final_train_loss": float(np.mean([r["train_loss"] for r in last_per_jump.values()])),
        "jump_retrain.final_test_loss": float(np.mean([r["test_loss"] for r in last_per_jump.values()])),
        "jump_retrain.seconds": time.perf_counter() - t0,
    }
    log.info(
        "jump_retrain: %d points, H0 %d / H1 %d bars above %g in %.1f s",
        len(rows),
        out["topology.h0_count"],
        out["topology.h1_count"],
        s.persistence_threshold,
        out["jump_retrain.seconds"],
    )
    return Result(out, tables={"trajectories": rows, "persistence": bars})


FAMILY = Family(
    name="jump_retrain",
    table="models",
    config=Config,
    metrics=METRICS,
    diagnostics=DIAGNOSTICS,
    compute=compute,
    check=check,
    long_tables={"trajectories": TRAJECTORIES, "persistence": PERSISTENCE},
    styles={
        **{
            f"topology.h{d}_{m}": FigureStyle(f"H{d} {what} (jump and retrain)", unit, cmap="magma_r")
            for d in (0, 1)
            for m, what, unit in (
                ("count", "bars", "bars"),
                ("total", "total persistence", "nats"),
                ("max", "largest persistence", "nats"),
                ("entropy", "persistence entropy", "unitless"),
            )
        },
        "topology.h1_essential": FigureStyle("essential H1 classes (jump and retrain)", "classes", cmap="magma_r"),
        "topology.rips_h1_max": FigureStyle(
            "largest Rips H1 persistence of the embedding", "embedding units", cmap="magma_r"
        ),
        "jump_retrain.final_train_loss": FigureStyle(
            "training loss after jump and retrain", "nats", "log10", cmap="magma_r"
        ),
        "jump_retrain.final_test_loss": FigureStyle(
            "test loss after jump and retrain", "nats", "log10", cmap="magma_r"
        ),
    },
    description="jump-and-retrain trajectories, PHATE/PCA embedding, persistent homology",
)
