"""Every setting is checked before launch (issue 14, point 5 and the output-path part of point 6): bad metric
settings, a ``+`` key outside the schema, a CUDA device without a GPU, a model that does not fit in memory, a
sweep name that leaves the outputs root (vectorized training of a BatchNorm model is no longer refused: its seeds
stack with per-seed statistics, issue 23). Refusals name ``metrics.<family>.<key>`` (or the key), come before any
cell starts, and print no traceback."""

from __future__ import annotations

import pytest
import torch

from landscape.config import launch_problems, validate

BAD = [  # the settings that used to fail only inside the job, after training
    ("metrics.hessian.eval_samples=0", "metrics.hessian.eval_samples=0"),
    ("metrics.hessian.tol=0", "metrics.hessian.tol=0"),
    ("metrics.hessian.max_iter=0", "metrics.hessian.max_iter=0"),
    ("metrics.hessian.trace_matvecs=0", "metrics.hessian.trace_matvecs=0"),
    (
        "metrics.hessian.trace_method=hutch++ metrics.hessian.trace_matvecs=3",
        "metrics.hessian.trace_matvecs=3: Hutch++ needs >= 4",
    ),
    ("metrics.hessian.batch_size=0", "metrics.hessian.batch_size=0"),
    ("metrics.connectivity.n_points=0", "metrics.connectivity.n_points=0"),
    ("metrics.connectivity.n_points=2", "metrics.connectivity.n_points=2"),  # mc needs an interior point
    ("metrics.connectivity.epochs=-1", "metrics.connectivity.epochs=-1"),  # 0 is allowed: the untrained curve
    ("metrics.connectivity.lr=-1", "metrics.connectivity.lr=-1"),
    ("metrics.connectivity.batch_size=0", "metrics.connectivity.batch_size=0"),
    ("metrics.cka.n_samples=0", "metrics.cka.n_samples=0"),
    ("metrics.projection_trace.n_directions=1", "metrics.projection_trace.n_directions=1"),
    ("metrics.projection_trace.epsilon=0", "metrics.projection_trace.epsilon=0"),
    ("metrics.surfaces.eval_samples=-1", "metrics.surfaces.eval_samples=-1"),  # 0 is allowed: all samples
    ("metrics.jump_retrain.scales=[]", "metrics.jump_retrain.scales=[]"),
    ("metrics.jump_retrain.n_jumps=0", "metrics.jump_retrain.n_jumps=0"),
    ("metrics.training.eval_batch_size=0", "metrics.training.eval_batch_size=0"),
    ("+model.widht=512", "model.widht: not a key of the config schema"),
    ("device=gpu", "device='gpu'"),
    ("sweep_name=../../x", "sweep_name='../../x'"),
]


@pytest.mark.parametrize("override,named", BAD)
def test_bad_settings_are_refused_by_validate_with_their_full_key(compose, override, named):
    key = override.lstrip("+").split("=")[0]
    extra = (
        [f"metrics.{key.split('.')[1]}.enabled=true"] if key.startswith("metrics.") and "training" not in key else []
    )
    problems = validate(compose([*extra, *override.split()]))
    assert any(named in p for p in problems), problems


def test_machine_dependent_settings_are_refused_at_planning(compose):
    cfg = compose(["model=cnn", "model.batch_norm=true", "train.vectorize=on"])  # stackable: per-seed BN statistics
    assert validate(cfg) == [] and not any("train.vectorize" in p for p in launch_problems(cfg, True))
    big = compose(["model.width=100000"])
    problems = launch_problems(big, True, memory_bytes=24 * 2**30)
    assert any(p.startswith("model.width=100000") and "GiB" in p for p in problems), problems
    assert launch_problems(compose(["model.width=64"]), True, memory_bytes=24 * 2**30) == []
    cuda = compose(["device=cuda"])
    if not torch.cuda.is_available():
        assert any("device='cuda'" in p for p in launch_problems(cuda, local=True))
    assert not any("device" in p for p in launch_problems(cuda, local=False))  # SLURM jobs run elsewhere


@pytest.mark.parametrize(
    "args,named",
    [
        (["metrics.hessian.enabled=true", "metrics.hessian.eval_samples=0"], "metrics.hessian.eval_samples=0"),
        (["metrics.connectivity.enabled=true", "metrics.connectivity.n_points=0"], "metrics.connectivity.n_points=0"),
        (["+model.widht=512"], "model.widht"),
        (["model.width=100000"], "model.width=100000"),
        (["sweep_name=../../x"], "sweep_name='../../x'"),
    ],
)
def test_refused_at_planning_by_the_cli_without_a_traceback(cli, tmp_path, args, named):
    single = args[0].startswith("+") or "eval_samples" in args[-1]  # a single run too (refused by its job)
    for mode in (["-m"], []) if single else (["-m"],):
        proc = cli(
            [*mode, *args, "train.epochs=1", *(["hydra.sweep.dir=s"] if "sweep_name" not in args[0] else [])],
            check=False,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and named in out and "Traceback" not in out, out[-3000:]
        if mode:  # a multirun is refused at planning: nothing at all is written
            assert not (tmp_path / "s").exists() and not (tmp_path / "outputs").exists()
            assert not (tmp_path.parent / "x").exists()
        # a single run is refused by its job (Hydra has made its run directory by then): nothing trained
        assert not list(tmp_path.rglob("seeds")) and not list(tmp_path.rglob("*.parquet"))


def test_a_relative_sweep_dir_that_leaves_the_launch_directory_is_refused(cli, tmp_path):
    proc = cli(["-m", "hydra.sweep.dir=../escaped", "train.epochs=1"], check=False)
    assert proc.returncode == 2 and "hydra.sweep.dir='../escaped'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path.parent / "escaped").exists()


def test_every_value_rule_names_a_key_of_the_schema_and_none_a_family_setting():
    """A rule for a key the schema no longer has (a renamed setting) would check nothing: refuse it here. The
    metric families' settings have their rules in their ``Config`` fields, not in ``VALUE_RULES``."""
    from landscape.config import VALUE_RULES, schema_keys

    keys = set(schema_keys())
    assert set(VALUE_RULES) <= keys, sorted(set(VALUE_RULES) - keys)
    assert not [k for k in VALUE_RULES if k.startswith("metrics.")]


@pytest.mark.parametrize(
    "override",
    [
        "metrics.connectivity.epochs=0",  # the untrained curve (documented: stop_reason untrained, mc null)
        "metrics.connectivity.epochs=null",  # follow the endpoints' budget
        "metrics.connectivity.n_points=3",  # the least grid with an interior point
        "metrics.surfaces.eval_samples=0",  # the whole training set
    ],
)
def test_settings_the_family_documents_are_accepted(compose, override):
    family = override.split(".")[1]
    assert validate(compose([f"metrics.{family}.enabled=true", override])) == []
