"""Helpers shared by several test modules (a test module imports from here, never from another test module)."""

from __future__ import annotations

import json
import os
import pickle
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
    import numpy as np

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
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


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
