"""Model family ``surfaces``: loss surfaces around each trained model (Li et al. 2018; Boettcher & Wheeler 2022).

Directions: ``random`` = two filter-normalised Gaussian directions (``landscape.directions``; seeds derived from
``seed`` and the model's seed), ``hessian`` = the unit eigenvectors of the largest and the most negative
Hessian eigenvalue (``landscape.curvature``, over the same evaluation subset). The grid is ``resolution``
points per axis in ``[-range, range]`` (``dims = 1``: a line along the first direction). Train loss is over a
seeded subset of ``eval_samples`` training samples (as trained, i.e. noisy labels), test loss over the test
set if ``include_test``. The grid goes to the long table ``surfaces`` (one row per point); row blocks are
cached under the model's workdir, so a killed job resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from landscape.metrics.contract import Family, FigureStyle, ModelContext, Result
from landscape.rules import ints, nums, one_of, rule

log = logging.getLogger(__name__)

DIRECTIONS = ("random", "hessian")


@dataclass
class Config:
    """Settings of the ``surfaces`` family (mounted at ``metrics.surfaces``)."""

    enabled: Any = False
    directions: str = field(default="random", metadata=rule(one_of(DIRECTIONS)))
    dims: int = field(default=2, metadata=rule(ints(1, 2)))  # 1: a line along the first direction; 2: a plane
    # grid spans [-range, range] along each direction
    range: float = field(default=1.0, metadata=rule(nums(0.0, lo_open=True)))
    resolution: int = field(default=21, metadata=rule(ints(1)))  # points per axis
    # training samples for the train loss (0, or a value >= the training set's size: all of it)
    eval_samples: int = field(default=1000, metadata=rule(ints(0, note="0: the whole training set")))
    include_test: bool = True
    seed: int = 0
    chunk: int = field(default=16, metadata=rule(ints(1)))  # grid points per vmapped pass
    batch_size: int = field(default=1024, metadata=rule(ints(1)))  # samples per forward pass
    # relative Lanczos residual of the Hessian directions
    hessian_tol: float = field(default=1e-4, metadata=rule(nums(0.0, lo_open=True)))
    hessian_max_iter: int = field(default=200, metadata=rule(ints(1)))  # Hessian-vector products per eigenvector


METRICS: dict[str, pa.DataType] = {
    "surfaces.center_train_loss": pa.float64(),
    "surfaces.max_train_loss": pa.float64(),
    "surfaces.hessian_max_eigenvalue": pa.float64(),
    "surfaces.hessian_min_eigenvalue": pa.float64(),
}
DIAGNOSTICS: dict[str, pa.DataType] = {
    "surfaces.n_points": pa.int64(),
    "surfaces.seconds": pa.float64(),
}

TABLE: dict[str, pa.DataType] = {
    "alpha": pa.float64(),
    "beta": pa.float64(),
    "train_loss": pa.float64(),
    "train_acc": pa.float64(),
    "test_loss": pa.float64(),
    "test_acc": pa.float64(),
}


def compute(ctx: ModelContext, settings: Any) -> Result:
    """Compute one loss surface around ``ctx.model`` (see the module docstring)."""
    from landscape.directions import filter_normalised_direction, hessian_directions
    from landscape.params import eval_subset, hashed_seed
    from landscape.surfaces import grid_axis, loss_surface

    t0 = time.perf_counter()
    seed = int(settings.seed)
    x, y = eval_subset(ctx.data.x_train, ctx.data.y_train, int(settings.eval_samples), seed)
    out: dict[str, Any] = {}
    if settings.directions == "random":
        d1 = filter_normalised_direction(ctx.model, hashed_seed(seed, ctx.seed, 1))
        d2 = filter_normalised_direction(ctx.model, hashed_seed(seed, ctx.seed, 2))
    else:
        d1, d2, lam_max, lam_min = hessian_directions(
            ctx.model,
            ctx.loss_fn,
            x,
            y,
            batch_size=int(settings.batch_size),
            seed=seed,
            tol=float(settings.hessian_tol),
            max_iter=int(settings.hessian_max_iter),
        )
        out["surfaces.hessian_max_eigenvalue"] = lam_max
        out["surfaces.hessian_min_eigenvalue"] = lam_min
    axis = grid_axis(float(settings.range), int(settings.resolution))
    two = int(settings.dims) == 2
    surf = loss_surface(
        ctx.model,
        ctx.loss_fn,
        (x, y),
        d1,
        d2 if two else None,
        axis,
        axis if two else None,
        test=(ctx.data.x_test, ctx.data.y_test) if settings.include_test else None,
        chunk=int(settings.chunk),
        batch_size=int(settings.batch_size),
        workdir=ctx.workdir / "surface",
    )
    rows = surf.rows()
    center = min(rows, key=lambda r: abs(r["alpha"]) + abs(r["beta"]))
    out.update(
        {
            "surfaces.n_points": len(rows),
            "surfaces.eval_samples": int(x.shape[0]),
            "surfaces.center_train_loss": center["train_loss"],
            "surfaces.max_train_loss": float(surf.train_loss.max()),
            "surfaces.seconds": time.perf_counter() - t0,
        }
    )
    log.info(
        "surfaces (%s, %dD, %d points) in %.1f s",
        settings.directions,
        int(settings.dims),
        len(rows),
        out["surfaces.seconds"],
    )
    return Result(out, tables={"surfaces": rows})


FAMILY = Family(
    name="surfaces",
    table="models",
    config=Config,
    metrics=METRICS,
    diagnostics=DIAGNOSTICS,
    compute=compute,
    long_tables={"surfaces": TABLE},
    styles={
        "surfaces.center_train_loss": FigureStyle(
            "training loss at the surface's centre", "nats", "log10", cmap="magma_r"
        ),
        "surfaces.max_train_loss": FigureStyle("largest training loss on the surface", "nats", "log10", cmap="magma_r"),
        "surfaces.hessian_max_eigenvalue": FigureStyle(
            "Hessian top eigenvalue (surface directions)", "nats / param²", "log10", cmap="magma_r"
        ),
        "surfaces.hessian_min_eigenvalue": FigureStyle(
            "Hessian smallest eigenvalue (surface directions)", "nats / param²", cmap="RdBu_r", centre=0.0
        ),
    },
    description="1D/2D loss surfaces along random or Hessian directions (long table `surfaces`)",
)
