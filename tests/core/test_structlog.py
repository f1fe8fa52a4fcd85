"""structlog: the same schema and destinations as stdlib records, beside structlog's own context."""

from __future__ import annotations

import io
import json
import logging

import structlog

import agentuity_logging as al
from agentuity_logging.structlog import SchemaRenderer, add_session_context, get_logger
from agentuity_logging.testing import capture_logs

from .helpers import JsonLines


class TestDirectPath:
    def test_structlog_events_come_out_in_our_schema(self) -> None:
        """After configure(), structlog events have the same keys as stdlib records."""
        out = JsonLines()
        al.configure(format="json", stream=out, service="svc")
        with al.session() as s:
            structlog.get_logger("agent").info("thinking", step=1)
            logging.getLogger("agent").info("thinking", extra={"step": 1})
        from_structlog, from_stdlib = out.records()
        assert from_structlog["agentuitySessionId"] == s.id
        assert list(from_structlog) == list(from_stdlib)
        assert from_structlog["logger"] == "agent"
        assert from_structlog["service"] == "svc"

    def test_bind_contextvars_keeps_working_beside_sessions(self) -> None:
        """structlog's bind_contextvars values become fields next to our IDs."""
        out = JsonLines()
        al.configure(format="json", stream=out)
        structlog.contextvars.bind_contextvars(request_path="/chat")
        try:
            with al.session() as s:
                structlog.get_logger().info("x")
        finally:
            structlog.contextvars.clear_contextvars()
        rec = out.records()[0]
        assert rec["request_path"] == "/chat"
        assert rec["agentuityThreadId"] == s.thread.id

    def test_our_loggers_have_child(self) -> None:
        """Loggers from agentuity_logging.structlog.get_logger have child(**fields)."""
        out = JsonLines()
        al.configure(format="json", stream=out)
        log = get_logger("svc", app="a")
        log.child(component="tool").info("ran")
        rec = out.records()[0]
        assert (rec["logger"], rec["app"], rec["component"]) == ("svc", "a", "tool")

    def test_levels_below_the_configured_one_are_dropped(self) -> None:
        """The level given to configure() filters structlog events too."""
        out = JsonLines()
        al.configure(format="json", stream=out, level="WARNING")
        structlog.get_logger().info("dropped")
        structlog.get_logger().warning("kept")
        assert [r["message"] for r in out.records()] == ["kept"]

    def test_exception_is_structured(self) -> None:
        """log.exception() in structlog produces our structured exception."""
        out = JsonLines()
        al.configure(format="json", stream=out)
        try:
            raise ValueError("bad")
        except ValueError:
            structlog.get_logger().exception("failed")
        rec = out.records()[0]
        assert rec["level"] == "error"
        assert rec["exception"]["type"] == "ValueError"

    def test_capture_logs_sees_both_paths(self) -> None:
        """testing.capture_logs collects stdlib and structlog records alike."""
        al.configure(format="json", stream=JsonLines())
        with capture_logs() as logs, al.session() as s:
            structlog.get_logger().info("a")
            al.get_logger("b").info("b")
        assert [e["message"] for e in logs] == ["a", "b"]
        assert {e["agentuitySessionId"] for e in logs} == {s.id}


class TestProcessors:
    def test_add_session_context_in_a_users_own_pipeline(self) -> None:
        """add_session_context + SchemaRenderer work in a pipeline the user configured."""
        out = io.BytesIO()
        structlog.configure(
            processors=[structlog.contextvars.merge_contextvars, add_session_context, SchemaRenderer()],
            logger_factory=structlog.BytesLoggerFactory(out),
        )
        with al.session() as s:
            structlog.get_logger().info("mine", k=1)
        rec = json.loads(out.getvalue())
        assert rec["agentuitySessionId"] == s.id
        assert rec["message"] == "mine"
        assert rec["k"] == 1

    def test_add_session_context_does_not_override_event_keys(self) -> None:
        """A key the event already has wins over the context."""
        with al.bound(user="ctx"):
            event = add_session_context(None, "info", {"user": "call"})
        assert event["user"] == "call"
