"""A metric that cannot be computed costs one value (a typed null and its reason), never a cell's rows; pair
families that are on by default (``enabled: auto``) skip one-seed cells, explicitly enabled ones refuse them."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from conftest import FAST

from landscape import job
from landscape.cell import CellDir
from landscape.metrics import Family, Result
from landscape.results import load


def test_collapsed_width2_network_keeps_its_cell_done_with_cka_null_and_the_reason(cli, tmp_path):
    """Width-2 ReLU MLP on digits: model 1 collapses to constant outputs, so CKA is undefined. The cell is
    done, every model row is written (with its Hessian), the pair row has cka null and the reason, and the
    log and landscape-status say so."""
    proc = cli(
        [
            "-m",
            "hydra.sweep.dir=w2",
            "model.width=2",
            "train.epochs=5",
            "metrics.cka.enabled=true",
            "metrics.hessian.enabled=true",
            "metrics.hessian.eval_samples=100",
            "metrics.hessian.trace_matvecs=12",
        ]
    )
    log = proc.stdout + proc.stderr
    assert "WARNING" in log and "metric family cka: CKA undefined: model 1" in log, log[-3000:]
    models, pairs = load(tmp_path / "w2"), load(tmp_path / "w2", "pairs")
    assert sorted(models["seed"]) == [0, 1] and (models["status"] == "done").all()
    assert models["train_loss"].notna().all() and models["hessian.trace"].notna().all()
    assert models["hessian.error"].isna().all() and models["training.error"].isna().all()
    assert len(pairs) == 1 and pairs["status"].iloc[0] == "done"
    assert pd_isna(pairs["cka"].iloc[0])
    assert pairs["cka.error"].iloc[0].startswith("CKA undefined: model 1: biased self-HSIC")
    assert pairs["l2_distance"].notna().all() and pairs["l2.error"].isna().all()
    assert pa.types.is_float64(pa.Table.from_pandas(pairs[["cka"]]).schema.field("cka").type)  # typed null
    cid = models["cell_id"].iloc[0]
    status = json.loads((tmp_path / "w2" / "cells" / cid / "status.json").read_text())
    assert status["state"] == "done"
    assert [(e["family"], e["who"]) for e in status["metric_errors"]] == [("cka", "pair=0-1")]
    out = subprocess.run(
        [sys.executable, "-m", "landscape.cli.status", str(tmp_path / "w2")], capture_output=True, text=True, check=True
    ).stdout
    assert "done 1" in out and "failed 0" in out
    assert "metric errors: 1 value(s) in 1 cell(s)" in out and "cka: 1 (pair=0-1): CKA undefined: model 1" in out
    rep = json.loads(
        subprocess.run(
            [sys.executable, "-m", "landscape.cli.status", "--json", str(tmp_path / "w2")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert rep["cells"][0]["metric_errors"][0]["family"] == "cka"
    # landscape-phase keeps the cell on its axes: labelled from its training loss and mc, CKA missing with why
    phase = subprocess.run(
        [
            sys.executable,
            "-m",
            "landscape.cli.phase",
            str(tmp_path / "w2"),
            "--x",
            "model.width",
            "--y",
            "train.batch_size",
            "--out",
            str(tmp_path / "ph"),
        ],
        capture_output=True,
        text=True,
    )
    assert phase.returncode == 0, phase.stderr[-3000:]
    import pandas as pd

    cells = pd.read_csv(tmp_path / "ph" / "cells.csv")
    assert list(cells["model.width"]) == [2] and cells["n_done"].iloc[0] == 2 and cells["train_loss_n"].iloc[0] == 2
    assert "cka" not in cells or pd_isna(cells["cka"].iloc[0])
    assert cells["cka.error"].iloc[0].startswith("CKA undefined: model 1")


def pd_isna(v) -> bool:
    import pandas as pd

    return v is None or bool(pd.isna(v))


def test_one_seed_runs_with_defaults_and_skips_l2_with_a_log_line(cli, tmp_path):
    proc = cli(["hydra.sweep.dir=one", *FAST, "train.seeds=[0]"])
    assert "pair family l2 skipped: the cell has one seed" in proc.stdout + proc.stderr
    models = load(tmp_path / "one")
    assert list(models["seed"]) == [0] and models["test_acc"].notna().all()
    assert not (tmp_path / "one" / "results" / "pairs").exists()
    # metrics.training.enabled is honoured: no evaluation, but the training run's own columns stay
    cli(["hydra.sweep.dir=off", *FAST, "train.seeds=[0]", "metrics.training.enabled=false"])
    off = load(tmp_path / "off")
    assert off["test_acc"].isna().all() and off["training.eval_batch_size"].isna().all()
    assert off["training.steps"].tolist() == models["training.steps"].tolist()


def test_explicitly_enabled_pair_family_with_one_seed_is_refused_before_launch(cli, tmp_path):
    proc = cli(["-m", "hydra.sweep.dir=one", *FAST, "train.seeds=[0]", "metrics.l2.enabled=true"], check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "train.seeds=[0]" in out and "the pair metrics l2 need at least two seeds" in out
    assert not (tmp_path / "one" / "cells").exists()


def test_enabled_must_be_true_false_or_auto(compose):
    from landscape.config import validate

    problems = validate(compose(["metrics.cka.enabled=maybe"]))
    assert any(p.startswith("metrics.cka.enabled='maybe': expected true, false or auto") for p in problems)
    assert not validate(compose(["metrics.cka.enabled=auto", "train.seeds=[0]"]))


# ------------------------------------------------------------------------------ the job's checks, unit level
@dataclass
class _Cfg:
    enabled: bool = True
    k: int = 1


def _family(compute, long_tables=None) -> Family:
    return Family(
        name="toy",
        table="models",
        config=_Cfg,
        metrics={"toy.value": pa.float64()},
        diagnostics={"toy.count": pa.int64()},
        compute=compute,
        long_tables=long_tables or {},
    )


def _cell(tmp_path: Path):
    cfg = SimpleNamespace(metrics={"toy": {"enabled": True, "k": 1}})
    return cfg, CellDir(tmp_path, "c")


@dataclass
class _Ctx:
    workdir: Path


def test_an_exception_in_a_family_is_an_error_value_not_cached_and_preemption_passes(tmp_path):
    calls = []

    def boom(ctx, settings):
        calls.append(1)
        raise RuntimeError("no convergence\nafter 300 products")

    fam, (cfg, cell) = _family(boom), _cell(tmp_path)
    res = job._cached_compute(fam, cfg, cell, "seed=0", _Ctx(tmp_path))
    assert res.values == {} and res.error == "RuntimeError: no convergence after 300 products"
    job._cached_compute(fam, cfg, cell, "seed=0", _Ctx(tmp_path))
    assert len(calls) == 2  # not cached: a rerun tries again

    from landscape.training import StopRequested

    def preempted(ctx, settings):
        raise StopRequested("signal")

    with pytest.raises(StopRequested):
        job._cached_compute(_family(preempted), cfg, cell, "seed=0", _Ctx(tmp_path))


def test_a_failed_prepare_costs_no_value_and_cached_pairs_are_not_prepared_again(tmp_path, caplog):
    """A pair family's shared work (``prepare``) that raises is logged and each pair's ``compute`` still gives its
    value; ``prepare`` gets only the pairs whose values are not cached, each with the workdir ``compute`` gets; a
    preemption request passes."""
    from landscape.training import StopRequested

    seen: list[list[Path]] = []

    def prepare(contexts, settings, workdir):
        seen.append([c.workdir for c in contexts])
        raise RuntimeError("stack failed")

    fam = dataclasses.replace(_family(lambda ctx, s: Result({"toy.value": 1.0})), table="pairs", prepare=prepare)
    cfg, cell = _cell(tmp_path)
    contexts = {"pair=0-1": _Ctx(tmp_path), "pair=0-2": _Ctx(tmp_path)}
    job._prepare(fam, cfg, cell, contexts)
    assert "the shared work of 2 pairs failed" in caplog.text and "stack failed" in caplog.text
    res = job._cached_compute(fam, cfg, cell, "pair=0-1", contexts["pair=0-1"])
    assert res.values == {"toy.value": 1.0} and res.error is None
    job._prepare(fam, cfg, cell, contexts)  # pair 0-1 is cached now: only 0-2 is prepared
    key = job.metrics_key(cfg.metrics["toy"])
    assert seen[-1] == [cell.workdir(f"pair=0-2-{key}", "toy")]

    def preempted(contexts, settings, workdir):
        raise StopRequested("signal")

    with pytest.raises(StopRequested):
        job._prepare(dataclasses.replace(fam, prepare=preempted), cfg, cell, contexts)


def test_non_finite_undeclared_and_mistyped_values_become_nulls_with_reasons():
    fam = _family(lambda c, s: None, long_tables={"toy_rows": {"x": pa.float64()}})
    res = job._conform(fam, Result({"toy.value": float("nan"), "toy.count": 3, "toy.k": 1}))
    assert res.values == {"toy.value": None, "toy.count": 3, "toy.k": 1}
    assert res.error == "toy.value=nan (not finite)"
    res = job._conform(
        fam,
        Result(
            {"toy.value": 1.5, "toy.count": "three", "toy.extra": 1}, tables={"toy_rows": [{"x": "a"}], "other": []}
        ),
    )
    assert res.values == {"toy.value": 1.5}
    assert "toy.count='three' is not int64" in res.error and "undeclared column 'toy.extra'" in res.error
    assert "long table 'toy_rows'" in res.error and "undeclared long table 'other'" in res.error
    assert res.tables == {}
    # a family that reports its own reason keeps it, and its NaN metric is a null without a second reason
    res = job._conform(fam, Result({"toy.value": float("nan")}, error="features are constant"))
    assert res.values == {"toy.value": None} and res.error == "features are constant"
    assert math.isfinite(job._conform(fam, Result({"toy.value": 2.0})).values["toy.value"])


def test_results_cached_before_the_contract_are_read(tmp_path):
    fam, (cfg, cell) = _family(lambda c, s: pytest.fail("recomputed")), _cell(tmp_path)
    from landscape.cell import metrics_key, write_json

    write_json(
        cell.metrics_path(f"seed=0-{metrics_key(cfg.metrics['toy'])}", "toy"),
        {"toy.value": 0.25, "toy.retired_column": 1, "_tables": {}},
    )
    res = job._cached_compute(fam, cfg, cell, "seed=0", _Ctx(tmp_path))
    assert res.values == {"toy.value": 0.25} and res.error is None


def test_unconverged_hessian_eigenvalues_keep_their_values_and_are_reported(tmp_path):
    """An eigenvalue that should converge and does not is counted (``hessian.error``), never hidden or dropped."""
    import torch
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from landscape.data import CellData
    from landscape.metrics import ModelContext, get
    from landscape.models import MLP

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 5, generator=g), torch.randint(0, 3, (100,), generator=g)
    torch.manual_seed(0)
    model = MLP(5, 3, width=8, depth=1, activation="tanh").eval()
    ctx = ModelContext(
        model=model,
        seed=0,
        data=CellData("toy", x, y, y.clone(), x[:10], y[:10], 3),
        loss_fn=F.cross_entropy,
        make_model=lambda: MLP(5, 3, 8, 1, "tanh"),
        cfg=None,
        device=torch.device("cpu"),
        workdir=tmp_path,
    )
    fam = get("hessian")
    settings = OmegaConf.structured(
        fam.config(enabled=True, eval_samples=100, tol=1e-14, max_iter=3, trace_matvecs=6, dtype="float64")
    )
    res = job._conform(fam, fam.compute(ctx, settings))
    assert res.values["hessian.converged"] is False and res.values["hessian.top_eigenvalue"] > 0
    assert res.error.startswith("eigenvalues not converged to tol 1e-14 (top residual")
    ok = fam.compute(ctx, OmegaConf.structured(fam.config(enabled=True, eval_samples=100, trace_matvecs=6)))
    assert ok.error is None and ok.values["hessian.converged"] is True


TOY_APP = """
import sys
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from landscape import metrics


@dataclass
class Config:
    enabled: Any = False
    scale: float = 2.0


def compute(ctx, settings):
    if ctx.seed == 1:
        raise RuntimeError("toy failure on seed 1")
    n = sum(p.numel() for p in ctx.model.parameters())
    return metrics.Result({"toy.value": settings.scale * n, "toy.n": n})


metrics.register(metrics.Family(name="toy", table="models", config=Config, metrics={"toy.value": pa.float64()},
                                diagnostics={"toy.n": pa.int64()}, compute=compute))
from landscape.cli.app import main  # noqa: E402 - after the registration

sys.argv = ["landscape", *sys.argv[1:]]
main()
"""


def test_a_registered_family_runs_through_the_cli_with_its_settings_and_errors(tmp_path):
    """The contract end to end: one Family object and one registration line give typed metric, setting,
    diagnostic and error columns in the rows; its exception on one model costs that model's value only."""
    (tmp_path / "toy_app.py").write_text(TOY_APP)
    proc = subprocess.run(
        [sys.executable, "toy_app.py", "hydra.sweep.dir=toy", *FAST, "metrics.toy.enabled=true", "metrics.toy.scale=3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metric family toy: RuntimeError: toy failure on seed 1" in proc.stdout + proc.stderr
    m = load(tmp_path / "toy").set_index("seed")
    n = int(m.loc[0, "model.n_params"])
    assert m.loc[0, "toy.value"] == 3.0 * n and m.loc[0, "toy.n"] == n and pd_isna(m.loc[0, "toy.error"])
    assert pd_isna(m.loc[1, "toy.value"]) and m.loc[1, "toy.error"] == "RuntimeError: toy failure on seed 1"
    assert (m["toy.scale"] == 3.0).all() and (m["status"] == "done").all()
