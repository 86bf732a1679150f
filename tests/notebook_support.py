"""Executing the jupytext notebooks of ``analysis/`` as notebooks, through ``analysis/run_notebook.py`` (what
``make notebook`` runs): converted by jupytext, parameters injected after the cell tagged ``parameters`` (as
papermill does), run cell by cell in a real IPython kernel by nbclient."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from conftest import analysis_module


def _runner():
    return analysis_module("run_notebook")


def execute_notebook(
    path: Path,
    parameters: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: int = 300,
):
    """The executed ``nbformat`` notebook of the jupytext file ``path`` (``run_notebook.execute``); ``env``:
    variables set for the kernel (its process inherits this one's environment) and restored after."""
    import ipykernel  # noqa: F401 - the kernel nbclient starts (jupytext, nbclient, ipykernel: the dev extra)

    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return _runner().execute(path, parameters, cwd=cwd, timeout=timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def outputs(nb) -> list[dict]:
    """Every output of every code cell, in order."""
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def stdout(nb) -> str:
    """The text the notebook's cells printed."""
    return "".join(
        o.get("text", "") for o in outputs(nb) if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


def images(nb) -> list[str]:
    """The inline PNG images the notebook shows (base64)."""
    return [o["data"]["image/png"] for o in outputs(nb) if "image/png" in o.get("data", {})]
