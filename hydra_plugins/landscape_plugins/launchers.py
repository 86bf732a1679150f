"""The ``landscape`` launcher plugins (``hydra/launcher=slurm`` and ``=local``); logic in ``landscape.cli.launchers``."""

from landscape.cli.launchers import CellLocalLauncher, CellSlurmLauncher


class SlurmLauncher(CellSlurmLauncher):
    """SLURM job arrays through submitit, chunked below MaxArraySize, preemption-safe; see ``landscape.cli.launchers``."""


class LocalLauncher(CellLocalLauncher):
    """Local processes through submitit, one GPU per concurrent cell; see ``landscape.cli.launchers``."""
