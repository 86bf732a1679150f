"""Curvature of the loss: the Hessian as a symmetric linear operator and its estimators.

* ``HessianOperator`` (exact Hessian-vector products over a fixed data set), ``MatrixOperator`` (explicit);
* ``eigenvalues`` (thick-restart Lanczos: largest / smallest eigenpairs with residuals), ``power_iteration``;
* ``trace`` (Hutchinson, Hutch++ with standard errors);
* ``spectral_density`` (stochastic Lanczos quadrature with Gaussian broadening);
* ``taxonomy_eigenvalues`` / ``taxonomy_trace``: PyHessian's rules as used by Yang et al. (2021).
"""

from landscape.curvature.density import DensityResult, lanczos_quadrature, spectral_density
from landscape.curvature.eigen import EigenResult, eigenvalues, power_iteration
from landscape.curvature.operator import HessianOperator, MatrixOperator, SymmetricOperator, as_operator
from landscape.curvature.taxonomy import TAXONOMY_SAMPLES, taxonomy_eigenvalues, taxonomy_trace
from landscape.curvature.trace import TraceResult, hutch_plus_plus, hutchinson, trace

__all__ = [
    "DensityResult",
    "EigenResult",
    "HessianOperator",
    "MatrixOperator",
    "SymmetricOperator",
    "TAXONOMY_SAMPLES",
    "TraceResult",
    "as_operator",
    "eigenvalues",
    "hutch_plus_plus",
    "hutchinson",
    "lanczos_quadrature",
    "power_iteration",
    "spectral_density",
    "taxonomy_eigenvalues",
    "taxonomy_trace",
    "trace",
]
