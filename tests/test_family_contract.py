"""Issue 21: a metric family is declared in its module and nowhere else. Its settings' defaults and value rules
are its ``Config`` fields; the contract checks them for every family, at planning and before ``compute``; and a
family from outside the package is one module (here: this one) plus one registration line."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import FAST
from omegaconf import OmegaConf

from landscape import metrics
from landscape.metrics import Family, Result, ints, nums, one_of, rule
from landscape.results import load

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------- a family from outside
@dataclass
class Config:
    enabled: Any = False
    radius: float = field(default=0.05, metadata=rule(nums(0.0, lo_open=True)))
    samples: int = field(default=4, metadata=rule(ints(1)))
    max_samples: int = field(default=16, metadata=rule(ints(1)))
    mode: str = field(default="mean", metadata=rule(one_of(("mean", "max"))))
    scales: list[float] = field(
        default_factory=lambda: [1.0, 2.0], metadata=rule(nums(0.0, lo_open=True, items=True, min_items=1))
    )


def check(settings: Any) -> list[str]:
    if settings.max_samples < settings.samples:
        return [f"metrics.outside.max_samples={settings.max_samples}: expected >= samples ({settings.samples})"]
    return []


def compute(ctx: Any, settings: Any) -> Result:
    n = sum(p.numel() for p in ctx.model.parameters())
    scale = max(settings.scales) if settings.mode == "max" else sum(settings.scales) / len(settings.scales)
    return Result({"outside.value": float(settings.radius) * scale * n, "outside.n_params": n})


FAMILY = Family(
    name="outside",
    table="models",
    config=Config,
    metrics={"outside.value": pa.float64()},
    diagnostics={"outside.n_params": pa.int64()},
    compute=compute,
    check=check,
)

APP = f"""
import sys

sys.path.insert(0, {str(TESTS)!r})
from landscape import metrics
from test_family_contract import FAMILY

metrics.register(FAMILY)  # the one registration line
from landscape.cli.app import main  # noqa: E402 - after the registration

sys.argv = ["landscape", *sys.argv[1:]]
main()
"""


def _run_app(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    (tmp_path / "outside_app.py").write_text(APP)
    return subprocess.run(
        [sys.executable, "outside_app.py", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def test_a_family_from_outside_has_its_rules_checked_at_planning_through_the_cli(tmp_path):
    """Its field rules and its cross-field ``check`` refuse a grid at planning: exit 2, each bad key named with
    its value and what is allowed, no traceback, nothing written."""
    proc = _run_app(
        tmp_path,
        [
            "-m",
            "hydra.sweep.dir=s",
            *FAST,
            "train.epochs=1",
            "metrics.outside.enabled=true",
            "metrics.outside.radius=0,0.1",
            "metrics.outside.samples=32",
            "metrics.outside.mode=median",
        ],
    )
    err = proc.stderr
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "metrics.outside.radius=0.0: expected a finite number > 0" in err, err[-3000:]
    assert "metrics.outside.mode='median': expected one of mean, max" in err, err[-3000:]
    # the cross-field check runs once every field passed its rule: not for the radius=0 cell, so mode must pass
    proc = _run_app(
        tmp_path,
        [
            "-m",
            "hydra.sweep.dir=s",
            *FAST,
            "train.epochs=1",
            "metrics.outside.enabled=true",
            "metrics.outside.samples=32",
        ],
    )
    assert proc.returncode == 2 and "metrics.outside.max_samples=16: expected >= samples (32)" in proc.stderr, (
        proc.stderr[-3000:]
    )
    assert not (tmp_path / "s").exists()


def test_a_family_from_outside_computes_through_the_cli(tmp_path):
    """One module and one registration line: its settings and values are in every model row."""
    proc = _run_app(
        tmp_path,
        [
            "hydra.sweep.dir=ok",
            *FAST,
            "metrics.outside.enabled=true",
            "metrics.outside.radius=0.5",
            "metrics.outside.mode=max",
            "metrics.outside.scales=[1.0,3.0]",
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = load(tmp_path / "ok")
    assert len(rows) == 2 and (rows["status"] == "done").all() and rows["outside.error"].isna().all()
    for _, row in rows.iterrows():
        n = int(row["model.n_params"])
        assert row["outside.n_params"] == n and row["outside.value"] == 0.5 * 3.0 * n
    assert (rows["outside.radius"] == 0.5).all() and (rows["outside.mode"] == "max").all()
    assert [list(v) for v in rows["outside.scales"]] == [[1.0, 3.0]] * 2


# ------------------------------------------------------------------------------------- the contract, unit
def test_compute_is_refused_by_the_contract_before_the_family_runs():
    """``Family.compute`` checks the settings once, for every family: the family's own function never sees
    settings its rules or its ``check`` refuse (so no family opens ``compute`` with a check of its own)."""
    calls = []
    fam = Family(
        name="outside",
        table="models",
        config=Config,
        metrics={"outside.value": pa.float64()},
        compute=lambda ctx, s: calls.append(s) or Result({}),
        check=check,
    )
    for bad, named in (
        (Config(radius=0.0), "metrics.outside.radius=0.0: expected a finite number > 0"),
        (Config(scales=[]), "metrics.outside.scales=[]: expected a list of at least 1 items"),
        (Config(samples=True), "metrics.outside.samples=True: expected an integer >= 1"),
        (Config(samples=32), "metrics.outside.max_samples=16: expected >= samples (32)"),
    ):
        with pytest.raises(ValueError) as err:
            fam.compute(None, bad)
        assert str(err.value).startswith(named), str(err.value)
    assert calls == []
    fam.compute(
        None,
        OmegaConf.create(
            {"enabled": True, "radius": 1.0, "samples": 2, "max_samples": 2, "mode": "max", "scales": [1.0]}
        ),
    )  # a config node, as the job passes it
    assert len(calls) == 1
    # re-declaring a family (dataclasses.replace) checks once, not twice, with the new family's rules
    again = dataclasses.replace(fam, name="again", metrics={"again.value": pa.float64()})
    with pytest.raises(ValueError, match=r"^metrics.again.radius=0.0: expected"):
        again.compute(None, Config(radius=0.0))


def test_every_family_declares_its_rules_in_its_config_and_its_defaults_pass_them():
    """The built-in families: every numeric or choice setting has a rule (its own or its type's), each default
    passes its rule and its family's ``check``, and a rule that is not a ``Rule`` is refused when declared."""
    for fam in metrics.families():
        assert fam.problems(fam.config()) == [], fam.name
        for key, r in fam.rules.items():
            assert r.describe(), (fam.name, key)
    declared = {
        (f.name, fl.name) for f in metrics.families() for fl in dataclasses.fields(f.config) if "rule" in fl.metadata
    }
    assert ("connectivity", "n_points") in declared and ("hessian", "trace_method") in declared
    assert len(declared) >= 60

    @dataclass
    class Bad:
        enabled: Any = False
        k: int = field(default=1, metadata={"rule": ">= 1"})

    with pytest.raises(TypeError, match="metadata\\['rule'\\]"):
        Family(name="bad", table="models", config=Bad, metrics={"bad.v": pa.float64()}, compute=compute)


def test_the_connectivity_disagreements_are_resolved_in_one_place():
    """``epochs``: null or >= 0 (0: the untrained curve); ``n_points``: >= 3 (mc needs an interior point), in
    the field rule planning and ``compute`` both read."""
    from landscape.metrics import connectivity as conn

    fam = conn.FAMILY
    assert fam.problems(conn.Config(epochs=0)) == [] and fam.problems(conn.Config(epochs=None)) == []
    assert fam.problems(conn.Config(epochs=-1))[0].startswith("metrics.connectivity.epochs=-1: expected null or an")
    assert fam.problems(conn.Config(n_points=3)) == []
    assert fam.problems(conn.Config(n_points=2))[0].startswith(
        "metrics.connectivity.n_points=2: expected an integer >= 3"
    )
    from landscape.config import bounds

    assert bounds()["metrics.connectivity.n_points"] is fam.rules["n_points"]
