"""Helpers for testing code that logs: collect what it logged, in the package's schema."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from agentuity_logging._config import add_output, remove_output
from agentuity_logging._formatting import EventHandler
from agentuity_logging._records import event_from_record
from agentuity_logging._stamping import SessionContextFilter

__all__ = ["CapturingHandler", "capture_logs"]


class CapturingHandler(EventHandler):
    """Keeps every record and event it sees as a schema dict, in order."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.entries: list[dict[str, Any]] = []
        self.addFilter(SessionContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        """Keep a stdlib record."""
        self.entries.append(dict(event_from_record(record)))

    def emit_event(self, event: Mapping[str, Any]) -> None:
        """Keep a structlog event."""
        self.entries.append(dict(event))


@contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect the records of every path (stdlib and structlog via ``configure()``) as schema dicts.

    The root logger's level is lowered to ``level`` for the duration, and restored after, so debug
    records are seen. Records carry the session IDs even when ``configure()`` has not run.

    Example::

        with capture_logs() as logs, session() as s:
            handle_request()
        assert all(entry["agentuitySessionId"] == s.id for entry in logs)
    """
    handler = CapturingHandler()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    add_output(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    try:
        yield handler.entries
    finally:
        remove_output(handler)
        root.removeHandler(handler)
        root.setLevel(old_level)
