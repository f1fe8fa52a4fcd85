"""The delivery engine: queue bounds, batching, retries, answers, flush and close, stats."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentuity_logging._delivery._engine import DeliveryEngine, backoff_s
from agentuity_logging.shipping import DatadogShipper, HTTPShipper, LokiShipper, OTLPShipper, ShippingHandler
from tests.fakes import FakeDatadog, FakeHTTPSink, FakeLoki, FakeOTLP
from tests.fakes._server import ReceivedRequest, Reply, decompress
from tests.forking import in_child

from .shipping_support import FAST_RETRY, ShipperFactory, attach, messages, poll_until, shipper_factory

KEY = "fake-dd-api-key-0123456789"


@pytest.fixture
def make() -> Iterator[ShipperFactory]:
    """Creates shippers and closes them after the test."""
    yield from shipper_factory()


def datadog(make: ShipperFactory, fake: FakeDatadog, **options: Any) -> DatadogShipper:
    return make(DatadogShipper, fake.api_key, url=fake.url, **{**FAST_RETRY, **options})


class TestQueue:
    def test_log_call_never_waits_for_the_network(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A backend that takes 2 s per answer does not slow log calls down."""
        fake_datadog.slow_next(1, seconds=2.0)
        shipper = datadog(make, fake_datadog, max_batch_records=10)
        logger = attach(shipper)
        start = time.monotonic()
        for i in range(200):
            logger.info("record %d", i)
        assert time.monotonic() - start < 0.5
        shipper.close(0)

    def test_full_queue_drops_newest_and_counts(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Past max_queue_records the newest records are dropped, counted as queue_full."""
        shipper = datadog(make, fake_datadog, max_queue_records=10, flush_interval_s=30)
        logger = attach(shipper)
        for i in range(50):
            logger.info("record %d", i)
        stats = shipper.stats()
        assert stats["enqueued"] == 10
        assert stats["dropped"] == {"queue_full": 40}
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(10)]

    def test_byte_bound_applies(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """max_queue_bytes bounds the queue by size as well as by count."""
        shipper = datadog(make, fake_datadog, max_queue_bytes=64 * 1024, flush_interval_s=30)
        logger = attach(shipper)
        for _ in range(20):
            logger.info("x" * 10_000)
        stats = shipper.stats()
        assert 0 < stats["enqueued"] < 7
        assert stats["dropped"]["queue_full"] == 20 - stats["enqueued"]

    def test_block_timeout_waits_for_room_instead_of_dropping(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """With block_timeout_s a full queue makes the log call wait for room, losing nothing."""
        shipper = datadog(make, fake_datadog, max_queue_records=5, max_batch_records=5, block_timeout_s=5)
        logger = attach(shipper)
        for i in range(60):
            logger.info("record %d", i)
        assert shipper.flush(5)
        assert shipper.stats()["dropped"] == {}
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(60)]

    def test_overflow_is_reported_once(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Dropping on overflow is said once on the internal logger, then only counted."""
        shipper = datadog(make, fake_datadog, max_queue_records=1, flush_interval_s=30)
        logger = attach(shipper)
        with caplog.at_level(logging.WARNING, logger="agentuity_logging.internal"):
            for i in range(20):
                logger.info("record %d", i)
        full = [r for r in caplog.records if "queue full" in r.getMessage()]
        assert len(full) == 1
        assert shipper.stats()["dropped"]["queue_full"] == 19

    def test_message_is_rendered_on_the_logging_thread(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A mutable %-argument changed right after the call ships as it was when logged."""
        shipper = datadog(make, fake_datadog)
        items = ["first"]
        attach(shipper).info("items %s", items)
        items.append("later")
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == ["items ['first']"]

    def test_record_subclass_message_is_honoured(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A LogRecord subclass overriding getMessage() ships the message it renders."""

        class Shouting(logging.LogRecord):
            def getMessage(self) -> str:
                return super().getMessage().upper()

        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        logger.handle(Shouting(logger.name, logging.INFO, __file__, 1, "hello %s", ("you",), None))
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == ["HELLO YOU"]

    def test_arguments_that_do_not_fit_are_rendered_beside_the_message(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """%-arguments that do not fit never raise; the record ships with them beside the template."""
        shipper = datadog(make, fake_datadog)
        attach(shipper).info("%d items", "many")
        assert shipper.flush(5)
        (message,) = messages(fake_datadog.entries)
        assert message.startswith("%d items [bad log arguments ('many',)")

    def test_records_logged_on_the_worker_thread_are_dropped(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A record logged while the worker encodes (a user __str__) is counted, never shipped."""
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)

        class Chatty:
            """A field value whose text logs: orjson cannot encode it, so the worker calls str()."""

            def __str__(self) -> str:
                logger.info("logged from inside the worker")
                return "chatty"

        logger.info("from the application", extra={"thing": Chatty()})
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == ["from the application"]
        assert shipper.stats()["dropped"] == {"reentrant": 1}


class TestBatching:
    def test_batches_stay_within_max_batch_records(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Requests carry at most max_batch_records records each."""
        shipper = datadog(make, fake_datadog, max_batch_records=10)
        logger = attach(shipper)
        for i in range(95):
            logger.info("record %d", i)
        assert shipper.flush(5)
        sizes = [len(p) for p in fake_datadog.payloads]
        assert max(sizes) <= 10
        assert sum(sizes) == 95

    def test_partial_batch_leaves_after_flush_interval(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A batch that never fills is sent once its oldest record is flush_interval_s old."""
        shipper = datadog(make, fake_datadog, flush_interval_s=0.2)
        attach(shipper).info("lonely")
        assert fake_datadog.wait_for(lambda: len(fake_datadog.entries) == 1, timeout_s=3)

    def test_full_batch_is_sent_without_waiting_for_the_interval(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Filling a batch wakes the worker at once, long before flush_interval_s."""
        shipper = datadog(make, fake_datadog, flush_interval_s=60, max_batch_records=10)
        logger = attach(shipper)
        for i in range(10):
            logger.info("record %d", i)
        assert fake_datadog.wait_for(lambda: len(fake_datadog.entries) == 10, timeout_s=3)

    def test_a_batch_full_by_bytes_leaves_at_once(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A batch the byte bound fills is sent without waiting for the interval."""
        shipper = datadog(make, fake_datadog, flush_interval_s=60, max_batch_bytes=20_000)
        logger = attach(shipper)
        for i in range(12):
            logger.info("%d %s", i, "x" * 5000)
        assert fake_datadog.wait_for(lambda: len(fake_datadog.entries) >= 9, timeout_s=3)
        assert max(len(p) for p in fake_datadog.payloads) <= 4

    def test_records_arrive_in_order(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """Records arrive in the order they were logged, across batches."""
        shipper = datadog(make, fake_datadog, max_batch_records=7)
        logger = attach(shipper)
        for i in range(100):
            logger.info("record %d", i)
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(100)]

    def test_encoding_runs_on_the_worker_thread(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Records are encoded on the named worker thread, not on the logging thread."""
        shipper = datadog(make, fake_datadog)
        threads: list[str] = []
        protocol = shipper._engine.protocol
        original, original_plain = protocol.prepare, protocol.prepare_plain

        def spy(event: dict[str, Any]) -> bytes:
            threads.append(threading.current_thread().name)
            return original(event)

        def spy_plain(items: Any) -> list[bytes]:
            threads.append(threading.current_thread().name)
            return original_plain(items)

        protocol.prepare = spy  # type: ignore[method-assign]
        protocol.prepare_plain = spy_plain  # type: ignore[method-assign]
        logger = attach(shipper)
        logger.info("hello")  # a plain record: the batch path
        logger.info("with a field", extra={"user": 7})  # the record-by-record path
        assert shipper.flush(5)
        assert threads == ["agentuity-logging-datadog"] * 2

    def test_worker_is_a_named_daemon_thread(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """The worker is a daemon thread named after the protocol, started by the first record."""
        shipper = datadog(make, fake_datadog)
        assert shipper._engine._thread is None
        attach(shipper).info("start")
        thread = shipper._engine._thread
        assert thread is not None
        assert thread.daemon
        assert thread.name == "agentuity-logging-datadog"


class TestRetries:
    def test_5xx_storm_loses_and_duplicates_nothing(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Twenty 5xx answers in a row: every record arrives exactly once."""
        fake_datadog.fail_next(20, status=503)
        shipper = datadog(make, fake_datadog, max_batch_records=50)
        logger = attach(shipper)
        for i in range(500):
            logger.info("record %d", i)
        assert shipper.flush(15)
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(500)]
        stats = shipper.stats()
        assert stats["sent"] == 500
        assert stats["retried"] >= 20 * 50
        assert stats["dropped"] == {}

    def test_429_retry_after_is_honoured(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """After a 429 with Retry-After: 1 the engine waits a second before sending again."""
        fake_datadog.rate_limit_next(1, retry_after="1")
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        for i in range(100):
            logger.info("record %d", i)
        start = time.monotonic()
        assert shipper.flush(10)
        assert time.monotonic() - start >= 0.95
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(100)]

    def test_backend_down_then_up_loses_nothing(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A backend refusing connections for two seconds gets every record once when it is back."""
        shipper = datadog(make, fake_datadog, max_batch_records=100, retry_max_s=0.3)
        logger = attach(shipper)
        fake_datadog.down()
        timer = threading.Timer(2.0, fake_datadog.up)
        timer.start()
        try:
            for i in range(1000):
                logger.info("record %d", i)
            assert shipper.flush(15)
        finally:
            timer.join()
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(1000)]
        assert shipper.stats()["retried"] > 0

    def test_dropped_connections_are_retried(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """A connection closed without an answer is a retryable failure."""
        fake_datadog.drop_connection_next(3)
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        for i in range(10):
            logger.info("record %d", i)
        assert shipper.flush(10)
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(10)]

    def test_backoff_starts_small_and_is_capped(self) -> None:
        """Full-jitter backoff: the first wait is at most 0.5 s, later ones at most 10 s."""
        first = [backoff_s(1, 0.5, 10.0) for _ in range(1000)]
        late = [backoff_s(40, 0.5, 10.0) for _ in range(1000)]
        assert max(first) <= 0.5
        assert max(late) <= 10.0
        assert max(late) > 5.0  # it does grow
        assert min(first) >= 0.0

    def test_retries_are_not_limited_in_number(
        self, fake_http_sink: FakeHTTPSink, make: ShipperFactory
    ) -> None:
        """Fifty failures in a row do not make the engine give up on a batch."""
        fake_http_sink.fail_next(50, status=500)
        shipper = make(HTTPShipper, fake_http_sink.endpoint, retry_initial_s=0.01, retry_max_s=0.02)
        attach(shipper).info("persistent")
        assert shipper.flush(15)
        assert [r["message"] for r in fake_http_sink.records] == ["persistent"]


class TestAnswers:
    def test_400_is_dropped_counted_and_reported_once(
        self,
        fake_datadog: FakeDatadog,
        make: ShipperFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A 400 is not retried: its records are counted as refused with the backend's words."""
        fake_datadog.reject_next(2, status=400, body=b'{"errors":[{"detail":"bad entry"}]}')
        shipper = datadog(make, fake_datadog, max_batch_records=5)
        logger = attach(shipper)
        with caplog.at_level(logging.WARNING, logger="agentuity_logging.internal"):
            for i in range(15):
                logger.info("record %d", i)
            assert shipper.flush(5)
        stats = shipper.stats()
        assert stats["dropped"] == {"refused": 10}
        assert stats["sent"] == 5
        assert "bad entry" in (stats["last_error"] or "")
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1
        assert "bad entry" in refused[0].getMessage()

    def test_413_splits_the_batch_in_halves(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """A 413 splits the batch and retries the halves; nothing is lost."""
        fake_datadog.fail_next(1, status=413)
        shipper = datadog(make, fake_datadog, max_batch_records=40)
        logger = attach(shipper)
        for i in range(40):
            logger.info("record %d", i)
        assert shipper.flush(5)
        assert [len(p) for p in fake_datadog.payloads] == [20, 20]
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(40)]

    def test_single_record_413_is_dropped_as_too_large(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A record the backend refuses as too large even alone is dropped and counted."""
        fake_datadog.fail_next(1, status=413)
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        logger.info("huge")
        assert shipper.flush(5)
        logger.info("next")
        assert shipper.flush(5)
        assert shipper.stats()["dropped"] == {"too_large": 1}
        assert messages(fake_datadog.entries) == ["next"]

    def test_auth_failure_pauses_keeps_records_and_reprobes(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A 403 pauses sending (records kept); a later probe delivers once the key is accepted."""
        wrong = "wrong-key-abcdefghijklmnop"
        shipper = make(DatadogShipper, wrong, url=fake_datadog.url, auth_retry_s=0.5)
        logger = attach(shipper)
        for i in range(5):
            logger.info("record %d", i)
        start = time.monotonic()
        assert not shipper.flush(5)
        assert time.monotonic() - start < 2  # flush does not wait out a pause
        stats = shipper.stats()
        assert stats["queue_depth"] == 5
        assert "credentials" in (stats["last_error"] or "")
        fake_datadog.api_key = wrong
        assert fake_datadog.wait_for(lambda: len(fake_datadog.entries) == 5, timeout_s=5)

    def test_auth_error_names_the_shipper_never_the_key(
        self,
        fake_datadog: FakeDatadog,
        make: ShipperFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The one error about refused credentials names the shipper and hides the key."""
        wrong = "wrong-key-abcdefghijklmnop"
        shipper = make(DatadogShipper, wrong, url=fake_datadog.url)
        with caplog.at_level(logging.ERROR, logger="agentuity_logging.internal"):
            attach(shipper).info("record")
            shipper.flush(3)
        errors = [r.getMessage() for r in caplog.records]
        assert len(errors) == 1
        assert "DatadogShipper" in errors[0]
        assert wrong not in errors[0]
        assert wrong not in str(shipper.stats())

    def test_partial_success_rejections_are_counted(self, fake_otlp: FakeOTLP, make: ShipperFactory) -> None:
        """OTLP partial success: records the collector rejected are counted as dropped."""
        fake_otlp.partial_success_next(2, "policy says no")
        shipper = make(OTLPShipper, fake_otlp.url)
        logger = attach(shipper)
        for i in range(5):
            logger.info("record %d", i)
        assert shipper.flush(5)
        stats = shipper.stats()
        assert stats["dropped"] == {"rejected": 2}
        assert stats["sent"] == 3
        assert "policy says no" in (stats["last_error"] or "")


def _stall_then_queue(shipper: DatadogShipper, fake: FakeDatadog, logger: logging.Logger, n: int) -> None:
    """Queue ``n`` records while the worker waits for a slow answer, so they leave together after it."""
    fake.slow_next(1, seconds=0.5)
    logger.info("warm-up")
    shipper.flush(0.01)  # the warm-up record leaves now and stalls in the fake for 0.5 s
    assert fake.wait_for(lambda: fake._in_flight == 1, 5)
    for i in range(n):
        logger.info("record %d", i)


def _four_in_flight(make: ShipperFactory, fake: FakeDatadog, seconds: float) -> DatadogShipper:
    """A warm-up, then forty records sent as four batches of ten at once, each answered after ``seconds``."""
    shipper = datadog(make, fake, max_in_flight=4, max_batch_records=10, flush_interval_s=60)
    _stall_then_queue(shipper, fake, attach(shipper), 40)
    fake.slow_next(4, seconds=seconds)
    assert shipper.flush(10)
    assert fake.in_flight_peak == 4
    return shipper


class TestRequestsInFlight:
    """``max_in_flight=N``: up to N batches at once, each on its own connection, acknowledged in order."""

    def test_batches_go_out_at_once_on_their_own_connections(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Forty queued records in batches of ten: four requests in flight together, four connections."""
        _four_in_flight(make, fake_datadog, 0.3)
        batches = [r for r in fake_datadog.requests if r.status == 202][1:]
        assert len(batches) == 4
        assert len({r.client_port for r in batches}) == 4
        assert sorted(messages(fake_datadog.entries)[1:], key=lambda m: int(m.split()[1])) == [
            f"record {i}" for i in range(40)
        ]

    def test_one_request_in_flight_by_default(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """Without the option, batches go one after the other on one connection, in order."""
        shipper = datadog(make, fake_datadog, max_batch_records=10, flush_interval_s=60)
        logger = attach(shipper)
        _stall_then_queue(shipper, fake_datadog, logger, 40)
        fake_datadog.slow_next(4, seconds=0.05)
        assert shipper.flush(10)
        assert fake_datadog.in_flight_peak == 1
        assert len({r.client_port for r in fake_datadog.requests}) == 1
        assert messages(fake_datadog.entries)[1:] == [f"record {i}" for i in range(40)]

    def test_failures_in_any_part_lose_and_duplicate_nothing(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """5xx answers and a 413 land on whichever parts: every record still arrives exactly once."""
        fake_datadog.fail_next(3, status=503)
        fake_datadog.fail_next(2, status=413)
        shipper = datadog(make, fake_datadog, max_in_flight=4, max_batch_records=10)
        logger = attach(shipper)
        for i in range(200):
            logger.info("record %d", i)
        assert shipper.flush(15)
        assert Counter(messages(fake_datadog.entries)) == Counter(f"record {i}" for i in range(200))
        stats = shipper.stats()
        assert stats["sent"] == 200
        assert stats["retried"] >= 30
        assert stats["dropped"] == {}

    def test_nothing_after_an_unfinished_part_is_acknowledged(
        self,
        fake_datadog: FakeDatadog,
        make: ShipperFactory,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The first part refused (401), the others delivered: all stay spooled, and go out again."""
        handle = fake_datadog.handle

        def refuse_the_first_part(request: ReceivedRequest) -> Reply:
            body = decompress(request.raw_body, request.header("content-encoding"))
            if b'"record 0"' in body:
                return fake_datadog.error_reply(request, 403, "Forbidden")
            return handle(request)

        monkeypatch.setattr(fake_datadog, "handle", refuse_the_first_part)
        spool = tmp_path / "spool"
        options: dict[str, Any] = {"max_in_flight": 4, "max_batch_records": 10, "flush_interval_s": 60}
        shipper = datadog(make, fake_datadog, spool_dir=spool, **options)
        logger = attach(shipper)
        _stall_then_queue(shipper, fake_datadog, logger, 40)
        assert not shipper.flush(3)
        assert fake_datadog.wait_for(lambda: len(fake_datadog.entries) == 31, 5)
        shipper.close(1)
        assert shipper.stats()["spooled"] == 40

        monkeypatch.setattr(fake_datadog, "handle", handle)
        replay = datadog(make, fake_datadog, spool_dir=spool, **options)
        assert replay.flush(10)
        counts = Counter(messages(fake_datadog.entries))
        # At least once: the parts after the refused one arrive twice, the rest once, none lost.
        assert counts == Counter({"warm-up": 1} | {f"record {i}": 1 if i < 10 else 2 for i in range(40)})

    def test_senders_never_ship_their_own_logs(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """Sender threads count as the shipper's own: their diagnostics never come back in."""
        from agentuity_logging._delivery import _engine

        shipper = datadog(make, fake_datadog, max_in_flight=4, max_batch_records=10)
        handler = ShippingHandler(shipper)
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        try:
            logger = logging.getLogger("tests.app")
            _stall_then_queue(shipper, fake_datadog, logger, 40)
            fake_datadog.fail_next(8, status=503)  # retries, reported from whichever thread
            assert shipper.flush(10)
            senders = [t for t in threading.enumerate() if t.name.startswith("agentuity-logging-datadog-")]
            assert len(senders) == 3
            assert all(t.ident in _engine._worker_threads for t in senders)
        finally:
            root.removeHandler(handler)
        assert Counter(messages(fake_datadog.entries)) == Counter(
            ["warm-up", *(f"record {i}" for i in range(40))]
        )
        assert shipper.stats()["enqueued"] == 41

    @pytest.mark.forks
    @pytest.mark.skipif(sys.platform == "win32", reason="fork")
    def test_a_forked_child_sends_on_senders_of_its_own(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Senders started in the parent do not exist in a child: it starts its own, resends nothing."""
        shipper = _four_in_flight(make, fake_datadog, 0.2)
        logger = attach(shipper)

        def child() -> bool:
            for i in range(40):
                logger.info("child %d", i)
            return shipper.flush(10)

        assert in_child(child) == 0
        counts = Counter(messages(fake_datadog.entries))
        assert counts == Counter(
            ["warm-up", *(f"record {i}" for i in range(40)), *(f"child {i}" for i in range(40))]
        )

    def test_close_is_bounded_and_stops_the_senders(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A backend that is down: close() keeps its bound, and no sender thread outlives it."""
        fake_datadog.down()
        shipper = datadog(make, fake_datadog, max_in_flight=4, max_batch_records=10)
        logger = attach(shipper)
        for i in range(100):
            logger.info("record %d", i)
        shipper.flush(0.5)
        start = time.monotonic()
        assert not shipper.close(0.5)
        assert time.monotonic() - start < 3
        assert poll_until(
            lambda: not [t for t in threading.enumerate() if t.name.startswith("agentuity-logging-datadog")],
            5,
        )


class TestFlushAndClose:
    def test_flush_waits_until_delivered(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """flush() returns True only once the backend has every record."""
        fake_datadog.slow_next(1, seconds=0.5)
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        for i in range(10):
            logger.info("record %d", i)
        assert shipper.flush(5)
        assert len(fake_datadog.entries) == 10

    def test_flush_times_out_while_the_backend_is_down(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """flush(timeout) returns False at its deadline when delivery cannot finish."""
        fake_datadog.down()
        shipper = datadog(make, fake_datadog)
        attach(shipper).info("record")
        start = time.monotonic()
        assert not shipper.flush(0.5)
        assert time.monotonic() - start < 1.5
        shipper.close(0)

    def test_flush_with_nothing_queued_is_immediate(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """flush() on an idle shipper returns True at once without starting anything."""
        shipper = datadog(make, fake_datadog)
        assert shipper.flush(0)
        assert shipper._engine._thread is None

    def test_close_is_idempotent(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """Closing twice is harmless and both calls report delivery."""
        shipper = datadog(make, fake_datadog)
        attach(shipper).info("record")
        assert shipper.close(5)
        assert shipper.close(5)
        assert shipper.closed

    def test_close_is_bounded_while_the_backend_is_down(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """close(timeout) returns by its deadline and counts what could not be delivered."""
        fake_datadog.down()
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        for i in range(10):
            logger.info("record %d", i)
        start = time.monotonic()
        assert not shipper.close(1.0)
        assert time.monotonic() - start < 2.0
        assert shipper.stats()["dropped"] == {"shutdown": 10}

    def test_close_is_bounded_by_a_hanging_request(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A request that hangs does not hold close() past its deadline."""
        fake_datadog.slow_next(1, seconds=4.0)
        shipper = datadog(make, fake_datadog)
        attach(shipper).info("record")
        shipper._engine.nudge()
        assert fake_datadog.wait_for(lambda: True, timeout_s=0.1)
        start = time.monotonic()
        shipper.close(0.5)
        assert time.monotonic() - start < 1.5

    def test_close_all_shares_one_deadline(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """At exit every shipper flushes at once: two unreachable backends cost one timeout."""
        from agentuity_logging._delivery._engine import close_all

        fake_datadog.down()
        shippers = [datadog(make, fake_datadog, close_timeout_s=1.0) for _ in range(3)]
        for shipper in shippers:
            attach(shipper).info("stuck")
        start = time.monotonic()
        close_all()
        assert time.monotonic() - start < 2.0
        assert all(shipper.closed for shipper in shippers)

    def test_records_after_close_are_dropped_and_counted(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Logging to a closed shipper drops the record and counts it as closed."""
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        shipper.close(1)
        logger.info("late")
        assert shipper.stats()["dropped"] == {"closed": 1}

    def test_atexit_hook_registered_on_start_and_removed_on_close(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The exit flush is registered when the worker starts and unregistered by close()."""
        from agentuity_logging._delivery import _engine

        calls: list[str] = []
        monkeypatch.setattr(_engine.atexit, "register", lambda f: calls.append("register"))
        monkeypatch.setattr(_engine.atexit, "unregister", lambda f: calls.append("unregister"))
        shipper = datadog(make, fake_datadog)
        assert calls == []
        attach(shipper).info("record")
        assert calls == ["register"]
        shipper.close(2)
        assert calls == ["register", "unregister"]

    def test_worker_start_failure_does_not_raise(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """At interpreter shutdown a thread cannot start: the log call still returns quietly."""

        def refuse(self: threading.Thread) -> None:
            raise RuntimeError("can't create new thread at interpreter shutdown")

        shipper = datadog(make, fake_datadog)
        monkeypatch.setattr(threading.Thread, "start", refuse)
        logger = attach(shipper)
        logger.info("record")
        monkeypatch.undo()
        logger.info("after")
        assert shipper.closed
        assert shipper.stats()["dropped"] == {"closed": 1}


class TestStats:
    def test_stats_has_the_documented_keys(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """stats() returns exactly the documented keys with counts of what happened."""
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        for i in range(3):
            logger.info("record %d", i)
        assert shipper.flush(5)
        assert shipper.stats() == {
            "enqueued": 3,
            "sent": 3,
            "retried": 0,
            "dropped": {},
            "spooled": 0,
            "queue_depth": 0,
            "last_error": None,
        }

    def test_last_error_describes_a_transport_failure(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """last_error says what went wrong in words."""
        fake_datadog.down()
        shipper = datadog(make, fake_datadog)
        attach(shipper).info("record")
        shipper.flush(0.5)
        assert "Connection refused" in (shipper.stats()["last_error"] or "")
        shipper.close(0)


class TestEngineOptions:
    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("max_queue_records", 0),
            ("max_queue_records", "10"),
            ("flush_interval_s", 0),
            ("flush_interval_s", float("nan")),
            ("block_timeout_s", -1),
            ("retry_max_s", True),
            ("max_in_flight", 0),
            ("max_in_flight", 33),
            ("max_in_flight", 2.0),
        ],
    )
    def test_bad_option_is_a_configuration_error(
        self, fake_datadog: FakeDatadog, option: str, value: object
    ) -> None:
        """A malformed option fails at construction, naming the option."""
        from agentuity_logging import ConfigurationError

        with pytest.raises(ConfigurationError, match=option):
            DatadogShipper(KEY, url=fake_datadog.url, **{option: value})  # type: ignore[arg-type]

    def test_unknown_option_is_a_type_error(self, fake_datadog: FakeDatadog) -> None:
        """A misspelt option is refused like any unexpected keyword argument."""
        with pytest.raises(TypeError, match="flush_interval"):
            DatadogShipper(KEY, url=fake_datadog.url, flush_interval=1)  # type: ignore[call-arg]

    @pytest.mark.parametrize(("option", "expected"), [(None, 2000), (5000, 5000), (50_000, 5000), (100, 100)])
    def test_loki_batches_default_below_their_bound(
        self, fake_loki: FakeLoki, option: int | None, expected: int
    ) -> None:
        """Loki pushes 2,000 records at most by default; max_batch_records may go up to 5,000."""
        from agentuity_logging._delivery._loki import LokiProtocol

        options = {} if option is None else {"max_batch_records": option}
        engine = DeliveryEngine(LokiProtocol(fake_loki.url), name="t", **options)
        try:
            assert engine._batch_records == expected
        finally:
            engine.close(0)

    def test_loki_pushes_hold_2000_records_by_default(
        self, fake_loki: FakeLoki, make: ShipperFactory
    ) -> None:
        """4,500 queued records leave as pushes of 2,000, 2,000 and 500."""
        shipper = make(LokiShipper, fake_loki.url, encoding="json", flush_interval_s=60, **FAST_RETRY)
        logger = attach(shipper)
        for i in range(4500):
            logger.info("record %d", i)
        assert shipper.flush(15)
        sizes = [sum(len(stream.entries) for stream in push.streams) for push in fake_loki.pushes]
        assert sorted(sizes) == [500, 2000, 2000]

    def test_batch_bounds_cannot_exceed_the_protocol(self, fake_datadog: FakeDatadog) -> None:
        """max_batch_records above the protocol's limit is clamped to it."""
        from agentuity_logging._delivery._datadog import DatadogProtocol

        engine = DeliveryEngine(
            DatadogProtocol(KEY, url=fake_datadog.url), name="t", max_batch_records=50_000
        )
        try:
            assert engine._batch_records == 1000
        finally:
            engine.close(0)
