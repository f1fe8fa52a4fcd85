"""The public shippers: one contract across every backend, then what each backend adds."""

from __future__ import annotations

import io
import logging
import logging.config
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

import agentuity_logging as al
from agentuity_logging._records import format_timestamp
from agentuity_logging._spans import SPAN_LOGGER_NAME
from agentuity_logging.shipping import (
    DatadogShipper,
    HTTPShipper,
    LokiShipper,
    OTLPShipper,
    Shipper,
    ShippingHandler,
)
from agentuity_logging.stdlib import SessionContextFilter
from tests.fakes import FakeDatadog, FakeHTTPSink, FakeLoki, FakeOTLP

from .shipping_support import FAST_RETRY, ShipperFactory, attach, messages, shipper_factory

SESSION = "agentuitySessionId"
THREAD = "agentuityThreadId"


@pytest.fixture
def make() -> Iterator[ShipperFactory]:
    """Creates shippers and closes them after the test."""
    yield from shipper_factory()


@dataclass
class Backend:
    """A shipper and a way to read back what its fake received, as schema-like dicts."""

    shipper: Shipper
    received: Callable[[], list[dict[str, Any]]]


def _loki_received(fake: FakeLoki) -> list[dict[str, Any]]:
    out = []
    for entry in fake.stored():
        record = orjson.loads(entry.line)
        record["_labels"] = entry.labels
        record["_metadata"] = entry.structured_metadata
        out.append(record)
    return out


def _otlp_received(fake: FakeOTLP) -> list[dict[str, Any]]:
    return [{"message": r.body, **r.attributes, "_resource": r.resource} for r in fake.records]


BACKENDS = [
    "datadog",
    "loki-protobuf",
    "loki-json",
    "otlp-protobuf",
    "otlp-json",
    "http-ndjson",
    "http-json_array",
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, make: ShipperFactory) -> Backend:
    """Each shipper against its fake backend."""
    kind, _, variant = request.param.partition("-")
    options: dict[str, Any] = {"max_batch_records": 50, **FAST_RETRY}
    if kind == "datadog":
        dd: FakeDatadog = request.getfixturevalue("fake_datadog")
        shipper: Shipper = make(DatadogShipper, dd.api_key, url=dd.url, **options)
        return Backend(shipper, lambda: dd.entries)
    if kind == "loki":
        loki: FakeLoki = request.getfixturevalue("fake_loki")
        shipper = make(LokiShipper, loki.url, encoding=variant, **options)
        return Backend(shipper, lambda: _loki_received(loki))
    if kind == "otlp":
        otlp: FakeOTLP = request.getfixturevalue("fake_otlp")
        shipper = make(OTLPShipper, otlp.url, encoding=variant, **options)
        return Backend(shipper, lambda: _otlp_received(otlp))
    sink: FakeHTTPSink = request.getfixturevalue("fake_http_sink")
    shipper = make(HTTPShipper, sink.endpoint, format=variant, **options)
    return Backend(shipper, lambda: list(sink.records))


def stamped(shipper: Shipper) -> logging.Logger:
    """A logger feeding ``shipper`` whose records carry the session IDs."""
    logger = attach(shipper)
    logger.handlers[0].addFilter(SessionContextFilter())
    return logger


class TestEveryBackend:
    def test_every_record_arrives_once_in_order(self, backend: Backend) -> None:
        """Three hundred records over several batches arrive once each, in order."""
        logger = attach(backend.shipper)
        for i in range(300):
            logger.info("record %d", i)
        assert backend.shipper.flush(10)
        assert messages(backend.received()) == [f"record {i}" for i in range(300)]

    def test_session_and_thread_ids_arrive(self, backend: Backend) -> None:
        """Records logged in a session carry its session and thread IDs to the backend."""
        logger = stamped(backend.shipper)
        with al.session() as session:
            logger.info("inside")
        assert backend.shipper.flush(5)
        (record,) = backend.received()
        assert record[SESSION] == session.id
        assert record[THREAD] == session.thread.id

    def test_structlog_events_arrive(self, backend: Backend) -> None:
        """A schema dict handed to the handler (the structlog path) is shipped like a record."""
        handler = ShippingHandler(backend.shipper)
        handler.handle_event(
            {
                "timestamp": format_timestamp(time.time()),
                "level": "info",
                "logger": "s",
                "message": "from structlog",
                "answer": 42,
            },
            logging.INFO,
        )
        assert backend.shipper.flush(5)
        (record,) = backend.received()
        assert record["message"] == "from structlog"
        assert record["answer"] == 42

    def test_secret_fields_never_leave_the_process(self, backend: Backend) -> None:
        """Fields named like secrets arrive masked; token counts arrive intact."""
        logger = attach(backend.shipper)
        logger.info("login", extra={"password": "hunter2", "prompt_tokens": 812})
        assert backend.shipper.flush(5)
        (record,) = backend.received()
        assert record["password"] == "[REDACTED]"
        assert record["prompt_tokens"] == 812

    def test_invalid_utf8_is_delivered_escaped(self, backend: Backend) -> None:
        """Lone surrogates and undecodable bytes are escaped, never a reason to drop."""
        logger = attach(backend.shipper)
        logger.info("bad \udcff text", extra={"raw": b"\xff\xfe"})
        assert backend.shipper.flush(5)
        (record,) = backend.received()
        assert record["message"].startswith("bad ")
        assert "ff" in record["message"]
        assert backend.shipper.stats()["dropped"] == {}

    def test_oversize_record_is_truncated_not_dropped(self, backend: Backend) -> None:
        """A 2 MB message is cut with a marker and delivered."""
        logger = attach(backend.shipper)
        logger.info("x" * 2_000_000)
        assert backend.shipper.flush(10)
        (record,) = backend.received()
        assert "truncated" in record["message"]
        assert len(record["message"]) < 1_100_000


class TestEveryBackendUnderFaults:
    @staticmethod
    def fake_of(request: pytest.FixtureRequest) -> Any:
        kind = request.node.callspec.params["backend"].partition("-")[0]
        name = {"datadog": "fake_datadog", "loki": "fake_loki", "otlp": "fake_otlp"}
        return request.getfixturevalue(name.get(kind, "fake_http_sink"))

    def test_5xx_storm(self, backend: Backend, request: pytest.FixtureRequest) -> None:
        """Eight 5xx answers in a row: every record arrives exactly once."""
        self.fake_of(request).fail_next(8, status=503)
        logger = attach(backend.shipper)
        for i in range(300):
            logger.info("record %d", i)
        assert backend.shipper.flush(10)
        assert messages(backend.received()) == [f"record {i}" for i in range(300)]

    def test_429_with_retry_after(self, backend: Backend, request: pytest.FixtureRequest) -> None:
        """Rate limited twice (with Retry-After): every record arrives exactly once."""
        self.fake_of(request).rate_limit_next(2, retry_after="0.2")
        logger = attach(backend.shipper)
        for i in range(120):
            logger.info("record %d", i)
        assert backend.shipper.flush(10)
        assert messages(backend.received()) == [f"record {i}" for i in range(120)]
        assert backend.shipper.stats()["retried"] >= 2

    def test_dropped_connections(self, backend: Backend, request: pytest.FixtureRequest) -> None:
        """Connections closed without an answer are retried; nothing is lost or doubled."""
        self.fake_of(request).drop_connection_next(2)
        logger = attach(backend.shipper)
        for i in range(120):
            logger.info("record %d", i)
        assert backend.shipper.flush(10)
        assert messages(backend.received()) == [f"record {i}" for i in range(120)]


class TestVolume:
    def test_a_burst_of_100000_records_arrives_complete(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """100,000 records logged as fast as possible: none dropped, each delivered once, in order."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        logger = attach(shipper)
        for i in range(100_000):
            logger.info("record %d", i)
        assert shipper.flush(60)
        stats = shipper.stats()
        assert stats["dropped"] == {}
        assert stats["sent"] == 100_000
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(100_000)]


class TestDatadogShipper:
    def test_entries_carry_reserved_and_custom_attributes(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """IDs and fields are top-level attributes next to ddsource, service, hostname and status."""
        shipper = make(
            DatadogShipper,
            fake_datadog.api_key,
            url=fake_datadog.url,
            service="planner",
            hostname="host-1",
            tags={"env": "test"},
        )
        logger = stamped(shipper)
        with al.session() as session:
            logger.warning("careful", extra={"step": 3})
        assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert entry[SESSION] == session.id
        assert entry["step"] == 3
        assert entry["service"] == "planner"
        assert entry["hostname"] == "host-1"
        assert entry["ddsource"] == "python"
        assert entry["ddtags"] == "env:test"
        assert entry["status"] == "warning"

    def test_a_span_records_status_is_kept_as_status_(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A span's own ``status`` arrives as ``status_``; Datadog's ``status`` stays the level."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        span_logger = logging.getLogger(SPAN_LOGGER_NAME)
        handler = ShippingHandler(shipper)
        level = span_logger.level
        span_logger.addHandler(handler)
        span_logger.setLevel(logging.INFO)
        try:
            with al.session():
                with al.span("fine"):
                    pass
                with pytest.raises(ValueError), al.span("broken"):
                    raise ValueError("no")
        finally:
            span_logger.removeHandler(handler)
            span_logger.setLevel(level)
        assert shipper.flush(5)
        logs = {log.attributes["name"]: log for log in fake_datadog.logs}
        assert (logs["fine"].status, logs["fine"].attributes["status_"]) == ("info", "ok")
        assert (logs["broken"].status, logs["broken"].attributes["status_"]) == ("error", "error")

    def test_fields_named_like_reserved_attributes_get_an_underscore(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A field we would overwrite (status, hostname, ddsource, ddtags) is kept with a ``_`` suffix."""
        shipper = make(
            DatadogShipper,
            fake_datadog.api_key,
            url=fake_datadog.url,
            hostname="host-1",
            tags={"env": "test"},
        )
        fields = {"status": "ok", "status_": "taken", "hostname": "db-2", "ddsource": "mine", "ddtags": "x"}
        attach(shipper).warning("careful", extra=fields)
        assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert {k: entry[k] for k in ("status", "hostname", "ddsource", "ddtags")} == {
            "status": "warning",
            "hostname": "host-1",
            "ddsource": "python",
            "ddtags": "env:test",
        }
        assert {k: entry[k] for k in ("status__", "status_", "hostname_", "ddsource_", "ddtags_")} == {
            "status__": "ok",
            "status_": "taken",
            "hostname_": "db-2",
            "ddsource_": "mine",
            "ddtags_": "x",
        }

    def test_a_records_service_wins_over_the_shippers(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """service= names records that have no service of their own, as configure(service=) does."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, service="api")
        log = attach(shipper)
        log.info("own", extra={"service": "webhooks"})
        log.info("default")
        assert shipper.flush(5)
        assert {entry["message"]: entry["service"] for entry in fake_datadog.entries} == {
            "own": "webhooks",
            "default": "api",
        }

    def test_a_records_service_and_tags_are_used_when_none_are_configured(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """Nothing overwrites ``service`` or ``ddtags`` without ``service=``/``tags=``: no rename."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        attach(shipper).info("hi", extra={"service": "webhooks", "ddtags": "team:a"})
        assert shipper.flush(5)
        (log,) = fake_datadog.logs
        assert (log.service, log.tags[0]) == ("webhooks", "team:a")
        assert {"service_", "ddtags_"}.isdisjoint(log.entry)

    def test_requests_are_gzipped_json_with_the_key_header(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """The intake gets gzip'd JSON arrays with the DD-API-KEY header."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        attach(shipper).info("hello")
        assert shipper.flush(5)
        (request,) = fake_datadog.requests
        assert request.path == "/api/v2/logs"
        assert request.header("content-encoding") == "gzip"
        assert request.header("dd-api-key") == fake_datadog.api_key


class TestLokiShipper:
    @pytest.mark.parametrize("encoding", ["protobuf", "json"])
    def test_ids_are_structured_metadata_never_labels(
        self, fake_loki: FakeLoki, make: ShipperFactory, encoding: str
    ) -> None:
        """Session and thread IDs go to structured metadata and the line, labels stay bounded."""
        shipper = make(LokiShipper, fake_loki.url, encoding=encoding, service="planner")
        logger = stamped(shipper)
        with al.session() as session:
            logger.info("inside")
        assert shipper.flush(5)
        (entry,) = _loki_received(fake_loki)
        assert entry["_metadata"][SESSION] == session.id
        assert SESSION not in entry["_labels"]
        assert THREAD not in entry["_labels"]
        assert entry["_labels"] == {"service": "planner", "level": "info"}

    def test_tenant_header_is_sent(self, make: ShipperFactory) -> None:
        """tenant_id becomes X-Scope-OrgID and entries land in that tenant."""
        with FakeLoki(require_tenant=True) as fake:
            shipper = make(LokiShipper, fake.url, tenant_id="team-a")
            attach(shipper).info("tenanted")
            assert shipper.flush(5)
            assert ["tenanted" in e.line for e in fake.stored("team-a")] == [True]


class TestOTLPShipper:
    def test_resource_and_severity(self, fake_otlp: FakeOTLP, make: ShipperFactory) -> None:
        """service.name is a resource attribute; the level becomes the severity number."""
        shipper = make(OTLPShipper, fake_otlp.url, service="planner", resource={"env": "test"})
        attach(shipper).error("failed")
        assert shipper.flush(5)
        (record,) = fake_otlp.records
        assert record.resource["service.name"] == "planner"
        assert record.resource["env"] == "test"
        assert record.severity_number == 17


class TestHTTPShipper:
    def test_ndjson_is_one_record_per_line(self, fake_http_sink: FakeHTTPSink, make: ShipperFactory) -> None:
        """NDJSON batches use application/x-ndjson with one record per line."""
        shipper = make(HTTPShipper, fake_http_sink.endpoint, headers={"X-Token": "abcd-secret"})
        logger = attach(shipper)
        logger.info("one")
        logger.info("two")
        assert shipper.flush(5)
        assert [r["message"] for r in fake_http_sink.records] == ["one", "two"]
        assert fake_http_sink.requests[0].media_type == "application/x-ndjson"
        assert fake_http_sink.requests[0].header("x-token") == "abcd-secret"


class TestShippingHandler:
    @pytest.mark.parametrize(
        "name",
        [
            "agentuity_logging.internal",
            "httpx",
            "httpcore.http11",
            "urllib3.connectionpool",
            "requests",
            "requests.adapters",
        ],
    )
    def test_own_and_http_client_records_are_never_shipped(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, name: str
    ) -> None:
        """Records of our diagnostics and of HTTP clients never reach the shipper."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        handler = ShippingHandler(shipper)
        handler.handle(logging.LogRecord(name, logging.ERROR, __file__, 1, "boom", None, None))
        assert shipper.stats()["enqueued"] == 0

    @pytest.mark.parametrize("name", ["requestsfoo", "httpx_helpers", "myapp.requests"])
    def test_look_alike_logger_names_are_shipped(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, name: str
    ) -> None:
        """Only those loggers and their children are ignored, not names that merely start alike."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        ShippingHandler(shipper).handle(
            logging.LogRecord(name, logging.ERROR, __file__, 1, "kept", None, None)
        )
        assert shipper.stats()["enqueued"] == 1

    def test_closing_the_handler_leaves_the_shipper_running(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """handler.close() detaches the handler; the shipper keeps delivering."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        logger = attach(shipper)
        logger.handlers[0].close()
        logger.info("after close")
        assert not shipper.closed
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == ["after close"]

    def test_survives_dictconfig(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """A dictConfig run (uvicorn's start-up) closes existing handlers; ours keeps working."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        logger = attach(shipper)
        handler = logger.handlers[0]
        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        logger.info("after dictConfig")
        assert handler in logger.handlers
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == ["after dictConfig"]

    def test_usable_from_dictconfig(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """dictConfig can build the handler with the "()" key and a shipper object."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {
                    "ship": {
                        "()": "agentuity_logging.shipping.ShippingHandler",
                        "shipper": shipper,
                        "level": "WARNING",
                    }
                },
                "loggers": {"tests.dictconfig": {"handlers": ["ship"], "level": "INFO", "propagate": False}},
            }
        )
        logger = logging.getLogger("tests.dictconfig")
        try:
            logger.info("too low")
            logger.warning("shipped")
            assert shipper.flush(5)
            assert messages(fake_datadog.entries) == ["shipped"]
        finally:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                handler.close()

    def test_flush_only_nudges(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """handler.flush() returns at once (it may run under the logging lock) yet sends now."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, flush_interval_s=60)
        logger = attach(shipper)
        logger.info("nudged")
        fake_datadog.slow_next(1, seconds=1.0)
        logger.handlers[0].flush()
        assert fake_datadog.wait_for(lambda: len(fake_datadog.entries) == 1, timeout_s=5)

    def test_package_flush_waits_for_configured_shippers(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """agentuity_logging.flush() returns once configure(ship_to=...)'s shippers delivered."""
        import agentuity_logging as al

        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, flush_interval_s=60)
        al.configure(format="json", stream=io.StringIO(), ship_to=[shipper])
        logging.getLogger("app").warning("delivered before flush returns")
        fake_datadog.slow_next(1, seconds=0.5)
        assert al.flush(10)
        assert messages(fake_datadog.entries) == ["delivered before flush returns"]

    def test_level_applies_to_structlog_events(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """Events below the handler's level are not shipped."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        handler = ShippingHandler(shipper, level="WARNING")
        handler.handle_event({"message": "quiet", "level": "info"}, logging.INFO)
        handler.handle_event({"message": "loud", "level": "error"}, logging.ERROR)
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == ["loud"]

    def test_filters_on_the_handler_apply(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """A filter added to the handler can refuse records."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        logger = attach(shipper)
        logger.handlers[0].addFilter(lambda record: "secret" not in record.getMessage())
        logger.info("public")
        logger.info("secret plan")
        assert shipper.flush(5)
        assert messages(fake_datadog.entries) == ["public"]

    def test_send_fills_in_timestamp_and_level(self, fake_datadog: FakeDatadog, make: ShipperFactory) -> None:
        """Shipper.send() accepts a bare event and completes it."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        shipper.send({"message": "direct"})
        assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert entry["message"] == "direct"
        assert entry["status"] == "info"
        assert entry["timestamp"].endswith("Z")

    def test_needs_a_shipper(self) -> None:
        """A ShippingHandler made with something else fails at once."""
        with pytest.raises(TypeError, match="needs a Shipper"):
            ShippingHandler("http://example.com")  # type: ignore[arg-type]


class TestMissingDependency:
    def test_without_httpx_the_error_names_the_extra(
        self, fake_datadog: FakeDatadog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Creating a shipper without httpx says what to pip install."""
        monkeypatch.setitem(sys.modules, "httpx", None)
        with pytest.raises(al.MissingDependencyError, match=r"agentuity-logging\[ship\]"):
            DatadogShipper(fake_datadog.api_key, url=fake_datadog.url)
