"""Extreme eigenpairs of a symmetric operator: thick-restart Lanczos with full reorthogonalisation.

The Krylov basis ``V`` ``[n, m]`` is kept orthonormal by two passes of classical Gram-Schmidt against every
previous vector, and the products ``W = A V`` are stored beside it, so the Rayleigh-Ritz matrix ``V^T A V``
and the true residuals ``||A y - theta y||`` of the Ritz pairs ``(theta, y = V s)`` come without further
products. When the basis is full it is restarted from the ``k + extra`` best Ritz vectors plus the next
Lanczos direction (thick restart: the new basis still spans a Krylov space of the kept vectors).

``which="largest"`` targets the algebraically largest eigenvalues, ``"smallest"`` the algebraically
smallest (the most negative at a saddle), both without any shift chosen by the user.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from landscape.curvature.operator import SymmetricOperator, as_operator

log = logging.getLogger(__name__)

Which = Literal["largest", "smallest"]
WHICH = ("largest", "smallest")


@dataclass
class EigenResult:
    """``values`` ``[k]`` (float64; descending for ``largest``, ascending for ``smallest``), ``vectors``
    ``[n, k]`` (unit columns, operator dtype), ``residuals`` ``[k]`` = ``||A v - lambda v||`` (float64),
    ``n_matvecs`` products spent, ``converged`` whether every residual met the tolerance."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    n_matvecs: int
    converged: bool
    method: str = "lanczos"


def _random_unit(n: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> Tensor:
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / torch.linalg.vector_norm(v)


def _orthogonalise(w: Tensor, V: Tensor) -> Tensor:
    """``w`` minus its projection on the orthonormal columns of ``V`` (two Gram-Schmidt passes)."""
    if V.shape[1] == 0:
        return w
    for _ in range(2):
        w = w - V @ (V.T @ w)
    return w


def _select(theta: Tensor, k: int, which: Which) -> Tensor:
    order = torch.argsort(theta, descending=(which == "largest"))
    return order[:k]


def eigenvalues(
    op: SymmetricOperator | Tensor,
    k: int = 1,
    which: Which = "largest",
    tol: float = 1e-6,
    max_iter: int = 500,
    seed: int = 0,
    basis_size: int | None = None,
    v0: Tensor | None = None,
) -> EigenResult:
    """The ``k`` algebraically largest (or smallest) eigenpairs of the symmetric operator ``op``.

    Converged when every wanted Ritz pair has ``||A y - theta y|| <= tol * scale``, with ``scale`` the largest
    |Ritz value| seen (an estimate of ``||A||_2``), so ``tol`` is relative; the eigenvalue error is then at most
    ``tol * scale`` (and typically ``~ (tol * scale)^2 / gap``). ``max_iter`` caps the number of products.
    ``basis_size`` (default ``max(2k + 20, 30)``, at most ``n``) is the Krylov dimension before a restart.
    The start vector is Gaussian from ``seed`` unless ``v0`` is given.
    """
    op = as_operator(op)
    if which not in WHICH:
        raise ValueError(f"which={which!r}: expected one of {', '.join(WHICH)}")
    n = op.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k!r}: expected 1 <= k <= n = {n}")
    if tol <= 0 or max_iter < 1:
        raise ValueError(f"tol={tol!r}, max_iter={max_iter!r}: expected tol > 0 and max_iter >= 1")
    m = min(n, basis_size or max(2 * k + 20, 30))
    if m <= k and m < n:
        raise ValueError(f"basis_size={basis_size!r}: must exceed k={k}")
    keep = min(m - 1, k + max(2, k)) if m < n else m  # Ritz vectors kept on a restart
    gen = torch.Generator().manual_seed(int(seed))
    dtype, device = op.dtype, op.device

    v = _random_unit(n, dtype, device, gen) if v0 is None else (v0 / torch.linalg.vector_norm(v0)).to(device, dtype)
    V = v[:, None]
    W = torch.empty(n, 0, dtype=dtype, device=device)
    n_matvecs = 0
    scale = 0.0
    theta = S = res = None
    converged = False
    while True:
        if W.shape[1] < V.shape[1]:
            W = torch.cat([W, op.matvec(V[:, -1])[:, None]], dim=1)
            n_matvecs += 1
        T = (V.T @ W).double()
        T = 0.5 * (T + T.T)
        theta, S = torch.linalg.eigh(T)
        scale = max(scale, float(theta.abs().max()))
        idx = _select(theta, min(k, theta.numel()), which)
        Sk = S[:, idx].to(dtype)
        R = W @ Sk - (V @ Sk) * theta[idx].to(dtype)
        res = torch.linalg.vector_norm(R, dim=0).double()
        if idx.numel() == k and bool((res <= tol * max(scale, 1e-300)).all()):
            converged = True
            break
        if V.shape[1] == n:  # the basis spans everything: Ritz pairs are exact up to rounding
            converged = idx.numel() == k
            break
        if n_matvecs >= max_iter:
            break
        # next Lanczos direction: the new part of A v_last
        w = _orthogonalise(W[:, -1], V)
        norm = float(torch.linalg.vector_norm(w))
        if norm <= 1e-10 * max(scale, 1e-300):  # invariant subspace found: continue from a fresh direction
            w = _orthogonalise(_random_unit(n, dtype, device, gen), V)
            norm = float(torch.linalg.vector_norm(w))
        w = w / norm
        if V.shape[1] >= m:  # thick restart from the best Ritz vectors + the next direction
            kidx = _select(theta, keep, which)
            Sk = S[:, kidx].to(dtype)
            V, W = V @ Sk, W @ Sk
            w = _orthogonalise(w, V)
            w = w / torch.linalg.vector_norm(w)
        V = torch.cat([V, w[:, None]], dim=1)
    assert theta is not None and S is not None and res is not None
    idx = _select(theta, k, which)
    vectors = V @ S[:, idx].to(dtype)
    if not converged:
        log.warning("eigenvalues(which=%s, k=%d): not converged after %d products (max residual %.3g, tol %.3g)",
                    which, k, n_matvecs, float(res.max()), tol * scale)
    return EigenResult(theta[idx].clone(), vectors, res.clone(), n_matvecs, converged)


def power_iteration(
    op: SymmetricOperator | Tensor,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> EigenResult:
    """Top-``k`` eigenpairs by power iteration with deflation, the estimator of PyHessian and of the
    taxonomy paper (Yang et al. 2021): for each eigenvector, iterate ``v <- A v / ||A v||`` (orthogonalised
    against the eigenvectors already found) until the Rayleigh quotient changes by less than ``tol``
    relative, or ``max_iter`` products. Finds the eigenvalues of largest *magnitude*.
    ``residuals`` are the true ``||A v - lambda v||`` of the final iterate (one extra product not counted in
    the stopping rule but counted in ``n_matvecs``); ``converged`` = every eigenvalue met the tolerance.
    """
    op = as_operator(op)
    n = op.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    found: list[Tensor] = []
    values, residuals = [], []
    n_matvecs, all_converged = 0, True
    for _ in range(k):
        V = torch.stack(found, dim=1) if found else torch.empty(n, 0, dtype=op.dtype, device=op.device)
        v = _orthogonalise(_random_unit(n, op.dtype, op.device, gen), V)
        v = v / torch.linalg.vector_norm(v)
        lam, ok = math.nan, False
        for _ in range(max_iter):
            hv = _orthogonalise(op.matvec(v), V)
            n_matvecs += 1
            new = float(v @ hv)
            if not math.isnan(lam) and abs(new - lam) / (abs(lam) + 1e-6) < tol:
                lam, ok = new, True
                v = hv / torch.linalg.vector_norm(hv)
                break
            lam = new
            v = hv / torch.linalg.vector_norm(hv)
        hv = op.matvec(v)
        n_matvecs += 1
        lam = float(v @ hv)
        residuals.append(float(torch.linalg.vector_norm(hv - lam * v)))
        values.append(lam)
        found.append(v)
        all_converged &= ok
    return EigenResult(
        torch.tensor(values, dtype=torch.float64),
        torch.stack(found, dim=1),
        torch.tensor(residuals, dtype=torch.float64),
        n_matvecs,
        all_converged,
        method="power_iteration",
    )
