"""The metrics switchboard: metric families, the contexts they run in, and their registry.

A *metric family* is one switchable group of measurements (``metrics.<name>.enabled`` in the config). It
declares the typed columns it fills (``columns``, in the ``models`` or the ``pairs`` table) and computes them
for one trained model (table ``models``) or one pair of models of a cell (table ``pairs``). The math lives
in the concept modules (``landscape.curvature``, ``landscape.similarity``, ...); a family is the thin
adapter between a cell and that math. Families never write files except under ``ctx.workdir``, their private
scratch/checkpoint directory, which survives a killed job so long computations can resume.

The job calls ``compute(ctx, settings)`` with ``settings`` = the family's config node and stores the returned
``{column: value}`` dict (cached on disk per model/pair, so a rerun does not recompute it). Columns a family
does not return stay typed nulls.

A family may also produce *long tables* (e.g. a loss-surface grid: many rows per model): it declares them in
``extra_tables`` (``{table_name: {column: type}}``) and returns their rows under the reserved key
``"_tables"``: ``{table_name: [row_dict, ...]}``. The job adds the provenance columns (``cell_id``, ``sweep``,
``seed`` / ``seed_a``/``seed_b``, ...) and writes ``results/<table_name>/<cell_id>.parquet`` with the same
schema discipline as ``models``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import pyarrow as pa
import torch
from torch import nn

from landscape.data import CellData
from landscape.training import LossFn


@dataclass
class ModelContext:
    """One trained model of a cell, ready to be measured.

    ``model`` is in eval mode on ``device``; ``data`` is on ``device``; ``loss_fn(logits, y)`` is the mean
    training loss; ``make_model()`` builds a fresh, untrained model of the same architecture on ``device``
    (for curves, directions, ...); ``cfg`` is the cell's whole resolved config; ``workdir`` is a private,
    persistent directory for this model and family; ``seed`` is the model's training seed.
    """

    model: nn.Module
    seed: int
    data: CellData
    loss_fn: LossFn
    make_model: Callable[[], nn.Module]
    cfg: Any
    device: torch.device
    workdir: Path


@dataclass
class PairContext:
    """Two trained models ``a`` and ``b`` (``a.seed < b.seed``) of one cell; ``workdir`` is private to the pair."""

    a: ModelContext
    b: ModelContext
    workdir: Path


Table = Literal["models", "pairs"]


@dataclass(frozen=True)
class MetricFamily:
    """A switchable metric family. ``compute(ctx, settings) -> {column: value}``; ``ctx`` is a
    ``ModelContext`` for table ``models`` and a ``PairContext`` for table ``pairs``."""

    name: str
    table: Table
    columns: Mapping[str, pa.DataType]
    compute: Callable[[Any, Any], dict[str, Any]]
    extra_tables: Mapping[str, Mapping[str, pa.DataType]] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, MetricFamily] = {}


def register(family: MetricFamily) -> MetricFamily:
    """Add a family to the registry (names are unique; re-registering the same name replaces it)."""
    _REGISTRY[family.name] = family
    return family


def families(table: Table | None = None) -> list[MetricFamily]:
    """Registered families, in registration order, optionally only those of one table."""
    _load_builtin()
    return [f for f in _REGISTRY.values() if table is None or f.table == table]


def get(name: str) -> MetricFamily:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"metrics.{name}: unknown metric family; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def family_config_classes() -> dict[str, type]:
    """``{family name: Config dataclass}``; a family module defines ``Config`` (first field ``enabled``)."""
    out: dict[str, type] = {}
    for fam in families():
        module = importlib.import_module(fam.compute.__module__)
        out[fam.name] = getattr(module, "Config")
    return out


def enabled(cfg: Any, table: Table | None = None) -> list[MetricFamily]:
    """Families switched on in ``cfg.metrics`` (optionally of one table)."""
    return [f for f in families(table) if bool(cfg.metrics[f.name].enabled)]


PAIR_SELECTIONS = ("all", "chain", "star")


def select_pairs(seeds: list[int], selection: str = "all") -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of a cell's seeds measured by the pair families (``metrics.pairs``):
    ``all`` every pair (n(n-1)/2), ``chain`` consecutive seeds (n-1), ``star`` the first seed with each other."""
    s = sorted(int(x) for x in seeds)
    if selection == "all":
        return [(a, b) for i, a in enumerate(s) for b in s[i + 1 :]]
    if selection == "chain":
        return list(zip(s[:-1], s[1:]))
    if selection == "star":
        return [(s[0], b) for b in s[1:]]
    raise ValueError(f"metrics.pairs={selection!r}: expected one of {', '.join(PAIR_SELECTIONS)}")


def validate_metrics(cfg: Any) -> list[str]:
    """Problems of the ``metrics`` node: pair families need two seeds; each enabled family module's
    ``check_settings(settings)`` (raising ``ValueError`` that names the key) runs here, before any job."""
    problems: list[str] = []
    if str(cfg.metrics.pairs) not in PAIR_SELECTIONS:
        problems.append(f"metrics.pairs={cfg.metrics.pairs!r}: expected one of {', '.join(PAIR_SELECTIONS)}")
    pair_families = [f.name for f in enabled(cfg, "pairs")]
    if pair_families and len(list(cfg.train.seeds)) < 2:
        problems.append(
            f"train.seeds={list(cfg.train.seeds)!r}: the pair metrics {', '.join(pair_families)} need at least two "
            f"seeds (or switch them off: {' '.join(f'metrics.{n}.enabled=false' for n in pair_families)})"
        )
    for fam in enabled(cfg):
        check = getattr(importlib.import_module(fam.compute.__module__), "check_settings", None)
        if check is None:
            continue
        try:
            check(cfg.metrics[fam.name])
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _load_builtin() -> None:
    # Importing the adapter modules registers the built-in families (in a fixed order).
    from landscape.metrics import builtin  # noqa: F401
