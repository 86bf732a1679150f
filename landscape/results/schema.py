"""The explicit, versioned pyarrow schema of every results table.

Columns of ``models`` and ``pairs`` rows, in order:

* provenance (``PROVENANCE``): schema version, sweep, cell_id, status (``done`` | ``diverged`` | ``failed``),
  error, the resolved config as JSON, git commit and dirty flag, package versions (JSON), host, device,
  start/finish timestamps (UTC) and seconds;
* the model's seed (``seed``) or the pair's seeds (``seed_a`` < ``seed_b``);
* every knob of the ``data``, ``model`` and ``train`` config groups as a flat, typed, dotted column
  (``model.width``, ``train.batch_size`` - the resolved integer, ``full`` becomes the training-set size -,
  ``data.label_noise``, ...), plus derived sizes ``data.n_train`` and ``model.n_params``;
* the columns of every registered metric family of that table, in registration order (``landscape.metrics``):
  its metrics, its settings (``<family>.<key>``), its diagnostics and ``<family>.error``; for ``models`` the
  ``training`` family comes first (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``: cross-entropy
  or MSE of the configured loss, accuracies as fractions in [0, 1]; ``train_acc_clean``: accuracy on the
  original labels; ``training.*``: epochs, steps, seconds, resumed and vectorized flags).

A metric not computed is a typed null. Any change of columns bumps ``SCHEMA_VERSION``: ``SCHEMA_FINGERPRINT``
is the hash of every table's column names and types at that version, and a test fails when
``schema_fingerprint()`` differs from it (bump the version, then store the new fingerprint). Readers union
files of different versions by column name.
"""

from __future__ import annotations

import functools
import hashlib

import pyarrow as pa

SCHEMA_VERSION = 4
SCHEMA_FINGERPRINT = "3c543c426dd2f878"
"""``schema_fingerprint()`` at ``SCHEMA_VERSION`` (version 1 had no fingerprint; 2: family contract, per-family
settings and ``<family>.error`` columns; 4: the connectivity convergence protocol)."""

PROVENANCE: dict[str, pa.DataType] = {
    "schema_version": pa.int32(),
    "sweep": pa.string(),
    "cell_id": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
    "config": pa.string(),
    "git_commit": pa.string(),
    "git_dirty": pa.bool_(),
    "versions": pa.string(),
    "host": pa.string(),
    "device": pa.string(),
    "started_at": pa.timestamp("us", tz="UTC"),
    "finished_at": pa.timestamp("us", tz="UTC"),
    "seconds": pa.float64(),
}

DERIVED: dict[str, pa.DataType] = {"data.n_train": pa.int64(), "model.n_params": pa.int64()}

# Knobs whose config type is not a plain annotation: resolved to these column types.
_KNOB_OVERRIDES: dict[str, pa.DataType] = {"data.subsample": pa.float64(), "train.batch_size": pa.int64()}


@functools.lru_cache(maxsize=None)
def knob_columns() -> dict[str, pa.DataType]:
    """``{dotted knob: arrow type}`` for every knob of the data, model and train configs
    (``landscape.config.knob_fields``: their leaves but the seed list)."""
    from landscape.config import knob_fields
    from landscape.metrics import arrow_type

    return {name: _KNOB_OVERRIDES.get(name) or arrow_type(ann) for name, ann in knob_fields()}


@functools.lru_cache(maxsize=None)
def schema_for(table: str) -> pa.Schema:
    """The current schema of ``table``: ``models``, ``pairs`` or a metric family's long table (forgotten when
    a family is registered or removed: ``landscape.metrics.on_change``)."""
    from landscape import metrics

    metrics.on_change(schema_for.cache_clear)

    cols: dict[str, pa.DataType] = dict(PROVENANCE)
    if table == "models":
        cols["seed"] = pa.int64()
    else:
        cols.update({"seed_a": pa.int64(), "seed_b": pa.int64()} if table == "pairs" else {"seed": pa.int64()})
    cols.update(knob_columns())
    cols.update(DERIVED)
    found = table in ("models", "pairs")
    for fam in metrics.families():
        if table in ("models", "pairs") and fam.table == table:
            cols.update(fam.columns)
        if table in fam.long_tables:
            cols.update(fam.long_tables[table])
            found = True
    if not found:
        raise KeyError(f"table={table!r}: unknown results table")
    return pa.schema(
        [pa.field(k, v) for k, v in cols.items()],
        metadata={"landscape.schema_version": str(SCHEMA_VERSION), "landscape.table": table},
    )


def tables() -> list[str]:
    """Every results table name: models, pairs and the metric families' long tables."""
    from landscape import metrics

    extra = [t for fam in metrics.families() for t in fam.long_tables]
    return ["models", "pairs", *dict.fromkeys(extra)]


def schema_fingerprint() -> str:
    """A short hash of every table's column names and types, in order (what ``SCHEMA_VERSION`` versions)."""
    text = "\n".join(f"{t}:{f.name}:{f.type}" for t in tables() for f in schema_for(t))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
