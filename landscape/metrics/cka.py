"""Pair family ``cka``: CKA similarity of the two models' representations on a fixed, seeded probe set.

Columns: ``cka`` (the configured estimator's value) and its settings beside it. With ``batch_size > 0`` the
minibatch estimator (Nguyen et al. 2021, always on unbiased HSIC, so ``cka.debiased`` is true) streams the
probe set through both models batch by batch; otherwise the full ``[n, n]`` Gram matrices are used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from landscape.metrics import MetricFamily, PairContext, register
from landscape.similarity import FEATURES, KERNELS, PROBES, MinibatchCKA, cka, model_features, probe_inputs


@dataclass
class Config:
    """``features``: softmax | logits | layer (then ``layer`` names a module, e.g. ``net.3``); ``probe``:
    test | train | mixup (the taxonomy paper: softmax on 768 mixup inputs); ``kernel``: linear | rbf (bandwidth
    ``rbf_fraction`` x median distance); ``batch_size``: 0 = full Gram, else minibatch CKA of that batch."""

    enabled: bool = False
    features: str = "softmax"
    layer: str = ""
    probe: str = "test"
    n_samples: int = 768
    kernel: str = "linear"
    debiased: bool = False
    rbf_fraction: float = 1.0
    batch_size: int = 0
    seed: int = 0


COLUMNS = {
    "cka": pa.float64(),
    "cka.features": pa.string(),
    "cka.layer": pa.string(),
    "cka.probe": pa.string(),
    "cka.kernel": pa.string(),
    "cka.debiased": pa.bool_(),
    "cka.n_samples": pa.int64(),
    "cka.batch_size": pa.int64(),
    "cka.seconds": pa.float64(),
}


def check_settings(settings: Any) -> None:
    for key, value, allowed in (
        ("features", settings.features, FEATURES),
        ("probe", settings.probe, PROBES),
        ("kernel", settings.kernel, KERNELS),
    ):
        if value not in allowed:
            raise ValueError(f"metrics.cka.{key}={value!r}: expected one of {', '.join(allowed)}")
    if settings.features == "layer" and not settings.layer:
        raise ValueError("metrics.cka.layer='': features=layer needs the name of a module (model.named_modules())")
    bs = int(settings.batch_size or 0)
    if bs != 0 and bs < 4:
        raise ValueError(f"metrics.cka.batch_size={bs}: expected 0 (full) or a minibatch of >= 4 samples")


def _compute(ctx: PairContext, settings: Any) -> dict[str, Any]:
    check_settings(settings)
    t0 = time.perf_counter()
    x = probe_inputs(ctx.a.data, str(settings.probe), int(settings.n_samples), int(settings.seed))
    feats, layer = str(settings.features), (str(settings.layer) or None)
    bs = int(settings.batch_size or 0)
    if bs:
        acc = MinibatchCKA(settings.kernel, float(settings.rbf_fraction))
        for i in range(0, x.shape[0], bs):
            xb = x[i : i + bs]
            if xb.shape[0] >= 4:
                acc.update(model_features(ctx.a.model, xb, feats, layer), model_features(ctx.b.model, xb, feats, layer))
        value, debiased = acc.value(), True
    else:
        fa = model_features(ctx.a.model, x, feats, layer)
        fb = model_features(ctx.b.model, x, feats, layer)
        debiased = bool(settings.debiased)
        value = cka(fa, fb, settings.kernel, debiased, float(settings.rbf_fraction))
    return {
        "cka": value,
        "cka.features": feats,
        "cka.layer": layer,
        "cka.probe": str(settings.probe),
        "cka.kernel": str(settings.kernel),
        "cka.debiased": debiased,
        "cka.n_samples": int(x.shape[0]),
        "cka.batch_size": bs,
        "cka.seconds": time.perf_counter() - t0,
    }


FAMILY = register(MetricFamily(name="cka", table="pairs", columns=COLUMNS, compute=_compute))
