"""Anchors: landscape.curvature against PyHessian 0.1, curvlinops-for-pytorch 3.0.1 and hessian-eigenthings 1.0.0a5.

Run: ``make bench`` (builds ``.venv-bench`` with the anchors, then runs this file), or
``.venv-bench/bin/python benchmarks/anchors.py [--quick] [--out benchmarks/results/anchors.json]``.
``run(quick)`` returns the same dict, for ``benchmarks/run.py``. An anchor that cannot be imported is skipped
with the pip command that installs it (in the JSON and on stdout), never silently.

Problems (the figures of issue 15): a CNN with BatchNorm (k = 16, depth 2: 5,178 parameters) and an MLP 256-256
(85,002 parameters) on the first 1000 training digits of ``landscape.data`` (standardised), each briefly trained
(30 full-batch SGD steps, lr 0.1, momentum 0.9, seed 0) so the Hessian is not taken at initialisation; then eval
mode, float32, one torch thread, the cross-entropy mean loss over the 1000 samples in one batch.

Reference (float64, independent of the float32 estimators timed):
* top-5: float64 Lanczos (``landscape.curvature.eigenvalues``) to relative residual 1e-10 (each value is then
  within ~1e-10 relative of a true eigenvalue), from two start vectors that must agree;
* trace: the Gauss-Newton identity ``tr H = (1/N) sum_n tr(A_n J_n J_n^T)`` (``A_n = diag(p_n) - p_n p_n^T``
  the softmax Hessian, ``J_n`` the per-sample Jacobian of the logits, float64): exact for networks that are
  piecewise linear in every single parameter (ReLU, max-pooling, eval-mode BatchNorm, linear layers), whose
  logits have vanishing diagonal second derivatives; an exact trace, not an estimate.
Both are checked against the dense float64 Hessian (eigvalsh, its diagonal) on the --quick model (438
parameters; tests/test_benchmarks_anchors.py); a dense Hessian of the 5,178-parameter CNN is out of reach here.

Measured per anchor:
1. ``hvp``: one Hessian-vector product through the anchor's own operator vs one gradient (same 1000 samples),
   interleaved repetitions, median;
2. ``top1`` / ``top5``: each method with its own stopping rule at tolerance 1e-3: products, seconds (operator
   construction included), max relative error of the top-k against the reference, whether it is <= 1e-3;
   for the Krylov methods also ``fewest``: the fewest products whose answer is within 1e-3 (a scan over the
   step budget with the reference known: what a perfectly tuned user would spend);
3. ``trace``: each estimator at the same number of products (100), over 10 seeds: mean, standard deviation,
   mean |error| relative to the reference, seconds per estimate;
4. ``top1_seeds`` / ``top5_seeds`` (``--seeds``, default 5): every anchor in its default configuration and in the
   configuration its authors advise, beside landscape, over seeds 0..N-1 (start vectors): the range of products,
   of the relative error, and on how many seeds it is within 1e-3. Advised: scipy's ``eigsh`` with
   ``ncv = 2k + 1`` (its smallest) and ``ncv = 5`` beside its default ``ncv = max(2k + 1, 20)`` (curvlinops
   hands its operator to ``eigsh``); PyHessian at ``tol = 1e-4`` beside ``1e-3``; hessian-eigenthings'
   Lanczos run with growing ``max_iter`` until its own residual check certifies every Ritz value
   (``converged``; products: the steps of the certified run), beside its default of 2k steps. Landscape runs with
   both its stopping rules: ``certify="residual"`` (its default, row ``landscape``) and ``certify="gap"`` (the
   Kato-Temple bound ``r^2 / gap``, issue 23; ``landscape.curvature.eigen.CERTIFY``). Each row also keeps the
   products and errors per seed (``per_seed``), tabled beside the fewest products of any anchor configuration within
   1e-3 on that seed (the best-tuned anchor, seed by seed; start vectors differ between libraries).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

log = logging.getLogger("benchmarks.anchors")

TOL = 1e-3
TRACE_PRODUCTS = 100
KRYLOV_TOL = 1e-4  # the hessian family's default tolerance (metrics.hessian.Config.tol)
TRACE_SEEDS = 10
SECTIONS = ("hvp", "top", "seeds", "trace")
"""What ``run`` measures per problem (``--sections``): see the module docstring (``seeds``: item 4)."""
# Trace estimators run (10 seeds x 100 products each). Plain Hutchinson is the same estimator in every library,
# so it runs for landscape and PyHessian only; curvlinops' and eigenthings' Hutch++ (and curvlinops' XTrace) are
# their improved estimators. curvlinops' and eigenthings' Hutchinson are left out of the default run for time
# (one curvlinops product costs ~3-4x a gradient here): ``--trace-all`` runs them. curvlinops' Hutch++ needs a
# multiple of 3 products: it gets 99.
TRACE_METHODS = {
    "landscape": ("hutchinson", "hutch++", "krylov"),
    "pyhessian": ("hutchinson",),
    "curvlinops": ("hutch++", "xtrace"),
    "eigenthings": ("hutch++",),
}
DENSE_MAX = 1000  # dense float64 reference up to this many parameters (the vmapped float64 products of the
# 5,178-parameter CNN cost ~1 s a column on this machine: ~1.5 h for its dense Hessian)
INSTALL = (
    ".venv-bench/bin/pip install torch==2.13.0 pyhessian==0.1 curvlinops-for-pytorch==3.0.1 "
    "hessian-eigenthings==1.0.0a5   (or: make bench)"
)
ANCHORS = {  # name: (module, pip requirement)
    "pyhessian": ("pyhessian", "pyhessian==0.1"),
    "curvlinops": ("curvlinops", "curvlinops-for-pytorch==3.0.1"),
    "eigenthings": ("hessian_eigenthings", "hessian-eigenthings==1.0.0a5"),
}


# ------------------------------------------------------------------------------------------------ helpers
def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def available_anchors() -> tuple[dict[str, Any], dict[str, str]]:
    """``({name: module}, {name: why skipped + pip command})`` for the three anchors."""
    import importlib

    found, skipped = {}, {}
    for name, (module, req) in ANCHORS.items():
        try:
            found[name] = importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure skips the anchor, with its reason
            skipped[name] = (
                f"{module} not importable ({type(exc).__name__}: {exc}); fix: .venv-bench/bin/pip install {req}"
            )
    return found, skipped


@dataclass
class Problem:
    name: str
    model: nn.Module
    x: Tensor
    y: Tensor

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def make_problem(name: str, n: int = 1000, width: int | None = None, steps: int = 30, seed: int = 0) -> Problem:
    """``name`` in {cnn, mlp}: the model (``landscape.models.build_model``) on the first ``n`` training digits,
    trained ``steps`` full-batch SGD steps (lr 0.1, momentum 0.9), returned in eval mode."""
    from omegaconf import OmegaConf

    from landscape.config import data_config, model_config
    from landscape.data import load_data
    from landscape.models import build_model

    data = load_data(OmegaConf.structured(data_config(name="digits", subsample=n)))
    if name == "cnn":
        mcfg = model_config(name="cnn", width=width or 16, depth=2, batch_norm=True)
    elif name == "mlp":
        mcfg = model_config(name="mlp", width=width or 256, depth=2)
    else:
        raise ValueError(f"problem {name!r}: expected cnn or mlp")
    model = build_model(OmegaConf.structured(mcfg), data.input_shape, data.n_classes, seed=seed)
    x, y = data.x_train, data.y_train
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return Problem(f"{name} ({sum(p.numel() for p in model.parameters())} parameters)", model, x, y)


# ---------------------------------------------------------------------------------------------- reference
def ggn_trace(problem: Problem, chunk: int = 25) -> float:
    """``(1/N) sum_n tr(A_n J_n J_n^T)`` in float64 (``A_n = diag(p_n) - p_n p_n^T``, ``J_n`` ``[C, P]``)."""
    from torch.func import functional_call, jacrev, vmap

    model = problem.model
    params = {k: v.detach().double() for k, v in model.named_parameters()}
    buffers = {k: (v.double() if v.is_floating_point() else v) for k, v in model.named_buffers()}

    def logits(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, (p, buffers), (xi[None],))[0]

    jac = vmap(jacrev(logits), in_dims=(None, 0))
    total = 0.0
    x = problem.x.double()
    for i in range(0, x.shape[0], chunk):
        xc = x[i : i + chunk]
        J = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac(params, xc).values()], dim=2)  # [c, C, P]
        G = J @ J.transpose(1, 2)  # [c, C, C]
        with torch.no_grad():
            p = torch.softmax(functional_call(model, (params, buffers), (xc,)), dim=1)  # [c, C]
        A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        total += float((A * G).sum())
    return total / x.shape[0]


def reference(problem: Problem, k: int = 5) -> dict[str, Any]:
    """Float64 top-``k`` eigenvalues (descending) and trace; see the module docstring for how."""
    from landscape.curvature import HessianOperator, eigenvalues

    op64 = HessianOperator(problem.model, F.cross_entropy, (problem.x, problem.y), dtype=torch.float64, max_block=64)
    out: dict[str, Any] = {"n_params": problem.n_params}
    t0 = time.perf_counter()
    if problem.n_params <= DENSE_MAX:
        n = problem.n_params
        H = torch.cat([op64.matmat(torch.eye(n, dtype=torch.float64)[:, i : i + 512]) for i in range(0, n, 512)], dim=1)
        out["asymmetry"] = float((H - H.T).abs().max() / H.abs().max())
        H = 0.5 * (H + H.T)
        ev = torch.linalg.eigvalsh(H)
        out.update(
            method="dense float64 Hessian",
            top=ev.flip(0)[:k].tolist(),
            trace=float(H.diagonal().sum()),
            smallest=float(ev[0]),
        )
        out["ggn_trace_check"] = ggn_trace(problem)  # the identity used for the larger models, checked here
        out["ggn_trace_check_rel_diff"] = abs(out["ggn_trace_check"] - out["trace"]) / abs(out["trace"])
        lz = eigenvalues(op64, k=k, tol=1e-10, max_iter=2000, seed=12345)
        out["lanczos_check_max_rel_diff"] = float(((lz.values - ev.flip(0)[:k]).abs() / ev.flip(0)[:k].abs()).max())
    else:
        lz = eigenvalues(op64, k=k, tol=1e-10, max_iter=2000, seed=12345)
        lz2 = eigenvalues(op64, k=k, tol=1e-10, max_iter=2000, seed=54321)  # another start vector must agree
        out.update(
            method="float64 Lanczos to residual 1e-10 (top-5), Gauss-Newton identity with float64 Jacobians (trace)",
            top=lz.values.tolist(),
            residuals=lz.residuals.tolist(),
            converged=lz.converged,
            n_matvecs=lz.n_matvecs,
            trace=ggn_trace(problem),
            second_start_max_rel_diff=float(((lz.values - lz2.values).abs() / lz.values.abs()).max()),
        )
    out["seconds"] = time.perf_counter() - t0
    return out


def rel_err(values: Any, ref: list[float], k: int) -> float:
    got = sorted((float(v) for v in values), reverse=True)[:k]
    if len(got) < k:
        return float("inf")
    return max(abs(g - r) / abs(r) for g, r in zip(got, ref[:k], strict=True))


# ------------------------------------------------------------------------------------------------ anchors
class Anchor:
    """One library's Hessian: ``fresh()`` builds its operator (counted products), ``hvp(v)``, eigen/trace runs."""

    name = ""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.products = 0

    def gradient(self) -> None:
        params = [p for p in self.problem.model.parameters() if p.requires_grad]
        torch.autograd.grad(F.cross_entropy(self.problem.model(self.problem.x), self.problem.y), params)


class Landscape(Anchor):
    name = "landscape"

    def fresh(self) -> Any:
        from landscape.curvature import HessianOperator

        op = HessianOperator(self.problem.model, F.cross_entropy, (self.problem.x, self.problem.y))
        self.op = op
        return op

    def count(self) -> int:
        return self.op.n_products

    def hvp_fn(self) -> Callable[[], Any]:
        op = self.fresh()
        v = torch.randn(op.shape[0])
        op.matvec(v)  # builds the cached graph
        return lambda: op.matvec(v)

    def top(self, k: int, seed: int, certify: str = "residual", start: str = "random") -> tuple[list[float], int]:
        """Top-``k`` by Lanczos from a Gaussian start (``seed``) or ``start="gradient"``
        (``landscape.curvature.gradient_start``: its gradient is counted as one product; it costs about half of one)."""
        from landscape.curvature import eigenvalues, gradient_start

        op = self.fresh()
        v0, extra = None, 0
        if start == "gradient":
            v0, extra = gradient_start(op.gradient(), seed=seed), 1
        r = eigenvalues(op, k=k, tol=TOL, max_iter=500, seed=seed, certify=certify, v0=v0)
        return r.values.tolist(), op.n_products + extra

    def configurations(self) -> dict[str, Callable[[int, int], tuple[list[float], int]]]:
        """Top-k runs: the default stopping rule (residuals) and the gap-certified one (issue 23; ``CERTIFY`` in
        ``landscape.curvature.eigen``), each from a Gaussian start and from ``gradient_start``."""
        return {
            "landscape": self.top,
            "landscape (certify=gap)": lambda k, s: self.top(k, s, certify="gap"),
            "landscape (gradient start)": lambda k, s: self.top(k, s, start="gradient"),
            "landscape (gradient start, certify=gap)": lambda k, s: self.top(k, s, certify="gap", start="gradient"),
        }

    def top_budget(self, k: int, m: int, seed: int) -> list[float]:
        from landscape.curvature import eigenvalues

        return eigenvalues(self.fresh(), k=k, tol=1e-300, max_iter=m, seed=seed).values.tolist()

    def traces(self) -> dict[str, Callable[[int], float]]:
        from landscape.curvature import trace

        def krylov(s: int) -> float:
            """The hessian family's default: the eigenvalue run for both ends (its tolerance, seed ``s``), then
            its Krylov basis exactly and projected Hutchinson probes for the rest of the 100 products."""
            from landscape.curvature import deflated_hutchinson, extreme_eigenpairs

            op = self.fresh()
            ends = extreme_eigenpairs(op, k_largest=1, k_smallest=1, tol=KRYLOV_TOL, max_iter=500, seed=s + 10_000)
            probes = max(2, TRACE_PRODUCTS - op.n_products)
            return deflated_hutchinson(op, ends.basis, ends.projected, n_probes=probes, seed=s).estimate

        return {
            "hutchinson": lambda s: trace(self.fresh(), method="hutchinson", n_matvecs=TRACE_PRODUCTS, seed=s).estimate,
            "hutch++": lambda s: trace(self.fresh(), method="hutch++", n_matvecs=TRACE_PRODUCTS, seed=s).estimate,
            "krylov": krylov,
        }


class PyHessianAnchor(Anchor):
    name = "pyhessian"

    def __init__(self, problem: Problem):
        super().__init__(problem)
        import pyhessian  # noqa: F401 - its __init__ shadows the submodule pyhessian.hessian by the class

        ph = sys.modules["pyhessian.hessian"]
        self.ph = ph
        if not hasattr(ph, "_anchors_original_hvp"):
            ph._anchors_original_hvp = ph.hessian_vector_product
        original = ph._anchors_original_hvp

        def counted(gradsH: Any, params: Any, v: Any) -> Any:
            self.products += 1
            return original(gradsH, params, v)

        ph.hessian_vector_product = counted  # PyHessian's eigenvalues/trace call it by this module-level name

    def fresh(self) -> Any:
        self.problem.model.zero_grad(set_to_none=True)
        self.products = 0
        return self.ph.hessian(
            self.problem.model, nn.CrossEntropyLoss(), data=(self.problem.x, self.problem.y), cuda=False
        )

    def hvp_fn(self) -> Callable[[], Any]:
        h = self.fresh()
        v = [torch.randn_like(p) for p in h.params]
        return lambda: self.ph._anchors_original_hvp(h.gradsH, h.params, v)

    def top(self, k: int, seed: int, tol: float = TOL) -> tuple[list[float], int]:
        h = self.fresh()
        torch.manual_seed(seed)
        vals, _ = h.eigenvalues(maxIter=100, tol=tol, top_n=k)
        self.problem.model.zero_grad(set_to_none=True)
        return list(vals), self.products

    def configurations(self) -> dict[str, Callable[[int, int], tuple[list[float], int]]]:
        """Top-k runs: PyHessian's default tolerance (1e-3, the target) and the advised 1e-4."""
        return {"pyhessian tol 1e-3": self.top, "pyhessian tol 1e-4": lambda k, s: self.top(k, s, tol=1e-4)}

    def traces(self) -> dict[str, Callable[[int], float]]:
        def est(s: int) -> float:
            h = self.fresh()
            torch.manual_seed(s)
            out = float(np.mean(h.trace(maxIter=TRACE_PRODUCTS, tol=0.0)))  # tol 0: never stops early
            self.problem.model.zero_grad(set_to_none=True)
            return out

        return {"hutchinson": est}


class Curvlinops(Anchor):
    name = "curvlinops"

    def fresh(self) -> Any:
        from curvlinops import HessianLinearOperator

        p = self.problem
        params = [q for q in p.model.parameters() if q.requires_grad]
        H = HessianLinearOperator(
            p.model, nn.CrossEntropyLoss(), params, [(p.x, p.y)], check_deterministic=False, num_data=int(p.x.shape[0])
        )
        original = H._matmat
        self.products = 0

        def counted(M: list[Tensor]) -> list[Tensor]:
            self.products += int(M[0].shape[-1])
            return original(M)

        H._matmat = counted
        return H

    def hvp_fn(self) -> Callable[[], Any]:
        H = self.fresh()
        v = torch.randn(self.problem.n_params)
        H @ v
        return lambda: H @ v

    def top(self, k: int, seed: int, ncv: int | None = None) -> tuple[list[float], int]:
        from scipy.sparse.linalg import eigsh

        H = self.fresh()
        v0 = np.random.default_rng(seed).standard_normal(self.problem.n_params).astype(np.float32)
        vals = eigsh(H.to_scipy(np.float32), k=k, which="LA", tol=TOL, v0=v0, ncv=ncv, return_eigenvectors=False)
        return sorted(vals.tolist(), reverse=True), self.products

    def configurations(self) -> dict[str, Callable[[int, int], tuple[list[float], int]]]:
        """Top-k runs: ``eigsh``'s default ``ncv = max(2k + 1, 20)``, its smallest ``2k + 1`` and ``max(5, 2k + 1)``
        (at k = 5 the same as ``2k + 1``)."""
        return {
            "curvlinops + eigsh (ncv default)": self.top,
            "curvlinops + eigsh (ncv 2k+1)": lambda k, s: self.top(k, s, ncv=2 * k + 1),
            "curvlinops + eigsh (ncv 5)": lambda k, s: self.top(k, s, ncv=max(5, 2 * k + 1)),
        }

    def traces(self) -> dict[str, Callable[[int], float]]:
        from curvlinops import hutchinson_trace, hutchpp_trace, xtrace

        def make(fn: Callable[..., Tensor], products: int) -> Callable[[int], float]:
            def est(s: int) -> float:
                H = self.fresh()
                torch.manual_seed(s)  # curvlinops draws from the global generator
                return float(fn(H, products))

            return est

        self.trace_products = {"hutch++": TRACE_PRODUCTS - TRACE_PRODUCTS % 3}  # it requires a multiple of 3
        return {
            "hutchinson": make(hutchinson_trace, TRACE_PRODUCTS),
            "hutch++": make(hutchpp_trace, self.trace_products["hutch++"]),
            "xtrace": make(xtrace, TRACE_PRODUCTS),
        }


class Eigenthings(Anchor):
    name = "eigenthings"

    def fresh(self) -> Any:
        import hessian_eigenthings as he

        p = self.problem
        op = he.HessianOperator(p.model, [(p.x, p.y)], he.supervised_loss(F.cross_entropy))
        original = op.matvec
        self.products = 0

        def counted(v: Tensor) -> Tensor:
            self.products += 1
            return original(v)

        op.matvec = counted
        return op

    def hvp_fn(self) -> Callable[[], Any]:
        op = self.fresh()
        v = torch.randn(self.problem.n_params)
        return lambda: op.matvec(v)

    def top(self, k: int, seed: int) -> tuple[list[float], int]:  # power iteration (deflated for k > 1)
        import hessian_eigenthings as he

        op = self.fresh()
        r = he.deflated_power_iteration(op, k=k, max_iter=100, tol=TOL, seed=seed)
        return r.eigenvalues.tolist(), self.products

    def top_lanczos_default(self, k: int, seed: int) -> tuple[list[float], int]:
        import hessian_eigenthings as he

        op = self.fresh()
        r = he.lanczos(op, k=k, which="LA", tol=TOL, seed=seed)  # default max_iter = 2k steps
        return r.eigenvalues.tolist(), self.products

    def top_budget(self, k: int, m: int, seed: int) -> list[float]:
        import hessian_eigenthings as he

        return he.lanczos(self.fresh(), k=k, max_iter=max(m, k), which="LA", tol=TOL, seed=seed).eigenvalues.tolist()

    def top_lanczos_certified(self, k: int, seed: int, m_max: int = 100) -> tuple[list[float], int]:
        """The advised use of its Lanczos (a fixed number of steps, then a residual check): ``max_iter`` from
        ``k + 1`` up until every Ritz value is ``converged`` at tolerance 1e-3; products: the certified run's."""
        import hessian_eigenthings as he

        r = None
        for m in range(k + 1, m_max + 1):
            r = he.lanczos(self.fresh(), k=k, max_iter=m, which="LA", tol=TOL, seed=seed)
            if bool(r.converged.all()):
                return r.eigenvalues.tolist(), self.products
        assert r is not None
        return r.eigenvalues.tolist(), self.products

    def configurations(self) -> dict[str, Callable[[int, int], tuple[list[float], int]]]:
        """Top-k runs: power iteration, Lanczos at its default 2k steps, Lanczos certified by its residuals."""
        return {
            "eigenthings power": self.top,
            "eigenthings lanczos (default 2k steps)": self.top_lanczos_default,
            "eigenthings lanczos (certified)": self.top_lanczos_certified,
        }

    def traces(self) -> dict[str, Callable[[int], float]]:
        import hessian_eigenthings as he

        return {
            "hutchinson": lambda s: (
                he.trace(self.fresh(), num_matvecs=TRACE_PRODUCTS, method="hutchinson", seed=s).estimate
            ),
            "hutch++": lambda s: he.trace(self.fresh(), num_matvecs=TRACE_PRODUCTS, method="hutch++", seed=s).estimate,
        }


# ------------------------------------------------------------------------------------------------ measure
def bench_hvp(anchors: list[Anchor], repeats: int) -> dict[str, Any]:
    """Interleaved repetitions: a gradient, then one HVP through each anchor; medians and ratios."""
    fns = {a.name: a.hvp_fn() for a in anchors}
    grad = anchors[0].gradient
    times: dict[str, list[float]] = {"gradient": [], **{n: [] for n in fns}}
    grad()
    for _ in range(repeats):
        times["gradient"].append(_timed(grad)[1])
        for n, fn in fns.items():
            times[n].append(_timed(fn)[1])
    med = {n: statistics.median(t) for n, t in times.items()}
    return {"median_s": med, "hvp_over_gradient": {n: med[n] / med["gradient"] for n in fns}, "repeats": repeats}


def fewest(anchor: Anchor, k: int, ref: list[float], seed: int, m_max: int) -> dict[str, Any]:
    """Fewest step budget ``m`` (= products) whose top-``k`` answer is within ``TOL`` of the reference; its time."""
    for m in range(k, m_max + 1):
        err = rel_err(anchor.top_budget(k, m, seed), ref, k)
        if err <= TOL:
            vals, t = _timed(lambda: anchor.top_budget(k, m, seed))  # noqa: B023 (called within this iteration)
            return {"products": m, "seconds": t, "rel_err": err}
    return {"products": None, "note": f"not within {TOL} by {m_max} products"}


def bench_top(anchors: list[Anchor], ref: list[float], seed: int, quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in (1, 5):
        rows: dict[str, Any] = {}
        for a in anchors:
            runs = [(a.name if a.name != "eigenthings" else "eigenthings power", a.top)]
            if isinstance(a, Eigenthings):
                runs.append(("eigenthings lanczos (default 2k steps)", a.top_lanczos_default))
            if isinstance(a, Curvlinops):
                runs[0] = ("curvlinops + eigsh", a.top)
            for label, fn in runs:
                try:
                    (vals, products), t = _timed(lambda: fn(k, seed))  # noqa: B023 (called within this iteration)
                    err = rel_err(vals, ref, k)
                    rows[label] = {
                        "products": products,
                        "seconds": t,
                        "rel_err": err,
                        "within_tol": err <= TOL,
                        "values": sorted(map(float, vals), reverse=True),
                    }
                except Exception as exc:  # noqa: BLE001 - one failed run costs one row
                    rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
            if hasattr(a, "top_budget") and not quick:
                label = "eigenthings lanczos" if isinstance(a, Eigenthings) else a.name
                try:
                    rows[label + " (fewest)"] = fewest(a, k, ref, seed, 60)
                except Exception as exc:  # noqa: BLE001 - an anchor's failure is reported in its row
                    rows[label + " (fewest)"] = {"error": f"{type(exc).__name__}: {exc}"}
        out[f"top{k}"] = rows
    return out


def bench_top_seeds(anchors: list[Anchor], ref: list[float], seeds: int) -> dict[str, Any]:
    """Every anchor's top-k configurations (``configurations()``; landscape: its default) over seeds
    ``0..seeds-1``: ranges of products, seconds and relative error, and the seeds within ``TOL``."""
    out: dict[str, Any] = {}
    for k in (1, 5):
        rows: dict[str, Any] = {}
        for a in anchors:
            configs = a.configurations() if hasattr(a, "configurations") else {a.name: a.top}
            for label, fn in configs.items():
                runs = []
                try:
                    for s in range(seeds):
                        (vals, products), t = _timed(lambda: fn(k, s))  # noqa: B023 (called within this iteration)
                        runs.append((int(products), t, rel_err(vals, ref, k)))
                except Exception as exc:  # noqa: BLE001 - one failed configuration costs one row
                    rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
                    continue
                products, times, errs = zip(*runs, strict=True)
                rows[label] = {
                    "products": [min(products), max(products)],
                    "seconds": [min(times), max(times)],
                    "rel_err": [min(errs), max(errs)],
                    "within_tol": sum(e <= TOL for e in errs),
                    "seeds": seeds,
                    "per_seed": {"products": list(products), "rel_err": list(errs)},
                }
                log.info("%s: top-%d %s: %s", a.problem.name, k, label, rows[label])
        out[f"top{k}_seeds"] = rows
    return out


def bench_trace(
    anchors: list[Anchor], ref: float, seeds: int, methods: dict[str, tuple[str, ...]] | None
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for a in anchors:
        for method, est in a.traces().items():
            if methods is not None and method not in methods.get(a.name, ()):
                continue
            label = f"{a.name} {method}"
            try:
                vals, times, counted = [], [], []
                for s in range(seeds):
                    v, t = _timed(lambda: est(s))  # noqa: B023 (called within this iteration)
                    vals.append(v)
                    times.append(t)
                    counted.append(a.op.n_products if isinstance(a, Landscape) else a.products)
                arr = np.asarray(vals)
                log.info("%s: trace %s: %.5g +- %.3g", a.problem.name, label, arr.mean(), arr.std())
                rows[label] = {
                    "mean": float(arr.mean()),
                    "std": float(arr.std(ddof=1)) if seeds > 1 else 0.0,
                    "mean_abs_rel_err": float(np.mean(np.abs(arr - ref)) / abs(ref)),
                    "bias_rel": float((arr.mean() - ref) / abs(ref)),
                    "seconds_per_estimate": statistics.median(times),
                    "products": getattr(a, "trace_products", {}).get(method, TRACE_PRODUCTS),
                    "products_counted": max(counted),
                    "seeds": seeds,
                }
            except Exception as exc:  # noqa: BLE001 - an anchor's failure is reported in its row
                rows[label] = {"error": f"{type(exc).__name__}: {exc}"}
    return rows


def bench_problem(
    problem: Problem,
    mods: dict[str, Any],
    quick: bool,
    trace_all: bool = False,
    seeds: int = 5,
    sections: tuple[str, ...] = SECTIONS,
) -> dict[str, Any]:
    ref, t_ref = _timed(lambda: reference(problem))
    log.info("%s: reference in %.1f s", problem.name, t_ref)
    anchors: list[Anchor] = [Landscape(problem)]
    if "pyhessian" in mods:
        anchors.append(PyHessianAnchor(problem))
    if "curvlinops" in mods:
        anchors.append(Curvlinops(problem))
    if "eigenthings" in mods:
        anchors.append(Eigenthings(problem))
    out: dict[str, Any] = {
        "problem": problem.name,
        "n_params": problem.n_params,
        "n_samples": int(problem.x.shape[0]),
        "reference": ref,
    }
    if "hvp" in sections:
        out["hvp"] = bench_hvp(anchors, 3 if quick else 15)
        log.info(
            "%s: HVP / gradient %s", problem.name, {n: round(r, 2) for n, r in out["hvp"]["hvp_over_gradient"].items()}
        )
    if "top" in sections:
        out.update(bench_top(anchors, ref["top"], seed=0, quick=quick))
        log.info("%s: top-1 and top-5 done", problem.name)
    if "seeds" in sections:
        out.update(bench_top_seeds(anchors, ref["top"], seeds))
    if "trace" in sections:
        out["trace"] = bench_trace(
            anchors, ref["trace"], 2 if quick else TRACE_SEEDS, None if trace_all else TRACE_METHODS
        )
    return out


def run(
    quick: bool,
    problems: tuple[str, ...] = ("cnn", "mlp"),
    trace_all: bool = False,
    anchors: tuple[str, ...] = tuple(ANCHORS),
    seeds: int = 5,
    sections: tuple[str, ...] = SECTIONS,
) -> dict[str, Any]:
    """The anchors section. ``quick``: landscape only, a CNN k=4 (438 parameters) on 100 digits, 2 trace seeds
    (a smoke run of a few seconds; its figures mean nothing)."""
    torch.set_num_threads(1)
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "loadavg_start": loadavg(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "tol": TOL,
        "trace_products": TRACE_PRODUCTS,
    }
    if quick:
        mods, skipped = {}, {n: "--quick: landscape only" for n in ANCHORS}
        problems = [make_problem("cnn", n=100, width=4, steps=5)]
    else:
        mods, skipped = available_anchors()
        for name in [n for n in mods if n not in anchors]:
            del mods[name]
            skipped[name] = "not asked for (--anchors)"
        problems = [make_problem(name) for name in problems]
    result["skipped"] = skipped
    result["versions"] = {n: _dist_version(ANCHORS[n][1].split("==")[0]) for n in mods}
    for n, why in skipped.items():
        log.warning("anchor %s skipped: %s", n, why)
    result["problems"] = [bench_problem(p, mods, quick, trace_all, 2 if quick else seeds, sections) for p in problems]
    result["loadavg_end"] = loadavg()
    return result


# ------------------------------------------------------------------------------------------------- report
def _fmt(x: Any, spec: str = ".3g") -> str:
    return "-" if x is None else format(x, spec)


def tables(result: dict[str, Any]) -> str:
    """Markdown tables of a ``run()`` result."""
    lines: list[str] = []
    for pr in result["problems"]:
        ref = pr["reference"]
        lines += [
            f"**{pr['problem']}, {pr['n_samples']} samples.** Reference ({ref['method']}): top-5 "
            + ", ".join(f"{v:.6g}" for v in ref["top"])
            + f"; trace {ref['trace']:.6g}.",
            "",
        ]
        h = pr.get("hvp")
        if h:
            lines += [
                "| anchor | one HVP (ms) | HVP / gradient |",
                "|---|---|---|",
                f"| gradient | {h['median_s']['gradient'] * 1e3:.2f} | 1 |",
            ]
            lines += [f"| {n} | {h['median_s'][n] * 1e3:.2f} | {r:.2f} |" for n, r in h["hvp_over_gradient"].items()]
        lines += _seeds_table(pr)
        lines += _per_seed_table(pr)
        if "top1" not in pr:
            lines += _trace_table(pr)
            continue
        lines += [
            "",
            f"| top-k to {TOL:g} | top-1 products | top-1 s | top-1 rel. error | top-5 products | top-5 s | top-5 rel. error |",
            "|---|---|---|---|---|---|---|",
        ]
        for label in pr["top1"]:
            a, b = pr["top1"][label], pr["top5"].get(label, {})

            def cell(r: dict) -> tuple:
                if "error" in r:
                    return ("error", r["error"][:40], "")
                products = _fmt(r.get("products"), "d") if r.get("products") is not None else r.get("note", "-")
                misses = "" if r.get("rel_err") is None or r["rel_err"] <= TOL else " (misses)"
                return (products, _fmt(r.get("seconds"), ".2f"), _fmt(r.get("rel_err"), ".1e") + misses)

            lines.append(
                f"| {label} | " + " | ".join(cell(a)) + " | " + " | ".join(cell(b) if b else ("-",) * 3) + " |"
            )
        lines += _trace_table(pr)
    return "\n".join(lines)


def _seeds_table(pr: dict[str, Any]) -> list[str]:
    """The ``top1_seeds`` / ``top5_seeds`` rows: ranges over the seeds."""
    if "top1_seeds" not in pr:
        return []

    def span(r: dict[str, Any], key: str, spec: str) -> str:
        lo, hi = r[key]
        return format(lo, spec) if format(lo, spec) == format(hi, spec) else f"{lo:{spec}}-{hi:{spec}}"

    def cell(r: dict[str, Any] | None) -> str:
        if not r:
            return "- | - | -"
        if "error" in r:
            return f"error: {r['error'][:40]} | | "
        return f"{span(r, 'products', 'd')} | {span(r, 'rel_err', '.1e')} | {r['within_tol']}/{r['seeds']}"

    lines = [
        "",
        f"| over seeds, to {TOL:g} | top-1 products | top-1 rel. error | top-1 within | top-5 products "
        "| top-5 rel. error | top-5 within |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in pr["top1_seeds"].items():
        lines.append(f"| {label} | {cell(r)} | {cell(pr.get('top5_seeds', {}).get(label))} |")
    return lines


def _per_seed_table(pr: dict[str, Any]) -> list[str]:
    """Products per seed of landscape's rules beside the fewest of any anchor configuration within ``TOL`` on that
    seed (the best-tuned anchor, seed by seed), with the largest relative error over the seeds."""
    if "top1_seeds" not in pr:
        return []
    lines = [
        "",
        f"| per seed (0..N-1), to {TOL:g} | top-1 products | top-1 max rel. error | top-5 products "
        "| top-5 max rel. error |",
        "|---|---|---|---|---|",
    ]
    best: dict[str, list[str]] = {}
    for key in ("top1_seeds", "top5_seeds"):
        rows = {lab: r for lab, r in pr.get(key, {}).items() if "per_seed" in r}
        anchors = [r["per_seed"] for lab, r in rows.items() if not lab.startswith("landscape")]
        n = max((len(r["per_seed"]["products"]) for r in rows.values()), default=0)
        cells = []
        for s in range(n):
            ok = [a["products"][s] for a in anchors if a["rel_err"][s] <= TOL]
            cells.append(str(min(ok)) if ok else "-")
        best[key] = cells
    labels = [lab for lab in pr["top1_seeds"] if lab.startswith("landscape") and "per_seed" in pr["top1_seeds"][lab]]
    for lab in labels:
        cells = []
        for key in ("top1_seeds", "top5_seeds"):
            r = pr.get(key, {}).get(lab)
            if not r or "per_seed" not in r:
                cells += ["-", "-"]
                continue
            cells += ["/".join(map(str, r["per_seed"]["products"])), f"{max(r['per_seed']['rel_err']):.1e}"]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    if any(c != "-" for cells in best.values() for c in cells):
        lines.append(
            f"| best anchor within {TOL:g} | {'/'.join(best['top1_seeds'])} | | {'/'.join(best['top5_seeds'])} | |"
        )
    return lines


def _trace_table(pr: dict[str, Any]) -> list[str]:
    """The ``trace`` rows."""
    if not pr.get("trace"):
        return [""]
    lines: list[str] = []
    lines += [
        "",
        f"| trace, {TRACE_PRODUCTS} products, {next(iter(pr['trace'].values())).get('seeds', '')} seeds "
        "| mean | std | mean abs. rel. error | s per estimate |",
        "|---|---|---|---|---|",
    ]
    for label, r in pr["trace"].items():
        if "error" in r:
            lines.append(f"| {label} | error: {r['error'][:60]} | | | |")
        else:
            used = r.get("products_counted", r["products"])
            lines.append(
                f"| {label}{'' if used == TRACE_PRODUCTS else ' (%d products)' % used} | "
                f"{r['mean']:.5g} | {r['std']:.3g} | {r['mean_abs_rel_err']:.2%} | "
                f"{r['seconds_per_estimate']:.2f} |"
            )
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="landscape only on a tiny CNN (smoke run)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "anchors.json"))
    parser.add_argument("--problems", default="cnn,mlp", help="comma-separated: cnn (5,178 parameters), mlp (85,002)")
    parser.add_argument("--trace-all", action="store_true", help="every trace estimator of every anchor")
    parser.add_argument("--seeds", type=int, default=5, help="start vectors of the top-k runs over seeds (section 4)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument(
        "--anchors",
        default=",".join(ANCHORS),
        help="comma-separated subset of "
        f"{', '.join(ANCHORS)} (landscape always runs); an empty string: landscape alone",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("landscape.curvature").setLevel(logging.ERROR)  # budget scans stop unconverged on purpose
    result = run(
        args.quick,
        tuple(args.problems.split(",")),
        args.trace_all,
        tuple(filter(None, args.anchors.split(","))),
        args.seeds,
        tuple(args.sections.split(",")),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(
        f"anchors, {result['started']}, load average {result['loadavg_start']} -> {result['loadavg_end']}, "
        f"{result['threads']} thread(s), torch {result['torch']}"
    )
    for n, why in result["skipped"].items():
        print(f"SKIPPED {n}: {why}")
    print(tables(result))
    print(f"written {out}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
