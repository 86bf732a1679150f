"""Projected GPU-hours and wall time of a grid on N GPUs, before any GPU ran it (issue 23).

The work of every cell is ``landscape.cost.cell_work``'s exact count (SGD steps of the seeds, curve steps, forward
passes of the evaluations, Hessian-vector products) on the dataset's sizes (CIFAR-10: 50,000 training and 10,000
test images, whether or not the files are here). Each unit is priced on a GPU by a roofline with a floor:

    seconds of one step = max(floor, FLOPs / (peak x u_c(width)) + bytes / (bandwidth x u_m))

- **FLOPs**, exact per sample, counted on the ``meta`` device by ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix products, 2 per multiply-add): a training step (forward, backward to the parameters),
  a forward pass (eval mode) and a Hessian-vector product (gradient with its graph, then the gradient of
  ``g . v``: an upper bound, ``HessianOperator`` may reuse the gradient graph);
- **bytes**: the memory-bound kernels (BatchNorm, ReLU, additions) move every activation value a few times:
  ``ACT_PASSES`` reads and writes per value of every module's output (counted on ``meta``), 4 bytes (fp32, tf32)
  or 2 (bf16);
- **u_c(width)** = ``COMPUTE_UTIL`` x min(1, width / ``FULL_WIDTH``): the tensor-core GEMMs of a convolution
  with few channels use a small part of the GPU (width 64+: 50 % of the dense peak; width 4: 6 %);
  ``u_m`` = ``MEMORY_UTIL`` of the HBM bandwidth;
- **floor**: a step is not faster than its host-side kernel launches (``placement.STEP_FLOOR_S``, 3 ms for a
  ResNet18 training step in eager PyTorch; curves, products and evaluation batches have their own);
- **packing** (``cells_per_gpu``, ``landscape.placement``): ``k`` cells share a GPU; under NVIDIA MPS their
  kernels overlap, so a step of each takes ``max(floor, k x work / min(COMPUTE_UTIL, k x u_c))``: small cells
  fill the GPU's idle time; a cell's GPU-seconds are its wall seconds over ``k``. Without MPS (time slicing)
  ``u_c`` does not grow with ``k`` (``mps=False``).

Measured throughputs replace the model where they exist: ``benchmarks/gpu.py`` writes seconds per step of
ResNet18 cells at widths 4, 16, 64 for 1, 2, 4, 8 cells per GPU; :func:`calibration` turns them into a factor
per width (measured / projected, interpolated in log width) applied to the SGD and curve steps.

The peaks are NVIDIA's datasheet numbers for the SXM parts, dense (no sparsity): H100 and H200 have the same
compute (FP32 67, TF32 495, BF16 989 TFLOP/s) and differ in memory (80 GB at 3.35 TB/s; 141 GB at 4.8 TB/s).
PyTorch runs convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``), so ``tf32`` is the default
projection of the unchanged code; ``bf16`` needs ``train.precision=bf16``; ``fp32`` is strict float32.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from landscape import placement
from landscape.cost import DataSize, Range, cell_work


@dataclass(frozen=True)
class GPU:
    """A GPU's dense peak FLOP/s per precision, HBM bandwidth (bytes/s) and memory (bytes)."""

    name: str
    peak: Mapping[str, float]
    bandwidth: float
    memory: int


GPUS: dict[str, GPU] = {
    "h100": GPU("H100 SXM 80 GB", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}, 3.35e12, 80 * 10**9),
    "h200": GPU("H200 SXM 141 GB", {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}, 4.8e12, 141 * 10**9),
}
"""The GPUs of the projection (datasheet numbers, dense)."""

CIFAR10 = DataSize(n_train=50_000, n_test=10_000, input_shape=(3, 32, 32), n_classes=10)
"""CIFAR-10's sizes (the projection does not read the files)."""


@dataclass(frozen=True)
class Assumptions:
    """The projection's assumptions (see the module docstring); every number here is stated in the output."""

    precision: str = "tf32"
    compute_util: float = 0.5
    full_width: int = 64
    memory_util: float = 0.7
    act_passes_train: float = 5.0
    act_passes_forward: float = 2.0
    act_passes_hvp: float = 12.0
    step_floor_s: float = placement.STEP_FLOOR_S
    curve_floor_s: float = 4e-3
    hvp_floor_s: float = 9e-3
    eval_batch: int = 2048
    eval_floor_s: float = 1e-3
    epoch_overhead_s: float = 0.05
    cell_overhead_s: float = 20.0
    mps: bool = True
    cells_per_gpu: Any = "auto"

    def describe(self) -> str:
        return (
            f"precision {self.precision}; conv/matmul at {self.compute_util:.0%} of the dense peak x min(1, width/"
            f"{self.full_width}); memory-bound kernels at {self.memory_util:.0%} of HBM bandwidth moving every "
            f"activation value {self.act_passes_train:g}x per training sample ({self.act_passes_forward:g}x forward, "
            f"{self.act_passes_hvp:g}x per Hessian-vector product); floors {self.step_floor_s * 1e3:g} ms per "
            f"training step, {self.curve_floor_s * 1e3:g} ms per curve step, {self.hvp_floor_s * 1e3:g} ms per "
            f"product, {self.eval_floor_s * 1e3:g} ms per evaluation batch of {self.eval_batch}; "
            f"{self.epoch_overhead_s:g} s per epoch, {self.cell_overhead_s:g} s per cell; cells per GPU "
            f"{self.cells_per_gpu} ({'MPS: kernels of packed cells overlap' if self.mps else 'time slicing'})"
        )


@dataclass(frozen=True)
class ModelCounts:
    """Exact per-sample counts of one model: parameters, FLOPs of a training step, of a forward pass (eval
    mode) and of a Hessian-vector product, and activation values (every module's output)."""

    n_params: int
    train_flops: float
    forward_flops: float
    hvp_flops: float
    activations: float


_COUNTS: dict[str, ModelCounts] = {}


def model_counts(model_cfg: Any, input_shape: Sequence[int], n_classes: int) -> ModelCounts:
    """:class:`ModelCounts` of the model of ``model_cfg``, counted on the ``meta`` device (nothing is allocated
    or computed) with ``torch.utils.flop_counter.FlopCounterMode``; cached per config and input shape."""
    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf
    from torch.utils.flop_counter import FlopCounterMode

    from landscape.models import build_model

    plain = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    key = json.dumps([plain, list(input_shape), n_classes], sort_keys=True, default=str)
    if key in _COUNTS:
        return _COUNTS[key]
    n_params, train_flops, acts = placement.model_flops_and_activations(model_cfg, tuple(input_shape), n_classes)
    batch = 2
    with torch.device("meta"):
        model = build_model(OmegaConf.create(plain), tuple(input_shape), n_classes)
        x = torch.empty(batch, *input_shape)
        y = torch.zeros(batch, dtype=torch.long)
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    fwd = FlopCounterMode(display=False)
    with fwd, torch.no_grad():
        model(x)
    hvp = FlopCounterMode(display=False)
    with hvp:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        dot = sum((g * torch.empty_like(g)).sum() for g in grads)
        torch.autograd.grad(dot, params)
    out = ModelCounts(n_params, train_flops, fwd.get_total_flops() / batch, hvp.get_total_flops() / batch, acts)
    _COUNTS[key] = out
    return out


# -------------------------------------------------------------------------------------------- pricing
def _u_compute(a: Assumptions, width: int, k: int) -> float:
    alone = a.compute_util * min(1.0, width / a.full_width)
    return min(a.compute_util, k * alone) if a.mps else alone


def op_seconds(op: Any, counts: ModelCounts, width: int, gpu: GPU, a: Assumptions, k: int = 1) -> float:
    """Wall seconds of one unit of ``op`` (a ``landscape.cost.Op``: one step, one sample of a forward pass or
    of a Hessian-vector product, one epoch, one cell's start) of a cell sharing its GPU with ``k - 1`` others
    like it (see the module docstring)."""
    peak = gpu.peak[a.precision] * _u_compute(a, width, k)
    bw = gpu.bandwidth * a.memory_util
    value_bytes = 2 if a.precision == "bf16" else 4

    def work(flops: float, passes: float, samples: float) -> float:
        return k * samples * (flops / peak + counts.activations * passes * value_bytes / bw)

    if op.kind in ("sgd", "curve"):
        floor = a.step_floor_s if op.kind == "sgd" else a.curve_floor_s
        return max(floor, work(counts.train_flops, a.act_passes_train, op.batch * op.stack))
    if op.kind in ("sgd_epoch", "curve_epoch"):
        return a.epoch_overhead_s
    if op.kind == "forward":
        return max(a.eval_floor_s / a.eval_batch, work(counts.forward_flops, a.act_passes_forward, 1))
    if op.kind == "hvp":
        per_product = max(a.hvp_floor_s, work(counts.hvp_flops, a.act_passes_hvp, max(op.batch, 1)))
        return per_product / max(op.batch, 1)
    if op.kind == "overhead":
        return a.cell_overhead_s
    raise ValueError(f"op kind {op.kind!r}: not priced (expected sgd, curve, sgd_epoch, curve_epoch, forward, hvp)")


GROUPS = {
    "train": "models",
    "overhead": "models",
    "training": "models",
    "l2": "models",
    "connectivity": "curves",
    "hessian": "hessian",
    "cka": "cka",
}
"""Parts of a cell's work (``landscape.cost.PARTS``) as the projection's columns."""


@dataclass
class CellProjection:
    """One cell on one GPU: its knobs, ``k`` (cells per GPU), wall seconds per column (``seconds``: Range, packed
    with ``k - 1`` others) and GPU-seconds (wall over ``k``)."""

    width: int
    batch: Any
    k: int
    seconds: dict[str, Range] = field(default_factory=dict)
    train_steps: int = 0
    curve_steps: int = 0

    @property
    def wall(self) -> Range:
        out = Range(0.0, 0.0)
        for r in self.seconds.values():
            out = out + r
        return out

    @property
    def gpu_seconds(self) -> Range:
        return self.wall * (1.0 / self.k)


def project_cell(
    cfg: Any,
    gpu: GPU,
    a: Assumptions,
    size: DataSize = CIFAR10,
    factors: Mapping[int, float] | None = None,
) -> CellProjection:
    """The :class:`CellProjection` of the cell of ``cfg`` (its work from ``landscape.cost.cell_work``; ``k`` from
    ``a.cells_per_gpu``: an integer, or ``auto`` as the launchers choose it for ``gpu``'s memory). ``factors``:
    measured / projected step time per width (:func:`calibration`), applied to SGD and curve steps."""
    import torch
    from omegaconf import OmegaConf

    from landscape.models import build_model

    width = int(cfg.model.width)
    counts = model_counts(cfg.model, size.input_shape, size.n_classes)
    fixed = placement.parse_cells_per_gpu(a.cells_per_gpu, "cells_per_gpu")
    k = fixed if fixed is not None else placement.auto_cells_per_gpu(placement.cell_demand(cfg), gpu.memory)
    with torch.device("meta"):
        model = build_model(OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)), size.input_shape, 10)
    work = cell_work(cfg, size, model)
    factor = factor_at(factors, width)
    out = CellProjection(width, cfg.train.batch_size, k)
    for part, ops in work.parts.items():
        col = GROUPS.get(part, part)
        for op, n in ops.items():
            unit = op_seconds(op, counts, width, gpu, a, k)
            if op.kind in ("sgd", "curve"):
                unit *= factor
                if op.kind == "sgd":
                    out.train_steps += int(n.high) * op.stack
                else:
                    out.curve_steps += int(n.high) * op.stack
            out.seconds[col] = out.seconds.get(col, Range(0.0, 0.0)) + n * unit
    return out


def factor_at(factors: Mapping[int, float] | None, width: int) -> float:
    """The measured / projected factor at ``width``: interpolated in log width between the measured widths,
    the nearest measured one outside them, 1 without measurements."""
    if not factors:
        return 1.0
    ws = sorted(factors)
    if width <= ws[0]:
        return factors[ws[0]]
    if width >= ws[-1]:
        return factors[ws[-1]]
    for lo, hi in itertools.pairwise(ws):
        if lo <= width <= hi:
            t = (math.log2(width) - math.log2(lo)) / (math.log2(hi) - math.log2(lo))
            return math.exp((1 - t) * math.log(factors[lo]) + t * math.log(factors[hi]))
    return 1.0


def calibration(measured: Iterable[Mapping[str, Any]], gpu: GPU, a: Assumptions, k: int = 1) -> dict[int, float]:
    """``{width: measured / projected seconds per training step}`` from ``benchmarks/gpu.py``'s rows (``width``,
    ``batch``, ``cells`` per GPU, ``step_s`` per cell; ResNet18 on CIFAR-shaped data), at the measured packing
    nearest ``k``; the geometric mean where a width has several batches."""
    from landscape.cost import Op

    best: dict[int, list[Mapping[str, Any]]] = {}
    for row in measured:
        if "error" in row or not row.get("step_s"):
            continue
        best.setdefault(int(row["width"]), []).append(row)
    out = {}
    for width, rows in best.items():
        near = min({int(r["cells"]) for r in rows}, key=lambda c: abs(math.log2(c) - math.log2(k)))
        logs = []
        for r in rows:
            if int(r["cells"]) != near:
                continue
            counts = model_counts({"name": "resnet18", "width": width}, (3, 32, 32), 10)
            projected = op_seconds(Op("sgd", int(r["batch"]), 1), counts, width, gpu, a, near)
            logs.append(math.log(float(r["step_s"]) / projected))
        out[width] = math.exp(sum(logs) / len(logs))
    return out


@dataclass
class GridProjection:
    """A grid on ``n_gpus`` GPUs of one kind: its cells, the GPU-hours per column and in all (Range), and the
    wall time: the GPU-hours over the GPUs, or the longest cell if that is longer."""

    gpu: GPU
    assumptions: Assumptions
    n_gpus: int
    cells: list[CellProjection]

    def gpu_hours(self, column: str | None = None) -> Range:
        out = Range(0.0, 0.0)
        for c in self.cells:
            if column is None:
                out = out + c.gpu_seconds
            elif column in c.seconds:
                out = out + c.seconds[column] * (1.0 / c.k)
        return out * (1 / 3600)

    def wall_hours(self) -> Range:
        total = self.gpu_hours()
        longest = max((c.wall for c in self.cells), key=lambda r: r.high, default=Range(0.0, 0.0))
        return Range(
            max(total.low / self.n_gpus, longest.low / 3600), max(total.high / self.n_gpus, longest.high / 3600)
        )

    def by_width(self) -> dict[int, dict[str, Range]]:
        """``{width: {column: GPU-hours}}`` and ``k`` (cells per GPU, as the range over the batch sizes)."""
        out: dict[int, dict[str, Any]] = {}
        for c in self.cells:
            row = out.setdefault(c.width, {"k": []})
            row["k"].append(c.k)
            for col, r in c.seconds.items():
                row[col] = row.get(col, Range(0.0, 0.0)) + r * (1 / (3600 * c.k))
        return out


def project_grid(
    cfgs: Sequence[Any],
    gpu: GPU,
    a: Assumptions,
    n_gpus: int = 8,
    size: DataSize = CIFAR10,
    factors: Mapping[int, float] | None = None,
) -> GridProjection:
    """The projection of every cell of ``cfgs`` on ``n_gpus`` GPUs like ``gpu`` (see the module docstring)."""
    if n_gpus < 1:
        raise ValueError(f"n_gpus={n_gpus}: expected at least one GPU")
    if a.precision not in gpu.peak:
        raise ValueError(f"precision={a.precision!r}: expected one of {', '.join(gpu.peak)}")
    return GridProjection(gpu, a, n_gpus, [project_cell(c, gpu, a, size, factors) for c in cfgs])


def format_projection(p: GridProjection) -> str:
    """A plain-text table: GPU-hours per width and column, total GPU-hours and wall time on the GPUs."""
    cols = ["models", "curves", "hessian", "cka"]

    def h(r: Range) -> str:
        return f"{r.high:.1f}" if abs(r.high - r.low) < 0.05 else f"{r.low:.1f}-{r.high:.1f}"

    lines = [
        f"{p.gpu.name}, {p.assumptions.precision}, {p.n_gpus} GPU(s); GPU-hours per width (sum over its cells)",
        f"{'width':>6} {'k/GPU':>6} " + " ".join(f"{c:>10}" for c in cols) + f" {'total':>10}",
    ]
    for width, row in sorted(p.by_width().items()):
        ks = sorted(set(row["k"]))
        k = f"{ks[0]}" if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"
        total = Range(0.0, 0.0)
        for c in cols:
            total = total + row.get(c, Range(0.0, 0.0))
        lines.append(
            f"{width:>6} {k:>6} " + " ".join(f"{h(row.get(c, Range(0.0, 0.0))):>10}" for c in cols) + f" {h(total):>10}"
        )
    total = p.gpu_hours()
    lines.append(
        f"total: {h(total)} GPU-hours ("
        + ", ".join(f"{c} {h(p.gpu_hours(c))}" for c in cols)
        + f"); wall time on {p.n_gpus} GPU(s): {h(p.wall_hours())} h"
    )
    return "\n".join(lines)


def with_assumptions(a: Assumptions, **changes: Any) -> Assumptions:
    """``a`` with ``changes`` (names of :class:`Assumptions` fields)."""
    return replace(a, **changes)


def load_measured(path: str | Path) -> list[dict[str, Any]]:
    """The per-cell step rows (``cells_per_gpu`` section) of a ``benchmarks/gpu.py`` result file, or []."""
    p = Path(path)
    if not p.is_file():
        return []
    data = json.loads(p.read_text())
    return list(data.get("cells_per_gpu", {}).get("rows", []))
