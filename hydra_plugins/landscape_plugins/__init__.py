"""Hydra plugin entry points of landscape (Hydra only loads plugins from the ``hydra_plugins`` namespace).

The classes here are thin subclasses; their logic lives in ``landscape.cli``.
"""
