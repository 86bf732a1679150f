"""Imports every built-in metric family module, which registers it (order = column order)."""

from landscape.metrics import hessian  # noqa: F401  (models: local metrics)
from landscape.metrics import l2  # noqa: F401  (pairs)
from landscape.metrics import cka, connectivity  # noqa: F401  (pairs: global metrics)
from landscape.metrics import jump_retrain, projection_trace, surfaces  # noqa: F401  (models: geometry, topology)
