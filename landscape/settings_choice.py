"""One request's settings per cell: which rows of a metric family a phase diagram is drawn from.

A sweep directory keeps the rows of every request of a cell (``landscape.results``: a relaunch with other
metric settings adds rows, it replaces none), so a model or a pair of models can hold values of one family
at several settings, e.g. ``connectivity.mc`` from a curve of budget 2 and from one of budget 8. Analysis
must use one of them per cell, and neighbouring cells must not be labelled from different settings without
a word. This module chooses, per family, by one rule, and reports what it chose.

**Settings signature.** The settings of a family are the fields of its ``Config`` but ``enabled`` (the
family contract, ``landscape.metrics.Family.setting_columns``). A row's signature is the value of each field
*as the request asked for it*, read from the row's resolved config (the ``config`` JSON column,
``metrics.<family>.<field>``); where a row has no such config (rows built by hand, imported reference rows)
the row's settings columns are used. The request's values, not the columns, define the signature because a
family may write the value it actually used under a settings column (``connectivity.epochs = null`` asks
for a budget-derived number of epochs, which differs from cell to cell). A row carries a family when any of
the family's columns is non-null there (a request with the family switched off does not count).

**The rule**, per family and table (``models``/``pairs``):

1. The signature that covers the most cells (a cell: one ``cell_id``, one point of the grid) is the sweep's
   setting; ties go to the signature with the newest row (``finished_at``).
2. Every cell that has rows of that signature uses it; a cell without it uses its own newest signature, and
   is named (by its knob values) in a warning.
3. ``select`` (``landscape-phase --select KEY=VALUE``, e.g. ``connectivity.budget=8``; repeatable, several
   keys of one family all apply) keeps only the signatures whose field ``KEY`` equals ``VALUE``; the rule then
   runs among those, and a cell without a matching row is left without the family's values (and named).
4. A model's (pair's) values of the family come from one row: its newest row of the signature chosen for its
   cell. Columns are never mixed across requests; each family is chosen independently, and the rows are
   joined back per model (``cell_id``, ``seed``) or pair (``cell_id``, ``seed_a``, ``seed_b``). The other
   columns (knobs, provenance, status) come from the model's newest row.

Pure functions over pandas tables; :func:`choose_settings` is what ``landscape-phase`` calls before it
aggregates cells.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

import landscape.metrics as metrics_contract

log = logging.getLogger(__name__)

#: A settings signature: ``((field, value), ...)`` in the order of the family's ``Config`` fields.
Signature = tuple[tuple[str, Any], ...]

#: How many cells a warning names before it says "and N more".
NAMED_CELLS = 12


@dataclass
class FamilyChoice:
    """What :func:`choose_settings` chose for one family of one table.

    ``signature``: the settings used by most cells (``{field: value}``; empty when the family has no row);
    ``available``: every signature in the rows, with ``cells`` (cells that have it), ``newest`` (ISO time of
    its newest row) and ``label`` (its fields that differ between signatures); ``n_cells``: cells with a row
    of the family; ``n_using``: cells that use ``signature``; ``others``: ``[(cell name, label of the signature
    it uses), ...]`` for cells that use another; ``without``: names of cells left without the family's values
    (with ``select`` only); ``selected``: the ``select`` items of this family."""

    family: str
    table: str
    signature: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    available: list[dict[str, Any]] = field(default_factory=list)
    n_cells: int = 0
    n_using: int = 0
    others: list[tuple[str, str]] = field(default_factory=list)
    without: list[str] = field(default_factory=list)
    selected: dict[str, Any] = field(default_factory=dict)

    @property
    def several(self) -> bool:
        """Whether the rows hold the family at more than one setting."""
        return len(self.available) > 1

    def describe(self) -> str:
        """One line: ``connectivity: 2 settings in the rows; using budget=8 in 24 of 24 cells (--select to
        choose)``."""
        how = (
            "selected by " + ", ".join(f"{k}={v}" for k, v in self.selected.items())
            if self.selected
            else "--select to choose"
        )
        n = len(self.available)
        return (
            f"{self.family}: {n} setting{'s' if n != 1 else ''} in the {self.table} rows; using "
            f"{self.label or 'its one setting'} in {self.n_using} of {self.n_cells} cells ({how})"
        )

    def warnings(self) -> list[str]:
        """The cells that do not use the chosen setting, by name: one line for those on another setting, one for
        those left without the family's values; empty when every cell uses it."""
        out = []
        if self.others:
            out.append(
                f"{self.family}: {len(self.others)} cell(s) without rows at {self.label or 'the chosen setting'}"
                f" use another setting: " + _names([f"{c} ({lab})" for c, lab in self.others])
            )
        if self.without:
            out.append(
                f"{self.family}: {len(self.without)} cell(s) have no row matching "
                + ", ".join(f"{k}={v}" for k, v in self.selected.items())
                + " and are left without its values: "
                + _names(self.without)
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (for ``manifest.json``)."""
        return {
            "family": self.family,
            "table": self.table,
            "signature": self.signature,
            "label": self.label,
            "n_cells": self.n_cells,
            "n_using": self.n_using,
            "others": [{"cell": c, "setting": s} for c, s in self.others],
            "without": self.without,
            "selected": self.selected,
            "available": self.available,
        }


def _names(items: Sequence[str]) -> str:
    shown = "; ".join(items[:NAMED_CELLS])
    return shown + (f"; and {len(items) - NAMED_CELLS} more" if len(items) > NAMED_CELLS else "")


# ------------------------------------------------------------------------------------------------ parsing
def parse_value(text: str) -> Any:
    """A command-line value as the type it spells: int, float, bool, None (``none``/``null``), else the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)


def parse_select(items: Sequence[str]) -> dict[str, Any]:
    """``["connectivity.budget=8"]`` -> ``{"connectivity.budget": 8}``. Each key must be a settings column of a
    registered family (``KeyError`` naming the allowed ones otherwise); ``ValueError`` for an item without
    ``=`` or a key given twice with different values."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in str(item):
            raise ValueError(f"--select {item!r}: expected KEY=VALUE, e.g. connectivity.budget=8")
        k, v = str(item).split("=", 1)
        k, value = k.strip(), parse_value(v.strip())
        fam = _family_of_setting(k)
        if fam is None:
            allowed = [c for f in metrics_contract.families() for c in f.setting_columns]
            raise KeyError(
                f"--select {k}={v}: {k} is not a settings column of a metric family; allowed: {', '.join(allowed)}"
            )
        if k in out and not _equal(out[k], value):
            raise ValueError(f"--select {k}: given twice ({out[k]!r} and {value!r})")
        out[k] = value
    return out


def _family_of_setting(column: str) -> metrics_contract.Family | None:
    for fam in metrics_contract.families():
        if column in fam.setting_columns:
            return fam
    return None


# ------------------------------------------------------------------------------------------------ signatures
def _norm(value: Any) -> Any:
    """A hashable, comparable form of a settings value: numbers as floats, sequences as tuples, NaN as None."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        return None if math.isnan(v) else v
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _norm(v)) for k, v in value.items()))
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return value


def _equal(a: Any, b: Any) -> bool:
    a, b = _norm(a), _norm(b)
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return "null" if value is None else str(value)


def signatures(rows: pd.DataFrame, fam: metrics_contract.Family) -> pd.Series:
    """Each row's settings signature of ``fam`` (see the module docstring), or None where the row does not
    carry the family (all its columns null)."""
    fields_ = [c.split(".", 1)[1] for c in fam.setting_columns]
    cols = [c for c in fam.columns if c in rows.columns]
    if not cols:
        return pd.Series([None] * len(rows), index=rows.index, dtype=object)
    carries = rows[cols].notna().any(axis=1).to_numpy()
    configs = rows["config"].to_numpy() if "config" in rows.columns else [None] * len(rows)
    out: list[Signature | None] = []
    for i, (has, cfg_text) in enumerate(zip(carries, configs, strict=True)):
        if not has:
            out.append(None)
            continue
        requested = _requested(cfg_text, fam.name)
        sig = []
        for f in fields_:
            if requested is not None and f in requested:
                v = requested[f]
            else:
                col = f"{fam.name}.{f}"
                v = rows[col].iat[i] if col in rows.columns else None
            sig.append((f, _norm(v)))
        out.append(tuple(sig))
    return pd.Series(out, index=rows.index, dtype=object)


def _requested(cfg_text: Any, family: str) -> dict[str, Any] | None:
    """``metrics.<family>`` of a row's resolved config (JSON text), or None where it has none."""
    if not isinstance(cfg_text, str) or not cfg_text:
        return None
    node = _metrics_node(cfg_text).get(family)
    return node if isinstance(node, dict) else None


@functools.lru_cache(maxsize=1024)
def _metrics_node(cfg_text: str) -> dict[str, Any]:
    """The ``metrics`` node of a resolved config's JSON text (cached: the rows of one request share it; read
    only), ``{}`` where there is none."""
    try:
        node = json.loads(cfg_text).get("metrics")
    except (ValueError, AttributeError):
        return {}
    return node if isinstance(node, dict) else {}


def _labels(sigs: Sequence[Signature]) -> list[str]:
    """A short name of each signature: its fields whose values differ between the signatures (all fields but
    ``enabled`` when there is only one: shortened to the first few)."""
    if not sigs:
        return []
    fields_ = [f for f, _ in sigs[0]]
    differ = [i for i, _ in enumerate(fields_) if len({s[i][1] for s in sigs}) > 1]
    if differ:
        return [", ".join(f"{s[i][0]}={_show(s[i][1])}" for i in differ) for s in sigs]
    return [", ".join(f"{f}={_show(v)}" for f, v in s[:4]) + (", ..." if len(s) > 4 else "") for s in sigs]


# ------------------------------------------------------------------------------------------------ the rule
def _keys(rows: pd.DataFrame) -> list[str]:
    return ["cell_id", "seed_a", "seed_b"] if "seed_a" in rows.columns else ["cell_id", "seed"]


def _cell_names(rows: pd.DataFrame, name_by: Sequence[str] | None) -> dict[str, str]:
    """``{cell_id: "model.width=8, train.batch_size=32"}`` (``name_by`` knob columns; default: the knob
    columns that vary between cells; the cell id where there are none)."""
    if name_by is None:
        from landscape.phase import knob_columns

        name_by = []
        for k in knob_columns(rows):
            col = rows[k]
            if col.map(lambda v: isinstance(v, (list, dict, np.ndarray))).any():
                continue
            if col.astype(str).nunique() > 1:
                name_by.append(k)
    name_by = [k for k in name_by if k in rows.columns]
    out: dict[str, str] = {}
    first = rows.drop_duplicates("cell_id")
    for _, r in first.iterrows():
        cid = str(r["cell_id"])
        out[cid] = ", ".join(f"{k}={_show(_norm(r[k]))}" for k in name_by) if name_by else f"cell {cid}"
    return out


def _time(rows: pd.DataFrame) -> pd.Series:
    if "finished_at" in rows.columns:
        return pd.to_datetime(rows["finished_at"], utc=True, errors="coerce")
    return pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ns, UTC]")


def _matches(sig: Signature, select: Mapping[str, Any]) -> bool:
    d = dict(sig)
    return all(_equal(d.get(k.split(".", 1)[1]), v) for k, v in select.items())


def choose_family(
    rows: pd.DataFrame,
    fam: metrics_contract.Family,
    select: Mapping[str, Any] | None = None,
    names: Mapping[str, str] | None = None,
) -> tuple[pd.Series, FamilyChoice]:
    """For one family: the index label of the row each model (pair) takes the family's values from (a Series
    indexed like the de-duplicated model keys, see :func:`choose_settings`; missing: none) and the report.

    ``select``: ``{settings column of fam: value}``; ``names``: ``{cell_id: cell name}``."""
    select = dict(select or {})
    names = dict(names or {})
    report = FamilyChoice(fam.name, str(fam.table), selected=select)
    sig = signatures(rows, fam)
    have = sig.notna()
    if not have.any():
        if select:
            raise ValueError(f"--select {', '.join(select)}: the {fam.table} rows hold no values of family {fam.name}")
        return pd.Series(dtype=object), report
    uniq: list[Signature] = list(dict.fromkeys(sig[have]))
    ids = {s: i for i, s in enumerate(uniq)}
    sub = pd.DataFrame(
        {
            "cell_id": rows["cell_id"].astype(str),
            "sig": [ids.get(s, -1) if s is not None else -1 for s in sig],
            "t": _time(rows),
        }
    )
    sub = sub[have.to_numpy()]
    per = sub.groupby("sig", sort=True).agg(cells=("cell_id", "nunique"), newest=("t", "max"))
    labels = _labels(uniq)
    report.available = [
        {
            "label": labels[i],
            "signature": dict(uniq[i]),
            "cells": int(per.at[i, "cells"]),
            "newest": (per.at[i, "newest"].isoformat() if pd.notna(per.at[i, "newest"]) else None),
        }
        for i in range(len(uniq))
    ]
    report.n_cells = int(sub["cell_id"].nunique())
    candidates = [i for i in range(len(uniq)) if _matches(uniq[i], select)] if select else list(range(len(uniq)))
    if not candidates:
        values = {k: sorted({_show(dict(s).get(k.split(".", 1)[1])) for s in uniq}) for k in select}
        raise ValueError(
            f"--select {', '.join(f'{k}={v}' for k, v in select.items())}: no {fam.table} rows of "
            f"{fam.name} have it; the rows hold " + "; ".join(f"{k} in {v}" for k, v in values.items())
        )
    oldest = pd.Timestamp.min.tz_localize("UTC")
    best = max(
        candidates,
        key=lambda i: (int(per.at[i, "cells"]), per.at[i, "newest"] if pd.notna(per.at[i, "newest"]) else oldest),
    )
    report.signature = dict(uniq[best])
    report.label = labels[best]

    # per cell: the chosen signature where it has it, else its newest candidate, else none
    newest_in_cell = sub.groupby(["cell_id", "sig"], sort=False)["t"].max().reset_index()
    use: dict[str, int] = {}
    for cid, g in newest_in_cell.groupby("cell_id", sort=False):
        if (g["sig"] == best).any():
            use[cid] = best
            continue
        ok = g[g["sig"].isin(candidates)]
        if ok.empty:
            report.without.append(names.get(cid, f"cell {cid}"))
            continue
        own = int(ok.sort_values("t", na_position="first")["sig"].iloc[-1])
        use[cid] = own
        report.others.append((names.get(cid, f"cell {cid}"), labels[own]))
    report.n_using = sum(1 for s in use.values() if s == best)

    chosen = sub[[use.get(c) == s for c, s in zip(sub["cell_id"], sub["sig"], strict=True)]]
    keys = _keys(rows)
    picked = rows.loc[chosen.index, keys].assign(_t=chosen["t"], _i=chosen.index)
    picked = picked.sort_values("_t", kind="stable", na_position="first").drop_duplicates(keys, keep="last")
    return picked.set_index(keys)["_i"], report


def choose_settings(
    rows: pd.DataFrame, select: Mapping[str, Any] | None = None, name_by: Sequence[str] | None = None
) -> tuple[pd.DataFrame, list[FamilyChoice]]:
    """One row per model (``cell_id``, ``seed``) of a ``models`` table, or per pair (``cell_id``, ``seed_a``,
    ``seed_b``) of a ``pairs`` table, each family's columns from the rows of the setting the rule chooses for
    its cell (see the module docstring), and one :class:`FamilyChoice` per family with rows in the table (in
    registration order). ``select``: ``{settings column: value}`` (keys of families of other tables are
    ignored); ``name_by``: knob columns that name cells in the report (default: those that vary).

    Every warning of the report is also logged."""
    select = dict(select or {})
    if rows.empty or "cell_id" not in rows.columns:
        return rows, []
    table = "pairs" if "seed_a" in rows.columns else "models"
    rows = rows.reset_index(drop=True)
    keys = _keys(rows)
    if not set(keys) <= set(rows.columns):
        return rows, []
    names = _cell_names(rows, name_by)
    fams = [f for f in metrics_contract.families(table) if any(c in rows.columns for c in f.columns)]
    choices: list[tuple[metrics_contract.Family, pd.Series]] = []
    reports: list[FamilyChoice] = []
    for fam in fams:
        mine = {k: v for k, v in select.items() if k in fam.setting_columns}
        picked, rep = choose_family(rows, fam, mine, names)
        if rep.available:
            reports.append(rep)
            choices.append((fam, picked))
        for w in rep.warnings():
            log.warning("%s", w)
    if not rows.duplicated(keys).any() and all(not r.without for r in reports):
        # one row per model already: every family's chosen row is the model's only row (nothing to combine)
        return rows, reports

    t = _time(rows)
    order = rows.assign(_t=t).sort_values("_t", kind="stable", na_position="first")
    fam_cols = {c for fam, _ in choices for c in fam.columns if c in rows.columns}
    base_cols = [c for c in rows.columns if c not in fam_cols]
    out = order.drop_duplicates(keys, keep="last")[base_cols].reset_index(drop=True)
    for fam, picked in choices:
        cols = [c for c in fam.columns if c in rows.columns]
        if picked.empty:
            part = pd.DataFrame(columns=keys + cols)
        else:
            part = rows.loc[picked.to_numpy(), keys + cols]
        out = out.merge(part, on=keys, how="left")
    out = out[list(rows.columns)]
    for c in rows.columns:  # keep the input's dtypes where no null was introduced
        if out[c].dtype != rows[c].dtype and not out[c].isna().any():
            try:
                out[c] = out[c].astype(rows[c].dtype)
            except (TypeError, ValueError):
                pass
    return out, reports


def choose_for_cells(
    models: pd.DataFrame,
    pairs: pd.DataFrame | None,
    select: Mapping[str, Any] | None = None,
    name_by: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None, list[FamilyChoice]]:
    """:func:`choose_settings` on both tables: ``(models, pairs, reports)``. A ``select`` key whose family has
    rows in neither table raises ``ValueError`` (naming the families that have rows)."""
    select = dict(select or {})
    models_out, rep_m = choose_settings(models, select, name_by)
    if pairs is not None and not pairs.empty:
        # pairs rows carry the knobs; where they do not, name cells through the models rows
        pnames = name_by if name_by is None or all(k in pairs.columns for k in name_by) else None
        pairs_in = pairs
        if pnames is None and name_by is not None and "cell_id" in models.columns:
            knobs = [k for k in name_by if k in models.columns and k not in pairs.columns]
            pairs_in = pairs.merge(models[["cell_id", *knobs]].drop_duplicates("cell_id"), on="cell_id", how="left")
            pnames = name_by
        pairs_out, rep_p = choose_settings(pairs_in, select, pnames)
        if pairs_in is not pairs:
            pairs_out = pairs_out[list(pairs.columns)]
    else:
        pairs_out, rep_p = pairs, []
    reports = rep_m + rep_p
    covered = {k for r in reports for k in r.selected}
    lost = [k for k in select if k not in covered]
    if lost:
        have = sorted({r.family for r in reports})
        raise ValueError(
            f"--select {', '.join(lost)}: no rows of that family in this sweep; families with rows: {', '.join(have)}"
        )
    return models_out, pairs_out, reports
