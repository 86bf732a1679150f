"""Pair family ``connectivity``: mode connectivity along a trained Bezier curve and the straight-line barrier.

``curve``: a Bezier curve with ``bends`` middle points between the two models is trained (Garipov et al. 2018;
resumable from ``ctx.workdir/curve``), then evaluated at ``n_points`` values of t with BatchNorm statistics
recomputed at each; ``connectivity.mc`` is the mode connectivity of Yang et al. 2021 on the training error in
percent (:func:`landscape.connectivity.mode_connectivity`, endpoint handling ``mc_endpoints``),
``connectivity.mc_loss`` the same on the training loss, ``connectivity.curve_barrier`` the loss barrier along
the trained curve. ``line``: the same grid on the straight line, ``connectivity.barrier`` (loss) and
``connectivity.barrier_error`` (training error, percent). Per-t values are list columns.

Grid. ``n_points = 5`` (t = 0, .25, .5, .75, 1) by default: the grid of the published curves on which the
phase-rule thresholds were fitted. mc is a max over the grid, so a finer grid gives larger |mc| and is not
comparable with those thresholds.

Budget. By default (``epochs = null``) the curve gets the endpoints' training budget times ``budget`` in SGD
steps: ``ceil(budget * S / s)`` epochs, with ``S`` the steps each endpoint model was trained for
(``train.steps``, or ``train.epochs`` x its steps per epoch) and ``s`` the curve's steps per epoch at its
batch size (``batch_size = null``: the endpoints' batch size). ``budget = 2`` by default: a curve has a
harder problem than one model (the loss averaged over a whole path); on MNIST-1D (MLP of width 256 trained
30 epochs at batch 64, seeds 0 and 1) one endpoint budget leaves the middle of the curve 4.7 points of
training error above its endpoints, two bring it to 0.6 (mc = -0.6). An integer ``epochs`` overrides the rule.

Convergence. Every row records whether the curve reached its endpoints' level:
``connectivity.middle_excess`` (the highest training error at an interior t minus the higher endpoint's,
percentage points), ``connectivity.curve_final_loss`` (the last epoch's mean training loss of the curve,
random t per batch) against ``connectivity.endpoint_loss`` (mean training loss of the two models), the loss
history and ``connectivity.history_drop`` (relative fall of the epoch loss over the second half of curve
training). A curve whose middle stays more than ``converge_tol`` points above its endpoints has either not
been trained enough or found a real barrier; the loss history cannot tell them apart (a curve's loss can look
flat under a decaying learning rate and still fall far with a longer schedule: MNIST-1D, width 64, 1200
samples: 40 epochs leave the middle 7.4 points above the endpoints on a flat loss, 200 epochs put it 10.9
points below). So such a curve is trained again from the same start with ``confirm`` times the epochs: if the
longer curve reaches the level, or its middle excess is within ``converge_tol`` of the first one's (more
training did not lower it: a barrier), it is converged and the row reports the longer curve
(``connectivity.retrained``, ``connectivity.middle_excess_first``); otherwise it is *not converged*.
Not converged, or diverged (a non-finite loss or value), gives null ``mc``/``mc_loss`` (the phase rule then
treats the pair's mc as unknown) with the reason in ``connectivity.error`` (the family contract's error
column: the cell counts it among its metric errors); ``connectivity.converged`` says which. ``confirm = 1``
skips the second training (such a curve is then not converged).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from landscape.metrics import Family, FigureStyle, PairContext, Result

log = logging.getLogger(__name__)


@dataclass
class Config:
    """Curve training has its own optimiser settings (SGD; ``schedule``: constant | cosine | garipov);
    ``init``: line (middle points on the segment; Garipov et al.'s default) | random (freshly initialised
    models: what the taxonomy paper's code does, which never calls the line initialisation);
    ``epochs``/``batch_size`` null: follow the endpoints' budget times ``budget`` (see the module docstring; the
    row reports the values used); ``mc_endpoints``: interior | paper | band (see
    ``landscape.connectivity.mode_connectivity``); ``converge_tol`` (percentage points) and ``confirm`` (epochs
    multiple of the second training): the convergence check; ``test``: also evaluate the curve on the test set."""

    enabled: Any = False
    curve: bool = True
    line: bool = True
    bends: int = 1
    init: str = "line"
    epochs: Optional[int] = None
    budget: float = 2.0
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: Optional[int] = None
    schedule: str = "cosine"
    n_points: int = 5
    mc_endpoints: str = "interior"
    converge_tol: float = 1.0
    confirm: float = 2.0
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
    "connectivity.converged": pa.bool_(),
    "connectivity.retrained": pa.bool_(),
    "connectivity.middle_excess": pa.float64(),
    "connectivity.middle_excess_first": pa.float64(),
    "connectivity.curve_final_loss": pa.float64(),
    "connectivity.endpoint_loss": pa.float64(),
    "connectivity.history_drop": pa.float64(),
    "connectivity.steps": pa.int64(),
    "connectivity.endpoint_steps": pa.int64(),
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
    from landscape.connectivity import INITS, MC_ENDPOINTS, SCHEDULES

    problems = []
    if settings.schedule not in SCHEDULES:
        problems.append(f"metrics.connectivity.schedule={settings.schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if int(settings.bends) < 1:
        problems.append(f"metrics.connectivity.bends={settings.bends!r}: expected >= 1 (the line is `line: true`)")
    if settings.init not in INITS:
        problems.append(f"metrics.connectivity.init={settings.init!r}: expected one of {', '.join(INITS)}")
    if settings.mc_endpoints not in MC_ENDPOINTS:
        problems.append(
            f"metrics.connectivity.mc_endpoints={settings.mc_endpoints!r}: expected one of {', '.join(MC_ENDPOINTS)}"
        )
    if settings.epochs is not None and int(settings.epochs) < 0:
        problems.append(
            f"metrics.connectivity.epochs={settings.epochs!r}: expected null (follow the endpoints) or >= 0"
        )
    if settings.batch_size is not None and int(settings.batch_size) < 1:
        problems.append(f"metrics.connectivity.batch_size={settings.batch_size!r}: expected null or >= 1")
    if not float(settings.budget) > 0:
        problems.append(f"metrics.connectivity.budget={settings.budget!r}: expected a multiple > 0")
    if not float(settings.confirm) >= 1:
        problems.append(
            f"metrics.connectivity.confirm={settings.confirm!r}: expected a multiple >= 1 (1: no retraining)"
        )
    if not float(settings.converge_tol) >= 0:
        problems.append(
            f"metrics.connectivity.converge_tol={settings.converge_tol!r}: expected >= 0 (points of error)"
        )
    if int(settings.n_points) < 3:
        problems.append(f"metrics.connectivity.n_points={settings.n_points!r}: expected >= 3 (an interior point)")
    return problems


def endpoint_steps(train_cfg: Any, n_train: int) -> int:
    """SGD steps each model of the cell was trained for: ``train.steps`` if set, else ``train.epochs`` times the
    steps per epoch at ``train.batch_size`` (``full``: one step per epoch)."""
    from landscape.engine import steps_per_epoch  # the training loops' batching rule

    bs = train_cfg.batch_size
    bs = n_train if bs == "full" else min(int(bs), n_train)
    steps = getattr(train_cfg, "steps", None)
    if steps is not None:
        return int(steps)
    return int(train_cfg.epochs) * steps_per_epoch(n_train, bs)


def curve_budget(settings: Any, train_cfg: Any, n_train: int) -> tuple[int, int, int | None]:
    """``(epochs, batch_size, endpoint_steps)`` of the curve training (see the module docstring); the endpoint
    steps are None when ``epochs`` is given explicitly and no ``train`` config is at hand."""
    from landscape.engine import steps_per_epoch

    if settings.batch_size is not None:
        bs = min(int(settings.batch_size), n_train)
    elif train_cfg is not None:
        b = train_cfg.batch_size
        bs = n_train if b == "full" else min(int(b), n_train)
    else:
        raise ValueError("metrics.connectivity.batch_size=None: following the endpoints needs the cell's train config")
    ep_steps = endpoint_steps(train_cfg, n_train) if train_cfg is not None else None
    if settings.epochs is not None:
        return int(settings.epochs), bs, ep_steps
    if ep_steps is None:
        raise ValueError("metrics.connectivity.epochs=None: following the endpoints needs the cell's train config")
    return max(1, math.ceil(float(settings.budget) * ep_steps / steps_per_epoch(n_train, bs))), bs, ep_steps


def history_drop(history: list[float]) -> float:
    """Relative fall of the epoch loss over the second half of training: ``(h[k] - h[-1]) / |h[k]|`` with
    ``k = (len - 1) // 2`` (0.0 for fewer than two epochs; NaN if a value is not finite)."""
    if len(history) < 2:
        return 0.0
    h = np.asarray(history, dtype=np.float64)
    if not np.all(np.isfinite(h)):
        return float("nan")
    k = (len(h) - 1) // 2
    return float((h[k] - h[-1]) / max(abs(h[k]), 1e-12))


def middle_excess(err: list[float]) -> float:
    """Highest training error at an interior point minus the higher endpoint's (NaN if a value is not finite)."""
    e = np.asarray(err, dtype=np.float64)
    if not np.all(np.isfinite(e)):
        return float("nan")
    return float(e[1:-1].max() - max(e[0], e[-1])) if e.size > 2 else 0.0


def convergence(first: float, second: float | None, converge_tol: float, epochs: tuple[int, int | None],
                diverged: bool = False) -> tuple[bool, str | None]:
    """``(converged, reason or None)`` of a curve from its middle excess after the first training and, when it
    was trained again with more epochs, after the second (module docstring)."""
    if diverged or not math.isfinite(first) or (second is not None and not math.isfinite(second)):
        return False, "curve diverged: non-finite training loss or error along the curve"
    if first <= converge_tol:
        return True, None
    if second is None:
        return False, (
            f"curve not converged: its middle is {first:.2f} points of training error above the endpoints "
            f"(converge_tol {converge_tol:g}) after {epochs[0]} epochs; train it longer "
            "(metrics.connectivity.budget or epochs) or let it be retrained (metrics.connectivity.confirm > 1)"
        )
    if second <= converge_tol or abs(second - first) <= converge_tol:
        return True, None
    return False, (
        f"curve not converged: its middle is {first:.2f} points of training error above the endpoints after "
        f"{epochs[0]} epochs and {second:.2f} after {epochs[1]} (converge_tol {converge_tol:g}): still moving; "
        "train it longer (metrics.connectivity.budget or epochs)"
    )


def _train_and_evaluate(ctx: PairContext, settings: Any, template: Any, epochs: int, batch_size: int, seed: int,
                        ts: list[float], workdir: Any) -> tuple[Any, Any]:
    from landscape.connectivity import CurveSettings, evaluate_path, train_curve

    data, loss_fn = ctx.a.data, ctx.a.loss_fn
    curve = _initial_curve(ctx, settings, seed)
    cs = CurveSettings(
        epochs=epochs, lr=float(settings.lr), momentum=float(settings.momentum),
        weight_decay=float(settings.weight_decay), batch_size=batch_size,
        schedule=str(settings.schedule), checkpoint_every=int(settings.checkpoint_every),
    )
    result = train_curve(curve, template, data.x_train, data.y_train, loss_fn, cs, seed, workdir,
                         phase=f"curve {ctx.a.seed}-{ctx.b.seed} ({epochs} epochs)", should_stop=ctx.should_stop)
    test = bool(settings.test)
    t_eval = time.perf_counter()
    v = evaluate_path(
        curve.point, template, data.x_train, data.y_train, loss_fn, ts,
        data.x_test if test else None, data.y_test if test else None,
    )
    result.seconds += time.perf_counter() - t_eval
    return result, v


def _diverged(result: Any, values: Any) -> bool:
    """The curve training reported divergence, or its loss history or the values along it are not finite."""
    flagged = bool(getattr(result, "diverged", False)) or getattr(result, "status", "done") == "diverged"
    numbers = np.asarray(list(result.history) + list(values.train_loss) + list(values.train_err), dtype=np.float64)
    return flagged or not bool(np.all(np.isfinite(numbers)))


def compute(ctx: PairContext, settings: Any) -> Result:
    from landscape.connectivity import BezierCurve, barrier, evaluate_path, mode_connectivity, t_grid
    from landscape.connectivity import trainable_parameters
    from landscape.engine import steps_per_epoch
    from landscape.params import pair_seed

    problems = check(settings)
    if problems:
        raise ValueError("; ".join(problems))
    data, loss_fn = ctx.a.data, ctx.a.loss_fn
    ts = t_grid(int(settings.n_points))
    template = ctx.a.make_model()
    train_cfg = getattr(ctx.a.cfg, "train", None) if ctx.a.cfg is not None else None
    epochs, batch_size, ep_steps = curve_budget(settings, train_cfg, data.n_train)
    out: dict[str, Any] = {
        "connectivity.n_points": len(ts),
        # the values used (settings columns; null in the config means "follow the endpoints")
        "connectivity.epochs": epochs,
        "connectivity.batch_size": batch_size,
        "connectivity.steps": epochs * steps_per_epoch(data.n_train, batch_size),
        "connectivity.endpoint_steps": ep_steps,
    }
    reason = None
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
        seed = pair_seed(settings.seed, ctx.a.seed, ctx.b.seed)
        result, v = _train_and_evaluate(ctx, settings, template, epochs, batch_size, seed, ts, ctx.workdir / "curve")
        seconds = result.seconds
        first = middle_excess(v.train_err)
        second, used_epochs = None, (epochs, None)
        tol = float(settings.converge_tol)
        if (not _diverged(result, v) and math.isfinite(first) and first > tol and float(settings.confirm) > 1
                and epochs > 0):
            longer = max(epochs + 1, math.ceil(float(settings.confirm) * epochs))
            log.info("connectivity of seeds %d and %d: the curve's middle is %.2f points above its endpoints after "
                     "%d epochs; training it again with %d", ctx.a.seed, ctx.b.seed, first, epochs, longer)
            result, v = _train_and_evaluate(ctx, settings, template, longer, batch_size, seed, ts,
                                            ctx.workdir / f"curve_{longer}")
            seconds += result.seconds
            second, used_epochs = middle_excess(v.train_err), (epochs, longer)
            out["connectivity.epochs"] = longer
            out["connectivity.steps"] = longer * steps_per_epoch(data.n_train, batch_size)
        converged, reason = convergence(first, second, tol, used_epochs, _diverged(result, v))
        mode = str(settings.mc_endpoints)
        finite = lambda x: x if x is not None and math.isfinite(x) else None  # noqa: E731
        test = bool(settings.test)
        out.update({
            "connectivity.mc": mode_connectivity(v.train_err, endpoints=mode) if converged else None,
            "connectivity.mc_loss": mode_connectivity(v.train_loss, endpoints=mode) if converged else None,
            "connectivity.converged": converged,
            "connectivity.retrained": second is not None,
            "connectivity.middle_excess": finite(second if second is not None else first),
            "connectivity.middle_excess_first": finite(first) if second is not None else None,
            "connectivity.curve_final_loss": finite(result.history[-1]) if result.history else None,
            "connectivity.endpoint_loss": finite(0.5 * (v.train_loss[0] + v.train_loss[-1])),
            "connectivity.history_drop": finite(history_drop(result.history)),
            "connectivity.curve_barrier": finite(barrier(v.t, v.train_loss)),
            "connectivity.t": v.t,
            "connectivity.curve_train_loss": v.train_loss,
            "connectivity.curve_train_err": v.train_err,
            "connectivity.curve_test_loss": v.test_loss if test else None,
            "connectivity.curve_test_err": v.test_err if test else None,
            "connectivity.curve_history": result.history,
            # curve training time (summed over resumed runs and a second training) plus evaluation time
            "connectivity.curve_seconds": seconds,
        })
        if reason is not None:
            log.warning("connectivity of seeds %d and %d: %s", ctx.a.seed, ctx.b.seed, reason)
    return Result(out, error=reason)


FAMILY = Family(
    name="connectivity",
    table="pairs",
    config=Config,
    metrics=METRICS,
    diagnostics=DIAGNOSTICS,
    compute=compute,
    check=check,
    styles={"connectivity.mc": FigureStyle("mode connectivity", -30.0, 30.0, "RdBu_r", centre=0.0, units="pp of training error")},
    description="mode connectivity along a trained Bezier curve (budget following the endpoints, convergence "
                "check), straight-line barrier",
)
