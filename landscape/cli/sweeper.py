"""Hydra sweeper that plans the whole grid before any job starts.

It expands the sweep like Hydra's basic sweeper, then composes and validates *every* cell's config
(``landscape.config.validate``) and computes its ``cell_id``. A single bad cell stops the launch with a
message naming the cell, the key, the value and what is allowed. With ``dry_run=true`` it prints the plan
(cell ids, overrides, which cells are already done) and its cost (``landscape.cost``) and trains nothing. Otherwise it records the plan in
``<sweep_dir>/launches/`` (so ``landscape-status`` knows pending cells) and launches the jobs; cells that are
done are skipped by the jobs themselves. Before any of this, every swept or fixed key of the grid (command
line and the sweep file's ``hydra.sweeper.params``) is checked against the config schema: a typo or a value of
the wrong type is refused once per key (``landscape.config.override_problems``).

At the end of a launch (``launch_summary``) it says what happened: the launch's cells per state (done,
diverged, interrupted, pending, failed), each failed cell with its error line, the signal that stopped the
launch as received (Ctrl-C: SIGINT, exit status 130; no traceback), and the command that completes every grid
launched into the directory (``landscape.cli.status.completing_commands``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict

from landscape import sweepdir
from landscape.cell import CellDir, DamagedFile, cell_id
from landscape.config import launch_problems, validate
from landscape.job import missing_work

log = logging.getLogger(__name__)


@dataclass
class PlannedCell:
    """One job of a multirun: its overrides, cell id, state on disk, and validation problems."""

    index: int
    overrides: list[str]
    cell_id: str | None
    state: str
    problems: list[str]


def plan_cells(
    config: DictConfig,
    config_loader: Any,
    jobs: Sequence[Sequence[str]],
    sweep_dir: Path,
    fast: bool = True,
    n_verify: int = 3,
    local: bool = True,
    memory_bytes: int | None = None,
    composer: "CellComposer | None" = None,
) -> list[PlannedCell]:
    """Compose and validate every job of a grid; no side effects.

    With ``fast`` (default) Hydra composes once per distinct set of config-group (and ``hydra``) overrides,
    and the plain value overrides of each job (``key=v``, ``+key=v``, ``++key=v``, ``~key``) are applied to a
    copy of that base in struct mode by Hydra's own override function, so a typo or a bad type is refused
    exactly as in a full compose. ``n_verify`` jobs per base (the first, and evenly spread ones) are also fully
    composed and compared; any difference, or an override the fast path does not understand, falls back to
    the full compose for the whole grid.

    Beside ``validate``, every valid cell gets ``config.launch_problems`` (model size against ``memory_bytes``,
    vectorized training of a model that cannot be stacked, a CUDA device on a machine without one when the
    jobs run here: ``local``). ``composer``: the ``CellComposer`` to plan with (the sweeper's, which it hands to
    the launcher afterwards; its ``fast`` says whether verification passed); a new one by default.
    """
    composer = (composer or CellComposer(config, config_loader)) if fast else None
    if composer is not None and not composer.verify(jobs, n_verify):
        composer = None
    planned = []
    for i, overrides in enumerate(jobs):
        try:
            with (
                composer.cell(overrides)
                if composer is not None
                else contextlib.nullcontext(_full_compose(config, config_loader, overrides))
            ) as job_cfg:
                planned.append(_plan_one(i, overrides, job_cfg, sweep_dir, local, memory_bytes))
        except Exception as exc:  # noqa: BLE001 - composition errors: unknown key, bad type, missing group option
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ is not None and str(exc.__cause__) else ""
            planned.append(PlannedCell(i, list(overrides), None, "invalid", [f"{why}: {cause}" if cause else why]))
    if composer is not None:
        log.info(
            "planning: %d base config(s) composed by Hydra for %d cells (+ a verified sample)",
            composer.n_full,
            len(jobs),
        )
    return planned


def _plan_one(
    i: int,
    overrides: Sequence[str],
    job_cfg: DictConfig,
    sweep_dir: Path,
    local: bool = True,
    memory_bytes: int | None = None,
) -> PlannedCell:
    problems = validate(job_cfg)
    if not problems:
        problems = launch_problems(job_cfg, local, memory_bytes)
    cid = None if problems else cell_id(job_cfg)
    state = "invalid" if problems else "pending"
    if cid is not None:
        cell = CellDir(sweep_dir, cid)
        try:
            status = cell.read_status()
        except DamagedFile as exc:
            log.warning("damaged status file %s (%s): the cell is launched and repaired", exc.path, exc.reason)
            return PlannedCell(i, list(overrides), cid, "damaged", problems)
        state = status.state if status is not None else "pending"
        missing = missing_work(job_cfg, cell, status)
        if not missing:
            state = "done"  # every requested row is committed and intact, whatever the last run asked for
        elif state == "done" and status is not None:
            damaged = [m for m in missing if ": missing" in m or ": damaged" in m]
            for m in damaged:
                log.warning("%s: the cell is launched and its rows recomputed", m)
            state = "damaged" if damaged else "stale"  # stale: done for other seeds or metric settings
    return PlannedCell(i, list(overrides), cid, state, problems)


def _full_compose(config: DictConfig, config_loader: Any, overrides: Sequence[str]) -> DictConfig:
    """Hydra's compose of one job (what the job itself will see), without the ``hydra`` node."""
    return _without_hydra(config_loader.load_sweep_config(config, list(overrides)))


def _without_hydra(job_cfg: DictConfig) -> DictConfig:
    """``job_cfg`` made writable and without its ``hydra`` node (in place)."""
    OmegaConf.set_readonly(job_cfg, False)
    with open_dict(job_cfg):
        del job_cfg["hydra"]
    return job_cfg


def _leaf_node(cfg: DictConfig, key: str) -> Any:
    parent_key, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not OmegaConf.is_dict(parent) or last not in parent:
        return None
    return parent._get_node(last)


def _raw_leaf(cfg: DictConfig, key: str) -> Any:
    """The stored value of a leaf, interpolations unresolved (to restore it exactly)."""
    return _leaf_node(cfg, key)._value()


class _Unusual(Exception):
    """An override the fast path does not handle (it falls back to Hydra's full compose)."""


class CellComposer:
    """Composes a grid's job configs: Hydra once per distinct set of config-group (and ``hydra``) overrides,
    OmegaConf (Hydra's own override function, struct mode) for the plain ``key=value`` overrides of each job.

    Two views of one composition per base: ``compose`` and ``cell`` give the planning config (no ``hydra``
    node: what ``validate`` and ``cell_id`` read), ``job`` the config a job runs with (the ``hydra`` node, its
    ``overrides.task`` and ``job.override_dirname`` set as Hydra sets them). ``verify`` compares both views with
    Hydra's full compose on a sample of the grid. The sweeper hands this composer, verified, to a launcher whose
    workers are forked after planning (``hydra/launcher=local``), so no worker composes a base again.
    """

    def __init__(self, config: DictConfig, config_loader: Any):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.config, self.loader = config, config_loader
        self.parser = OverridesParser.create()
        self.repo = getattr(config_loader, "repository", None)
        self.job_bases: dict[tuple[str, ...], Any] = {}
        self.bases: dict[tuple[str, ...], Any] = {}
        self.verified: set[tuple[str, ...]] = set()  # bases whose job view equalled Hydra's full compose
        self.fast = True  # False once ``verify`` found a difference
        self.n_full = 0
        self._parsed: dict[str, Any] = {}

    def _split(self, overrides: Sequence[str]) -> tuple[tuple[str, ...], list[Any]]:
        if self.repo is None:
            raise _Unusual("no config repository")
        group, values = [], []
        for line in overrides:
            if line not in self._parsed:  # grids repeat the same override strings: parse each once
                self._parsed[line] = self.parser.parse_overrides([line])[0]
            ov = self._parsed[line]
            if ov.is_sweep_override():
                raise _Unusual(ov.input_line)
            key = ov.key_or_group
            if ov.is_hydra_override() or ov.package is not None or self.repo.group_exists(key):
                group.append(ov.input_line)
            else:
                values.append(ov)
        return tuple(group), values

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """The planning config of ``overrides``, a new object (same as ``_full_compose``, see ``plan_cells``)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        try:
            group, values = self._split(overrides)
        except _Unusual:
            self.n_full += 1
            return _full_compose(self.config, self.loader, overrides)
        cfg = copy.deepcopy(self._base(group))
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        return cfg

    def job(self, overrides: Sequence[str]) -> DictConfig:
        """The job config of ``overrides`` with its ``hydra`` node, a new object (as Hydra's
        ``load_sweep_config`` makes it; raises ``_Unusual`` for an override only Hydra's compose handles)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        group, values = self._split(overrides)
        cfg = copy.deepcopy(self._job_base(group))
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        app = [ov for ov in (self._parsed[line] for line in overrides) if not ov.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [ov.input_line for ov in app]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=app, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys
            )
        OmegaConf.copy_cache(from_config=self.config, to_config=cfg)
        return cfg

    @contextlib.contextmanager
    def cell(self, overrides: Sequence[str]) -> Iterator[DictConfig]:
        """Like ``compose``, but valid only inside the ``with`` block: plain ``key=value`` overrides of
        existing scalar leaves are applied to the shared base in place and undone on exit (no copy)."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        try:
            group, values = self._split(overrides)
        except _Unusual:
            yield self.compose(overrides)
            return
        base = self._base(group)
        if not all(self._in_place_ok(base, ov) for ov in values):
            yield self.compose(overrides)
            return
        undo: list[tuple[str, Any]] = []
        try:
            for ov in values:
                undo.append((ov.key_or_group, _raw_leaf(base, ov.key_or_group)))
                ConfigLoaderImpl._apply_overrides_to_config([ov], base)
            yield base
        finally:
            for key, old in reversed(undo):
                OmegaConf.update(base, key, old, merge=False)

    @staticmethod
    def _in_place_ok(base: DictConfig, ov: Any) -> bool:
        if ov.is_add() or ov.is_force_add() or ov.is_delete() or isinstance(ov.value(), (dict, list)):
            return False
        try:
            node = _leaf_node(base, ov.key_or_group)
        except Exception:  # noqa: BLE001 - unknown key: let the copying path raise Hydra's own error
            return False
        return node is not None and not OmegaConf.is_config(node)

    def _job_base(self, group: tuple[str, ...]) -> DictConfig:
        if group not in self.job_bases:
            try:
                self.job_bases[group] = (self.loader.load_sweep_config(self.config, list(group)), None)
                self.n_full += 1
            except Exception as exc:  # noqa: BLE001 - e.g. unknown group option: reported per cell
                self.job_bases[group] = (None, exc)
        base, exc = self.job_bases[group]
        if exc is not None:
            raise exc
        return base

    def _base(self, group: tuple[str, ...]) -> DictConfig:
        if group not in self.bases:
            try:
                self.bases[group] = (_without_hydra(copy.deepcopy(self._job_base(group))), None)
            except Exception as exc:  # noqa: BLE001 - kept and reported when a cell of this group is composed
                self.bases[group] = (None, exc)
        base, exc = self.bases[group]
        if exc is not None:
            raise exc
        return base

    def verify(self, jobs: Sequence[Sequence[str]], n_per_base: int) -> bool:
        """Compare both fast views with Hydra's full compose on a sample of ``jobs`` (the first, last and evenly
        spread ones of each base); False (with a warning) on any difference."""
        by_base: dict[tuple[str, ...], list[int]] = {}
        try:
            for i, ov in enumerate(jobs):
                by_base.setdefault(self._split(ov)[0], []).append(i)
        except Exception as exc:  # noqa: BLE001 - any surprise turns the fast path off, never the planning
            log.info("fast planning off (%s): composing every cell with Hydra", exc)
            self.fast = False
            return False
        for group, idx in by_base.items():
            sample = sorted({idx[int(k * (len(idx) - 1) / max(n_per_base - 1, 1))] for k in range(n_per_base)})
            for i in sample:
                try:
                    full_job = OmegaConf.to_container(self.loader.load_sweep_config(self.config, list(jobs[i])))
                except Exception:  # noqa: BLE001 - an invalid cell: both paths report it
                    continue
                full = {k: v for k, v in full_job.items() if k != "hydra"}
                try:
                    job = OmegaConf.to_container(self.job(jobs[i]))
                    fast = OmegaConf.to_container(self.compose(jobs[i]))
                    before = OmegaConf.to_container(self._base(group))
                    with self.cell(jobs[i]) as cfg:
                        in_place = OmegaConf.to_container(cfg)
                    restored = OmegaConf.to_container(self._base(group)) == before
                except Exception as exc:  # noqa: BLE001 - a failure is a mismatch the check reports
                    job, fast, in_place, restored = None, repr(exc), None, False
                if not (_same(fast, full) and _same(in_place, full) and restored and _same(job, full_job)):
                    log.warning(
                        "fast planning differs from Hydra's compose for cell #%d (%s): composing every cell with Hydra",
                        i,
                        " ".join(jobs[i]),
                    )
                    self.fast = False
                    return False
                self.verified.add(group)
        return True


def _same(a: Any, b: Any) -> bool:
    """Equal configs (as containers), NaN equal to NaN (a ``key=nan`` override: refused later, by ``validate``)."""
    return a == b or json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True, default=repr)


def _check_sweep_dir(config: DictConfig) -> None:
    """Refuse (exit 2, no traceback) an explicit relative ``hydra.sweep.dir`` that climbs out of the launch
    directory with ``..``: writing outside the outputs root takes an explicit absolute path."""
    import sys

    for line in OmegaConf.select(config, "hydra.overrides.hydra") or []:
        key, _, value = str(line).partition("=")
        if key.lstrip("+") == "hydra.sweep.dir" and not os.path.isabs(value) and ".." in Path(value).parts:
            print(
                f"hydra.sweep.dir={value!r}: a relative sweep directory may not leave the launch directory "
                "('..'); give an absolute path to write elsewhere",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2)


def _job_machine(config: DictConfig) -> tuple[bool, int | None]:
    """Whether the jobs run on this machine (not a SLURM launcher) and the memory one job may use: the SLURM
    launcher's ``mem_gb`` (or the local launcher's), else this machine's RAM."""
    launcher = OmegaConf.select(config, "hydra.launcher") or {}
    target = str(launcher.get("_target_", ""))
    local = "slurm" not in target.lower()
    mem_gb = launcher.get("mem_gb") if OmegaConf.is_dict(launcher) else None
    if mem_gb:
        return local, int(float(mem_gb) * 2**30)
    if not local:
        return local, None
    try:
        return local, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return local, None


def _refuse_bad_keys(overrides: Sequence[str], config_loader: Any) -> None:
    """Exit 2 (no traceback) if a swept or fixed key of the grid, from the command line or the sweep file's
    ``hydra.sweeper.params``, is not a key of the config schema or has a value of the wrong type: one message
    per key (``landscape.config.override_problems``), before any cell is composed."""
    import sys

    from landscape.config import override_problems

    repo = getattr(config_loader, "repository", None)
    problems = override_problems(overrides, is_group=repo.group_exists if repo is not None else None)
    if problems:
        print(
            "\n  ".join(["invalid override(s) of the grid; nothing was launched:", *problems]),
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(2)


class GridError(ValueError):
    """A multirun grid with invalid cells; nothing was launched."""


def format_problems(planned: list[PlannedCell]) -> str:
    bad = [c for c in planned if c.problems]
    lines = [f"{len(bad)} of {len(planned)} cells of the grid are invalid; nothing was launched:"]
    for c in bad[:50]:
        lines.append(f"  cell #{c.index} ({' '.join(c.overrides) or 'no overrides'}):")
        lines.extend(f"    {p}" for p in c.problems)
    if len(bad) > 50:
        lines.append(f"  ... and {len(bad) - 50} more")
    return "\n".join(lines)


def format_plan(planned: list[PlannedCell]) -> str:
    counts: dict[str, int] = {}
    for c in planned:
        counts[c.state] = counts.get(c.state, 0) + 1
    lines = [
        f"dry run: {len(planned)} cells ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); nothing launched",
        f"{'#':>5}  {'cell_id':12}  {'state':8}  overrides",
    ]
    for c in planned:
        lines.append(f"{c.index:>5}  {c.cell_id or '-':12}  {c.state:8}  {' '.join(c.overrides)}")
    return "\n".join(lines)


SIGNAL_NAMES = {2: "SIGINT (Ctrl-C)", 15: "SIGTERM"}


def _outcome(exc: BaseException | None) -> str:
    """What a FAILED job return means: ``pending`` (the launch stopped before the cell started),
    ``interrupted`` (stopped by a signal, or its worker ended: its checkpoints stay) or ``failed``."""
    from landscape.preemption import NotStarted, WorkerDied
    from landscape.training import StopRequested

    if isinstance(exc, NotStarted):
        return "pending"
    if isinstance(exc, (WorkerDied, StopRequested, KeyboardInterrupt)):
        return "interrupted"
    return "failed"


def launch_summary(
    planned: list[PlannedCell], failures: Sequence[JobReturn], sweep_dir: Path, signum: int | None = None
) -> tuple[str, bool]:
    """The end of a launch: ``(text, complete)``. The text counts the launch's cells per state (done, diverged,
    interrupted, pending, failed, running: from their status files on disk, corrected by what the launch saw:
    a cell the launch stopped is interrupted, one it never started pending), names the signal that stopped
    the launch as received, lists each failed cell with its error line and each cell whose worker died, and
    ends with the command that completes every grid launched into ``sweep_dir`` (``landscape.cli.status``:
    all cells not done, of this launch and of earlier ones). ``complete``: every cell of the launch is done."""
    from landscape.cli.status import TODO_STATES, completing_commands, completing_header, launch_records, sweep_report
    from landscape.provenance import host

    rep = sweep_report(sweep_dir, check_results=False)
    me, here = os.getpid(), host()
    state = {}
    for c in rep.cells:  # a cell this very process ran and stopped (no launcher, or a SLURM wait) is not running
        state[c.cell_id] = "interrupted" if c.state == "running" and c.pid == me and c.host == here else c.state
    ids = {tuple(c.overrides): c.cell_id for c in planned}
    notes: list[str] = []
    for ret in failures:
        exc = ret._return_value
        overrides = list(getattr(ret, "overrides", None) or [])
        cid = ids.get(tuple(overrides))
        kind = _outcome(exc)
        if cid is not None and (kind == "failed" or state.get(cid, "pending") in ("pending", "running")):
            state[cid] = kind
        if kind == "failed" or (kind == "interrupted" and signum is None):  # a stop is said once, below
            why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300] if exc is not None else "no result"
            notes.append(f"  {kind}: cell {cid or '?'} ({' '.join(overrides) or 'no overrides'}): {why}")
    launched = [c.cell_id for c in planned if c.cell_id is not None]
    counts = {
        k: sum(state.get(cid, "pending") == k for cid in launched)
        for k in ("done", "diverged", "interrupted", "pending", "failed", "running", "damaged")
    }
    said = ", ".join(
        f"{n} {k}" for k, n in counts.items() if n or k in ("done", "interrupted", "pending", "failed", "diverged")
    )
    if signum is not None:
        head = (
            f"launch stopped by {SIGNAL_NAMES.get(signum, signal.Signals(signum).name)}: {len(launched)} cells: {said}"
        )
    else:
        head = f"launch finished: {len(launched)} cells: {said}"
    lines = [head, *notes]
    if counts["interrupted"] and signum is not None:
        lines.append("  interrupted cells checkpointed their training; they resume from there")
    others = sum(1 for cid, s in state.items() if s in TODO_STATES and cid not in set(launched))
    if others:
        lines.append(f"  {others} cell(s) of other launches into {sweep_dir} are not done either")
    if counts["running"]:
        lines.append(f"  {counts['running']} cell(s) still running (e.g. SLURM jobs): landscape-status {sweep_dir}")
    todo = {c.cell_id: c.overrides for c in rep.cells if state[c.cell_id] in TODO_STATES}
    commands = completing_commands(launch_records(sweep_dir), todo, sweep_dir)
    if commands:
        lines += [completing_header(len(commands)), *(f"  {c}" for c in commands)]
    complete = all(state.get(cid) in ("done", "diverged") for cid in launched)
    return "\n".join(lines), complete


def _launch_argv() -> list[str] | None:
    """The command line of this multirun (without the program), for ``landscape-status``'s rerun command."""
    import sys

    argv = list(sys.argv[1:])
    return argv if ("-m" in argv or "--multirun" in argv) else None


class GridSweeper(BasicSweeper):
    """Basic grid sweeper + whole-grid validation, dry run, skipping of done cells and a launch manifest."""

    @staticmethod
    def split_arguments_list(jobs: list[list[str]], max_batch_size: Optional[int]) -> list[list[list[str]]]:
        if not jobs:
            return []
        size = max_batch_size or len(jobs)
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[dict] = None):
        super().__init__(max_batch_size=max_batch_size, params=params)

    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        from landscape.cli.app import startup_done

        startup_done()
        plan = self.plan(arguments)
        if bool(self.config.get("dry_run", False)):
            self.print_dry_run(plan)
            return []
        todo = [c for c in plan.planned if c.state != "done"]
        if not todo:
            log.info("all %d cells of the grid are done in %s: nothing to launch", len(plan.planned), plan.sweep_dir)
            return []
        log.info(
            "launching %d cells (%d already done, skipped) into %s",
            len(todo),
            len(plan.planned) - len(todo),
            plan.sweep_dir,
        )
        launched = self.launch_cells(plan, todo, arguments)
        self.end_of_launch(plan.planned, launched, plan.sweep_dir)
        return launched.returns

    # ---------------------------------------------------------------- the steps (hooks of other sweepers)
    def grid_jobs(self, arguments: List[str]) -> list[list[str]]:
        """The jobs of the grid (each a list of overrides): the sweep file's ``hydra.sweeper.params`` and the
        command line's ``arguments``, every key checked against the schema first (exit 2: ``_refuse_bad_keys``)."""
        assert self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        _refuse_bad_keys(params_conf, self.hydra_context.config_loader)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(params_conf)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        return [list(job) for batch in self.overrides for job in batch]

    def plan(self, arguments: List[str], jobs: list[list[str]] | None = None) -> "GridPlan":
        """Compose and validate every cell of the grid (``plan_cells``); a grid with an invalid cell is refused
        (the problems on stderr, exit status 2, nothing launched). ``jobs``: the grid's jobs when the caller
        expanded them already (``grid_jobs``)."""
        assert self.config is not None and self.hydra_context is not None
        from landscape.cli.app import sweep_dir_of

        jobs = self.grid_jobs(arguments) if jobs is None else jobs
        sweep_dir = sweep_dir_of(self.config.hydra)
        _check_sweep_dir(self.config)
        tic = time.perf_counter()
        fast = os.environ.get("LANDSCAPE_FULL_COMPOSE", "") in ("", "0")  # 1: Hydra's compose for every cell
        local, memory = _job_machine(self.config)
        composer = CellComposer(self.config, self.hydra_context.config_loader) if fast else None
        planned = plan_cells(
            self.config,
            self.hydra_context.config_loader,
            jobs,
            sweep_dir,
            fast=fast,
            local=local,
            memory_bytes=memory,
            composer=composer,
        )
        log.info("planned %d cells in %.2f s", len(planned), time.perf_counter() - tic)
        if any(c.problems for c in planned):
            import sys

            # A refused grid is the user's input, not a crash: the problems, no traceback, exit status 2.
            print(format_problems(planned), file=sys.stderr, flush=True)
            raise SystemExit(2)
        return GridPlan(jobs, planned, composer, sweep_dir)

    def print_dry_run(self, plan: "GridPlan", planned: list[PlannedCell] | None = None) -> None:
        """The dry run's lines: the plan of ``planned`` (default: every cell) and its cost (``landscape.cost``)."""
        assert self.config is not None and self.hydra_context is not None
        planned = plan.planned if planned is None else planned
        composer = plan.composer
        print(format_plan(planned), flush=True)
        from landscape.cost import dry_run_estimate  # cost per cell and total (LANDSCAPE_COST=off: none)

        full = lambda o: _full_compose(self.config, self.hydra_context.config_loader, o)  # noqa: E731 - a one-line helper used on the next lines
        print(
            dry_run_estimate(
                planned, composer.compose if composer is not None and composer.fast else full, plan.sweep_dir
            ),
            flush=True,
        )

    def launch_cells(
        self, plan: "GridPlan", todo: list[PlannedCell], arguments: List[str], record: list[PlannedCell] | None = None
    ) -> "Launched":
        """Launch the cells ``todo`` through the configured launcher, in batches of ``max_batch_size``: the
        composed config saved as ``multirun.yaml``, a launch record naming the cells of ``record`` (default: every
        planned cell) written first. A stop (Ctrl-C, SIGTERM; a cell run in this process) is caught and returned
        as its signal number, with the failed job returns."""
        assert self.config is not None and self.launcher is not None
        sweep_dir = plan.sweep_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweepdir.multirun_path(sweep_dir))
        record_path = sweepdir.new_launch_record_path(sweep_dir)
        record_path.parent.mkdir(exist_ok=True)
        record_path.write_text(
            json.dumps(
                {
                    "arguments": list(arguments),
                    "argv": _launch_argv(),
                    "cwd": str(self.config.hydra.runtime.cwd),
                    "cells": [
                        {"cell_id": c.cell_id, "overrides": c.overrides}
                        for c in (plan.planned if record is None else record)
                    ],
                },
                indent=1,
            )
        )
        share = getattr(self.launcher, "share_composer", None)
        if plan.composer is not None and plan.composer.fast and share is not None and not plan.shared:
            share(plan.composer)  # workers forked after planning compose no base again
            plan.shared = True
        # Only cells that are not done are launched, in batches of max_batch_size (e.g. SLURM array size).
        self.overrides = self.split_arguments_list([c.overrides for c in todo], self.max_batch_size)
        self.batch_index = 0

        launched = Launched(todo)
        initial_job_idx = 0
        try:
            while not self.is_done() and launched.signum is None:
                batch = self.get_job_batch()
                results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
                launched.failures.extend(r for r in results if r.status == JobStatus.FAILED)
                initial_job_idx += len(batch)
                launched.returns.append(results)
                launched.signum = getattr(self.launcher, "stopped_by", None)  # the local pool: the signal it received
        except KeyboardInterrupt:  # Ctrl-C while waiting (SLURM) or while a cell ran here (no launcher)
            launched.signum = signal.SIGINT
        except SystemExit as exc:  # a cell run in this process, stopped by a signal (``app.main``: 128 + signal)
            code = exc.code if isinstance(exc.code, int) else 0
            if code - 128 not in (signal.SIGINT, signal.SIGTERM):
                raise
            launched.signum = code - 128
        return launched

    def end_of_launch(self, planned: list[PlannedCell], launched: "Launched", sweep_dir: Path) -> None:
        """The truth at the end of a launch (``launch_summary``): counts per state, failed cells by name (their
        tracebacks stay in their status files), the signal as received, and the command that completes every
        grid of the directory; exit ``128 + signal`` after a stop, 1 after a failure."""
        import sys

        text, complete = launch_summary(planned, launched.failures, sweep_dir, launched.signum)
        if launched.signum is not None or launched.failures:
            print(text, file=sys.stderr, flush=True)
            raise SystemExit(128 + int(launched.signum) if launched.signum is not None else 1)
        if not complete:  # e.g. a cell another launch holds (its lease): said, not an error of this launch
            print(text, file=sys.stderr, flush=True)
        else:
            log.info("%s", text)


@dataclass
class GridPlan:
    """A planned grid: its jobs, every cell planned (``plan_cells``), the composer that planned them (handed
    to a launcher that forks workers, once: ``shared``) and the absolute sweep directory."""

    jobs: list[list[str]]
    planned: list[PlannedCell]
    composer: "CellComposer | None"
    sweep_dir: Path
    shared: bool = False


@dataclass
class Launched:
    """What one ``launch_cells`` did: the cells it launched, the job returns per batch, the failed ones, and
    the signal that stopped it (None)."""

    cells: list[PlannedCell]
    returns: list[Sequence[JobReturn]] = field(default_factory=list)
    failures: list[JobReturn] = field(default_factory=list)
    signum: int | None = None
