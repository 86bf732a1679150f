"""Seeds of BatchNorm models trained together vs one by one: the measurement behind ``train.vectorize: auto``.

Run: ``.venv/bin/python benchmarks/bench_bn_stack.py [--quick] [--device cpu|cuda] [--out FILE.json]``.

For the CNN with BatchNorm and the CIFAR-style ResNet18 at small widths, on CIFAR-shaped synthetic data
(``[n, 3, 32, 32]``, 10 classes), K seeds are trained for the same steps twice: one after another with
``training.train_model`` (serial) and as one stack with ``vectorized.train_together`` (per-seed BatchNorm running
statistics under ``vmap``). The two alternate ``--reps`` times in one process, after a warm-up; the table gives the median wall
seconds per step of all K seeds, the ratio serial / together (> 1: stacking is faster), samples/s of the stack and
the largest parameter difference between the two. Torch runs with one thread on CPU (as the jobs do).

``--precision``: instead, the effect of ``train.precision`` (``landscape.precision``) on a tiny real cell: an MLP
(64-64) and a CNN with BatchNorm (width 8) trained on scikit-learn's digits (1437 images ``[1, 8, 8]``,
standardised) for ``--epochs`` epochs in batches of 64, seed 0, with fp32, tf32 and bf16 steps; the final
training loss and accuracy (evaluated in float32) and the wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402 - after the path setup

from landscape.models import build_model  # noqa: E402 - after the path setup
from landscape.training import TrainSettings, train_model  # noqa: E402 - after the path setup
from landscape.vectorized import train_together  # noqa: E402 - after the path setup

SHAPE, N_CLASSES = (3, 32, 32), 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(name: str, width: int, k: int, batch: int, steps: int, reps: int, device: torch.device) -> dict[str, Any]:
    """Median seconds per step (all ``k`` seeds) serial and together for one model, and their parameter gap."""
    cfg = OmegaConf.create(dict(name=name, width=width, depth=2, activation="relu", batch_norm=True))
    g = torch.Generator().manual_seed(0)
    n = batch * steps
    x = torch.randn(n, *SHAPE, generator=g).to(device)
    y = torch.randint(0, N_CLASSES, (n,), generator=g).to(device)
    st = TrainSettings(
        loss="cross_entropy",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=batch,
        epochs=1,
        steps=None,
        schedule="constant",
        lr_decay=1.0,
        lr_milestones=[],
        checkpoint_every=100,
    )
    seeds = list(range(k))

    def models() -> dict[int, torch.nn.Module]:
        return {s: build_model(cfg, SHAPE, N_CLASSES, seed=s).to(device) for s in seeds}

    serial, together, diff = [], [], 0.0
    for rep in range(reps + 1):  # the first repetition warms up (allocators, kernels' first calls): not counted
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            ms = models()
            _sync(device)
            t = time.perf_counter()
            for s in seeds:
                train_model(ms[s], x, y, st, s, root / "s" / str(s))
            _sync(device)
            t_serial = (time.perf_counter() - t) / steps
            mv = models()
            _sync(device)
            t = time.perf_counter()
            train_together(mv, x, y, st, {s: root / "v" / str(s) for s in seeds}, root / "g")
            _sync(device)
            if rep:
                serial.append(t_serial)
                together.append((time.perf_counter() - t) / steps)
        diff = max(
            diff,
            max(
                float((p - q).detach().abs().max())
                for s in seeds
                for p, q in zip(ms[s].parameters(), mv[s].parameters(), strict=True)
            ),
        )
    ts, tv = statistics.median(serial), statistics.median(together)
    n_params = sum(p.numel() for p in build_model(cfg, SHAPE, N_CLASSES).parameters())
    return {
        "model": name,
        "model.width": width,
        "n_params": n_params,
        "seeds": k,
        "batch": batch,
        "steps": steps,
        "device": str(device),
        "serial_s_per_step": ts,
        "together_s_per_step": tv,
        "ratio": ts / tv,
        "together_samples_per_s": k * batch / tv,
        "max_abs_param_diff": diff,
    }


def bench_precision(epochs: int, device: torch.device) -> list[dict[str, Any]]:
    """Final training loss / accuracy (float32 evaluation) and seconds of a tiny digits cell per precision."""
    from sklearn.datasets import load_digits

    from landscape.training import evaluate, make_loss

    digits = load_digits()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(digits.target), generator=gen)[:1437]
    x = torch.tensor(digits.images, dtype=torch.float32)[order].unsqueeze(1)
    x = ((x - x.mean()) / x.std()).to(device)
    y = torch.tensor(digits.target, dtype=torch.long)[order].to(device)
    rows = []
    for spec in (
        dict(name="mlp", width=64, depth=2, activation="relu", batch_norm=False),
        dict(name="cnn", width=8, depth=2, activation="relu", batch_norm=True),
    ):
        cfg = OmegaConf.create(spec)
        for precision in ("fp32", "tf32", "bf16"):
            st = TrainSettings(
                loss="cross_entropy",
                lr=0.05,
                momentum=0.9,
                weight_decay=0.0,
                batch_size=64,
                epochs=epochs,
                steps=None,
                schedule="constant",
                lr_decay=1.0,
                lr_milestones=[],
                checkpoint_every=1000,
                precision=precision,
            )
            model = build_model(cfg, (1, 8, 8), 10, seed=0).to(device)
            with tempfile.TemporaryDirectory() as d:
                _sync(device)
                t = time.perf_counter()
                train_model(model, x, y, st, 0, Path(d))
                _sync(device)
                seconds = time.perf_counter() - t
            loss, acc = evaluate(model, x, y, make_loss("cross_entropy"))
            rows.append(
                {
                    "model": spec["name"],
                    "precision": precision,
                    "train_loss": loss,
                    "train_acc": acc,
                    "seconds": seconds,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one tiny case (a smoke run: its figures mean nothing)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--precision", action="store_true", help="the precision comparison instead (module docstring)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the --precision cells")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    if args.precision:
        rows = bench_precision(args.epochs, device)
        print(f"{'model':<5} {'precision':<9} {'train loss':>11} {'train acc':>9} {'seconds':>8}")
        for r in rows:
            print(
                f"{r['model']:<5} {r['precision']:<9} {r['train_loss']:>11.5f} {r['train_acc']:>9.4f} "
                f"{r['seconds']:>8.2f}"
            )
        result = {"precision": rows, "torch": torch.__version__, "device": str(device)}
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1))
        return result
    grid = (
        [("cnn", 4)]
        if args.quick
        else [("cnn", 8), ("cnn", 16), ("cnn", 32), ("resnet18", 2), ("resnet18", 4), ("resnet18", 8)]
    )
    steps, reps = (2, 1) if args.quick else (args.steps, args.reps)
    load0 = os.getloadavg()[0]
    rows = [bench_one(m, w, args.seeds, args.batch, steps, reps, device) for m, w in grid]
    out = {"rows": rows, "load_average": [load0, os.getloadavg()[0]], "torch": torch.__version__}
    print(
        f"{'model':<9} {'width':>5} {'params':>8} {'serial s/step':>14} {'together s/step':>16} {'ratio':>6} {'max diff':>9}"
    )
    for r in rows:
        print(
            f"{r['model']:<9} {r['model.width']:>5} {r['n_params']:>8} {r['serial_s_per_step']:>14.4f} "
            f"{r['together_s_per_step']:>16.4f} {r['ratio']:>6.2f} {r['max_abs_param_diff']:>9.1e}"
        )
    print(f"{args.seeds} seeds, batch {args.batch}, {device}, load average {out['load_average']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
