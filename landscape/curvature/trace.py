"""Stochastic trace estimators: Hutchinson and Hutch++ (Meyer, Musco, Musco & Woodruff 2021).

* Hutchinson: ``tr(A) ~ mean_i z_i^T A z_i`` over Rademacher probes ``z_i``; standard error = sample std /
  sqrt(m).
* Hutch++ with ``m`` products: ``k = m // 3`` products sketch ``Q = orth(A S)`` (``S`` Rademacher ``[n, k]``),
  ``k`` more give ``tr(Q^T A Q)`` exactly, and the remaining ``m - 2k`` are Hutchinson probes of the deflated
  residual ``(I - QQ^T) A (I - QQ^T)``. Its standard error is the Hutchinson standard error of that
  residual part (the sketched part is computed exactly given ``Q``), an honest error bar for this run.

Probes are multiplied in blocks with ``op.matmat``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from landscape.curvature.operator import SymmetricOperator, as_operator

TraceMethod = Literal["hutchinson", "hutch++"]
TRACE_METHODS = ("hutchinson", "hutch++")


@dataclass
class TraceResult:
    """``estimate`` of ``tr(A)``, its ``stderr`` (one standard error), ``n_matvecs`` products spent, the
    ``method``, and ``samples`` (the per-probe Hutchinson values ``z^T A z`` of the stochastic part)."""

    estimate: float
    stderr: float
    n_matvecs: int
    method: str
    samples: Tensor


def rademacher(n: int, k: int, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[n, k]`` matrix of independent +-1 entries drawn from ``gen``."""
    return (torch.randint(0, 2, (n, k), generator=gen) * 2 - 1).to(device=device, dtype=dtype)


def _quadratic_forms(op: SymmetricOperator, Z: Tensor, block: int) -> Tensor:
    """``[z_i^T A z_i]`` (float64) for the columns of ``Z``, multiplied ``block`` columns at a time."""
    out = []
    for s in range(0, Z.shape[1], block):
        Zb = Z[:, s : s + block]
        out.append((Zb * op.matmat(Zb)).sum(dim=0).double())
    return torch.cat(out).cpu()


def _mean_stderr(samples: Tensor) -> tuple[float, float]:
    mean = float(samples.mean())
    stderr = float(samples.std(unbiased=True) / math.sqrt(samples.numel())) if samples.numel() > 1 else math.inf
    return mean, stderr


def hutchinson(op: SymmetricOperator | Tensor, n_matvecs: int, seed: int = 0, block: int = 16) -> TraceResult:
    """Hutchinson's estimate of ``tr(A)`` from ``n_matvecs`` Rademacher probes (see the module docstring)."""
    op = as_operator(op)
    if n_matvecs < 1:
        raise ValueError(f"n_matvecs={n_matvecs!r}: expected >= 1 (>= 2 for a standard error)")
    gen = torch.Generator().manual_seed(int(seed))
    Z = rademacher(op.shape[0], n_matvecs, gen, op.dtype, op.device)
    samples = _quadratic_forms(op, Z, block)
    mean, stderr = _mean_stderr(samples)
    return TraceResult(mean, stderr, n_matvecs, "hutchinson", samples)


def hutch_plus_plus(op: SymmetricOperator | Tensor, n_matvecs: int, seed: int = 0, block: int = 16) -> TraceResult:
    """Hutch++ estimate of ``tr(A)`` with ``n_matvecs`` (>= 4) products (see the module docstring)."""
    op = as_operator(op)
    if n_matvecs < 4:
        raise ValueError(f"n_matvecs={n_matvecs!r}: Hutch++ needs >= 4 products (sketch, projection, >= 2 probes)")
    n = op.shape[0]
    k = min(n_matvecs // 3, n)
    gen = torch.Generator().manual_seed(int(seed))
    S = rademacher(n, k, gen, op.dtype, op.device)
    AS = torch.cat([op.matmat(S[:, s : s + block]) for s in range(0, k, block)], dim=1)
    Q, _ = torch.linalg.qr(AS)
    AQ = torch.cat([op.matmat(Q[:, s : s + block]) for s in range(0, k, block)], dim=1)
    exact = float((Q * AQ).sum().double())
    m = n_matvecs - 2 * k
    Z = rademacher(n, m, gen, op.dtype, op.device)
    Z = Z - Q @ (Q.T @ Z)
    samples = _quadratic_forms(op, Z, block)
    mean, stderr = _mean_stderr(samples)
    return TraceResult(exact + mean, stderr, 2 * k + m, "hutch++", samples)


def deflated_hutchinson(
    op: SymmetricOperator | Tensor,
    basis: Tensor,
    projected: Tensor,
    n_probes: int,
    seed: int = 0,
    block: int = 16,
) -> TraceResult:
    """``tr(A) = tr(B A B^T) + tr(P A P)`` for an orthonormal ``basis`` ``B`` ``[j, n]`` (rows) whose projected
    matrix ``B A B^T`` (``projected`` ``[j, j]``) is already known, e.g. the Krylov basis of the eigenvalue run
    (``eigen.SpectrumEnds``): the first term exactly, the second (``P = I - B^T B``) by Hutchinson with
    ``n_probes`` projected Rademacher probes (``n_probes`` products). Unbiased when ``B`` does not depend on the
    probes (it comes from another seed); ``stderr`` is that of the Hutchinson part, like Hutch++'s (a Krylov
    basis deflates the large eigenvalues of both ends, which carry most of Hutchinson's variance)."""
    op = as_operator(op)
    if n_probes < 2:
        raise ValueError(f"n_probes={n_probes!r}: expected >= 2 (for a standard error)")
    n = op.shape[0]
    if basis.dim() != 2 or basis.shape[1] != n or tuple(projected.shape) != (basis.shape[0],) * 2:
        raise ValueError(f"basis {tuple(basis.shape)} / projected {tuple(projected.shape)}: expected [j, {n}] / [j, j]")
    gen = torch.Generator().manual_seed(int(seed))
    Z = rademacher(n, n_probes, gen, op.dtype, op.device)
    B = basis.to(op.device, op.dtype)
    Z = Z - B.T @ (B @ Z)
    samples = _quadratic_forms(op, Z, block)
    mean, stderr = _mean_stderr(samples)
    exact = float(projected.double().diagonal().sum())
    return TraceResult(exact + mean, stderr, n_probes, "krylov", samples)


def trace(
    op: SymmetricOperator | Tensor,
    method: TraceMethod = "hutch++",
    n_matvecs: int = 99,
    seed: int = 0,
    block: int = 16,
) -> TraceResult:
    """Estimate ``tr(A)`` with ``method`` (``hutchinson`` or ``hutch++``) and ``n_matvecs`` products."""
    if method == "hutchinson":
        return hutchinson(op, n_matvecs, seed, block)
    if method == "hutch++":
        return hutch_plus_plus(op, n_matvecs, seed, block)
    raise ValueError(f"method={method!r}: expected one of {', '.join(TRACE_METHODS)}")
