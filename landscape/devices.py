"""Choosing the torch device of a job."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: the first visible CUDA device if any, else the CPU; otherwise ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: CUDA is not available on this machine; use device=cpu or auto")
    return dev
