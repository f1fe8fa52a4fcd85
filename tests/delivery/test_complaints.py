"""The fifteen complaints about existing Python shippers (``protocols.md``): one test each shows we do
not have the problem."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import logging.config
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import orjson
import pytest

import agentuity_logging as al
from agentuity_logging._records import format_timestamp
from agentuity_logging.shipping import DatadogShipper, LokiShipper, ShippingHandler
from agentuity_logging.stdlib import SessionContextFilter
from tests.fakes import FakeDatadog, FakeLoki
from tests.forking import in_child

from .shipping_support import FAST_RETRY, ShipperFactory, attach, messages, shipper_factory


@pytest.fixture
def make() -> Iterator[ShipperFactory]:
    """Creates shippers and closes them after the test."""
    yield from shipper_factory()


def datadog(make: ShipperFactory, fake: FakeDatadog, **options: Any) -> DatadogShipper:
    return make(DatadogShipper, fake.api_key, url=fake.url, **{**FAST_RETRY, **options})


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


class TestComplaints:
    def test_01_no_network_io_inside_emit(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No socket is touched on the logging thread: emit() only appends to a queue."""
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        logger.info("warm up")  # starts the worker
        io_threads: list[str] = []
        original = socket.socket.sendall

        def spy(self: socket.socket, *args: Any, **kwargs: Any) -> Any:
            io_threads.append(threading.current_thread().name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "sendall", spy)
        for i in range(50):
            logger.info("record %d", i)
        assert shipper.flush(5)
        assert io_threads
        assert threading.current_thread().name not in io_threads

    def test_02_records_are_batched(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """A thousand records travel in one request, not a thousand."""
        shipper = datadog(make, fake_datadog, flush_interval_s=30)
        logger = attach(shipper)
        for i in range(1000):
            logger.info("record %d", i)
        assert shipper.flush(5)
        assert len(fake_datadog.requests) == 1
        assert len(fake_datadog.entries) == 1000

    def test_03_nothing_to_start_by_hand(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """There is no listener to forget to start: the worker starts with the first record."""
        shipper = datadog(make, fake_datadog, flush_interval_s=0.2)
        attach(shipper).info("delivered without any start() call")
        assert fake_datadog.wait_for(lambda: len(fake_datadog.entries) == 1, timeout_s=3)

    def test_04_a_failed_push_never_raises_into_the_log_call(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A backend answering 500 then 400: no exception, no "--- Logging error ---", a retry."""
        fake_datadog.fail_next(2, status=500)
        fake_datadog.reject_next(1, status=400)
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        logger.info("first")
        assert shipper.flush(5)
        logger.info("second")
        assert shipper.flush(5)
        assert "Logging error" not in capsys.readouterr().err
        assert shipper.stats()["retried"] == 2
        assert shipper.stats()["dropped"] == {"refused": 1}

    def test_05_fields_never_become_loki_labels(self, fake_loki: FakeLoki, make: ShipperFactory) -> None:
        """Extra fields and IDs stay out of the labels: one stream however many sessions."""
        shipper = make(LokiShipper, fake_loki.url, service="planner")
        logger = attach(shipper)
        logger.handlers[0].addFilter(SessionContextFilter())
        for i in range(20):
            with al.session():
                logger.info("request", extra={"user_id": f"u{i}", "request_id": f"r{i}"})
        assert shipper.flush(5)
        entries = fake_loki.stored()
        assert len(entries) == 20
        assert {tuple(sorted(e.labels)) for e in entries} == {("level", "service")}
        assert len({e.structured_metadata["agentuitySessionId"] for e in entries}) == 20
        assert orjson.loads(entries[0].line)["user_id"] == "u0"

    def test_06_concurrent_writers_with_equal_timestamps_are_accepted(
        self, fake_loki: FakeLoki, make: ShipperFactory
    ) -> None:
        """Four threads writing one stream with the very same timestamp: nothing is rejected."""
        shipper = make(LokiShipper, fake_loki.url, encoding="json")
        handler = ShippingHandler(shipper)
        stamp = format_timestamp(time.time())

        def write(worker: int) -> None:
            for i in range(200):
                event = {"timestamp": stamp, "level": "info", "logger": "w", "message": f"{worker}-{i}"}
                handler.handle_event(event, logging.INFO)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert shipper.flush(10)
        assert shipper.stats()["dropped"] == {}
        assert len({orjson.loads(e.line)["message"] for e in fake_loki.stored()}) == 800

    @pytest.mark.forks
    @pytest.mark.skipif(sys.platform == "win32", reason="fork")
    def test_07_forked_workers_export(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """A forked worker (gunicorn, multiprocessing) ships its own records."""
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        logger.info("parent")
        assert shipper.flush(5)

        def child() -> bool:
            logger.info("from the worker")
            return shipper.flush(10)

        assert in_child(child) == 0
        assert messages(fake_datadog.entries) == ["parent", "from the worker"]

    def test_08_shutdown_does_not_hang_on_an_unreachable_backend(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """close() returns within its timeout although retries would go on forever."""
        fake_datadog.down()
        shipper = datadog(make, fake_datadog)
        attach(shipper).info("stuck")
        start = time.monotonic()
        shipper.close(1.0)
        assert time.monotonic() - start < 2.0

    def test_09_no_deadlock_on_the_logging_lock(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """dictConfig and logging.shutdown (both under the logging lock) never wait on the worker."""
        fake_datadog.fail_next(20, status=503)  # the worker keeps retrying and reporting
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        for i in range(100):
            logger.info("record %d", i)
        handler = logger.handlers[0]

        def reconfigure() -> None:
            logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
            logging.shutdown([lambda: handler])  # type: ignore[list-item]

        thread = threading.Thread(target=reconfigure)
        thread.start()
        thread.join(5)
        assert not thread.is_alive()
        assert shipper.flush(10)
        assert len(fake_datadog.entries) == 100

    def test_10_the_shipper_never_ships_its_own_logs(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """On the root logger at DEBUG, failures and HTTP client logs never feed back in."""
        fake_datadog.fail_next(3, status=503)
        shipper = datadog(make, fake_datadog)
        handler = ShippingHandler(shipper)
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)
        try:
            logging.getLogger("tests.app").info("only this one")
            assert shipper.flush(5)
        finally:
            root.removeHandler(handler)
        assert messages(fake_datadog.entries) == ["only this one"]
        assert shipper.stats()["enqueued"] == 1

    def test_11_no_silent_drops_and_an_opt_in_blocking_mode(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Overflow is counted and said once; block_timeout_s waits instead of dropping."""
        dropping = datadog(make, fake_datadog, max_queue_records=5, flush_interval_s=30)
        with caplog.at_level(logging.WARNING, logger="agentuity_logging.internal"):
            logger = attach(dropping)
            for i in range(10):
                logger.info("record %d", i)
        assert dropping.stats()["dropped"] == {"queue_full": 5}
        assert any("queue full" in r.getMessage() for r in caplog.records)
        blocking = datadog(make, fake_datadog, max_queue_records=5, max_batch_records=5, block_timeout_s=5)
        logger = attach(blocking)
        for i in range(30):
            logger.info("blocking %d", i)
        assert blocking.flush(5)
        assert blocking.stats()["dropped"] == {}

    def test_12_non_primitive_fields_are_rendered_not_dropped(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Datetimes, decimals, sets, dataclasses and arbitrary objects arrive rendered."""
        shipper = datadog(make, fake_datadog)
        extra = {
            "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            "amount": Decimal("1.10"),
            "tags": {"b", "a"},
            "point": Point(1, 2),
            "thing": Opaque(),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            attach(shipper).info("rich", extra=extra)
            assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert entry["when"] == "2026-01-02T03:04:05+00:00"
        assert entry["amount"] == "1.10"
        assert entry["tags"] == ["a", "b"]
        assert entry["point"] == {"x": 1, "y": 2}
        assert entry["thing"] == "<Opaque thing>"

    def test_13_context_survives_threads_and_executors(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Records logged in an executor inside a session reach the backend with its IDs."""
        shipper = datadog(make, fake_datadog)
        logger = attach(shipper)
        logger.handlers[0].addFilter(SessionContextFilter())

        async def main() -> str:
            with al.session() as session:
                loop = asyncio.get_running_loop()
                with al.ContextThreadPoolExecutor(max_workers=2) as pool:
                    await loop.run_in_executor(pool, logger.info, "in executor")
                await asyncio.to_thread(logger.info, "in to_thread")
                return session.id

        session_id = asyncio.run(main())
        assert shipper.flush(5)
        assert [e["agentuitySessionId"] for e in fake_datadog.entries] == [session_id, session_id]

    @pytest.mark.forks
    @pytest.mark.skipif(sys.platform == "win32", reason="fork")
    def test_14_frequent_forks_never_deadlock(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """Forking ten times while another thread logs non-stop: every child ships and exits."""
        shipper = datadog(make, fake_datadog, max_queue_records=2000)
        logger = attach(shipper)
        stop = threading.Event()

        def chatter() -> None:
            while not stop.is_set():
                logger.debug("background")

        thread = threading.Thread(target=chatter)
        thread.start()
        codes = []
        try:
            for n in range(10):

                def child(n: int = n) -> bool:
                    logger.info("child %d", n)
                    return shipper.flush(10)

                codes.append(in_child(child, deadline_s=10))
        finally:
            stop.set()
            thread.join()
        assert codes == [0] * 10
        assert shipper.flush(10)
        children = sorted(m for m in messages(fake_datadog.entries) if m.startswith("child"))
        assert children == sorted(f"child {n}" for n in range(10))

    def test_15_datadog_trace_ids_size_limits(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """structlog events get dd.trace_id (low 64 bits, decimal); 10 MB of logs never cause a 413."""
        shipper = datadog(make, fake_datadog)
        handler = ShippingHandler(shipper)
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        handler.handle_event(
            {"level": "info", "message": "traced", "trace_id": trace_id, "span_id": "b7ad6b7169203331"},
            logging.INFO,
        )
        logger = attach(shipper)
        for i in range(50):
            logger.info("big %d %s", i, "x" * 200_000)
        assert shipper.flush(15)
        traced = fake_datadog.entries[0]
        assert traced["dd"]["trace_id"] == str(int(trace_id, 16) & (2**64 - 1))
        assert traced["dd"]["span_id"] == str(int("b7ad6b7169203331", 16))
        assert all(r.status == 202 for r in fake_datadog.requests)
        assert len(fake_datadog.requests) >= 2
        assert len(fake_datadog.entries) == 51
