"""Numerics of the training steps: ``train.precision`` (fp32 | tf32 | bf16) and ``train.compile``.

Applied to the training of the cell's models only (``training.train_model``, ``vectorized.train_together``):
the contexts below are entered around a step's forward pass and its backward pass, nothing else, so evaluation,
the Hessian, curves and every other metric run in float32 whatever the setting.

* ``fp32`` (default): float32 tensors with PyTorch's defaults (on CUDA that lets cuDNN convolutions use
  TensorFloat-32, ``torch.backends.cudnn.allow_tf32 = True``; matrix products stay full float32);
* ``tf32``: on CUDA, matrix products and convolutions in TensorFloat-32 (10-bit mantissa inputs, float32 sums)
  during the step, the previous flags restored after it; no effect on CPU (which has no TF32);
* ``bf16``: the forward pass under ``torch.autocast(dtype=torch.bfloat16)`` (matrix products and convolutions in
  bfloat16; BatchNorm, softmax and the loss in float32); weights, gradients, momentum and the update stay float32.

``compile``: the model's forward of a serial run through ``torch.compile`` (same parameters; stacked seeds are not
compiled, their forward is ``vmap``'s). Neither is on by default: their effect on the numbers is stated in
``benchmarks/bench_bn_stack.py --precision`` and the tests (``tests/test_device_batches.py``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> None:
    """Raise ``ValueError`` naming ``train.precision`` unless it is one of ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r}: expected one of {', '.join(PRECISIONS)}")


@contextmanager
def step_precision(precision: str, device_type: str, backward: bool = False) -> Iterator[None]:
    """The context of a training step's forward pass (``backward=False``) or backward pass (``True``) under
    ``precision`` on a device of type ``device_type`` (``cpu``, ``cuda``); see the module docstring."""
    check_precision(precision)
    if precision == "bf16" and not backward:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
            yield
        return
    if precision == "tf32" and device_type == "cuda":
        old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        return
    yield


def compiled(model: nn.Module, on: bool) -> nn.Module:
    """``torch.compile(model)`` when ``on`` (a wrapper sharing ``model``'s parameters and buffers), else ``model``."""
    return torch.compile(model) if on else model


__all__ = ["PRECISIONS", "check_precision", "compiled", "step_precision"]
