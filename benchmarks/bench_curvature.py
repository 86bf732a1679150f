"""Curvature benchmark: HVP cost vs a gradient, and landscape.curvature vs PyHessian 0.1 on the same model/data.

Run: ``.venv/bin/python benchmarks/bench_curvature.py [--out benchmarks/results/curvature.json]``.
Requires ``pyhessian==0.1`` for part (2) (skipped with a note if missing). CPU, eager, float32.

(1) one Hessian-vector product vs one gradient on the same batch (median of repeats), and the per-column cost
    of a blocked ``matmat``;
(2) top eigenvalue: PyHessian power iteration (maxIter 100, tol 1e-3) vs landscape Lanczos (relative residual
    1e-3), both checked against a tight Lanczos reference (tol 1e-6): relative errors and time ratio;
(3) trace at equal numbers of products: PyHessian Hutchinson vs landscape Hutchinson and Hutch++.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from landscape.curvature import HessianOperator, eigenvalues, trace
from landscape.models import CNN


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def setup(n: int, width: int, seed: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A CNN (2 conv blocks + BatchNorm) on ``n`` sklearn digits, briefly trained so the Hessian is not at init."""
    digits = load_digits()
    x = torch.tensor(digits.images[:n] / 16.0, dtype=torch.float32)[:, None]
    y = torch.tensor(digits.target[:n], dtype=torch.int64)
    torch.manual_seed(seed)
    model = CNN((1, 8, 8), 10, width=width, depth=2, batch_norm=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, x, y


def bench_hvp(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, float]:
    op = HessianOperator(model, F.cross_entropy, (x, y))
    params = [p for p in model.parameters() if p.requires_grad]
    v = torch.randn(op.shape[0])
    V = torch.randn(op.shape[0], 8)

    def gradient() -> None:
        torch.autograd.grad(F.cross_entropy(model(x), y), params)

    t_grad = median_time(gradient, repeats)
    t_hvp = median_time(lambda: op.matvec(v), repeats)
    t_mm = median_time(lambda: op.matmat(V), max(3, repeats // 4)) / V.shape[1]
    return {
        "grad_s": t_grad,
        "hvp_s": t_hvp,
        "matmat_per_column_s": t_mm,
        "hvp_over_grad": t_hvp / t_grad,
        "matmat_column_over_grad": t_mm / t_grad,
        "n_params": op.shape[0],
        "n_samples": int(x.shape[0]),
    }


def bench_pyhessian(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, trace_matvecs: int, seed: int
) -> dict[str, Any]:
    try:
        from pyhessian import hessian as PyHessian
    except ImportError:
        return {"skipped": "pyhessian not installed (.venv/bin/pip install pyhessian==0.1)"}
    op = HessianOperator(model, F.cross_entropy, (x, y))
    ref = eigenvalues(op, k=1, tol=1e-6, max_iter=500, seed=seed + 99)  # float32 floor ~1e-6
    lam_ref = float(ref.values[0])

    torch.manual_seed(seed)
    ph = PyHessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    (ph_vals, _), t_ph = _timed(lambda: ph.eigenvalues(maxIter=100, tol=1e-3, top_n=1))
    op.n_products = 0
    ours, t_ours = _timed(lambda: eigenvalues(op, k=1, tol=1e-3, max_iter=300, seed=seed))
    eig = {
        "reference": lam_ref,
        "pyhessian": float(ph_vals[0]),
        "pyhessian_rel_err": abs(float(ph_vals[0]) - lam_ref) / abs(lam_ref),
        "pyhessian_s": t_ph,
        "landscape": float(ours.values[0]),
        "landscape_rel_err": abs(float(ours.values[0]) - lam_ref) / abs(lam_ref),
        "landscape_s": t_ours,
        "landscape_matvecs": ours.n_matvecs,
        "time_ratio_landscape_over_pyhessian": t_ours / t_ph,
    }
    exact_ish = trace(op, method="hutch++", n_matvecs=600, seed=seed + 7)  # a tight reference
    torch.manual_seed(seed)
    ph_tr, t_ph_tr = _timed(lambda: ph.trace(maxIter=trace_matvecs, tol=0.0))  # tol 0: never stops early
    tr_h, t_h = _timed(lambda: trace(op, method="hutchinson", n_matvecs=trace_matvecs, seed=seed))
    tr_pp, t_pp = _timed(lambda: trace(op, method="hutch++", n_matvecs=trace_matvecs, seed=seed))
    ph_arr = torch.tensor(ph_tr, dtype=torch.float64)
    tr = {
        "n_matvecs": trace_matvecs,
        "reference_hutch++600": exact_ish.estimate,
        "reference_stderr": exact_ish.stderr,
        "pyhessian": float(ph_arr.mean()),
        "pyhessian_stderr": float(ph_arr.std() / len(ph_arr) ** 0.5),
        "pyhessian_s": t_ph_tr,
        "hutchinson": tr_h.estimate,
        "hutchinson_stderr": tr_h.stderr,
        "hutchinson_s": t_h,
        "hutch++": tr_pp.estimate,
        "hutch++_stderr": tr_pp.stderr,
        "hutch++_s": t_pp,
        "stderr_ratio_hutchinson_over_hutch++": tr_h.stderr / tr_pp.stderr,
    }
    return {"top_eigenvalue": eig, "trace": tr}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/curvature.json")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--trace-matvecs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    model, x, y = setup(args.samples, args.width, args.seed)
    result: dict[str, Any] = {
        "setup": {
            "model": f"CNN(width={args.width}, depth=2, batch_norm) on digits",
            "samples": args.samples,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "hvp": bench_hvp(model, x, y, args.repeats),
    }
    result.update(bench_pyhessian(model, x, y, args.trace_matvecs, args.seed))

    h = result["hvp"]
    print(
        f"model: {result['setup']['model']}, P={h['n_params']}, N={h['n_samples']}, threads={torch.get_num_threads()}"
    )
    print(
        f"(1) gradient {h['grad_s'] * 1e3:8.2f} ms | HVP {h['hvp_s'] * 1e3:8.2f} ms ({h['hvp_over_grad']:.2f}x) | "
        f"matmat per column {h['matmat_per_column_s'] * 1e3:8.2f} ms ({h['matmat_column_over_grad']:.2f}x)"
    )
    if "top_eigenvalue" in result:
        e, t = result["top_eigenvalue"], result["trace"]
        print(f"(2) top eigenvalue  reference {e['reference']:.6g}")
        print(f"    PyHessian  {e['pyhessian']:.6g} rel.err {e['pyhessian_rel_err']:.1e} in {e['pyhessian_s']:.3f} s")
        print(
            f"    landscape  {e['landscape']:.6g} rel.err {e['landscape_rel_err']:.1e} in {e['landscape_s']:.3f} s "
            f"({e['landscape_matvecs']} products) -> time ratio {e['time_ratio_landscape_over_pyhessian']:.3f}"
        )
        print(
            f"(3) trace, {t['n_matvecs']} products (reference {t['reference_hutch++600']:.5g} +- "
            f"{t['reference_stderr']:.2g})"
        )
        print(f"    PyHessian   {t['pyhessian']:.5g} +- {t['pyhessian_stderr']:.2g} in {t['pyhessian_s']:.3f} s")
        print(f"    Hutchinson  {t['hutchinson']:.5g} +- {t['hutchinson_stderr']:.2g} in {t['hutchinson_s']:.3f} s")
        print(
            f"    Hutch++     {t['hutch++']:.5g} +- {t['hutch++_stderr']:.2g} in {t['hutch++_s']:.3f} s "
            f"(stderr ratio {t['stderr_ratio_hutchinson_over_hutch++']:.1f}x)"
        )
    else:
        print(f"(2,3) {result.get('skipped')}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
