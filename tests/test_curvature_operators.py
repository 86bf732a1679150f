"""GGN, Fisher and empirical Fisher operators against dense float64 matrices built with torch.func from their
definitions, on a tanh MLP and a BatchNorm CNN in eval mode (as the hessian family uses them): products, top-k
eigenvalues, trace, positive semi-definiteness, Fisher = GGN, and the hessian family's operator setting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import small_bn_cnn_f64 as _cnn_bn
from helpers import small_mlp_f64 as _mlp
from helpers import toy_model_context as _ctx
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call, jacrev

from landscape.curvature import (
    OPERATORS,
    EmpiricalFisherOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    curvature_operator,
    deflated_hutchinson,
    eigenvalues,
    extreme_eigenpairs,
    trace,
)
from landscape.metrics import get
from landscape.metrics.hessian import Config, eval_indices
from landscape.models import MLP
from landscape.training import make_loss

MODELS = {"mlp": _mlp, "cnn_bn": _cnn_bn}
LOSSES = {"cross_entropy": "categorical", "mse": "gaussian"}


def _outputs_fn(model: nn.Module, x: torch.Tensor):
    """(theta [P] -> outputs [N, C], theta) in eval mode with the model's buffers (running statistics)."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    buffers = dict(model.named_buffers())
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    model.eval()

    def out(t: torch.Tensor) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, t.split(sizes), shapes, strict=True)}
        return functional_call(model, {**params, **buffers}, (x,))

    return out, theta


def dense_references(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> dict[str, torch.Tensor]:
    """The four matrices ``[P, P]`` from their definitions (torch.func, float64, no operator code):

    * hessian: ``torch.func.hessian`` of the mean loss;
    * ggn: ``J^T H_f J`` with ``J = jacrev(outputs)`` ``[N C, P]`` and ``H_f = hessian(loss in outputs)``;
    * fisher: ``(1/N) sum_i E_{y ~ p(.|x_i)}[g g^T]``, ``g = grad log p(y | x_i)``: for the categorical
      likelihood the sum over classes with per-class gradients ``jacrev(log_softmax)``; for the Gaussian one
      (``y ~ N(f, I/2)``, score ``2 (y - f)``, covariance ``I/2``) ``(1/N) sum_i J_i^T (4 * I/2) J_i``;
    * empirical_fisher: ``(1/N) G^T G``, ``G`` ``[N, P]`` = jacrev of the vector of single-sample losses.
    """
    loss_fn = make_loss(loss)
    out, theta = _outputs_fn(model, x)
    n = x.shape[0]
    J = jacrev(out)(theta)  # [N, C, P]
    C, P = J.shape[1], J.shape[2]
    f = out(theta).detach()
    Hf = torch.func.hessian(lambda g: loss_fn(g, y))(f).reshape(n * C, n * C)
    Jf = J.reshape(n * C, P)
    refs = {"hessian": torch.func.hessian(lambda t: loss_fn(out(t), y))(theta), "ggn": Jf.T @ Hf @ Jf}
    if loss == "cross_entropy":
        p = torch.softmax(f, dim=-1)  # [N, C]
        A = jacrev(lambda t: torch.log_softmax(out(t), dim=-1))(theta)  # [N, C, P]: grad log p(c | x_i)
        refs["fisher"] = torch.einsum("ic,icp,icq->pq", p, A, A) / n
    else:
        refs["fisher"] = 2.0 * torch.einsum("icp,icq->pq", J, J) / n
    G = jacrev(lambda t: torch.stack([loss_fn(out(t)[i : i + 1], y[i : i + 1]) for i in range(n)]))(theta)
    refs["empirical_fisher"] = G.T @ G / n
    return refs


@pytest.fixture(scope="module", params=[(m, loss) for m in MODELS for loss in LOSSES], ids=lambda p: "-".join(p))
def case(request):
    name, loss = request.param
    model, x, y = MODELS[name]()
    return name, loss, model, x, y, dense_references(model, x, y, loss)


def _op(kind: str, model: nn.Module, loss: str, data, **kw):
    return curvature_operator(kind, model, make_loss(loss), data, likelihood=LOSSES[loss], **kw)


@pytest.mark.parametrize("kind", ["ggn", "fisher", "empirical_fisher"])
def test_products_equal_the_dense_definitions(case, kind):
    name, loss, model, x, y, refs = case
    A = refs[kind]
    scale = float(A.abs().max())
    V = torch.randn(A.shape[0], 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    op = _op(kind, model, loss, (x, y))
    assert op.shape == A.shape and op.name == kind
    assert torch.allclose(op.dense(), A, rtol=0, atol=1e-12 * scale)
    variants = (
        [dict(cache=False), dict(batch_size=7), dict(batch_size=7, cache=False)]
        if kind == "empirical_fisher"
        else [
            dict(cache=True, batch_size=7),
            dict(cache=False),
            dict(cache=False, batch_size=7),
            dict(batch_size="auto", memory_budget=5_000),  # chunks sized from a (tiny) memory budget
        ]
    )
    for kw in variants:  # chunked data, no cached graphs (or gradients): the same products
        op = _op(kind, model, loss, (x, y), **kw)
        if kw.get("batch_size") == "auto":
            assert len(op.batches) > 1
        assert torch.allclose(op.matmat(V), A @ V, rtol=0, atol=1e-12 * scale * 10), (kind, kw)
        assert torch.allclose(op.matvec(V[:, 0]), A @ V[:, 0], rtol=0, atol=1e-12 * scale * 10), (kind, kw)
    if kind != "empirical_fisher":  # the batched (accelerator) paths: is_grads_batched and vmapped jvp/vjp
        for cache in (True, False):
            cls = GGNOperator if kind == "ggn" else FisherOperator
            extra = {} if kind == "ggn" else {"likelihood": LOSSES[loss]}
            op = cls(model, make_loss(loss), (x, y), batched=True, max_block=2, cache_graph=cache, **extra)
            assert torch.allclose(op.matmat(V), A @ V, rtol=0, atol=1e-12 * scale * 10), cache
            assert op.n_products == 5
    assert not model.training  # eval mode left as it was


def test_fisher_equals_ggn_for_cross_entropy_and_mse(case):
    """The docstring's claim: the output Fisher of a categorical (softmax) or Gaussian likelihood equals the
    Hessian of its negative log-likelihood in the outputs, so F = G (through two different code paths)."""
    name, loss, model, x, y, refs = case
    scale = float(refs["ggn"].abs().max())
    assert torch.allclose(refs["fisher"], refs["ggn"], rtol=0, atol=1e-12 * scale)  # the definitions agree
    G = GGNOperator(model, make_loss(loss), (x, y)).dense()
    Fi = FisherOperator(model, make_loss(loss), (x, y), likelihood=LOSSES[loss]).dense()
    assert torch.allclose(Fi, G, rtol=0, atol=1e-12 * scale)
    # ... and neither is the Hessian, nor the empirical Fisher (the labels enter those)
    assert not torch.allclose(G, refs["hessian"], atol=1e-3 * scale)
    assert not torch.allclose(G, refs["empirical_fisher"], atol=1e-3 * scale)


@pytest.mark.parametrize("kind", ["ggn", "fisher", "empirical_fisher"])
def test_top_eigenvalues_and_trace_match_exact(case, kind):
    name, loss, model, x, y, refs = case
    lam = torch.linalg.eigvalsh(refs[kind])
    op = _op(kind, model, loss, (x, y))
    top = eigenvalues(op, k=3, which="largest", tol=1e-9, max_iter=2000, seed=0)
    assert top.converged
    assert torch.allclose(top.values, lam.flip(0)[:3], rtol=1e-8, atol=1e-10 * float(lam[-1]))
    exact = float(lam.sum())
    # the family's default trace: Krylov basis of the eigenvalue run + Hutchinson on the rest
    ends = extreme_eigenpairs(op, k_largest=1, k_smallest=1, tol=1e-4, max_iter=300, seed=0)
    tr = deflated_hutchinson(op, ends.basis, ends.projected, n_probes=33, seed=1)
    assert abs(tr.estimate - exact) <= max(3 * tr.stderr, 1e-9 * exact), (tr.estimate, exact, tr.stderr)
    for seed in range(3):
        r = trace(op, method="hutch++", n_matvecs=60, seed=seed)
        assert abs(r.estimate - exact) <= 3 * r.stderr, (seed, r.estimate, exact, r.stderr)


@pytest.mark.parametrize("kind", ["ggn", "fisher", "empirical_fisher"])
def test_positive_semi_definite(case, kind):
    name, loss, model, x, y, refs = case
    lam = torch.linalg.eigvalsh(refs[kind])
    assert float(lam[0]) >= -1e-10 * max(1.0, float(lam[-1]))
    tol = 1e-6
    low = eigenvalues(_op(kind, model, loss, (x, y)), k=1, which="smallest", tol=tol, max_iter=2000, seed=2)
    assert float(low.values[0]) >= -tol * float(lam[-1]), (float(low.values[0]), float(lam[-1]))


def test_the_hessian_reference_is_indefinite_where_the_gauss_newton_is_not():
    """The semi-definiteness test can fail: the same check on the Hessian of a saddle point does."""
    torch.manual_seed(2)
    model = MLP(4, 3, width=8, depth=2, activation="tanh").double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    x = torch.randn(25, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (25,))
    refs = dense_references(model, x, y, "cross_entropy")
    lam_h = torch.linalg.eigvalsh(refs["hessian"])
    assert float(lam_h[0]) < -0.05 * float(lam_h[-1])
    low = eigenvalues(HessianOperator(model, F.cross_entropy, (x, y)), k=1, which="smallest", tol=1e-6, seed=2)
    assert float(low.values[0]) < -1e-6 * float(lam_h[-1])
    low_g = eigenvalues(GGNOperator(model, F.cross_entropy, (x, y)), k=1, which="smallest", tol=1e-6, seed=2)
    assert float(low_g.values[0]) >= -1e-6 * float(lam_h[-1])


def test_float32_operators_and_the_model_untouched():
    model, x, y = _cnn_bn()
    refs = dense_references(model, x, y, "cross_entropy")
    model.train()  # the operators must use running statistics and leave the flag alone
    V = torch.randn(refs["ggn"].shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for kind in ("ggn", "fisher", "empirical_fisher"):
        op = _op(kind, model, "cross_entropy", (x, y), dtype=torch.float32)
        assert op.dtype == torch.float32
        want = refs[kind] @ V
        assert torch.allclose(op.matmat(V.float()).double(), want, atol=1e-4 * float(want.abs().max())), kind
    assert model.training
    assert next(model.parameters()).dtype == torch.float64


def test_bad_names_are_refused():
    model, x, y = _mlp()
    with pytest.raises(ValueError, match="operator='gauss'.*hessian, ggn, fisher, empirical_fisher"):
        curvature_operator("gauss", model, F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match="fisher' needs a likelihood"):
        curvature_operator("fisher", model, F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match="likelihood='poisson'"):
        FisherOperator(model, F.cross_entropy, (x, y), likelihood="poisson")
    with pytest.raises(ValueError, match="cache='sometimes'"):
        EmpiricalFisherOperator(model, F.cross_entropy, (x, y), cache="sometimes")
    assert OPERATORS == ("hessian", "ggn", "fisher", "empirical_fisher")


# ------------------------------------------------------------------------------------- the hessian family
@pytest.mark.parametrize("kind,loss", [("ggn", "cross_entropy"), ("fisher", "mse"), ("empirical_fisher", "mse")])
def test_hessian_family_with_another_operator_writes_its_own_columns(tmp_path, kind, loss):
    ctx = _ctx(tmp_path, loss)
    settings = OmegaConf.structured(
        Config(enabled=True, operator=kind, eval_samples=120, batch_size=50, dtype="float64", n_top=2, tol=1e-8)
    )
    family = get("hessian")
    res = family.compute(ctx, settings)
    row = res.values
    assert res.error is None and set(row) <= set(family.columns)
    idx = eval_indices(ctx.data.n_train, 120, 0)
    model64 = MLP(5, 3, width=8, depth=1, activation="tanh").double()
    model64.load_state_dict({k: v.double() for k, v in ctx.model.state_dict().items()})
    lam = torch.linalg.eigvalsh(
        dense_references(model64, ctx.data.x_train[idx].double(), ctx.data.y_train[idx], loss)[kind]
    )
    assert row[f"hessian.{kind}_top_eigenvalue"] == pytest.approx(float(lam[-1]), rel=1e-6)
    assert row["hessian.top_eigenvalues"] == pytest.approx(lam.flip(0)[:2].tolist(), rel=1e-6)
    assert abs(row[f"hessian.{kind}_trace"] - float(lam.sum())) <= 3 * row["hessian.trace_stderr"]
    assert row["hessian.psd_min_eigenvalue"] >= -1e-6 * float(lam[-1])
    # nothing lands in the Hessian's columns, and the operator is a settings column of the row
    assert not {"hessian.top_eigenvalue", "hessian.trace", "hessian.min_eigenvalue"} & set(row)
    assert family.settings_values(settings)["hessian.operator"] == kind
    assert family.styles[f"hessian.{kind}_top_eigenvalue"].scale == "log10"


def test_hessian_family_operator_rules():
    family = get("hessian")
    bad = OmegaConf.structured(Config(enabled=True, operator="gauss_newton"))
    (problem,) = family.problems(bad)
    assert problem.startswith("metrics.hessian.operator='gauss_newton': expected one of")
    assert "empirical_fisher" in problem
    dens = OmegaConf.structured(Config(enabled=True, operator="ggn", density=True))
    assert family.problems(dens) == [
        "metrics.hessian.density=true: the density columns are the Hessian's; with metrics.hessian.operator=ggn "
        "expected metrics.hessian.density=false"
    ]
    assert family.problems(OmegaConf.structured(Config(enabled=True, operator="hessian", density=True))) == []
