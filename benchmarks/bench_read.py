"""Cold read of a sweep of many small result files: ``landscape.results.load`` against DuckDB's own scan.

Generates ``N`` cells in the sweep-directory layout (``results/models/<cell_id>-<key>.parquet`` with 2 rows each,
``cells/<cell_id>/status.json`` recording each file's SHA-256, size and modification time, as ``job`` commits
them); 10 % of the files have an older schema (one column fewer). Then, interleaved ``--repeat`` times:

* ``load``: ``landscape.results.load(sweep)`` with no snapshot (``results/.cache`` removed first): checksums
  verified, every file read;
* ``load_warm``: ``load(sweep)`` again (served by the snapshot);
* ``duckdb``: DuckDB ``read_parquet(glob, union_by_name=true)`` of every column into Arrow (no checks; what
  ``load`` ran before, less its checksum and conforming steps).

Wall and CPU seconds (this process and its threads) are reported with the load average.

    .venv/bin/python benchmarks/bench_read.py [--files 10000] [--repeat 3] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable


def generate(sweep: Path, n_files: int) -> float:
    """Write ``n_files`` committed cells under ``sweep``; returns the seconds it took."""
    from landscape.cell import CellDir, CellStatus, sha256_file
    from landscape.results import schema_for, write_table

    schema = schema_for("models")
    old = schema.remove(schema.get_field_index("training.vectorized"))  # an older version of the schema
    t = time.perf_counter()
    for i in range(n_files):
        cid = f"{i:012x}"
        cell = CellDir(sweep, cid)
        rows = [
            {
                "cell_id": cid,
                "sweep": "bench",
                "seed": s,
                "status": "done",
                "model.width": 8 + i % 7,
                "train_loss": 0.5 / (1 + i),
                "test_acc": 0.9 if s else None,
            }
            for s in (0, 1)
        ]
        if i % 10 == 0:
            path = write_table(cell.result_path("models", "0123456789"), rows, old)
        else:
            rows[0]["training.vectorized"] = True
            path = write_table(cell.result_path("models", "0123456789"), rows, schema)
        st = path.stat()
        status = CellStatus(state="done", cell_id=cid, sweep="bench", seeds={"0": "done", "1": "done"})
        status.results[cell.result_name("models", "0123456789")] = {
            "sha256": sha256_file(path),
            "rows": 2,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "covers": [0, 1],
            "key": "0123456789",
        }
        cell.write_status(status)
    return time.perf_counter() - t


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def _arrow(rel: Any) -> Any:
    """Every row of a DuckDB relation as one Arrow table (the API's name differs between DuckDB versions)."""
    import pyarrow as pa

    fetch = getattr(rel, "to_arrow_table", None) or getattr(rel, "fetch_arrow_table", None) or rel.arrow
    out = fetch()
    return out.read_all() if isinstance(out, pa.RecordBatchReader) else out


def measure(sweep: Path, repeat: int) -> dict[str, Any]:
    import duckdb

    from landscape.results import load

    glob = str(sweep / "results" / "models" / "*.parquet")
    runs: dict[str, list[tuple[float, float]]] = {"load": [], "load_warm": [], "duckdb": []}
    loads = []
    df = None
    for _ in range(repeat):
        shutil.rmtree(sweep / "results" / ".cache", ignore_errors=True)
        loads.append(os.getloadavg()[0])
        df, w, c = _timed(lambda: load(sweep))
        runs["load"].append((w, c))
        df2, w, c = _timed(lambda: load(sweep))
        runs["load_warm"].append((w, c))
        assert df2.equals(df)
        con = duckdb.connect()
        rel = con.sql(f"select * from read_parquet('{glob}', union_by_name=true)")
        n, w, c = _timed(lambda: _arrow(rel))  # noqa: B023 (called within this iteration)
        runs["duckdb"].append((w, c))
        con.close()
    out: dict[str, Any] = {
        "files": len(os.listdir(sweep / "results" / "models")),
        "rows": len(df),
        "loadavg_1min": loads,
    }
    for k, v in runs.items():
        out[f"{k}_s"] = sorted(w for w, _ in v)[len(v) // 2]
        out[f"{k}_cpu_s"] = sorted(c for _, c in v)[len(v) // 2]
        out[f"{k}_all_s"] = [round(w, 2) for w, _ in v]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default="", help="sweep directory to (re)use; generated when it has no results")
    args = p.parse_args()
    import tempfile

    tmp = None
    sweep = Path(args.dir) if args.dir else Path(tmp := tempfile.mkdtemp(prefix="bench_read-"))
    try:
        if not (sweep / "results" / "models").is_dir():
            print(f"generating {args.files} cells under {sweep}: {generate(sweep, args.files):.1f} s", flush=True)
        print(json.dumps(measure(sweep, args.repeat), indent=1))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
