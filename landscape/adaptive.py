"""Adaptive sampling of a phase diagram: which cells of a grid to measure, and the labels of the others.

Pure functions of grid indices and labels (no files, no Hydra), used by the adaptive sweeper
(``hydra/sweeper=adaptive``, :mod:`landscape.cli.adaptive`) and by ``landscape-phase`` on an adaptive sweep;
plus the reader and writer of the sweep's adaptive state (``<sweep>/adaptive/``).

The grid is the Cartesian product of the swept values (:class:`Grid`); a point is a tuple of indices, one per
axis, each axis ordered by value (numbers ascending; other values in the order given). Distances are
Euclidean, in grid steps. Rules:

* **Initial design** (:func:`initial_design`): every ``stride``-th value of each axis and its last value, so
  the corners of the grid are in it (``stride = 2``: every other value). ``stride = "auto"``
  (:func:`auto_stride`): the smallest power of two whose design takes at most half of ``max_cells``, leaving the
  other half for refinement; the corners alone when none does.
* **Inference** (:func:`infer`): an unmeasured point takes the label that a strict majority of its *nearest*
  labelled measured points carry (the measured cells with a label at the smallest distance from it, every tie:
  one, or e.g. the four corners of the square it is the centre of); where they split evenly, its label is
  unknown. Measured cells without a label (mc still moving, failed, a metric missing) give none to others.
* **Refinement** (:func:`candidates`, :func:`next_wave`), rule ``boundary``: an unmeasured point is uncertain,
  by the first of these that holds:

  1. ``split``: its nearest measured points carry different labels (it lies between measured cells of different
     phases);
  2. ``edge``: they agree, but the measured points at most one grid step farther carry different labels (a
     boundary passes near it; e.g. the interior of an odd gap between two phases);
  3. ``unresolved``: one of its nearest measured points has no label;
  4. ``low_confidence``: one of them has a label whose confidence is below ``uncertain_below``.

  Each wave takes the uncertain points in that order, coarsest first (farthest from any measured point: the
  midpoints of the largest gaps), then the most balanced (the minority's share of the labels at most one step
  farther than the nearest, weighted by inverse squared distance), then the farthest from the points already taken; a point
  closer to a point taken in the same wave than to its nearest measured point waits for the next wave (its
  question is asked anew with that answer). A wave holds at most ``wave_size`` points (default: half the
  budget left, at least one) and never more than the budget left. Rule ``labels``: reasons 1 and 2 only.
  Rule ``random`` (a baseline): uniformly random unmeasured points, seeded. The sweep stops when the budget is
  spent or no point is uncertain.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

Point = tuple[int, ...]
#: Refinement rules (``hydra.sweeper.refine``).
RULES: tuple[str, ...] = ("boundary", "labels", "random")
#: Why a point is uncertain, in the order a wave takes them (see the module docstring).
REASONS: tuple[str, ...] = ("split", "edge", "unresolved", "low_confidence")
#: The reasons each rule acts on.
RULE_REASONS: dict[str, tuple[str, ...]] = {
    "boundary": REASONS,
    "labels": ("split", "edge"),
    "random": (),
}
#: What ``landscape-phase`` writes in ``cells.csv``'s ``label_source`` column.
MEASURED, INFERRED, UNKNOWN_SOURCE = "measured", "inferred", "unmeasured"
_EPS = 1e-9


class AdaptiveError(ValueError):
    """A bad setting of the adaptive sweeper (its message names the key, the value and what is allowed)."""


# ------------------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class Axis:
    """One swept key and its values (override strings), in grid order."""

    key: str
    values: tuple[str, ...]

    @property
    def column(self) -> str:
        """The column of the rows that holds this knob: the key without ``+``/``++`` (a config group choice
        such as ``data=mnist1d``: its ``data.name``)."""
        key = self.key.lstrip("+~")
        return f"{key}.name" if "." not in key else key


@dataclass(frozen=True)
class Grid:
    """The full grid an adaptive sweep stands for: its axes (each >= 2 values) and the overrides every job
    shares (``fixed``)."""

    axes: tuple[Axis, ...]
    fixed: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a.values) for a in self.axes)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def points(self) -> list[Point]:
        """Every point, the first axis slowest."""
        return list(itertools.product(*(range(n) for n in self.shape)))

    def overrides(self, point: Point) -> list[str]:
        """The point's own overrides ``key=value``, one per axis."""
        return [f"{a.key}={a.values[i]}" for a, i in zip(self.axes, point, strict=True)]

    def describe(self, point: Point) -> str:
        """``model.width=8 train.batch_size=16``."""
        return " ".join(self.overrides(point))

    def to_dict(self) -> dict[str, Any]:
        return {"axes": [[a.key, list(a.values)] for a in self.axes], "fixed": list(self.fixed)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "Grid":
        return cls(tuple(Axis(str(k), tuple(str(v) for v in vs)) for k, vs in doc["axes"]), tuple(doc.get("fixed", ())))


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def grid_from_jobs(jobs: Sequence[Sequence[str]]) -> tuple[Grid, dict[Point, int]]:
    """The grid of a multirun's jobs (each a list of ``key=value`` overrides) and ``{point: job index}``.

    The keys taking two or more values are the axes, in the order of the overrides; an axis's values are
    sorted when all are numbers, else kept in their order of appearance. ``AdaptiveError`` when the jobs are not
    the full Cartesian product of the axes' values, or when no key takes two values."""
    values: dict[str, list[str]] = {}
    parsed = []
    for job in jobs:
        kv = {}
        for o in job:
            key, sep, value = o.partition("=")
            if not sep:
                key, value = o, ""
            kv[key] = value
            seen = values.setdefault(key, [])
            if value not in seen:
                seen.append(value)
        parsed.append(kv)
    axes = []
    for key, vs in values.items():
        if len(vs) < 2:
            continue
        nums = [_number(v) for v in vs]
        if all(n is not None for n in nums):
            vs = [v for _, v in sorted(zip(nums, vs, strict=True))]
        axes.append(Axis(key, tuple(vs)))
    if not axes:
        raise AdaptiveError(
            "hydra/sweeper=adaptive: the grid has no axis (no key takes two or more values); allowed: a grid of "
            "one or more swept keys, e.g. model.width=8,16,32 train.batch_size=16,64"
        )
    fixed = tuple(f"{k}={vs[0]}" if vs[0] or "=" in k else k for k, vs in values.items() if len(vs) == 1)
    index: dict[Point, int] = {}
    for i, kv in enumerate(parsed):
        if any(a.key not in kv for a in axes):
            raise AdaptiveError(f"hydra/sweeper=adaptive: job #{i} lacks a value of a swept key; allowed: a full grid")
        index[tuple(a.values.index(kv[a.key]) for a in axes)] = i
    grid = Grid(tuple(axes), fixed)
    if len(index) != len(parsed) or len(index) != grid.size:
        raise AdaptiveError(
            f"hydra/sweeper=adaptive: the {len(parsed)} jobs are not the full grid of {grid.size} points "
            f"({' x '.join(f'{a.key} ({len(a.values)})' for a in axes)}); allowed: a Cartesian product of values"
        )
    return grid, index


def distance(a: Point, b: Point) -> float:
    """Euclidean distance of two points, in grid steps."""
    return float(math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True))))


def neighbours(point: Point, shape: Sequence[int]) -> list[Point]:
    """The points one step away along one axis (2 per axis inside the grid, fewer on its edges), in axis order,
    the lower one first."""
    out = []
    for axis, n in enumerate(shape):
        for step in (-1, 1):
            j = point[axis] + step
            if 0 <= j < n:
                out.append(point[:axis] + (j,) + point[axis + 1 :])
    return out


# ------------------------------------------------------------------------------------ budget and design
def resolve_max_cells(value: Any, n_points: int, key: str = "hydra.sweeper.max_cells") -> int:
    """The number of cells ``max_cells`` allows: an integer count in ``[1, n_points]``, or a fraction of the grid
    in ``(0, 1]`` (a float, or a string ``"40%"``), rounded down (at least one cell). ``AdaptiveError`` naming the
    key, the value and what is allowed otherwise."""
    allowed = (
        f"allowed: a count of cells in [1, {n_points}] (the grid) or a fraction of the grid in (0, 1], e.g. 0.4 or 40%"
    )
    v: Any = value
    if isinstance(v, str):
        text = v.strip()
        try:
            v = float(text[:-1]) / 100 if text.endswith("%") else (int(text) if text.isdigit() else float(text))
        except ValueError:
            raise AdaptiveError(f"{key}={value!r}: not a number; {allowed}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise AdaptiveError(f"{key}={value!r}: not a number; {allowed}")
    if isinstance(v, int) or (isinstance(value, str) and float(v).is_integer() and v > 1):
        count = int(v)
        if not 1 <= count <= n_points:
            raise AdaptiveError(f"{key}={value!r}: {count} cells; {allowed}")
        return count
    if not 0 < v <= 1:
        raise AdaptiveError(f"{key}={value!r}: {allowed}")
    return max(1, int(math.floor(v * n_points + _EPS)))


def lattice(n: int, stride: int) -> list[int]:
    """Indices ``0, stride, 2 stride, ...`` of an axis of ``n`` values, and its last one ``n - 1``."""
    return sorted(set(range(0, n, max(1, stride))) | {n - 1})


def initial_design(shape: Sequence[int], stride: int) -> list[Point]:
    """Every ``stride``-th value of each axis and its last one (the corners included), the first axis slowest."""
    return list(itertools.product(*(lattice(n, stride) for n in shape)))


def auto_stride(shape: Sequence[int], max_cells: int) -> int:
    """The smallest power of two ``>= 2`` whose :func:`initial_design` has at most ``max_cells // 2`` points; if
    none has, the smallest whose design fits ``max_cells`` (up to the corners alone). ``AdaptiveError`` when even
    the corners do not fit."""
    top = max(2, max(shape) - 1)
    strides = []
    s = 2
    while True:
        strides.append(s)
        if s >= top:
            break
        s *= 2
    for s in strides:
        if len(initial_design(shape, s)) <= max_cells // 2:
            return s
    for s in strides:
        if len(initial_design(shape, s)) <= max_cells:
            return s
    corners = len(initial_design(shape, strides[-1]))
    raise AdaptiveError(
        f"hydra.sweeper.max_cells={max_cells} cells: fewer than the {corners} corners of the grid (the smallest "
        f"initial design); allowed: at least {corners} cells"
    )


def resolve_stride(value: Any, shape: Sequence[int], max_cells: int, key: str = "hydra.sweeper.initial_stride") -> int:
    """``auto`` (:func:`auto_stride`) or an integer >= 1 whose design fits ``max_cells`` (``AdaptiveError``
    naming the key, the value and what is allowed otherwise)."""
    if value is None or str(value).strip().lower() == "auto":
        return auto_stride(shape, max_cells)
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(str(value).strip()) < 1:
        raise AdaptiveError(f"{key}={value!r}: allowed: auto or an integer >= 1 (2: every other value of each axis)")
    stride = int(str(value).strip())
    n = len(initial_design(shape, stride))
    if n > max_cells:
        raise AdaptiveError(
            f"{key}={value!r}: its initial design has {n} cells, more than hydra.sweeper.max_cells ({max_cells} "
            f"cells); allowed: a larger stride, or auto"
        )
    return stride


def check_rule(rule: Any, key: str = "hydra.sweeper.refine") -> str:
    """``rule`` if it is one of :data:`RULES`, else ``AdaptiveError`` naming the key, the value and the rules."""
    if str(rule) not in RULES:
        raise AdaptiveError(f"{key}={rule!r}: unknown refinement rule; allowed: {', '.join(RULES)}")
    return str(rule)


def check_wave_size(value: Any, key: str = "hydra.sweeper.wave_size") -> int | None:
    """None (``auto``/null: half the budget left) or an integer >= 1."""
    if value is None or str(value).strip().lower() in ("auto", "null", "none"):
        return None
    if isinstance(value, bool) or not str(value).strip().isdigit() or int(str(value).strip()) < 1:
        raise AdaptiveError(f"{key}={value!r}: allowed: auto (half the budget left) or an integer >= 1")
    return int(str(value).strip())


# ------------------------------------------------------------------------------------ labels and inference
@dataclass(frozen=True)
class Measured:
    """The phase of a measured cell: ``label`` (None: none, ``reason`` says why) and its ``confidence``."""

    label: str | None
    confidence: float = float("nan")
    reason: str | None = None


@dataclass(frozen=True)
class Inference:
    """The label of an unmeasured point (None: unknown) from its nearest measured points ``support`` (at
    ``distance`` grid steps), and why it is unknown (``reason``)."""

    label: str | None
    support: tuple[Point, ...]
    distance: float
    reason: str | None = None


def _distances(points: Sequence[Point], measured: Sequence[Point]) -> np.ndarray:
    a = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    b = np.asarray(measured, dtype=np.float64).reshape(len(measured), -1)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))


def infer(shape: Sequence[int], measured: Mapping[Point, Measured]) -> dict[Point, Inference]:
    """The label of every unmeasured point of the grid (see the module docstring): the label a strict majority of
    its nearest labelled measured points carry, else None with the reason. All None when no measured point has a
    label."""
    pts = [p for p in itertools.product(*(range(n) for n in shape)) if p not in measured]
    labelled = {p: m.label for p, m in measured.items() if m.label is not None}
    if not labelled:
        return {p: Inference(None, (), math.inf, "no measured cell has a label") for p in pts}
    if not pts:
        return {}
    mpts = list(labelled)
    d = _distances(pts, mpts)
    out = {}
    for i, p in enumerate(pts):
        dmin = float(d[i].min())
        support = tuple(mpts[j] for j in np.nonzero(d[i] <= dmin + _EPS)[0])
        counts: dict[str, int] = {}
        for q in support:
            counts[labelled[q]] = counts.get(labelled[q], 0) + 1
        label, n = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        if 2 * n > len(support):
            out[p] = Inference(label, support, dmin)
        else:
            said = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            out[p] = Inference(None, support, dmin, f"nearest measured cells split evenly: {said}")
    return out


@dataclass(frozen=True)
class Candidate:
    """An uncertain unmeasured point: why (one of :data:`REASONS`, or ``random``/``initial``/``resume``), its
    distance to the nearest measured point, the minority's share of the labels near it (``balance``) and the
    measured points the reason rests on (``support``)."""

    point: Point
    reason: str
    distance: float = 0.0
    balance: float = 0.0
    support: tuple[Point, ...] = ()


def candidates(
    shape: Sequence[int],
    measured: Mapping[Point, Measured],
    uncertain_below: float = 0.9,
    rule: str = "boundary",
    exclude: Iterable[Point] = (),
) -> list[Candidate]:
    """Every unmeasured point (not in ``exclude``) that ``rule`` calls uncertain, with its reason (module
    docstring), in grid order."""
    check_rule(rule)
    acts_on = RULE_REASONS[rule]
    skip = set(exclude)
    pts = [p for p in itertools.product(*(range(n) for n in shape)) if p not in measured and p not in skip]
    if not pts or not measured or not acts_on:
        return []
    mpts = list(measured)
    d = _distances(pts, mpts)
    out = []
    for i, p in enumerate(pts):
        dmin = float(d[i].min())
        near = np.nonzero(d[i] <= dmin + _EPS)[0]
        ring = np.nonzero(d[i] <= dmin + 1 + _EPS)[0]
        near_labels = [measured[mpts[j]].label for j in near]
        weights: dict[str, float] = {}
        for j in ring:
            lab = measured[mpts[j]].label
            if lab is not None:
                weights[lab] = weights.get(lab, 0.0) + 1.0 / max(float(d[i, j]), _EPS) ** 2
        total = sum(weights.values())
        balance = 1.0 - max(weights.values()) / total if total > 0 else 0.0
        reason, support = None, tuple(mpts[j] for j in near)
        if len({lab for lab in near_labels if lab is not None}) > 1:
            reason = "split"
        elif len(weights) > 1:
            reason, support = "edge", tuple(mpts[j] for j in ring if measured[mpts[j]].label is not None)
        elif any(lab is None for lab in near_labels):
            reason = "unresolved"
        elif any(
            np.isfinite(measured[mpts[j]].confidence) and measured[mpts[j]].confidence < uncertain_below for j in near
        ):
            reason = "low_confidence"
        if reason is not None and reason in acts_on:
            out.append(Candidate(p, reason, dmin, balance, support))
    return out


def default_wave_size(budget_left: int) -> int:
    """Half the budget left, rounded up (at least one): later waves see the labels of earlier ones."""
    return max(1, math.ceil(budget_left / 2))


def next_wave(
    shape: Sequence[int],
    measured: Mapping[Point, Measured],
    budget_left: int,
    wave_size: int | None = None,
    uncertain_below: float = 0.9,
    rule: str = "boundary",
    seed: int = 0,
    exclude: Iterable[Point] = (),
) -> list[Candidate]:
    """The points of the next wave (module docstring), in the order they were chosen: at most
    ``min(wave_size or default_wave_size(budget_left), budget_left)``; empty when the budget is spent or nothing is
    uncertain. ``exclude``: points never to choose (launched already). ``seed``: the ``random`` rule's."""
    check_rule(rule)
    if budget_left <= 0:
        return []
    k = min(wave_size or default_wave_size(budget_left), budget_left)
    skip = set(exclude)
    if rule == "random":
        free = [p for p in itertools.product(*(range(n) for n in shape)) if p not in measured and p not in skip]
        rng = np.random.default_rng([seed, len(measured)])
        pick = rng.permutation(len(free))[:k]
        return [Candidate(free[i], "random") for i in sorted(pick)]
    cands = candidates(shape, measured, uncertain_below, rule, skip)
    rank = {r: i for i, r in enumerate(REASONS)}
    chosen: list[Candidate] = []
    left = list(cands)
    while left and len(chosen) < k:
        best, best_key = None, None
        keep = []
        for c in left:
            gap = min((distance(c.point, q.point) for q in chosen), default=math.inf)
            if gap < c.distance - _EPS:
                continue  # closer to a point of this wave than to anything measured: asked again next wave
            keep.append(c)
            key = (rank[c.reason], -round(c.distance, 9), -round(c.balance, 9), -min(gap, c.distance * 4), c.point)
            if best_key is None or key < best_key:
                best, best_key = c, key
        if best is None:
            break
        chosen.append(best)
        left = [c for c in keep if c is not best]
    return chosen


# ------------------------------------------------------------------------------------------ the map
def complete_map(
    shape: Sequence[int], measured: Mapping[Point, Measured]
) -> dict[Point, tuple[str, str | None, str | None]]:
    """Every point's ``(source, label, reason)``: ``measured`` points as measured; the others ``inferred`` with
    their :func:`infer` label, or ``unmeasured`` (label None) where the rule gives none, with its reason."""
    out: dict[Point, tuple[str, str | None, str | None]] = {
        p: (MEASURED, m.label, m.reason) for p, m in measured.items()
    }
    for p, inf in infer(shape, measured).items():
        out[p] = (INFERRED, inf.label, None) if inf.label is not None else (UNKNOWN_SOURCE, None, inf.reason)
    return out


def agreement(
    labels: Mapping[Point, str | None], truth: Mapping[Point, str | None], points: Iterable[Point] | None = None
) -> float:
    """Share of ``points`` (default: every point of ``truth``) whose label equals ``truth``'s (None equals None:
    a point both leave unlabelled agrees)."""
    pts = list(truth) if points is None else list(points)
    if not pts:
        return float("nan")
    return float(np.mean([labels.get(p) == truth.get(p) for p in pts]))


def simulate(
    grid_shape: Sequence[int],
    truth: Mapping[Point, Measured],
    max_cells: int,
    stride: int | None = None,
    rule: str = "boundary",
    wave_size: int | None = None,
    uncertain_below: float = 0.9,
    seed: int = 0,
) -> tuple[list[list[Candidate]], dict[Point, Measured]]:
    """The adaptive sweep on a grid whose every label is known (``truth``: a measured cell's label is what
    measuring it gives): ``(waves, measured)``. The initial design is wave 0 (``stride`` None: ``auto``). For
    tests and benchmarks of the rules; the sweeper takes the same steps with real cells."""
    stride = auto_stride(grid_shape, max_cells) if stride is None else stride
    design = initial_design(grid_shape, stride)[:max_cells]
    waves = [[Candidate(p, "initial") for p in design]]
    measured = {p: truth[p] for p in design}
    while len(measured) < max_cells:
        wave = next_wave(grid_shape, measured, max_cells - len(measured), wave_size, uncertain_below, rule, seed)
        if not wave:
            break
        waves.append(wave)
        measured.update({c.point: truth[c.point] for c in wave})
    return waves, measured


# ------------------------------------------------------------------------------------------ the state
#: The adaptive sweeper's directory under the sweep directory, its append-only log of launches, waves and
#: labels (JSON lines), its readable log and the figure of the order of measurement.
STATE_DIR, STATE_FILE, DECISIONS_FILE, ORDER_FIGURE = "adaptive", "waves.jsonl", "decisions.log", "order"


def state_dir(sweep: str | Path) -> Path:
    """``<sweep>/adaptive``: the adaptive sweeper's state (``waves.jsonl``, ``decisions.log``, ``order.png``)."""
    return Path(sweep) / STATE_DIR


def state_path(sweep: str | Path) -> Path:
    """``<sweep>/adaptive/waves.jsonl``."""
    return state_dir(sweep) / STATE_FILE


def decisions_path(sweep: str | Path) -> Path:
    """``<sweep>/adaptive/decisions.log``."""
    return state_dir(sweep) / DECISIONS_FILE


def append_records(sweep: str | Path, records: Sequence[Mapping[str, Any]], text: Sequence[str] = ()) -> None:
    """Append ``records`` (one JSON line each, with the time) to ``waves.jsonl`` and ``text`` to
    ``decisions.log``, each flushed to disk: the files only grow, so nothing written is ever lost."""
    state_dir(sweep).mkdir(parents=True, exist_ok=True)
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    for path, lines in (
        (state_path(sweep), [json.dumps({"time": now, **r}, default=str) for r in records]),
        (decisions_path(sweep), list(text)),
    ):
        if not lines:
            continue
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())


@dataclass
class State:
    """What ``waves.jsonl`` says: the grid of the last launch and its settings, every wave in order (``wave``,
    ``cells``: each with ``point``, ``cell_id``, ``overrides``, ``reason``, ``detail``), the labels after each wave
    and the ends of the launches (why each stopped)."""

    grid: Grid | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    cell_ids: dict[Point, str] = field(default_factory=dict)
    waves: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)

    def chosen(self) -> dict[str, int]:
        """``{cell_id: wave number}`` of every cell a wave chose (the first wave that did), whatever the grid of
        the launch (a grid extended by a later launch keeps its cells' waves)."""
        out: dict[str, int] = {}
        for w in self.waves:
            for c in w.get("cells", []):
                out.setdefault(str(c["cell_id"]), int(w["wave"]))
        return out

    def next_wave_number(self) -> int:
        return 1 + max((int(w["wave"]) for w in self.waves), default=-1)


def read_state(sweep: str | Path) -> State | None:
    """The adaptive state of a sweep directory, or None if it is not an adaptive sweep. A line that is not JSON
    (a write cut short) is skipped with a warning."""
    path = state_path(sweep)
    if not path.is_file():
        return None
    st = State()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            log.warning("%s:%d: not a JSON line (a write cut short?); skipped", path, n)
            continue
        kind = rec.get("kind")
        if kind == "launch":
            st.grid, st.settings = Grid.from_dict(rec["grid"]), dict(rec.get("settings", {}))
            st.cell_ids = {tuple(int(i) for i in k.split(",")): v for k, v in rec.get("cell_ids", {}).items()}
        elif kind == "wave":
            st.waves.append(rec)
        elif kind == "labels":
            st.labels.append(rec)
        elif kind == "end":
            st.ends.append(rec)
    return st


def point_key(point: Point) -> str:
    """A point as a JSON object key: ``"2,0,1"``."""
    return ",".join(str(i) for i in point)


# ------------------------------------------------------------------------------------------ cell tables
def value_key(value: Any) -> str:
    """A knob value as text that compares equal however it was stored (``8``, ``8.0``, ``"8"``)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    v = _number(str(value)) if not isinstance(value, (int, float, np.number)) else float(value)
    return f"{v:.12g}" if v is not None and math.isfinite(v) else str(value)


def parse_axis_value(text: str) -> Any:
    """An override value as the rows hold it: an int, a float, or the text."""
    try:
        return int(text)
    except ValueError:
        v = _number(text)
        return v if v is not None else text


def points_of(grid: Grid, frame: Any) -> list[Point | None]:
    """The grid point of each row of ``frame`` (a DataFrame with one column per axis, ``Axis.column``), None for a
    row whose values are not those of a point of ``grid``."""
    lookup = [{value_key(parse_axis_value(v)): i for i, v in enumerate(a.values)} for a in grid.axes]
    cols = [frame[a.column].tolist() for a in grid.axes]
    out: list[Point | None] = []
    for vals in zip(*cols, strict=True) if cols else ():
        idx = [lk.get(value_key(v)) for lk, v in zip(lookup, vals, strict=True)]
        out.append(None if any(i is None for i in idx) else tuple(int(i) for i in idx))
    return out


#: States of a cell row (``landscape.phase.aggregate_cells``'s ``status``, or a placeholder's) that mean measured.
MEASURED_STATES: tuple[str, ...] = ("done", "diverged", "failed")


def measured_from_cells(grid: Grid, cells: Any) -> dict[Point, Measured]:
    """The measured points of ``cells`` (labelled cell rows: ``phase``, ``phase_confidence``, ``phase_reason``,
    ``status``): every row of a point of ``grid`` whose status is one of :data:`MEASURED_STATES`; a row without a
    label gets the reason it has none (``phase_reason``, else its status, else ``no label``)."""
    out: dict[Point, Measured] = {}
    for p, (_, r) in zip(points_of(grid, cells), cells.iterrows(), strict=True):
        status = str(r.get("status", "done"))
        if p is None or status not in MEASURED_STATES:
            continue
        lab = r.get("phase")
        lab = lab if isinstance(lab, str) else None
        conf = r.get("phase_confidence", float("nan"))
        conf = float(conf) if conf is not None and not (isinstance(conf, float) and math.isnan(conf)) else float("nan")
        why = r.get("phase_reason")
        reason = None if lab else (why if isinstance(why, str) else (status if status != "done" else "no label"))
        out[p] = Measured(lab, conf, reason)
    return out


def complete_cells(grid: Grid, cells: Any, filters: Mapping[str, Sequence[Any]] | None = None) -> Any:
    """``cells`` (labelled cell rows of ``landscape-phase``, one column per axis of ``grid``) with every point of
    the grid: a ``label_source`` column (``measured``; ``inferred``: labelled by :func:`infer`; ``unmeasured``:
    no label, ``phase_reason`` says why) and ``phase_support`` (for an inferred point: how many of its nearest
    labelled measured cells, at what distance, carry its label). Points without a row get one (``status``
    ``missing``, no values); rows of a point launched but not finished (placeholders) get the inferred label.
    ``filters`` (``{column: values}``): points whose axis values they refuse are left out."""
    import pandas as pd

    measured = measured_from_cells(grid, cells)
    inferred = infer(grid.shape, measured)
    pts = points_of(grid, cells)
    out = cells.copy()
    source, support = [], []
    phase = out["phase"].astype(object).tolist() if "phase" in out.columns else [None] * len(out)
    reasons = out["phase_reason"].astype(object).tolist() if "phase_reason" in out.columns else [None] * len(out)
    for i, p in enumerate(pts):
        if p is None or p in measured:
            source.append(MEASURED)
            support.append(None)
            continue
        inf = inferred[p]
        phase[i], reasons[i] = inf.label, inf.reason
        source.append(INFERRED if inf.label is not None else UNKNOWN_SOURCE)
        support.append(_support_text(inf))
    out["phase"], out["phase_reason"] = phase, reasons
    out["label_source"], out["phase_support"] = source, support
    have = {p for p in pts if p is not None}
    allowed = {k: {value_key(v) for v in vs} for k, vs in (filters or {}).items() if k in {a.column for a in grid.axes}}
    new = []
    for p, inf in inferred.items():
        if p in have:
            continue
        values = {a.column: parse_axis_value(a.values[i]) for a, i in zip(grid.axes, p, strict=True)}
        if any(value_key(values[k]) not in ok for k, ok in allowed.items()):
            continue
        new.append(
            {
                **values,
                "status": "missing",
                "n_rows": 0,
                "n_done": 0,
                "phase": inf.label,
                "phase_reason": inf.reason,
                "label_source": INFERRED if inf.label is not None else UNKNOWN_SOURCE,
                "phase_support": _support_text(inf),
            }
        )
    if new:
        out = pd.concat([out, pd.DataFrame(new)], ignore_index=True)
        for c in ("n_rows", "n_done", "n_pairs"):
            if c in out.columns:
                out[c] = out[c].fillna(0).astype("int64")
        for c in ("uncertain", "few_pairs"):
            if c in out.columns:
                out[c] = out[c].astype("boolean").fillna(False).astype(bool)
    return out


def _support_text(inf: Inference) -> str | None:
    if not inf.support:
        return None
    return f"{len(inf.support)} nearest labelled measured cell(s) at {inf.distance:.3g} steps"
