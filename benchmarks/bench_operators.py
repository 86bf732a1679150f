"""Curvature operators side by side: cost per product against a Hessian-vector product, and exactness.

Run: ``.venv/bin/python benchmarks/bench_operators.py [--out benchmarks/results/operators.json] [--repeats 20]``.
CPU, eager, one thread, all in one run (compare ratios within a run only).

(1) cost: on an MLP (64-256-256-10, tanh) and a BatchNorm CNN (width 16, depth 2) on 1000 digits, float32, model
    in eval mode as the ``hessian`` family takes it: median seconds of one gradient, of one product of each
    operator (``HessianOperator``, ``GGNOperator``, ``FisherOperator``, ``EmpiricalFisherOperator``) through its
    cache (graphs; the empirical Fisher's per-sample gradient matrix), of one product without it
    (``cache_graph=False`` / ``cache=False``), and of building the cache (the first product's extra time);
    each as a ratio to the cached Hessian-vector product;
(2) exactness: on a small tanh MLP and a small BatchNorm CNN (float64) against dense matrices built with
    ``torch.func`` from each operator's definition: relative error of the top-3 eigenvalues (Lanczos, tol 1e-9)
    and of the trace, as the ``hessian`` family estimates it (Krylov-deflated Hutchinson after one Lanczos run,
    tol 1e-4) and by Hutch++ with 99 products, with their standard errors.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_curvature import median_time  # the same timing as the Hessian benchmark (run from benchmarks/)
from torch import nn
from torch.func import functional_call, jacrev

from landscape.curvature import (
    OPERATORS,
    curvature_operator,
    deflated_hutchinson,
    eigenvalues,
    extreme_eigenpairs,
    trace,
)
from landscape.models import CNN, MLP


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images[:n] / 16.0, dtype=torch.float32)[:, None], torch.tensor(d.target[:n])


def _trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 30) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def bench_cost(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict[str, Any]:
    """Seconds per product of every operator, cached and not, and of building the cache (see the docstring)."""
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    v = torch.randn(n_params, generator=torch.Generator().manual_seed(0))
    out: dict[str, Any] = {"model": name, "n_params": n_params, "n_samples": int(x.shape[0])}
    out["gradient_s"] = median_time(lambda: torch.autograd.grad(F.cross_entropy(model(x), y), params), repeats)
    for kind in OPERATORS:
        extra = {"likelihood": "categorical"} if kind == "fisher" else {}
        op = curvature_operator(kind, model, F.cross_entropy, (x, y), **extra)
        t = time.perf_counter()
        op.matvec(v)  # builds the cache
        first = time.perf_counter() - t
        cached = median_time(lambda op=op: op.matvec(v), repeats)
        plain = curvature_operator(kind, model, F.cross_entropy, (x, y), cache=False, **extra)
        uncached = median_time(lambda op=plain: op.matvec(v), max(3, repeats // 4))
        out[kind] = {"cached_s": cached, "uncached_s": uncached, "cache_build_s": max(first - cached, 0.0)}
    h = out["hessian"]["cached_s"]
    for kind in OPERATORS:
        r = out[kind]
        r["cached_over_hvp"] = r["cached_s"] / h
        r["uncached_over_hvp"] = r["uncached_s"] / h
        r["cache_build_over_hvp"] = r["cache_build_s"] / h
    out["hvp_over_gradient"] = h / out["gradient_s"]
    return out


def dense(kind: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The operator's matrix ``[P, P]`` from its definition (torch.func, float64; cross-entropy), eval mode."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    buffers = dict(model.named_buffers())
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def out(t: torch.Tensor) -> torch.Tensor:
        ps = {n: c.view(s) for n, c, s in zip(names, t.split(sizes), shapes, strict=True)}
        return functional_call(model, {**ps, **buffers}, (x,))

    n = x.shape[0]
    if kind == "hessian":
        return torch.func.hessian(lambda t: F.cross_entropy(out(t), y))(theta)
    if kind == "empirical_fisher":
        G = jacrev(lambda t: torch.stack([F.cross_entropy(out(t)[i : i + 1], y[i : i + 1]) for i in range(n)]))(theta)
        return G.T @ G / n
    if kind == "fisher":  # E_{y ~ p}[grad log p grad log p^T], the sum over classes
        p = torch.softmax(out(theta), dim=-1).detach()
        A = jacrev(lambda t: torch.log_softmax(out(t), dim=-1))(theta)
        return torch.einsum("ic,icp,icq->pq", p, A, A) / n
    J = jacrev(out)(theta).reshape(n * out(theta).shape[1], -1)
    f = out(theta).detach()
    Hf = torch.func.hessian(lambda g: F.cross_entropy(g, y))(f).reshape(J.shape[0], J.shape[0])
    return J.T @ Hf @ J


def bench_exactness(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Relative errors of the top-3 eigenvalues and of the trace estimates against the dense matrix."""
    out: dict[str, Any] = {"model": name, "n_params": sum(p.numel() for p in model.parameters())}
    for kind in OPERATORS:
        A = dense(kind, model, x, y)
        lam = torch.linalg.eigvalsh(A)
        extra = {"likelihood": "categorical"} if kind == "fisher" else {}
        op = curvature_operator(kind, model, F.cross_entropy, (x, y), **extra)
        top = eigenvalues(op, k=3, tol=1e-9, max_iter=2000, seed=0)
        exact_top = lam.flip(0)[:3]
        ends = extreme_eigenpairs(op, k_largest=1, k_smallest=1, tol=1e-4, max_iter=300, seed=0)
        krylov = deflated_hutchinson(op, ends.basis, ends.projected, n_probes=33, seed=1)
        hpp = trace(op, method="hutch++", n_matvecs=99, seed=1)
        exact_tr = float(lam.sum())
        out[kind] = {
            "top3_max_rel_err": float(((top.values - exact_top).abs() / exact_top.abs()).max()),
            "trace_exact": exact_tr,
            "trace_krylov_rel_err": abs(krylov.estimate - exact_tr) / abs(exact_tr),
            "trace_krylov_stderr_rel": krylov.stderr / abs(exact_tr),
            "trace_hutchpp_rel_err": abs(hpp.estimate - exact_tr) / abs(exact_tr),
            "trace_hutchpp_stderr_rel": hpp.stderr / abs(exact_tr),
            "dense_min_eigenvalue_rel": float(lam[0] / lam[-1]),
        }
    return out


def _small_cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    model = CNN((1, 6, 6), 3, width=3, depth=2, activation="tanh", batch_norm=True).double()
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(2.0 * torch.randn(32, 1, 6, 6, dtype=torch.float64) + 0.5)
    x = torch.randn(30, 1, 6, 6, dtype=torch.float64)
    return model.eval(), x, torch.randint(0, 3, (30,))


def _small_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = MLP(6, 3, width=10, depth=2, activation="tanh").double()
    return model.eval(), torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/operators.json")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--samples", type=int, default=1000)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = _digits(a.samples)
    torch.manual_seed(0)
    mlp = _trained(MLP(64, 10, width=256, depth=2, activation="tanh"), x, y)
    torch.manual_seed(0)
    cnn = _trained(CNN((1, 8, 8), 10, width=16, depth=2, batch_norm=True), x, y)
    result: dict[str, Any] = {
        "setup": {"threads": torch.get_num_threads(), "torch": torch.__version__, "samples": a.samples},
        "cost": [
            bench_cost("MLP 64-256-256-10 tanh", mlp, x, y, a.repeats),
            bench_cost("CNN width 16, BatchNorm", cnn, x, y, a.repeats),
        ],
        "exactness": [bench_exactness("small tanh MLP", *_small_mlp()), bench_exactness("small BN CNN", *_small_cnn())],
    }
    for c in result["cost"]:
        print(f"(1) {c['model']}: P={c['n_params']}, N={c['n_samples']}; gradient {1e3 * c['gradient_s']:.2f} ms, "
              f"HVP {1e3 * c['hessian']['cached_s']:.2f} ms ({c['hvp_over_gradient']:.2f}x a gradient)")  # fmt: skip
        for kind in OPERATORS:
            r = c[kind]
            print(
                f"    {kind:17s} cached {1e3 * r['cached_s']:7.2f} ms ({r['cached_over_hvp']:.2f}x HVP) | "
                f"uncached {1e3 * r['uncached_s']:7.2f} ms ({r['uncached_over_hvp']:.2f}x) | "
                f"cache build {1e3 * r['cache_build_s']:7.2f} ms ({r['cache_build_over_hvp']:.2f}x)"
            )
    for e in result["exactness"]:
        print(f"(2) {e['model']} (P={e['n_params']}, float64)")
        for kind in OPERATORS:
            r = e[kind]
            print(
                f"    {kind:17s} top-3 rel.err {r['top3_max_rel_err']:.1e} | trace krylov rel.err "
                f"{r['trace_krylov_rel_err']:.1e} (stderr {r['trace_krylov_stderr_rel']:.1e}) | hutch++ "
                f"{r['trace_hutchpp_rel_err']:.1e} (stderr {r['trace_hutchpp_stderr_rel']:.1e}) | dense "
                f"min/max eigenvalue {r['dense_min_eigenvalue_rel']:+.1e}"
            )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
