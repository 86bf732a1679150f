"""Helpers shared by several test modules (a test module imports from here, never from another test module)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call


def with_spectrum(lam: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A dense symmetric matrix ``Q diag(lam) Q^T`` with a seeded random orthogonal ``Q`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), dtype=torch.float64, generator=g))
    A = (Q * lam) @ Q.T
    return 0.5 * (A + A.T)


def dense_hessian(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian ``[P, P]`` of ``loss_fn(model(x), y)`` w.r.t. the trainable parameters (flattened in
    ``model.parameters()`` order), by ``torch.func.hessian`` of the loss of one flat vector: an independent
    reference for ``landscape.curvature.HessianOperator`` (no batching, no cached graphs, no products)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(flat: torch.Tensor) -> torch.Tensor:
        params = dict(
            zip(
                names,
                (c.reshape(s) for c, s in zip(flat.split([s.numel() for s in shapes]), shapes, strict=True)),
                strict=True,
            )
        )
        return loss_fn(functional_call(model, params, (x,)), y)

    was = model.training
    model.eval()
    try:
        return torch.func.hessian(loss)(theta)
    finally:
        model.train(was)


def knn_graph(points, k: int) -> set[tuple[int, int]]:
    """Edges ``(i, j)``, ``i < j``, of the symmetrised k-nearest-neighbour graph of ``points [n, d]``, by brute
    force (ties broken by index)."""

    p = np.asarray(points, dtype=np.float64)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    k = min(k, len(p) - 1)
    return {(min(i, j), max(i, j)) for i in range(len(p)) for j in np.argsort(d[i], kind="stable")[:k]}


def lower_star_h0(values, edges) -> list[tuple[float, float]]:
    """H0 bars ``(birth, death)`` of the sublevel-set filtration of ``values [n]`` on a graph, by union-find and
    the elder rule (vertices in increasing value; when a vertex joins two components the younger one dies at its
    value); one ``(birth, inf)`` bar per connected component. Zero-length bars are left out."""
    import math

    f = [float(v) for v in values]
    nbrs: dict[int, list[int]] = {i: [] for i in range(len(f))}
    for i, j in edges:
        nbrs[i].append(j)
        nbrs[j].append(i)
    parent: dict[int, int] = {}
    birth: dict[int, float] = {}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bars = []
    for v in sorted(range(len(f)), key=lambda i: (f[i], i)):
        parent[v], birth[v] = v, f[v]
        for u in nbrs[v]:
            if u not in parent:
                continue
            a, b = root(u), root(v)
            if a == b:
                continue
            young, old = (a, b) if (birth[a], a) > (birth[b], b) else (b, a)
            if f[v] > birth[young]:
                bars.append((birth[young], f[v]))
            parent[young] = old
    bars += [(birth[r], math.inf) for r in {root(i) for i in parent}]
    return bars


def h0_summary(bars, threshold: float, cap: float) -> dict[str, float]:
    """``count`` (persistence > threshold, infinite bars capped at ``cap`` always counted), ``total``, ``max``
    and persistent ``entropy`` of H0 bars, written out from their definitions (Horoi et al. 2021)."""
    import math

    pers = [(cap if math.isinf(d) else d) - b for b, d in bars]
    count = sum(p > threshold or math.isinf(d) for p, (_, d) in zip(pers, bars, strict=True))
    pos = [p for p in pers if p > 0]
    entropy = -sum(p / sum(pos) * math.log(p / sum(pos)) for p in pos)
    return {"h0_count": count, "h0_total": sum(pers), "h0_max": max(pers), "h0_entropy": entropy}


def write_tiny_cifar10(root: Path, per_batch: int = 6, n_test: int = 5) -> Path:
    """A CIFAR-10 directory in the real python-pickle format, with ``per_batch`` images per training batch."""
    from landscape.data import write_synthetic_cifar10

    return write_synthetic_cifar10(root, 5 * per_batch, n_test, seed=0)


def record_sgd_lr(monkeypatch) -> list[float]:
    """Record ``param_groups[0]['lr']`` at every ``torch.optim.SGD.step`` call (the rate really used)."""
    seen: list[float] = []
    original = torch.optim.SGD.step

    def step(self, *a, **kw):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **kw)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return seen


def _dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_cell_status(sweep: Path, cid: str, **kw) -> None:
    """Write cell ``cid``'s status marker under ``sweep`` (``CellStatus`` fields as keywords)."""
    from landscape.cell import CellDir, CellStatus

    CellDir(sweep, cid).write_status(CellStatus(cell_id=cid, **kw))


def make_status_sweep(sweep: Path) -> None:
    """Seven planned cells, one in each situation; the launch record has the multirun's argv and cwd (for
    ``landscape-status`` tests)."""
    from landscape.provenance import host

    (sweep / "launches").mkdir(parents=True)
    cells = [{"cell_id": f"c{i}", "overrides": [f"model.width={i}", "+sweep=demo"]} for i in range(7)]
    (sweep / "launches" / "20260101T000000-000000001.json").write_text(
        json.dumps(
            {
                "arguments": ["model.width=0,1,2,3,4,5,6", "+sweep=demo"],
                "argv": ["-m", "model.width=0,1,2,3,4,5,6", "+sweep=demo", "hydra/launcher=slurm"],
                "cwd": "/some/where",
                "cells": cells,
            }
        )
    )
    write_cell_status(sweep, "c0", state="done", seeds={"0": "done", "1": "done"}, host=host(), pid=1)
    write_cell_status(sweep, "c1", state="done", seeds={"0": "done", "1": "diverged"}, host=host(), pid=1)
    write_cell_status(
        sweep, "c2", state="failed", error="FileNotFoundError: data.root='/x': missing data_batch_1", host=host(), pid=1
    )
    write_cell_status(sweep, "c3", state="running", host=host(), pid=os.getpid())  # alive: this process
    write_cell_status(sweep, "c4", state="running", host=host(), pid=_dead_pid())  # killed
    write_cell_status(sweep, "c5", state="running", host="another-node", pid=12345)  # heartbeat goes stale below
    # c6: planned, never started


def train_settings(**kw):
    """``landscape.training.TrainSettings`` of the tests' small training runs: SGD lr 0.05, momentum 0.9, no weight
    decay, batches of 32, 2 epochs, constant rate, a checkpoint every epoch; ``kw`` overrides any field."""
    from landscape.training import TrainSettings

    base = dict(
        loss="cross_entropy",
        lr=0.05,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=32,
        epochs=2,
        steps=None,
        schedule="constant",
        lr_decay=0.1,
        lr_milestones=[],
        checkpoint_every=1,
    )
    base.update(kw)
    return TrainSettings(**base)


def small_mlp_f64() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 tanh MLP 6 -> 10 -> 10 -> 3 and 40 random samples: a model small enough for a dense Hessian."""
    from landscape.models import MLP

    torch.manual_seed(0)
    model = MLP(6, 3, width=10, depth=2, activation="tanh").double()
    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    return model, x, y


def small_bn_cnn_f64() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 tanh CNN with BatchNorm on 1x6x6 inputs, in eval mode with non-trivial running statistics (so eval
    mode differs from train mode), and 30 random samples."""
    from landscape.models import CNN

    torch.manual_seed(1)
    model = CNN((1, 6, 6), 3, width=3, depth=2, activation="tanh", batch_norm=True).double()
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(2.0 * torch.randn(32, 1, 6, 6, dtype=torch.float64) + 0.5)
    model.eval()
    x = torch.randn(30, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return model, x, y


def toy_model_context(workdir: Path, loss: str = "cross_entropy"):
    """A model family's ``ModelContext`` on a toy problem: a tanh MLP 5 -> 8 -> 3 (seed 0) and 300 random training
    samples of 3 classes (10 of them as the test set), working in ``workdir``."""
    from landscape.data import CellData
    from landscape.metrics import ModelContext
    from landscape.models import MLP
    from landscape.training import make_loss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    data = CellData("toy", x, y, y.clone(), x[:10], y[:10], 3)
    torch.manual_seed(0)
    model = MLP(5, 3, width=8, depth=1, activation="tanh").eval()
    return ModelContext(
        model=model,
        seed=0,
        data=data,
        loss_fn=make_loss(loss),
        make_model=lambda: MLP(5, 3, 8, 1, "tanh"),
        cfg=None,
        device=torch.device("cpu"),
        workdir=workdir,
    )


def gaussian_cell_data(dim: int = 8, n_train: int = 200, separation: float = 4.0, offset: float = 0.0):
    """The Gaussian-mixture dataset of the real-small-model tests (3 classes, ``n_train`` training and 100 test
    samples in ``dim`` dimensions, means ``separation`` apart; the option's defaults otherwise: no label noise,
    seeds 0), loaded as a job loads it; ``offset`` added to every input (far from zero mean, BatchNorm's
    statistics matter)."""
    import dataclasses

    from omegaconf import OmegaConf

    from landscape.config import data_config
    from landscape.data import load_data

    cfg = data_config(name="gaussian", n_classes=3, dim=dim, separation=separation, n_train=n_train, n_test=100)
    data = load_data(OmegaConf.structured(cfg))
    return dataclasses.replace(data, x_train=data.x_train + offset, x_test=data.x_test + offset) if offset else data
