"""The package's own diagnostics: said once through ``agentuity_logging.internal``, then counted.

A logging library that logs its own failures into the handlers it feeds can loop forever (or deadlock on
the handler lock). Everything here goes to one stdlib logger that our own handlers ignore, and each kind
of problem is said once per process; later occurrences only increment a counter.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import Final, Generic, TypeVar

T = TypeVar("T")

__all__ = ["INTERNAL_LOGGER_NAME", "Listeners", "internal_logger", "problem_counts", "report_once"]

INTERNAL_LOGGER_NAME: Final = "agentuity_logging.internal"
internal_logger: Final = logging.getLogger(INTERNAL_LOGGER_NAME)

_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread may have held the lock at fork time; in the child that thread is gone and the
    # lock would stay held forever, deadlocking the child's first report.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
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


class Listeners(Generic[T]):
    """Objects told about lifecycle events (sessions, spans), kept in an immutable tuple.

    Notifying reads the tuple without a lock, so registering never blocks a request; a listener that
    raises is reported once and never breaks the application.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: tuple[T, ...] = ()
        self._lock = threading.Lock()

    def add(self, listener: T) -> None:
        """Register ``listener`` (idempotent)."""
        with self._lock:
            if listener not in self._items:
                self._items = (*self._items, listener)

    def remove(self, listener: T) -> None:
        """Unregister ``listener`` (no error if absent)."""
        with self._lock:
            self._items = tuple(x for x in self._items if x is not listener)

    def notify(self, method: str, subject: object) -> None:
        """Call ``listener.<method>(subject)`` on each listener, containing their errors."""
        for listener in self._items:
            try:
                getattr(listener, method)(subject)
            except Exception as exc:
                name = type(listener).__name__
                report_once(
                    f"{self.kind}:{name}.{method}", "%s %s.%s failed: %r", self.kind, name, method, exc
                )
