"""The built-in metric families: one line each, in column order (``models`` then ``pairs`` columns follow it).

Adding a family: write its module (a ``Config`` dataclass, its defaults and value rules in its fields, and a
``FAMILY = Family(...)``) and add one line here; nothing else. Imports no torch: the families import their
math lazily.
"""

from __future__ import annotations

from landscape.metrics.contract import Family


def BUILTIN() -> list[Family]:
    from landscape.metrics import (
        cka,
        connectivity,
        hessian,
        jump_retrain,
        l2,
        projection_trace,
        sharpness,
        surfaces,
        training,
    )

    return [
        training.FAMILY,  # models: train/test loss and accuracy
        hessian.FAMILY,  # models: Hessian eigenvalues, trace, density
        l2.FAMILY,  # pairs: parameter distance
        cka.FAMILY,  # pairs: CKA similarity
        connectivity.FAMILY,  # pairs: Bezier mode connectivity, straight-line barrier
        jump_retrain.FAMILY,  # models: jump-and-retrain trajectories, topology
        projection_trace.FAMILY,  # models: projection trace (and saddle check)
        surfaces.FAMILY,  # models: loss surfaces (long table)
        sharpness.FAMILY,  # models: top Hessian eigenvalue during training (long table)
    ]
