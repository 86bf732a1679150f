"""The demo and the phase command, timed end to end as a user runs them (real processes, real files).

    python benchmarks/bench_demo.py demo  [--out DIR]                 # `make demo` minus set-up: target <= 180 s
    python benchmarks/bench_demo.py phase [--sweep DIR] [--repeat N] [--baseline CHECKOUT]   # target <= 5 s
    python benchmarks/bench_demo.py share SWEEP_DIR [SWEEP_DIR ...]   # where a finished sweep's time went
    python benchmarks/bench_demo.py describe SWEEP_DIR                # the README's description of its phase map

``demo`` runs the demo sweep as ``make demo`` does (``landscape -m +sweep=demo hydra/launcher=local``: a pool of
one-thread workers, one per core) into a fresh directory, then ``landscape-phase`` on it, and reports both wall
times and CPU times, the phases found, the CPU count and the load average before and after (on a shared
machine read the wall times with the load; on an idle machine with N cores the sweep's wall time is about its
CPU time / N). ``phase`` times ``landscape-phase`` (a fresh process each
time, so imports count) on a 32-cell sweep: ``--sweep`` names one, else 32 cells of the published taxonomy
results (4 widths x 8 batch sizes, 5 models and 10 pairs each) are imported; with ``--baseline`` (a checkout of
an older version of the project) the old and the new command run interleaved, side by side, and their ratio
is reported. ``share`` (and ``demo`` after its run) reads a sweep's rows: the cells' seconds, the share of them
spent training curves (``connectivity.curve_seconds``), the curve budgets the protocol reached, and curve SGD
steps per second against the models' (a curve step evaluates the model at one point of the curve: one
Bezier combination more than a model step); give it the demo of an older checkout to compare before/after.
Results go to stdout as a table and as one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:  # pragma: no cover - not Linux
        return []


def _env(root: Path) -> dict[str, str]:
    return dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cpu_children() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(
    cmd: list[str], root: Path = ROOT, cpu: list[float] | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    """Wall seconds of ``cmd``; its CPU seconds (user + system, children included) appended to ``cpu``."""
    c0 = _cpu_children()
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(root), cwd=root)
    dt = time.perf_counter() - t
    if cpu is not None:
        cpu.append(_cpu_children() - c0)
    if res.returncode != 0:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return dt, res


def bench_demo(out: Path | None) -> dict:
    out = out or Path(tempfile.mkdtemp(prefix="landscape-demo-"))
    sweep = out / "demo"
    load_before = _loadavg()
    cpu: list[float] = []
    t_sweep, _ = _timed(
        [
            sys.executable,
            "-m",
            "landscape.cli.app",
            "-m",
            "+sweep=demo",
            "hydra/launcher=local",
            f"hydra.sweep.dir={sweep}",
        ],
        cpu=cpu,
    )
    t_phase, res = _timed(
        [
            sys.executable,
            "-m",
            "landscape.cli.phase",
            str(sweep),
            "--out",
            str(sweep / "phase"),
            "--formats",
            "png",
            "pdf",
        ],
        cpu=cpu,
    )
    import pandas as pd

    cells = pd.read_csv(sweep / "phase" / "cells.csv")
    phases = {str(k): int(v) for k, v in cells["phase"].value_counts().items()}
    result = {
        "section": "demo",
        "sweep_seconds": round(t_sweep, 1),
        "phase_seconds": round(t_phase, 1),
        "total_seconds": round(t_sweep + t_phase, 1),
        "target_seconds": 180,
        "cells": int(len(cells)),
        "sweep_cpu_seconds": round(cpu[0], 1),
        "phase_cpu_seconds": round(cpu[1], 1),
        "phases": phases,
        "n_phases": len(phases),
        "min_confidence": float(cells["phase_confidence"].min()),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "out": str(sweep),
    }
    print(res.stdout)
    result["time_shares"] = time_shares(sweep)
    print(
        f"demo: sweep {t_sweep:.1f} s + landscape-phase {t_phase:.1f} s = {t_sweep + t_phase:.1f} s "
        f"(target <= 180 s); CPU time {cpu[0]:.1f} s + {cpu[1]:.1f} s (as `make demo`: the cells run in a pool of "
        f"one-thread workers, one per core); {len(cells)} cells, phases {phases}; "
        f"{os.cpu_count()} CPUs, load average {load_before} -> {result['loadavg_after']}"
    )
    return result


def time_shares(sweep: Path) -> dict:
    """Where a finished sweep's cell time went, from its rows: cell seconds (summed over cells), model training,
    curve training (with its evaluations), the curves' share, the final budgets reached (multiples of the
    endpoints' steps) and the SGD steps per second of curves and of models."""
    import pandas as pd

    models = pd.read_parquet(sweep / "results" / "models")
    pairs = pd.read_parquet(sweep / "results" / "pairs")
    cell_s = float(models.groupby("cell_id")["seconds"].first().sum())
    # seeds trained together report their stack's time each: counted once per cell, so that models' and curves'
    # (each curve reports its share of its stack's time) steps per second are both throughputs
    stacked = models["training.vectorized"].fillna(False).astype(bool) if "training.vectorized" in models else False
    train_s = float(
        models[stacked].groupby("cell_id")["training.seconds"].max().sum() + models[~stacked]["training.seconds"].sum()
    )
    curve_s = float(pairs["connectivity.curve_seconds"].sum())
    out = {
        "sweep": str(sweep),
        "cell_seconds": round(cell_s, 1),
        "training_seconds": round(train_s, 1),
        "curve_seconds": round(curve_s, 1),
        "curve_share": round(curve_s / cell_s, 3),
        "model_steps_per_s": round(float(models["training.steps"].sum()) / train_s, 1),
        "curve_steps_per_s": round(float(pairs["connectivity.steps"].sum()) / curve_s, 1),
    }
    if "connectivity.final_budget" in pairs.columns:
        out["final_budgets"] = {
            str(k): int(v) for k, v in pairs["connectivity.final_budget"].value_counts().sort_index().items()
        }
        out["stop_reasons"] = {str(k): int(v) for k, v in pairs["connectivity.stop_reason"].value_counts().items()}
    else:  # before the protocol: the fixed budget and its confirmation retraining
        out["curve_epochs"] = {
            str(k): int(v) for k, v in pairs["connectivity.epochs"].value_counts().sort_index().items()
        }
    print(
        f"{sweep}: cells {cell_s:.1f} s, model training {train_s:.1f} s, curves {curve_s:.1f} s "
        f"({100 * out['curve_share']:.0f} % of the cells' time); steps/s: curves {out['curve_steps_per_s']}, "
        f"models {out['model_steps_per_s']}"
    )
    return out


def describe(sweep: Path, phase_dir: Path | None = None) -> str:
    """The README's description of a finished sweep's phase map, generated from ``landscape-phase``'s
    ``cells.csv`` (``phase_dir``, default ``SWEEP/phase``): per phase, its cells, the axis values where it occurs,
    and the ranges of training loss, mc and CKA; then the unlabelled cells with their reason. Markdown lines."""
    import pandas as pd

    cells = pd.read_csv((phase_dir or sweep / "phase") / "cells.csv")
    knobs = [c for c in cells.columns[:2]]
    lines = []

    def span(col: str, fmt: str) -> str:
        v = part[col].dropna() if col in part else pd.Series(dtype=float)
        return (
            "-"
            if v.empty
            else (fmt.format(v.min()) if v.min() == v.max() else f"{fmt.format(v.min())} to {fmt.format(v.max())}")
        )

    for phase in ("I", "II", "III", "IV-A", "IV-B"):
        part = cells[cells["phase"] == phase]
        if part.empty:
            continue
        where = "; ".join(f"{k} {', '.join(f'{x:g}' for x in sorted(part[k].unique()))}" for k in knobs)
        low = int((part["phase_confidence"] < 0.9).sum())
        lines.append(
            f"- {phase} ({len(part)} cells{f', {low} with confidence < 0.9' if low else ''}): {where}; "
            f"training loss {span('train_loss', '{:.3g}')} nats, mc {span('connectivity.mc', '{:+.2f}')} pp, "
            f"CKA {span('cka', '{:.2f}')}"
        )
    rest = cells[cells["phase"].isna()]
    for _, r in rest.iterrows():
        lines.append(f"- no label at {', '.join(f'{k}={r[k]:g}' for k in knobs)}: {r.get('phase_reason')}")
    absent = [p for p in ("I", "II", "III", "IV-A", "IV-B") if p not in set(cells["phase"].dropna())]
    if absent:
        lines.append(f"- absent: {', '.join(absent)}")
    return "\n".join(lines)


def _taxonomy_sweep(dest: Path) -> Path:
    spec = importlib.util.spec_from_file_location("taxonomy2021", ROOT / "analysis" / "taxonomy2021.py")
    tax = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tax)
    tax.import_reference(dest, widths=[2, 8, 32, 128], batch_sizes=[16, 32, 64, 128, 256, 512, 724, 1024])
    return dest


def bench_phase(sweep: Path | None, repeat: int, baseline: Path | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="landscape-phase-bench-"))
    sweep = sweep or _taxonomy_sweep(tmp / "tax32")
    load_before = _loadavg()
    runs: dict[str, list[float]] = {"new": []}
    roots = {"new": ROOT}
    if baseline is not None:
        runs["baseline"] = []
        roots["baseline"] = Path(baseline).resolve()
    for _i in range(repeat):
        for name, root in roots.items():  # interleaved: the same load for both
            cmd = [
                sys.executable,
                "-m",
                "landscape.cli.phase",
                str(sweep),
                "--x",
                "model.width",
                "--y",
                "train.batch_size",
                "--out",
                str(tmp / f"out-{name}"),
            ]
            dt, _ = _timed(cmd, root)
            runs[name].append(dt)
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "section": "phase",
        "sweep": str(sweep),
        "repeat": repeat,
        "seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_seconds": {k: round(v, 2) for k, v in med.items()},
        "target_seconds": 5,
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
        "cpus": os.cpu_count(),
    }
    if "baseline" in med:
        result["speedup"] = round(med["baseline"] / med["new"], 2)
    print(
        f"landscape-phase on {sweep}: median {med['new']:.2f} s over {repeat} runs (target <= 5 s)"
        + (f"; baseline {med['baseline']:.2f} s, {result['speedup']}x faster" if "baseline" in med else "")
        + f"; load average {load_before} -> {result['loadavg_after']}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="section", required=True)
    d = sub.add_parser("demo")
    d.add_argument("--out", type=Path, default=None)
    p = sub.add_parser("phase")
    p.add_argument("--sweep", type=Path, default=None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--baseline", type=Path, default=None, help="a checkout of an older version, run side by side")
    s = sub.add_parser("share")
    s.add_argument("sweeps", type=Path, nargs="+")
    w = sub.add_parser("describe", help="the README's description of a sweep's phase map (after landscape-phase)")
    w.add_argument("sweep", type=Path)
    w.add_argument("--phase-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.section == "describe":
        print(describe(args.sweep, args.phase_dir))
        return 0
    if args.section == "share":
        result = {"section": "share", "sweeps": [time_shares(d) for d in args.sweeps]}
    else:
        result = bench_demo(args.out) if args.section == "demo" else bench_phase(args.sweep, args.repeat, args.baseline)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
