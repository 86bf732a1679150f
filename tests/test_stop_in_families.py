"""A stop request reaches the training loops inside metric families: Ctrl-C (SIGINT to the process group, as a
terminal sends it) or SIGTERM while a Bezier curve (alone, or a cell's curves as one stack) or a jump-and-retrain
trains ends the ``landscape`` process
within 5 s, leaves the cell resumable (``running``, ``preempted``, a checkpoint under the cell), and rerunning
the same command resumes the training (the engine's ``resumed at epoch`` line) and gives rows bitwise equal to
those of an uninterrupted run of the same config in another directory. Both a single run and the local pool
launcher (``-m hydra/launcher=local``) are stopped this way."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import LANDSCAPE, run_cli

BASE = ["data.subsample=0.25", "model.width=8", "train.epochs=2", "train.batch_size=32", "hydra.sweep.dir=sweep"]
# two jumps of 8 retraining epochs (about 1 s each on an idle core): a stop lands in the middle of a retraining
JUMP = [
    *BASE,
    "train.seeds=[0]",
    "metrics.jump_retrain.enabled=true",
    "metrics.jump_retrain.embedding=pca",
    "metrics.jump_retrain.n_jumps=1",
    "metrics.jump_retrain.scales=[0.25,0.5]",
    "metrics.jump_retrain.epochs=8",
    "metrics.jump_retrain.batch_size=16",
    "metrics.jump_retrain.record_every=10",
    "metrics.jump_retrain.projection_dim=16",
    "metrics.jump_retrain.eval_samples=64",
    "metrics.jump_retrain.store_coords=true",
]
# a curve of 30 epochs first (about 3 s here), however many stages the connectivity protocol adds
CURVE = [*BASE, "train.seeds=[0,1]", "metrics.connectivity.enabled=true", "metrics.connectivity.epochs=30"]
# three seeds: the three pairs' curves train as one stack (an MLP; ``metrics.connectivity.prepare``)
CURVES = [*BASE, "train.seeds=[0,1,2]", "metrics.connectivity.enabled=true", "metrics.connectivity.epochs=30"]
# work that does not poll the stop request: a Hessian spectral density of ~8 s after 2 epochs of training (longer
# than EXIT_S: a stop that waited for it would fail the test)
HESSIAN = [
    "data.subsample=0.25",
    "model.width=256",
    "train.epochs=2",
    "train.batch_size=32",
    "train.seeds=[0]",
    "hydra.sweep.dir=sweep",
    "metrics.hessian.enabled=true",
    "metrics.hessian.dtype=float64",
    "metrics.hessian.tol=1e-12",
    "metrics.hessian.density=true",
    "metrics.hessian.n_probes=4",
    "metrics.hessian.n_steps=100",
]
POOL = ["-m", "hydra/launcher=local", "hydra.launcher.max_parallel=1"]
CASES = {
    "jump": (JUMP, "jump_checkpoint.pt", r"jump-retrain \d+ \(scale [0-9.]+\): resumed at epoch [1-9]"),
    "curve": (CURVE, "curve_checkpoint.pt", r"curve .*: resumed at epoch [1-9]"),
    "curves": (CURVES, "curve_checkpoint.pt", r"curves 0-1, 0-2, 1-2 together .*: resumed at epoch [1-9]"),
    # (a glob under cells/: the trained seed; the rerun loads it and measures the Hessian again)
    "hessian": (HESSIAN, "*/seeds/0/result.json", r"loaded seed 0 in"),
}
# run times and provenance that differ between two runs of the same config; everything else must be equal
VARYING = re.compile(r"(^|[._])seconds$|^(started_at|finished_at)$")
EXIT_S = 5.0


def _rows(sweep: Path) -> dict[str, str]:
    """Every result table of the sweep as the ``repr`` of its rows (sorted), without the columns that vary
    between runs: ``repr`` of a float is exact, so equal strings mean bitwise equal values."""
    out = {}
    for table in sorted(p for p in (sweep / "results").iterdir() if p.is_dir()):
        rows = []
        for f in sorted(table.glob("*.parquet")):
            for r in pq.read_table(f).to_pylist():
                rows.append({k: v for k, v in sorted(r.items()) if not VARYING.search(k)})
        out[table.name] = repr(sorted(rows, key=repr))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Rows of an uninterrupted single run of a case's config, in a directory of its own (computed once)."""
    cache: dict[str, dict[str, str]] = {}

    def rows(case: str) -> dict[str, str]:
        if case not in cache:
            where = tmp_path_factory.mktemp(f"reference-{case}")
            run_cli(CASES[case][0], where)
            cache[case] = _rows(where / "sweep")
        return cache[case]

    return rows


def _pattern(checkpoint: str) -> str:
    """The glob (under ``sweep/cells``) of a case's file: a checkpoint under a cell's work directory, or a glob."""
    return checkpoint if "/" in checkpoint else f"*/work/**/{checkpoint}"


def _stop_while_training(args: list[str], cwd: Path, checkpoint: str, sig: int, group: bool) -> tuple[float, str, int]:
    """Start ``landscape ARGS``, wait until ``checkpoint`` appears under a cell directory (training in a family is
    under way), send ``sig`` (to the whole process group if ``group``: what a terminal's Ctrl-C does); return the
    seconds from the signal to the exit, the output and the exit code."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*LANDSCAPE, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not any((cwd / "sweep" / "cells").glob(_pattern(checkpoint))):
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.communicate()[0] if proc.poll() is not None else ""
                raise AssertionError(f"no {checkpoint} appeared before the run ended or 180 s passed:\n{out[-3000:]}")
            time.sleep(0.02)
        t0 = time.monotonic()
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out = proc.communicate(timeout=60)[0]
        return time.monotonic() - t0, out, proc.returncode
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize(
    "case,launcher,sig",
    [
        ("curve", "single", signal.SIGINT),
        ("curves", "single", signal.SIGINT),
        ("jump", "single", signal.SIGINT),
        ("jump", "pool", signal.SIGTERM),
        ("hessian", "pool", signal.SIGINT),
        pytest.param("curve", "pool", signal.SIGINT, marks=pytest.mark.slow),
        pytest.param("curve", "single", signal.SIGTERM, marks=pytest.mark.slow),
    ],
)
def test_a_signal_while_a_family_trains_stops_within_seconds_and_the_rerun_resumes_bitwise(
    tmp_path, reference, case, launcher, sig
):
    args, checkpoint, resumed = CASES[case]
    args = [*POOL, *args] if launcher == "pool" else list(args)
    seconds, out, code = _stop_while_training(args, tmp_path, checkpoint, sig, group=sig == signal.SIGINT)
    print(f"{case}, {launcher}, {sig.name}: exited {seconds:.2f} s after the signal (code {code})")
    assert seconds < EXIT_S, f"exited {seconds:.1f} s after {sig.name}:\n{out[-3000:]}"
    assert code != 0, out[-3000:]
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "sweep" / "cells").glob("*/status.json")]
    assert len(statuses) == 1 and statuses[0]["state"] == "running", statuses
    # checkpointed by a polling loop ("preempted"), or interrupted where it was by the grace fallback (the Hessian)
    assert (statuses[0]["error"] or "").startswith("interrupted" if case == "hessian" else "preempted"), statuses[0]
    assert list((tmp_path / "sweep" / "cells").glob(_pattern(checkpoint))), "no checkpoint left to resume"

    again = run_cli(args, tmp_path)
    log = again.stdout + again.stderr
    assert re.search(resumed, log), log[-3000:]  # continued from the checkpoint, not started over
    assert json.loads(next((tmp_path / "sweep" / "cells").glob("*/status.json")).read_text())["state"] == "done"
    assert _rows(tmp_path / "sweep") == reference(case)


def test_jump_and_retrain_stopped_after_any_step_resumes_bitwise(tmp_path):
    """In process: jump-and-retrain stopped after a step of any jump (first, last, an epoch's end; twice in a row)
    and run again in the same ``workdir`` records the same points, bitwise, as an uninterrupted run, and polls
    only for the steps that were left (finished jumps are loaded, the stopped one continues)."""
    import numpy as np
    import torch
    from torch import nn

    from landscape.engine import StopRequested
    from landscape.training import make_loss
    from landscape.trajectories.jump_retrain import JumpRetrainSettings, jump_and_retrain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 4, generator=g), torch.randint(0, 3, (60,), generator=g)
    data = type("Data", (), dict(x_train=x, y_train=y, x_test=x[:30], y_test=y[:30], n_train=60))()
    s = JumpRetrainSettings(
        n_jumps=2,
        scales=(0.25, 0.5),
        epochs=3,
        lr=0.05,
        batch_size=20,
        record_every=2,
        projection_dim=4,
        eval_samples=0,
        embedding="pca",
    )
    loss = make_loss("cross_entropy")
    ref = jump_and_retrain(model, loss, data, s)
    total = 4 * 3 * 3  # four jumps of three epochs of three steps

    def polls(stop_at: set[int]):
        n = [0]

        def should_stop() -> bool:
            n[0] += 1
            return n[0] in stop_at

        return should_stop, n

    for stops in ([1], [3], [9], [10], [22, 23], [36]):
        work = tmp_path / f"stop-{'-'.join(map(str, stops))}"
        done = 0
        for at in stops:
            should_stop, n = polls({at - done})
            with pytest.raises(StopRequested):
                jump_and_retrain(model, loss, data, s, should_stop=should_stop, workdir=work)
            done = at
        should_stop, n = polls(set())
        out = jump_and_retrain(model, loss, data, s, should_stop=should_stop, workdir=work)
        assert n[0] == total - done, (stops, n[0])  # resumed after the last step taken, not started over
        assert repr(out.rows) == repr(ref.rows), stops
        assert out.coords.dtype == ref.coords.dtype and np.array_equal(out.coords, ref.coords), stops


def test_stop_on_signals_asks_a_polling_loop_to_stop_and_interrupts_anything_else(monkeypatch):
    """``preemption.stop_on_signals`` (what the ``landscape`` script runs a cell in): a signal while a loop polls
    sets the stop request and nothing else; one while nothing polls, a second one, or a stop not taken within
    ``GRACE_S`` interrupts at once (``KeyboardInterrupt``); the previous handlers come back afterwards."""
    from landscape import preemption

    monkeypatch.setattr(preemption, "GRACE_S", 0.3)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}

    def poll_until(limit_s: float) -> bool:
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            if preemption.stop_requested():
                return True
        return False

    try:
        with preemption.stop_on_signals() as stopper:  # a polling loop takes the stop: no exception
            preemption.stop_requested()
            os.kill(os.getpid(), signal.SIGTERM)
            assert poll_until(1.0) and stopper.signum == signal.SIGTERM
        assert {s: signal.getsignal(s) for s in before} == before
        preemption.reset()

        with pytest.raises(KeyboardInterrupt, match="^signal SIGINT$"):  # nothing polled for a while: at once
            with preemption.stop_on_signals():
                preemption._last_poll[0] = time.monotonic() - 2 * preemption.POLLING_S
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)
        assert preemption.stop_requested()
        preemption.reset()

        with pytest.raises(KeyboardInterrupt, match="again"):  # a second signal: at once
            with preemption.stop_on_signals():
                preemption.stop_requested()
                os.kill(os.getpid(), signal.SIGINT)
                poll_until(0.1)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)
        preemption.reset()

        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt, match="not taken"):  # polled, but the stop is not taken
            with preemption.stop_on_signals():
                preemption.stop_requested()
                os.kill(os.getpid(), signal.SIGTERM)
                poll_until(5.0)
                time.sleep(5.0)
        assert time.monotonic() - t0 < 2.0
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        preemption.reset()
