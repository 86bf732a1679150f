"""The explicit, versioned pyarrow schema of every results table.

Columns of ``models`` and ``pairs`` rows, in order:

* provenance (``PROVENANCE``): schema version, sweep, cell_id, status (``done`` | ``diverged`` | ``failed``),
  error, the resolved config as JSON, git commit and dirty flag, package versions (JSON), host, device,
  start/finish timestamps (UTC) and seconds;
* the model's seed (``seed``) or the pair's seeds (``seed_a`` < ``seed_b``);
* every knob of the ``data``, ``model`` and ``train`` config groups as a flat, typed, dotted column
  (``model.width``, ``train.batch_size`` - the resolved integer, ``full`` becomes the training-set size -,
  ``data.label_noise``, ...), plus derived sizes ``data.n_train`` and ``model.n_params``. The ``data`` and
  ``model`` columns are the keys of every dataset and model kind (``landscape.config.OPTIONS``); a row holds
  the keys of its own (null in the others' columns). A column that only some options have says which in its
  field metadata (``landscape.option_key``: ``data.name`` or ``model.name``; ``landscape.options``: those
  options, comma-separated; ``option_columns``). ``data.n_train`` is derived for every dataset: the training
  samples kept (the Gaussian mixture's key of that name is in the row's ``config``);
* the columns of every registered metric family of that table, in registration order (``landscape.metrics``):
  its metrics, its settings (``<family>.<key>``), its diagnostics and ``<family>.error``; for ``models`` the
  ``training`` family comes first (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``: cross-entropy
  or MSE of the configured loss, accuracies as fractions in [0, 1]; ``train_acc_clean``: accuracy on the
  original labels; ``training.*``: epochs, steps, seconds, resumed and vectorized flags).

A metric not computed is a typed null. Any change of columns bumps ``SCHEMA_VERSION``: ``SCHEMA_FINGERPRINT``
is the hash of every table's column names and types (and the options a column applies to) at that version, and
a test fails when ``schema_fingerprint()`` differs from it (bump the version, then store the new fingerprint).
Readers union files of different versions by column name; rows of versions before ``OPTION_KEYS_SINCE`` held
every dataset's and model kind's keys at their defaults, and are read with the keys their options lack as nulls
(``upgrade_rows``).
"""

from __future__ import annotations

import functools
import hashlib

import pyarrow as pa
import pyarrow.compute as pc

SCHEMA_VERSION = 5
SCHEMA_FINGERPRINT = "9657d9ce04598a83"
"""``schema_fingerprint()`` at ``SCHEMA_VERSION`` (version 1 had no fingerprint; 2: family contract, per-family
settings and ``<family>.error`` columns; 4: the connectivity convergence protocol; 5: one config per dataset and
model kind, a row's ``data.*``/``model.*`` columns null where its options lack the key)."""

OPTION_KEYS_SINCE = 5
"""The first schema version whose rows hold only the keys of their dataset and model kind: older rows held every
option's keys (at their defaults where they did not apply), which ``upgrade_rows`` nulls when they are read."""

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
    (``landscape.config.knob_fields``: their leaves, of every dataset and model kind, but the seed list)."""
    from landscape import config
    from landscape.metrics import arrow_type

    config.on_change(_forget)
    return {name: _KNOB_OVERRIDES.get(name) or arrow_type(ann) for name, ann in config.knob_fields()}


@functools.lru_cache(maxsize=None)
def option_columns() -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{knob column: (the column naming the option, the options that have the key)}`` for every ``data.*`` and
    ``model.*`` knob column that only some datasets or model kinds have (``data.n_classes``:
    ``("data.name", ("gaussian",))``); a derived column (``DERIVED``) applies to every row."""
    from landscape import config

    config.on_change(_forget)
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for group, options in config.OPTIONS.items():
        for key, owners in config.option_keys(group).items():
            column = f"{group}.{key}"
            if len(owners) < len(options) and column not in DERIVED:
                out[column] = (f"{group}.name", owners)
    return out


def _forget() -> None:
    """Forget what was derived from the registered options and families (a new one was registered)."""
    for cached in (knob_columns, option_columns, schema_for):
        cached.cache_clear()


def _field(name: str, typ: pa.DataType) -> pa.Field:
    """The column ``name``: its type, and for an option's key the options it applies to (``option_columns``)."""
    applies = option_columns().get(name)
    if applies is None:
        return pa.field(name, typ)
    return pa.field(name, typ, metadata={"landscape.option_key": applies[0], "landscape.options": ",".join(applies[1])})


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
        [_field(k, v) for k, v in cols.items()],
        metadata={"landscape.schema_version": str(SCHEMA_VERSION), "landscape.table": table},
    )


def tables() -> list[str]:
    """Every results table name: models, pairs and the metric families' long tables."""
    from landscape import metrics

    extra = [t for fam in metrics.families() for t in fam.long_tables]
    return ["models", "pairs", *dict.fromkeys(extra)]


def schema_fingerprint() -> str:
    """A short hash of every table's column names and types, in order, and of the options each option's key
    applies to (what ``SCHEMA_VERSION`` versions)."""

    def line(t: str, f: pa.Field) -> str:
        meta = f.metadata or {}
        applies = meta.get(b"landscape.options")
        return f"{t}:{f.name}:{f.type}" + (
            f":{meta[b'landscape.option_key'].decode()}={applies.decode()}" if applies else ""
        )

    text = "\n".join(line(t, f) for t in tables() for f in schema_for(t))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def upgrade_rows(table: pa.Table) -> pa.Table:
    """``table`` with the rows of schema versions before ``OPTION_KEYS_SINCE`` brought to the current meaning:
    their ``data.*``/``model.*`` columns that their dataset or model kind lacks (``option_columns``; written
    then at the flat schema's defaults, e.g. ``data.n_classes = 4`` for digits) set to null. Rows of current
    versions, rows without a ``schema_version`` and rows whose option is not registered are left as they are."""
    if "schema_version" not in table.column_names or not table.num_rows:
        return table
    old = pc.fill_null(pc.less(table.column("schema_version"), OPTION_KEYS_SINCE), False)
    if not pc.any(old).as_py():
        return table
    from landscape.config import OPTIONS

    for column, (selector, owners) in option_columns().items():
        if column not in table.column_names or selector not in table.column_names:
            continue
        name = pc.cast(table.column(selector), pa.string())
        known = pc.is_in(name, value_set=pa.array(list(OPTIONS[selector.split(".")[0]]), pa.string()))
        lacks = pc.and_(known, pc.invert(pc.is_in(name, value_set=pa.array(list(owners), pa.string()))))
        drop = pc.fill_null(pc.and_(old, lacks), False)
        i = table.column_names.index(column)
        col = table.column(i)
        table = table.set_column(i, table.field(i), pc.if_else(drop, pa.scalar(None, col.type), col))
    return table
