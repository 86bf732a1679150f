"""The taxonomy-faithful estimators: PyHessian's settings as used by Yang et al. (2021).

The paper measures the Hessian of the training loss on one batch of ``TAXONOMY_SAMPLES`` = 200 training
samples with PyHessian: the top eigenvalue by power iteration (at most 100 products, stopping when the
Rayleigh quotient changes by less than 1e-3 relative) and the trace by Hutchinson's estimator with
Rademacher probes, stopping when the running mean changes by less than 1e-3 relative (at most 100 probes).
These functions reproduce those rules on any operator so the paper's numbers can be compared; the default
mode of the ``hessian`` metric family uses ``eigen.eigenvalues`` and ``trace.trace`` instead.
"""

from __future__ import annotations

import math

import torch

from landscape.curvature.eigen import EigenResult, power_iteration
from landscape.curvature.operator import SymmetricOperator, as_operator
from landscape.curvature.trace import TraceResult, rademacher

TAXONOMY_SAMPLES = 200
TAXONOMY_MAX_ITER = 100
TAXONOMY_TOL = 1e-3


def taxonomy_eigenvalues(
    op: SymmetricOperator | torch.Tensor,
    k: int = 1,
    max_iter: int = TAXONOMY_MAX_ITER,
    tol: float = TAXONOMY_TOL,
    seed: int = 0,
) -> EigenResult:
    """Top-``k`` eigenvalues (largest magnitude) by PyHessian-style power iteration with deflation."""
    return power_iteration(op, k=k, max_iter=max_iter, tol=tol, seed=seed)


def taxonomy_trace(
    op: SymmetricOperator | torch.Tensor,
    max_iter: int = TAXONOMY_MAX_ITER,
    tol: float = TAXONOMY_TOL,
    seed: int = 0,
) -> TraceResult:
    """Hutchinson's trace with PyHessian's stopping rule: draw Rademacher probes one at a time and stop when
    the running mean changes by less than ``tol`` relative (``|new - old| / (|old| + 1e-6)``) or after
    ``max_iter`` probes. ``stderr`` is the sample standard error of the probes drawn (inf for one probe)."""
    op = as_operator(op)
    gen = torch.Generator().manual_seed(int(seed))
    values: list[float] = []
    mean = math.nan
    for _ in range(max_iter):
        z = rademacher(op.shape[0], 1, gen, op.dtype, op.device)[:, 0]
        values.append(float(z @ op.matvec(z)))
        new = sum(values) / len(values)
        if not math.isnan(mean) and abs(new - mean) / (abs(mean) + 1e-6) < tol:
            mean = new
            break
        mean = new
    samples = torch.tensor(values, dtype=torch.float64)
    stderr = float(samples.std(unbiased=True) / math.sqrt(len(values))) if len(values) > 1 else math.inf
    return TraceResult(mean, stderr, len(values), "hutchinson-taxonomy", samples)
