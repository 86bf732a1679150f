"""Pair family ``cka``: CKA similarity of the two models' representations on a fixed, seeded probe set.

Metric ``cka`` (the configured estimator's value); its settings beside it (``cka.debiased`` and
``cka.n_samples`` as used: the minibatch estimator, ``batch_size > 0``, always uses unbiased HSIC (Nguyen et
al. 2021) and streams the probe set through both models batch by batch; a test/train probe has at most as
many samples as the split). CKA is undefined when a model's features are constant after centring (e.g. a
collapsed narrow ReLU network): ``cka`` is then null and ``cka.error`` says which model and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from landscape.metrics import Family, FigureStyle, PairContext, Result

@dataclass
class Config:
    """``features``: softmax | logits | layer (then ``layer`` names a module, e.g. ``net.3``); ``probe``:
    test | train | mixup (the taxonomy paper: softmax on 768 mixup inputs); ``kernel``: linear | rbf (bandwidth
    ``rbf_fraction`` x median distance); ``batch_size``: 0 = full Gram, else minibatch CKA of that batch."""

    enabled: Any = False
    features: str = "softmax"
    layer: str = ""
    probe: str = "test"
    n_samples: int = 768
    kernel: str = "linear"
    debiased: bool = False
    rbf_fraction: float = 1.0
    batch_size: int = 0
    seed: int = 0


def check(settings: Any) -> list[str]:
    from landscape.similarity import FEATURES, KERNELS, PROBES

    problems = []
    for key, value, allowed in (
        ("features", settings.features, FEATURES),
        ("probe", settings.probe, PROBES),
        ("kernel", settings.kernel, KERNELS),
    ):
        if value not in allowed:
            problems.append(f"metrics.cka.{key}={value!r}: expected one of {', '.join(allowed)}")
    if settings.features == "layer" and not settings.layer:
        problems.append("metrics.cka.layer='': features=layer needs the name of a module (model.named_modules())")
    bs = int(settings.batch_size or 0)
    if bs != 0 and bs < 4:
        problems.append(f"metrics.cka.batch_size={bs}: expected 0 (full) or a minibatch of >= 4 samples")
    if int(settings.n_samples) < 4:
        problems.append(f"metrics.cka.n_samples={settings.n_samples!r}: expected at least 4 probe samples")
    return problems


def compute(ctx: PairContext, settings: Any) -> Result:
    from landscape.similarity import MinibatchCKA, cka_value, model_features, probe_inputs

    problems = check(settings)
    if problems:
        raise ValueError("; ".join(problems))
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
        res, debiased = acc.result(), True
    else:
        fa = model_features(ctx.a.model, x, feats, layer)
        fb = model_features(ctx.b.model, x, feats, layer)
        debiased = bool(settings.debiased)
        res = cka_value(fa, fb, settings.kernel, debiased, float(settings.rbf_fraction))
    error = None
    if res.reason is not None:  # X = model a, Y = model b
        who = {"X": f"model {ctx.a.seed}", "Y": f"model {ctx.b.seed}"}
        head, _, rest = res.reason.partition(": ")
        error = f"CKA undefined: {who.get(head, head)}: {rest}" if head in who else f"CKA undefined: {res.reason}"
    return Result({
        "cka": None if res.reason is not None else res.value,
        "cka.debiased": debiased,
        "cka.n_samples": int(x.shape[0]),
        "cka.seconds": time.perf_counter() - t0,
    }, error=error)


FAMILY = Family(
    name="cka",
    table="pairs",
    config=Config,
    metrics={"cka": pa.float64()},
    diagnostics={"cka.seconds": pa.float64()},
    compute=compute,
    check=check,
    styles={"cka": FigureStyle("CKA similarity", 0.3, 0.8, "viridis")},
    description="CKA similarity of the two models' representations",
)
