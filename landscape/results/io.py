"""Parquet I/O of results tables: one file per cell, table and metric-settings key, written atomically (rows of
other seeds merged in, never dropped); readers that serve only committed, checksum-verified files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from landscape import sweepdir
from landscape.files import atomic_write
from landscape.results.schema import schema_for, upgrade_rows

log = logging.getLogger(__name__)


def table_dir(sweep_dir: str | Path, table: str) -> Path:
    """``<sweep_dir>/results/<table>``: the directory of one table's files (``landscape.sweepdir.table_dir``)."""
    return sweepdir.table_dir(sweep_dir, table)


def write_table(path: str | Path, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> Path:
    """Write ``rows`` (dicts keyed by column; missing keys become typed nulls) to ``path`` with ``schema``.

    The file is written under a hidden temporary name in the same directory and renamed into place, so a
    reader never sees a partial file and a failure never damages an existing one. Unknown keys are an error.
    """
    path = Path(path)
    unknown = sorted({k for r in rows for k in r} - set(schema.names))
    if unknown:
        raise KeyError(f"columns not in the {schema.metadata.get(b'landscape.table', b'?').decode()} schema: {unknown}")
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    _write_atomic(table, path)
    return path


def _write_atomic(table: pa.Table, path: Path) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp), fsync=True)


def merge_rows(
    path: str | Path,
    rows: Sequence[dict[str, Any]],
    schema: pa.Schema,
    key_columns: Sequence[str],
    trusted: set[str],
    staging: bool | Path = False,
) -> tuple[Path, str, int, bool]:
    """Add ``rows`` to the result file ``path``: rows of the existing file whose ``key_columns`` (e.g. ``seed``
    or ``seed_a, seed_b``) are not among the new rows are kept, the others are replaced; rows are sorted by
    the key (stable). The existing file is merged only if its SHA-256 is in ``trusted`` (the checksums the
    cell's status recorded for it); a file that is damaged or unknown is named in a warning and replaced.

    With ``staging`` the merged rows are written to ``.<name>.staged`` beside ``path``, or to ``staging`` if it is
    a path (``files.staging_name``: the lease holder's directory), to be renamed into place by the caller. Returns the written file, its SHA-256, its number of rows and whether the existing file's
    rows were merged.
    """
    from landscape.cell import sha256_file

    path = Path(path)
    unknown = sorted({k for r in rows for k in r} - set(schema.names))
    if unknown:
        raise KeyError(f"columns not in the {schema.metadata.get(b'landscape.table', b'?').decode()} schema: {unknown}")
    new = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    parts = []
    merged_old = False
    if path.exists():
        digest = sha256_file(path)
        if digest in trusted:
            try:
                old = _conform(pq.read_table(path), schema)
                new_keys = (
                    set(zip(*(new.column(k).to_pylist() for k in key_columns), strict=True)) if new.num_rows else set()
                )
                keep = [
                    i
                    for i, key in enumerate(zip(*(old.column(k).to_pylist() for k in key_columns), strict=True))
                    if key not in new_keys
                ]
                parts.append(old.take(pa.array(keep, pa.int64())))
                merged_old = True
            except (OSError, pa.ArrowException, ValueError) as exc:
                log.warning("%s: previous rows not readable (%s); replaced", path, exc)
        else:
            log.warning(
                "%s: checksum %s is not the one recorded in its cell's status (damaged or from an "
                "unfinished run); its rows are replaced by this run's",
                path,
                digest[:12],
            )
    parts.append(new)
    merged = pa.concat_tables(parts)
    if merged.num_rows:
        merged = merged.take(pc.sort_indices(merged, sort_keys=[(k, "ascending") for k in key_columns]))
    target = Path(staging) if isinstance(staging, Path) else path.with_name(f".{path.name}.staged") if staging else path
    _write_atomic(merged, target)
    return target, sha256_file(target), merged.num_rows, merged_old


def served_files(sweep_dir: str | Path, table: str, files: list[str]) -> list[str]:
    """The result files of ``files`` that may be served (see ``_served``)."""
    return _served(sweep_dir, table, files)[0]


def _status_records(status_path: str, cache: dict[str, Any]) -> Any:
    """``(records, pending)`` of a cell's status (``{result name: SHA-256}``, names being committed), or the
    ``DamagedFile``/``OSError`` that reading it raised. Parsed statuses are kept in ``cache`` by the status
    file's inode, size, modification and change time: a rewrite (atomic: a new inode) or an edit in place (a new
    change time, which no tool can set back) parses it again."""
    from landscape.cell import DamagedFile, status_from_json

    try:
        st = os.stat(status_path)
    except OSError as exc:
        return exc
    stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    hit = cache.get(status_path)
    if (
        isinstance(hit, list)
        and len(hit) == 3
        and hit[0] == stamp
        and isinstance(hit[1], dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in hit[1].items())
        and isinstance(hit[2], list)
        and all(isinstance(n, str) for n in hit[2])
    ):
        return hit[1], hit[2]  # anything else in the cache (damaged, another version) is parsed again
    try:
        status = status_from_json(Path(status_path), Path(status_path).read_text())
    except (DamagedFile, OSError, UnicodeDecodeError) as exc:
        return exc
    records = {name: rec["sha256"] for name, rec in status.results.items()}
    cache[status_path] = [stamp, records, sorted(status.pending)]
    return records, sorted(status.pending)


def _served(sweep_dir: str | Path, table: str, files: list[str]) -> tuple[list[str], dict[str, str]]:
    """The result files of ``files`` that may be served, and the SHA-256 each must have (checked on the bytes
    read, ``_read_file``).

    In a sweep directory (one with ``cells/``) a file is served only if its name ``<cell_id>-<key>.parquet`` is
    recorded in its cell's ``status.json`` (a committed request); anything else (written by a run that did not
    finish, copied from another sweep, a stray file or directory, a file of a cell with a damaged status) is
    named in a warning and left out, and the next launch recomputes what its cell needs. While a commit is in
    progress (or was killed) the file's last committed version ``.<name>.committed`` is served in its place. In
    a plain directory of Parquet files (no ``cells/``: rows imported or written by other tools) every file is
    served, unchecked. A link leaving the sweep directory is never served.

    Parsed statuses are cached in ``results/.cache/status-records.json`` (``_status_records``); nothing about
    a result file is trusted from its size or modification time.
    """
    from landscape.cell import link_outside

    sweep = Path(sweep_dir)
    managed = sweepdir.cells_dir(sweep).is_dir()
    status_file = sweepdir.status_files(sweep)  # plain strings: pathlib costs 100x here (10,000 cells)
    cache_path = sweepdir.status_records_cache(sweep)
    cache: dict[str, Any] = {}
    if managed:
        try:
            loaded = json.loads(cache_path.read_text())
            cache = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError, RecursionError):
            cache = {}
    before = len(cache)
    out: list[str] = []
    expected: dict[str, str] = {}
    statuses: dict[str, Any] = {}
    for f in files:
        name = os.path.basename(f)
        outside = link_outside(f, sweep)
        if outside:
            log.warning("%s: not served, %s", f, outside)
            continue
        if not managed:
            out.append(f)
            continue
        cid = sweepdir.cell_of_result(name)
        status = statuses.get(cid)
        if status is None and cid is not None:
            status = statuses[cid] = _status_records(status_file(cid), cache)
        if isinstance(status, FileNotFoundError) or status is None:
            why = (
                "no cell of this sweep has its name (copied from another sweep, or a stray file)"
                if (cid is None or not os.path.isdir(os.path.dirname(status_file(cid))))
                else "its cell has no status.json"
            )
            log.warning("%s: not served, %s (the next launch recomputes what its cell needs)", f, why)
            continue
        if isinstance(status, Exception):
            log.warning("%s: not served, the status of its cell is damaged (%s)", f, status)
            continue
        records, pending = status
        recorded = sweepdir.record_name(table, name)
        digest = records.get(recorded)
        if digest is None:
            log.warning(
                "%s: not served, not a committed result of its cell (a run that did not finish, or a "
                "file copied from another sweep)",
                f,
            )
            continue
        if not os.path.isfile(f):
            log.warning("%s: not served, not a regular file", f)
            continue
        backup = str(sweepdir.committed_backup(Path(f)))
        if recorded in pending and os.path.isfile(backup) and not link_outside(backup, sweep):
            f = backup  # a commit in progress (or killed): its last committed version
        out.append(f)
        expected[f] = digest
    if managed and len(cache) != before:
        live = {status_file(cid) for cid in statuses}
        kept = {k: v for k, v in cache.items() if k in live} if len(cache) > 2 * max(len(live), 1) else cache
        try:
            atomic_write(cache_path, lambda tmp: tmp.write_text(json.dumps(kept)))
        except OSError as exc:  # read-only sweep directory: parsed again next time
            log.debug("status cache not written to %s: %s", cache_path, exc)
    return out, expected


class DamagedResult(ValueError):
    """A result file whose bytes do not have the SHA-256 its cell's status records."""


def _leaves(t: pa.DataType) -> int:
    """How many Parquet leaf columns a field of Arrow type ``t`` is stored as."""
    if pa.types.is_struct(t):
        return sum(_leaves(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _leaves(t.key_type) + _leaves(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaves(t.value_type)
    return 1


_PLANS: dict[bytes, tuple[list[pa.Field], list[int], list[int]]] = {}


def _plan(md: Any, reader: Any) -> tuple[list[pa.Field], list[int], list[int]]:
    """The fields of a Parquet file, the leaf indices of its flat columns and those of its nested columns; cached
    by the file's serialized Arrow schema (the files of one schema version share it)."""
    key = (md.metadata or {}).get(b"ARROW:schema")
    if key is not None and key in _PLANS:
        return _PLANS[key]
    fields = list(reader.schema_arrow)
    flat, nested, leaf = [], [], 0
    for f in fields:
        n = _leaves(f.type)
        (flat if n == 1 and not pa.types.is_nested(f.type) else nested).extend(range(leaf, leaf + n))
        leaf += n
    plan = (fields, flat, nested)
    if key is not None and len(_PLANS) < 256:
        _PLANS[key] = plan
    return plan


def _read_file(path: str, sha256: str | None = None) -> tuple[pa.Table, list[pa.Field]]:
    """The rows of one result file, without decoding the flat columns that hold only nulls (their footer
    statistics say ``null_count == num_rows`` in every row group): a 2-row file of the ``models`` table has
    about 160 columns of which a handful hold values, and decoding a column costs about 25 us whatever it holds.
    Returns the table of the decoded columns and the fields (name, type) of every column of the file, so the
    caller restores the skipped ones as typed nulls. Nested columns (lists) are always decoded: an empty list
    also counts as a null in the statistics."""
    from pyarrow._parquet import ParquetReader  # the reader under ``pq.ParquetFile``, addressed by leaf index

    with open(path, "rb") as fh:
        buf = fh.read()
    if sha256 is not None and hashlib.sha256(buf).hexdigest() != sha256:
        raise DamagedResult(f"{path}: damaged, its SHA-256 differs from the one its cell's status records")
    reader = ParquetReader()
    reader.open(pa.BufferReader(buf))
    md = reader.metadata
    fields, flat, nested = _plan(md, reader)
    keep = list(nested)
    groups = [md.row_group(r) for r in range(md.num_row_groups)]
    for leaf in flat:
        for rg in groups:
            st = rg.column(leaf).statistics
            if st is None or not st.has_null_count or st.null_count != rg.num_rows:
                keep.append(leaf)
                break
    leaf = md.num_columns
    if not keep and leaf:
        keep = [0]  # every column null: one is decoded all the same, so the rows are counted
    return reader.read_all(column_indices=sorted(keep), use_threads=False), fields


READ_THREADS = 1
"""Threads reading result files. One: the per-file work is mostly Python (footer statistics) and two threads on
2 cores measured 1.3x slower than one (GIL contention; ``benchmarks/bench_read.py``)."""


def _read_all(
    files: list[str],
    schema: pa.Schema | None = None,
    expected: dict[str, str] | None = None,
    problems: dict[str, str] | None = None,
) -> pa.Table:
    """Every file's rows in one Arrow table: the columns of ``schema`` (typed nulls where a file lacks them),
    then any column found only in some files (in the order first seen), then a ``filename`` column holding each
    row's file name (without its directory). Files are read one after the other (``READ_THREADS``; ``_read_file``:
    only columns that hold values are decoded); the schema is known, nothing is inferred per file. A file whose
    bytes do not have its SHA-256 in ``expected``, that cannot be read, or whose columns do not fit ``schema``
    (e.g. a ``seed`` of strings) is named in a warning and skipped (added to ``problems``: path -> reason)."""
    from concurrent.futures import ThreadPoolExecutor

    schema = schema if schema is not None else pa.schema([])
    expected = expected or {}
    problems = problems if problems is not None else {}

    def one(path: str) -> tuple[pa.Table, list[pa.Field]] | None:
        try:
            return _read_file(path, expected.get(path))
        except DamagedResult as exc:
            problems[path] = str(exc)
        except (OSError, pa.ArrowException, ValueError) as exc:
            problems[path] = f"{path}: not a readable result file ({exc})"
        log.warning("%s; not served (the next launch recomputes it)", problems[path])
        return None

    if READ_THREADS > 1 and len(files) > 64:
        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            got = list(pool.map(one, files, chunksize=64))
    else:
        got = [one(f) for f in files]
    files = [f for f, g in zip(files, got, strict=True) if g is not None]
    parts = [g for g in got if g is not None]
    try:
        return _combine(files, parts, schema)
    except (pa.ArrowException, ValueError):  # a file whose columns do not fit: find it, skip it, combine the rest
        fits_files, fits = [], []
        for f, part in zip(files, parts, strict=True):
            try:
                _combine([f], [part], schema)
            except (pa.ArrowException, ValueError) as exc:
                problems[f] = (
                    f"{f}: its columns do not fit the {schema.metadata.get(b'landscape.table', b'?').decode() if schema.metadata else ''} schema ({exc})"
                )
                log.warning("%s; not served", problems[f])
                continue
            fits_files.append(f)
            fits.append(part)
        return _combine(fits_files, fits, schema)


def _combine(files: list[str], parts: list[tuple[pa.Table, list[pa.Field]]], schema: pa.Schema) -> pa.Table:
    import numpy as np

    extra: dict[str, pa.Field] = {}
    known = set(schema.names)
    for _, fields in parts:
        for f in fields:
            if f.name not in known and f.name not in extra:
                extra[f.name] = f
    full = pa.schema([*schema, *extra.values()], metadata=schema.metadata)
    counts = [t.num_rows for t, _ in parts]
    tables = [t for t, _ in parts if t.num_columns]
    body = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    n = sum(counts)
    if body.num_rows != n:
        raise ValueError(f"{n} rows in the files' footers, {body.num_rows} decoded")
    arrays = []
    for f in full:
        i = body.schema.get_field_index(f.name) if body.num_columns else -1
        arrays.append(body.column(i).cast(f.type) if i >= 0 else pa.nulls(n, f.type))
    names = np.repeat(np.array([os.path.basename(f) for f in files], dtype=object), counts)
    arrays.append(pa.array(names, pa.string()))
    return pa.Table.from_arrays(arrays, schema=full.append(pa.field(SOURCE, pa.string())))


SOURCE = "filename"
"""Column of the snapshot that names the file each row came from (dropped from what ``read_table`` returns)."""


def _stamp(path: str, sha256: str | None = None) -> str:
    """What a snapshot's rows of ``path`` were read from: its inode, size, modification and change time (an edit
    in place changes the change time, which no tool can set back) and the SHA-256 its status recorded then (the
    bytes read were checked against it)."""
    st = os.stat(path)
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{sha256 or ''}"


def _read_cache(path: Path, fingerprint: str) -> tuple[pa.Table | None, dict[str, str]]:
    """The snapshot of a previous ``read_table`` and the file stamps it holds (none if absent or stale)."""
    try:
        snap = pq.read_table(path)
    except (OSError, pa.ArrowException):
        return None, {}
    meta = snap.schema.metadata or {}
    if meta.get(b"landscape.schema_fingerprint", b"") != fingerprint.encode() or SOURCE not in snap.column_names:
        return None, {}
    try:
        sources = json.loads(meta.get(b"landscape.sources", b"{}"))
    except (ValueError, RecursionError):
        sources = None
    if not isinstance(sources, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sources.items()):
        log.warning("%s: damaged snapshot (its list of sources is not an object of strings); read again", path)
        return None, {}
    return snap, sources


def _write_cache(path: Path, snap: pa.Table, fingerprint: str, stamps: dict[str, str]) -> None:
    meta = dict(snap.schema.metadata or {})
    meta.update(
        {b"landscape.schema_fingerprint": fingerprint.encode(), b"landscape.sources": json.dumps(stamps).encode()}
    )
    try:
        atomic_write(path, lambda tmp: pq.write_table(snap.replace_schema_metadata(meta), tmp))
    except OSError as exc:  # a read-only sweep directory: no snapshot, nothing lost
        log.debug("results snapshot not written to %s: %s", path, exc)


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t`` with exactly the columns of ``schema`` (missing ones as typed nulls), cast to its types."""
    arrays = []
    for f in schema:
        i = t.schema.get_field_index(f.name)
        arrays.append(t.column(i).cast(f.type) if i >= 0 else pa.nulls(t.num_rows, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def read_table(sweep_dir: str | Path, table: str = "models", columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of ``table`` under ``sweep_dir`` as one Arrow table with the unified, typed schema: the current
    schema of ``table`` (columns a file lacks are typed nulls, types cast back to the schema's), followed by
    any column found only in other schema versions; rows of older versions brought to the current meaning
    (``landscape.results.schema.upgrade_rows``: a dataset's or model kind's keys null in the rows of the others).
    Rows are ordered by file name.

    Only the files ``_served`` allows are read, each checked against the SHA-256 its cell's status records (a
    damaged file is named in a warning and left out). A snapshot of what was read is kept in
    ``<sweep_dir>/results/.cache/<table>.parquet`` with the stamp of every file it holds (``_stamp``: inode,
    size, modification and change time, recorded SHA-256): the next call reads only files that are new or
    changed, and drops the rows of files that are gone (a sweep of 10,000 cells is read once, then in about a
    second).
    """
    files, expected = _served(sweep_dir, table, sweepdir.table_files(sweep_dir, table))
    current = schema_for(table)
    if not files:
        empty = current.empty_table()
        return empty.select(list(columns)) if columns else empty
    fingerprint = hashlib.sha256(current.to_string(show_schema_metadata=True).encode()).hexdigest()[:16]
    stamps = {os.path.basename(f): _stamp(f, expected.get(f)) for f in files}
    cache = sweepdir.table_cache(sweep_dir, table)
    snap, cached = _read_cache(cache, fingerprint)
    keep = {n for n, st in stamps.items() if cached.get(n) == st}
    parts = []
    if snap is not None and keep:
        try:
            part = snap.filter(pc.is_in(snap.column(SOURCE), value_set=pa.array(sorted(keep), pa.string())))
            _conform(part, pa.schema([*current, pa.field(SOURCE, pa.string())]))  # a damaged snapshot: read again
            parts.append(part)
        except (pa.ArrowException, ValueError) as exc:
            log.warning("%s: damaged snapshot (%s); read again", cache, exc)
            keep = set()
    todo = [f for f in files if os.path.basename(f) not in keep]
    problems: dict[str, str] = {}
    if todo:
        parts.append(upgrade_rows(_read_all(todo, current, expected, problems)))
        for f in problems:  # damaged or unreadable: not in the snapshot, checked again next time
            stamps.pop(os.path.basename(f), None)
    extra: dict[str, pa.Field] = {}
    for part in parts:
        for f in part.schema:
            if f.name not in current.names and f.name != SOURCE:
                extra.setdefault(f.name, f)
    full = pa.schema([*current, *extra.values(), pa.field(SOURCE, pa.string())], metadata=current.metadata)
    out = pa.concat_tables([_conform(p, full) for p in parts])
    out = out.take(pc.sort_indices(out.column(SOURCE)))
    if todo or set(cached) != set(keep):
        _write_cache(cache, out, fingerprint, {n: stamps[n] for n in stamps})
    out = out.drop_columns([SOURCE])
    return out.select(list(columns)) if columns else out


_PANDAS_TYPES = {
    pa.int64(): pd.Int64Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.bool_(): pd.BooleanDtype(),
    pa.string(): pd.StringDtype(),
}


def load(sweep_dir: str | Path, table: str = "models", columns: Sequence[str] | None = None) -> pd.DataFrame:
    """All rows of ``table`` under ``sweep_dir`` as a DataFrame with typed columns: nullable integers,
    booleans and strings stay typed when they hold nulls; lists are Python lists."""
    return read_table(sweep_dir, table, columns).to_pandas(types_mapper=_PANDAS_TYPES.get)
