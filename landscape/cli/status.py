"""``landscape-status SWEEP_DIR``: the state of a sweep, read from the files on disk alone.

Every cell planned by a launch (``<sweep_dir>/launches/*.json``) or found under ``<sweep_dir>/cells/`` is
counted once, in one of these states:

- ``done``: finished, every seed trained (``status.json`` state ``done``, no diverged seed);
- ``diverged``: finished, at least one seed diverged (a result, not an error);
- ``failed``: the job raised; its error line is shown;
- ``running``: a job is working on it (its process is alive, or its heartbeat is recent);
- ``interrupted``: marked running, but its process is dead on this host or its heartbeat is older than
  ``--stale-after`` seconds (killed, preempted and not yet requeued, or the machine died);
- ``pending``: planned but never started;
- ``damaged``: its ``status.json`` is unreadable, or a result file it records is missing or damaged (the next
  launch recomputes what is needed from the intact checkpoints and caches).

A result file counts as intact only by its content: its SHA-256 is computed and compared with the one its
cell's status records (a flipped bit keeps size and modification time), so damage that ``load`` refuses is
reported here and the next launch recomputes the cell. A status or lease file of wrong types is ``damaged``,
named with the key and the value.

``--verify`` also checks every checkpoint (loaded with ``weights_only=True``), metric cache and training
result, each cell's ``lease.json``, and names result files no status records (a run that did not finish, a
file copied from another sweep, a stray file or directory, a link leaving the sweep: none is served); it names
each bad file and exits 1. ``--repair`` moves damaged checkpoints and caches aside and forgets damaged result files, so
the next launch recomputes them.

A finished cell whose metric families could not compute some values (each stored as a typed null with the
reason in ``<family>.error``) is listed with the count of such values per family and their reasons.

SLURM's own job state is not used (it says COMPLETED for failed Hydra tasks). The command printed at the end
completes every grid launched into the directory: the launches' own multirun commands (as few as hold every
cell not done, several when different grids were launched into it), pointed at the directory that was asked
about (a copied sweep reruns into the copy): the sweeper skips done cells, so they run only what is missing,
failed, damaged or interrupted, resuming from checkpoints. Cells are listed in grid order (by the values of
the knobs the grid varies).
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

from landscape import sweepdir
from landscape.cell import CellDir, CellStatus, DamagedFile

STATES = ("done", "diverged", "failed", "running", "interrupted", "pending", "damaged")
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
    """A sweep's cells (in grid order, ``grid_order``), counts per state and the command that completes every
    grid launched into the directory: ``rerun_commands``, one ``landscape -m`` command per launch needed (each
    skips its done cells), and ``rerun``, all of them as one shell line (None: nothing to do)."""

    sweep_dir: str
    counts: dict[str, int]
    cells: list[CellReport]
    rerun: str | None
    launches: int
    rerun_commands: list[str] = field(default_factory=list)


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


def launch_records(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every readable launch record of the sweep (``sweepdir.launch_record_paths``), oldest first: ``argv``,
    ``cwd``, ``arguments`` and the planned ``cells`` (``cell_id``, ``overrides``); a damaged one is named on
    stderr and skipped."""
    records = []
    for path in sweepdir.launch_record_paths(sweep_dir):
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            records.append(rec)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            print(
                f"landscape-status: damaged launch record {path} skipped ({str(exc)[:80] or 'empty'})", file=sys.stderr
            )
            continue
    return records


def rerun_command(record: dict[str, Any] | None, sweep_dir: Path) -> str | None:
    """The shell command that repeats a launch into ``sweep_dir`` (the directory asked about, whatever
    directory the launch wrote to); done cells are skipped by the sweeper."""
    if record is None:
        return None
    argv = record.get("argv") or ["-m", *record.get("arguments", [])]
    argv = [a for a in argv if not a.lstrip("+").startswith("hydra.sweep.dir=")]
    cmd = shlex.join(["landscape", *argv, f"hydra.sweep.dir={Path(sweep_dir).resolve()}"])
    cwd = record.get("cwd")
    return f"cd {shlex.quote(cwd)} && {cmd}" if cwd and Path(cwd).is_dir() else cmd


TODO_STATES = ("failed", "interrupted", "pending", "damaged")
"""States of a cell that the completing command (``completing_commands``) runs again."""


def completing_commands(records: list[dict[str, Any]], todo: dict[str, list[str]], sweep_dir: Path) -> list[str]:
    """The commands that run every cell of ``todo`` (``{cell_id: its overrides}``) into ``sweep_dir``: the
    launches whose planned cells hold them, newest first, as few as cover them all (each its own multirun: the
    sweeper skips its done cells), in launch order; a cell no launch planned (a single run) gets a one-cell
    multirun of its own overrides."""
    left = dict(todo)
    chosen: list[int] = []
    for i in range(len(records) - 1, -1, -1):
        ids = {c.get("cell_id") for c in records[i].get("cells", [])}
        if ids & set(left):
            chosen.append(i)
            for cid in ids:
                left.pop(cid, None)
    out = [c for c in (rerun_command(records[i], sweep_dir) for i in sorted(chosen)) if c]
    for overrides in left.values():
        if overrides:
            out.append(rerun_command({"argv": ["-m", *overrides]}, sweep_dir) or "")
    return list(dict.fromkeys(c for c in out if c))


def _knob_value(text: str) -> tuple[int, Any]:
    try:
        return 0, float(text)
    except ValueError:
        return 1, text


def grid_order(cells: list[CellReport]) -> list[CellReport]:
    """``cells`` sorted by the values of the knobs they vary (the override keys whose values differ between
    cells, in the order they appear in the overrides; numbers by value, then text), as the grid was written:
    the first knob slowest. Cells without overrides come last, by id."""
    keys: dict[str, set[str]] = {}
    parsed = []
    for c in cells:
        kv = dict(o.partition("=")[::2] for o in c.overrides)
        parsed.append(kv)
        for k, v in kv.items():
            keys.setdefault(k, set()).add(v)
    knobs = [k for k, values in keys.items() if len(values) > 1]

    def key(item: tuple[CellReport, dict[str, str]]) -> tuple:
        c, kv = item
        return (not c.overrides, tuple((k not in kv, _knob_value(kv.get(k, ""))) for k in knobs), c.cell_id)

    return [c for c, _ in sorted(zip(cells, parsed, strict=True), key=key)]


def sweep_report(
    sweep_dir: str | Path, stale_after_s: float = STALE_AFTER_S, now: float | None = None, check_results: bool = True
) -> SweepReport:
    """Read every launch record and cell status of ``sweep_dir`` (see the module docstring). ``check_results``:
    a finished cell whose result files are missing or damaged (by their SHA-256) is ``damaged`` (False: not
    read, e.g. for the summary at the end of a launch, which just wrote them)."""
    from landscape.provenance import host as this_host

    sweep_dir = Path(sweep_dir)
    now = time.time() if now is None else now
    records = launch_records(sweep_dir)
    planned: dict[str, list[str]] = {}
    for rec in records:
        for c in rec.get("cells", []):
            if c.get("cell_id"):
                planned[c["cell_id"]] = list(c.get("overrides", []))
    on_disk = [p.name for p in sweepdir.cell_dirs(sweep_dir) if os.path.lexists(sweepdir.status_path(p))]
    host = this_host()
    cells = []
    for cid in sorted(set(planned) | set(on_disk)):
        cell = CellDir(sweep_dir, cid)
        try:
            status = cell.read_status()
        except DamagedFile as exc:
            cells.append(
                CellReport(
                    cid,
                    "damaged",
                    error=f"{exc.path}: {exc.reason}",
                    overrides=planned.get(cid, []),
                    note=f"{exc.path}: {exc.reason}",
                )
            )
            continue
        state, note = classify(status, now, host, stale_after_s)
        if state in ("done", "diverged") and status is not None and check_results:
            bad = _result_problems(cell, status, verify=False)
            if bad:
                state, note = "damaged", "; ".join(bad)
        rep = CellReport(cid, state, overrides=planned.get(cid, status.overrides if status else []), note=note)
        if status is not None:
            rep.error, rep.seeds, rep.host, rep.pid = status.error, dict(status.seeds), status.host, status.pid
            rep.slurm_job_id, rep.attempts = status.slurm_job_id, status.attempts
            rep.age_s = round(now - (status.updated_at or now), 1)
            rep.metric_errors = list(status.metric_errors)
            if state in ("done", "diverged", "running"):
                rep.error = None if state != "running" else status.error
        cells.append(rep)
    cells = grid_order(cells)
    counts = {s: sum(c.state == s for c in cells) for s in STATES}
    commands = completing_commands(
        records, {c.cell_id: c.overrides for c in cells if c.state in TODO_STATES}, sweep_dir
    )
    return SweepReport(str(sweep_dir), counts, cells, " ; ".join(commands) or None, len(records), commands)


def _result_problems(cell: CellDir, status: CellStatus, verify: bool) -> list[str]:
    """Result files the status records that are missing or damaged (by their SHA-256, whatever ``verify``: a
    flipped bit keeps size and modification time), or links leaving the sweep."""
    from landscape.cell import file_problem

    out = []
    for name, rec in sorted(status.results.items()):
        problem = file_problem(cell.recorded_path(name), rec, verify)
        if problem:
            out.append(problem)
    return out


@dataclass
class Finding:
    """One bad file found by ``verify``: ``kind`` damaged | unsafe | uncommitted; ``cell_id`` its cell."""

    path: str
    kind: str
    reason: str
    cell_id: str | None = None


def verify(sweep_dir: str | Path, checkpoints: bool = True) -> list[Finding]:
    """Check every file of a sweep: each cell's ``status.json`` and ``lease.json``; each result file it records
    (exists, a regular file inside the sweep, same SHA-256); result files no status records (from a run that
    did not finish, copied from another sweep, stray files and directories, links leaving the sweep: none is
    served); every checkpoint (``weights_only=True``: nothing in it runs) and JSON cache of every cell."""
    from landscape.cell import Lease, file_problem, inspect_cell_files, link_outside

    sweep = Path(sweep_dir)
    found: list[Finding] = []
    recorded: set[str] = set()
    for path in sweepdir.cell_dirs(sweep):
        if not path.is_dir():
            continue
        cell = CellDir(sweep, path.name)
        try:
            status = cell.read_status()
        except DamagedFile as exc:
            found.append(Finding(str(exc.path), "damaged", exc.reason, cell.cell_id))
            status = None
        if status is not None:
            for name, rec in sorted(status.results.items()):
                recorded.add(name)
                f = cell.recorded_path(name)
                problem = file_problem(f, rec)
                if problem:
                    found.append(Finding(str(f), "damaged", problem.removeprefix(f"{f}: "), cell.cell_id))
        bad_lease = Lease(cell, 1.0).problem() if os.path.lexists(cell.lease_path) else None
        if bad_lease is not None:
            found.append(
                Finding(
                    str(bad_lease.path), "damaged", f"{bad_lease.reason} (the next launch sets it aside)", cell.cell_id
                )
            )
        for p in inspect_cell_files(cell, checkpoints=checkpoints, recorded=status.files if status else None):
            found.append(Finding(str(p.path), p.kind, p.reason, cell.cell_id))
    managed = sweepdir.cells_dir(sweep).is_dir()
    for table in sweepdir.table_dirs(sweep):
        for f in sorted(table.iterdir()):
            if not sweepdir.is_result_file(f.name):
                continue
            cid = sweepdir.cell_of_result(f.name)
            name = sweepdir.record_name(table.name, f.name)
            owner = cid if cid and sweepdir.cell_dir(sweep, cid).is_dir() else None
            outside = link_outside(f, sweep)
            if outside and name not in recorded:
                found.append(Finding(str(f), "foreign", f"{outside}: not served", owner))
            elif name not in recorded and managed and owner:
                found.append(
                    Finding(
                        str(f),
                        "uncommitted",
                        "not recorded by its cell's status (a run that did not "
                        "finish, a damaged status, or a file copied from another sweep): not served",
                        cid,
                    )
                )
            elif name not in recorded and managed:
                kind = "a directory" if f.is_dir() else "a file"
                found.append(
                    Finding(
                        str(f),
                        "foreign",
                        f"{kind} that no cell of this sweep records (copied from "
                        "another sweep, or a stray file): not served",
                        None,
                    )
                )
    return found


def repair(sweep_dir: str | Path, findings: list[Finding]) -> list[str]:
    """Act on ``verify``'s findings so the next launch recomputes what they concern: damaged and unsafe
    checkpoints and caches are moved aside (``.<name>.damaged`` / ``.unsafe``), damaged result files are
    dropped from their cell's status (and the cell marked ``failed``), a damaged status is moved aside.
    Returns what was done, one line per file."""
    from landscape.cell import FileProblem, quarantine

    done = []
    sweep = Path(sweep_dir)
    for f in findings:
        path = Path(f.path)
        if path.name == sweepdir.STATUS and f.kind == "damaged":
            path.replace(path.with_name(f".{path.name}.damaged"))
            done.append(f"{path}: moved aside; the next launch recomputes the cell")
        elif sweepdir.is_result_file(path.name) and f.cell_id:
            cell = CellDir(sweep, f.cell_id)
            try:
                status = cell.read_status()
            except DamagedFile:
                continue
            if status is None:
                continue
            name = sweepdir.record_name(path.parent.name, path.name)
            if status.results.pop(name, None) is not None:
                status.state, status.error = "failed", f"damaged result file {path}: recomputed by the next launch"
                cell.write_status(status)
                done.append(f"{path}: forgotten by its cell's status; the next launch recomputes it")
        elif f.kind in ("damaged", "unsafe") and path.exists():
            moved = quarantine(FileProblem(path, f.kind, f.reason))
            done.append(f"{path}: moved aside ({', '.join(str(m) for m in moved)})")
    return done


def format_report(rep: SweepReport, verbose: bool = False) -> str:
    total = sum(rep.counts.values())
    lines = [
        f"sweep {rep.sweep_dir}: {total} cells ({rep.launches} launch record(s))",
        "  " + "  ".join(f"{s} {rep.counts[s]}" for s in STATES),
    ]
    failed = [c for c in rep.cells if c.state == "failed"]
    if failed:
        lines.append("failed cells:")
        lines += [f"  {c.cell_id}  {' '.join(c.overrides)}\n      {c.error}" for c in failed]
    damaged = [c for c in rep.cells if c.state == "damaged"]
    if damaged:
        lines.append("damaged cells (the rerun recomputes them from what is intact):")
        lines += [f"  {c.cell_id}  {' '.join(c.overrides)}\n      {c.note}" for c in damaged]
    interrupted = [c for c in rep.cells if c.state == "interrupted"]
    if interrupted:
        lines.append("interrupted cells (marked running, but their job is gone; the rerun resumes them):")
        lines += [f"  {c.cell_id}  {' '.join(c.overrides)}  ({c.note})" for c in interrupted]
    with_errors = [c for c in rep.cells if c.metric_errors and c.state in ("done", "diverged")]
    if with_errors:
        n = sum(len(c.metric_errors) for c in with_errors)
        lines.append(
            f"metric errors: {n} value(s) in {len(with_errors)} cell(s) could not be computed "
            "(typed nulls; the reason is in <family>.error):"
        )
        for c in with_errors:
            lines.append(f"  {c.cell_id}  {' '.join(c.overrides)}")
            by_family: dict[str, list[dict[str, str]]] = {}
            for e in c.metric_errors:
                by_family.setdefault(e.get("family", "?"), []).append(e)
            for fam, errs in by_family.items():
                reasons = list(dict.fromkeys(e.get("error", "") for e in errs))
                lines.append(
                    f"      {fam}: {len(errs)} ({', '.join(e.get('who', '?') for e in errs)}): {reasons[0]}"
                    + (f" (+{len(reasons) - 1} other reason(s))" if len(reasons) > 1 else "")
                )
    diverged = [c for c in rep.cells if c.state == "diverged"]
    if diverged and verbose:
        lines.append("cells with diverged seeds:")
        lines += [f"  {c.cell_id}  {' '.join(c.overrides)}  seeds {c.seeds}" for c in diverged]
    if verbose:
        lines.append("all cells:")
        lines += [f"  {c.cell_id}  {c.state:11}  {' '.join(c.overrides)}" for c in rep.cells]
    if rep.rerun_commands:
        lines += [completing_header(len(rep.rerun_commands)), *(f"  {c}" for c in rep.rerun_commands)]
    elif total:
        lines.append(
            "nothing to rerun" + (" (cells still running)" if rep.counts["running"] else ": every cell is done")
        )
    return "\n".join(lines)


def completing_header(n_commands: int) -> str:
    """The line above the completing command(s) (``completing_commands``)."""
    if n_commands == 1:
        return "complete the grid (done cells are skipped, interrupted ones resume from their checkpoints):"
    return (
        f"complete the grids ({n_commands} launches into this directory hold cells not done; run each "
        "command, done cells are skipped, interrupted ones resume from their checkpoints):"
    )


def main(argv: list[str] | None = None) -> int:
    from landscape.cli.console import pipe_safe_stdout, plain

    pipe_safe_stdout()
    parser = argparse.ArgumentParser(
        prog="landscape-status", description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--stale-after",
        type=float,
        default=STALE_AFTER_S,
        help="seconds without heartbeat after which a running cell counts as interrupted",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="list every cell")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every result file against its SHA-256, every checkpoint and cache; exit 1 if any is bad",
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="with --verify: move damaged files aside so the next launch recomputes them",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"landscape-status: {args.sweep_dir}: no such sweep directory", file=sys.stderr)
        return 2
    if args.verify or args.repair:
        findings = verify(args.sweep_dir)
        for f in findings:
            print(f"{f.kind}: {f.path}: {f.reason}")
        if args.repair and findings:
            for line in repair(args.sweep_dir, findings):
                print(f"repaired: {line}")
        print(f"verify: {len(findings)} bad file(s)" if findings else "verify: every file is intact")
    rep = sweep_report(args.sweep_dir, args.stale_after)
    if args.json:
        print(json.dumps(asdict(rep), indent=1))
    else:
        print(format_report(rep, args.verbose))
    return 1 if (args.verify and not args.repair and findings) else 0


if __name__ == "__main__":
    sys.exit(main())
