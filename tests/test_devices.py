"""GPU assignment of concurrent jobs on one machine: an exclusive lock file per physical GPU."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from landscape import devices


def test_concurrent_jobs_claim_distinct_gpus_and_release_on_exit(tmp_path):
    ids = ["GPU-aaa", "GPU-bbb", "GPU-ccc"]
    # another job (process) holds the first GPU until we tell it to exit
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from landscape.devices import claim_gpu
        print(claim_gpu({ids!r}, Path({str(tmp_path)!r})), flush=True)
        sys.stdin.readline()
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "0"
        try:
            assert devices.claim_gpu(ids, tmp_path) == 1  # the next free one
            assert devices.claim_gpu(ids, tmp_path) == 1  # this process keeps its claim
            other = devices._held.copy()
            devices._held.clear()  # pretend to be a third job: GPUs 0 and 1 are taken
            assert devices.claim_gpu(ids, tmp_path) == 2
            assert devices.claim_gpu(ids[:2], tmp_path, wait_s=0.2, poll_s=0.05) is None  # all busy
            devices.release_gpus()
            devices._held.update(other)
        finally:
            devices.release_gpus()
    finally:
        holder.communicate("\n", timeout=30)
    assert devices.claim_gpu(ids, tmp_path) == 0  # the holder exited: its GPU is free again
    devices.release_gpus()


def test_auto_without_gpus_is_cpu(monkeypatch, tmp_path):
    """The rule of ``auto``, whatever this machine has: CUDA hidden -> cpu; one visible GPU -> cuda:0; several ->
    the first GPU no other job holds (its lock taken); an explicit cuda device without CUDA is refused."""
    monkeypatch.setattr(devices, "lock_dir", lambda: tmp_path)
    devices.release_gpus()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        devices.resolve_device("cuda:1")
    # the reverse: CUDA present (one GPU, then three with the first held by another job)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_visible_gpu_ids", lambda: ["GPU-only"])
    assert devices.resolve_device("auto") == torch.device("cuda:0") and not devices._claimed
    ids = ["GPU-a", "GPU-b", "GPU-c"]
    monkeypatch.setattr(devices, "_visible_gpu_ids", lambda: ids)
    assert devices.claim_gpu(ids, tmp_path) == 0
    first = devices._held.copy()
    devices._held.clear()
    devices._claimed.clear()  # as another process: GPU 0 is taken
    try:
        assert devices.resolve_device("auto") == torch.device("cuda:1")
        assert devices.resolve_device("auto") == torch.device("cuda:1")  # the claim is kept
        assert devices.resolve_device("cuda:2") == torch.device("cuda:2")
    finally:
        devices.release_gpus()
        devices._held.update(first)
        devices.release_gpus()
