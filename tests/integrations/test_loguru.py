"""loguru: the patcher puts our IDs into record["extra"]; the sink sends records into our schema."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from agentuity_logging import bound, configure, session
from agentuity_logging._spans import span
from agentuity_logging.integrations.loguru import LoguruSink, event_from_loguru, patcher, sink
from agentuity_logging.testing import capture_logs


@pytest.fixture
def loguru_ids() -> Iterator[list[int]]:
    """Sinks added in the test are removed after it; loguru's patcher is reset."""
    ids: list[int] = []
    try:
        yield ids
    finally:
        for handler_id in ids:
            logger.remove(handler_id)
        logger.configure(patcher=None)


class TestPatcher:
    def test_patcher_puts_ids_and_bound_fields_into_extra(self, loguru_ids: list[int]) -> None:
        """With the patcher, every sink sees the session, thread, span IDs and bound() fields in extra."""
        seen: list[dict[str, Any]] = []
        loguru_ids.append(logger.add(lambda m: seen.append(dict(m.record["extra"])), format="{message}"))
        logger.configure(patcher=patcher)
        with session() as s, bound(user="u1"), span("step") as sp:
            logger.info("hello")
        logger.info("outside")
        assert seen[0] == {
            "agentuitySessionId": s.id,
            "agentuityThreadId": s.thread.id,
            "spanId": sp.id,
            "user": "u1",
        }
        assert seen[1] == {}

    def test_loguru_bind_wins_over_context(self, loguru_ids: list[int]) -> None:
        """A key bound with loguru's bind() is kept over a bound() field of the same name."""
        seen: list[dict[str, Any]] = []
        loguru_ids.append(logger.add(lambda m: seen.append(dict(m.record["extra"])), format="{message}"))
        with session(), bound(user="ours"):
            logger.patch(patcher).bind(user="theirs").info("x")
        assert seen[0]["user"] == "theirs"

    def test_patcher_survives_enqueue(self, loguru_ids: list[int]) -> None:
        """With enqueue=True the sink runs on loguru's thread; the patcher captured the IDs before."""
        seen: list[dict[str, Any]] = []
        loguru_ids.append(
            logger.add(lambda m: seen.append(dict(m.record["extra"])), enqueue=True, format="{message}")
        )
        logger.configure(patcher=patcher)
        with session() as s:
            logger.info("queued")
        logger.complete()
        assert seen[0]["agentuitySessionId"] == s.id


class TestSink:
    def test_sink_sends_our_schema_to_our_outputs(self, loguru_ids: list[int]) -> None:
        """loguru records reach configure()'s outputs as our JSON schema, with the session."""
        stream = io.StringIO()
        configure(format="json", stream=stream, level="DEBUG")
        loguru_ids.append(logger.add(sink, format="{message}"))
        with session() as s:
            logger.bind(order=7).warning("charged {}", "card")
        (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
        assert line["level"] == "warning"
        assert line["message"] == "charged card"
        assert line["logger"] == __name__
        assert line["agentuitySessionId"] == s.id
        assert line["order"] == 7

    def test_contextualize_beside_our_sessions(self, loguru_ids: list[int]) -> None:
        """loguru's contextualize() values and our session IDs both land on each record, per session."""
        loguru_ids.append(logger.add(sink, format="{message}"))
        with capture_logs() as logs:
            for n in range(3):
                with logger.contextualize(request=n), session() as s:
                    logger.info("in request")
                    (last,) = [e for e in logs if e.get("request") == n]
                    assert last["agentuitySessionId"] == s.id
        assert len(logs) == 3
        assert len({e["agentuitySessionId"] for e in logs}) == 3

    def test_exception_becomes_structured(self, loguru_ids: list[int]) -> None:
        """logger.exception() gives our structured exception with the traceback."""
        loguru_ids.append(logger.add(sink, format="{message}"))
        with capture_logs() as logs:
            try:
                raise ValueError("bad input")
            except ValueError:
                logger.exception("failed")
        exc = logs[0]["exception"]
        assert exc["type"] == "ValueError"
        assert exc["message"] == "bad input"
        assert "ValueError: bad input" in exc["traceback"]

    def test_clashing_extra_names_are_renamed(self, loguru_ids: list[int]) -> None:
        """An extra key named like a schema key gets a trailing underscore."""
        loguru_ids.append(logger.add(sink, format="{message}"))
        with capture_logs() as logs:
            logger.bind(message="shadow", level="fake").info("real")
        assert logs[0]["message"] == "real"
        assert logs[0]["message_"] == "shadow"
        assert logs[0]["level"] == "info"
        assert logs[0]["level_"] == "fake"

    def test_sink_reads_the_context_without_patcher(self, loguru_ids: list[int]) -> None:
        """Without the patcher, the sink takes IDs and bound() fields from the logging thread's context."""
        loguru_ids.append(logger.add(sink, format="{message}"))
        with capture_logs() as logs, session() as s, bound(user="u2"):
            logger.info("plain")
        assert logs[0]["agentuitySessionId"] == s.id
        assert logs[0]["user"] == "u2"

    def test_custom_levels_keep_their_names_and_numbers(self, loguru_ids: list[int]) -> None:
        """loguru's SUCCESS and TRACE keep their names; outputs filter them by number."""
        got: list[tuple[dict[str, Any], int]] = []

        class Output:
            def handle_event(self, event: dict[str, Any], levelno: int) -> None:
                got.append((event, levelno))

        loguru_ids.append(logger.add(LoguruSink(lambda: [Output()]), level="TRACE", format="{message}"))
        logger.success("done")
        logger.trace("fine")
        assert [(e["level"], n) for e, n in got] == [("success", 25), ("trace", 5)]

    def test_event_builder_takes_a_record(self, loguru_ids: list[int]) -> None:
        """event_from_loguru() builds the schema from message.record."""
        records: list[Any] = []
        loguru_ids.append(logger.add(lambda m: records.append(m.record), format="{message}"))
        logger.info("x")
        event = event_from_loguru(records[0])
        assert list(event)[:4] == ["timestamp", "level", "logger", "message"]

    def test_missing_loguru_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Importing the integration without loguru raises MissingDependencyError naming the extra."""
        from agentuity_logging import MissingDependencyError

        monkeypatch.setitem(sys.modules, "loguru", None)
        monkeypatch.delitem(sys.modules, "agentuity_logging.integrations.loguru")
        with pytest.raises(MissingDependencyError, match=r"agentuity-logging\[loguru\]"):
            import agentuity_logging.integrations.loguru  # noqa: F401
