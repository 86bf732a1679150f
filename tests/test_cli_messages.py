"""Issue 22, points 5, 6 and 9: what the three commands say. A typo in a key, swept or fixed, metric or not,
gets one message naming the key, the nearest known keys and the group's keys before anything runs (exit 2,
no traceback); a value of the wrong type is named with its key; ``landscape --help`` is written for this
tool; ``--help`` texts are plain text; a pipe closed early (``| head``) ends no command in a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import LANDSCAPE

from landscape.config import override_problems, unknown_key_message

MODEL_KEYS = "Keys of model: activation, batch_norm, depth, name, width"


@pytest.mark.parametrize(
    "args,key,near,keys",
    [
        (["-m", "model.widht=4,8"], "model.widht", "model.width", MODEL_KEYS),  # swept: once, not once per cell
        (
            ["metrics.hessian.enabeld=true"],
            "metrics.hessian.enabeld",
            "metrics.hessian.enabled",
            "Keys of metrics.hessian: batch_size, ",
        ),  # fixed, a metric family's key, a single run
        (
            ["-m", "metrics.hessian.enabeld=true", "model.width=4,8"],
            "metrics.hessian.enabeld",
            "metrics.hessian.enabled",
            "Keys of metrics.hessian: batch_size, ",
        ),  # fixed in a multirun
        (["-m", 'hydra.sweeper.params={model.widht:"4,8"}'], "model.widht", "model.width", MODEL_KEYS),  # a sweep's
        (["+model.widht=4"], "model.widht", "model.width", MODEL_KEYS),  # added with '+'
        (["-m", "trian.lr=0.1,0.2"], "trian.lr", "train.lr", "Keys of the root: data, device, dry_run, metrics"),
    ],
)
def test_a_key_typo_gets_one_message_with_the_nearest_and_the_groups_keys(cli, tmp_path, args, key, near, keys):
    proc = cli([*args, "train.epochs=1", "dry_run=true"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert proc.stderr.count(f"{key}: not a key of the config schema") == 1, proc.stderr
    assert f"did you mean {near}?" in proc.stderr and keys in proc.stderr, proc.stderr
    assert "Traceback" not in out and "Could not override" not in out and "To append to your config" not in out
    assert not (tmp_path / "outputs").exists()  # refused before anything ran


@pytest.mark.parametrize(
    "args,message",
    [
        (["train.lr=abc"], "train.lr='abc': expected a finite number > 0"),
        (["-m", "model.width=8,16,abc,x"], "model.width='abc', 'x': expected an integer >= 1"),
        (["-m", "model=cnn", "model.batch_norm=true,maybe"], "model.batch_norm='maybe': expected true or false"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_its_key(cli, tmp_path, args, message):
    proc = cli([*args, "train.epochs=1", "dry_run=true"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and proc.stderr.count(message) == 1, out[-3000:]
    assert "Traceback" not in out and "Error merging override" not in out and "dry run:" not in out
    assert not (tmp_path / "outputs").exists()


def test_good_overrides_pass_the_check():
    assert (
        override_problems(
            [
                "model.width=4,8",
                "train.batch_size=full,32",
                "data.subsample=0.5",
                "+sweep=demo",
                "data=mnist1d",
                "hydra/launcher=local",
                "hydra.sweep.dir=x",
                "train.seeds=[0,1]",
                "train.steps=null",
                "metrics.hessian.enabled=auto",
                "phase.x=model.width",
                "train.lr=${train.momentum}",
                "~train.steps",
            ],
            is_group=lambda k: k in ("data", "model", "train", "metrics", "sweep"),
        )
        == []
    )
    assert unknown_key_message("model.width") is None and unknown_key_message("metrics.connectivity.budget") is None
    assert "model.width is a value, not a group" in unknown_key_message("model.width.x")
    assert "did you mean model.width?" in unknown_key_message("widht")


def test_landscape_help_is_written_for_this_tool(cli):
    proc = cli(["--help"])
    text = proc.stdout
    for needed in (
        "landscape -m +sweep=NAME",
        "landscape -m +sweep=demo dry_run=true",
        "hydra/launcher=local",
        "hydra/launcher=slurm",
        "landscape-status DIR",
        "landscape-phase DIR",
        "outputs/<sweep_name>",
        "results/models",
        "model.width=",
        "train.batch_size=",
        "data.label_noise=",
        "metrics.FAMILY.enabled=",
        "connectivity",
        "sweep: demo",
        "model: cnn, mlp, resnet18",
    ):
        assert needed in text, (needed, text)
    assert "powered by Hydra" not in text and "== Config ==" not in text


@pytest.mark.parametrize("module", ["landscape.cli.status", "landscape.cli.phase"])
def test_help_texts_are_plain_text(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout
    assert "``" not in proc.stdout and ":func:" not in proc.stdout and ":mod:" not in proc.stdout, proc.stdout


def _closed_pipe_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``args`` with a standard output whose reader is already gone (``| head`` that has exited)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            args,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            timeout=300,
            env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        )
    finally:
        os.close(write)


def test_a_pipe_closed_early_ends_no_command_in_a_traceback(tmp_path):
    from helpers import make_status_sweep
    from test_phase_diagram import _synthetic_rows, _write_sweep

    make_status_sweep(tmp_path / "sweep")
    _write_sweep(tmp_path / "rows", *_synthetic_rows())
    runs = {
        "landscape-status": [sys.executable, "-m", "landscape.cli.status", "-v", str(tmp_path / "sweep")],
        "landscape-phase": [
            sys.executable,
            "-m",
            "landscape.cli.phase",
            str(tmp_path / "rows"),
            "--x",
            "model.width",
            "--y",
            "train.batch_size",
            "--out",
            str(tmp_path / "fig"),
        ],
        "landscape --help": [*LANDSCAPE, "--help"],
        "landscape dry run": [*LANDSCAPE, "-m", "model.width=4,8", "dry_run=true", "hydra.sweep.dir=s"],
    }
    failed = {}
    for name, args in runs.items():
        proc = _closed_pipe_run(args, tmp_path)
        if proc.returncode != 0 or any(t in proc.stderr for t in ("Traceback", "BrokenPipeError", "Logging error")):
            failed[name] = (proc.returncode, proc.stderr[-2000:])
    assert not failed, failed
    assert (tmp_path / "fig" / "phase_map.png").exists()  # landscape-phase went on after its reader left
