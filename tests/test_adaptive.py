"""The adaptive sweeper through the CLI (``landscape -m ... hydra/sweeper=adaptive``), in this process's launcher,
the local pool (``hydra/launcher=local``) and the SLURM test cluster: it launches fewer cells than the grid,
measures cells on both sides of a label change, resumes after a kill without launching a done cell again, and
``landscape-phase`` marks the cells it inferred. Bad settings are refused before anything runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import LANDSCAPE, run_cli
from slurm_support import SLURM, requires_slurm, wait_for

from landscape import adaptive as ad
from landscape.cli.phase import main as phase_main

WIDTHS = (4, 8, 16, 32, 64)
LRS = (0.001, 0.003, 0.01, 0.03, 0.1)
# 25 cheap cells (~1 s each): a quarter of digits, 3 epochs, 2 seeds, a short fixed curve per pair. The phase
# rule's mc and CKA thresholds are set out of reach, so a cell's label is its fit alone: II (training loss above
# 1 nat: a small learning rate or a narrow net) or IV-B; a boundary runs across the learning rates.
GRID = [
    f"model.width={','.join(map(str, WIDTHS))}",
    f"train.lr={','.join(map(str, LRS))}",
    "data.subsample=0.25",
    "train.epochs=3",
    "train.batch_size=32",
    "train.seeds=[0,1]",
    "metrics.cka.enabled=true",
    "metrics.connectivity.enabled=true",
    "metrics.connectivity.protocol=fixed",
    "metrics.connectivity.budget=0.25",
    "phase.x=model.width",
    "phase.y=train.lr",
    "phase.train_loss=1.0",
    "phase.mc_underfit=-1000",
    "phase.mc_barrier=-1000",
    "phase.cka=0",
]
ADAPTIVE = ["hydra/sweeper=adaptive", "hydra.sweeper.max_cells=0.5"]  # 12 of 25 cells


def _grid_args(sweep: str, extra: list[str]) -> list[str]:
    return ["-m", *GRID, *ADAPTIVE, *extra, f"hydra.sweep.dir={sweep}"]


def done_cells(sweep: Path) -> set[str]:
    """Cell ids whose status says done."""
    out = set()
    for p in (sweep / "cells").glob("*/status.json"):
        if json.loads(p.read_text()).get("state") == "done":
            out.add(p.parent.name)
    return out


def launched_cells(sweep: Path, after: float = 0.0) -> list[str]:
    """Cell ids of every launch record written after ``after`` (wall time), one entry per record naming it."""
    out = []
    for rec in sorted((sweep / "launches").glob("*.json")):
        if rec.stat().st_mtime >= after:
            out += [c["cell_id"] for c in json.loads(rec.read_text())["cells"]]
    return out


def check_map(tmp_path: Path, sweep: Path) -> pd.DataFrame:
    """``landscape-phase`` on the sweep: every grid point in ``cells.csv``, measured ones as measured, the others
    inferred (or unmeasured); returns ``cells.csv``."""
    out = tmp_path / "phase"
    assert phase_main([str(sweep), "--out", str(out), "--bootstrap", "100"]) == 0
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == len(WIDTHS) * len(LRS)
    state = ad.read_state(sweep)
    measured_ids = done_cells(sweep)
    src = cells["label_source"].value_counts().to_dict()
    assert src.get("measured") == len(measured_ids) and src.get("inferred", 0) > 0
    assert set(src) <= {"measured", "inferred", "unmeasured"}
    assert cells.loc[cells["label_source"] == "inferred", "phase"].notna().all()
    assert (cells.loc[cells["label_source"] == "measured", "n_done"] > 0).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adaptive"]["points_by_source"]["measured"] == len(measured_ids)
    assert (out / "phase_map.png").stat().st_size > 0 and (sweep / "adaptive" / "order.png").stat().st_size > 0
    assert state is not None and state.grid is not None and state.grid.size == 25
    return cells


def check_refined_at_a_boundary(cells: pd.DataFrame) -> None:
    """Two measured cells, neighbours on the grid, carry different labels."""
    m = cells[cells["label_source"] == "measured"]
    lab = {(r["model.width"], r["train.lr"]): r["phase"] for _, r in m.iterrows()}
    assert set(lab.values()) >= {"II", "IV-B"}, lab
    pairs = [
        (p, q)
        for p in lab
        for q in lab
        if p < q
        and isinstance(lab[p], str)
        and isinstance(lab[q], str)
        and lab[p] != lab[q]
        and (
            (p[0] == q[0] and abs(LRS.index(p[1]) - LRS.index(q[1])) == 1)
            or (p[1] == q[1] and abs(WIDTHS.index(p[0]) - WIDTHS.index(q[0])) == 1)
        )
    ]
    assert pairs, lab


def kill_during_wave(args: list[str], cwd: Path, sweep: Path, wave: int = 1, ready=None) -> None:
    """Start ``landscape ARGS`` and kill it (SIGKILL, its whole process group: workers too) once ``wave`` is
    recorded and launching (and ``ready()``, when given, is true)."""
    proc = subprocess.Popen(
        [*LANDSCAPE, *args], cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:

        def wave_started() -> bool:
            assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
            st = ad.read_state(sweep)
            return st is not None and any(w["wave"] >= wave for w in st.waves) and (ready is None or ready())

        wait_for(wave_started, 240, f"wave {wave} to start", poll_s=0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def run_adaptive_with_a_kill(tmp_path: Path, extra: list[str], settle=None, ready=None) -> pd.DataFrame:
    """The adaptive sweep killed during wave 1, then relaunched: its checks (see the module docstring)."""
    sweep = tmp_path / "sweep"
    args = _grid_args(str(sweep), extra)
    kill_during_wave(args, tmp_path, sweep, ready=ready)
    if settle is not None:
        settle(sweep)  # e.g. SLURM: the tasks of the killed launch finish on their own
    lines_before = ad.state_path(sweep).read_text()
    done_before = done_cells(sweep)
    chosen_before = set((ad.read_state(sweep) or ad.State()).chosen())
    t_relaunch = time.time()
    proc = run_cli(args, tmp_path, timeout=600)
    log = proc.stdout + proc.stderr
    # nothing recorded is lost: the relaunch appended to the state
    assert ad.state_path(sweep).read_text().startswith(lines_before)
    relaunched = launched_cells(sweep, after=t_relaunch)
    assert not set(relaunched) & done_before, "a done cell was launched again"
    assert len(relaunched) == len(set(relaunched)), "a cell was launched twice by one launch"
    st = ad.read_state(sweep)
    resumed = [w for w in st.waves if all(c["reason"] == "resume" for c in w["cells"])]
    assert resumed or chosen_before <= done_before  # what wave 1 left unfinished was resumed first
    if resumed:
        assert {c["cell_id"] for c in resumed[0]["cells"]} == chosen_before - done_before
    # the budget holds across the kill: at most 12 of the 25 cells measured, every launched cell once done
    done = done_cells(sweep)
    assert 4 < len(done) <= 12 < 25
    assert set(st.chosen()) == done
    assert "adaptive sweep:" in log and (sweep / "adaptive" / "decisions.log").is_file()
    decisions = (sweep / "adaptive" / "decisions.log").read_text()
    assert "wave 0:" in decisions and "initial design" in decisions and "split" in decisions
    return check_map(tmp_path, sweep)


def test_adaptive_sweep_in_process_refines_resumes_and_infers(tmp_path):
    cells = run_adaptive_with_a_kill(tmp_path, [])
    check_refined_at_a_boundary(cells)


def test_adaptive_sweep_on_the_local_pool(tmp_path):
    cells = run_adaptive_with_a_kill(tmp_path, ["hydra/launcher=local", "hydra.launcher.max_parallel=1"])
    check_refined_at_a_boundary(cells)


@pytest.mark.slow  # 30 s; the same kill-and-resume on the local pool and in process run by default
@requires_slurm
def test_adaptive_sweep_on_slurm(tmp_path):
    name = f"adaptive-test-{os.getpid()}"

    def queued() -> list[str]:
        q = subprocess.run(
            ["squeue", "-h", "-n", f"landscape-{name}", "-o", "%i"], capture_output=True, text=True, timeout=30
        )
        assert q.returncode == 0, q.stderr
        return q.stdout.split()

    def settle(sweep: Path) -> None:  # the killed launch's array tasks run on: wait for them to finish
        wait_for(lambda: not queued(), 300, "the killed launch's SLURM tasks to finish", poll_s=1.0)

    # killed once wave 1's array is in the queue: its tasks finish without the sweeper, which must not launch
    # them again
    cells = run_adaptive_with_a_kill(tmp_path, [*SLURM, f"sweep_name={name}"], settle, ready=lambda: bool(queued()))
    check_refined_at_a_boundary(cells)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("hydra.sweeper.max_cells=0", "hydra.sweeper.max_cells=0: 0 cells; allowed: a count of cells in [1, 25]"),
        ("hydra.sweeper.max_cells=26", "hydra.sweeper.max_cells=26: 26 cells; allowed: a count of cells in [1, 25]"),
        ("hydra.sweeper.refine=nearest", "hydra.sweeper.refine='nearest': unknown refinement rule; allowed: boundary"),
        ("hydra.sweeper.initial_stride=1", "hydra.sweeper.initial_stride=1: its initial design has 25 cells"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(tmp_path, setting, message):
    proc = run_cli(
        ["-m", *GRID, "hydra/sweeper=adaptive", setting, f"hydra.sweep.dir={tmp_path / 's'}"],
        tmp_path,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s" / "cells").exists() and not (tmp_path / "s" / "launches").exists()


def test_a_dry_run_shows_the_initial_design(tmp_path):
    proc = run_cli(["-m", *GRID, *ADAPTIVE, "dry_run=true", f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path)
    # auto: 3 x 2 values spread evenly (6 cells, half the budget of 12), corners included
    assert "adaptive sweep of 25 cells" in proc.stdout and "initial design 6 cells" in proc.stdout
    assert "dry run: 6 cells" in proc.stdout
    assert not (tmp_path / "s" / "cells").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
