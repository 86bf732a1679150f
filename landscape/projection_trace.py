"""Curvature from random projections without Hessian-vector products (Boettcher & Wheeler 2022).

Trace estimate. For ``d ~ N(0, I_P)`` the central second difference of the loss along ``d``,

    q(d) = (L(theta + eps d) - 2 L(theta) + L(theta - eps d)) / eps^2  ->  d^T H d   (eps -> 0),

has mean ``tr(H)`` and, for Gaussian ``d``, variance ``2 tr(H^2)``. The estimate is the mean of ``q`` over
``n`` directions (two forward passes each, plus one at ``theta``); its standard error is the sample standard
deviation over ``sqrt(n)``, which behaves as ``sqrt(2 tr(H^2) / n)``. The bias is ``O(eps^2)`` (fourth
derivatives) plus round-off ``O(u L / eps^2)``: evaluate in float64 for small ``eps``.

Step. A Gaussian ``d`` has norm about ``sqrt(P)``, so the step ``eps d`` of the formula moves the parameters
by ``eps sqrt(P)`` (about 3 for ResNet18 at ``eps = 1e-3``): not a local probe. ``step="relative"`` (default)
takes the step along the unit direction ``d / |d|`` with length ``h = eps |theta|`` (a fraction ``eps`` of the
parameters' norm) and rescales: ``q = |d|^2 (L(theta + h u) - 2 L(theta) + L(theta - h u)) / h^2``, the same
``d^T H d`` in the limit. ``step="absolute"`` is the formula as written (step ``eps d``).

Check. With ``check_hessian`` the exact quadratic forms ``d^T H d`` of the same directions are computed with
Hessian-vector products (:class:`landscape.curvature.HessianOperator`, same dtype); their mean is an unbiased
trace estimate, and the per-direction differences give the second differences' ``bias`` with a paired
standard error (the directions' sampling noise cancels) and ``z_vs_hessian = bias / bias_stderr``. On smooth
networks the bias is ``O(h^2)``, tiny against the estimate's standard error; on ReLU networks the second
differences also see the kinks that autograd's Hessian (zero second derivative almost everywhere) ignores.

Saddle check. The 2-D projection of the loss on unit directions ``u, v`` has the Hessian
``[[u^T H u, u^T H v], [v^T H u, v^T H v]]``, estimated here from second differences (a 9-point stencil).
Its eigenvalues are the *principal curvatures* of the plotted surface. At a saddle with few, small negative
eigenvalues, random ``u, v`` give ``u^T H u ~ tr(H)/P > 0`` and the plot looks like a minimum; the plane of
the top and most negative Hessian eigenvectors shows the negative curvature.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from landscape.params import flat_parameters
from landscape.surfaces import PointEvaluator
from landscape.training import LossFn

log = logging.getLogger(__name__)


@dataclass
class ProjectionTrace:
    """``estimate`` of tr(H) (loss units per squared parameter unit), its ``stderr``, the settings, and the
    per-direction second differences ``samples [n]``."""

    estimate: float
    stderr: float
    n_directions: int
    epsilon: float
    samples: np.ndarray
    step: str = "relative"
    step_length: float = float("nan")  # |parameter displacement| of each probe point
    hvp_samples: np.ndarray | None = None  # exact d^T H d of the same directions (check_hessian)

    @property
    def hvp_estimate(self) -> float:
        """Mean of the exact quadratic forms (NaN without the check)."""
        return float(np.mean(self.hvp_samples)) if self.hvp_samples is not None else float("nan")

    @property
    def bias(self) -> float:
        """``estimate - hvp_estimate``: the second differences' bias on these directions (NaN without the check)."""
        return float(self.estimate - self.hvp_estimate)

    @property
    def bias_stderr(self) -> float:
        """Standard error of :attr:`bias`: of the per-direction differences (paired; NaN without the check)."""
        if self.hvp_samples is None:
            return float("nan")
        diff = self.samples - self.hvp_samples
        return float(diff.std(ddof=1) / math.sqrt(len(diff)))

    @property
    def z_vs_hessian(self) -> float:
        """``bias / bias_stderr`` (paired: the directions' sampling noise cancels); NaN without the check,
        0 when the two agree exactly."""
        if self.hvp_samples is None:
            return float("nan")
        b, se = self.bias, self.bias_stderr
        if b == 0.0:
            return 0.0
        return float(b / se) if se > 0 else float("inf") * np.sign(b)


def _model_in(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    if dtype is None or flat_parameters(model).dtype == dtype:
        return model
    import copy

    return copy.deepcopy(model).to(dtype)


def _directions(n: int, p: int, gen: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(n, p, generator=gen, dtype=torch.float64).to(like)


STEPS = ("relative", "absolute")


def projection_trace(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    n_directions: int = 100,
    epsilon: float = 1e-2,
    seed: int = 0,
    dtype: torch.dtype | None = torch.float64,
    chunk: int | None = None,
    batch_size: int = 1024,
    use_vmap: bool = True,
    step: str = "relative",
    check_hessian: bool = False,
) -> ProjectionTrace:
    """Estimate ``tr(H)`` of the mean loss over ``(x, y)`` at ``model``'s parameters from ``n_directions``
    Gaussian second differences (see the module docstring): ``step="relative"`` probes at distance
    ``epsilon * |theta|`` along ``d / |d|``, ``"absolute"`` at ``epsilon * d``. The model is evaluated in eval
    mode, in ``dtype`` (a float64 copy by default; None keeps the model's dtype). Directions are drawn on the
    CPU from ``seed``, ``chunk`` at a time (default: as many as fit ``2 * chunk + 1`` parameter points in about
    256 MB, at most 64). The default ``epsilon`` is the ``projection_trace`` family's (see its module for the
    measurements behind it). ``check_hessian``: also the exact ``d^T H d`` of the same directions (``hvp_samples``;
    ``n_directions`` Hessian-vector products)."""
    if n_directions < 2:
        raise ValueError(f"n_directions={n_directions}: need at least 2 for a standard error")
    if not epsilon > 0:
        raise ValueError(f"epsilon={epsilon}: must be > 0")
    if step not in STEPS:
        raise ValueError(f"step={step!r}: expected one of {', '.join(STEPS)}")
    m = _model_in(model, dtype)
    x = x.to(dtype) if dtype is not None and x.is_floating_point() else x
    theta = flat_parameters(m)
    if chunk is None:
        chunk = int(max(1, min(64, (256 * 2**20) // (2 * theta.numel() * theta.element_size()))))
    ev = PointEvaluator(m, loss_fn, x, y, batch_size=batch_size, chunk=2 * chunk + 1, use_vmap=use_vmap)
    l0 = float(ev(theta[None])[0][0])
    theta_norm = float(theta.double().norm())
    h = epsilon * theta_norm if theta_norm > 0 else epsilon
    op = None
    if check_hessian:
        from landscape.curvature import HessianOperator

        op = HessianOperator(m, loss_fn, (x, y), batch_size=batch_size, dtype=theta.dtype, max_block=8)
    gen = torch.Generator().manual_seed(int(seed))
    samples, exact, lengths = [], [], []
    for i in range(0, n_directions, chunk):
        d = _directions(min(chunk, n_directions - i), theta.numel(), gen, theta)
        k = d.shape[0]
        if step == "relative":
            norms = d.norm(dim=1, keepdim=True)
            u = d / norms
            loss, _ = ev(torch.cat([theta + h * u, theta - h * u]))
            scale = (norms[:, 0] ** 2).double().cpu().numpy() / h**2
            lengths.append(np.full(k, h))
        else:
            loss, _ = ev(torch.cat([theta + epsilon * d, theta - epsilon * d]))
            scale = np.full(k, 1.0 / epsilon**2)
            lengths.append(epsilon * d.norm(dim=1).double().cpu().numpy())
        samples.append((loss[:k] - 2 * l0 + loss[k:]) * scale)
        if op is not None:
            hd = op.matmat(d.T)  # [P, k]
            exact.append(((d.T * hd).sum(dim=0)).double().cpu().numpy())
    q = np.concatenate(samples)
    return ProjectionTrace(
        estimate=float(q.mean()),
        stderr=float(q.std(ddof=1) / math.sqrt(len(q))),
        n_directions=int(n_directions),
        epsilon=float(epsilon),
        samples=q,
        step=step,
        step_length=float(np.mean(np.concatenate(lengths))),
        hvp_samples=np.concatenate(exact) if op is not None else None,
    )


def projected_hessian_2d(evaluator: PointEvaluator, theta: Tensor, u: Tensor, v: Tensor, step: float) -> np.ndarray:
    """The 2x2 Hessian ``[[u'Hu, u'Hv], [v'Hu, v'Hv]]`` of ``(a, b) -> L(theta + a u + b v)`` at 0, from
    central second differences with step ``step`` (9 loss evaluations)."""
    offsets = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]
    points = torch.stack([theta + step * (a * u + b * v) for a, b in offsets])
    loss = dict(zip(offsets, evaluator(points)[0], strict=True))
    huu = (loss[1, 0] - 2 * loss[0, 0] + loss[-1, 0]) / step**2
    hvv = (loss[0, 1] - 2 * loss[0, 0] + loss[0, -1]) / step**2
    huv = (loss[1, 1] - loss[1, -1] - loss[-1, 1] + loss[-1, -1]) / (4 * step**2)
    return np.array([[huu, huv], [huv, hvv]])


def principal_curvatures(h2: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of a symmetric 2x2 projected Hessian."""
    return np.linalg.eigvalsh(np.asarray(h2, dtype=np.float64))


@dataclass
class SaddleCheck:
    """``share_minimum``: fraction of random 2-D projections whose principal curvatures are all >= 0;
    ``random_curvatures [n, 2]`` (ascending per draw); ``hessian_curvatures [2]``: those of the plane of the
    given Hessian directions (None if not given)."""

    share_minimum: float
    random_curvatures: np.ndarray
    hessian_curvatures: np.ndarray | None
    n_draws: int
    step: float


def saddle_check(
    model: nn.Module,
    loss_fn: LossFn,
    x: Tensor,
    y: Tensor,
    n_draws: int = 50,
    step: float = 1e-2,
    seed: int = 0,
    hessian_dirs: tuple[Tensor, Tensor] | None = None,
    dtype: torch.dtype | None = torch.float64,
    batch_size: int = 1024,
    use_vmap: bool = True,
) -> SaddleCheck:
    """Principal curvatures of ``n_draws`` random 2-D projections (pairs of independent unit Gaussian
    directions from ``seed``) and, if ``hessian_dirs = (v_max, v_min)`` is given, of the Hessian-direction
    plane; ``step`` is the second-difference step along the unit directions."""
    m = _model_in(model, dtype)
    x = x.to(dtype) if dtype is not None and x.is_floating_point() else x
    ev = PointEvaluator(m, loss_fn, x, y, batch_size=batch_size, chunk=9, use_vmap=use_vmap)
    theta = flat_parameters(m)
    gen = torch.Generator().manual_seed(int(seed))
    curv = []
    for _ in range(n_draws):
        uv = _directions(2, theta.numel(), gen, theta)
        uv = uv / uv.norm(dim=1, keepdim=True)
        curv.append(principal_curvatures(projected_hessian_2d(ev, theta, uv[0], uv[1], step)))
    curv_arr = np.array(curv).reshape(-1, 2)
    hess = None
    if hessian_dirs is not None:
        u, v = (h.to(theta) / h.to(theta).norm() for h in hessian_dirs)
        hess = principal_curvatures(projected_hessian_2d(ev, theta, u, v, step))
    return SaddleCheck(
        share_minimum=float((curv_arr >= 0).all(axis=1).mean()) if n_draws else float("nan"),
        random_curvatures=curv_arr,
        hessian_curvatures=hess,
        n_draws=int(n_draws),
        step=float(step),
    )
