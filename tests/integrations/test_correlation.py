"""Trace correlation: OpenTelemetry and Datadog IDs on records and span records.

ddtrace is not installed here (it is heavy): a fake ``ddtrace`` module with the same surface the code reads
(``tracer.current_span()`` -> ``trace_id``/``span_id``/``service``, ``tracer.enabled``, ``config.env``...)
stands in for it.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from agentuity_logging import configure, session
from agentuity_logging._correlation import datadog_ids, stamp_trace_context, trace_context
from agentuity_logging._spans import SPAN_LOGGER_NAME, span
from agentuity_logging.testing import capture_logs

TRACE_128 = 0x1234567890ABCDEF_FEDCBA0987654321
SPAN_64 = 0xFEDCBA0987654321


@dataclass
class FakeDDSpan:
    trace_id: int = TRACE_128
    span_id: int = SPAN_64
    service: str | None = "checkout"


@dataclass
class FakeTracer:
    current: FakeDDSpan | None = field(default_factory=FakeDDSpan)
    enabled: bool = True
    broken: bool = False

    def current_span(self) -> FakeDDSpan | None:
        if self.broken:
            raise RuntimeError("tracer bug")
        return self.current


@pytest.fixture
def ddtrace(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """A fake ddtrace 2.x module (``ddtrace.tracer``, ``ddtrace.config``) in sys.modules."""
    fake = types.ModuleType("ddtrace")
    fake.tracer = FakeTracer()  # type: ignore[attr-defined]
    fake.config = types.SimpleNamespace(service="checkout", env="prod", version="1.4.2")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ddtrace", fake)
    monkeypatch.delitem(sys.modules, "ddtrace.trace", raising=False)
    return fake


EXPECTED_DD = {
    "dd.trace_id": str(TRACE_128 & 0xFFFFFFFFFFFFFFFF),
    "dd.span_id": str(SPAN_64),
    "dd.service": "checkout",
    "dd.env": "prod",
    "dd.version": "1.4.2",
}


class TestDatadogIds:
    def test_ids_are_decimal_low_64_bits(self) -> None:
        """128-bit trace IDs are cut to the low 64 bits, written as unsigned decimals."""
        assert datadog_ids(TRACE_128, SPAN_64) == (str(0xFEDCBA0987654321), str(0xFEDCBA0987654321))
        assert datadog_ids(5, 6) == ("5", "6")

    def test_trace_context_reads_the_current_dd_span(self, ddtrace: Any) -> None:
        """trace_context() returns Datadog's five correlation keys."""
        assert trace_context() == EXPECTED_DD

    def test_ddtrace_3_tracer_location_is_used(self, ddtrace: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        """ddtrace >= 3 keeps the tracer in ddtrace.trace; it is preferred when loaded."""
        trace_mod = types.ModuleType("ddtrace.trace")
        trace_mod.tracer = FakeTracer(current=FakeDDSpan(trace_id=7, span_id=8))  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "ddtrace.trace", trace_mod)
        assert trace_context()["dd.trace_id"] == "7"

    def test_no_current_span_adds_nothing(self, ddtrace: Any) -> None:
        """Without a current Datadog span, no dd.* keys."""
        ddtrace.tracer.current = None
        assert trace_context() == {}

    def test_disabled_tracer_adds_nothing(self, ddtrace: Any) -> None:
        """A disabled tracer adds nothing."""
        ddtrace.tracer.enabled = False
        assert trace_context() == {}

    def test_unset_service_env_version_fall_back_to_env_vars_or_are_omitted(
        self, ddtrace: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Service/env/version come from the tracer config, else DD_* variables, else are omitted."""
        ddtrace.config = types.SimpleNamespace(service=None, env=None, version=None)
        ddtrace.tracer.current.service = None
        monkeypatch.setenv("DD_ENV", "staging")
        monkeypatch.delenv("DD_SERVICE", raising=False)
        monkeypatch.delenv("DD_VERSION", raising=False)
        got = trace_context()
        assert got["dd.env"] == "staging"
        assert "dd.service" not in got
        assert "dd.version" not in got

    def test_existing_keys_win(self, ddtrace: Any) -> None:
        """Keys already present (ddtrace's own log injection) are kept."""
        target = {"dd.trace_id": "1"}
        stamp_trace_context(target)
        assert target["dd.trace_id"] == "1"
        assert target["dd.span_id"] == str(SPAN_64)

    def test_broken_tracer_costs_the_ids_not_the_record(self, ddtrace: Any) -> None:
        """A tracer that raises adds nothing and the span record is still logged."""
        ddtrace.tracer.broken = True
        with capture_logs() as logs, span("still-logged"):
            pass
        assert [e["name"] for e in logs if e["logger"] == SPAN_LOGGER_NAME] == ["still-logged"]
        assert "dd.trace_id" not in logs[-1]


class TestRecordsCarryDatadogIds:
    def test_span_record_carries_dd_ids(self, ddtrace: Any) -> None:
        """A finished span's record carries the Datadog correlation keys."""
        with capture_logs() as logs, session(), span("llm"):
            pass
        rec = logs[-1]
        for key, value in EXPECTED_DD.items():
            assert rec[key] == value

    def test_stdlib_records_carry_dd_ids(self, ddtrace: Any) -> None:
        """Every stdlib record (configure()'s stamping) carries the Datadog keys in the JSON line."""
        stream = io.StringIO()
        configure(format="json", stream=stream)
        logging.getLogger("tests.dd").warning("hello")
        line = json.loads(stream.getvalue())
        for key, value in EXPECTED_DD.items():
            assert line[key] == value

    def test_captured_records_carry_dd_ids(self, ddtrace: Any) -> None:
        """Records stamped by SessionContextFilter (capture_logs, dictConfig set-ups) carry them too."""
        with capture_logs() as logs:
            logging.getLogger("tests.dd").warning("hello")
        assert logs[0]["dd.trace_id"] == EXPECTED_DD["dd.trace_id"]

    def test_structlog_events_carry_dd_ids(self, ddtrace: Any) -> None:
        """structlog events through configure() carry them (ddtrace itself patches only stdlib)."""
        stream = io.StringIO()
        configure(format="json", stream=stream)
        structlog.get_logger("tests.dd").info("from structlog")
        line = json.loads(stream.getvalue())
        assert line["dd.span_id"] == EXPECTED_DD["dd.span_id"]
