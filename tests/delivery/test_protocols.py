"""The backends' wire protocols, end to end through protocol-faithful fakes on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import gzip
import math
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import cramjam
import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentuity_logging._delivery import _protobuf as pb
from agentuity_logging._delivery import _protocol
from agentuity_logging._delivery._datadog import DATADOG_SITES, DatadogProtocol
from agentuity_logging._delivery._http import HTTPProtocol
from agentuity_logging._delivery._loki import LokiProtocol, format_labels, quote_label_value
from agentuity_logging._delivery._otlp import OTLPProtocol
from agentuity_logging._delivery._protocol import (
    Answer,
    Outcome,
    Request,
    WireProtocol,
    event_time_ns,
    fit_record,
    parse_retry_after,
)
from tests.fakes.datadog import FakeDatadog
from tests.fakes.events import SESSION_ID, SPAN_ID, THREAD_ID, TRACE_ID, make_event, rfc3339, send
from tests.fakes.http_sink import FakeHTTPSink
from tests.fakes.logql import parse_labels
from tests.fakes.loki import FakeLoki
from tests.fakes.otlp import FakeOTLP

SECRET = "s3cr3t-api-key-0123456789abcdef"


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """An HTTP client for loopback requests (one per module: building one costs ~50 ms)."""
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        yield http


def _round_trip(client: httpx.Client, protocol: WireProtocol, events: list[dict[str, Any]]) -> httpx.Response:
    request = protocol.encode([protocol.prepare(e) for e in events])
    return send(client, request)


# --- the shared contract ----------------------------------------------------------------------


class TestRequest:
    def test_repr_hides_headers_and_body(self) -> None:
        """A Request's repr never shows its headers (API keys) or body."""
        request = Request("POST", "https://x/api", {"DD-API-KEY": SECRET}, b"payload", 1)
        assert SECRET not in repr(request)
        assert "payload" not in repr(request)

    def test_is_frozen(self) -> None:
        """A Request cannot be changed after it is built."""
        request = Request("POST", "https://x/api", {}, b"", 0)
        with pytest.raises(AttributeError):
            request.count = 3  # type: ignore[misc]

    def test_answer_defaults(self) -> None:
        """An Answer without details carries no delay, message or rejections."""
        answer = Answer(Outcome.SENT)
        assert (answer.retry_after_s, answer.message, answer.rejected) == (None, None, 0)


class TestGzip:
    """Request bodies are gzip at level 1, through ISA-L when python-isal is installed."""

    BODIES = (b"", b"[]", b'[{"message":"caf\xc3\xa9"}]', bytes(range(256)) * 4096, b"x" * 5_000_000)

    @pytest.mark.parametrize("body", BODIES, ids=["empty", "array", "utf8", "binary-1MiB", "5MB"])
    @pytest.mark.parametrize("backend", ["selected", "zlib"])
    def test_any_gzip_reader_gets_the_body_back(self, body: bytes, backend: str) -> None:
        """Whatever compresses, the result is a complete gzip member the stdlib reads back."""
        compress = _protocol.gzip_bytes if backend == "selected" else _protocol._gzip_with_zlib
        data = compress(body)
        assert data[:2] == b"\x1f\x8b"
        assert gzip.decompress(data) == body

    def test_isal_is_used_when_installed(self) -> None:
        """With the ``isal`` extra installed (the dev set-up has it), its deflate is the one used."""
        pytest.importorskip("isal")
        assert _protocol.GZIP_BACKEND == "isal"
        compress, name = _protocol._fastest_gzip()
        assert name == "isal"
        assert compress is not _protocol._gzip_with_zlib

    def test_zlib_without_isal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without python-isal the stdlib's zlib does it, and nothing else changes."""
        monkeypatch.setitem(sys.modules, "isal", None)  # makes ``from isal import ...`` fail
        compress, name = _protocol._fastest_gzip()
        assert (compress, name) == (_protocol._gzip_with_zlib, "zlib")
        assert gzip.decompress(compress(b"[1]")) == b"[1]"


class TestRetryAfter:
    def test_seconds(self) -> None:
        """Delta-seconds are read as seconds."""
        assert parse_retry_after("120") == 120.0

    def test_fractional_seconds(self) -> None:
        """Fractional seconds are kept."""
        assert parse_retry_after(" 1.5 ") == 1.5

    def test_http_date_in_future(self) -> None:
        """An HTTP-date is turned into the seconds left until it."""
        now = 1_800_000_000.0
        value = email.utils.formatdate(now + 30, usegmt=True)
        assert parse_retry_after(value, now_s=now) == pytest.approx(30.0)

    def test_http_date_in_past_is_zero(self) -> None:
        """An HTTP-date already past means retry now."""
        now = 1_800_000_000.0
        value = email.utils.formatdate(now - 30, usegmt=True)
        assert parse_retry_after(value, now_s=now) == 0.0

    @pytest.mark.parametrize("value", [None, "", "soon", "-5", "nan", "inf"])
    def test_unreadable_is_none(self, value: str | None) -> None:
        """Missing, negative or unreadable values give no delay."""
        assert parse_retry_after(value) is None


class TestEventTime:
    def test_rfc3339_microseconds(self) -> None:
        """Our schema's timestamps convert to exact nanoseconds."""
        assert event_time_ns("2026-11-25T10:44:59.123456Z") == 1795603499_123456000

    def test_cached_second_never_leaks_into_the_next(self) -> None:
        """Alternating seconds each convert exactly (the per-second cache is keyed right)."""
        first, second = "2026-11-25T10:44:59.000001Z", "2026-11-25T10:45:00.000002Z"
        assert [event_time_ns(v) for v in (first, second, first, second)] == [
            1795603499_000001000,
            1795603500_000002000,
        ] * 2

    def test_offset_is_applied(self) -> None:
        """A UTC offset is taken into account."""
        assert event_time_ns("2026-11-25T12:44:59.123456+02:00") == 1795603499_123456000

    def test_nanosecond_precision(self) -> None:
        """Nine fractional digits are kept."""
        assert event_time_ns("2026-11-25T10:44:59.123456789Z") % 1_000_000_000 == 123456789

    def test_epoch_milliseconds(self) -> None:
        """Epoch numbers are read by magnitude (here milliseconds)."""
        assert event_time_ns(1_795_603_499_123) == 1795603499_123000000

    @pytest.mark.parametrize("value", [None, "yesterday", "2026-13-40T00:00:00Z", float("nan"), True])
    def test_unreadable_uses_default(self, value: Any) -> None:
        """An unreadable timestamp falls back to the given default."""
        assert event_time_ns(value, 42) == 42


class TestFitRecord:
    def test_small_record_unchanged(self) -> None:
        """A record under the limit is serialized as is."""
        event = make_event("short")
        assert orjson.loads(fit_record(event, 10_000)) == event

    def test_message_truncated_with_marker(self) -> None:
        """An oversized message is cut, with a marker counting the removed bytes."""
        event = make_event("x" * 5000)
        data = fit_record(event, 1000)
        message = orjson.loads(data)["message"]
        assert len(data) <= 1000
        kept, marker = message.split("…[truncated ")
        assert marker == f"{5000 - len(kept)} bytes]"

    def test_multibyte_cut_on_character_boundary(self) -> None:
        """Cutting never splits a UTF-8 character; removed bytes are counted in bytes."""
        event = make_event("é" * 3000)
        data = fit_record(event, 1000)
        message = orjson.loads(data)["message"]
        kept, marker = message.split("…[truncated ")
        assert set(kept) == {"é"}
        assert marker == f"{6000 - 2 * len(kept)} bytes]"

    def test_escape_heavy_message_still_fits(self) -> None:
        """Characters JSON escapes six-fold still end under the limit."""
        data = fit_record(make_event("\x01" * 5000), 1000)
        assert len(data) <= 1000

    def test_large_field_cut_when_message_is_small(self) -> None:
        """When the message is not the problem, the largest field is cut instead."""
        data = fit_record(make_event("hi", payload="y" * 5000), 1000)
        record = orjson.loads(data)
        assert len(data) <= 1000
        assert record["message"].startswith("hi")
        assert "…[truncated" in record["payload"]

    def test_protected_fields_survive(self) -> None:
        """IDs and timestamps are never cut."""
        event = make_event("z" * 5000, payload="y" * 5000)
        record = orjson.loads(
            fit_record(event, 1000, protected=frozenset({"timestamp", "agentuitySessionId"}))
        )
        assert record["agentuitySessionId"] == SESSION_ID
        assert record["timestamp"] == event["timestamp"]


class TestProtobufWriter:
    @pytest.mark.parametrize(
        ("value", "encoded"),
        [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (300, b"\xac\x02"), (2**63 - 1, b"\xff" * 8 + b"\x7f")],
    )
    def test_varint(self, value: int, encoded: bytes) -> None:
        """Varints follow the base-128 wire format."""
        assert pb.varint(value) == encoded

    def test_negative_varint_is_ten_bytes(self) -> None:
        """Negative int64 values are 64-bit two's complement (ten bytes)."""
        assert pb.varint(-1) == b"\xff" * 9 + b"\x01"

    def test_fields_round_trip_through_reader(self) -> None:
        """What the writer produces, the reader yields back."""
        data = (
            pb.field_varint(1, 150)
            + pb.field_string(2, "héllo")
            + pb.field_fixed64(3, 2**64 - 1)
            + pb.field_double(4, 1.5)
        )
        fields = list(pb.iter_fields(data))
        assert fields[0] == (1, pb.VARINT, 150)
        assert fields[1] == (2, pb.LEN, "héllo".encode())
        assert fields[2] == (3, pb.FIXED64, 2**64 - 1)
        assert fields[3][:2] == (4, pb.FIXED64)

    @pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x08", b"\x0b", b"\x00\x01"])
    def test_malformed_input_raises_value_error(self, data: bytes) -> None:
        """Truncated or invalid input is a ValueError, never an IndexError."""
        with pytest.raises(ValueError):
            list(pb.iter_fields(data))


# --- Datadog --------------------------------------------------------------------------------


def _datadog(fake: FakeDatadog, **kwargs: Any) -> DatadogProtocol:
    return DatadogProtocol(fake.api_key, url=fake.url, hostname="web-1", **kwargs)


class TestDatadogProtocol:
    def test_round_trip_keeps_schema_and_reserved_attributes(
        self, fake_datadog: FakeDatadog, client: httpx.Client
    ) -> None:
        """An entry is our event plus ddsource, service, hostname, ddtags and status."""
        protocol = _datadog(fake_datadog, service="agent-api", tags={"env": "prod", "team": "ai"})
        event = make_event("hi", level="warning", user_id=7)
        response = _round_trip(client, protocol, [event])
        assert response.status_code == 202
        assert response.json() == {}
        (entry,) = fake_datadog.entries
        assert entry == {
            **event,
            "ddsource": "python",
            "service": "agent-api",
            "hostname": "web-1",
            "ddtags": "env:prod,team:ai",
            "status": "warning",
        }

    def test_session_ids_are_searchable_attributes(
        self, fake_datadog: FakeDatadog, client: httpx.Client
    ) -> None:
        """Session and thread IDs land as custom attributes, not tags."""
        protocol = _datadog(fake_datadog, service="agent-api", tags=["env:prod"])
        _round_trip(client, protocol, [make_event("one"), make_event("two", session=False)])
        (log,) = [log for log in fake_datadog.logs if log.message == "one"]
        assert log.attributes["agentuitySessionId"] == SESSION_ID
        assert log.attributes["agentuityThreadId"] == THREAD_ID
        assert all(SESSION_ID not in tag for tag in log.tags)

    def test_request_is_gzip_json_array_with_key_header(self, fake_datadog: FakeDatadog) -> None:
        """The body is a gzip'd JSON array, sent with DD-API-KEY and JSON content type."""
        protocol = _datadog(fake_datadog)
        request = protocol.encode([protocol.prepare(make_event(str(i))) for i in range(3)])
        assert request.method == "POST"
        assert request.url == f"{fake_datadog.url}/api/v2/logs"
        assert request.headers["DD-API-KEY"] == fake_datadog.api_key
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["Content-Encoding"] == "gzip"
        assert [e["message"] for e in orjson.loads(gzip.decompress(request.body))] == ["0", "1", "2"]
        assert request.count == 3

    def test_default_url_is_the_sites_intake(self) -> None:
        """Without url the intake host is http-intake.logs.<site>."""
        protocol = DatadogProtocol(SECRET, site="datadoghq.eu")
        assert protocol.endpoint == "https://http-intake.logs.datadoghq.eu/api/v2/logs"

    @pytest.mark.parametrize("site", DATADOG_SITES)
    def test_every_documented_site_is_accepted(self, site: str) -> None:
        """All sites listed by Datadog are valid."""
        assert DatadogProtocol(SECRET, site=site).endpoint.endswith(f".{site}/api/v2/logs")

    def test_unknown_site_is_a_clear_error(self) -> None:
        """A mistyped site names the valid ones."""
        with pytest.raises(ValueError, match=r"unknown Datadog site 'datadoghq\.con'.*datadoghq\.eu"):
            DatadogProtocol(SECRET, site="datadoghq.con")

    def test_missing_key_is_an_error(self) -> None:
        """An empty API key is refused at construction."""
        with pytest.raises(ValueError, match="API key"):
            DatadogProtocol("  ")

    @pytest.mark.parametrize(
        ("level", "status"),
        [
            ("debug", "debug"),
            ("info", "info"),
            ("warning", "warning"),
            ("error", "error"),
            ("critical", "critical"),
            ("WARN", "warning"),
            ("bogus", "info"),
        ],
    )
    def test_level_maps_to_status(self, level: str, status: str) -> None:
        """Our level becomes Datadog's status attribute."""
        protocol = DatadogProtocol(SECRET)
        assert orjson.loads(protocol.prepare(make_event(level=level)))["status"] == status

    def test_trace_ids_in_datadog_decimal_form(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """OTel IDs become dd.trace_id (low 64 bits, decimal) and dd.span_id."""
        protocol = _datadog(fake_datadog)
        _round_trip(client, protocol, [make_event(trace_id=TRACE_ID, span_id=SPAN_ID)])
        (entry,) = fake_datadog.entries
        assert entry["dd"] == {
            "trace_id": str(int(TRACE_ID, 16) & (2**64 - 1)),
            "span_id": str(int(SPAN_ID, 16)),
        }

    def test_oversized_entry_truncated_below_one_megabyte(
        self, fake_datadog: FakeDatadog, client: httpx.Client
    ) -> None:
        """A 2 MB message is cut client-side with a marker, so Datadog never has to."""
        protocol = _datadog(fake_datadog)
        prepared = protocol.prepare(make_event("m" * 2_000_000))
        assert len(prepared) <= 1_000_000
        response = send(client, protocol.encode([prepared]))
        assert response.status_code == 202
        (log,) = fake_datadog.logs
        assert not log.truncated
        assert log.message.endswith(" bytes]")
        assert "…[truncated " in log.message
        assert log.attributes["agentuitySessionId"] == SESSION_ID

    def test_encode_refuses_nothing_and_the_intake_asks_to_split(
        self, fake_datadog: FakeDatadog, client: httpx.Client
    ) -> None:
        """1,001 entries are encoded as given; Datadog's 413 classifies as SPLIT."""
        protocol = _datadog(fake_datadog)
        request = protocol.encode([protocol.prepare(make_event(str(i))) for i in range(1001)])
        assert request.count == 1001
        response = send(client, request)
        assert response.status_code == 413
        answer = protocol.classify(response.status_code, response.headers, response.content)
        assert answer.outcome is Outcome.SPLIT

    def test_invalid_utf8_message_rendered_safely(
        self, fake_datadog: FakeDatadog, client: httpx.Client
    ) -> None:
        """Lone surrogates (undecodable bytes) are escaped, never fatal."""
        protocol = _datadog(fake_datadog)
        raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
        response = _round_trip(client, protocol, [make_event(raw, path=raw)])
        assert response.status_code == 202
        (entry,) = fake_datadog.entries
        assert entry["message"] == "caf\\udce9 \\udcff"

    def test_non_json_values_are_rendered(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """Bytes, Decimals, sets and arbitrary objects become text instead of failing."""

        class Opaque:
            def __str__(self) -> str:
                return "<opaque>"

        protocol = _datadog(fake_datadog)
        event = make_event(amount=Decimal("1.10"), blob=b"\x00ab", tags={3}, thing=Opaque())
        assert _round_trip(client, protocol, [event]).status_code == 202
        (entry,) = fake_datadog.entries
        assert (entry["amount"], entry["tags"], entry["thing"]) == ("1.10", [3], "<opaque>")
        assert entry["blob"].endswith("ab")

    def test_prepare_never_raises_on_hostile_values(self) -> None:
        """A value whose __str__ and __repr__ raise still yields a valid entry."""

        class Hostile:
            def __str__(self) -> str:
                raise RuntimeError("no")

            __repr__ = __str__

        entry = orjson.loads(DatadogProtocol(SECRET).prepare(make_event(bad=Hostile(), big=2**80)))
        assert entry["big"] == str(2**80)
        assert "Hostile" in entry["bad"]

    def test_damaged_spool_record_still_sent_as_text(self) -> None:
        """A record that is not a JSON object is wrapped, keeping the array valid."""
        protocol = DatadogProtocol(SECRET)
        request = protocol.encode([b"garbage\xff", protocol.prepare(make_event())])
        entries = orjson.loads(gzip.decompress(request.body))
        assert entries[0]["message"] == "garbage\ufffd"
        assert request.count == 2

    @pytest.mark.parametrize("tags", [{"a": "1,2"}, ["x:1,y:2"]])
    def test_tag_with_comma_is_refused(self, tags: Any) -> None:
        """A comma would silently split a tag, so it is an error."""
        with pytest.raises(ValueError, match="comma"):
            DatadogProtocol(SECRET, tags=tags)

    @pytest.mark.parametrize(
        ("status", "outcome"),
        [
            (200, Outcome.SENT),
            (202, Outcome.SENT),
            (400, Outcome.REFUSED),
            (401, Outcome.AUTH),
            (403, Outcome.AUTH),
            (404, Outcome.REFUSED),
            (408, Outcome.RETRY),
            (413, Outcome.SPLIT),
            (429, Outcome.RETRY),
            (500, Outcome.RETRY),
            (503, Outcome.RETRY),
        ],
    )
    def test_classify_by_status(self, status: int, outcome: Outcome) -> None:
        """Each status class maps to Datadog's documented handling."""
        assert DatadogProtocol(SECRET).classify(status, {}, b"").outcome is outcome

    def test_rate_limit_reset_header_gives_delay(self) -> None:
        """On 429 X-RateLimit-Reset (seconds) is the delay."""
        answer = DatadogProtocol(SECRET).classify(429, {"x-ratelimit-reset": "7"}, b"")
        assert answer.retry_after_s == 7.0

    def test_retry_after_used_without_rate_limit_headers(self) -> None:
        """Retry-After is honoured when present."""
        assert DatadogProtocol(SECRET).classify(503, {"Retry-After": "3"}, b"").retry_after_s == 3.0

    def test_error_body_becomes_message(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """The errors array of a real answer is the message."""
        protocol = DatadogProtocol("wrong-key-000000", url=fake_datadog.url)
        response = _round_trip(client, protocol, [make_event()])
        answer = protocol.classify(response.status_code, response.headers, response.content)
        assert answer.outcome is Outcome.AUTH
        assert answer.message == "Forbidden: Invalid API key"

    def test_message_trimmed_to_500_chars(self) -> None:
        """Backend messages are bounded."""
        answer = DatadogProtocol(SECRET).classify(400, {}, b"x" * 5000)
        assert answer.message is not None
        assert len(answer.message) == 500


# --- Loki -----------------------------------------------------------------------------------


ENCODINGS = ["protobuf", "json"]


class TestLokiProtocol:
    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_round_trip_labels_metadata_and_line(
        self, fake_loki: FakeLoki, client: httpx.Client, encoding: Any
    ) -> None:
        """Labels stay low-cardinality; IDs go to structured metadata and the JSON line."""
        protocol = LokiProtocol(fake_loki.url, encoding=encoding, service="agent-api", labels={"env": "prod"})
        event = make_event("hi", spanId="span_1", user_id=7)
        response = _round_trip(client, protocol, [event])
        assert response.status_code == 204
        (entry,) = fake_loki.stored()
        assert entry.labels == {"env": "prod", "level": "info", "service": "agent-api"}
        assert entry.structured_metadata == {
            "agentuitySessionId": SESSION_ID,
            "agentuityThreadId": THREAD_ID,
            "spanId": "span_1",
        }
        assert orjson.loads(entry.line) == event
        assert entry.ts_ns == event_time_ns(event["timestamp"])

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_streams_grouped_and_sorted_by_time(
        self, fake_loki: FakeLoki, client: httpx.Client, encoding: Any
    ) -> None:
        """Entries are grouped per label set and each stream is in time order."""
        protocol = LokiProtocol(fake_loki.url, encoding=encoding, service="svc")
        base = dt.datetime.now(dt.timezone.utc)
        events = [
            make_event(f"m{i}", level=level, timestamp=rfc3339(base + dt.timedelta(seconds=offset)))
            for i, (level, offset) in enumerate(
                [("info", 3), ("error", 2), ("info", 1), ("error", 0), ("info", 2)]
            )
        ]
        assert _round_trip(client, protocol, events).status_code == 204
        (push,) = fake_loki.pushes
        by_level = {
            s.labels["level"]: [orjson.loads(line)["message"] for _, line, _ in s.entries]
            for s in push.streams
        }
        assert by_level == {"info": ["m2", "m4", "m0"], "error": ["m3", "m1"]}
        for stream in push.streams:
            stamps = [ts for ts, _, _ in stream.entries]
            assert stamps == sorted(stamps)

    def test_equal_timestamps_keep_logging_order(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Entries with the same timestamp stay in the order they were logged."""
        protocol = LokiProtocol(fake_loki.url)
        stamp = rfc3339()
        _round_trip(client, protocol, [make_event(str(i), timestamp=stamp) for i in range(5)])
        assert [orjson.loads(e.line)["message"] for e in fake_loki.stored()] == list("01234")

    def test_protobuf_body_is_snappy_block_not_framed(self, fake_loki: FakeLoki) -> None:
        """The protobuf body is snappy *block* compressed (Loki rejects the framed format)."""
        protocol = LokiProtocol(fake_loki.url)
        request = protocol.encode([protocol.prepare(make_event())])
        assert request.headers["Content-Type"] == "application/x-protobuf"
        assert "Content-Encoding" not in request.headers
        assert not request.body.startswith(b"\xff\x06\x00\x00sNaPpY")
        assert bytes(cramjam.snappy.decompress_raw(request.body))

    def test_json_body_is_gzip_with_string_timestamps(self, fake_loki: FakeLoki) -> None:
        """JSON pushes are gzip'd and carry timestamps as strings."""
        protocol = LokiProtocol(fake_loki.url, encoding="json")
        request = protocol.encode([protocol.prepare(make_event())])
        assert request.headers["Content-Encoding"] == "gzip"
        body = orjson.loads(gzip.decompress(request.body))
        ts, _line, metadata = body["streams"][0]["values"][0]
        assert isinstance(ts, str)
        assert ts.isdigit()
        assert metadata["agentuitySessionId"] == SESSION_ID

    def test_entries_without_ids_have_no_metadata(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Outside a session nothing is added as structured metadata."""
        protocol = LokiProtocol(fake_loki.url, encoding="json")
        _round_trip(client, protocol, [make_event(session=False)])
        assert fake_loki.stored()[0].structured_metadata == {}

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_long_line_truncated_below_loki_limit(
        self, fake_loki: FakeLoki, client: httpx.Client, encoding: Any
    ) -> None:
        """A 1 MB message is cut to fit Loki's 256,000-byte line limit, with a marker."""
        protocol = LokiProtocol(fake_loki.url, encoding=encoding)
        response = _round_trip(client, protocol, [make_event("l" * 1_000_000)])
        assert response.status_code == 204
        (entry,) = fake_loki.stored()
        assert len(entry.line.encode()) <= 256_000
        assert "…[truncated " in orjson.loads(entry.line)["message"]

    def test_record_service_used_without_configured_service(
        self, fake_loki: FakeLoki, client: httpx.Client
    ) -> None:
        """The record's service field becomes the service label by default."""
        protocol = LokiProtocol(fake_loki.url)
        _round_trip(client, protocol, [make_event(service="billing", env="staging")])
        assert fake_loki.stored()[0].labels == {"service": "billing", "env": "staging", "level": "info"}

    def test_user_fields_never_become_labels(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Arbitrary fields stay in the line; only service/env/level are labels."""
        protocol = LokiProtocol(fake_loki.url, service="svc")
        _round_trip(client, protocol, [make_event(user_id="u1", request_id="r1")])
        assert set(fake_loki.stored()[0].labels) == {"service", "level"}

    @pytest.mark.parametrize("name", ["agentuitySessionId", "agentuityThreadId"])
    def test_id_label_refused_with_cardinality_reason(self, name: str) -> None:
        """Session and thread IDs cannot be labels; the error explains why."""
        with pytest.raises(ValueError, match="cardinality"):
            LokiProtocol("http://loki:3100", labels={name: "x"})

    @pytest.mark.parametrize("name", ["1abc", "a-b", "a.b", ""])
    def test_invalid_label_name_refused(self, name: str) -> None:
        """Label names must match [a-zA-Z_][a-zA-Z0-9_]*."""
        with pytest.raises(ValueError, match="invalid Loki label name"):
            LokiProtocol("http://loki:3100", labels={name: "x"})

    def test_level_label_refused(self) -> None:
        """level is set per record and cannot be a static label."""
        with pytest.raises(ValueError, match="per record"):
            LokiProtocol("http://loki:3100", labels={"level": "x"})

    def test_too_many_labels_refused(self) -> None:
        """Static labels plus ours may not exceed Loki's 15."""
        with pytest.raises(ValueError, match="too many Loki labels"):
            LokiProtocol("http://loki:3100", labels={f"l{i}": "v" for i in range(13)})

    def test_unknown_encoding_refused(self) -> None:
        """Only protobuf and json exist."""
        with pytest.raises(ValueError, match="encoding"):
            LokiProtocol("http://loki:3100", encoding="xml")  # type: ignore[arg-type]

    def test_tenant_and_basic_auth_headers(self, client: httpx.Client) -> None:
        """tenant_id sets X-Scope-OrgID and auth sets basic credentials."""
        with FakeLoki(require_tenant=True) as fake:
            protocol = LokiProtocol(fake.url, tenant_id="team-a", auth=("12345", SECRET))
            request = protocol.encode([protocol.prepare(make_event())])
            assert send(client, request).status_code == 204
            assert fake.stored("team-a")
            token = fake.requests[0].header("authorization")
        assert token == "Basic " + base64.b64encode(f"12345:{SECRET}".encode()).decode()

    def test_missing_tenant_is_auth_outcome(self, client: httpx.Client) -> None:
        """A multi-tenant Loki's 401 'no org id' stops sending."""
        with FakeLoki(require_tenant=True) as fake:
            protocol = LokiProtocol(fake.url)
            response = _round_trip(client, protocol, [make_event()])
        answer = protocol.classify(response.status_code, response.headers, response.content)
        assert (answer.outcome, answer.message) == (Outcome.AUTH, "no org id")

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_session_found_by_structured_metadata_query(
        self, fake_loki: FakeLoki, client: httpx.Client, encoding: Any
    ) -> None:
        """`{service="x"} | agentuitySessionId="…"` finds exactly the session's lines."""
        protocol = LokiProtocol(fake_loki.url, encoding=encoding, service="svc")
        _round_trip(client, protocol, [make_event("in"), make_event("out", session=False)])
        answer = client.get(
            f"{fake_loki.url}/loki/api/v1/query_range",
            params={"query": f'{{service="svc"}} | agentuitySessionId="{SESSION_ID}"'},
        ).json()
        lines = [orjson.loads(v[1])["message"] for s in answer["data"]["result"] for v in s["values"]]
        assert lines == ["in"]

    def test_session_found_by_json_line_query(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """The line filter + json query finds the session through the JSON line."""
        protocol = LokiProtocol(fake_loki.url, service="svc")
        _round_trip(client, protocol, [make_event("in"), make_event("out", session=False)])
        query = f'{{service="svc"}} |= "{SESSION_ID}" | json | agentuitySessionId_extracted="{SESSION_ID}"'
        answer = client.get(f"{fake_loki.url}/loki/api/v1/query_range", params={"query": query}).json()
        (stream,) = answer["data"]["result"]
        assert [orjson.loads(v[1])["message"] for v in stream["values"]] == ["in"]

    def test_damaged_spool_record_sent_as_plain_line(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """A record that does not decode is pushed as its text, never dropped."""
        protocol = LokiProtocol(fake_loki.url, labels={"app": "a"})
        request = protocol.encode([b"not json", protocol.prepare(make_event())])
        assert send(client, request).status_code == 204
        lines = {e.line for e in fake_loki.stored()}
        assert "not json" in lines

    def test_repr_hides_password_and_headers(self) -> None:
        """Neither the password, the token nor custom header values appear in repr."""
        protocol = LokiProtocol(
            "https://user:pw-in-url@logs.example.com", auth=("1", SECRET), headers={"X-Token": "tok-123456"}
        )
        text = repr(protocol) + str(protocol)
        assert SECRET not in text
        assert "tok-123456" not in text
        assert "pw-in-url" not in text
        assert "logs.example.com" in text

    @pytest.mark.parametrize(
        ("status", "outcome"),
        [
            (200, Outcome.SENT),
            (204, Outcome.SENT),
            (400, Outcome.REFUSED),
            (401, Outcome.AUTH),
            (403, Outcome.AUTH),
            (404, Outcome.REFUSED),
            (413, Outcome.SPLIT),
            (422, Outcome.REFUSED),
            (429, Outcome.RETRY),
            (500, Outcome.RETRY),
            (503, Outcome.RETRY),
        ],
    )
    def test_classify_by_status(self, status: int, outcome: Outcome) -> None:
        """Each status class maps to Loki's documented handling."""
        assert LokiProtocol("http://loki:3100").classify(status, {}, b"").outcome is outcome

    def test_400_message_is_lokis_text(self, client: httpx.Client) -> None:
        """A 400's text body is the answer's message."""
        with FakeLoki(max_line_bytes=100) as fake:
            protocol = LokiProtocol(fake.url)
            response = _round_trip(client, protocol, [make_event()])
        answer = protocol.classify(response.status_code, response.headers, response.content)
        assert answer.outcome is Outcome.REFUSED
        assert answer.message is not None
        assert answer.message.startswith("Max entry size '100' bytes exceeded for stream")

    def test_429_retry_after_honoured(self) -> None:
        """A Retry-After on 429 (from a proxy; Loki sends none) is read."""
        answer = LokiProtocol("http://loki:3100").classify(429, {"Retry-After": "2"}, b"rate")
        assert (answer.outcome, answer.retry_after_s, answer.message) == (Outcome.RETRY, 2.0, "rate")


class TestLokiLabelEscaping:
    @settings(max_examples=300, deadline=None)
    @given(st.text(min_size=1))
    def test_quoted_value_parses_back(self, value: str) -> None:
        """Any label value survives quoting and an independent Prometheus-style parse."""
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        assert parse_labels(format_labels({"service": value, "level": "info"})) == [
            ("level", "info"),
            ("service", value),
        ]

    def test_quotes_and_newlines_are_escaped(self) -> None:
        """Backslashes, quotes and control characters are escaped Go-style."""
        assert quote_label_value('a"b\\c\nd\x01') == '"a\\"b\\\\c\\nd\\x01"'

    def test_service_label_round_trips_through_push(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Tricky service values arrive at Loki unchanged (protobuf label string)."""

        @settings(max_examples=40, deadline=None)
        @given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40))
        def check(value: str) -> None:
            protocol = LokiProtocol(fake_loki.url, service=value)
            assert _round_trip(client, protocol, [make_event()]).status_code == 204
            assert fake_loki.stored()[-1].labels["service"] == value

        check()


# --- OTLP -----------------------------------------------------------------------------------


class TestOTLPProtocol:
    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_round_trip_log_record_fields(
        self, fake_otlp: FakeOTLP, client: httpx.Client, encoding: Any
    ) -> None:
        """Timestamps, severity, body, IDs, resource and scope arrive as sent."""
        protocol = OTLPProtocol(
            fake_otlp.url, encoding=encoding, service="agent-api", resource={"deployment.environment": "prod"}
        )
        event = make_event("hi", level="error", trace_id=TRACE_ID, span_id=SPAN_ID)
        response = _round_trip(client, protocol, [event])
        assert response.status_code == 200
        (record,) = fake_otlp.records
        assert record.time_unix_nano == event_time_ns(event["timestamp"])
        assert record.observed_time_unix_nano >= record.time_unix_nano
        assert (record.severity_number, record.severity_text) == (17, "ERROR")
        assert record.body == "hi"
        assert (record.trace_id, record.span_id) == (TRACE_ID, SPAN_ID)
        assert record.resource == {"deployment.environment": "prod", "service.name": "agent-api"}
        assert record.scope_name == "agentuity_logging"
        assert record.attributes["agentuitySessionId"] == SESSION_ID
        assert record.attributes["agentuityThreadId"] == THREAD_ID
        assert record.attributes["logger.name"] == "app.agent"
        assert "trace_id" not in record.attributes

    @pytest.mark.parametrize(
        ("level", "number"),
        [("debug", 5), ("info", 9), ("warning", 13), ("error", 17), ("critical", 21)],
    )
    def test_severity_numbers(
        self, fake_otlp: FakeOTLP, client: httpx.Client, level: str, number: int
    ) -> None:
        """Python levels map to the SDK's severity numbers."""
        _round_trip(client, OTLPProtocol(fake_otlp.url), [make_event(level=level)])
        assert fake_otlp.records[0].severity_number == number
        assert fake_otlp.records[0].severity_text == level.upper()

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_user_fields_become_typed_attributes(
        self, fake_otlp: FakeOTLP, client: httpx.Client, encoding: Any
    ) -> None:
        """Strings, ints, doubles, bools, lists, dicts and None keep their types."""
        protocol = OTLPProtocol(fake_otlp.url, encoding=encoding)
        event = make_event(
            s="x",
            i=-7,
            f=1.5,
            b=False,
            lst=[1, "a"],
            d={"k": {"n": 1}},
            none=None,
            big=2**70,
            raw=b"\x00\x01",
        )
        _round_trip(client, protocol, [event])
        attrs = fake_otlp.records[0].attributes
        assert attrs["s"] == "x"
        assert attrs["i"] == -7
        assert attrs["f"] == 1.5
        assert attrs["b"] is False
        assert attrs["lst"] == [1, "a"]
        assert attrs["d"] == {"k": {"n": 1}}
        assert attrs["none"] is None
        assert attrs["big"] == str(2**70)
        assert attrs["raw"] == b"\x00\x01"

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_non_finite_doubles(self, fake_otlp: FakeOTLP, client: httpx.Client, encoding: Any) -> None:
        """NaN and infinities survive both encodings."""
        _round_trip(
            client, OTLPProtocol(fake_otlp.url, encoding=encoding), [make_event(n=math.nan, p=math.inf)]
        )
        attrs = fake_otlp.records[0].attributes
        assert math.isnan(attrs["n"])
        assert attrs["p"] == math.inf

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_exception_semantic_conventions(
        self, fake_otlp: FakeOTLP, client: httpx.Client, encoding: Any
    ) -> None:
        """An exception becomes exception.type/message/stacktrace attributes."""
        exception = {
            "type": "ValueError",
            "message": "bad",
            "frames": [{"file": "app.py", "line": 3, "function": "run"}],
        }
        _round_trip(client, OTLPProtocol(fake_otlp.url, encoding=encoding), [make_event(exception=exception)])
        attrs = fake_otlp.records[0].attributes
        assert attrs["exception.type"] == "ValueError"
        assert attrs["exception.message"] == "bad"
        assert 'File "app.py", line 3, in run' in attrs["exception.stacktrace"]
        assert "exception" not in attrs

    def test_exception_traceback_text_preferred(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """The event's own traceback text is the stacktrace when present."""
        exception = {"type": "E", "message": "m", "frames": [], "traceback": "Traceback…\nE: m\n"}
        _round_trip(client, OTLPProtocol(fake_otlp.url), [make_event(exception=exception)])
        assert fake_otlp.records[0].attributes["exception.stacktrace"] == "Traceback…\nE: m\n"

    def test_malformed_trace_ids_stay_attributes(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """IDs that are not OTel hex are not put into traceId/spanId."""
        _round_trip(client, OTLPProtocol(fake_otlp.url), [make_event(trace_id="nope", spanId="span_1")])
        (record,) = fake_otlp.records
        assert (record.trace_id, record.span_id) == ("", "")
        assert record.attributes["trace_id"] == "nope"
        assert record.attributes["spanId"] == "span_1"

    def test_records_grouped_per_service(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """Records of different services go to separate ResourceLogs."""
        events = [make_event("a", service="one"), make_event("b", service="two"), make_event("c")]
        _round_trip(client, OTLPProtocol(fake_otlp.url, resource={"service.name": "fallback"}), events)
        names = {r.body: r.resource["service.name"] for r in fake_otlp.records}
        assert names == {"a": "one", "b": "two", "c": "fallback"}
        assert len(fake_otlp.exports[0].resource_logs) == 3

    @pytest.mark.parametrize(
        ("endpoint", "expected"),
        [
            ("http://c:4318", "http://c:4318/v1/logs"),
            ("http://c:4318/", "http://c:4318/v1/logs"),
            ("http://c:4318/v1/logs", "http://c:4318/v1/logs"),
        ],
    )
    def test_endpoint_path(self, endpoint: str, expected: str) -> None:
        """/v1/logs is appended unless already there."""
        assert OTLPProtocol(endpoint).endpoint == expected

    def test_request_headers(self) -> None:
        """Content type follows the encoding; bodies are gzip'd; user headers are sent."""
        protocol = OTLPProtocol("http://c:4318", encoding="json", headers={"api-key": SECRET})
        request = protocol.encode([protocol.prepare(make_event())])
        assert request.headers == {
            "api-key": SECRET,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        assert "resourceLogs" in orjson.loads(gzip.decompress(request.body))

    def test_json_uses_hex_ids_and_string_int64(self) -> None:
        """OTLP JSON: hex IDs and int64 values as decimal strings."""
        protocol = OTLPProtocol("http://c:4318", encoding="json")
        request = protocol.encode([protocol.prepare(make_event(trace_id=TRACE_ID, n=5))])
        record = orjson.loads(gzip.decompress(request.body))["resourceLogs"][0]["scopeLogs"][0]["logRecords"][
            0
        ]
        assert record["traceId"] == TRACE_ID
        assert isinstance(record["timeUnixNano"], str)
        assert {"key": "n", "value": {"intValue": "5"}} in record["attributes"]

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_partial_success_counted(self, fake_otlp: FakeOTLP, client: httpx.Client, encoding: Any) -> None:
        """partialSuccess (JSON or protobuf) becomes a SENT answer with rejected records."""
        protocol = OTLPProtocol(fake_otlp.url, encoding=encoding)
        fake_otlp.partial_success_next(2, "too old")
        response = _round_trip(client, protocol, [make_event(str(i)) for i in range(5)])
        answer = protocol.classify(response.status_code, response.headers, response.content)
        assert answer == Answer(Outcome.SENT, rejected=2, message="too old")
        assert len(fake_otlp.records) == 3

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_full_success_has_no_message(
        self, fake_otlp: FakeOTLP, client: httpx.Client, encoding: Any
    ) -> None:
        """A plain 200 is SENT with nothing rejected."""
        protocol = OTLPProtocol(fake_otlp.url, encoding=encoding)
        response = _round_trip(client, protocol, [make_event()])
        assert protocol.classify(response.status_code, response.headers, response.content) == Answer(
            Outcome.SENT
        )

    @pytest.mark.parametrize(
        ("status", "outcome"),
        [
            (200, Outcome.SENT),
            (400, Outcome.REFUSED),
            (401, Outcome.AUTH),
            (403, Outcome.AUTH),
            (404, Outcome.REFUSED),
            (413, Outcome.SPLIT),
            (429, Outcome.RETRY),
            (500, Outcome.REFUSED),
            (501, Outcome.REFUSED),
            (502, Outcome.RETRY),
            (503, Outcome.RETRY),
            (504, Outcome.RETRY),
        ],
    )
    def test_classify_by_status(self, status: int, outcome: Outcome) -> None:
        """Only 429/502/503/504 are retryable in OTLP/HTTP."""
        assert OTLPProtocol("http://c:4318").classify(status, {}, b"").outcome is outcome

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_retry_after_from_real_answer(
        self, fake_otlp: FakeOTLP, client: httpx.Client, encoding: Any
    ) -> None:
        """A 503 with Retry-After as an HTTP date gives the remaining seconds."""
        protocol = OTLPProtocol(fake_otlp.url, encoding=encoding)
        when = email.utils.format_datetime(
            dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60), usegmt=True
        )
        fake_otlp.fail_next(status=503, headers={"Retry-After": when})
        response = _round_trip(client, protocol, [make_event()])
        answer = protocol.classify(response.status_code, response.headers, response.content)
        assert answer.outcome is Outcome.RETRY
        assert answer.retry_after_s is not None
        assert 50 < answer.retry_after_s <= 60
        assert answer.message == "service unavailable"

    @pytest.mark.parametrize("encoding", ENCODINGS)
    def test_status_message_decoded(self, fake_otlp: FakeOTLP, client: httpx.Client, encoding: Any) -> None:
        """A google.rpc.Status error body (JSON or protobuf) yields its message."""
        protocol = OTLPProtocol(fake_otlp.url, encoding=encoding)
        fake_otlp.reject_next(status=400)
        response = _round_trip(client, protocol, [make_event()])
        answer = protocol.classify(response.status_code, response.headers, response.content)
        assert (answer.outcome, answer.message) == (Outcome.REFUSED, "bad request")

    def test_damaged_spool_record_sent_as_body(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """A record that does not decode becomes a record with its text as body."""
        protocol = OTLPProtocol(fake_otlp.url)
        assert send(client, protocol.encode([b"\x00junk"])).status_code == 200
        assert fake_otlp.records[0].body == "\x00junk"

    def test_spool_written_as_json_sent_as_protobuf(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """Prepared records do not depend on the encoding."""
        prepared = OTLPProtocol(fake_otlp.url, encoding="json").prepare(make_event("x", n=1))
        send(client, OTLPProtocol(fake_otlp.url).encode([prepared]))
        assert (fake_otlp.records[0].body, fake_otlp.records[0].attributes["n"]) == ("x", 1)


# --- generic HTTP ---------------------------------------------------------------------------


class TestHTTPProtocol:
    @pytest.mark.parametrize(
        ("fmt", "content_type"), [("ndjson", "application/x-ndjson"), ("json_array", "application/json")]
    )
    def test_round_trip(
        self, fake_http_sink: FakeHTTPSink, client: httpx.Client, fmt: Any, content_type: str
    ) -> None:
        """Records arrive unchanged, in order, in the chosen format."""
        protocol = HTTPProtocol(fake_http_sink.endpoint, format=fmt)
        events = [make_event(str(i), n=i) for i in range(3)]
        response = _round_trip(client, protocol, events)
        assert response.status_code == 200
        assert fake_http_sink.records == events
        assert fake_http_sink.requests[0].header("content-type") == content_type
        assert fake_http_sink.requests[0].header("content-encoding") == "gzip"

    def test_url_used_as_given(self) -> None:
        """No path is appended to the configured URL."""
        assert HTTPProtocol("http://vector:8080/in?x=1").endpoint == "http://vector:8080/in?x=1"

    def test_headers_sent(self, client: httpx.Client) -> None:
        """User headers (a token) are sent with every request."""
        with FakeHTTPSink(required_headers={"Authorization": f"Bearer {SECRET}"}) as fake:
            protocol = HTTPProtocol(fake.endpoint, headers={"Authorization": f"Bearer {SECRET}"})
            assert _round_trip(client, protocol, [make_event()]).status_code == 200

    def test_unknown_format_refused(self) -> None:
        """Only ndjson and json_array exist."""
        with pytest.raises(ValueError, match="format"):
            HTTPProtocol("http://x", format="csv")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("status", "outcome"),
        [
            (200, Outcome.SENT),
            (201, Outcome.SENT),
            (204, Outcome.SENT),
            (400, Outcome.REFUSED),
            (401, Outcome.AUTH),
            (403, Outcome.AUTH),
            (404, Outcome.REFUSED),
            (408, Outcome.RETRY),
            (413, Outcome.SPLIT),
            (429, Outcome.RETRY),
            (500, Outcome.RETRY),
            (503, Outcome.RETRY),
        ],
    )
    def test_classify_by_status(self, status: int, outcome: Outcome) -> None:
        """2xx sent, 413 split, 401/403 auth, 408/429/5xx retry, else refused."""
        assert HTTPProtocol("http://x").classify(status, {}, b"").outcome is outcome

    def test_rate_limit_answer_from_sink(self, fake_http_sink: FakeHTTPSink, client: httpx.Client) -> None:
        """A scripted 429 with Retry-After classifies as RETRY with the delay."""
        protocol = HTTPProtocol(fake_http_sink.endpoint)
        fake_http_sink.rate_limit_next(retry_after="4")
        response = _round_trip(client, protocol, [make_event()])
        answer = protocol.classify(response.status_code, response.headers, response.content)
        assert (answer.outcome, answer.retry_after_s) == (Outcome.RETRY, 4.0)


# --- any event, any protocol -----------------------------------------------------------------

_ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=()), max_size=30)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | _ANY_TEXT
    | st.binary(max_size=20)
    | st.decimals()
    | st.datetimes(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_ANY_TEXT | st.integers(), inner, max_size=4)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=12,
)
_FIELDS = st.dictionaries(st.from_regex(r"\Af_[a-z]{1,6}\Z"), _VALUES, max_size=5)


class TestAnyEvent:
    @pytest.mark.parametrize("fake_name", ["fake_datadog", "fake_loki", "fake_otlp", "fake_http_sink"])
    def test_prepare_and_encode_accept_any_event(
        self, request: pytest.FixtureRequest, client: httpx.Client, fake_name: str
    ) -> None:
        """Arbitrary field values (bad text, huge ints, bytes, NaN) are rendered and delivered."""
        fake = request.getfixturevalue(fake_name)
        protocol: WireProtocol
        if isinstance(fake, FakeDatadog):
            protocol = _datadog(fake)
        elif isinstance(fake, FakeLoki):
            protocol = LokiProtocol(fake.url)
        elif isinstance(fake, FakeOTLP):
            protocol = OTLPProtocol(fake.url)
        else:
            protocol = HTTPProtocol(fake.endpoint)

        @settings(max_examples=40, deadline=None)
        @given(message=_ANY_TEXT, fields=_FIELDS)
        def check(message: str, fields: dict[str, Any]) -> None:
            prepared = protocol.prepare(make_event(message, **fields))
            response = send(client, protocol.encode([prepared]))
            assert response.is_success, response.text

        check()


# --- secrets --------------------------------------------------------------------------------


def _all_protocols() -> list[WireProtocol]:
    return [
        DatadogProtocol(SECRET),
        LokiProtocol("http://loki:3100", auth=("user", SECRET), headers={"X-Key": SECRET}),
        OTLPProtocol("http://c:4318", headers={"Authorization": f"Bearer {SECRET}"}),
        HTTPProtocol("http://x/in", headers={"Authorization": f"Bearer {SECRET}"}),
    ]


class TestSecrets:
    @pytest.mark.parametrize("protocol", _all_protocols(), ids=lambda p: p.name)
    def test_repr_and_str_show_only_name_and_endpoint(self, protocol: WireProtocol) -> None:
        """repr/str carry the protocol name and endpoint, never a header value."""
        for text in (repr(protocol), str(protocol)):
            assert SECRET not in text
            assert protocol.name in text
            assert protocol.endpoint in text

    @pytest.mark.parametrize("protocol", _all_protocols(), ids=lambda p: p.name)
    def test_answer_messages_are_redacted(self, protocol: WireProtocol) -> None:
        """A backend echoing the key back never puts it into an Answer."""
        answer = protocol.classify(403, {}, f"invalid key {SECRET}".encode())
        assert answer.message is not None
        assert SECRET not in answer.message
        assert "[redacted]" in answer.message

    def test_bad_header_error_names_header_not_value(self) -> None:
        """A header value HTTP cannot carry is refused without echoing it."""
        with pytest.raises(ValueError, match="X-Key") as info:
            HTTPProtocol("http://x", headers={"X-Key": f"{SECRET}\r\nInjected: 1"})
        assert SECRET not in str(info.value)

    def test_datadog_key_with_newline_not_echoed(self) -> None:
        """An API key with a newline is refused without showing it."""
        with pytest.raises(ValueError) as info:
            DatadogProtocol(f"{SECRET}\nX-Injected: 1")
        assert SECRET not in str(info.value)

    @pytest.mark.parametrize("url", ["ftp://x", "not a url", ""])
    def test_bad_url_refused(self, url: str) -> None:
        """Only http(s) URLs are accepted."""
        with pytest.raises(ValueError, match="URL"):
            HTTPProtocol(url)
