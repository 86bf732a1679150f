"""Seeds trained together (landscape.vectorized) against seeds trained one by one (training.train_model)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import train_settings
from omegaconf import OmegaConf

from landscape.models import build_model
from landscape.training import RESULT, StopRequested, TrainResult, TrainSettings, train_model
from landscape.vectorized import sgd_step_, train_together, use_vectorized

SEEDS = [0, 1, 2]


def _data(n: int = 203, d: int = 16, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def _settings(**kw) -> TrainSettings:
    kw = {"weight_decay": 1e-3, "epochs": 4, "schedule": "step", "lr_decay": 0.5, "lr_milestones": [2], **kw}
    return train_settings(**kw)


def _cfg(name: str, batch_norm: bool = False, activation: str = "tanh"):
    return OmegaConf.create(dict(name=name, width=8, depth=2, activation=activation, batch_norm=batch_norm))


def _models(cfg, seeds=SEEDS, scale: dict[int, float] | None = None) -> dict[int, torch.nn.Module]:
    out = {s: build_model(cfg, (16,), 4, seed=s) for s in seeds}
    for s, f in (scale or {}).items():
        with torch.no_grad():
            for p in out[s].parameters():
                p.mul_(f)
    return out


def _serial(cfg, x, y, st, root: Path, scale=None):
    models = _models(cfg, scale=scale)
    results = {s: train_model(models[s], x, y, st, s, root / "serial" / str(s)) for s in SEEDS}
    return models, results


def _together(cfg, x, y, st, root: Path, scale=None, should_stop=None, name="vec"):
    models = _models(cfg, scale=scale)
    results = train_together(
        models, x, y, st, {s: root / name / str(s) for s in SEEDS}, root / name / "group", should_stop=should_stop
    )
    return models, results


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_together_equals_serial(tmp_path: Path, name: str):
    # 203 samples, batch 32: 6 full batches and a trailing batch of 11; momentum, weight decay, LR step.
    x, y = _data()
    st = _settings()
    ser, rs = _serial(_cfg(name), x, y, st, tmp_path)
    vec, rv = _together(_cfg(name), x, y, st, tmp_path)
    for s in SEEDS:
        assert _max_diff(ser[s], vec[s]) < 1e-5
        assert rv[s].status == rs[s].status == "done"
        assert (rv[s].steps, rv[s].epochs) == (rs[s].steps, rs[s].epochs) == (28, 4)
        assert rv[s].history == pytest.approx(rs[s].history, rel=1e-5)
        assert rv[s].vectorized and not rs[s].vectorized
        # the same files as train_model: final.pt and result.json per seed, no checkpoint left
        saved = torch.load(tmp_path / "vec" / str(s) / "final.pt", weights_only=True)
        assert saved.keys() == ser[s].state_dict().keys()
        assert TrainResult.load(tmp_path / "vec" / str(s) / RESULT).vectorized
        assert not (tmp_path / "vec" / "group" / "checkpoint.pt").exists()
    # the seeds really differ (each has its own init and batch order)
    assert _max_diff(vec[0], vec[1]) > 1e-2


def test_steps_budget_and_plain_sgd(tmp_path: Path):
    # a step budget that ends mid-epoch, no momentum, no weight decay, cosine schedule
    x, y = _data()
    st = _settings(steps=10, momentum=0.0, weight_decay=0.0, schedule="cosine")
    ser, rs = _serial(_cfg("mlp"), x, y, st, tmp_path)
    vec, rv = _together(_cfg("mlp"), x, y, st, tmp_path)
    for s in SEEDS:
        assert rv[s].steps == rs[s].steps == 10
        assert _max_diff(ser[s], vec[s]) < 1e-6


def test_sgd_step_matches_torch_optim():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(3, 5, 4, generator=g)
    ref = p.clone().requires_grad_(True)
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.8, weight_decay=0.01)
    mine, buffers = p.clone(), None
    for _ in range(3):
        grad = torch.randn(3, 5, 4, generator=g)
        ref.grad = grad.clone()
        opt.step()
        buffers = sgd_step_([mine], [grad], buffers, 0.1, 0.8, 0.01)
    assert torch.equal(mine, ref.detach())  # element-wise identical arithmetic: bitwise


def test_one_seed_diverges_the_others_go_on(tmp_path: Path):
    # seed 1 starts with weights x100: with lr 0.2 and MSE it blows up after its first step
    x, y = _data()
    st = _settings(loss="mse", lr=0.2, weight_decay=0.0, schedule="constant")
    scale = {1: 100.0}
    cfg = _cfg("mlp", activation="relu")
    ser, rs = _serial(cfg, x, y, st, tmp_path, scale)
    vec, rv = _together(cfg, x, y, st, tmp_path, scale)
    assert rs[1].status == rv[1].status == "diverged"
    assert rv[1].steps == rs[1].steps >= 1 and rv[1].epochs == rs[1].epochs
    assert (tmp_path / "vec" / "1" / "final.pt").exists()
    for s in (0, 2):
        assert rv[s].status == rs[s].status == "done" and rv[s].steps == 28
        assert _max_diff(ser[s], vec[s]) < 1e-5


def test_resume_after_stop_is_bitwise(tmp_path: Path):
    x, y = _data()
    st = _settings(checkpoint_every=2)
    ref, rref = _together(_cfg("mlp"), x, y, st, tmp_path, name="ref")
    calls = {"n": 0}

    def stop() -> bool:  # stop in the middle of epoch 3 (step 17 of 28)
        calls["n"] += 1
        return calls["n"] == 17

    with pytest.raises(StopRequested):
        _together(_cfg("mlp"), x, y, st, tmp_path, should_stop=stop, name="run")
    assert (tmp_path / "run" / "group" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "0" / RESULT).exists()
    resumed, rres = _together(_cfg("mlp"), x, y, st, tmp_path, name="run")
    for s in SEEDS:
        assert _max_diff(ref[s], resumed[s]) == 0.0
        assert rres[s].history == rref[s].history and rres[s].resumed_from_epoch == 2
    # a finished group is loaded, not retrained
    again, ragain = _together(_cfg("mlp"), x, y, st, tmp_path, name="run")
    assert _max_diff(again[0], ref[0]) == 0.0 and ragain[0].steps == 28


def test_choice():
    mlp, cnn_bn = build_model(_cfg("mlp"), (16,), 4), build_model(_cfg("cnn", True), (16,), 4)
    cnn = build_model(_cfg("cnn"), (16,), 4)
    assert use_vectorized("auto", mlp, 2) and not use_vectorized("auto", mlp, 1)
    assert not use_vectorized("off", mlp, 4)
    assert not use_vectorized("auto", cnn_bn, 4) and not use_vectorized("auto", cnn, 4)  # CPU: measured slower
    assert use_vectorized("on", cnn, 4) and use_vectorized("on", cnn_bn, 4)  # BatchNorm: per-seed statistics
    cnn_bn.register_buffer("step_count", torch.zeros(()))  # a buffer that is not a BatchNorm statistic
    with pytest.raises(ValueError, match="train.vectorize=on"):
        use_vectorized("on", cnn_bn, 4)


def test_job_rows_say_vectorized(tmp_path: Path, compose):
    from landscape.job import run_cell
    from landscape.results import load

    fast = ["data.subsample=0.25", "model.width=8", "train.epochs=2", "train.batch_size=32"]
    run_cell(compose([*fast, "train.vectorize=on"]), tmp_path / "a")
    rows = load(tmp_path / "a")
    assert len(rows) == 2 and rows["training.vectorized"].all() and (rows["status"] == "done").all()
    run_cell(compose([*fast, "train.vectorize=off"]), tmp_path / "b")
    assert not load(tmp_path / "b")["training.vectorized"].any()
    # BatchNorm seeds together (per-seed running statistics): the job trains and writes them as one stack
    run_cell(compose(["model=cnn", "model.batch_norm=true", "train.vectorize=on", *fast]), tmp_path / "c")
    rows = load(tmp_path / "c")
    assert len(rows) == 2 and rows["training.vectorized"].all() and (rows["status"] == "done").all()


@pytest.mark.parametrize(
    "schedule,factors",
    [
        ("step", [1.0, 1.0, 0.5, 0.5]),  # milestones [2], decay 0.5
        ("cosine", [1.0, (1 + 2**-0.5) / 2, 0.5, (1 - 2**-0.5) / 2]),
    ],
)
def test_schedule_sets_the_stacked_learning_rate_at_each_step(tmp_path: Path, monkeypatch, schedule, factors):
    import landscape.vectorized as vec

    seen: list[float] = []
    original = vec.sgd_step_

    def spy(params, grads, buffers, lr, momentum, weight_decay):
        seen.append(lr)
        return original(params, grads, buffers, lr, momentum, weight_decay)

    monkeypatch.setattr(vec, "sgd_step_", spy)
    x, y = _data()
    _together(_cfg("mlp"), x, y, _settings(schedule=schedule), tmp_path)
    assert seen == pytest.approx([0.05 * f for f in factors for _ in range(7)], rel=1e-12, abs=0)


def test_one_seed_with_a_finite_blow_up_diverges_the_others_go_on(tmp_path: Path):
    # seed 1 starts with weights x30 and cross-entropy at lr 20: its loss grows a million-fold but stays finite
    x, y = _data()
    st = _settings(lr=20.0, weight_decay=0.0, schedule="constant", momentum=0.9)
    scale = {1: 30.0}
    cfg = _cfg("mlp", activation="relu")
    ser, rs = _serial(cfg, x, y, st, tmp_path, scale)
    vec, rv = _together(cfg, x, y, st, tmp_path, scale)
    assert rs[1].status == rv[1].status == "diverged" and rv[1].steps == rs[1].steps
    assert all(math.isfinite(v) for v in rv[1].history)
    assert "x max(initial loss" in rv[1].reason and rv[1].reason == rs[1].reason  # finite, far above the start


def test_a_kill_between_two_seeds_results_resumes_bitwise(tmp_path: Path, monkeypatch):
    # vmap stacks of 2-D CNNs of 3 seeds and of 1 do not round alike: the seed left must come from the trained
    # stack, not from the last epoch checkpoint trained on alone
    import landscape.vectorized as vec

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 4, (96,), generator=g)
    st = _settings(epochs=2, checkpoint_every=1)
    cfg = _cfg("cnn")

    def together(name: str) -> dict[int, torch.nn.Module]:
        models = {s: build_model(cfg, (1, 8, 8), 4, seed=s) for s in SEEDS}
        train_together(models, x, y, st, {s: tmp_path / name / str(s) for s in SEEDS}, tmp_path / name / "group")
        return models

    ref = together("ref")
    original = vec.write_final
    calls = []

    class Killed(Exception):
        pass

    def write_then_die(model, workdir):
        if len(calls) == 2:
            raise Killed  # the process dies after two seeds' results are written: one seed is left
        calls.append(workdir)
        return original(model, workdir)

    monkeypatch.setattr(vec, "write_final", write_then_die)
    with pytest.raises(Killed):
        together("run")
    monkeypatch.setattr(vec, "write_final", original)
    assert (tmp_path / "run" / "1" / RESULT).exists() and not (tmp_path / "run" / "2" / RESULT).exists()
    resumed = together("run")
    for s in SEEDS:
        assert _max_diff(ref[s], resumed[s]) == 0.0, s
    assert not (tmp_path / "run" / "group" / "checkpoint.pt").exists()


def test_a_kill_after_a_seed_diverged_mid_run_resumes_bitwise(tmp_path: Path, monkeypatch):
    # seed 1 (weights x2, MSE at lr 0.2) diverges at step 4, after the epoch-1 checkpoint; the process dies right
    # after its result is written: seed 0 must resume as the 1-seed stack it then was, not from the 2-seed
    # checkpoint (a vmap stack of 2 seeds and one of 1 do not round alike)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8, generator=g), torch.randint(0, 4, (96,), generator=g)
    st = _settings(loss="mse", lr=0.2, weight_decay=0.0, schedule="constant", epochs=8, checkpoint_every=1)
    cfg = _cfg("cnn", activation="relu")

    def together(name: str) -> tuple[dict[int, torch.nn.Module], dict[int, TrainResult]]:
        models = {s: build_model(cfg, (1, 8, 8), 4, seed=s) for s in (0, 1)}
        with torch.no_grad():
            for p in models[1].parameters():
                p.mul_(2.0)
        res = train_together(models, x, y, st, {s: tmp_path / name / str(s) for s in models}, tmp_path / name / "group")
        return models, res

    ref, rref = together("ref")
    assert rref[1].status == "diverged" and rref[1].steps == 4 and rref[0].steps == 24
    original = TrainResult.save

    class Killed(Exception):
        pass

    def save_then_die(self, path):
        original(self, path)
        raise Killed

    monkeypatch.setattr(TrainResult, "save", save_then_die)
    with pytest.raises(Killed):
        together("run")
    monkeypatch.setattr(TrainResult, "save", original)
    assert (tmp_path / "run" / "1" / RESULT).exists() and not (tmp_path / "run" / "0" / RESULT).exists()
    resumed, res = together("run")
    for s in (0, 1):
        assert _max_diff(ref[s], resumed[s]) == 0.0, s
    assert res[0].resumed_from_epoch == 1 and res[0].history == rref[0].history
