"""Stamping: putting the session IDs and bound fields onto every stdlib ``LogRecord``.

Two ways, both reading the context once per record on the thread that logs (so the IDs survive a
``QueueHandler``/``QueueListener`` hop to another thread):

* :func:`install_record_factory` wraps the stdlib's record factory, so records from *every* logger are
  stamped at creation, whatever handler later sees them. ``configure()`` uses it.
* :class:`SessionContextFilter` is a filter for one handler (or logger), for hand-made set-ups.

Neither overwrites an attribute a record already has: per-call fields win over bound ones.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from agentuity_logging._context import current_snapshot
from agentuity_logging._correlation import stamp_trace_context

__all__ = ["SessionContextFilter", "install_record_factory", "uninstall_record_factory"]

# Trace correlation costs two dict look-ups per record until a tracer library is imported.
_modules = sys.modules
_current = current_snapshot
_OTEL = "opentelemetry.trace"
_DDTRACE = "ddtrace"


class SessionContextFilter(logging.Filter):
    """Add ``agentuitySessionId``, ``agentuityThreadId`` and ``bound()`` fields to records; never filters out.

    Attach it to a handler (``handler.addFilter(SessionContextFilter())``), or to a ``QueueHandler`` so the
    stamping happens on the logging thread. Usable from ``dictConfig`` with ``"()"``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Stamp ``record`` from the current context; always returns ``True``."""
        snapshot = _current()
        sid = snapshot.session_id
        if sid is not None and getattr(record, "agentuitySessionId", None) is None:
            # Never re-stamp: a record buffered (MemoryHandler) or handed across threads keeps the
            # IDs of the session that created it. getattr and plain attribute stores, not
            # record.__dict__: on CPython 3.11+ touching __dict__ materialises the instance dict.
            record.agentuitySessionId = sid
            record.agentuityThreadId = snapshot.thread_id
        if snapshot.rest:
            d = record.__dict__
            for key, value in snapshot.rest.items():
                if key not in d:
                    d[key] = value
        if _OTEL in _modules or _DDTRACE in _modules:
            stamp_trace_context(record.__dict__)
        return True


_factory_lock = threading.Lock()
_installed: Callable[..., logging.LogRecord] | None = None
_wrapped: Callable[..., logging.LogRecord] | None = None


def install_record_factory() -> None:
    """Wrap the current record factory so every new record is stamped (idempotent)."""
    global _installed, _wrapped
    with _factory_lock:
        current = logging.getLogRecordFactory()
        if _installed is not None and current is _installed:
            return
        previous = current
        get = current_snapshot

        # Explicit parameters, as Logger.makeRecord passes them: no *args tuple or **kwargs dict to
        # allocate on every record (which also means fewer garbage-collector passes).
        def stamping_factory(  # noqa: PLR0917 - the record factory's own signature
            name: str,
            level: int,
            pathname: str,
            lineno: int,
            msg: object,
            args: Any,
            exc_info: Any,
            func: str | None = None,
            sinfo: str | None = None,
        ) -> logging.LogRecord:
            record = previous(name, level, pathname, lineno, msg, args, exc_info, func, sinfo)
            snapshot = get()
            sid = snapshot.session_id
            if sid is not None:
                # Attribute stores, as in the filter: they keep the record's compact layout.
                record.agentuitySessionId = sid
                record.agentuityThreadId = snapshot.thread_id
            if snapshot.rest:
                record.__dict__.update(snapshot.rest)
            if _OTEL in _modules or _DDTRACE in _modules:
                stamp_trace_context(record.__dict__)
            return record

        _wrapped = previous
        _installed = stamping_factory
        logging.setLogRecordFactory(stamping_factory)


def uninstall_record_factory() -> None:
    """Put back the factory that was there before :func:`install_record_factory`.

    If somebody wrapped our factory since, we leave theirs in place (removing ours from under it would
    drop their wrapper), and stamping simply stays on.
    """
    global _installed, _wrapped
    with _factory_lock:
        if _installed is not None and logging.getLogRecordFactory() is _installed:
            assert _wrapped is not None
            logging.setLogRecordFactory(_wrapped)
            _installed = _wrapped = None
