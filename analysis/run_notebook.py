"""Execute one of the jupytext notebooks of ``analysis/`` as a notebook and save it with its outputs.

    python analysis/run_notebook.py NOTEBOOK.py [--out OUT.ipynb] [-p NAME=VALUE ...] [--timeout S]

The percent-format ``NOTEBOOK.py`` is converted by jupytext; each ``-p NAME=VALUE`` is assigned in a cell
inserted after the cell tagged ``parameters`` (as papermill does; VALUE is a Python literal, else a string);
the notebook runs in a fresh IPython kernel (nbclient) whose working directory is the repository's, and is
written to ``OUT.ipynb`` (default: beside ``NOTEBOOK.py``) with its printed text and inline figures, ready to
open in Jupyter. ``make notebook`` runs the exploration notebook on the demo sweep this way.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def parse_parameter(item: str) -> tuple[str, Any]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)``: VALUE as a Python literal where it is one, else the string."""
    if "=" not in item:
        raise ValueError(f"-p {item!r}: expected NAME=VALUE")
    name, raw = item.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value


def execute(path: Path, parameters: dict[str, Any] | None = None, cwd: Path | None = None, timeout: int = 600):
    """The executed ``nbformat`` notebook of the jupytext file ``path`` (``parameters`` injected after its
    ``parameters`` cell; ``cwd``: the kernel's working directory, default the repository). A cell that raises
    raises ``nbclient.exceptions.CellExecutionError`` with its traceback."""
    import jupytext
    import nbclient
    import nbformat

    nb = jupytext.read(path)
    if parameters:
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
        if not tagged:
            raise ValueError(f"{path}: no cell tagged 'parameters' to set {sorted(parameters)} after")
        source = "# injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    client = nbclient.NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd or REPO)}}
    )
    client.execute()
    return nb


def n_images(nb) -> int:
    """Number of inline PNG figures among the notebook's outputs."""
    return sum(
        "image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebook", type=Path, help="a jupytext percent-format notebook, e.g. analysis/explore_sweep.py")
    ap.add_argument("--out", type=Path, default=None, help="the executed .ipynb (default: beside the notebook)")
    ap.add_argument(
        "-p",
        dest="parameters",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter set after the notebook's parameters cell, e.g. SWEEP_DIR=outputs/demo",
    )
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell (600)")
    args = ap.parse_args(argv)
    import nbformat

    out = args.out or args.notebook.with_suffix(".ipynb")
    nb = execute(args.notebook, dict(parse_parameter(p) for p in args.parameters), timeout=args.timeout)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    print(
        f"wrote {out} ({n_images(nb)} inline figures); open it with `jupyter lab {out}` "
        "(pip install jupyterlab) or VS Code"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
