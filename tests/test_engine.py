"""The training engine through the curve and jump-and-retrain loops: schedules, weight decay, divergence,
stop requests and resume (the model and stacked-seed loops are tested in test_training / test_vectorized)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import record_sgd_lr
from torch import nn

from landscape import engine
from landscape.connectivity import BezierCurve, CurveSettings, train_curve
from landscape.params import trainable_parameters
from landscape.training import StopRequested, make_loss


class Linear1(nn.Module):
    """``f(x) = w . x`` with ``w [2]`` (float64)."""

    def __init__(self, w=(0.0, 0.0)):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def _zero_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.0 * out.sum()


def test_curve_weight_decay_is_the_penalty_on_the_point_of_the_curve():
    # all control points at v: theta(t) = v for every t; with a zero data loss the only gradient is the penalty's,
    # d/dP1 [wd/2 |theta(t)|^2] = wd * 2 t (1 - t) * theta(t), so one plain SGD step scales P1 by 1 - lr wd 2t(1-t)
    v = {"w": torch.tensor([0.3, -1.2], dtype=torch.float64)}
    x, y = torch.zeros(10, 2, dtype=torch.float64), torch.zeros(10, dtype=torch.long)
    lr, wd, seed = 0.5, 0.2, 11
    for decay in (wd, 0.0):
        curve = BezierCurve.from_points(v, v, [v])
        s = CurveSettings(epochs=1, lr=lr, momentum=0.0, weight_decay=decay, batch_size=10, schedule="constant")
        train_curve(curve, Linear1(), x, y, _zero_loss, s, seed=seed)
        g = torch.Generator().manual_seed(seed)  # the documented draws: the epoch's permutation, then its t values
        torch.randperm(10, generator=g)
        t = float(torch.rand(1, generator=g, dtype=torch.float64))
        expected = v["w"] * (1 - lr * decay * 2 * t * (1 - t))
        torch.testing.assert_close(curve.middle["w"][0], expected, rtol=1e-14, atol=0)
        if decay:
            assert not torch.equal(curve.middle["w"][0], v["w"])


@pytest.mark.parametrize(
    "schedule,factors",
    [
        ("constant", [1.0] * 10),
        ("cosine", [(1 + math.cos(math.pi * e / 10)) / 2 for e in range(10)]),
        ("garipov", [1, 1, 1, 1, 1, 1, 0.7525, 0.505, 0.2575, 0.01]),  # 1 to half-way, linear to 0.01 at 90 %
    ],
)
def test_curve_schedule_sets_the_learning_rate_at_each_step(monkeypatch, schedule, factors):
    a, b = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}, {"w": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    x, y = torch.randn(20, 2, dtype=torch.float64), torch.zeros(20, dtype=torch.long)
    seen = record_sgd_lr(monkeypatch)
    s = CurveSettings(epochs=10, lr=0.3, batch_size=10, schedule=schedule)
    res = train_curve(BezierCurve.through_line(a, b, 1), Linear1(), x, y, lambda o, t: (o**2).mean(), s, seed=0)
    assert res.steps == 20 and res.status == "done" and not res.diverged
    assert seen == pytest.approx([0.3 * f for f in factors for _ in range(2)], rel=1e-12, abs=1e-15)


def test_a_diverging_curve_is_reported_as_diverged(tmp_path: Path):
    # MSE on a two-layer network at lr 10: the loss grows geometrically (finite blow-up or inf)
    torch.manual_seed(0)
    a, b = (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double() for _ in range(2))
    x = torch.randn(64, 4, dtype=torch.float64) * 5
    y = torch.randint(0, 3, (64,))
    curve = BezierCurve.through_line(trainable_parameters(a), trainable_parameters(b), 1)
    s = CurveSettings(epochs=20, lr=10.0, momentum=0.9, batch_size=16, schedule="constant")
    res = train_curve(curve, a, x, y, make_loss("mse"), s, seed=0, workdir=tmp_path)
    assert res.diverged and res.status == "diverged" and res.reason and res.steps < 20 * 4
    again = train_curve(
        BezierCurve.through_line(trainable_parameters(a), trainable_parameters(b), 1),
        a,
        x,
        y,
        make_loss("mse"),
        s,
        seed=0,
        workdir=tmp_path,
    )
    assert again.diverged and again.epochs_run == 0  # the diverged result is kept with its status
    ok = train_curve(
        BezierCurve.through_line(trainable_parameters(a), trainable_parameters(b), 1),
        a,
        x,
        y,
        make_loss("mse"),
        CurveSettings(epochs=2, lr=0.001, batch_size=16),
        seed=0,
    )
    assert ok.status == "done"


def test_curve_stop_request_mid_epoch_resumes_bitwise(tmp_path: Path):
    a, b = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}, {"w": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    x, y = torch.randn(30, 2, dtype=torch.float64), torch.zeros(30, dtype=torch.long)
    s = CurveSettings(epochs=4, lr=0.1, batch_size=7, checkpoint_every=2)  # 4 batches per epoch (7, 7, 7, 7, 2)
    loss = lambda o, t: ((o - 1) ** 2).mean()  # noqa: E731 - a one-line helper used on the next lines
    ref = BezierCurve.through_line(a, b, 2)
    rref = train_curve(ref, Linear1(), x, y, loss, s, seed=4)
    calls = {"n": 0}

    def stop() -> bool:  # in the middle of the third epoch
        calls["n"] += 1
        return calls["n"] == 12

    with pytest.raises(StopRequested):
        train_curve(
            BezierCurve.through_line(a, b, 2), Linear1(), x, y, loss, s, seed=4, workdir=tmp_path, should_stop=stop
        )
    state = engine.load_checkpoint(tmp_path / "curve_checkpoint.pt")
    assert (state["engine"]["epoch"], state["engine"]["batch"], state["engine"]["step"]) == (2, 2, 12)
    resumed = BezierCurve.through_line(a, b, 2)
    res = train_curve(resumed, Linear1(), x, y, loss, s, seed=4, workdir=tmp_path)
    assert torch.equal(resumed.middle_flat, ref.middle_flat) and res.history == rref.history
    assert res.resumed_from_epoch == 2 and res.steps == rref.steps == 20


def test_jump_retrain_divergence_ends_that_jump(monkeypatch):
    from types import SimpleNamespace

    from landscape.trajectories.jump_retrain import JumpRetrainSettings, jump_and_retrain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 4, generator=g), torch.randint(0, 3, (60,), generator=g)
    data = SimpleNamespace(x_train=x, y_train=y, x_test=x, y_test=y, n_train=60)
    s = JumpRetrainSettings(
        n_jumps=1,
        scales=(0.5,),
        epochs=3,
        lr=1e6,
        batch_size=20,
        record_every=1,
        projection_dim=4,
        eval_samples=0,
        embedding="pca",
    )
    traj = jump_and_retrain(model, make_loss("cross_entropy"), data, s)
    steps = [r["step"] for r in traj.rows if r["jump"] == 0]
    assert steps[-1] < 9  # stopped before the 9 planned steps (3 epochs of 3 batches)
    s.lr = 0.01
    traj = jump_and_retrain(model, make_loss("cross_entropy"), data, s)
    assert [r["step"] for r in traj.rows if r["jump"] == 0] == list(range(10))


def test_plan_and_batching_rule():
    assert engine.steps_per_epoch(200, 32) == 7 and engine.steps_per_epoch(193, 32) == 6  # 1 left over: dropped
    assert engine.Plan(epochs=4, per_epoch=7, total_steps=10).steps == 10
    assert engine.lr_factor("step", 3, 4, 0.5, [1, 3]) == 0.25
    with pytest.raises(ValueError, match="schedule='nope'"):
        engine.lr_factor("nope", 0, 1)


def test_damaged_curve_result_is_recomputed_bitwise_and_a_crafted_one_refused(tmp_path: Path, caplog):
    import logging

    a, b = {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)}, {"w": torch.tensor([0.0, 1.0], dtype=torch.float64)}
    x, y = torch.randn(30, 2, dtype=torch.float64), torch.zeros(30, dtype=torch.long)
    s = CurveSettings(epochs=2, lr=0.1, batch_size=7)
    loss = lambda o, t: ((o - 1) ** 2).mean()  # noqa: E731 - a one-line helper used on the next lines
    ref = BezierCurve.through_line(a, b, 1)
    train_curve(ref, Linear1(), x, y, loss, s, seed=4, workdir=tmp_path)
    final = tmp_path / "curve_final.pt"
    raw = bytearray(final.read_bytes())
    at = raw.find(ref.middle_flat.detach().numpy().tobytes())
    assert at > 0
    raw[at + 3] ^= 0x01  # the file still loads, with a wrong middle point
    final.write_bytes(bytes(raw))
    again = BezierCurve.through_line(a, b, 1)
    with caplog.at_level(logging.WARNING, logger="landscape.engine"):
        res = train_curve(again, Linear1(), x, y, loss, s, seed=4, workdir=tmp_path)
    assert any("curve_final.pt: checksum mismatch" in r.getMessage() for r in caplog.records)
    assert res.epochs_run == 2 and torch.equal(again.middle_flat, ref.middle_flat)

    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"evil": Evil()}, final)
    with pytest.raises(engine.UnsafeCheckpoint, match="curve_final.pt"):
        train_curve(BezierCurve.through_line(a, b, 1), Linear1(), x, y, loss, s, seed=4, workdir=tmp_path)
    assert not marker.exists()
