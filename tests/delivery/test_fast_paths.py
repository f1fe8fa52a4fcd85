"""The worker's fast paths produce exactly what the general paths do, and fall back when they must.

Datadog entries and Loki records are built by splicing bytes for the common record; these tests pin
that the result is the same entry the general path builds, that anything unusual still takes the
general path, and that masking, truncation and the memory store keep their guarantees.
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from agentuity_logging._delivery._datadog import DatadogProtocol
from agentuity_logging._delivery._engine import _MemoryStore
from agentuity_logging._delivery._loki import LokiProtocol
from agentuity_logging._delivery._protocol import event_time_ns
from agentuity_logging._delivery._redaction import REDACTED
from agentuity_logging.shipping import DatadogShipper, LokiShipper
from tests.fakes.datadog import FakeDatadog
from tests.fakes.events import SESSION_ID, SPAN_ID, THREAD_ID, TRACE_ID, make_event, rfc3339, send
from tests.fakes.loki import FakeLoki

from .shipping_support import ShipperFactory, attach, shipper_factory

KEY = "k-0123456789abcdef"


@pytest.fixture
def make() -> Iterator[ShipperFactory]:
    """Creates shippers and closes them after the test."""
    yield from shipper_factory()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client for sending encoded requests to the fakes."""
    with httpx.Client(timeout=10) as c:
        yield c


DATADOG_EVENTS = [
    make_event(session=False),
    make_event(),
    make_event(level="debug", user_id=7, nested={"a": [1, 2, {"b": None}]}, quote='say "hi"\\'),
    make_event("héllo ✓ \n next line", level="critical", spanId="span_1"),
    make_event(level="warning", ratio=0.5, flag=True, empty={}),
]


class TestDatadogSplicedEntries:
    @pytest.mark.parametrize(
        "options",
        [{}, {"service": "planner", "tags": {"env": "prod"}, "hostname": "h1", "source": "agents"}],
        ids=["defaults", "configured"],
    )
    @pytest.mark.parametrize("event", DATADOG_EVENTS)
    def test_spliced_entry_equals_the_general_entry(self, event: dict[str, Any], options: Any) -> None:
        """The spliced bytes are byte for byte the entry the general path builds."""
        protocol = DatadogProtocol(KEY, **options)
        assert protocol.prepare(event) == protocol._prepare_general(event)

    @pytest.mark.parametrize(
        "event",
        [
            make_event(service="billing"),
            make_event(status="custom"),
            make_event(ddtags="a:b"),
            make_event(level="WARN"),
            make_event(trace_id=TRACE_ID, span_id=SPAN_ID),
            make_event(big=2**80, raw=b"\x00ab"),
            make_event(b"caf\xe9".decode("utf-8", "surrogateescape")),
        ],
        ids=["service", "status", "ddtags", "odd-level", "trace", "non-json", "surrogate"],
    )
    def test_unusual_events_take_the_general_path(self, event: dict[str, Any]) -> None:
        """Reserved keys, odd levels, trace IDs and values orjson refuses yield the general entry."""
        protocol = DatadogProtocol(KEY, service="planner")
        assert protocol.prepare(event) == protocol._prepare_general(event)

    @pytest.mark.parametrize(
        "span",
        [SPAN_ID, SPAN_ID.upper(), "0" * 16, "span_1", "f" * 16, {"nested": 1}],
        ids=["otel", "upper", "zero", "name", "max", "dict"],
    )
    @pytest.mark.parametrize("configured", [False, True])
    def test_span_records_are_spliced_like_the_general_entry(self, span: Any, configured: bool) -> None:
        """A record with a ``spanId`` gets the general entry's bytes, ``dd.span_id`` included."""
        options = {"service": "planner", "tags": {"env": "prod"}} if configured else {}
        protocol = DatadogProtocol(KEY, **options)
        event = make_event(spanId=span)
        assert protocol.prepare(event) == protocol._prepare_general(event)

    def test_span_records_take_the_fast_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A session record inside a span is spliced, its span ID in Datadog's decimal form."""
        protocol = DatadogProtocol(KEY)

        def refuse(event: dict[str, Any]) -> bytes:
            raise AssertionError("took the general path")

        monkeypatch.setattr(protocol, "_prepare_general", refuse)
        entry = orjson.loads(protocol.prepare(make_event(spanId=SPAN_ID)))
        assert entry["dd"] == {"span_id": str(int(SPAN_ID, 16))}
        assert entry["spanId"] == SPAN_ID

    def test_a_record_just_over_the_limit_is_truncated(self) -> None:
        """An entry that fits only without the reserved attributes is still cut below 1 MB."""
        protocol = DatadogProtocol(KEY)
        bare = len(orjson.dumps(make_event("")))
        prepared = protocol.prepare(make_event("m" * (1_000_000 - bare - 5)))
        assert len(prepared) <= 1_000_000
        assert "…[truncated " in orjson.loads(prepared)["message"]

    def test_a_damaged_record_inside_a_batch_is_wrapped(self) -> None:
        """A record that is not an object's bytes, even mid-batch, becomes a message entry."""
        protocol = DatadogProtocol(KEY)
        good = protocol.prepare(make_event())
        for bad in (b"garbage", b'}\n{"x":1}', b""):
            request = protocol.encode([good, bad, good])
            entries = orjson.loads(gzip.decompress(request.body))
            assert len(entries) == 3
            assert entries[1] == {"message": bad.decode()}
            assert entries[0] == entries[2] == orjson.loads(good)


LOKI_SESSION_EVENTS = [
    make_event(),
    make_event(spanId=SPAN_ID),
    make_event(level="error", spanId=SPAN_ID, user_id=7, nested={"a": [1, {"b": None}]}),
    make_event("héllo ✓ \n next line", level="critical", quote='say "hi"\\'),
    make_event(level="debug", agentuitySessionId="sess_ünïcode", agentuityThreadId="thrd_\u2028"),
]


def _assert_same_entry(protocol: LokiProtocol, event: dict[str, Any]) -> None:
    """The fast record decodes to the general record's timestamp, labels, line and metadata."""
    fast = protocol._entry(protocol.prepare(event))
    general = protocol._entry(protocol._prepare_general(event, 0))
    assert (fast.ts, fast.labels, fast.line, fast.metadata) == (
        general.ts,
        general.labels,
        general.line,
        general.metadata,
    )


class TestLokiPreparedRecords:
    def test_fast_record_decodes_like_the_general_record(self) -> None:
        """The byte-built record carries the same timestamp, labels, line and metadata."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json", labels={"region": "eu"})
        for event in (make_event(session=False), make_event(), make_event(service="b", env="e")):
            for _ in range(2):  # the second call finds the second cached
                _assert_same_entry(protocol, event)

    @pytest.mark.parametrize("event", LOKI_SESSION_EVENTS)
    def test_session_record_equals_the_general_record(self, event: dict[str, Any]) -> None:
        """A record carrying session, thread and span IDs is byte for byte the general record."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json", labels={"region": "eu"})
        for _ in range(2):  # the second call finds the second cached
            assert protocol.prepare(event) == protocol._prepare_any(event)
        _assert_same_entry(protocol, event)

    def test_session_records_take_the_fast_path(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Once its second is cached, a session record is prepared without the slower paths."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        first = make_event(spanId=SPAN_ID)
        protocol.prepare(first)

        def refuse(event: dict[str, Any]) -> bytes:
            raise AssertionError("took the slower path")

        monkeypatch.setattr(protocol, "_prepare_any", refuse)
        for event in (make_event(timestamp=first["timestamp"]), first):
            protocol.prepare(event)

    def test_session_ids_are_metadata_never_labels(self) -> None:
        """In the joined push the IDs are each value's metadata and stay in the line; labels hold none."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        event = make_event(spanId=SPAN_ID)
        prepared = [protocol.prepare(event) for _ in range(2)]
        body = orjson.loads(gzip.decompress(protocol.encode(prepared).body))
        ((stream),) = body["streams"]
        ids = {"agentuitySessionId": SESSION_ID, "agentuityThreadId": THREAD_ID, "spanId": SPAN_ID}
        assert stream["stream"] == {"level": "info"}
        for _, line, metadata in stream["values"]:
            assert metadata == ids
            assert ids.items() <= orjson.loads(line).items()

    @pytest.mark.parametrize(
        "event",
        [
            make_event(agentuityThreadId=None),
            make_event(agentuitySessionId=42),
            make_event(agentuitySessionId="s" * 1000),
            make_event(spanId="p" * 1000),
            make_event(spanId=7),
            make_event(traceId=TRACE_ID, spanId=SPAN_ID),
            make_event(session=False, spanId=SPAN_ID),
            make_event(service="billing"),
            make_event(agentuitySessionId=b"s\xe9".decode("utf-8", "surrogateescape")),
        ],
        ids=[
            "no-thread",
            "int-id",
            "long-id",
            "long-span",
            "int-span",
            "trace",
            "span-only",
            "service",
            "surrogate",
        ],
    )
    def test_unusual_session_records_match_the_general_record(self, event: dict[str, Any]) -> None:
        """IDs that are not short text, or other trace keys, still yield the general record exactly."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        for _ in range(2):
            prepared = protocol.prepare(event)
            assert prepared == protocol._prepare_any(event)
        fast = protocol._entry(prepared)
        general = protocol._entry(protocol._prepare_general(event, 0))
        assert (fast.labels, fast.line, fast.metadata) == (general.labels, general.line, general.metadata)

    def test_nanoseconds_from_a_cached_second_are_exact(self) -> None:
        """Digits spliced from the cached second equal the parsed timestamp."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        moment = dt.datetime(2026, 11, 25, 10, 44, 59, 123456, tzinfo=dt.timezone.utc)
        for micros in (123456, 0, 999999, 7):
            stamp = rfc3339(moment.replace(microsecond=micros))
            protocol.prepare(make_event(timestamp=stamp, session=False))
            record = protocol.prepare(make_event(timestamp=stamp, session=False))
            assert protocol._entry(record).ts == event_time_ns(stamp)

    @pytest.mark.parametrize(
        "stamp",
        ["1999-01-01T00:00:00.000001Z", "2026-11-25T10:44:59.12345٣Z", "2026-11-25T10:44:59+02:00"],
        ids=["18-digit-ns", "non-ascii-digit", "offset"],
    )
    def test_unusual_timestamps_keep_their_exact_nanoseconds(self, stamp: str) -> None:
        """Timestamps outside the fast path's format keep their exact nanoseconds in the push."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        normal = make_event("normal", session=False)
        odd = make_event("odd", timestamp=stamp, session=False)
        request = protocol.encode([protocol.prepare(normal), protocol.prepare(odd)])
        body = orjson.loads(gzip.decompress(request.body))
        stamps = {orjson.loads(v[1])["message"]: v[0] for s in body["streams"] for v in s["values"]}
        expected = {"odd": event_time_ns(stamp, -1), "normal": event_time_ns(normal["timestamp"])}
        assert stamps == {message: str(ns) for message, ns in expected.items()}

    @pytest.mark.parametrize("encoding", ["json", "protobuf"])
    def test_records_of_the_earlier_format_mix_with_new_ones(
        self, encoding: Any, fake_loki: FakeLoki, client: httpx.Client
    ) -> None:
        """A spool written in the ``[ns, labels, line, metadata]`` format replays next to new records."""
        protocol = LokiProtocol(fake_loki.url, encoding=encoding, service="svc")
        old_event, new_event = make_event("old"), make_event("new")
        old = orjson.dumps(
            [
                str(event_time_ns(old_event["timestamp"])),
                {"service": "svc", "level": "info"},
                orjson.dumps(old_event).decode(),
                {"agentuitySessionId": old_event["agentuitySessionId"]},
            ]
        )
        assert send(client, protocol.encode([old, protocol.prepare(new_event)])).status_code == 204
        lines = sorted(orjson.loads(e.line)["message"] for e in fake_loki.stored())
        assert lines == ["new", "old"]

    def test_json_push_groups_streams_and_orders_each_by_time(self) -> None:
        """The byte-joined push holds one stream per label set, each in time order, stable on ties."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        base = dt.datetime(2026, 11, 25, 10, 44, 59, tzinfo=dt.timezone.utc)
        spec = [("info", 3), ("error", 1), ("info", 1), ("info", 1), ("error", 0)]
        events = [
            make_event(f"m{i}", level=level, timestamp=rfc3339(base + dt.timedelta(seconds=s)))
            for i, (level, s) in enumerate(spec)
        ]
        body = orjson.loads(gzip.decompress(protocol.encode([protocol.prepare(e) for e in events]).body))
        by_level = {
            stream["stream"]["level"]: [orjson.loads(v[1])["message"] for v in stream["values"]]
            for stream in body["streams"]
        }
        assert by_level == {"info": ["m2", "m3", "m0"], "error": ["m4", "m1"]}

    def test_damaged_records_fall_back_to_decoding_every_record(self) -> None:
        """A record that does not split into labels and a value is sent as a plain line."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        good = protocol.prepare(make_event(session=False))
        for bad in (b"", b"{}\nnot-a-value", b'{"level":"info"}\n["1",'):
            body = orjson.loads(gzip.decompress(protocol.encode([good, bad]).body))
            lines = [v[1] for s in body["streams"] for v in s["values"]]
            assert len(lines) == 2
            assert bad.decode() in lines


class TestWorkerMasking:
    def test_secret_nested_under_a_session_id_is_masked(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """An ID key set through extra= to a dict is still searched for secrets."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        extra = {"agentuitySessionId": "sess_1", "agentuityThreadId": {"password": "p", "n": 1}}
        attach(shipper).info("x", extra=extra)
        assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert entry["agentuityThreadId"] == {"password": REDACTED, "n": 1}

    def test_secret_nested_under_a_span_id_is_masked(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A session record whose span ID was set through extra= to a dict is searched too."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        extra = {"agentuitySessionId": "sess_1", "agentuityThreadId": "thrd_1", "spanId": {"token": "t"}}
        attach(shipper).info("x", extra=extra)
        assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert entry["spanId"] == {"token": REDACTED}

    def test_a_pattern_matching_a_schema_key_masks_it(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """redact=["message"] masks the message of a plain record (no fast path skips it)."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, redact=["message"])
        attach(shipper).info("the text")
        assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert entry["message"] == REDACTED

    @pytest.mark.parametrize("shipper_class", [DatadogShipper, LokiShipper])
    def test_session_records_with_secret_fields_are_masked(
        self, shipper_class: Any, fake_datadog: FakeDatadog, fake_loki: FakeLoki, make: ShipperFactory
    ) -> None:
        """A session record with a user field named like a secret is masked on both shippers."""
        if shipper_class is DatadogShipper:
            shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        else:
            shipper = make(LokiShipper, fake_loki.url, encoding="json")
        extra = {"agentuitySessionId": "sess_1", "agentuityThreadId": "thrd_1", "api_key": "k"}
        attach(shipper).info("x", extra=extra)
        assert shipper.flush(5)
        if shipper_class is DatadogShipper:
            entry = fake_datadog.entries[0]
        else:
            entry = orjson.loads(fake_loki.stored()[0].line)
        assert entry["api_key"] == REDACTED
        assert entry["agentuitySessionId"] == "sess_1"


class TestMemoryStore:
    def test_batches_respect_the_byte_bound_and_keep_order(self) -> None:
        """peek() stops at the byte bound (at least one record); ack() moves past what was sent."""
        store = _MemoryStore()
        records = [b"x" * (i % 7 + 1) for i in range(10_000)]
        store.append(records[:6000])
        store.append(records[6000:])
        seen: list[bytes] = []
        while (batch := store.peek(100, 250)) is not None:
            assert batch.size == sum(map(len, batch.records)) <= 250 or len(batch.records) == 1
            assert len(batch.records) <= 100
            store.ack(batch, 0, len(batch.records))
            seen += batch.records
        assert seen == records
        assert (store.pending, store.pending_bytes) == (0, 0)

    def test_partial_acknowledgement_counts_only_that_range(self) -> None:
        """Acknowledging the first half of a batch leaves the rest pending, bytes included."""
        store = _MemoryStore()
        store.append([b"aa", b"bbb", b"c"])
        batch = store.peek(10, 100)
        assert batch is not None
        store.ack(batch, 0, 2)
        assert (store.pending, store.pending_bytes) == (1, 1)
        rest = store.peek(10, 100)
        assert rest is not None
        assert rest.records == [b"c"]

    def test_a_record_larger_than_the_bound_goes_alone(self) -> None:
        """A record above the byte bound is still handed out, alone."""
        store = _MemoryStore()
        store.append([b"x" * 500, b"y"])
        batch = store.peek(10, 100)
        assert batch is not None
        assert batch.records == [b"x" * 500]


def test_many_records_arrive_once_in_order(fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
    """Enough records to compact the memory store several times all arrive once, in order."""
    shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, max_batch_records=300)
    logger = attach(shipper, logging.INFO)
    for i in range(12_000):
        logger.info("n=%d", i)
    assert shipper.flush(30)
    assert [e["message"] for e in fake_datadog.entries] == [f"n={i}" for i in range(12_000)]
