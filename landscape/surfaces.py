"""Loss surfaces: the loss of a trained model along lines and planes through its parameters.

For a trained point ``theta [P]`` and directions ``d1, d2 [P]`` the surface is
``L(alpha, beta) = loss(theta + alpha * d1 + beta * d2)`` on a grid of ``alpha, beta`` (a 1-D line uses
``d1`` only and ``beta = 0``). Losses are means over a fixed evaluation set with the model in eval mode
(BatchNorm uses its running statistics), batches weighted by their size; accuracies are fractions.

Many parameter points are evaluated per pass with ``torch.func.functional_call`` under ``torch.vmap``
(``PointEvaluator``); where that fails (memory, an op without a batching rule) it falls back to a loop over
points. Grid rows are computed in chunks that are cached in a work directory, so a killed run resumes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape.params import (
    eval_subset,  # noqa: F401 - re-exported
    flat_parameters,
    functional_forward,
    unflatten,
)
from landscape.training import LossFn, atomic_torch_save

log = logging.getLogger(__name__)

SURFACE_COLUMNS = ("alpha", "beta", "train_loss", "train_acc", "test_loss", "test_acc")


class PointEvaluator:
    """Mean loss and accuracy of ``model``'s architecture at many flat parameter vectors over ``(x, y)``.

    ``evaluator(points [m, P]) -> (loss [m], acc [m])`` (float64 numpy). Buffers are taken from ``model``
    (eval mode). ``chunk`` points go through one ``vmap``-ed pass per data batch of ``batch_size`` samples;
    ``use_vmap=False`` (or a failure of the vmap path) evaluates the points one at a time.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        x: Tensor,
        y: Tensor,
        batch_size: int = 1024,
        chunk: int = 16,
        use_vmap: bool = True,
    ):
        self.model = model.eval()
        self.loss_fn = loss_fn
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.chunk = max(1, int(chunk))
        self.use_vmap = use_vmap
        self.buffers = {n: b for n, b in model.named_buffers()}

    def _one(self, flat: Tensor, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        params = unflatten(flat, self.model)
        logits = functional_forward(self.model, params, xb, self.buffers)
        return self.loss_fn(logits, yb), (logits.argmax(dim=-1) == yb).sum()

    @torch.no_grad()
    def _run(self, points: Tensor, batched: bool) -> tuple[Tensor, Tensor]:
        m, n = points.shape[0], self.x.shape[0]
        loss = torch.zeros(m, dtype=torch.float64, device=points.device)
        correct = torch.zeros(m, dtype=torch.float64, device=points.device)
        fn = torch.vmap(self._one, in_dims=(0, None, None)) if batched else None
        for i in range(0, n, self.batch_size):
            xb, yb = self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            if batched:
                lb, cb = fn(points, xb, yb)
            else:
                pairs = [self._one(p, xb, yb) for p in points]
                lb = torch.stack([p[0] for p in pairs])
                cb = torch.stack([p[1] for p in pairs])
            loss += lb.double() * len(yb)
            correct += cb.double()
        return loss / n, correct / n

    def __call__(self, points: Tensor) -> tuple[np.ndarray, np.ndarray]:
        losses, accs = [], []
        for i in range(0, points.shape[0], self.chunk):
            block = points[i : i + self.chunk]
            if self.use_vmap:
                try:
                    lb, ab = self._run(block, batched=True)
                except (RuntimeError, NotImplementedError) as e:  # OOM or an op without a batching rule
                    log.warning("vmap evaluation failed (%s); falling back to a loop over points", e)
                    self.use_vmap = False
                    lb, ab = self._run(block, batched=False)
            else:
                lb, ab = self._run(block, batched=False)
            losses.append(lb.cpu().numpy())
            accs.append(ab.cpu().numpy())
        return np.concatenate(losses), np.concatenate(accs)


def grid_axis(span: float, resolution: int) -> np.ndarray:
    """``resolution`` equally spaced coefficients in ``[-span, span]`` (includes 0 for odd resolutions)."""
    if resolution < 1:
        raise ValueError(f"resolution={resolution}: must be >= 1")
    return np.linspace(-span, span, int(resolution)) if resolution > 1 else np.zeros(1)


@dataclass
class Surface:
    """A loss surface on a grid: ``alphas [A]``, ``betas [B]``; arrays ``[A, B]`` (test arrays None if not
    evaluated)."""

    alphas: np.ndarray
    betas: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: np.ndarray | None = None
    test_acc: np.ndarray | None = None

    def rows(self) -> list[dict[str, float]]:
        """The long table: one row per grid point with the columns ``SURFACE_COLUMNS`` (nulls as None)."""
        out = []
        for i, a in enumerate(self.alphas):
            for j, b in enumerate(self.betas):
                out.append(
                    {
                        "alpha": float(a),
                        "beta": float(b),
                        "train_loss": float(self.train_loss[i, j]),
                        "train_acc": float(self.train_acc[i, j]),
                        "test_loss": None if self.test_loss is None else float(self.test_loss[i, j]),
                        "test_acc": None if self.test_acc is None else float(self.test_acc[i, j]),
                    }
                )
        return out

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(SURFACE_COLUMNS))


def _fingerprint(*arrays: Any) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a, dtype=np.float64)).tobytes())
    return h.hexdigest()[:12]


def _load_block(path: Path) -> dict[str, Tensor] | None:
    """A saved block of grid rows (tensors only, ``weights_only=True``); None (named in a warning, recomputed)
    if the file is damaged or holds anything but tensors."""
    try:
        block = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, flipped or crafted file: recompute the block
        log.warning("%s: damaged or unsafe surface block (%s); recomputed", path, str(exc).splitlines()[0][:200])
        return None
    if not isinstance(block, dict) or not all(isinstance(v, Tensor) for v in block.values()):
        log.warning("%s: not a surface block; recomputed", path)
        return None
    return block


def loss_surface(
    model: nn.Module,
    loss_fn: LossFn,
    train: tuple[Tensor, Tensor],
    d1: Tensor,
    d2: Tensor | None = None,
    alphas: Sequence[float] | np.ndarray = (0.0,),
    betas: Sequence[float] | np.ndarray | None = None,
    test: tuple[Tensor, Tensor] | None = None,
    chunk: int = 16,
    batch_size: int = 1024,
    use_vmap: bool = True,
    workdir: Path | None = None,
    rows_per_chunk: int | None = None,
) -> Surface:
    """Loss and accuracy of ``theta + alpha * d1 + beta * d2`` on the grid ``alphas x betas`` around the
    model's current parameters ``theta``; a line when ``d2`` is None (``betas = [0]``).

    ``train``/``test``: evaluation sets ``(x, y)``. ``chunk``: grid points per vmap pass. With ``workdir``,
    each block of ``rows_per_chunk`` grid rows (default: enough rows for ``chunk`` points) is saved there
    once computed and reused by a rerun with the same grid and directions.
    """
    theta = flat_parameters(model)
    alphas = np.asarray(alphas, dtype=np.float64)
    if d2 is None:
        betas = np.zeros(1)
    betas = np.asarray(betas if betas is not None else alphas, dtype=np.float64)
    d1 = d1.to(theta)
    d2t = torch.zeros_like(theta) if d2 is None else d2.to(theta)
    evals = {"train": PointEvaluator(model, loss_fn, *train, batch_size=batch_size, chunk=chunk, use_vmap=use_vmap)}
    if test is not None:
        evals["test"] = PointEvaluator(model, loss_fn, *test, batch_size=batch_size, chunk=chunk, use_vmap=use_vmap)
    rows = rows_per_chunk or max(1, chunk // len(betas))
    key = _fingerprint(
        alphas,
        betas,
        theta.double().cpu()[:: max(1, theta.numel() // 4096)],
        d1.double().cpu().sum().reshape(1),
        d2t.double().cpu().sum().reshape(1),
        [d1.double().norm().item(), d2t.double().norm().item(), len(evals)],
    )
    if workdir is not None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)

    A, B = len(alphas), len(betas)
    out = {f"{s}_{m}": np.full((A, B), np.nan) for s in evals for m in ("loss", "acc")}
    b_t = torch.as_tensor(betas, dtype=theta.dtype, device=theta.device)
    for i0 in range(0, A, rows):
        i1 = min(A, i0 + rows)
        path = None if workdir is None else workdir / f"surface-{key}-rows{i0:05d}-{i1:05d}.pt"
        block = _load_block(path) if path is not None and path.exists() else None
        if block is None:
            a_t = torch.as_tensor(alphas[i0:i1], dtype=theta.dtype, device=theta.device)
            aa, bb = torch.meshgrid(a_t, b_t, indexing="ij")
            points = theta + aa.reshape(-1, 1) * d1 + bb.reshape(-1, 1) * d2t  # [(i1-i0)*B, P]
            block = {}
            for s, ev in evals.items():
                loss, acc = ev(points)
                block[f"{s}_loss"], block[f"{s}_acc"] = loss.reshape(i1 - i0, B), acc.reshape(i1 - i0, B)
            block = {k: torch.as_tensor(v).cpu() for k, v in block.items()}  # tensors only: weights_only loads
            if path is not None:
                atomic_torch_save(block, path)
        for name, arr in block.items():
            out[name][i0:i1] = arr.numpy()
        log.debug("surface rows %d-%d of %d done", i0, i1, A)
    return Surface(
        alphas=alphas,
        betas=betas,
        train_loss=out["train_loss"],
        train_acc=out["train_acc"],
        test_loss=out.get("test_loss"),
        test_acc=out.get("test_acc"),
    )


# ------------------------------------------------------------------------------------------------ figures
def plot_contour(
    surface: Surface, value: str = "train_loss", ax: Any = None, levels: int = 30, log_scale: bool = False
) -> Any:
    """Filled contour plot of ``surface.<value>`` over (alpha, beta); returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    z = getattr(surface, value)
    z = np.log10(z) if log_scale else z
    cs = ax.contourf(surface.alphas, surface.betas, z.T, levels=levels, cmap="viridis")
    ax.contour(surface.alphas, surface.betas, z.T, levels=levels, colors="k", linewidths=0.3)
    ax.figure.colorbar(cs, ax=ax, label=("log10 " if log_scale else "") + value)
    ax.set_xlabel("alpha (direction 1)")
    ax.set_ylabel("beta (direction 2)")
    return ax
