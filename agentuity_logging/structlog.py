"""structlog integration: session context as a processor, and a direct path to the package's outputs.

Two ways to use it:

* You configure structlog yourself: add :func:`add_session_context` to your processors (and
  :class:`SchemaRenderer` as the last one if you want our JSON schema from your ``BytesLogger``).
* ``agentuity_logging.configure()`` wires structlog for you: events are rendered into the one schema and
  handed straight to the same outputs as stdlib records (stream, shippers, log store) without building a
  ``LogRecord``, which would cost about twice structlog's own pipeline.

structlog's ``bind_contextvars`` keeps working beside our sessions; its values become fields.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import structlog as _structlog

from agentuity_logging._context import current_snapshot
from agentuity_logging._correlation import stamp_trace_context
from agentuity_logging._formatting import with_service
from agentuity_logging._json import dumps
from agentuity_logging._records import METHOD_LEVELS, event_from_structlog

__all__ = [
    "BoundLogger",
    "SchemaRenderer",
    "add_session_context",
    "get_logger",
    "make_bound_logger_class",
]

_modules = sys.modules
_OTEL = "opentelemetry.trace"
_DDTRACE = "ddtrace"


def add_session_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: add ``agentuitySessionId``, ``agentuityThreadId`` and ``bound()`` fields to the event.

    Keys the event already has win (a per-call value beats the context).
    """
    attrs = current_snapshot().attrs
    if attrs:
        for key, value in attrs.items():
            if key not in event_dict:
                event_dict[key] = value
    if _OTEL in _modules or _DDTRACE in _modules:
        stamp_trace_context(event_dict)
    return event_dict


class SchemaRenderer:
    """Last processor: render the event as one line of our JSON schema (``bytes`` or ``str``).

    Includes :func:`add_session_context`, so it is enough on its own after ``merge_contextvars``.
    """

    def __init__(self, *, service: str | None = None, as_bytes: bool = True) -> None:
        self.service = service
        self.as_bytes = as_bytes

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        """Render ``event_dict``."""
        event = with_service(_to_schema(method_name, event_dict), self.service)
        data = dumps(event)
        return data if self.as_bytes else data.decode("utf-8")


def _to_schema(method_name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    add_session_context(None, method_name, event_dict)
    return event_from_structlog(method_name, event_dict)


class _Dispatch:
    """The structlog "logger" at the end of the direct path: hands schema events to our outputs."""

    __slots__ = ("_handlers", "name")

    def __init__(self, handlers: Callable[[], Sequence[Any]], name: str | None) -> None:
        self._handlers = handlers
        self.name = name

    def _route(self, event: Mapping[str, Any], levelno: int) -> None:
        for handler in self._handlers():
            handler.handle_event(event, levelno)

    msg = info = debug = warning = warn = error = err = critical = fatal = exception = failure = log = _route


def _render_to_outputs(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Last processor of the direct path: build the schema event and the level for the outputs."""
    if "logger" not in event_dict:
        name = getattr(logger, "name", None)
        if name is not None:
            event_dict["logger"] = name
    attrs = current_snapshot().attrs
    if attrs:
        for key, value in attrs.items():
            if key not in event_dict:
                event_dict[key] = value
    if _OTEL in _modules or _DDTRACE in _modules:
        stamp_trace_context(event_dict)
    return (event_from_structlog(method_name, event_dict), METHOD_LEVELS.get(method_name, logging.INFO)), {}


class BoundLogger(_structlog.BoundLoggerBase):
    """Marker base for the loggers we hand out: structlog's bound logger plus ``child(**fields)``."""

    def child(self, **fields: Any) -> Any:
        """Return a new logger with ``fields`` bound (structlog's ``bind``); this one is unchanged."""
        return self.bind(**fields)


def make_bound_logger_class(level: int) -> type[Any]:
    """Return structlog's filtering bound logger for ``level`` with our ``child()`` added."""
    base = _structlog.make_filtering_bound_logger(level)
    return type("AgentuityBoundLogger", (base,), {"child": BoundLogger.child})


def configure_direct(*, level: int, handlers: Callable[[], Sequence[Any]]) -> None:
    """Configure structlog so its events reach ``handlers`` in our schema (used by ``configure()``).

    The outputs add the ``service`` themselves, as they do for stdlib records.
    """

    def factory(*args: Any) -> _Dispatch:
        return _Dispatch(handlers, str(args[0]) if args else None)

    _structlog.configure(
        processors=[
            _structlog.contextvars.merge_contextvars,
            _render_to_outputs,
        ],
        wrapper_class=make_bound_logger_class(level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str | None = None, **fields: Any) -> Any:
    """Return a structlog logger that has ``child()``, whatever structlog's configuration.

    ``name`` becomes the ``logger`` key of its events.
    """
    initial = dict(fields)
    if name is not None:
        initial.setdefault("logger", name)
    wrapper = _structlog.get_config()["wrapper_class"]
    if not hasattr(wrapper, "child"):
        wrapper = type("AgentuityBoundLogger", (wrapper,), {"child": BoundLogger.child})
    bound = _structlog.wrap_logger(None, wrapper_class=wrapper)
    return bound.bind(**initial) if initial else bound
