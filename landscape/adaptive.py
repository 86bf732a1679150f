"""Adaptive sampling of a phase diagram: which cells of a grid to measure, and the labels of the others.

Pure functions of grid indices and labels (no files, no Hydra), used by the adaptive sweeper
(``hydra/sweeper=adaptive``, :mod:`landscape.cli.adaptive`) and by ``landscape-phase`` on an adaptive sweep;
plus the reader and writer of the sweep's adaptive state (``<sweep>/adaptive/``).

The grid is the Cartesian product of the swept values (:class:`Grid`); a point is a tuple of indices, one per
axis, each axis ordered by value (numbers ascending; other values in the order given). Distances are
Euclidean, in grid steps. Rules:

* **Initial design** (:func:`design`): ``stride = "auto"`` (:func:`auto_design`): ``k`` values of each axis
  spread evenly over it, both ends included (:func:`spaced`), the counts ``k`` (at least 2 per axis) giving the
  most points that fit half of ``max_cells`` (at least the corners), then the most even spacing in grid steps
  (:func:`spaced_counts`): the other half is left for refinement. An integer ``stride``
  (:func:`initial_design`): every ``stride``-th value of each axis and its last value (2: every other value).
* **Inference** (:func:`infer`), given the phase rule that labels the cells (``phase_rule``, a
  :class:`landscape.phase.PhaseRule`): the label is a threshold rule on smooth per-cell values (the fit column:
  training loss or error; mode connectivity ``mc``; CKA), so each of the rule's columns is interpolated at an
  unmeasured point (:func:`interpolate`: the measured points with a finite value at most ``RING`` = 1 grid step
  farther than the nearest such point, weighted by inverse distance, power ``POWER`` = 1: on a line between two
  measured cells at most 3 steps apart, linear interpolation; the fit column on the log scale), and the rule is applied to the
  interpolated values: the boundary falls where the fields cross their thresholds. Where that decides nothing (a
  value missing, e.g. no CKA near it), or without ``phase_rule``, the point takes the label a majority of its
  nearest labelled measured points carry; an even split goes to the label whose cells' confidences sum highest,
  then to the first in alphabetical order. A point is unknown only when no measured cell has a label or value.
* **Refinement** (:func:`candidates`, :func:`next_wave`), rule ``boundary``: an unmeasured point is uncertain,
  by the first of these that holds:

  1. ``split``: its nearest measured points carry different labels (it lies between measured cells of different
     phases);
  2. ``edge``: they agree, but the measured points at most one grid step farther carry different labels, or (with
     ``phase_rule``) a neighbouring point (one step along one axis, measured or inferred) has another label
     than its inferred one (a boundary passes near it);
  3. ``unresolved``: one of its nearest measured points has no label;
  4. ``low_confidence``: one of them has a label whose confidence is below ``uncertain_below``.

  Each wave takes the uncertain points in that order, coarsest first (farthest from any measured point: the
  midpoints of the largest gaps), then the closest to a boundary (``balance``: with ``phase_rule``,
  ``exp(-margin)``, the margin being the distance of its interpolated values to the nearest threshold on the
  rule's path, in units of each value's spread over the measured cells; without it, the minority's share of the
  labels at most one step farther than the nearest, weighted by inverse squared distance), then the farthest from
  the points already taken; a point closer to a point taken in the same wave than to its nearest measured point
  waits for the next wave (its question is asked anew with that answer). A wave holds at most ``wave_size``
  points (default: half the budget left, at least one) and never more than the budget left. Rule ``labels``:
  reasons 1 and 2 only. Rule ``random`` (a baseline): uniformly random unmeasured points, seeded. The sweep stops
  when the budget is spent or no point is uncertain.

The rule was tuned (interpolation ring and power, design share, order of a wave) by replay on full grids other
than the benchmark grids of ``benchmarks/adaptive.py`` (digits MLP width x label noise, MNIST-1D width x batch
size, MNIST-1D width x label noise; 12 to 24 cells each).
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


def spaced(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over an axis of ``n`` values, both ends included (``round(i (n-1)/(k-1))``,
    halves up): ``spaced(8, 3) == [0, 4, 7]``, ``spaced(6, 3) == [0, 3, 5]``."""
    k = max(1, min(k, n))
    if k == 1:
        return [0]
    return sorted({int(math.floor(i * (n - 1) / (k - 1) + 0.5)) for i in range(k)})


def spaced_counts(shape: Sequence[int], cells: int) -> tuple[int, ...]:
    """The number of values per axis of the largest evenly spread design of at most ``cells`` points (each axis at
    least 2 values, at most all): the most points, then the most even spacing (the smallest ratio of the widest
    to the narrowest gap, in grid steps), then the finest spacing along the first axes."""
    ranges = [range(2, n + 1) for n in shape]
    best, best_key = tuple(2 for _ in shape), None
    for ks in itertools.product(*ranges):
        size = math.prod(ks)
        if size > cells:
            continue
        gaps = [(n - 1) / (k - 1) for n, k in zip(shape, ks, strict=True)]
        key = (-size, round(max(gaps) / min(gaps), 9), tuple(-k for k in ks))
        if best_key is None or key < best_key:
            best, best_key = ks, key
    return best


def auto_design(shape: Sequence[int], max_cells: int) -> list[Point]:
    """The ``auto`` initial design: :func:`spaced_counts` values of each axis, at most half of ``max_cells`` (at
    least the corners), spread evenly (:func:`spaced`), the first axis slowest. ``AdaptiveError`` when even the
    corners do not fit ``max_cells``."""
    corners = 2 ** len(shape)
    if max_cells < corners:
        raise AdaptiveError(
            f"hydra.sweeper.max_cells={max_cells} cells: fewer than the {corners} corners of the grid (the smallest "
            f"initial design); allowed: at least {corners} cells"
        )
    ks = spaced_counts(shape, max(corners, max_cells // 2))
    return list(itertools.product(*(spaced(n, k) for n, k in zip(shape, ks, strict=True))))


def design(shape: Sequence[int], max_cells: int, stride: int | None = None) -> list[Point]:
    """The initial design: :func:`auto_design` (``stride`` None) or :func:`initial_design`."""
    return auto_design(shape, max_cells) if stride is None else initial_design(shape, stride)


def resolve_stride(
    value: Any, shape: Sequence[int], max_cells: int, key: str = "hydra.sweeper.initial_stride"
) -> int | None:
    """None for ``auto`` (:func:`auto_design`, checked to fit ``max_cells``), or an integer >= 1 whose design fits
    ``max_cells`` (``AdaptiveError`` naming the key, the value and what is allowed otherwise)."""
    if value is None or str(value).strip().lower() == "auto":
        auto_design(shape, max_cells)
        return None
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
    """The phase of a measured cell: ``label`` (None: none, ``reason`` says why), its ``confidence`` and its
    ``values`` of the phase rule's columns (``{column: mean}``, for :func:`interpolate`)."""

    label: str | None
    confidence: float = float("nan")
    reason: str | None = None
    values: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Inference:
    """The label of an unmeasured point (None: unknown) from the measured points ``support`` (the nearest at
    ``distance`` grid steps), why it is unknown (``reason``), and the interpolated values the phase rule labelled
    (``values``; None when the label came from the measured labels)."""

    label: str | None
    support: tuple[Point, ...]
    distance: float
    reason: str | None = None
    values: Mapping[str, float] | None = None


def _distances(points: Sequence[Point], measured: Sequence[Point]) -> np.ndarray:
    a = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    b = np.asarray(measured, dtype=np.float64).reshape(len(measured), -1)
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))


def _field_scale(rule: Any, column: str) -> tuple[bool, float]:
    """``(log, floor)``: whether ``column`` is interpolated on the log scale (the fit column: training loss or
    error spans decades) and the floor its values are clipped to first."""
    if column != rule.fit_column:
        return False, 0.0
    return True, (1e-2 if getattr(rule, "train_error", None) is not None else 1e-6)


def interpolate(
    shape: Sequence[int], measured: Mapping[Point, Measured], columns: Sequence[str], rule: Any = None
) -> dict[Point, dict[str, float]]:
    """Each unmeasured point's value of each of ``columns``: the mean of the measured values at the measured
    points with a finite value nearest to it (distance at most the nearest one's + ``RING`` grid steps), weighted
    by inverse distance (power ``POWER``); the fit column of ``rule`` on the log scale. NaN where no measured point
    has a finite value."""
    pts = [p for p in itertools.product(*(range(n) for n in shape)) if p not in measured]
    out: dict[Point, dict[str, float]] = {p: {} for p in pts}
    if not pts:
        return out
    for c in columns:
        have = {q: float(m.values[c]) for q, m in measured.items() if c in m.values and np.isfinite(m.values[c])}
        if not have:
            for p in pts:
                out[p][c] = float("nan")
            continue
        log_scale, floor = _field_scale(rule, c) if rule is not None else (False, 0.0)
        mpts = list(have)
        v = np.array([have[q] for q in mpts])
        if log_scale:
            v = np.log10(np.maximum(v, floor))
        d = _distances(pts, mpts)
        for i, p in enumerate(pts):
            dmin = float(d[i].min())
            near = d[i] <= dmin + RING + _EPS
            w = 1.0 / np.maximum(d[i][near], _EPS) ** POWER
            x = float((w * v[near]).sum() / w.sum())
            out[p][c] = float(10**x) if log_scale else x
    return out


#: Interpolation of the fields (:func:`interpolate`): the measured points within ``RING`` grid steps of the nearest
#: one take part, weighted by inverse distance to the power ``POWER`` (1: linear between two points on a line at
#: most 3 steps apart; farther apart, a point of the gap mixes both ends only when its distances to them differ by
#: at most one step, and takes the nearer end's value otherwise).
RING, POWER = 1.0, 1.0


def _label_vote(p: Point, d: np.ndarray, mpts: Sequence[Point], measured: Mapping[Point, Measured]) -> Inference:
    """The label a strict majority of the nearest labelled measured points carry; an even split goes to the label
    whose cells' confidences sum highest (unknown confidence: 0.5), then to the first in alphabetical order."""
    dmin = float(d.min())
    support = tuple(mpts[j] for j in np.nonzero(d <= dmin + _EPS)[0])
    counts: dict[str, float] = {}
    trust: dict[str, float] = {}
    for q in support:
        lab = str(measured[q].label)
        counts[lab] = counts.get(lab, 0) + 1
        conf = measured[q].confidence
        trust[lab] = trust.get(lab, 0.0) + (conf if np.isfinite(conf) else 0.5)
    label = sorted(counts, key=lambda k: (-counts[k], -trust[k], k))[0]
    return Inference(label, support, dmin)


def infer(shape: Sequence[int], measured: Mapping[Point, Measured], phase_rule: Any = None) -> dict[Point, Inference]:
    """The label of every unmeasured point of the grid (see the module docstring). With ``phase_rule`` (a
    :class:`landscape.phase.PhaseRule`): the rule applied to the point's :func:`interpolate`-d values of its
    columns; where that decides nothing (a value missing), or without ``phase_rule``, the label of the nearest labelled
    measured points (:func:`_label_vote`). None only when no measured point has a label or a value."""
    pts = [p for p in itertools.product(*(range(n) for n in shape)) if p not in measured]
    if not pts:
        return {}
    labelled = {p: m.label for p, m in measured.items() if m.label is not None}
    fields = interpolate(shape, measured, phase_rule.columns, phase_rule) if phase_rule is not None else {}
    mpts = list(labelled)
    d = _distances(pts, mpts) if mpts else None
    out = {}
    for i, p in enumerate(pts):
        if phase_rule is not None:
            vals = fields[p]
            lab = phase_rule.label(*(vals[c] for c in phase_rule.columns))
            if lab is not None:
                used = [
                    q
                    for q, m in measured.items()
                    if any(np.isfinite(m.values.get(c, np.nan)) for c in phase_rule.columns)
                ]
                dist = min(distance(p, q) for q in used)
                support = tuple(q for q in used if distance(p, q) <= dist + RING + _EPS)
                out[p] = Inference(lab, support, dist, values=dict(vals))
                continue
        if d is None:
            out[p] = Inference(None, (), math.inf, "no measured cell has a label")
            continue
        out[p] = _label_vote(p, d[i], mpts, measured)
    return out


@dataclass(frozen=True)
class Candidate:
    """An uncertain unmeasured point: why (one of :data:`REASONS`, or ``random``/``initial``/``resume``), its
    distance to the nearest measured point, how close it is to a boundary (``balance``, in [0, 1]: see the module
    docstring) and the measured points the reason rests on (``support``)."""

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
    phase_rule: Any = None,
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
    inferred = infer(shape, measured, phase_rule) if phase_rule is not None else {}
    margins = _margins(measured, inferred, phase_rule) if phase_rule is not None else {}
    label_of = {**{q: m.label for q, m in measured.items()}, **{q: inf.label for q, inf in inferred.items()}}
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
        elif phase_rule is not None and any(
            label_of.get(q) is not None and label_of.get(q) != label_of.get(p) for q in neighbours(p, shape)
        ):
            reason = "edge"
        elif any(lab is None for lab in near_labels):
            reason = "unresolved"
        elif any(
            np.isfinite(measured[mpts[j]].confidence) and measured[mpts[j]].confidence < uncertain_below for j in near
        ):
            reason = "low_confidence"
        if phase_rule is not None and p in margins:
            balance = math.exp(-margins[p])
        if reason is not None and reason in acts_on:
            out.append(Candidate(p, reason, dmin, balance, support))
    return out


def _margins(
    measured: Mapping[Point, Measured], inferred: Mapping[Point, Inference], phase_rule: Any
) -> dict[Point, float]:
    """Each inferred point's distance to the nearest threshold of the phase rule, over its interpolated values,
    in units of each value's spread over the measured cells (standard deviation; the fit column on the log
    scale): small near a boundary."""
    fit_c, mc_c, cka_c = phase_rule.columns
    log_fit, floor = _field_scale(phase_rule, fit_c)

    def tr(c: str, v: float) -> float:
        return float(np.log10(max(v, floor))) if c == fit_c and log_fit else float(v)

    spread = {}
    for c in (fit_c, mc_c, cka_c):
        xs = [tr(c, m.values[c]) for m in measured.values() if np.isfinite(m.values.get(c, np.nan))]
        spread[c] = float(np.std(xs)) if len(xs) >= 2 and np.std(xs) > 0 else 1.0
    fit_t = tr(fit_c, phase_rule.fit_threshold)
    out = {}
    for p, inf in inferred.items():
        v = inf.values or {}
        f, mc, ck = (v.get(c, float("nan")) for c in (fit_c, mc_c, cka_c))
        if not (np.isfinite(f) and np.isfinite(mc)):
            continue
        f = tr(fit_c, f)
        gaps = [abs(f - fit_t) / spread[fit_c]]
        gaps.append(abs(mc - (phase_rule.mc_underfit if f > fit_t else phase_rule.mc_barrier)) / spread[mc_c])
        if f <= fit_t and mc >= phase_rule.mc_barrier and np.isfinite(ck):
            gaps.append(abs(ck - phase_rule.cka) / spread[cka_c])
        out[p] = min(gaps)
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
    phase_rule: Any = None,
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
    cands = candidates(shape, measured, uncertain_below, rule, skip, phase_rule)
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
    shape: Sequence[int], measured: Mapping[Point, Measured], phase_rule: Any = None
) -> dict[Point, tuple[str, str | None, str | None]]:
    """Every point's ``(source, label, reason)``: ``measured`` points as measured; the others ``inferred`` with
    their :func:`infer` label, or ``unmeasured`` (label None) where the rule gives none, with its reason."""
    out: dict[Point, tuple[str, str | None, str | None]] = {
        p: (MEASURED, m.label, m.reason) for p, m in measured.items()
    }
    for p, inf in infer(shape, measured, phase_rule).items():
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
    phase_rule: Any = None,
) -> tuple[list[list[Candidate]], dict[Point, Measured]]:
    """The adaptive sweep on a grid whose every label is known (``truth``: a measured cell's label is what
    measuring it gives): ``(waves, measured)``. The initial design is wave 0 (``stride`` None: ``auto``). For
    tests and benchmarks of the rules; the sweeper takes the same steps with real cells."""
    first = design(grid_shape, max_cells, stride)[:max_cells]
    waves = [[Candidate(p, "initial") for p in first]]
    measured = {p: truth[p] for p in first}
    while len(measured) < max_cells:
        wave = next_wave(
            grid_shape, measured, max_cells - len(measured), wave_size, uncertain_below, rule, seed, (), phase_rule
        )
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


#: The cell columns whose values :func:`measured_from_cells` keeps (the phase rule's default columns).
FIELD_COLUMNS: tuple[str, ...] = ("train_loss", "train_error", "connectivity.mc", "cka")


def measured_from_cells(grid: Grid, cells: Any, columns: Sequence[str] | None = None) -> dict[Point, Measured]:
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
        values = {}
        for c in FIELD_COLUMNS if columns is None else columns:
            v = _number(str(r.get(c))) if c in r.index else None
            if v is not None:
                values[c] = v
        out[p] = Measured(lab, conf, reason, values)
    return out


def complete_cells(
    grid: Grid, cells: Any, filters: Mapping[str, Sequence[Any]] | None = None, phase_rule: Any = None
) -> Any:
    """``cells`` (labelled cell rows of ``landscape-phase``, one column per axis of ``grid``) with every point of
    the grid: a ``label_source`` column (``measured``; ``inferred``: labelled by :func:`infer`; ``unmeasured``:
    no label, ``phase_reason`` says why) and ``phase_support`` (for an inferred point: the measured cells its
    label comes from and how far the nearest is). Points without a row get one (``status``
    ``missing``, no values); rows of a point launched but not finished (placeholders) get the inferred label.
    ``filters`` (``{column: values}``): points whose axis values they refuse are left out. ``phase_rule`` (the
    rule that labelled ``cells``): inferred from the measured cells' values of its columns (:func:`infer`);
    without it, from their labels alone."""
    import pandas as pd

    measured = measured_from_cells(grid, cells, phase_rule.columns if phase_rule is not None else None)
    inferred = infer(grid.shape, measured, phase_rule)
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
    return out.copy()  # one block per dtype: the columns set one by one above fragment the frame


def _support_text(inf: Inference) -> str | None:
    if not inf.support:
        return None
    if inf.values is not None:
        return f"phase rule on values interpolated from {len(inf.support)} measured cell(s), nearest {inf.distance:.3g} steps"
    return f"{len(inf.support)} nearest labelled measured cell(s) at {inf.distance:.3g} steps"
