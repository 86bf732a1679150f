"""A grid cell on disk: its stable id, its directory and its status marker.

Layout of a sweep directory::

    <sweep_dir>/cells/<cell_id>/status.json           state of the cell (see ``CellStatus``)
    <sweep_dir>/cells/<cell_id>/config.yaml           the resolved config of the cell's last run
    <sweep_dir>/cells/<cell_id>/seeds/<seed>/          training checkpoints, final weights, result.json
    <sweep_dir>/cells/<cell_id>/metrics/<key>/<family>.json   computed metric values (resume cache)
    <sweep_dir>/cells/<cell_id>/work/<key>/<family>/  a metric family's private scratch/checkpoints
    <sweep_dir>/results/<table>/<cell_id>.parquet     the rows (see ``landscape.results``)

The status file is rewritten atomically and is the only truth about a cell, whatever the scheduler says.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from landscape.config import semantic_config

STATES = ("running", "done", "failed")


def cell_id(cfg: Any) -> str:
    """Short stable hash (12 hex digits of SHA-256) of the semantic config (``config.semantic_config``):
    data, model and training settings; not the seeds, metrics, device, output or launcher keys."""
    blob = json.dumps(semantic_config(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def metrics_key(settings: Any) -> str:
    """Short hash of a metric family's settings: a cached value is reused only for the same settings."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(settings, resolve=True) if not isinstance(settings, dict) else settings
    blob = json.dumps(node, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


@dataclass
class CellStatus:
    """Contents of ``status.json``. ``state``: running | done | failed. ``seeds``: per-seed outcome
    (done | diverged) of finished seeds; ``error``: the last error line of a failed run; ``done_key``: hash
    of the seeds and metric settings the cell's result files hold (a different request recomputes);
    ``metric_errors``: ``[{"family", "who" (seed=S | pair=A-B), "error"}]`` of the values a metric family could
    not compute in the last run (each a typed null with the reason in ``<family>.error``)."""

    state: str
    cell_id: str
    sweep: str = ""
    seeds: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    host: str | None = None
    pid: int | None = None
    slurm_job_id: str | None = None
    attempts: int = 0
    started_at: float | None = None
    updated_at: float | None = None
    done_key: str | None = None
    overrides: list[str] = field(default_factory=list)
    metric_errors: list[dict[str, str]] = field(default_factory=list)


class CellDir:
    """Paths and status of one cell under a sweep directory."""

    def __init__(self, sweep_dir: str | Path, cid: str):
        self.sweep_dir = Path(sweep_dir)
        self.cell_id = cid
        self.path = self.sweep_dir / "cells" / cid

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    def seed_dir(self, seed: int) -> Path:
        return self.path / "seeds" / str(seed)

    def metrics_path(self, key: str, family: str) -> Path:
        return self.path / "metrics" / key / f"{family}.json"

    def workdir(self, key: str, family: str) -> Path:
        return self.path / "work" / key / family

    def result_path(self, table: str) -> Path:
        return self.sweep_dir / "results" / table / f"{self.cell_id}.parquet"

    def read_status(self) -> CellStatus | None:
        try:
            return CellStatus(**json.loads(self.status_path.read_text()))
        except FileNotFoundError:
            return None

    def write_status(self, status: CellStatus) -> None:
        """Stamp ``status.updated_at`` and write it atomically."""
        status.updated_at = time.time()
        write_json(self.status_path, asdict(status), indent=1)


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    """Write JSON atomically (temporary name per process and thread + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(obj, indent=indent))
    os.replace(tmp, path)
