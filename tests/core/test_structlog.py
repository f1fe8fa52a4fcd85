"""structlog: the same schema and destinations as stdlib records, beside structlog's own context."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
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

    def test_contextvars_follow_the_context_they_were_bound_in(self) -> None:
        """Names bound later are picked up; cleared ones vanish; another context sees only its own."""
        import contextvars

        out = JsonLines()
        al.configure(format="json", stream=out)
        log = structlog.get_logger("agent")
        structlog.contextvars.bind_contextvars(request_path="/chat")
        try:
            log.info("one")
            structlog.contextvars.bind_contextvars(new_name_for_this_test="later")
            log.info("two")
            contextvars.Context().run(log.info, "elsewhere")
            structlog.contextvars.clear_contextvars()
            log.info("cleared")
        finally:
            structlog.contextvars.clear_contextvars()
        one, two, elsewhere, cleared = out.records()
        assert (one["request_path"], "new_name_for_this_test" in one) == ("/chat", False)
        assert (two["request_path"], two["new_name_for_this_test"]) == ("/chat", "later")
        assert not {"request_path", "new_name_for_this_test"} & (elsewhere.keys() | cleared.keys())

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


def _without_time(line: dict[str, object]) -> list[tuple[str, object]]:
    return [(k, v) for k, v in line.items() if k != "timestamp"]


class TestDirectMethods:
    """configure()'s loggers skip structlog's dispatch; what they write equals what its chain writes."""

    CALLS = (
        ("plain", (), {}),
        ("fields %s", ("arg",), {"user_id": 42, "tags": ["a"]}),
        ("named by mapping %(who)s", ({"who": "me"},), {}),
        ("schema-named keyword", (), {"message": "shadow", "level": "custom", "timestamp": 1}),
        ("structlog's own key", (), {"logger_name": "other"}),
        ("an error", (), {"exc_info": ValueError("bad")}),
    )

    def _both_paths(
        self, log: object, out: JsonLines
    ) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        out.truncate(0)
        out.seek(0)
        for event, args, kw in self.CALLS:
            log.info(event, *args, **kw)  # type: ignore[attr-defined]
        direct = out.records()
        out.truncate(0)
        out.seek(0)
        for event, args, kw in self.CALLS:
            rendered = event % args[0] if len(args) == 1 and isinstance(args[0], dict) else event % args
            log._proxy_to_logger("info", rendered, **kw)  # type: ignore[attr-defined]
        return direct, out.records()

    def test_same_output_as_the_processor_chain(self) -> None:
        out = JsonLines()
        al.configure(format="json", stream=out)
        structlog.contextvars.bind_contextvars(request_path="/chat", user_id=7)
        try:
            with al.session(), al.span("step"), al.bound(tenant="t1", request_path="bound"):
                log = get_logger("agent", component="planner")
                direct, chain = self._both_paths(log, out)
                plain_direct, plain_chain = self._both_paths(structlog.get_logger("plain"), out)
        finally:
            structlog.contextvars.clear_contextvars()
        assert type(log).__name__ == "AgentuityBoundLogger"
        assert [_without_time(d) for d in direct] == [_without_time(c) for c in chain]
        assert [_without_time(d) for d in plain_direct] == [_without_time(c) for c in plain_chain]
        first = direct[1]
        assert list(first)[4:7] == ["agentuitySessionId", "agentuityThreadId", "spanId"]
        assert first["message"] == "fields arg"
        assert first["user_id"] == 42  # the call's keyword beats structlog's context variable
        assert first["request_path"] == "/chat"  # structlog's context variable beats bound()
        assert (first["component"], first["tenant"]) == ("planner", "t1")
        assert direct[3]["message_"] == "shadow"
        assert direct[5]["exception"]["type"] == "ValueError"  # type: ignore[index]

    def test_same_output_without_any_context(self) -> None:
        out = JsonLines()
        al.configure(format="json", stream=out)
        direct, chain = self._both_paths(structlog.get_logger(), out)
        assert [_without_time(d) for d in direct] == [_without_time(c) for c in chain]
        assert direct[0]["logger"] == "structlog"

    def test_only_special_keys_take_the_general_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Messages, fields, bound context and contextvars are built directly; structlog's keys are not."""
        import agentuity_logging.structlog as ours

        general: list[str] = []
        real = ours._schema_event

        def counting(logger: object, method: str, event_dict: Any) -> dict[str, Any]:
            general.append(str(event_dict.get("event")))
            return real(logger, method, event_dict)

        monkeypatch.setattr(ours, "_schema_event", counting)
        al.configure(format="json", stream=JsonLines())
        log = get_logger("agent", component="planner")
        with al.session(), al.bound(tenant="t1"):
            structlog.contextvars.bind_contextvars(request_path="/chat")
            try:
                log.info("direct", user_id=1)
                log.info("general", stack_info=True)
                log.info("general too", logger_name="x")
                structlog.contextvars.bind_contextvars(logger_name="from a context variable")
                log.info("general, a context variable")
            finally:
                structlog.contextvars.clear_contextvars()
        assert general == ["general", "general too", "general, a context variable"]

    def test_a_user_processor_chain_is_honoured(self) -> None:
        """After structlog.configure(processors=...), the loggers run the user's chain, not the shortcut."""
        out = JsonLines()
        al.configure(format="json", stream=out)
        seen: list[str] = []

        def spy(_: object, method: str, event_dict: dict[str, object]) -> dict[str, object]:
            seen.append(method)
            return event_dict

        chain = structlog.get_config()["processors"]
        structlog.configure(processors=[spy, *chain])
        structlog.get_logger("x").warning("through the spy")
        assert seen == ["warning"]
        assert out.records()[0]["message"] == "through the spy"

    def test_arguments_that_do_not_fit_render_beside_the_message(self) -> None:
        out = JsonLines()
        al.configure(format="json", stream=out)
        structlog.get_logger("x").info("%d items", "many")
        (line,) = out.records()
        assert line["message"].startswith("%d items [bad log arguments ('many',): TypeError")

    def test_a_failing_value_never_raises_into_the_caller(self) -> None:
        class Hostile:
            def __str__(self) -> str:
                raise RuntimeError("no")

        out = JsonLines()
        al.configure(format="json", stream=out)
        structlog.get_logger("x").info(Hostile())
        structlog.get_logger("x").info("after")
        assert [r["message"] for r in out.records()] == ["<unprintable Hostile>", "after"]
