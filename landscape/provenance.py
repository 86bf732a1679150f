"""Provenance of a result: code version, package versions, host and device."""

from __future__ import annotations

import functools
import json
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: git_info serves torch-free callers (landscape-phase)
    import torch

_PACKAGES = ("landscape", "torch", "numpy", "scipy", "pandas", "pyarrow", "hydra-core", "omegaconf", "submitit")


@functools.lru_cache(maxsize=1)
def git_info() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding this package, or ``(None, None)`` outside one."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            != ""
        )
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


@functools.lru_cache(maxsize=1)
def package_versions() -> str:
    """JSON object of the versions of the packages that shape the numbers (plus Python's)."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return json.dumps(out, sort_keys=True)


def host() -> str:
    return socket.gethostname()


def device_name(device: "torch.device") -> str:
    """``cpu`` or ``cuda:N (<GPU name>)``."""
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
