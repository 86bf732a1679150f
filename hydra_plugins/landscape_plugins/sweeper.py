"""The ``landscape`` sweeper plugin (``hydra/sweeper=landscape``); logic in ``landscape.cli.sweeper``."""

from landscape.cli.sweeper import GridSweeper


class LandscapeSweeper(GridSweeper):
    """Grid sweeper that validates every cell before launching; see ``landscape.cli.sweeper``."""
