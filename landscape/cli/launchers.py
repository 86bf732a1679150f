"""The launchers' names under their former home: the running layer (the local pool, SLURM arrays through
submitit, preemption handling) is :mod:`landscape.launching`, outside the command line; this module only
re-exports it, so that ``from landscape.cli.launchers import ...`` keeps working."""

from landscape.launching import (  # noqa: F401 - re-exported
    OWN_KEYS,
    STOP_GRACE_S,
    CellLocalLauncher,
    CellSlurmLauncher,
    JobComposer,
    NotStarted,
    WorkerDied,
    chunk,
    cluster_max_array_size,
)
