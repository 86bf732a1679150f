"""Helpers for tests that need the local SLURM cluster of ``scripts/slurm_cluster.sh``.

``cluster_available()`` answers whether a controller is reachable with a usable node (and, by default,
whether accounting answers, since ``sacct`` and cancelled-job states need it); ``requires_slurm`` marks a
test ``slurm`` and skips it at run time with that reason when the cluster is absent. Set
``LANDSCAPE_REQUIRE_SLURM=1`` (as CI does after starting the cluster) to turn that skip into a failure, so a
broken cluster cannot pass silently.

The small ``sbatch`` / ``job_state`` / ``wait_for_state`` helpers shell out to the SLURM client commands and
are meant for tests only.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import pytest

PARTITION = "debug"
"""Partition configured by scripts/slurm_cluster.sh (the default partition)."""

CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.sh"

#: Node states in which the node can (eventually) run a newly submitted job.
USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing"})
#: Job states after which SLURM will not run the job again by itself.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

_COMMAND_TIMEOUT_S = 15.0
F = TypeVar("F", bound=Callable[..., Any])


def _run(args: Sequence[str], timeout: float = _COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()
    return lines[-1].strip()


def _probe(require_accounting: bool) -> tuple[bool, str]:
    hint = f"start it with `bash {CLUSTER_SCRIPT.relative_to(CLUSTER_SCRIPT.parents[1])} up` (as root)"
    for tool in ("sinfo", "squeue", "sbatch") + (("sacct",) if require_accounting else ()):
        if shutil.which(tool) is None:
            return False, f"SLURM client `{tool}` not on PATH; {hint}"
    try:
        nodes = _run(["sinfo", "-h", "-N", "-o", "%N %T"])
        if nodes.returncode != 0:
            return False, f"sinfo cannot reach a controller ({_last_line(nodes)}); {hint}"
        states = [line.split()[-1].rstrip("*~#!%$@^-").lower() for line in nodes.stdout.splitlines() if line.strip()]
        if not any(state in USABLE_NODE_STATES for state in states):
            return False, f"no usable SLURM node (sinfo states: {states or 'none'}); {hint}"
        queue = _run(["squeue", "-h", "-o", "%i"])
        if queue.returncode != 0:
            return False, f"squeue failed ({_last_line(queue)}); {hint}"
        if require_accounting:
            acct = _run(["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now-1minutes"])
            if acct.returncode != 0 or "not running" in acct.stderr or "slurmdbd" in acct.stderr:
                return False, f"SLURM accounting (slurmdbd) not reachable ({_last_line(acct)}); {hint}"
    except subprocess.TimeoutExpired as exc:
        return False, f"SLURM command timed out after {exc.timeout:.0f}s: {' '.join(exc.cmd)}; {hint}"
    return True, "SLURM cluster reachable with a usable node"


@functools.lru_cache(maxsize=2)
def cluster_available(require_accounting: bool = True) -> tuple[bool, str]:
    """Whether a SLURM controller answers ``sinfo``/``squeue`` and has a node able to run jobs.

    With ``require_accounting`` (default) ``sacct`` must answer too: without slurmdbd a cancelled job never
    reaches a final state and submitit waits forever. Returns ``(ok, reason)``; the reason says what is
    missing and how to start the cluster. The answer is cached for the process.
    """
    return _probe(require_accounting)


def skip_unless_slurm(require_accounting: bool = True) -> None:
    """Skip the calling test (or fail it when ``LANDSCAPE_REQUIRE_SLURM=1``) unless the cluster is up."""
    ok, reason = cluster_available(require_accounting)
    if ok:
        return
    if os.environ.get("LANDSCAPE_REQUIRE_SLURM", "") not in ("", "0"):
        pytest.fail(f"LANDSCAPE_REQUIRE_SLURM is set but {reason}", pytrace=False)
    pytest.skip(reason)


def requires_slurm(test: F) -> F:
    """Decorator: mark ``test`` with ``pytest.mark.slurm`` and skip it at run time without a cluster.

    The check runs when the test runs (not at collection), so collecting the suite costs nothing where no
    SLURM is installed. Fixtures of the decorated test keep working (the signature is preserved).
    """

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        skip_unless_slurm()
        return test(*args, **kwargs)

    return pytest.mark.slurm(wrapper)  # type: ignore[return-value]


@pytest.fixture
def slurm_cluster() -> str:
    """Fixture form of :func:`requires_slurm`; yields the default partition's name."""
    skip_unless_slurm()
    return PARTITION


# ---------------------------------------------------------------------------------------------- job helpers


def sbatch(args: Iterable[str], cwd: Path) -> int:
    """Submit with ``sbatch --parsable`` from ``cwd`` and return the job id (array jobs: the array's id)."""
    proc = _run(["sbatch", "--parsable", f"--chdir={cwd}", *args])
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(args)} failed: {proc.stderr.strip()}")
    return int(proc.stdout.strip().split(";")[0])


def sacct_states(job_id: int | str) -> dict[str, str]:
    """Accounting state of every allocation of a job (array tasks as ``"<id>_<task>"``), e.g. ``COMPLETED``.

    ``CANCELLED by 0`` is reported as ``CANCELLED``. Empty while slurmdbd has no record yet.
    """
    proc = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "JobID,State"])
    if proc.returncode != 0:
        raise RuntimeError(f"sacct -j {job_id} failed: {proc.stderr.strip()}")
    states: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid] = state.split()[0] if state else ""
    return states


def queue_state(job_id: int | str) -> str | None:
    """State shown by ``squeue`` (e.g. ``RUNNING``, ``PENDING``), or None once the job left the queue."""
    proc = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"])
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return lines[0] if proc.returncode == 0 and lines else None


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.25) -> None:
    """Poll ``predicate`` until it is true; raise ``TimeoutError`` naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)


def wait_for_states(
    job_id: int | str, n_allocations: int = 1, timeout_s: float = 60.0, states: frozenset[str] = TERMINAL_STATES
) -> dict[str, str]:
    """Wait until ``sacct`` lists ``n_allocations`` allocations of the job, all in ``states``; return them."""
    result: dict[str, str] = {}

    def done() -> bool:
        nonlocal result
        result = sacct_states(job_id)
        return len(result) >= n_allocations and all(s in states for s in result.values())

    wait_for(done, timeout_s, f"job {job_id} to reach {sorted(states)} (last seen: {result})")
    return result


# --- running the CLI against the cluster (shared by the SLURM sweep tests) ---------------------------------

LANDSCAPE = str(Path(sys.executable).with_name("landscape"))
"""The ``landscape`` entry point of this environment."""
SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
"""The launcher settings of a sweep on the local cluster."""
SMALL = ["data.subsample=0.25", "model.width=8", "train.epochs=3"]
"""A fast cell (a few seconds)."""


def landscape(args: list[str], cwd: Path, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``landscape ARGS`` in ``cwd``; with ``check``, fail with its stderr on a non-zero exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([LANDSCAPE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"landscape {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def rows(sweep: Path, table: str = "models") -> pd.DataFrame:
    """A sweep's rows of ``table``, sorted by cell and seed(s)."""
    keys = ["cell_id", "seed"] if table == "models" else ["cell_id", "seed_a", "seed_b"]
    return pd.read_parquet(sweep / "results" / table).sort_values(keys).reset_index(drop=True)
