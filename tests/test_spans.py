"""span(): timing, nesting, errors, the finished-span record, and where that record goes."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
from typing import Any

import pytest

from agentuity_logging import (
    ContextThreadPoolExecutor,
    bound,
    configure,
    get_logger,
    session,
    wrap,
)
from agentuity_logging._context import current_snapshot
from agentuity_logging._spans import (
    SPAN_LOGGER_NAME,
    Span,
    add_span_listener,
    current_span,
    remove_span_listener,
    span,
)
from agentuity_logging.testing import capture_logs

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")

log = get_logger("tests.spans")


def span_records(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["logger"] == SPAN_LOGGER_NAME]


def by_name(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in span_records(entries)}


class TestSpanRecord:
    def test_finished_span_is_one_info_record_with_top_level_keys(self) -> None:
        """A finished span is one INFO record with the span keys at top level, attrs as fields."""
        with capture_logs() as logs, session() as s, span("llm.call", model="m1") as sp:
            pass
        (rec,) = span_records(logs)
        assert rec["level"] == "info"
        assert rec["message"] == "span llm.call"
        assert rec["spanId"] == sp.id
        assert SPAN_ID.match(rec["spanId"])
        assert rec["parentSpanId"] is None
        assert rec["name"] == "llm.call"
        assert RFC3339.match(rec["start"])
        assert RFC3339.match(rec["end"])
        assert rec["start"] <= rec["end"]
        assert isinstance(rec["durationMs"], float)
        assert rec["durationMs"] >= 0
        assert rec["status"] == "ok"
        assert rec["error"] is None
        assert rec["model"] == "m1"
        assert rec["agentuitySessionId"] == s.id
        assert rec["agentuityThreadId"] == s.thread.id

    def test_records_inside_carry_the_span_id_and_outside_do_not(self) -> None:
        """Records logged inside a span carry its spanId; before and after they carry none."""
        with capture_logs() as logs, session():
            log.info("before")
            with span("step") as sp:
                log.info("inside")
                logging.getLogger("thirdparty.lib").warning("library line")
            log.info("after")
        msgs = {e["message"]: e for e in logs}
        assert "spanId" not in msgs["before"]
        assert msgs["inside"]["spanId"] == sp.id
        assert msgs["library line"]["spanId"] == sp.id
        assert "spanId" not in msgs["after"]
        assert current_span() is None

    def test_raising_body_gives_error_record_and_reraises(self) -> None:
        """A raising body ends the span as ERROR with error {type, message}, and the exception propagates."""

        class QuotaError(Exception):
            pass

        # The span is entered last, so it sees the exception before pytest.raises catches it.
        with (
            capture_logs() as logs,
            session(),
            pytest.raises(QuotaError, match="over quota"),
            span("tool.search"),
        ):
            raise QuotaError("over quota")
        (rec,) = span_records(logs)
        assert rec["level"] == "error"
        assert rec["status"] == "error"
        assert rec["error"] == {
            "type": f"{QuotaError.__module__}.{QuotaError.__qualname__}",
            "message": "over quota",
        }

    def test_builtin_error_type_is_its_plain_name(self) -> None:
        """Builtin exceptions are named without the builtins module."""
        with capture_logs() as logs, pytest.raises(KeyError), span("lookup"):
            raise KeyError("k")
        assert span_records(logs)[0]["error"]["type"] == "KeyError"

    def test_attrs_that_clash_with_span_keys_are_renamed(self) -> None:
        """Attributes named like span keys or record attributes get a trailing underscore, never overwrite."""
        with capture_logs() as logs, span("x", status="queued", name="n", durationMs=5, message="m"):
            pass
        rec = span_records(logs)[0]
        assert rec["status"] == "ok"
        assert rec["status_"] == "queued"
        assert rec["name"] == "x"
        assert rec["name_"] == "n"
        assert rec["durationMs_"] == 5
        assert rec["message"] == "span x"
        assert rec["message_"] == "m"

    def test_set_adds_attributes_while_running(self) -> None:
        """Span.set() adds attributes that land on the record."""
        with capture_logs() as logs, span("llm") as sp:
            sp.set(tokens=42, status="late")
        rec = span_records(logs)[0]
        assert rec["tokens"] == 42
        assert rec["status_"] == "late"

    def test_span_outside_a_session_has_no_session_ids(self) -> None:
        """Outside a session a span still records, without session or thread IDs."""
        with capture_logs() as logs, span("boot"):
            pass
        rec = span_records(logs)[0]
        assert "agentuitySessionId" not in rec
        assert rec["status"] == "ok"

    def test_bound_fields_reach_the_span_record(self) -> None:
        """bound() fields active around the span are on its record, like on any record."""
        with capture_logs() as logs, session(), bound(user="u1"), span("s"):
            pass
        assert span_records(logs)[0]["user"] == "u1"

    def test_record_points_at_the_with_line(self) -> None:
        """The span record's funcName is the function that entered the span."""
        records: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        handler = Keep()
        logger = logging.getLogger(SPAN_LOGGER_NAME)
        logger.addHandler(handler)
        old = logger.level
        logger.setLevel(logging.INFO)
        try:
            with span("site"):
                pass
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old)
        assert records[0].funcName == "test_record_points_at_the_with_line"
        assert records[0].pathname == __file__

    def test_disabled_span_logger_still_times_and_nests(self) -> None:
        """With the span logger off, spans still set spanId on inner records and emit nothing."""
        logger = logging.getLogger(SPAN_LOGGER_NAME)
        old = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            with capture_logs() as logs, session(), span("quiet") as sp:
                log.info("inner")
        finally:
            logger.setLevel(old)
        assert span_records(logs) == []
        assert logs[0]["spanId"] == sp.id
        assert sp.status == "ok"
        assert sp.duration_ms is not None

    def test_name_must_be_a_string(self) -> None:
        """A non-string name is a TypeError at construction."""
        with pytest.raises(TypeError, match="span name must be a string"):
            span(42)  # type: ignore[arg-type]


class TestNesting:
    def test_child_span_names_its_parent(self) -> None:
        """A span entered inside another has it as parentSpanId; the outer span is restored on exit."""
        with capture_logs() as logs, session(), span("turn") as outer:
            with span("llm") as inner:
                assert current_span() is inner
            assert current_span() is outer
            log.info("back in turn")
        spans = by_name(logs)
        assert spans["llm"]["parentSpanId"] == outer.id
        assert spans["turn"]["parentSpanId"] is None
        assert next(e for e in logs if e["message"] == "back in turn")["spanId"] == outer.id

    def test_concurrent_tasks_keep_their_own_spans_across_await(self) -> None:
        """Spans in concurrent asyncio tasks nest under the same parent and never see each other."""

        async def tool(i: int) -> str:
            async with span("tool", i=i) as sp:
                for _ in range(3):
                    await asyncio.sleep(0)
                    log.info("tool step", i=i)
                return sp.id

        async def main() -> tuple[str, list[str]]:
            async with span("fan-out") as parent:
                ids = await asyncio.gather(*(tool(i) for i in range(20)))
                return parent.id, list(ids)

        with capture_logs() as logs, session():
            parent_id, ids = asyncio.run(main())
        tools = [e for e in span_records(logs) if e["name"] == "tool"]
        assert len(tools) == 20
        assert all(e["parentSpanId"] == parent_id for e in tools)
        for entry in (e for e in logs if e["message"] == "tool step"):
            assert entry["spanId"] == ids[entry["i"]]

    def test_thread_helpers_carry_the_span(self) -> None:
        """ContextThreadPoolExecutor and wrap() run work under the submitting span."""

        def work(n: int) -> str:
            with span("in-thread", n=n) as sp:
                log.info("thread work", n=n)
                return sp.id

        with capture_logs() as logs, session(), span("parent") as parent:
            with ContextThreadPoolExecutor(max_workers=4) as pool:
                ids = list(pool.map(work, range(4)))
            wrapped = wrap(work)
            ids.append(wrapped(99))
        children = [e for e in span_records(logs) if e["name"] == "in-thread"]
        assert len(children) == 5
        assert all(e["parentSpanId"] == parent.id for e in children)
        for entry in (e for e in logs if e["message"] == "thread work"):
            expected = ids[-1] if entry["n"] == 99 else ids[entry["n"]]
            assert entry["spanId"] == expected

    def test_asyncio_to_thread_carries_the_span(self) -> None:
        """asyncio.to_thread copies the context, so a span opened there nests under the caller's."""

        def blocking() -> str | None:
            with span("blocking") as sp:
                return sp.parent_id

        async def main() -> tuple[str, str | None]:
            async with span("async-parent") as parent:
                return parent.id, await asyncio.to_thread(blocking)

        with session():
            parent_id, seen = asyncio.run(main())
        assert seen == parent_id

    def test_new_session_inside_a_span_starts_a_root_span(self) -> None:
        """A span in a nested session does not claim a parent from the outer session."""
        with capture_logs() as logs, session(), span("outer"), session(), span("other-session"):
            pass
        assert by_name(logs)["other-session"]["parentSpanId"] is None

    def test_reentering_the_same_span_object_nests(self) -> None:
        """One span object entered twice in a row records two spans with distinct IDs."""
        step = span("again")
        with capture_logs() as logs:
            with step:
                pass
            with step:
                pass
        ids = [e["spanId"] for e in span_records(logs)]
        assert len(ids) == 2
        assert ids[0] != ids[1]

    def test_context_restored_when_body_raises(self) -> None:
        """A raising body leaves no span behind in the context."""
        before = current_snapshot()
        with pytest.raises(ValueError, match="x"), span("raises"):
            raise ValueError("x")
        assert current_snapshot() is before


class TestDecorator:
    def test_sync_decorator_makes_a_span_per_call(self) -> None:
        """Each call of a decorated function is a new span; the function's result passes through."""

        @span("planner.plan", version=2)
        def plan(x: int) -> int:
            log.info("planning")
            return x * 2

        with capture_logs() as logs, session():
            assert plan(2) == 4
            assert plan(3) == 6
        spans = span_records(logs)
        assert [e["name"] for e in spans] == ["planner.plan", "planner.plan"]
        assert spans[0]["spanId"] != spans[1]["spanId"]
        assert spans[0]["version"] == 2
        assert plan.__name__ == "plan"

    def test_async_decorator_makes_a_span_per_call(self) -> None:
        """Each call of a decorated coroutine function is a new span, concurrent calls included."""

        @span("llm.complete")
        async def complete(prompt: str) -> str:
            await asyncio.sleep(0)
            log.info("completing", prompt=prompt)
            return prompt.upper()

        async def main() -> list[str]:
            return list(await asyncio.gather(complete("a"), complete("b")))

        with capture_logs() as logs, session():
            assert asyncio.run(main()) == ["A", "B"]
        spans = span_records(logs)
        assert len({e["spanId"] for e in spans}) == 2
        by_prompt = {e["prompt"]: e["spanId"] for e in logs if e["message"] == "completing"}
        assert set(by_prompt.values()) == {e["spanId"] for e in spans}

    def test_decorated_error_is_recorded_and_reraised(self) -> None:
        """A decorated function that raises ends its span as error and re-raises."""

        @span("tool.fail")
        async def fail() -> None:
            raise RuntimeError("tool broke")

        with capture_logs() as logs, pytest.raises(RuntimeError, match="tool broke"):
            asyncio.run(fail())
        rec = span_records(logs)[0]
        assert rec["status"] == "error"
        assert rec["error"]["message"] == "tool broke"

    def test_decorator_record_points_at_the_function(self) -> None:
        """A decorated function's span record names the function, not the wrapper."""
        records: list[logging.LogRecord] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record)

        @span("named")
        def target() -> None:
            return None

        handler = Keep()
        logger = logging.getLogger(SPAN_LOGGER_NAME)
        logger.addHandler(handler)
        old = logger.level
        logger.setLevel(logging.INFO)
        try:
            target()
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old)
        assert records[0].funcName == "target"


class TestOutputs:
    def test_span_reaches_the_json_stream_with_top_level_keys(self) -> None:
        """With configure(), the span is one JSON line with the span keys at top level."""
        stream = io.StringIO()
        configure(format="json", stream=stream, level="INFO")
        with session() as s, span("llm", model="m"):
            log.info("inside")
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        inside, finished = lines
        assert finished["logger"] == SPAN_LOGGER_NAME
        for key in ("spanId", "parentSpanId", "name", "start", "end", "durationMs", "status", "error"):
            assert key in finished
        assert finished["agentuitySessionId"] == s.id
        assert inside["spanId"] == finished["spanId"]
        assert finished["model"] == "m"

    def test_span_reaches_the_console_output(self) -> None:
        """The console output shows the span line with its name and status."""
        stream = io.StringIO()
        configure(format="console", stream=stream, level="INFO")
        with span("tool.run"):
            pass
        text = stream.getvalue()
        assert "span tool.run" in text
        assert "status=ok" in text


class TestListeners:
    def test_listener_sees_start_and_end_inside_the_span(self) -> None:
        """Listeners are told on start (span current) and on end (record already logged)."""
        seen: list[tuple[str, str | None, str | None]] = []

        class Listener:
            def span_started(self, sp: Span) -> None:
                current = current_span()
                seen.append(("start", sp.status, None if current is None else current.id))

            def span_ended(self, sp: Span) -> None:
                current = current_span()
                seen.append(("end", sp.status, None if current is None else current.id))

        listener = Listener()
        add_span_listener(listener)
        add_span_listener(listener)
        try:
            with span("watched") as sp:
                pass
        finally:
            remove_span_listener(listener)
        assert seen == [("start", None, sp.id), ("end", "ok", sp.id)]

    def test_failing_listener_never_breaks_the_span(self) -> None:
        """A listener that raises is reported once; the span and its body are unaffected."""

        class Broken:
            def span_started(self, sp: Span) -> None:
                raise RuntimeError("listener bug")

            def span_ended(self, sp: Span) -> None:
                raise RuntimeError("listener bug")

        broken = Broken()
        add_span_listener(broken)
        try:
            with capture_logs() as logs, span("robust"):
                log.info("body ran")
        finally:
            remove_span_listener(broken)
        assert [e["message"] for e in logs if e["logger"] != "agentuity_logging.internal"] == [
            "body ran",
            "span robust",
        ]


class TestImportCost:
    def test_spans_import_no_tracer(self) -> None:
        """Using spans imports neither OpenTelemetry nor ddtrace (the correlation check is a dict lookup)."""
        code = (
            "import sys, agentuity_logging._spans as s\n"
            "with s.span('x'):\n    pass\n"
            "print(any(m.split('.')[0] in ('opentelemetry', 'ddtrace') for m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert out.stdout.strip() == "False"
