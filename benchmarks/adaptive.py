"""The adaptive sweeper against the full grid, on real grids (issue 24).

    python benchmarks/adaptive.py [--out DIR] [--sweeps NAME ...] [--fractions [0.3 0.4 0.5]]
                                  [--replay 0.15 0.2 0.25 0.3 0.35 0.4 0.45 0.5] [--random-seeds 20] [--json PATH]
                                  [--full-from EARLIER_DIR]

For each sweep (default: ``sweeps/digits_width_batch.yaml``, 48 cells, and
``sweeps/mnist1d_width_noise.yaml``, 49 cells; neither was used to tune the rule):

1. the full grid, ``landscape -m +sweep=NAME`` into ``DIR/NAME/full`` (in this process's launcher: one cell at a
   time; a rerun skips the done cells and reports the first run's wall time; ``--full-from EARLIER_DIR``: the
   full grid of an earlier run, ``EARLIER_DIR/NAME/full``, not launched again), then ``landscape-phase`` on it:
   the reference labels (``cells.csv``) and the phase rule it applied;
2. for each ``--fractions`` f (none: the replay alone), the adaptive sweep ``... hydra/sweeper=adaptive
   hydra.sweeper.max_cells=f`` into ``DIR/NAME/adaptive-f`` and ``landscape-phase`` on it: its measured cells,
   the others inferred by ``landscape.adaptive.complete_cells`` with the phase rule (measured + inferred labels of
   every grid point);
3. the table: cells measured / grid, the share of grid points whose label equals the full grid's (a point
   both leave unlabelled agrees; an unknown inferred label counts as a disagreement), the same over the inferred
   points only and over the cells whose full-grid label is reproducible (confidence >= 0.9), the points left
   unknown, the compute: the cells' own seconds (their rows' ``seconds``) of the
   adaptive run against the full run's, and the same cells priced by the full run's seconds (load-independent:
   the machine is shared), and the wall time of both launches (with the sweeper's labelling between waves);
4. a replay of the rule on the full grid's cells (``landscape.adaptive.simulate``: what the sweeper would
   measure if each cell gave the full run's label and values, no training) at the ``--replay`` fractions, beside
   the same number of cells chosen at random after the same initial design (mean over ``--random-seeds``) with
   the same inference, with the agreement over the points not measured, over the confident cells and the points
   left unknown: how far below 50 % the agreement holds. The replay at the ``--fractions`` is checked against the real runs (same cells?). For
   scale: the full grid's mean label confidence, the share of its labels a rerun with new seeds would repeat.

Prints the tables (Markdown) and writes every value to ``--json`` (default ``DIR/adaptive.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from landscape import adaptive as ad  # noqa: E402 - after the path insert, to run from a checkout

SWEEPS = ("digits_width_batch", "mnist1d_width_noise")
#: Full-grid label confidence at or above which a cell's label counts as reproducible.
CONFIDENT = 0.9


def _env() -> dict[str, str]:
    return dict(
        os.environ,
        MPLBACKEND="Agg",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def _run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (its output to ``log``); its wall seconds. Exits on failure, naming the log."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT, check=False)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return time.perf_counter() - t0


def landscape(args: list[str], log: Path) -> float:
    return _run([sys.executable, "-m", "landscape.cli.app", *args], log)


def phase_cells(sweep_dir: Path, log: Path) -> pd.DataFrame:
    """``landscape-phase`` on ``sweep_dir`` (its ``phase:`` axes); its ``cells.csv``."""
    out = sweep_dir / "analysis" / "bench"
    _run([sys.executable, "-m", "landscape.cli.phase", str(sweep_dir), "--out", str(out)], log)
    return pd.read_csv(out / "cells.csv")


def labels_by_point(grid: ad.Grid, cells: pd.DataFrame) -> dict[ad.Point, str | None]:
    """``{point: label or None}`` of a ``cells.csv``."""
    out = {}
    for p, lab in zip(ad.points_of(grid, cells), cells["phase"].tolist(), strict=True):
        if p is not None:
            out[p] = lab if isinstance(lab, str) else None
    return out


def cell_seconds(sweep_dir: Path) -> dict[str, float]:
    """``{cell_id: seconds}``: each cell's own wall seconds (its models rows' ``seconds``)."""
    from landscape.results import load

    models = load(sweep_dir, table="models")
    return models.groupby("cell_id")["seconds"].first().astype(float).to_dict()


def grid_of(sweep_dir: Path) -> tuple[ad.Grid, dict[ad.Point, str]]:
    """The grid and ``{point: cell_id}`` of the full grid's launch (its launch record's overrides)."""
    rec = json.loads(sorted((sweep_dir / "launches").glob("*.json"))[0].read_text())
    jobs = [c["overrides"] for c in rec["cells"]]
    grid, index = ad.grid_from_jobs(jobs)
    return grid, {p: rec["cells"][i]["cell_id"] for p, i in index.items()}


def phase_rule_of(sweep_dir: Path, cells: pd.DataFrame):
    """The phase rule ``landscape-phase`` applies to ``sweep_dir`` (its ``phase:`` thresholds; ``calibrate``: from
    ``cells``)."""
    from landscape import phase as ph
    from landscape.cli import phase as cli_phase

    settings, t_over, _, _ = cli_phase.resolve_settings(sweep_dir, {})
    return ph.resolve_rule(settings["thresholds"], t_over, cells)[0]


def replay(
    grid: ad.Grid,
    truth: dict[ad.Point, ad.Measured],
    fraction: float,
    phase_rule,
    rule: str = "boundary",
    seed: int = 0,
    confident: list[ad.Point] | None = None,
) -> dict:
    """The rule replayed on ``truth``: agreement over all points, over the points not measured, over ``confident``,
    the points left unknown, the cells measured and which."""
    max_cells = ad.resolve_max_cells(fraction, grid.size)
    _, measured = ad.simulate(grid.shape, truth, max_cells, rule=rule, seed=seed, phase_rule=phase_rule)
    full = ad.complete_map(grid.shape, measured, phase_rule)
    labels = {p: v[1] for p, v in full.items()}
    ref = {p: t.label for p, t in truth.items()}
    rest = [p for p in grid.points() if p not in measured]
    return {
        "agreement": ad.agreement(labels, ref),
        "agreement_not_measured": ad.agreement(labels, ref, rest),
        "agreement_confident": ad.agreement(labels, ref, confident) if confident else float("nan"),
        "unknown": sum(1 for p in rest if labels.get(p) is None),
        "measured": len(measured),
        "points": set(measured),
    }


def bench_sweep(
    name: str,
    out: Path,
    fractions: list[float],
    replays: list[float],
    n_random: int,
    full_from: Path | None = None,
) -> dict:
    root = out / name
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    if full_from is not None:  # the full grid of an earlier benchmark, as it is (not launched again)
        full_dir, wall_file = full_from / name / "full", full_from / name / "full-wall.json"
        print(f"[{name}] full grid from {full_dir}", flush=True)
        wall_full = float(json.loads(wall_file.read_text())["wall_s"])
    else:
        full_dir = root / "full"
        print(f"[{name}] full grid -> {full_dir}", flush=True)
        wall_file = root / "full-wall.json"  # the first run's wall time (a rerun skips the done cells)
        wall_full = landscape(["-m", f"+sweep={name}", f"hydra.sweep.dir={full_dir}"], log)
        if wall_file.is_file():
            wall_full = float(json.loads(wall_file.read_text())["wall_s"])
        else:
            wall_file.write_text(json.dumps({"wall_s": wall_full}))
    grid, ids = grid_of(full_dir)
    ref_cells = phase_cells(full_dir, log)
    ref = labels_by_point(grid, ref_cells)
    secs_full = cell_seconds(full_dir)
    total_full = sum(secs_full.get(ids[p], 0.0) for p in grid.points())
    rule_full = phase_rule_of(full_dir, ref_cells)
    truth = ad.measured_from_cells(grid, ref_cells, rule_full.columns)
    conf = {p: m.confidence for p, m in truth.items()}
    confident = [p for p in grid.points() if conf.get(p, 0.0) >= CONFIDENT]
    result = {
        "sweep": name,
        "grid": grid.to_dict(),
        "n_points": grid.size,
        "phases_full": pd.Series([v for v in ref.values() if v]).value_counts().to_dict(),
        "unlabelled_full": sum(v is None for v in ref.values()),
        # the share of cells whose label a rerun of the full grid with new seeds is expected to repeat
        "rerun_agreement_full": float(np.nanmean([conf.get(p, np.nan) for p in grid.points()])),
        "n_confident": len(confident),
        "full": {"wall_s": wall_full, "cell_seconds": total_full},
        "adaptive": [],
        "replay": [],
    }
    for f in fractions:
        d = root / f"adaptive-{f:g}"
        print(f"[{name}] adaptive, max_cells {f:g} -> {d}", flush=True)
        wall_file = root / f"adaptive-{f:g}-wall.json"  # the first run's (a rerun finds the budget spent)
        wall = landscape(
            ["-m", f"+sweep={name}", "hydra/sweeper=adaptive", f"hydra.sweeper.max_cells={f}", f"hydra.sweep.dir={d}"],
            log,
        )
        if wall_file.is_file():
            wall = float(json.loads(wall_file.read_text())["wall_s"])
        else:
            wall_file.write_text(json.dumps({"wall_s": wall}))
        cells = phase_cells(d, log)
        # the map as landscape-phase completes it with the rule's values (landscape.adaptive.complete_cells with
        # the phase rule), from the measured cells' rows
        cells = cells[cells["label_source"] == ad.MEASURED] if "label_source" in cells.columns else cells
        cells = ad.complete_cells(grid, cells, phase_rule=phase_rule_of(d, cells))
        labels = labels_by_point(grid, cells)
        source = dict(zip(ad.points_of(grid, cells), cells["label_source"].tolist(), strict=True))
        measured = {p for p, s in source.items() if s == ad.MEASURED}
        inferred = [p for p, s in source.items() if s != ad.MEASURED]
        secs = cell_seconds(d)
        state = ad.read_state(d)
        rep_points = replay(grid, truth, f, rule_full)["points"]
        result["adaptive"].append(
            {
                "max_cells": f,
                "measured": len(measured),
                "agreement": ad.agreement(labels, ref, grid.points()),
                "agreement_measured": ad.agreement(labels, ref, measured),
                "agreement_not_measured": ad.agreement(labels, ref, inferred),
                "agreement_confident": ad.agreement(labels, ref, confident),
                "unknown": sum(1 for p in inferred if labels.get(p) is None),
                "cell_seconds": sum(secs.values()),
                "cell_seconds_at_full_prices": sum(secs_full.get(ids[p], 0.0) for p in measured),
                "wall_s": wall,
                "waves": len(state.waves) if state else None,
                "replay_same_cells": rep_points == measured,
            }
        )
    rng_seeds = range(n_random)
    for f in replays:
        rep = replay(grid, truth, f, rule_full, confident=confident)
        rand = [replay(grid, truth, f, rule_full, rule="random", seed=s)["agreement"] for s in rng_seeds]
        rep.pop("points")
        result["replay"].append(
            {"max_cells": f, **rep, "random_mean": float(np.mean(rand)), "random_min": float(np.min(rand))}
        )
    result["full"]["wall_s"] = wall_full
    return result


def tables(results: list[dict]) -> str:
    lines = [
        "| grid | max_cells | cells measured / grid | agreement (all points) | agreement (not measured) | agreement "
        f"(full-grid confidence >= {CONFIDENT:g}) | unknown | cell seconds (adaptive / full) | compute saved (full-run "
        "prices) | wall s (adaptive / full) | waves |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for a in r["adaptive"]:
            saved = 1 - a["cell_seconds_at_full_prices"] / r["full"]["cell_seconds"]
            lines.append(
                f"| {r['sweep']} ({r['n_points']}) | {a['max_cells']:g} | {a['measured']} / {r['n_points']} "
                f"({100 * a['measured'] / r['n_points']:.0f} %) | {100 * a['agreement']:.1f} % | "
                f"{100 * a['agreement_not_measured']:.1f} % | {100 * a['agreement_confident']:.1f} % "
                f"({r['n_confident']} cells) | {a['unknown']} | "
                f"{a['cell_seconds']:.0f} / {r['full']['cell_seconds']:.0f} | {100 * saved:.0f} % | "
                f"{a['wall_s']:.0f} / {r['full']['wall_s']:.0f} | {a['waves']} |"
            )
    lines += [
        "",
        "| grid | max_cells | cells | agreement, adaptive rule (replay) | not measured | full-grid confidence >= "
        f"{CONFIDENT:g} | unknown | agreement, random cells (mean, min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for a in r["replay"]:
            lines.append(
                f"| {r['sweep']} | {a['max_cells']:g} | {a['measured']} ({100 * a['measured'] / r['n_points']:.0f} %) | "
                f"{100 * a['agreement']:.1f} % | {100 * a['agreement_not_measured']:.1f} % | "
                f"{100 * a['agreement_confident']:.1f} % | {a['unknown']} | "
                f"{100 * a['random_mean']:.1f} %, {100 * a['random_min']:.1f} % |"
            )
    lines.append("")
    for r in results:
        same = all(a["replay_same_cells"] for a in r["adaptive"])
        lines.append(
            f"{r['sweep']}: full grid phases {r['phases_full']}, {r['unlabelled_full']} cells unlabelled; a rerun of "
            f"the full grid with new seeds would repeat {100 * r['rerun_agreement_full']:.1f} % of its labels (mean "
            f"confidence); replay measured the same cells as the real runs: {same}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/adaptive/bench"))
    ap.add_argument("--sweeps", nargs="+", default=list(SWEEPS))
    ap.add_argument("--fractions", nargs="*", type=float, default=[0.3, 0.4, 0.5])
    ap.add_argument("--replay", nargs="+", type=float, default=[0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5])
    ap.add_argument("--random-seeds", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--full-from",
        type=Path,
        default=None,
        help="take the full grids from this earlier --out (DIR/NAME/full, its full-wall.json) instead of running them",
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    results = [
        bench_sweep(s, args.out, args.fractions, args.replay, args.random_seeds, args.full_from) for s in args.sweeps
    ]
    text = tables(results)
    print(f"load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores\n")
    print(text)
    path = args.json or args.out / "adaptive.json"
    path.write_text(json.dumps({"results": results, "load": [load, os.getloadavg()]}, indent=1, default=str))
    print(f"\nall values: {path}")
    return 0 if all(math.isfinite(a["agreement"]) for r in results for a in r["adaptive"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
