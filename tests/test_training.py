"""Training: deterministic, bitwise resumable, divergence is a result; models scale with width."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from landscape.config import DataConfig, ModelConfig, TrainConfig
from landscape.data import load_data
from landscape.models import build_model, n_parameters
from landscape.training import StopRequested, TrainSettings, evaluate, make_loss, recompute_bn, train_model


def setup(**train_kw):
    data = load_data(OmegaConf.structured(DataConfig(subsample=200)))
    mcfg = OmegaConf.structured(ModelConfig(width=16))
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
    for a, b in zip(ref.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert r.history == r_ref.history
    # a finished run is loaded, not retrained
    again = build_model(mcfg, data.input_shape, 10, seed=0)
    r2 = train_model(again, data.x_train, data.y_train, s, 3, tmp_path / "run")
    assert r2.seconds == r.seconds and all(torch.equal(a, b) for a, b in zip(again.parameters(), ref.parameters()))


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


def test_training_reduces_loss_and_schedules():
    data, mcfg, _ = setup()
    for schedule in ("constant", "step", "cosine"):
        tcfg = OmegaConf.structured(TrainConfig(epochs=10, batch_size=32, schedule=schedule, lr_milestones=[8]))
        s = TrainSettings.from_config(tcfg, data.n_train)
        model = build_model(mcfg, data.input_shape, 10, seed=0)
        before, _ = evaluate(model, data.x_train, data.y_train, make_loss("cross_entropy"))
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            train_model(model, data.x_train, data.y_train, s, 0, Path(d))
        after, acc = evaluate(model, data.x_train, data.y_train, make_loss("cross_entropy"))
        assert after < 0.5 * before and acc > 0.6, schedule


def test_mse_loss_is_mean_over_samples_of_summed_squares():
    logits = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    assert torch.isclose(make_loss("mse")(logits, y), torch.tensor((0.0 + 1.0) / 2))


def test_width_scaling_and_seeded_init():
    for name, widths in (("mlp", (4, 8)), ("cnn", (4, 8)), ("resnet18", (2, 4))):
        sizes = [n_parameters(build_model(OmegaConf.structured(ModelConfig(name=name, width=w)), (3, 32, 32), 10))
                 for w in widths]
        assert sizes[1] > sizes[0], name
    cfg = OmegaConf.structured(ModelConfig(name="resnet18", width=64))
    assert abs(n_parameters(build_model(cfg, (3, 32, 32), 10)) - 11_173_962) < 1000  # the usual ResNet18
    a = build_model(OmegaConf.structured(ModelConfig()), (1, 8, 8), 10, seed=5)
    b = build_model(OmegaConf.structured(ModelConfig()), (1, 8, 8), 10, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_recompute_bn_gives_exact_dataset_statistics():
    cfg = OmegaConf.structured(ModelConfig(name="cnn", width=4, depth=1, batch_norm=True))
    model = build_model(cfg, (1, 8, 8), 10, seed=0)
    x = torch.randn(100, 1, 8, 8)
    assert recompute_bn(model, x, batch_size=7)
    bn = model.features[2]
    conv_out = model.features[1](model.features[0](x))
    assert torch.allclose(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-5)
