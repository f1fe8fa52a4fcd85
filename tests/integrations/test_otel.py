"""OpenTelemetry: trace IDs on records, our IDs on OpenTelemetry logs, spans mirrored as OTel spans."""

from __future__ import annotations

import io
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agentuity_logging import MissingDependencyError, bound, configure, get_logger, session
from agentuity_logging._spans import SPAN_LOGGER_NAME, span
from agentuity_logging.integrations.otel import (
    SessionLogHandler,
    mirror_spans,
    mirroring,
    trace_context,
    unmirror_spans,
)
from agentuity_logging.testing import capture_logs

log = get_logger("tests.otel")


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A local tracer provider exporting to memory (the global provider is never touched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield provider, exporter
    finally:
        unmirror_spans()
        provider.shutdown()


def otel_logging_handler(provider: LoggerProvider) -> logging.Handler:
    """The SDK's LoggingHandler; it is deprecated upstream in favour of instrumentation-logging."""
    from opentelemetry.sdk._logs import LoggingHandler

    with pytest.warns(DeprecationWarning, match="LoggingHandler"):
        return LoggingHandler(logger_provider=provider)


def hex_ids(otel_span: Any) -> tuple[str, str]:
    ctx = otel_span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class TestTraceIds:
    def test_span_record_carries_the_current_otel_ids(
        self, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """Inside an OpenTelemetry span, our span's record carries its trace_id and span_id in hex."""
        provider, _ = spans
        tracer = provider.get_tracer("t")
        with capture_logs() as logs, tracer.start_as_current_span("op") as op, span("ours"):
            pass
        trace_id, span_id = hex_ids(op)
        rec = next(e for e in logs if e["logger"] == SPAN_LOGGER_NAME)
        assert (rec["trace_id"], rec["span_id"]) == (trace_id, span_id)
        assert len(rec["trace_id"]) == 32
        assert len(rec["span_id"]) == 16

    def test_records_carry_the_current_otel_ids(
        self, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """Every record logged inside an OpenTelemetry span carries trace_id/span_id; none outside."""
        provider, _ = spans
        stream = io.StringIO()
        configure(format="json", stream=stream)
        with provider.get_tracer("t").start_as_current_span("op") as op:
            logging.getLogger("tests.otel.lib").warning("inside")
        logging.getLogger("tests.otel.lib").warning("outside")
        inside, outside = (json.loads(x) for x in stream.getvalue().splitlines())
        assert (inside["trace_id"], inside["span_id"]) == hex_ids(op)
        assert "trace_id" not in outside

    def test_trace_context_is_empty_without_a_valid_span(self) -> None:
        """OpenTelemetry imported but no current span: nothing is added."""
        assert trace.get_current_span().get_span_context().is_valid is False
        assert trace_context() == {}


class TestMirror:
    def test_spans_are_mirrored_with_nesting_and_attributes(
        self, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """mirror_spans(): each span() is an OpenTelemetry span with the same nesting and attributes."""
        provider, exporter = spans
        mirror_spans(provider)
        assert mirroring()
        with (
            capture_logs() as logs,
            session() as s,
            span("turn", turn=1) as turn,
            span("llm", model="m", tags=["a", "b"], cfg={"t": 0.2}) as llm,
        ):
            log.info("calling model")
        finished = {sp.name: sp for sp in exporter.get_finished_spans()}
        otel_turn, otel_llm = finished["turn"], finished["llm"]
        assert otel_llm.parent is not None
        assert otel_llm.parent.span_id == otel_turn.context.span_id
        assert otel_llm.context.trace_id == otel_turn.context.trace_id
        assert otel_llm.attributes["agentuity.span_id"] == llm.id
        assert otel_llm.attributes["agentuity.session_id"] == s.id
        assert otel_llm.attributes["model"] == "m"
        assert tuple(otel_llm.attributes["tags"]) == ("a", "b")
        assert otel_llm.attributes["cfg"] == "{'t': 0.2}"
        assert otel_turn.attributes["agentuity.span_id"] == turn.id
        assert otel_llm.status.status_code == StatusCode.UNSET
        # Records inside carry the mirrored span's IDs, so logs link to the exported trace.
        inner = next(e for e in logs if e["message"] == "calling model")
        assert inner["span_id"] == format(otel_llm.context.span_id, "016x")
        assert inner["spanId"] == llm.id

    def test_mirrored_error_sets_error_status(
        self, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """A raising span ends its OpenTelemetry span with ERROR status and error.type."""
        provider, exporter = spans
        mirror_spans(provider)
        with pytest.raises(TimeoutError), span("tool"):
            raise TimeoutError("slow tool")
        (otel_span,) = exporter.get_finished_spans()
        assert otel_span.status.status_code == StatusCode.ERROR
        assert otel_span.status.description == "slow tool"
        assert otel_span.attributes["error.type"] == "TimeoutError"
        assert trace.get_current_span().get_span_context().is_valid is False

    def test_mirror_nests_under_an_existing_otel_span(
        self, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """Our spans become children of the OpenTelemetry span current where they start."""
        provider, exporter = spans
        mirror_spans(provider)
        tracer = provider.get_tracer("web")
        with tracer.start_as_current_span("GET /chat") as server_span, span("agent.turn"):
            pass
        turn = next(sp for sp in exporter.get_finished_spans() if sp.name == "agent.turn")
        assert turn.parent is not None
        assert turn.parent.span_id == server_span.get_span_context().span_id

    def test_unmirror_stops_and_closes_open_spans(
        self, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """unmirror_spans() stops new mirrors; a span already running still ends its OTel span."""
        provider, exporter = spans
        mirror_spans(provider)
        with span("running"):
            unmirror_spans()
            with span("after"):
                pass
        assert not mirroring()
        assert [sp.name for sp in exporter.get_finished_spans()] == ["running"]
        assert trace.get_current_span().get_span_context().is_valid is False

    def test_missing_opentelemetry_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without opentelemetry, mirror_spans() raises MissingDependencyError naming the extra."""
        monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
        with pytest.raises(MissingDependencyError, match=r"agentuity-logging\[otel\]"):
            mirror_spans()


class TestOtelLogs:
    def test_logging_handler_records_carry_our_ids_as_attributes(self) -> None:
        """Records handled by OpenTelemetry's LoggingHandler carry our IDs and fields as attributes."""
        exporter = InMemoryLogRecordExporter()
        provider = LoggerProvider()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        handler = otel_logging_handler(provider)
        configure(format="json", stream=io.StringIO())
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with session() as s, bound(user="u1"):
                logging.getLogger("tests.otel.lib").warning("to otel")
        finally:
            root.removeHandler(handler)
            provider.shutdown()
        (exported,) = exporter.get_finished_logs()
        attributes = dict(exported.log_record.attributes or {})
        assert attributes["agentuitySessionId"] == s.id
        assert attributes["agentuityThreadId"] == s.thread.id
        assert attributes["user"] == "u1"

    def test_session_log_handler_stamps_and_cleans(self) -> None:
        """SessionLogHandler: IDs without configure(), no private caches, span keys as attributes."""
        exporter = InMemoryLogRecordExporter()
        provider = LoggerProvider()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        handler = SessionLogHandler(otel_logging_handler(provider))
        root = logging.getLogger()
        old_level = root.level
        root.setLevel(logging.INFO)
        with capture_logs():  # another handler first: it caches our event on the record
            root.addHandler(handler)
            try:
                with session() as s, span("llm") as sp:
                    logging.getLogger("tests.otel.lib").warning("inside")
            finally:
                root.removeHandler(handler)
                handler.close()
                root.setLevel(old_level)
        inside, finished = (dict(x.log_record.attributes or {}) for x in exporter.get_finished_logs())
        assert inside["agentuitySessionId"] == s.id
        assert inside["spanId"] == sp.id
        assert not [k for k in {**inside, **finished} if k.startswith("_agentuity")]
        assert finished["spanName"] == "llm"
        assert finished["spanId"] == sp.id
        assert finished["status"] == "ok"
        assert finished["durationMs"] >= 0

    def test_session_log_handler_leaves_the_original_record_alone(self) -> None:
        """The wrapped handler gets a copy; other handlers still see the span's private keys."""
        seen: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record)

        wrapper = SessionLogHandler(Keep())
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record._agentuity_raw = {"spanId": "1", "name": "n"}
        with warnings.catch_warnings():
            wrapper.handle(record)
        assert record._agentuity_raw == {"spanId": "1", "name": "n"}
        assert not hasattr(seen[0], "_agentuity_raw")
        assert seen[0].spanName == "n"  # type: ignore[attr-defined]
