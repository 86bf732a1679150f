"""Bezier curves, curve training, values along paths, mc/barrier scalars; the cka and connectivity families."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from helpers import gaussian_cell_data, train_settings
from torch import nn

from landscape.connectivity import (
    BezierCurve,
    CurveSettings,
    barrier,
    bernstein,
    evaluate_path,
    mode_connectivity,
    t_grid,
    train_curve,
    trainable_parameters,
)
from landscape.data import CellData
from landscape.metrics import ModelContext, PairContext
from landscape.metrics import cka as cka_family
from landscape.metrics import connectivity as conn_family
from landscape.models import CNN, MLP
from landscape.training import evaluate, make_loss, recompute_bn, train_model


# ------------------------------------------------------------------------------------------------ scalars
def test_mode_connectivity_and_barrier_exact_values():
    assert mode_connectivity([1.0, 3.0, 1.0]) == -2.0  # a bump: barrier
    assert mode_connectivity([2.0, 1.0, 0.5, 2.0]) == 1.5  # a dip below the endpoints
    assert mode_connectivity([4.0, 4.0, 4.0]) == 0.0
    assert mode_connectivity([0.0, 1.0, 2.0]) == 0.0  # linear: the interior point sits at the mean
    assert mode_connectivity([0.0, 3.0, 2.0]) == mode_connectivity([2.0, 3.0, 0.0]) == -2.0  # symmetric in a, b
    assert barrier([0.0, 0.5, 1.0], [0.0, 1.0, 2.0]) == 0.0
    assert barrier([0.0, 0.5, 1.0], [1.0, 3.0, 1.0]) == 2.0
    assert barrier([0.0, 0.25, 1.0], [0.0, 2.0, 4.0]) == 1.0
    assert t_grid(5) == [0.0, 0.25, 0.5, 0.75, 1.0]


def _paper_mc(e):
    """The authors' formula, written out independently: argmax over all points, first maximiser."""
    e = [float(x) for x in e]
    mid = (e[0] + e[-1]) / 2
    dev = [abs(x - mid) for x in e]
    return mid - e[dev.index(max(dev))]


def test_mode_connectivity_endpoint_options_on_the_issue_example():
    up = [0.0, 1.8, 1.9, 2.0]  # monotone, inside the band of its endpoints
    assert mode_connectivity(up) == pytest.approx(-0.9)  # interior: bulge above the endpoints' mean
    assert mode_connectivity(up[::-1]) == pytest.approx(-0.9)  # symmetric in a, b
    assert mode_connectivity(up, endpoints="paper") == pytest.approx(1.0) == _paper_mc(up)
    assert mode_connectivity(up[::-1], endpoints="paper") == pytest.approx(-1.0)  # the sign ambiguity
    assert mode_connectivity(up, endpoints="band") == 0.0 == mode_connectivity(up[::-1], endpoints="band")
    bump = [1.0, 4.0, 3.0]  # leaves the band upwards: barrier 1.0 above the higher endpoint
    assert mode_connectivity(bump) == mode_connectivity(bump, endpoints="paper") == -2.0
    assert mode_connectivity(bump, endpoints="band") == -1.0
    dip = [2.0, 0.5, 1.0]
    assert mode_connectivity(dip) == 1.0 and mode_connectivity(dip, endpoints="band") == 0.5
    # t given: values are sorted by t first
    assert mode_connectivity([10, 10, 16], t=[1, 0, 0.5]) == -6.0
    assert math.isnan(mode_connectivity([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="endpoints='all'"):
        mode_connectivity(up, endpoints="all")


def test_mode_connectivity_equals_the_papers_formula_on_the_published_curves_where_unambiguous():
    import pandas as pd

    curves = pd.read_csv(Path(__file__).parent / "data" / "taxonomy2021" / "curves.csv")
    n_unambiguous = 0
    paper_grid_cells = 0
    for (bs, w), g in curves.groupby(["batch_size", "width"]):
        g = g.sort_values("t")
        assert g["t"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
        e = g["train_err"].to_numpy()
        forward = _paper_mc(e)
        default = mode_connectivity(e, t=g["t"].to_numpy())
        assert default == pytest.approx(mode_connectivity(e[::-1]), abs=1e-12)  # sign-stable under a <-> b
        mid = (e[0] + e[-1]) / 2
        # both endpoints sit at |e(1) - e(0)| / 2 from the mean: the paper's argmax is unambiguous when an
        # interior point lies strictly farther (then its value does not depend on which model is called a)
        if np.abs(e[1:-1] - mid).max() > abs(e[-1] - e[0]) / 2 + 1e-9 or e[0] == e[-1]:
            assert _paper_mc(e[::-1]) == pytest.approx(forward, abs=1e-12)
            n_unambiguous += 1
            assert default == pytest.approx(forward, abs=1e-12), (w, bs)
            assert mode_connectivity(e, endpoints="paper") == pytest.approx(forward, abs=1e-12)
            if w >= 2 and bs in (16, 24, 32, 44, 64, 92, 128, 180, 256, 364, 512, 724, 1024):
                paper_grid_cells += 1
        else:  # ambiguous: the maximiser is an endpoint; the default stays inside half the endpoint gap
            assert abs(default) <= abs(e[-1] - e[0]) / 2
    assert len(curves) == 5 * 210 and n_unambiguous == 209 and paper_grid_cells == 169


def test_protocol_stages_and_stopping_rule():
    from landscape.connectivity import stage_decision, stage_epochs
    from landscape.metrics.connectivity import curve_budget, endpoint_steps, middle_excess

    assert middle_excess([1.0, 3.5, 2.0, 1.5]) == 2.0 and middle_excess([1.0, 0.5, 2.0]) == -1.5
    assert math.isnan(middle_excess([1.0, float("nan"), 1.0]))
    # stages: the first stage's epochs, doubled while the budget stays within max_budget
    assert stage_epochs(30, 1.0, 16.0) == [30, 60, 120, 240, 480]
    assert stage_epochs(15, 0.5, 16.0) == [15, 30, 60, 120, 240, 480]
    assert stage_epochs(7, 2.0, 12.0) == [7, 14, 28]  # budgets 2, 4, 8 (16 > 12)
    assert stage_epochs(5, 1.0, 1.0) == [5] and stage_epochs(0, 1.0, 16.0) == [0]

    def decide(mcs, last=False, **kw):
        d = stage_decision(mcs, 0.25, -0.5, 0.0, last=last, **kw)
        return d.stop, d.converged, d.bound, d.reason

    assert decide([-3.0]) == (False, False, None, None)  # one stage says nothing: train on
    assert decide([-3.0, -2.8]) == (False, False, None, None)  # one small change is not enough
    assert decide([-3.0, -2.8, -2.9]) == (True, True, None, "converged")  # within 0.25 over two doublings
    assert decide([-3.0, -2.8], stable_doublings=1) == (True, True, None, "converged")
    # the demo's batch-256 pair: a change of 0.14 followed by one of 0.63: not converged at the small change
    assert decide([-2.296, -1.044, -0.418, -0.278]) == (False, False, "lower", None)
    assert decide([-3.0, -2.0]) == (False, False, "lower", None)  # still rising, below every threshold
    assert decide([-3.0, -2.0, -0.4]) == (False, False, "lower", None)  # between the thresholds: could go either way
    assert decide([-3.0, -1.0, 0.3]) == (True, False, "lower", "decided")  # rising above both thresholds: decided
    assert decide([-3.0, 0.3]) == (False, False, "lower", None)  # ... but only once seen over two doublings
    assert decide([1.0, 0.5, -0.7]) == (True, False, "upper", "decided")  # falling below both
    assert decide([10.19, -8.04]) == (False, False, "upper", None)  # width 4, batch 1024: an early jump
    assert decide([-3.0, 2.0, 1.0]) == (False, False, None, None)  # up by 4, then down by 1: no direction
    assert decide([1.0, -0.2]) == (False, False, "upper", None)
    assert decide([-3.0, -2.8, -2.6, -2.4])[:2] == (True, True)  # a drift of 0.2 a doubling moves 0.2 when doubled
    assert decide([-3.0, -2.8, -2.4]) == (False, False, "lower", None)  # the last doubling moved 0.4
    assert decide([0.1, 0.5, 0.2]) == (False, False, None, None)  # wobbling: no direction
    assert decide([-3.0, -2.0], last=True) == (True, False, "lower", "max_budget")
    assert decide([-3.0, float("nan")]) == (True, False, None, "diverged")
    assert decide([-3.0, -3.0], diverged=True) == (True, False, None, "diverged")
    assert decide([2.0], last=True) == (True, False, None, "max_budget")  # a single stage cannot converge
    # budget: the endpoints' steps (train.steps, or epochs x steps per epoch) times `budget`
    train = SimpleNamespace(batch_size=64, epochs=30, steps=None)
    assert endpoint_steps(train, 4000) == 30 * 63
    assert endpoint_steps(SimpleNamespace(batch_size="full", epochs=30, steps=None), 4000) == 30
    assert endpoint_steps(SimpleNamespace(batch_size=64, epochs=30, steps=500), 4000) == 500
    cfg = SimpleNamespace(epochs=None, batch_size=None, budget=2.0)
    assert curve_budget(cfg, train, 4000) == (60, 64, 1890)
    assert curve_budget(SimpleNamespace(epochs=None, batch_size=None, budget=1.0), train, 4000) == (30, 64, 1890)
    # batch 128: 32 steps per epoch, ceil(1890 / 32) = 60 epochs
    assert curve_budget(SimpleNamespace(epochs=None, batch_size=128, budget=1.0), train, 4000) == (60, 128, 1890)
    assert curve_budget(SimpleNamespace(epochs=7, batch_size=32, budget=2.0), None, 4000) == (7, 32, None)
    with pytest.raises(ValueError, match="epochs=None"):
        curve_budget(SimpleNamespace(epochs=None, batch_size=32, budget=2.0), None, 4000)


def test_bernstein_basis_and_line_initialised_curves_are_the_line():
    for deg in range(4):
        assert float(bernstein(deg, 0.3).sum()) == pytest.approx(1.0, abs=1e-15)
    g = torch.Generator().manual_seed(0)
    a = {
        "w": torch.randn(3, 4, generator=g, dtype=torch.float64),
        "b": torch.randn(4, generator=g, dtype=torch.float64),
    }
    b = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in a.items()}
    for bends in (0, 1, 3):
        curve = BezierCurve.through_line(a, b, bends)
        for t in (0.0, 0.2, 0.5, 0.9, 1.0):
            p = curve.point(t)
            for k in a:
                torch.testing.assert_close(p[k], (1 - t) * a[k] + t * b[k], rtol=1e-12, atol=1e-12)
        assert all(torch.equal(curve.point(0.0)[k], a[k]) and torch.equal(curve.point(1.0)[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------- double-well problem
S = math.sin(math.radians(20.0))


class RingWell(nn.Module):
    """A 2-parameter 'model' whose output is V(w) = (|w|^2 - 1)^2 + 0.1 (w_2 + s)^2 for every input.

    Two separated minima at angles 200 and -20 degrees on the unit circle (w_2 = -s); the segment between
    them crosses the disc (V ~ 0.78 in the middle), the arc below it stays near the ring (V <= 0.05).
    """

    def __init__(self, w: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r2 = self.w.pow(2).sum()
        v = (r2 - 1.0) ** 2 + 0.1 * (self.w[1] + S) ** 2
        return v.expand(x.shape[0], 1)


def _mean_output(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


def _ring_models() -> tuple[RingWell, RingWell]:
    c = math.cos(math.radians(20.0))
    return RingWell((-c, -S)), RingWell((c, -S))


def test_double_well_line_has_a_barrier_and_the_trained_curve_finds_a_lower_path():
    a, b = _ring_models()
    x, y = torch.zeros(64, 1, dtype=torch.float64), torch.zeros(64, dtype=torch.long)
    ts = t_grid(21)
    start, end = trainable_parameters(a), trainable_parameters(b)
    line = evaluate_path(BezierCurve.through_line(start, end, 0).point, RingWell(), x, y, _mean_output, ts)
    line_barrier = barrier(ts, line.train_loss)
    assert line_barrier > 0.7

    for init in ("line", "random"):
        if init == "line":
            curve = BezierCurve.through_line(start, end, 1)
        else:
            curve = BezierCurve.from_points(start, end, [{"w": torch.tensor([0.3, 0.4], dtype=torch.float64)}])
        s = CurveSettings(epochs=40, lr=0.1, momentum=0.9, batch_size=16, schedule="cosine")
        res = train_curve(curve, RingWell(), x, y, _mean_output, s, seed=0)
        assert res.steps == 160 and res.history[-1] < res.history[0]
        vals = evaluate_path(curve.point, RingWell(), x, y, _mean_output, ts)
        assert barrier(ts, vals.train_loss) < 0.15 * line_barrier
        assert mode_connectivity(vals.train_loss) > -0.15 * line_barrier
        # endpoints are the trained models, bitwise, after training
        assert torch.equal(curve.point(0.0)["w"], a.w.detach()) and torch.equal(curve.point(1.0)["w"], b.w.detach())
        assert torch.equal(curve.start["w"], a.w.detach()) and torch.equal(curve.end["w"], b.w.detach())


def test_curve_training_resumes_bitwise_and_does_not_retrain(tmp_path: Path):
    a, b = _ring_models()
    x, y = torch.zeros(40, 1, dtype=torch.float64), torch.zeros(40, dtype=torch.long)
    s = CurveSettings(epochs=6, lr=0.05, batch_size=8, checkpoint_every=1)

    def fresh() -> BezierCurve:
        return BezierCurve.through_line(trainable_parameters(a), trainable_parameters(b), 2)

    ref = fresh()
    ref_res = train_curve(ref, RingWell(), x, y, _mean_output, s, seed=3)

    class Killed(Exception):
        pass

    def kill_at_3(epoch: int, epochs: int, loss: float) -> None:
        if epoch == 3:
            raise Killed

    work = tmp_path / "curve"
    with pytest.raises(Killed):
        train_curve(fresh(), RingWell(), x, y, _mean_output, s, seed=3, workdir=work, progress=kill_at_3)
    assert (work / "curve_checkpoint.pt").exists()
    resumed = fresh()
    res = train_curve(resumed, RingWell(), x, y, _mean_output, s, seed=3, workdir=work)
    assert res.resumed_from_epoch == 3 and res.epochs_run == 3
    assert torch.equal(resumed.middle["w"], ref.middle["w"])
    assert res.history == ref_res.history
    again = fresh()
    res2 = train_curve(again, RingWell(), x, y, _mean_output, s, seed=3, workdir=work)
    assert res2.epochs_run == 0 and torch.equal(again.middle["w"], ref.middle["w"])


# ------------------------------------------------------------------------------------ real small models
def _train(model: nn.Module, data: CellData, seed: int, workdir: Path, epochs: int = 15) -> nn.Module:
    train_model(
        model,
        data.x_train,
        data.y_train,
        train_settings(epochs=epochs, checkpoint_every=100),
        seed=seed,
        workdir=workdir,
    )
    return model.eval()


def _mlp(seed: int) -> MLP:
    torch.manual_seed(seed)
    return MLP(8, 3, width=16, depth=1)


def test_curve_between_a_model_and_itself_has_zero_mode_connectivity(tmp_path: Path):
    data = gaussian_cell_data()
    loss_fn = make_loss("cross_entropy")
    model = _train(_mlp(0), data, 0, tmp_path / "m")
    p = trainable_parameters(model)
    ts = t_grid(5)
    untrained = BezierCurve.through_line(p, p, 1)
    v = evaluate_path(untrained.point, _mlp(9), data.x_train, data.y_train, loss_fn, ts)
    assert mode_connectivity(v.train_err) == 0.0
    assert abs(mode_connectivity(v.train_loss)) < 1e-6  # (1 - t) p + t p = p up to float32 round-off
    trained = BezierCurve.through_line(p, p, 1)
    train_curve(trained, _mlp(9), data.x_train, data.y_train, loss_fn, CurveSettings(epochs=2, lr=0.01), seed=0)
    v = evaluate_path(trained.point, _mlp(9), data.x_train, data.y_train, loss_fn, ts)
    assert v.train_err[0] == v.train_err[-1]
    assert abs(mode_connectivity(v.train_err)) <= 100.0 / data.n_train + 1e-9  # at most one sample flips
    assert abs(mode_connectivity(v.train_loss)) < 0.02 * max(v.train_loss[0], 1e-3) + 1e-3


def test_batchnorm_statistics_are_recomputed_at_every_t():
    data = gaussian_cell_data(offset=3.0)  # inputs far from zero mean: BN statistics matter
    loss_fn = make_loss("cross_entropy")
    torch.manual_seed(0)
    a = CNN((8,), 3, width=4, depth=1, batch_norm=True)
    torch.manual_seed(1)
    b = CNN((8,), 3, width=4, depth=1, batch_norm=True)
    template = copy.deepcopy(a)
    bn = template.features[2]
    assert isinstance(bn, nn.BatchNorm1d)
    with torch.no_grad():  # stale statistics that a path evaluation must not use
        bn.running_mean.fill_(-7.0)
        bn.running_var.fill_(0.01)
    stale_loss, _ = evaluate(template, data.x_train, data.y_train, loss_fn)
    curve = BezierCurve.through_line(trainable_parameters(a), trainable_parameters(b), 1)
    v = evaluate_path(curve.point, template, data.x_train, data.y_train, loss_fn, [0.0, 0.5])
    # template now holds the statistics of theta(0.5): the exact mean of the BN inputs over the training set
    ref = copy.deepcopy(a)
    for (_n, p), q in zip(ref.named_parameters(), curve.point(0.5).values(), strict=True):
        p.data.copy_(q)
    with torch.no_grad():
        pre_bn = ref.features[1](ref.features[0](data.x_train))  # conv output [n, C, L]
    torch.testing.assert_close(bn.running_mean, pre_bn.mean(dim=(0, 2)), rtol=1e-4, atol=1e-5)
    # at t = 0 the value is that of model a with statistics recomputed on the training inputs
    fresh_a = copy.deepcopy(a)
    recompute_bn(fresh_a, data.x_train)
    expected, _ = evaluate(fresh_a, data.x_train, data.y_train, loss_fn)
    assert v.train_loss[0] == pytest.approx(expected, rel=1e-6)
    assert abs(stale_loss - expected) > 0.1  # the stale statistics would have given another number


# ------------------------------------------------------------------------------------------- families
@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> PairContext:
    root = tmp_path_factory.mktemp("pair")
    data = gaussian_cell_data()
    loss_fn = make_loss("cross_entropy")
    ctxs = []
    for seed in (0, 1):
        model = _train(_mlp(seed), data, seed, root / f"seed{seed}")
        ctxs.append(
            ModelContext(
                model=model,
                seed=seed,
                data=data,
                loss_fn=loss_fn,
                make_model=lambda: _mlp(99),
                cfg=None,
                device=torch.device("cpu"),
                workdir=root / f"w{seed}",
            )
        )
    return PairContext(a=ctxs[0], b=ctxs[1], workdir=root / "pair")


def _row_table(columns: dict, row: dict) -> pa.Table:
    assert set(row) <= set(columns), set(row) - set(columns)
    schema = pa.schema([(k, t) for k, t in columns.items()])
    return pa.Table.from_pylist([{k: row.get(k) for k in columns}], schema=schema)


def _linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA written out in feature space: ||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F), float64."""
    Xc, Yc = X.double() - X.double().mean(0), Y.double() - Y.double().mean(0)
    return float((Yc.T @ Xc).norm() ** 2 / ((Xc.T @ Xc).norm() * (Yc.T @ Yc).norm()))


def test_cka_family_compute(pair: PairContext):
    cfg = cka_family.Config(enabled=True, n_samples=64)
    res = cka_family.FAMILY.compute(pair, cfg)
    row = res.values
    _row_table(cka_family.FAMILY.columns, row)
    assert res.error is None and row["cka.n_samples"] == 64 and row["cka.debiased"] is False
    # independent: the same 64 test inputs (seed 0, drawn order), softmax outputs, CKA written out
    idx = torch.from_numpy(np.random.default_rng(0).permutation(pair.a.data.x_test.shape[0])[:64])
    x = pair.a.data.x_test[idx]
    with torch.no_grad():
        fa, fb = (torch.softmax(m.model(x).double(), -1) for m in (pair.a, pair.b))
    assert row["cka"] == pytest.approx(_linear_cka(fa, fb), rel=1e-9)
    # two seeds: not the same representation (0.9993 on this easy gaussian problem; the same model gives 1 - 1e-12)
    assert row["cka"] < 1.0 - 1e-4
    same = PairContext(a=pair.a, b=pair.a, workdir=pair.workdir)
    assert cka_family.FAMILY.compute(same, cfg).values["cka"] == pytest.approx(1.0, abs=1e-12)
    mb = cka_family.FAMILY.compute(
        pair,
        cka_family.Config(
            enabled=True, probe="mixup", n_samples=96, batch_size=32, kernel="rbf", features="layer", layer="net.2"
        ),
    ).values
    assert mb["cka.debiased"] is True and -0.1 < mb["cka"] <= 1.0
    with pytest.raises(ValueError, match="metrics.cka.kernel='poly'"):
        cka_family.FAMILY.compute(pair, cka_family.Config(kernel="poly"))


def test_cka_family_collapsed_model_is_null_with_reason(pair: PairContext):
    """A model with constant outputs (a collapsed network): cka is None and the error names the model."""
    dead = copy.deepcopy(pair.b.model)
    with torch.no_grad():
        for p in dead.parameters():
            p.zero_()
    b = dataclasses.replace(pair.b, model=dead)
    res = cka_family.FAMILY.compute(PairContext(pair.a, b, pair.workdir), cka_family.Config(enabled=True, n_samples=64))
    assert res.values["cka"] is None
    assert res.error.startswith("CKA undefined: model 1: biased self-HSIC") and "zero variance" in res.error


def test_connectivity_family_compute_and_resume(pair: PairContext):
    cfg = conn_family.Config(
        enabled=True, epochs=3, batch_size=32, n_points=5, budget=1.0, max_budget=2.0, stable_doublings=1
    )
    row = conn_family.FAMILY.compute(pair, cfg).values
    _row_table(conn_family.FAMILY.columns, row)
    assert row["connectivity.t"] == [0.0, 0.25, 0.5, 0.75, 1.0] == row["connectivity.line_t"]
    for key in ("curve_train_loss", "curve_train_err", "curve_test_loss", "curve_test_err", "line_train_loss"):
        assert len(row[f"connectivity.{key}"]) == 5
    # independent: the straight line rebuilt from the two models' weights, losses by a plain forward pass
    line_losses = []
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        m = copy.deepcopy(pair.a.model)
        sa, sb = pair.a.model.state_dict(), pair.b.model.state_dict()
        m.load_state_dict({k: (1 - t) * sa[k] + t * sb[k] for k in sa})
        with torch.no_grad():
            line_losses.append(float(torch.nn.functional.cross_entropy(m(pair.a.data.x_train), pair.a.data.y_train)))
    assert row["connectivity.line_train_loss"] == pytest.approx(line_losses, rel=1e-5)
    chord = [(1 - t) * line_losses[0] + t * line_losses[-1] for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert row["connectivity.barrier"] == pytest.approx(
        max(v - c for v, c in zip(line_losses, chord, strict=True)), rel=1e-5
    )
    assert row["connectivity.curve_barrier"] == pytest.approx(
        max(
            v - ((1 - t) * row["connectivity.curve_train_loss"][0] + t * row["connectivity.curve_train_loss"][-1])
            for t, v in zip(row["connectivity.t"], row["connectivity.curve_train_loss"], strict=True)
        ),
        rel=1e-12,
    )
    # the endpoints of both paths are the two models (BN-free: exact evaluation)
    assert row["connectivity.line_train_loss"][0] == row["connectivity.curve_train_loss"][0]
    assert row["connectivity.curve_train_loss"][-1] == pytest.approx(
        evaluate(pair.b.model, pair.a.data.x_train, pair.a.data.y_train, pair.a.loss_fn)[0], rel=1e-9
    )
    assert row["connectivity.mc"] == mode_connectivity(row["connectivity.curve_train_err"])
    # two stages (budget 1, max 2): 3 epochs, then 3 more continuing them; mc after each
    assert row["connectivity.epochs"] == 3 and len(row["connectivity.curve_history"]) == 6
    assert row["connectivity.budgets"] == [1.0, 2.0] and row["connectivity.final_budget"] == 2.0
    assert row["connectivity.mc_by_budget"][-1] == row["connectivity.mc"]
    moved = abs(row["connectivity.mc_by_budget"][1] - row["connectivity.mc_by_budget"][0])
    assert row["connectivity.converged"] == (moved <= cfg.converge_tol)
    assert row["connectivity.mc_bound"] == (
        None
        if row["connectivity.converged"]
        else ("lower" if row["connectivity.mc_by_budget"][1] > row["connectivity.mc_by_budget"][0] else "upper")
    )
    assert (pair.workdir / "curve" / "curve_final.pt").exists() and (
        pair.workdir / "curve_stage1" / "curve_final.pt"
    ).exists()
    again = conn_family.FAMILY.compute(pair, cfg).values  # loads the trained curve: same numbers
    assert again["connectivity.curve_train_loss"] == row["connectivity.curve_train_loss"]
    assert again["connectivity.curve_history"] == row["connectivity.curve_history"]
    rnd = conn_family.FAMILY.compute(
        PairContext(pair.a, pair.b, pair.workdir / "random"),
        conn_family.Config(
            enabled=True,
            epochs=1,
            batch_size=32,
            n_points=3,
            init="random",
            line=False,
            test=False,
            bends=2,
            budget=1.0,
            max_budget=1.0,
        ),
    ).values
    assert rnd["connectivity.curve_test_err"] is None and "connectivity.barrier" not in rnd
    with pytest.raises(ValueError, match="metrics.connectivity.init='zero'"):
        conn_family.FAMILY.compute(PairContext(pair.a, pair.b, pair.workdir / "x"), conn_family.Config(init="zero"))


# ------------------------------------------------------------------------------------- through the CLI
@pytest.mark.parametrize(
    "num_samples",
    [
        pytest.param(5000, marks=pytest.mark.slow, id="issue-size"),  # 4000 training samples, as in the issue
        pytest.param(2500, id="2000-samples"),  # the default suite's faster variant
    ],
)
def test_curve_budget_follows_the_endpoints_and_a_short_curve_is_flagged_through_the_cli(cli, tmp_path, num_samples):
    """MNIST-1D, MLP of width 256 trained 30 epochs, two seeds: the protocol's first stage gets half the endpoints'
    steps, the next as many again (max_budget 1 here: two stages, which cannot converge), each recorded. The same
    pair with an explicit 3-epoch first stage stays far above its endpoints: its middle excess is recorded per
    stage and the row says it did not converge."""
    from landscape.results.io import load

    base = [
        "-m",
        "data=mnist1d",
        f"data.num_samples={num_samples}",
        "model.width=256",
        "train.epochs=30",
        "metrics.connectivity.enabled=true",
        "metrics.connectivity.max_budget=1",
    ]
    cli([*base, "hydra.sweep.dir=full"])
    cli([*base, "hydra.sweep.dir=short", "metrics.connectivity.epochs=3"])
    full, short = (load(tmp_path / d, "pairs").iloc[0] for d in ("full", "short"))
    # 4000 (2000) samples at batch 64: 63 (32) steps per epoch, times 30 epochs; the curve 0.5x then 1x that
    per_epoch = {5000: 63, 2500: 32}[num_samples]
    assert full["connectivity.endpoint_steps"] == 30 * per_epoch and full["connectivity.epochs"] == 15
    assert list(full["connectivity.budgets"]) == [0.5, 1.0] and full["connectivity.steps"] == 30 * per_epoch
    assert len(full["connectivity.curve_history"]) == 30 and full["connectivity.curve_final_loss"] > 0
    assert (
        full["connectivity.mc"]
        == full["connectivity.mc_by_budget"][-1]
        == mode_connectivity(full["connectivity.curve_train_err"])
    )
    assert not full["connectivity.converged"] and full["connectivity.stop_reason"] == "max_budget"
    assert pd.isna(full["connectivity.error"])  # not converged is a bound or unknown, not a failure
    # the explicit 3-epoch first stage: 3 then 6 epochs (budgets 0.1, 0.2 of the endpoints' 30 epochs)
    assert list(short["connectivity.budgets"]) == [0.1, 0.2] and len(short["connectivity.curve_history"]) == 6
    assert short["connectivity.middle_excess_by_budget"][0] > 2.0 and not short["connectivity.converged"]
    # the straight line is the same in both rows, and has a barrier the curve avoids
    assert short["connectivity.barrier_error"] == full["connectivity.barrier_error"] > 10.0


def test_the_papers_fixed_budget_is_one_unchecked_curve(pair: PairContext):
    """protocol=fixed (the taxonomy sweeps'): one curve of the given budget, mc as measured, converged null."""
    cfg = conn_family.Config(enabled=True, epochs=2, batch_size=32, protocol="fixed", line=False, test=False)
    row = conn_family.FAMILY.compute(PairContext(pair.a, pair.b, pair.workdir / "fixed"), cfg).values
    _row_table(conn_family.FAMILY.columns, row)
    assert row["connectivity.converged"] is None and row["connectivity.stop_reason"] == "fixed"
    assert row["connectivity.budgets"] == [1.0] and len(row["connectivity.curve_history"]) == 2
    assert row["connectivity.mc"] == mode_connectivity(row["connectivity.curve_train_err"])
    assert row["connectivity.mc_bound"] is None


def test_a_diverged_curve_gives_a_null_mc_with_the_reason(pair: PairContext):
    cfg = conn_family.Config(enabled=True, epochs=2, batch_size=32, lr=1e8, momentum=0.0, line=False, test=False)
    res = conn_family.FAMILY.compute(PairContext(pair.a, pair.b, pair.workdir / "diverged"), cfg)
    row = res.values
    _row_table(conn_family.FAMILY.columns, row)
    assert "diverged" in res.error
    assert len(row["connectivity.curve_history"]) < 2  # the engine stopped the curve at its divergence
    assert row["connectivity.mc"] is None and row["connectivity.mc_loss"] is None
    assert row["connectivity.converged"] is False and row["connectivity.mc_bound"] is None
    assert row["connectivity.stop_reason"] == "diverged" and row["connectivity.budgets"] == [1.0]  # not trained on


@pytest.mark.parametrize(
    "key, value",
    [
        ("mc_endpoints", "all"),
        ("epochs", -1),
        ("batch_size", 0),
        ("budget", 0.0),
        ("max_budget", 0.25),
        ("converge_tol", -1.0),
        ("stable_doublings", 0),
        ("n_points", 2),
        ("decided_below", 1.0),
        ("decided_above", math.inf),
        ("protocol", "once"),
    ],
)
def test_bad_connectivity_settings_are_named(key, value):
    """The contract's check (each field's rule, then the family's cross-field ``check``) names each bad key once."""
    problems = conn_family.FAMILY.problems(conn_family.Config(**{key: value}))
    assert len(problems) == 1 and problems[0].startswith(f"metrics.connectivity.{key}={value!r}: expected"), problems


def test_zero_epochs_is_the_untrained_curve_not_an_error_of_the_settings(pair: PairContext):
    """``epochs = 0`` is allowed (planning accepts it): the curve is evaluated untrained, mc is null with the
    reason and ``stop_reason = untrained``; a negative count is refused by ``compute`` itself, naming the key."""
    cfg = conn_family.Config(enabled=True, epochs=0, batch_size=32, line=False, test=False)
    res = conn_family.FAMILY.compute(PairContext(pair.a, pair.b, pair.workdir / "untrained"), cfg)
    row = res.values
    _row_table(conn_family.FAMILY.columns, row)
    assert row["connectivity.stop_reason"] == "untrained" and row["connectivity.mc"] is None
    assert res.error == "curve not trained (metrics.connectivity.epochs=0): no mode connectivity"
    assert row["connectivity.epochs"] == 0 and row["connectivity.curve_history"] == []
    with pytest.raises(ValueError, match=r"^metrics.connectivity.epochs=-1: expected null or an integer >= 0"):
        conn_family.FAMILY.compute(
            PairContext(pair.a, pair.b, pair.workdir / "negative"), dataclasses.replace(cfg, epochs=-1)
        )


def test_family_defaults_evaluate_the_grid_the_thresholds_were_fitted_on():
    from landscape.connectivity import PAPER_T_GRID

    cfg = conn_family.Config()
    assert t_grid(cfg.n_points) == list(PAPER_T_GRID) and cfg.mc_endpoints == "interior"
    assert conn_family.FAMILY.problems(conn_family.Config(converge_tol=100.0)) == []  # the paper's unchecked curves


# --------------------------------------------------------------------------------- curves trained together
def test_curves_trained_together_equal_curves_trained_alone_and_leave_their_files(tmp_path: Path):
    """Three curves (weight decay, momentum, two bends) trained as one stack end where each one trained alone by
    ``train_curve`` ends (within float rounding; here bitwise), write the final file a serial run loads without
    training, and a stack stopped mid-epoch resumes bitwise; a curve with a serial checkpoint of its own is
    resumed alone, one already finished is loaded."""
    from landscape.connectivity import CURVE_CHECKPOINT, train_curves_together
    from landscape.engine import StopRequested

    data = gaussian_cell_data()
    x, y, loss_fn = data.x_train, data.y_train, make_loss("cross_entropy")
    models = [_mlp(s) for s in range(3)]
    names = {"0-1": (0, 1), "0-2": (0, 2), "1-2": (1, 2)}
    seeds = {"0-1": 11, "0-2": 12, "1-2": 13}
    s = CurveSettings(epochs=4, lr=0.1, momentum=0.9, weight_decay=1e-3, batch_size=32, schedule="cosine")

    def curves() -> dict[str, BezierCurve]:
        return {
            n: BezierCurve.through_line(trainable_parameters(models[i]), trainable_parameters(models[j]), 2)
            for n, (i, j) in names.items()
        }

    alone = curves()
    ref = {n: train_curve(alone[n], _mlp(99), x, y, loss_fn, s, seeds[n]) for n in names}
    init = curves()
    stacked = curves()
    dirs = {n: tmp_path / "stack" / n for n in names}
    res = train_curves_together(stacked, _mlp(99), x, y, loss_fn, s, seeds, dirs, tmp_path / "stack" / "group")
    for n in names:
        assert (stacked[n].middle_flat - init[n].middle_flat).abs().max() > 1e-2  # it trained
        torch.testing.assert_close(stacked[n].middle_flat, alone[n].middle_flat, rtol=1e-5, atol=1e-6)
        assert res[n].history == pytest.approx(ref[n].history, rel=1e-5) and res[n].steps == ref[n].steps
        again = curves()[n]
        loaded = train_curve(again, _mlp(99), x, y, loss_fn, s, seeds[n], dirs[n])
        assert loaded.epochs_run == 0 and torch.equal(again.middle_flat, stacked[n].middle_flat)
    assert not (tmp_path / "stack" / "group" / CURVE_CHECKPOINT).exists()

    # stopped after 10 steps of the stack, then run again: bitwise the uninterrupted stack
    polls = [0]

    def stop_at_10() -> bool:
        polls[0] += 1
        return polls[0] == 10

    dirs2 = {n: tmp_path / "stop" / n for n in names}
    with pytest.raises(StopRequested):
        train_curves_together(
            curves(), _mlp(99), x, y, loss_fn, s, seeds, dirs2, tmp_path / "stop" / "group", should_stop=stop_at_10
        )
    assert (tmp_path / "stop" / "group" / CURVE_CHECKPOINT).exists()
    resumed = curves()
    train_curves_together(resumed, _mlp(99), x, y, loss_fn, s, seeds, dirs2, tmp_path / "stop" / "group")
    for n in names:
        assert torch.equal(resumed[n].middle_flat, stacked[n].middle_flat), n

    # mixed: 0-1 finished alone, 0-2 stopped alone (its own checkpoint), 1-2 new
    dirs3 = {n: tmp_path / "mixed" / n for n in names}
    train_curve(curves()["0-1"], _mlp(99), x, y, loss_fn, s, seeds["0-1"], dirs3["0-1"])
    polls[0] = 0
    with pytest.raises(StopRequested):
        train_curve(curves()["0-2"], _mlp(99), x, y, loss_fn, s, seeds["0-2"], dirs3["0-2"], should_stop=stop_at_10)
    mixed = curves()
    out = train_curves_together(mixed, _mlp(99), x, y, loss_fn, s, seeds, dirs3, tmp_path / "mixed" / "group")
    assert out["0-1"].epochs_run == 0 and out["0-2"].resumed_from_epoch > 0
    for n in names:
        torch.testing.assert_close(mixed[n].middle_flat, alone[n].middle_flat, rtol=1e-5, atol=1e-6)


def test_connectivity_prepare_trains_the_pairs_together_and_compute_only_evaluates(tmp_path: Path):
    """The family's ``prepare`` runs the protocol for three pairs as stacks; each pair's ``compute`` afterwards
    trains nothing (its stage files are loaded) and reports the mc by budget a pair computed alone reports."""
    data = gaussian_cell_data()
    loss_fn = make_loss("cross_entropy")
    cfg_train = SimpleNamespace(train=SimpleNamespace(batch_size=32, epochs=2, steps=None, vectorize="auto"))
    ctxs = {}
    for seed in (0, 1, 2):
        model = _train(_mlp(seed), data, seed, tmp_path / f"seed{seed}", epochs=4)
        ctxs[seed] = ModelContext(
            model=model,
            seed=seed,
            data=data,
            loss_fn=loss_fn,
            make_model=lambda: _mlp(99),
            cfg=cfg_train,
            device=torch.device("cpu"),
            workdir=tmp_path,
        )
    cfg = conn_family.Config(enabled=True, budget=0.5, max_budget=4.0, test=False, line=False)
    pairs = [PairContext(ctxs[a], ctxs[b], tmp_path / "prepared" / f"{a}-{b}") for a, b in ((0, 1), (0, 2), (1, 2))]
    conn_family.prepare(pairs, cfg, tmp_path / "prepared" / "stack")
    stages = sorted(p.name for p in (tmp_path / "prepared" / "0-1").iterdir())
    assert stages[0] == "curve" and all((tmp_path / "prepared" / "0-1" / d / "curve_final.pt").exists() for d in stages)
    for p in pairs:
        polls = [0]

        def count() -> bool:
            polls[0] += 1  # noqa: B023 (called within this iteration)
            return False

        a = dataclasses.replace(p.a, should_stop=count)
        got = conn_family.FAMILY.compute(PairContext(a, p.b, p.workdir), cfg).values
        assert polls[0] == 0  # not one training step: every stage was loaded
        alone = conn_family.FAMILY.compute(PairContext(p.a, p.b, tmp_path / "alone" / p.workdir.name), cfg).values
        assert got["connectivity.budgets"] == alone["connectivity.budgets"]
        assert got["connectivity.mc_by_budget"] == pytest.approx(alone["connectivity.mc_by_budget"], abs=0.5)
        assert got["connectivity.stop_reason"] == alone["connectivity.stop_reason"]
