"""Plain records: what a log call captures of the common record, and the batch path built on it.

A record holding only the standard attributes (and the session's text IDs), at a standard level,
with no exception or stack, is queued as six values instead of a copy of its ``__dict__``, and the
worker builds a whole batch of them in one pass. These tests pin that every step gives exactly
what the general path gives, and that anything else still takes the general path.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentuity_logging._delivery._datadog import MAX_ENTRY_BYTES, DatadogProtocol
from agentuity_logging._delivery._http import HTTPProtocol
from agentuity_logging._delivery._loki import MAX_LINE_BYTES, MAX_METADATA_VALUE_CHARS, LokiProtocol
from agentuity_logging._delivery._redaction import REDACTED
from agentuity_logging._records import PlainValues, event_from_record, plain_event, plain_lines
from agentuity_logging.shipping import DatadogShipper
from tests.fakes.datadog import FakeDatadog
from tests.fakes.events import SESSION_ID, THREAD_ID

from .shipping_support import ShipperFactory, attach, shipper_factory

KEY = "k-0123456789abcdef"


@pytest.fixture
def make() -> Iterator[ShipperFactory]:
    """Creates shippers and closes them after the test."""
    yield from shipper_factory()


LEVELS = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]

# Times around now, second boundaries, the epoch and far futures: the cached-second arithmetic must
# agree with the general path everywhere.
times = st.one_of(
    st.floats(min_value=1.7e9, max_value=1.9e9, allow_nan=False),
    st.integers(min_value=0, max_value=4_000_000_000).map(lambda s: s + 0.999_999_7),
    st.integers(min_value=0, max_value=4_000_000_000).map(float),
    st.floats(min_value=0.0, max_value=2.0),
)
texts = st.text(min_size=0, max_size=40)
ids = st.one_of(st.none(), st.tuples(texts, texts))
plain_values = st.builds(
    lambda created, levelno, name, message, pair: (
        created,
        levelno,
        name,
        message,
        *(pair if pair is not None else (None, None)),
    ),
    times,
    st.sampled_from(LEVELS),
    texts,
    texts,
    ids,
)


def record_of(values: PlainValues) -> logging.LogRecord:
    """The stdlib record these values were captured from."""
    created, levelno, name, message, sid, tid = values
    record = logging.LogRecord(name, levelno, __file__, 1, message, None, None)
    record.created = created
    if sid is not None:
        record.agentuitySessionId = sid
        record.agentuityThreadId = tid
    return record


class TestPlainEvent:
    @settings(max_examples=300, deadline=None)
    @given(values=plain_values)
    def test_equals_the_schema_builder(self, values: PlainValues) -> None:
        """The event built from the captured values is the one the schema builder makes."""
        assert plain_event(values) == event_from_record(record_of(values))
        assert list(plain_event(values)) == list(event_from_record(record_of(values)))

    @settings(max_examples=300, deadline=None)
    @given(batch=st.lists(plain_values, max_size=8))
    def test_lines_are_the_events_json(self, batch: list[PlainValues]) -> None:
        """Each batch line is byte for byte the orjson encoding of its event."""
        try:
            expected = [orjson.dumps(plain_event(values)) for values in batch]
        except orjson.JSONEncodeError:
            with pytest.raises(orjson.JSONEncodeError):
                plain_lines(batch)  # lone surrogates: the batch path refuses, the caller falls back
            return
        assert plain_lines(batch) == expected

    def test_lines_end_with_the_closer_of_their_level(self) -> None:
        """A protocol's closer replaces the closing brace, per level."""
        batch: list[PlainValues] = [(1.5e9, logging.INFO, "a", "m", None, None)]
        closers = {logging.INFO: b',"x":1}'}
        (line,) = plain_lines(batch, closers)
        assert orjson.loads(line) == {**plain_event(batch[0]), "x": 1}

    def test_a_level_without_a_closer_raises(self) -> None:
        """A level the protocol has no closer for makes the batch path refuse (never a wrong line)."""
        with pytest.raises(KeyError):
            plain_lines([(1.5e9, logging.DEBUG, "a", "m", None, None)], {logging.INFO: b"}"})


def batch_of(n: int, *, session: bool = True, start: float = 1.8e9) -> list[PlainValues]:
    sid, tid = (SESSION_ID, THREAD_ID) if session else (None, None)
    return [(start + i * 0.37, LEVELS[i % 5], "app.agent", f'record {i} "q" \n', sid, tid) for i in range(n)]


class TestProtocols:
    @pytest.mark.parametrize(
        "options",
        [{}, {"service": "planner", "tags": {"env": "prod"}, "hostname": "h1", "source": "agents"}],
        ids=["defaults", "configured"],
    )
    @pytest.mark.parametrize("session", [True, False])
    def test_datadog_batch_equals_its_record_by_record_entries(self, options: Any, session: bool) -> None:
        """Datadog's batch path gives the entries ``prepare`` gives, in order."""
        protocol = DatadogProtocol(KEY, **options)
        batch = batch_of(12, session=session)
        assert protocol.prepare_plain(batch) == [protocol.prepare(plain_event(v)) for v in batch]

    def test_datadog_truncates_an_entry_over_the_limit(self) -> None:
        """An entry over 1 MB is truncated with a marker in the batch path too, never dropped."""
        protocol = DatadogProtocol(KEY)
        batch = [*batch_of(2), (1.8e9, logging.INFO, "big", "x" * (MAX_ENTRY_BYTES + 10), None, None)]
        entries = protocol.prepare_plain(batch)
        assert len(entries) == 3
        assert entries[:2] == [protocol.prepare(plain_event(v)) for v in batch[:2]]
        assert len(entries[2]) <= MAX_ENTRY_BYTES
        assert entries[2] == protocol.prepare(plain_event(batch[2]))

    @pytest.mark.parametrize("session", [True, False])
    def test_loki_batch_equals_its_record_by_record_records(self, session: bool) -> None:
        """Loki's batch path gives the records ``prepare`` gives, seconds cached or not."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json", labels={"region": "eu"})
        batch = batch_of(12, session=session)  # spans several seconds: some are not cached yet
        first = protocol.prepare_plain(batch)
        assert first == [protocol.prepare(plain_event(v)) for v in batch]
        assert protocol.prepare_plain(batch) == first  # now every second is cached

    @settings(max_examples=200, deadline=None)
    @given(batch=st.lists(plain_values, min_size=1, max_size=6))
    def test_loki_batch_equals_prepare_for_any_text(self, batch: list[PlainValues]) -> None:
        """Whatever the text, times and IDs, the batch path's push values are what prepare gives."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        expected = [protocol.prepare(plain_event(v)) for v in batch]  # also caches the seconds
        try:
            got = protocol.prepare_plain(batch)
        except orjson.JSONEncodeError:
            return  # lone surrogates: the engine falls back to prepare(), tested elsewhere
        assert got == expected

    def test_loki_long_ids_take_the_general_path(self) -> None:
        """IDs over the metadata cap are shortened as ``prepare`` does it, not kept whole."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        long_id = "sess_" + "a" * MAX_METADATA_VALUE_CHARS
        batch: list[PlainValues] = [(1.8e9, logging.INFO, "a", "m", long_id, THREAD_ID)] * 2
        assert protocol.prepare_plain(batch) == [protocol.prepare(plain_event(v)) for v in batch]

    @pytest.mark.parametrize("session", [True, False])
    def test_loki_lines_near_the_limit_are_what_prepare_makes(self, session: bool) -> None:
        """Over the line limit, over it only with the IDs, or only once escaped: as prepare makes them."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        ids = (SESSION_ID, THREAD_ID) if session else (None, None)
        bare_line = len(orjson.dumps(plain_event((1.8e9, logging.INFO, "a", "", None, None))))
        messages = [
            "x" * (MAX_LINE_BYTES + 10),
            "y" * (MAX_LINE_BYTES - bare_line - 40),  # fits, unless the IDs join the line
            '"' * (MAX_LINE_BYTES // 2 - 300),  # fits; escaped into the push value it would not
        ]
        batch: list[PlainValues] = [
            (1.8e9 + i / 1000, logging.INFO, "a", m, *ids) for i, m in enumerate(messages)
        ]
        expected = [protocol.prepare(plain_event(v)) for v in batch]
        assert protocol.prepare_plain(batch) == expected
        cut = [b"[truncated" in value for value in expected]  # cut with a marker, as prepare does
        assert cut == [True, session, False]

    def test_loki_a_new_second_costs_one_record_by_record_call(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The first record of an uncached second goes through prepare, which caches it; the rest don't."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json")
        batch: list[PlainValues] = [
            (1.9e9 + i / 10_000, logging.INFO, "a", "m", None, None) for i in range(100)
        ]
        expected = [protocol.prepare(plain_event(v)) for v in batch]
        fresh = LokiProtocol("http://127.0.0.1:9", encoding="json")
        calls: list[object] = []
        real = fresh.prepare
        monkeypatch.setattr(fresh, "prepare", lambda event: calls.append(event) or real(event))
        assert fresh.prepare_plain(batch) == expected
        assert len(calls) == 1

    def test_other_protocols_use_prepare(self) -> None:
        """A protocol without a batch path prepares each record's event (the default)."""
        protocol = HTTPProtocol("http://127.0.0.1:9/logs")
        batch = batch_of(3)
        assert protocol.prepare_plain(batch) == [protocol.prepare(plain_event(v)) for v in batch]


class TestCapture:
    """Which records a log call queues as plain values."""

    @pytest.fixture
    def shipper(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> DatadogShipper:
        """A Datadog shipper whose worker has not started yet."""
        return make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)

    def kinds(self, shipper: Any, log: Any) -> list[type]:
        """The types of what ``log`` queued (before the worker starts, every record takes ``_submit``).

        A ``tuple`` is a plain record's values, a ``list`` holds a copy of the record's attributes.
        """
        queued: list[type] = []
        shipper._engine._submit = lambda payload, size: queued.append(type(payload))
        log(attach(shipper))
        return queued

    def test_a_bare_record_is_plain(self, shipper: Any) -> None:
        """A message at a standard level, no fields: plain."""
        assert self.kinds(shipper, lambda log: log.info("hi %s", "there")) == [tuple]

    def test_a_record_with_text_ids_is_plain(self, shipper: Any) -> None:
        """The session's IDs as text: plain."""
        extra = {"agentuitySessionId": SESSION_ID, "agentuityThreadId": THREAD_ID}
        assert self.kinds(shipper, lambda log: log.warning("hi", extra=extra)) == [tuple]

    def test_a_schema_event_is_queued_as_a_dict(self, shipper: Any) -> None:
        """An event some output already built (configure()'s stream output) is queued as is."""
        event = {"timestamp": "2026-12-06T07:00:00.000000Z", "level": "info", "logger": "a", "message": "m"}

        def log(logger: logging.Logger) -> None:
            logger.info("m", extra={"_agentuity_event": event})

        assert self.kinds(shipper, log) == [dict]

    @pytest.mark.parametrize(
        "log",
        [
            lambda log: log.info("hi", extra={"user": 7}),
            lambda log: log.info("hi", extra={"agentuitySessionId": {"x": 1}, "agentuityThreadId": "t"}),
            lambda log: log.info("hi", extra={"agentuitySessionId": "s", "user": 1}),
            lambda log: log.log(25, "custom level"),
            lambda log: log.info("hi", stack_info=True),
            lambda log: log.error("boom", exc_info=ValueError("x")),
        ],
        ids=["field", "non-text-id", "id-and-field", "custom-level", "stack", "exception"],
    )
    def test_anything_else_is_a_snapshot(self, shipper: Any, log: Any) -> None:
        """Fields, non-text IDs, odd levels, stacks and exceptions keep the record's attributes."""
        assert self.kinds(shipper, log) == [list]


class TestDelivery:
    def test_a_refused_message_does_not_cost_its_batch(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A message the batch path refuses (a lone surrogate) ships through the general path."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        logger = attach(shipper)
        for i in range(5):
            logger.info("record %d", i)
        logger.info(b"caf\xe9".decode("utf-8", "surrogateescape"))
        assert shipper.flush(5)
        messages = [entry["message"] for entry in fake_datadog.entries]
        assert messages[:5] == [f"record {i}" for i in range(5)]
        assert len(messages) == 6
        assert messages[5].startswith("caf")
        assert shipper.stats()["dropped"] == {}

    def test_masking_a_schema_key_reaches_plain_records(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A redaction pattern naming a schema key masks it in plain records too."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, redact=["logger"])
        attach(shipper).info("hello")
        assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert entry["message"] == "hello"
        assert entry["logger"] == REDACTED


class TestVerifiedBatches:
    """Records the engine holds in memory are prepare()'s own: their request skips the checks."""

    def test_datadog_body_is_the_same_with_or_without_checks(self) -> None:
        """For prepare()'s entries, the verified body equals the checked one."""
        protocol = DatadogProtocol(KEY)
        entries = protocol.prepare_plain(batch_of(5))
        checked = gzip.decompress(protocol.encode(entries).body)
        assert gzip.decompress(protocol.encode(entries, verified=True).body) == checked

    def test_loki_body_is_the_same_with_or_without_checks(self) -> None:
        """Loki's verified push body equals the checked one, streams and order included."""
        protocol = LokiProtocol("http://127.0.0.1:9", encoding="json", labels={"region": "eu"})
        records = protocol.prepare_plain(batch_of(12)[::-1])  # several streams, out of time order
        checked = gzip.decompress(protocol.encode(records).body)
        assert gzip.decompress(protocol.encode(records, verified=True).body) == checked

    def test_http_body_is_the_same_with_or_without_checks(self) -> None:
        """The plain HTTP shipper's verified body equals the checked one, in both formats."""
        for fmt in ("ndjson", "json_array"):
            protocol = HTTPProtocol("http://127.0.0.1:9/logs", format=fmt)
            records = [protocol.prepare(plain_event(v)) for v in batch_of(4)]
            checked = gzip.decompress(protocol.encode(records).body)
            assert gzip.decompress(protocol.encode(records, verified=True).body) == checked

    @pytest.mark.parametrize("spool", [False, True], ids=["memory", "spool"])
    def test_the_engine_verifies_memory_batches_only(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, spool: bool, tmp_path: Any
    ) -> None:
        """Without a spool, batches are marked verified; read back from disk, they are checked."""
        options = {"spool_dir": str(tmp_path / "spool")} if spool else {}
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, **options)
        protocol = shipper._engine.protocol
        seen: list[bool] = []
        original = protocol.encode

        def spy(prepared: Any, *, verified: bool = False) -> Any:
            seen.append(verified)
            return original(prepared, verified=verified)

        protocol.encode = spy  # type: ignore[method-assign]
        attach(shipper).info("hello")
        assert shipper.flush(5)
        assert seen == [not spool]
        assert [entry["message"] for entry in fake_datadog.entries] == ["hello"]
