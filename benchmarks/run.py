"""The benchmark harness: nine side-by-side measurements in one run on this machine, a table and a JSON file.

Run: ``.venv/bin/python benchmarks/run.py [--quick] [--out benchmarks/results/latest.json]``.

1. ``hvp``: one Hessian-vector product vs one gradient on the same batch (``bench_curvature.bench_hvp``);
2. ``pyhessian``: landscape vs PyHessian 0.1, top eigenvalue to 1e-3 and trace at equal numbers of products
   (``bench_curvature.bench_pyhessian``);
3. ``seeds``: K = 4 seeds of each demo-sweep cell trained together (``landscape.vectorized``) vs 4 serial
   ``train_model`` runs, one torch thread (the job's ``threads: 1``): throughput ratio;
4. ``overhead``: a demo cell's framework work (compose + plan, cell id, validation, provenance, writing the
   rows, three status writes) vs the whole ``run_cell`` of that cell;
5. ``read``: 10,000 small ``models`` files (10 % with an older schema, one column fewer) read back by
   ``landscape.results.load`` and by DuckDB ``read_parquet(glob, union_by_name=true)``;
6. ``demo``: the README's demo sweep (``landscape -m +sweep=demo``) end to end in a temporary directory;
7. ``cell``: the Hessian family on a realistic cell (MLP 256-256, 1000 digits, 3 seeds), the current code vs the
   compute path of the commit before the change, alternating in one process (``bench_hessian_cell``);
8. ``launcher``: 8 short cells with ``hydra/launcher=local`` (two warm workers) vs one process
   (``bench_local_launcher``);
9. ``anchors``: landscape's curvature against PyHessian 0.1, curvlinops 3.0.1 and hessian-eigenthings 1.0.0a5
   (``anchors.run``; the anchors are installed by ``make bench`` into ``.venv-bench``, and named as skipped
   where they are missing).

Torch runs with one thread (``torch.set_num_threads(1)``), as the jobs do, so ratios are per core.

``--quick`` shrinks every section (a smoke run of well under a minute, the figures are not meaningful).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

log = logging.getLogger("benchmarks")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _compose(overrides: list[str], return_hydra_config: bool = False):
    from hydra import compose, initialize_config_dir

    import landscape.cli.app as app

    with initialize_config_dir(config_dir=str(app.CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=return_hydra_config)


# ------------------------------------------------------------------------------------- 1, 2 curvature
def bench_curvature(quick: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        import bench_curvature as bc
    except Exception as exc:  # noqa: BLE001 - another engineer's file, maybe not ready
        note = f"benchmarks/bench_curvature.py not importable: {type(exc).__name__}: {exc}"
        return {"skipped": note}, {"skipped": note}
    try:
        model, x, y = bc.setup(100 if quick else 1000, 16, 0)
        hvp = bc.bench_hvp(model, x, y, 3 if quick else 20)
    except Exception as exc:  # noqa: BLE001 - a failed benchmark is reported in its row
        hvp = {"skipped": f"bench_hvp failed: {type(exc).__name__}: {exc}"}
    if quick:
        return hvp, {"skipped": "--quick"}
    try:
        ph = bc.bench_pyhessian(model, x, y, 60, 0)
    except Exception as exc:  # noqa: BLE001 - a failed benchmark is reported in its row
        ph = {"skipped": f"bench_pyhessian failed: {type(exc).__name__}: {exc}"}
    return hvp, ph


# ---------------------------------------------------------------------------------------------- 3 seeds
def bench_seeds(quick: bool, k: int = 4) -> dict[str, Any]:
    from landscape.data import load_data
    from landscape.models import build_model
    from landscape.training import TrainSettings, train_model
    from landscape.vectorized import train_together

    torch.set_num_threads(1)
    grid = [(32, 16)] if quick else [(w, b) for w in (8, 32, 128) for b in (16, 128)]
    seeds = list(range(k))
    out: dict[str, Any] = {"k": k, "threads": 1, "cells": []}
    for width, bs in grid:
        cfg = _compose(
            ["+sweep=demo", f"model.width={width}", f"train.batch_size={bs}"] + (["train.epochs=1"] if quick else [])
        )
        data = load_data(cfg.data)
        st = TrainSettings.from_config(cfg.train, data.n_train)

        def models() -> dict[int, torch.nn.Module]:
            return {s: build_model(cfg.model, data.input_shape, data.n_classes, seed=s) for s in seeds}  # noqa: B023 (called within this iteration)

        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            ms = models()
            _, t_serial = _timed(
                lambda: [train_model(ms[s], data.x_train, data.y_train, st, s, root / "s" / str(s)) for s in seeds]  # noqa: B023 (called within this iteration)
            )
            mv = models()
            _, t_vec = _timed(
                functools.partial(
                    train_together,
                    mv,
                    data.x_train,
                    data.y_train,
                    st,
                    {s: root / "v" / str(s) for s in seeds},
                    root / "g",
                )
            )
        diff = max(
            float((p - q).detach().abs().max())
            for s in seeds
            for p, q in zip(ms[s].parameters(), mv[s].parameters(), strict=True)
        )
        out["cells"].append(
            {
                "model.width": width,
                "train.batch_size": bs,
                "epochs": st.epochs,
                "serial_s": t_serial,
                "together_s": t_vec,
                "ratio": t_serial / t_vec,
                "max_abs_param_diff": diff,
            }
        )
    ratios = [c["ratio"] for c in out["cells"]]
    out["ratio_min"], out["ratio_max"] = min(ratios), max(ratios)
    out["ratio_total"] = sum(c["serial_s"] for c in out["cells"]) / sum(c["together_s"] for c in out["cells"])
    return out


# ------------------------------------------------------------------------------------------- 4 overhead
def bench_overhead(quick: bool) -> dict[str, Any]:
    from landscape import provenance
    from landscape.cell import CellDir, CellStatus, cell_id
    from landscape.config import check
    from landscape.job import run_cell
    from landscape.results import schema_for, write_table

    overrides = ["+sweep=demo", "model.width=32", "train.batch_size=16"] + (["train.epochs=1"] if quick else [])
    out: dict[str, Any] = {"cell": " ".join(overrides)}
    with tempfile.TemporaryDirectory() as d:
        sweep = Path(d)
        cfg, t_compose = _timed(lambda: _compose(overrides))
        try:  # the sweeper's planning of one job (compose + validate + state), as a multirun does it
            from hydra import initialize_config_dir
            from hydra.core.global_hydra import GlobalHydra

            import landscape.cli.app as app
            from landscape.cli.sweeper import plan_cells

            with initialize_config_dir(config_dir=str(app.CONF_DIR), version_base="1.3"):
                from hydra import compose

                primary = compose("config", overrides=["+sweep=demo"], return_hydra_config=True)
                loader = GlobalHydra.instance().config_loader()
                # the demo grid's 24 cells, planned as the sweeper plans them
                jobs = [
                    ["+sweep=demo", f"model.width={w}", f"train.batch_size={b}"]
                    for w in (4, 8, 16, 32, 64, 128)
                    for b in (16, 64, 256, 1024)
                ]
                from landscape.cli.sweeper import CellComposer
                from landscape.launching import JobComposer

                planner = CellComposer(primary, loader)
                _, t_plan = _timed(lambda: plan_cells(primary, loader, jobs, sweep, composer=planner))
                # the job side: a forked worker of hydra/launcher=local composes each job from the planner's
                # verified compositions (a SLURM task with several cells: one composition per base of its own)
                composer = JobComposer(primary, loader, planner if planner.fast else None)
                _, t_jobs = _timed(lambda: [composer.compose(ov) for ov in jobs])
                _, t_full = _timed(lambda: [loader.load_sweep_config(primary, ov) for ov in jobs])
                out["job_compose_checks"] = composer.n_checks
            out["plan_per_cell_s"] = t_plan / len(jobs)
            out["job_compose_per_cell_s"] = t_jobs / len(jobs)
            out["job_full_compose_per_cell_s"] = t_full / len(jobs)
        except Exception as exc:  # noqa: BLE001 - a failed benchmark is reported in its row
            out["plan_note"] = f"plan_cells not measured: {type(exc).__name__}: {exc}"
            out["plan_per_cell_s"] = t_compose
        cid, t_hash = _timed(lambda: cell_id(cfg))
        _, t_check = _timed(lambda: check(cfg))
        _, t_prov = _timed(lambda: (provenance.git_info(), provenance.package_versions(), provenance.host()))
        cell = CellDir(sweep, cid)
        rows = [{"cell_id": cid, "sweep": "demo", "seed": s, "status": "done", "train_loss": 0.1} for s in (0, 1)]
        _, t_write = _timed(lambda: write_table(cell.result_path("models", "0123456789"), rows, schema_for("models")))
        status = CellStatus(state="running", cell_id=cid)
        _, t_status = _timed(lambda: [cell.write_status(status) for _ in range(3)])
        outcome, t_cell = _timed(lambda: run_cell(cfg, sweep / "real"))
    parts = {
        "plan_per_cell_s": out["plan_per_cell_s"],
        "job_compose_s": out.get("job_compose_per_cell_s", 0.0),
        "cell_id_s": t_hash,
        "validate_s": t_check,
        "provenance_s": t_prov,
        "write_rows_s": t_write,
        "status_x3_s": t_status,
    }
    out.update(parts)
    out["overhead_s"] = sum(parts.values())
    out["run_cell_s"] = t_cell
    out["overhead_fraction"] = out["overhead_s"] / t_cell
    out["cell_action"] = outcome.action
    return out


# ----------------------------------------------------------------------------------------------- 5 read
def bench_read(quick: bool, n_files: int = 10_000) -> dict[str, Any]:
    import duckdb

    from landscape.results import load, schema_for, write_table

    n_files = 100 if quick else n_files
    schema = schema_for("models")
    old = schema.remove(schema.get_field_index("training.vectorized"))  # an older version of the schema
    with tempfile.TemporaryDirectory() as d:
        sweep = Path(d)
        t = time.perf_counter()
        for i in range(n_files):
            rows = [
                {
                    "cell_id": f"c{i:05d}",
                    "sweep": "bench",
                    "seed": s,
                    "status": "done",
                    "model.width": 8 + i % 7,
                    "train_loss": 0.5 / (1 + i),
                    "test_acc": 0.9,
                }
                for s in (0, 1)
            ]
            if i % 10 == 0:
                write_table(sweep / "results" / "models" / f"c{i:05d}.parquet", rows, old)
            else:
                rows[0]["training.vectorized"] = True
                write_table(sweep / "results" / "models" / f"c{i:05d}.parquet", rows, schema)
        t_write = time.perf_counter() - t
        df, t_load = _timed(lambda: load(sweep))  # cold: every file is read
        df2, t_again = _timed(lambda: load(sweep))  # warm: served by the results snapshot
        assert df2.equals(df)
        glob = str(sweep / "results" / "models" / "*.parquet")
        con = duckdb.connect()
        n_duck, t_duck = _timed(
            lambda: con.execute(
                f"select count(*), count(\"training.vectorized\") from read_parquet('{glob}', union_by_name=true)"
            ).fetchone()
        )
    return {
        "files": n_files,
        "rows": len(df),
        "write_s": t_write,
        "pandas_load_s": t_load,
        "pandas_load_again_s": t_again,
        "duckdb_s": t_duck,
        "duckdb_rows": int(n_duck[0]),
        "typed_vectorized_dtype": str(df["training.vectorized"].dtype),
        "vectorized_nulls": int(df["training.vectorized"].isna().sum()),
    }


# ----------------------------------------------------------------------------------------------- 6 demo
def bench_demo(quick: bool) -> dict[str, Any]:
    exe = REPO / ".venv" / "bin" / "landscape"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "landscape.cli.app"]
    with tempfile.TemporaryDirectory() as d:
        args = ["-m", "+sweep=demo", f"hydra.sweep.dir={d}/demo"]
        if quick:
            args += ["model.width=8", "train.batch_size=128", "train.epochs=1"]
        t = time.perf_counter()
        proc = subprocess.run(
            [*cmd, *args],
            cwd=d,
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        t_sweep = time.perf_counter() - t
        summary = subprocess.run(
            [sys.executable, "-m", "landscape.cli.summary", f"{d}/demo"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        t_total = time.perf_counter() - t
        n_rows = 0
        if proc.returncode == 0:
            from landscape.results import load

            n_rows = len(load(f"{d}/demo"))
    return {
        "command": " ".join(["landscape", *args[:2]]),
        "returncode": proc.returncode,
        "sweep_s": t_sweep,
        "with_summary_s": t_total,
        "summary_returncode": summary.returncode,
        "models_rows": n_rows,
        "stderr_tail": proc.stderr[-500:] if proc.returncode else "",
        "cpu_cores": os.cpu_count(),
    }


# ------------------------------------------------------------------------------------ 7 cell, 8 launcher
def bench_cell(quick: bool) -> dict[str, Any]:
    """The Hessian family on the realistic cell, before vs after (``bench_hessian_cell``), one process."""
    if quick:
        return {"skipped": "--quick"}
    import bench_hessian_cell as bh

    work = Path(tempfile.gettempdir()) / "landscape-bench-hessian-cell"
    work.mkdir(parents=True, exist_ok=True)
    bh.prepare(work)
    res = bh.compare_inprocess(work, 2, [])
    return {k: v for k, v in res.items() if not k.startswith("values_")}


def bench_launcher(quick: bool) -> dict[str, Any]:
    """8 short cells: ``hydra/launcher=local`` with two warm workers vs one process (``bench_local_launcher``)."""
    if quick:
        return {"skipped": "--quick"}
    import bench_local_launcher as bl

    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out: dict[str, Any] = {"one_process": [], "local_pool": []}
    for r in range(2):
        for name, launcher in (
            ("one_process", ["hydra/launcher=basic"]),
            ("local_pool", ["hydra/launcher=local", "hydra.launcher.max_parallel=2"]),
        )[:: 1 - 2 * (r % 2)]:
            out[name].append(bl.run_grid(launcher, env))
    one = sum(w for w, _ in out["one_process"])
    pool = sum(w for w, _ in out["local_pool"])
    out["command_speedup"] = one / pool
    out["cells_speedup"] = sum(c for _, c in out["one_process"]) / sum(c for _, c in out["local_pool"])
    return out


# ------------------------------------------------------------------------------------------------- main
def _table(r: dict[str, Any]) -> str:
    lines = [f"landscape benchmarks  (cores {os.cpu_count()}, load average {r['load_average']})"]

    def row(name: str, text: str) -> None:
        lines.append(f"{name:<30} {text}")

    h = r["hvp"]
    row(
        "1 HVP / gradient",
        h.get("skipped")
        or f"{h['hvp_over_grad']:.2f}x  (grad {h['grad_s'] * 1e3:.2f} ms, "
        f"HVP {h['hvp_s'] * 1e3:.2f} ms, target <= 2.5)",
    )
    p = r["pyhessian"]
    if "skipped" in p:
        row("2 vs PyHessian", p["skipped"])
    else:
        e, t = p["top_eigenvalue"], p["trace"]
        row(
            "2 top eigenvalue time ratio",
            f"{e['time_ratio_landscape_over_pyhessian']:.3f}  (landscape "
            f"{e['landscape_s']:.3f} s err {e['landscape_rel_err']:.1e}; PyHessian {e['pyhessian_s']:.3f} s "
            f"err {e['pyhessian_rel_err']:.1e}; target <= 0.2)",
        )
        row(
            "  trace stderr @ equal matvecs",
            f"PyHessian {t['pyhessian_stderr']:.3g}, Hutchinson "
            f"{t['hutchinson_stderr']:.3g}, Hutch++ {t['hutch++_stderr']:.3g} ({t['n_matvecs']} products)",
        )
    s = r["seeds"]
    for c in s["cells"]:
        row(
            f"3 seeds w={c['model.width']} b={c['train.batch_size']}",
            f"{c['ratio']:.2f}x  (4 serial {c['serial_s']:.2f} s, together {c['together_s']:.2f} s, "
            f"max |dθ| {c['max_abs_param_diff']:.1e})",
        )
    row("3 seeds, whole demo grid", f"{s['ratio_total']:.2f}x  (target >= 2.5)")
    o = r["overhead"]
    row(
        "4 framework overhead",
        f"{100 * o['overhead_fraction']:.2f} %  ({o['overhead_s'] * 1e3:.1f} ms of a "
        f"{o['run_cell_s']:.2f} s cell; target <= 2 %)",
    )
    rd = r["read"]
    row(
        f"5 read {rd['files']} files",
        f"load() {rd['pandas_load_s']:.2f} s cold, {rd['pandas_load_again_s']:.2f} s "
        f"again; DuckDB {rd['duckdb_s']:.2f} s (target <= 10 s)",
    )
    c = r.get("cell", {})
    row(
        "7 Hessian family, realistic cell",
        c.get("skipped")
        or (
            f"after/before CPU time {c['cpu_ratio_total']:.2f}, wall {c['wall_ratio_total']:.2f} (products "
            f"{sum(c['products_after'].values())} vs {sum(c['products_before'].values())}; min eigenvalue within "
            f"{c['min_eigenvalue_diff_in_tol_scale']:.2f} tol*scale, trace within {c['trace_diff_in_combined_stderr']:.2f} "
            f"combined stderr; target <= 0.5)"
        ),
    )
    la = r.get("launcher", {})
    row(
        "8 local launcher, 8 cells",
        la.get("skipped")
        or (
            f"{la['command_speedup']:.2f}x whole command, {la['cells_speedup']:.2f}x cells phase with 2 warm workers "
            f"vs one process (target >= 1.6)"
        ),
    )
    dm = r["demo"]
    row(
        "6 demo sweep end to end",
        f"{dm['with_summary_s']:.1f} s (rc {dm['returncode']}, {dm['models_rows']} rows; target <= 600 s)",
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (figures not meaningful)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latest.json"))
    parser.add_argument("--read-files", type=int, default=10_000, help="files of section 5")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections to run (hvp,seeds,overhead,read,demo,cell,launcher,anchors)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # per-core ratios: the jobs use one thread (threads: 1), and the machine is shared
    only = set(filter(None, args.only.split(",")))

    def want(name: str) -> bool:
        return not only or name in only

    r: dict[str, Any] = {
        "quick": args.quick,
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "started": time.time(),
    }
    skipped = {"skipped": "not selected (--only)"}
    r["hvp"], r["pyhessian"] = bench_curvature(args.quick) if want("hvp") else (skipped, skipped)
    r["seeds"] = bench_seeds(args.quick) if want("seeds") else {**skipped, "cells": [], "ratio_total": float("nan")}
    r["overhead"] = bench_overhead(args.quick) if want("overhead") else skipped
    r["read"] = bench_read(args.quick, args.read_files) if want("read") else skipped
    r["demo"] = bench_demo(args.quick) if want("demo") else skipped
    r["cell"] = bench_cell(args.quick) if want("cell") else skipped
    r["launcher"] = bench_launcher(args.quick) if want("launcher") else skipped
    if want("anchors"):  # PyHessian, curvlinops, hessian-eigenthings beside landscape (`make bench` installs them)
        import anchors

        r["anchors"] = anchors.run(args.quick)
        sys.stdout.write(anchors.tables(r["anchors"]) + "\n")
    else:
        r["anchors"] = skipped
    r["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    r["ratios"] = {
        "hvp_over_grad": r["hvp"].get("hvp_over_grad"),
        "eig_time_landscape_over_pyhessian": r["pyhessian"]
        .get("top_eigenvalue", {})
        .get("time_ratio_landscape_over_pyhessian"),
        "seeds_together_over_serial_throughput": r["seeds"].get("ratio_total"),
        "overhead_fraction_of_demo_cell": r["overhead"].get("overhead_fraction"),
        "read_pandas_s": r["read"].get("pandas_load_s"),
        "read_duckdb_s": r["read"].get("duckdb_s"),
        "demo_sweep_s": r["demo"].get("with_summary_s"),
        "hessian_cell_cpu_after_over_before": r["cell"].get("cpu_ratio_total"),
        "local_launcher_speedup_2_workers": r["launcher"].get("command_speedup"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2, default=str))
    try:
        sys.stdout.write(_table(r) + "\n")
    except (KeyError, TypeError):
        sys.stdout.write(json.dumps(r["ratios"], indent=2) + "\n")
    return r


if __name__ == "__main__":
    main()
