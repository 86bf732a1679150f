"""``landscape-status SWEEP_DIR``: the state of a sweep, read from the files on disk alone.

Every cell planned by a launch (``<sweep_dir>/launches/*.json``) or found under ``<sweep_dir>/cells/`` is
counted once, in one of these states:

- ``done``: finished, every seed trained (``status.json`` state ``done``, no diverged seed);
- ``diverged``: finished, at least one seed diverged (a result, not an error);
- ``failed``: the job raised; its error line is shown;
- ``running``: a job is working on it (its process is alive, or its heartbeat is recent);
- ``interrupted``: marked running, but its process is dead on this host or its heartbeat is older than
  ``--stale-after`` seconds (killed, preempted and not yet requeued, or the machine died);
- ``pending``: planned but never started.

A finished cell whose metric families could not compute some values (each stored as a typed null with the
reason in ``<family>.error``) is listed with the count of such values per family and their reasons.

SLURM's own job state is not used (it says COMPLETED for failed Hydra tasks). The rerun command printed
is the latest launch's own multirun command: the sweeper skips done cells, so it runs only what is
missing, failed or interrupted, resuming from checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from landscape.cell import CellDir, CellStatus

STATES = ("done", "diverged", "failed", "running", "interrupted", "pending")
STALE_AFTER_S = 300.0
"""Default age (seconds) of a running cell's last heartbeat after which it counts as interrupted."""


@dataclass
class CellReport:
    """One cell of a sweep as seen on disk."""

    cell_id: str
    state: str
    error: str | None = None
    overrides: list[str] = field(default_factory=list)
    seeds: dict[str, str] = field(default_factory=dict)
    host: str | None = None
    pid: int | None = None
    slurm_job_id: str | None = None
    attempts: int = 0
    age_s: float | None = None
    note: str | None = None
    metric_errors: list[dict[str, str]] = field(default_factory=list)


@dataclass
class SweepReport:
    """A sweep's cells, counts per state and the command that reruns what is not done."""

    sweep_dir: str
    counts: dict[str, int]
    cells: list[CellReport]
    rerun: str | None
    launches: int


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def classify(status: CellStatus | None, now: float, host: str, stale_after_s: float) -> tuple[str, str | None]:
    """State of a cell (one of ``STATES``) from its status marker, and a note explaining ``interrupted``."""
    if status is None:
        return "pending", None
    if status.state == "done":
        return ("diverged" if any(v == "diverged" for v in status.seeds.values()) else "done"), None
    if status.state == "failed":
        return "failed", None
    age = now - (status.updated_at or 0.0)
    if status.host == host and status.pid is not None and not _pid_alive(status.pid) and not status.slurm_job_id:
        return "interrupted", f"process {status.pid} on {host} is gone"
    if status.host == host and status.pid is not None and status.slurm_job_id and not _pid_alive(status.pid):
        return "interrupted", f"SLURM job {status.slurm_job_id}: process {status.pid} is gone (requeued or killed)"
    if age > stale_after_s:
        return "interrupted", f"no heartbeat for {age:.0f} s (stale)"
    return "running", None


def _launch_records(sweep_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted((sweep_dir / "launches").glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return records


def rerun_command(record: dict[str, Any] | None, sweep_dir: Path) -> str | None:
    """The shell command that repeats a launch (done cells are skipped by the sweeper)."""
    if record is None:
        return None
    argv = record.get("argv")
    if argv:
        cmd = shlex.join(["landscape", *argv])
    else:
        cmd = shlex.join(["landscape", "-m", *record.get("arguments", []), f"hydra.sweep.dir={sweep_dir.resolve()}"])
    cwd = record.get("cwd")
    return f"cd {shlex.quote(cwd)} && {cmd}" if cwd else cmd


def sweep_report(sweep_dir: str | Path, stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> SweepReport:
    """Read every launch record and cell status of ``sweep_dir`` (see the module docstring)."""
    from landscape.provenance import host as this_host

    sweep_dir = Path(sweep_dir)
    now = time.time() if now is None else now
    records = _launch_records(sweep_dir)
    planned: dict[str, list[str]] = {}
    for rec in records:
        for c in rec.get("cells", []):
            if c.get("cell_id"):
                planned[c["cell_id"]] = list(c.get("overrides", []))
    on_disk = sorted(p.name for p in (sweep_dir / "cells").glob("*") if (p / "status.json").is_file())
    host = this_host()
    cells = []
    for cid in sorted(set(planned) | set(on_disk)):
        status = CellDir(sweep_dir, cid).read_status()
        state, note = classify(status, now, host, stale_after_s)
        rep = CellReport(cid, state, overrides=planned.get(cid, status.overrides if status else []), note=note)
        if status is not None:
            rep.error, rep.seeds, rep.host, rep.pid = status.error, dict(status.seeds), status.host, status.pid
            rep.slurm_job_id, rep.attempts = status.slurm_job_id, status.attempts
            rep.age_s = round(now - (status.updated_at or now), 1)
            rep.metric_errors = list(status.metric_errors)
            if state in ("done", "diverged", "running"):
                rep.error = None if state != "running" else status.error
        cells.append(rep)
    counts = {s: sum(c.state == s for c in cells) for s in STATES}
    todo = any(c.state in ("failed", "interrupted", "pending") for c in cells)
    rerun = rerun_command(records[-1] if records else None, sweep_dir) if todo else None
    return SweepReport(str(sweep_dir), counts, cells, rerun, len(records))


def format_report(rep: SweepReport, verbose: bool = False) -> str:
    total = sum(rep.counts.values())
    lines = [f"sweep {rep.sweep_dir}: {total} cells ({rep.launches} launch record(s))",
             "  " + "  ".join(f"{s} {rep.counts[s]}" for s in STATES)]
    failed = [c for c in rep.cells if c.state == "failed"]
    if failed:
        lines.append("failed cells:")
        lines += [f"  {c.cell_id}  {' '.join(c.overrides)}\n      {c.error}" for c in failed]
    interrupted = [c for c in rep.cells if c.state == "interrupted"]
    if interrupted:
        lines.append("interrupted cells (marked running, but their job is gone; the rerun resumes them):")
        lines += [f"  {c.cell_id}  {' '.join(c.overrides)}  ({c.note})" for c in interrupted]
    with_errors = [c for c in rep.cells if c.metric_errors and c.state in ("done", "diverged")]
    if with_errors:
        n = sum(len(c.metric_errors) for c in with_errors)
        lines.append(f"metric errors: {n} value(s) in {len(with_errors)} cell(s) could not be computed "
                     "(typed nulls; the reason is in <family>.error):")
        for c in with_errors:
            lines.append(f"  {c.cell_id}  {' '.join(c.overrides)}")
            by_family: dict[str, list[dict[str, str]]] = {}
            for e in c.metric_errors:
                by_family.setdefault(e.get("family", "?"), []).append(e)
            for fam, errs in by_family.items():
                reasons = list(dict.fromkeys(e.get("error", "") for e in errs))
                lines.append(f"      {fam}: {len(errs)} ({', '.join(e.get('who', '?') for e in errs)}): {reasons[0]}"
                             + (f" (+{len(reasons) - 1} other reason(s))" if len(reasons) > 1 else ""))
    diverged = [c for c in rep.cells if c.state == "diverged"]
    if diverged and verbose:
        lines.append("cells with diverged seeds:")
        lines += [f"  {c.cell_id}  {' '.join(c.overrides)}  seeds {c.seeds}" for c in diverged]
    if verbose:
        lines.append("all cells:")
        lines += [f"  {c.cell_id}  {c.state:11}  {' '.join(c.overrides)}" for c in rep.cells]
    if rep.rerun:
        lines += ["rerun what is missing or failed (done cells are skipped):", f"  {rep.rerun}"]
    elif total:
        lines.append("nothing to rerun" + (" (cells still running)" if rep.counts["running"] else ": every cell is done"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="landscape-status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--stale-after", type=float, default=STALE_AFTER_S,
                        help="seconds without heartbeat after which a running cell counts as interrupted")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every cell")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"landscape-status: {args.sweep_dir}: no such sweep directory", file=sys.stderr)  # noqa: T201
        return 2
    rep = sweep_report(args.sweep_dir, args.stale_after)
    if args.json:
        print(json.dumps(asdict(rep), indent=1))  # noqa: T201 - CLI output
    else:
        print(format_report(rep, args.verbose))  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    sys.exit(main())
