"""The running layer: launchers of the ``landscape`` multirun, SLURM job arrays and local processes, through
submitit (what runs the cells a sweep planned; the command line is ``landscape.cli``).

``hydra/launcher=slurm`` (``CellSlurmLauncher``) submits the cells of a grid as SLURM job arrays:

- a grid larger than the cluster's ``MaxArraySize`` (read from ``scontrol show config``, else the preset's
  ``max_array_size``) is split into chunks; every chunk is submitted before any result is awaited;
- preemption and time limits: SLURM sends the warning signal (``--signal=USR2@signal_delay_s``); the job's
  handler sets the process-wide stop request (``landscape.preemption``), training checkpoints at its current
  step and stops, and then submitit's requeue runs (``checkpoint()`` re-submits the same job, ``scontrol
  requeue``); the requeued task runs the same cell, which resumes from its checkpoints (trained seeds are
  loaded, not retrained). If nothing polls the stop request (data loading, metrics), or the cell has not
  stopped within ``STOP_GRACE_S``, the requeue happens at once; finished metric values are cached in the
  cell directory, so little is lost. (submitit counts a signal as a time-out, limited by
  ``max_num_timeout``, once 80% of ``timeout_min`` has passed, else as a preemption, requeued without limit.)
- a job that dies without a result (killed, out of memory) is a failed cell, not an aborted wait;
- ``cells_per_task`` (default ``auto``: ``ceil(cells / array_parallelism)``) cells run one after the other in
  one array task (``run_cells``), so short cells do not each pay a Python, torch and Hydra start-up; a requeued
  task skips its cells already done and resumes the stopped one;
- several cells per GPU: where a task has GPUs (``gpus_per_task``, ``gpus_per_node`` or ``gres``), its cells
  run at once in a pool of ``cells_per_gpu`` worker processes per GPU forked from the task (``auto``: from
  each cell's memory and compute estimate, ``landscape.placement``; ``cells_per_task`` is then at least the
  task's GPUs x workers per GPU, and ``cpus_per_task`` caps the workers: one core each). The preemption signal
  reaches every worker: each checkpoints its cell, then the task is requeued. No GPU: one cell after another.

``hydra/launcher=local`` (``CellLocalLauncher``) runs the cells in a pool of ``max_parallel`` warm worker
processes (default: one per visible GPU, else ``cpu_count // cpus_per_task``), started once per launch and
each running many cells one after the other: no Python, torch and Hydra start-up per cell. On Linux the
workers are forked from the launcher, which has already imported everything (``start_method: fork``; where
CUDA is already initialised in the launcher, or elsewhere, ``spawn``). With GPUs, ``cells_per_gpu`` workers
run per GPU (default ``auto``: from each cell's memory and compute estimate; ``landscape.placement``), worker
``i`` sees only GPU ``i mod n_gpus`` (``CUDA_VISIBLE_DEVICES``), and a cell starts on a worker while the
shares of its GPU's running cells stay within one (a big cell runs alone on its GPU). Without GPUs, one cell
per worker on the CPU. SIGTERM/SIGINT to the launcher (or SIGTERM/SIGUSR2 to a worker)
sets the workers' stop request (``landscape.preemption``): training checkpoints at its current step, the cell
records ``preempted`` in its status, and rerunning the same command resumes it; work that does not poll the
request (data loading, the Hessian, CKA, evaluations) is interrupted where it is, at once if nothing polled
within ``preemption.POLLING_S``, else after ``preemption.GRACE_S`` (as a single run's
``preemption.stop_on_signals``; finished values stay cached, the cell records ``interrupted``; a second signal
interrupts at once). The launcher forwards the
signal it received (SIGINT for Ctrl-C), so the stopped cells name it, and the sweeper's summary counts them
as interrupted and the cells that never started as pending (``NotStarted``). The launcher supervises each
worker (``_WorkerPool``): a worker that dies (killed, out of memory) costs only the cell it was running, which
the launch's summary names as interrupted (the same command resumes it), and is replaced; a worker whose
launcher died (even by SIGKILL) asks its cell to checkpoint and stop, and exits within ``ORPHAN_GRACE_S``.

The Hydra plugin classes (``hydra_plugins.landscape_plugins.launchers``) are thin subclasses of these;
``landscape.cli.launchers`` re-exports this module's names for older imports.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from landscape import placement
from landscape.preemption import NotStarted, WorkerDied

log = logging.getLogger(__name__)

#: Seconds a cell that polls ``should_stop`` gets to checkpoint after the preemption signal before the
#: requeue goes ahead anyway (training polls after every step).
STOP_GRACE_S = 10.0

#: Preset keys that are landscape's own (not submitit parameters).
OWN_KEYS = ("max_array_size", "max_parallel", "start_method", "cells_per_task", "cells_per_gpu", "gpu_memory_gb")


def cluster_max_array_size(timeout_s: float = 10.0) -> int | None:
    """``MaxArraySize`` of the reachable SLURM controller (``scontrol show config``), or None."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(match.group(1)) if out.returncode == 0 and match else None


def chunk(items: Sequence[Any], size: int) -> list[list[Any]]:
    """Consecutive chunks of at most ``size`` items (an array of ``size`` tasks uses indices 0..size-1,
    which SLURM accepts when ``size <= MaxArraySize``)."""
    if size < 1:
        raise ValueError(f"max_array_size={size}: expected an integer >= 1")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class _PreemptionHandling:
    """In a submitit task: while active, the preemption signal (submitit's USR2) asks training to stop at its
    next step (``landscape.preemption``) instead of killing the cell; if nothing polls the stop request (data,
    metrics), or training has not checkpointed within ``STOP_GRACE_S``, submitit's own handler requeues at once.
    ``requeue`` (after the cell raised ``StopRequested``) hands over to submitit: checkpoint -> the same task
    re-submitted, ``scontrol requeue``, exit. With ``pool`` (a task running its cells in worker processes,
    ``cells_per_gpu``), the signal is passed to every worker (each checkpoints its cell, no new cell starts);
    submitit's handler runs once the workers returned (``requeue``), or after ``STOP_GRACE_S + GRACE_S``."""

    def __init__(self, pool: "_WorkerPool | None" = None) -> None:
        self.pool = pool

    def __enter__(self) -> "_PreemptionHandling":
        import submitit

        from landscape import preemption

        preemption.reset()
        self.sig = submitit.JobEnvironment._usr_sig()
        self.submitit_handler = signal.getsignal(self.sig)
        signal.signal(self.sig, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        from landscape import preemption

        log.warning("signal %s: stopping the cell at its next training step to checkpoint and requeue", signum)
        preemption.request_stop(f"signal {signal.Signals(signum).name}")
        handler = self.submitit_handler
        if self.pool is not None:  # the workers poll: they checkpoint and return their cells
            self.pool.stop(signum)
            if callable(handler):
                signal.signal(signal.SIGALRM, lambda *_: handler(signum, None))
                signal.alarm(int(STOP_GRACE_S + preemption.GRACE_S) + 1)
            return
        if not callable(handler):
            return
        if preemption.last_poll_age() > STOP_GRACE_S:
            handler(signum, frame)  # nothing polls right now (data, metrics): requeue at once
        else:  # training polls: it checkpoints at its next step; if it has not within the grace, requeue
            signal.signal(signal.SIGALRM, lambda *_: handler(signum, None))
            signal.alarm(int(STOP_GRACE_S) + 1)

    def __exit__(self, *exc: Any) -> None:
        signal.alarm(0)
        signal.signal(self.sig, self.submitit_handler)

    def requeue(self, message: str) -> None:
        """Requeue through submitit's handler if a preemption signal asked for the stop."""
        from landscape import preemption

        if preemption.stop_requested() and callable(self.submitit_handler):
            log.warning("%s", message)
            self.submitit_handler(self.sig, None)


class _CellLauncherBase(BaseSubmititLauncher):
    """Shared job-side behaviour: the preemption signal stops training cooperatively, then requeues."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.own = {k: self.params.pop(k) for k in OWN_KEYS if k in self.params}
        placement.parse_cells_per_gpu(self.own.get("cells_per_gpu"))  # a bad value is refused before planning
        mem = self.own.get("gpu_memory_gb")
        if mem is not None and not (isinstance(mem, (int, float)) and not isinstance(mem, bool) and mem > 0):
            raise ValueError(f"hydra.launcher.gpu_memory_gb={mem!r}: expected null (read it) or a number of GB > 0")

    # ------------------------------------------------------------------------------------ in the job
    def __call__(
        self,
        sweep_overrides: List[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: Dict[type, Singleton],
    ) -> JobReturn:
        """Run one cell in the submitit job; on the preemption signal stop training, then requeue."""
        from landscape.training import StopRequested

        _freeze_task_start_up()
        with _PreemptionHandling() as preempt:
            ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        if ret.status == JobStatus.FAILED and isinstance(ret._return_value, StopRequested):
            preempt.requeue(f"cell checkpointed ({ret._return_value}): requeueing")
        return ret

    def run_cells(
        self, cells: Sequence[tuple], shares: dict[int, float] | None = None, workers_per_gpu: int = 1
    ) -> list[JobReturn]:
        """Several cells in one SLURM task (``cells_per_task``), one after the other, with ``__call__``'s
        preemption handling around the whole list: on the signal the running cell checkpoints and the task is
        requeued; the requeued task skips the cells already done (their status) and resumes the stopped one.
        With GPUs in the task and ``workers_per_gpu * n_gpus > 1`` (``cells_per_gpu``), the cells run at once
        in a pool of that many worker processes instead (``run_cells_pooled``)."""
        gpus = placement.gpu_count()
        if gpus and workers_per_gpu * gpus > 1 and len(cells) > 1:
            return self.run_cells_pooled(cells, gpus, workers_per_gpu, shares)
        import submitit
        from hydra.core.utils import run_job, setup_globals
        from omegaconf import open_dict

        from landscape import preemption
        from landscape.training import StopRequested

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        _freeze_task_start_up()
        composer = JobComposer(self.config, self.hydra_context.config_loader)
        task_id = submitit.JobEnvironment().job_id
        out: list[JobReturn] = []
        stopped = False
        with _PreemptionHandling() as preempt:
            for overrides, job_dir_key, job_num, _, singleton_state in cells:
                if preemption.stop_requested():
                    break
                Singleton.set_state(singleton_state)
                setup_globals()
                cfg = composer.compose(list(overrides))
                with open_dict(cfg.hydra.job):
                    cfg.hydra.job.id = f"{task_id}.{job_num}"
                    cfg.hydra.job.num = job_num
                ret = run_job(
                    hydra_context=self.hydra_context,
                    task_function=self.task_function,
                    config=cfg,
                    job_dir_key=job_dir_key,
                    job_subdir_key="hydra.sweep.subdir",
                )
                out.append(ret)
                if ret.status == JobStatus.FAILED and isinstance(ret._return_value, StopRequested):
                    stopped = True
                    break
        if stopped:
            preempt.requeue(f"cell checkpointed ({out[-1]._return_value}): requeueing the task")
        for overrides, *_ in cells[len(out) :]:
            out.append(_failed(NotStarted("not run: the task was stopped"), overrides))
        return out

    def run_cells_pooled(
        self, cells: Sequence[tuple], gpus: int, workers_per_gpu: int, shares: dict[int, float] | None = None
    ) -> list[JobReturn]:
        """The cells of one SLURM task at once, in a pool of ``gpus * workers_per_gpu`` worker processes forked
        from the task (worker ``s`` on the task's GPU ``s mod gpus``; a cell starts while the shares of its GPU
        stay within one: ``landscape.placement``). On the preemption signal every worker checkpoints its cell,
        the cells not started are not run, and the task is requeued (the requeued task skips what is done)."""
        import multiprocessing as mp

        import cloudpickle

        from landscape import preemption

        _freeze_task_start_up()
        size = min(gpus * workers_per_gpu, len(cells))
        share_list = [(shares or {}).get(int(num), 1.0 / workers_per_gpu) for _, _, num, _, _ in cells]
        state = cloudpickle.dumps((self, cells[0][4]))
        pool = _WorkerPool(mp.get_context(self.start_method()), size, state, gpus, share_list)
        log.info(
            "running %d cells of this task at once on %d GPU(s), %d worker(s) per GPU",
            len(cells),
            gpus,
            workers_per_gpu,
        )
        with _PreemptionHandling(pool=pool) as preempt:
            try:
                out = pool.run([(list(overrides), key, num) for overrides, key, num, _, _ in cells])
            finally:
                pool.close()
        if preemption.stop_requested():
            preempt.requeue("the task's cells checkpointed: requeueing the task")
        return out

    def start_method(self) -> str:
        """``fork`` where available and safe (no CUDA context in this process), else ``spawn``."""
        import multiprocessing as mp

        wanted = str(self.own.get("start_method") or "auto")
        if wanted != "auto":
            if wanted not in mp.get_all_start_methods():
                raise ValueError(
                    f"hydra.launcher.start_method={wanted!r}: expected auto or one of "
                    f"{', '.join(mp.get_all_start_methods())}"
                )
            return wanted
        cuda_ready = False
        try:
            import torch

            cuda_ready = bool(torch.cuda.is_initialized())
        except Exception:  # noqa: BLE001 - no CUDA state to ask about: fork is safe
            pass
        return "fork" if "fork" in mp.get_all_start_methods() and not cuda_ready else "spawn"

    def job_id(self, job_num: int) -> str:
        """Hydra's ``job.id`` of a cell run in a pool worker."""
        return f"local_{os.getpid()}_{job_num}"

    def run_in_worker(self, sweep_overrides: List[str], job_dir_key: str, job_num: int) -> JobReturn:
        """One cell in a pool worker: Hydra's job setup (as submitit's job does), then the cell."""
        from hydra.core.utils import run_job, setup_globals
        from omegaconf import open_dict

        from landscape import preemption

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        if preemption.stop_requested():  # the launch is being stopped: do not start another cell
            return _failed(NotStarted("launch stopped before this cell started"), sweep_overrides)
        Singleton.set_state(_WORKER["singletons"])
        setup_globals()
        if "composer" not in _WORKER:  # a forked worker inherits the planner's compositions (share_composer)
            _WORKER["composer"] = JobComposer(self.config, self.hydra_context.config_loader, _WORKER.get("planner"))
        sweep_config = _WORKER["composer"].compose(list(sweep_overrides))
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.id = self.job_id(job_num)
            sweep_config.hydra.job.num = job_num
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key=job_dir_key,
            job_subdir_key="hydra.sweep.subdir",
        )

    def place_cells(self, job_overrides: Sequence[Sequence[str]], n_gpus: int) -> "placement.Placement":
        """Cells on ``n_gpus`` GPUs under ``hydra.launcher.cells_per_gpu`` (``landscape.placement``); ``auto``
        composes every cell's config (the planner's compositions where the sweeper shared them) to estimate it;
        the workers per GPU are capped by the CPU cores (``cpus_per_task`` each)."""
        setting = self.own.get("cells_per_gpu", "auto")
        cfgs = None
        if placement.parse_cells_per_gpu(setting) is None:
            assert self.config is not None and self.hydra_context is not None
            composer = JobComposer(self.config, self.hydra_context.config_loader, _WORKER.get("planner"))
            cfgs = [composer.compose(list(o)) for o in job_overrides]
        cap = placement.max_workers_per_gpu(n_gpus, int(self.params.get("cpus_per_task") or 1), self._cpus())
        return placement.place(
            cfgs, setting, len(job_overrides), placement.gpu_memory_bytes(self.own.get("gpu_memory_gb")), cap
        )

    def _cpus(self) -> int | None:
        return None  # this machine's (SLURM: the node's cores, unknown here: no cap)

    # ---------------------------------------------------------------------------- in the launcher
    def _executor(self) -> Any:
        import submitit

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {
            (k if k in base else f"{self._EXECUTOR}_{k}"): v
            for k, v in self.params.items()
            if k not in ("submitit_folder", "max_num_timeout") and v is not None
        }
        executor.update_parameters(**self._adjust(params))
        return executor

    def _adjust(self, params: dict[str, Any]) -> dict[str, Any]:
        return params

    def _job_params(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[tuple]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        out = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            out.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return out


class CellSlurmLauncher(_CellLauncherBase):
    """SLURM job arrays, chunked below ``MaxArraySize``, all chunks submitted before waiting."""

    _EXECUTOR = "slurm"

    def max_array_size(self) -> int:
        found = cluster_max_array_size()
        preset = self.own.get("max_array_size")
        size = found if found is not None else int(preset or 1000)
        if found is not None and preset:
            size = min(size, int(preset))
        return size

    def cells_per_task(self, n_cells: int, at_once: int = 1) -> int:
        """``hydra.launcher.cells_per_task``; ``null``/``auto``: as many as make the grid one wave of at most
        ``array_parallelism`` concurrent tasks (``ceil(n_cells / array_parallelism)``), so a 2,000-cell grid of
        short cells is 256 task start-ups (Python, torch, Hydra), not 2,000; and at least ``at_once`` (the cells
        a task runs at once: its GPUs x ``cells_per_gpu``), so that every worker of the task has a cell."""
        preset = self.own.get("cells_per_task")
        if preset not in (None, "auto"):
            value = int(preset)
            if value < 1:
                raise ValueError(f"hydra.launcher.cells_per_task={preset!r}: expected a positive integer or auto")
            return value
        parallel = int(self.params.get("array_parallelism") or 256)
        return max(1, math.ceil(n_cells / max(parallel, 1)), min(at_once, n_cells))

    def job_id(self, job_num: int) -> str:
        import submitit

        return f"{submitit.JobEnvironment().job_id}.{job_num}"

    def _cpus(self) -> int | None:
        return int(self.params.get("cpus_per_task") or 1)  # a task's cores: cpus_per_task, shared by its workers

    def task_placement(self, job_overrides: Sequence[Sequence[str]]) -> tuple[int, "placement.Placement | None"]:
        """``(GPUs of one task, placement of the cells)`` (``landscape.placement.task_gpus``; no GPU: ``(0,
        None)``, the cells of a task run one after the other). Each of a task's workers gets
        ``cpus_per_task / (GPUs x workers per GPU)`` of its cores."""
        gpus = placement.task_gpus(self.params)
        if not gpus:
            return 0, None
        setting = self.own.get("cells_per_gpu", "auto")
        cfgs = None
        if placement.parse_cells_per_gpu(setting) is None:
            assert self.config is not None and self.hydra_context is not None
            composer = JobComposer(self.config, self.hydra_context.config_loader)
            cfgs = [composer.compose(list(o)) for o in job_overrides]
        cap = placement.max_workers_per_gpu(gpus, 1, int(self.params.get("cpus_per_task") or 1))
        return gpus, placement.place(
            cfgs,
            setting,
            len(job_overrides),
            placement.gpu_memory_bytes(self.own.get("gpu_memory_gb") or placement.DEFAULT_GPU_MEMORY_GB),
            cap,
        )

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert len(job_overrides) > 0
        executor = self._executor()
        params = self._job_params(job_overrides, initial_job_idx)
        size = self.max_array_size()
        gpus, place = self.task_placement(job_overrides)
        per_gpu = place.workers_per_gpu if place is not None else 1
        per_task = self.cells_per_task(len(params), gpus * per_gpu)
        tasks = chunk(params, per_task) if per_task > 1 else None
        chunks = chunk(tasks if tasks is not None else params, size)
        shares = {p[2]: s for p, s in zip(params, place.shares, strict=True)} if place is not None else None
        jobs: list[Any] = []
        tic = time.perf_counter()
        for part in chunks:  # submit every chunk first ...
            if tasks is not None:
                jobs.extend(executor.map_array(_CellsTask(self, shares, per_gpu), part))
            else:
                jobs.extend(executor.map_array(self, *zip(*part, strict=True)))
        log.info(
            "submitted %d cells as %d SLURM array(s) of <= %d tasks (%d cell(s) per task) in %.1f s (first job %s)%s",
            len(params),
            len(chunks),
            size,
            per_task,
            time.perf_counter() - tic,
            jobs[0].job_id,
            f"; {placement.describe(place, gpus)} per task" if place is not None and tasks is not None else "",
        )
        try:
            if tasks is None:
                return _collect(jobs)  # ... then wait for all of them
            return _collect(jobs, [len(t) for t in tasks])
        except KeyboardInterrupt:  # Ctrl-C stops the wait, not the jobs: the sweeper's summary follows
            ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
            log.warning(
                "stopped waiting: the submitted SLURM job(s) %s go on (scancel %s stops them)",
                ", ".join(ids),
                " ".join(ids),
            )
            raise


class _CellsTask:
    """The callable of a SLURM task carrying several cells; ``checkpoint`` makes submitit requeue it."""

    def __init__(self, launcher: _CellLauncherBase, shares: dict[int, float] | None = None, workers_per_gpu: int = 1):
        self.launcher, self.shares, self.workers_per_gpu = launcher, shares, workers_per_gpu

    def __call__(self, cells: Sequence[tuple]) -> list[JobReturn]:
        return self.launcher.run_cells(cells, self.shares, self.workers_per_gpu)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class CellLocalLauncher(_CellLauncherBase):
    """A pool of warm local worker processes, each running many cells; ``cells_per_gpu`` workers per GPU where
    GPUs exist (``landscape.placement``)."""

    _EXECUTOR = "local"
    stopped_by: int | None = None
    """The signal that stopped the last ``launch`` (SIGINT, SIGTERM), or None."""

    def max_parallel(self, gpus: int | None = None, workers_per_gpu: int = 1) -> int:
        """Workers of the pool: ``max_parallel`` if set, else ``workers_per_gpu`` per GPU (``gpus``; default:
        those counted by ``landscape.placement.gpu_count``), else (no GPU) ``cpu_count // cpus_per_task``."""
        preset = self.own.get("max_parallel")
        if preset:
            return int(preset)
        gpus = placement.gpu_count() if gpus is None else gpus
        if gpus:
            return gpus * max(1, workers_per_gpu)
        cpus = int(self.params.get("cpus_per_task") or 1)
        return max(1, (os.cpu_count() or 1) // cpus)

    def share_composer(self, composer: Any) -> None:
        """Keep the sweeper's verified ``CellComposer`` for workers forked after planning (they inherit it and
        compose no base again); a spawned worker makes its own."""
        _WORKER["planner"] = composer

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import multiprocessing as mp

        import cloudpickle

        assert len(job_overrides) > 0
        params = self._job_params(job_overrides, initial_job_idx)
        gpus = placement.gpu_count()
        place = self.place_cells(job_overrides, gpus) if gpus else None
        limit = min(self.max_parallel(gpus, place.workers_per_gpu if place is not None else 1), len(params))
        method = self.start_method()
        ctx = mp.get_context(method)
        log.info(
            "running %d cells locally, at most %d at a time (%d warm worker process(es), %s%s)",
            len(params),
            limit,
            limit,
            method,
            f"; {placement.describe(place, gpus)}" if place is not None else "",
        )
        self.stopped_by = None
        state = cloudpickle.dumps((self, Singleton.get_state()))
        pool = _WorkerPool(ctx, limit, state, gpus, place.shares if place is not None else None)
        stop = {"signal": None}

        def on_signal(signum: int, frame: Any) -> None:
            stop["signal"] = signum
            log.warning(
                "signal %s: asking the workers to checkpoint and stop; rerun the same command to resume",
                signal.Signals(signum).name,
            )
            pool.stop(signum)  # the signal as received, so that the stopped cells name it

        old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            results = pool.run([(overrides, key, num) for overrides, key, num, _, _ in params])
        finally:
            pool.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
        self.stopped_by = stop["signal"]  # read by the sweeper's summary
        return results


class _WorkerPool:
    """The local launcher's warm workers, supervised one by one: each worker (forked or spawned once, see
    ``CellLocalLauncher``) takes a cell through its own pipe, runs it and sends back its ``JobReturn``; the
    launcher waits on every pipe and on every worker's exit at once. A worker that dies costs only the cell it
    was running (a FAILED return with ``WorkerDied``, named in the launch's summary) and is replaced (same
    slot, same GPU) while cells are waiting. Workers watch their launcher: if it dies (even by SIGKILL), they
    ask their cell to checkpoint and stop, and exit (``ORPHAN_GRACE_S`` at most).

    With ``gpus``, worker slot ``s`` has GPU ``s mod gpus`` (``landscape.placement.gpu_of_slot``); ``shares``
    (one per task, its share of a GPU) decide which waiting cell an idle worker takes: the first that keeps its
    GPU's running shares within one (``landscape.placement.pick``); without shares, the next one."""

    def __init__(self, ctx: Any, size: int, state: bytes, gpus: int, shares: Sequence[float] | None = None):
        self.ctx, self.size, self.state, self.gpus = ctx, size, state, gpus
        self.shares = list(shares) if shares is not None and gpus else None
        self.workers: list[dict[str, Any]] = []  # {"proc", "conn", "slot", "cell"}
        self.stopping = False  # set by the launcher's signal handler: no new cell starts

    def pids(self) -> list[int]:
        return [w["proc"].pid for w in self.workers if w["proc"].pid is not None]

    def stop(self, signum: int) -> None:
        """No new cell starts; ``signum`` is sent to every worker (each checkpoints its cell and returns it)."""
        self.stopping = True
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signum)

    def gpu(self, slot: int) -> int | None:
        """The GPU (index among the visible ones) of worker ``slot``; None without GPUs."""
        return placement.gpu_of_slot(slot, self.gpus) if self.gpus else None

    def load(self, gpu: int | None) -> float:
        """Sum of the shares of the cells running on ``gpu``."""
        if self.shares is None:
            return 0.0
        return sum(self.shares[w["cell"]] for w in self.workers if w["cell"] is not None and self.gpu(w["slot"]) == gpu)

    def _start(self, slot: int) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(
            target=_pool_worker, args=(self.state, slot, self.gpus, child), name=f"landscape-worker-{slot}"
        )
        proc.start()
        child.close()
        self.workers.append({"proc": proc, "conn": parent, "slot": slot, "cell": None})

    def run(self, tasks: list[tuple[list[str], str, int]]) -> list[JobReturn]:
        """Run every task ``(overrides, job_dir_key, job_num)``; one ``JobReturn`` per task, in order."""
        import collections
        from multiprocessing.connection import wait

        import cloudpickle

        results: list[JobReturn | None] = [None] * len(tasks)
        waiting = collections.deque(range(len(tasks)))
        for slot in range(min(self.size, len(tasks))):
            self._start(slot)
        while True:
            if not self.stopping:
                for w in self.workers:
                    if w["cell"] is None and waiting:
                        gpu = self.gpu(w["slot"])
                        i = placement.pick(waiting, self.shares, self.load(gpu))
                        if i is None:  # no waiting cell fits this worker's GPU now
                            continue
                        waiting.remove(i)
                        try:
                            w["conn"].send((i, *tasks[i]))
                            w["cell"] = i
                        except OSError:  # it died meanwhile: its exit is handled below
                            waiting.appendleft(i)
                            continue
                        if gpu is not None:
                            log.info(
                                "cell #%d on GPU %d (worker %d, pid %s; GPU load %.2f)",
                                tasks[i][2],
                                gpu,
                                w["slot"],
                                w["proc"].pid,
                                self.load(gpu),
                            )
            busy = [w for w in self.workers if w["cell"] is not None]
            if not busy and (self.stopping or not waiting):
                break
            ready = set(
                wait([w["conn"] for w in self.workers] + [w["proc"].sentinel for w in self.workers], timeout=1.0)
            )
            for w in list(self.workers):
                if w["conn"] in ready:
                    try:
                        i, payload = w["conn"].recv()
                        results[i] = cloudpickle.loads(payload)
                        w["cell"] = None
                        continue
                    except (EOFError, OSError):
                        pass  # the worker is gone: handled as its exit
                    except Exception as exc:  # noqa: BLE001 - a result that cannot be read back
                        i = w["cell"]
                        results[i] = _failed(
                            RuntimeError(
                                f"cell #{tasks[i][2]}: its result could not be read back: {type(exc).__name__}: {exc}"
                            ),
                            tasks[i][0],
                        )
                        w["cell"] = None
                        continue
                if w["proc"].sentinel in ready or w["conn"] in ready:
                    w["proc"].join(timeout=5)
                    self._died(w, tasks, results)
                    if waiting and not self.stopping:
                        self._start(w["slot"])
        for i in waiting:  # the launch was stopped before these started
            results[i] = _failed(NotStarted("launch stopped before this cell started"), tasks[i][0])
        return [r if r is not None else _failed(RuntimeError("no result"), tasks[i][0]) for i, r in enumerate(results)]

    def _died(
        self, w: dict[str, Any], tasks: list[tuple[list[str], str, int]], results: list[JobReturn | None]
    ) -> None:
        self.workers.remove(w)
        w["conn"].close()
        code = w["proc"].exitcode
        how = (
            f"killed by signal {signal.Signals(-code).name}"
            if code is not None and code < 0 and -code in signal.valid_signals()
            else f"exit status {code}"
        )
        i = w["cell"]
        if i is None:
            log.warning("pool worker %s (pid %s) ended (%s) between cells", w["slot"], w["proc"].pid, how)
            return
        msg = (
            f"pool worker pid {w['proc'].pid} ended ({how}) while running this cell: interrupted; its "
            "checkpoints stay, rerun the same command to resume it"
        )
        log.error("cell #%d (%s): %s", tasks[i][2], " ".join(filter_overrides(tasks[i][0])), msg)
        results[i] = _failed(WorkerDied(msg), tasks[i][0])

    def close(self) -> None:
        """Tell idle workers to exit and wait for them (a few seconds, then terminate)."""
        for w in self.workers:
            with contextlib.suppress(OSError):
                w["conn"].send(None)
        deadline = time.monotonic() + 30
        for w in self.workers:
            w["proc"].join(timeout=max(0.1, deadline - time.monotonic()))
            if w["proc"].is_alive():
                w["proc"].terminate()
                w["proc"].join(timeout=5)
            w["conn"].close()
        self.workers = []


def _failed(exc: BaseException, overrides: Sequence[str]) -> JobReturn:
    ret = JobReturn()
    ret.status, ret.return_value, ret.overrides = JobStatus.FAILED, exc, list(overrides)
    return ret


class JobComposer:
    """A job's config (with its ``hydra`` node) as Hydra's ``load_sweep_config`` makes it, from the ``job`` view
    of a ``sweeper.CellComposer`` (Hydra once per base, Hydra's override function for each job's values). The
    first job of each base that the planner has not verified is also composed in full and compared (a sampled
    check, not repeated per job); any difference, or an override the fast path does not handle, means Hydra's
    full compose from then on. ``planner``: the sweeper's verified composer (a forked worker inherits it)."""

    def __init__(self, config: Any, loader: Any, planner: Any = None):
        from landscape.cli.sweeper import CellComposer

        self.config, self.loader = config, loader
        self.cells = planner if planner is not None else CellComposer(config, loader)
        self.fast = True
        self.n_checks = 0

    @property
    def n_full(self) -> int:
        """Hydra compositions made so far for jobs: bases plus checks and fallbacks."""
        return self.cells.n_full + self.n_checks

    def full(self, overrides: List[str]) -> Any:
        self.n_checks += 1
        return self.loader.load_sweep_config(self.config, list(overrides))

    def compose(self, overrides: List[str]) -> Any:
        if not self.fast:
            return self.full(overrides)
        try:
            group = self.cells._split(overrides)[0]
            cfg = self.cells.job(overrides)
        except Exception:  # noqa: BLE001 - e.g. a sweep override, a bad value: Hydra's path (and its error)
            return self.full(overrides)
        if group not in self.cells.verified:
            full = self.full(overrides)
            if OmegaConf.to_container(cfg) != OmegaConf.to_container(full):
                log.warning(
                    "fast job compose differs from Hydra's for %s: composing every job with Hydra", " ".join(overrides)
                )
                self.fast = False
                return full
            self.cells.verified.add(group)
        return cfg


_WORKER: dict[str, Any] = {}


def _freeze_task_start_up() -> None:
    """In a SLURM task (a fresh process that submitit started and that imported torch, Hydra and pandas while
    unpickling the launcher): freeze those objects, as ``app.startup_done`` does for the ``landscape`` script,
    so that the task's exit does not walk them (0.4 s a task) and later collections skip them."""
    import gc

    if not _WORKER.get("frozen"):
        gc.freeze()
        _WORKER["frozen"] = True


ORPHAN_POLL_S = 0.5
"""Seconds between two checks of a pool worker that its launcher is still alive."""
ORPHAN_GRACE_S = 5.0
"""Seconds a pool worker whose launcher died gives its cell to checkpoint and stop before it exits anyway."""


def _worker_init(state: bytes, slot: int, gpus: int) -> None:
    """In a new pool worker: remember the launcher and Hydra's singletons (``state``, cloudpickled: the config
    holds dynamically made dataclasses), its slot (its GPU), install the stop handlers and the watch of the
    launcher (``_watch_launcher``)."""
    import cloudpickle

    from landscape import preemption

    launcher, singletons = cloudpickle.loads(state)
    _WORKER.update(launcher=launcher, singletons=singletons, slot=slot)
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = placement.visible_gpus(gpus)[placement.gpu_of_slot(slot, gpus)]
    preemption.reset()

    first_at: list[float] = []  # when the first stop signal came

    def on_signal(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        # a Ctrl-C reaches a worker twice, from the terminal (its process group) and forwarded by the launcher,
        # within moments: only a signal at least POLLING_S after the first counts as a second one
        first = not first_at
        if first:
            first_at.append(now)
        again = not first and now - first_at[0] > preemption.POLLING_S
        preemption.request_stop(f"signal {name}")
        if not _WORKER.get("busy"):
            return
        # as ``preemption.stop_on_signals`` in a single run: work that polls the request (training loops, curves,
        # jumps) checkpoints at its next step; work that does not (data loading, Hessian, CKA, evaluations) is
        # interrupted where it is, at once or after ``GRACE_S`` (its finished values are cached and stay)
        if again or (first and preemption.last_poll_age() > preemption.POLLING_S):
            raise KeyboardInterrupt(f"signal {name}")
        if first:
            signal.setitimer(signal.ITIMER_REAL, preemption.GRACE_S)

    def on_alarm(signum: int, frame: Any) -> None:
        if _WORKER.get("busy"):
            raise KeyboardInterrupt(
                f"{preemption.stop_reason() or 'stop requested'}: stop not taken within {preemption.GRACE_S:g} s"
            )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR2, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # Ctrl-C (the terminal's, or forwarded by the launcher): the same stop
    signal.signal(signal.SIGALRM, on_alarm)


def _watch_launcher(launcher_pid: int) -> None:
    """A daemon thread: once the launcher is gone (this process re-parented, e.g. the launcher was killed with
    SIGKILL), ask the running cell to checkpoint and stop (``landscape.preemption.request_stop``); if this
    process is still alive ``ORPHAN_GRACE_S`` later (a step that does not poll the request), exit at once (the
    cell's lease is taken over by the next launch; its checkpoints and cached values stay)."""
    import threading

    from landscape import preemption

    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(ORPHAN_POLL_S)
        log.warning("the launcher (pid %d) is gone: this worker checkpoints its cell and exits", launcher_pid)
        preemption.request_stop("the launcher is gone")
        time.sleep(ORPHAN_GRACE_S)
        log.error("the cell did not stop within %g s of its launcher's end: the worker exits now", ORPHAN_GRACE_S)
        logging.shutdown()
        os._exit(3)

    threading.Thread(target=watch, name="landscape-launcher-watch", daemon=True).start()


def _pool_worker(state: bytes, slot: int, gpus: int, conn: Any) -> None:
    """A pool worker's life: take cells from ``conn`` (``(index, overrides, job_dir_key, job_num)``, None: exit)
    and send back ``(index, cloudpickled JobReturn)``; exit when the launcher is gone."""
    import cloudpickle

    launcher_pid = os.getppid()
    _worker_init(state, slot, gpus)
    _watch_launcher(launcher_pid)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # the launcher is gone
        if task is None:
            return
        i, overrides, key, num = task
        try:
            _WORKER["busy"] = True
            payload = _worker_run(overrides, key, num)
        except KeyboardInterrupt as exc:  # a stop the cell's work did not take in time (``_worker_init``)
            payload = cloudpickle.dumps(_failed(KeyboardInterrupt(str(exc)), overrides))
        except Exception as exc:  # noqa: BLE001 - e.g. a composition error outside Hydra's run_job
            payload = cloudpickle.dumps(_failed(RuntimeError(f"{type(exc).__name__}: {exc}"), overrides))
        finally:
            _WORKER["busy"] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            conn.send((i, payload))
        except (BrokenPipeError, OSError):
            return


def _worker_run(sweep_overrides: List[str], job_dir_key: str, job_num: int) -> bytes:
    """Run one cell; its ``JobReturn`` pickled by cloudpickle (the config holds dynamically made dataclasses)."""
    import cloudpickle

    ret = _WORKER["launcher"].run_in_worker(sweep_overrides, job_dir_key, job_num)
    try:
        return cloudpickle.dumps(ret)
    except Exception as exc:  # noqa: BLE001 - e.g. an exception that does not pickle: its text comes back
        return cloudpickle.dumps(
            _failed(
                RuntimeError(
                    f"{type(ret._return_value).__name__}: {ret._return_value}"
                    if ret.status == JobStatus.FAILED
                    else f"unpicklable result: {exc}"
                ),
                sweep_overrides,
            )
        )


def _collect(jobs: Sequence[Any], sizes: Sequence[int] | None = None) -> list[JobReturn]:
    """Wait for every submitit job; a job that died without a result (killed, out of memory, cancelled)
    becomes a FAILED return (one per cell it carried: ``sizes``) instead of aborting the wait for the others."""
    out: list[JobReturn] = []
    for i, job in enumerate(jobs):
        try:
            res = job.results()[0]
            out.extend(res if sizes is not None else [res])
        except Exception as exc:  # noqa: BLE001 - one job's failure is logged; the others' results are kept
            log.error(
                "job %s ended without a result: %s",
                getattr(job, "job_id", "?"),
                str(exc).splitlines()[0] if str(exc) else exc,
            )
            for _ in range(sizes[i] if sizes is not None else 1):
                ret = JobReturn()
                ret.status, ret.return_value = JobStatus.FAILED, exc
                out.append(ret)
    return out
