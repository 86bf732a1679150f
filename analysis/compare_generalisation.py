"""Clean vs noisy labels through jump and retrain (Horoi et al. 2021): an experiment, not a library function.

``compare_generalisation`` trains a one-hidden-layer MLP on digits for each label-noise level, runs
jump-and-retrain from each (``landscape.trajectories.jump_retrain``) and tabulates the topology summaries.
Used by ``tests/test_trajectories.py``; the sweep-based version of the same comparison is
``analysis/jump_retrain.py`` (``sweeps/jump_retrain_noise.yaml``).

Run: ``python analysis/compare_generalisation.py`` (prints the table).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import torch

from landscape.training import evaluate
from landscape.trajectories.jump_retrain import JumpRetrainSettings, analyse, jump_and_retrain

log = logging.getLogger(__name__)


def compare_generalisation(
    label_noise: Sequence[float] = (0.0, 0.5),
    width: int = 32,
    train_epochs: int = 30,
    train_lr: float = 0.05,
    settings: JumpRetrainSettings | None = None,
    seed: int = 0,
    subsample: float | int = 1.0,
) -> Any:
    """Train a one-hidden-layer MLP of ``width`` on digits for each label-noise level (clean = generalises,
    50 % noise = memorises), run jump-and-retrain from each and return a pandas DataFrame with one row per
    level: train/test accuracy of the trained model, the ``topology.*`` summaries and the mean train loss
    after retraining. For the notebook and its test."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    import pandas as pd

    from landscape.data import load_data
    from landscape.models import MLP
    from landscape.training import TrainSettings, make_loss, train_model

    s = settings or JumpRetrainSettings()
    loss_fn = make_loss("cross_entropy")
    out = []
    for noise in label_noise:
        cfg = SimpleNamespace(
            name="digits", split_seed=0, subsample=subsample, subsample_seed=0, label_noise=float(noise), noise_seed=0
        )
        data = load_data(cfg)
        torch.manual_seed(seed)
        model = MLP(int(np.prod(data.input_shape)), data.n_classes, width=width, depth=1)
        ts = TrainSettings(
            loss="cross_entropy",
            lr=train_lr,
            momentum=0.9,
            weight_decay=0.0,
            batch_size=64,
            epochs=train_epochs,
            steps=None,
            schedule="constant",
            lr_decay=1.0,
            lr_milestones=[],
            checkpoint_every=10**6,
        )
        with tempfile.TemporaryDirectory() as tmp:
            train_model(model, data.x_train, data.y_train, ts, seed=seed, workdir=Path(tmp))
        model.eval()
        tr_loss, tr_acc = evaluate(model, data.x_train, data.y_train, loss_fn)
        te_loss, te_acc = evaluate(model, data.x_test, data.y_test, loss_fn)
        traj = jump_and_retrain(model, loss_fn, data, s)
        topo = analyse(traj, s)
        final = [r["train_loss"] for r in traj.rows if r["jump"] >= 0]
        out.append(
            {
                "label_noise": float(noise),
                "train_loss": tr_loss,
                "train_acc": tr_acc,
                "test_loss": te_loss,
                "test_acc": te_acc,
                "mean_traj_train_loss": float(np.mean(final)),
                "n_points": len(traj.rows),
                **topo.summary,
            }
        )
    log.info("compare_generalisation settings: %s", asdict(s))
    return pd.DataFrame(out)


if __name__ == "__main__":
    print(compare_generalisation().to_string())
