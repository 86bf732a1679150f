"""No code runs from files of a sweep or a dataset (issue 14, point 3): CIFAR-10 batches go through a restricted
unpickler, checkpoints and cached blocks load with ``weights_only=True``. A crafted file writes no marker file,
in a dry run and in a real run, and the error names the file."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_tiny_cifar10

from landscape.data import UnsafeFileError, _read_cifar_batch


class _Evil:
    """Unpickling this calls ``os.system`` (what a crafted file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _craft_cifar(root: Path, marker: Path) -> Path:
    write_tiny_cifar10(root)
    batch = {b"labels": [1, 2], b"data": np.zeros((2, 3072), np.uint8), b"x": _Evil(marker)}
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump(batch, f)
    return root / "data_batch_3"


def test_restricted_unpickler_reads_real_batches_and_refuses_code(tmp_path):
    root = write_tiny_cifar10(tmp_path / "c")
    data, labels = _read_cifar_batch(root / "data_batch_1")
    assert data.shape == (6, 3, 32, 32) and data.dtype == np.uint8 and labels.shape == (6,)
    marker = tmp_path / "marker"
    bad = _craft_cifar(tmp_path / "c", marker)
    with pytest.raises(UnsafeFileError, match="data_batch_3.*refused to load posix.system|data_batch_3.*refused"):
        _read_cifar_batch(bad)
    assert not marker.exists()


@pytest.mark.parametrize("dry", [True, False])
def test_a_crafted_cifar_batch_runs_nothing_in_a_dry_or_real_run(cli, tmp_path, dry):
    marker = tmp_path / "marker"
    bad = _craft_cifar(tmp_path / "cifar", marker)
    args = [
        "data=cifar10",
        f"data.root={tmp_path / 'cifar'}",
        "model.width=4",
        "train.epochs=1",
        "train.batch_size=8",
        "hydra.sweep.dir=s",
    ]
    proc = cli(["-m", *args, *(["dry_run=true"] if dry else [])], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not marker.exists()
    assert str(bad) in out and "refused to load" in out and "Traceback" not in out
    assert not (tmp_path / "s" / "cells").exists()  # refused at planning: no cell started


def test_a_crafted_surface_block_is_not_executed_and_is_recomputed(tmp_path):
    from landscape.surfaces import _load_block

    marker = tmp_path / "marker"
    path = tmp_path / "surface-x-rows00000-00001.pt"
    torch.save({"train_loss": torch.zeros(2), "evil": _Evil(marker)}, path)
    assert _load_block(path) is None and not marker.exists()
    torch.save({"train_loss": torch.ones(2)}, path)
    assert torch.equal(_load_block(path)["train_loss"], torch.ones(2))
    path.write_bytes(path.read_bytes()[:20])  # truncated
    assert _load_block(path) is None
