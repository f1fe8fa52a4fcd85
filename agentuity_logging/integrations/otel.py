"""OpenTelemetry: trace IDs on records, our IDs on OpenTelemetry logs, our spans as OpenTelemetry spans.

* Trace IDs: while an OpenTelemetry span is current, records carry ``trace_id`` and ``span_id`` (hex);
  that needs nothing from this module (see :func:`trace_context`).
* Logs: records handled by OpenTelemetry's logging handler carry ``agentuitySessionId``,
  ``agentuityThreadId``, ``spanId`` and ``bound()`` fields as attributes once they are stamped
  (``configure()`` does that). :class:`SessionLogHandler` wraps that handler so the attributes are there
  without ``configure()`` too, and the package's private record caches never become attributes.
* Spans: :func:`mirror_spans` makes every ``span()`` also an OpenTelemetry span, nested under the current
  OpenTelemetry span, so our timeline shows up in any tracing backend.

Needs ``opentelemetry-api`` (and the SDK for exporting): ``pip install 'agentuity-logging[otel]'``.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Sequence
from typing import Any, Final

from agentuity_logging._context import current_snapshot
from agentuity_logging._correlation import trace_context
from agentuity_logging._errors import require
from agentuity_logging._spans import Span, add_span_listener, remove_span_listener

__all__ = ["SessionLogHandler", "mirror_spans", "mirroring", "trace_context", "unmirror_spans"]

_FEATURE: Final = "agentuity_logging.integrations.otel"
_PRIMITIVES: Final = (str, bool, int, float)


def _trace_api() -> Any:
    return require("opentelemetry.trace", feature=_FEATURE, extra="otel")


def _attribute(value: Any) -> Any:
    """Return ``value`` as an OpenTelemetry span attribute value (primitives, or their sequences)."""
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
        if items and all(isinstance(v, str) for v in items):
            return items
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


# --- logs -------------------------------------------------------------------------------------------


class SessionLogHandler(logging.Handler):
    """Hands records to an OpenTelemetry logging handler with our IDs as attributes, nothing private.

    The record is copied (other handlers keep theirs as it was); the copy gets the session, thread and
    span IDs and ``bound()`` fields from the context when no stamping added them, drops the package's
    private caches, and a finished span's top-level keys become attributes (``name`` as ``spanName``).

    Args:
        handler: the OpenTelemetry handler (``opentelemetry.sdk._logs.LoggingHandler`` or the one from
            ``opentelemetry-instrumentation-logging``).
    """

    def __init__(self, handler: logging.Handler, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.handler = handler

    def emit(self, record: logging.LogRecord) -> None:
        """Pass a cleaned copy of ``record`` on."""
        try:
            clone = copy.copy(record)
            d = clone.__dict__
            for key, value in current_snapshot().attrs.items():
                d.setdefault(key, value)
            raw = d.pop("_agentuity_raw", None)
            for key in [k for k in d if k.startswith("_agentuity_")]:
                del d[key]
            if isinstance(raw, dict):
                for key, value in raw.items():
                    d["spanName" if key == "name" else key] = value
            self.handler.handle(clone)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Flush the wrapped handler."""
        self.handler.flush()

    def close(self) -> None:
        """Close the wrapped handler, then this one."""
        try:
            self.handler.close()
        finally:
            super().close()


# --- spans ------------------------------------------------------------------------------------------


class _Mirror:
    """The span listener behind :func:`mirror_spans`."""

    def __init__(self, tracer: Any, trace_api: Any, context_api: Any) -> None:
        self._tracer = tracer
        self._trace = trace_api
        self._context = context_api
        # Our span ID -> (OpenTelemetry span, context token); entries live only while the span runs.
        self._open: dict[str, tuple[Any, Any]] = {}

    def span_started(self, span: Span) -> None:
        attributes: dict[str, Any] = {"agentuity.span_id": span.id}
        if span.session_id is not None:
            attributes["agentuity.session_id"] = span.session_id
            attributes["agentuity.thread_id"] = span.thread_id
        for key, value in span.attrs.items():
            attributes[key] = _attribute(value)
        otel_span = self._tracer.start_span(
            span.name, start_time=int(span.start * 1e9), attributes=attributes
        )
        # Made current, so OpenTelemetry-instrumented calls inside (httpx, DB drivers) nest under it,
        # and records logged inside carry its trace_id/span_id.
        token = self._context.attach(self._trace.set_span_in_context(otel_span))
        self._open[span.id] = (otel_span, token)

    def span_ended(self, span: Span) -> None:
        entry = self._open.pop(span.id, None)
        if entry is None:
            return
        otel_span, token = entry
        try:
            for key, value in span.attrs.items():
                otel_span.set_attribute(key, _attribute(value))
            if span.duration_ms is not None:
                otel_span.set_attribute("agentuity.duration_ms", span.duration_ms)
            if span.error is not None:
                status = self._trace.Status(self._trace.StatusCode.ERROR, span.error["message"])
                otel_span.set_status(status)
                otel_span.set_attribute("error.type", span.error["type"])
            end = span.end if span.end is not None else span.start
            otel_span.end(end_time=int(end * 1e9))
        finally:
            self._context.detach(token)


_lock = threading.Lock()
_mirror: _Mirror | None = None


def mirror_spans(tracer_provider: Any = None) -> None:
    """Make every ``span()`` also an OpenTelemetry span (idempotent; a second call changes the provider).

    The OpenTelemetry span starts and ends with ours, is current while ours runs, gets our attributes plus
    ``agentuity.span_id``/``agentuity.session_id``/``agentuity.thread_id``, and an ``ERROR`` status with
    ``error.type`` when the body raised.

    Args:
        tracer_provider: the provider to get the tracer from; the global one when ``None``.

    Raises:
        MissingDependencyError: ``opentelemetry-api`` is not installed.
    """
    global _mirror
    trace_api = _trace_api()
    context_api = require("opentelemetry.context", feature=_FEATURE, extra="otel")
    tracer = trace_api.get_tracer("agentuity_logging", tracer_provider=tracer_provider)
    with _lock:
        if _mirror is not None:
            remove_span_listener(_mirror)
        _mirror = _Mirror(tracer, trace_api, context_api)
        add_span_listener(_mirror)


def unmirror_spans() -> None:
    """Stop mirroring spans (spans already running still end their OpenTelemetry span)."""
    global _mirror
    with _lock:
        if _mirror is not None:
            remove_span_listener(_mirror)
            # Keep ending the mirrored spans that are still open: a listener that vanished mid-span
            # would leave them current forever.
            if _mirror._open:
                add_span_listener(_Closer(_mirror))
            _mirror = None


class _Closer:
    """Ends the OpenTelemetry spans a removed mirror still had open, then removes itself."""

    def __init__(self, mirror: _Mirror) -> None:
        self._mirror = mirror

    def span_started(self, span: Span) -> None:
        return

    def span_ended(self, span: Span) -> None:
        try:
            self._mirror.span_ended(span)
        finally:
            if not self._mirror._open:
                remove_span_listener(self)


def mirroring() -> bool:
    """Return whether :func:`mirror_spans` is in effect."""
    return _mirror is not None
