"""The ``landscape`` console script: a Hydra app whose job is one grid cell.

``landscape`` runs the default cell; ``landscape -m +sweep=demo`` or ``landscape -m model.width=4,8,16`` a
grid. Outputs go to ``hydra.sweep.dir`` (default ``outputs/<sweep_name>``): cells under ``cells/<cell_id>``,
rows under ``results/``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from landscape.config import register_configs

log = logging.getLogger("landscape")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _cell_id_resolver(*, _root_: DictConfig) -> str:
    from landscape.cell import cell_id

    return cell_id(_root_)


def setup() -> None:
    """Register the config schema and the ``${cell_id:}`` resolver (used by the output directories)."""
    OmegaConf.register_new_resolver("cell_id", _cell_id_resolver, replace=True)
    register_configs()


setup()


def sweep_dir_of(hydra_cfg: Any) -> Path:
    """The absolute sweep directory of the running job (relative paths are taken from the launch cwd)."""
    path = Path(str(hydra_cfg.sweep.dir))
    return path if path.is_absolute() else Path(str(hydra_cfg.runtime.cwd)) / path


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> dict[str, Any]:
    """Run one cell (see ``landscape.job.run_cell``) and return its outcome."""
    from hydra.core.hydra_config import HydraConfig

    from landscape.job import run_cell

    from landscape.config import ConfigError

    hc = HydraConfig.get()
    try:
        outcome = run_cell(cfg, sweep_dir_of(hc), overrides=list(hc.overrides.task))
    except ConfigError as exc:
        if str(hc.mode) == "RunMode.MULTIRUN":
            raise  # a job of a multirun: its launcher records the failure
        import sys

        print(exc, file=sys.stderr, flush=True)  # noqa: T201 - a refused config: the problems, no traceback
        raise SystemExit(2) from None
    return dataclasses.asdict(outcome)


if __name__ == "__main__":
    main()
