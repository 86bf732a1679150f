"""Damage is found and repaired (issue 14, point 4): a damaged status, result file, checkpoint or metric cache
is named by ``landscape-status --verify`` (and by ``load``), and the next launch recomputes what is needed from
what is intact, giving rows bitwise equal to an undamaged run. A crafted checkpoint runs nothing."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import FAST

from landscape.results import load

METRICS = ["seed", "train_loss", "train_acc", "test_loss", "test_acc", "train_acc_clean", "training.steps"]
RUN = [*FAST, "train.vectorize=off", "hydra.sweep.dir=s"]


def status_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "landscape.cli.status", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def _rows(sweep: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    m = load(sweep).sort_values("seed").reset_index(drop=True)
    p = load(sweep, "pairs").sort_values(["seed_a", "seed_b"]).reset_index(drop=True)
    return m, p


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from conftest import run_cli

    root = tmp_path_factory.mktemp("ref")
    run_cli(RUN, root)
    return _rows(root / "s")


def _one(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def _damage(sweep: Path, kind: str) -> tuple[Path, list[str]]:
    """Damage one file; return it and the extra arguments of the repairing launch."""
    cell = _one([p for p in (sweep / "cells").iterdir() if p.is_dir()])
    models = _one(list((sweep / "results" / "models").glob("*.parquet")))
    pairs = _one(list((sweep / "results" / "pairs").glob("*.parquet")))
    if kind == "status_empty":
        (cell / "status.json").write_text("")
        return cell / "status.json", []
    if kind == "status_garbage":
        (cell / "status.json").write_bytes(b"\x00{not json at all")
        return cell / "status.json", []
    if kind == "result_truncated":
        models.write_bytes(models.read_bytes()[: models.stat().st_size // 2])
        return models, []
    if kind == "result_deleted":
        pairs.unlink()
        return pairs, []
    if kind == "result_flipped":
        data = bytearray(models.read_bytes())
        data[len(data) // 2] ^= 0x10
        models.write_bytes(bytes(data))
        return models, []
    if kind == "checkpoint_corrupt":
        final = cell / "seeds" / "0" / "final.pt"
        final.write_bytes(final.read_bytes()[:100])
        return final, ["train.seeds=[0,1,2]"]  # a request that needs the model again
    if kind == "checkpoint_flipped":  # still loads, with one wrong weight: found by its recorded SHA-256
        final = cell / "seeds" / "1" / "final.pt"
        data = bytearray(final.read_bytes())
        data[len(data) // 2] ^= 0x10
        final.write_bytes(bytes(data))
        return final, ["train.seeds=[0,1,2]"]
    if kind == "cache_flipped":  # still valid JSON, one digit changed
        cache = _one(list((cell / "metrics").glob("pair=0-1-*/l2.json")))
        text = cache.read_text()
        i = next(i for i, ch in enumerate(text) if ch.isdigit() and ch not in "09")
        cache.write_text(text[:i] + str(int(text[i]) + 1) + text[i + 1 :])
        return cache, ["train.seeds=[0,1,2]"]
    if kind == "cache_corrupt":
        cache = _one(list((cell / "metrics").glob("pair=0-1-*/l2.json")))
        cache.write_text('{"l2_distance": ')
        return cache, ["train.seeds=[0,1,2]"]
    raise ValueError(kind)


_SLOW = pytest.mark.slow  # each case is two CLI runs and three landscape-status runs: a few in the default run
KINDS = [
    "status_empty",
    pytest.param("status_garbage", marks=_SLOW),
    pytest.param("result_truncated", marks=_SLOW),
    pytest.param("result_deleted", marks=_SLOW),
    "result_flipped",
    pytest.param("checkpoint_corrupt", marks=_SLOW),
    pytest.param("cache_corrupt", marks=_SLOW),
    "checkpoint_flipped",
    pytest.param("cache_flipped", marks=_SLOW),
]


@pytest.mark.parametrize("kind", KINDS)
def test_damage_is_named_and_repaired_by_the_next_launch(cli, tmp_path, reference, kind, caplog):
    cli(RUN)
    sweep = tmp_path / "s"
    bad, again = _damage(sweep, kind)

    plain = status_cli([str(sweep)], tmp_path)  # survives any damage
    assert plain.returncode == 0 and "Traceback" not in plain.stderr, plain.stderr
    checked = status_cli([str(sweep), "--verify"], tmp_path)
    assert checked.returncode == 1 and str(bad) in checked.stdout, checked.stdout + checked.stderr
    if kind.startswith("result") or kind.startswith("status"):
        assert "damaged" in plain.stdout and "rerun" in plain.stdout
        with caplog.at_level(logging.WARNING, logger="landscape.results.io"):
            load(sweep), load(sweep, "pairs")  # damaged or unverifiable rows are not served, and named
        if kind != "result_deleted":
            assert any(str(bad.parent) in r.getMessage() or str(bad) in r.getMessage() for r in caplog.records)

    proc = cli([*RUN, *again])  # the next launch repairs
    assert "Traceback" not in proc.stderr
    m, p = _rows(sweep)
    ref_m, ref_p = reference
    m, p = m[m["seed"] < 2].reset_index(drop=True), p[p["seed_b"] < 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(m[METRICS], ref_m[METRICS], check_exact=True)
    pd.testing.assert_frame_equal(
        p[["seed_a", "seed_b", "l2_distance"]], ref_p[["seed_a", "seed_b", "l2_distance"]], check_exact=True
    )
    final = status_cli([str(sweep), "--verify"], tmp_path)
    assert final.returncode == 0 and "every file is intact" in final.stdout, final.stdout


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_runs_nothing_and_is_named(cli, tmp_path):
    import torch

    cli(RUN)
    sweep = tmp_path / "s"
    cell = _one([p for p in (sweep / "cells").iterdir() if p.is_dir()])
    marker = tmp_path / "marker"
    final = cell / "seeds" / "0" / "final.pt"
    torch.save({"net.0.weight": torch.zeros(2), "x": _Evil(marker)}, final)
    for extra in (["-m", "dry_run=true"], ["train.seeds=[0,1,2]"]):  # dry run, then a real run that needs seed 0
        proc = cli([*RUN, *extra], check=False)
        assert not marker.exists()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and str(final) in out and "refused to load" in out
    status = json.loads((cell / "status.json").read_text())
    assert status["state"] == "failed" and str(final) in status["error"]
    checked = status_cli([str(sweep), "--verify"], tmp_path)
    assert checked.returncode == 1 and f"unsafe: {final}" in checked.stdout and not marker.exists()
    repaired = status_cli([str(sweep), "--verify", "--repair"], tmp_path)
    assert repaired.returncode == 0 and not final.exists() and not marker.exists()
    cli([*RUN, "train.seeds=[0,1,2]"])  # retrains seed 0 from scratch
    assert not marker.exists() and len(load(sweep)) == 3
