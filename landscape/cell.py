"""A grid cell on disk: its stable id, its directory and its status marker.

Layout of a sweep directory::

    <sweep_dir>/cells/<cell_id>/status.json           state of the cell (see ``CellStatus``)
    <sweep_dir>/cells/<cell_id>/config.yaml           the resolved config of the cell's last run
    <sweep_dir>/cells/<cell_id>/seeds/<seed>/          training checkpoints, final weights, result.json
    <sweep_dir>/cells/<cell_id>/metrics/<key>/<family>.json   computed metric values (resume cache)
    <sweep_dir>/cells/<cell_id>/work/<key>/<family>/  a metric family's private scratch/checkpoints
    <sweep_dir>/cells/<cell_id>/lease.json            who works on the cell now (see ``Lease``)
    <sweep_dir>/results/<table>/<cell_id>-<key>.parquet   the rows (see ``landscape.results``); ``key`` hashes
                                                          the settings of the metric families of that table

The status file is rewritten atomically and is the only truth about a cell, whatever the scheduler says. Its
``results`` record lists every committed result file of the cell with its SHA-256 and what it covers (seeds or
pairs); a result file whose checksum is not recorded there (damaged, or written by a run that did not finish)
is not served by ``landscape.results.load``.

Only the holder of a cell's lease (``Lease``: a file created atomically with ``os.link``, renewed by the job's
heartbeat, taken over when its holder is gone) writes in the cell's directory and its result files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from landscape.files import STALE_TEMPORARY_S, atomic_write, temporary_name
from landscape.config import semantic_config

log = logging.getLogger(__name__)

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
    (done | diverged) of finished seeds; ``error``: the last error line of a failed run; ``done_key``: read
    from status files of older versions, no longer written (``job.missing_work`` compares the request with
    ``results``: what each committed file holds);
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
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    metric_errors: list[dict[str, str]] = field(default_factory=list)


class DamagedFile(Exception):
    """A file of a sweep directory that exists but cannot be used (empty, not JSON, wrong fields, bad checksum);
    the message names the file."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def _status_from_json(path: Path, text: str) -> CellStatus:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFile(path, f"not valid JSON ({'empty file' if not text.strip() else exc})") from None
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"expected a JSON object, found {type(obj).__name__}")
    known = {f.name for f in dataclasses.fields(CellStatus)}
    try:
        status = CellStatus(**{k: v for k, v in obj.items() if k in known})
    except TypeError as exc:
        raise DamagedFile(path, f"not a cell status ({exc})") from None
    if status.state not in STATES or not isinstance(status.results, dict) or not isinstance(status.seeds, dict):
        raise DamagedFile(path, f"not a cell status (state={status.state!r})")
    return status


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

    def result_path(self, table: str, key: str) -> Path:
        """``<sweep_dir>/results/<table>/<cell_id>-<key>.parquet``: the rows of this cell for the settings hash
        ``key`` of the table's metric families (see ``landscape.job.table_keys``)."""
        return self.sweep_dir / "results" / table / f"{self.cell_id}-{key}.parquet"

    def result_name(self, table: str, key: str) -> str:
        """Name of a result file in the status record: ``<table>/<cell_id>-<key>.parquet``."""
        return f"{table}/{self.cell_id}-{key}.parquet"

    @property
    def lease_path(self) -> Path:
        return self.path / "lease.json"

    def read_status(self) -> CellStatus | None:
        """The cell's status; None if absent; ``DamagedFile`` (naming the file) if unreadable."""
        try:
            text = self.status_path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise DamagedFile(self.status_path, f"unreadable ({exc})") from None
        return _status_from_json(self.status_path, text)

    def write_status(self, status: CellStatus) -> None:
        """Stamp ``status.updated_at`` and write it atomically."""
        status.updated_at = time.time()
        write_json(self.status_path, asdict(status), indent=1)


def read_json(path: Path) -> Any | None:
    """The JSON content of ``path``; None if absent; ``DamagedFile`` naming the file if unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFile(path, f"unreadable ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedFile(path, f"not valid JSON ({'empty file' if not text.strip() else exc})") from None


def write_json(path: Path, obj: Any, indent: int | None = None) -> None:
    """Write JSON atomically (temporary name per process and thread + rename)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=indent)))


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clean_temporary_files(cell: CellDir) -> list[Path]:
    """Remove temporary files (``.<name>.tmp-*``, staged result files) left by killed or failed writes in the cell's directory and
    in the cell's result files' directories; only the lease holder calls this. Returns what was removed.

    Everything in the cell is written by the lease holder alone, except the lease itself: other processes
    write ``.lease.json*.tmp-*`` while they try to take it, and the holder's heartbeat while it renews it. Those
    are left alone until they are ``STALE_TEMPORARY_S`` old (removing one under its writer made that writer's
    link fail: a concurrent launch lost a cell to it)."""
    removed = []
    candidates = list(cell.path.rglob(".*.tmp-*")) if cell.path.is_dir() else []
    now = time.time()
    lease_mark = f".{cell.lease_path.name}"

    def in_use(p: Path) -> bool:
        try:
            return p.name.startswith(lease_mark) and now - p.stat().st_mtime < STALE_TEMPORARY_S
        except FileNotFoundError:
            return True  # gone already: its writer finished

    candidates = [p for p in candidates if not in_use(p)]
    results = cell.sweep_dir / "results"
    if results.is_dir():
        for table in results.iterdir():
            if table.is_dir():
                candidates += [p for p in table.glob(f".*{cell.cell_id}-*")
                               if ".tmp-" in p.name or p.name.endswith(".staged")]
    for p in candidates:
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def file_problem(path: Path, rec: dict[str, Any], verify: bool = False) -> str | None:
    """Why the result file ``path`` does not match its status record ``rec`` (None: intact)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path}: missing (recorded in the cell's status)"
    if not verify and st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns"):
        return None
    if st.st_size != rec.get("size"):
        return f"{path}: damaged ({st.st_size} bytes, {rec.get('size')} recorded)"
    if sha256_file(path) != rec.get("sha256"):
        return f"{path}: damaged (SHA-256 differs from the one recorded)"
    return None


# ------------------------------------------------------------------------------------------------- lease
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


LEASE_STALE_BEATS = 4
"""A lease whose holder missed this many heartbeats in a row is stale and may be taken over."""


class LeaseLost(RuntimeError):
    """This process's lease on a cell was taken over (its heartbeat stalled); it must not write the cell."""


class Lease:
    """Exclusive right of one process to work on a cell, safe on shared (NFS-like) filesystems.

    ``lease.json`` is created with ``os.link`` from a fully written temporary file (atomic, fails if the file
    exists, on local and NFS filesystems). The holder renews it every heartbeat (``renew``: ``beats`` + 1).
    A lease is stale when its holder's process is gone (same host), or its last beat is older than
    ``stale_beats`` heartbeat intervals by this host's clock, or it has not changed while this process watched
    it for that long (robust to clock skew between hosts). A stale lease is taken over under a short takeover
    guard (``lease.json.takeover``, created the same way), after checking it is still the same stale lease.
    """

    def __init__(self, cell: CellDir, interval: float, stale_beats: int | None = None):
        self.cell = cell
        self.interval = float(interval)
        beats = os.environ.get("LANDSCAPE_LEASE_STALE_BEATS")
        self.stale_beats = int(beats) if stale_beats is None and beats else (stale_beats or LEASE_STALE_BEATS)
        self.token = uuid.uuid4().hex
        self.beats = 0
        self.lost = False
        self._seen: dict[tuple[Any, Any], float] = {}

    @property
    def path(self) -> Path:
        return self.cell.lease_path

    @property
    def stale_after(self) -> float:
        return self.interval * self.stale_beats

    def _record(self) -> dict[str, Any]:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "beat_at": time.time(), "beats": self.beats,
                "interval": self.interval}

    def _link_new(self, target: Path, obj: dict[str, Any]) -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_name(target)
        with open(tmp, "w") as f:
            f.write(json.dumps(obj))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def holder(self) -> dict[str, Any] | None:
        """The current lease record (``{}`` if the file is damaged), or None if nobody holds the cell."""
        try:
            obj = json.loads(self.path.read_text())
            return obj if isinstance(obj, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def is_stale(self, rec: dict[str, Any]) -> bool:
        """Whether the lease ``rec`` (as read from the file) belongs to a holder that is gone."""
        now = time.monotonic()
        ident = (rec.get("token"), rec.get("beats"))
        first = self._seen.setdefault(ident, now)
        if now - first > self.stale_after:
            return True  # unchanged for stale_beats intervals of our own clock
        if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int) and not _pid_alive(rec["pid"]):
            return True
        beat = rec.get("beat_at")
        interval = float(rec.get("interval") or self.interval)
        if isinstance(beat, (int, float)) and time.time() - beat > max(interval, self.interval) * self.stale_beats:
            return True
        if not rec:  # damaged lease file: stale once it is old
            try:
                return time.time() - self.path.stat().st_mtime > self.stale_after
            except FileNotFoundError:
                return True
        return False

    def try_acquire(self) -> bool:
        """Take the lease if it is free or stale; True on success."""
        self.beats = 0
        if self._link_new(self.path, self._record()):
            self.lost = False
            return True
        rec = self.holder()
        if rec is None or not self.is_stale(rec):
            return False
        return self._take_over(rec)

    def _take_over(self, stale: dict[str, Any]) -> bool:
        guard = self.path.with_name(self.path.name + ".takeover")
        if not self._link_new(guard, {"token": self.token, "at": time.time(), "host": socket.gethostname(),
                                      "pid": os.getpid()}):
            try:  # a takeover guard left by a process killed mid-takeover
                if time.time() - guard.stat().st_mtime > max(self.stale_after, 60.0):
                    guard.unlink()
            except FileNotFoundError:
                pass
            return False
        try:
            now = self.holder()
            if now is not None and (now.get("token"), now.get("beats")) != (stale.get("token"), stale.get("beats")):
                return False  # renewed or replaced meanwhile: not stale any more
            log.warning("cell %s: taking over the stale lease of %s", self.cell.cell_id,
                        {k: stale.get(k) for k in ("host", "pid", "slurm_job_id")})
            self.path.unlink(missing_ok=True)
            ok = self._link_new(self.path, self._record())
            self.lost = not ok
            return ok
        finally:
            guard.unlink(missing_ok=True)

    def acquire(self, wait: bool = True, poll_s: float | None = None, timeout_s: float | None = None) -> bool:
        """Take the lease; with ``wait`` poll until it is free or stale (else return False at once)."""
        poll = poll_s if poll_s is not None else min(1.0, max(0.05, self.interval / 4))
        t0 = time.monotonic()
        logged = False
        while True:
            if self.try_acquire():
                return True
            if not wait or (timeout_s is not None and time.monotonic() - t0 > timeout_s):
                return False
            if not logged:
                rec = self.holder() or {}
                log.info("cell %s is being worked on by %s (pid %s): waiting for its lease", self.cell.cell_id,
                         rec.get("host"), rec.get("pid"))
                logged = True
            time.sleep(poll)

    def held(self) -> bool:
        """Whether the lease file still carries this process's token."""
        rec = self.holder()
        return bool(rec) and rec.get("token") == self.token

    def renew(self) -> bool:
        """One heartbeat: rewrite the lease with ``beats`` + 1; False (and ``lost``) if it was taken over."""
        if not self.held():
            self.lost = True
            return False
        self.beats += 1
        write_json(self.path, self._record())
        return True

    def release(self) -> None:
        """Give the lease back (only if still ours)."""
        if self.held():
            self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- damaged files
@dataclass
class FileProblem:
    """A damaged or unsafe file of a cell: ``kind`` is ``damaged`` (truncated, flipped, not parseable: recomputed
    from what is intact) or ``unsafe`` (would run code when loaded: never loaded, the cell is refused)."""

    path: Path
    kind: str
    reason: str


def _checkpoint_problem(path: Path) -> FileProblem | None:
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to load is a finding about the file
        text = " ".join(str(exc).split())
        low = text.lower()
        markers = ("unsupported global", "unsupported operand", "was not an allowed global", "is blocked")
        if any(m in low for m in markers):
            start = min(i for i in (low.find("trying to"), low.find("unsupported")) if i >= 0) if (
                "trying to" in low or "unsupported" in low) else 0
            return FileProblem(path, "unsafe", f"refused to load (it would run code): {text[start:start + 140]}")
        return FileProblem(path, "damaged", f"{type(exc).__name__}: {text[:160]}")
    return None


RESUME_STATE = ("seeds", "groups", "metrics", "work")
"""Subdirectories of a cell whose files are the resume state (checksummed at each commit)."""


def resume_state_checksums(cell: CellDir) -> dict[str, str]:
    """``{path relative to the cell: SHA-256}`` of every file of the cell's resume state (hidden files and
    in-progress training checkpoints excluded)."""
    out = {}
    for sub in RESUME_STATE:
        for path in sorted((cell.path / sub).rglob("*")):
            if path.is_file() and not path.name.startswith(".") and path.name != "checkpoint.pt":
                out[str(path.relative_to(cell.path))] = sha256_file(path)
    return out


def inspect_cell_files(cell: CellDir, checkpoints: bool = True, recorded: dict[str, str] | None = None
                       ) -> list[FileProblem]:
    """Every damaged or unsafe file among the cell's resume state: checkpoints (``*.pt``, loaded with
    ``weights_only=True``, so nothing in them runs), training results (``seeds/*/result.json``) and metric caches
    (``metrics/*/*.json``), and any file whose SHA-256 differs from ``recorded`` (``CellStatus.files``: flipped
    bytes that still parse). Temporary and quarantined files (hidden names) are not looked at."""
    out: list[FileProblem] = []
    if not cell.path.is_dir():
        return out
    bad: set[Path] = set()
    for rel, digest in sorted((recorded or {}).items()):
        path = cell.path / rel
        if path.is_file() and sha256_file(path) != digest:
            unsafe = _checkpoint_problem(path) if checkpoints and path.suffix == ".pt" else None
            if unsafe is not None and unsafe.kind == "unsafe":
                out.append(unsafe)
            else:
                out.append(FileProblem(path, "damaged", "SHA-256 differs from the one recorded at the cell's last commit"))
            bad.add(path)
    for path in sorted(cell.path.rglob("*.json")):
        if path.name.startswith(".") or path.parent == cell.path or path in bad:
            continue
        try:
            json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            out.append(FileProblem(path, "damaged", f"not valid JSON ({str(exc)[:120] or 'empty file'})"))
    if checkpoints:
        for path in sorted(cell.path.rglob("*.pt")):
            if not path.name.startswith(".") and path not in bad:
                problem = _checkpoint_problem(path)
                if problem is not None:
                    out.append(problem)
    return out


def quarantine(problem: FileProblem) -> list[Path]:
    """Move a damaged file out of the way (``.<name>.damaged``, kept for inspection) so it is recomputed; a
    damaged final checkpoint takes its seed's ``result.json`` along (the seed is retrained). Returns the moved
    files' new paths."""
    moved = []
    paths = [problem.path]
    if problem.path.name == "final.pt":
        paths.append(problem.path.with_name("result.json"))
    if problem.path.name == "result.json":
        paths.append(problem.path.with_name("final.pt"))
    for p in paths:
        if p.exists():
            target = p.with_name(f".{p.name}.{problem.kind}")
            os.replace(p, target)
            moved.append(target)
    return moved
