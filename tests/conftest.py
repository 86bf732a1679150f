"""Shared fixtures: running the real ``landscape`` CLI (a Hydra app) in a subprocess, small configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LANDSCAPE = [sys.executable, "-m", "landscape.cli.app"]

# A fast cell: MLP on a quarter of digits, few epochs (a few seconds per cell on one core).
FAST = ["data.subsample=0.25", "model.width=8", "train.epochs=3", "train.batch_size=32"]


def analysis_module(name: str):
    """``analysis/<name>.py`` as a module, loaded once."""
    import importlib.util

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "analysis" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def taxonomy2021():
    """``analysis/taxonomy2021.py`` (the import of the paper's published results) as a module, loaded once."""
    return analysis_module("taxonomy2021")


def run_cli(args: list[str], cwd: Path, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run ``landscape ARGS`` in ``cwd``; on failure with ``check`` show its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run([*LANDSCAPE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"landscape {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run tiny models: one torch thread avoids oversubscription stalls on small machines."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cli(tmp_path: Path):
    """``cli(args, check=True)``: run the CLI with ``tmp_path`` as working directory."""

    def _run(args: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run_cli(args, tmp_path, check=check, **kw)

    return _run


@pytest.fixture
def compose():
    """``compose(overrides)``: the composed, typed config of one cell (no hydra node), as the job sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import landscape.cli.app as app

    def _compose(overrides: list[str]):
        with initialize_config_dir(config_dir=str(app.CONF_DIR), version_base="1.3"):
            return hydra_compose("config", overrides=overrides)

    return _compose
