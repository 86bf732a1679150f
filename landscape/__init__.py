"""landscape: large-scale loss-landscape experiments.

One Hydra job = one grid cell: train the cell's seeds, measure local (per model) and global (per pair)
metrics, write typed Parquet rows. See README.md and ../shared/DESIGN.md.
"""

__version__ = "0.1.0"
