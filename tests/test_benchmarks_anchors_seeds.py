"""benchmarks/anchors.py section 4 (issue 23): top-k runs over several seeds, reported as ranges, with the
number of seeds within the tolerance; --quick runs landscape alone over 2 seeds against the dense Hessian."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import anchors  # noqa: E402 - after benchmarks/ is put on sys.path


def test_top_k_over_seeds_gives_ranges_and_the_seeds_within_tolerance():
    threads = torch.get_num_threads()
    try:
        r = anchors.run(quick=True, sections=("seeds",))
    finally:
        torch.set_num_threads(threads)
    (pr,) = r["problems"]
    assert "hvp" not in pr and "trace" not in pr  # only the section asked for
    for k in (1, 5):
        row = pr[f"top{k}_seeds"]["landscape"]
        lo, hi = row["products"]
        assert k <= lo <= hi and row["seeds"] == 2 and row["within_tol"] == 2, row
        assert max(row["rel_err"]) <= anchors.TOL
    text = anchors.tables(r)
    assert "| over seeds, to 0.001 |" in text and "| landscape |" in text and "2/2" in text
