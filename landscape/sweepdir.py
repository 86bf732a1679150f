"""The layout of a sweep directory: every name under it is spelled here, and nowhere else.

::

    <sweep>/multirun.yaml                          the composed config of the last launch (``multirun_path``)
    <sweep>/launches/<stamp>.json                  one record per launch: its arguments and planned cells
    <sweep>/cells/<cell_id>/                       one directory per cell (``cell_dir``, ``cell_dirs``)
        status.json                                state of the cell (format: ``landscape.cell.CellStatus``)
        config.yaml                                the resolved config of the cell's last run
        lease.json                                 who works on the cell now (format: ``landscape.cell.Lease``)
        .holder-<token>/                           the lease holder's own directory (fencing: ``files.Fence``)
        seeds/<seed>/                              training checkpoints, final weights, result.json
        groups/<group>/                            seeds trained together
        metrics/<key>/<family>.json                computed metric values (resume cache)
        work/<key>/<family>/                       a metric family's private scratch/checkpoints
    <sweep>/results/<table>/<cell_id>-<key>.parquet    the rows; recorded in the cell's status under its
                                                   ``result_name`` ``<table>/<cell_id>-<key>.parquet``
    <sweep>/results/.cache/                        read caches of ``landscape.results``
    <sweep>/analysis/phase/<x>__<y>/               ``landscape-phase``'s default output

Plain functions of paths (``str | Path`` in, ``Path`` out) and listings; no file format and no state (the
formats live with their owners: ``landscape.cell`` the status and the lease, ``landscape.results`` the rows,
``landscape.cli.status`` the launch records). This module imports nothing of the package, so every layer
may call it. Functions named ``*_dir``/``*_path`` take the sweep directory; those of a cell's files take the
cell's directory (``cell_dir(sweep, cell_id)``).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

MULTIRUN = "multirun.yaml"
LAUNCHES = "launches"
CELLS = "cells"
RESULTS = "results"
ANALYSIS = "analysis"
CACHE = ".cache"

STATUS = "status.json"
CONFIG = "config.yaml"
LEASE = "lease.json"
SEEDS, GROUPS, METRICS, WORK = "seeds", "groups", "metrics", "work"
RESUME_STATE = (SEEDS, GROUPS, METRICS, WORK)
"""Subdirectories of a cell whose files are the resume state (checksummed at each commit)."""
HOLDER_PREFIX = ".holder-"
"""Name prefix of a lease holder's own directory in the cell (``.holder-<token>``; see ``files.Fence``)."""
PRIVATE_DIR_PREFIXES = (HOLDER_PREFIX, ".fenced-", ".released-")
"""Name prefixes of a cell's holder directories: held, taken over, given back."""
RESULT_SUFFIX = ".parquet"
RESULT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=-]*/[A-Za-z0-9_][A-Za-z0-9_.=-]*\.parquet")
"""What a result file's name in a status record looks like: ``<table>/<file>.parquet``."""


# ------------------------------------------------------------------------------------------ the sweep
def multirun_path(sweep: str | Path) -> Path:
    """``<sweep>/multirun.yaml``: the composed config of the last launch (its ``phase:`` section, the sweep
    file chosen)."""
    return Path(sweep) / MULTIRUN


def launches_dir(sweep: str | Path) -> Path:
    """``<sweep>/launches``: one JSON record per launch."""
    return Path(sweep) / LAUNCHES


def launch_record_paths(sweep: str | Path) -> list[Path]:
    """Every launch record of the sweep, oldest first (their names sort by time)."""
    return sorted(launches_dir(sweep).glob("*.json"))


def new_launch_record_path(sweep: str | Path) -> Path:
    """A fresh name ``<sweep>/launches/<UTC time>-<ns>.json`` for the record of a launch starting now."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**9:09d}"
    return launches_dir(sweep) / f"{stamp}.json"


def cells_dir(sweep: str | Path) -> Path:
    """``<sweep>/cells``: its presence makes a directory a sweep (result files are served only as their
    cells' statuses record them)."""
    return Path(sweep) / CELLS


def cell_dir(sweep: str | Path, cell_id: str) -> Path:
    """``<sweep>/cells/<cell_id>``."""
    return cells_dir(sweep) / cell_id


def status_files(sweep: str | Path) -> Callable[[str], str]:
    """``cell_id -> "<sweep>/cells/<cell_id>/status.json"`` as a plain string, for reading the statuses of
    thousands of cells (a ``Path`` per cell costs ~100x more)."""
    root = os.path.join(str(sweep), CELLS)
    return lambda cell_id: f"{root}/{cell_id}/{STATUS}"


def cell_dirs(sweep: str | Path) -> list[Path]:
    """Every entry of ``<sweep>/cells``, sorted (empty if there is none; directories are not checked)."""
    d = cells_dir(sweep)
    return sorted(d.iterdir()) if d.is_dir() else []


def results_dir(sweep: str | Path) -> Path:
    """``<sweep>/results``: one subdirectory per table."""
    return Path(sweep) / RESULTS


def table_dir(sweep: str | Path, table: str) -> Path:
    """``<sweep>/results/<table>``: the directory of one table's files."""
    return results_dir(sweep) / table


def table_dirs(sweep: str | Path) -> list[Path]:
    """Every table directory of the sweep, sorted (hidden names such as the cache left out)."""
    d = results_dir(sweep)
    return sorted(t for t in d.iterdir() if t.is_dir() and not t.name.startswith(".")) if d.is_dir() else []


def is_result_file(name: str) -> bool:
    """Whether the file name ``name`` (no directory) is a result file (not hidden: no temporary, staged or
    committed copy)."""
    return name.endswith(RESULT_SUFFIX) and not name.startswith(".")


def table_files(sweep: str | Path, table: str) -> list[str]:
    """The result files of ``table``, sorted (plain strings: listing 10,000 files with pathlib costs 3x)."""
    d = table_dir(sweep, table)
    if not d.is_dir():
        return []
    return sorted(os.path.join(d, n) for n in os.listdir(d) if is_result_file(n))


def result_name(table: str, cell_id: str, key: str) -> str:
    """Name of a result file in its cell's status record: ``<table>/<cell_id>-<key>.parquet`` (``key`` hashes
    the settings of the table's metric families)."""
    return record_name(table, f"{cell_id}-{key}{RESULT_SUFFIX}")


def record_name(table: str, file_name: str) -> str:
    """Name in a status record of the file ``file_name`` of ``table``'s directory: ``<table>/<file_name>``."""
    return f"{table}/{file_name}"


def recorded_path(sweep: str | Path, name: str) -> Path:
    """The path of the result file a status records as ``name`` (``result_name``)."""
    return results_dir(sweep) / name


def result_path(sweep: str | Path, table: str, cell_id: str, key: str) -> Path:
    """``<sweep>/results/<table>/<cell_id>-<key>.parquet``."""
    return recorded_path(sweep, result_name(table, cell_id, key))


def cell_of_result(file_name: str) -> str | None:
    """The cell id in a result file's name ``<cell_id>-<key>.parquet`` (None if it has no ``-``)."""
    cid, sep, _ = file_name.partition("-")
    return cid if sep else None


def key_of_result(name: str) -> str:
    """The settings key in a result file's name (``<table>/<cell_id>-<key>.parquet`` or its file name)."""
    return name.rsplit("-", 1)[1].removesuffix(RESULT_SUFFIX)


def sweep_of_result(path: str | Path) -> Path:
    """The sweep directory of the result file ``path`` (``<sweep>/results/<table>/<file>``)."""
    return Path(path).parents[2]


def committed_backup(path: Path) -> Path:
    """``.<name>.committed`` beside a result file: its last committed version while a new one is being
    committed (served in its place)."""
    return path.with_name(f".{path.name}.committed")


def committed_backups(sweep: str | Path, cell_id: str) -> list[Path]:
    """Every ``committed_backup`` of the cell's result files."""
    return [p for t in table_dirs(sweep) for p in t.glob(f".{cell_id}-*.committed")]


def results_cache_dir(sweep: str | Path) -> Path:
    """``<sweep>/results/.cache``: what ``landscape.results`` keeps to read the rows again fast."""
    return results_dir(sweep) / CACHE


def status_records_cache(sweep: str | Path) -> Path:
    """``<sweep>/results/.cache/status-records.json``: the parsed status records of the cells."""
    return results_cache_dir(sweep) / "status-records.json"


def table_cache(sweep: str | Path, table: str) -> Path:
    """``<sweep>/results/.cache/<table>.parquet``: a snapshot of the rows of ``table``."""
    return results_cache_dir(sweep) / f"{table}{RESULT_SUFFIX}"


def analysis_dir(sweep: str | Path) -> Path:
    """``<sweep>/analysis``: what analysis derives from the rows."""
    return Path(sweep) / ANALYSIS


def phase_output_dir(sweep: str | Path, name: str) -> Path:
    """``<sweep>/analysis/phase/<name>``: a phase diagram's default output directory."""
    return analysis_dir(sweep) / "phase" / name


# ------------------------------------------------------------------------------------------ a cell
def status_path(cell: str | Path) -> Path:
    """``<cell>/status.json``."""
    return Path(cell) / STATUS


def config_path(cell: str | Path) -> Path:
    """``<cell>/config.yaml``."""
    return Path(cell) / CONFIG


def lease_path(cell: str | Path) -> Path:
    """``<cell>/lease.json``."""
    return Path(cell) / LEASE


def holder_dir(cell: str | Path, token: str) -> Path:
    """``<cell>/.holder-<token>``: the directory of the lease holder ``token``."""
    return Path(cell) / f"{HOLDER_PREFIX}{token}"


def fenced_dir(cell: str | Path, token: str, taker: str) -> Path:
    """Where the holder directory of ``token`` goes when ``taker`` takes the lease over."""
    return Path(cell) / f".fenced-{token}-{taker}"


def released_dir(cell: str | Path, token: str) -> Path:
    """Where the holder directory of ``token`` goes when it gives the lease back."""
    return Path(cell) / f".released-{token}"


def seed_dir(cell: str | Path, seed: int) -> Path:
    """``<cell>/seeds/<seed>``: a seed's checkpoints, final weights and training result."""
    return Path(cell) / SEEDS / str(seed)


def group_dir(cell: str | Path, group: str) -> Path:
    """``<cell>/groups/<group>``: the checkpoints of seeds trained together."""
    return Path(cell) / GROUPS / group


def metrics_cache_path(cell: str | Path, key: str, family: str) -> Path:
    """``<cell>/metrics/<key>/<family>.json``: a family's computed values for the settings hash ``key``."""
    return Path(cell) / METRICS / key / f"{family}.json"


def work_dir(cell: str | Path, key: str, family: str) -> Path:
    """``<cell>/work/<key>/<family>``: a family's private scratch and checkpoints."""
    return Path(cell) / WORK / key / family
