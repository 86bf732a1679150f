"""Pair family ``l2``: the Euclidean distance between the two models' parameter vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from torch import nn

from landscape.metrics import MetricFamily, PairContext, register
from landscape.params import flat_parameters


@dataclass
class Config:
    """``metrics.l2.*``: switch for the parameter distance between the seeds of a cell."""

    enabled: bool = False


def l2_distance(a: nn.Module, b: nn.Module) -> float:
    """||theta_a - theta_b||_2 over the trainable parameters (same architecture), in float64."""
    return float(torch.linalg.vector_norm(flat_parameters(a).double() - flat_parameters(b).double()))


def _compute(ctx: PairContext, settings: Any) -> dict[str, Any]:
    return {"l2_distance": l2_distance(ctx.a.model, ctx.b.model)}


FAMILY = register(MetricFamily(name="l2", table="pairs", columns={"l2_distance": pa.float64()}, compute=_compute))
