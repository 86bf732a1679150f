"""Check that the global metrics (cka, connectivity) run on an accelerator and agree with the CPU.

Two small models (an MLP, and a CNN with BatchNorm) are trained on CPU, then the same pair is measured on
CPU and on ``--device`` (default cuda); the script prints both rows' scalars and their largest difference.
Run: ``python benchmarks/global_metrics_device_check.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from landscape.data import load_data
from landscape.metrics import ModelContext, PairContext
from landscape.metrics import cka as cka_family
from landscape.metrics import connectivity as conn_family
from landscape.models import build_model
from landscape.training import TrainSettings, make_loss, train_model

log = logging.getLogger("device-check")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = load_data(
        SimpleNamespace(name="digits", split_seed=0, subsample=1.0, subsample_seed=0, label_noise=0.0, noise_seed=0)
    )
    loss_fn = make_loss("cross_entropy")
    settings = TrainSettings(
        loss="cross_entropy",
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=32,
        epochs=5,
        steps=None,
        schedule="constant",
        lr_decay=0.1,
        lr_milestones=[],
        checkpoint_every=100,
    )
    root = Path(tempfile.mkdtemp(prefix="gm-device-"))
    worst = 0.0
    for mcfg in (
        SimpleNamespace(name="mlp", width=32, depth=2, activation="relu"),
        SimpleNamespace(name="cnn", width=8, depth=2, activation="relu", batch_norm=True),
    ):
        models = []
        for seed in (0, 1):
            m = build_model(mcfg, data.input_shape, data.n_classes, seed=seed)
            train_model(m, data.x_train, data.y_train, settings, seed, root / f"{mcfg.name}{seed}")
            models.append(m.eval())
        rows = {}
        for dev in ("cpu", args.device):
            d = torch.device(dev)
            dd = data.to(d)
            ctxs = [
                ModelContext(
                    model=copy.deepcopy(m).to(d),
                    seed=s,
                    data=dd,
                    loss_fn=loss_fn,
                    make_model=lambda d=d: build_model(mcfg, data.input_shape, data.n_classes).to(d),  # noqa: B023 (called within this iteration)
                    cfg=None,
                    device=d,
                    workdir=root / f"w{s}",
                )
                for s, m in enumerate(models)
            ]
            pair = PairContext(ctxs[0], ctxs[1], root / f"pair-{mcfg.name}-{dev}")
            row = cka_family.FAMILY.compute(pair, cka_family.Config(enabled=True)).values
            cka_family.FAMILY.compute(
                pair, cka_family.Config(enabled=True, batch_size=128, kernel="rbf", probe="mixup")
            )
            row |= conn_family.FAMILY.compute(pair, conn_family.Config(enabled=True, epochs=5)).values
            rows[dev] = row
            log.info(
                "%s %s: cka %.6f mc %.4f mc_loss %.5f barrier %.5f curve_barrier %.5f (%.2f s curve)",
                mcfg.name,
                dev,
                row["cka"],
                row["connectivity.mc"],
                row["connectivity.mc_loss"],
                row["connectivity.barrier"],
                row["connectivity.curve_barrier"],
                row["connectivity.curve_seconds"],
            )
        a, b = rows["cpu"], rows[args.device]
        diff = max(
            abs(a[k] - b[k])
            for k in ("cka", "connectivity.mc_loss", "connectivity.barrier", "connectivity.curve_barrier")
        )
        log.info("%s: largest |cpu - %s| over cka, mc_loss, barriers = %.2e", mcfg.name, args.device, diff)
        worst = max(worst, diff)
    log.info("worst difference %.2e", worst)


if __name__ == "__main__":
    main()
