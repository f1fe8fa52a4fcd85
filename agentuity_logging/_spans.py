"""Spans: timed operations inside a session (LLM calls, tool runs, orchestration steps).

A span is entered like a session: a new immutable snapshot carrying the span is set in the one context
variable and reset with its token on exit, so every record logged inside carries ``spanId``, nested spans
find their parent across ``await`` and into the thread helpers (``wrap``, ``ContextThreadPoolExecutor``,
``asyncio.to_thread``), and concurrent tasks never see each other's spans.

A finished span is *one log record* on the stdlib logger ``agentuity_logging.span`` (INFO, or ERROR when
the body raised) whose top-level keys are ``spanId``, ``parentSpanId``, ``name``, ``start``, ``end``,
``durationMs``, ``status`` and ``error``, with the span's attributes as fields. It therefore reaches every
output a log line reaches (stream, shippers, the log store) through the normal path; there is no second
pipeline to configure or to lose.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from types import TracebackType
from typing import Any, Final, ParamSpec, Protocol, TypeVar, overload

from agentuity_logging._context import Snapshot, current_snapshot, reset_snapshot, set_snapshot
from agentuity_logging._correlation import stamp_trace_context
from agentuity_logging._ids import new_span_id
from agentuity_logging._internal import Listeners, report_once
from agentuity_logging._records import SESSION_KEY, THREAD_KEY, format_timestamp, normalize_fields

__all__ = [
    "SPAN_KEYS",
    "SPAN_LOGGER_NAME",
    "Span",
    "SpanListener",
    "add_span_listener",
    "current_span",
    "remove_span_listener",
    "span",
]

P = ParamSpec("P")
R = TypeVar("R")

SPAN_LOGGER_NAME: Final = "agentuity_logging.span"
_span_logger: Final = logging.getLogger(SPAN_LOGGER_NAME)

#: The top-level keys of a finished span's record. An attribute with one of these names gets a trailing
#: underscore, like any field that clashes with the schema, so it can never overwrite the timeline.
SPAN_KEYS: Final = frozenset(
    {"spanId", "parentSpanId", "name", "start", "end", "durationMs", "status", "error"}
)


def _span_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = normalize_fields(attrs)
    if SPAN_KEYS.isdisjoint(out):
        return out
    return {(f"{k}_" if k in SPAN_KEYS else k): v for k, v in out.items()}


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _error_message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


class Span:
    """One operation: its IDs, timing, outcome and attributes.

    ``status`` is ``None`` while the span runs, then ``"ok"`` or ``"error"``; ``error`` is
    ``{"type", "message"}`` when the body raised. Times: ``start``/``end`` are epoch seconds,
    ``duration_ms`` comes from a monotonic clock. Add attributes while it runs with :meth:`set`.
    """

    __slots__ = (
        "_site",
        "_t0",
        "attrs",
        "duration_ms",
        "end",
        "error",
        "id",
        "name",
        "parent_id",
        "session_id",
        "start",
        "status",
        "thread_id",
    )

    def __init__(
        self,
        name: str,
        attrs: dict[str, Any],
        parent_id: str | None,
        session_id: str | None,
        thread_id: str | None,
    ) -> None:
        self.id = new_span_id()
        self.name = name
        self.attrs = attrs
        self.parent_id = parent_id
        self.session_id = session_id
        self.thread_id = thread_id
        self.start = time.time()
        self._t0 = time.perf_counter()
        self.end: float | None = None
        self.duration_ms: float | None = None
        self.status: str | None = None
        self.error: dict[str, str] | None = None
        self._site: tuple[str, int, str] = ("(unknown file)", 0, "(unknown function)")

    def set(self, **attrs: Any) -> None:
        """Add or replace attributes (they land on the span's record as fields)."""
        self.attrs.update(_span_attrs(attrs))

    def to_dict(self) -> dict[str, Any]:
        """Return the span's top-level record keys (``start``/``end`` as RFC 3339 UTC)."""
        return {
            "spanId": self.id,
            "parentSpanId": self.parent_id,
            "name": self.name,
            "start": format_timestamp(self.start),
            "end": None if self.end is None else format_timestamp(self.end),
            "durationMs": self.duration_ms,
            "status": self.status,
            "error": self.error,
        }

    def __repr__(self) -> str:
        return f"Span(name={self.name!r}, id={self.id!r}, parent={self.parent_id!r})"


def current_span() -> Span | None:
    """Return the innermost active :class:`Span`, or ``None`` outside a span."""
    found = current_snapshot().span
    return found if isinstance(found, Span) else None


# --- listeners (the OpenTelemetry bridge) --------------------------------------------------------------


class SpanListener(Protocol):
    """Told when spans start and end, in the span's own context (never raise from these)."""

    def span_started(self, span: Span) -> None:
        """Called on entry, after the span became current."""

    def span_ended(self, span: Span) -> None:
        """Called on exit, after the span's record was logged, before the span stops being current."""


_listeners: Final = Listeners[SpanListener]("span listener")


def add_span_listener(listener: SpanListener) -> None:
    """Register ``listener`` (idempotent)."""
    _listeners.add(listener)


def remove_span_listener(listener: SpanListener) -> None:
    """Unregister ``listener`` (no error if absent)."""
    _listeners.remove(listener)


def _notify(method: str, sp: Span) -> None:
    _listeners.notify(method, sp)


# --- the span record -----------------------------------------------------------------------------------


def _emit(sp: Span) -> None:
    level = logging.INFO if sp.status == "ok" else logging.ERROR
    if not _span_logger.isEnabledFor(level):
        return
    fn, lno, func = sp._site
    # The message is final text, not a %-template: outputs need not render it (and a "%" in a span
    # name can never break formatting).
    record = _span_logger.makeRecord(
        SPAN_LOGGER_NAME, level, fn, lno, f"span {sp.name}", (), None, func, None, None
    )
    d = record.__dict__
    # The span's own session wins over whatever a stamping filter would add later ("not in" checks).
    if sp.session_id is not None:
        d[SESSION_KEY] = sp.session_id
        d[THREAD_KEY] = sp.thread_id
    if sp.attrs:
        d.update(sp.attrs)
    stamp_trace_context(d)
    d["_agentuity_raw"] = sp.to_dict()
    _span_logger.handle(record)


# --- span() ------------------------------------------------------------------------------------------


class span:  # noqa: N801 - used like a function: ``with span("llm"):``, ``@span("tool")``
    """Record a block, a coroutine or each call of a function as one :class:`Span`.

    Usable as ``with span("llm.call", model="m") as s``, ``async with span(...)`` and as a decorator on
    sync and async functions (each call is a new span). The parent is the span active where it is
    entered, within the same session. When the body raises, the span ends with ``status="error"`` and
    ``error={"type", "message"}`` and the exception propagates unchanged. A generator function decorated
    with it is timed while it creates the generator, not while it is iterated: wrap the loop instead.

    Raises:
        TypeError: ``name`` is not a string.
    """

    __slots__ = ("_attrs", "_entries", "_name", "_site")

    def __init__(self, name: str, /, **attrs: Any) -> None:
        if not isinstance(name, str):
            raise TypeError(f"span name must be a string, got {type(name).__name__}")
        self._name = name
        self._attrs = _span_attrs(attrs) if attrs else {}
        self._entries: list[tuple[Span, Token[Snapshot], Snapshot]] = []
        self._site: tuple[str, int, str] | None = None

    def _enter(self, depth: int) -> Span:
        previous = current_snapshot()
        sess = previous.session
        parent = previous.span
        parent_id: str | None = None
        if isinstance(parent, Span) and (sess is None or parent.session_id == sess.id):
            parent_id = parent.id
        sp = Span(
            self._name,
            dict(self._attrs),
            parent_id,
            None if sess is None else sess.id,
            None if sess is None else sess.thread.id,
        )
        if self._site is not None:
            sp._site = self._site
        else:
            try:
                frame = sys._getframe(depth)
                sp._site = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
            except ValueError:  # pragma: no cover - no caller frame
                pass
        token = set_snapshot(previous.replace(span=sp))
        self._entries.append((sp, token, previous))
        _notify("span_started", sp)
        return sp

    def _exit(self, exc: BaseException | None) -> None:
        sp, token, previous = self._entries.pop()
        try:
            sp.end = time.time()
            sp.duration_ms = round((time.perf_counter() - sp._t0) * 1000.0, 3)
            # A generator closed early is a normal end of iteration, not a failure.
            if exc is None or isinstance(exc, GeneratorExit):
                sp.status = "ok"
            else:
                sp.status = "error"
                sp.error = {"type": _error_type(exc), "message": _error_message(exc)}
            try:
                _emit(sp)
            except Exception as err:
                report_once("span-emit", "a span record could not be logged: %r", err)
            _notify("span_ended", sp)
        finally:
            reset_snapshot(token, previous)

    def __enter__(self) -> Span:
        return self._enter(2)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Span:
        return self._enter(2)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def _fresh(self, site: tuple[str, int, str]) -> span:
        clone = span.__new__(span)
        clone._name = self._name
        clone._attrs = self._attrs
        clone._entries = []
        clone._site = site
        return clone

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` so that each call runs in a new span (its record points at ``fn``)."""
        code = getattr(fn, "__code__", None)
        site = (
            (code.co_filename, code.co_firstlineno, code.co_name)
            if code is not None
            else ("(unknown file)", 0, getattr(fn, "__qualname__", "(unknown function)"))
        )
        import inspect  # deferred: keeps `import agentuity_logging` light

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self._fresh(site):
                    return await fn(*args, **kwargs)

            return run_async

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            with self._fresh(site):
                return fn(*args, **kwargs)

        return run
