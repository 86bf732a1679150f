"""A grid cell on disk: its stable id, its directory and its status marker.

Where each file of a cell lies is ``landscape.sweepdir``'s (the layout of a sweep directory); this module owns
what the cell's state files hold: ``status.json`` (``CellStatus``, parsed by ``parse_status`` and
``status_from_json``) and ``lease.json`` (``Lease``), and the checks of the cell's files.

The status file is rewritten atomically and is the only truth about a cell, whatever the scheduler says. Its
``results`` record lists every committed result file of the cell with its SHA-256 and what it covers (seeds or
pairs); a result file whose checksum is not recorded there (damaged, or written by a run that did not finish)
is not served by ``landscape.results.load``.

Only the holder of a cell's lease (``Lease``: a file created atomically with ``os.link``, kept alive by the job's
heartbeat, taken over when its holder is gone) writes in the cell's directory and its result files; its writes go
through its own directory ``cells/<id>/.holder-<token>``, which a process taking the lease over renames away
first, so a holder that lost the lease cannot write again (``files.Fence``).

Every state file is parsed through one schema (``parse_status``, ``parse_lease``): a wrong type, a missing field
or the wrong kind of file is a ``DamagedFile`` naming the file, the key and the value, never a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from landscape import sweepdir
from landscape.config import semantic_config
from landscape.files import STALE_TEMPORARY_S, Fence, LeaseLost, atomic_write, check_fence, temporary_name

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


_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _is_str_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _is_cover(v: Any) -> bool:
    return _is_int(v) or (isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v))


def _is_relative(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


_OPTIONAL_STR = (lambda v: v is None or isinstance(v, str), "a string or null")
_STATUS_FIELDS: dict[str, tuple[Any, str]] = {
    "state": (lambda v: v in STATES, f"one of {', '.join(STATES)}"),
    "cell_id": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "sweep": (lambda v: isinstance(v, str), "a string"),
    "seeds": (_is_str_map, "an object of seed -> done | diverged"),
    "error": _OPTIONAL_STR,
    "traceback": _OPTIONAL_STR,
    "host": _OPTIONAL_STR,
    "slurm_job_id": _OPTIONAL_STR,
    "done_key": _OPTIONAL_STR,
    "pid": (lambda v: v is None or (_is_int(v) and v > 0), "a positive integer or null"),
    "attempts": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "started_at": (lambda v: v is None or _is_number(v), "a finite number (seconds) or null"),
    "updated_at": (lambda v: v is None or _is_number(v), "a finite number (seconds) or null"),
    "overrides": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "results": (lambda v: isinstance(v, dict), "an object of result file -> record"),
    "pending": (
        lambda v: _is_str_map(v) and all(sweepdir.RESULT_NAME.fullmatch(k) for k in v),
        "an object of result file (<table>/<name>.parquet) -> SHA-256",
    ),
    "files": (
        lambda v: _is_str_map(v) and all(_is_relative(k) for k in v),
        "an object of path relative to the cell -> SHA-256",
    ),
    "metric_errors": (
        lambda v: isinstance(v, list) and all(_is_str_map(x) for x in v),
        "a list of objects of strings (family, who, error)",
    ),
}
_REQUIRED_STATUS = ("state", "cell_id")
_RECORD_FIELDS: dict[str, tuple[Any, str]] = {
    "sha256": (lambda v: isinstance(v, str) and bool(_HEX64.fullmatch(v)), "64 lowercase hex digits"),
    "covers": (
        lambda v: isinstance(v, list) and all(_is_cover(c) for c in v),
        "a list of seeds (integers) or pairs ([a, b])",
    ),
    "rows": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "size": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "mtime_ns": (lambda v: _is_int(v), "an integer"),
    "key": (lambda v: isinstance(v, str), "a string"),
}


def _bad(path: Path, key: str, value: Any, allowed: str) -> DamagedFile:
    shown = repr(value)
    return DamagedFile(path, f"{key}={shown[:80] + ('...' if len(shown) > 80 else '')}: expected {allowed}")


def parse_status(path: Path, obj: Any) -> CellStatus:
    """The ``CellStatus`` of the JSON value ``obj`` read from ``path``, every field checked against its type (the
    one schema of ``status.json``); ``DamagedFile`` naming the file, the key and the value otherwise. Unknown
    keys are ignored (written by a newer version)."""
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"expected a JSON object, found {type(obj).__name__}")
    for key in _REQUIRED_STATUS:
        if key not in obj:
            raise DamagedFile(path, f"{key}: missing (a cell status has {', '.join(_REQUIRED_STATUS)})")
    for key, (ok, allowed) in _STATUS_FIELDS.items():
        if key in obj and not ok(obj[key]):
            raise _bad(path, key, obj[key], allowed)
    for name, rec in obj.get("results", {}).items():
        if not sweepdir.RESULT_NAME.fullmatch(name):
            raise _bad(path, "results", name, "result file names <table>/<name>.parquet")
        if not isinstance(rec, dict):
            raise _bad(path, f"results[{name!r}]", rec, "an object (sha256, covers, rows, size, mtime_ns, key)")
        for key in ("sha256", "covers"):
            if key not in rec:
                raise DamagedFile(path, f"results[{name!r}].{key}: missing")
        for key, (ok, allowed) in _RECORD_FIELDS.items():
            if key in rec and not ok(rec[key]):
                raise _bad(path, f"results[{name!r}].{key}", rec[key], allowed)
    known = {f.name for f in dataclasses.fields(CellStatus)}
    return CellStatus(**{k: v for k, v in obj.items() if k in known})


def status_from_json(path: Path, text: str) -> CellStatus:
    """The ``CellStatus`` of the text of a ``status.json`` read from ``path`` (``parse_status``);
    ``DamagedFile`` naming the file if it is not JSON or does not fit the schema."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DamagedFile(path, f"not valid JSON ({'empty file' if not text.strip() else exc})") from None
    return parse_status(path, obj)


class CellDir:
    """Paths and status of one cell under a sweep directory."""

    def __init__(self, sweep_dir: str | Path, cid: str):
        self.sweep_dir = Path(sweep_dir)
        self.cell_id = cid
        self.path = sweepdir.cell_dir(self.sweep_dir, cid)

    @property
    def status_path(self) -> Path:
        return sweepdir.status_path(self.path)

    @property
    def config_path(self) -> Path:
        """The resolved config of the cell's last run."""
        return sweepdir.config_path(self.path)

    def seed_dir(self, seed: int) -> Path:
        return sweepdir.seed_dir(self.path, seed)

    def group_dir(self, group: str) -> Path:
        return sweepdir.group_dir(self.path, group)

    def metrics_path(self, key: str, family: str) -> Path:
        return sweepdir.metrics_cache_path(self.path, key, family)

    def workdir(self, key: str, family: str) -> Path:
        return sweepdir.work_dir(self.path, key, family)

    def result_path(self, table: str, key: str) -> Path:
        """``<sweep_dir>/results/<table>/<cell_id>-<key>.parquet``: the rows of this cell for the settings hash
        ``key`` of the table's metric families (see ``landscape.job.table_keys``)."""
        return sweepdir.result_path(self.sweep_dir, table, self.cell_id, key)

    def result_name(self, table: str, key: str) -> str:
        """Name of a result file in the status record: ``<table>/<cell_id>-<key>.parquet``."""
        return sweepdir.result_name(table, self.cell_id, key)

    def recorded_path(self, name: str) -> Path:
        """The path of the result file the status records as ``name``."""
        return sweepdir.recorded_path(self.sweep_dir, name)

    @property
    def lease_path(self) -> Path:
        return sweepdir.lease_path(self.path)

    def read_status(self) -> CellStatus | None:
        """The cell's status; None if absent; ``DamagedFile`` (naming the file) if unreadable."""
        try:
            text = self.status_path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise DamagedFile(self.status_path, f"unreadable ({exc})") from None
        return status_from_json(self.status_path, text)

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


def clean_temporary_files(cell: CellDir, keep: Path | None = None) -> list[Path]:
    """Remove temporary files (``.<name>.tmp-*``, staged result files) left by killed or failed writes in the cell's directory and
    in the cell's result files' directories; only the lease holder calls this. Returns what was removed.

    Everything in the cell is written by the lease holder alone, except the lease itself: other processes
    write ``.lease.json*.tmp-*`` while they try to take it, and the holder's heartbeat while it renews it. Those
    are left alone until they are ``STALE_TEMPORARY_S`` old (removing one under its writer made that writer's
    link fail: a concurrent launch lost a cell to it)."""
    removed = []
    candidates = []
    for root, dirs, names in os.walk(cell.path):  # holder directories (and those being removed) are not looked in;
        dirs[:] = [d for d in dirs if not d.startswith(sweepdir.PRIVATE_DIR_PREFIXES)]  # one vanishing: skipped
        candidates += [Path(root, n) for n in names if n.startswith(".") and ".tmp-" in n]
    now = time.time()
    if keep is not None:  # holder directories of earlier holders (killed between creating theirs and linking)
        for d in cell.path.glob(f"{sweepdir.HOLDER_PREFIX}*"):
            try:
                if d != keep and d.is_dir() and now - d.stat().st_mtime > STALE_TEMPORARY_S:
                    check_fence(cell.status_path)
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
            except FileNotFoundError:
                pass
    lease_mark = f".{cell.lease_path.name}"

    def in_use(p: Path) -> bool:
        try:
            return p.name.startswith(lease_mark) and now - p.stat().st_mtime < STALE_TEMPORARY_S
        except FileNotFoundError:
            return True  # gone already: its writer finished

    candidates = [p for p in candidates if not in_use(p)]
    for table in sweepdir.table_dirs(cell.sweep_dir):
        candidates += [p for p in table.glob(f".*{cell.cell_id}-*") if ".tmp-" in p.name or p.name.endswith(".staged")]
    for p in candidates:
        try:
            check_fence(p)
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def file_problem(path: Path, rec: dict[str, Any], verify: bool = True) -> str | None:
    """Why the result file ``path`` does not match its status record ``rec`` (None: intact), by its content:
    its SHA-256 is computed every time (size and modification time prove nothing: a flipped bit keeps both).
    ``verify`` is accepted for older callers and ignored. A link leaving the sweep is a problem too."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path}: missing (recorded in the cell's status)"
    if not os.path.isfile(path):
        return f"{path}: damaged (not a regular file)"
    outside = link_outside(path, sweepdir.sweep_of_result(path))
    if outside:
        return f"{path}: damaged ({outside})"
    if st.st_size != rec.get("size") and rec.get("size") is not None:
        return f"{path}: damaged ({st.st_size} bytes, {rec.get('size')} recorded)"
    try:
        if sha256_file(path) != rec.get("sha256"):
            return f"{path}: damaged (SHA-256 differs from the one recorded)"
    except OSError as exc:
        return f"{path}: damaged (unreadable: {exc})"
    return None


def link_outside(path: Path | str, root: Path | str) -> str | None:
    """Why ``path`` must not be served because it is a link that leaves ``root`` (None: not a link, or one that
    stays inside)."""
    if not os.path.islink(path):
        return None
    target = os.path.realpath(path)
    base = os.path.realpath(root)
    if target == base or target.startswith(base + os.sep):
        return None
    return f"a link leaving the sweep (to {target})"


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
"""A lease whose heartbeat did not move for this many heartbeat intervals (of the taker's own clock) is stale."""


@dataclass(frozen=True)
class LeaseRecord:
    """Contents of ``lease.json`` (written once by its holder, never rewritten): the holder's ``token`` (names
    its directory ``.holder-<token>`` and its heartbeat file in it), host, pid, SLURM job and heartbeat interval;
    ``acquired_at`` (the holder's clock) is shown, never used to decide anything. ``beats``/``beat_at`` are read
    from leases of older versions."""

    token: str
    host: str | None = None
    pid: int | None = None
    slurm_job_id: str | None = None
    interval: float | None = None
    acquired_at: float | None = None
    beats: int | None = None
    beat_at: float | None = None


_LEASE_FIELDS: dict[str, tuple[Any, str]] = {
    "token": (lambda v: isinstance(v, str) and bool(_TOKEN.fullmatch(v)), "1 to 64 letters, digits, _ or -"),
    "host": _OPTIONAL_STR,
    "slurm_job_id": _OPTIONAL_STR,
    "pid": (lambda v: v is None or (_is_int(v) and v > 0), "a positive integer or null"),
    "interval": (lambda v: v is None or (_is_number(v) and v > 0), "a positive finite number (seconds) or null"),
    "acquired_at": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "beats": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0 or null"),
    "beat_at": (lambda v: v is None or _is_number(v), "a finite number or null"),
}


def parse_lease(path: Path, raw: bytes) -> LeaseRecord:
    """The ``LeaseRecord`` of the bytes of ``lease.json``, every field checked (``DamagedFile`` naming the file,
    the key and the value otherwise)."""
    try:
        obj = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DamagedFile(path, f"not valid JSON ({'empty file' if not raw.strip() else exc})") from None
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"expected a JSON object, found {type(obj).__name__}")
    if "token" not in obj:
        raise DamagedFile(path, "token: missing (a lease names its holder's token)")
    for key, (ok, allowed) in _LEASE_FIELDS.items():
        if key in obj and not ok(obj[key]):
            raise _bad(path, key, obj[key], allowed)
    return LeaseRecord(**{k: obj[k] for k in _LEASE_FIELDS if k in obj})


_NOT_A_FILE = b"\0not a file"


class Lease:
    """Exclusive right of one process to work on a cell, safe on shared (NFS-like) filesystems, fencing a holder
    that lost it.

    To take a free cell, a process creates its own directory ``.holder-<token>`` in the cell, then ``lease.json``
    with ``os.link`` from a fully written temporary file (atomic, fails if the file exists, on local and NFS
    filesystems). ``lease.json`` is never rewritten while held: the holder's heartbeat (``renew``) rewrites
    ``.holder-<token>/beat`` (a counter). Every write of the holder under the cell goes through its directory
    (``fence``; ``files.atomic_write``).

    A lease is stale when its holder's process is gone (same host), or when neither ``lease.json`` nor its
    heartbeat file changed while this process watched them for ``stale_beats`` heartbeat intervals of its own
    monotonic clock (no timestamp of the holder is trusted: its clock may be skewed). A damaged ``lease.json``
    (not JSON, wrong types, a directory) is named in a warning and taken over at once (set aside as
    ``.lease.json.damaged-<token>``). A stale lease is taken over under a short takeover guard
    (``lease.json.takeover``, created the same way), after checking it is still the same: the old holder's
    directory is renamed away first (from then on each of its writes fails: ``LeaseLost``), then ``lease.json``
    is replaced.
    """

    def __init__(self, cell: CellDir, interval: float, stale_beats: int | None = None):
        self.cell = cell
        self.interval = float(interval)
        beats = os.environ.get("LANDSCAPE_LEASE_STALE_BEATS")
        self.stale_beats = int(beats) if stale_beats is None and beats else (stale_beats or LEASE_STALE_BEATS)
        self.token = uuid.uuid4().hex
        self.beats = 0
        self.lost = False
        self._seen: dict[tuple[bytes, bytes | None], float] = {}
        self._warned: set[bytes] = set()

    @property
    def path(self) -> Path:
        return self.cell.lease_path

    @property
    def holder_dir(self) -> Path:
        """This holder's own directory (exists while it holds the lease; see ``files.Fence``)."""
        return sweepdir.holder_dir(self.cell.path, self.token)

    @property
    def stale_after(self) -> float:
        return self.interval * self.stale_beats

    def fence(self) -> Fence:
        """The fence of this holder's writes: the cell's directory and its result files."""
        return Fence.for_cell(
            self.holder_dir.absolute(), self.cell.path, sweepdir.results_dir(self.cell.sweep_dir), self.cell.cell_id
        )

    def _record(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "interval": self.interval,
            "acquired_at": time.time(),
        }

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

    def _raw(self) -> bytes | None:
        """The bytes of ``lease.json`` (``_NOT_A_FILE`` for a directory or an unreadable file), None if absent."""
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            return _NOT_A_FILE

    def _parse(self, raw: bytes) -> LeaseRecord:
        if raw == _NOT_A_FILE:
            kind = "a directory" if self.path.is_dir() else "unreadable"
            raise DamagedFile(self.path, f"not a lease file ({kind})")
        return parse_lease(self.path, raw)

    def _beat_of(self, token: str) -> bytes | None:
        try:
            return (sweepdir.holder_dir(self.cell.path, token) / "beat").read_bytes()
        except OSError:
            return None

    def holder(self) -> dict[str, Any] | None:
        """The current lease record (``{}`` if the file is damaged), or None if nobody holds the cell."""
        raw = self._raw()
        if raw is None:
            return None
        try:
            return dataclasses.asdict(self._parse(raw))
        except DamagedFile:
            return {}

    def _stale(self, raw: bytes) -> tuple[bool, bytes | None]:
        """Whether the lease whose file holds ``raw`` belongs to a holder that is gone, and the heartbeat seen."""
        try:
            rec = self._parse(raw)
        except DamagedFile as exc:
            if raw not in self._warned:
                self._warned.add(raw)
                log.warning(
                    "cell %s: damaged lease file %s (%s): set aside and taken over",
                    self.cell.cell_id,
                    exc.path,
                    exc.reason,
                )
            return True, None
        beat = self._beat_of(rec.token)
        now = time.monotonic()
        first = self._seen.setdefault((raw, beat), now)
        if now - first > self.stale_after:
            return True, beat  # neither the lease nor its heartbeat moved for stale_beats of our intervals
        if rec.host == socket.gethostname() and rec.pid is not None and not _pid_alive(rec.pid):
            return True, beat
        return False, beat

    def problem(self) -> DamagedFile | None:
        """Why ``lease.json`` is damaged (None: absent or a valid lease)."""
        raw = self._raw()
        try:
            if raw is not None:
                self._parse(raw)
        except DamagedFile as exc:
            return exc
        return None

    def is_stale(self, rec: dict[str, Any] | None = None) -> bool:
        """Whether the current lease belongs to a holder that is gone (see the class docstring)."""
        raw = self._raw()
        return raw is not None and self._stale(raw)[0]

    def try_acquire(self) -> bool:
        """Take the lease if it is free or stale; True on success."""
        self.beats = 0
        self.holder_dir.mkdir(parents=True, exist_ok=True)
        ok = False
        try:
            if self._link_new(self.path, self._record()):
                ok = True
            else:
                raw = self._raw()
                if raw is not None:
                    stale, beat = self._stale(raw)
                    ok = stale and self._take_over(raw, beat)
            if ok and not self.holder_dir.is_dir():  # removed under us: not ours to write with
                log.warning(
                    "cell %s: the holder directory %s vanished after taking the lease",
                    self.cell.cell_id,
                    self.holder_dir,
                )
                self._unlink_if_ours()
                ok = False
            self.lost = not ok
            return ok
        finally:
            if not ok:
                shutil.rmtree(self.holder_dir, ignore_errors=True)

    def _guard(self) -> Path | None:
        """Take the takeover guard (None if another process holds it)."""
        guard = self.path.with_name(self.path.name + ".takeover")
        if self._link_new(guard, {"token": self.token, "host": socket.gethostname(), "pid": os.getpid()}):
            return guard
        try:  # a takeover guard left by a process killed mid-takeover
            if time.time() - guard.stat().st_mtime > max(self.stale_after, 60.0):
                guard.unlink()
        except FileNotFoundError:
            pass
        return None

    def _take_over(self, stale: bytes, beat: bytes | None) -> bool:
        guard = self._guard()
        if guard is None:
            return False
        try:
            raw = self._raw()
            if raw is not None and raw != stale:
                return False  # replaced meanwhile
            try:
                rec: LeaseRecord | None = self._parse(stale)
            except DamagedFile:
                rec = None
            if rec is not None and self._beat_of(rec.token) != beat:
                return False  # it beat meanwhile: not stale any more
            log.warning(
                "cell %s: taking over the stale lease of %s",
                self.cell.cell_id,
                {k: getattr(rec, k) for k in ("host", "pid", "slurm_job_id")} if rec else "a damaged file",
            )
            if rec is not None:  # fence the old holder: from now on each of its writes fails
                old = sweepdir.holder_dir(self.cell.path, rec.token)
                fenced = sweepdir.fenced_dir(self.cell.path, rec.token, self.token)
                try:
                    os.rename(old, fenced)
                    shutil.rmtree(fenced, ignore_errors=True)
                except FileNotFoundError:
                    pass
            if raw is not None:
                if rec is None:
                    os.replace(self.path, self.path.with_name(f".{self.path.name}.damaged-{self.token}"))
                else:
                    self.path.unlink(missing_ok=True)
            return self._link_new(self.path, self._record())
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
                log.info(
                    "cell %s is being worked on by %s (pid %s): waiting for its lease",
                    self.cell.cell_id,
                    rec.get("host"),
                    rec.get("pid"),
                )
                logged = True
            time.sleep(poll)

    def _ours(self) -> bool:
        raw = self._raw()
        if raw is None:
            return False
        try:
            return self._parse(raw).token == self.token
        except DamagedFile:
            return False

    def held(self) -> bool:
        """Whether ``lease.json`` still names this process and its holder directory is still there."""
        return self._ours() and self.holder_dir.is_dir()

    def check(self) -> None:
        """``LeaseLost`` unless this process still holds the lease."""
        if not self.held():
            self.lost = True
            raise LeaseLost(f"the lease of cell {self.cell.cell_id} ({self.path}) was taken over by another process")

    def renew(self) -> bool:
        """One heartbeat: rewrite ``.holder-<token>/beat`` with ``beats`` + 1; False (and ``lost``) if the lease
        was taken over (its holder directory is gone, or ``lease.json`` names another holder)."""
        if not self.held():
            self.lost = True
            return False
        self.beats += 1
        beat = self.holder_dir / "beat"
        tmp = self.holder_dir / f".beat.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            tmp.write_text(str(self.beats))
            os.replace(tmp, beat)
        except FileNotFoundError:
            self.lost = True
            return False
        return True

    def _unlink_if_ours(self) -> None:
        guard = self._guard()
        if guard is None:
            return  # someone is taking the lease over right now: it is not ours to remove
        try:
            if self._ours():
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def release(self) -> None:
        """Give the lease back: the holder directory goes first (no write of ours lands after this), then
        ``lease.json`` if it still names us (checked under the takeover guard, so never another holder's)."""
        gone = sweepdir.released_dir(self.cell.path, self.token)
        try:
            os.rename(self.holder_dir, gone)
            shutil.rmtree(gone, ignore_errors=True)
        except FileNotFoundError:
            return  # fenced: the lease is another process's
        self._unlink_if_ours()


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
            start = (
                min(i for i in (low.find("trying to"), low.find("unsupported")) if i >= 0)
                if ("trying to" in low or "unsupported" in low)
                else 0
            )
            return FileProblem(path, "unsafe", f"refused to load (it would run code): {text[start : start + 140]}")
        return FileProblem(path, "damaged", f"{type(exc).__name__}: {text[:160]}")
    return None


RESUME_STATE = sweepdir.RESUME_STATE
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


def inspect_cell_files(
    cell: CellDir, checkpoints: bool = True, recorded: dict[str, str] | None = None
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
                out.append(
                    FileProblem(path, "damaged", "SHA-256 differs from the one recorded at the cell's last commit")
                )
            bad.add(path)
    files = _visible_files(cell.path)
    for path in files:
        if path.suffix != ".json" or path.parent == cell.path or path in bad:
            continue
        try:
            obj = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            out.append(FileProblem(path, "damaged", f"not valid JSON ({str(exc)[:120] or 'empty file'})"))
            continue
        wrong = _cache_problem(path.relative_to(cell.path), obj)
        if wrong:
            out.append(FileProblem(path, "damaged", wrong))
    if checkpoints:
        for path in files:
            if path.suffix == ".pt" and path not in bad:
                problem = _checkpoint_problem(path)
                if problem is not None:
                    out.append(problem)
    return out


def _visible_files(root: Path) -> list[Path]:
    """Every file under ``root`` outside hidden names (temporaries, quarantined files, holder directories),
    sorted; a directory that vanishes meanwhile (another process's holder directory) is skipped."""
    out = []
    for where, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        out += [Path(where, n) for n in names if not n.startswith(".")]
    return sorted(out)


_TRAIN_RESULT_FIELDS: dict[str, tuple[Any, str]] = {
    "status": (lambda v: v in ("done", "diverged"), "done or diverged"),
    "epochs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "seconds": (lambda v: _is_number(v), "a finite number"),
    "history": (
        lambda v: isinstance(v, list) and all(x is None or isinstance(x, (int, float)) for x in v),
        "a list of numbers",
    ),
    "resumed_from_epoch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "vectorized": (lambda v: isinstance(v, bool), "true or false"),
    "reason": _OPTIONAL_STR,
    "final_sha256": _OPTIONAL_STR,
}


def _cache_problem(rel: Path, obj: Any) -> str | None:
    """Why the JSON value ``obj`` of the cell's file ``rel`` does not fit its schema (None: it does): a training
    result (``seeds/<s>/result.json``: the fields of ``training.TrainResult``) or a metric cache
    (``metrics/<key>/<family>.json``: ``{"values": {...}, "tables": {...}, "error": str | null}``, or the flat
    object of schema version 1)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, found {type(obj).__name__}"
    parts = rel.parts
    if len(parts) == 3 and parts[0] == sweepdir.SEEDS and parts[2] == "result.json":
        for key in ("status", "epochs", "steps", "seconds"):
            if key not in obj:
                return f"{key}: missing (a training result has status, epochs, steps, seconds)"
        return _field_problem(obj, _TRAIN_RESULT_FIELDS, "a training result")
    elif parts and parts[0] == sweepdir.METRICS and "values" in obj:
        checks = {
            "values": (lambda v: isinstance(v, dict), "an object of column -> value"),
            "tables": (
                lambda v: (
                    v is None
                    or (
                        isinstance(v, dict)
                        and all(
                            isinstance(rows, list) and all(isinstance(r, dict) for r in rows) for rows in v.values()
                        )
                    )
                ),
                "an object of table -> list of row objects",
            ),
            "error": _OPTIONAL_STR,
        }
        return _field_problem(obj, checks, "a metric cache (values, tables, error)")
    return None


def _field_problem(obj: dict, fields: dict[str, tuple[Any, str]], what: str) -> str | None:
    """The first key of ``obj`` that is not in ``fields`` or whose value fails its check, as a message."""
    for key, value in obj.items():
        if key not in fields:
            return f"{key}: not a field of {what}"
        ok, allowed = fields[key]
        if not ok(value):
            return f"{key}={value!r:.80}: expected {allowed}"
    return None


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
            check_fence(p)
            os.replace(p, target)
            moved.append(target)
    return moved
