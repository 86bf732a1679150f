"""SLURM array tasks that carry several cells (``hydra.launcher.cells_per_task``) on the real local cluster:
the same rows as one cell per task (bitwise), fewer tasks. Skipped with a reason without a cluster."""

from __future__ import annotations

import json

from slurm_support import SLURM, SMALL, landscape, requires_slurm, rows

from landscape.metrics import metric_columns


@requires_slurm
def test_several_cells_per_task_give_the_rows_of_one_cell_per_task(tmp_path):
    grid = ["-m", *SMALL, "train.batch_size=32,64", "model.width=6,8"]
    one = landscape([*grid, *SLURM, "hydra.launcher.cells_per_task=1", "hydra.sweep.dir=one"], tmp_path, timeout=600)
    assert "(1 cell(s) per task)" in one.stderr + one.stdout
    two = landscape([*grid, *SLURM, "hydra.launcher.cells_per_task=2", "hydra.sweep.dir=two"], tmp_path, timeout=600)
    assert "submitted 4 cells as 1 SLURM array(s) of" in two.stderr + two.stdout
    assert "(2 cell(s) per task)" in two.stderr + two.stdout
    a, b = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert len(b) == 8 and list(b["cell_id"]) == list(a["cell_id"])
    cols = [c for c in metric_columns("models") if a[c].notna().any()]
    assert "train_loss" in cols and "test_acc" in cols
    for col in cols:  # bitwise: same config, same seeds, same numbers
        assert b[col].tolist() == a[col].tolist(), col
    pa_, pb = rows(tmp_path / "one", "pairs"), rows(tmp_path / "two", "pairs")
    for col in [c for c in metric_columns("pairs") if pa_[c].notna().any()]:
        assert pb[col].tolist() == pa_[col].tolist(), col
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "two" / "cells").glob("*/status.json")]
    assert len(statuses) == 4 and all(s["state"] == "done" for s in statuses)
    assert len({s["slurm_job_id"] for s in statuses}) == 2  # two tasks, two cells each
    assert (
        len(
            {
                s["slurm_job_id"]
                for s in (json.loads(p.read_text()) for p in (tmp_path / "one" / "cells").glob("*/status.json"))
            }
        )
        == 4
    )
