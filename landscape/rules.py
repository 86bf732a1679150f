"""Value rules of config keys: what one leaf key accepts, and how to say so.

A :class:`Rule` is an integer or finite-number range (either end open, closed or absent), a choice among
values, or a string pattern; optionally nullable, optionally a list of such values. The root config's keys
(``data``, ``model``, ``train``, ...) have theirs in ``landscape.config.VALUE_RULES``; a metric family's
settings carry theirs as metadata of their ``Config`` fields (:func:`rule`), checked by the metrics contract
(``landscape.metrics.Family.problems``). A field without one gets its type's (:func:`default_rule`: integers in
0 .. 2**63-1, finite numbers). Imports nothing of the package (and no torch).
"""

from __future__ import annotations

import collections.abc
import math
import re
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional

INT64_MAX = 2**63 - 1
"""Largest integer a key may hold (seeds, counts): what torch, numpy and Arrow's int64 columns hold."""
FLOAT32_MAX = 3.4028234663852886e38
"""Largest magnitude of a number that enters float32 arithmetic (learning rates, weight decay, data scales)."""

KINDS = ("int", "num", "choice", "text")


@dataclass(frozen=True)
class Rule:
    """The values a leaf key accepts. ``kind``: ``int`` (an integer) or ``num`` (a finite number) within
    ``lo``..``hi`` (``lo_open``/``hi_open``: that end excluded; None: unbounded); ``choice``: one of
    ``choices`` (a tuple, or a function returning one, for lists kept in a module that imports torch, read only
    when a value is checked); ``text``: a string matching ``pattern`` (whole), described by ``note``.
    ``items``: the key holds a list of such values, at least ``min_items`` of them; ``null``: None is allowed;
    ``also``: other allowed values (e.g. ``"full"``, or ``0`` beside a range); ``note``: said after what is
    allowed."""

    kind: str = "int"
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    items: bool = False
    min_items: int = 0
    null: bool = False
    also: tuple[Any, ...] = ()
    note: str = ""
    choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]] = ()
    pattern: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Rule(kind={self.kind!r}): expected one of {', '.join(KINDS)}")

    def allowed(self) -> tuple[Any, ...]:
        """The choices of a ``choice`` rule (its function called)."""
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (a plain value; a list for ``items``; OmegaConf lists too) is allowed."""
        if value is None:
            return self.null
        if self.items:
            if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Sequence):
                return False
            return len(value) >= self.min_items and all(self._scalar_ok(x) for x in value)
        return self._scalar_ok(value)

    def _scalar_ok(self, v: Any) -> bool:
        if any(type(v) is type(a) and v == a for a in self.also):
            return True
        if self.kind == "choice":
            return any(type(v) is type(c) and v == c for c in self.allowed())
        if self.kind == "text":
            return isinstance(v, str) and re.fullmatch(self.pattern, v) is not None
        if self.kind == "int":
            if not _is_int(v):
                return False
        elif not (_is_number(v) and math.isfinite(v)):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))

    def describe(self) -> str:
        """What is allowed, in words (e.g. ``an integer >= 1, at most 2**63-1``, ``a finite number in [0, 1)``,
        ``one of line, random``)."""
        note = self.note
        if self.kind == "choice":
            text = f"one of {', '.join(str(c) for c in self.allowed())}"
        elif self.kind == "text":
            text, note = note or f"a string matching {self.pattern!r}", ""
        else:
            text = self._range_words()
        if self.items:
            text = f"a list of {f'at least {self.min_items} ' if self.min_items else ''}items, each {text}"
        if self.also:
            text += "".join(f" or {a!r}" for a in self.also)
        if self.null:
            text = "null or " + text
        return text + (f" ({note})" if note else "")

    def _range_words(self) -> str:
        what = "an integer" if self.kind == "int" else "a finite number"
        lo, hi = self.lo, self.hi
        cap = (self.kind == "int" and hi == INT64_MAX) or (self.kind == "num" and hi == FLOAT32_MAX)
        if cap:
            hi = None
        if lo is not None and hi is not None:
            rng = f"in {'(' if self.lo_open else '['}{lo:g}, {hi:g}{')' if self.hi_open else ']'}"
        elif lo is not None:
            rng = f"{'>' if self.lo_open else '>='} {lo:g}"
        elif hi is not None:
            rng = f"{'<' if self.hi_open else '<='} {hi:g}"
        else:
            rng = ""
        text = f"{what} {rng}".strip()
        if cap:
            text += ", at most 2**63-1" if self.kind == "int" else ", at most 3.4e38 (float32)"
        return text


def ints(lo: int = 0, hi: int = INT64_MAX, **kw: Any) -> Rule:
    """An integer in ``[lo, hi]`` (64-bit by default)."""
    return Rule("int", lo, hi, **kw)


def nums(lo: float | None = None, hi: float | None = FLOAT32_MAX, **kw: Any) -> Rule:
    """A finite number in ``[lo, hi]`` (``lo_open``/``hi_open`` exclude an end; float32's range by default)."""
    return Rule("num", lo, hi, **kw)


def one_of(choices: tuple[Any, ...] | Callable[[], tuple[Any, ...]], **kw: Any) -> Rule:
    """One of ``choices`` (or of what a function returns, read when a value is checked)."""
    return Rule("choice", choices=choices, **kw)


def choices_of(module: str, name: str, first: tuple[Any, ...] = ()) -> Callable[[], tuple[Any, ...]]:
    """The choices ``first + module.name`` as a function for :func:`one_of`, imported when a value is checked
    (for lists kept beside the math, in modules that import torch)."""

    def choices() -> tuple[Any, ...]:
        import importlib

        return (*first, *getattr(importlib.import_module(module), name))

    choices.__qualname__ = f"choices_of({module}.{name})"
    return choices


def text(pattern: str, what: str, **kw: Any) -> Rule:
    """A string matching ``pattern`` (the whole string), described as ``what``."""
    return Rule("text", pattern=pattern, note=what, **kw)


def rule(r: Rule, **metadata: Any) -> dict[str, Any]:
    """Field metadata carrying a rule: ``field(default=..., metadata=rule(ints(1)))``."""
    return {**metadata, "rule": r}


FRACTION = nums(0.0, 1.0, hi_open=True)
"""A number in [0, 1): label noise, momentum."""
SEED = ints(0)
"""Every seed: numpy, torch and the seed-derivation hashes take 0 .. 2**63-1."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def resolve_annotation(annotation: Any) -> Any:
    """A field annotation as a type (string annotations as written under ``from __future__ import annotations``)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Any": Any, "Optional": Optional, "list": list})
    return annotation


def default_rule(annotation: Any) -> Rule | None:
    """The rule a key's type implies: integers 0 .. 2**63-1 (counts and seeds), finite numbers, lists of such,
    nullable where ``Optional``; None for strings, booleans and ``Any`` (choices, checked by their rules or by
    ``landscape.config.validate``)."""
    annotation = resolve_annotation(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    null = typing.get_origin(annotation) is typing.Union and len(args) == 1
    if null:
        annotation = args[0]
    items = typing.get_origin(annotation) is list
    if items:
        annotation = typing.get_args(annotation)[0]
    if annotation is int:
        return ints(0, null=null, items=items)
    if annotation is float:
        return nums(None, None, null=null, items=items)
    return None


def field_rule(f: Any, annotation: Any) -> Rule | None:
    """The rule of a dataclass field: its ``metadata["rule"]``, else its type's (:func:`default_rule`)."""
    declared = f.metadata.get("rule")
    if declared is not None:
        if not isinstance(declared, Rule):
            raise TypeError(f"field {f.name}: metadata['rule'] is {declared!r}, expected a landscape.rules.Rule")
        return declared
    return default_rule(annotation)
