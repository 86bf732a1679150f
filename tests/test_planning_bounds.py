"""Issue 20, points 7 and 8: every bad value is refused at planning with its key named (the late failures
found by an adversarial user, and a walk over every leaf key of the schema with bad values of its type); a
non-finite number from a family is never stored as a number (null, its reason in ``<family>.error``, and
the flags that depend on it null too)."""

from __future__ import annotations

import math
import os
import sys
import typing
from pathlib import Path

import pytest
from conftest import FAST, run_cli

from landscape.config import INT64_MAX, bounds, launch_problems, leaf_fields, model_facts, model_size, validate

# ------------------------------------------------------------------------------------------------ planning


@pytest.fixture
def plan(tmp_path_factory):
    """``plan(jobs) -> [PlannedCell]``: the sweeper's planning (fast composition, ``validate``,
    ``launch_problems`` for a local launch on this machine) of a grid of jobs, each a list of overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import landscape.cli.app as app
    from landscape.cli.sweeper import _job_machine, plan_cells

    sweep = tmp_path_factory.mktemp("plan") / "sweep"
    with initialize_config_dir(config_dir=str(app.CONF_DIR), version_base="1.3"):
        master = compose("config", overrides=[f"hydra.sweep.dir={sweep}"], return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        local, memory = _job_machine(master)

        def _plan(jobs):
            return plan_cells(master, loader, jobs, sweep, local=local, memory_bytes=memory)

        yield _plan
    assert not sweep.exists()  # planning writes nothing


# The 13 settings of issue 20, point 7 that were accepted at planning and failed in the job (or later).
LATE = [
    (["threads=100000"], "threads=100000"),
    (["train.seeds=[18446744073709551616]"], "train.seeds=[18446744073709551616]"),
    (["data.split_seed=-1"], "data.split_seed=-1"),
    (["data.subsample_seed=-1"], "data.subsample_seed=-1"),
    (["data.noise_seed=-1"], "data.noise_seed=-1"),
    (["train.lr=1e300"], "train.lr=1e+300"),
    ([f"sweep_name={'s' * 300}"], f"sweep_name='{'s' * 300}'"),
    (["train.weight_decay=inf"], "train.weight_decay=inf"),
    (["train.lr_decay=inf"], "train.lr_decay=inf"),
    (["data=gaussian", "data.separation=inf"], "data.separation=inf"),
    (["data.subsample=nan"], "data.subsample=nan"),
    (["model.depth=10000"], "model.depth=10000"),
]


def test_the_late_failures_of_issue_20_are_refused_at_planning_with_their_key(plan, monkeypatch):
    planned = plan([ov for ov, _ in LATE])
    for (ov, named), cell in zip(LATE, planned, strict=True):
        assert cell.state == "invalid" and any(p.startswith(named + ":") and "expected" in p for p in cell.problems), (
            ov,
            cell.problems,
        )
    # the 13th: the shipped jump-and-retrain sweep (embedding: phate) where the optional package is missing
    monkeypatch.setitem(sys.modules, "phate", None)  # what `import phate` sees on an install without it
    sweep = ["+sweep=jump_retrain_noise", "data.label_noise=0.0"]
    (cell,) = plan([sweep])
    assert cell.state == "invalid" and any(
        p.startswith("metrics.jump_retrain.embedding='phate'") and "pip install phate" in p for p in cell.problems
    ), cell.problems
    assert plan([[*sweep, "metrics.jump_retrain.embedding=pca"]])[0].problems == []
    monkeypatch.delitem(sys.modules, "phate")
    assert plan([sweep])[0].problems == []  # installed here


def test_the_late_failures_are_refused_by_the_cli_before_anything_is_written(tmp_path):
    args = [ov for ovs, _ in LATE if not ovs[0].startswith(("sweep_name", "data=")) for ov in ovs]
    proc = run_cli(["-m", *args, "hydra.sweep.dir=sweep"], tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for ovs, named in LATE:
        if not ovs[0].startswith(("sweep_name", "data=")):
            assert f"{named}: expected" in proc.stderr, (named, proc.stderr[-3000:])
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------------------------- the walk
def _root():
    import landscape.config as config

    return config.LandscapeConfig


# Keys whose bad value needs other settings to matter (the family on, the option that reads the key).
CONTEXT = {
    "metrics.cka.layer": ["metrics.cka.features=layer"],
    "data.root": ["data=cifar10"],
}
# Free-form strings: a value of their type that is wrong.
BAD_STRINGS = {
    "sweep_name": ["../up", "s" * 300],
    "data.root": ["/no/such/directory"],
    "metrics.cka.layer": ["no.such.module"],
}


def _bad_values(key: str, annotation: typing.Any) -> list[str]:
    """Override values (Hydra syntax) of ``key``'s type that no setting may take."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"Any": typing.Any, "Optional": typing.Optional, "list": list})
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        if item is str:
            return ["[no-such-value]"]
        return ["[-1]", f"[{2**64}]"] if item is int else ["[nan]", "[inf]", "[-1.0]"]
    if annotation is int:
        return ["-1", str(2**64)]
    if annotation is float:
        return ["nan", "inf", "-inf"]
    if annotation is bool:
        return ["maybe"]
    if annotation is str:
        return BAD_STRINGS.get(key, ["no-such-value"])
    return ["maybe", "nan"]  # Any: enabled, data.subsample, train.batch_size


def _option_context(key: str) -> list[str]:
    """A key of some datasets or model kinds only (``data.n_classes``): the first option that has it chosen."""
    from landscape.config import option_keys

    group, _, leaf = key.partition(".")
    owners = option_keys(group).get(leaf, ()) if group in ("data", "model") else ()
    return [f"{group}={owners[0]}"] if owners and len(owners) < len(option_keys(group)["name"]) else []


def _walk() -> list[tuple[str, list[str]]]:
    out = []
    for dotted, annotation in leaf_fields(_root(), ""):
        key = dotted.lstrip(".")
        family = key.split(".")[1] if key.startswith("metrics.") and key.count(".") == 2 else None
        context = list(CONTEXT.get(key, [])) or _option_context(key)
        if family is not None and not key.endswith(".enabled"):
            context.insert(0, f"metrics.{family}.enabled=true")
        for value in _bad_values(key, annotation):
            out.append((key, [*context, f"{key}={value}"]))
    return out


def test_the_schema_walk_covers_every_key_and_each_bad_value_is_refused_with_the_key(plan, tmp_path):
    walk = _walk()
    keys = {k for k, _ in walk}
    assert len(keys) == len(leaf_fields(_root(), "")) > 100  # every leaf key: data, model, train, phase, root, families
    jobs = []
    for key, ov in walk:
        if key == "data.root":  # cifar10 needs data.root: give it a directory that is not CIFAR-10
            ov = [o if not o.startswith("data.root=") else f"data.root={tmp_path}" for o in ov]
        jobs.append(ov)
    accepted = []
    for (key, ov), cell in zip(walk, plan(jobs), strict=True):
        if not any(key in p for p in cell.problems):
            accepted.append((" ".join(ov), cell.problems))
    assert accepted == [], "\n".join(f"{o}: {p}" for o, p in accepted)
    # a value of the wrong type is refused by Hydra's composition: the override and what was wrong, one line
    (cell,) = plan([["model=cnn", "model.batch_norm=maybe"]])
    assert cell.problems == [
        "Error merging override model.batch_norm=maybe: Value 'maybe' is not a valid bool (type str)"
    ]


def test_bounds_are_generated_for_every_number_of_the_schema():
    table = bounds()
    numeric = [
        k.lstrip(".")
        for k, a in leaf_fields(_root(), "")
        if _bad_values(k.lstrip("."), a)[0] in ("-1", "nan", "[-1]", "[nan]")
    ]
    assert set(numeric) <= set(table), sorted(set(numeric) - set(table))
    seeds = [k for k in table if k.endswith("seed") or k.endswith("seeds") or k.endswith("random_state")]
    assert len(seeds) >= 10
    for k in seeds:  # seeds: 0 .. 2**63-1
        assert table[k].accepts([0, INT64_MAX] if table[k].items else INT64_MAX), k
        assert not table[k].accepts([INT64_MAX + 1] if table[k].items else INT64_MAX + 1), k
        assert not table[k].accepts([-1] if table[k].items else -1), k
    for k, b in table.items():  # no number anywhere may be NaN or infinite
        for bad in (math.nan, math.inf):
            assert not b.accepts([bad] if b.items else bad), k


# ----------------------------------------------------------------------------------- model size and machine
def test_model_size_counts_parameters_without_building_and_refuses_what_the_machine_cannot_hold(compose):
    for ov in (
        ["model.width=7", "model.depth=3"],
        ["model=cnn", "model.width=4", "model.depth=3"],
        ["model=cnn", "model.batch_norm=true", "model.depth=5", "data=mnist1d"],
        ["model.depth=1", "data=gaussian"],
    ):
        cfg = compose(ov)
        assert model_size(cfg)[0] == model_facts(cfg)[0], ov
    # depth x width beyond the memory: refused with the parameter count, before the model is built
    deep = compose(["model.width=4096", "model.depth=1000"])
    assert validate(deep) == []
    problems = launch_problems(deep, True, memory_bytes=64 * 2**30)
    assert any(p.startswith("model.width=4096, model.depth=1000") and "16,7" in p and "GiB" in p for p in problems), (
        problems
    )
    # a CNN doubles its channels per block: depth 1000 has an astronomic parameter count, refused, not built
    cnn = compose(["model=cnn", "model.depth=1000"])
    assert any(p.startswith("model.width=") and "parameters" in p for p in launch_problems(cnn, True, 2**40))
    # a CPU job also holds one training batch of activations
    cpu = ["device=cpu", "model.width=512", "model.depth=8"]
    assert launch_problems(compose([*cpu, "train.batch_size=32"]), True, memory_bytes=64 * 2**20) == []
    full = launch_problems(compose([*cpu, "train.batch_size=full"]), True, memory_bytes=64 * 2**20)
    assert any("activations" in p for p in full), full


def test_threads_within_the_machine(compose):
    n = os.cpu_count()
    assert launch_problems(compose([f"threads={n}"]), True) == []
    assert any(
        p.startswith(f"threads={n + 1}: expected at most the {n} CPUs")
        for p in launch_problems(compose([f"threads={n + 1}"]), True)
    )
    assert launch_problems(compose([f"threads={n + 1}"]), False) == []  # SLURM: the table's cap only
    assert any(p.startswith("threads=100000") for p in validate(compose(["threads=100000"])))


# ------------------------------------------------------------------------------- non-finite values (point 8)
def _non_finite(value) -> bool:
    import numpy as np

    if isinstance(value, (float, np.floating)):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return any(_non_finite(v) for v in value)
    return False


def _tanh_context(tmp_path: Path):
    import torch
    import torch.nn.functional as F

    from landscape.data import CellData
    from landscape.metrics import ModelContext
    from landscape.models import MLP

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 5, generator=g), torch.randint(0, 3, (100,), generator=g)
    torch.manual_seed(0)
    model = MLP(5, 3, width=8, depth=1, activation="tanh").eval()
    return ModelContext(
        model=model,
        seed=0,
        data=CellData("toy", x, y, y.clone(), x[:10], y[:10], 3),
        loss_fn=F.cross_entropy,
        make_model=lambda: MLP(5, 3, 8, 1, "tanh"),
        cfg=None,
        device=torch.device("cpu"),
        workdir=tmp_path,
    )


def test_a_projection_step_that_overflows_gives_nulls_and_no_agreement_claim(tmp_path):
    """Issue 20: ``projection_trace.epsilon=1e308`` gave ``stderr``/``bias`` NaN, ``step_length`` inf and
    ``agrees = true`` in the row. (The value is refused at planning now, and by the contract's check before
    ``compute``: the family's own function, ``compute.__wrapped__``, is called directly.)"""
    from omegaconf import OmegaConf

    from landscape import job
    from landscape.metrics import Result, get

    fam = get("projection_trace")
    settings = OmegaConf.structured(fam.config(enabled=True, eval_samples=100, n_directions=4, epsilon=1e308))
    with pytest.raises(ValueError, match="metrics.projection_trace.epsilon=1e"):
        fam.compute(_tanh_context(tmp_path), settings)
    res = job._conform(fam, fam.compute.__wrapped__(_tanh_context(tmp_path), settings))
    assert not any(_non_finite(v) for v in res.values.values()), res.values
    assert res.values["projection_trace.agrees"] is None
    for col in ("stderr", "bias", "step_length"):
        assert res.values[f"projection_trace.{col}"] is None and f"projection_trace.{col}=" in res.error
    assert math.isfinite(res.values["projection_trace.hvp_estimate"])  # the finite values stay
    # a claim resting on a value that is not finite is null even where the family computed it
    forged = job._conform(
        fam,
        Result(
            {"projection_trace.estimate": 1.0, "projection_trace.bias": float("nan"), "projection_trace.agrees": True}
        ),
    )
    assert forged.values["projection_trace.agrees"] is None
    assert "projection_trace.agrees: null, it rests on projection_trace.bias (not finite)" in forged.error


def test_a_hessian_residual_that_is_not_finite_leaves_its_eigenvalue_and_convergence_null():
    """Issue 20: a tanh net at lr 50 gave Hessian residuals NaN and a min eigenvalue beside ``converged =
    false``. The family's values as reported there go through the job's conformance step."""
    from landscape import job
    from landscape.metrics import Result, get

    fam = get("hessian")
    res = job._conform(
        fam,
        Result(
            {
                "hessian.top_eigenvalue": 3.5,
                "hessian.top_eigenvalues": [3.5, float("nan")],
                "hessian.top_residual": 1e-6,
                "hessian.min_eigenvalue": -0.25,
                "hessian.min_residual": float("nan"),
                "hessian.trace": 7.0,
                "hessian.trace_stderr": float("inf"),
                "hessian.converged": False,
            }
        ),
    )
    assert not any(_non_finite(v) for v in res.values.values()), res.values
    assert res.values["hessian.min_eigenvalue"] is None and res.values["hessian.converged"] is None
    assert res.values["hessian.top_eigenvalues"] is None and res.values["hessian.trace_stderr"] is None
    assert res.values["hessian.top_eigenvalue"] == 3.5 and res.values["hessian.trace"] == 7.0
    for named in (
        "hessian.min_residual=nan (not finite)",
        "hessian.top_eigenvalues=[3.5, nan] (not finite)",
        "hessian.min_eigenvalue: null, it rests on hessian.min_residual",
        "hessian.converged: null, it rests on hessian.min_residual",
    ):
        assert named in res.error, res.error
    # with the family's own reason (not converged), the values are null and its reason is kept
    own = job._conform(
        fam,
        Result(
            {"hessian.min_eigenvalue": -0.25, "hessian.min_residual": float("nan"), "hessian.converged": False},
            error="eigenvalues not converged",
        ),
    )
    assert own.values == {"hessian.min_eigenvalue": None, "hessian.min_residual": None, "hessian.converged": None}
    assert own.error == "eigenvalues not converged"


NON_FINITE_APP = """
import sys
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from landscape import metrics


@dataclass
class Config:
    enabled: Any = False


def model_values(ctx, settings):
    nan, inf = float("nan"), float("inf")
    return metrics.Result({"nf.value": nan, "nf.spread": inf, "nf.curve": [1.0, nan], "nf.ok": True, "nf.kept": 2.5},
                          tables={"nf_rows": [{"x": nan, "y": 1.0}]})


def pair_values(ctx, settings):
    return metrics.Result({"nfp.distance": -float("inf"), "nfp.count": 3})


metrics.register(metrics.Family(
    name="nf", table="models", config=Config, metrics={"nf.value": pa.float64(), "nf.kept": pa.float64()},
    diagnostics={"nf.spread": pa.float64(), "nf.curve": pa.list_(pa.float64()), "nf.ok": pa.bool_()},
    long_tables={"nf_rows": {"x": pa.float64(), "y": pa.float64()}},
    depends={"nf.ok": ("nf.spread",)}, compute=model_values))
metrics.register(metrics.Family(name="nfp", table="pairs", config=Config, metrics={"nfp.distance": pa.float64()},
                                diagnostics={"nfp.count": pa.int64()}, compute=pair_values))
from landscape.cli.app import main  # noqa: E402 - after the registration

sys.argv = ["landscape", *sys.argv[1:]]
main()
"""


def test_no_nan_or_inf_number_in_any_row_of_any_family(tmp_path):
    """Through the CLI, a model family and a pair family that return NaN and infinities in metric, diagnostic
    and list columns and a long table: every such value is a null with its reason, the flag resting on one is
    null, and no row of any table holds a non-finite number."""
    import subprocess

    import pyarrow.dataset as ds

    (tmp_path / "nf_app.py").write_text(NON_FINITE_APP)
    proc = subprocess.run(
        [
            sys.executable,
            "nf_app.py",
            "hydra.sweep.dir=nf",
            *FAST,
            "train.epochs=1",
            "metrics.nf.enabled=true",
            "metrics.nfp.enabled=true",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables = {
        t.name: ds.dataset(t, format="parquet").to_table().to_pylist()
        for t in (tmp_path / "nf" / "results").iterdir()
        if t.is_dir()
    }
    assert {"models", "pairs", "nf_rows"} <= set(tables)
    for name, rows in tables.items():
        for row in rows:
            bad = {k: v for k, v in row.items() if _non_finite(v)}
            assert not bad, (name, bad)
    for row in tables["models"]:
        assert row["nf.value"] is None and row["nf.spread"] is None and row["nf.curve"] is None
        assert row["nf.ok"] is None and row["nf.kept"] == 2.5
        assert (
            "nf.value=nan (not finite)" in row["nf.error"] and "nf.ok: null, it rests on nf.spread" in row["nf.error"]
        )
    for row in tables["pairs"]:
        assert row["nfp.distance"] is None and row["nfp.count"] == 3 and "nfp.distance=-inf" in row["nfp.error"]
    assert all(r["x"] is None and r["y"] == 1.0 for r in tables["nf_rows"])
