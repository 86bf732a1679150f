"""Mode connectivity: Bezier curves between two trained models, their training, and values along paths.

A Bezier curve of degree ``m = bends + 1`` with control points ``P_0 = theta_a``, ``P_1..P_bends`` (trainable)
and ``P_m = theta_b`` is ``theta(t) = sum_i C(m, i) t^i (1 - t)^(m - i) P_i`` for ``t`` in [0, 1]
(``bends = 1``: the quadratic curve of Garipov et al. 2018; ``bends = 0``: the straight line). The endpoints
are the trained parameters themselves and are never trained; ``theta(0)`` and ``theta(1)`` return them
exactly. Only parameters lie on the curve; BatchNorm buffers do not: at every evaluated ``t`` the running
statistics are recomputed on the training inputs for the model at ``theta(t)``.

Training (Garipov et al. 2018): SGD on the middle control points of ``E_t~U(0,1) loss(theta(t))``, one ``t``
drawn per minibatch, with an L2 penalty ``weight_decay / 2 * |theta(t)|^2`` on the point of the curve;
the model is evaluated with ``torch.func.functional_call`` on the parameter dict ``theta(t)``.
The loop is ``landscape.engine``'s: checkpoints (control points, optimizer, generator) make a killed run
resume bitwise, and a curve whose loss blows up ends with ``status = "diverged"``. Several curves of one
architecture train together with :func:`train_curves_together` (one stack, one step for all; each curve's files
as if trained alone).

Scalars along a path sampled at ``t_0 = 0 < ... < t_{T-1} = 1`` (``values`` = training error in percent or
loss):

* mode connectivity (Yang et al. 2021): ``u = argmax_t |v(t) - (v(0) + v(1)) / 2|``,
  ``mc = (v(0) + v(1)) / 2 - v(u)`` (negative: a barrier; positive: the path finds lower values than the
  endpoints; zero: flat); the argmax runs over the interior points by default (see :func:`mode_connectivity`
  for the endpoint options). This one function serves the ``connectivity`` family, the import of the
  published results (``analysis/taxonomy2021.py``) and the fitting of the phase-rule thresholds, all on the
  paper's grid ``t = 0, .25, .5, .75, 1`` by default;
* barrier: ``max_t v(t) - ((1 - t) v(0) + t v(1))`` (>= 0 on a grid containing the endpoints).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape.engine import (
    DamagedCheckpoint,
    MemberResult,
    Plan,
    ShuffledTask,
    StepOut,
    StepTask,
    atomic_torch_save,
    batch_slice,
    epoch_permutation,
    load_checkpoint,
    lr_factor,
    run,
    set_aside,
    steps_per_epoch,
)
from landscape.params import (
    ParamLayout,
    functional_forward,
    load_parameters,
    trainable_parameters,  # noqa: F401 - re-exported (metrics.connectivity, tests)
)
from landscape.training import LossFn, evaluate, recompute_bn

log = logging.getLogger(__name__)

INITS = ("line", "random")
SCHEDULES = ("constant", "cosine", "garipov")
CURVE_CHECKPOINT = "curve_checkpoint.pt"
CURVE_FINAL = "curve_final.pt"

Params = dict[str, Tensor]


def bernstein(degree: int, t: float, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
    """Bernstein basis ``[degree + 1]``: ``C(degree, i) t^i (1 - t)^(degree - i)``."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t={t!r}: expected a curve parameter in [0, 1]")
    w = [math.comb(degree, i) * t**i * (1.0 - t) ** (degree - i) for i in range(degree + 1)]
    return torch.tensor(w, dtype=dtype, device=device)


class BezierCurve:
    """Bezier curve in parameter space between two parameter dicts, with ``bends`` trainable middle points.

    ``start``/``end``: ``{name: tensor}`` (detached copies are kept as given: ``theta(0)``/``theta(1)`` return
    them bitwise); ``middle``: ``{name: tensor [bends, *shape]}``. All parameters share one dtype and device.
    Internally the control points are flat rows: the fixed ends ``[2, P]`` and the trainable middle
    ``middle_flat [bends, P]`` (one leaf tensor), so ``theta(t)`` costs two small matrix products.
    """

    def __init__(self, start: Mapping[str, Tensor], end: Mapping[str, Tensor], middle: Mapping[str, Tensor]):
        if set(start) != set(end) or set(start) != set(middle) or not start:
            raise ValueError("start, end and middle control points must have the same (non-empty) parameter names")
        self.names = list(start)
        self.start = {n: start[n].detach().clone() for n in self.names}
        self.end = {n: end[n].detach().clone() for n in self.names}
        for n in self.names:
            if self.start[n].shape != self.end[n].shape or middle[n].shape[1:] != self.start[n].shape:
                raise ValueError(f"parameter {n!r}: control points of different shapes")
        dtypes = {t.dtype for t in self.start.values()}
        if len(dtypes) != 1:
            raise ValueError(f"parameters of several dtypes {sorted(map(str, dtypes))}: a curve needs one dtype")
        self.layout = ParamLayout.of(self.start)
        self.shapes = [self.start[n].shape for n in self.names]
        self.numels = self.layout.numels
        self.bends = int(middle[self.names[0]].shape[0])
        self._ends = torch.stack([self.layout.flatten(self.start), self.layout.flatten(self.end)])
        self.middle_flat = torch.cat(
            [
                middle[n].detach().reshape(self.bends, k).to(self._ends)
                for n, k in zip(self.names, self.numels, strict=True)
            ],
            dim=1,
        ).requires_grad_(self.bends > 0)

    @classmethod
    def through_line(cls, start: Mapping[str, Tensor], end: Mapping[str, Tensor], bends: int) -> "BezierCurve":
        """Middle points evenly spaced on the segment (``P_i`` at ``i / (bends + 1)``): ``theta(t)`` is then
        exactly the straight line ``(1 - t) theta_a + t theta_b``."""
        if bends < 0:
            raise ValueError(f"bends={bends}: expected a number of middle control points >= 0")
        fr = [i / (bends + 1) for i in range(1, bends + 1)]
        middle = {
            n: torch.stack([(1.0 - f) * start[n] + f * end[n] for f in fr]) if bends else start[n][None][:0]
            for n in start
        }
        return cls(start, end, middle)

    @classmethod
    def from_points(
        cls, start: Mapping[str, Tensor], end: Mapping[str, Tensor], points: Sequence[Mapping[str, Tensor]]
    ) -> "BezierCurve":
        """Middle control points given as a list of parameter dicts (e.g. freshly initialised models)."""
        middle = {n: torch.stack([p[n].detach() for p in points]) for n in start}
        return cls(start, end, middle)

    @property
    def middle(self) -> Params:
        """``{name: [bends, *shape]}`` views of the middle control points."""
        return self.layout.unflatten_rows(self.middle_flat)

    def trainable(self) -> list[Tensor]:
        return [self.middle_flat] if self.bends else []

    def point_flat(self, t: float) -> Tensor:
        """``theta(t)`` as one flat vector ``[P]`` (differentiable in the middle points)."""
        w = bernstein(self.bends + 1, float(t), dtype=self._ends.dtype, device=self._ends.device)
        theta = w[[0, -1]] @ self._ends
        if self.bends:
            theta = theta + w[1:-1] @ self.middle_flat
        return theta

    def unflatten(self, flat: Tensor) -> Params:
        """A flat vector ``[P]`` as a ``{name: tensor}`` dict of views."""
        return self.layout.unflatten(flat)

    def point(self, t: float) -> Params:
        """``theta(t)`` as a parameter dict (differentiable in the middle points; ends returned exactly)."""
        if t == 0.0:
            return dict(self.start)
        if t == 1.0:
            return dict(self.end)
        return self.unflatten(self.point_flat(t))

    def state(self) -> Tensor:
        return self.middle_flat.detach().clone()

    def load_state(self, middle_flat: Tensor) -> None:
        with torch.no_grad():
            self.middle_flat.copy_(middle_flat)


# --------------------------------------------------------------------------------------------- training
@dataclass
class CurveSettings:
    """Curve-training hyper-parameters. ``schedule``: ``constant``, ``cosine`` (to 0 over the epochs) or
    ``garipov`` (1 for the first half, linear down to 0.01 at 90 %, then 0.01; Garipov et al. 2018)."""

    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    schedule: str = "cosine"
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.epochs < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"epochs={self.epochs}, batch_size={self.batch_size}, checkpoint_every={self.checkpoint_every}: "
                "expected epochs >= 0, batch_size >= 1, checkpoint_every >= 1"
            )


@dataclass
class CurveTrainResult:
    """``history``: mean training-batch loss (without the penalty) per epoch; ``epochs_run``: epochs trained
    by this call (0 when loaded finished from ``workdir``); ``status``: ``done`` or ``diverged`` (the engine's
    divergence check: a batch loss not finite or far above the first one, or middle points not finite; the
    curve's values are then meaningless), ``reason`` says why."""

    epochs: int
    steps: int
    seconds: float
    history: list[float] = field(default_factory=list)
    epochs_run: int = 0
    resumed_from_epoch: int = 0
    status: str = "done"
    reason: str | None = None

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"


def schedule_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier of ``epoch`` (0-based) of ``epochs`` (``engine.lr_factor``)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: expected one of {', '.join(SCHEDULES)}")
    return lr_factor(schedule, epoch, epochs)


class _CurveTask(ShuffledTask):
    """SGD on the middle control points: per batch one ``t ~ U(0, 1)``, the loss at ``theta(t)`` plus the
    penalty ``weight_decay / 2 * |theta(t)|^2``; per epoch a permutation, then the batch's ``t`` values."""

    rng_name = "curve"

    def __init__(
        self,
        curve: BezierCurve,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        loss_fn: LossFn,
        s: CurveSettings,
        seed: int,
        final_path: Path | None,
        meta: dict,
    ):
        self.curve, self.model, self.x, self.y, self.loss_fn, self.s = curve, model, x, y, loss_fn, s
        self.final_path, self.meta = final_path, meta
        self.members = ["curve"]
        self.bs = min(s.batch_size, x.shape[0])
        self.per_epoch = steps_per_epoch(x.shape[0], self.bs)
        params = curve.trainable()
        self.opt = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum) if params else None
        self.seed_batches(seed)
        self.ts = torch.empty(0, dtype=torch.float64)
        self.total: Tensor | None = None
        self.result: CurveTrainResult | None = None

    def begin_epoch(self, epoch: int) -> float:
        lr = self.s.lr * schedule_factor(self.s.schedule, epoch, self.s.epochs)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.shuffle(self.x.shape[0], self.x.device)
        self.ts = torch.rand(self.per_epoch, generator=self.gen, dtype=torch.float64)
        return lr

    def forward(self, epoch: int, batch: int, accuracy: bool) -> StepOut:
        idx = batch_slice(self.perm, batch, self.bs)
        flat = self.curve.point_flat(float(self.ts[batch]))
        out = functional_forward(self.model, self.curve.unflatten(flat), self.x[idx])
        yb = self.y[idx]
        loss = self.loss_fn(out, yb)
        self.total = loss + 0.5 * self.s.weight_decay * flat.pow(2).sum() if self.s.weight_decay else loss
        acc = None
        if accuracy and out.dim() == 2 and out.shape[0] == yb.shape[0] and not yb.is_floating_point():
            acc = (out.detach().argmax(dim=-1) == yb).float().mean().reshape(1)
        return StepOut(loss.reshape(1), acc)

    def update(self, out: StepOut) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.total.backward()
        self.opt.step()
        self.total = None

    def nonfinite_rows(self) -> list[int]:
        return [] if bool(torch.isfinite(self.curve.middle_flat.detach()).all()) else [0]

    def finish(self, row: int, r: MemberResult) -> None:
        self.result = CurveTrainResult(
            epochs=r.epochs,
            steps=r.steps,
            seconds=r.seconds,
            history=r.history,
            epochs_run=r.epochs - r.resumed_from_epoch,
            resumed_from_epoch=r.resumed_from_epoch,
            status=r.status,
            reason=r.reason,
        )
        if self.final_path is not None:
            atomic_torch_save(
                {"meta": self.meta, "middle": self.curve.state(), "result": asdict(self.result)},
                self.final_path,
                checksum=True,
            )

    def state_dict(self) -> dict:
        return {"middle": self.curve.state(), "optimizer": None if self.opt is None else self.opt.state_dict()}

    def load_state_dict(self, state: dict, members: list) -> bool:
        self.curve.load_state(state["middle"])
        if self.opt is not None:
            self.opt.load_state_dict(state["optimizer"])
        return True


def train_curve(
    curve: BezierCurve,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    settings: CurveSettings,
    seed: int,
    workdir: Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    phase: str = "curve",
) -> CurveTrainResult:
    """Train the middle points of ``curve`` in place on ``(x, y)`` (``landscape.engine``); ``model`` is the
    architecture template (its parameters are not used; its buffers are, and BatchNorm runs on batch statistics).

    With ``workdir``, checkpoints go to ``curve_checkpoint.pt`` every ``checkpoint_every`` epochs (and at a stop
    request: ``should_stop()`` is polled after every step) and the result to ``curve_final.pt``; a call finding
    the final file loads it and trains nothing, one finding a checkpoint resumes from it (bitwise as if
    uninterrupted). ``progress(epoch, epochs, loss)`` runs after each epoch (after its checkpoint). ``phase``
    names the work in progress lines (e.g. ``curve 0-1``). A diverged curve ends early with
    ``status = "diverged"`` (see ``CurveTrainResult``).
    """
    s = settings
    meta = curve_meta(curve, s, seed)
    final_path = workdir / CURVE_FINAL if workdir is not None else None
    ckpt_path = workdir / CURVE_CHECKPOINT if workdir is not None else None
    if workdir is not None:
        done = load_finished_curve(curve, meta, workdir, x.device)
        if done is not None:
            return done

    task = _CurveTask(curve, model, x, y, loss_fn, s, seed, final_path, meta)
    plan = Plan(
        epochs=s.epochs if task.opt is not None else 0, per_epoch=task.per_epoch, checkpoint_every=s.checkpoint_every
    )
    was_training = model.training
    model.train()
    try:
        run(task, plan, phase, ckpt_path, meta=meta, should_stop=should_stop, on_epoch=progress, map_location=x.device)
    finally:
        model.train(was_training)
    assert task.result is not None
    return task.result


def curve_meta(curve: BezierCurve, settings: CurveSettings, seed: int) -> dict:
    """What identifies a curve training run (kept in its checkpoints and final file): the settings, the batch-order
    seed, the number of bends and a fingerprint of the endpoints and of the initial middle points (float64 sums)."""
    fingerprint = [float(curve._ends.double().sum()), float(curve.middle_flat.detach().double().sum())]
    return {"settings": asdict(settings), "seed": int(seed), "bends": curve.bends, "fingerprint": fingerprint}


def load_finished_curve(
    curve: BezierCurve, meta: dict, workdir: Path, device: torch.device | str | None
) -> CurveTrainResult | None:
    """The result of a finished run of ``meta`` in ``workdir`` (its middle points loaded into ``curve``), or None.
    A final file of another run is ignored with a warning (and the stale checkpoint beside it removed); a damaged
    one is set aside."""
    workdir.mkdir(parents=True, exist_ok=True)
    final_path, state = workdir / CURVE_FINAL, None
    if final_path.exists():
        try:
            state = load_checkpoint(final_path, map_location=device)
        except DamagedCheckpoint as exc:
            set_aside(final_path, exc)
    if state is None:
        return None
    if state["meta"] == meta:
        curve.load_state(state["middle"])
        return CurveTrainResult(**{**state["result"], "epochs_run": 0})
    log.warning("curve in %s was trained with other settings; retraining", workdir)
    (workdir / CURVE_CHECKPOINT).unlink(missing_ok=True)
    return None


class _CurveStackTask(StepTask):
    """K curves of one architecture trained together (members: their names, in stack-row order).

    Each curve keeps what it has when trained alone by :func:`train_curve`: its batch order and its ``t`` values
    (its own generator seeded with its seed, drawn in the same order: one permutation, then the epoch's ``t``
    values), its SGD momentum and the epoch's learning rate (one schedule: every curve of a stack trains the same
    epochs). The control points are stacked (ends ``[K, 2, P]``, middle ``[K, bends, P]``), ``theta_k(t_k)`` is one
    batched product, the model runs on the stack through ``vectorized.stacked_forward`` and one reverse pass over
    the sum of the curves' losses gives each curve its own gradient (curves share no parameter). BatchNorm (CNN,
    ResNet18) normalises each curve's batch by its own batch statistics, as the template in training mode does in
    :func:`train_curve`; each curve updates its own copy of the running statistics (not checkpointed: they never
    enter a training loss, and :func:`evaluate_path` recomputes them at every ``t``), the template's are left as
    they were. Equal to serial training within float rounding, not bitwise (the batched kernels sum in another
    order)."""

    def __init__(
        self,
        curves: dict[str, BezierCurve],
        names: list[str],
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        loss_fn: LossFn,
        s: CurveSettings,
        seeds: dict[str, int],
        metas: dict[str, dict],
        workdirs: dict[str, Path],
    ):
        from landscape.vectorized import stacked_buffers, stacked_forward

        self.curves, self.x, self.y, self.loss_fn, self.s = curves, x, y, loss_fn, s
        self.metas, self.workdirs = metas, workdirs
        self.members = list(names)
        first = curves[names[0]]
        self.layout, self.bends = first.layout, first.bends
        self.kind, self.forward_fn = stacked_forward(model)
        # BatchNorm: one copy of the template's running statistics per curve, updated by each step's batch as the
        # template's are in train_curve; training mode normalises by batch statistics, so they never enter a loss
        self.bn_buffers = stacked_buffers([model] * len(names))
        self.bs = min(s.batch_size, x.shape[0])
        self.per_epoch = steps_per_epoch(x.shape[0], self.bs)
        self.ends = torch.stack([curves[n]._ends for n in names])
        self.middle = torch.stack([curves[n].middle_flat.detach() for n in names]).clone().requires_grad_(True)
        self.buffers: list[Tensor] | None = None  # SGD momentum, stacked like ``middle``
        self.gens = {n: torch.Generator().manual_seed(int(seeds[n])) for n in names}
        self.perms = torch.empty(0, dtype=torch.long)
        self.ts = torch.empty(0, dtype=torch.float64)
        self.lr = s.lr
        self.total: Tensor | None = None
        self.results: dict[str, CurveTrainResult] = {}
        self.pending: list[str] = []
        self.size = len(names)

    def rng_state(self) -> dict[str, Tensor]:
        return {n: self.gens[n].get_state() for n in self.members}

    def set_rng_state(self, state: dict[str, Tensor]) -> None:
        for n in self.members:
            self.gens[n].set_state(state[n])

    def begin_epoch(self, epoch: int) -> float:
        self.lr = self.s.lr * schedule_factor(self.s.schedule, epoch, self.s.epochs)
        perms, ts = [], []
        for n in self.members:  # per curve: its permutation, then its t values (train_curve's order)
            perms.append(epoch_permutation(self.x.shape[0], self.gens[n]))
            ts.append(torch.rand(self.per_epoch, generator=self.gens[n], dtype=torch.float64))
        self.perms = torch.stack(perms).to(self.x.device)
        self.ts = torch.stack(ts, dim=1)  # [per_epoch, K]
        return self.lr

    def forward(self, epoch: int, batch: int, accuracy: bool) -> StepOut:
        idx = batch_slice(self.perms, batch, self.bs)  # [K, B]
        degree = self.bends + 1
        w = torch.stack(
            [
                bernstein(degree, float(t), dtype=self.ends.dtype, device=self.ends.device)
                for t in self.ts[batch].tolist()
            ]
        )  # [K, degree + 1]
        theta = torch.bmm(w[:, [0, -1]].unsqueeze(1), self.ends)
        if self.bends:
            theta = theta + torch.bmm(w[:, 1:-1].unsqueeze(1), self.middle)
        theta = theta.squeeze(1)  # [K, P]
        logits = self.forward_fn(self.layout.unflatten_rows(theta), self.x[idx], self.bn_buffers)
        yb = self.y[idx]
        losses = torch.stack([self.loss_fn(logits[k], yb[k]) for k in range(len(self.members))])
        total = losses.sum()
        if self.s.weight_decay:
            total = total + 0.5 * self.s.weight_decay * theta.pow(2).sum()
        self.total = total
        acc = None
        if accuracy and logits.dim() == 3 and not yb.is_floating_point():
            acc = (logits.detach().argmax(dim=-1) == yb).float().mean(dim=1)
        return StepOut(losses, acc)

    def update(self, out: StepOut) -> None:
        from landscape.vectorized import sgd_step_

        (grad,) = torch.autograd.grad(self.total, [self.middle])
        self.buffers = sgd_step_([self.middle], [grad], self.buffers, self.lr, self.s.momentum, 0.0)
        self.total = None

    def drop(self, rows: list[int]) -> None:
        keep = torch.tensor([k for k in range(len(self.members)) if k not in rows], dtype=torch.long)
        self.ends = self.ends.index_select(0, keep.to(self.ends.device))
        self.middle = self.middle.detach().index_select(0, keep.to(self.ends.device)).requires_grad_(True)
        self.bn_buffers = {k: v.index_select(0, keep.to(v.device)) for k, v in self.bn_buffers.items()}
        if self.buffers is not None:
            self.buffers = [b.index_select(0, keep.to(b.device)) for b in self.buffers]
        if self.perms.numel():
            self.perms = self.perms.index_select(0, keep.to(self.perms.device))
            self.ts = self.ts.index_select(1, keep)
        self.members = [self.members[k] for k in keep.tolist()]

    def nonfinite_rows(self) -> list[int]:
        ok = torch.isfinite(self.middle.detach()).flatten(1).all(dim=1)
        return [k for k, good in enumerate(ok.tolist()) if not good]

    def finish(self, row: int, r: MemberResult) -> None:
        n = self.members[row]
        self.curves[n].load_state(self.middle[row].detach())
        # seconds: the curve's share of the stack's training time (the stack's seconds over its curves)
        self.results[n] = CurveTrainResult(
            epochs=r.epochs,
            steps=r.steps,
            seconds=r.seconds / self.size,
            history=r.history,
            epochs_run=r.epochs - r.resumed_from_epoch,
            resumed_from_epoch=r.resumed_from_epoch,
            status=r.status,
            reason=r.reason,
        )
        self.pending.append(n)

    def commit(self) -> None:
        """Write each finished curve's ``curve_final.pt`` as :func:`train_curve` does (a later serial call loads it)."""
        for n in self.pending:
            atomic_torch_save(
                {"meta": self.metas[n], "middle": self.curves[n].state(), "result": asdict(self.results[n])},
                self.workdirs[n] / CURVE_FINAL,
                checksum=True,
            )
        self.pending = []

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "metas": {n: self.metas[n] for n in self.members},
            "middle": self.middle.detach(),
            "buffers": self.buffers,
        }

    def load_state_dict(self, state: dict, members: list) -> bool:
        if state["kind"] != self.kind or any(state["metas"].get(n) != self.metas[n] for n in self.members):
            return False
        rows = torch.tensor([members.index(n) for n in self.members], dtype=torch.long)
        self.middle = state["middle"].index_select(0, rows.to(state["middle"].device)).clone().requires_grad_(True)
        if state["buffers"] is not None:
            self.buffers = [b.index_select(0, rows.to(b.device)).clone() for b in state["buffers"]]
        return True


def train_curves_together(
    curves: Mapping[str, BezierCurve],
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    settings: CurveSettings,
    seeds: Mapping[str, int],
    workdirs: Mapping[str, Path],
    group_dir: Path,
    should_stop: Callable[[], bool] | None = None,
    phase: str = "curves",
) -> dict[str, CurveTrainResult]:
    """Train the middle points of several ``curves`` (name -> curve between two models of one architecture) in
    place, together: what :func:`train_curve` does for each (``seeds[name]``, files in ``workdirs[name]``), as
    one stack (``_CurveStackTask``) in ``landscape.engine``, checkpointing to ``group_dir/curve_checkpoint.pt``.

    A curve whose final file of this run exists is loaded, not trained; one with a checkpoint of its own (a
    serial run that was stopped) is resumed by :func:`train_curve`; the rest train stacked and each gets the
    ``curve_final.pt`` a serial run would write, so a later :func:`train_curve` of the same curve, settings and
    seed loads it. ``model``: the architecture template, with no buffers but BatchNorm running statistics
    (``vectorized.unsupported_reason``). Returns name -> result."""
    from landscape.vectorized import unsupported_reason

    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"cannot train curves of {type(model).__name__} together: {reason}")
    results: dict[str, CurveTrainResult] = {}
    metas = {n: curve_meta(c, settings, seeds[n]) for n, c in curves.items()}
    stack: list[str] = []
    for n, c in curves.items():
        done = load_finished_curve(c, metas[n], workdirs[n], x.device)
        if done is not None:
            results[n] = done
        elif (workdirs[n] / CURVE_CHECKPOINT).exists() or c.bends == 0 or settings.epochs == 0:
            results[n] = train_curve(
                c, model, x, y, loss_fn, settings, seeds[n], workdirs[n], should_stop=should_stop, phase=f"{phase}: {n}"
            )
        else:
            stack.append(n)
    if not stack:
        return results
    task = _CurveStackTask(dict(curves), stack, model, x, y, loss_fn, settings, dict(seeds), metas, dict(workdirs))
    group_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.train()
    try:
        run(
            task,
            Plan(epochs=settings.epochs, per_epoch=task.per_epoch, checkpoint_every=settings.checkpoint_every),
            phase,
            group_dir / CURVE_CHECKPOINT,
            should_stop=should_stop,
            map_location=x.device,
        )
    finally:
        model.train(was_training)
    results.update(task.results)
    return results


# ------------------------------------------------------------------------------------------- evaluation
@dataclass
class PathValues:
    """Values along a path at ``t`` (lists of equal length). Errors in percent; test lists empty if skipped."""

    t: list[float]
    train_loss: list[float]
    train_err: list[float]
    test_loss: list[float] = field(default_factory=list)
    test_err: list[float] = field(default_factory=list)


@torch.no_grad()
def evaluate_path(
    point: Callable[[float], Mapping[str, Tensor]],
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    loss_fn: LossFn,
    ts: Sequence[float],
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    batch_size: int = 2048,
    train: bool = True,
) -> PathValues:
    """Loss and error (percent) of the model at ``point(t)`` for each ``t`` in ``ts``, on the training set
    (unless ``train`` is False: the training lists stay empty) and on the test set if given. ``model`` is a
    template whose parameters are overwritten; its BatchNorm statistics are recomputed on ``x_train`` at every
    ``t`` either way."""
    out = PathValues(t=[float(t) for t in ts], train_loss=[], train_err=[])
    for t in ts:
        load_parameters(model, point(float(t)))
        recompute_bn(model, x_train)
        if train:
            loss, acc = evaluate(model, x_train, y_train, loss_fn, batch_size)
            out.train_loss.append(loss)
            out.train_err.append(100.0 * (1.0 - acc))
        if x_test is not None and y_test is not None:
            loss, acc = evaluate(model, x_test, y_test, loss_fn, batch_size)
            out.test_loss.append(loss)
            out.test_err.append(100.0 * (1.0 - acc))
    model.eval()
    return out


def t_grid(n_points: int) -> list[float]:
    """``n_points`` evenly spaced values of t in [0, 1], both ends included (exactly 0.0 and 1.0)."""
    if n_points < 2:
        raise ValueError(f"n_points={n_points}: expected at least 2 points (the two endpoints)")
    return [i / (n_points - 1) for i in range(n_points)]


# ------------------------------------------------------------------------------ the convergence protocol
def stage_epochs(first: int, budget: float, max_budget: float) -> list[int]:
    """Cumulative curve epochs at the end of each stage of the convergence protocol: ``first`` (the first
    stage's epochs, the budget ``budget``), then doubling, ``first * 2^k``, while the budget ``budget * 2^k``
    stays within ``max_budget`` (budgets in multiples of the endpoints' SGD steps). ``[0]`` for ``first = 0``."""
    if first <= 0:
        return [0]
    if not (budget > 0 and max_budget >= budget):
        raise ValueError(f"budget={budget!r}, max_budget={max_budget!r}: expected 0 < budget <= max_budget")
    n = 1 + int(math.floor(math.log2(max_budget / budget) + 1e-9))
    return [first * 2**k for k in range(n)]


@dataclass(frozen=True)
class StageDecision:
    """What the protocol does after a stage. ``stop``: train no further. ``converged``: mc moved by at most the
    tolerance over each of the last doublings. ``bound``: for a value that is still moving, ``"lower"`` (it rose
    by more than the tolerance over the last doublings: more curve training is expected to raise it further, so
    it is a lower bound of the converged value) or ``"upper"`` (it fell); None when converged or when it wobbles
    without a direction. ``reason``: ``converged``, ``decided`` (still moving, but away from every phase
    threshold: the rule's mc split cannot change), ``max_budget``, ``diverged``, or ``untrained`` (a zero-epoch
    curve)."""

    stop: bool
    converged: bool | None
    bound: str | None
    reason: str | None


def stage_decision(
    mc_by_stage: Sequence[float],
    tol: float,
    decided_below: float,
    decided_above: float,
    last: bool,
    diverged: bool = False,
    stable_doublings: int = 2,
) -> StageDecision:
    """The protocol's rule after a stage, from mc (pp of training error) after every stage so far (each stage
    doubles the budget of the one before).

    Converged when each of the last ``stable_doublings`` changes ``|mc_k - mc_{k-1}|`` is at most ``tol`` (one
    small change is not enough: between stages mc wobbles by a few tenths of a point on digits, so a single
    change under 0.25 pp was followed by one of 0.63 pp on the demo's batch-256 row). Otherwise the change over
    those doublings (fewer at the start) gives the direction: more than ``+tol`` is a lower bound, less than
    ``-tol`` an upper bound (the last change must not reverse it), else no direction. The protocol stops early, once
    the window is complete, when such a bound already lies outside
    ``[decided_below, decided_above]`` (the range of the phase rule's mc thresholds: a value rising above it, or
    falling below it, keeps its side of every threshold whatever further training does), and at the last
    stage. A non-finite value or a diverged curve stops with ``reason = "diverged"``."""
    v = [float(x) for x in mc_by_stage]
    if diverged or not v or not all(math.isfinite(x) for x in v):
        return StageDecision(True, False, None, "diverged")
    window = max(1, int(stable_doublings))
    if len(v) > window and all(abs(v[i] - v[i - 1]) <= tol for i in range(len(v) - window, len(v))):
        return StageDecision(True, True, None, "converged")
    change = v[-1] - v[max(0, len(v) - 1 - window)]
    step = v[-1] - v[-2] if len(v) > 1 else 0.0
    bound = "lower" if change > tol and step >= -tol else "upper" if change < -tol and step <= tol else None
    # a direction decides only when seen over the whole window: an early stage can jump either way (width 4 at
    # batch 1024 on digits: +10.2 pp at 0.5x, -8.0 pp at 1x, +12 pp at 2x in a sibling pair)
    decides = len(v) > window and (
        (bound == "lower" and v[-1] > decided_above) or (bound == "upper" and v[-1] < decided_below)
    )
    if decides:
        return StageDecision(True, False, bound, "decided")
    if last:
        return StageDecision(True, False, bound, "max_budget")
    return StageDecision(False, False, bound, None)


# ---------------------------------------------------------------------------------------------- scalars
#: Endpoint handling of :func:`mode_connectivity` (``endpoints=``); the first is the default.
MC_ENDPOINTS = ("interior", "paper", "band")

#: The t grid the phase-rule thresholds were fitted on (the published curves of Yang et al. 2021) and the
#: default grid of the ``connectivity`` family: mc is a max over the grid, so a finer grid gives larger |mc|.
PAPER_T_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def mode_connectivity(values: Sequence[float], t: Sequence[float] | None = None, endpoints: str = "interior") -> float:
    """Mode connectivity of Yang et al. 2021 of the values ``v`` of a path (training error in percent, or loss)
    at ``t`` (sorted first when given; default: already in path order, first and last are the endpoints).

    With ``m = (v(0) + v(1)) / 2``: ``u = argmax_t |v(t) - m|`` and ``mc = m - v(u)``, so ``mc < 0`` is a
    barrier (the path rises above its endpoints' mean), ``mc > 0`` a path better than its (under-trained)
    endpoints. ``endpoints`` says which points the argmax runs over:

    * ``"interior"`` (default): the points strictly between the endpoints (first maximiser). It equals the
      paper's formula whenever that is unambiguous (its maximiser is an interior point, i.e. the path leaves
      the band between the two endpoint values; all 169 cells of the published Figure-1 grid), is symmetric in
      the two models and continuous in the values. A path that stays inside the band gives ``|mc|`` below half
      the endpoint gap, its sign that of the path's bulge against the endpoints' mean.
    * ``"paper"``: all points, endpoints included (the authors' code: ``np.argmax`` over all 5 points). When no
      interior point leaves the band, the maximiser is an endpoint and ``mc = +-(v(1) - v(0)) / 2`` with the
      sign set by which model is called ``a``: ``[0, 1.8, 1.9, 2.0]`` gives +1.0, its reverse -1.0.
    * ``"band"``: sign-stable, measured against the band of the endpoint values: ``-(max v - max(v(0), v(1)))``
      if the path rises above both endpoints by more than it dips below both, else ``min(v(0), v(1)) - min v``;
      0 for a path inside the band. It is the paper's value shrunk towards 0 by half the endpoint gap, so it
      equals the paper's formula only when the endpoints are equal.

    Two points give 0; a non-finite value gives NaN. Raises ``ValueError`` for fewer than two values or an
    unknown ``endpoints``.
    """
    if endpoints not in MC_ENDPOINTS:
        raise ValueError(f"endpoints={endpoints!r}: expected one of {', '.join(MC_ENDPOINTS)}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if t is not None:
        tt = np.asarray(t, dtype=np.float64).reshape(-1)
        if tt.shape != v.shape:
            raise ValueError(f"mode_connectivity: {tt.size} t values for {v.size} values")
        v = v[np.argsort(tt, kind="stable")]
    if v.size < 2:
        raise ValueError(f"mode_connectivity: {v.size} values; expected the path's values at >= 2 points")
    if not np.all(np.isfinite(v)):
        return float("nan")
    if v.size == 2:
        return 0.0
    mid = 0.5 * (v[0] + v[-1])
    if endpoints == "paper":
        return float(mid - v[int(np.argmax(np.abs(v - mid)))])
    inner = v[1:-1]
    if endpoints == "interior":
        return float(mid - inner[int(np.argmax(np.abs(inner - mid)))])
    up = max(0.0, float(inner.max()) - max(v[0], v[-1]))
    down = max(0.0, min(v[0], v[-1]) - float(inner.min()))
    return float(down) if down > up else float(-up)


def barrier(ts: Sequence[float], values: Sequence[float]) -> float:
    """``max_t v(t) - ((1 - t) v(t_0) + t v(t_last))``, the height above the chord of the endpoints."""
    t = np.asarray(ts, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape or t.size < 2:
        raise ValueError(f"barrier: {t.size} t values and {v.size} values; expected equal sizes >= 2")
    return float(np.max(v - ((1.0 - t) * v[0] + t * v[-1])))
