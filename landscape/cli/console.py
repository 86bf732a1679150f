"""What the three console scripts share about the terminal: help texts from docstrings, and standard output
that may be a pipe closed early (``landscape-status DIR | head``).

``plain`` turns a reStructuredText docstring into plain text for ``--help`` (no double backticks, no
``:func:`` roles). ``pipe_safe_stdout`` replaces ``sys.stdout`` by a wrapper that, once the reader of a pipe
has gone (``BrokenPipeError``), sends the rest of the output to ``/dev/null``: no traceback, no "Exception
ignored" at exit, and the program goes on (a launch keeps running its cells, ``landscape-phase`` still writes
its figures). Log handlers made afterwards (Hydra's, ``logging.basicConfig``) write through the wrapper too.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

_ROLE = re.compile(r":(?:func|mod|class|meth|attr|data|obj|exc):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str:
    """``text`` (a docstring in reStructuredText) as plain text: ``x`` and :func:`x` become x."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text or ""))


class _PipeSafe:
    """A text stream that forwards to ``stream`` until a write or flush meets a closed pipe, then points the
    file descriptor at ``/dev/null`` (so the interpreter's own final flush succeeds) and drops the rest."""

    def __init__(self, stream: Any):
        self._stream = stream
        self._closed_pipe = False

    def _gone(self) -> None:
        self._closed_pipe = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def write(self, text: str) -> int:
        if self._closed_pipe:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        if self._closed_pipe:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def pipe_safe_stdout() -> None:
    """Make ``sys.stdout`` survive a reader that closes the pipe early (see the module docstring); idempotent."""
    if not isinstance(sys.stdout, _PipeSafe) and sys.stdout is not None:
        sys.stdout = _PipeSafe(sys.stdout)  # type: ignore[assignment]
