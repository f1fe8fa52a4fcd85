"""The schema builder's hot-path shortcuts give exactly what the general path gives."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import agentuity_logging as al
from agentuity_logging._records import event_from_record, format_timestamp, timestamp_us
from agentuity_logging.stdlib import JsonFormatter, SessionContextFilter


def _render(us: int) -> str:
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _exact_us(created: float) -> int:
    return math.floor(Fraction(created) * 1_000_000)


class TestTimestamp:
    @given(st.floats(min_value=-2e9, max_value=4e9, allow_nan=False))
    def test_renders_the_microsecond_it_stands_for(self, created: float) -> None:
        """Whatever second was cached before, the text is the integer time, within 1 µs of the exact floor."""
        us = timestamp_us(created)
        assert format_timestamp(created) == _render(us)
        assert abs(us - _exact_us(created)) <= 1

    @given(st.floats(min_value=1e9, max_value=4e9))
    def test_is_the_exact_floor_for_present_day_times(self, created: float) -> None:
        assert timestamp_us(created) == _exact_us(created)

    def test_is_within_a_microsecond_of_the_time(self) -> None:
        created = 1_764_077_482.123456
        assert abs(timestamp_us(created) - created * 1e6) <= 1
        assert format_timestamp(created) == "2025-11-25T13:31:22.123456Z"

    @pytest.mark.parametrize(
        ("created", "text"),
        [
            (0.0, "1970-01-01T00:00:00.000000Z"),
            (-0.5, "1969-12-31T23:59:59.500000Z"),
            (1_764_077_482.0, "2025-11-25T13:31:22.000000Z"),
            (math.nextafter(1_764_077_483.0, 0.0), "2025-11-25T13:31:22.999999Z"),
            (1_764_077_483.0, "2025-11-25T13:31:23.000000Z"),
        ],
    )
    def test_second_boundaries(self, created: float, text: str) -> None:
        format_timestamp(created - 5.0)  # a different second in the cache
        assert format_timestamp(created) == text
        assert format_timestamp(created) == text  # and from the cache

    def test_a_record_renders_its_own_creation_time(self) -> None:
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
        record.created = 1_764_077_482.25
        assert event_from_record(record)["timestamp"] == "2025-11-25T13:31:22.250000Z"
        other = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
        other.created = 1_000.000001
        assert event_from_record(other)["timestamp"] == _render(timestamp_us(1_000.000001))


def _line(formatter: logging.Formatter, emit: Any) -> dict[str, Any]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(SessionContextFilter())
    logger = logging.getLogger(f"test.records.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    emit(logger)
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


class TestShortcuts:
    def test_a_record_subclass_keeps_its_own_get_message(self) -> None:
        """The message shortcut (a str without args) is taken only for the stdlib's own LogRecord."""

        class Upper(logging.LogRecord):
            def getMessage(self) -> str:
                return str(self.msg).upper()

        record = Upper("t", logging.INFO, __file__, 1, "quiet", None, None)
        assert event_from_record(record)["message"] == "QUIET"

    def test_unknown_levels_use_their_registered_name(self) -> None:
        logging.addLevelName(25, "NOTICE")
        record = logging.LogRecord("t", 25, __file__, 1, "m", None, None)
        assert event_from_record(record)["level"] == "notice"
        assert (
            event_from_record(logging.LogRecord("t", 7, __file__, 1, "m", None, None))["level"] == "level 7"
        )

    def test_a_span_alone_and_a_span_with_fields(self) -> None:
        with al.session() as s, al.span("step"):
            only_span = _line(JsonFormatter(), lambda lg: lg.info("a"))
            with al.bound(user="u1"):
                with_fields = _line(JsonFormatter(), lambda lg: lg.info("b", extra={"n": 1}))
        assert list(only_span)[4:] == ["agentuitySessionId", "agentuityThreadId", "spanId"]
        assert only_span["agentuitySessionId"] == s.id
        assert list(with_fields)[4:7] == ["agentuitySessionId", "agentuityThreadId", "spanId"]
        assert (with_fields["user"], with_fields["n"]) == ("u1", 1)

    def test_values_json_cannot_hold_leave_the_fast_path_safely(self) -> None:
        """The bare orjson call refuses sets, non-string keys and big ints; the careful path renders them."""
        rec = _line(
            JsonFormatter(), lambda lg: lg.info("m", extra={"tags": {"b"}, "ids": {1: "x"}, "big": 2**70})
        )
        assert rec["tags"] == ["b"]
        assert rec["ids"] == {"1": "x"}
        assert rec["big"] == str(2**70)  # beyond 64 bits: text, as documented
        assert rec["message"] == "m"

    def test_service_set_after_construction_applies(self) -> None:
        formatter = JsonFormatter()
        formatter.service = "api"
        assert _line(formatter, lambda lg: lg.info("m"))["service"] == "api"
        formatter.service = None
        assert "service" not in _line(formatter, lambda lg: lg.info("m"))
