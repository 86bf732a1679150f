"""Cost of a demo cell's global metrics (l2, cka, connectivity with default settings) as a ratio to the
cell's training time: MLP width 32 depth 2 on digits (1437 training images), 2 seeds, 20 epochs, batch 32.

Run: ``.venv/bin/python benchmarks/global_metrics_cost.py [--epochs E] [--curve-epochs C] [--curve-batch B]``
Prints one line per phase and the ratio (target <= 1). Times are wall-clock on the machine at hand.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

from landscape.data import load_data
from landscape.directions import l2_distance
from landscape.metrics import ModelContext, PairContext
from landscape.metrics import cka as cka_family
from landscape.metrics import connectivity as conn_family
from landscape.models import build_model
from landscape.training import TrainSettings, evaluate, make_loss, train_model

log = logging.getLogger("benchmark")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--curve-epochs", type=int, default=None)
    ap.add_argument("--curve-batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    data = load_data(
        SimpleNamespace(name="digits", split_seed=0, subsample=1.0, subsample_seed=0, label_noise=0.0, noise_seed=0)
    )
    mcfg = SimpleNamespace(name="mlp", width=32, depth=2, activation="relu")
    settings = TrainSettings(
        loss="cross_entropy",
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=32,
        epochs=args.epochs,
        steps=None,
        schedule="constant",
        lr_decay=0.1,
        lr_milestones=[],
        checkpoint_every=1000,
    )
    loss_fn = make_loss("cross_entropy")
    root = Path(tempfile.mkdtemp(prefix="gm-bench-"))
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # one-time lazy imports, outside the timings
    ctxs, train_s = [], 0.0
    for seed in (0, 1):
        model = build_model(mcfg, data.input_shape, data.n_classes, seed=seed)
        t0 = time.perf_counter()
        train_model(model, data.x_train, data.y_train, settings, seed=seed, workdir=root / f"seed{seed}")
        train_s += time.perf_counter() - t0
        model.eval()
        log.info(
            "seed %d: train %.3f / test acc %.3f",
            seed,
            *(evaluate(model, data.x_train, data.y_train, loss_fn)[1:]),
            evaluate(model, data.x_test, data.y_test, loss_fn)[1],
        )
        ctxs.append(
            ModelContext(
                model=model,
                seed=seed,
                data=data,
                loss_fn=loss_fn,
                make_model=lambda: build_model(mcfg, data.input_shape, data.n_classes),
                cfg=None,
                device=torch.device("cpu"),
                workdir=root / f"w{seed}",
            )
        )
    pair = PairContext(a=ctxs[0], b=ctxs[1], workdir=root / "pair")

    t0 = time.perf_counter()
    l2 = l2_distance(pair.a.model, pair.b.model)
    l2_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = cka_family.FAMILY.compute(pair, cka_family.Config(enabled=True)).values
    cka_s = time.perf_counter() - t0
    ccfg = conn_family.Config(enabled=True)
    if args.curve_epochs is not None:
        ccfg = replace(ccfg, epochs=args.curve_epochs)
    if args.curve_batch is not None:
        ccfg = replace(ccfg, batch_size=args.curve_batch)
    t0 = time.perf_counter()
    row = conn_family.FAMILY.compute(pair, ccfg).values
    conn_s = time.perf_counter() - t0
    glob = l2_s + cka_s + conn_s
    fmt = lambda xs: "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"  # noqa: E731 - a one-line helper used on the next lines
    log.info("training (2 seeds, %d epochs, batch 32): %.2f s", args.epochs, train_s)
    log.info(
        "l2 %.4f s (%.2f) | cka %.3f s (cka=%.4f) | connectivity %.2f s (line %.2f s, curve %.2f s)",
        l2_s,
        l2,
        cka_s,
        c["cka"],
        conn_s,
        row["connectivity.line_seconds"],
        row["connectivity.curve_seconds"],
    )
    log.info(
        "curve: %d epochs, batch %d; history %s", ccfg.epochs, ccfg.batch_size, fmt(row["connectivity.curve_history"])
    )
    log.info("line train err %% %s barrier %.3f", fmt(row["connectivity.line_train_err"]), row["connectivity.barrier"])
    log.info(
        "curve train err %% %s mc %.3f mc_loss %.4f",
        fmt(row["connectivity.curve_train_err"]),
        row["connectivity.mc"],
        row["connectivity.mc_loss"],
    )
    log.info("ratio global / training = %.2f (target <= 1)", glob / train_s)


if __name__ == "__main__":
    main()
