"""Jump and retrain (Horoi et al. 2021): explore the basin around a trained model.

From the trained parameters ``theta*``, each jump moves to ``theta* + s * d`` with ``d`` a fresh
filter-normalised Gaussian direction (``landscape.directions``; ``s`` is relative to the filter norms: ``s = 1``
moves every filter by its own norm), then retrains with plain SGD (constant learning rate, no momentum, no
weight decay) for ``epochs`` epochs. Every ``record_every`` steps (and at the jump and the last step) the
parameters are projected with a fixed ``RandomProjection`` and the mean train/test loss (eval mode, on fixed
seeded subsets of ``eval_samples``) is recorded. The trained model itself is the first point (``jump = -1``).
Retraining runs in ``landscape.engine``; one that diverges (its check) stops at that step.

Resumable (with a ``workdir``): every finished jump's points are saved (``jumps.pt``: the rows and projected
coordinates recorded so far and the number of jumps done), and the retraining in progress is checkpointed by the
engine (``jump_checkpoint.pt``: the work model, its optimiser, the batch-order generator and the points of that
jump so far) every epoch and at a stop request (``should_stop``, polled after every step; the engine raises
``StopRequested``). A rerun with the same model and settings continues from there, bitwise identical to an
uninterrupted run on the same device; files of another model or other settings are ignored with a warning.

``analyse`` embeds all recorded points (PHATE or PCA), builds the k-nearest-neighbour graph of the embedding
and computes the sublevel-set persistence of the train loss on it (``homology.sublevel_diagrams``) and the
Vietoris-Rips persistence of the embedding; ``topology.*`` summaries come from the loss filtration.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape.data import CellData
from landscape.directions import filter_normalised_direction
from landscape.engine import (
    DamagedCheckpoint,
    Plan,
    ShuffledTask,
    StepOut,
    atomic_torch_save,
    load_checkpoint,
    run,
    set_aside,
    state_digest,
    steps_per_epoch,
)
from landscape.params import eval_subset, flat_parameters, linear_seed, set_flat_parameters
from landscape.training import LossFn, evaluate, minibatch_forward, params_finite
from landscape.trajectories.embedding import embed
from landscape.trajectories.homology import knn_edges, rips_diagrams, sublevel_diagrams, summarise
from landscape.trajectories.projection import RandomProjection

log = logging.getLogger(__name__)

JUMPS_FILE = "jumps.pt"
"""The finished jumps' points under a ``workdir`` (see the module docstring)."""
JUMP_CHECKPOINT = "jump_checkpoint.pt"
"""The engine's checkpoint of the retraining in progress under a ``workdir``."""
FORMAT = 1  # format of ``JUMPS_FILE``


@dataclass
class JumpRetrainSettings:
    """Jumps (``n_jumps`` per scale), retraining, recording and topology settings (see the module docstring)."""

    n_jumps: int = 3
    scales: Sequence[float] = (0.25, 0.5)
    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 128
    record_every: int = 2
    projection_dim: int = 256
    eval_samples: int = 512
    seed: int = 0
    embedding: str = "phate"  # or "pca"
    phate_knn: int = 5
    phate_decay: float = 40.0
    phate_t: Any = "auto"
    phate_random_state: int = 0
    graph_knn: int = 6
    persistence_threshold: float = 0.01

    @classmethod
    def from_config(cls, cfg: Any) -> "JumpRetrainSettings":
        """Read the fields present on a config node (attribute access); missing ones keep their defaults."""
        kw = {f: getattr(cfg, f) for f in cls.__dataclass_fields__ if hasattr(cfg, f)}
        if "scales" in kw:
            kw["scales"] = [float(s) for s in kw["scales"]]
        return cls(**kw)


@dataclass
class Trajectories:
    """Recorded points: ``coords [n, projection_dim]`` and one row of metadata per point (``jump``, ``scale``,
    ``step``, ``train_loss``, ``test_loss``)."""

    coords: np.ndarray
    rows: list[dict[str, Any]]
    seconds: float = 0.0

    @property
    def train_loss(self) -> np.ndarray:
        return np.array([r["train_loss"] for r in self.rows], dtype=np.float64)

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)


class _RetrainTask(ShuffledTask):
    """Plain SGD (constant learning rate) on ``work`` after a jump; ``record`` every ``record_every`` steps into
    ``points`` (the jump's ``(rows, coords)``, saved in its checkpoints)."""

    rng_name = "jump"

    def __init__(
        self,
        work: nn.Module,
        x: Tensor,
        y: Tensor,
        loss_fn: LossFn,
        s: JumpRetrainSettings,
        seed: int,
        record: Callable[[int], None],
        points: tuple[list[dict[str, Any]], list[np.ndarray]],
    ):
        self.work, self.x, self.y, self.loss_fn, self.s, self.record = work, x, y, loss_fn, s, record
        self.points = points
        self.members = ["jump"]
        self.bs = min(int(s.batch_size), x.shape[0])
        self.opt = torch.optim.SGD(work.parameters(), lr=float(s.lr))
        self.seed_batches(seed)
        self.loss: Tensor | None = None

    def begin_epoch(self, epoch: int) -> float:
        self.shuffle(self.x.shape[0], self.x.device)
        return float(self.s.lr)

    def forward(self, epoch: int, batch: int, accuracy: bool) -> StepOut:
        self.work.train()
        self.loss, out = minibatch_forward(
            self.work, self.opt, self.x, self.y, self.perm, batch, self.bs, self.loss_fn, accuracy
        )
        return out

    def update(self, out: StepOut) -> None:
        self.loss.backward()
        self.opt.step()
        self.loss = None

    def after_step(self, step: int) -> None:
        if step % max(1, int(self.s.record_every)) == 0:
            self.record(step)

    def nonfinite_rows(self) -> list[int]:
        return [] if params_finite(self.work) else [0]

    def state_dict(self) -> dict[str, Any]:
        rows, coords = self.points
        return {
            "model": self.work.state_dict(),
            "opt": self.opt.state_dict(),
            "rows": [dict(r) for r in rows],
            "coords": [torch.from_numpy(np.array(c)) for c in coords],
        }

    def load_state_dict(self, state: dict[str, Any], members: list[Any]) -> bool:
        try:
            self.work.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
        except (KeyError, RuntimeError, ValueError) as exc:
            log.warning("jump checkpoint does not fit the model: %s", str(exc).splitlines()[0][:200])
            return False
        rows, coords = self.points
        rows[:] = [dict(r) for r in state["rows"]]
        coords[:] = [c.numpy() for c in state["coords"]]
        return True


def jump_and_retrain(
    model: nn.Module,
    loss_fn: LossFn,
    data: CellData,
    s: JumpRetrainSettings,
    projection: RandomProjection | None = None,
    should_stop: Callable[[], bool] | None = None,
    workdir: Path | None = None,
) -> Trajectories:
    """Run all jumps from ``model`` (left unchanged) and record the trajectories (see the module docstring).

    Each retraining is a run of ``landscape.engine`` (phase ``jump-retrain j``); a retraining that diverges ends
    there (logged) and its last point is recorded. ``should_stop`` is polled after every step (the engine
    checkpoints and raises ``StopRequested``). With ``workdir``, finished jumps and the retraining in progress
    are saved there and a rerun resumes from them (bitwise); without, a stopped computation starts again."""
    t0 = time.perf_counter()
    theta_star = flat_parameters(model)
    proj = projection or RandomProjection(theta_star.numel(), s.projection_dim, seed=s.seed)
    xtr, ytr = eval_subset(data.x_train, data.y_train, s.eval_samples, s.seed)
    xte, yte = eval_subset(data.x_test, data.y_test, s.eval_samples, s.seed + 1)
    work = copy.deepcopy(model)
    coords: list[np.ndarray] = []
    rows: list[dict[str, Any]] = []
    meta = _meta(model, s, proj, data) if workdir is not None else {}
    done_path = workdir / JUMPS_FILE if workdir is not None else None

    def record(into: tuple[list[dict[str, Any]], list[np.ndarray]], jump: int, scale: float, step: int) -> None:
        into[1].append(proj(flat_parameters(work)).cpu().numpy())
        tr, tra = evaluate(work, xtr, ytr, loss_fn)
        te, tea = evaluate(work, xte, yte, loss_fn)
        into[0].append(
            {
                "jump": jump,
                "scale": float(scale),
                "step": step,
                "train_loss": tr,
                "train_acc": tra,
                "test_loss": te,
                "test_acc": tea,
            }
        )

    n_done = _load_done(done_path, meta, rows, coords) if done_path is not None else 0
    if n_done == 0:
        record((rows, coords), -1, 0.0, 0)
    n = data.n_train
    plan = Plan(epochs=int(s.epochs), per_epoch=steps_per_epoch(n, min(int(s.batch_size), n)))
    jumps = [(j, float(scale)) for j, scale in enumerate(sc for sc in s.scales for _ in range(int(s.n_jumps)))]
    for jump, scale in jumps[n_done:]:
        work.load_state_dict(model.state_dict())
        d = filter_normalised_direction(model, seed=linear_seed(s.seed, 7919 * jump + 1, stride=100_003))
        set_flat_parameters(work, theta_star + scale * d)
        points: tuple[list[dict[str, Any]], list[np.ndarray]] = ([], [])
        record(points, jump, scale, 0)
        task = _RetrainTask(
            work,
            data.x_train,
            data.y_train,
            loss_fn,
            s,
            linear_seed(s.seed, jump, stride=100_003),
            lambda step, j=jump, sc=scale, p=points: record(p, j, sc, step),
            points,
        )
        result = run(
            task,
            plan,
            f"jump-retrain {jump} (scale {scale:g})",
            checkpoint_path=workdir / JUMP_CHECKPOINT if workdir is not None else None,
            meta={**meta, "jump": jump},
            should_stop=should_stop,
            map_location=theta_star.device,
        )["jump"]
        if result.status != "done":
            log.warning("jump %d (scale %g) diverged at step %d: %s", jump, scale, result.steps, result.reason)
        if points[0][-1]["step"] != result.steps:
            record(points, jump, scale, result.steps)
        rows.extend(points[0])
        coords.extend(points[1])
        if done_path is not None:
            atomic_torch_save(
                {
                    "format": FORMAT,
                    "meta": meta,
                    "jumps": jump + 1,
                    "rows": rows,
                    "coords": [torch.from_numpy(np.array(c)) for c in coords],
                },
                done_path,
                checksum=True,
            )
    work.eval()
    return Trajectories(coords=np.stack(coords), rows=rows, seconds=time.perf_counter() - t0)


def _meta(model: nn.Module, s: JumpRetrainSettings, proj: RandomProjection, data: CellData) -> dict[str, Any]:
    """What the saved jumps depend on: the settings, the trained model's state (SHA-256), the projection and the
    number of training samples; saved files with another ``meta`` are not used."""
    settings = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dataclasses.asdict(s).items()}
    return {
        "settings": settings,
        "model": state_digest(model.state_dict()),
        "n_train": int(data.n_train),
        "projection": [proj.n_params, proj.dim, proj.seed, proj.block_rows],
    }


def _load_done(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]], coords: list[np.ndarray]) -> int:
    """Fill ``rows`` and ``coords`` with the points of the finished jumps saved at ``path``; the number of
    finished jumps (0 when there is no usable file: absent, of another run, or damaged, which is set aside)."""
    if not path.exists():
        return 0
    try:
        state = load_checkpoint(path)
    except DamagedCheckpoint as exc:
        set_aside(path, exc)
        return 0
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("meta") != meta:
        log.warning("%s: finished jumps of another model or other settings: ignored", path)
        return 0
    rows[:] = [dict(r) for r in state["rows"]]
    coords[:] = [c.numpy() for c in state["coords"]]
    log.info("jump-retrain: %d finished jump(s) loaded from %s", int(state["jumps"]), path)
    return int(state["jumps"])


@dataclass
class TopologyResult:
    """The embedding ``[n, 2]``, the loss-filtration and Rips diagrams, and the ``topology.*`` summaries."""

    embedding: np.ndarray
    loss_diagrams: list[np.ndarray]
    rips_diagrams: list[np.ndarray]
    summary: dict[str, float] = field(default_factory=dict)


def analyse(traj: Trajectories, s: JumpRetrainSettings) -> TopologyResult:
    """Embed the trajectories and compute their persistent homology (see the module docstring)."""
    emb = (
        embed(
            traj.coords,
            s.embedding,
            knn=s.phate_knn,
            decay=s.phate_decay,
            t=s.phate_t,
            random_state=s.phate_random_state,
        )
        if s.embedding == "phate"
        else embed(traj.coords, s.embedding)
    )
    loss = traj.train_loss
    loss_dgms = sublevel_diagrams(loss, knn_edges(emb, s.graph_knn), maxdim=1)
    rips = rips_diagrams(emb, maxdim=1)
    summary = summarise(loss_dgms, threshold=s.persistence_threshold, cap=float(loss.max()))
    return TopologyResult(embedding=emb, loss_diagrams=loss_dgms, rips_diagrams=rips, summary=summary)
