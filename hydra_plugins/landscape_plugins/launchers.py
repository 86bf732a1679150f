"""The ``landscape`` launcher plugins (``hydra/launcher=slurm`` and ``=local``); logic in ``landscape.launching``."""

from landscape.launching import CellLocalLauncher, CellSlurmLauncher


class SlurmLauncher(CellSlurmLauncher):
    """SLURM job arrays through submitit, chunked below MaxArraySize, preemption-safe; see ``landscape.launching``."""


class LocalLauncher(CellLocalLauncher):
    """A pool of warm local worker processes, several cells per GPU; see ``landscape.launching``."""
