"""The structure of the package, checked on its source (issue 21): the import graph has no cycle, counting the
imports inside functions; every module imports alone in a fresh interpreter, loading no more of the package
than its module-level imports say; no module reaches into another's private names or state; the layout of a
sweep directory is spelled in ``landscape.sweepdir`` and nowhere else."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "landscape"
LAYOUT_MODULE = PKG / "sweepdir.py"


# ------------------------------------------------------------------------------------------- the graph
def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = PKG) -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package at ``root``."""
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def import_edges(mods: dict[str, Path], module_level_only: bool = False) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from every ``import`` statement of its file, inside
    functions too (unless ``module_level_only``; imports in class bodies and ``if``/``try`` blocks run at import
    time and always count). An import names the module it loads: ``from a.b import c`` is ``a.b.c`` where that
    is a module, else ``a.b``; a parent package that Python initialises on the way is not an edge of its own
    (a package's ``__init__`` importing its submodules is not a cycle with them)."""
    out: dict[str, set[str]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        names: list[str] = []
        for node in ast.walk(tree):
            if module_level_only and _in_function(node, parents):
                continue
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
                names += [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        found = set()
        for name in names:
            while name and name not in mods:  # ``import a.b.c`` of a module; ``from a.b import obj``
                name = name.rpartition(".")[0]
            if name and name != mod:
                found.add(name)
        out[mod] = found
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one node (each a cycle or a knot of them),
    sorted (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return sorted(found)


def _describe(graph: dict[str, set[str]], comp: list[str]) -> str:
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & set(comp)))}" for m in comp)


def test_the_import_graph_has_no_cycle_counting_imports_inside_functions():
    mods = package_modules()
    assert len(mods) >= 50 and "landscape.sweepdir" in mods
    graph = import_edges(mods)
    assert graph["landscape.results.schema"] >= {"landscape.config", "landscape.metrics"}  # function-level edges
    found = cycles(graph)
    assert found == [], "\n".join(_describe(graph, c) for c in found)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "landscape"
    for rel, text in files.items():
        f = pkg / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return pkg


def test_the_cycle_check_finds_a_cycle_through_function_level_imports(tmp_path):
    """The checker can fail: the cycle this issue removed (config -> metrics -> results.schema -> config, every
    edge inside a function) is found, and so is a relative import; a package importing its own submodule is not
    a cycle."""
    pkg = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "config.py": "def build():\n    from landscape.metrics import families\n",
            "metrics/__init__.py": "from landscape.metrics.contract import Family\n"
            "def clear():\n    from landscape.results import schema\n",
            "metrics/contract.py": "class Family: ...\n",
            "results/__init__.py": "from . import schema\n",
            "results/schema.py": "def knobs():\n    from ..config import build\n",
        },
    )
    graph = import_edges(package_modules(pkg))
    assert graph["landscape.results.schema"] == {"landscape.config"}
    assert graph["landscape.metrics"] == {"landscape.metrics.contract", "landscape.results.schema"}
    assert cycles(graph) == [["landscape.config", "landscape.metrics", "landscape.results.schema"]]
    assert cycles(import_edges(package_modules(pkg), module_level_only=True)) == []


# ------------------------------------------------------------------------------- fresh interpreters
_FRESH_IMPORTS = r"""
import importlib, json, os, sys, traceback
# third-party libraries once (the slow part); every module of the package then in a fork of its own
import numpy, pandas, pyarrow, pyarrow.parquet, omegaconf, torch  # noqa: F401,E401 - imported for their import time only
assert not [m for m in sys.modules if m == "landscape" or m.startswith("landscape.")]
closure = json.loads(sys.stdin.read())
report = {}
for mod in sorted(closure):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(mod)
            loaded = sorted(m for m in sys.modules if m.startswith("landscape.") and sys.modules[m] is not None)
            extra = sorted(set(loaded) - set(closure[mod]))
            msg = f"loaded {extra}, which its import statements do not reach" if extra else ""
        except BaseException:
            msg = traceback.format_exc(limit=-3)
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    if chunks:
        report[mod] = b"".join(chunks).decode()
print(json.dumps(report))
"""


def _closure(graph: dict[str, set[str]], mod: str, mods: dict[str, Path]) -> set[str]:
    """What importing ``mod`` may load: what its imports reach (inside functions too: a module may call one at
    import time), transitively, with every parent package."""
    seen: set[str] = set()
    todo = [mod]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(graph[m])
    return {m for m in seen if m in mods}


def test_every_module_imports_alone_in_a_fresh_interpreter_and_loads_only_what_its_imports_reach():
    """Each module of the package imported first, alone (a fork of an interpreter that holds the third-party
    libraries and nothing of the package): it imports, and every package module it loads is one its import
    statements reach (no ``importlib``/``__import__`` by name that the graph above would miss)."""
    mods = package_modules()
    graph = import_edges(mods)
    closure = {m: sorted(_closure(graph, m, mods)) for m in mods}
    out = subprocess.run(
        [sys.executable, "-c", _FRESH_IMPORTS],
        input=json.dumps(closure),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {}, "\n\n".join(f"{m}:\n{msg}" for m, msg in sorted(report.items()))


# ------------------------------------------------------------------------------- other modules' state
def private_reaches(path: Path, module: str, mods: dict[str, Path]) -> list[str]:
    """Where the file of ``module`` uses another module's private names: ``from landscape.x import _name``,
    ``alias._name`` of an imported module of the package, or ``sys.modules`` of a module of the package (a way
    around both)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    aliases: dict[str, str] = {}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
            if not (base == "landscape" or base.startswith("landscape.")) or base == module:
                continue
            for a in node.names:
                if f"{base}.{a.name}" in mods:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
                elif a.name.startswith("_") and not a.name.startswith("__"):
                    out.append(f"{path.name}:{node.lineno} imports {base}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("landscape.") and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and aliases[node.value.id] != module
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            out.append(f"{path.name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "modules"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        ):  # sys.modules["landscape..."], sys.modules.get("landscape...")
            use = parents.get(node)
            use = parents.get(use) if isinstance(use, ast.Attribute) else use
            keys = [use.slice] if isinstance(use, ast.Subscript) else use.args if isinstance(use, ast.Call) else []
            if any(isinstance(k, ast.Constant) and str(k.value).startswith("landscape") for k in keys):
                out.append(f"{path.name}:{node.lineno} reads sys.modules of the package")
    return out


def test_no_module_reaches_into_another_modules_private_names_or_state():
    mods = package_modules()
    found = [r for m, p in mods.items() for r in private_reaches(p, m, mods)]
    assert found == []


def test_the_private_name_check_can_fail(tmp_path):
    pkg = _write_package(
        tmp_path,
        {
            "__init__.py": "",
            "cell.py": "def _status_from_json(): ...\n",
            "config.py": "_ROOT = {}\n",
            "results/__init__.py": "",
            "results/io.py": "from landscape.cell import _status_from_json\n",
            "metrics.py": "import sys\nfrom landscape import config\n"
            "def clear():\n    config._ROOT.clear()\n    sys.modules['landscape.config']._ROOT.clear()\n",
        },
    )
    mods = package_modules(pkg)
    found = sorted(r for m, p in mods.items() for r in private_reaches(p, m, mods))
    assert found == [
        "io.py:1 imports landscape.cell._status_from_json",
        "metrics.py:4 uses landscape.config._ROOT",
        "metrics.py:5 reads sys.modules of the package",
    ]


def test_a_family_registered_later_reaches_the_root_config_and_the_schemas_through_on_change():
    """What config and results.schema derive from the registry is forgotten through ``metrics.on_change``
    (no module clears another's state): a family registered after both were built shows in each, and is gone
    from each once unregistered."""
    from dataclasses import dataclass, fields

    import pyarrow as pa

    from landscape import config, metrics
    from landscape.results import schema

    before = [f.name for f in fields(config.MetricsConfig)]
    assert "zz_layout" not in before and "zz_layout.value" not in schema.schema_for("models").names

    @dataclass
    class Cfg:
        enabled: bool = False

    metrics.register(
        metrics.Family(
            name="zz_layout",
            table="models",
            config=Cfg,
            metrics={"zz_layout.value": pa.float64()},
            compute=lambda c, s: metrics.Result(),
        )
    )
    try:
        assert "zz_layout" in [f.name for f in fields(config.MetricsConfig)]
        assert "zz_layout.value" in schema.schema_for("models").names
    finally:
        metrics.unregister("zz_layout")
    assert [f.name for f in fields(config.MetricsConfig)] == before
    assert "zz_layout.value" not in schema.schema_for("models").names


# ------------------------------------------------------------------------------------- the layout
#: Names of directories and files of a sweep directory (``landscape.sweepdir``).
LAYOUT_NAMES = {
    "cells",
    "results",
    "launches",
    "analysis",
    "multirun.yaml",
    "status.json",
    "lease.json",
    "config.yaml",
    "seeds",
    "groups",
    "metrics",
    "work",
    ".cache",
    "status-records.json",
}
#: File names and name prefixes no other module spells in any string but a docstring.
LAYOUT_FILES = {"multirun.yaml", "status.json", "lease.json", "status-records.json"}
LAYOUT_PREFIXES = (".holder-", ".fenced-", ".released-")
LAYOUT_SUFFIXES = (".committed",)  # a result file's last committed version beside it


def _is_docstring(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    return isinstance(parents.get(node), ast.Expr)


def _path_parts(text: str) -> set[str]:
    return {p for p in text.split("/") if p}


def hand_coded_layout(path: Path) -> list[str]:
    """Where ``path`` spells a path of the sweep layout itself: a layout name joined with ``/`` or
    ``os.path.join``/``Path(...)``, in an f-string path (``f"{d}/{cid}/status.json"``), a layout file name
    compared or built anywhere (``name == "status.json"``), or a holder directory's prefix."""
    tree = ast.parse(path.read_text(), filename=str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out = []

    def hit(node: ast.AST, what: str) -> None:
        out.append(f"{path.relative_to(PKG.parent) if PKG in path.parents else path.name}:{node.lineno} {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                if (
                    isinstance(side, ast.Constant)
                    and isinstance(side.value, str)
                    and _path_parts(side.value) & LAYOUT_NAMES
                ):
                    hit(node, f"joins {side.value!r}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("join", "Path", "PurePath"):
                for arg in node.args:
                    if (
                        isinstance(arg, ast.Constant)
                        and isinstance(arg.value, str)
                        and _path_parts(arg.value) & LAYOUT_NAMES
                    ):
                        hit(node, f"{name}(... {arg.value!r})")
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str))
            if "/" in text and _path_parts(text) & LAYOUT_NAMES:
                hit(node, f"builds the path f{text!r}")
            first, last = (node.values[0], node.values[-1]) if node.values else (None, None)
            if isinstance(first, ast.Constant) and str(first.value).startswith(LAYOUT_PREFIXES):
                hit(node, f"builds a holder directory name f{first.value!r}...")
            if isinstance(last, ast.Constant) and str(last.value).endswith(LAYOUT_SUFFIXES):
                hit(node, f"builds a name f...{last.value!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not _is_docstring(node, parents):
            if (
                node.value in LAYOUT_FILES
                or node.value.startswith(LAYOUT_PREFIXES)
                or node.value.endswith(LAYOUT_SUFFIXES)
            ) and not isinstance(parents.get(node), ast.JoinedStr):
                hit(node, f"spells {node.value!r}")
    return out


def test_the_sweep_layout_is_spelled_in_sweepdir_only():
    """Every path under a sweep directory comes from ``landscape.sweepdir``: no other module of the package
    joins a layout name (``sweep_dir / "cells"``), builds one in an f-string or spells a layout file name."""
    found = [h for p in sorted(PKG.rglob("*.py")) if p != LAYOUT_MODULE for h in hand_coded_layout(p)]
    assert found == []
    assert hand_coded_layout(LAYOUT_MODULE) != []  # the check reads the layout module's own spelling of it


@pytest.mark.parametrize(
    "code",
    [
        'p = sweep_dir / "cells" / cid',
        'p = Path(sweep_dir) / "results" / table',
        'p = os.path.join(str(sweep), "cells")',
        'p = f"{cells_dir}/{cid}/status.json"',
        'ok = path.name == "status.json"',
        'd = cell.path / f".holder-{token}"',
        'p = sweep / "results/.cache"',
        'p = Path(sweep, "launches")',
        'b = path.with_name(f".{path.name}.committed")',
    ],
)
def test_the_layout_check_finds_a_hand_coded_path(tmp_path, code):
    f = tmp_path / "probe.py"
    f.write_text(f'"""A module that mentions cells/<id>/status.json in its docstring only is fine."""\n{code}\n')
    assert len(hand_coded_layout(f)) >= 1, code
    f.write_text('"""Mentions <sweep>/cells/<id>/status.json."""\nmsg = "see results/models"\nkeys = rec["results"]\n')
    assert hand_coded_layout(f) == []


def test_the_layout_module_imports_nothing_of_the_package():
    """Every layer may call ``landscape.sweepdir``: it imports nothing of the package (so no cycle through it)."""
    mods = package_modules()
    assert import_edges(mods)["landscape.sweepdir"] == set()


def test_the_layout_functions_give_the_documented_paths(tmp_path):
    from landscape import sweepdir as sd
    from landscape.cell import CellDir

    s = tmp_path
    cell = CellDir(s, "abc123")
    assert cell.path == s / "cells" / "abc123" == sd.cell_dir(s, "abc123")
    assert sd.status_files(s)("abc123") == str(cell.status_path)
    assert cell.status_path == s / "cells/abc123/status.json" and cell.lease_path == s / "cells/abc123/lease.json"
    assert cell.config_path == s / "cells/abc123/config.yaml" and cell.seed_dir(3) == s / "cells/abc123/seeds/3"
    assert cell.metrics_path("k", "cka") == s / "cells/abc123/metrics/k/cka.json"
    assert cell.workdir("k", "cka") == s / "cells/abc123/work/k/cka"
    assert cell.group_dir("g") == s / "cells/abc123/groups/g"
    assert cell.result_name("pairs", "k1") == "pairs/abc123-k1.parquet"
    assert (
        cell.result_path("pairs", "k1")
        == s / "results/pairs/abc123-k1.parquet"
        == cell.recorded_path("pairs/abc123-k1.parquet")
    )
    assert sd.RESULT_NAME.fullmatch(cell.result_name("pairs", "k1"))
    assert sd.cell_of_result("abc123-k1.parquet") == "abc123" and sd.key_of_result("pairs/abc123-k1.parquet") == "k1"
    assert sd.sweep_of_result(cell.result_path("pairs", "k1")) == s
    assert sd.multirun_path(s) == s / "multirun.yaml" and sd.phase_output_dir(s, "a__b") == s / "analysis/phase/a__b"
    assert sd.holder_dir(cell.path, "t").name == ".holder-t"
    assert sd.table_cache(s, "models") == s / "results/.cache/models.parquet"
    assert sd.cell_dirs(s) == [] and sd.table_files(s, "models") == [] and sd.launch_record_paths(s) == []
    rec = sd.new_launch_record_path(s)
    rec.parent.mkdir()
    rec.write_text("{}")
    (s / "results/models").mkdir(parents=True)
    for name in ("abc123-k1.parquet", ".abc123-k1.parquet.committed", ".abc123-k1.parquet.staged"):
        (s / "results/models" / name).write_text("")
    cell.path.mkdir(parents=True)
    assert sd.launch_record_paths(s) == [rec] and sd.cell_dirs(s) == [cell.path]
    assert sd.table_files(s, "models") == [str(s / "results/models/abc123-k1.parquet")]
    assert sd.committed_backups(s, "abc123") == [s / "results/models/.abc123-k1.parquet.committed"]
