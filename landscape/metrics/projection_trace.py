"""Model family ``projection_trace``: the Hessian trace from random second differences, without
Hessian-vector products (Boettcher & Wheeler 2022; ``landscape.projection_trace``).

Over a seeded subset of ``eval_samples`` training samples (as trained), ``n_directions`` Gaussian directions
with step ``epsilon``, evaluated in ``dtype`` (float64 by default: second differences cancel digits).
For ReLU networks this measures the curvature of the loss smoothed over the step (it includes the kinks
that autograd's Hessian ignores), so it can exceed ``hessian.trace``; for smooth activations they agree.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch

from landscape.metrics import MetricFamily, ModelContext, register
from landscape.projection_trace import projection_trace
from landscape.params import eval_subset

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class Config:
    """Settings of the ``projection_trace`` family (mounted at ``metrics.projection_trace``)."""

    enabled: bool = False
    n_directions: int = 100
    epsilon: float = 1e-3  # step along d ~ N(0, I) (|eps d| ~ eps sqrt(P))
    eval_samples: int = 1000
    dtype: str = "float64"  # "float32" | "float64"
    seed: int = 0
    batch_size: int = 1024


COLUMNS: dict[str, pa.DataType] = {
    "projection_trace.estimate": pa.float64(),
    "projection_trace.stderr": pa.float64(),
    "projection_trace.n_directions": pa.int64(),
    "projection_trace.epsilon": pa.float64(),
    "projection_trace.eval_samples": pa.int64(),
    "projection_trace.seconds": pa.float64(),
}


def check_settings(settings: Any) -> None:
    """Raise ``ValueError`` naming the first bad ``metrics.projection_trace.*`` key."""
    if str(settings.dtype) not in DTYPES:
        raise ValueError(f"metrics.projection_trace.dtype={settings.dtype!r}: expected one of {', '.join(DTYPES)}")


def projection_trace_metrics(ctx: ModelContext, settings: Any) -> dict[str, Any]:
    check_settings(settings)
    t0 = time.perf_counter()
    x, y = eval_subset(ctx.data.x_train, ctx.data.y_train, int(settings.eval_samples), int(settings.seed))
    res = projection_trace(ctx.model, ctx.loss_fn, x, y, n_directions=int(settings.n_directions),
                           epsilon=float(settings.epsilon), seed=int(settings.seed),
                           dtype=DTYPES[str(settings.dtype)], batch_size=int(settings.batch_size))
    out = {
        "projection_trace.estimate": res.estimate,
        "projection_trace.stderr": res.stderr,
        "projection_trace.n_directions": res.n_directions,
        "projection_trace.epsilon": res.epsilon,
        "projection_trace.eval_samples": int(x.shape[0]),
        "projection_trace.seconds": time.perf_counter() - t0,
    }
    log.info("projection trace %.4g +- %.2g (%d directions) in %.1f s", res.estimate, res.stderr,
             res.n_directions, out["projection_trace.seconds"])
    return out


FAMILY = register(MetricFamily(name="projection_trace", table="models", columns=COLUMNS,
                               compute=projection_trace_metrics))
