"""The ``hessian`` metric family on a hand-built ModelContext: typed columns, values equal to the exact ones."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from helpers import toy_model_context as _ctx
from omegaconf import OmegaConf

from landscape.curvature import HessianOperator
from landscape.metrics import ModelContext, get
from landscape.metrics.hessian import FAMILY, Config, eval_indices
from landscape.models import MLP


def _exact_spectrum(ctx: ModelContext, n: int, seed: int) -> torch.Tensor:
    idx = eval_indices(ctx.data.n_train, n, seed)
    model64 = MLP(5, 3, width=8, depth=1, activation="tanh").double()
    model64.load_state_dict({k: v.double() for k, v in ctx.model.state_dict().items()})
    op = HessianOperator(model64, F.cross_entropy, (ctx.data.x_train[idx].double(), ctx.data.y_train[idx]))
    return torch.linalg.eigvalsh(op.dense())


def test_default_mode_columns(tmp_path):
    ctx = _ctx(tmp_path)
    settings = OmegaConf.structured(
        Config(
            enabled=True,
            eval_samples=120,
            batch_size=50,
            dtype="float64",
            n_top=2,
            tol=1e-8,
            density=True,
            n_probes=4,
            n_steps=20,
        )
    )
    family = get("hessian")
    assert family.table == "models"
    res = family.compute(ctx, settings)
    row = res.values
    assert res.error is None and set(row) <= set(FAMILY.columns)
    for col, typ in FAMILY.columns.items():  # every returned value fits its declared Arrow type
        pa.array([row.get(col)], type=typ)
    lam = _exact_spectrum(ctx, 120, 0)
    assert row["hessian.eval_samples"] == 120 and row["hessian.mode"] == "default"
    assert row["hessian.top_eigenvalues"] == pytest.approx(lam.flip(0)[:2].tolist(), rel=1e-6)
    assert row["hessian.top_eigenvalue"] == pytest.approx(float(lam[-1]), rel=1e-6)
    assert row["hessian.min_eigenvalue"] == pytest.approx(float(lam[0]), rel=1e-5, abs=1e-7 * float(lam[-1]))
    assert abs(row["hessian.trace"] - float(lam.sum())) <= 3 * row["hessian.trace_stderr"]
    assert row["hessian.converged"] is True and row["hessian.n_matvecs"] > 99
    assert row["hessian.density_trace"] is not None and 0 <= row["hessian.negative_mass"] <= 1
    assert row["hessian.seconds"] > 0


def test_taxonomy_mode_uses_200_samples_and_power_iteration(tmp_path):
    ctx = _ctx(tmp_path)
    settings = OmegaConf.structured(Config(enabled=True, mode="taxonomy", smallest_eigenvalue=False))
    row = get("hessian").compute(ctx, settings).values
    lam = _exact_spectrum(ctx, 200, 0)
    assert row["hessian.mode"] == "taxonomy" and row["hessian.eval_samples"] == 200
    assert row["hessian.trace_method"] == "hutchinson-taxonomy" and row["hessian.tol"] == 1e-3
    assert row["hessian.top_eigenvalue"] == pytest.approx(float(lam.abs().max()), rel=1e-2)
    assert "hessian.min_eigenvalue" not in row


def test_bad_mode_is_named(tmp_path):
    settings = OmegaConf.structured(Config(enabled=True, mode="fast"))
    with pytest.raises(ValueError, match="metrics.hessian.mode='fast'"):
        get("hessian").compute(_ctx(tmp_path), settings)
