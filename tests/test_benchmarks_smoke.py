"""The benchmark harness runs end to end in --quick mode and writes its JSON with every section."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("hvp", "pyhessian", "seeds", "overhead", "read", "demo", "ratios")


@pytest.mark.slow  # 17 s: the benchmark harness's smoke run belongs with the nightly target (make test-all)
def test_harness_quick(tmp_path: Path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert all(name in r for name in SECTIONS)
    # the seeds section really trained 4 seeds both ways and they agree
    cell = r["seeds"]["cells"][0]
    assert r["seeds"]["k"] == 4 and cell["serial_s"] > 0 and cell["together_s"] > 0
    assert cell["max_abs_param_diff"] < 1e-4
    # the read-back section saw every row, typed, with the older files' missing column as nulls
    assert r["read"]["rows"] == 2 * r["read"]["files"] == r["read"]["duckdb_rows"]
    assert r["read"]["typed_vectorized_dtype"] == "boolean" and r["read"]["vectorized_nulls"] > 0
    assert r["demo"]["returncode"] == 0 and r["demo"]["models_rows"] > 0
    assert 0 < r["overhead"]["overhead_s"] and r["overhead"]["cell_action"] == "ran"
    assert "3 seeds" in proc.stdout
