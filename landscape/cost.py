"""Cost of a grid before launch: the work each cell will do, timed per unit on this machine.

A dry run (``landscape -m ... dry_run=true``) prints, below the plan, the estimated seconds (CPU seconds, or GPU
seconds when the cell's device is a GPU) and disk bytes of every cell that is not done, and the total. Three
steps:

1. **Work** (:func:`cell_work`, exact counts from the config and the data sizes): the SGD steps of the seeds
   (``train.steps``, or ``train.epochs`` x ``ceil(n_train / batch_size)`` less a trailing batch of one, per
   model; one stack of all seeds when ``train.vectorize`` stacks them, else one run per seed); the forward passes
   of the evaluations (training metrics: train, test and clean-label train sets; CKA: two models on its probe
   set; the curve at ``n_points`` values of t after every stage); the Hessian-vector products (default mode:
   the Lanczos run, at most ``max_iter``, plus the trace's probes and the density's; taxonomy mode: power
   iteration and Hutchinson, at most 100 each, on 200 samples), each over ``eval_samples`` samples; the curve SGD
   steps of the connectivity protocol: the first stage's ``budget`` x the endpoints' steps (rounded up to whole
   curve epochs), doubling up to ``max_budget``, all pairs of a cell in one stack where the seeds stack; surface
   grid points; jump-and-retrain SGD steps and recorded evaluations; projection-trace forward passes and
   products. Where the work is not known before the run it is a **range**: the protocol stops a pair as soon as
   its mc converged or its bound decided the phase rule (at the earliest after ``stable_doublings + 1`` stages)
   or runs to ``max_budget`` (low: every pair stops at the earliest stage; high: every pair runs to the last);
   the Lanczos run stops at convergence (low: as many products as eigenpairs asked for) or at ``max_iter``.
2. **Seconds per unit** (:func:`probe_costs`), measured by a short **probe** of the cell's own model, batch size
   and stack on this machine, through the code the job runs (``train_model`` / ``train_together``,
   ``train_curve`` / ``train_curves_together``, ``evaluate``, ``HessianOperator``), on a few batches of the
   cell's data in a temporary directory: three timed runs per loop (each the least of two) separate the time per step from the time
   per epoch (checkpoints, batch order) and the fixed start of a run; about ``LANDSCAPE_COST_PROBE_S`` (0.05 s)
   per timed run, well under a second per cell for small models. Disk: the probe's own final files (a model,
   a curve stage) and a result table of the cell's row count written with the real schema.
3. **Calibration by the sweep's own finished cells** (:func:`calibrate_from_rows`), when the sweep directory
   holds some: their rows record what each part took (``training.seconds``, ``hessian.seconds``,
   ``connectivity.curve_seconds``, ``cka.seconds``, the cell's ``seconds``, ...) and what was done
   (``training.steps``, ``hessian.n_matvecs``, ``connectivity.steps`` and the stages each pair ran). Up to
   ``CALIBRATION_CELLS`` finished cells are probed too, and each part's probe estimate is scaled by
   measured / estimated over them (the work counted as it happened), which carries what a probe does not see:
   other workers sharing the cores, evaluation and writing time, start-up.

The start of a worker process (imports, e.g. about 2 s of ``torch._dynamo`` on the first ``torch.optim.SGD``;
it shows in small cells) is not in the cells' seconds: the first probes of the dry run measure it (their first
run less their second) and the total line names it, per worker. What is not counted: logs and the metric caches (kilobytes), the checkpoints that live
only while a run trains (peak disk, removed at its end), PHATE and persistent homology (jump and retrain).

``LANDSCAPE_COST``: ``auto`` (default: rows when the sweep has finished cells, else probe), ``probe`` (no rows),
``off`` (no estimate).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

log = logging.getLogger(__name__)

REST = ("overhead", "training", "l2")
"""Parts without a seconds column of their own: calibrated together by the cell's ``seconds`` less the others."""

CALIBRATION_CELLS = 3
"""Finished cells of the sweep probed to scale the estimate of each part (:func:`calibrate_from_rows`)."""

PARTS = (
    "train",
    "training",
    "hessian",
    "cka",
    "l2",
    "connectivity",
    "surfaces",
    "projection_trace",
    "jump_retrain",
    "overhead",
)
"""The parts of a cell's cost: ``train`` the SGD of its seeds, one per metric family, ``overhead`` loading the
data and building the models (and, calibrated by rows, everything else the cell's ``seconds`` holds)."""


# ------------------------------------------------------------------------------------------------ ranges
@dataclass(frozen=True)
class Range:
    """A quantity known between ``low`` and ``high`` (equal when exact)."""

    low: float
    high: float

    @staticmethod
    def exact(x: float) -> "Range":
        return Range(float(x), float(x))

    def __add__(self, other: "Range") -> "Range":
        return Range(self.low + other.low, self.high + other.high)

    def __mul__(self, k: float) -> "Range":
        return Range(self.low * k, self.high * k)

    __rmul__ = __mul__

    @property
    def exact_value(self) -> bool:
        return self.low == self.high


ZERO = Range(0.0, 0.0)


def _sum(ranges: Iterable[Range]) -> Range:
    out = ZERO
    for r in ranges:
        out = out + r
    return out


# -------------------------------------------------------------------------------------------------- work
@dataclass(frozen=True)
class Op:
    """A unit of work timed by the probe. ``kind``: ``sgd`` (one SGD step of a stack of ``stack`` models at
    batch ``batch``; ``stack = 1``: a model trained alone, ``torch.optim.SGD``), ``sgd_epoch`` (the per-epoch
    work of that loop: batch order, checkpoints), ``curve`` / ``curve_epoch`` (the same for a stack of
    ``stack`` Bezier curves), ``forward`` (one sample through one model, no gradient), ``hvp`` (one sample of a
    Hessian-vector product at ``batch`` samples per product)."""

    kind: str
    batch: int = 0
    stack: int = 1


@dataclass(frozen=True)
class DataSize:
    """What the work depends on in a cell's data."""

    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    n_classes: int


@dataclass
class CellWork:
    """The work of one cell: ``parts[part][op]`` = how many of ``op`` (a ``Range``); ``notes[part]`` says what
    a range there means; the files it leaves: ``models`` (final weights), ``curve_files`` (one per protocol
    stage and pair, a Range), ``rows`` (``{table: rows}``)."""

    parts: dict[str, dict[Op, Range]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    models: int = 0
    curve_files: Range = ZERO
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, part: str, op: Op, n: Range | float) -> None:
        n = n if isinstance(n, Range) else Range.exact(n)
        bucket = self.parts.setdefault(part, {})
        bucket[op] = bucket.get(op, ZERO) + n

    def ops(self) -> set[Op]:
        return {op for ops in self.parts.values() for op in ops}


def _batch(bs: Any, n_train: int) -> int:
    return n_train if bs == "full" else min(int(bs), n_train)


def _stacked(cfg: Any, model: Any, n: int) -> bool:
    from landscape.vectorized import use_vectorized

    return n >= 1 and use_vectorized(str(cfg.train.vectorize), model, n)


def cell_work(cfg: Any, size: DataSize, model: Any = None, realised: Mapping[str, Any] | None = None) -> CellWork:
    """The work of the cell of ``cfg`` on data of ``size`` (see the module docstring); ``model``: the cell's
    model (built from the config when None; it decides the stacking). ``realised``: what a finished cell did,
    to count its work as it happened (``stages``: {pair: stages run}, ``hessian_products``: {seed: products})."""
    from landscape import metrics as metrics_mod
    from landscape.engine import steps_per_epoch
    from landscape.metrics.connectivity import endpoint_steps
    from landscape.models import build_model

    if model is None:
        model = build_model(cfg.model, size.input_shape, size.n_classes)
    realised = realised or {}
    n, n_test = size.n_train, size.n_test
    seeds = sorted(int(s) for s in cfg.train.seeds)
    w = CellWork(models=len(seeds), rows={"models": len(seeds)})
    on = {f.name for f in metrics_mod.enabled(cfg)}
    pairs = metrics_mod.select_pairs(seeds, str(cfg.metrics.pairs)) if metrics_mod.enabled(cfg, "pairs") else []
    if pairs:
        w.rows["pairs"] = len(pairs)

    # the seeds' training: one stack of all seeds, or one run per seed
    B = _batch(cfg.train.batch_size, n)
    per_epoch = steps_per_epoch(n, B)
    steps = endpoint_steps(cfg.train, n)
    epochs = math.ceil(steps / per_epoch)
    # sharpness measures inside each seed's own run: the seeds are then trained one after the other
    if "sharpness" not in on and _stacked(cfg, model, len(seeds)) and len(seeds) > 1:
        w.add("train", Op("sgd", B, len(seeds)), steps)
        w.add("train", Op("sgd_epoch", B, len(seeds)), epochs)
    else:
        w.add("train", Op("sgd", B, 1), steps * len(seeds))
        w.add("train", Op("sgd_epoch", B, 1), epochs * len(seeds))
    w.add("overhead", Op("overhead"), 1)

    if "sharpness" in on:  # a Lanczos run every `every` steps and at the last one, warm-started
        s = cfg.metrics.sharpness
        measurements = math.ceil(steps / int(s.every))  # steps every, 2 every, ..., and the last one
        samples = n if int(s.samples) <= 0 else min(int(s.samples), n)
        w.add("sharpness", Op("hvp", samples), len(seeds) * measurements * samples * Range(2, int(s.max_iter)))
        w.notes["sharpness"] = f"{measurements} Lanczos runs per seed, 2-{int(s.max_iter)} products each"
    if "training" in on:  # train, test, and train with the clean labels
        w.add("training", Op("forward"), len(seeds) * (2 * n + n_test))
    if "hessian" in on:
        s = cfg.metrics.hessian
        per_model, samples = _hessian_products(s, n)
        for seed in seeds:
            done = realised.get("hessian_products", {}).get(seed)
            w.add("hessian", Op("hvp", samples), (Range.exact(done) if done is not None else per_model) * samples)
        if not per_model.exact_value and not realised:
            w.notes["hessian"] = (
                f"Lanczos {per_model.low:g}-{per_model.high:g} products per model (stops at convergence)"
            )
    if "cka" in on and pairs:
        c = cfg.metrics.cka
        pool = {"test": n_test, "train": n}.get(str(c.probe), int(c.n_samples))
        w.add("cka", Op("forward"), 2 * min(int(c.n_samples), pool) * len(pairs))
    if "connectivity" in on and pairs:
        _connectivity_work(w, cfg, size, model, pairs, realised.get("stages"))
    if "surfaces" in on:
        s = cfg.metrics.surfaces
        points = int(s.resolution) ** int(s.dims)
        ev = n if int(s.eval_samples) <= 0 else min(int(s.eval_samples), n)
        w.add("surfaces", Op("forward"), len(seeds) * points * (ev + (n_test if s.include_test else 0)))
        if str(s.directions) == "hessian":
            w.add(
                "surfaces", Op("hvp", ev), len(seeds) * ev * Range(int(s.dims), int(s.dims) * int(s.hessian_max_iter))
            )
            w.notes["surfaces"] = "Hessian directions: Lanczos stops at convergence"
    if "projection_trace" in on:
        s = cfg.metrics.projection_trace
        ev = min(int(s.eval_samples), n)
        d = int(s.n_directions)
        # loss at theta and at theta +- step along each direction; the exact d'Hd of each; saddle: 4 per draw
        w.add("projection_trace", Op("forward"), len(seeds) * ev * (1 + 2 * d + 4 * int(s.saddle_draws)))
        if s.check_hessian:
            w.add("projection_trace", Op("hvp", ev), len(seeds) * d * ev)
    if "jump_retrain" in on:
        s = cfg.metrics.jump_retrain
        bj = min(int(s.batch_size), n)
        jumps = len(list(s.scales)) * int(s.n_jumps)
        jsteps = int(s.epochs) * steps_per_epoch(n, bj)
        records = jumps * (jsteps // max(1, int(s.record_every)) + 2) + 1
        ev = min(int(s.eval_samples), n) + min(int(s.eval_samples), n_test)
        w.add("jump_retrain", Op("sgd", bj, 1), len(seeds) * jumps * jsteps)
        w.add("jump_retrain", Op("sgd_epoch", bj, 1), len(seeds) * jumps * int(s.epochs))
        w.add("jump_retrain", Op("forward"), len(seeds) * records * ev)
        w.notes["jump_retrain"] = "PHATE and homology not counted"
    return w


def _hessian_products(s: Any, n_train: int) -> tuple[Range, int]:
    """(products per model, samples per product) of the ``hessian`` family's settings ``s``."""
    from landscape.curvature.taxonomy import TAXONOMY_MAX_ITER, TAXONOMY_SAMPLES

    if str(s.mode) == "taxonomy":
        k = int(s.n_top)
        low = k + 1 + (1 if s.smallest_eigenvalue else 0)
        high = k * TAXONOMY_MAX_ITER + TAXONOMY_MAX_ITER + (int(s.max_iter) if s.smallest_eigenvalue else 0)
        if s.density:
            low, high = low + int(s.n_probes) * int(s.n_steps), high + int(s.n_probes) * int(s.n_steps)
        return Range(low, high), min(TAXONOMY_SAMPLES, n_train)
    k = int(s.n_top) + (1 if s.smallest_eigenvalue else 0)
    first = min(int(s.max_iter), max(k, int(s.n_steps) if s.density else 0))
    m = int(s.trace_matvecs)
    trace = max(2, m - 2 * (m // 3)) if str(s.trace_method) == "krylov" else m
    density = (int(s.n_probes) - 1) * int(s.n_steps) if s.density else 0
    return Range(first + trace + density, int(s.max_iter) + trace + density), min(int(s.eval_samples), n_train)


def protocol_epochs(settings: Any, train_cfg: Any, n_train: int) -> tuple[list[int], int, int]:
    """``(cumulative curve epochs after each stage, earliest stage index a pair can stop at, batch size)`` of the
    connectivity family's protocol (``fixed``: one stage)."""
    from landscape.connectivity import stage_epochs
    from landscape.metrics.connectivity import curve_budget

    first, bs, _ = curve_budget(settings, train_cfg, n_train)
    if str(settings.protocol) == "fixed":
        return [first], 0, bs
    stages = stage_epochs(first, float(settings.budget), float(settings.max_budget))
    return stages, min(int(settings.stable_doublings), len(stages) - 1), bs


def _alignable(model: Any) -> bool:
    """Whether the connectivity family aligns ``model``'s pairs (``align: weights`` on a model with a
    permutation spec; others write ``align = none``)."""
    from landscape.metrics.connectivity import align_supported

    return align_supported(model)


def _connectivity_work(
    w: CellWork,
    cfg: Any,
    size: DataSize,
    model: Any,
    pairs: Sequence[tuple[int, int]],
    realised: Mapping[str, int] | None,
) -> None:
    from landscape.engine import steps_per_epoch
    from landscape.models import has_batch_norm

    s = cfg.metrics.connectivity
    n, n_test = size.n_train, size.n_test
    pts = int(s.n_points)
    bn = 2 if has_batch_norm(model) else 1  # BatchNorm statistics recomputed at every t: one more pass
    aligned = str(getattr(s, "align", "none")) == "weights" and _alignable(model)
    if s.line:  # the line from A to B, and from A to the aligned B (the matching itself: milliseconds)
        w.add("connectivity", Op("forward"), len(pairs) * pts * n * bn * (2 if aligned else 1))
    if not s.curve:
        return
    # the curve to the aligned B runs the same protocol: every curve term below twice
    curves = 2 if aligned and bool(getattr(s, "align_curve", False)) else 1
    stages, earliest, bs = protocol_epochs(s, cfg.train, n)
    per_epoch = steps_per_epoch(n, bs)
    names = [f"{a}-{b}" for a, b in pairs]
    if realised:  # stages each pair ran (a finished cell)
        ran = {p: max(1, min(int(realised.get(p, len(stages))), len(stages))) for p in names}
        per_pair = {p: Range.exact(ran[p]) for p in names}
        stack_epochs = Range.exact(stages[max(ran.values()) - 1])
    else:
        per_pair = {p: Range(earliest + 1, len(stages)) for p in names}
        stack_epochs = Range(stages[earliest], stages[-1])
    stacked = len(pairs) > 1 and int(s.bends) >= 1 and _stacked(cfg, model, len(pairs)) and stages[-1] > 0
    if stacked:  # one stack per stage (pairs that stopped leave it: counted at the full stack's cost)
        w.add("connectivity", Op("curve", bs, len(pairs)), stack_epochs * per_epoch * curves)
        w.add("connectivity", Op("curve_epoch", bs, len(pairs)), stack_epochs * curves)
    else:
        for p in names:
            ep = (
                Range.exact(stages[int(per_pair[p].low) - 1])
                if per_pair[p].exact_value
                else Range(stages[earliest], stages[-1])
            )
            w.add("connectivity", Op("curve", bs, 1), ep * per_epoch * curves)
            w.add("connectivity", Op("curve_epoch", bs, 1), ep * curves)
    n_stages = _sum(per_pair.values())
    w.add("connectivity", Op("forward"), n_stages * (pts * n * bn) * curves)  # mc after every stage
    if s.test:
        w.add("connectivity", Op("forward"), len(pairs) * pts * (n * bn + n_test))
    w.curve_files = n_stages * int(s.bends) if int(s.bends) else ZERO
    if not realised and earliest + 1 < len(stages):
        w.notes["connectivity"] = (
            f"protocol: {earliest + 1}-{len(stages)} stages of {stages[0]}..{stages[-1]} "
            f"curve epochs x {per_epoch} steps (stops early when mc converged or decided)"
        )


# ------------------------------------------------------------------------------------------------- probe
@dataclass
class UnitCosts:
    """Seconds per ``Op`` of a cell on this machine (``per_op``), ``overhead`` seconds, and the bytes of one
    model file, one curve stage file and of the cell's result tables (``table_bytes``: {table: bytes})."""

    per_op: dict[Op, float] = field(default_factory=dict)
    model_bytes: int = 0
    curve_bytes: int = 0
    table_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # time the probe itself took
    first_use: float = 0.0  # what the probe's first runs paid once (imports, kernels): a fresh process pays it


def _target_s() -> float:
    return float(os.environ.get("LANDSCAPE_COST_PROBE_S", "0.05"))


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: Any) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _subset(data: Any, n: int) -> tuple[Any, Any]:
    """The first ``n`` training samples (cycled when the set is smaller): deterministic."""
    import torch

    idx = torch.arange(n, device=data.x_train.device) % data.n_train
    return data.x_train[idx], data.y_train[idx]


def _loop_costs(
    run: Callable[[int, int, int, Path], Any], batch: int, device: Any, tmp: Path
) -> tuple[float, float, float]:
    """(seconds per step, seconds per epoch, first-use seconds) of a training loop ``run(samples, epochs, tag,
    dir)``: two gauge runs (the first also pays what a process pays once: imports, kernels; the difference is
    the third value), then three timed runs, each the least of two (P steps in one epoch, 2P steps in one epoch,
    P epochs of one step; P from the gauge so a run takes about ``LANDSCAPE_COST_PROBE_S``)."""
    p0 = 4
    g1 = _timed(lambda: run(p0 * batch, 1, 0, tmp / "g"), device)
    g2 = _timed(lambda: run(p0 * batch, 1, 1, tmp / "g2"), device)
    first_use, t0 = max(0.0, g1 - g2), min(g1, g2)
    p = int(min(256, max(4, math.ceil(_target_s() / max(t0 / p0, 1e-6)))))
    # the least of two runs each: other processes on the machine only ever add time
    r1 = min(_timed(lambda: run(p * batch, 1, 2 + 3 * i, tmp / f"r1-{i}"), device) for i in range(2))  # noqa: B023 (called within this iteration)
    r2 = min(_timed(lambda: run(2 * p * batch, 1, 3 + 3 * i, tmp / f"r2-{i}"), device) for i in range(2))  # noqa: B023 (called within this iteration)
    r3 = min(_timed(lambda: run(batch, p, 4 + 3 * i, tmp / f"r3-{i}"), device) for i in range(2))  # noqa: B023 (called within this iteration)
    # per step: the difference of the first two, within [1/2, 1] x the second's mean step (an upper bound: the
    # fixed start of a run is not negative); a burst of other work during the first run cannot make it vanish
    upper = r2 / (2 * p)
    per_step = min(max((r2 - r1) / p, upper / 2), upper)
    per_epoch = max(0.0, min((r3 - r1) / (p - 1), r3 / p - per_step))
    return per_step, per_epoch, first_use


def probe_costs(cfg: Any, data: Any, work: CellWork, device: Any = None) -> UnitCosts:
    """Seconds per unit of every ``Op`` of ``work`` for the cell of ``cfg`` on ``data`` (already on ``device``),
    and the bytes of its files, measured here (see the module docstring). Seeds: the cell's own."""
    from landscape.connectivity import (
        BezierCurve,
        CurveSettings,
        train_curve,
        train_curves_together,
        trainable_parameters,
    )
    from landscape.models import build_model
    from landscape.training import TrainSettings, evaluate, make_loss, train_model
    from landscape.vectorized import train_together

    device = device if device is not None else data.x_train.device
    t_start = time.perf_counter()
    seeds = [int(s) for s in cfg.train.seeds] or [0]
    loss_fn = make_loss(str(cfg.train.loss))
    out = UnitCosts()

    def models(k: int) -> dict[int, Any]:
        chosen = [seeds[i % len(seeds)] + (i // len(seeds)) * 1000 for i in range(k)]
        return {s: build_model(cfg.model, data.input_shape, data.n_classes, seed=s).to(device) for s in chosen}

    with tempfile.TemporaryDirectory(prefix="landscape-cost-") as tmpdir:
        tmp = Path(tmpdir)
        for op in sorted(work.ops(), key=lambda o: (o.kind, o.batch, o.stack)):
            if op in out.per_op or op.kind in ("sgd_epoch", "curve_epoch", "overhead"):
                continue
            if op.kind == "sgd":
                B, K = op.batch, op.stack

                def run_train(samples: int, epochs: int, tag: int, d: Path, B: int = B, K: int = K) -> None:
                    x, y = _subset(data, samples)
                    ts = TrainSettings.from_config(cfg.train, samples)
                    ts = dataclasses.replace(ts, batch_size=B, epochs=epochs, steps=None, schedule="constant")
                    ms = models(K)
                    if K > 1:
                        train_together(ms, x, y, ts, {s: d / f"seed{s}" for s in ms}, d / "group", phase="cost probe")
                    else:
                        s, m = next(iter(ms.items()))
                        train_model(m, x, y, ts, s, d / "seed", phase="cost probe")

                step, epoch, first = _loop_costs(run_train, B, device, tmp / f"sgd{B}x{K}")
                out.first_use += first
                out.per_op[op], out.per_op[Op("sgd_epoch", B, K)] = step, epoch
                final = next(iter((tmp / f"sgd{B}x{K}" / "r1-0").rglob("final.pt")), None)
                if final is not None and op in work.parts.get("train", {}):
                    out.model_bytes = final.stat().st_size
            elif op.kind == "curve":
                B, K = op.batch, op.stack
                s = cfg.metrics.connectivity
                ms = list(models(K + 1).values())
                template = build_model(cfg.model, data.input_shape, data.n_classes).to(device)

                def run_curves(
                    samples: int,
                    epochs: int,
                    tag: int,
                    d: Path,
                    B: int = B,
                    K: int = K,
                    ms: list = ms,
                    template: Any = template,
                ) -> None:
                    x, y = _subset(data, samples)
                    cs = CurveSettings(
                        epochs=epochs,
                        lr=float(s.lr),  # noqa: B023 (called within this iteration)
                        momentum=float(s.momentum),  # noqa: B023 (called within this iteration)
                        weight_decay=float(s.weight_decay),  # noqa: B023 (called within this iteration)
                        batch_size=B,
                        schedule=str(s.schedule),  # noqa: B023 (called within this iteration)
                        checkpoint_every=int(s.checkpoint_every),  # noqa: B023 (called within this iteration)
                    )
                    curves = {
                        f"{i}": BezierCurve.through_line(
                            trainable_parameters(ms[i]),
                            trainable_parameters(ms[i + 1]),
                            int(s.bends),  # noqa: B023 (called within this iteration)
                        )
                        for i in range(K)
                    }
                    if K > 1:
                        train_curves_together(
                            curves,
                            template,
                            x,
                            y,
                            loss_fn,
                            cs,
                            {c: int(s.seed) + i for i, c in enumerate(curves)},  # noqa: B023 (called within this iteration)
                            {c: d / c for c in curves},
                            d / "stack",
                            phase="cost probe",
                        )
                    else:
                        train_curve(curves["0"], template, x, y, loss_fn, cs, int(s.seed), d / "0", phase="cost probe")  # noqa: B023 (called within this iteration)

                step, epoch, first = _loop_costs(run_curves, B, device, tmp / f"curve{B}x{K}")
                out.first_use += first
                out.per_op[op], out.per_op[Op("curve_epoch", B, K)] = step, epoch
                final = next(iter((tmp / f"curve{B}x{K}" / "r1-0").rglob("curve_final.pt")), None)
                if final is not None:
                    out.curve_bytes = final.stat().st_size // max(1, int(s.bends))
            elif op.kind == "forward":
                m = next(iter(models(1).values())).eval()
                n = data.n_train
                evaluate(m, data.x_train, data.y_train, loss_fn)  # first use
                reps = 1
                t = _timed(lambda: evaluate(m, data.x_train, data.y_train, loss_fn), device)  # noqa: B023 (called within this iteration)
                if t < _target_s():
                    reps = int(min(50, math.ceil(_target_s() / max(t, 1e-6))))
                    t = _timed(lambda: [evaluate(m, data.x_train, data.y_train, loss_fn) for _ in range(reps)], device)  # noqa: B023 (called within this iteration)
                out.per_op[op] = t / (reps * n)
            elif op.kind == "hvp":
                out.per_op[op] = _probe_hvp(cfg, data, op.batch, loss_fn, models(1), device)
        out.per_op[Op("overhead")] = _probe_overhead(cfg, data, device)
        _probe_tables(cfg, work, tmp, out)
    out.seconds = time.perf_counter() - t_start
    return out


def _probe_hvp(cfg: Any, data: Any, samples: int, loss_fn: Any, ms: dict[int, Any], device: Any) -> float:
    """Seconds per sample of one Hessian-vector product of the cell's model on ``samples`` samples, with the
    ``hessian`` family's operator settings."""
    import torch

    from landscape.curvature import HessianOperator
    from landscape.metrics.hessian import CACHE_GRAPH_MAX_PARAMS

    s = cfg.metrics.hessian
    model = next(iter(ms.values())).eval()
    x, y = _subset(data, samples)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cache = {"on": True, "off": False}.get(str(s.cache_graph), n_params <= CACHE_GRAPH_MAX_PARAMS)
    bs = "auto" if s.batch_size is None else int(s.batch_size)
    op = HessianOperator(
        model,
        loss_fn,
        (x, y),
        batch_size=bs,
        dtype=getattr(torch, str(s.dtype)),
        max_block=int(s.max_block),
        cache_graph=cache,
    )
    g = torch.Generator().manual_seed(int(s.seed))
    v = torch.randn(op.shape[0], generator=g, dtype=op.dtype).to(op.device)
    op.matvec(v)  # first use (graphs)
    t = _timed(lambda: op.matvec(v), device)
    reps = int(min(50, max(2, math.ceil(_target_s() / max(t, 1e-6)))))
    t = _timed(lambda: [op.matvec(v) for _ in range(reps)], device)
    return t / (reps * samples)


def _probe_overhead(cfg: Any, data: Any, device: Any) -> float:
    """Seconds to load the cell's data and build its models (the start of every cell)."""
    from landscape.data import load_data
    from landscape.models import build_model

    t0 = time.perf_counter()
    load_data(cfg.data)
    for s in cfg.train.seeds:
        build_model(cfg.model, data.input_shape, data.n_classes, seed=int(s)).to(device)
    return time.perf_counter() - t0


def _probe_tables(cfg: Any, work: CellWork, tmp: Path, out: UnitCosts) -> None:
    """Bytes of the cell's result tables: ``rows`` rows of the real schema holding the config (the biggest
    column) written with the project's writer."""
    from omegaconf import OmegaConf

    from landscape.results import schema_for, write_table

    blob = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
    for table, n in work.rows.items():
        rows = [{"config": blob, "cell_id": "0" * 12, "seed" if table == "models" else "seed_a": i} for i in range(n)]
        out.table_bytes[table] = write_table(tmp / f"{table}.parquet", rows, schema_for(table)).stat().st_size


# ---------------------------------------------------------------------------------------------- estimate
@dataclass
class CellEstimate:
    """Seconds (a Range, per part and in all) and disk bytes (a Range) of one cell; ``device``: cpu | gpu."""

    cell_id: str
    overrides: list[str]
    parts: dict[str, Range]
    disk: Range
    notes: dict[str, str]
    device: str = "cpu"

    @property
    def seconds(self) -> Range:
        return _sum(self.parts.values())


def estimate(
    work: CellWork,
    costs: UnitCosts,
    factors: Mapping[str, float] | None = None,
    cell_id: str = "",
    overrides: Sequence[str] = (),
    device: str = "cpu",
) -> CellEstimate:
    """Seconds of every part (count x seconds per unit, x ``factors[part]`` from finished cells) and disk
    bytes of a cell."""
    factors = factors or {}
    parts = {}
    for part, ops in work.parts.items():
        r = _sum(n * costs.per_op.get(op, 0.0) for op, n in ops.items())
        parts[part] = r * float(factors.get(part, 1.0))
    disk = (
        Range.exact(work.models * costs.model_bytes + sum(costs.table_bytes.values()))
        + work.curve_files * costs.curve_bytes
    )
    return CellEstimate(cell_id, list(overrides), parts, disk, dict(work.notes), device)


# --------------------------------------------------------------------------------------- rows calibration
def _measured_parts(models: Any, pairs: Any) -> dict[str, float]:
    """Seconds each part of one finished cell took, from its rows (``models``/``pairs`` DataFrames)."""
    out: dict[str, float] = {}
    t = models["training.seconds"].astype(float)
    vec = (
        bool(models["training.vectorized"].fillna(False).astype(bool).all())
        if "training.vectorized" in models
        else False
    )
    out["train"] = float(t.max() if vec else t.sum())  # a stack's rows each hold the stack's time
    if "sharpness.seconds" in models and models["sharpness.seconds"].notna().any():
        # measured inside the seeds' training runs: its seconds are part of training.seconds
        out["sharpness"] = float(models["sharpness.seconds"].astype(float).fillna(0).sum())
        out["train"] = max(0.0, out["train"] - out["sharpness"])
    for fam, col, frame in (
        ("hessian", "hessian.seconds", models),
        ("surfaces", "surfaces.seconds", models),
        ("projection_trace", "projection_trace.seconds", models),
        ("jump_retrain", "jump_retrain.seconds", models),
        ("cka", "cka.seconds", pairs),
    ):
        if frame is not None and col in frame and frame[col].notna().any():
            out[fam] = float(frame[col].astype(float).fillna(0).sum())
    if (
        pairs is not None
        and "connectivity.curve_seconds" in pairs
        and pairs["connectivity.curve_seconds"].notna().any()
    ):
        out["connectivity"] = sum(  # curves, lines, the alignment and its line, the aligned curves
            float(pairs[c].astype(float).fillna(0).sum())
            for c in (
                "connectivity.curve_seconds",
                "connectivity.line_seconds",
                "connectivity.align_seconds",
                "connectivity.curve_aligned_seconds",
            )
            if c in pairs
        )
    total = float(models["seconds"].astype(float).max())
    out["overhead"] = max(0.0, total - sum(out.values()))
    return out


def _realised(models: Any, pairs: Any) -> dict[str, Any]:
    """What a finished cell did (for ``cell_work``'s ``realised``): Hessian products per seed, stages per pair."""
    out: dict[str, Any] = {}
    if "hessian.n_matvecs" in models and models["hessian.n_matvecs"].notna().any():
        out["hessian_products"] = {
            int(s): int(k)
            for s, k in zip(models["seed"], models["hessian.n_matvecs"], strict=True)
            if k is not None and k == k
        }
    if pairs is not None and "connectivity.budgets" in pairs:
        out["stages"] = {
            f"{int(a)}-{int(b)}": len(list(bs))
            for a, b, bs in zip(pairs["seed_a"], pairs["seed_b"], pairs["connectivity.budgets"], strict=True)
            if bs is not None
        }
    return out


def finished_cells(sweep_dir: str | Path) -> list[tuple[str, Any, Any, Any]]:
    """``(cell_id, config, models rows, pairs rows or None)`` of every cell of the sweep with served rows."""
    from omegaconf import OmegaConf

    from landscape.results import load

    try:
        models = load(sweep_dir, "models")
    except Exception:  # noqa: BLE001 - no rows (or none readable): nothing to calibrate with
        return []
    if models is None or len(models) == 0:
        return []
    try:
        pairs = load(sweep_dir, "pairs")
    except Exception:  # noqa: BLE001 - no readable pairs rows: the estimate goes without them
        pairs = None
    out = []
    for cid, m in models.groupby("cell_id", sort=True):
        if "status" in m and not (m["status"] == "done").all():
            continue
        cfg = OmegaConf.create(json.loads(m["config"].iloc[-1]))
        p = pairs[pairs["cell_id"] == cid] if pairs is not None and len(pairs) else None
        out.append((str(cid), cfg, m, p if p is not None and len(p) else None))
    return out


def first_in_worker(sweep_dir: str | Path) -> set[str]:
    """Ids of the cells that were the first their worker process ran (by host, pid and start time in their
    status files): their seconds hold the process's start-up."""
    from landscape import sweepdir
    from landscape.cell import CellDir

    first: dict[tuple[Any, Any], tuple[float, str]] = {}
    for d in sweepdir.cell_dirs(sweep_dir):
        try:
            st = CellDir(sweep_dir, d.name).read_status()
        except Exception:  # noqa: BLE001 - a damaged status: not known
            continue
        if st is None or st.pid is None or st.started_at is None:
            continue
        key = (st.host, st.pid)
        if key not in first or st.started_at < first[key][0]:
            first[key] = (float(st.started_at), d.name)
    return {cid for _, cid in first.values()}


def calibrate_from_rows(
    sweep_dir: str | Path, prober: "Prober", limit: int = CALIBRATION_CELLS
) -> tuple[dict[str, float], list[str]]:
    """``({part: measured / estimated}, calibration cell ids)`` over up to ``limit`` finished cells of the sweep
    (spread over their model sizes): each is probed, its work counted as it happened (stages run, products), and
    its parts' measured seconds divided by the probe's estimate. Parts no finished cell measured are absent."""
    cells = finished_cells(sweep_dir)
    if not cells:
        return {}, []
    cells.sort(key=lambda c: (float(c[2]["model.n_params"].iloc[0]) * float(c[2]["train.batch_size"].iloc[0]), c[0]))
    if len(cells) > limit:
        cells = [cells[round(i * (len(cells) - 1) / (limit - 1))] for i in range(limit)] if limit > 1 else cells[:1]
    measured: dict[str, float] = {}
    estimated: dict[str, float] = {}
    used = []
    firsts = first_in_worker(sweep_dir)
    for cid, cfg, m, p in cells:
        try:
            cfg.train.seeds = sorted(int(s) for s in m["seed"])  # the seeds the rows hold
            work, costs = prober.work_and_costs(cfg, realised=_realised(m, p))
        except Exception as exc:  # noqa: BLE001 - a cell that cannot be probed is left out
            log.warning("cost: finished cell %s not used for calibration: %s", cid, exc)
            continue
        est = estimate(work, costs)
        used.append(cid)
        parts = _measured_parts(m, p)
        if cid in firsts:  # its worker's start-up is not the cell's (the total line names it per worker)
            parts["overhead"] = max(0.0, parts["overhead"] - prober.startup)
        for part, sec in parts.items():
            got = (
                sum(est.parts[q].low for q in REST if q in est.parts)
                if part == "overhead"
                else est.parts[part].low
                if part in est.parts
                else None
            )
            if got is not None:
                measured[part] = measured.get(part, 0.0) + sec
                estimated[part] = estimated.get(part, 0.0) + got
    factors = {k: measured[k] / estimated[k] for k in measured if estimated.get(k, 0) > 0}
    # the cell's seconds less its measured parts: loading, building, the training metrics, l2, writing
    for part in REST:
        if "overhead" in factors:
            factors[part] = factors["overhead"]
    return factors, used


# ------------------------------------------------------------------------------------------------ driver
class Prober:
    """Work and unit costs of cells, with their data loaded once per data config and probes cached by what
    they time (model, batch, stack)."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._costs: dict[str, UnitCosts] = {}
        self.seconds = 0.0
        self.startup = 0.0  # first-use seconds of this process (the first probes'): what a new worker pays once

    def data(self, cfg: Any) -> Any:
        from omegaconf import OmegaConf

        from landscape.data import load_data
        from landscape.devices import resolve_device

        key = json.dumps([OmegaConf.to_container(cfg.data, resolve=True), str(cfg.device)], sort_keys=True)
        if key not in self._data:
            self._data[key] = load_data(cfg.data).to(resolve_device(str(cfg.device)))
        return self._data[key]

    def work_and_costs(self, cfg: Any, realised: Mapping[str, Any] | None = None) -> tuple[CellWork, UnitCosts]:
        from omegaconf import OmegaConf

        from landscape.models import build_model

        t0 = time.perf_counter()
        data = self.data(cfg)
        size = DataSize(data.n_train, data.n_test, tuple(data.input_shape), data.n_classes)
        model = build_model(cfg.model, size.input_shape, size.n_classes)
        work = cell_work(cfg, size, model, realised)
        key = json.dumps(
            [OmegaConf.to_container(cfg, resolve=True), sorted(map(repr, work.ops())), sorted(work.rows.items())],
            sort_keys=True,
            default=str,
        )
        if key not in self._costs:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(int(cfg.threads))  # as the job runs
            try:
                self._costs[key] = probe_costs(cfg, data, work)
                self.startup = max(self.startup, self._costs[key].first_use)
            finally:
                torch.set_num_threads(threads)
        self.seconds += time.perf_counter() - t0
        return work, self._costs[key]


@dataclass
class GridEstimate:
    """A grid's estimate: the cells', the factors of the parts from finished cells (``used``: their ids), the
    probes' seconds and ``startup``: the first-use seconds a new worker process pays once (measured by the
    first probes of this process; not in the cells' seconds)."""

    cells: list[CellEstimate]
    factors: dict[str, float]
    used: list[str]
    probe_seconds: float
    startup: float

    @property
    def seconds(self) -> Range:
        return _sum(e.seconds for e in self.cells)

    @property
    def disk(self) -> Range:
        return _sum(e.disk for e in self.cells)


def estimate_cells(
    cells: Sequence[tuple[str, Sequence[str], Any]], sweep_dir: str | Path | None, use_rows: bool = True
) -> GridEstimate:
    """Estimates of ``cells`` (``(cell_id, overrides, config)``), calibrated by the sweep's finished cells when
    ``use_rows`` and there are some (:func:`calibrate_from_rows`), else by the probes alone."""
    from landscape.devices import resolve_device

    prober = Prober()
    factors, used = (
        calibrate_from_rows(sweep_dir, prober)
        if use_rows and sweep_dir is not None and Path(sweep_dir).is_dir()
        else ({}, [])
    )
    out = []
    for cid, overrides, cfg in cells:
        work, costs = prober.work_and_costs(cfg)
        dev = "gpu" if resolve_device(str(cfg.device)).type == "cuda" else "cpu"
        out.append(estimate(work, costs, factors, cid, overrides, dev))
    return GridEstimate(out, factors, used, prober.seconds, prober.startup)


def _fmt_s(r: Range) -> str:
    def one(x: float) -> str:  # 3 significant digits, never an exponent (a '-' separates a range)
        import numpy as np

        return np.format_float_positional(x, precision=3, fractional=False, trim="-") if x < 100 else f"{x:,.0f}"

    return one(r.low) if math.isclose(r.low, r.high, rel_tol=1e-3) else f"{one(r.low)}-{one(r.high)}"


def _fmt_b(x: float) -> str:
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= k:
            return f"{x / k:.3g} {unit}"
    return f"{x:.0f} B"


def format_estimates(grid: GridEstimate) -> str:
    """The dry run's cost table: one line per cell (seconds per part, total, disk), the total and how it was
    calibrated. A ``low-high`` value is a range (the protocol or a Lanczos run may stop early)."""
    estimates, factors, used, probe_s = grid.cells, grid.factors, grid.used, grid.probe_seconds
    if not estimates:
        return "cost estimate: nothing to run"
    kinds = sorted({e.device for e in estimates})
    unit = "GPU s" if kinds == ["gpu"] else "CPU s" if kinds == ["cpu"] else "s (CPU or GPU)"
    parts = [p for p in PARTS if any(p in e.parts and e.parts[p].high > 0 for e in estimates)]
    head = ["cell_id", *parts, f"total {unit}", "disk"]
    rows = [
        [e.cell_id or "-", *[_fmt_s(e.parts.get(p, ZERO)) for p in parts], _fmt_s(e.seconds), _fmt_b(e.disk.high)]
        for e in estimates
    ]
    total = _sum(e.seconds for e in estimates)
    disk = _sum(e.disk for e in estimates)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        f"cost estimate ({unit}; a-b: a range): "
        + (
            f"calibrated by {len(used)} finished cell(s) of the sweep ({', '.join(used)}): measured / probe "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(factors.items()))
            if used
            else "calibrated by a probe of each cell on this machine"
        )
        + f"; probes took {probe_s:.1f} s",
        "  " + "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))),
    ]
    for r in rows:
        lines.append(
            "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    lines.append(
        f"total: {_fmt_s(total)} {unit} over {len(estimates)} cells, disk {_fmt_b(disk.high)}"
        + (
            f"; each worker process also pays {grid.startup:.2g} s once (first use, measured)"
            if grid.startup >= 0.05
            else ""
        )
    )
    notes = sorted({f"{k}: {v}" for e in estimates for k, v in e.notes.items()})
    if any(not e.seconds.exact_value for e in estimates):
        lines.append(
            "ranges: low = every curve stops at its protocol's earliest stage and every Lanczos run at "
            "its fewest products; high = every curve runs to max_budget, every Lanczos run to max_iter"
        )
    lines += [f"  {n}" for n in notes[:6]] + ([f"  ... and {len(notes) - 6} more notes"] if len(notes) > 6 else [])
    lines.append("not counted: logs and metric caches (kB), checkpoints while a run trains (removed at its end)")
    return "\n".join(lines)


def dry_run_estimate(planned: Sequence[Any], compose: Callable[[Sequence[str]], Any], sweep_dir: str | Path) -> str:
    """The cost table of a dry run's planned cells that are not done (``compose(overrides)``: the cell's
    config); ``LANDSCAPE_COST`` (module docstring) chooses the calibration. Never raises: a failure is a line."""
    mode = os.environ.get("LANDSCAPE_COST", "auto")
    if mode == "off":
        return ""
    try:
        cells = [(c.cell_id, c.overrides, compose(c.overrides)) for c in planned if c.state != "done"]
        return format_estimates(estimate_cells(cells, sweep_dir, use_rows=mode != "probe"))
    except Exception as exc:
        log.debug("cost estimate failed", exc_info=True)
        return f"cost estimate failed: {type(exc).__name__}: {exc}"
