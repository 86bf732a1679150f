"""Hydra sweeper that plans the whole grid before any job starts.

It expands the sweep like Hydra's basic sweeper, then composes and validates *every* cell's config
(``landscape.config.validate``) and computes its ``cell_id``. A single bad cell stops the launch with a
message naming the cell, the key, the value and what is allowed. With ``dry_run=true`` it prints the plan
(cell ids, overrides, which cells are already done) and trains nothing. Otherwise it records the plan in
``<sweep_dir>/launches/`` (so ``landscape-status`` knows pending cells) and launches the jobs; cells that are
done are skipped by the jobs themselves.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@dataclass
class PlannedCell:
    """One job of a multirun: its overrides, cell id, state on disk, and validation problems."""

    index: int
    overrides: list[str]
    cell_id: str | None
    state: str
    problems: list[str]


def plan_cells(config: DictConfig, config_loader: Any, jobs: Sequence[Sequence[str]], sweep_dir: Path) -> list[PlannedCell]:
    """Compose and validate every job of a grid; no side effects."""
    from landscape.cell import CellDir, cell_id
    from landscape.config import validate
    from landscape.job import done_key

    planned = []
    for i, overrides in enumerate(jobs):
        try:
            job_cfg = config_loader.load_sweep_config(config, list(overrides))
            with _unlocked(job_cfg):
                del job_cfg["hydra"]
            problems = validate(job_cfg)
        except Exception as exc:  # composition errors: unknown key, bad type, missing group option
            planned.append(PlannedCell(i, list(overrides), None, "invalid", [str(exc).splitlines()[0]]))
            continue
        cid = None if problems else cell_id(job_cfg)
        state = "invalid" if problems else "pending"
        if cid is not None:
            status = CellDir(sweep_dir, cid).read_status()
            state = status.state if status is not None else "pending"
            if state == "done" and status is not None and status.done_key != done_key(job_cfg):
                state = "stale"  # done for other seeds or metric settings: will be completed
        planned.append(PlannedCell(i, list(overrides), cid, state, problems))
    return planned


class _unlocked:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self) -> DictConfig:
        from omegaconf import open_dict

        self._ctx = open_dict(self.cfg)
        OmegaConf.set_readonly(self.cfg, False)
        return self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


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
    lines = [f"dry run: {len(planned)} cells ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}); nothing launched",
             f"{'#':>5}  {'cell_id':12}  {'state':8}  overrides"]
    for c in planned:
        lines.append(f"{c.index:>5}  {c.cell_id or '-':12}  {c.state:8}  {' '.join(c.overrides)}")
    return "\n".join(lines)


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
        from landscape.cli.app import sweep_dir_of

        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(params_conf)
        self.overrides = self.split_arguments(overrides, self.max_batch_size)
        jobs = [list(job) for batch in self.overrides for job in batch]

        sweep_dir = sweep_dir_of(self.config.hydra)
        tic = time.perf_counter()
        planned = plan_cells(self.config, self.hydra_context.config_loader, jobs, sweep_dir)
        log.info("planned %d cells in %.2f s", len(planned), time.perf_counter() - tic)
        if any(c.problems for c in planned):
            raise GridError(format_problems(planned))
        if bool(self.config.get("dry_run", False)):
            print(format_plan(planned), flush=True)  # noqa: T201 - CLI output
            return []

        todo = [c for c in planned if c.state != "done"]
        if not todo:
            log.info("all %d cells of the grid are done in %s: nothing to launch", len(planned), sweep_dir)
            return []
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        launches = sweep_dir / "launches"
        launches.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**9:09d}"
        (launches / f"{stamp}.json").write_text(json.dumps({
            "arguments": list(arguments),
            "cells": [{"cell_id": c.cell_id, "overrides": c.overrides} for c in planned],
        }, indent=1))
        log.info("launching %d cells (%d already done, skipped) into %s", len(todo), len(planned) - len(todo), sweep_dir)
        # Only cells that are not done are launched, in batches of max_batch_size (e.g. SLURM array size).
        self.overrides = self.split_arguments_list([c.overrides for c in todo], self.max_batch_size)
        self.batch_index = 0

        returns: list[Sequence[JobReturn]] = []
        failures: list[JobReturn] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            failures.extend(r for r in results if r.status == JobStatus.FAILED)
            initial_job_idx += len(batch)
            returns.append(results)
        if failures:
            log.error("%d of %d cells failed; see `landscape-status %s`", len(failures), len(planned), sweep_dir)
            _ = failures[0].return_value  # re-raises the first failure (non-zero exit)
        return returns
