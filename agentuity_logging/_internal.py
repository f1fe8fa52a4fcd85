"""The package's own diagnostics: said once through ``agentuity_logging.internal``, then counted.

A logging library that logs its own failures into the handlers it feeds can loop forever (or deadlock on
the handler lock). Everything here goes to one stdlib logger that our own handlers ignore, and each kind
of problem is said once per process; later occurrences only increment a counter.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Final

__all__ = ["INTERNAL_LOGGER_NAME", "internal_logger", "problem_counts", "report_once"]

INTERNAL_LOGGER_NAME: Final = "agentuity_logging.internal"
internal_logger: Final = logging.getLogger(INTERNAL_LOGGER_NAME)

_lock = threading.Lock()
_counts: Counter[str] = Counter()
# Set while we report, so a handler that fails while handling our report does not report again.
_guard = threading.local()


def report_once(key: str, message: str, *args: object, level: int = logging.WARNING) -> None:
    """Log ``message`` the first time ``key`` is seen in this process, then only count it.

    Never raises: this is called from ``except`` blocks inside log calls.
    """
    try:
        with _lock:
            _counts[key] += 1
            first = _counts[key] == 1
        if not first or getattr(_guard, "active", False):
            return
        _guard.active = True
        try:
            internal_logger.log(level, message, *args)
        finally:
            _guard.active = False
    except Exception:  # pragma: no cover - the last line of defence must not raise
        return


def problem_counts() -> dict[str, int]:
    """Return how often each reported problem happened (for tests and ``stats()``)."""
    with _lock:
        return dict(_counts)


def _reset_for_tests() -> None:
    with _lock:
        _counts.clear()
