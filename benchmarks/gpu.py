"""GPU measurements of issue 23, one prepared run: cells per GPU, seeds together, data on the device, precision and
compilation, the Hessian family's breakdown, peak memory. Every measurement runs a real cell through the public
path (configs -> ``landscape.job.run_cell``, or the ``landscape`` multirun with ``hydra/launcher=local``).

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json] [--cifar /path/to/cifar-10-batches-py]
    python benchmarks/gpu.py --quick        # tiny sizes on the CPU (fake GPU for the launcher): the run works

Sections (each a list of rows in the JSON, and a table printed at the end):

1. ``cells_per_gpu``: ResNet18 cells at widths 4, 16, 64 (batch 128, one seed, ``train.steps`` steps each) run as
   a multirun of ``k`` cells with ``hydra.launcher.cells_per_gpu=k`` for k = 1, 2, 4, 8 on one GPU (the first
   visible): per cell seconds per step (``training.seconds / training.steps``, while the k cells share the GPU),
   cell-seconds (the cell's ``seconds``), samples/s of the GPU (k x batch / step), the multirun's wall seconds.
   ``landscape.gpu_cost.calibration`` reads these rows (``benchmarks/gpu_projection.py --measured``).
2. ``together``: 5 seeds of the CNN with BatchNorm and of ResNet18 (width 16), ``train.vectorize=on`` against
   ``off`` (training seconds of the cell), where the option is implemented for the model (else the reason).
3. ``data_device``: the same cell with the data resident on the device and through host batches (skipped, with
   the reason, while the option does not exist).
4. ``precision``: ResNet18 width 64 at ``train.precision`` fp32 / tf32 / bf16 and with ``train.compile=true``.
5. ``hessian``: the Hessian family (default mode: Lanczos top eigenvalues, trace, density) on ResNet18 at
   widths 16 and 64: seconds, products (eigenvalue run vs trace), seconds per product.
6. ``memory``: peak GPU memory of one cell per width (``torch.cuda.max_memory_allocated``).

Data: CIFAR-10 from ``--cifar`` where its files are there, else CIFAR-shaped synthetic data (random uint8
images, random labels) written in CIFAR-10's own format to a temporary directory, so every cell goes through the
real loader. Times of synthetic and real data are the same (the work does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("benchmarks.gpu")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's landscape, whatever is installed

FULL = {
    "widths": [4, 16, 64],
    "cells": [1, 2, 4, 8],
    "batch": 128,
    "steps": 400,
    "n_train": 10_000,
    "n_test": 2_000,
    "together_widths": {"cnn": 16, "resnet18": 16},
    "together_steps": 200,
    "precision_width": 64,
    "hessian_widths": [16, 64],
    "hessian": ["metrics.hessian.eval_samples=1000"],
}
QUICK = {
    "widths": [2],
    "cells": [1, 2],
    "batch": 16,
    "steps": 3,
    "n_train": 96,
    "n_test": 32,
    "together_widths": {"cnn": 4, "resnet18": 2},
    "together_steps": 2,
    "precision_width": 2,
    "hessian_widths": [2],
    "hessian": [
        "metrics.hessian.eval_samples=32",
        "metrics.hessian.max_iter=6",
        "metrics.hessian.trace_matvecs=4",
        "metrics.hessian.density=false",
    ],
}

DATA_DEVICE = ("train.data_device", "host", "device")
"""The option of data resident on the device (key, host value, device value); skipped while it does not exist."""


# ------------------------------------------------------------------------------------------------ data
def cifar_root(given: str | None, tmp: Path, n_train: int, n_test: int) -> tuple[Path, bool]:
    """``(directory, synthetic)``: ``given`` if it holds CIFAR-10's files, else synthetic data under ``tmp``."""
    from landscape.data import cifar10_missing_files, write_synthetic_cifar10

    if given and not cifar10_missing_files(given):
        return Path(given), False
    return write_synthetic_cifar10(tmp / "cifar-10-synthetic", n_train, n_test), True


# ---------------------------------------------------------------------------------------------- cells
def compose(overrides: list[str]) -> Any:
    """The config of one cell from ``overrides`` (Hydra's compose of the ``landscape`` app)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import landscape.cli.app as app

    with initialize_config_dir(config_dir=str(app.CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def unavailable(overrides: list[str]) -> str | None:
    """Why ``overrides`` cannot be composed or would be refused at planning (an option that does not exist
    yet, a value the model does not support), or None."""
    from landscape.config import launch_problems, validate

    try:
        cfg = compose(overrides)
    except Exception as exc:  # noqa: BLE001 - e.g. a key that does not exist (yet): the section says so
        return str(exc).splitlines()[0]
    problems = validate(cfg) or launch_problems(cfg, local=True)
    return "; ".join(problems) if problems else None


def run_one(overrides: list[str], sweep_dir: Path, device: str) -> dict[str, Any]:
    """Run one cell in this process (``landscape.job.run_cell``); its models rows, seconds and peak memory."""
    import torch

    from landscape.job import run_cell
    from landscape.results import load

    cfg = compose([*overrides, f"device={device}"])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_cell(cfg, sweep_dir)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    rows = load(sweep_dir)
    return {"wall_s": wall, "peak_gib": peak, "rows": rows}


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if v != v else v


def _base(cifar: Path, n_train: int, batch: int) -> list[str]:
    return [
        "data=cifar10",
        f"data.root={cifar}",
        f"data.subsample={n_train}",
        f"train.batch_size={batch}",
        "train.checkpoint_every=1000",
        "metrics.l2.enabled=false",
    ]


def cells_per_gpu(cifar: Path, size: dict[str, Any], tmp: Path, quick: bool) -> list[dict[str, Any]]:
    """Section 1: a multirun of k ResNet18 cells of one width on one GPU with ``cells_per_gpu=k``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if quick:
        env["LANDSCAPE_GPU_COUNT"] = "1"  # a fake GPU: the launcher's placement path, the cells on the CPU
    out = []
    for width in size["widths"]:
        for k in size["cells"]:
            sweep = tmp / f"cells-w{width}-k{k}"
            args = [
                *_base(cifar, size["n_train"], size["batch"]),
                "model=resnet18",
                f"model.width={width}",
                f"train.steps={size['steps']}",
                "train.seeds=[0]",
                "data.subsample_seed=" + ",".join(str(i) for i in range(k)),
                "hydra/launcher=local",
                f"hydra.launcher.cells_per_gpu={k}",
                f"hydra.sweep.dir={sweep}",
            ]
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "landscape.cli.app", "-m", *args],
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=1200,
            )
            wall = time.perf_counter() - t0
            row: dict[str, Any] = {"width": width, "batch": size["batch"], "cells": k, "wall_s": round(wall, 2)}
            if proc.returncode != 0:
                row["error"] = " / ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
                out.append(row)
                continue
            from landscape.results import load

            rows = load(sweep)
            steps = rows["training.steps"].astype(float)
            step_s = (rows["training.seconds"].astype(float) / steps).tolist()
            row.update(
                step_s=float(np.mean(step_s)),
                step_s_max=float(np.max(step_s)),
                cell_s=float(rows["seconds"].astype(float).mean()),
                samples_per_s=k * size["batch"] / float(np.mean(step_s)),
                n_params=int(rows["model.n_params"].iloc[0]),
                device=str(rows["device"].iloc[0]),
            )
            out.append(row)
            log.info("cells per GPU: %s", row)
    return out


def _training_seconds(rows: Any) -> float:
    """Training seconds of a cell: a stack's seconds once (its seeds share them), else the seeds' sum."""
    secs = rows["training.seconds"].astype(float)
    together = "training.vectorized" in rows and bool(rows["training.vectorized"].fillna(False).all())
    return float(secs.max() if together else secs.sum())


def together(cifar: Path, size: dict[str, Any], tmp: Path, device: str) -> list[dict[str, Any]]:
    """Section 2: 5 seeds trained together (``train.vectorize=on``) against one after the other (``off``)."""
    out = []
    for model, width in size["together_widths"].items():
        base = [
            *_base(cifar, size["n_train"], size["batch"]),
            f"model={model}",
            f"model.width={width}",
            f"train.steps={size['together_steps']}",
            "train.seeds=[0,1,2,3,4]",
        ]
        if model == "cnn":
            base.append("model.batch_norm=true")
        row: dict[str, Any] = {"model": model, "width": width, "seeds": 5}
        why = unavailable([*base, "train.vectorize=on"])
        if why:
            row["skipped"] = why
            out.append(row)
            continue
        for mode in ("off", "on"):
            r = run_one([*base, f"train.vectorize={mode}"], tmp / f"together-{model}-{mode}", device)
            row[f"{mode}_train_s"] = _training_seconds(r["rows"])
            row[f"{mode}_peak_gib"] = r["peak_gib"]
        row["speedup"] = row["off_train_s"] / max(row["on_train_s"], 1e-9)
        out.append(row)
        log.info("together: %s", row)
    return out


def options(name: str, variants: dict[str, list[str]], base: list[str], tmp: Path, device: str) -> list[dict[str, Any]]:
    """Sections 3 and 4: the same cell under each variant's overrides; a variant whose option does not exist (or
    is refused) is listed with the reason."""
    out = []
    for label, extra in variants.items():
        row: dict[str, Any] = {"variant": label, "overrides": extra}
        why = unavailable([*base, *extra])
        if why:
            row["skipped"] = why
        else:
            r = run_one([*base, *extra], tmp / f"{name}-{label}", device)
            rows = r["rows"]
            steps = float(rows["training.steps"].astype(float).sum())
            row.update(
                train_s=_training_seconds(rows),
                step_s=_training_seconds(rows) / max(steps, 1.0),
                cell_s=r["wall_s"],
                peak_gib=r["peak_gib"],
                train_loss=_num(rows["train_loss"].iloc[0]) if "train_loss" in rows else None,
            )
        out.append(row)
        log.info("%s: %s", name, row)
    return out


def hessian(cifar: Path, size: dict[str, Any], tmp: Path, device: str) -> list[dict[str, Any]]:
    """Section 5: the Hessian family's seconds and products (eigenvalue run vs trace) per width."""
    out = []
    for width in size["hessian_widths"]:
        base = [
            *_base(cifar, size["n_train"], size["batch"]),
            "model=resnet18",
            f"model.width={width}",
            f"train.steps={size['steps']}",
            "train.seeds=[0]",
            "metrics.hessian.enabled=true",
            *size["hessian"],
        ]
        r = run_one(base, tmp / f"hessian-w{width}", device)
        rows = r["rows"]
        first = rows.iloc[0]
        products = _num(first.get("hessian.n_matvecs"))
        trace_products = _num(first.get("hessian.trace_matvecs"))
        seconds = _num(first.get("hessian.seconds"))
        row = {
            "width": width,
            "n_params": int(first["model.n_params"]),
            "eval_samples": _num(first.get("hessian.eval_samples")),
            "hessian_s": seconds,
            "products": products,
            "trace_products": trace_products,
            "eigen_products": None if products is None or trace_products is None else products - trace_products,
            "s_per_product": None if not products or seconds is None else seconds / products,
            "top_eigenvalue": _num(first.get("hessian.top_eigenvalue")),
            "converged": None if first.get("hessian.converged") is None else bool(first.get("hessian.converged")),
            "cell_s": r["wall_s"],
            "peak_gib": r["peak_gib"],
        }
        out.append(row)
        log.info("hessian: %s", row)
    return out


def memory(cifar: Path, size: dict[str, Any], tmp: Path, device: str) -> list[dict[str, Any]]:
    """Section 6: peak GPU memory of one training cell per width (None on the CPU)."""
    out = []
    for width in size["widths"]:
        base = [
            *_base(cifar, size["n_train"], size["batch"]),
            "model=resnet18",
            f"model.width={width}",
            f"train.steps={size['together_steps']}",
            "train.seeds=[0]",
        ]
        r = run_one(base, tmp / f"memory-w{width}", device)
        out.append({"width": width, "batch": size["batch"], "peak_gib": r["peak_gib"], "cell_s": r["wall_s"]})
    return out


# --------------------------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows`` (the given columns; numbers to 3 significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(out: dict[str, Any]) -> str:
    """The tables of every section, for benchmarks/README.md."""
    parts = [f"device: {out['device']}; torch {out['torch']}; data: {out['data']}"]
    sections: list[tuple[str, list[str]]] = [
        ("cells_per_gpu", ["width", "cells", "step_s", "samples_per_s", "cell_s", "wall_s", "error"]),
        ("together", ["model", "width", "off_train_s", "on_train_s", "speedup", "skipped"]),
        ("data_device", ["variant", "step_s", "train_s", "peak_gib", "skipped"]),
        ("precision", ["variant", "step_s", "train_s", "train_loss", "peak_gib", "skipped"]),
        (
            "hessian",
            ["width", "hessian_s", "products", "eigen_products", "trace_products", "s_per_product", "peak_gib"],
        ),
        ("memory", ["width", "batch", "peak_gib", "cell_s"]),
    ]
    for name, cols in sections:
        if out.get(name):
            parts += ["", f"{name}:", table(out[name], cols)]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/gpu.json, gpu_quick.json)")
    parser.add_argument("--cifar", default=None, help="CIFAR-10 python batches (else synthetic, CIFAR-shaped)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: checks the run end to end")
    parser.add_argument(
        "--sections",
        default="cells_per_gpu,together,data_device,precision,hessian,memory",
        help="comma-separated subset of the sections",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import torch

    if not args.quick and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --quick (tiny sizes on the CPU) or on a machine with a GPU")
    if not args.quick and "," in os.environ.get("CUDA_VISIBLE_DEVICES", ",") and torch.cuda.device_count() > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"  # one GPU: the cells share it (set before CUDA starts here)
    size = QUICK if args.quick else FULL
    device = "cpu" if args.quick else "cuda"
    out_path = Path(args.out or f"benchmarks/results/gpu{'_quick' if args.quick else ''}.json")
    wanted = set(args.sections.split(","))
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="landscape-gpu-") as d:
        tmp = Path(d)
        cifar, synthetic = cifar_root(args.cifar, tmp, size["n_train"], size["n_test"])
        out: dict[str, Any] = {
            "device": "cpu (--quick)" if args.quick else torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "data": "synthetic CIFAR-shaped" if synthetic else f"CIFAR-10 at {cifar}",
            "sizes": size,
        }
        prec_base = [
            *_base(cifar, size["n_train"], size["batch"]),
            "model=resnet18",
            f"model.width={size['precision_width']}",
            f"train.steps={size['steps']}",
            "train.seeds=[0]",
        ]
        key, host, dev = DATA_DEVICE
        steps: dict[str, Callable[[], Any]] = {
            "cells_per_gpu": lambda: {"rows": cells_per_gpu(cifar, size, tmp, args.quick)},
            "together": lambda: together(cifar, size, tmp, device),
            "data_device": lambda: options(
                "data_device", {"host": [f"{key}={host}"], "device": [f"{key}={dev}"]}, prec_base, tmp, device
            ),
            "precision": lambda: options(
                "precision",
                {
                    "fp32": ["train.precision=fp32"],
                    "tf32": ["train.precision=tf32"],
                    "bf16": ["train.precision=bf16"],
                    **({} if args.quick else {"compile": ["train.compile=true"]}),
                },
                prec_base,
                tmp,
                device,
            ),
            "hessian": lambda: hessian(cifar, size, tmp, device),
            "memory": lambda: memory(cifar, size, tmp, device),
        }
        for name, step in steps.items():
            if name not in wanted:
                continue
            t0 = time.perf_counter()
            try:
                out[name] = step()
            except Exception as exc:
                log.exception("section %s failed", name)
                out[name] = [{"error": f"{type(exc).__name__}: {exc}"}]
            out.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    cpg = out.get("cells_per_gpu")
    text = report({**out, "cells_per_gpu": cpg["rows"] if isinstance(cpg, dict) else cpg})
    print(text, flush=True)
    out["report"] = text
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
