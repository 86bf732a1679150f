"""BatchNorm models (CNN with BatchNorm, ResNet18) trained together (``landscape.vectorized``: per-seed running
statistics stacked and updated under ``vmap``) against the same seeds trained one by one (``train_model``), and
Bezier curves of a BatchNorm cell trained as one stack against each curve trained alone (``train_curve``).

Tolerances (measured on CPU, one thread): in float64 the stack equals the serial runs to ~1e-15 in weights,
running statistics and losses (asserted: 1e-12); in float32 to ~2e-7 for the CNN over 8 steps and the
ResNet18 over 3 steps (asserted: 2e-6). Not bitwise: ``vmap`` runs the seeds' convolutions as one grouped
convolution and BatchNorm through its batching rule, which sum in another order. A small-width ResNet18 in float32
amplifies those rounding differences within a few steps (a 1e-7 relative perturbation of the initial weights of
one serial run moves it by ~3e-3 after 6 steps), hence the longer comparisons in float64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import train_settings
from omegaconf import OmegaConf

from landscape.connectivity import BezierCurve, CurveSettings, train_curve, train_curves_together
from landscape.models import build_model
from landscape.params import trainable_parameters
from landscape.training import StopRequested, TrainSettings, make_loss, train_model
from landscape.vectorized import auto_stacks, train_together, unsupported_reason, use_vectorized

SEEDS = [0, 1, 2]
SHAPE = (3, 16, 16)
CFGS = {
    "cnn": dict(name="cnn", width=4, depth=2, activation="relu", batch_norm=True),
    "resnet18": dict(name="resnet18", width=2, depth=2, activation="relu", batch_norm=True),
}


def _data(n: int = 100, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *SHAPE, generator=g).to(dtype), torch.randint(0, 4, (n,), generator=g)


def _settings(**kw) -> TrainSettings:
    # 100 samples in batches of 32: 3 full batches and a trailing batch of 4 per epoch
    return train_settings(**{"weight_decay": 1e-3, "schedule": "step", "lr_decay": 0.5, "lr_milestones": [1], **kw})


def _models(name: str, dtype: torch.dtype) -> dict[int, torch.nn.Module]:
    cfg = OmegaConf.create(CFGS[name])
    return {s: build_model(cfg, SHAPE, 4, seed=s).to(dtype) for s in SEEDS}


def _diffs(a: torch.nn.Module, b: torch.nn.Module, counts: bool = True) -> tuple[float, float]:
    """Max abs difference of the parameters, and of the BatchNorm running statistics, of two models (and, with
    ``counts``, their BatchNorm step counts are asserted equal)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    params = {n for n, _ in a.named_parameters()}
    stats = [n for n in sa if n not in params and not n.endswith("num_batches_tracked")]
    assert stats  # the models have running statistics
    for n in sa:
        if counts and n.endswith("num_batches_tracked"):
            assert torch.equal(sa[n], sb[n]), n
    dp = max(float((sa[n].double() - sb[n].double()).abs().max()) for n in params)
    ds = max(float((sa[n].double() - sb[n].double()).abs().max()) for n in stats)
    return dp, ds


def _loss_diff(rs, rv) -> float:
    return max(abs(a - b) for s in SEEDS for a, b in zip(rs[s].history, rv[s].history, strict=True))


@pytest.mark.parametrize(
    "name,dtype,steps,tol",
    [
        ("cnn", torch.float64, None, 1e-12),
        ("resnet18", torch.float64, None, 1e-12),
        ("cnn", torch.float32, None, 2e-6),
        ("resnet18", torch.float32, 3, 2e-6),
    ],
)
def test_batchnorm_seeds_together_equal_serial(tmp_path: Path, name, dtype, steps, tol):
    x, y = _data(dtype=dtype)
    st = _settings(steps=steps)
    ser = _models(name, dtype)
    rs = {s: train_model(ser[s], x, y, st, s, tmp_path / "serial" / str(s)) for s in SEEDS}
    vec = _models(name, dtype)
    init = _models(name, dtype)
    rv = train_together(vec, x, y, st, {s: tmp_path / "vec" / str(s) for s in SEEDS}, tmp_path / "vec" / "g")
    for s in SEEDS:
        assert rv[s].vectorized and rv[s].status == rs[s].status == "done" and rv[s].steps == rs[s].steps
        dp, ds = _diffs(ser[s], vec[s])
        assert dp < tol and ds < tol, (s, dp, ds)
        # the running statistics were trained, each seed its own
        assert _diffs(vec[s], init[s], counts=False)[1] > 1e-2
        assert int(vec[s].state_dict()[next(k for k in vec[s].state_dict() if "num_batches" in k)]) == rs[s].steps
    assert _diffs(vec[0], vec[1])[1] > 1e-3
    assert _loss_diff(rs, rv) < tol


def test_batchnorm_stack_resumes_bitwise_after_a_stop(tmp_path: Path):
    """The stack's checkpoint holds each seed's running statistics: stopped mid-epoch and run again, the weights
    and statistics are bitwise those of the uninterrupted stack."""
    x, y = _data()
    st = _settings(epochs=3)
    ref = _models("cnn", torch.float32)
    train_together(ref, x, y, st, {s: tmp_path / "ref" / str(s) for s in SEEDS}, tmp_path / "ref" / "g")
    polls = [0]

    def stop() -> bool:  # step 6 of 12: in the middle of epoch 2
        polls[0] += 1
        return polls[0] == 6

    dirs = {s: tmp_path / "run" / str(s) for s in SEEDS}
    with pytest.raises(StopRequested):
        train_together(_models("cnn", torch.float32), x, y, st, dirs, tmp_path / "run" / "g", should_stop=stop)
    run = _models("cnn", torch.float32)
    rr = train_together(run, x, y, st, dirs, tmp_path / "run" / "g")
    for s in SEEDS:
        assert rr[s].resumed_from_epoch == 1
        for k, v in ref[s].state_dict().items():
            assert torch.equal(v, run[s].state_dict()[k]), (s, k)


def test_choice_of_batchnorm_stacks():
    """BatchNorm models stack (``on``); ``auto`` leaves them serial on CPU (measured slower there) and stacks
    them on CUDA (unmeasured; the device is read from the model's parameters)."""
    cnn = _models("cnn", torch.float32)[0]
    resnet = _models("resnet18", torch.float32)[0]
    for m in (cnn, resnet):
        assert unsupported_reason(m) is None
        assert use_vectorized("on", m, 3) and not use_vectorized("auto", m, 3) and not use_vectorized("off", m, 3)
    with torch.device("meta"):
        meta = build_model(OmegaConf.create(CFGS["cnn"]), SHAPE, 4)
    assert not auto_stacks(meta, 3)  # only CPU and CUDA are known; meta is neither
    bn = next(m for m in cnn.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.momentum = None  # a cumulative average reads its step count: not stackable
    assert "momentum=None" in unsupported_reason(cnn)


def test_auto_stacks_on_cuda(monkeypatch):
    import landscape.vectorized as vec

    monkeypatch.setattr(vec, "_device_type", lambda model: "cuda")
    resnet = _models("resnet18", torch.float32)[0]
    assert use_vectorized("auto", resnet, 2) and not use_vectorized("auto", resnet, 1)


# ------------------------------------------------------------------------------------------- curves
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_batchnorm_curves_together_equal_curves_alone(tmp_path: Path, dtype, tol):
    """Three Bezier curves between the seeds of a BatchNorm CNN cell (momentum, weight decay, one bend), trained
    as one stack, end where each one trained alone by ``train_curve`` ends: middle points and loss histories."""
    x, y = _data(dtype=dtype)
    loss_fn = make_loss("cross_entropy")
    models = _models("cnn", dtype)
    names = {"0-1": (0, 1), "0-2": (0, 2), "1-2": (1, 2)}
    seeds = {"0-1": 11, "0-2": 12, "1-2": 13}
    s = CurveSettings(epochs=2, lr=0.05, momentum=0.9, weight_decay=1e-3, batch_size=32, schedule="cosine")

    def curves() -> dict[str, BezierCurve]:
        return {
            n: BezierCurve.through_line(trainable_parameters(models[i]), trainable_parameters(models[j]), 1)
            for n, (i, j) in names.items()
        }

    def template() -> torch.nn.Module:
        return build_model(OmegaConf.create(CFGS["cnn"]), SHAPE, 4, seed=99).to(dtype)

    alone = curves()
    ref = {n: train_curve(alone[n], template(), x, y, loss_fn, s, seeds[n]) for n in names}
    init, stacked = curves(), curves()
    tpl = template()
    before = {k: v.clone() for k, v in tpl.state_dict().items()}
    dirs = {n: tmp_path / n for n in names}
    res = train_curves_together(stacked, tpl, x, y, loss_fn, s, seeds, dirs, tmp_path / "group")
    for n in names:
        assert float((stacked[n].middle_flat - init[n].middle_flat).detach().abs().max()) > 1e-2  # it trained
        diff = float((stacked[n].middle_flat - alone[n].middle_flat).detach().abs().max())
        assert diff < tol, (n, diff)
        assert res[n].history == pytest.approx(ref[n].history, abs=tol) and res[n].steps == ref[n].steps
    # the template's own statistics are untouched (each curve updates its own copy)
    assert all(torch.equal(v, tpl.state_dict()[k]) for k, v in before.items())
