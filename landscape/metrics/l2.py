"""Pair family ``l2``: the Euclidean distance between the two models' trainable parameter vectors (float64)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from landscape.metrics.contract import Family, FigureStyle, PairContext, Result


@dataclass
class Config:
    """``metrics.l2.*``: the parameter distance between the seeds of a cell. ``enabled: auto`` (the default)
    measures it in every cell with two or more seeds and skips it, with a log line, in one-seed cells."""

    enabled: Any = "auto"


def compute(ctx: PairContext, settings: Any) -> Result:
    from landscape.directions import l2_distance

    return Result({"l2_distance": l2_distance(ctx.a.model, ctx.b.model)})


FAMILY = Family(
    name="l2",
    table="pairs",
    config=Config,
    metrics={"l2_distance": pa.float64()},
    compute=compute,
    styles={
        "l2_distance": FigureStyle("L2 distance between seeds", "parameter units", paper=(0.0, 100.0), cmap="cividis")
    },  # paper: Yang et al. (2021), Figure 1
    description="distance between parameter vectors",
)
