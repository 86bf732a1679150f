"""Model family ``hessian``: top/bottom eigenvalues, trace and spectral-density summaries of the loss Hessian,
or of another curvature matrix (``operator``).

The Hessian is that of the mean training loss (as trained: ``ctx.loss_fn``, labels after noise) at the
trained parameters, model in eval mode, over an evaluation subset: the first ``eval_samples`` of a
permutation of the training set drawn from ``seed`` (the same subset for every model of a cell).

* ``mode="default"``: one Lanczos run (``curvature.extreme_eigenpairs``) for the top-``n_top`` and, if
  ``smallest_eigenvalue``, the most negative eigenvalue, each to relative residual ``tol`` (at most ``max_iter``
  products for the run); with ``density`` on, the run starts from the first density probe and its first
  ``n_steps`` steps are that probe's quadrature. The trace: ``trace_method="krylov"`` (default) deflates
  with the eigenvalue run's Krylov basis (its projected trace is exact, no products) and adds Hutchinson on the
  rest with ``trace_matvecs - 2 * (trace_matvecs // 3)`` probes, Hutch++'s stochastic part (33 of 99): the
  Krylov basis (50-80 vectors on an MLP 256-256) replaces Hutch++'s 2 x 33-product sketch, with a standard
  error as small or smaller (``benchmarks/bench_hessian_cell.py``); ``"hutch++"`` / ``"hutchinson"`` spend
  ``trace_matvecs`` products of their own.
* ``mode="taxonomy"``: the settings of Yang et al. (2021) / PyHessian: one batch of 200 training samples
  (the first 200 of the same permutation), power iteration (100 iterations, tol 1e-3) and Hutchinson with
  PyHessian's stopping rule (see ``landscape.curvature.taxonomy``).

Data are processed in chunks of ``batch_size`` samples (default: as few chunks as memory allows, see
``HessianOperator(batch_size="auto")``) and, on accelerators, products in blocks of at most ``max_block``
columns (on the CPU one column at a time, the cheaper way there), so memory stays bounded for large models
(e.g. ResNet18 at width 64 on one GPU).

``operator`` chooses the matrix (``landscape.curvature.curvature_operator``), every estimator taking it unchanged:
``hessian`` (default), ``ggn`` (generalised Gauss-Newton ``J^T H_out J``), ``fisher`` (the Fisher of the model's
predictive distribution, exact; equal to the GGN for ``cross_entropy`` and ``mse``) or ``empirical_fisher``
(``(1/N) sum_i g_i g_i^T`` at the observed labels). The last three are positive semi-definite; their values go
to their own metric columns, ``hessian.<operator>_top_eigenvalue`` and ``hessian.<operator>_trace``, and their
smallest eigenvalue (a check of semi-definiteness) to ``hessian.psd_min_eigenvalue``, so rows of different
operators of one model are never mixed in a column (the operator is also the settings column
``hessian.operator``); the Hessian-only columns (``hessian.top_eigenvalue``, ``min_eigenvalue``, the density)
stay null for them, and ``density`` with another operator is refused at planning.

Eigenvalues that did not converge keep their values and residuals; ``hessian.converged`` is false and
``hessian.error`` says so (the job counts it in the cell's metric errors). A residual that is not finite (NaN
products, e.g. of a network whose weights blew up) leaves its eigenvalue and ``hessian.converged`` null
(``Family.depends``), with the reason.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import pyarrow as pa

from landscape.metrics.contract import Family, FigureStyle, ModelContext, Result
from landscape.rules import choices_of, ints, nums, one_of, rule

log = logging.getLogger(__name__)

MODES = ("default", "taxonomy")
DTYPES = ("float32", "float64")
PSD_OPERATORS = ("ggn", "fisher", "empirical_fisher")
"""The positive semi-definite operators (``metrics.hessian.operator`` beside ``hessian``)."""
OPERATOR_LABELS = {"ggn": "GGN", "fisher": "Fisher", "empirical_fisher": "empirical Fisher"}
LIKELIHOOD_OF_LOSS = {"cross_entropy": "categorical", "mse": "gaussian"}
"""The predictive distribution whose negative log-likelihood each ``train.loss`` is (for ``operator=fisher``)."""


CACHE_GRAPH_MAX_PARAMS = 5_000_000
"""``cache_graph=auto`` keeps the gradient graphs (one backward pass per product instead of three) for models up
to this many parameters; larger ones (ResNet18 at width 64: 11M) recompute them to bound memory."""


@dataclass
class Config:
    """Settings of the ``hessian`` family (mounted at ``metrics.hessian``)."""

    enabled: Any = False
    mode: str = field(default="default", metadata=rule(one_of(MODES)))
    # the curvature matrix: "hessian" | "ggn" | "fisher" | "empirical_fisher" (module docstring)
    operator: str = field(
        default="hessian", metadata=rule(one_of(choices_of("landscape.curvature.operator", "OPERATORS")))
    )
    # size of the seeded evaluation subset (default mode)
    eval_samples: int = field(default=1000, metadata=rule(ints(1)))
    # samples per chunk of the products (empirical_fisher: of per-sample gradients); None: as memory allows
    batch_size: Optional[int] = field(default=None, metadata=rule(ints(1, null=True)))
    max_block: int = field(default=8, metadata=rule(ints(1)))  # max columns per vmapped block of products
    dtype: str = field(default="float32", metadata=rule(one_of(DTYPES)))
    seed: int = 0  # evaluation subset and probes
    n_top: int = field(default=1, metadata=rule(ints(1)))  # number of top eigenvalues (column hessian.top_eigenvalues)
    tol: float = field(default=1e-4, metadata=rule(nums(0.0, lo_open=True)))  # relative residual of Lanczos eigenpairs
    # max products of the eigenvalue run (top and bottom together)
    max_iter: int = field(default=300, metadata=rule(ints(1)))
    smallest_eigenvalue: bool = True  # also the most negative (smallest) eigenvalue
    # "krylov" (deflated by the eigenvalue run's basis) | "hutch++" (>= 4 products: ``check``) | "hutchinson"
    trace_method: str = field(
        default="krylov",
        metadata=rule(one_of(choices_of("landscape.curvature.trace", "TRACE_METHODS", first=("krylov",)))),
    )
    trace_matvecs: int = field(default=99, metadata=rule(ints(1)))
    density: bool = False
    n_probes: int = field(default=8, metadata=rule(ints(1)))
    n_steps: int = field(default=64, metadata=rule(ints(2)))
    grid_size: int = field(default=401, metadata=rule(ints(2)))
    # keep the graphs (empirical_fisher: the per-sample gradients, where they fit) between products:
    # "auto" (models <= 5M parameters) | "on" | "off"
    cache_graph: str = field(default="auto", metadata=rule(one_of(("auto", "on", "off"))))


METRICS: dict[str, pa.DataType] = {
    "hessian.top_eigenvalue": pa.float64(),
    "hessian.min_eigenvalue": pa.float64(),
    "hessian.trace": pa.float64(),
    "hessian.negative_mass": pa.float64(),
    "hessian.negative_weight": pa.float64(),
    "hessian.density_trace": pa.float64(),
    **{f"hessian.{op}_{what}": pa.float64() for op in PSD_OPERATORS for what in ("top_eigenvalue", "trace")},
}
DIAGNOSTICS: dict[str, pa.DataType] = {
    "hessian.top_eigenvalues": pa.list_(pa.float64()),
    "hessian.top_residual": pa.float64(),
    "hessian.min_residual": pa.float64(),
    "hessian.trace_stderr": pa.float64(),
    "hessian.density_trace_stderr": pa.float64(),
    "hessian.n_matvecs": pa.int64(),
    "hessian.seconds": pa.float64(),
    "hessian.converged": pa.bool_(),
    "hessian.psd_min_eigenvalue": pa.float64(),
}


def eval_indices(n_train: int, n: int, seed: int) -> "torch.Tensor":  # noqa: F821 - torch is imported lazily; the annotation is a string
    """The first ``min(n, n_train)`` indices of a permutation of ``range(n_train)`` drawn from ``seed``."""
    from landscape.params import subset_indices

    if n < 1:
        raise ValueError(f"metrics.hessian.eval_samples={n!r}: expected a positive integer")
    return subset_indices(n_train, n, seed)


def check(settings: Any) -> list[str]:
    """The rule that ties two ``metrics.hessian.*`` keys together (each key's own rule is its field's)."""
    problems = []
    if settings.trace_method == "hutch++" and int(settings.trace_matvecs) < 4:
        problems.append(
            f"metrics.hessian.trace_matvecs={settings.trace_matvecs}: Hutch++ needs >= 4 products (or "
            "metrics.hessian.trace_method=hutchinson)"
        )
    if settings.density and str(settings.operator) != "hessian":
        problems.append(
            f"metrics.hessian.density=true: the density columns are the Hessian's; with "
            f"metrics.hessian.operator={settings.operator} expected metrics.hessian.density=false"
        )
    return problems


def likelihood_of(loss_fn: Any) -> str:
    """The predictive distribution (``landscape.curvature.LIKELIHOODS``) whose negative log-likelihood the
    training loss ``loss_fn`` is: ``categorical`` for ``cross_entropy``, ``gaussian`` for ``mse``."""
    from landscape.training import make_loss

    for loss, likelihood in LIKELIHOOD_OF_LOSS.items():
        if loss_fn is make_loss(loss):
            return likelihood
    raise ValueError(
        f"metrics.hessian.operator=fisher: the training loss {loss_fn!r} is not one of "
        f"{', '.join(LIKELIHOOD_OF_LOSS)} (whose predictive distributions are known)"
    )


def compute(ctx: ModelContext, settings: Any) -> Result:
    """Compute the ``hessian.*`` columns for one trained model (see the module docstring)."""
    import torch

    from landscape.curvature import (
        TAXONOMY_SAMPLES,
        curvature_operator,
        deflated_hutchinson,
        eigenvalues,
        extreme_eigenpairs,
        first_probe,
        spectral_density,
        taxonomy_eigenvalues,
        taxonomy_trace,
        trace,
    )

    t0 = time.perf_counter()
    taxonomy = settings.mode == "taxonomy"
    seed = int(settings.seed)
    n = TAXONOMY_SAMPLES if taxonomy else int(settings.eval_samples)
    idx = eval_indices(ctx.data.n_train, n, seed).to(ctx.data.x_train.device)
    x, y = ctx.data.x_train[idx], ctx.data.y_train[idx]
    batch_size: int | str = (
        x.shape[0] if taxonomy else ("auto" if settings.batch_size is None else int(settings.batch_size))
    )
    n_params = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
    cache = {"on": True, "off": False}.get(str(settings.cache_graph), n_params <= CACHE_GRAPH_MAX_PARAMS)
    name = str(settings.operator)
    op = curvature_operator(
        name,
        ctx.model,
        ctx.loss_fn,
        (x, y),
        likelihood=likelihood_of(ctx.loss_fn) if name == "fisher" else None,
        batch_size=batch_size,
        dtype=getattr(torch, str(settings.dtype)),
        max_block=int(settings.max_block),
        cache=cache,
    )
    k = int(settings.n_top)
    out: dict[str, Any] = {"hessian.mode": str(settings.mode), "hessian.eval_samples": int(x.shape[0])}
    if taxonomy:
        top = taxonomy_eigenvalues(op, k=k, seed=seed)
        tr = taxonomy_trace(op, seed=seed)
        out["hessian.tol"] = 1e-3
    else:
        # one Lanczos run for both ends of the spectrum (and the first density probe when the density is on)
        v0 = None
        if settings.density:
            v0 = first_probe(
                op.shape[0], int(settings.n_probes), seed + 3, int(settings.max_block), op.dtype, op.device
            )
        ends = extreme_eigenpairs(
            op,
            k_largest=k,
            k_smallest=1 if settings.smallest_eigenvalue else 0,
            tol=float(settings.tol),
            max_iter=int(settings.max_iter),
            seed=seed,
            v0=v0,
            min_steps=int(settings.n_steps) if settings.density else 0,
        )
        assert ends.largest is not None
        top = ends.largest
        m = int(settings.trace_matvecs)
        if settings.trace_method == "krylov":
            assert ends.basis is not None and ends.projected is not None
            tr = deflated_hutchinson(
                op,
                ends.basis,
                ends.projected,
                n_probes=max(2, m - 2 * (m // 3)),
                seed=seed + 1,
                block=int(settings.max_block),
            )
        else:
            tr = trace(op, method=settings.trace_method, n_matvecs=m, seed=seed + 1, block=int(settings.max_block))
        out["hessian.tol"] = float(settings.tol)
    converged = bool(top.converged)
    out.update(
        {
            "hessian.top_eigenvalue": float(top.values[0]),
            "hessian.top_eigenvalues": [float(v) for v in top.values],
            "hessian.top_residual": float(top.residuals.max()),
            "hessian.trace": float(tr.estimate),
            "hessian.trace_stderr": float(tr.stderr) if math.isfinite(tr.stderr) else None,
            "hessian.trace_method": tr.method,
            "hessian.trace_matvecs": int(tr.n_matvecs),
        }
    )
    if settings.smallest_eigenvalue:
        low = (
            ends.smallest
            if not taxonomy
            else eigenvalues(
                op, k=1, which="smallest", tol=float(settings.tol), max_iter=int(settings.max_iter), seed=seed + 2
            )
        )
        assert low is not None
        out["hessian.min_eigenvalue"] = float(low.values[0])
        out["hessian.min_residual"] = float(low.residuals[0])
        converged &= bool(low.converged)
    if settings.density:
        dens = spectral_density(
            op,
            n_probes=int(settings.n_probes),
            n_steps=int(settings.n_steps),
            grid=int(settings.grid_size),
            seed=seed + 3,
            block=int(settings.max_block),
            first=None if taxonomy else (ends.alpha, ends.beta),
        )
        out["hessian.negative_mass"] = dens.negative_mass
        out["hessian.negative_weight"] = dens.negative_weight
        out["hessian.density_trace"] = dens.trace
        out["hessian.density_trace_stderr"] = dens.trace_stderr if math.isfinite(dens.trace_stderr) else None
    out["hessian.converged"] = converged
    out["hessian.n_matvecs"] = int(op.n_products)
    out["hessian.seconds"] = time.perf_counter() - t0
    if name != "hessian":  # a PSD operator's values in its own columns, never in the Hessian's
        out[f"hessian.{name}_top_eigenvalue"] = out.pop("hessian.top_eigenvalue")
        out[f"hessian.{name}_trace"] = out.pop("hessian.trace")
        if "hessian.min_eigenvalue" in out:
            out["hessian.psd_min_eigenvalue"] = out.pop("hessian.min_eigenvalue")
    log.info(
        "hessian (%s, %s): top %.4g, trace %.4g +- %.2g, %d products in %.1f s",
        name,
        settings.mode,
        float(top.values[0]),
        float(tr.estimate),
        tr.stderr,
        op.n_products,
        out["hessian.seconds"],
    )
    error = None
    if not converged:  # the values stay (with their residuals); the reason is counted and shown, never hidden
        error = (
            f"eigenvalues not converged to tol {out['hessian.tol']:g} (top residual "
            f"{out['hessian.top_residual']:.3g}"
            + (f", min residual {out['hessian.min_residual']:.3g}" if "hessian.min_residual" in out else "")
            + f") after {op.n_products} products"
        )
    return Result(out, error=error)


FAMILY = Family(
    name="hessian",
    table="models",
    config=Config,
    metrics=METRICS,
    diagnostics=DIAGNOSTICS,
    compute=compute,
    check=check,
    # paper ranges: Yang et al. (2021), Figure 1 drew the natural logs, 0-6 and 3-8: here e^0-e^6 and e^3-e^8
    styles={
        "hessian.top_eigenvalue": FigureStyle(
            "Hessian top eigenvalue", "nats / param²", "log10", paper=(1.0, 403.4287934927351), cmap="magma_r"
        ),
        "hessian.min_eigenvalue": FigureStyle(
            "Hessian smallest eigenvalue", "nats / param²", cmap="RdBu_r", centre=0.0
        ),
        "hessian.trace": FigureStyle(
            "Hessian trace", "nats / param²", "log10", paper=(20.085536923187668, 2980.9579870417283), cmap="magma_r"
        ),
        "hessian.negative_mass": FigureStyle("share of Hessian eigenvalues < 0", "fraction", cmap="magma_r"),
        "hessian.negative_weight": FigureStyle("negative share of |Hessian curvature|", "fraction", cmap="magma_r"),
        "hessian.density_trace": FigureStyle(
            "Hessian trace (spectral density)", "nats / param²", "log10", cmap="magma_r"
        ),
        **{
            f"hessian.{op}_{what}": FigureStyle(
                f"{label} {what.replace('_', ' ')}", "nats / param²", "log10", cmap="magma_r"
            )
            for op, label in OPERATOR_LABELS.items()
            for what in ("top_eigenvalue", "trace")
        },
    },
    description="Hessian (or GGN, Fisher, empirical Fisher) eigenvalues (one Lanczos run for both ends), trace "
    "with standard error, spectral density",
    # an eigenvalue whose residual is not finite is not known, nor whether the run converged
    depends={
        "hessian.top_eigenvalue": ("hessian.top_residual",),
        "hessian.top_eigenvalues": ("hessian.top_residual",),
        "hessian.min_eigenvalue": ("hessian.min_residual",),
        "hessian.converged": ("hessian.top_residual", "hessian.min_residual"),
        "hessian.psd_min_eigenvalue": ("hessian.min_residual",),
        **{f"hessian.{op}_top_eigenvalue": ("hessian.top_residual",) for op in PSD_OPERATORS},
    },
)
