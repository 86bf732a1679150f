"""Several cells per GPU: how many cells share one GPU, and which worker (and so which GPU) runs which cell.

The launchers (``hydra/launcher=local``'s pool, and SLURM tasks that carry several cells) run ``k`` worker
processes per GPU; worker slot ``s`` sees GPU ``s mod n_gpus`` (round robin, so the GPUs fill evenly). Each cell
takes a **share** ``1/k_cell`` of its GPU, and a cell starts on a worker only while the shares of the cells
running on that worker's GPU, its own included, stay within one (an idle GPU takes any cell): a big cell runs
alone on its GPU, small ones several at a time.

``cells_per_gpu`` (``hydra.launcher.cells_per_gpu``): an integer ``k`` (every cell ``1/k``, ``k`` workers per
GPU) or ``auto`` (default): ``k_cell`` from the cell's estimate (:func:`cell_demand`) as the least of

- **memory**: ``USABLE_MEMORY`` of the GPU's memory over the cell's training memory (``config.training_bytes``:
  weights, gradients, momentum and a spare copy per model trained at once, plus float32 activations of one
  batch, counted on the ``meta`` device: every module's output, twice) plus ``CONTEXT_BYTES`` per process;
- **compute**: ``SATURATING_STEP_FLOPS`` over the FLOPs of one training step (forward and backward of the
  model at the cell's batch size, counted exactly on the ``meta`` device by ``torch.utils.flop_counter``:
  convolutions and matrix products). A step of a small model is bound by its host-side kernel launches
  (``STEP_FLOOR_S``, about 3 ms for a ResNet18), not by the GPU; cells whose step computes in less than that
  at ``SUSTAINED_FLOPS`` leave the GPU idle, and ``k`` of them fill it;
- ``MAX_AUTO_CELLS_PER_GPU`` (8).

``auto`` then runs ``max(k_cell)`` workers per GPU (at most ``cpu_count // (n_gpus * cpus_per_task)``: each
worker launches its kernels from a core of its own). These constants are assumptions until ``benchmarks/gpu.py``
measures them (cells/s at 1, 2, 4, 8 cells per GPU); kernels of several processes run concurrently under NVIDIA
MPS (``nvidia-cuda-mps-control -d``) and time-slice without it, which still fills a launch-bound GPU's gaps.

Without a GPU nothing here applies: the pool runs one cell per worker on the CPU as before. ``LANDSCAPE_GPU_COUNT``
(an integer) replaces the number of GPUs torch sees, for the launchers only (tests with fake devices; a worker of
a fake GPU finds no CUDA device and runs on the CPU).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)

GPU_COUNT_ENV = "LANDSCAPE_GPU_COUNT"
"""Environment variable: the number of GPUs the launchers count instead of torch's (tests, fake devices)."""

MAX_AUTO_CELLS_PER_GPU = 8
"""The most cells ``cells_per_gpu=auto`` puts on one GPU."""

USABLE_MEMORY = 0.8
"""Fraction of a GPU's memory that ``auto`` fills with cells (the rest: fragmentation, evaluation batches)."""

CONTEXT_BYTES = 2**30
"""Memory of one worker process on a GPU besides its cell's tensors: the CUDA context and the allocator's cache."""

STEP_FLOOR_S = 3e-3
"""Assumed host-side time of one training step of a small ResNet18 (about 300 kernels launched at ~10 us each)."""

SUSTAINED_FLOPS = 1.2e14
"""Assumed FLOP/s one cell sustains alone on an H100/H200 (about 25 % of the TF32 tensor-core peak)."""

SATURATING_STEP_FLOPS = STEP_FLOOR_S * SUSTAINED_FLOPS
"""FLOPs per training step above which one cell keeps the GPU busy by itself (``auto`` gives it a GPU alone)."""

DEFAULT_GPU_MEMORY_GB = 80.0
"""GPU memory assumed when it cannot be read (SLURM: the preset's ``gpu_memory_gb``; H100: 80, H200: 141)."""

_INPUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((1, 8, 8), 10),
    "mnist1d": ((1, 40), 10),
    "cifar10": ((3, 32, 32), 10),
}
_FACTS: dict[str, tuple[int, float, float]] = {}


# ----------------------------------------------------------------------------------------------- devices
def gpu_count() -> int:
    """GPUs the launchers place cells on: ``$LANDSCAPE_GPU_COUNT`` if set, else torch's CUDA device count
    (0 without CUDA); counting does not initialise CUDA, so workers may still be forked."""
    env = os.environ.get(GPU_COUNT_ENV, "").strip()
    if env:
        if not env.isdigit():
            raise ValueError(f"{GPU_COUNT_ENV}={env!r}: expected a number of GPUs (an integer >= 0)")
        return int(env)
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no usable CUDA: zero GPUs
        return 0


def visible_gpus(n: int) -> list[str]:
    """The ``n`` GPUs a worker may be given, as ``CUDA_VISIBLE_DEVICES`` entries: the launcher's own
    ``CUDA_VISIBLE_DEVICES`` (e.g. SLURM's allocation) where set, else ``0 .. n-1``."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [g.strip() for g in env.split(",") if g.strip()]
    return ids[:n] if len(ids) >= n else [str(i) for i in range(n)]


def gpu_of_slot(slot: int, n_gpus: int) -> int:
    """Index (among the visible GPUs) of the GPU of worker ``slot``: round robin, ``slot mod n_gpus``."""
    if n_gpus < 1:
        raise ValueError(f"n_gpus={n_gpus}: a worker has a GPU only when there is at least one")
    return slot % n_gpus


def gpu_memory_bytes(preset_gb: Any = None) -> int:
    """Memory of one GPU in bytes: ``preset_gb`` (GB) if given, else the first GPU's total as ``nvidia-smi``
    reports it (not through torch: that would initialise CUDA in the launcher), else ``DEFAULT_GPU_MEMORY_GB``."""
    if preset_gb not in (None, "", "auto"):
        return int(float(preset_gb) * 1e9)
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
        if first.strip().isdigit():
            return int(first.strip()) * 2**20  # MiB
    except (OSError, subprocess.TimeoutExpired):
        pass
    return int(DEFAULT_GPU_MEMORY_GB * 1e9)


def task_gpus(params: dict[str, Any]) -> int:
    """GPUs of one SLURM task from the launcher preset: ``gpus_per_task``, else ``gpus_per_node //
    tasks_per_node``, else the count in ``gres`` (``gpu:4``, ``gpu:h100:4``), else ``$LANDSCAPE_GPU_COUNT``
    (fake devices, tests), else 0."""
    if params.get("gpus_per_task"):
        return _count(params["gpus_per_task"])
    if params.get("gpus_per_node"):
        return max(1, _count(params["gpus_per_node"]) // max(1, int(params.get("tasks_per_node") or 1)))
    gres = str(params.get("gres") or "")
    match = re.search(r"gpu(?::[^:,]+)?:(\d+)", gres)
    if match:
        return max(1, int(match.group(1)) // max(1, int(params.get("tasks_per_node") or 1)))
    env = os.environ.get(GPU_COUNT_ENV, "").strip()
    return int(env) if env.isdigit() else 0


def _count(value: Any) -> int:
    text = str(value)
    return int(text.rsplit(":", 1)[-1]) if text.rsplit(":", 1)[-1].isdigit() else 1


# ------------------------------------------------------------------------------------------- the setting
def parse_cells_per_gpu(value: Any, key: str = "hydra.launcher.cells_per_gpu") -> int | None:
    """The setting as an integer ``k >= 1``, or None for ``auto`` (also ``null``); any other value is refused
    naming ``key``."""
    if value is None or str(value) == "auto":
        return None
    try:
        k = int(str(value))
    except ValueError:
        k = 0
    if k < 1 or str(k) != str(value).strip():
        raise ValueError(f"{key}={value!r}: expected auto or an integer >= 1 (cells run at once on one GPU)")
    return k


# ------------------------------------------------------------------------------------------ the estimate
@dataclass(frozen=True)
class CellDemand:
    """What one cell asks of a GPU: ``n_params`` (one model), ``step_flops`` (one training step of every model
    trained at once, forward and backward at the cell's batch size), ``bytes`` (training memory)."""

    n_params: int
    step_flops: float
    bytes: int


def input_spec(data_cfg: Any) -> tuple[tuple[int, ...], int] | None:
    """``(input_shape, n_classes)`` of a dataset from its config alone (None if the dataset is unknown)."""
    name = str(data_cfg.name)
    if name == "gaussian":
        return (int(data_cfg.dim),), int(data_cfg.n_classes)
    return _INPUTS.get(name)


def model_flops_and_activations(
    model_cfg: Any, input_shape: tuple[int, ...], n_classes: int
) -> tuple[int, float, float]:
    """``(n_parameters, training FLOPs per sample, activation values per sample)`` of the model of ``model_cfg``,
    built and run on the ``meta`` device (no memory, no arithmetic): FLOPs of one forward and backward pass
    (gradients of the parameters) in training mode as ``torch.utils.flop_counter.FlopCounterMode`` counts them
    (convolutions and matrix products, 2 per multiply-add), and the sum of every leaf module's output sizes.
    Cached per model config and input shape."""
    import torch
    from omegaconf import OmegaConf

    from landscape.models import build_model

    plain = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    key = json.dumps([plain, list(input_shape), n_classes], sort_keys=True, default=str)
    if key not in _FACTS:
        from torch.utils.flop_counter import FlopCounterMode

        batch = 2  # BatchNorm in training mode needs more than one value per channel
        with torch.device("meta"):
            model = build_model(OmegaConf.create(plain), tuple(input_shape), n_classes)
            x = torch.empty(batch, *input_shape)
        model.train()
        acts = [0]
        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [
            m.register_forward_hook(lambda _m, _i, out: acts.__setitem__(0, acts[0] + _numel(out))) for m in leaves
        ]
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(x)
            out.float().sum().backward()
        for h in hooks:
            h.remove()
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        _FACTS[key] = (int(n_params), counter.get_total_flops() / batch, acts[0] / batch)
    return _FACTS[key]


def _numel(out: Any) -> int:
    """Values of a module's output: a tensor's, or the sum over a tuple or list of them."""
    if isinstance(out, (tuple, list)):
        return sum(_numel(o) for o in out)
    return int(out.numel()) if hasattr(out, "numel") else 0


def cell_demand(cfg: Any) -> CellDemand | None:
    """The cell's :class:`CellDemand` from its config (None when its dataset's input shape is unknown)."""
    from landscape.config import training_bytes

    spec = input_spec(cfg.data)
    if spec is None:
        return None
    n_params, flops, acts = model_flops_and_activations(cfg.model, *spec)
    batch = _batch_size(cfg)
    together = len(list(cfg.train.seeds)) if str(cfg.train.vectorize) == "on" else 1
    need = training_bytes(cfg, n_params, int(2 * acts), batch)
    return CellDemand(n_params, flops * batch * together, int(need))


def _batch_size(cfg: Any) -> int:
    bs = cfg.train.batch_size
    if str(bs) != "full":
        return int(bs)
    try:
        from landscape import data as data_mod

        return int(data_mod.resolve_count(cfg.data.subsample, data_mod.full_train_size(cfg.data)))
    except Exception:  # noqa: BLE001 - e.g. CIFAR-10 not on this machine: the CIFAR-10 training split
        return 50_000


def auto_cells_per_gpu(demand: CellDemand | None, gpu_bytes: int, max_cells: int = MAX_AUTO_CELLS_PER_GPU) -> int:
    """``cells_per_gpu=auto`` for one cell: the least of the memory bound, the compute bound and ``max_cells``
    (see the module docstring), at least 1; ``demand`` None (unknown): 1."""
    if demand is None:
        return 1
    by_memory = int(USABLE_MEMORY * gpu_bytes // (demand.bytes + CONTEXT_BYTES))
    by_compute = int(SATURATING_STEP_FLOPS // max(demand.step_flops, 1.0))
    return max(1, min(by_memory, by_compute, max_cells))


@dataclass(frozen=True)
class Placement:
    """Cells on GPUs: ``workers_per_gpu`` worker processes per GPU and every cell's ``shares`` of its GPU (in
    the order of the cells); ``chosen`` says how (``cells_per_gpu=2``, ``auto: ...``)."""

    workers_per_gpu: int
    shares: list[float]
    chosen: str


def place(
    cfgs: Sequence[Any] | None,
    setting: Any,
    n_cells: int,
    gpu_bytes: int,
    max_workers_per_gpu: int | None = None,
) -> Placement:
    """The placement of ``n_cells`` cells under ``cells_per_gpu = setting``: an integer ``k``: ``k`` workers per
    GPU, every share ``1/k`` (as asked, with a warning beyond ``max_workers_per_gpu``); ``auto``: every cell's
    ``k_cell`` from its config (``cfgs``, in order; see :func:`auto_cells_per_gpu`), ``max(k_cell)`` workers per
    GPU capped by ``max_workers_per_gpu`` (CPU cores), shares ``1/min(k_cell, workers)``."""
    fixed = parse_cells_per_gpu(setting)
    cap = max(1, max_workers_per_gpu) if max_workers_per_gpu else None
    if fixed is not None:
        if cap and fixed > cap:
            log.warning("cells_per_gpu=%d: more workers per GPU than CPU cores allow (%d); as asked", fixed, cap)
        return Placement(fixed, [1.0 / fixed] * n_cells, f"cells_per_gpu={fixed}")
    if cfgs is None or len(cfgs) != n_cells:
        raise ValueError(f"cells_per_gpu=auto needs the {n_cells} cells' configs")
    ks = [auto_cells_per_gpu(cell_demand(c), gpu_bytes) for c in cfgs]
    workers = max(ks) if ks else 1
    if cap:
        workers = min(workers, cap)
    shares = [1.0 / min(k, workers) for k in ks]
    low, high = (min(ks), max(ks)) if ks else (1, 1)
    span = f"{low}" if low == high else f"{low}-{high}"
    return Placement(workers, shares, f"cells_per_gpu=auto: {span} per GPU by memory and compute")


def pick(waiting: Sequence[int], shares: Sequence[float] | None, load: float) -> int | None:
    """The first of the ``waiting`` cells (indices into ``shares``) that fits a GPU whose running cells hold
    ``load`` of it: any cell on an idle GPU, else one whose share keeps the load within 1; None if none fits.
    Without ``shares`` (no GPU) the first waiting cell."""
    if not waiting:
        return None
    if shares is None or load <= 1e-9:
        return waiting[0]
    for i in waiting:
        if load + shares[i] <= 1.0 + 1e-9:
            return i
    return None


def max_workers_per_gpu(n_gpus: int, cpus_per_task: int = 1, cpus: int | None = None) -> int:
    """Workers one GPU may have so that every worker has CPU cores of its own: ``cpus // (n_gpus *
    cpus_per_task)``, at least 1."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, cpus // max(1, n_gpus * max(1, cpus_per_task)))


def describe(p: Placement, n_gpus: int) -> str:
    """One line for the launch log."""
    return f"{n_gpus} GPU(s) x {p.workers_per_gpu} worker(s) per GPU ({p.chosen})"
