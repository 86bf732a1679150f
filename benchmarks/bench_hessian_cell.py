"""The Hessian family on a realistic cell, before vs after, side by side in one run.

The cell: MLP 256-256 (85,002 parameters) on scikit-learn digits, 3 seeds trained with the default training
settings, the ``hessian`` family at its defaults (1000 evaluation samples, top eigenvalue + most negative
eigenvalue to relative residual 1e-4, Hutch++ with 99 products; ``--density`` adds the spectral density).

Each measurement runs in its own subprocess (one torch thread) that imports ``landscape`` either from this
checkout ("after") or from a second checkout given by ``--before`` (default ``/work/main``: the code before the
change). The two alternate (after, before, after, before, ...) so machine load hits both alike. The trained
models are made once (by this checkout) and loaded by both, so both measure the same parameters.

Run: ``python benchmarks/bench_hessian_cell.py [--before PATH] [--reps 2] [--density] [--out FILE]``.
Prints per seed the values of both versions, their relative differences and the time ratio after/before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
OVERRIDES = ["model.name=mlp", "model.width=256", "model.depth=2", "data.name=digits", "metrics.hessian.enabled=true"]
VALUE_COLUMNS = ("hessian.top_eigenvalue", "hessian.min_eigenvalue", "hessian.trace", "hessian.trace_stderr",
                 "hessian.negative_mass", "hessian.density_trace")


def _compose(extra: list[str]):
    from hydra import compose, initialize_config_dir

    import landscape.cli.app as app

    with initialize_config_dir(config_dir=str(app.CONF_DIR), version_base="1.3"):
        return compose("config", overrides=OVERRIDES + extra)


def prepare(workdir: Path) -> None:
    """Train the cell's seeds once (default training settings) and save their state dicts."""
    import torch

    from landscape.data import load_data
    from landscape.models import build_model
    from landscape.training import TrainSettings, train_model

    torch.set_num_threads(1)
    cfg = _compose([])
    data = load_data(cfg.data)
    st = TrainSettings.from_config(cfg.train, data.n_train)
    for s in SEEDS:
        target = workdir / f"seed{s}.pt"
        if target.exists():
            continue
        model = build_model(cfg.model, data.input_shape, data.n_classes, seed=s)
        train_model(model, data.x_train, data.y_train, st, s, workdir / f"train{s}")
        torch.save(model.state_dict(), target)


def worker(workdir: Path, extra: list[str]) -> dict[str, Any]:
    """Run the hessian family on every seed with the imported ``landscape``; values and seconds per seed."""
    import torch

    from landscape.data import load_data
    from landscape.metrics import ModelContext
    from landscape.metrics.hessian import hessian_metrics
    from landscape.models import build_model
    from landscape.training import make_loss

    torch.set_num_threads(1)
    cfg = _compose(extra)
    data = load_data(cfg.data)
    loss_fn = make_loss(str(cfg.train.loss))
    out: dict[str, Any] = {"landscape": str(Path(__import__("landscape").__file__).parents[1]), "seeds": {}}
    for s in SEEDS:
        model = build_model(cfg.model, data.input_shape, data.n_classes, seed=s)
        model.load_state_dict(torch.load(workdir / f"seed{s}.pt", weights_only=True))
        ctx = ModelContext(model=model.eval(), seed=s, data=data, loss_fn=loss_fn,
                           make_model=lambda: build_model(cfg.model, data.input_shape, data.n_classes),
                           cfg=cfg, device=torch.device("cpu"), workdir=workdir)
        t = time.perf_counter()
        values = hessian_metrics(ctx, cfg.metrics.hessian)
        seconds = time.perf_counter() - t
        out["seeds"][str(s)] = {"seconds": seconds,
                                **{k: v for k, v in values.items() if isinstance(v, (int, float, str, bool)) or v is None}}
    out["seconds"] = sum(v["seconds"] for v in out["seeds"].values())
    return out


def _run_worker(root: Path, workdir: Path, extra: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--dir", str(workdir), "--extra", json.dumps(extra)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(root))
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {root} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(before: Path, workdir: Path, reps: int, extra: list[str]) -> dict[str, Any]:
    """Alternate after/before ``reps`` times each; the per-run Hessian seconds and the values' differences."""
    runs: dict[str, list[dict[str, Any]]] = {"after": [], "before": []}
    load = [os.getloadavg()]
    for _ in range(reps):
        runs["after"].append(_run_worker(REPO, workdir, extra))
        runs["before"].append(_run_worker(before, workdir, extra))
        load.append(os.getloadavg())
    t_after = [r["seconds"] for r in runs["after"]]
    t_before = [r["seconds"] for r in runs["before"]]
    ratios = [a / b for a, b in zip(t_after, t_before)]
    diffs: dict[str, float] = {}
    a0, b0 = runs["after"][0]["seeds"], runs["before"][0]["seeds"]
    for col in VALUE_COLUMNS:
        rel = []
        for s in a0:
            va, vb = a0[s].get(col), b0[s].get(col)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                rel.append(abs(va - vb) / max(abs(vb), 1e-300))
        if rel:
            diffs[col] = max(rel)
    # the trace is stochastic: its difference in units of the reported standard error is the meaningful one
    z = [abs(a0[s]["hessian.trace"] - b0[s]["hessian.trace"]) / b0[s]["hessian.trace_stderr"] for s in a0
         if b0[s].get("hessian.trace_stderr")]
    return {
        "extra_overrides": extra,
        "before": str(before), "after": str(REPO),
        "hessian_seconds_after": t_after, "hessian_seconds_before": t_before,
        "ratio_per_rep": ratios,
        "ratio_median_total": sorted(t_after)[len(t_after) // 2] / sorted(t_before)[len(t_before) // 2],
        "max_rel_diff": diffs,
        "trace_diff_in_stderr": max(z) if z else None,
        "products_after": {s: a0[s]["hessian.n_matvecs"] for s in a0},
        "products_before": {s: b0[s]["hessian.n_matvecs"] for s in b0},
        "values_after": a0, "values_before": b0,
        "loadavg": load,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default="/work/main", help="checkout holding the code before the change")
    ap.add_argument("--dir", default="/tmp/landscape-bench-hessian-cell", help="where the trained models live")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--density", action="store_true", help="also the spectral density (metrics.hessian.density)")
    ap.add_argument("--extra", default="[]", help="JSON list of further overrides (worker use)")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    workdir = Path(args.dir)
    extra = json.loads(args.extra) + (["metrics.hessian.density=true"] if args.density else [])
    if args.worker:
        print(json.dumps(worker(workdir, extra)))
        return
    workdir.mkdir(parents=True, exist_ok=True)
    prepare(workdir)
    res = compare(Path(args.before), workdir, args.reps, extra)
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    summary = {k: res[k] for k in ("hessian_seconds_after", "hessian_seconds_before", "ratio_per_rep",
                                   "ratio_median_total", "max_rel_diff", "trace_diff_in_stderr",
                                   "products_after", "products_before", "loadavg")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if "--worker" not in sys.argv:  # a worker imports landscape from its PYTHONPATH (this or the other checkout)
        sys.path.insert(0, str(REPO))
    main()
