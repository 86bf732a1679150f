"""Pair family ``cka``: CKA similarity of the two models' representations on a fixed, seeded probe set.

Metric ``cka`` (the configured estimator's value); its settings beside it (``cka.debiased`` and
``cka.n_samples`` as used: the minibatch estimator, ``batch_size > 0``, always uses unbiased HSIC (Nguyen et
al. 2021) and streams the probe set through both models batch by batch; a test/train probe has at most as
many samples as the split). CKA is undefined when a model's features are constant after centring (e.g. a
collapsed narrow ReLU network): ``cka`` is then null and ``cka.error`` says which model and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from landscape.metrics.contract import Family, FigureStyle, PairContext, Result
from landscape.rules import choices_of, ints, nums, one_of, rule


@dataclass
class Config:
    """``features``: softmax | logits | layer (then ``layer`` names a module, e.g. ``net.3``); ``probe``:
    test | train | mixup (the taxonomy paper: softmax on 768 mixup inputs); ``kernel``: linear | rbf (bandwidth
    ``rbf_fraction`` x median distance); ``batch_size``: 0 = full Gram, else minibatch CKA of that batch."""

    enabled: Any = False
    features: str = field(default="softmax", metadata=rule(one_of(choices_of("landscape.similarity", "FEATURES"))))
    layer: str = ""
    probe: str = field(default="test", metadata=rule(one_of(choices_of("landscape.similarity", "PROBES"))))
    n_samples: int = field(default=768, metadata=rule(ints(4, note="probe samples")))
    kernel: str = field(default="linear", metadata=rule(one_of(choices_of("landscape.similarity", "KERNELS"))))
    debiased: bool = False
    rbf_fraction: float = field(default=1.0, metadata=rule(nums(0.0, lo_open=True)))
    batch_size: int = field(
        default=0,
        metadata=rule(ints(4, also=(0,), note="0: the full Gram matrix; else a minibatch of that many samples")),
    )
    seed: int = 0


def check(settings: Any) -> list[str]:
    """The rule that ties two ``metrics.cka.*`` keys together (each key's own rule is its field's)."""
    if settings.features == "layer" and not settings.layer:
        return ["metrics.cka.layer='': features=layer needs the name of a module (model.named_modules())"]
    return []


def compute(ctx: PairContext, settings: Any) -> Result:
    from landscape.similarity import MinibatchCKA, cka_value, model_features, probe_inputs

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
    return Result(
        {
            "cka": None if res.reason is not None else res.value,
            "cka.debiased": debiased,
            "cka.n_samples": int(x.shape[0]),
            "cka.seconds": time.perf_counter() - t0,
        },
        error=error,
    )


FAMILY = Family(
    name="cka",
    table="pairs",
    config=Config,
    metrics={"cka": pa.float64()},
    diagnostics={"cka.seconds": pa.float64()},
    compute=compute,
    check=check,
    styles={"cka": FigureStyle("CKA similarity", "unitless", paper=(0.3, 0.8))},  # paper: Yang et al. (2021), Fig. 1
    description="CKA similarity of the two models' representations",
)
