"""Launchers of the ``landscape`` multirun: SLURM job arrays and local processes, through submitit.

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
- a job that dies without a result (killed, out of memory) is a failed cell, not an aborted wait.

``hydra/launcher=local`` (``CellLocalLauncher``) runs the cells as local processes, at most
``max_parallel`` at a time (default: one per visible GPU, else ``cpu_count // cpus_per_task``). Every job
sees all of the machine's GPUs; ``device=auto`` then claims one GPU per job (``landscape.devices``).

The Hydra plugin classes (``hydra_plugins.landscape_plugins.launchers``) are thin subclasses of these.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

#: Seconds a cell that polls ``should_stop`` gets to checkpoint after the preemption signal before the
#: requeue goes ahead anyway (training polls after every step).
STOP_GRACE_S = 10.0

#: Preset keys that are landscape's own (not submitit parameters).
OWN_KEYS = ("max_array_size", "max_parallel")


def cluster_max_array_size(timeout_s: float = 10.0) -> int | None:
    """``MaxArraySize`` of the reachable SLURM controller (``scontrol show config``), or None."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout_s, check=False)
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


class _CellLauncherBase(BaseSubmititLauncher):
    """Shared job-side behaviour: the preemption signal stops training cooperatively, then requeues."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.own = {k: self.params.pop(k) for k in OWN_KEYS if k in self.params}

    # ------------------------------------------------------------------------------------ in the job
    def __call__(self, sweep_overrides: List[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: Dict[type, Singleton]) -> JobReturn:
        """Run one cell in the submitit job; on the preemption signal stop training, then requeue."""
        import submitit

        from landscape import preemption
        from landscape.training import StopRequested

        preemption.reset()
        sig = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(sig)

        def on_signal(signum: int, frame: Any) -> None:
            log.warning("signal %s: stopping the cell at its next training step to checkpoint and requeue", signum)
            preemption.request_stop(f"signal {signal.Signals(signum).name}")
            if not callable(submitit_handler):
                return
            if preemption.last_poll_age() > STOP_GRACE_S:
                submitit_handler(signum, frame)  # nothing polls right now (data, metrics): requeue at once
            else:  # training polls: it checkpoints at its next step; if it has not within the grace, requeue
                signal.signal(signal.SIGALRM, lambda *_: submitit_handler(signum, None))
                signal.alarm(int(STOP_GRACE_S) + 1)

        signal.signal(sig, on_signal)
        try:
            ret = super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        finally:
            signal.alarm(0)
            signal.signal(sig, submitit_handler)
        stopped = ret.status == JobStatus.FAILED and isinstance(ret._return_value, StopRequested)
        if stopped and preemption.stop_requested() and callable(submitit_handler):
            log.warning("cell checkpointed (%s): requeueing", ret._return_value)
            submitit_handler(sig, None)  # checkpoint() -> same job re-submitted; scontrol requeue; exit
        return ret

    # ---------------------------------------------------------------------------- in the launcher
    def _executor(self) -> Any:
        import submitit

        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {(k if k in base else f"{self._EXECUTOR}_{k}"): v for k, v in self.params.items()
                  if k not in ("submitit_folder", "max_num_timeout") and v is not None}
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

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert len(job_overrides) > 0
        executor = self._executor()
        params = self._job_params(job_overrides, initial_job_idx)
        size = self.max_array_size()
        chunks = chunk(params, size)
        jobs: list[Any] = []
        tic = time.perf_counter()
        for part in chunks:  # submit every chunk first ...
            jobs.extend(executor.map_array(self, *zip(*part)))
        log.info("submitted %d cells as %d SLURM array(s) of <= %d tasks in %.1f s (first job %s)",
                 len(params), len(chunks), size, time.perf_counter() - tic, jobs[0].job_id)
        return _collect(jobs)  # ... then wait for all of them


class CellLocalLauncher(_CellLauncherBase):
    """Local processes, at most ``max_parallel`` at once, each seeing all GPUs (one claimed per job)."""

    _EXECUTOR = "local"

    def _adjust(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("gpus_per_node") is None:
            params["gpus_per_node"] = _gpu_count()  # submitit_local would hide all GPUs otherwise
        return params

    def max_parallel(self) -> int:
        preset = self.own.get("max_parallel")
        if preset:
            return int(preset)
        gpus = _gpu_count()
        if gpus:
            return gpus
        cpus = int(self.params.get("cpus_per_task") or 1)
        return max(1, (os.cpu_count() or 1) // cpus)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert len(job_overrides) > 0
        executor = self._executor()
        params = self._job_params(job_overrides, initial_job_idx)
        limit = self.max_parallel()
        log.info("running %d cells locally, at most %d at a time", len(params), limit)
        results: list[Any] = [None] * len(params)
        running: dict[int, Any] = {}
        queue = list(range(len(params)))
        while queue or running:
            while queue and len(running) < limit:
                i = queue.pop(0)
                running[i] = executor.submit(self, *params[i])
            time.sleep(0.2)
            for i, job in list(running.items()):
                if job.done():
                    results[i] = job
                    del running[i]
        return _collect(results)


def _collect(jobs: Sequence[Any]) -> list[JobReturn]:
    """Wait for every submitit job; a job that died without a result (killed, out of memory, cancelled)
    becomes a FAILED return instead of aborting the wait for the others."""
    out = []
    for job in jobs:
        try:
            out.append(job.results()[0])
        except Exception as exc:  # noqa: BLE001
            log.error("job %s ended without a result: %s", getattr(job, "job_id", "?"), str(exc).splitlines()[0] if str(exc) else exc)
            ret = JobReturn()
            ret.status, ret.return_value = JobStatus.FAILED, exc
            out.append(ret)
    return out


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0
