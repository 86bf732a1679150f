"""benchmarks/anchors.py --quick: landscape against an exact dense float64 Hessian on a tiny CNN with BatchNorm.

Runs in-process in a few seconds. Checks the reference itself (the Gauss-Newton trace identity the MLP reference
relies on, against the dense trace; float64 Lanczos against the dense spectrum) and landscape's top eigenvalues
and trace estimates against it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import anchors  # noqa: E402 - after benchmarks/ is put on sys.path


def test_anchors_quick_landscape_against_dense_reference():
    threads = torch.get_num_threads()
    try:
        r = anchors.run(quick=True)
    finally:
        torch.set_num_threads(threads)
    assert set(r["skipped"]) == {"pyhessian", "curvlinops", "eigenthings"}  # named, not silently dropped
    (pr,) = r["problems"]
    ref = pr["reference"]
    assert pr["n_params"] == 438 and ref["method"] == "dense float64 Hessian"
    # the trace identity used as the MLP's reference holds on the dense Hessian (piecewise-linear network)
    assert ref["ggn_trace_check_rel_diff"] < 1e-10
    assert ref["lanczos_check_max_rel_diff"] < 1e-8
    assert ref["top"] == sorted(ref["top"], reverse=True) and ref["top"][0] > 0
    for k in ("top1", "top5"):
        row = pr[k]["landscape"]
        assert row["rel_err"] <= anchors.TOL and row["products"] > 0
    assert pr["hvp"]["hvp_over_gradient"]["landscape"] > 0
    for method in ("hutchinson", "hutch++"):
        t = pr["trace"][f"landscape {method}"]
        assert t["seeds"] == 2 and t["std"] > 0
        assert abs(t["mean"] - ref["trace"]) < 0.25 * ref["trace"]  # 100 products on a 438-parameter Hessian
    assert "| landscape |" in anchors.tables(r)
