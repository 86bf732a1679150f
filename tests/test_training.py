"""Training: deterministic, bitwise resumable (also after damage), schedules act, divergence (also finite
blow-ups) is a result, progress is visible; models scale with width; BatchNorm statistics are exact."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pytest
import torch
from helpers import record_sgd_lr
from omegaconf import OmegaConf

from landscape import engine, progress
from landscape.config import TrainConfig, data_config, model_config
from landscape.data import load_data
from landscape.models import build_model, n_parameters
from landscape.training import StopRequested, TrainSettings, evaluate, make_loss, recompute_bn, train_model


def setup(**train_kw):
    data = load_data(OmegaConf.structured(data_config(subsample=200)))
    mcfg = OmegaConf.structured(model_config(width=16))
    tcfg = OmegaConf.structured(TrainConfig(**{"epochs": 4, "batch_size": 32, "checkpoint_every": 1, **train_kw}))
    return data, mcfg, TrainSettings.from_config(tcfg, data.n_train)


def test_resume_after_stop_is_bitwise_identical(tmp_path):
    data, mcfg, s = setup()
    ref = build_model(mcfg, data.input_shape, 10, seed=3)
    r_ref = train_model(ref, data.x_train, data.y_train, s, 3, tmp_path / "ref")

    model = build_model(mcfg, data.input_shape, 10, seed=3)
    calls = {"n": 0}

    def stop_mid_epoch() -> bool:  # stop in the middle of the second epoch
        calls["n"] += 1
        return calls["n"] == 10

    try:
        train_model(model, data.x_train, data.y_train, s, 3, tmp_path / "run", should_stop=stop_mid_epoch)
        raise AssertionError("should have stopped")
    except StopRequested:
        pass
    resumed = build_model(mcfg, data.input_shape, 10, seed=3)  # a fresh process would start from scratch
    r = train_model(resumed, data.x_train, data.y_train, s, 3, tmp_path / "run")
    assert r.resumed_from_epoch == 1 and r.steps == r_ref.steps
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert r.history == r_ref.history
    # a finished run is loaded, not retrained
    again = build_model(mcfg, data.input_shape, 10, seed=0)
    r2 = train_model(again, data.x_train, data.y_train, s, 3, tmp_path / "run")
    assert r2.seconds == r.seconds and all(
        torch.equal(a, b) for a, b in zip(again.parameters(), ref.parameters(), strict=True)
    )


def test_divergence_is_a_status_not_a_crash(tmp_path):
    data, mcfg, s = setup(lr=1e6, momentum=0.0)
    model = build_model(mcfg, data.input_shape, 10, seed=0)
    r = train_model(model, data.x_train, data.y_train, s, 0, tmp_path)
    assert r.status == "diverged"


def test_steps_override_epochs_and_full_batch(tmp_path):
    data, mcfg, s = setup(steps=5, batch_size="full")
    assert s.batch_size == data.n_train and s.total_epochs(data.n_train) == 5
    r = train_model(build_model(mcfg, data.input_shape, 10, seed=0), data.x_train, data.y_train, s, 0, tmp_path)
    assert r.steps == 5 and r.epochs == 5


# learning-rate factor per epoch, written out by hand for 4 epochs (milestones [1, 3], decay 0.5)
EXPECTED_FACTORS = {
    "constant": [1.0, 1.0, 1.0, 1.0],
    "step": [1.0, 0.5, 0.5, 0.25],
    "cosine": [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2],
}


def _sgd_by_hand(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    factors: list[float],
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """SGD written out: per epoch a ``randperm`` from one generator seeded ``seed``, batches of ``batch_size`` in
    that order (a trailing batch of 8 kept), ``d = grad + wd * w``, ``buf = momentum * buf + d`` (``buf = d`` at
    the first step), ``w -= lr * factor[epoch] * buf``. Returns the final parameters."""
    from torch.func import functional_call

    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    buf: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(seed)
    for factor in factors:
        perm = torch.randperm(len(x), generator=g)
        for start in range(0, len(x), batch_size):
            idx = perm[start : start + batch_size]
            leaves = {n: t.requires_grad_(True) for n, t in w.items()}
            loss = torch.nn.functional.cross_entropy(functional_call(model, leaves, (x[idx],)), y[idx])
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
            with torch.no_grad():
                for n in w:
                    d = grads[n] + weight_decay * w[n]
                    buf[n] = d if n not in buf else momentum * buf[n] + d
                    w[n] = w[n] - lr * factor * buf[n]
    return w


@pytest.mark.parametrize("schedule", sorted(EXPECTED_FACTORS))
def test_training_reduces_loss_under_every_schedule(tmp_path, schedule):
    """The trained weights are those of SGD written out by hand with the learning rate of the closed-form
    schedule (momentum and coupled weight decay on), and the training loss fell."""
    data, mcfg, _ = setup()
    tcfg = OmegaConf.structured(
        TrainConfig(
            epochs=4,
            batch_size=32,
            lr=0.2,
            momentum=0.9,
            weight_decay=1e-3,
            schedule=schedule,
            lr_decay=0.5,
            lr_milestones=[1, 3],
        )
    )
    s = TrainSettings.from_config(tcfg, data.n_train)
    model = build_model(mcfg, data.input_shape, 10, seed=0)
    want = _sgd_by_hand(
        build_model(mcfg, data.input_shape, 10, seed=0),
        data.x_train,
        data.y_train,
        EXPECTED_FACTORS[schedule],
        lr=0.2,
        momentum=0.9,
        weight_decay=1e-3,
        batch_size=32,
        seed=3,
    )
    before, _ = evaluate(model, data.x_train, data.y_train, make_loss("cross_entropy"))
    r = train_model(model, data.x_train, data.y_train, s, 3, tmp_path)
    assert r.status == "done" and r.steps == 4 * 7
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), want[n], rtol=1e-5, atol=1e-6, msg=lambda m: f"{schedule} {n}: {m}")  # noqa: B023 (called within this iteration)
    after, _ = evaluate(model, data.x_train, data.y_train, make_loss("cross_entropy"))
    assert after < 0.75 * before, schedule  # measured 0.60 (constant: lr 0.2 with momentum 0.9 oscillates), 0.33, 0.38


def test_mse_loss_is_mean_over_samples_of_summed_squares():
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    assert torch.isclose(make_loss("mse")(logits, y), torch.tensor((0.0 + 1.0) / 2))


def test_width_scaling_and_seeded_init():
    for name, widths in (("mlp", (4, 8)), ("cnn", (4, 8)), ("resnet18", (2, 4))):
        sizes = [
            n_parameters(build_model(OmegaConf.structured(model_config(name=name, width=w)), (3, 32, 32), 10))
            for w in widths
        ]
        assert sizes[1] > sizes[0], name
    cfg = OmegaConf.structured(model_config(name="resnet18", width=64))
    assert abs(n_parameters(build_model(cfg, (3, 32, 32), 10)) - 11_173_962) < 1000  # the usual ResNet18
    a = build_model(OmegaConf.structured(model_config()), (1, 8, 8), 10, seed=5)
    b = build_model(OmegaConf.structured(model_config()), (1, 8, 8), 10, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_recompute_bn_gives_exact_dataset_statistics():
    cfg = OmegaConf.structured(model_config(name="cnn", width=4, depth=1, batch_norm=True))
    model = build_model(cfg, (1, 8, 8), 10, seed=0)
    x = torch.randn(100, 1, 8, 8)
    assert recompute_bn(model, x, batch_size=7)
    bn = model.features[2]
    conv_out = model.features[1](model.features[0](x))
    assert torch.allclose(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)


# ------------------------------------------------------------------------------ schedules, divergence, progress


@pytest.mark.parametrize("schedule", sorted(EXPECTED_FACTORS))
def test_schedule_sets_the_learning_rate_used_at_each_step(tmp_path, monkeypatch, schedule):
    data, mcfg, _ = setup()
    tcfg = OmegaConf.structured(
        TrainConfig(epochs=4, batch_size=32, lr=0.2, schedule=schedule, lr_decay=0.5, lr_milestones=[1, 3])
    )
    s = TrainSettings.from_config(tcfg, data.n_train)
    per_epoch = s.steps_per_epoch(data.n_train)
    assert per_epoch == 7  # 200 samples, batches of 32: 6 full and one of 8
    seen = record_sgd_lr(monkeypatch)
    train_model(build_model(mcfg, data.input_shape, 10, seed=0), data.x_train, data.y_train, s, 0, tmp_path)
    expected = [0.2 * f for f in EXPECTED_FACTORS[schedule] for _ in range(per_epoch)]
    assert seen == pytest.approx(expected, rel=1e-12, abs=0)


def test_step_schedule_to_zero_freezes_the_weights(tmp_path):
    # lr x 0 from epoch 2 on: the weights after 4 epochs are bitwise those after 2 (momentum buffers still move)
    data, mcfg, _ = setup()
    tc = dict(epochs=4, batch_size=32, schedule="step", lr_decay=0.0, lr_milestones=[2], weight_decay=1e-3)
    four = TrainSettings.from_config(OmegaConf.structured(TrainConfig(**tc)), data.n_train)
    two = TrainSettings.from_config(OmegaConf.structured(TrainConfig(**{**tc, "epochs": 2})), data.n_train)
    a, b = (build_model(mcfg, data.input_shape, 10, seed=0) for _ in range(2))
    train_model(a, data.x_train, data.y_train, four, 0, tmp_path / "four")
    train_model(b, data.x_train, data.y_train, two, 0, tmp_path / "two")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    c = build_model(mcfg, data.input_shape, 10, seed=0)
    train_model(
        c,
        data.x_train,
        data.y_train,
        TrainSettings.from_config(OmegaConf.structured(TrainConfig(**{**tc, "lr_decay": 1.0})), data.n_train),
        0,
        tmp_path / "const",
    )
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))  # the schedule acted


def test_finite_blow_up_is_diverged(tmp_path):
    # cross-entropy at lr 100: the loss grows by > 1e6 x its initial value while staying finite
    data = load_data(OmegaConf.structured(data_config()))
    mcfg = OmegaConf.structured(model_config())
    s = TrainSettings.from_config(OmegaConf.structured(TrainConfig(lr=100.0, epochs=5)), data.n_train)
    r = train_model(build_model(mcfg, data.input_shape, 10, seed=0), data.x_train, data.y_train, s, 0, tmp_path)
    assert r.status == "diverged" and 0 < r.steps < 5 * s.steps_per_epoch(data.n_train)
    assert "x max(initial loss" in r.reason  # caught while finite
    assert engine.divergence_reason(1e300, 2.3) is not None and engine.divergence_reason(2.3e6, 2.3) is None
    assert engine.divergence_reason(1.1e6, 0.01) is not None  # a tiny initial loss: the floor of 1 applies
    assert engine.divergence_reason(float("nan"), 2.3) is not None
    # a run at a sane rate is done
    ok = TrainSettings.from_config(OmegaConf.structured(TrainConfig(lr=0.05, epochs=1)), data.n_train)
    assert (
        train_model(
            build_model(mcfg, data.input_shape, 10, seed=0), data.x_train, data.y_train, ok, 0, tmp_path / "ok"
        ).status
        == "done"
    )


def test_cli_cross_entropy_at_lr_100_is_diverged(cli, tmp_path):
    from landscape.results import load

    cli(["hydra.sweep.dir=hot", "train.lr=100", "train.epochs=5", "model.width=32"])
    rows = load(tmp_path / "hot")
    assert len(rows) == 2 and set(rows["status"]) == {"diverged"}, rows[["seed", "status"]]


class _ToyTask(engine.StepTask):
    """Loss ``(w - 1)^2`` (plain gradient steps on ``w``); a second parameter ``z`` the loss never sees is set to
    ``inf`` after step ``poison_at``."""

    def __init__(self, poison_at: int):
        self.members = ["toy"]
        self.w, self.z, self.poison_at, self.steps = torch.tensor(3.0), torch.tensor(0.0), poison_at, 0
        self.gen = torch.Generator().manual_seed(0)

    def rng_state(self):
        return {"g": self.gen.get_state()}

    def set_rng_state(self, state):
        self.gen.set_state(state["g"])

    def begin_epoch(self, epoch):
        return 0.1

    def forward(self, epoch, batch, accuracy):
        return engine.StepOut(((self.w - 1) ** 2).reshape(1))

    def update(self, out):
        self.w = self.w - 0.1 * 2 * (self.w - 1)
        self.steps += 1
        if self.steps == self.poison_at:
            self.z = torch.tensor(float("inf"))

    def nonfinite_rows(self):
        return [] if bool(torch.isfinite(self.w) and torch.isfinite(self.z)) else [0]

    def state_dict(self):
        return {"w": self.w, "z": self.z}

    def load_state_dict(self, state, members):
        self.w, self.z = state["w"], state["z"]
        return True


def test_nonfinite_parameters_are_diverged_at_the_epoch_end():
    r = engine.run(_ToyTask(poison_at=5), engine.Plan(epochs=3, per_epoch=4), "toy")["toy"]
    assert r.status == "diverged" and r.reason == "parameters not finite" and r.steps == 8 and r.epochs == 2
    r = engine.run(_ToyTask(poison_at=100), engine.Plan(epochs=3, per_epoch=4), "toy")["toy"]
    assert r.status == "done" and r.steps == 12 and r.epochs == 3


def test_progress_log_lines_name_phase_step_loss_accuracy_rate_and_eta(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")  # a line at every step (not a terminal under pytest)
    data, mcfg, s = setup(epochs=2)
    with caplog.at_level(logging.INFO, logger="landscape.progress"):
        train_model(
            build_model(mcfg, data.input_shape, 10, seed=3),
            data.x_train,
            data.y_train,
            s,
            3,
            tmp_path,
            phase="cell abc: training seed 3",
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "landscape.progress"]
    per_epoch = s.steps_per_epoch(data.n_train)
    assert len(lines) == 2 * per_epoch + 1  # one per step and the closing line
    pattern = (
        r"^cell abc: training seed 3: epoch (\d)/2, step (\d+)/14, loss [0-9.e+-]+, acc [01]\.\d{3}, "
        r"lr 0\.05, [0-9.e+]+ steps/s, ETA \d+:\d\d:\d\d"
    )
    steps = []
    for line in lines:
        m = re.match(pattern, line)
        assert m, line
        steps.append(int(m.group(2)))
    assert steps[:-1] == list(range(1, 15)) and lines[-1].endswith("[finished]")
    # the default interval is a minute and can be set
    monkeypatch.delenv(progress.PROGRESS_ENV)
    assert progress.progress_interval() == 60.0
    monkeypatch.setenv(progress.PROGRESS_ENV, "5")
    assert progress.progress_interval() == 5.0


def test_progress_of_curves_seeds_together_and_jumps(tmp_path, monkeypatch, caplog):
    from landscape.connectivity import BezierCurve, CurveSettings, train_curve
    from landscape.params import trainable_parameters
    from landscape.trajectories.jump_retrain import JumpRetrainSettings, jump_and_retrain
    from landscape.vectorized import train_together

    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    data, mcfg, s = setup(epochs=1)
    models = {k: build_model(mcfg, data.input_shape, 10, seed=k) for k in (0, 1)}
    with caplog.at_level(logging.INFO, logger="landscape.progress"):
        train_together(models, data.x_train, data.y_train, s, {k: tmp_path / str(k) for k in models}, tmp_path / "g")
        curve = BezierCurve.through_line(trainable_parameters(models[0]), trainable_parameters(models[1]), 1)
        train_curve(
            curve,
            models[0],
            data.x_train,
            data.y_train,
            make_loss("cross_entropy"),
            CurveSettings(epochs=1, batch_size=50),
            seed=0,
            phase="curve 0-1",
        )
        jump_and_retrain(
            models[0],
            make_loss("cross_entropy"),
            data,
            JumpRetrainSettings(
                n_jumps=1, scales=(0.5,), epochs=1, batch_size=100, projection_dim=4, eval_samples=50, embedding="pca"
            ),
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "landscape.progress"]
    assert any(
        re.match(r"^jump-retrain 0 \(scale 0\.5\): epoch 1/1, step 2/2, loss .*, acc .*, lr 0\.01, .*ETA", x)
        for x in lines
    )
    assert any(
        re.match(r"^training seeds 0,1 together: epoch 1/1, step 7/7, loss .*, acc .*steps/s, ETA", x) for x in lines
    )
    assert any(re.match(r"^curve 0-1: epoch 1/1, step 4/4, loss .*, acc .*, lr .*steps/s, ETA", x) for x in lines)


def test_checkpoints_load_without_running_code(tmp_path):
    data, mcfg, s = setup()
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "run").mkdir()
    torch.save({"format": engine.FORMAT, "evil": Evil()}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint.pt"):
        train_model(build_model(mcfg, data.input_shape, 10, seed=0), data.x_train, data.y_train, s, 0, tmp_path / "run")
    assert not marker.exists()


def test_recompute_bn_running_variance_equals_the_activation_variance():
    cfg = OmegaConf.structured(model_config(name="cnn", width=4, depth=1, batch_norm=True))
    model = build_model(cfg, (1, 8, 8), 10, seed=0).double()
    x = torch.randn(100, 1, 8, 8, dtype=torch.float64) * 3 + 1
    bn = model.features[2]
    with torch.no_grad():
        act = model.features[1](model.features[0](x))  # BN inputs [100, C, 8, 8]
    # one batch holding the whole set: the unbiased variance over samples and positions, per channel
    assert recompute_bn(model, x, batch_size=1000)
    per_channel = act.transpose(0, 1).reshape(act.shape[1], -1)
    torch.testing.assert_close(bn.running_var, per_channel.var(dim=1, unbiased=True), rtol=1e-10, atol=0)
    torch.testing.assert_close(bn.running_mean, per_channel.mean(dim=1), rtol=1e-10, atol=1e-12)
    # batches of 30 (30, 30, 30, 10): the size-weighted mean of the per-batch unbiased variances
    assert recompute_bn(model, x, batch_size=30)
    chunks = [act[i : i + 30] for i in range(0, 100, 30)]
    expected = sum(len(c) * c.transpose(0, 1).reshape(act.shape[1], -1).var(dim=1) for c in chunks) / 100
    torch.testing.assert_close(bn.running_var, expected, rtol=1e-10, atol=0)


def test_connectivity_path_recomputes_the_running_variance_at_each_t():
    # evaluate_path leaves the template with the BN statistics of the last t: compared with the activations'
    # variance of the model at theta(t), computed here without BN's running-average code
    import copy

    from landscape.connectivity import BezierCurve, evaluate_path
    from landscape.params import load_parameters, trainable_parameters

    cfg = OmegaConf.structured(model_config(name="cnn", width=4, depth=1, batch_norm=True))
    a, b = (build_model(cfg, (1, 8, 8), 10, seed=k).double() for k in (0, 1))
    x = torch.randn(120, 1, 8, 8, dtype=torch.float64) + 2
    y = torch.randint(0, 10, (120,))
    curve = BezierCurve.through_line(trainable_parameters(a), trainable_parameters(b), 1)
    template = copy.deepcopy(a)
    with torch.no_grad():
        template.features[2].running_var.fill_(123.0)
    evaluate_path(curve.point, template, x, y, make_loss("cross_entropy"), [0.0, 0.3])
    ref = copy.deepcopy(a)
    load_parameters(ref, curve.point(0.3))
    with torch.no_grad():
        act = ref.features[1](ref.features[0](x))
    per_channel = act.transpose(0, 1).reshape(act.shape[1], -1)
    torch.testing.assert_close(template.features[2].running_var, per_channel.var(dim=1), rtol=1e-10, atol=0)


def test_preemption_stop_request_names_its_reason(tmp_path):
    from landscape import preemption

    data, mcfg, s = setup()
    preemption.reset()
    try:
        preemption.request_stop("SIGUSR2 (time limit)")
        why = r"^stopped at epoch 0, step 1 \(training seed 0; SIGUSR2 \(time limit\)\)"
        with pytest.raises(StopRequested, match=why):
            train_model(
                build_model(mcfg, data.input_shape, 10, seed=0),
                data.x_train,
                data.y_train,
                s,
                0,
                tmp_path,
                should_stop=preemption.stop_requested,
            )
        assert preemption.last_poll_age() < 60
    finally:
        preemption.reset()
    r = train_model(build_model(mcfg, data.input_shape, 10, seed=0), data.x_train, data.y_train, s, 0, tmp_path)
    assert r.resumed_from_epoch == 0 and r.steps == 4 * 7 and r.status == "done"


def _flip_a_weight_byte(path: Path, weight: torch.Tensor) -> None:
    """Flip one byte inside the stored bytes of ``weight`` (torch stores storages uncompressed): the file still
    loads, with a wrong value."""
    raw = bytearray(path.read_bytes())
    at = raw.find(weight.detach().contiguous().numpy().tobytes()[:64])
    assert at > 0
    raw[at + 5] ^= 0x10
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_checkpoint_is_named_set_aside_and_training_redone_bitwise(tmp_path, caplog, damage):
    data, mcfg, s = setup()
    ref = build_model(mcfg, data.input_shape, 10, seed=3)
    r_ref = train_model(ref, data.x_train, data.y_train, s, 3, tmp_path / "ref")
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] == 10

    model = build_model(mcfg, data.input_shape, 10, seed=3)
    with pytest.raises(StopRequested):
        train_model(model, data.x_train, data.y_train, s, 3, tmp_path / "run", should_stop=stop)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    if damage == "truncate":
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x80\x02}q\x00garbage" * 10)
    else:
        _flip_a_weight_byte(ckpt, model.net[1].weight)
    again = build_model(mcfg, data.input_shape, 10, seed=3)
    with caplog.at_level(logging.WARNING, logger="landscape.progress"):
        r = train_model(again, data.x_train, data.y_train, s, 3, tmp_path / "run")
    assert any("checkpoint.pt" in rec.getMessage() and "damaged" in rec.getMessage() for rec in caplog.records)
    assert (tmp_path / "run" / "checkpoint.pt.damaged").exists()
    assert r.resumed_from_epoch == 0 and r.history == r_ref.history
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ref.parameters(), strict=True))


@pytest.mark.parametrize("damage", ["flip", "delete", "empty_result"])
def test_damaged_final_weights_are_retrained_bitwise(tmp_path, caplog, damage):
    data, mcfg, s = setup(epochs=2)
    ref = build_model(mcfg, data.input_shape, 10, seed=1)
    train_model(ref, data.x_train, data.y_train, s, 1, tmp_path)
    final = tmp_path / "final.pt"
    if damage == "flip":
        _flip_a_weight_byte(final, ref.net[1].weight)
    elif damage == "delete":
        final.unlink()
    else:
        (tmp_path / "result.json").write_text("")
    again = build_model(mcfg, data.input_shape, 10, seed=1)
    with caplog.at_level(logging.WARNING, logger="landscape.progress"):
        r = train_model(again, data.x_train, data.y_train, s, 1, tmp_path)
    assert any("final.pt" in rec.getMessage() or "result.json" in rec.getMessage() for rec in caplog.records)
    assert r.status == "done" and r.resumed_from_epoch == 0 and r.steps == 14
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), ref.parameters(), strict=True))


def test_temporaries_of_a_killed_writer_are_removed(tmp_path):
    import os

    data, mcfg, s = setup(epochs=1)
    old = [
        tmp_path / ".checkpoint.pt.tmp-999999",
        tmp_path / ".final.pt.tmp-999998",
        tmp_path / ".result.json.tmp-999997",
    ]
    fresh = tmp_path / ".checkpoint.pt.tmp-999996"  # another writer, just now: left alone
    for p in [*old, fresh]:
        p.write_bytes(b"partial")
    for p in old:
        os.utime(p, (0, 0))
    train_model(build_model(mcfg, data.input_shape, 10, seed=0), data.x_train, data.y_train, s, 0, tmp_path)
    assert not any(p.exists() for p in old) and fresh.exists()
