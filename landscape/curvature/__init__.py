"""Curvature of the loss: the Hessian as a symmetric linear operator and its estimators.

* ``HessianOperator`` (exact Hessian-vector products over a fixed data set), ``MatrixOperator`` (explicit);
  ``GGNOperator``, ``FisherOperator``, ``EmpiricalFisherOperator`` (Gauss-Newton and Fisher curvature, positive
  semi-definite, products without the matrix); ``curvature_operator(name, ...)`` by name (``OPERATORS``);
* ``eigenvalues`` / ``extreme_eigenpairs`` (Lanczos: largest and/or smallest eigenpairs with residuals, both ends
  from one run), ``power_iteration``; ``gradient_start`` (a start vector leaning on the loss gradient: fewer
  products to the top eigenvalues);
* ``trace`` (Hutchinson, Hutch++ with standard errors), ``deflated_hutchinson`` (deflated by a known basis);
* ``spectral_density`` (stochastic Lanczos quadrature with Gaussian broadening);
* ``taxonomy_eigenvalues`` / ``taxonomy_trace``: PyHessian's rules as used by Yang et al. (2021).
"""

from landscape.curvature.density import DensityResult, first_probe, lanczos_quadrature, spectral_density
from landscape.curvature.eigen import (
    EigenResult,
    SpectrumEnds,
    eigenvalues,
    extreme_eigenpairs,
    gradient_start,
    power_iteration,
)
from landscape.curvature.operator import (
    LIKELIHOODS,
    OPERATORS,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    MatrixOperator,
    SymmetricOperator,
    as_operator,
    curvature_operator,
)
from landscape.curvature.taxonomy import TAXONOMY_SAMPLES, taxonomy_eigenvalues, taxonomy_trace
from landscape.curvature.trace import TraceResult, deflated_hutchinson, hutch_plus_plus, hutchinson, trace

__all__ = [
    "DensityResult",
    "EigenResult",
    "EmpiricalFisherOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "LIKELIHOODS",
    "MatrixOperator",
    "OPERATORS",
    "SpectrumEnds",
    "SymmetricOperator",
    "TAXONOMY_SAMPLES",
    "TraceResult",
    "as_operator",
    "curvature_operator",
    "deflated_hutchinson",
    "eigenvalues",
    "extreme_eigenpairs",
    "first_probe",
    "gradient_start",
    "hutch_plus_plus",
    "hutchinson",
    "lanczos_quadrature",
    "power_iteration",
    "spectral_density",
    "taxonomy_eigenvalues",
    "taxonomy_trace",
    "trace",
]
