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
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Final

import structlog as _structlog

from agentuity_logging._context import current_snapshot
from agentuity_logging._correlation import stamp_trace_context
from agentuity_logging._formatting import with_service
from agentuity_logging._internal import report_once
from agentuity_logging._json import dumps
from agentuity_logging._records import (
    LEVEL_NAMES,
    METHOD_LEVELS,
    SCHEMA_KEYS,
    SESSION_KEY,
    SPAN_KEY,
    STRUCTLOG_KEYS,
    THREAD_KEY,
    bad_arguments_message,
    event_from_structlog,
    format_timestamp,
)

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
_time = time.time


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
    return (_schema_event(logger, method_name, event_dict), METHOD_LEVELS.get(method_name, logging.INFO)), {}


def _schema_event(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
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
    return event_from_structlog(method_name, event_dict)


_merge = _structlog.contextvars.merge_contextvars
#: structlog's registry of its context variables: while it is empty, merge_contextvars has nothing to add.
_STRUCTLOG_VARS: Mapping[str, Any] | None = getattr(_structlog.contextvars, "_CONTEXT_VARS", None)
_PREFIX_LEN: Final = len(getattr(_structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "structlog_"))
# (field name, ContextVar) for each registered variable, rebuilt when the registry grows (structlog
# only ever adds to it; clear_contextvars sets values to ``...``, it does not remove variables).
_registered: tuple[tuple[str, Any], ...] = ()


def _registered_vars(registry: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """(field name, ContextVar) for every name structlog ever registered, cached until it grows."""
    global _registered
    if len(registry) != len(_registered):
        # tuple() copies the items in one C call, so a thread binding a new name cannot break it.
        _registered = tuple((name[_PREFIX_LEN:], var) for name, var in tuple(registry.items()))
    return _registered


def _bound_contextvars() -> dict[str, Any] | None:
    """What ``merge_contextvars`` would add: the values bound with ``bind_contextvars`` in this context.

    One ``ContextVar.get()`` per registered name instead of structlog's copy of the whole context
    and a prefix test on every variable in it (ours, asyncio's, the application's): once anything
    was ever bound, that scan cost every structlog call ~0.7 µs, measured.
    """
    if _STRUCTLOG_VARS is None:  # a structlog without the registry: ask structlog itself
        return dict(_merge(None, "", {})) or None
    out: dict[str, Any] | None = None
    for key, var in _registered_vars(_STRUCTLOG_VARS):
        value = var.get()
        if value is not Ellipsis:
            if out is None:
                out = {}
            out[key] = value
    return out


def _merge_bound_contextvars(logger: Any, method_name: str, event_dict: Any) -> Any:
    """``merge_contextvars`` in the order the names were first bound, not the context's hash order.

    The first processor of the chain configure() installs; the direct methods add the same values in
    the same order, so a call gives the same line whichever way it takes.
    """
    bound = _bound_contextvars()
    if bound:
        for key, value in bound.items():
            event_dict.setdefault(key, value)
    return event_dict


#: The processor chain configure() installs; while structlog still runs it, loggers take the direct methods.
_CHAIN: list[Any] = [_merge_bound_contextvars, _render_to_outputs]


#: Bound field names structlog's own keys would shadow: events carrying one take structlog's general path.
_STRUCTLOG_ONLY: Final = frozenset({"event", "logger_name", "_record", "_from_structlog"})
#: Keys that make an event take the general path: structlog's own and our schema's.
_SPECIAL: Final = STRUCTLOG_KEYS | SCHEMA_KEYS


def _interpolate(event: Any, args: tuple[Any, ...]) -> Any:
    """structlog's ``%`` interpolation of the event (a lone non-empty mapping is used by name).

    Arguments that do not fit render next to the message instead of raising into the caller.
    """
    try:
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            return event % args[0]
        return event % args
    except Exception as exc:
        return bad_arguments_message(event, args, exc)


def _direct_event(
    context: Mapping[str, Any], kw: Mapping[str, Any], event: Any, level: str, name: str | None
) -> dict[str, Any] | None:
    """The schema event configure()'s chain would build, or ``None`` when a key needs that chain.

    Same keys, values and order: IDs, span, the logger's bound context, the call's keywords,
    structlog's context variables, then ``bound()`` fields that none of those named.
    """
    if event.__class__ is not str or _STRUCTLOG_VARS is None:
        return None
    snapshot = current_snapshot()
    out: dict[str, Any] = {
        "timestamp": format_timestamp(_time()),
        "level": level,
        "logger": name or "structlog",
        "message": event,
    }
    sid = snapshot.session_id
    if sid is not None:
        out[SESSION_KEY] = sid
        out[THREAD_KEY] = snapshot.thread_id
    rest = snapshot.rest
    if rest:
        span = rest.get(SPAN_KEY)
        if span is not None:
            out[SPAN_KEY] = span
    if context:
        if "logger" in context:  # get_logger(name) binds it: it names the logger, it is no field
            bound_name = context["logger"]
            if not bound_name:
                return None
            out["logger"] = str(bound_name)
            if len(context) > 1:
                if not _SPECIAL.isdisjoint(context.keys() - {"logger"}):
                    return None
                out.update({k: v for k, v in context.items() if k != "logger"})
        elif not _SPECIAL.isdisjoint(context):
            return None
        else:
            out.update(context)
    if kw:
        if not _SPECIAL.isdisjoint(kw):
            return None
        out.update(kw)
    registry = _STRUCTLOG_VARS
    if registry:  # some name was bound with bind_contextvars, maybe in another context
        # Inline, not _bound_contextvars(): an application that binds in some requests only pays one
        # ContextVar.get() per name in the others, not two calls and a dict (~6% of a call, measured).
        if len(registry) != len(_registered):
            _registered_vars(registry)
        for key, var in _registered:
            value = var.get()
            if value is not Ellipsis:
                if key in _SPECIAL:
                    return None
                if key not in out:
                    out[key] = value
    if rest and not _add_missing(out, rest, _STRUCTLOG_ONLY):
        return None
    if _OTEL in _modules or _DDTRACE in _modules:
        stamp_trace_context(out)
    return out


def _add_missing(out: dict[str, Any], extra: Mapping[str, Any], refused: frozenset[str]) -> bool:
    """Add the keys of ``extra`` that ``out`` lacks (``False``, adding nothing, if one is ``refused``)."""
    if not refused.isdisjoint(extra):
        return False
    for key, value in extra.items():
        if key not in out:
            out[key] = value
    return True


def _direct_method(method_name: str, levelno: int) -> Callable[..., None]:
    """A log method that does what configure()'s processor chain does, without structlog's dispatch.

    Equivalent to ``merge_contextvars`` + ``_render_to_outputs`` + ``_Dispatch`` (a test holds the two
    paths to the same output); only calls carrying a key structlog treats specially run that chain.
    """
    level_text = LEVEL_NAMES[levelno]

    def method(self: Any, event: Any = None, *args: Any, **kw: Any) -> None:
        dispatch = self._logger
        if self._processors is not _CHAIN or dispatch.__class__ is not _Dispatch:
            # structlog was reconfigured (or this logger wraps another one): its way, untouched.
            self._proxy_to_logger(method_name, _interpolate(event, args) if args else event, **kw)
            return
        try:
            if args:
                event = _interpolate(event, args)
            out = _direct_event(self._context, kw, event, level_text, dispatch.name)
            if out is None:  # a key structlog treats specially: its general path
                event_dict = self._context.copy()
                event_dict.update(kw)
                if event is not None:
                    event_dict["event"] = event
                out = _schema_event(
                    dispatch, method_name, _merge_bound_contextvars(dispatch, method_name, event_dict)
                )
            for handler in dispatch._handlers():
                handler.handle_event(out, levelno)
        except Exception as exc:
            report_once("structlog-direct", "a structlog event could not be rendered: %r", exc)

    method.__name__ = method_name
    return method


class BoundLogger(_structlog.BoundLoggerBase):
    """Marker base for the loggers we hand out: structlog's bound logger plus ``child(**fields)``."""

    def child(self, **fields: Any) -> Any:
        """Return a new logger with ``fields`` bound (structlog's ``bind``); this one is unchanged."""
        return self.bind(**fields)


def make_bound_logger_class(level: int, *, direct: bool = False) -> type[Any]:
    """Return structlog's filtering bound logger for ``level`` with our ``child()`` added.

    ``direct=True`` (configure()'s wiring) also replaces the enabled level methods with ones that hand
    events straight to the outputs while structlog runs configure()'s processor chain.
    """
    base = _structlog.make_filtering_bound_logger(level)
    namespace: dict[str, Any] = {"child": BoundLogger.child}
    if direct:
        for method_name, levelno in METHOD_LEVELS.items():
            # Only the methods structlog's own class has (not "err" or "failure"); "exception" and "log"
            # stay structlog's, which call into these.
            if levelno >= level and method_name not in ("exception", "log") and hasattr(base, method_name):
                namespace[method_name] = _direct_method(method_name, levelno)
    return type("AgentuityBoundLogger", (base,), namespace)


def configure_direct(*, level: int, handlers: Callable[[], Sequence[Any]]) -> None:
    """Configure structlog so its events reach ``handlers`` in our schema (used by ``configure()``).

    The outputs add the ``service`` themselves, as they do for stdlib records.
    """

    def factory(*args: Any) -> _Dispatch:
        return _Dispatch(handlers, str(args[0]) if args else None)

    _structlog.configure(
        processors=_CHAIN,
        wrapper_class=make_bound_logger_class(level, direct=True),
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
