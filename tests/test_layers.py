"""The layering rules of the package, checked on the source (an AST walk over every import, including those
inside functions), and the import cost of the light entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "landscape"

#: Math modules: pure functions of models, tensors and data; they know nothing of families, jobs or the CLI.
MATH = ("curvature", "similarity", "connectivity", "directions", "surfaces", "projection_trace", "trajectories")
FORBIDDEN_FOR_MATH = ("landscape.metrics", "landscape.job", "landscape.cli")
#: curvature works on abstract operators and models: it imports nothing of the package outside itself, except
#: the leaf helpers of parameter space (``landscape.params``, which imports nothing of the package).
CURVATURE_ALLOWED = ("landscape.curvature", "landscape.params")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str | None = None) -> set[str]:
    """Every module ``path`` (the module ``module``, by default its name in the package) imports: absolute
    names, relative imports resolved, at any depth of the file (inside functions too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _files(name: str) -> list[Path]:
    p = PKG / name
    return sorted(p.rglob("*.py")) if p.is_dir() else [p.with_suffix(".py")]


def _violations(files: list[Path], bad, module: str | None = None) -> list[str]:
    return [
        f"{f.relative_to(PKG.parent) if f.is_relative_to(PKG) else f.name} imports {m}"
        for f in files
        for m in sorted(imports_of(f, module))
        if bad(m)
    ]


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_math_modules_import_neither_families_nor_job_nor_cli():
    files = [f for m in MATH for f in _files(m)]
    assert len(files) >= 12
    assert _violations(files, lambda m: _under(m, FORBIDDEN_FOR_MATH)) == []


def test_families_and_results_import_neither_the_job_nor_the_cli():
    files = _files("metrics") + _files("results") + [PKG / "config.py", PKG / "cell.py"]
    assert _violations(files, lambda m: _under(m, ("landscape.job", "landscape.cli"))) == []


def test_curvature_imports_nothing_of_the_package_but_itself():
    bad = _violations(_files("curvature"), lambda m: _under(m, ("landscape",)) and not _under(m, CURVATURE_ALLOWED))
    assert bad == []


def test_params_is_a_leaf():
    assert _violations(_files("params"), lambda m: _under(m, ("landscape",))) == []


def test_the_phase_statistics_are_a_leaf():
    """``landscape.phase_stats`` (mixture fit, variance prior, predictive draws, Spearman and its p-value) is
    numbers only: it imports nothing of the package (``landscape.phase`` imports it, not the reverse) and no
    torch."""
    assert _violations(_files("phase_stats"), lambda m: _under(m, ("landscape", "torch"))) == []


#: The one import of the command line from outside it: the running layer composes each job's config with the
#: sweeper's ``CellComposer`` (the Hydra sweeper plugin's code, in ``landscape/cli/sweeper.py``).
CLI_IMPORTS_FROM_OUTSIDE = {"launching.py": ("landscape.cli.sweeper",)}


def test_nothing_outside_the_cli_imports_it_but_the_running_layers_job_composer():
    """The running layer (``landscape.launching``: the local pool, SLURM arrays, preemption) lives outside
    ``landscape/cli``; ``landscape.cli.launchers`` only re-exports it. No module outside ``cli`` imports the
    command line, except ``launching``'s use of the sweeper's composer."""
    files = [f for f in sorted(PKG.rglob("*.py")) if "cli" not in f.relative_to(PKG).parts]
    bad = [
        v
        for f in files
        for v in _violations(
            [f],
            lambda m, f=f: _under(m, ("landscape.cli",)) and not _under(m, CLI_IMPORTS_FROM_OUTSIDE.get(f.name, ())),
        )
    ]
    assert bad == []
    shim = [m for m in imports_of(PKG / "cli" / "launchers.py") if _under(m, ("landscape",))]
    assert shim and all(_under(m, ("landscape.launching",)) for m in shim)


def test_the_import_walk_sees_imports_inside_functions(tmp_path):
    """The checker itself can fail: a function-level import of a forbidden module is found."""
    f = tmp_path / "probe.py"  # read as if it were landscape/curvature/probe.py
    f.write_text("def f():\n    from landscape.metrics import hessian\n    from ..job import run_cell\n")
    found = _violations([f], lambda m: _under(m, FORBIDDEN_FOR_MATH), module="landscape.curvature.probe")
    assert "probe.py imports landscape.metrics" in found and "probe.py imports landscape.job" in found


def test_family_declarations_import_no_math_at_module_level():
    """Family modules import their math inside ``compute``/``check`` only, so the registry is cheap (at module
    level: the metrics package and the value-rule vocabulary ``landscape.rules``, which imports nothing of the
    package)."""
    bad = []
    for f in sorted((PKG / "metrics").glob("*.py")):
        tree = ast.parse(f.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                bad += [
                    f"{f.name}: {n}"
                    for n in names
                    if n.split(".")[0] == "torch"
                    or (_under(n, ("landscape",)) and not _under(n, ("landscape.metrics", "landscape.rules")))
                ]
    assert bad == []
    assert _violations(_files("rules"), lambda m: _under(m, ("landscape", "torch"))) == []


@pytest.mark.parametrize(
    "code",
    [
        "import landscape.cli.status",
        "from landscape.metrics import metric_columns, family_of; metric_columns('models'); metric_columns('pairs');"
        " family_of('cka')",
        "import landscape.config, landscape.cell; landscape.config.LandscapeConfig",
        "from landscape.results.schema import schema_for; schema_for('models')",
    ],
)
def test_light_entry_points_import_no_torch(code):
    probe = f"import sys; {code}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", code


def test_landscape_status_reads_a_sweep_without_importing_torch(tmp_path):
    from landscape.cell import CellDir, CellStatus

    CellDir(tmp_path, "c0").write_status(
        CellStatus(
            state="done",
            cell_id="c0",
            seeds={"0": "done"},
            metric_errors=[{"family": "cka", "who": "pair=0-1", "error": "CKA undefined"}],
        )
    )
    CellDir(tmp_path, "c1").write_status(CellStatus(state="running", cell_id="c1", pid=1, host="elsewhere"))
    probe = (
        "import sys, contextlib, io; import landscape.cli.status as st\n"
        f"with contextlib.redirect_stdout(io.StringIO()) as out: rc = st.main([{str(tmp_path)!r}, '-v'])\n"
        "print(rc, 'torch' in sys.modules, 'metric errors: 1' in out.getvalue())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False", "True"]
