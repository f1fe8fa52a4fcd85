"""Trace correlation: the OpenTelemetry and Datadog IDs of the current trace, for log records.

When an OpenTelemetry span is current, records carry ``trace_id`` (32 hex) and ``span_id`` (16 hex). When
ddtrace has a current span, records carry Datadog's log attributes ``dd.trace_id`` and ``dd.span_id`` (the
unsigned decimal of the low 64 bits, the form Datadog joins on, also for 128-bit trace IDs) and
``dd.service``, ``dd.env``, ``dd.version``, so Datadog links the lines to the trace.

Neither library is ever imported here: a tracer that the application has not imported cannot have a
current span, so the check is a ``sys.modules`` lookup per record and costs nothing else when no tracer is
in use. A key the record already has wins (ddtrace's own log injection, say).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Any, Final

__all__ = [
    "DD_ENV_KEY",
    "DD_SERVICE_KEY",
    "DD_SPAN_ID_KEY",
    "DD_TRACE_ID_KEY",
    "DD_VERSION_KEY",
    "OTEL_SPAN_ID_KEY",
    "OTEL_TRACE_ID_KEY",
    "datadog_ids",
    "stamp_trace_context",
    "trace_context",
]

OTEL_TRACE_ID_KEY: Final = "trace_id"
OTEL_SPAN_ID_KEY: Final = "span_id"
DD_TRACE_ID_KEY: Final = "dd.trace_id"
DD_SPAN_ID_KEY: Final = "dd.span_id"
DD_SERVICE_KEY: Final = "dd.service"
DD_ENV_KEY: Final = "dd.env"
DD_VERSION_KEY: Final = "dd.version"

_LOW_64: Final = (1 << 64) - 1
_OTEL_MODULE: Final = "opentelemetry.trace"
_DD_MODULE: Final = "ddtrace"


def datadog_ids(trace_id: int, span_id: int) -> tuple[str, str]:
    """Return Datadog's ``(dd.trace_id, dd.span_id)``: unsigned decimals of the low 64 bits.

    Datadog joins logs to traces on the low 64 bits of the trace ID, so a 128-bit ID (ddtrace 2.x's default,
    OpenTelemetry's always) is cut, never written as a 128-bit decimal.
    """
    return str(trace_id & _LOW_64), str(span_id & _LOW_64)


def _otel(out: MutableMapping[str, Any], module: Any) -> None:
    ctx = module.get_current_span().get_span_context()
    if ctx.is_valid:
        if OTEL_TRACE_ID_KEY not in out:
            out[OTEL_TRACE_ID_KEY] = format(ctx.trace_id, "032x")
        if OTEL_SPAN_ID_KEY not in out:
            out[OTEL_SPAN_ID_KEY] = format(ctx.span_id, "016x")


def _dd_tracer(module: Any) -> Any:
    # ddtrace >= 3 exposes the global tracer as ddtrace.trace.tracer; 1.x and 2.x as ddtrace.tracer.
    trace_module = sys.modules.get(_DD_MODULE + ".trace")
    tracer = getattr(trace_module, "tracer", None) if trace_module is not None else None
    return tracer if tracer is not None else getattr(module, "tracer", None)


def _datadog(out: MutableMapping[str, Any], module: Any) -> None:
    tracer = _dd_tracer(module)
    if tracer is None or getattr(tracer, "enabled", True) is False:
        return
    current = tracer.current_span()
    if current is None:
        return
    trace_id, span_id = datadog_ids(int(current.trace_id), int(current.span_id))
    config = getattr(module, "config", None)
    service = getattr(current, "service", None) or getattr(config, "service", None)
    values = {
        DD_TRACE_ID_KEY: trace_id,
        DD_SPAN_ID_KEY: span_id,
        DD_SERVICE_KEY: service or os.environ.get("DD_SERVICE", ""),
        DD_ENV_KEY: getattr(config, "env", None) or os.environ.get("DD_ENV", ""),
        DD_VERSION_KEY: getattr(config, "version", None) or os.environ.get("DD_VERSION", ""),
    }
    for key, value in values.items():
        # Datadog's own injection omits service/env/version when they are not configured.
        if value and key not in out:
            out[key] = value


def stamp_trace_context(target: MutableMapping[str, Any]) -> None:
    """Add the current OpenTelemetry and Datadog IDs to ``target`` (a record's ``__dict__``, an event).

    Keys ``target`` already has are kept. Never raises: a broken tracer costs the IDs, not the record.
    """
    modules = sys.modules
    otel = modules.get(_OTEL_MODULE)
    dd = modules.get(_DD_MODULE)
    if otel is None and dd is None:
        return
    try:
        if otel is not None:
            _otel(target, otel)
        if dd is not None:
            _datadog(target, dd)
    except Exception as exc:
        from agentuity_logging._internal import report_once

        report_once("trace-context", "reading the current trace IDs failed: %r", exc)


def trace_context() -> dict[str, str]:
    """Return the current trace's correlation keys (empty when no tracer has a current span)."""
    out: dict[str, str] = {}
    stamp_trace_context(out)
    return out
