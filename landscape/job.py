"""One grid cell end to end: validate, train every seed (resumably), measure, write rows, mark done.

``run_cell`` is what a Hydra job calls. Its steps, each resumable after a kill:

1. validate the config and compute the ``cell_id``; skip at once if the committed results of the cell already
   hold every requested seed and pair for these metric settings, intact (``missing_work``; nothing is
   written); else take the cell's lease (``cell.Lease``: wait while another process works on it, take over
   a dead holder's), remove temporary files of killed writers, and move damaged checkpoints and caches aside
   (an unsafe one, that would run code, refuses the cell);
2. build the data (deterministic subsample and label noise) on the job's device;
3. train each seed from its checkpoints (``landscape.training``); a diverged seed is a row with
   ``status = diverged``;
4. measure: every enabled model family (``training`` first) per model and pair family per pair of models
   (each result cached under the cell directory, so a rerun does not recompute it). A family that fails for
   one model or pair costs only its values there: typed nulls, the reason in ``<family>.error``, a warning in
   the log at once and an entry in ``status.json``'s ``metric_errors`` (``landscape-status`` shows them);
5. merge the rows into the ``models``, ``pairs`` and long-table files of the cell and settings key
   (``commit_results``: staged, recorded as pending, renamed into place), then write the ``done`` status that
   records their checksums (the commit). Any exception writes a ``failed`` status with the error and is re-raised;
   checkpoints and cached values of finished work stay.

The log (logger ``landscape.job``, INFO) says per cell where it starts (``cell ID start: overrides; seeds;
what it measures``), how long each seed trained, each metric family's time per model or pair, and where it
ends (``cell ID done in S s: seeds' status; test accuracy; what was measured; rows written where``). Progress
lines of the work (``landscape.progress``) name the cell and the phase of work (``progress.working_on``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import hashlib
import json
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from landscape import metrics as metrics_mod
from landscape import provenance, sweepdir
from landscape.cell import (
    CellDir,
    CellStatus,
    DamagedFile,
    Lease,
    LeaseLost,
    cell_id,
    clean_temporary_files,
    file_problem,
    inspect_cell_files,
    metrics_key,
    quarantine,
    read_json,
    resume_state_checksums,
    write_json,
)
from landscape.config import ConfigError, check, launch_problems
from landscape.data import CellData, load_data
from landscape.devices import resolve_device
from landscape.files import atomic_write, check_fence, fenced, fenced_replace, staging_name
from landscape.metrics import Family, ModelContext, PairContext, Result
from landscape.models import build_model, n_parameters
from landscape.progress import working_on
from landscape.results import SCHEMA_VERSION, schema_for
from landscape.results.schema import knob_columns
from landscape.training import RESULT, TrainResult, TrainSettings, make_loss, train_model
from landscape.vectorized import group_name, train_together, use_vectorized

log = logging.getLogger(__name__)


@dataclass
class CellOutcome:
    """What ``run_cell`` did: ``action`` is ``skipped`` (already done) or ``ran``."""

    cell_id: str
    action: str
    seeds: dict[str, str]
    seconds: float
    result_files: list[str]


def knob_values(cfg: Any, n_train: int | None) -> dict[str, Any]:
    """The flat knob columns of a row: every leaf of data/model/train (``train.batch_size`` resolved)."""
    out: dict[str, Any] = {}
    for name in knob_columns():
        value = OmegaConf.select(cfg, name)
        if isinstance(value, (DictConfig,)) or OmegaConf.is_list(value):
            value = OmegaConf.to_container(value)
        out[name] = value
    bs = out["train.batch_size"]
    out["train.batch_size"] = n_train if bs == "full" else (min(int(bs), n_train) if n_train else int(bs))
    out["data.subsample"] = float(out["data.subsample"])
    return out


def _plain(value: Any) -> Any:
    """Numpy/torch scalars and arrays -> Python values (for JSON caches and Arrow rows)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def run_cell(
    cfg: DictConfig,
    sweep_dir: str | Path,
    overrides: list[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CellOutcome:
    """Run (or resume, or skip) the cell of ``cfg`` under ``sweep_dir``; see the module docstring.

    ``should_stop`` (default: ``landscape.preemption.stop_requested``, set by the launcher's preemption
    signal handler) is polled by training; when true, training checkpoints and the cell stays ``running``
    with the error ``preempted: ...`` until the requeued job resumes it. While the cell runs, a heartbeat
    refreshes ``updated_at`` of its status every ``HEARTBEAT_S`` seconds (``landscape-status`` calls a
    ``running`` cell whose heartbeat is older than a few intervals stale).
    """
    from landscape import preemption

    if should_stop is None:
        should_stop = preemption.stop_requested
    t_start = time.perf_counter()
    try:
        check(cfg)
        problems = launch_problems(cfg, local=True, memory_bytes=_machine_memory())
        if problems:
            raise ConfigError(problems)
    except Exception as exc:
        _record_invalid(cfg, sweep_dir, overrides, exc)  # e.g. data that vanished after the launch was planned
        raise
    cid = cell_id(cfg)
    cell = CellDir(sweep_dir, cid)
    previous = _read_status(cell)
    if previous is not None and not missing_work(cfg, cell, previous):
        log.info("cell %s is done: skipped", cid)
        return CellOutcome(cid, "skipped", previous.seeds, time.perf_counter() - t_start, [])

    interval = float(os.environ.get("LANDSCAPE_HEARTBEAT_S", HEARTBEAT_S))
    lease = Lease(cell, interval)
    wait = os.environ.get("LANDSCAPE_LEASE", "wait") != "skip"
    if not lease.acquire(wait=wait):
        log.warning("cell %s is being worked on by another process: skipped (LANDSCAPE_LEASE=skip)", cid)
        return CellOutcome(cid, "busy", {}, time.perf_counter() - t_start, [])
    try:
        with fenced(lease.fence()):  # from here every write of the cell fails once the lease is taken over
            previous = _read_status(cell)  # the holder before us may have finished it
            if previous is None:
                _set_aside_damaged_status(cell, lease)
            if previous is not None and not missing_work(cfg, cell, previous):
                log.info("cell %s was finished by another process: skipped", cid)
                return CellOutcome(cid, "skipped", previous.seeds, time.perf_counter() - t_start, [])
            for p in clean_temporary_files(cell, keep=lease.holder_dir):
                log.info("removed the temporary file %s of an earlier run", p)
            return _run_leased(cfg, cell, lease, previous, overrides, should_stop, t_start)
    except LeaseLost as exc:
        log.warning("cell %s: %s; this process stops without writing", cid, exc)
        return CellOutcome(cid, "lost", {}, time.perf_counter() - t_start, [])
    finally:
        lease.release()


def _set_aside_damaged_status(cell: CellDir, lease: Lease) -> None:
    """Move a damaged ``status.json`` (any file or directory there that does not parse) aside as
    ``.status.json.damaged-<token>`` (kept for inspection); the run writes a new one."""
    try:
        cell.read_status()
        return
    except DamagedFile:
        pass
    if os.path.lexists(cell.status_path):
        target = cell.status_path.with_name(f".{cell.status_path.name}.damaged-{lease.token[:12]}")
        check_fence(cell.status_path)
        os.replace(cell.status_path, target)
        log.warning("cell %s: damaged status file moved aside to %s", cell.cell_id, target)


def _repair_resume_state(cell: CellDir) -> None:
    """Check the cell's checkpoints and caches before using them: a damaged one is named in a warning and
    moved aside (``.<name>.damaged``) so this run recomputes it; an unsafe one (it would run code) refuses the
    cell with an error naming it (``UnsafeFile``) and is never loaded."""
    try:
        recorded = (cell.read_status() or CellStatus("running", cell.cell_id)).files
    except DamagedFile:
        recorded = {}
    problems = inspect_cell_files(cell, recorded=recorded)
    unsafe = [p for p in problems if p.kind == "unsafe"]
    if unsafe:
        raise UnsafeFile(
            "; ".join(f"{p.path}: {p.reason}" for p in unsafe)
            + " (remove the file, or run `landscape-status --repair` to move it aside)"
        )
    for p in problems:
        quarantine(p)
        log.warning("damaged file %s (%s): moved aside, recomputed", p.path, p.reason)


class UnsafeFile(RuntimeError):
    """A file in the cell's directory that would run code when loaded; the message names it."""


def _machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _read_status(cell: CellDir) -> CellStatus | None:
    """The cell's status, or None if absent or damaged (a damaged one is named in a warning and rewritten)."""
    try:
        return cell.read_status()
    except DamagedFile as exc:
        log.warning(
            "damaged status file %s: %s; the cell is recomputed from its intact checkpoints and caches",
            exc.path,
            exc.reason,
        )
        return None


def _run_leased(
    cfg: DictConfig,
    cell: CellDir,
    lease: Lease,
    previous: CellStatus | None,
    overrides: list[str] | None,
    should_stop: Callable[[], bool],
    t_start: float,
) -> CellOutcome:
    status = CellStatus(
        state="running",
        cell_id=cell.cell_id,
        sweep=str(cfg.sweep_name),
        host=provenance.host(),
        pid=os.getpid(),
        slurm_job_id=os.environ.get("SLURM_JOB_ID"),
        attempts=(previous.attempts if previous else 0) + 1,
        started_at=time.time(),
        overrides=list(overrides or []),
        seeds=dict(previous.seeds) if previous else {},
        results=dict(previous.results) if previous else {},
        pending=dict(previous.pending) if previous else {},
        files=dict(previous.files) if previous else {},
    )
    heartbeat = _Heartbeat(cell, status, lease=lease)

    def stop() -> bool:  # a holder that lost its lease stops at once (its writes fail anyway: fenced)
        return lease.lost or should_stop()

    try:
        cell.write_status(status)
        atomic_write(cell.config_path, lambda tmp: OmegaConf.save(cfg, tmp, resolve=True))
        log.info("%s", start_line(cfg, cell.cell_id, overrides, status.attempts))
        _repair_resume_state(cell)
        with heartbeat:
            files, summary = _run(cfg, cell, status, stop, lease)
    except LeaseLost as exc:
        log.warning("cell %s: %s; this process stops without writing", cell.cell_id, exc)
        return CellOutcome(cell.cell_id, "lost", {}, time.perf_counter() - t_start, [])
    except BaseException as exc:
        from landscape.training import StopRequested

        if lease.lost and not isinstance(exc, (SystemExit, KeyboardInterrupt)):
            log.warning(
                "cell %s: the lease was taken over by another process (%s: %s); this process stops without writing",
                cell.cell_id,
                type(exc).__name__,
                exc,
            )
            return CellOutcome(cell.cell_id, "lost", {}, time.perf_counter() - t_start, [])
        if isinstance(exc, StopRequested):
            status.state, status.error = "running", f"preempted: {exc}"
        elif isinstance(exc, (SystemExit, KeyboardInterrupt)):  # requeue exit / Ctrl-C: resumable, not failed
            # the reason as raised (e.g. "signal SIGINT", a stop not taken within the grace), else the type
            why = str(exc) if isinstance(exc, KeyboardInterrupt) and str(exc) else type(exc).__name__
            status.state, status.error = "running", f"interrupted: {why}"
        else:
            status.state = "failed"
            status.error = (
                f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500] if str(exc) else type(exc).__name__
            )
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                status.error = f"disk full: {status.error}"
            status.traceback = traceback.format_exc()[-4000:]
        if lease.held():
            try:
                cell.write_status(status)
            except OSError as write_exc:  # e.g. still no space: the error is logged, the exception raised
                log.error("cell %s: could not record its error in %s: %s", cell.cell_id, cell.status_path, write_exc)
        raise
    status.state, status.error, status.traceback = "done", None, None
    cell.write_status(status)  # the commit (fenced: raises LeaseLost, handled by run_cell, if the lease was lost)
    # the commit is written: the previous versions are not needed
    for backup in sweepdir.committed_backups(cell.sweep_dir, cell.cell_id):
        check_fence(backup)
        backup.unlink(missing_ok=True)
    seconds = time.perf_counter() - t_start
    log.info("cell %s done in %.1f s: %s", cell.cell_id, seconds, summary)
    return CellOutcome(cell.cell_id, "ran", status.seeds, seconds, files)


def start_line(cfg: Any, cid: str, overrides: list[str] | None, attempt: int = 1) -> str:
    """The log line of a cell's start: its id, its overrides (the knob values that set it apart; the
    ``hydra`` ones left out), its seeds, the metric families it measures, and the attempt when not the first."""
    shown = [o for o in (overrides or []) if not o.lstrip("+~").startswith("hydra")]
    fams = [f.name for f in metrics_mod.enabled(cfg, "models")]
    pair_fams = [f.name for f in metrics_mod.enabled(cfg, "pairs")]
    measures = ", ".join(fams) + (f"; pairs: {', '.join(pair_fams)}" if pair_fams else "")
    return (
        f"cell {cid} start: {' '.join(shown) if shown else 'the base config (no overrides)'}; "
        f"seeds {','.join(str(int(x)) for x in cfg.train.seeds)}; measures {measures}"
        + (f"; attempt {attempt}" if attempt > 1 else "")
    )


def end_summary(
    sweep_dir: Path,
    model_rows: list[dict[str, Any]],
    families: list[str],
    pair_families: list[str],
    n_pairs: int,
    files: list[str],
    n_errors: int,
) -> str:
    """The tail of a cell's end line: each seed's status, test accuracy per done seed (and their mean), the
    families measured (models; pairs: how many pairs), the result files written (relative to the sweep
    directory) and the number of metric errors."""
    by_status: dict[str, list[str]] = {}
    for r in model_rows:
        by_status.setdefault(str(r["status"]), []).append(str(r["seed"]))
    parts = ["; ".join(f"seeds {','.join(v)} {k}" if len(v) > 1 else f"seed {v[0]} {k}" for k, v in by_status.items())]
    acc = [
        float(r["test_acc"])
        for r in model_rows
        if isinstance(r.get("test_acc"), (int, float)) and math.isfinite(float(r["test_acc"]))
    ]
    if acc:
        parts.append(
            "test_acc "
            + " ".join(f"{a:.3f}" for a in acc)
            + (f" (mean {sum(acc) / len(acc):.3f})" if len(acc) > 1 else "")
        )
    measured = ", ".join(families) + (f"; pairs ({n_pairs}): {', '.join(pair_families)}" if pair_families else "")
    parts.append(f"measured {measured}")
    if n_errors:
        parts.append(f"{n_errors} metric error(s) (status.json, landscape-status)")
    rel = []
    for f in files:
        try:
            rel.append(str(Path(f).relative_to(sweep_dir)))
        except ValueError:
            rel.append(str(f))
    parts.append(f"rows in {sweep_dir}: {', '.join(rel)}")
    return "; ".join(parts)


def _record_invalid(cfg: DictConfig, sweep_dir: str | Path, overrides: list[str] | None, exc: Exception) -> None:
    """Write a ``failed`` status for a cell whose config check failed in the job (if its id is computable)."""
    try:
        cid = cell_id(cfg)
    except Exception:  # noqa: BLE001 - not even an id: nothing to record
        return
    cell = CellDir(sweep_dir, cid)
    try:
        previous = cell.read_status()
    except DamagedFile:
        previous = None
    if previous is not None and previous.results:
        return  # committed rows of earlier requests stay valid; the refusal is the sweeper's to report
    cell.write_status(
        CellStatus(
            state="failed",
            cell_id=cid,
            sweep=str(cfg.get("sweep_name", "")),
            error=" ".join(f"{type(exc).__name__}: {exc}".split())[:500],
            host=provenance.host(),
            pid=os.getpid(),
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            attempts=(previous.attempts if previous else 0) + 1,
            started_at=time.time(),
            overrides=list(overrides or []),
        )
    )


HEARTBEAT_S = 30.0
"""Seconds between two refreshes of a running cell's ``status.json`` (its ``updated_at``)."""


class _Heartbeat:
    """Context manager: a daemon thread that renews the cell's lease (if given) and rewrites its status every
    ``HEARTBEAT_S`` seconds (env ``LANDSCAPE_HEARTBEAT_S``); it stops beating once the lease is lost."""

    def __init__(self, cell: CellDir, status: CellStatus, interval: float | None = None, lease: Lease | None = None):
        import threading

        self.cell, self.status, self.lease = cell, status, lease
        self.interval = float(os.environ.get("LANDSCAPE_HEARTBEAT_S", HEARTBEAT_S)) if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="landscape-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - a missed beat is harmless; the next one retries
                log.debug("heartbeat of %s failed: %s", self.cell.cell_id, exc)

    def _write(self) -> None:
        # A copy, so the beat never stamps the job's own status object; write_json's temporary name is per
        # thread, and the final done/failed write happens after this thread has been joined.
        if self.lease is not None and not self.lease.renew():
            log.error("cell %s: the lease was taken over by another process", self.cell.cell_id)
            self._stop.set()
            return
        snapshot = dataclasses.replace(self.status)
        if snapshot.state == "running":
            self.cell.write_status(snapshot)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _run(
    cfg: DictConfig,
    cell: CellDir,
    status: CellStatus,
    should_stop: Callable[[], bool] | None,
    lease: Lease | None = None,
) -> tuple[list[str], str]:
    """Steps 2-5 of the module docstring, one function each: load the data (``_cell_data``), train the seeds
    (``_train_cell``), measure the models (``_measure_models``) and the pairs (``_measure_pairs``), write the
    rows (``_row_tables``, ``commit_results``); returns the committed result files and the end line's summary."""
    started_at, t0 = _now(), time.perf_counter()
    device = resolve_device(str(cfg.device))
    torch.set_num_threads(int(cfg.threads))
    data = _cell_data(cfg, device)
    settings = TrainSettings.from_config(cfg.train, data.n_train)
    loss_fn = make_loss(settings.loss)
    seeds = [int(s) for s in cfg.train.seeds]
    make_model = _model_maker(cfg, data, device)

    models, results = _train_cell(cfg, data, settings, seeds, cell, status, device, should_stop)

    contexts = {
        s: ModelContext(
            model=models[s].eval(),
            seed=s,
            data=data,
            loss_fn=loss_fn,
            make_model=make_model,
            cfg=cfg,
            device=device,
            workdir=cell.path,
            should_stop=should_stop,
        )
        for s in seeds
        if results[s].status == "done"
    }  # the trained models (not diverged)
    status.metric_errors = []
    model_values, extra_rows = _measure_models(cfg, cell, status, contexts)
    pair_families = metrics_mod.enabled(cfg, "pairs")
    pair_values = _measure_pairs(cfg, cell, status, contexts, seeds, pair_families)
    if status.metric_errors:
        cell.write_status(status)

    common = _common_columns(cfg, cell, data, device, make_model, started_at, t0)
    tables = _row_tables(common, seeds, results, model_values, pair_families, pair_values, set(contexts), extra_rows)
    files = commit_results(cfg, cell, status, tables, lease)
    summary = end_summary(
        Path(cell.sweep_dir),
        tables["models"],
        [f.name for f in metrics_mod.enabled(cfg, "models")],
        [f.name for f in pair_families],
        len(pair_values),
        files,
        len(status.metric_errors),
    )
    return files, summary


def _cell_data(cfg: DictConfig, device: torch.device) -> CellData:
    """Step 2: the cell's data (deterministic subsample and label noise) on ``device``, checked against the
    config once its sizes are known (``check_after_load``)."""
    data = load_data(cfg.data).to(device)
    check_after_load(cfg, data)
    return data


def _model_maker(cfg: DictConfig, data: CellData, device: torch.device) -> Callable[[], torch.nn.Module]:
    """A function that builds a fresh (untrained) model of the cell on ``device``: what the families use to make
    models of the same architecture, and what the rows' ``model.n_params`` counts."""

    def make_model() -> torch.nn.Module:
        return build_model(cfg.model, data.input_shape, data.n_classes).to(device)

    return make_model


def _train_cell(
    cfg: DictConfig,
    data: CellData,
    settings: TrainSettings,
    seeds: list[int],
    cell: CellDir,
    status: CellStatus,
    device: torch.device,
    should_stop: Callable[[], bool] | None,
) -> tuple[dict[int, torch.nn.Module], dict[int, TrainResult]]:
    """Step 3: train every seed (``train_seeds``: resumable from its checkpoints), then record each seed's
    status (done, diverged) in the cell's status."""
    models, results = train_seeds(cfg, data, settings, seeds, cell, device, should_stop)
    for s in seeds:
        status.seeds[str(s)] = results[s].status
    cell.write_status(status)
    return models, results


def _measure_models(
    cfg: DictConfig, cell: CellDir, status: CellStatus, contexts: dict[int, ModelContext]
) -> tuple[dict[int, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Step 4, models: every enabled model family on every trained model (``contexts``: the seeds that
    finished), in the registry's order (``training`` first). Returns ``(values per seed, long-table rows per
    table)``; a family's error is a value (``_measure``), recorded in ``status.metric_errors``."""
    model_values: dict[int, dict[str, Any]] = {s: {} for s in contexts}
    extra_rows: dict[str, list[dict[str, Any]]] = {}
    for fam in metrics_mod.enabled(cfg, "models"):
        for s in contexts:
            with working_on(f"cell {cell.cell_id} seed={s}: {fam.name}"):
                res = _measure(fam, cfg, cell, f"seed={s}", contexts[s], status)
            model_values[s].update(res.values)
            for table, rows in res.tables.items():
                extra_rows.setdefault(table, []).extend({**r, "seed": s} for r in rows)
    return model_values, extra_rows


def _measure_pairs(
    cfg: DictConfig,
    cell: CellDir,
    status: CellStatus,
    contexts: dict[int, ModelContext],
    seeds: list[int],
    pair_families: list[Family],
) -> dict[tuple[int, int], dict[str, Any]]:
    """Step 4, pairs: each pair family prepares once for all the pairs of trained models (``_prepare``, e.g.
    the curves trained together), then measures each pair of ``metrics.pairs`` (``_measure``). Returns the
    values per pair, ``{}`` for a pair with a model that did not finish; ``{}`` without pair families."""
    for fam in metrics_mod.skipped_auto(cfg):
        log.info(
            "cell %s: pair family %s skipped: the cell has one seed (train.seeds=%s; enabled: auto)",
            cell.cell_id,
            fam.name,
            seeds,
        )
    pair_values: dict[tuple[int, int], dict[str, Any]] = {}
    if not pair_families:
        return pair_values
    pair_contexts = {
        (a, b): PairContext(a=contexts[a], b=contexts[b], workdir=cell.path)
        for a, b in metrics_mod.select_pairs(seeds, str(cfg.metrics.pairs))
        if a in contexts and b in contexts
    }
    for fam in pair_families:
        with working_on(f"cell {cell.cell_id} pairs {','.join(f'{a}-{b}' for a, b in pair_contexts)}: {fam.name}"):
            _prepare(fam, cfg, cell, {f"pair={a}-{b}": c for (a, b), c in pair_contexts.items()})
    for a, b in metrics_mod.select_pairs(seeds, str(cfg.metrics.pairs)):
        pair_values[(a, b)] = {}
        if (a, b) in pair_contexts:
            for fam in pair_families:
                with working_on(f"cell {cell.cell_id} pair={a}-{b}: {fam.name}"):
                    res = _measure(fam, cfg, cell, f"pair={a}-{b}", pair_contexts[(a, b)], status)
                pair_values[(a, b)].update(res.values)
    return pair_values


def _common_columns(
    cfg: DictConfig,
    cell: CellDir,
    data: CellData,
    device: torch.device,
    make_model: Callable[[], torch.nn.Module],
    started_at: dt.datetime,
    t0: float,
) -> dict[str, Any]:
    """Step 5: the columns every row of this run shares: schema version, sweep, cell, the resolved config,
    provenance (git, versions, host, device), timings, the knob values and the derived sizes."""
    finished_at = _now()
    return {
        "schema_version": SCHEMA_VERSION,
        "sweep": str(cfg.sweep_name),
        "cell_id": cell.cell_id,
        "config": json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True),
        "git_commit": provenance.git_info()[0],
        "git_dirty": provenance.git_info()[1],
        "versions": provenance.package_versions(),
        "host": provenance.host(),
        "device": provenance.device_name(device),
        "started_at": started_at,
        "finished_at": finished_at,
        "seconds": time.perf_counter() - t0,
        **knob_values(cfg, data.n_train),
        "data.n_train": data.n_train,
        "model.n_params": n_parameters(make_model()),
    }


def _row_tables(
    common: dict[str, Any],
    seeds: list[int],
    results: dict[int, TrainResult],
    model_values: dict[int, dict[str, Any]],
    pair_families: list[Family],
    pair_values: dict[tuple[int, int], dict[str, Any]],
    done: set[int],
    extra_rows: dict[str, list[dict[str, Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """Step 5: the rows of this run per table: ``models`` (one per seed: its training and its values),
    ``pairs`` (with pair families: one per selected pair; status ``done`` when both its seeds are in ``done``,
    the seeds whose training finished, else ``diverged``), and the families' long tables; plain Python values
    (``_plain``)."""
    model_rows = []
    for s in seeds:
        r = results[s]
        row = {
            **common,
            "seed": s,
            "status": r.status,
            "training.epochs": r.epochs,
            "training.steps": r.steps,
            "training.seconds": r.seconds,
            "training.resumed": r.resumed_from_epoch > 0,
            "training.vectorized": r.vectorized,
        }
        row.update(model_values.get(s, {}))
        model_rows.append(_plain(row))
    tables: dict[str, list[dict[str, Any]]] = {"models": model_rows}
    if pair_families:
        pair_rows = []
        for (a, b), values in pair_values.items():
            st = "done" if a in done and b in done else "diverged"
            pair_rows.append(_plain({**common, "seed_a": a, "seed_b": b, "status": st, **values}))
        tables["pairs"] = pair_rows
    for table, rows in extra_rows.items():
        tables[table] = [_plain({**common, "status": "done", **r}) for r in rows]
    return tables


def commit_results(
    cfg: DictConfig,
    cell: CellDir,
    status: CellStatus,
    tables: dict[str, list[dict[str, Any]]],
    lease: Lease | None = None,
) -> list[str]:
    """Add this run's rows to the cell's result files (``results.io.merge_rows``: rows of other seeds, pairs
    and earlier requests stay) and record them in ``status.results`` with their SHA-256 and what they cover.

    The merged files are first staged beside their final names, recorded in ``status.pending``, then renamed
    into place; the caller's final status write (``done``) is the commit. A reader serves a file only if its
    checksum is in ``status.results``, so a kill anywhere in between never serves a half-written request.
    """
    from landscape.results.io import merge_rows

    keys = table_keys(cfg)
    covers = requested_coverage(cfg)
    staged: dict[str, tuple[Path, Path, str, int, bool]] = {}
    for table in keys:
        rows = tables.get(table, [])
        name = cell.result_name(table, keys[table])
        final = cell.result_path(table, keys[table])
        rec = status.results.get(name, {})
        trusted = {h for h in (rec.get("sha256"), status.pending.get(name)) if h}
        key_cols = ["seed_a", "seed_b"] if table == "pairs" else ["seed"]
        path, digest, n, merged = merge_rows(
            final, rows, schema_for(table), key_cols, trusted, staging=staging_name(final)
        )
        staged[name] = (path, final, digest, n, merged)
    if lease is not None and not lease.held():
        raise LeaseLost(f"the lease of cell {cell.cell_id} was taken over before its results were written")
    status.pending.update({name: digest for name, (_, _, digest, _, _) in staged.items()})
    status.files = resume_state_checksums(cell)
    cell.write_status(status)
    _pause("before_rename")
    for name, (path, final, digest, n, merged) in staged.items():
        rec = status.results.get(name)
        if rec and final.exists() and final.stat().st_size == rec.get("size") and digest != rec.get("sha256"):
            # keep the committed version readable (``results.io.served_files``) until this commit is written
            backup = sweepdir.committed_backup(final)
            link = staging_name(backup, ".link")  # linked in the holder's directory, renamed from there: fenced
            link.unlink(missing_ok=True)
            os.link(final, link)
            fenced_replace(link, backup)
        fenced_replace(path, final)  # the staged file is in the holder's directory: fails if the lease was lost
        st = final.stat()
        old = status.results.get(name, {}).get("covers", []) if merged else []
        merged = sorted({tuple(c) if isinstance(c, list) else c for c in [*old, *covers[name.split("/")[0]]]})
        status.results[name] = {
            "sha256": digest,
            "rows": n,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "covers": [list(c) if isinstance(c, tuple) else c for c in merged],
            "key": sweepdir.key_of_result(name),
        }
        status.pending.pop(name, None)
        _pause("between_tables")
    return [str(final) for (_, final, _, _, _) in staged.values()]


def _pause(point: str) -> None:
    """Test hook: ``LANDSCAPE_TEST_PAUSE=<point>:<seconds>`` sleeps at a commit point (to force races)."""
    spec = os.environ.get("LANDSCAPE_TEST_PAUSE", "")
    if spec and spec.split(":")[0] == point:
        time.sleep(float(spec.split(":")[1]))


def _settings_hash(node: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()[:10]


def table_keys(cfg: Any) -> dict[str, str]:
    """``{table: key}`` of the result files a request of ``cfg`` writes: ``models`` (key = hash of the
    training-metric settings and every enabled model family's settings), ``pairs`` (enabled pair families'
    settings; only if any) and each long table of an enabled family (that family's settings). A request with
    other metric settings writes other files; one with other seeds adds rows to the same files."""

    def settings(fams: list[Family]) -> dict[str, Any]:
        return {f.name: OmegaConf.to_container(cfg.metrics[f.name], resolve=True) for f in fams}

    keys = {
        "models": _settings_hash(
            {
                "training": OmegaConf.to_container(cfg.metrics.training, resolve=True),
                **settings(metrics_mod.enabled(cfg, "models")),
            }
        )
    }
    pair_fams = metrics_mod.enabled(cfg, "pairs")
    if pair_fams:
        keys["pairs"] = _settings_hash(settings(pair_fams))
    for fam in metrics_mod.enabled(cfg):
        for table in fam.long_tables:
            keys[table] = _settings_hash(settings([fam]))
    return keys


def requested_coverage(cfg: Any) -> dict[str, list[Any]]:
    """``{table: [seed, ...] or [(seed_a, seed_b), ...]}``: what a request of ``cfg`` asks each table for."""
    seeds = sorted(int(s) for s in cfg.train.seeds)
    out: dict[str, list[Any]] = {}
    for table in table_keys(cfg):
        out[table] = metrics_mod.select_pairs(seeds, str(cfg.metrics.pairs)) if table == "pairs" else list(seeds)
    return out


def missing_work(cfg: Any, cell: CellDir, status: CellStatus | None, verify: bool = False) -> list[str]:
    """What the committed results of the cell lack for a request of ``cfg`` (empty: nothing to do).

    A result file counts if its status record covers the requested seeds/pairs and the file is intact: same
    size and modification time as recorded, else (or with ``verify``) the same SHA-256.
    """
    if status is None:
        return ["no status"]
    out = []
    keys = table_keys(cfg)
    for table, want in requested_coverage(cfg).items():
        name = cell.result_name(table, keys[table])
        rec = status.results.get(name)
        if not rec:
            out.append(f"{name}: not computed")
            continue
        have = {tuple(c) if isinstance(c, list) else c for c in rec.get("covers", [])}
        lacking = [w for w in want if w not in have]
        if lacking:
            out.append(f"{name}: lacks {lacking}")
            continue
        problem = file_problem(cell.recorded_path(name), rec, verify)
        if problem:
            out.append(problem)
    return out


def _training_hooks(
    cfg: DictConfig, data: CellData, settings: TrainSettings, seeds: list[int], cell: CellDir
) -> dict[int, Callable[[torch.nn.Module, int, int], None]]:
    """Per seed, the ``on_step`` hook of the family that measures during training (``sharpness``, when on; else
    none): it keeps its measurements in the directory its ``compute`` gets for that model (``_cached_compute``)."""
    from landscape.metrics import sharpness

    if sharpness.FAMILY.name not in [f.name for f in metrics_mod.enabled(cfg, "models")]:
        return {}
    node = cfg.metrics[sharpness.FAMILY.name]
    key = metrics_key(node)
    return dict(sharpness.trackers(node, data, settings, seeds, lambda s: cell.workdir(f"seed={s}-{key}", "sharpness")))


def train_seeds(
    cfg: DictConfig,
    data: CellData,
    settings: TrainSettings,
    seeds: list[int],
    cell: CellDir,
    device: torch.device,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict[int, torch.nn.Module], dict[int, TrainResult]]:
    """Train (or resume, or load) every seed of the cell: together (``landscape.vectorized``) when
    ``train.vectorize`` chooses it (on | auto for small models measured faster), else one after the other."""
    models = {s: build_model(cfg.model, data.input_shape, data.n_classes, seed=s).to(device) for s in seeds}
    mode = str(cfg.train.vectorize)
    try:
        together = bool(seeds) and use_vectorized(mode, models[seeds[0]], len(seeds))
    except ValueError as exc:
        from landscape.config import ConfigError

        raise ConfigError([str(exc)]) from exc
    hooks = _training_hooks(cfg, data, settings, seeds, cell)
    if together and hooks:
        log.info("cell %s: metrics.sharpness measures during training: seeds trained one by one", cell.cell_id)
        together = False
    results: dict[int, TrainResult] = {}
    # a seed with a result (result.json) was trained by an earlier run: loaded, not trained again
    trained_before = {s for s in seeds if (cell.seed_dir(s) / RESULT).exists()}
    # progress (a bar in a terminal, else log lines: the first within seconds) comes from the engine
    t0 = time.perf_counter()
    with working_on(f"cell {cell.cell_id}"):
        if together:
            results = train_together(
                models,
                data.x_train,
                data.y_train,
                settings,
                {s: cell.seed_dir(s) for s in seeds},
                cell.group_dir(group_name(seeds)),
                should_stop=should_stop,
                phase=f"training seeds {','.join(map(str, seeds))} together",
            )
            log.info(
                "cell %s: %s seeds %s together in %.2f s (%s)",
                cell.cell_id,
                "loaded" if trained_before == set(seeds) else "trained",
                ",".join(map(str, seeds)),
                time.perf_counter() - t0,
                "; ".join(_trained(s, results[s], s in trained_before) for s in seeds),
            )
        else:
            for s in seeds:
                t1 = time.perf_counter()
                results[s] = train_model(
                    models[s],
                    data.x_train,
                    data.y_train,
                    settings,
                    s,
                    cell.seed_dir(s),
                    should_stop=should_stop,
                    phase=f"training seed {s}",
                    on_step=hooks.get(s),
                )
                log.info(
                    "cell %s: %s seed %d in %.2f s (%s)",
                    cell.cell_id,
                    "loaded" if s in trained_before else "trained",
                    s,
                    time.perf_counter() - t1,
                    _trained(s, results[s], s in trained_before),
                )
    for s in seeds:
        if results[s].status == "diverged":
            log.warning(
                "cell %s: seed %d diverged after %d steps (%s)",
                cell.cell_id,
                s,
                results[s].steps,
                results[s].reason or "reason not recorded",
            )
    return models, {s: results[s] for s in seeds}


def _trained(seed: int, r: TrainResult, before: bool) -> str:
    """``seed 0: done, 30 epochs, 1350 steps, training.seconds 3.21`` (the rows' column: the training loop's
    time; ``loaded``: trained by an earlier run; ``resumed at epoch E``)."""
    how = (
        "loaded: trained by an earlier run, "
        if before
        else (f"resumed at epoch {r.resumed_from_epoch}, " if r.resumed_from_epoch else "")
    )
    return f"seed {seed}: {r.status}, {how}{r.epochs} epochs, {r.steps} steps, training.seconds {r.seconds:.2f}"


def check_after_load(cfg: DictConfig, data: CellData) -> None:
    """Checks that need the loaded data (e.g. a CIFAR-10 directory smaller than the standard one)."""
    bs = cfg.train.batch_size
    if bs != "full" and int(bs) > data.n_train:
        from landscape.config import ConfigError

        raise ConfigError([f"train.batch_size={bs}: larger than the training set ({data.n_train} samples)"])


def _measure(fam: Family, cfg: DictConfig, cell: CellDir, who: str, ctx: Any, status: CellStatus) -> Result:
    """One family on one model or pair: its settings columns, its (cached) values, its error column; an error
    is logged at once and recorded in ``status.metric_errors``."""
    settings = cfg.metrics[fam.name]
    res = _cached_compute(fam, cfg, cell, who, ctx)
    values = {**fam.settings_values(settings), **res.values, fam.error_column: res.error}
    if res.error is not None:
        log.warning("%s %s: metric family %s: %s", cell.cell_id, who, fam.name, res.error)
        status.metric_errors.append({"family": fam.name, "who": who, "error": res.error[:500]})
    return Result(values, res.tables, res.error)


def _prepare(fam: Family, cfg: DictConfig, cell: CellDir, contexts: dict[str, Any]) -> None:
    """``fam.prepare`` on the pairs whose values are not cached (each context given its own workdir, as
    ``compute`` will get it). It computes no value: an error is logged and each ``compute`` does its work alone;
    a preemption request is re-raised."""
    from landscape.training import StopRequested

    if fam.prepare is None:
        return
    settings = cfg.metrics[fam.name]
    key = metrics_key(settings)
    todo = []
    for who, ctx in contexts.items():
        if read_json(cell.metrics_path(f"{who}-{key}", fam.name)) is None:
            todo.append(dataclasses.replace(ctx, workdir=cell.workdir(f"{who}-{key}", fam.name)))
    if not todo:
        return
    t0 = time.perf_counter()
    try:
        fam.prepare(todo, settings, cell.workdir(f"pairs-{key}", fam.name))
    except StopRequested:
        raise
    except Exception:
        log.warning(
            "%s: metric family %s: the shared work of %d pairs failed; each pair is measured alone:",
            cell.cell_id,
            fam.name,
            len(todo),
            exc_info=True,
        )
        return
    log.info(
        "cell %s: metric family %s: shared work of %d pairs in %.2f s",
        cell.cell_id,
        fam.name,
        len(todo),
        time.perf_counter() - t0,
    )


def _cached_compute(fam: Family, cfg: DictConfig, cell: CellDir, who: str, ctx: Any) -> Result:
    """``fam.compute(ctx, settings)``, cached on disk per model/pair and settings, checked against the family's
    declared columns and types (see :func:`_conform`). An exception in the family is a result with only an
    error (not cached: a rerun of the cell tries again); a preemption request is re-raised."""
    from landscape.training import StopRequested

    settings = cfg.metrics[fam.name]
    key = f"{who}-{metrics_key(settings)}"
    path = cell.metrics_path(key, fam.name)
    cached = read_json(path)
    if cached is not None:
        return _conform(fam, _from_cache(cached, fam))
    ctx = dataclasses.replace(ctx, workdir=cell.workdir(key, fam.name))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        res = fam.compute(ctx, settings)
    except StopRequested:
        raise
    except Exception as exc:
        log.warning(
            "%s %s: metric family %s raised (its values are nulls):", cell.cell_id, who, fam.name, exc_info=True
        )
        return Result(error=" ".join(f"{type(exc).__name__}: {exc}".split())[:500])
    log.info("cell %s %s: metric family %s measured in %.2f s", cell.cell_id, who, fam.name, time.perf_counter() - t0)
    if not isinstance(res, Result):
        return Result(error=f"compute returned {type(res).__name__}, expected landscape.metrics.Result")
    res = Result(_plain(res.values), _plain(res.tables), res.error)
    write_json(path, {"values": res.values, "tables": res.tables, "error": res.error})
    return _conform(fam, res)


def _from_cache(cached: dict[str, Any], fam: Family) -> Result:
    if "values" in cached and set(cached) <= {"values", "tables", "error"}:
        return Result(cached["values"], cached.get("tables") or {}, cached.get("error"))
    # written before the family contract (schema version 1): a flat dict of values, long tables under "_tables";
    # columns that version 2 no longer has are dropped
    tables = cached.pop("_tables", {})
    return Result({k: v for k, v in cached.items() if k in fam.columns}, tables, None)


def _conform(fam: Family, res: Result) -> Result:
    """Keep the values that fit the family's declared columns and types. An undeclared or mistyped column, a
    non-finite number in any column (NaN or inf, list items included) or a malformed long table becomes a
    null with its reason appended to the error (a family that reports its own error has explained its
    non-finite values: they become nulls without a second reason); a column the family declares to depend on
    one that was not finite (``Family.depends``: a flag such as ``agrees``) becomes a null too. In long tables
    a NaN becomes a null (an infinite value there keeps its declared meaning, e.g. the death of an essential
    persistence bar)."""
    import pyarrow as pa

    columns, problems = fam.columns, []
    values: dict[str, Any] = {}
    not_finite: list[str] = []
    for col, v in res.values.items():
        if col not in columns or col == fam.error_column:
            problems.append(f"undeclared column {col!r}")
            continue
        try:
            pa.array([v], type=columns[col])
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            problems.append(f"{col}={v!r} is not {columns[col]} ({type(exc).__name__})")
            continue
        if _has_non_finite(v):
            if res.error is None:  # a value that should be valid and is not: counted, never hidden
                problems.append(f"{col}={v} (not finite)")
            not_finite.append(col)
            v = None
        values[col] = v
    for col, deps in fam.depends.items():
        bad = [d for d in deps if d in not_finite]
        if bad and values.get(col) is not None:
            values[col] = None
            if res.error is None:
                problems.append(f"{col}: null, it rests on {', '.join(bad)} (not finite)")
    tables: dict[str, list[dict[str, Any]]] = {}
    for name, rows in res.tables.items():
        if name not in fam.long_tables:
            problems.append(f"undeclared long table {name!r}")
            continue
        rows = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            if isinstance(r, dict)
            else r
            for r in rows
        ]
        try:
            pa.Table.from_pylist(list(rows), schema=pa.schema(list(fam.long_tables[name].items())))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            problems.append(f"long table {name!r}: {type(exc).__name__}: {exc}"[:200])
            continue
        tables[name] = list(rows)
    error = "; ".join(([res.error] if res.error else []) + problems) or None
    return Result(values, tables, error)


def _has_non_finite(value: Any) -> bool:
    """Whether a value (a number or a list of them, nested) holds a NaN or an infinity."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False
