"""Model family ``sharpness``: the top eigenvalue of the training loss's Hessian (or GGN) *during* training.

While a seed trains (``landscape.training.train_model``'s ``on_step`` hook, wired by the job when the family is
on), a :class:`SharpnessTracker` measures the largest eigenvalue ``lambda_max`` of the ``operator`` (``hessian``
or ``ggn``, ``landscape.curvature``) of the mean training loss (as trained: ``train.loss``, labels after noise)
over a seeded subset of ``samples`` training samples (0: all of them; the first ``samples`` of a permutation
drawn from ``seed``), model in eval mode (BatchNorm with its running statistics, as the ``hessian`` family),
every ``every`` optimiser steps and at the last step. Each measurement is a Lanczos run
(``curvature.eigenvalues``) to relative residual ``tol`` (at most ``max_iter`` products) started from the
previous measurement's eigenvector (``warm_start``): the top eigenvector moves little between measurements, so a
run costs a few products (the first, and the first after a resume, start from a random vector).

Rows go to the long table ``sharpness`` (one per measurement: step, epoch, value, residual, products, seconds,
the learning rate and the stability threshold ``2 (1 + momentum) / lr - weight_decay`` of (heavy-ball) gradient
descent on a quadratic: the value full-batch gradient descent's sharpness hovers at, at the edge of stability,
Cohen et al. 2021). Model columns: the last value (``sharpness.final``), the largest (``sharpness.max``) and
``sharpness.edge_ratio``, the mean of value / threshold over the last quarter of the measurements (about 1 at
the edge of stability, below 1 when training stays stable); the tracking's cost (``sharpness.seconds``, its
products) and ``sharpness.cost_share`` = tracking seconds / the training's own seconds (without tracking).

The measurements are kept under the model's private directory for this family and settings (``ctx.workdir``)
as they are taken, so a preempted run resumes with them (rows after its checkpoint's step are measured again).
A model trained before the family was on (or with other sharpness settings) has no measurements: its values are
nulls with the reason. Seeds are trained one after the other while the family is on (the stacked training of
``landscape.vectorized`` has no per-model hook); the job logs it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import pyarrow as pa

from landscape.metrics.contract import Family, FigureStyle, ModelContext, Result
from landscape.rules import ints, nums, one_of, rule

if TYPE_CHECKING:  # annotations only: importing this module must not import torch
    from torch import Tensor, nn

    from landscape.data import CellData
    from landscape.training import TrainSettings

log = logging.getLogger(__name__)

OPERATORS = ("hessian", "ggn")
DTYPES = ("float32", "float64")
STATE = "sharpness.jsonl"
"""The tracker's file in the model's family directory: one JSON row per measurement, appended (a row of a step
measured again, after a resume, supersedes the earlier one; a torn last line is ignored)."""


@dataclass
class Config:
    """Settings of the ``sharpness`` family (mounted at ``metrics.sharpness``)."""

    enabled: Any = False
    every: int = field(default=100, metadata=rule(ints(1)))  # optimiser steps between measurements (and the last)
    operator: str = field(default="hessian", metadata=rule(one_of(OPERATORS)))  # "hessian" | "ggn"
    # training samples of the measured loss (0, or a value >= the training set's size: all of it)
    samples: int = field(default=1000, metadata=rule(ints(0, note="0: the whole training set")))
    seed: int = 0  # the subset and the first start vector
    tol: float = field(default=1e-3, metadata=rule(nums(0.0, lo_open=True)))  # relative Lanczos residual
    max_iter: int = field(default=50, metadata=rule(ints(2)))  # products per measurement, at most
    warm_start: bool = True  # start each Lanczos run from the previous eigenvector
    dtype: str = field(default="float32", metadata=rule(one_of(DTYPES)))
    # samples per chunk of the products; None: as few chunks as memory allows
    batch_size: Optional[int] = field(default=None, metadata=rule(ints(1, null=True)))


METRICS: dict[str, pa.DataType] = {
    "sharpness.final": pa.float64(),
    "sharpness.max": pa.float64(),
    "sharpness.edge_ratio": pa.float64(),
}
DIAGNOSTICS: dict[str, pa.DataType] = {
    "sharpness.n_measurements": pa.int64(),
    "sharpness.products": pa.int64(),
    "sharpness.seconds": pa.float64(),
    "sharpness.training_seconds": pa.float64(),
    "sharpness.cost_share": pa.float64(),
    "sharpness.threshold": pa.float64(),
    "sharpness.converged": pa.bool_(),
}
TABLE: dict[str, pa.DataType] = {
    "step": pa.int64(),
    "epoch": pa.int64(),
    "value": pa.float64(),
    "residual": pa.float64(),
    "products": pa.int64(),
    "seconds": pa.float64(),
    "lr": pa.float64(),
    "threshold": pa.float64(),
    "converged": pa.bool_(),
}


def stability_threshold(lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> float:
    """``2 (1 + momentum) / lr - weight_decay``: the largest loss-Hessian eigenvalue for which SGD with heavy-ball
    ``momentum`` and coupled ``weight_decay`` (``torch.optim.SGD``) is stable on a quadratic, in the loss's
    units per parameter² (``2 / lr`` for plain gradient descent)."""
    return 2.0 * (1.0 + momentum) / lr - weight_decay


class SharpnessTracker:
    """The ``on_step`` hook (``landscape.training.StepCallback``) of one seed: measures ``lambda_max`` every
    ``settings.every`` steps and at step ``total_steps`` (see the module docstring), keeping the rows in
    ``workdir / STATE`` (a line appended after each measurement).

    ``x`` ``[n, ...]``, ``y`` ``[n]``: the training data (the subset is drawn here); ``train``: the run's
    settings (learning rate schedule, momentum, weight decay, the step budget); ``seed``: the model's seed.
    Time accounting per row: ``seconds`` (measuring) and ``train_seconds`` (wall time since the previous
    measurement, or since the run's first step: the training's own time without its start-up)."""

    def __init__(
        self,
        settings: Any,
        x: "Tensor",
        y: "Tensor",
        loss_fn: Callable[[Any, Any], Any],
        train: "TrainSettings",
        workdir: Path,
        seed: int = 0,
    ):
        from landscape.params import eval_subset
        from landscape.training import training_plan

        self.settings = settings
        self.x, self.y = eval_subset(x, y, int(settings.samples), int(settings.seed))
        self.loss_fn = loss_fn
        self.train = train
        self.n_train = int(x.shape[0])
        self.total_steps = training_plan(train, self.n_train).steps
        self.epochs = train.total_epochs(self.n_train)
        self.path = Path(workdir) / STATE
        self.model_seed = int(seed)
        self.vector: "Tensor | None" = None
        self.batch_size: int | None = None if settings.batch_size is None else int(settings.batch_size)
        self.rows: list[dict[str, Any]] = read_rows(self.path)
        self._mark: float | None = None  # the clock of the training's own time starts at the first step

    def due(self, step: int) -> bool:
        """Whether ``step`` is measured: every ``every`` steps and the last one."""
        return step % int(self.settings.every) == 0 or step == self.total_steps

    def __call__(self, model: "nn.Module", step: int, epoch: int) -> None:
        if self._mark is None:
            self._mark = time.perf_counter()
        if not self.due(step):
            return
        import torch

        from landscape.training import lr_at

        sync = model_device(model).type == "cuda"
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        value, residual, products, converged = self.measure(model, step)
        if sync:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        lr = lr_at(self.train, epoch, self.epochs)
        row = {
            "step": int(step),
            "epoch": int(epoch),
            "value": value,
            "residual": residual,
            "products": int(products),
            "seconds": seconds,
            "lr": lr,
            "threshold": stability_threshold(lr, self.train.momentum, self.train.weight_decay),
            "converged": converged,
            "train_seconds": t0 - self._mark,
        }
        # rows at or after this step were measured by a run that was killed before its checkpoint: replaced
        self.rows = [r for r in self.rows if r["step"] < step] + [row]
        self._append(row)
        log.debug("sharpness at step %d: %.5g (%d products, %.3f s)", step, value, products, seconds)
        self._mark = time.perf_counter()

    def measure(self, model: "nn.Module", step: int) -> tuple[float, float, int, bool]:
        """``(lambda_max, residual, products, converged)`` of the operator at the model's current parameters;
        NaN values (and a warning) when the parameters are not finite or the products fail."""
        import torch

        from landscape.curvature import curvature_operator, eigenvalues
        from landscape.params import hashed_seed

        s = self.settings
        if not all(bool(torch.isfinite(p.detach()).all()) for p in model.parameters()):
            log.warning("sharpness at step %d: parameters not finite, not measured", step)
            self.vector = None
            return math.nan, math.nan, 0, False
        op = curvature_operator(
            str(s.operator),
            model,
            self.loss_fn,
            (self.x, self.y),
            batch_size="auto" if self.batch_size is None else self.batch_size,
            dtype=getattr(torch, str(s.dtype)),
        )
        self.batch_size = max(int(xb.shape[0]) for xb, _ in op.batches)  # "auto" resolved once, then kept
        v0 = self.vector if s.warm_start and self.vector is not None else None
        try:
            res = eigenvalues(
                op,
                k=1,
                which="largest",
                tol=float(s.tol),
                max_iter=int(s.max_iter),
                seed=hashed_seed(int(s.seed), self.model_seed, int(step)),
                v0=v0,
            )
        except (RuntimeError, ValueError) as exc:  # e.g. NaN products of a run about to diverge
            log.warning("sharpness at step %d: not measured: %s", step, exc)
            self.vector = None
            return math.nan, math.nan, op.n_products, False
        finally:
            op.release()
        self.vector = res.vectors[:, 0].detach().clone()
        return float(res.values[0]), float(res.residuals[0]), int(res.n_matvecs), bool(res.converged)

    def _append(self, row: dict[str, Any]) -> None:
        """Append ``row`` to the file (one line; a process that lost the cell's lease raises ``LeaseLost``)."""
        from landscape.files import check_fence

        check_fence(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            torn = False  # a line cut short by a kill: end it first
            if fh.seek(0, os.SEEK_END) > 0:
                fh.seek(-1, os.SEEK_END)
                torn = fh.read(1) != b"\n"
            fh.write((("\n" if torn else "") + json.dumps(row) + "\n").encode())

    @property
    def seconds(self) -> float:
        """Seconds spent measuring (the kept rows)."""
        return sum(float(r["seconds"]) for r in self.rows)

    @property
    def train_seconds(self) -> float:
        """The training's own seconds up to the last measurement (the kept rows)."""
        return sum(float(r["train_seconds"]) for r in self.rows)


def model_device(model: "nn.Module") -> Any:
    """The device of ``model``'s first parameter."""
    return next(model.parameters()).device


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The measurements in the tracker's file ``path`` by step (the last row of a step wins; a line that does not
    parse, torn by a kill, is skipped); empty if there is no file."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            # a later row of a step (or of an earlier step) supersedes what a killed run measured after it
            by_step = {k: v for k, v in by_step.items() if k < int(row["step"])}
            by_step[int(row["step"])] = row
    return [by_step[k] for k in sorted(by_step)]


def trackers(
    settings: Any,
    data: "CellData",
    train: "TrainSettings",
    seeds: list[int],
    workdir_of: Callable[[int], Path],
) -> dict[int, SharpnessTracker]:
    """A :class:`SharpnessTracker` per seed (``workdir_of(seed)``: the directory the family's ``compute`` of
    that model gets as ``ctx.workdir``), to pass as ``train_model(on_step=...)``."""
    from landscape.training import make_loss

    loss_fn = make_loss(train.loss)
    return {
        s: SharpnessTracker(settings, data.x_train, data.y_train, loss_fn, train, workdir_of(s), seed=s) for s in seeds
    }


def compute(ctx: ModelContext, settings: Any) -> Result:
    """The ``sharpness.*`` columns and the ``sharpness`` rows of one trained model, from the measurements its
    tracker kept in ``ctx.workdir`` during training (see the module docstring)."""
    rows = read_rows(ctx.workdir / STATE)
    if not rows:
        return Result(
            error="no sharpness measurements: the model was trained before metrics.sharpness was enabled with "
            "these settings (it is measured during training; delete the seed's directory to train it again)"
        )
    finite = [r for r in rows if r["value"] is not None and math.isfinite(r["value"])]
    seconds = sum(float(r["seconds"]) for r in rows)
    train_seconds = sum(float(r["train_seconds"]) for r in rows)
    out: dict[str, Any] = {
        "sharpness.n_measurements": len(rows),
        "sharpness.products": sum(int(r["products"]) for r in rows),
        "sharpness.seconds": seconds,
        "sharpness.training_seconds": train_seconds,
        "sharpness.threshold": float(rows[-1]["threshold"]),
    }
    if train_seconds > 0:
        out["sharpness.cost_share"] = seconds / train_seconds
    error = None
    if finite:
        late = finite[len(finite) - max(1, len(finite) // 4) :]
        out["sharpness.final"] = float(finite[-1]["value"]) if finite[-1] is rows[-1] else None
        out["sharpness.max"] = max(float(r["value"]) for r in finite)
        out["sharpness.edge_ratio"] = sum(r["value"] / r["threshold"] for r in late) / len(late)
        out["sharpness.converged"] = all(bool(r["converged"]) for r in finite)
    if len(finite) < len(rows):
        error = f"{len(rows) - len(finite)} of {len(rows)} measurements not finite"
    table = [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items() if k in TABLE}
        for r in rows
    ]
    log.info(
        "sharpness: %d measurements, final %s, %d products in %.2f s (%.1f %% of training)",
        len(rows),
        out.get("sharpness.final"),
        out["sharpness.products"],
        out["sharpness.seconds"],
        100 * out.get("sharpness.cost_share", math.nan),
    )
    return Result(out, tables={"sharpness": table}, error=error)


FAMILY = Family(
    name="sharpness",
    table="models",
    config=Config,
    metrics=METRICS,
    diagnostics=DIAGNOSTICS,
    compute=compute,
    long_tables={"sharpness": TABLE},
    styles={
        "sharpness.final": FigureStyle("sharpness at the end of training", "nats / param²", "log10", cmap="magma_r"),
        "sharpness.max": FigureStyle("largest sharpness during training", "nats / param²", "log10", cmap="magma_r"),
        "sharpness.edge_ratio": FigureStyle(
            "late sharpness / stability threshold 2(1+β)/η", "ratio", cmap="RdBu_r", centre=1.0
        ),
    },
    description="top Hessian (or GGN) eigenvalue during training, warm-started Lanczos every N steps (long table)",
)
