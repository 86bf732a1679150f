"""``benchmarks/gpu.py --quick`` runs every section end to end on the CPU (tiny sizes; a fake GPU for the
launcher's cells-per-GPU path) and writes its JSON: measured rows, or a stated reason where an option does not
exist yet; never a failed section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_quick_runs_every_section_on_the_cpu(tmp_path: Path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert seconds < 120, f"--quick took {seconds:.0f} s"
    r = json.loads(out.read_text())
    assert r["data"] == "synthetic CIFAR-shaped"
    for name in ("cells_per_gpu", "together", "data_device", "precision", "hessian", "memory"):
        assert name in r, name
        rows = r[name]["rows"] if name == "cells_per_gpu" else r[name]
        assert rows and not any("error" in row for row in rows), (name, rows)
    # cells per GPU: the multirun of k cells on one (fake) GPU ran them all, each timed per step
    cells = {row["cells"]: row for row in r["cells_per_gpu"]["rows"]}
    assert set(cells) == {1, 2}
    for k, row in cells.items():
        assert row["step_s"] > 0 and row["cell_s"] > 0 and row["samples_per_s"] > 0 and row["device"] == "cpu", row
        assert abs(row["samples_per_s"] - k * row["batch"] / row["step_s"]) < 1e-6 * row["samples_per_s"]
    # every other row is a measurement or says why it was skipped
    for name in ("together", "data_device", "precision"):
        for row in r[name]:
            assert row.get("skipped") or any(v is not None for k, v in row.items() if k.endswith("_s")), (name, row)
    h = r["hessian"][0]
    assert h["products"] > 0 and h["eigen_products"] + h["trace_products"] == h["products"] and h["hessian_s"] > 0
    assert "cells_per_gpu:" in proc.stdout and "| width | cells |" in proc.stdout
