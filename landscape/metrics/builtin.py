"""Imports every built-in metric family module, which registers it (order = column order)."""

from landscape.metrics import l2  # noqa: F401
