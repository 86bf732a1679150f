"""Spectral density by stochastic Lanczos quadrature (SLQ) with Gaussian broadening.

For a unit probe ``q`` (normalised Rademacher), ``m`` Lanczos steps (full reorthogonalisation) give a
tridiagonal ``T = U diag(theta) U^T``; the Gauss quadrature nodes ``theta_j`` with weights
``tau_j = U[0, j]^2`` satisfy ``q^T f(A) q ~ sum_j tau_j f(theta_j)``, exactly for polynomials of degree
``<= 2m - 1``. Averaging over probes estimates the spectral measure ``(1/n) sum_i delta(lambda_i)``:

* density on a grid: ``phi(t) = mean_probes sum_j tau_j N(t; theta_j, sigma^2)`` (integrates to ~1);
* moments ``(1/n) tr(A^p)`` for ``p = 1..4`` with standard errors across probes;
* ``trace = n * (first moment)`` (a cross-check of the trace estimators) with its standard error;
* ``negative_mass``: the estimated fraction of eigenvalues below ``-cutoff`` (``cutoff`` =
  ``negative_cutoff * max |theta|``, so rounding noise around the zero eigenvalues does not count), and
  ``negative_weight`` = ``sum |lambda_-| / sum |lambda|`` (the share of absolute curvature that is negative).

Probes run in blocks of ``block`` columns through ``op.matmat``; memory is ``block * n_steps`` vectors (preallocated).
The first probe can come from the eigenvalue run (``first_probe``, ``lanczos_quadrature(first=...)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from landscape.curvature.operator import SymmetricOperator, as_operator
from landscape.curvature.trace import rademacher


@dataclass
class DensityResult:
    """``grid`` ``[g]`` and ``density`` ``[g]`` (float64, per unit eigenvalue); ``nodes``/``weights``
    ``[n_probes, n_steps]`` (quadrature per probe; weights of a truncated probe are zero-padded);
    ``moments``/``moments_stderr`` ``[4]`` for ``p = 1..4``; ``trace``/``trace_stderr``; ``negative_mass``,
    ``negative_weight``; ``sigma`` the broadening width; ``n_matvecs`` products spent."""

    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor
    moments: Tensor
    moments_stderr: Tensor
    trace: float
    trace_stderr: float
    negative_mass: float
    negative_weight: float
    sigma: float
    n_matvecs: int


def first_probe(n: int, n_probes: int, seed: int, block: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The first probe ``[n]`` (unit norm) that ``lanczos_quadrature`` with these arguments draws: a Lanczos run
    started from it (``eigen.extreme_eigenpairs(v0=...)``) can hand its tridiagonal back as that probe."""
    gen = torch.Generator().manual_seed(int(seed))
    return rademacher(n, min(block, n_probes), gen, dtype, device)[:, 0] / math.sqrt(n)


def _quadrature(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the tridiagonal with diagonal ``alpha`` ``[L]`` and off-diagonal ``beta`` ``[L-1]``."""
    T = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    theta, U = torch.linalg.eigh(T)
    return theta, U[0] ** 2


def lanczos_quadrature(
    op: SymmetricOperator | Tensor,
    n_probes: int,
    n_steps: int,
    seed: int = 0,
    block: int = 8,
    first: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Gauss quadrature ``(nodes, weights)`` ``[n_probes, n_steps]`` (float64, CPU) of the spectral measure
    seen from ``n_probes`` normalised Rademacher probes, and the number of products spent.

    ``first``: the Lanczos coefficients ``(alpha, beta)`` (``beta[i]`` couples steps ``i`` and ``i + 1``) of a run
    already made from the first probe (``first_probe``), e.g. by the eigenvalue run; used for that probe when it
    has at least ``n_steps`` steps (or ended on an invariant subspace), saving its products.
    """
    op = as_operator(op)
    n = op.shape[0]
    if n_probes < 1 or n_steps < 1 or block < 1:
        raise ValueError(f"n_probes={n_probes!r}, n_steps={n_steps!r}, block={block!r}: expected positive integers")
    steps = min(n_steps, n)
    gen = torch.Generator().manual_seed(int(seed))
    nodes = torch.zeros(n_probes, steps, dtype=torch.float64)
    weights = torch.zeros(n_probes, steps, dtype=torch.float64)
    n_matvecs = 0
    reuse = False
    if first is not None:
        fa, fb = first[0].double().cpu(), first[1].double().cpu()
        ended = [i for i in range(min(len(fb), steps)) if float(fb[i]) == 0.0]
        length = min(steps, ended[0] + 1) if ended else steps
        if len(fa) >= length:
            reuse = True
            nodes[0, :length], weights[0, :length] = _quadrature(fa[:length], fb[: length - 1])
    for start in range(0, n_probes, block):
        b = min(block, n_probes - start)
        v = rademacher(n, b, gen, op.dtype, op.device) / math.sqrt(n)
        if start == 0 and reuse:
            v, start, b = v[:, 1:], 1, b - 1
            if b == 0:
                continue
        basis = torch.empty(b, steps, n, dtype=op.dtype, device=op.device)  # per probe, preallocated
        basis[:, 0] = v.T
        alpha = torch.zeros(steps, b, dtype=torch.float64)
        beta = torch.zeros(steps, b, dtype=torch.float64)
        length = torch.full((b,), steps, dtype=torch.long)
        active = torch.ones(b, dtype=torch.bool, device=op.device)
        for j in range(steps):
            w = op.matmat(v)
            n_matvecs += b
            a = (v * w).sum(dim=0)
            alpha[j] = a.double().cpu()
            if j == steps - 1:
                break
            # three-term recurrence first, then one Gram-Schmidt pass against the whole basis of each probe,
            # a second only where the first removed a lot (DGKS): full reorthogonalisation at ~half the traffic
            w = w - v * a
            if j > 0:
                w = w - basis[:, j - 1].T * beta[j - 1].to(op.device, w.dtype)
            B = basis[:, : j + 1]  # [b, j+1, n]
            wt = w.T.contiguous()[:, :, None]  # [b, n, 1]
            norm = torch.linalg.vector_norm(wt, dim=1)
            for _ in range(2):
                wt = wt - torch.bmm(B.transpose(1, 2), torch.bmm(B, wt))
                new_norm = torch.linalg.vector_norm(wt, dim=1)
                if bool((new_norm > 0.717 * norm).all()):
                    break
                norm = new_norm
            w = wt[:, :, 0].T
            nb = torch.linalg.vector_norm(w, dim=0)
            scale = alpha[: j + 1].abs().max(dim=0).values.to(op.device, nb.dtype).clamp_min(1e-300)
            broke = active & (nb <= 1e-10 * scale)
            for i in torch.nonzero(broke).flatten().tolist():
                length[i] = j + 1
            active = active & ~broke
            beta[j] = torch.where(active, nb, torch.zeros_like(nb)).double().cpu()
            v = torch.where(active, w / nb.clamp_min(1e-300), torch.zeros_like(w))
            basis[:, j + 1] = v.T
        for i in range(b):
            L = int(length[i])
            nodes[start + i, :L], weights[start + i, :L] = _quadrature(alpha[:L, i], beta[: L - 1, i])
    return nodes, weights, n_matvecs


def spectral_density(
    op: SymmetricOperator | Tensor,
    n_probes: int = 8,
    n_steps: int = 64,
    grid: int | Tensor = 401,
    sigma: float | None = None,
    seed: int = 0,
    block: int = 8,
    negative_cutoff: float = 1e-6,
    first: tuple[Tensor, Tensor] | None = None,
) -> DensityResult:
    """SLQ spectral density of ``op`` (see the module docstring).

    ``grid``: number of evenly spaced points spanning the quadrature nodes (padded by ``5 sigma``), or the
    points themselves. ``sigma``: Gaussian broadening width in eigenvalue units (default: 1 % of the range of
    the nodes). ``first``: the Lanczos coefficients of the first probe from a run already made (see
    ``lanczos_quadrature``); ``n_matvecs`` then counts only the products made here.
    """
    op = as_operator(op)
    n = op.shape[0]
    nodes, weights, n_matvecs = lanczos_quadrature(op, n_probes, n_steps, seed, block, first)
    used = weights > 0
    lo, hi = float(nodes[used].min()), float(nodes[used].max())
    width = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    s = float(sigma) if sigma is not None else 0.01 * width
    if s <= 0:
        raise ValueError(f"sigma={sigma!r}: expected a positive width")
    if isinstance(grid, Tensor):
        t = grid.double().cpu()
    else:
        if int(grid) < 2:
            raise ValueError(f"grid={grid!r}: expected >= 2 points or a tensor of points")
        t = torch.linspace(lo - 5 * s, hi + 5 * s, int(grid), dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((t[:, None, None] - nodes[None]) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    density = (kernel * weights[None]).sum(dim=2).mean(dim=1)
    per_probe = torch.stack([(weights * nodes**p).sum(dim=1) for p in range(1, 5)], dim=1)  # [probes, 4]
    moments = per_probe.mean(dim=0)
    if n_probes > 1:
        moments_stderr = per_probe.std(dim=0, unbiased=True) / math.sqrt(n_probes)
    else:
        moments_stderr = torch.full((4,), math.inf, dtype=torch.float64)
    cutoff = negative_cutoff * max(abs(lo), abs(hi))
    negative_mass = float((weights * (nodes < -cutoff)).sum(dim=1).mean())
    neg_abs = float((weights * nodes.clamp_max(0).abs()).sum(dim=1).mean())
    tot_abs = float((weights * nodes.abs()).sum(dim=1).mean())
    return DensityResult(
        grid=t,
        density=density,
        nodes=nodes,
        weights=weights,
        moments=moments,
        moments_stderr=moments_stderr,
        trace=n * float(moments[0]),
        trace_stderr=n * float(moments_stderr[0]),
        negative_mass=negative_mass,
        negative_weight=neg_abs / tot_abs if tot_abs > 0 else 0.0,
        sigma=s,
        n_matvecs=n_matvecs,
    )
