"""Dry run and planning of a multirun through the real CLI: invalid cells refuse the launch by name, the
fast planner gives exactly Hydra's configs (same cell ids), done cells are listed as done."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import run_cli

from landscape.cell import CellDir, CellStatus, cell_id, sha256_file
from landscape.job import requested_coverage, table_keys
from landscape.results import schema_for, write_table


def plan_lines(stdout: str) -> list[tuple[str, str, str]]:
    """(cell_id, state, overrides) of every row of the dry-run table."""
    rows = re.findall(r"^\s*\d+\s+([0-9a-f]{12}|-)\s+(\w+)\s+(.*)$", stdout, re.MULTILINE)
    return [(c, s, o.strip()) for c, s, o in rows]


def test_one_invalid_cell_refuses_the_launch_and_is_named(tmp_path):
    # a value that only a whole cell makes invalid (a batch larger than the cell's training set: 1437 digits)
    proc = run_cli(
        ["-m", "train.batch_size=16,5000,32,9000", "train.epochs=1", "dry_run=true", "hydra.sweep.dir=sweep"],
        tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    err = proc.stderr
    assert "2 of 4 cells of the grid are invalid; nothing was launched" in err
    assert "cell #1 (train.batch_size=5000" in err and "train.batch_size=5000: expected at most the training-set" in err
    assert "cell #3 (train.batch_size=9000" in err and "train.batch_size=9000" in err.split("cell #3", 1)[1]
    assert "train.batch_size=16:" not in err and "dry run:" not in proc.stdout
    assert not (tmp_path / "sweep" / "launches").exists() and not (tmp_path / "sweep" / "cells").exists()

    # the same grid without dry_run launches nothing either
    proc = run_cli(["-m", "train.batch_size=16,5000", "hydra.sweep.dir=sweep"], tmp_path, check=False)
    assert proc.returncode != 0 and "train.batch_size=5000" in proc.stderr
    assert not (tmp_path / "sweep" / "cells").exists()


def test_typos_and_bad_types_are_refused_with_the_key(tmp_path):
    # refused once per key, before any cell is composed (tests/test_cli_messages.py: every kind of typo)
    proc = run_cli(["-m", "model.widht=8,16", "dry_run=true"], tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("model.widht") == 1 and "model.width" in proc.stderr
    proc = run_cli(["-m", "model.width=8,-3,16,abc", "dry_run=true"], tmp_path, check=False)
    assert proc.returncode == 2 and "model.width='abc': expected an integer >= 1" in proc.stderr


def test_fast_planner_equals_hydra_compose_and_lists_done_cells(tmp_path, compose, monkeypatch):
    grid = ["-m", "model=mlp,cnn", "model.width=4,8", "train.lr=0.1,0.05", "dry_run=true", "hydra.sweep.dir=sweep"]
    done_cfg = compose(["model=mlp", "model.width=4", "train.lr=0.05"])
    cid = cell_id(done_cfg)
    cell = CellDir(tmp_path / "sweep", cid)
    results = {}
    for table, key in table_keys(done_cfg).items():  # a committed (empty) result file per table
        path = write_table(cell.result_path(table, key), [], schema_for(table))
        st = path.stat()
        results[cell.result_name(table, key)] = {
            "sha256": sha256_file(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "covers": requested_coverage(done_cfg)[table],
        }
    cell.write_status(CellStatus(state="done", cell_id=cid, seeds={"0": "done", "1": "done"}, results=results))

    monkeypatch.setenv("LANDSCAPE_FULL_COMPOSE", "1")
    full = run_cli(grid, tmp_path)
    monkeypatch.setenv("LANDSCAPE_FULL_COMPOSE", "0")
    fast = run_cli(grid, tmp_path)
    rows_full, rows_fast = plan_lines(full.stdout), plan_lines(fast.stdout)
    assert len(rows_fast) == 8 and rows_fast == rows_full
    assert len({c for c, _, _ in rows_fast}) == 8
    assert "2 base config(s) composed by Hydra for 8 cells" in fast.stderr + fast.stdout
    states = {c: s for c, s, _ in rows_fast}
    assert states[cid] == "done" and sorted(states.values()).count("pending") == 7
    assert "dry run: 8 cells (1 done, 7 pending); nothing launched" in fast.stdout
    assert not (Path(tmp_path) / "sweep" / "launches").exists()
