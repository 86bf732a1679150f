"""Model family ``training``: training/test loss and accuracy of every trained model (on by default).

Losses are the mean of the configured training loss (``train.loss``) over the whole split, training labels as
trained (after label noise); accuracies are fractions in [0, 1]; ``train_acc_clean`` is the accuracy on the
original training labels. The ``training.epochs|steps|seconds|resumed|vectorized`` diagnostics describe the
training run itself and are filled by the job for every model (also with ``enabled: false``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from landscape.metrics.contract import Family, FigureStyle, ModelContext, Result
from landscape.rules import ints, rule


@dataclass
class Config:
    """``metrics.training.*``: ``eval_batch_size`` samples per forward pass of the evaluation."""

    enabled: bool = True
    eval_batch_size: int = field(default=2048, metadata=rule(ints(1)))


def compute(ctx: ModelContext, settings: Any) -> Result:
    from landscape.training import evaluate

    d, bs = ctx.data, int(settings.eval_batch_size)
    train_loss, train_acc = evaluate(ctx.model, d.x_train, d.y_train, ctx.loss_fn, bs)
    test_loss, test_acc = evaluate(ctx.model, d.x_test, d.y_test, ctx.loss_fn, bs)
    _, clean_acc = evaluate(ctx.model, d.x_train, d.y_train_clean, ctx.loss_fn, bs)
    return Result(
        {
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "train_acc_clean": clean_acc,
        }
    )


FAMILY = Family(
    name="training",
    table="models",
    config=Config,
    metrics={
        "train_loss": pa.float64(),
        "train_acc": pa.float64(),
        "test_loss": pa.float64(),
        "test_acc": pa.float64(),
        "train_acc_clean": pa.float64(),
    },
    diagnostics={
        "training.epochs": pa.int64(),
        "training.steps": pa.int64(),
        "training.seconds": pa.float64(),
        "training.resumed": pa.bool_(),
        "training.vectorized": pa.bool_(),
    },
    compute=compute,
    # paper ranges: the panels of Yang et al. (2021), Figure 1 (test accuracy; training loss drawn linearly 0-3)
    styles={
        "train_loss": FigureStyle(
            "training loss", "nats", "log10", paper=(0.0, 3.0), paper_scale="linear", cmap="magma_r"
        ),
        "train_acc": FigureStyle("training accuracy", "fraction"),
        "test_loss": FigureStyle("test loss", "nats", "log10", cmap="magma_r"),
        "test_acc": FigureStyle("test accuracy", "fraction", paper=(0.56, 0.91)),
        "train_acc_clean": FigureStyle("training accuracy on clean labels", "fraction"),
    },
    description="train/test loss and accuracy",
)
