"""Model family ``projection_trace``: the Hessian trace from random second differences, without
Hessian-vector products (Boettcher & Wheeler 2022; ``landscape.projection_trace``).

Over a seeded subset of ``eval_samples`` training samples (as trained), ``n_directions`` Gaussian directions
with step ``epsilon``, evaluated in ``dtype`` (float64 by default: second differences cancel digits).
For ReLU networks this measures the curvature of the loss smoothed over the step (it includes the kinks
that autograd's Hessian ignores), so it can exceed ``hessian.trace``; for smooth activations they agree.

Saddle check (``saddle_draws > 0``, off by default): the principal curvatures of ``saddle_draws`` random 2-D
projections of the Hessian (second differences with step ``saddle_step`` along unit directions);
``projection_trace.saddle_share_minimum`` is the fraction of projections whose curvatures are all >= 0 (1 at
a minimum; below 1 at a saddle or where the step sees negative curvature).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from landscape.metrics import Family, ModelContext, Result

log = logging.getLogger(__name__)

DTYPES = ("float32", "float64")


@dataclass
class Config:
    """Settings of the ``projection_trace`` family (mounted at ``metrics.projection_trace``)."""

    enabled: Any = False
    n_directions: int = 100
    epsilon: float = 1e-3  # step along d ~ N(0, I) (|eps d| ~ eps sqrt(P))
    eval_samples: int = 1000
    dtype: str = "float64"  # "float32" | "float64"
    seed: int = 0
    batch_size: int = 1024
    saddle_draws: int = 0  # random 2-D projections of the saddle check (0: off)
    saddle_step: float = 1e-2  # second-difference step of the saddle check, along unit directions


METRICS: dict[str, pa.DataType] = {
    "projection_trace.estimate": pa.float64(),
    "projection_trace.saddle_share_minimum": pa.float64(),
}
DIAGNOSTICS: dict[str, pa.DataType] = {
    "projection_trace.stderr": pa.float64(),
    "projection_trace.seconds": pa.float64(),
}


def check(settings: Any) -> list[str]:
    """Every bad ``metrics.projection_trace.*`` key, with its value and what is allowed."""
    problems = []
    if str(settings.dtype) not in DTYPES:
        problems.append(f"metrics.projection_trace.dtype={settings.dtype!r}: expected one of {', '.join(DTYPES)}")
    if int(settings.saddle_draws) < 0:
        problems.append(f"metrics.projection_trace.saddle_draws={settings.saddle_draws!r}: expected >= 0 (0: off)")
    if not float(settings.saddle_step) > 0:
        problems.append(f"metrics.projection_trace.saddle_step={settings.saddle_step!r}: expected a step > 0")
    return problems


def compute(ctx: ModelContext, settings: Any) -> Result:
    import torch

    from landscape.projection_trace import projection_trace, saddle_check
    from landscape.surfaces import eval_subset

    problems = check(settings)
    if problems:
        raise ValueError("; ".join(problems))
    t0 = time.perf_counter()
    dtype = getattr(torch, str(settings.dtype))
    x, y = eval_subset(ctx.data.x_train, ctx.data.y_train, int(settings.eval_samples), int(settings.seed))
    res = projection_trace(ctx.model, ctx.loss_fn, x, y, n_directions=int(settings.n_directions),
                           epsilon=float(settings.epsilon), seed=int(settings.seed),
                           dtype=dtype, batch_size=int(settings.batch_size))
    out = {
        "projection_trace.estimate": res.estimate,
        "projection_trace.stderr": res.stderr,
        "projection_trace.n_directions": res.n_directions,
        "projection_trace.epsilon": res.epsilon,
        "projection_trace.eval_samples": int(x.shape[0]),
    }
    if int(settings.saddle_draws) > 0:
        sc = saddle_check(ctx.model, ctx.loss_fn, x, y, n_draws=int(settings.saddle_draws),
                          step=float(settings.saddle_step), seed=int(settings.seed) + 1, dtype=dtype,
                          batch_size=int(settings.batch_size))
        out["projection_trace.saddle_share_minimum"] = sc.share_minimum
    out["projection_trace.seconds"] = time.perf_counter() - t0
    log.info("projection trace %.4g +- %.2g (%d directions) in %.1f s", res.estimate, res.stderr,
             res.n_directions, out["projection_trace.seconds"])
    return Result(out)


FAMILY = Family(
    name="projection_trace",
    table="models",
    config=Config,
    metrics=METRICS,
    diagnostics=DIAGNOSTICS,
    compute=compute,
    check=check,
    description="Hessian trace from random projections; optional saddle check",
)
