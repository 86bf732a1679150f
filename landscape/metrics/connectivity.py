"""Pair family ``connectivity``: mode connectivity along a trained Bezier curve and the straight-line barrier.

``curve``: a Bezier curve with ``bends`` middle points between the two models is trained (Garipov et al. 2018;
resumable from ``ctx.workdir/curve``), then evaluated at ``n_points`` values of t with BatchNorm statistics
recomputed at each; ``connectivity.mc`` is the mode connectivity of Yang et al. 2021 on the training error in
percent, ``connectivity.mc_loss`` the same on the training loss, ``connectivity.curve_barrier`` the loss
barrier along the trained curve. ``line``: the same grid on the straight line, ``connectivity.barrier`` (loss)
and ``connectivity.barrier_error`` (training error, percent). Per-t values are list columns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from landscape.metrics import Family, FigureStyle, PairContext, Result

@dataclass
class Config:
    """Curve training has its own optimiser settings (SGD; ``schedule``: constant | cosine | garipov);
    ``init``: line (middle points on the segment) | random (freshly initialised models, taxonomy setting);
    ``test``: also evaluate the curve on the test set."""

    enabled: Any = False
    curve: bool = True
    line: bool = True
    bends: int = 1
    init: str = "line"
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    schedule: str = "cosine"
    n_points: int = 11
    test: bool = True
    seed: int = 0
    checkpoint_every: int = 1


_LIST = pa.list_(pa.float64())
METRICS = {
    "connectivity.mc": pa.float64(),
    "connectivity.mc_loss": pa.float64(),
    "connectivity.curve_barrier": pa.float64(),
    "connectivity.barrier": pa.float64(),
    "connectivity.barrier_error": pa.float64(),
}
DIAGNOSTICS = {
    "connectivity.t": _LIST,
    "connectivity.curve_train_loss": _LIST,
    "connectivity.curve_train_err": _LIST,
    "connectivity.curve_test_loss": _LIST,
    "connectivity.curve_test_err": _LIST,
    "connectivity.curve_history": _LIST,
    "connectivity.line_t": _LIST,
    "connectivity.line_train_loss": _LIST,
    "connectivity.line_train_err": _LIST,
    "connectivity.curve_seconds": pa.float64(),
    "connectivity.line_seconds": pa.float64(),
}


def _curve_seed(settings_seed: int, seed_a: int, seed_b: int) -> int:
    return int(np.random.SeedSequence([int(settings_seed), int(seed_a), int(seed_b)]).generate_state(1)[0])


def _initial_curve(ctx: PairContext, settings: Any, seed: int) -> Any:
    import torch

    from landscape.connectivity import BezierCurve, trainable_parameters

    start, end = trainable_parameters(ctx.a.model), trainable_parameters(ctx.b.model)
    bends = int(settings.bends)
    if settings.init == "line":
        return BezierCurve.through_line(start, end, bends)
    if settings.init == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            points = [trainable_parameters(ctx.a.make_model()) for _ in range(bends)]
        return BezierCurve.from_points(start, end, points)
    raise ValueError(f"metrics.connectivity.init={settings.init!r}: expected line or random")


def check(settings: Any) -> list[str]:
    """Every bad ``metrics.connectivity.*`` key, with its value and what is allowed."""
    from landscape.connectivity import INITS, SCHEDULES

    problems = []
    if settings.schedule not in SCHEDULES:
        problems.append(f"metrics.connectivity.schedule={settings.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if int(settings.bends) < 1:
        problems.append(f"metrics.connectivity.bends={settings.bends!r}: expected >= 1 (the line is `line: true`)")
    if settings.init not in INITS:
        problems.append(f"metrics.connectivity.init={settings.init!r}: expected one of {', '.join(INITS)}")
    return problems


def compute(ctx: PairContext, settings: Any) -> Result:
    from landscape.connectivity import (
        BezierCurve,
        CurveSettings,
        barrier,
        evaluate_path,
        mode_connectivity,
        t_grid,
        train_curve,
        trainable_parameters,
    )

    problems = check(settings)
    if problems:
        raise ValueError("; ".join(problems))
    data, loss_fn = ctx.a.data, ctx.a.loss_fn
    ts = t_grid(int(settings.n_points))
    template = ctx.a.make_model()
    out: dict[str, Any] = {"connectivity.n_points": len(ts)}
    if settings.line:
        t0 = time.perf_counter()
        line = BezierCurve.through_line(trainable_parameters(ctx.a.model), trainable_parameters(ctx.b.model), 0)
        v = evaluate_path(line.point, template, data.x_train, data.y_train, loss_fn, ts)
        out.update({
            "connectivity.barrier": barrier(v.t, v.train_loss),
            "connectivity.barrier_error": barrier(v.t, v.train_err),
            "connectivity.line_t": v.t,
            "connectivity.line_train_loss": v.train_loss,
            "connectivity.line_train_err": v.train_err,
            "connectivity.line_seconds": time.perf_counter() - t0,
        })
    if settings.curve:
        seed = _curve_seed(settings.seed, ctx.a.seed, ctx.b.seed)
        curve = _initial_curve(ctx, settings, seed)
        cs = CurveSettings(
            epochs=int(settings.epochs), lr=float(settings.lr), momentum=float(settings.momentum),
            weight_decay=float(settings.weight_decay), batch_size=int(settings.batch_size),
            schedule=str(settings.schedule), checkpoint_every=int(settings.checkpoint_every),
        )
        result = train_curve(curve, template, data.x_train, data.y_train, loss_fn, cs, seed, ctx.workdir / "curve")
        test = bool(settings.test)
        t_eval = time.perf_counter()
        v = evaluate_path(
            curve.point, template, data.x_train, data.y_train, loss_fn, ts,
            data.x_test if test else None, data.y_test if test else None,
        )
        out.update({
            "connectivity.mc": mode_connectivity(v.train_err),
            "connectivity.mc_loss": mode_connectivity(v.train_loss),
            "connectivity.curve_barrier": barrier(v.t, v.train_loss),
            "connectivity.t": v.t,
            "connectivity.curve_train_loss": v.train_loss,
            "connectivity.curve_train_err": v.train_err,
            "connectivity.curve_test_loss": v.test_loss if test else None,
            "connectivity.curve_test_err": v.test_err if test else None,
            "connectivity.curve_history": result.history,
            # curve training time (summed over resumed runs) plus this call's evaluation time
            "connectivity.curve_seconds": result.seconds + (time.perf_counter() - t_eval),
        })
    return Result(out)


FAMILY = Family(
    name="connectivity",
    table="pairs",
    config=Config,
    metrics=METRICS,
    diagnostics=DIAGNOSTICS,
    compute=compute,
    check=check,
    styles={"connectivity.mc": FigureStyle("mode connectivity", -30.0, 30.0, "RdBu_r", centre=0.0, units="% error")},
    description="mode connectivity along a trained Bezier curve, straight-line barrier",
)
