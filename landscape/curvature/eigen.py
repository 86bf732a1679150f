"""Extreme eigenpairs of a symmetric operator: thick-restart Lanczos with full reorthogonalisation.

The Krylov basis ``V`` ``[n, m]`` (preallocated) is kept orthonormal by two passes of classical Gram-Schmidt
against every previous vector; the first pass's coefficients are the new column of the Rayleigh-Ritz matrix
``T = V^T A V``, so ``T`` grows by one column per step and is never recomputed. The products ``W = A V`` are
stored beside ``V``, so the true residuals ``||A y - theta y||`` of Ritz pairs ``(theta, y = V s)`` come without
further products. One run serves both ends of the spectrum (``extreme_eigenpairs``) and, from its first steps,
one probe of a spectral density (``SpectrumEnds.alpha``/``beta``). When the basis is full (its size is set by
memory: ``BASIS_MEMORY``) it is restarted from the best Ritz vectors of each wanted end plus the next Lanczos
direction (thick restart: the new basis still spans a Krylov space of the kept vectors).

The stopping rule (``certify``, ``CERTIFY``) bounds each eigenvalue's error by its residual (``"residual"``, the
default) or by the Kato-Temple bound ``r^2 / gap`` (``"gap"``: fewer products, a heuristic where the top of the
spectrum is an unresolved cluster).

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
Certify = Literal["residual", "gap"]
CERTIFY = ("residual", "gap")
"""Stopping rules of the Lanczos runs (``certify``); both use the true residuals ``r = ||A y - theta y||`` of the
Ritz pairs, from the stored products.

* ``"residual"`` (default): every wanted pair has ``r <= tol * scale`` (``scale``: the largest |Ritz value| seen,
  an estimate of ``||A||_2``). An eigenvalue of ``A`` lies within ``r`` of ``theta`` (rigorous); that it is *the*
  wanted one (``lambda_i`` for the ``i``-th Ritz value) is the hypothesis every Krylov method makes: the start
  vector is not (nearly) orthogonal to its eigenvector, nor the eigenvalue still unresolved from a close one (it
  misses there too: values 4-6 of a small BatchNorm CNN's Hessian, within 4 %, top-5 off by 2e-2 on one seed of
  four, ``tests/test_lanczos_certify.py``). A linear bound: at ``tol`` 1e-3 the values end with errors of
  1e-6..1e-8 (the error is typically ``~ r^2 / gap``).
* ``"gap"``: every wanted pair has ``min(r_i, r_i^2 / delta_i) <= tol * |theta_i|`` (each value relative to
  itself, so at ``k > 1`` it asks more of the smaller values than ``"residual"``). For the ``i``-th largest Ritz
  value, ``delta_i = theta_i - (theta_{i+1} + r_{i+1})``: the distance to the next Ritz value's residual interval
  (mirrored at the smallest end; the neighbour is the ``k+1``-th Ritz value for the ``k``-th). What is rigorous:
  Cauchy interlacing ``theta_i <= lambda_i``, and Kato-Temple: if no eigenvalue lies in ``(a, lambda_i)`` then
  ``lambda_i <= theta_i + r_i^2 / (theta_i - a)``. With ``a = theta_{i+1} + r_{i+1}``,
  ``0 <= lambda_i - theta_i <= r_i^2 / delta_i`` holds exactly when the *hypothesis* ``lambda_{i+1} <=
  theta_{i+1} + r_{i+1}`` does (the next eigenvalue has been found by the next Ritz value: none hides in the
  gap); the residual correction ``- r_{i+1}`` is needed (``theta_{i+1} <= lambda_{i+1}``: the plain gap to
  ``theta_{i+1}`` overstates the true one). Where ``delta_i <= r_i`` the bound is ``r_i``, the residual rule's.
  The hypothesis cannot be checked from the Krylov space: after ``j`` steps the ``2j`` moments it has seen are
  matched as well by a spectrum with one more, well-weighted, eigenvalue inside the gap, so no rule that stops
  while ``r_i > tol * |theta_i|`` is a certificate. It is a heuristic where the top eigenvalues form a cluster the
  run has not resolved (relative spacing ~1e-3..1e-1 at ``tol`` 1e-3): there it stops early and misses
  (``tests/test_lanczos_certify.py``: random clusters, and values 5-6 of a small MLP's Hessian 3 % apart, top-5
  off by 1.1e-3 on one seed of four). On the Hessians of ``benchmarks/anchors.py`` (top values 8-34 % apart) it
  met 1e-3 on every seed with fewer products (benchmarks/README.md, "A gap-certified stopping rule"). A value
  near zero (the bottom of a Hessian spectrum) needs a tiny absolute error under ``"gap"``: use ``"residual"``.
"""


@dataclass
class EigenResult:
    """``values`` ``[k]`` (float64; descending for ``largest``, ascending for ``smallest``), ``vectors``
    ``[n, k]`` (unit columns, operator dtype), ``residuals`` ``[k]`` = ``||A v - lambda v||`` (float64),
    ``n_matvecs`` products spent, ``converged`` whether every value met the tolerance of its stopping rule
    (``certify``); ``bounds`` ``[k]`` (float64, Lanczos only): the error bound each value was certified with,
    ``|lambda - value| <= bound`` under that rule's hypothesis (``CERTIFY``): the residual for ``"residual"``,
    ``min(residual, residual^2 / gap)`` for ``"gap"``."""

    values: Tensor
    vectors: Tensor
    residuals: Tensor
    n_matvecs: int
    converged: bool
    method: str = "lanczos"
    bounds: Tensor | None = None


def _random_unit(n: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator) -> Tensor:
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return v / torch.linalg.vector_norm(v)


def gradient_start(gradient: Tensor, seed: int = 0, weight: float = 0.9) -> Tensor:
    """A Lanczos start vector ``[P]`` (unit norm) leaning on the loss gradient: ``weight * g / |g| + (1 - weight)
    * z / |z|``, normalised, ``z`` Gaussian from ``seed`` (float64 draws, cast to the gradient's dtype and device).

    The gradient of a trained network lies mostly in the span of the Hessian's top eigenvectors (Gur-Ari et al.
    2018, "Gradient descent happens in a tiny subspace"), so a Krylov space started from it holds the top of the
    spectrum after as few products on every seed as the luckiest noise start (``benchmarks/README.md``: CNN and
    MLP on digits, top-1 to 1e-3 with ``certify="gap"`` in 6 products on each of 5 seeds, the gradient counted
    as one, against 5-8 from Gaussian starts; top-5 in 13 against 12-14). The random part keeps every
    eigenvector within reach (a start orthogonal to one never finds it) and the smallest eigenvalues, which the
    gradient barely touches, reachable. Pass it as ``v0`` to :func:`eigenvalues` / :func:`extreme_eigenpairs`; it
    costs one gradient (a forward and a backward pass, about half a Hessian-vector product). A zero gradient gives
    the random part alone."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight={weight!r}: expected a number in [0, 1]")
    g = gradient.reshape(-1)
    gen = torch.Generator().manual_seed(int(seed))
    z = _random_unit(g.numel(), g.dtype, g.device, gen)
    norm = torch.linalg.vector_norm(g)
    if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
        return z
    v = weight * (g / norm) + (1.0 - weight) * z
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


BASIS_MEMORY = 2**30
"""Default bytes for the Krylov basis and its products (``V`` and ``A V``) of one Lanczos run: within this,
the basis grows without restarts up to ``max_iter`` vectors (restarts slow the convergence of the bottom of a
Hessian spectrum); a model too large for it gets the minimal basis ``max(2k + 20, 30)`` and thick restarts."""


@dataclass
class SpectrumEnds:
    """The result of one Lanczos run serving both ends of the spectrum.

    ``largest`` / ``smallest``: ``EigenResult`` of the ``k`` algebraically largest / smallest eigenpairs (``None``
    when not asked); both share ``n_matvecs``, the products of the one run. ``alpha`` ``[s]`` / ``beta`` ``[s]``
    (float64): the Lanczos tridiagonal of the first ``s`` steps from the start vector, before any restart
    (``beta[i]`` couples steps ``i`` and ``i + 1``; ``s`` is at least ``min_steps`` when the basis allowed it),
    i.e. the Gauss quadrature of the spectral measure seen from the start vector. ``basis`` ``[j, n]``: the
    orthonormal Krylov basis at the end (rows) and ``projected`` ``[j, j]`` (float64) = ``basis A basis^T``
    exactly (from the stored products), e.g. to deflate a trace estimate (``trace.deflated_hutchinson``).
    """

    largest: EigenResult | None
    smallest: EigenResult | None
    n_matvecs: int
    alpha: Tensor
    beta: Tensor
    basis: Tensor | None = None
    projected: Tensor | None = None


def default_basis_size(n: int, itemsize: int, k: int, max_iter: int, basis_memory: int = BASIS_MEMORY) -> int:
    """Krylov dimension before a restart: as many vectors as ``max_iter`` needs (``+1``) when ``V`` and ``A V``
    fit in ``basis_memory`` bytes, else the minimal ``max(2k + 20, 30)``; never more than ``n``."""
    minimal = max(2 * k + 20, 30)
    by_memory = int(basis_memory) // max(1, 2 * n * itemsize)
    return min(n, max(minimal, min(int(max_iter) + 1, by_memory)))


def _ritz(T: Tensor, j: int, tridiagonal: bool, k_small: int, k_large: int) -> tuple[Tensor, Tensor]:
    """Ritz values ``[r]`` (ascending) and vectors ``[j, r]`` of ``T[:j, :j]``: all of them for a dense ``T``,
    only the ``k_small`` smallest and ``k_large`` largest (``scipy``'s tridiagonal solver) when ``T`` is
    tridiagonal and large (the work per step then stays O(j))."""
    Tj = T[:j, :j]
    wanted = k_small + k_large
    if not tridiagonal or j <= 64 or wanted >= j:
        theta, S = torch.linalg.eigh(Tj)
        return theta, S
    import numpy as np
    from scipy.linalg import eigh_tridiagonal

    d = Tj.diagonal().numpy()
    e = Tj.diagonal(1).numpy()
    vals, vecs = [], []
    if k_small:
        w, v = eigh_tridiagonal(d, e, select="i", select_range=(0, k_small - 1))
        vals.append(w)
        vecs.append(v)
    if k_large:
        w, v = eigh_tridiagonal(d, e, select="i", select_range=(j - k_large, j - 1))
        vals.append(w)
        vecs.append(v)
    return torch.from_numpy(np.concatenate(vals)), torch.from_numpy(np.concatenate(vecs, axis=1))


def extreme_eigenpairs(
    op: SymmetricOperator | Tensor,
    k_largest: int = 1,
    k_smallest: int = 1,
    tol: float = 1e-6,
    max_iter: int = 500,
    seed: int = 0,
    basis_size: int | None = None,
    v0: Tensor | None = None,
    min_steps: int = 0,
    basis_memory: int = BASIS_MEMORY,
    certify: Certify = "residual",
) -> SpectrumEnds:
    """The ``k_largest`` algebraically largest and the ``k_smallest`` smallest eigenpairs of ``op`` from one
    Lanczos run (full reorthogonalisation, thick restart when the basis is full).

    Converged when every wanted Ritz pair ``(theta, y)`` has a true residual ``||A y - theta y|| <= tol * scale``
    (``scale``: the largest |Ritz value| seen, an estimate of ``||A||_2``), so ``tol`` is relative and each
    eigenvalue is within ``tol * scale`` of an eigenvalue of ``op``. ``max_iter`` caps the products of the run.
    Per step the work beside the product is O(n j) (one orthogonalisation against the ``j`` basis vectors,
    which also gives the new column of ``T = V^T A V``) plus the extreme Ritz pairs of ``T``; residuals are
    estimated from the last row of the Ritz vectors and confirmed with the stored products ``A V`` (no extra
    products). ``basis_size``: Krylov dimension before a restart (default ``default_basis_size``). The start
    vector is Gaussian from ``seed`` unless ``v0`` is given; the run takes at least ``min_steps`` steps (capped by
    ``max_iter`` and the basis) so that its first steps can serve as one probe of a spectral density.
    ``certify="gap"`` stops instead when every wanted value is within ``tol * |value|`` of its eigenvalue by the
    Kato-Temple bound ``r^2 / gap`` (see ``CERTIFY``: rigorous only if no eigenvalue hides in the gap), which
    needs fewer products; ``EigenResult.bounds`` holds each value's certified bound.
    """
    if certify not in CERTIFY:
        raise ValueError(f"certify={certify!r}: expected one of {', '.join(CERTIFY)}")
    gap = certify == "gap"
    op = as_operator(op)
    n = op.shape[0]
    kl, ks = int(k_largest), int(k_smallest)
    if kl < 0 or ks < 0 or kl + ks < 1 or kl > n or ks > n:
        raise ValueError(
            f"k_largest={k_largest!r}, k_smallest={k_smallest!r}: expected 0 <= k <= n = {n}, at least one positive"
        )
    if tol <= 0 or max_iter < 1:
        raise ValueError(f"tol={tol!r}, max_iter={max_iter!r}: expected tol > 0 and max_iter >= 1")
    dtype, device = op.dtype, op.device
    itemsize = torch.empty((), dtype=dtype).element_size()
    m = min(n, basis_size) if basis_size else default_basis_size(n, itemsize, kl + ks, max_iter, basis_memory)
    if m <= kl + ks and m < n:
        raise ValueError(f"basis_size={basis_size!r}: must exceed k_largest + k_smallest = {kl + ks}")
    # Ritz vectors kept on a thick restart, per end
    keep_l = min(kl + max(2, kl), max(0, (m - 1) // 2)) if kl else 0
    keep_s = min(ks + max(2, ks), max(0, m - 1 - keep_l)) if ks else 0
    gen = torch.Generator().manual_seed(int(seed))

    V = torch.empty(m, n, dtype=dtype, device=device)  # basis vectors as rows (contiguous)
    W = torch.empty(m, n, dtype=dtype, device=device)  # their products A v
    T = torch.zeros(m, m, dtype=torch.float64)
    v = _random_unit(n, dtype, device, gen) if v0 is None else (v0 / torch.linalg.vector_norm(v0)).to(device, dtype)
    V[0] = v
    j = 0  # basis vectors whose product is known
    # known[i] = v_i^T A v_j for i < j, known before the product (Lanczos: only v_{j-1}; after a thick restart
    # the new vector couples to every kept Ritz vector), subtracted first so one Gram-Schmidt pass is enough
    known = torch.zeros(0, dtype=torch.float64)
    n_matvecs = 0
    scale = 0.0
    restarted = False
    alphas: list[float] = []
    betas: list[float] = []
    converged = False
    theta = S = None
    while True:
        vj = V[j]
        w = op.matvec(vj)
        n_matvecs += 1
        W[j] = w
        alpha = float(vj @ w)
        w = w - alpha * vj
        nz = torch.nonzero(known).flatten()
        if nz.numel() == 1:
            w = w - float(known[nz[0]]) * V[int(nz[0])]
        elif nz.numel() > 1:
            w = w - known[nz].to(device=device, dtype=dtype) @ V[nz]
        col = torch.zeros(j + 1, dtype=torch.float64)
        col[:j] = known
        col[j] = alpha
        before = float(torch.linalg.vector_norm(w))
        for _ in range(2):  # classical Gram-Schmidt, a second pass only when the first removed a lot (DGKS)
            c = V[: j + 1] @ w
            w = w - c @ V[: j + 1]
            col += c.double().cpu()
            after = float(torch.linalg.vector_norm(w))
            if after > 0.717 * before:
                break
            before = after
        T[: j + 1, j] = col  # column j of V^T A V
        T[j, : j + 1] = col
        j += 1
        beta = after
        if not restarted:
            alphas.append(float(col[-1]))
            betas.append(beta)
        # the gap rule also needs the next Ritz pair beyond each wanted end
        theta, S = _ritz(
            T,
            j,
            tridiagonal=not restarted,
            k_small=min(ks + int(gap and ks > 0), j),
            k_large=min(kl + int(gap and kl > 0), j),
        )
        scale = max(scale, float(theta.abs().max()))
        bound = tol * max(scale, 1e-300)
        enough = j >= kl and j >= ks
        converged = False
        if enough and not gap:
            wanted = _wanted(theta, kl, ks)
            est = beta * S[j - 1, wanted].abs()
            if bool((est <= bound).all()):
                res = _true_residuals(V, W, j, theta, S, wanted)
                if bool((res <= bound).all()):
                    converged = True
        elif enough:
            # residual estimates (Lanczos: beta * |last entry of the Ritz vector|) first, confirmed by true ones
            near = _wanted(theta, kl + 1 if kl else 0, ks + 1 if ks else 0)  # wanted + next, ascending
            est = beta * S[j - 1, near].abs()
            if _gap_certified(theta[near], est, kl, ks, tol)[0]:
                res_near = _true_residuals(V, W, j, theta, S, near)
                converged = _gap_certified(theta[near], res_near, kl, ks, tol)[0]
        if j == n:  # the basis spans everything: Ritz pairs are exact up to rounding
            converged = enough
        # once converged, go on only while the first steps still serve a density probe (no restart)
        if converged and (restarted or j >= m or len(alphas) >= min_steps) or j == n or n_matvecs >= max_iter:
            break
        known = torch.zeros(j, dtype=torch.float64)
        known[j - 1] = beta
        if beta <= 1e-10 * max(scale, 1e-300):  # invariant subspace found: continue from a fresh direction
            w = _orthogonalise(_random_unit(n, dtype, device, gen), V[:j].T)
            beta = float(torch.linalg.vector_norm(w))
            known.zero_()
            if not restarted:
                betas[-1] = 0.0
                restarted = True  # T is block diagonal, no longer the tridiagonal of the start vector
        w = w / beta
        if j >= m:  # thick restart from the extreme Ritz vectors + the next Lanczos direction
            restarted = True
            full_theta, full_S = torch.linalg.eigh(T[:j, :j]) if S.shape[1] < j else (theta, S)
            keep = torch.cat([torch.arange(keep_s), torch.arange(j - keep_l, j)]).unique()
            Sk = full_S[:, keep]
            p = keep.numel()
            V[:p] = Sk.T.to(device=device, dtype=dtype) @ V[:j]
            W[:p] = Sk.T.to(device=device, dtype=dtype) @ W[:j]
            T.zero_()
            T[:p, :p] = torch.diag(full_theta[keep])
            known = known[-1] * Sk[-1]  # v_next^T A y_i = beta * (last row of the kept Ritz vectors)
            j = p
            w = _orthogonalise(w, V[:j].T)
            w = w / torch.linalg.vector_norm(w)
        V[j] = w
    assert theta is not None and S is not None
    if not converged and S.shape[1] < j:
        theta, S = torch.linalg.eigh(T[:j, :j])
    results: dict[str, EigenResult | None] = {"largest": None, "smallest": None}
    near = _wanted(theta, kl + 1 if kl else 0, ks + 1 if ks else 0)
    res_near = _true_residuals(V, W, j, theta, S, near) if gap else None
    for which, kk in (("largest", kl), ("smallest", ks)):
        if not kk:
            continue
        idx = _select(theta, min(kk, theta.numel()), which)
        res = _true_residuals(V, W, j, theta, S, idx)
        if gap:
            assert res_near is not None
            _, bounds_l, bounds_s = _gap_certified(theta[near], res_near, kl, ks, tol)
            bounds = (bounds_l if which == "largest" else bounds_s)[: idx.numel()]
            target = tol * theta[idx].abs()
        else:
            bounds = res.clone()
            target = torch.full_like(res, tol * max(scale, 1e-300))
        if j == n:  # the basis spans everything: Ritz pairs are exact up to rounding
            bounds = torch.minimum(bounds, res)
        ok = converged and bool((bounds <= target).all()) or (j == n and idx.numel() == kk)
        vectors = V[:j].T @ S[:, idx].to(device=device, dtype=dtype)
        if not ok:
            log.warning(
                "eigenvalues(which=%s, k=%d): not converged after %d products (max residual %.3g, tol %.3g)",
                which,
                kk,
                n_matvecs,
                float(res.max()),
                tol * scale,
            )
        results[which] = EigenResult(theta[idx].clone(), vectors, res, n_matvecs, ok, bounds=bounds)
    return SpectrumEnds(
        results["largest"],
        results["smallest"],
        n_matvecs,
        torch.tensor(alphas, dtype=torch.float64),
        torch.tensor(betas, dtype=torch.float64),
        basis=V[:j],
        projected=T[:j, :j].clone(),
    )


def _wanted(theta: Tensor, kl: int, ks: int) -> Tensor:
    """Indices of the ``ks`` smallest and ``kl`` largest entries of ``theta`` (ascending)."""
    r = theta.numel()
    return torch.cat([torch.arange(min(ks, r)), torch.arange(r - min(kl, r), r)]).unique()


def _gap_bounds(theta: Tensor, res: Tensor, k: int) -> Tensor:
    """Error bounds ``[min(k, r)]`` of the ``k`` largest of the Ritz values ``theta`` (ascending, with residuals
    ``res``), largest first: ``min(r_i, r_i^2 / delta_i)`` with ``delta_i = theta_i - theta_{i+1} - r_{i+1}`` (the
    ``i+1``-th largest); ``r_i`` alone where that gap is not positive or there is no next Ritz value."""
    r = theta.numel()
    th, rs = theta.flip(0), res.flip(0)  # descending
    out = rs[: min(k, r)].clone()
    for i in range(min(k, r - 1)):
        delta = float(th[i] - th[i + 1] - rs[i + 1])
        if delta > 0:
            out[i] = min(float(rs[i]), float(rs[i]) ** 2 / delta)
    return out


def _gap_certified(theta: Tensor, res: Tensor, kl: int, ks: int, tol: float) -> tuple[bool, Tensor, Tensor]:
    """The ``"gap"`` rule (``CERTIFY``) on all Ritz values ``theta`` (ascending) with residuals ``res``: whether
    every wanted value has its bound ``<= tol * |value|``, and the bounds of the largest (largest first) and of
    the smallest (smallest first)."""
    bl = _gap_bounds(theta, res, kl) if kl else torch.zeros(0, dtype=torch.float64)
    bs = _gap_bounds(-theta.flip(0), res.flip(0), ks) if ks else torch.zeros(0, dtype=torch.float64)
    ok = bool((bl <= tol * theta.flip(0)[: bl.numel()].abs()).all()) and bool(
        (bs <= tol * theta[: bs.numel()].abs()).all()
    )
    return ok, bl, bs


def _true_residuals(V: Tensor, W: Tensor, j: int, theta: Tensor, S: Tensor, idx: Tensor) -> Tensor:
    """``||A y - theta y||`` (float64) for the Ritz pairs ``idx``, from the stored products ``W = A V`` (rows)."""
    Sk = S[:, idx].to(device=V.device, dtype=V.dtype).T  # [r, j]
    R = Sk @ W[:j] - (Sk @ V[:j]) * theta[idx].to(device=V.device, dtype=V.dtype)[:, None]
    return torch.linalg.vector_norm(R, dim=1).double().cpu()


def eigenvalues(
    op: SymmetricOperator | Tensor,
    k: int = 1,
    which: Which = "largest",
    tol: float = 1e-6,
    max_iter: int = 500,
    seed: int = 0,
    basis_size: int | None = None,
    v0: Tensor | None = None,
    certify: Certify = "residual",
) -> EigenResult:
    """The ``k`` algebraically largest (or smallest) eigenpairs of the symmetric operator ``op``.

    Converged when every wanted Ritz pair has ``||A y - theta y|| <= tol * scale``, with ``scale`` the largest
    |Ritz value| seen (an estimate of ``||A||_2``), so ``tol`` is relative; the eigenvalue error is then at most
    ``tol * scale`` (and typically ``~ (tol * scale)^2 / gap``). ``max_iter`` caps the number of products.
    ``basis_size`` (default ``default_basis_size``) is the Krylov dimension before a restart.
    The start vector is Gaussian from ``seed`` unless ``v0`` is given. Both ends at once: ``extreme_eigenpairs``.
    ``certify="gap"``: stop when each value is within ``tol * |value|`` by the Kato-Temple bound ``r^2 / gap``
    (fewer products; rigorous only if no eigenvalue hides in the gap to the next Ritz value: ``CERTIFY``).
    """
    if which not in WHICH:
        raise ValueError(f"which={which!r}: expected one of {', '.join(WHICH)}")
    n = as_operator(op).shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k={k!r}: expected 1 <= k <= n = {n}")
    ends = extreme_eigenpairs(
        op,
        k_largest=k if which == "largest" else 0,
        k_smallest=k if which == "smallest" else 0,
        tol=tol,
        max_iter=max_iter,
        seed=seed,
        basis_size=basis_size,
        v0=v0,
        certify=certify,
    )
    out = ends.largest if which == "largest" else ends.smallest
    assert out is not None
    return out


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
