"""The Hessian family on a realistic cell, before vs after, side by side in one run.

The cell: MLP 256-256 (85,002 parameters) on scikit-learn digits, 3 seeds trained with the default training
settings, the ``hessian`` family at its defaults (1000 evaluation samples, top eigenvalue + most negative
eigenvalue to relative residual 1e-4, Hutch++ with 99 products; ``--density`` adds the spectral density).

Default (``--mode inprocess``): one process, one torch thread; per repetition and seed the current family
(``landscape.metrics.hessian.compute``) and the code before the change alternate (which goes first alternates too). "Before" is
the family's compute path of commit ``BEFORE_COMMIT``: its ``HessianOperator`` and thick-restart Lanczos are
loaded from that commit (``git show``) and driven exactly as its family's compute did (batches of 250,
blocked products, separate top and bottom runs with a basis of 30, then the density's own probes). Both CPU
time (``time.process_time``, less sensitive to other jobs on a shared machine) and wall time are reported.
``--mode checkout --before PATH``: instead, whole runs in subprocesses importing ``landscape`` from this checkout
and from ``PATH`` (e.g. ``/work/main``), alternating.

Run: ``python benchmarks/bench_hessian_cell.py [--reps 3] [--density] [--out FILE]``.
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
BEFORE_COMMIT = "9bda5eaecd29071e0219fe1e02721da4da534150"
SEEDS = (0, 1, 2)
OVERRIDES = ["model.name=mlp", "model.width=256", "model.depth=2", "data.name=digits", "metrics.hessian.enabled=true"]
VALUE_COLUMNS = (
    "hessian.top_eigenvalue",
    "hessian.min_eigenvalue",
    "hessian.trace",
    "hessian.trace_stderr",
    "hessian.negative_mass",
    "hessian.density_trace",
)


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
    from landscape.metrics.hessian import compute as hessian_compute
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
        ctx = ModelContext(
            model=model.eval(),
            seed=s,
            data=data,
            loss_fn=loss_fn,
            make_model=lambda: build_model(cfg.model, data.input_shape, data.n_classes),
            cfg=cfg,
            device=torch.device("cpu"),
            workdir=workdir,
        )
        t = time.perf_counter()
        values = _values(hessian_compute(ctx, cfg.metrics.hessian))
        seconds = time.perf_counter() - t
        out["seeds"][str(s)] = {
            "seconds": seconds,
            **{k: v for k, v in values.items() if isinstance(v, (int, float, str, bool)) or v is None},
        }
    out["seconds"] = sum(v["seconds"] for v in out["seeds"].values())
    return out


def _values(result: Any) -> dict[str, Any]:
    """The values of a family's ``Result`` (or the plain dict older versions returned)."""
    return dict(result.values) if hasattr(result, "values") and not isinstance(result, dict) else dict(result)


def _legacy_modules() -> tuple[Any, Any]:
    """The ``operator`` and ``eigen`` modules of ``BEFORE_COMMIT`` (read with ``git show``), imported under
    private names; they import the rest of ``landscape`` (unchanged parts) from this checkout."""
    import importlib.util
    import tempfile

    mods = []
    tmp = Path(tempfile.mkdtemp(prefix="landscape-before-"))
    for name in ("operator", "eigen"):
        src = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BEFORE_COMMIT}:landscape/curvature/{name}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        path = tmp / f"before_{name}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(f"_before_{name}", path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[0], mods[1]


def before_hessian_metrics(ctx: Any, settings: Any, legacy: tuple[Any, Any]) -> dict[str, Any]:
    """The default mode of the ``hessian`` family as ``BEFORE_COMMIT`` computed it (its compute path, verbatim
    in effect: batches of ``250``, blocked products, top and bottom in two runs, the density's own probes)."""
    import math

    import torch

    from landscape.curvature import spectral_density, trace
    from landscape.metrics.hessian import eval_indices

    op_mod, eig_mod = legacy
    t0 = time.perf_counter()
    seed = int(settings.seed)
    idx = eval_indices(ctx.data.n_train, int(settings.eval_samples), seed)
    x, y = ctx.data.x_train[idx], ctx.data.y_train[idx]
    op = op_mod.HessianOperator(
        ctx.model,
        ctx.loss_fn,
        (x, y),
        batch_size=250,
        dtype=torch.float32,
        max_block=int(settings.max_block),
        cache_graph=True,
    )
    k = int(settings.n_top)
    top = eig_mod.eigenvalues(
        op, k=k, which="largest", tol=float(settings.tol), max_iter=int(settings.max_iter), seed=seed
    )
    method = "hutch++" if settings.trace_method == "krylov" else settings.trace_method  # its default: Hutch++
    tr = trace(op, method=method, n_matvecs=int(settings.trace_matvecs), seed=seed + 1, block=int(settings.max_block))
    out: dict[str, Any] = {
        "hessian.top_eigenvalue": float(top.values[0]),
        "hessian.trace": float(tr.estimate),
        "hessian.trace_stderr": float(tr.stderr),
        "hessian.converged": bool(top.converged),
    }
    if settings.smallest_eigenvalue:
        low = eig_mod.eigenvalues(
            op, k=1, which="smallest", tol=float(settings.tol), max_iter=int(settings.max_iter), seed=seed + 2
        )
        out["hessian.min_eigenvalue"] = float(low.values[0])
        out["hessian.min_residual"] = float(low.residuals[0])
        out["hessian.converged"] &= bool(low.converged)
    if settings.density:
        dens = spectral_density(
            op,
            n_probes=int(settings.n_probes),
            n_steps=int(settings.n_steps),
            grid=int(settings.grid_size),
            seed=seed + 3,
            block=int(settings.max_block),
        )
        out["hessian.negative_mass"] = dens.negative_mass
        out["hessian.density_trace"] = dens.trace
        out["hessian.density_trace_stderr"] = dens.trace_stderr if math.isfinite(dens.trace_stderr) else None
    out["hessian.n_matvecs"] = int(op.n_products)
    out["hessian.seconds"] = time.perf_counter() - t0
    return out


def compare_inprocess(workdir: Path, reps: int, extra: list[str]) -> dict[str, Any]:
    """Alternate the current family and the ``BEFORE_COMMIT`` path per seed and repetition, one process."""
    import torch

    from landscape.data import load_data
    from landscape.metrics import ModelContext
    from landscape.metrics.hessian import compute as hessian_compute
    from landscape.models import build_model
    from landscape.training import make_loss

    torch.set_num_threads(1)
    legacy = _legacy_modules()
    cfg = _compose(extra)
    data = load_data(cfg.data)
    loss_fn = make_loss(str(cfg.train.loss))
    ctxs = {}
    for s in SEEDS:
        model = build_model(cfg.model, data.input_shape, data.n_classes, seed=s)
        model.load_state_dict(torch.load(workdir / f"seed{s}.pt", weights_only=True))
        ctxs[s] = ModelContext(
            model=model.eval(),
            seed=s,
            data=data,
            loss_fn=loss_fn,
            make_model=lambda: build_model(cfg.model, data.input_shape, data.n_classes),
            cfg=cfg,
            device=torch.device("cpu"),
            workdir=workdir,
        )
    settings = cfg.metrics.hessian
    fns = {
        "after": lambda c: _values(hessian_compute(c, settings)),
        "before": lambda c: before_hessian_metrics(c, settings, legacy),
    }
    cpu = {"after": [0.0] * reps, "before": [0.0] * reps}
    wall = {"after": [0.0] * reps, "before": [0.0] * reps}
    values: dict[str, dict[str, Any]] = {"after": {}, "before": {}}
    load = [os.getloadavg()]
    for r in range(reps):
        for i, s in enumerate(SEEDS):
            order = ("after", "before") if (r + i) % 2 == 0 else ("before", "after")
            for which in order:
                c0, w0 = time.process_time(), time.perf_counter()
                v = fns[which](ctxs[s])
                cpu[which][r] += time.process_time() - c0
                wall[which][r] += time.perf_counter() - w0
                values[which][str(s)] = {
                    k: x for k, x in v.items() if isinstance(x, (int, float, str, bool)) or x is None
                }
        load.append(os.getloadavg())
    res = _summary(values["after"], values["before"])
    res.update(
        {
            "mode": "inprocess",
            "before": f"commit {BEFORE_COMMIT}",
            "extra_overrides": extra,
            "cpu_seconds_after": cpu["after"],
            "cpu_seconds_before": cpu["before"],
            "wall_seconds_after": wall["after"],
            "wall_seconds_before": wall["before"],
            "cpu_ratio_per_rep": [a / b for a, b in zip(cpu["after"], cpu["before"], strict=True)],
            "wall_ratio_per_rep": [a / b for a, b in zip(wall["after"], wall["before"], strict=True)],
            "cpu_ratio_total": sum(cpu["after"]) / sum(cpu["before"]),
            "wall_ratio_total": sum(wall["after"]) / sum(wall["before"]),
            "loadavg": load,
        }
    )
    return res


def _summary(a0: dict[str, Any], b0: dict[str, Any]) -> dict[str, Any]:
    diffs: dict[str, float] = {}
    for col in VALUE_COLUMNS:
        rel = []
        for s in a0:
            va, vb = a0[s].get(col), b0[s].get(col)
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                rel.append(abs(va - vb) / max(abs(vb), 1e-300))
        if rel:
            diffs[col] = max(rel)
    # the smallest eigenvalue is accurate to tol * scale (its residual bound), i.e. relative to the top one
    min_in_tol = [
        abs(a0[s]["hessian.min_eigenvalue"] - b0[s]["hessian.min_eigenvalue"])
        / (1e-4 * abs(b0[s]["hessian.top_eigenvalue"]))
        for s in a0
        if "hessian.min_eigenvalue" in b0[s]
    ]
    # two independent stochastic estimates: their difference in units of its standard error
    z = [
        abs(a0[s]["hessian.trace"] - b0[s]["hessian.trace"])
        / (a0[s]["hessian.trace_stderr"] ** 2 + b0[s]["hessian.trace_stderr"] ** 2) ** 0.5
        for s in a0
        if b0[s].get("hessian.trace_stderr") and a0[s].get("hessian.trace_stderr")
    ]
    return {
        "max_rel_diff": diffs,
        "min_eigenvalue_diff_in_tol_scale": max(min_in_tol) if min_in_tol else None,
        "trace_diff_in_combined_stderr": max(z) if z else None,
        "products_after": {s: a0[s]["hessian.n_matvecs"] for s in a0},
        "products_before": {s: b0[s]["hessian.n_matvecs"] for s in b0},
        "values_after": a0,
        "values_before": b0,
    }


def _run_worker(root: Path, workdir: Path, extra: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--dir",
        str(workdir),
        "--extra",
        json.dumps(extra),
    ]
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
    res = _summary(runs["after"][0]["seeds"], runs["before"][0]["seeds"])
    res.update(
        {
            "mode": "checkout",
            "extra_overrides": extra,
            "before": str(before),
            "after": str(REPO),
            "wall_seconds_after": t_after,
            "wall_seconds_before": t_before,
            "wall_ratio_per_rep": [a / b for a, b in zip(t_after, t_before, strict=True)],
            "wall_ratio_total": sum(t_after) / sum(t_before),
            "loadavg": load,
        }
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("inprocess", "checkout"), default="inprocess")
    ap.add_argument("--before", default="/work/main", help="--mode checkout: the checkout before the change")
    ap.add_argument("--dir", default="/tmp/landscape-bench-hessian-cell", help="where the trained models live")
    ap.add_argument("--reps", type=int, default=3)
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
    res = (
        compare_inprocess(workdir, args.reps, extra)
        if args.mode == "inprocess"
        else compare(Path(args.before), workdir, args.reps, extra)
    )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("values_")}, indent=1))


if __name__ == "__main__":
    if "--worker" not in sys.argv:  # a worker imports landscape from its PYTHONPATH (this or the other checkout)
        sys.path.insert(0, str(REPO))
    main()
