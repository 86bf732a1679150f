"""The metrics switchboard: the metric-family contract, the contexts families run in, and their registry.

A *metric family* is one switchable group of measurements (``metrics.<name>.enabled``), declared by one
:class:`Family` object in one module of this package:

* ``name`` and ``table`` (``models``: once per trained model; ``pairs``: once per pair of models of a cell);
* ``config``: the settings dataclass, mounted in the ConfigStore at ``metrics.<name>`` (first field
  ``enabled``: ``true`` | ``false`` | ``auto``; see :func:`is_on`);
* ``metrics``: its typed *metric* columns (what analysis ranks and draws);
* ``diagnostics``: its typed *setting/diagnostic* columns that are not config fields (counts, seconds,
  residuals, standard errors, per-t lists, convergence flags);
* its *settings* columns ``<name>.<field>`` for every field of ``config`` but ``enabled``: written from the
  cell's config automatically (a family may report the value it actually used, e.g. a sample count capped
  at the data size, under the same column);
* an ``<name>.error`` string column: null when the family's values are fine, else why they are not;
* the *value rules* of its settings, as metadata of the ``config`` fields
  (``field(default=1000, metadata=rule(ints(1)))``; the vocabulary is :mod:`landscape.rules`: integer and
  number ranges with open or closed ends, choices, string patterns, nullable, lists); a field without one gets
  its type's (integers 0 .. 2**63-1, finite numbers). Defaults live there too, and nowhere else;
* ``check(settings) -> [problem, ...]`` (optional): the rules that tie settings together (``max_budget >=
  budget``) or depend on the environment (an optional package), run once every field passed its rule; each
  problem names the key, the value and what is allowed;
* ``compute(ctx, settings) -> Result`` (values and long-table rows);
* ``depends``: ``{column: (columns, ...)}``: a value that is only meaningful where those are (a flag such as
  ``agrees`` or ``converged``, an eigenvalue beside its residual): null wherever one of them is not finite;
* ``long_tables``: ``{table: {column: type}}`` of the long tables it writes (many rows per model);
* ``styles``: how its metrics are drawn in a phase diagram (:class:`FigureStyle`);
* ``prepare(contexts, settings, workdir)`` (pair families, optional): work shared by the cell's pairs whose
  values are not cached yet, run once before their ``compute`` calls (the curves of ``connectivity`` trained
  as one stack); it leaves its results under each pair's ``ctx.workdir`` for ``compute`` to load, and its own
  checkpoints under ``workdir`` (private to the cell, family and settings). It computes no values: a
  ``prepare`` that raises costs nothing but time (each ``compute`` then does the work alone).

The contract checks every family's settings the same way (:meth:`Family.problems`: the field rules, then
``check``): when a launch is planned (``validate_metrics``, called by ``landscape.config.validate``) and when
``compute`` (or ``prepare``) is called, so a family's ``compute`` starts from valid settings and does not check
them again. Adding a family is one module (its ``Config`` with its rules, its columns, ``compute``, one
``Family``) and one registration line (:mod:`landscape.metrics.builtin`, or :func:`register`).

This module and the family declarations import neither torch nor the math modules: ``metric_columns`` and
``family_of`` are cheap (a family's ``compute`` imports its math when it runs). Registration is explicit:
:mod:`landscape.metrics.builtin` lists the built-in families, one line each; :func:`register` adds others,
:func:`unregister` removes one. The contract's classes live in :mod:`landscape.metrics.contract` (re-exported
here): the family modules import them from there, this registry imports the family modules, so the imports go
one way. What another module derives from the registry (the root config class, the results schemas) it
forgets through :func:`on_change`; this module imports none of them.

The job calls ``compute(ctx, settings)`` with ``settings`` = the family's config node, checks the result
against the declared columns and types, and caches it on disk per model/pair (a rerun does not recompute it).
A family that raises, returns undeclared or mistyped columns, or a non-finite number (in any column, list
items included; ``depends`` nulls what rests on it), costs only its own values: they become typed nulls, the
reason goes to ``<name>.error``, a warning to the log and the cell's
``status.json`` (``metric_errors``, shown by ``landscape-status``). Families never write files except under
``ctx.workdir``, their private scratch/checkpoint directory, which survives a killed job.
"""

from __future__ import annotations

from typing import Any, Callable

from landscape.metrics.contract import (
    ENABLED_VALUES,
    FIGURE_SCALES,
    TABLES,
    Family,
    FigureStyle,
    ModelContext,
    PairContext,
    Result,
    Table,
    arrow_type,
)
from landscape.rules import FRACTION, Rule, choices_of, ints, nums, one_of, rule, text

# ------------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, Family] = {}
_BUILTIN_LOADED = False
_LISTENERS: list[Callable[[], None]] = []


def register(family: Family) -> Family:
    """Add a family to the registry (after the built-in ones; re-registering a name replaces it). Its columns
    must not collide with another family's. Register before the config schema is registered with Hydra
    (``landscape.config.register_configs``, called when ``landscape.cli.app`` is imported)."""
    _load_builtin()
    _add(family)
    return family


def _add(family: Family) -> None:
    for other in _REGISTRY.values():
        if other.name == family.name:
            continue
        clash = set(other.columns) & set(family.columns)
        clash |= set(other.long_tables) & set(family.long_tables)
        if clash:
            raise ValueError(f"family {family.name}: columns/tables {sorted(clash)} already belong to {other.name}")
    _REGISTRY[family.name] = family
    _changed()


def unregister(name: str) -> Family:
    """Remove the family ``name`` from the registry (``KeyError`` if it is not registered); what was derived
    from the registry is forgotten (see :func:`on_change`). Returns the removed family."""
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"metrics.{name}: unknown metric family; known: {', '.join(_REGISTRY)}")
    family = _REGISTRY.pop(name)
    _changed()
    return family


def on_change(forget: Callable[[], None]) -> None:
    """Call ``forget()`` whenever a family is registered or removed. A module that derives something from the
    registry and keeps it (the results schemas, the root config class) registers how to forget it, when it
    first derives it: its state stays its own, and this module imports none of those modules. Registering the
    same callable again changes nothing."""
    if forget not in _LISTENERS:
        _LISTENERS.append(forget)


def _changed() -> None:
    for forget in list(_LISTENERS):
        forget()


def _load_builtin() -> None:
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        from landscape.metrics.builtin import BUILTIN

        for fam in BUILTIN():
            _add(fam)
        _BUILTIN_LOADED = True


def families(table: Table | None = None) -> list[Family]:
    """Registered families, in registration order (= column order), optionally only those of one table."""
    _load_builtin()
    return [f for f in _REGISTRY.values() if table is None or f.table == table]


def get(name: str) -> Family:
    """The registered family ``name``; ``KeyError`` naming the known ones otherwise."""
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"metrics.{name}: unknown metric family; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def family_config_classes() -> dict[str, type]:
    """``{family name: Config dataclass}`` in registration order (mounted at ``metrics.<name>``)."""
    return {f.name: f.config for f in families()}


def metric_columns(table: str) -> list[str]:
    """The typed *metric* columns of ``table`` (``models`` or ``pairs``) over every registered family, in
    column order: no settings, counts, timings, residuals or error columns. Imports no torch."""
    if table not in TABLES:
        raise KeyError(f"table={table!r}: expected one of {', '.join(TABLES)}")
    return [c for f in families(table) for c in f.metrics]  # type: ignore[arg-type]


def family_of(column: str) -> str:
    """The name of the family that declares ``column`` (a metric, setting, diagnostic or error column);
    ``KeyError`` if no registered family does."""
    for f in families():
        if column in f.columns:
            return f.name
    raise KeyError(f"column {column!r}: not a column of any registered metric family")


def figure_styles() -> dict[str, FigureStyle]:
    """``{column: FigureStyle}`` of every registered family that declares one (its metrics, and diagnostics
    it styles), in registration order."""
    return {c: s for f in families() for c, s in f.styles.items()}


# ------------------------------------------------------------------------------------------------ switches
def is_on(cfg: Any, family: Family) -> bool:
    """Whether ``family`` runs in the cell of ``cfg``: ``enabled: true`` runs it (a pair family then needs two
    seeds: refused at planning otherwise), ``false`` does not, ``auto`` runs it where it can: always for a
    model family, for a pair family only when the cell has at least two seeds (with one seed it is skipped,
    and the job logs it). ``auto`` is the default of families that are on by default (``l2``); writing
    ``true`` on the command line or in a sweep is what "explicitly enabled" means."""
    value = cfg.metrics[family.name].enabled
    if _is_auto(value):
        return family.table == "models" or len(list(cfg.train.seeds)) >= 2
    return bool(value)


def enabled(cfg: Any, table: Table | None = None) -> list[Family]:
    """Families that run in the cell of ``cfg`` (optionally of one table; see :func:`is_on`)."""
    return [f for f in families(table) if is_on(cfg, f)]


def skipped_auto(cfg: Any) -> list[Family]:
    """Pair families with ``enabled: auto`` that the cell skips because it has fewer than two seeds."""
    return [f for f in families("pairs") if _is_auto(cfg.metrics[f.name].enabled) and not is_on(cfg, f)]


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == "auto"


PAIR_SELECTIONS = ("all", "chain", "star")


def select_pairs(seeds: list[int], selection: str = "all") -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of a cell's seeds measured by the pair families (``metrics.pairs``):
    ``all`` every pair (n(n-1)/2), ``chain`` consecutive seeds (n-1), ``star`` the first seed with each other."""
    s = sorted(int(x) for x in seeds)
    if selection == "all":
        return [(a, b) for i, a in enumerate(s) for b in s[i + 1 :]]
    if selection == "chain":
        return list(zip(s[:-1], s[1:], strict=True))
    if selection == "star":
        return [(s[0], b) for b in s[1:]]
    raise ValueError(f"metrics.pairs={selection!r}: expected one of {', '.join(PAIR_SELECTIONS)}")


def validate_metrics(cfg: Any) -> list[str]:
    """Problems of the ``metrics`` node: ``enabled`` values, explicitly enabled pair families with fewer than
    two seeds, and each enabled family's settings (:meth:`Family.problems`: its field rules, then its
    ``check``); run before any job starts (``landscape.config.validate``)."""
    problems: list[str] = []
    if str(cfg.metrics.pairs) not in PAIR_SELECTIONS:
        problems.append(f"metrics.pairs={cfg.metrics.pairs!r}: expected one of {', '.join(PAIR_SELECTIONS)}")
    for fam in families():
        value = cfg.metrics[fam.name].enabled
        if not (isinstance(value, bool) or _is_auto(value)):
            problems.append(f"metrics.{fam.name}.enabled={value!r}: expected true, false or auto")
    explicit = [f.name for f in families("pairs") if cfg.metrics[f.name].enabled is True]
    if explicit and len(list(cfg.train.seeds)) < 2:
        problems.append(
            f"train.seeds={list(cfg.train.seeds)!r}: the pair metrics {', '.join(explicit)} need at least two "
            f"seeds (or switch them off: {' '.join(f'metrics.{n}.enabled=false' for n in explicit)}; "
            "`auto` skips them in one-seed cells)"
        )
    for fam in enabled(cfg):
        problems.extend(fam.problems(cfg.metrics[fam.name]))
    return problems


__all__ = [
    "ENABLED_VALUES",
    "FIGURE_SCALES",
    "Family",
    "FigureStyle",
    "ModelContext",
    "PAIR_SELECTIONS",
    "PairContext",
    "Result",
    "Table",
    "arrow_type",
    "enabled",
    "families",
    "family_config_classes",
    "family_of",
    "figure_styles",
    "get",
    "is_on",
    "metric_columns",
    "on_change",
    "register",
    "select_pairs",
    "skipped_auto",
    "unregister",
    "validate_metrics",
    "FRACTION",
    "Rule",
    "choices_of",
    "ints",
    "nums",
    "one_of",
    "rule",
    "text",  # value rules (landscape.rules)
]
