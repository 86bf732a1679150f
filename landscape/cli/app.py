"""The ``landscape`` console script: a Hydra app whose job is one grid cell.

``landscape`` runs the default cell; ``landscape -m +sweep=demo`` or ``landscape -m model.width=4,8,16`` a
grid. Outputs go to ``hydra.sweep.dir`` (default ``outputs/<sweep_name>``): cells under ``cells/<cell_id>``,
rows under ``results/``. Ctrl-C or SIGTERM while a cell runs in this process (a single run, or a grid without a
``hydra/launcher``) checkpoints the training under way, model, curve or jump-and-retrain
(``preemption.stop_on_signals``), and exits with ``128 + signal``; the same command resumes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import signal
from pathlib import Path
from typing import Any, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from landscape.config import register_configs

log = logging.getLogger("landscape")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _cell_id_resolver(*, _root_: DictConfig) -> str:
    from landscape.cell import cell_id

    return cell_id(_root_)


def _metric_families() -> str:
    from landscape.metrics import family_config_classes

    return ", ".join(family_config_classes())


def _options_help(group: str) -> str:
    from landscape.config import options_help

    return options_help(str(group))


def _config_groups() -> str:
    """``GROUP: OPTION, ...`` of each config group of ``conf/`` but Hydra's, one per line (``landscape --help``)."""
    groups = sorted(d for d in CONF_DIR.iterdir() if d.is_dir() and d.name != "hydra")
    return "\n  ".join(f"{d.name}: {', '.join(sorted(p.stem for p in d.glob('*.yaml')))}" for d in groups)


def setup() -> None:
    """Register the config schema, the ``${cell_id:}`` resolver (used by the output directories),
    ``${metric_families:}`` (the names of the metric families, in ``landscape --help``), ``${options:GROUP}``
    (each option of the data or model group with its own keys and defaults) and ``${config_groups:}``."""
    OmegaConf.register_new_resolver("cell_id", _cell_id_resolver, replace=True)
    OmegaConf.register_new_resolver("metric_families", _metric_families, replace=True)
    OmegaConf.register_new_resolver("options", _options_help, replace=True)
    OmegaConf.register_new_resolver("config_groups", _config_groups, replace=True)
    register_configs()


setup()


def startup_done() -> None:
    """End of the start-up: move what it made to the collector's permanent generation, turn the collector on.

    ``run`` starts with the collector off: the start-up (Hydra, and torch, pandas and the metric families through
    Hydra's plugin scan) makes about a million long-lived objects, and collecting them over and over while they
    are made costs ~0.2 s. Frozen, later collections skip them, the interpreter's exit does not traverse them
    (0.4-0.5 s saved per process with torch and pandas loaded), and pool workers forked afterwards share their
    memory pages instead of copying them when the collector touches them (the pattern the ``gc.freeze``
    documentation recommends). Only acts while the collector is off, so only the first call freezes (a later
    one would keep a finished job's garbage forever) and a program that imports ``main`` is left alone.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def sweep_dir_of(hydra_cfg: Any) -> Path:
    """The absolute sweep directory of the running job (relative paths are taken from the launch cwd)."""
    path = Path(str(hydra_cfg.sweep.dir))
    return path if path.is_absolute() else Path(str(hydra_cfg.runtime.cwd)) / path


def runs_in_process(hydra_cfg: Any) -> bool:
    """Whether the cell runs in the ``landscape`` process itself (a single run, or Hydra's basic launcher), where
    SIGINT (Ctrl-C) and SIGTERM are this process's to handle (``preemption.stop_on_signals``: the cell checkpoints
    and the process exits with ``128 + signal``); the local and SLURM launchers handle their own."""
    if str(hydra_cfg.mode) != "RunMode.MULTIRUN":
        return True
    return str(OmegaConf.select(hydra_cfg, "launcher._target_") or "").endswith("BasicLauncher")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Run one cell (see ``landscape.job.run_cell``) and return its outcome."""
    from hydra.core.hydra_config import HydraConfig

    from landscape import preemption
    from landscape.config import ConfigError
    from landscape.job import run_cell
    from landscape.training import StopRequested

    startup_done()
    hc = HydraConfig.get()
    stopper = preemption.stop_on_signals() if runs_in_process(hc) else contextlib.nullcontext()
    try:
        with stopper:
            outcome = run_cell(cfg, sweep_dir_of(hc), overrides=list(hc.overrides.task))
    except (StopRequested, KeyboardInterrupt):
        signum = getattr(stopper, "signum", None)
        if signum is None:
            raise
        log.warning("stopped by signal %s; rerun the same command to resume", signal.Signals(signum).name)
        raise SystemExit(128 + signum) from None
    except ConfigError as exc:
        if str(hc.mode) == "RunMode.MULTIRUN":
            raise  # a job of a multirun: its launcher records the failure
        import sys

        print(exc, file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return dataclasses.asdict(outcome)


def refuse_bad_overrides(argv: list[str] | None = None) -> None:
    """Exit with status 2 (the problems on stderr, no traceback) if an override of the command line names a key
    the config schema lacks or gives a value of the wrong type (``landscape.config.override_problems``: the key,
    the nearest known keys and the group's keys; the key, the value and what is allowed), fixed or swept: before
    Hydra composes anything, so a typo gets one message, not Hydra's raw error or one per cell."""
    import sys

    from hydra._internal.utils import get_args_parser

    from landscape.config import chosen_options, override_problems

    args, _ = get_args_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.shell_completion:
        return
    dirs = [CONF_DIR] + ([Path(args.config_dir)] if args.config_dir else [])
    options = chosen_options(args.overrides, dirs) if args.config_name in (None, "config") else None
    problems = override_problems(
        args.overrides, is_group=lambda k: any((d / k).is_dir() for d in dirs), options=options
    )
    if problems:
        print(
            "\n  ".join(["invalid override(s); nothing was run:", *problems]),
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(2)


def sweep_configs(sweep: str, overrides: Sequence[str] = ()) -> list[DictConfig]:
    """The cell configs of the named sweep (``conf/sweep/NAME.yaml``: its ``hydra.sweeper.params`` grid, in
    Hydra's order, last key fastest), composed as the jobs see them (``data.root`` need not exist). For tools
    that price or inspect a grid without launching it (``benchmarks/gpu_projection.py``)."""
    import copy
    import itertools

    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        full = compose("config", overrides=[f"+sweep={sweep}", *overrides], return_hydra_config=True)
    params = dict(full.hydra.sweeper.params or {})
    base = copy.deepcopy(full)
    with open_dict(base):
        del base["hydra"]
        if OmegaConf.select(base, "data.root") in (None, "???") or OmegaConf.is_missing(base.data, "root"):
            base.data.root = "/absent/cifar-10-batches-py"
    keys = list(params)
    values = [[_grid_value(v) for v in str(params[k]).split(",")] for k in keys]
    out = []
    for combo in itertools.product(*values):
        cfg = copy.deepcopy(base)
        for key, value in zip(keys, combo, strict=True):
            OmegaConf.update(cfg, key, value, merge=False)
        out.append(cfg)
    return out


def _grid_value(text: str) -> Any:
    """One value of a grid axis as Hydra's override grammar reads a plain one: int, else float, else string."""
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def run() -> None:
    """The console script: the overrides checked (``refuse_bad_overrides``), then ``main`` with the collector off
    during the start-up (see ``startup_done``) and everything frozen at the end (the exit does not traverse it)."""
    from landscape.cli.console import pipe_safe_stdout

    pipe_safe_stdout()  # `landscape ... | head`: no BrokenPipeError, the launch goes on
    refuse_bad_overrides()
    gc.disable()
    try:
        main()
    finally:
        gc.enable()
        # the process ends here: what the run made need not be traversed by the interpreter's final collections
        # (1.5 s of a 3 s exit after a curve's cell on a loaded 2-core machine; a stopped cell must exit quickly)
        gc.freeze()


if __name__ == "__main__":
    run()
