"""The log of a launch through the real CLI, as a researcher reads it (issue 22): per cell a start line (its id
and knob values) and an end line (what was measured, test accuracy, seconds, where the rows went); training
time logged as training, a metric family's time as a metric family's; progress lines that name the cell and
the phase of work; a first progress line within seconds of a phase's start (the default interval is 60 s)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from conftest import FAST

from landscape import progress
from landscape.results import load

WITHIN_S = 5.0  # "a first progress line within seconds": the first line of a phase at most this long after its start
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([\w.]+)\]\[(\w+)\] - (.*)$")


def _records(text: str) -> list[tuple[dt.datetime, str, str]]:
    """``(time, logger, message)`` of every log line of a Hydra job's output."""
    out = []
    for line in text.splitlines():
        m = STAMP.match(line)
        if m:
            out.append((dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), m.group(2), m.group(4)))
    return out


def test_cell_start_and_end_lines_and_progress_lines_name_the_cell(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")  # a progress line at every step: every phase shows its lines
    proc = cli(
        [
            "-m",
            *[a for a in FAST if not a.startswith("model.width")],
            "model.width=8,16",
            "train.seeds=[0,1]",
            "metrics.connectivity.enabled=true",
            "metrics.connectivity.protocol=fixed",
            "hydra.sweep.dir=sweep",
        ]
    )
    records = _records(proc.stdout + proc.stderr)
    job = [m for _, name, m in records if name == "landscape.job"]
    models = load(tmp_path / "sweep", "models")
    cells = models.groupby("model.width")["cell_id"].first().to_dict()
    assert len(cells) == 2
    for width, cid in cells.items():
        # start: cell id, its knob values, seeds, what it will measure
        start = [m for m in job if m.startswith(f"cell {cid} start: ")]
        assert len(start) == 1, job
        assert f"model.width={width}" in start[0] and "train.batch_size=32" in start[0], start
        assert "seeds 0,1" in start[0] and "measures training; pairs: l2, connectivity" in start[0], start
        # training logged as training, with the rows' training.seconds; the training metrics as a metric family
        trained = [m for m in job if m.startswith(f"cell {cid}: trained seeds 0,1 together in ")]
        assert len(trained) == 1, job
        rows = models[models["cell_id"] == cid].sort_values("seed")
        for _, r in rows.iterrows():
            assert (
                f"seed {r['seed']}: done, 3 epochs, {r['training.steps']} steps, "
                f"training.seconds {r['training.seconds']:.2f}"
            ) in trained[0], trained
        assert f"cell {cid} seed=0: metric family training measured in " in "\n".join(job)
        assert not any(re.search(r"seed=\d: training in ", m) for m in job), job
        # end: seconds, seeds' status, test accuracy of each seed (the rows' values), what was measured, the files
        end = [m for m in job if m.startswith(f"cell {cid} done in ")]
        assert len(end) == 1, job
        assert re.match(rf"cell {cid} done in \d+\.\d s: seeds 0,1 done; test_acc ", end[0]), end
        accs = " ".join(f"{a:.3f}" for a in rows["test_acc"])
        assert f"test_acc {accs} (mean {rows['test_acc'].mean():.3f})" in end[0], (end, accs)
        assert "measured training; pairs (1): l2, connectivity" in end[0], end
        files = re.search(r"rows in (\S+): (.*)$", end[0])
        assert files and files.group(1) == str(tmp_path / "sweep"), end
        written = files.group(2).split(", ")
        assert sorted(f.split("/")[1] for f in written) == ["models", "pairs"], written
        assert all((tmp_path / "sweep" / f).is_file() and f"/{cid}-" in f for f in written), written
    # progress lines: each names a cell of the launch and the phase of work (training, the connectivity curve)
    lines = [m for _, name, m in records if name == "landscape.progress"]
    assert lines
    for m in lines:
        assert re.match(rf"cell ({'|'.join(cells.values())})[ :]", m), m
    for cid in cells.values():
        assert any(m.startswith(f"cell {cid}: training seeds 0,1 together: epoch ") for m in lines), lines[:5]
        assert any(m.startswith(f"cell {cid} pair") and ": connectivity: curve" in m for m in lines), lines[-5:]


def test_a_first_progress_line_within_seconds_at_the_default_interval(cli, tmp_path, monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)  # the default: a line every 60 s after the first
    proc = cli(
        [
            "model.width=64",
            "train.batch_size=16",
            "train.steps=15000",
            "train.seeds=[0]",
            "hydra.sweep.dir=sweep",
            "hydra.run.dir=sweep/run",
        ],
        timeout=300,
    )
    records = _records(proc.stdout + proc.stderr)
    row = load(tmp_path / "sweep", "models").iloc[0]
    if row["training.seconds"] < WITHIN_S + 1.5:
        pytest.skip(
            f"training took {row['training.seconds']:.1f} s on this machine: too short to show when the "
            f"first progress line comes (raise train.steps)"
        )
    start = next(
        t for t, name, m in records if name == "landscape.job" and m.startswith(f"cell {row['cell_id']} start: ")
    )
    lines = [(t, m) for t, name, m in records if name == "landscape.progress"]
    assert lines, proc.stdout[-2000:]
    first_t, first = lines[0]
    assert first.startswith(f"cell {row['cell_id']}: training seed 0: epoch ") and "ETA" in first, first
    # the start line comes before data loading and model building (about a second here), then 5 s of training
    assert (first_t - start).total_seconds() < WITHIN_S + 3, (start, first_t)
    # and the closing line of the phase
    assert lines[-1][1].endswith("[finished]"), lines[-1]
