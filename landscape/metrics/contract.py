"""The metric-family contract: :class:`Family`, the contexts a family's ``compute`` runs in
(:class:`ModelContext`, :class:`PairContext`), what it returns (:class:`Result`), how its metrics are drawn
(:class:`FigureStyle`) and the Arrow type of a settings field (:func:`arrow_type`).

The family modules of this package import it (``landscape.metrics.contract``); the registry
(``landscape.metrics``) imports them: the dependency goes one way. Imports neither torch nor the math modules.
See ``landscape.metrics`` for the whole contract.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import pyarrow as pa

from landscape.rules import Rule, field_rule

if TYPE_CHECKING:  # annotations only: importing this module must not import torch
    import torch
    from torch import nn

    from landscape.data import CellData

Table = Literal["models", "pairs"]
TABLES: tuple[str, ...] = ("models", "pairs")
ENABLED_VALUES = (True, False, "auto")


@dataclass
class ModelContext:
    """One trained model of a cell, ready to be measured.

    ``model`` is in eval mode on ``device``; ``data`` is on ``device``; ``loss_fn(logits, y)`` is the mean
    training loss; ``make_model()`` builds a fresh, untrained model of the same architecture on ``device``
    (for curves, directions, ...); ``cfg`` is the cell's whole resolved config; ``workdir`` is a private,
    persistent directory for this model and family; ``seed`` is the model's training seed; ``should_stop`` is
    the job's stop request (``landscape.preemption.stop_requested`` under a launcher): every training loop a
    family runs (curves, retraining) must poll it, so that Ctrl-C, SIGTERM and SLURM's pre-emption signal stop
    the cell within seconds (the engine checkpoints and raises ``StopRequested``).
    """

    model: "nn.Module"
    seed: int
    data: "CellData"
    loss_fn: Callable[[Any, Any], Any]
    make_model: Callable[[], "nn.Module"]
    cfg: Any
    device: "torch.device"
    workdir: Path
    should_stop: Callable[[], bool] | None = None


@dataclass
class PairContext:
    """Two trained models ``a`` and ``b`` (``a.seed < b.seed``) of one cell; ``workdir`` is private to the pair."""

    a: ModelContext
    b: ModelContext
    workdir: Path

    @property
    def should_stop(self) -> Callable[[], bool] | None:
        """The job's stop request (see :class:`ModelContext`)."""
        return self.a.should_stop


@dataclass
class Result:
    """What a family's ``compute`` returns.

    ``values``: ``{column: value}`` for declared columns (metrics, diagnostics, or settings whose effective
    value differs from the config); columns not returned stay typed nulls. ``tables``: ``{long table:
    [row, ...]}`` for the family's declared long tables (the job adds the provenance columns). ``error``: why
    some values could not be computed (e.g. ``"features of model 1 are constant"``), with those values None
    or NaN; None when everything is fine.
    """

    values: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None


#: Colour scales of a :class:`FigureStyle`: ``linear``; ``log10`` (equal steps per factor 10, ticked in the
#: metric's own units; values <= 0 are masked); ``symlog`` (symmetric log10 around ``centre``, linear within
#: ``+-linthresh`` of it).
FIGURE_SCALES: tuple[str, ...] = ("linear", "log10", "symlog")


@dataclass(frozen=True)
class FigureStyle:
    """How a metric is drawn in a phase diagram; declared by its family and read by the figures (the one
    home of a metric's style: ``landscape.phase_diagram`` keeps only the styles of derived columns).

    ``label`` names the value and ``unit`` its unit (the colour bar reads ``label [unit]``; ``""`` for none).
    ``scale`` is the colour scale (:data:`FIGURE_SCALES`, the base explicit: ``log10``, never a bare "log").
    ``paper``: the colour range ``(vmin, vmax)`` of the source paper's figure, in the metric's own units (never
    logs: a range the paper drew as natural logs ``a..b`` is ``(e^a, e^b)`` here), drawn with ``paper_scale``
    (default ``scale``) when the figure is asked for the paper's limits; None when the paper drew no such panel.
    ``cmap``: a matplotlib colour map; ``centre``: a diverging map's centre value (drawn in the map's middle
    colour, limits stretched to include it); ``linthresh``: the linear half-width of ``symlog``, in the
    metric's units. Thresholds are not part of a style: the colour bars mark those of the phase rule in use
    (``landscape.phase.PhaseRule``: paper, calibrated or set by flags)."""

    label: str
    unit: str = ""
    scale: str = "linear"
    paper: tuple[float, float] | None = None
    paper_scale: str | None = None
    cmap: str = "viridis"
    centre: float | None = None
    linthresh: float = 1.0

    def __post_init__(self) -> None:
        for key in ("scale", "paper_scale"):
            value = getattr(self, key)
            if (value is not None or key == "scale") and value not in FIGURE_SCALES:
                raise ValueError(
                    f"FigureStyle({self.label!r}).{key}={value!r}: expected one of "
                    f"{', '.join(FIGURE_SCALES)} (the base explicit: log10, not log)"
                )
        if self.scale == "symlog" and self.centre is None:
            raise ValueError(f"FigureStyle({self.label!r}): scale symlog needs a centre")
        if not self.linthresh > 0:
            raise ValueError(f"FigureStyle({self.label!r}).linthresh={self.linthresh!r}: expected > 0")
        if self.paper is not None:
            lo, hi = self.paper
            if not lo < hi:
                raise ValueError(f"FigureStyle({self.label!r}).paper={self.paper!r}: expected vmin < vmax")
            if self.paper_scale_used == "log10" and lo <= 0:
                raise ValueError(f"FigureStyle({self.label!r}).paper={self.paper!r}: a log10 range must be > 0")

    @property
    def paper_scale_used(self) -> str:
        """The scale the paper's range is drawn with (``paper_scale``, default ``scale``)."""
        return self.paper_scale or self.scale


_ARROW_BY_ANNOTATION: dict[Any, pa.DataType] = {
    bool: pa.bool_(),
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
}


def arrow_type(annotation: Any) -> pa.DataType:
    """The column type of a config field annotation (``bool``, ``int``, ``float``, ``str``, ``list[...]``,
    ``Optional[...]``; string annotations as written under ``from __future__ import annotations``)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Any": Any, "Optional": typing.Optional, "list": list})
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union and len(args) == 1:
        return arrow_type(args[0])
    if origin is list:
        return pa.list_(arrow_type(args[0]))
    if annotation in _ARROW_BY_ANNOTATION:
        return _ARROW_BY_ANNOTATION[annotation]
    raise TypeError(f"no column type for config annotation {annotation!r}")


@dataclass(frozen=True)
class Family:
    """A metric family (see the module docstring). ``compute`` and ``check`` are called with the family's
    config node (a ``DictConfig`` or an instance of ``config``)."""

    name: str
    table: Table
    config: type
    metrics: Mapping[str, pa.DataType]
    compute: Callable[[Any, Any], Result]
    diagnostics: Mapping[str, pa.DataType] = field(default_factory=dict)
    check: Callable[[Any], list[str]] | None = None
    long_tables: Mapping[str, Mapping[str, pa.DataType]] = field(default_factory=dict)
    styles: Mapping[str, FigureStyle] = field(default_factory=dict)
    description: str = ""
    depends: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    prepare: Callable[[list[Any], Any, Path], None] | None = None

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ValueError(f"family {self.name}: table={self.table!r}: expected one of {', '.join(TABLES)}")
        if self.long_tables and self.table != "models":
            raise ValueError(f"family {self.name}: long tables are written per model (table models) only")
        fields_ = [f.name for f in dataclasses.fields(self.config)]
        if not fields_ or fields_[0] != "enabled":
            raise ValueError(f"family {self.name}: the first field of {self.config.__name__} must be `enabled`")
        seen: dict[str, str] = {}
        for kind, cols in (
            ("metric", self.metrics),
            ("diagnostic", self.diagnostics),
            ("setting", self.setting_columns),
            ("error", {self.error_column: None}),
        ):
            for col in cols:
                if col in seen:
                    raise ValueError(f"family {self.name}: column {col!r} declared as {seen[col]} and {kind}")
                seen[col] = kind
        for col in self.styles:  # metrics, and numeric diagnostics a figure may draw on request
            if col not in self.metrics and col not in self.diagnostics:
                raise ValueError(
                    f"family {self.name}: style for {col!r}, which is not one of its metrics or diagnostics"
                )
        for col, deps in self.depends.items():
            unknown = [c for c in (col, *deps) if c not in seen]
            if unknown:
                raise ValueError(f"family {self.name}: depends names {unknown}, which are not its columns")
        _ = self.rules  # a malformed rule is refused here, when the family is declared
        # the contract checks the settings before ``compute``/``prepare`` run (once, for every family)
        object.__setattr__(self, "compute", _checked_compute(self, _unwrapped(self.compute)))
        if self.prepare is not None:
            object.__setattr__(self, "prepare", _checked_prepare(self, _unwrapped(self.prepare)))

    @property
    def error_column(self) -> str:
        return f"{self.name}.error"

    @functools.cached_property
    def setting_columns(self) -> dict[str, pa.DataType]:
        """``{<name>.<field>: type}`` for every field of ``config`` but ``enabled``."""
        hints = typing.get_type_hints(self.config)
        return {
            f"{self.name}.{f.name}": arrow_type(hints[f.name])
            for f in dataclasses.fields(self.config)
            if f.name != "enabled"
        }

    @functools.cached_property
    def columns(self) -> dict[str, pa.DataType]:
        """Every column the family fills in its table, in order: metrics, settings, diagnostics, error."""
        cols = {**self.metrics, **self.setting_columns, **self.diagnostics}
        cols[self.error_column] = pa.string()
        return cols

    def settings_values(self, settings: Any) -> dict[str, Any]:
        """The settings columns' values from a config node (lists as plain lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self.config):
            if f.name == "enabled":
                continue
            value = getattr(settings, f.name)
            if not isinstance(value, (str, bytes)) and hasattr(value, "__iter__"):
                value = list(value)
            out[f"{self.name}.{f.name}"] = value
        return out

    @functools.cached_property
    def rules(self) -> dict[str, Rule]:
        """``{field: Rule}`` of every setting that has one: its field's ``metadata["rule"]``, else its type's."""
        hints = typing.get_type_hints(self.config)
        out: dict[str, Rule] = {}
        for f in dataclasses.fields(self.config):
            if f.name == "enabled":
                continue
            r = field_rule(f, hints.get(f.name, f.type))
            if r is not None:
                out[f.name] = r
        return out

    def problems(self, settings: Any) -> list[str]:
        """Every problem of ``settings`` (a config node, an instance of ``config`` or a mapping), as
        ``"metrics.<name>.<key>=<value>: expected <what is allowed>"`` messages (empty: valid): each field
        against its rule, then, if they all pass, ``check(settings)`` (the rules that tie fields together)."""
        out = []
        for key, r in self.rules.items():
            value = _setting(settings, key)
            if value is not _ABSENT and not r.accepts(value):
                out.append(f"metrics.{self.name}.{key}={value!r}: expected {r.describe()}")
        if not out and self.check is not None:
            out.extend(self.check(settings))
        return out


_ABSENT = object()


def _setting(settings: Any, key: str) -> Any:
    """The plain value of ``key`` in a settings node (lists as lists); ``_ABSENT`` if it has none."""
    if isinstance(settings, Mapping):
        value = settings.get(key, _ABSENT)
    else:
        value = getattr(settings, key, _ABSENT)
    if (
        value is not None
        and value is not _ABSENT
        and not isinstance(value, (str, bytes))
        and hasattr(value, "__iter__")
    ):
        value = list(value)
    return value


def _unwrapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    return getattr(fn, "__wrapped__", fn) if getattr(fn, "_settings_checked", False) else fn


def _checked_compute(family: Family, compute: Callable[[Any, Any], Result]) -> Callable[[Any, Any], Result]:
    """``compute`` that first checks ``settings`` (``family.problems``): ``ValueError`` naming every problem."""

    @functools.wraps(compute)
    def checked(ctx: Any, settings: Any) -> Result:
        problems = family.problems(settings)
        if problems:
            raise ValueError("; ".join(problems))
        return compute(ctx, settings)

    checked._settings_checked = True  # type: ignore[attr-defined]
    return checked


_Prepare = Callable[[list[Any], Any, Path], None]


def _checked_prepare(family: Family, prepare: _Prepare) -> _Prepare:
    """``prepare`` that does nothing for settings ``family.problems`` refuses (each ``compute`` names them)."""

    @functools.wraps(prepare)
    def checked(contexts: list[Any], settings: Any, workdir: Path) -> None:
        if not family.problems(settings):
            prepare(contexts, settings, workdir)

    checked._settings_checked = True  # type: ignore[attr-defined]
    return checked
