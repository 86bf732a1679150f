"""The ``adaptive`` sweeper plugin (``hydra/sweeper=adaptive``); logic in ``landscape.cli.adaptive``."""

from landscape.cli.adaptive import AdaptiveSweeper as _AdaptiveSweeper


class AdaptiveSweeper(_AdaptiveSweeper):
    """Measures a grid's phase diagram in waves where the map is uncertain; see ``landscape.cli.adaptive``."""
