"""Projected GPU-hours and wall time of a grid on one node of N GPUs (``landscape.gpu_cost``), with its assumptions.

    python benchmarks/gpu_projection.py [--sweep taxonomy_width_batch] [--gpus 8] [--gpu h100,h200]
        [--measured benchmarks/results/gpu.json] [--out benchmarks/results/gpu_projection.json]

For every cell of the sweep: its exact work (``landscape.cost.cell_work``: SGD steps of the 5 seeds, the curves'
steps, evaluations, Hessian-vector products), each unit priced by FLOPs counted exactly on the ``meta`` device,
activation traffic, and a per-step floor (``landscape.gpu_cost``); cells packed ``cells_per_gpu=auto`` as the
launchers pack them. With ``--measured`` (the JSON of ``benchmarks/gpu.py`` on a GPU), the measured seconds per
step of ResNet18 cells at widths 4, 16, 64 scale the projected steps. Printed: GPU-hours per width and part, the
total and the wall time on the node, for the default assumptions and for variants that show what each
assumption is worth (one cell per GPU; no MPS; floors doubled; lower utilisation; bf16; seeds trained together),
and the per-step floor at which the wall time reaches ``--goal-h`` (24 h). Runs on a CPU in about a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this checkout's landscape, whatever is installed

from landscape import gpu_cost as G  # noqa: E402 - after the checkout is on the path
from landscape.cli.app import sweep_configs  # noqa: E402 - after the checkout is on the path

log = logging.getLogger("gpu_projection")

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "one cell per GPU": {"cells_per_gpu": 1},
    "no MPS (time slicing)": {"mps": False},
    "floors x2": {"step_floor_s": 2 * G.Assumptions.step_floor_s, "curve_floor_s": 2 * G.Assumptions.curve_floor_s},
    "utilisation halved": {"compute_util": 0.25, "memory_util": 0.35},
    "bf16": {"precision": "bf16"},
}
"""Named changes of the assumptions, projected beside the default."""


def _summary(p: G.GridProjection) -> dict[str, Any]:
    def r(x: G.Range) -> list[float]:
        return [round(x.low, 2), round(x.high, 2)]

    return {
        "gpu": p.gpu.name,
        "n_gpus": p.n_gpus,
        "assumptions": p.assumptions.describe(),
        "gpu_hours": r(p.gpu_hours()),
        "gpu_hours_by_part": {c: r(p.gpu_hours(c)) for c in ("models", "curves", "hessian", "cka")},
        "wall_hours": r(p.wall_hours()),
        "by_width": {
            str(w): {
                "cells_per_gpu": sorted(set(row["k"])),
                **{c: r(v) for c, v in row.items() if c != "k"},
            }
            for w, row in sorted(p.by_width().items())
        },
    }


def floor_for_goal(cfgs: list[Any], gpu: G.GPU, a: G.Assumptions, n_gpus: int, goal_h: float) -> float:
    """The training-step floor (seconds; curve and product floors scaled alike) at which the grid's wall time on
    ``n_gpus`` reaches ``goal_h`` hours (bisection on the upper end of the range)."""
    lo, hi = 1e-4, 0.2

    def wall(floor: float) -> float:
        s = floor / a.step_floor_s
        b = G.with_assumptions(a, step_floor_s=floor, curve_floor_s=a.curve_floor_s * s, hvp_floor_s=a.hvp_floor_s * s)
        return G.project_grid(cfgs, gpu, b, n_gpus).wall_hours().high

    if wall(hi) < goal_h:
        return hi
    for _ in range(12):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if wall(mid) < goal_h else (lo, mid)
    return lo


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="taxonomy_width_batch")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs of the node")
    parser.add_argument("--gpu", default="h100,h200", help=f"comma-separated, of {', '.join(G.GPUS)}")
    parser.add_argument("--measured", default="benchmarks/results/gpu.json", help="benchmarks/gpu.py's output")
    parser.add_argument("--out", default="benchmarks/results/gpu_projection.json")
    parser.add_argument("--goal-h", type=float, default=24.0)
    parser.add_argument("--no-variants", action="store_true", help="only the default assumptions")
    parser.add_argument("--override", action="append", default=[], help="a config override for every cell")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    tic = time.perf_counter()
    cfgs = sweep_configs(args.sweep, args.override)
    measured = G.load_measured(args.measured)
    out: dict[str, Any] = {"sweep": args.sweep, "cells": len(cfgs), "measured": bool(measured), "projections": {}}
    lines = [f"{args.sweep}: {len(cfgs)} cells; " + ("measured steps applied" if measured else "FLOP counts only")]
    for name in args.gpu.split(","):
        if name not in G.GPUS:
            parser.error(f"--gpu {name}: expected one of {', '.join(G.GPUS)}")
        gpu = G.GPUS[name]
        base = G.Assumptions()
        factors = G.calibration(measured, gpu, base) if measured else None
        for variant, changes in VARIANTS.items():
            if args.no_variants and variant != "default":
                continue
            a = G.with_assumptions(base, **changes)
            p = G.project_grid(cfgs, gpu, a, args.gpus, factors=factors)
            out["projections"][f"{name}: {variant}"] = _summary(p)
            if variant == "default":
                lines += ["", G.format_projection(p), f"assumptions: {a.describe()}"]
            else:
                lines.append(f"  {variant}: " + G.format_projection(p).splitlines()[-1])
        try:  # seeds trained together (train.vectorize=on): only where the models can be stacked
            together = sweep_configs(args.sweep, [*args.override, "train.vectorize=on"])
            p = G.project_grid(together, gpu, base, args.gpus, factors=factors)
            out["projections"][f"{name}: seeds together"] = _summary(p)
            lines.append("  seeds together: " + G.format_projection(p).splitlines()[-1])
        except ValueError as exc:
            lines.append(f"  seeds together: not projected ({str(exc).splitlines()[0]})")
        if not args.no_variants:
            floor = floor_for_goal(cfgs, gpu, base, args.gpus, args.goal_h)
            out["projections"][f"{name}: floor for {args.goal_h:g} h"] = floor
            lines.append(f"  the wall time reaches {args.goal_h:g} h at a training-step floor of {floor * 1e3:.1f} ms")
    text = "\n".join(lines)
    print(text, flush=True)
    out["text"] = text
    out["seconds"] = round(time.perf_counter() - tic, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
