"""loguru: session IDs in ``record["extra"]``, and a sink into the package's schema and outputs.

::

    from loguru import logger
    from agentuity_logging.integrations.loguru import patcher, sink

    logger.configure(patcher=patcher)      # IDs and bound() fields in record["extra"], for any sink
    logger.add(sink, format="{message}")   # loguru records -> our schema -> stream, shippers, store

The patcher runs on the thread that logs, so the IDs survive ``enqueue=True``; the sink also reads the
context itself when no patcher ran. loguru's own ``bind()`` and ``contextualize()`` values become fields
and win over ours on a clash. Needs ``loguru``: ``pip install 'agentuity-logging[loguru]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from agentuity_logging._context import current_snapshot
from agentuity_logging._correlation import stamp_trace_context
from agentuity_logging._errors import require
from agentuity_logging._internal import report_once
from agentuity_logging._records import (
    EXCEPTION_KEY,
    SCHEMA_KEYS,
    SESSION_KEY,
    SPAN_KEY,
    THREAD_KEY,
    exception_info,
    format_timestamp,
    level_name,
)

__all__ = ["LoguruSink", "event_from_loguru", "patcher", "sink"]

require("loguru", feature="agentuity_logging.integrations.loguru", extra="loguru")

_ID_KEYS = (SESSION_KEY, THREAD_KEY, SPAN_KEY)


def patcher(record: MutableMapping[str, Any]) -> None:
    """loguru patcher: put the session IDs, span ID and ``bound()`` fields into ``record["extra"]``.

    Keys loguru already has there (``bind``, ``contextualize``) are kept. Use with
    ``logger.configure(patcher=patcher)`` or ``logger.patch(patcher)``.
    """
    extra = record["extra"]
    for key, value in current_snapshot().attrs.items():
        if key not in extra:
            extra[key] = value
    stamp_trace_context(extra)


def event_from_loguru(record: Mapping[str, Any]) -> dict[str, Any]:
    """Build the package's schema dict from a loguru record (``message.record`` in a sink).

    IDs come from ``extra`` (the patcher), else from the current context; other ``extra`` keys are
    fields, renamed with a trailing ``_`` when they clash with the schema.
    """
    level = record["level"]
    extra: Mapping[str, Any] = record["extra"]
    event: dict[str, Any] = {
        "timestamp": format_timestamp(record["time"].timestamp()),
        "level": level_name(level.no, level.name),
        "logger": record["name"] or "loguru",
        "message": record["message"],
    }
    attrs = current_snapshot().attrs
    sid = extra.get(SESSION_KEY, attrs.get(SESSION_KEY))
    if sid is not None:
        event[SESSION_KEY] = sid
        event[THREAD_KEY] = extra.get(THREAD_KEY, attrs.get(THREAD_KEY))
    span_id = extra.get(SPAN_KEY, attrs.get(SPAN_KEY))
    if span_id is not None:
        event[SPAN_KEY] = span_id
    if SESSION_KEY not in extra:
        # No patcher ran: bound() fields and trace IDs come from the context, as for stdlib records.
        event.update((key, value) for key, value in attrs.items() if key not in _ID_KEYS and key not in extra)
        stamp_trace_context(event)
    for key, value in extra.items():
        if key in _ID_KEYS:
            continue
        name = key if isinstance(key, str) else str(key)
        if name in SCHEMA_KEYS:
            name += "_"
        event[name] = value
    exc = record.get("exception")
    if exc is not None and exc.type is not None:
        info = exception_info((exc.type, exc.value, exc.traceback))
        if info is not None:
            event[EXCEPTION_KEY] = info
    return event


def _configured_outputs() -> Sequence[Any]:
    from agentuity_logging._config import outputs

    return outputs()


class LoguruSink:
    """loguru sink sending each record, in the package's schema, to the package's outputs.

    loguru's level numbers line up with the stdlib's (TRACE 5 and SUCCESS 25 in between), so outputs
    filter them by level as usual; ``level`` is loguru's name in lowercase.

    By default the outputs are the ones ``configure()`` installed (stream, shippers, log store) plus test
    captures; pass ``handlers`` (a callable returning handlers with ``handle_event(event, levelno)``) to
    choose others. A failing output is reported once and never raises into loguru.
    """

    def __init__(self, handlers: Callable[[], Sequence[Any]] | None = None) -> None:
        self._handlers = handlers or _configured_outputs

    def __call__(self, message: Any) -> None:
        """Handle one loguru message (its ``.record``)."""
        try:
            record = message.record
            event = event_from_loguru(record)
            levelno = int(record["level"].no)
        except Exception as exc:
            report_once("loguru-sink", "a loguru record could not be converted: %r", exc)
            return
        for handler in self._handlers():
            handler.handle_event(event, levelno)


#: The default :class:`LoguruSink`: ``logger.add(sink)``.
sink = LoguruSink()
