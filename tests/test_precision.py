"""``train.precision`` and ``train.compile`` (``landscape.precision``): refused when unknown, applied to the
training steps only, off by default.

Measured on CPU (``benchmarks/bench_bn_stack.py --precision``, digits, 20 epochs, seed 0): tf32 is bitwise fp32
on CPU (no TF32 there); bf16 ends at a final training loss of 0.002296 vs 0.002301 (MLP 64-64) and 0.0067 vs
0.0106 (CNN with BatchNorm, width 8), both at 100 % / 99.9 % training accuracy, and is slower on CPU.
``torch.compile`` (inductor) of the tiny MLP below gave the same loss history as eager to all printed digits
after a 45 s compilation on this machine; the test compiles with the ``eager`` backend (dynamo's capture of the
real training step, without inductor's C++ build).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import train_settings
from omegaconf import OmegaConf

import landscape.precision as precision_mod
from landscape.config import validate
from landscape.models import build_model
from landscape.precision import step_precision
from landscape.training import TrainSettings, train_model
from landscape.vectorized import train_together

SHAPE = (3, 8, 8)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(50, *SHAPE, generator=g), torch.randint(0, 4, (50,), generator=g)


def _settings(**kw) -> TrainSettings:
    return train_settings(**{"batch_size": 16, **kw})


def _model(name: str = "mlp", seed: int = 0) -> torch.nn.Module:
    cfg = OmegaConf.create(dict(name=name, width=8, depth=1, activation="relu", batch_norm=True))
    return build_model(cfg, SHAPE, 4, seed=seed)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_unknown_precision_is_refused(compose, tmp_path: Path):
    assert validate(compose([])) == []
    cfg = compose(["train.precision=fp16"])
    assert any(p.startswith("train.precision='fp16'") and "fp32, tf32, bf16" in p for p in validate(cfg))
    assert cfg.train.precision == "fp16" and compose([]).train.precision == "fp32" and not compose([]).train.compile
    x, y = _data()
    with pytest.raises(ValueError, match="train.precision='fp16'"):
        train_model(_model(), x, y, _settings(precision="fp16"), 0, tmp_path)


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_float32_weights(tmp_path: Path):
    x, y = _data()
    dtypes: list[torch.dtype] = []
    m = _model("cnn")
    m.head.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    r = train_model(m, x, y, _settings(precision="bf16"), 0, tmp_path / "bf16")
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in m.state_dict().values() if p.is_floating_point())
    ref = _model("cnn")
    rr = train_model(ref, x, y, _settings(), 0, tmp_path / "fp32")
    assert not _same(m, ref)  # it changed the numbers ...
    assert r.history == pytest.approx(rr.history, abs=0.05)  # ... by bfloat16's rounding, not more
    # outside the training step nothing is in bfloat16 (evaluation, metrics)
    assert m(x[:4]).dtype == torch.float32


def test_tf32_on_cpu_and_fp32_are_the_defaults_numbers(tmp_path: Path):
    x, y = _data()
    a, b = _model("cnn"), _model("cnn")
    train_model(a, x, y, _settings(), 0, tmp_path / "a")
    train_model(b, x, y, _settings(precision="tf32"), 0, tmp_path / "b")
    assert _same(a, b)  # no TF32 on CPU
    models = {s: _model("cnn", s) for s in (0, 1)}
    train_together(models, x, y, _settings(precision="tf32"), {s: tmp_path / f"v{s}" for s in (0, 1)}, tmp_path / "g")
    assert torch.allclose(models[0].head.weight, a.head.weight, atol=1e-5)


def test_tf32_flags_are_restored_after_a_step():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with step_precision("tf32", "cuda"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_compile_trains_through_the_compiled_model_to_the_same_numbers(tmp_path: Path, monkeypatch):
    calls: list[torch.nn.Module] = []
    real_compile = torch.compile

    def eager_compile(model):
        calls.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(precision_mod.torch, "compile", eager_compile)
    x, y = _data()
    a, b = _model(), _model()
    train_model(a, x, y, _settings(compile=True), 0, tmp_path / "a")
    monkeypatch.undo()
    assert calls == [a]
    train_model(b, x, y, _settings(), 0, tmp_path / "b")
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert float((p - q).detach().abs().max()) < 1e-6
    saved = torch.load(tmp_path / "a" / "final.pt", weights_only=True)
    assert saved.keys() == b.state_dict().keys()  # the plain model's names, no compile wrapper
