"""Entry point of the ``agentuity-logging`` console script and of ``python -m agentuity_logging``.

click and rich come with the ``cli`` extra; without them the command says what to install and exits 2
instead of failing with a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Final

__all__ = ["main"]

_NEEDED: Final = ("click", "rich")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); always ends with ``SystemExit``."""
    # rich is imported only when a terminal needs it: look for it now, so that a missing extra is one
    # clear line before anything runs rather than a traceback halfway through.
    missing = next((name for name in _NEEDED if importlib.util.find_spec(name) is None), None)
    try:
        if missing is not None:
            raise ImportError(f"no module named {missing!r}", name=missing)
        from agentuity_logging._inspection._commands import cli
    except ImportError as exc:
        if exc.name not in _NEEDED:
            raise
        sys.stderr.write(
            f"agentuity-logging: the command line needs {exc.name!r}: pip install 'agentuity-logging[cli]'\n"
        )
        raise SystemExit(2) from None
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="agentuity-logging")
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit
        # while flushing stdout into the closed pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0) from None
