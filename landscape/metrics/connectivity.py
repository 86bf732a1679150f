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

Budget: a convergence protocol. mc depends on how long the curve is trained, so the curve is trained in
stages of growing budget, each continuing the previous one, and mc (and the middle excess) is recorded after
every stage: ``connectivity.budgets`` (multiples of the endpoints' SGD steps) and
``connectivity.mc_by_budget``. The first stage gets ``budget`` times the endpoints' steps, ``ceil(budget * S /
s)`` epochs (``S`` the steps each endpoint model was trained for: ``train.steps``, or ``train.epochs`` x its
steps per epoch; ``s`` the curve's steps per epoch at its batch size, ``batch_size = null``: the endpoints'),
or ``epochs`` when set; every further stage doubles the total (it trains as many epochs again, with its own
``schedule`` over them: a cosine restart, so the value is read at the end of a decayed learning rate), up to
``max_budget``. The protocol costs its final budget, not the sum of its stages.

Convergence (:func:`landscape.connectivity.stage_decision`): a pair is ``connectivity.converged`` when mc
moved by at most ``converge_tol`` percentage points over each of the last ``stable_doublings`` (2) doublings.
``converge_tol = 0.25`` by default: half the distance between the phase rule's two mc thresholds (0 and -0.5 pp),
3.6 training images of digits. One small change is not enough: on the demo's batch-256 row mc wobbles by a
few tenths of a point between stages (a change of 0.14 pp was followed by one of 0.63 pp). The claim is checked
by doing what it says (tests/test_connectivity_protocol.py trains the curves to twice the final budget). A value
still moving is a bound in the direction it moved (``connectivity.mc_bound``: ``lower`` when it rose by more
than the tolerance over those doublings, ``upper`` when it fell, null when it wobbled without a direction):
more training of a curve lowers the loss along it, so a rising mc keeps rising (on the demo's batch-256 row mc
rose at every doubling from 1x to 32x in 12 of 12 pairs). The row keeps that last value in ``connectivity.mc`` with ``converged =
false``; the phase rule uses it only where the bound decides the label whatever further training does, and
counts the pair as unresolved otherwise (``landscape.phase``). The protocol stops early once such a bound lies
outside ``[decided_below, decided_above]`` (default: the paper's mc thresholds -0.5 and 0 pp; set them to
your sweep's ``phase:`` thresholds if you change those): a value rising above the highest threshold, or falling
below the lowest, cannot change sides. ``connectivity.stop_reason`` says why the protocol stopped
(``converged``, ``decided``, ``max_budget``, ``diverged``; ``untrained`` for ``epochs = 0``). ``protocol = fixed`` is the paper's faithful mode: one
curve of the first stage's budget, its mc unchecked (``converged`` null, ``stop_reason = fixed``), which the
phase rule uses as measured, like the paper. A diverged curve (a non-finite loss or value)
gives null ``mc``/``mc_loss`` with the reason in ``connectivity.error`` (the family contract's error column).

Cost: a cell's curves are trained together (:func:`prepare`, run by the job before the pairs' ``compute``): at
every stage the pairs still in the protocol form one stack (``landscape.connectivity.train_curves_together``:
each curve keeps its own batch order, ``t`` draws and momentum; the model runs once on the stack), as the seeds
are (``train.vectorize``: ``auto`` stacks MLPs, and convolutional models on CUDA; ``on`` any supported model,
BatchNorm included: each curve keeps its own running statistics; ``off`` none). Each curve's stage files are those a serial run writes, so
``compute`` loads them and only evaluates; ``connectivity.curve_seconds`` counts a stacked curve's share of its
stack's time.

Also reported at the final stage: ``connectivity.middle_excess`` (the highest training error at an interior
t minus the higher endpoint's, percentage points; per stage in ``connectivity.middle_excess_by_budget``),
``connectivity.curve_final_loss`` (the last epoch's mean training loss of the curve, random t per batch)
against ``connectivity.endpoint_loss`` (mean training loss of the two models), the loss history of all
stages and ``connectivity.history_drop`` (relative fall of the epoch loss over the second half of the last
stage).

Barriers modulo permutation (``align: weights``, the default; ``none`` turns it off): model B's hidden units are
matched to model A's by weight matching (``landscape.permutation``: Ainsworth et al., Git Re-Basin, 2023; one
linear assignment per hidden layer on the similarity of its incoming and outgoing weights, layers visited in a
seeded order until none changes; ResNet18's residual streams share one permutation; BatchNorm running statistics
are permuted with their units). The aligned B computes B's function; the straight line from A to it gives
``connectivity.barrier_aligned`` (loss) and ``connectivity.barrier_error_aligned`` (training error, pp), on the
same grid as the unaligned line (``barrier``, ``barrier_error``), BatchNorm statistics recomputed at every t.
``connectivity.align_objective`` is the matched objective as the cosine similarity of the two parameter vectors
after the matching (``align_objective_before``: before it). ``align_repair``: REPAIR (Jordan et al. 2023) on the
aligned line of networks without BatchNorm (every hidden unit's pre-activation mean and std reset to the
interpolation of the endpoints'; with BatchNorm, recomputing its statistics is the counterpart and is always
done). ``align_curve``: also train the curve between A and the aligned B by the same protocol
(``connectivity.mc_aligned``; off by default: it doubles the curve cost). A model without a permutation spec
(anything but ``landscape.models``' MLP, CNN, ResNet18) writes ``align = none``; a matching that fails (weights
not finite) nulls the aligned values with the reason in ``connectivity.error``. Cost: the matching is a few
assignments of hidden-width size (milliseconds on the demo), the aligned line ``n_points`` evaluations of the
training set (``connectivity.align_seconds`` holds both).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from landscape.metrics.contract import Family, FigureStyle, PairContext, Result
from landscape.rules import FRACTION, choices_of, ints, nums, one_of, rule

log = logging.getLogger(__name__)

#: ``stages``: the convergence protocol; ``fixed``: one curve of the first stage's budget, unchecked (the paper's).
PROTOCOLS = ("stages", "fixed")
#: ``weights``: weight matching of B's hidden units to A's before the aligned barrier; ``none``: no alignment.
ALIGNS = ("none", "weights")


@dataclass
class Config:
    """Curve training has its own optimiser settings (SGD; ``schedule``: constant | cosine | garipov, per stage);
    ``protocol``: stages (the convergence protocol, module docstring) | fixed (the paper's: one curve of the first
    stage's budget, its mc reported unchecked: ``converged`` null, ``stop_reason`` fixed);
    ``init``: line (middle points on the segment; Garipov et al.'s default) | random (freshly initialised
    models: what the taxonomy paper's code does, which never calls the line initialisation);
    ``epochs``/``batch_size`` null: the first stage follows the endpoints' budget times ``budget`` (see the module
    docstring; the row reports the values used); ``max_budget``: the protocol's last stage (multiples of the
    endpoints' steps); ``converge_tol`` (percentage points of training error): the largest change of mc over the
    last doubling that counts as converged; ``decided_below``/``decided_above`` (pp): the range of the phase
    rule's mc thresholds (a bound outside it decides the label: the protocol stops); ``mc_endpoints``: interior |
    paper | band (see ``landscape.connectivity.mode_connectivity``); ``test``: also evaluate the final curve on
    the test set."""

    enabled: Any = False
    curve: bool = True
    line: bool = True
    protocol: str = field(default="stages", metadata=rule(one_of(PROTOCOLS)))
    bends: int = field(default=1, metadata=rule(ints(1, note="the line is `line: true`")))
    init: str = field(default="line", metadata=rule(one_of(choices_of("landscape.connectivity", "INITS"))))
    epochs: Optional[int] = field(
        default=None,
        metadata=rule(
            ints(
                0,
                null=True,
                note=("null: follow the endpoints' budget; 0: the untrained initial curve, reported with no mc"),
            )
        ),
    )
    """Epochs of the first stage; null: ``budget`` times the endpoints' steps. 0 is allowed: the initial curve,
    untrained (``stop_reason = untrained``, mc null with the reason)."""
    budget: float = field(default=0.5, metadata=rule(nums(0.0, lo_open=True, note="multiples of the endpoints' steps")))
    max_budget: float = field(
        default=16.0, metadata=rule(nums(0.0, lo_open=True, note=("multiples of the endpoints' steps, >= budget")))
    )
    converge_tol: float = field(default=0.25, metadata=rule(nums(0.0, note="percentage points of training error")))
    stable_doublings: int = field(
        default=2, metadata=rule(ints(1, note=("doublings over which mc must stay within converge_tol")))
    )
    decided_below: float = -0.5
    decided_above: float = 0.0
    lr: float = field(default=0.05, metadata=rule(nums(0.0, lo_open=True)))
    momentum: float = field(default=0.9, metadata=rule(FRACTION))
    weight_decay: float = field(default=0.0, metadata=rule(nums(0.0)))
    batch_size: Optional[int] = field(default=None, metadata=rule(ints(1, null=True, note="null: the endpoints'")))
    schedule: str = field(default="cosine", metadata=rule(one_of(choices_of("landscape.connectivity", "SCHEDULES"))))
    n_points: int = field(default=5, metadata=rule(ints(3, note="an interior point besides the two endpoints")))
    """Points of the t grid in [0, 1], endpoints included. At least 3: mc (Yang et al. 2021) compares the
    interior of the curve with its endpoints, so the grid needs a point between them (with 2, mc would be 0
    whatever the curve, reporting every pair as connected)."""
    mc_endpoints: str = field(
        default="interior", metadata=rule(one_of(choices_of("landscape.connectivity", "MC_ENDPOINTS")))
    )
    test: bool = True
    seed: int = 0
    checkpoint_every: int = field(default=1, metadata=rule(ints(1, note="epochs")))
    align: str = field(default="weights", metadata=rule(one_of(ALIGNS)))
    """``weights``: also measure the barrier between A and B with B's hidden units matched to A's (module
    docstring); written as ``none`` for a model without a permutation spec."""
    align_repair: bool = False
    """REPAIR on the aligned line (networks without BatchNorm; with it, BatchNorm statistics are recomputed)."""
    align_curve: bool = False
    """Also train the curve between A and the aligned B (``connectivity.mc_aligned``): doubles the curve cost."""
    align_max_iter: int = field(default=100, metadata=rule(ints(1, note="sweeps over the hidden layers")))


_LIST = pa.list_(pa.float64())
METRICS = {
    "connectivity.mc": pa.float64(),
    "connectivity.mc_loss": pa.float64(),
    "connectivity.curve_barrier": pa.float64(),
    "connectivity.barrier": pa.float64(),
    "connectivity.barrier_error": pa.float64(),
    "connectivity.barrier_aligned": pa.float64(),
    "connectivity.barrier_error_aligned": pa.float64(),
    "connectivity.mc_aligned": pa.float64(),
    "connectivity.align_objective": pa.float64(),
}
DIAGNOSTICS = {
    "connectivity.converged": pa.bool_(),
    "connectivity.mc_bound": pa.string(),
    "connectivity.stop_reason": pa.string(),
    "connectivity.final_budget": pa.float64(),
    "connectivity.budgets": _LIST,
    "connectivity.mc_by_budget": _LIST,
    "connectivity.middle_excess_by_budget": _LIST,
    "connectivity.middle_excess": pa.float64(),
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
    "connectivity.align_objective_before": pa.float64(),
    "connectivity.align_sweeps": pa.int64(),
    "connectivity.align_converged": pa.bool_(),
    "connectivity.align_moved": pa.float64(),
    "connectivity.line_aligned_train_loss": _LIST,
    "connectivity.line_aligned_train_err": _LIST,
    "connectivity.align_seconds": pa.float64(),
    "connectivity.mc_aligned_by_budget": _LIST,
    "connectivity.mc_aligned_stop_reason": pa.string(),
    "connectivity.curve_aligned_seconds": pa.float64(),
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
    """The rules that tie ``metrics.connectivity.*`` keys together (each key's own rule is its field's)."""
    problems = []
    if not float(settings.max_budget) >= float(settings.budget):
        problems.append(
            f"metrics.connectivity.max_budget={settings.max_budget!r}: expected a multiple >= budget "
            f"({settings.budget!r}; equal: one stage, which cannot converge)"
        )
    if not float(settings.decided_below) <= float(settings.decided_above):
        problems.append(
            f"metrics.connectivity.decided_below={settings.decided_below!r}: expected <= decided_above "
            f"({settings.decided_above!r}): the range of the phase rule's mc thresholds (pp)"
        )
    if str(settings.align) == "none" and (settings.align_repair or settings.align_curve):
        key = "align_repair" if settings.align_repair else "align_curve"
        problems.append(
            f"metrics.connectivity.{key}={getattr(settings, key)!r}: expected false with align=none "
            "(it acts on the aligned pair: set align=weights)"
        )
    if settings.align_curve and not settings.curve:
        problems.append(
            f"metrics.connectivity.align_curve={settings.align_curve!r}: expected false with curve=false "
            "(the aligned curve is trained by the curve's protocol)"
        )
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


def stage_seed(seed: int, stage: int) -> int:
    """The batch-order seed of a protocol stage: the pair's seed for the first (so a one-stage protocol trains the
    curve of earlier versions), a hash of it and the stage number after."""
    from landscape.params import hashed_seed

    return int(seed) if stage == 0 else hashed_seed(seed, stage)


def _curve_settings(settings: Any, epochs: int, batch_size: int) -> Any:
    from landscape.connectivity import CurveSettings

    return CurveSettings(
        epochs=epochs,
        lr=float(settings.lr),
        momentum=float(settings.momentum),
        weight_decay=float(settings.weight_decay),
        batch_size=batch_size,
        schedule=str(settings.schedule),
        checkpoint_every=int(settings.checkpoint_every),
    )


def _diverged(result: Any, values: Any) -> bool:
    """The curve training reported divergence, or its loss history or the values along it are not finite."""
    flagged = bool(getattr(result, "diverged", False)) or getattr(result, "status", "done") == "diverged"
    numbers = np.asarray(list(result.history) + list(values.train_loss) + list(values.train_err), dtype=np.float64)
    return flagged or not bool(np.all(np.isfinite(numbers)))


@dataclass
class ProtocolRun:
    """The curve after the protocol (trained in place) and what each stage gave: ``epochs`` (cumulative),
    ``mc``/``middle_excess`` (pp) after each, the loss ``history`` of all stages, the last stage's history, the
    final decision, the training seconds, and the final stage's values along the path (training set)."""

    epochs: list[int]
    mc: list[float]
    middle_excess: list[float]
    history: list[float]
    last_history: list[float]
    decision: Any
    seconds: float
    values: Any


@dataclass
class ProtocolPair:
    """One pair's curve in the protocol: its context, its curve (trained in place), its batch-order seed and its
    working directory (stage ``k``'s files in ``workdir/curve`` or ``workdir/curve_stage<k>``)."""

    ctx: PairContext
    curve: Any
    seed: int
    workdir: Any


def stage_dir(k: int) -> str:
    """Directory of protocol stage ``k`` (0-based) under a pair's (or a stack's) working directory."""
    return "curve" if k == 0 else f"curve_stage{k}"


def train_protocol(
    pairs: dict[str, ProtocolPair],
    settings: Any,
    template: Any,
    first_epochs: int,
    batch_size: int,
    ts: list[float],
    stack_dir: Any = None,
) -> dict[str, ProtocolRun]:
    """Train each pair's curve in the protocol's stages (module docstring) until :func:`stage_decision` says
    stop; name -> what each stage gave.

    Stage ``k`` continues stage ``k - 1``'s control points for as many epochs again (its own schedule), with
    checkpoints in the pair's ``workdir/curve`` (stage 0) or ``workdir/curve_stage<k>`` (resumable, and loaded
    without training when done). With ``stack_dir``, the pairs still in the protocol at a stage are trained
    together (``landscape.connectivity.train_curves_together``, its checkpoint in ``stack_dir/<stage dir>``),
    each writing the files a serial run would: a later call without ``stack_dir`` loads them."""
    from landscape.connectivity import (
        StageDecision,
        evaluate_path,
        mode_connectivity,
        stage_decision,
        stage_epochs,
        train_curve,
        train_curves_together,
    )

    first = next(iter(pairs.values())).ctx
    data, loss_fn = first.a.data, first.a.loss_fn
    fixed = str(settings.protocol) == "fixed"
    stages = [first_epochs] if fixed else stage_epochs(first_epochs, float(settings.budget), float(settings.max_budget))
    mode, tol = str(settings.mc_endpoints), float(settings.converge_tol)
    runs = {n: ProtocolRun([], [], [], [], [], None, 0.0, None) for n in pairs}
    active, done = list(pairs), 0
    for k, total in enumerate(stages):
        cs = _curve_settings(settings, total - done, batch_size)
        where = f"stage {k + 1}/{len(stages)}: {total} epochs"
        if stack_dir is not None and len(active) > 1:
            results = train_curves_together(
                {n: pairs[n].curve for n in active},
                template,
                data.x_train,
                data.y_train,
                loss_fn,
                cs,
                {n: stage_seed(pairs[n].seed, k) for n in active},
                {n: pairs[n].workdir / stage_dir(k) for n in active},
                stack_dir / stage_dir(k),
                should_stop=first.should_stop,
                phase=f"curves {', '.join(active)} together ({where})",
            )
        else:
            results = {
                n: train_curve(
                    pairs[n].curve,
                    template,
                    data.x_train,
                    data.y_train,
                    loss_fn,
                    cs,
                    stage_seed(pairs[n].seed, k),
                    pairs[n].workdir / stage_dir(k),
                    phase=f"curve {n} ({where})",
                    should_stop=first.should_stop,
                )
                for n in active
            }
        done = total
        for n in active:
            run, result = runs[n], results[n]
            t_eval = time.perf_counter()
            v = evaluate_path(pairs[n].curve.point, template, data.x_train, data.y_train, loss_fn, ts)
            run.seconds += result.seconds + time.perf_counter() - t_eval
            run.epochs.append(total)
            run.mc.append(mode_connectivity(v.train_err, endpoints=mode))
            run.middle_excess.append(middle_excess(v.train_err))
            run.history += list(result.history)
            run.last_history, run.values = list(result.history), v
            run.decision = stage_decision(
                run.mc,
                tol,
                float(settings.decided_below),
                float(settings.decided_above),
                last=k == len(stages) - 1,
                diverged=_diverged(result, v),
                stable_doublings=int(settings.stable_doublings),
            )
            # said once, where the stage was trained (a stage loaded from its files is replayed quietly)
            log.log(
                logging.INFO if result.epochs_run > 0 else logging.DEBUG,
                "connectivity of seeds %s: stage %d (%d epochs): mc %.3f pp, middle excess %.2f pp%s",
                n,
                k + 1,
                total,
                run.mc[-1],
                run.middle_excess[-1],
                f"; stop: {run.decision.reason}" if run.decision.stop else "",
            )
            if total == 0:
                run.decision = StageDecision(True, False, None, "untrained")
            elif fixed and run.decision.reason != "diverged":
                run.decision = StageDecision(True, None, None, "fixed")
        active = [n for n in active if not runs[n].decision.stop]
        if not active:
            break
    return runs


def _pair_name(ctx: PairContext) -> str:
    return f"{ctx.a.seed}-{ctx.b.seed}"


def _protocol_inputs(ctx: PairContext, settings: Any) -> tuple[Any, list[float], int, int, int | None]:
    """``(template model, t grid, first stage's epochs, batch size, endpoint steps)`` of a pair's curve."""
    from landscape.connectivity import t_grid

    train_cfg = getattr(ctx.a.cfg, "train", None) if ctx.a.cfg is not None else None
    epochs, batch_size, ep_steps = curve_budget(settings, train_cfg, ctx.a.data.n_train)
    return ctx.a.make_model(), t_grid(int(settings.n_points)), epochs, batch_size, ep_steps


def _protocol_pair(ctx: PairContext, settings: Any) -> ProtocolPair:
    from landscape.params import pair_seed

    seed = pair_seed(settings.seed, ctx.a.seed, ctx.b.seed)
    return ProtocolPair(ctx, _initial_curve(ctx, settings, seed), seed, ctx.workdir)


@dataclass
class Alignment:
    """Model B of a pair with its hidden units matched to model A's: the permuted model (same function as B),
    the permutation spec and the matching (``landscape.permutation.Matching``), and the seconds it took."""

    model: Any
    spec: Any
    matching: Any
    seconds: float


def align_supported(model: Any) -> bool:
    """Whether ``model`` has a permutation spec (``landscape.permutation.permutation_spec``)."""
    from landscape.permutation import UnsupportedModel, permutation_spec

    try:
        permutation_spec(model)
    except UnsupportedModel:
        return False
    return True


def align_pair(ctx: PairContext, settings: Any) -> Alignment:
    """Weight matching of the pair's model B to model A (seeded by the pair: ``params.pair_seed``). Raises
    ``landscape.permutation.UnsupportedModel`` for a model without a spec, ``ValueError`` for non-finite weights."""
    from landscape.params import pair_seed, trainable_parameters
    from landscape.permutation import permutation_spec, permuted_model, weight_matching

    t0 = time.perf_counter()
    spec = permutation_spec(ctx.a.model)
    seed = pair_seed(settings.seed, ctx.a.seed, ctx.b.seed)
    m = weight_matching(
        spec,
        trainable_parameters(ctx.a.model),
        trainable_parameters(ctx.b.model),
        seed=seed,
        max_iter=int(settings.align_max_iter),
    )
    model = permuted_model(ctx.b.model, spec, m.perms).eval()
    return Alignment(model, spec, m, time.perf_counter() - t0)


def aligned_context(ctx: PairContext, alignment: Alignment) -> PairContext:
    """The pair (A, aligned B), its working directory ``<pair>/aligned`` (its curve's stage files apart: a curve's
    fingerprint does not see a permutation)."""
    return PairContext(ctx.a, dataclasses.replace(ctx.b, model=alignment.model), ctx.workdir / "aligned")


def aligned_line(ctx: PairContext, alignment: Alignment, template: Any, ts: list[float], repair: bool) -> Any:
    """Values (``landscape.connectivity.PathValues``, training set) along the straight line from A to the aligned
    B at ``ts``; with ``repair``, REPAIR at every interior t (networks without BatchNorm, see the module
    docstring)."""
    from landscape.connectivity import BezierCurve, evaluate_path
    from landscape.params import load_parameters, trainable_parameters
    from landscape.permutation import repair as repair_fn
    from landscape.permutation import unit_statistics

    data = ctx.a.data
    line = BezierCurve.through_line(trainable_parameters(ctx.a.model), trainable_parameters(alignment.model), 0)
    point = line.point
    layers = alignment.spec.repair
    if repair and layers:
        stats_a = unit_statistics(ctx.a.model, layers, data.x_train)
        stats_b = unit_statistics(alignment.model, layers, data.x_train)
        work = ctx.a.make_model()

        def point(t: float) -> dict[str, Any]:
            p = line.point(t)
            if t in (0.0, 1.0):
                return p
            load_parameters(work, p)
            repair_fn(work, layers, stats_a, stats_b, t, data.x_train)
            return {n: v.detach().clone() for n, v in trainable_parameters(work).items()}

    return evaluate_path(point, template, data.x_train, data.y_train, ctx.a.loss_fn, ts)


def _finite(x: Any) -> Any:
    return x if x is not None and math.isfinite(x) else None


def _aligned_values(
    ctx: PairContext, settings: Any, template: Any, ts: list[float]
) -> tuple[dict, Alignment | None, str | None]:
    """The alignment columns of a pair, the alignment (None when not done) and why a value is null (or None)."""
    from landscape.connectivity import barrier
    from landscape.permutation import UnsupportedModel

    if str(settings.align) == "none":
        return {}, None, None
    try:
        al = align_pair(ctx, settings)
    except UnsupportedModel as exc:
        log.info("connectivity of seeds %d and %d: no alignment (%s)", ctx.a.seed, ctx.b.seed, exc)
        return {"connectivity.align": "none"}, None, None
    except ValueError as exc:
        return {}, None, f"alignment failed: {exc}"
    m = al.matching
    out: dict[str, Any] = {
        "connectivity.align_objective_before": _finite(float(m.objective_before)),
        "connectivity.align_objective": _finite(float(m.objective)),
        "connectivity.align_sweeps": int(m.sweeps),
        "connectivity.align_converged": bool(m.converged),
        "connectivity.align_moved": float(m.moved),
    }
    seconds = al.seconds
    if settings.line:
        t0 = time.perf_counter()
        v = aligned_line(ctx, al, template, ts, bool(settings.align_repair))
        seconds += time.perf_counter() - t0
        out.update(
            {
                "connectivity.barrier_aligned": _finite(barrier(v.t, v.train_loss)),
                "connectivity.barrier_error_aligned": _finite(barrier(v.t, v.train_err)),
                "connectivity.line_aligned_train_loss": v.train_loss,
                "connectivity.line_aligned_train_err": v.train_err,
            }
        )
        log.info(
            "connectivity of seeds %d and %d: aligned (cosine %.3f -> %.3f, %d sweeps): line barrier %.4g nats, "
            "%.3g pp",
            ctx.a.seed,
            ctx.b.seed,
            m.objective_before,
            m.objective,
            m.sweeps,
            out["connectivity.barrier_aligned"] if out["connectivity.barrier_aligned"] is not None else float("nan"),
            out["connectivity.barrier_error_aligned"]
            if out["connectivity.barrier_error_aligned"] is not None
            else float("nan"),
        )
    out["connectivity.align_seconds"] = seconds
    reason = None
    if settings.line and (
        out["connectivity.barrier_aligned"] is None or out["connectivity.barrier_error_aligned"] is None
    ):
        reason = "aligned line: non-finite training loss or error"
    return out, al, reason


def prepare(contexts: list[PairContext], settings: Any, workdir: Any) -> None:
    """Train the curves of a cell's pairs together (the stack the seeds use: ``train.vectorize``, see
    ``landscape.vectorized.use_vectorized``; MLPs by default, CNNs on CUDA, BatchNorm models included), stage by stage through
    the protocol, leaving each pair's stage files where :func:`compute` finds them (it then only evaluates).
    Nothing is done for a single pair, a model that cannot be stacked, ``curve: false`` or settings the family
    refuses (the contract checks them: :meth:`landscape.metrics.Family.problems`)."""
    from landscape.vectorized import use_vectorized

    if not settings.curve or len(contexts) < 2:
        return
    first = contexts[0]
    template, ts, epochs, batch_size, _ = _protocol_inputs(first, settings)
    train_cfg = getattr(first.a.cfg, "train", None)
    mode = str(getattr(train_cfg, "vectorize", "auto")) if train_cfg is not None else "auto"
    if epochs == 0 or int(settings.bends) < 1 or not use_vectorized(mode, template, len(contexts)):
        return
    pairs = {_pair_name(c): _protocol_pair(c, settings) for c in contexts}
    train_protocol(pairs, settings, template, epochs, batch_size, ts, stack_dir=workdir)
    if settings.align_curve and str(settings.align) == "weights" and align_supported(template):
        aligned = {}
        for c in contexts:
            try:
                aligned[_pair_name(c)] = _protocol_pair(aligned_context(c, align_pair(c, settings)), settings)
            except ValueError:  # its compute names the reason
                continue
        if len(aligned) > 1:
            train_protocol(aligned, settings, template, epochs, batch_size, ts, stack_dir=workdir / "aligned")


def compute(ctx: PairContext, settings: Any) -> Result:
    from landscape.connectivity import BezierCurve, barrier, evaluate_path, mode_connectivity, trainable_parameters
    from landscape.engine import steps_per_epoch

    data, loss_fn = ctx.a.data, ctx.a.loss_fn
    template, ts, epochs, batch_size, ep_steps = _protocol_inputs(ctx, settings)
    per_epoch = steps_per_epoch(data.n_train, batch_size)
    out: dict[str, Any] = {
        "connectivity.n_points": len(ts),
        # the values used (settings columns; null in the config means "follow the endpoints")
        "connectivity.epochs": epochs,
        "connectivity.batch_size": batch_size,
        "connectivity.endpoint_steps": ep_steps,
    }
    reason = None
    if settings.line:
        t0 = time.perf_counter()
        line = BezierCurve.through_line(trainable_parameters(ctx.a.model), trainable_parameters(ctx.b.model), 0)
        v = evaluate_path(line.point, template, data.x_train, data.y_train, loss_fn, ts)
        out.update(
            {
                "connectivity.barrier": barrier(v.t, v.train_loss),
                "connectivity.barrier_error": barrier(v.t, v.train_err),
                "connectivity.line_t": v.t,
                "connectivity.line_train_loss": v.train_loss,
                "connectivity.line_train_err": v.train_err,
                "connectivity.line_seconds": time.perf_counter() - t0,
            }
        )
    aligned_out, alignment, align_reason = _aligned_values(ctx, settings, template, ts)
    out.update(aligned_out)
    if settings.curve:
        pair = _protocol_pair(ctx, settings)
        curve = pair.curve
        run = train_protocol({_pair_name(ctx): pair}, settings, template, epochs, batch_size, ts)[_pair_name(ctx)]
        decision, v = run.decision, run.values
        # budgets in multiples of the endpoints' steps (of the first stage's epochs without a train config)
        unit = (ep_steps / per_epoch) if ep_steps else (epochs or 1)
        budgets = [e / unit for e in run.epochs]
        test = bool(settings.test)
        if test:  # the training values are the last stage's (run.values): only the test set is evaluated here
            t_eval = time.perf_counter()
            vt = evaluate_path(
                curve.point, template, data.x_train, data.y_train, loss_fn, ts, data.x_test, data.y_test, train=False
            )
            v = dataclasses.replace(v, test_loss=vt.test_loss, test_err=vt.test_err)
            run.seconds += time.perf_counter() - t_eval
        ok = decision.reason not in ("diverged", "untrained")
        finite = lambda x: x if x is not None and math.isfinite(x) else None  # noqa: E731 - a one-line helper used on the next lines
        mode = str(settings.mc_endpoints)
        reason = {
            "diverged": "curve diverged: non-finite training loss or error along the curve",
            "untrained": "curve not trained (metrics.connectivity.epochs=0): no mode connectivity",
        }.get(decision.reason)
        out.update(
            {
                "connectivity.mc": finite(run.mc[-1]) if ok else None,
                "connectivity.mc_loss": finite(mode_connectivity(v.train_loss, endpoints=mode)) if ok else None,
                "connectivity.converged": None if decision.converged is None else bool(decision.converged),
                "connectivity.mc_bound": decision.bound if ok else None,
                "connectivity.stop_reason": decision.reason,
                "connectivity.final_budget": budgets[-1],
                "connectivity.budgets": budgets,
                "connectivity.mc_by_budget": [float(x) for x in run.mc],
                "connectivity.middle_excess_by_budget": [float(x) for x in run.middle_excess],
                "connectivity.steps": run.epochs[-1] * per_epoch,
                "connectivity.middle_excess": finite(run.middle_excess[-1]),
                "connectivity.curve_final_loss": finite(run.history[-1]) if run.history else None,
                "connectivity.endpoint_loss": finite(0.5 * (v.train_loss[0] + v.train_loss[-1])),
                "connectivity.history_drop": finite(history_drop(run.last_history)),
                "connectivity.curve_barrier": finite(barrier(v.t, v.train_loss)),
                "connectivity.t": v.t,
                "connectivity.curve_train_loss": v.train_loss,
                "connectivity.curve_train_err": v.train_err,
                "connectivity.curve_test_loss": v.test_loss if test else None,
                "connectivity.curve_test_err": v.test_err if test else None,
                "connectivity.curve_history": run.history,
                # curve training time (summed over stages and resumed runs) plus evaluation time
                "connectivity.curve_seconds": run.seconds,
            }
        )
        if reason is not None:
            log.warning("connectivity of seeds %d and %d: %s", ctx.a.seed, ctx.b.seed, reason)
        elif decision.converged is False:
            log.info(
                "connectivity of seeds %d and %d: mc %.3f pp still moving after budget %g (%s): a %s bound",
                ctx.a.seed,
                ctx.b.seed,
                run.mc[-1],
                budgets[-1],
                decision.reason,
                decision.bound,
            )
    if settings.curve and settings.align_curve and alignment is not None:
        actx = aligned_context(ctx, alignment)
        apair = _protocol_pair(actx, settings)
        arun = train_protocol({_pair_name(ctx): apair}, settings, template, epochs, batch_size, ts)[_pair_name(ctx)]
        ok = arun.decision.reason not in ("diverged", "untrained")
        out.update(
            {
                "connectivity.mc_aligned": _finite(arun.mc[-1]) if ok else None,
                "connectivity.mc_aligned_by_budget": [float(x) for x in arun.mc],
                "connectivity.mc_aligned_stop_reason": arun.decision.reason,
                "connectivity.curve_aligned_seconds": arun.seconds,
            }
        )
        if arun.decision.reason == "diverged":
            align_reason = "; ".join(r for r in (align_reason, "aligned curve diverged") if r)
    reasons = [r for r in (reason, align_reason) if r]
    if align_reason is not None:
        log.warning("connectivity of seeds %d and %d: %s", ctx.a.seed, ctx.b.seed, align_reason)
    return Result(out, error="; ".join(reasons) if reasons else None)


FAMILY = Family(
    name="connectivity",
    table="pairs",
    config=Config,
    metrics=METRICS,
    diagnostics=DIAGNOSTICS,
    compute=compute,
    check=check,
    prepare=prepare,
    # paper range: Yang et al. (2021), Figure 1 (a linear diverging scale, -30 to 30 pp); data limits on symlog
    styles={
        "connectivity.mc": FigureStyle(
            "mode connectivity mc",
            "pp of training error",
            "symlog",
            paper=(-30.0, 30.0),
            paper_scale="linear",
            cmap="RdBu_r",
            centre=0.0,
        ),
        "connectivity.mc_loss": FigureStyle(
            "mode connectivity on the training loss", "nats", "symlog", cmap="RdBu_r", centre=0.0, linthresh=0.01
        ),
        "connectivity.curve_barrier": FigureStyle("loss barrier along the curve", "nats", cmap="magma_r"),
        "connectivity.barrier": FigureStyle("loss barrier on the straight line", "nats", cmap="magma_r"),
        "connectivity.barrier_error": FigureStyle(
            "error barrier on the straight line", "pp of training error", cmap="magma_r"
        ),
        "connectivity.barrier_aligned": FigureStyle(
            "aligned loss barrier on the straight line", "nats", cmap="magma_r"
        ),
        "connectivity.barrier_error_aligned": FigureStyle(
            "aligned error barrier on the straight line", "pp of training error", cmap="magma_r"
        ),
        "connectivity.mc_aligned": FigureStyle(
            "mode connectivity mc, aligned",
            "pp of training error",
            "symlog",
            cmap="RdBu_r",
            centre=0.0,
        ),
        "connectivity.align_objective": FigureStyle(
            "cosine similarity of the parameters after weight matching", "unitless", cmap="viridis"
        ),
        "connectivity.align_objective_before": FigureStyle(
            "cosine similarity of the parameters before weight matching", "unitless", cmap="viridis"
        ),
        "connectivity.middle_excess": FigureStyle(
            "middle excess of the curve", "pp of training error", "symlog", cmap="RdBu_r", centre=0.0
        ),
    },
    description="mode connectivity along a trained Bezier curve (budget following the endpoints, convergence "
    "check), straight-line barrier, both also after weight matching of the hidden units (modulo permutation)",
)
