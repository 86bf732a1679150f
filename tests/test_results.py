"""Results contract: typed, versioned schema; files with and without a metric read together; DuckDB."""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from landscape.results import SCHEMA_VERSION, load, schema_for, table_dir, write_table


def row(cid: str, seed: int, **metrics) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "sweep": "t",
        "cell_id": cid,
        "seed": seed,
        "status": "done",
        "model.width": 8,
        "train.batch_size": 32,
        "data.label_noise": 0.1,
        "train_loss": 0.5,
        **metrics,
    }


def test_every_column_is_typed_and_never_null_typed():
    for table in ("models", "pairs"):
        schema = schema_for(table)
        assert all(not pa.types.is_null(f.type) for f in schema)
        assert {
            "cell_id",
            "sweep",
            "status",
            "config",
            "git_commit",
            "git_dirty",
            "versions",
            "host",
            "device",
            "schema_version",
            "started_at",
            "finished_at",
        } <= set(schema.names)
    models = schema_for("models")
    assert models.field("model.width").type == pa.int64()
    assert models.field("train.batch_size").type == pa.int64()
    assert models.field("data.label_noise").type == pa.float64()
    assert models.field("data.subsample").type == pa.float64()
    assert "train.seeds" not in models.names and "seed" in models.names


def test_cell_without_a_metric_and_cell_with_it_read_as_one_typed_frame(tmp_path):
    d = table_dir(tmp_path, "models")
    write_table(d / "a.parquet", [row("a", 0), row("a", 1)], schema_for("models"))
    # a file from a later schema that has one extra metric column (e.g. a new family)
    extra = schema_for("models").append(pa.field("newfamily.value", pa.float64()))
    write_table(d / "b.parquet", [{**row("b", 0), "newfamily.value": 2.5}], extra)
    df = load(tmp_path, "models")
    assert len(df) == 3
    assert str(df["model.width"].dtype) == "Int64" and str(df["test_acc"].dtype) == "float64"
    assert df["test_acc"].isna().all()  # typed null, not a missing column
    assert df.set_index(["cell_id", "seed"])["newfamily.value"].loc[("b", 0)] == 2.5
    assert df.set_index(["cell_id", "seed"])["newfamily.value"].isna().sum() == 2
    # plain pandas and DuckDB read the same directory
    assert len(pd.read_parquet(d)) == 3
    n, width_sum, extra_sum = duckdb.sql(
        f'select count(*), sum("model.width"), sum("newfamily.value") from '
        f"read_parquet('{d}/*.parquet', union_by_name=true)"
    ).fetchall()[0]
    assert (n, width_sum, extra_sum) == (3, 24, 2.5)


def test_write_is_atomic_and_refuses_unknown_columns(tmp_path):
    path = table_dir(tmp_path, "models") / "c.parquet"
    write_table(path, [row("c", 0)], schema_for("models"))
    before = path.read_bytes()
    with pytest.raises(KeyError, match="model.widht"):
        write_table(path, [{**row("c", 0), "model.widht": 3}], schema_for("models"))
    assert path.read_bytes() == before  # the existing file is untouched by the failure
    assert [p.name for p in path.parent.iterdir()] == ["c.parquet"]  # no temporary left behind
    meta = pq.read_schema(path).metadata
    assert meta[b"landscape.schema_version"] == str(SCHEMA_VERSION).encode()


def test_empty_sweep_gives_typed_empty_frame(tmp_path):
    df = load(tmp_path, "models")
    assert df.empty and "model.width" in df.columns


def test_repeated_loads_read_only_new_or_changed_files(tmp_path, monkeypatch):
    from landscape.results import io

    d = table_dir(tmp_path, "models")
    for c in "abc":
        write_table(d / f"{c}.parquet", [row(c, 0), row(c, 1)], schema_for("models"))
    first = load(tmp_path, "models")
    assert len(first) == 6 and (tmp_path / "results" / ".cache" / "models.parquet").exists()

    calls: list[list[str]] = []
    real = io._read_all
    monkeypatch.setattr(io, "_read_all", lambda files, *a: calls.append(sorted(files)) or real(files, *a))
    again = load(tmp_path, "models")
    assert calls == []  # served from the snapshot
    pd.testing.assert_frame_equal(first, again)

    import os
    import time

    time.sleep(0.01)
    write_table(d / "b.parquet", [row("b", 0, test_acc=0.75)], schema_for("models"))  # changed: one row now
    write_table(d / "d.parquet", [row("d", 0)], schema_for("models"))  # new
    os.remove(d / "a.parquet")  # gone
    third = load(tmp_path, "models")
    assert [sorted(os.path.basename(f) for f in c) for c in calls] == [["b.parquet", "d.parquet"]]
    assert sorted(zip(third["cell_id"], third["seed"], strict=True)) == [("b", 0), ("c", 0), ("c", 1), ("d", 0)]
    assert third.set_index("cell_id").loc["b", "test_acc"] == 0.75
    assert str(third["model.width"].dtype) == "Int64"


def test_load_equals_a_plain_per_file_read_on_mixed_versions_with_nulls(tmp_path):
    """``load`` decodes only the columns a file's footer statistics say hold values and restores the others as
    typed nulls; the result must equal reading every file whole and concatenating (values, nulls, empty lists,
    column set and order, dtypes), across schema versions, files without statistics or Arrow schema, and an
    empty file."""
    import datetime as dt
    import math

    import numpy as np

    from landscape.results.io import _PANDAS_TYPES

    d = table_dir(tmp_path, "models")
    cur = schema_for("models")
    lists = [f.name for f in cur if pa.types.is_list(f.type)]
    assert lists, "the models schema has list columns (this test covers them)"
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)
    old = cur.remove(cur.get_field_index("training.vectorized")).append(pa.field("gone.value", pa.float64()))
    old = old.append(pa.field("gone.flag", pa.int32()))  # a column of an old version, null in every file
    write_table(
        d / "a.parquet",
        [
            row("a", 0, test_acc=0.5, started_at=when, git_dirty=True, **{lists[0]: [1, 2]}),
            row("a", 1, test_acc=None, **{lists[0]: [], "training.vectorized": False}),
        ],
        cur,
    )
    write_table(
        d / "b.parquet", [row("b", 0, **{"gone.value": 1.5, "schema_version": 2, lists[0]: []}), row("b", 1)], old
    )  # only empty lists and nulls in a list column
    c = row("c", 0, test_acc=0.25, **{"training.vectorized": True, lists[0]: []})
    pq.write_table(
        pa.Table.from_pylist([c], schema=cur), d / "c.parquet", write_statistics=False
    )  # no statistics: every column decoded
    pq.write_table(
        pa.Table.from_pylist([row("e", 3, **{"schema_version": 1})], schema=cur), d / "e.parquet", store_schema=False
    )  # another tool: no Arrow schema stored
    write_table(d / "f.parquet", [], cur)  # no rows
    got = load(tmp_path, "models")

    # the reference: every file read whole, rows concatenated in file-name order, columns united by name
    expected_fields = dict((f.name, f.type) for f in cur)
    rows = []
    for f in sorted(d.glob("*.parquet")):
        t = pq.read_table(f)
        for fld in t.schema:
            expected_fields.setdefault(fld.name, fld.type)
        rows += t.to_pylist()
    assert list(got.columns) == list(expected_fields)
    empty = pa.schema(list(expected_fields.items())).empty_table().to_pandas(types_mapper=_PANDAS_TYPES.get)
    assert got.dtypes.to_dict() == empty.dtypes.to_dict()
    assert str(got["training.vectorized"].dtype) == "boolean" and str(got["gone.flag"].dtype) == "Int32"
    assert len(got) == len(rows) == 6

    def norm(v):
        if isinstance(v, (list, tuple, np.ndarray)):
            return [norm(x) for x in v]
        if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, pd.Timestamp):
            return v.to_pydatetime()
        return v

    for i, want in enumerate(rows):
        for col in expected_fields:
            assert norm(got[col].iloc[i]) == norm(want.get(col)), (i, col, got[col].iloc[i], want.get(col))
    a = got.set_index(["cell_id", "seed"])
    assert a.loc[("a", 0), lists[0]].tolist() == [1, 2] and list(a.loc[("a", 1), lists[0]]) == []
    assert a.loc[("a", 0), "started_at"] == pd.Timestamp(when) and a.loc[("b", 0), "gone.value"] == 1.5


def test_an_unreadable_file_is_named_and_skipped(tmp_path, caplog):
    """Issue 20, point 6: a stray file is named and skipped, not fatal to the table (it was a ValueError)."""
    import logging

    d = table_dir(tmp_path, "models")
    write_table(d / "a.parquet", [row("a", 0)], schema_for("models"))
    (d / "b.parquet").write_bytes(b"PAR1 not parquet")  # no cell directory: served as it is, and unreadable
    with caplog.at_level(logging.WARNING, logger="landscape.results.io"):
        df = load(tmp_path, "models")
    assert list(df["cell_id"]) == ["a"]
    assert any("b.parquet: not a readable result file" in r.getMessage() for r in caplog.records)
