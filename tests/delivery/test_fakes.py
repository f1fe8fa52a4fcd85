"""The fake backends themselves: they must refuse what the real services refuse."""

from __future__ import annotations

import datetime as dt
import gzip
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import cramjam
import httpx
import orjson
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

from tests.fakes import FakeDatadog, FakeHTTPSink, FakeLoki, FakeOTLP, FakeServer, logproto
from tests.fakes.events import SESSION_ID, make_event, rfc3339
from tests.fakes.logql import LogQLError, parse_labels, parse_query

NS = 1_000_000_000


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """An HTTP client for loopback requests (one per module: building one costs ~50 ms)."""
    with httpx.Client(timeout=10.0, trust_env=False) as http:
        yield http


# --- fault injection, shared by every fake ----------------------------------------------------


def _datadog_ok(fake: FakeServer, client: httpx.Client) -> httpx.Response:
    assert isinstance(fake, FakeDatadog)
    return client.post(
        f"{fake.url}/api/v2/logs",
        headers={"DD-API-KEY": fake.api_key},
        json=[make_event()],
    )


def _loki_ok(fake: FakeServer, client: httpx.Client) -> httpx.Response:
    body = {"streams": [{"stream": {"service": "s"}, "values": [[str(time.time_ns()), "line"]]}]}
    return client.post(f"{fake.url}/loki/api/v1/push", json=body)


def _otlp_ok(fake: FakeServer, client: httpx.Client) -> httpx.Response:
    return client.post(f"{fake.url}/v1/logs", json={"resourceLogs": []})


def _http_ok(fake: FakeServer, client: httpx.Client) -> httpx.Response:
    assert isinstance(fake, FakeHTTPSink)
    return client.post(fake.endpoint, json=[{"message": "x"}])


FAKES: list[tuple[type[FakeServer], Callable[[FakeServer, httpx.Client], httpx.Response], int]] = [
    (FakeDatadog, _datadog_ok, 202),
    (FakeLoki, _loki_ok, 204),
    (FakeOTLP, _otlp_ok, 200),
    (FakeHTTPSink, _http_ok, 200),
]


@pytest.fixture(params=FAKES, ids=lambda f: f[0].name)
def any_fake(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[FakeServer, Callable[[httpx.Client], httpx.Response], int]]:
    """Each fake in turn, with a function sending it one valid request and its success code."""
    cls, ok, status = request.param
    fake = cls()
    with fake:
        yield fake, lambda client: ok(fake, client), status


Fixture = tuple[FakeServer, Callable[[httpx.Client], httpx.Response], int]


class TestFaultInjection:
    def test_valid_request_succeeds(self, any_fake: Fixture, client: httpx.Client) -> None:
        """Without faults a valid request gets the service's success status."""
        _, ok, status = any_fake
        assert ok(client).status_code == status

    def test_fail_next_then_recovers(self, any_fake: Fixture, client: httpx.Client) -> None:
        """fail_next(n) answers n errors, then the service is healthy again."""
        fake, ok, status = any_fake
        fake.fail_next(2, status=503)
        assert [ok(client).status_code for _ in range(3)] == [503, 503, status]

    def test_rate_limit_says_when_to_retry(self, any_fake: Fixture, client: httpx.Client) -> None:
        """rate_limit_next answers 429 with the service's delay header."""
        fake, ok, _ = any_fake
        fake.rate_limit_next(retry_after="7")
        response = ok(client)
        assert (response.status_code, response.headers[fake.rate_limit_header]) == (429, "7")

    def test_datadog_rate_limit_uses_its_own_header(
        self, fake_datadog: FakeDatadog, client: httpx.Client
    ) -> None:
        """Datadog's 429 carries X-RateLimit-Reset, not Retry-After."""
        fake_datadog.rate_limit_next(retry_after="3")
        response = _datadog_ok(fake_datadog, client)
        assert response.headers["x-ratelimit-reset"] == "3"
        assert "retry-after" not in response.headers

    def test_reject_next_uses_given_body(self, any_fake: Fixture, client: httpx.Client) -> None:
        """reject_next answers the scripted status and body and stores nothing."""
        fake, ok, _ = any_fake
        fake.reject_next(status=400, body="entry too old")
        response = ok(client)
        assert (response.status_code, response.text) == (400, "entry too old")
        assert fake.requests[0].status == 400

    def test_slow_next_delays_the_answer(self, any_fake: Fixture, client: httpx.Client) -> None:
        """slow_next holds the answer for the given time."""
        fake, ok, status = any_fake
        fake.slow_next(1, 0.3)
        started = time.monotonic()
        assert ok(client).status_code == status
        assert time.monotonic() - started >= 0.3

    def test_drop_connection(self, any_fake: Fixture, client: httpx.Client) -> None:
        """drop_connection_next closes the socket without an answer."""
        fake, ok, status = any_fake
        fake.drop_connection_next()
        with pytest.raises(httpx.RemoteProtocolError):
            ok(client)
        assert ok(client).status_code == status
        assert fake.requests[0].status is None

    def test_down_refuses_connections_until_up(self, any_fake: Fixture, client: httpx.Client) -> None:
        """down() refuses connections; up() serves again on the same port."""
        fake, ok, status = any_fake
        port = fake.port
        fake.down()
        with pytest.raises(httpx.ConnectError):
            ok(client)
        fake.up()
        assert fake.port == port
        assert ok(client).status_code == status

    def test_down_without_refusing_answers_503(self, any_fake: Fixture, client: httpx.Client) -> None:
        """down(refuse=False) keeps the port open but answers 503."""
        fake, ok, status = any_fake
        fake.down(refuse=False)
        assert ok(client).status_code == 503
        fake.up()
        assert ok(client).status_code == status

    def test_wait_for_requests(self, any_fake: Fixture, client: httpx.Client) -> None:
        """wait_for_requests returns once requests arrived, False on timeout."""
        fake, ok, _ = any_fake
        ok(client)
        assert fake.wait_for_requests(1, timeout_s=1)
        assert not fake.wait_for_requests(2, timeout_s=0.05)


class TestServerPlumbing:
    def test_chunked_body_accepted(self, fake_http_sink: FakeHTTPSink, client: httpx.Client) -> None:
        """A Transfer-Encoding: chunked body is read like a Content-Length one."""

        def chunks() -> Iterator[bytes]:
            yield b'{"message": "a"}\n'
            yield b'{"message": "b"}\n'

        response = client.post(
            fake_http_sink.endpoint,
            content=chunks(),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert response.status_code == 200
        assert fake_http_sink.requests[0].chunked
        assert fake_http_sink.records == [{"message": "a"}, {"message": "b"}]

    def test_stop_is_prompt_with_open_keepalive_connection(self, client: httpx.Client) -> None:
        """stop() closes idle keep-alive connections instead of waiting for their timeout."""
        fake = FakeHTTPSink().start()
        client.post(fake.endpoint, json=[{"m": 1}])
        started = time.monotonic()
        fake.stop()
        fake.stop()
        assert time.monotonic() - started < 2

    def test_slow_answer_cut_short_by_stop(self, client: httpx.Client) -> None:
        """A scripted delay wakes up when the fake stops, so teardown is bounded."""
        import threading

        fake = FakeHTTPSink().start()
        fake.slow_next(1, 30)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                client.post(fake.endpoint, json=[{"m": 1}])
            except httpx.HTTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        assert fake.wait_for(lambda: bool(fake._connections), 2)
        started = time.monotonic()
        fake.stop()
        thread.join(5)
        assert time.monotonic() - started < 5
        assert not thread.is_alive()

    def test_handler_crash_is_a_500_and_recorded(
        self, fake_http_sink: FakeHTTPSink, client: httpx.Client
    ) -> None:
        """An exception in a fake becomes a 500 and is kept for the test to see."""

        def boom(request: Any) -> Any:
            raise RuntimeError("bug in fake")

        fake_http_sink.handle = boom  # type: ignore[method-assign]
        assert client.post(fake_http_sink.endpoint, json=[]).status_code == 500
        assert isinstance(fake_http_sink.errors[0], RuntimeError)


# --- Datadog --------------------------------------------------------------------------------


def _dd_post(fake: FakeDatadog, client: httpx.Client, body: bytes, **headers: str) -> httpx.Response:
    base = {"DD-API-KEY": fake.api_key, "Content-Type": "application/json"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return client.post(f"{fake.url}/api/v2/logs", content=body, headers=base)


def _search(fake: FakeDatadog, client: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    base = {"DD-API-KEY": fake.api_key, "DD-APPLICATION-KEY": fake.application_key}
    base.update(headers)
    return client.post(f"{fake.url}/api/v2/logs/events/search", json=body, headers=base)


class TestFakeDatadogIntake:
    def test_missing_key_is_401(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """No DD-API-KEY: 401 with an errors body."""
        response = client.post(f"{fake_datadog.url}/api/v2/logs", json=[make_event()])
        assert response.status_code == 401
        assert response.json()["errors"][0]["status"] == "401"

    def test_wrong_key_is_403(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """A wrong DD-API-KEY: 403."""
        response = _dd_post(fake_datadog, client, b"[]", **{"DD-API-KEY": "nope"})
        assert response.status_code == 403

    def test_key_in_query_string_accepted(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """Datadog also takes the key as the dd-api-key query parameter."""
        response = client.post(
            f"{fake_datadog.url}/api/v2/logs",
            params={"dd-api-key": fake_datadog.api_key},
            json=[make_event()],
        )
        assert response.status_code == 202

    def test_wrong_content_type_refused(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """Only application/json bodies are read."""
        response = _dd_post(fake_datadog, client, b"[]", **{"Content-Type": "application/xml"})
        assert response.status_code == 415

    def test_single_object_accepted(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """One JSON object is one log."""
        assert _dd_post(fake_datadog, client, orjson.dumps(make_event())).status_code == 202
        assert len(fake_datadog.logs) == 1

    def test_deflate_accepted(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """Content-Encoding: deflate is decoded."""
        body = zlib.compress(orjson.dumps([make_event()]))
        assert _dd_post(fake_datadog, client, body, **{"Content-Encoding": "deflate"}).status_code == 202

    def test_corrupt_gzip_is_400(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """A body that does not gunzip is a 400."""
        response = _dd_post(fake_datadog, client, b"not gzip", **{"Content-Encoding": "gzip"})
        assert response.status_code == 400

    def test_invalid_json_is_400(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """Malformed JSON is a 400."""
        assert _dd_post(fake_datadog, client, b"[{").status_code == 400

    def test_more_than_1000_entries_is_413(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """An array of 1,001 entries is too large."""
        body = orjson.dumps([{"message": str(i)} for i in range(1001)])
        assert _dd_post(fake_datadog, client, body).status_code == 413
        assert fake_datadog.entries == []

    def test_more_than_5mb_uncompressed_is_413(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """Over 5 MB uncompressed is too large even when gzip'd small."""
        body = gzip.compress(orjson.dumps([{"message": "a" * 900_000} for _ in range(6)]))
        assert _dd_post(fake_datadog, client, body, **{"Content-Encoding": "gzip"}).status_code == 413

    def test_entry_over_1mb_accepted_and_truncated(
        self, fake_datadog: FakeDatadog, client: httpx.Client
    ) -> None:
        """A log over 1 MB is accepted but truncated, as Datadog does."""
        body = orjson.dumps([make_event("b" * 1_200_000)])
        assert _dd_post(fake_datadog, client, body).status_code == 202
        (log,) = fake_datadog.logs
        assert log.truncated
        assert len(orjson.dumps(log.entry)) <= 1_000_000

    def test_old_logs_accepted_but_not_indexed(self, fake_datadog: FakeDatadog, client: httpx.Client) -> None:
        """Logs older than 18 hours get a 202 but never show up in search."""
        old = rfc3339(dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=19))
        body = orjson.dumps([make_event("old", timestamp=old), make_event("new")])
        assert _dd_post(fake_datadog, client, body).status_code == 202
        assert [log.message for log in fake_datadog.logs] == ["new"]
        assert [e["message"] for e in fake_datadog.discarded] == ["old"]

    @pytest.mark.parametrize(
        ("value", "status"),
        [
            ("err", "error"),
            ("WARN", "warning"),
            ("fatal", "emergency"),
            ("crit", "critical"),
            ("x", "info"),
            (3, "error"),
        ],
    )
    def test_status_remapped_by_prefix(
        self, fake_datadog: FakeDatadog, client: httpx.Client, value: Any, status: str
    ) -> None:
        """status is mapped by prefix like Datadog's status remapper."""
        _dd_post(fake_datadog, client, orjson.dumps([{"message": "m", "status": value}]))
        assert fake_datadog.logs[0].status == status


class TestFakeDatadogSearch:
    @pytest.fixture
    def indexed(self, fake_datadog: FakeDatadog, client: httpx.Client) -> FakeDatadog:
        """Five logs: three in the session (one error), two in another, two services."""
        base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        entries = []
        for i in range(5):
            entry = make_event(f"msg {i}", timestamp=rfc3339(base + dt.timedelta(seconds=i)))
            entry["agentuitySessionId"] = SESSION_ID if i < 3 else "sess_other"
            entry["service"] = "api" if i % 2 == 0 else "worker"
            entry["status"] = "error" if i == 1 else "info"
            entry["ddtags"] = "env:prod,team:ai"
            entries.append(entry)
        assert _dd_post(fake_datadog, client, orjson.dumps(entries)).status_code == 202
        return fake_datadog

    def _messages(self, response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [item["attributes"]["message"] for item in response.json()["data"]]

    def test_needs_both_keys(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """Search without a valid application key is 403."""
        response = _search(indexed, client, {}, **{"DD-APPLICATION-KEY": "wrong"})
        assert (response.status_code, response.json()) == (403, {"errors": ["Forbidden"]})

    def test_session_query(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """@agentuitySessionId:… selects the session's logs, oldest first."""
        body = {
            "filter": {"query": f"@agentuitySessionId:{SESSION_ID}", "from": "now-1h"},
            "page": {"limit": 100},
        }
        assert self._messages(_search(indexed, client, body)) == ["msg 0", "msg 1", "msg 2"]

    def test_terms_are_anded(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """Several terms must all match."""
        body = {"filter": {"query": f"service:api @agentuitySessionId:{SESSION_ID}", "from": "now-1h"}}
        assert self._messages(_search(indexed, client, body)) == ["msg 0", "msg 2"]

    def test_negation_wildcard_status_and_tag(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """-term, * wildcards, status: and tag terms work."""
        body = {"filter": {"query": "-status:error @agentuitySessionId:sess_* env:prod", "from": "now-1h"}}
        assert self._messages(_search(indexed, client, body)) == ["msg 0", "msg 2", "msg 3", "msg 4"]

    def test_free_text_matches_message(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """A bare word searches the message, case-insensitively."""
        body = {"filter": {"query": '"MSG 4"', "from": "now-1h"}}
        assert self._messages(_search(indexed, client, body)) == ["msg 4"]

    def test_custom_attributes_nested(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """Custom attributes are under attributes.attributes; reserved ones at the top."""
        body = {"filter": {"query": "*", "from": "now-1h"}, "page": {"limit": 1}}
        item = _search(indexed, client, body).json()["data"][0]
        assert item["type"] == "log"
        assert item["attributes"]["service"] == "api"
        assert item["attributes"]["attributes"]["agentuitySessionId"] == SESSION_ID
        assert "env:prod" in item["attributes"]["tags"]
        assert item["attributes"]["timestamp"].endswith("Z")

    def test_cursor_paging(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """meta.page.after pages through all results; absent on the last page."""
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            page: dict[str, Any] = {"limit": 2}
            if cursor:
                page["cursor"] = cursor
            answer = _search(indexed, client, {"filter": {"from": "now-1h"}, "page": page}).json()
            seen += [item["attributes"]["message"] for item in answer["data"]]
            cursor = answer["meta"].get("page", {}).get("after")
            if not cursor:
                break
        assert seen == [f"msg {i}" for i in range(5)]

    def test_descending_sort(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """sort -timestamp returns newest first."""
        body = {"filter": {"from": "now-1h"}, "sort": "-timestamp", "page": {"limit": 2}}
        assert self._messages(_search(indexed, client, body)) == ["msg 4", "msg 3"]

    def test_time_window(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """from/to bound the results."""
        body = {"filter": {"from": "now-1m", "to": "now"}}
        assert self._messages(_search(indexed, client, body)) == []

    @pytest.mark.parametrize("limit", [0, 1001, "10"])
    def test_page_limit_bounds(self, indexed: FakeDatadog, client: httpx.Client, limit: Any) -> None:
        """page.limit must be an integer from 1 to 1000."""
        assert _search(indexed, client, {"page": {"limit": limit}}).status_code == 400

    @pytest.mark.parametrize("query", ["(a OR b)", "a OR b", '"open'])
    def test_unsupported_query_is_400(self, indexed: FakeDatadog, client: httpx.Client, query: str) -> None:
        """Syntax the fake does not implement fails loudly instead of matching wrongly."""
        assert _search(indexed, client, {"filter": {"query": query}}).status_code == 400

    def test_bad_cursor_is_400(self, indexed: FakeDatadog, client: httpx.Client) -> None:
        """An unreadable cursor is refused."""
        assert _search(indexed, client, {"page": {"cursor": "garbage!"}}).status_code == 400


# --- Loki -----------------------------------------------------------------------------------


def _push_json(fake: FakeLoki, client: httpx.Client, body: Any, **headers: str) -> httpx.Response:
    return client.post(
        f"{fake.url}/loki/api/v1/push",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/json", **headers},
    )


def _push_proto(
    fake: FakeLoki,
    client: httpx.Client,
    streams: list[tuple[str, list[tuple[int, str, dict[str, str]]]]],
    content_type: str | None = "application/x-protobuf",
) -> httpx.Response:
    request = logproto.PushRequest()
    for labels, entries in streams:
        stream = request.streams.add(labels=labels)
        for ts, line, metadata in entries:
            entry = stream.entries.add(line=line)
            entry.timestamp.seconds, entry.timestamp.nanos = divmod(ts, NS)
            for name, value in metadata.items():
                entry.structuredMetadata.add(name=name, value=value)
    headers = {"Content-Type": content_type} if content_type else {}
    body = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    return client.post(f"{fake.url}/loki/api/v1/push", content=body, headers=headers)


def _values(*lines: str, ts: int | None = None) -> list[list[str]]:
    now = ts or time.time_ns()
    return [[str(now + i), line] for i, line in enumerate(lines)]


class TestFakeLokiPush:
    def test_protobuf_push_stored(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """A snappy protobuf push is decoded with the independent logproto classes."""
        now = time.time_ns()
        response = _push_proto(fake_loki, client, [('{app="a", level="info"}', [(now, "l1", {"k": "v"})])])
        assert response.status_code == 204
        (entry,) = fake_loki.stored()
        assert (entry.labels, entry.ts_ns, entry.line, entry.structured_metadata) == (
            {"app": "a", "level": "info"},
            now,
            "l1",
            {"k": "v"},
        )

    def test_missing_content_type_means_protobuf(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Without Content-Type the body is read as protobuf, like Loki."""
        response = _push_proto(fake_loki, client, [('{app="a"}', [(time.time_ns(), "l", {})])], None)
        assert response.status_code == 204
        assert fake_loki.pushes[0].encoding == "protobuf"

    def test_framed_snappy_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """The framed snappy format is not what Loki reads."""
        body = bytes(cramjam.snappy.compress(logproto.PushRequest().SerializeToString()))
        response = client.post(
            f"{fake_loki.url}/loki/api/v1/push",
            content=body,
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 400

    def test_json_gzip_accepted(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """JSON bodies may be gzip'd."""
        body = gzip.compress(orjson.dumps({"streams": [{"stream": {"a": "b"}, "values": _values("x")}]}))
        response = client.post(
            f"{fake_loki.url}/loki/api/v1/push",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert response.status_code == 204

    def test_number_timestamp_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """A JSON timestamp that is a number, not a string, is a 400."""
        body = {"streams": [{"stream": {"a": "b"}, "values": [[time.time_ns(), "x"]]}]}
        response = _push_json(fake_loki, client, body)
        assert response.status_code == 400
        assert "timestamp must be a string" in response.text

    def test_non_string_metadata_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Structured metadata values must be strings."""
        body = {"streams": [{"stream": {"a": "b"}, "values": [[str(time.time_ns()), "x", {"n": 1}]]}]}
        assert _push_json(fake_loki, client, body).status_code == 400

    def test_zero_streams_is_422(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """A push without streams is a 422."""
        assert _push_json(fake_loki, client, {"streams": []}).status_code == 422

    def test_long_line_partially_accepted(self, client: httpx.Client) -> None:
        """A too-long line is a 400 with Loki's message; the valid entries are still written."""
        with FakeLoki(max_line_bytes=10) as fake:
            body = {"streams": [{"stream": {"a": "b"}, "values": _values("short", "far too long line")}]}
            response = _push_json(fake, client, body)
            assert response.status_code == 400
            assert response.text == (
                "Max entry size '10' bytes exceeded for stream '{a=\"b\"}' while adding an entry "
                "with length '17' bytes\n"
            )
            assert [e.line for e in fake.stored()] == ["short"]

    def test_default_line_limit_is_256000_bytes(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Loki's default max_line_size is 256,000 bytes."""
        body = {"streams": [{"stream": {"a": "b"}, "values": _values("x" * 256_000, "y" * 256_001)}]}
        assert _push_json(fake_loki, client, body).status_code == 400
        assert [len(e.line) for e in fake_loki.stored()] == [256_000]

    def test_sixteen_labels_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """More than 15 label names is refused."""
        body = {"streams": [{"stream": {f"l{i}": "v" for i in range(16)}, "values": _values("x")}]}
        response = _push_json(fake_loki, client, body)
        assert response.status_code == 400
        assert "has 16 label names; limit 15" in response.text

    def test_unparsable_labels_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """A label string that does not parse is refused."""
        response = _push_proto(fake_loki, client, [('{ab"', [(time.time_ns(), "x", {})])])
        assert response.status_code == 400
        assert response.text.startswith("Error parsing labels '{ab\"'")

    def test_empty_label_set_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """A stream needs at least one label."""
        body = {"streams": [{"stream": {}, "values": _values("x")}]}
        response = _push_json(fake_loki, client, body)
        assert response.text == "error at least one label pair is required per stream\n"

    def test_duplicate_label_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """A label name may appear once."""
        response = _push_proto(fake_loki, client, [('{a="1", a="2"}', [(time.time_ns(), "x", {})])])
        assert "duplicate label name" in response.text

    def test_too_much_structured_metadata_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """More than 128 structured metadata entries is refused."""
        metadata = {f"k{i}": "v" for i in range(129)}
        body = {"streams": [{"stream": {"a": "b"}, "values": [[str(time.time_ns()), "x", metadata]]}]}
        response = _push_json(fake_loki, client, body)
        assert response.status_code == 400
        assert "too many structured metadata labels: '129', limit: '128'" in response.text

    def test_too_old_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Entries older than 7 days are refused."""
        old = time.time_ns() - 8 * 86400 * NS
        body = {"streams": [{"stream": {"a": "b"}, "values": _values("x", ts=old)}]}
        assert "timestamp too old" in _push_json(fake_loki, client, body).text

    def test_body_limit_is_413(self, client: httpx.Client) -> None:
        """A body over the server's limit is a 413."""
        with FakeLoki(max_body_bytes=1000) as fake:
            body = {"streams": [{"stream": {"a": "b"}, "values": _values("x" * 2000)}]}
            assert _push_json(fake, client, body).status_code == 413

    def test_tenant_required(self, client: httpx.Client) -> None:
        """With auth on, a push without X-Scope-OrgID is 401 'no org id'."""
        with FakeLoki(require_tenant=True) as fake:
            body = {"streams": [{"stream": {"a": "b"}, "values": _values("x")}]}
            response = _push_json(fake, client, body)
            assert (response.status_code, response.text) == (401, "no org id\n")
            assert _push_json(fake, client, body, **{"X-Scope-OrgID": "t1"}).status_code == 204
            assert fake.stored("t1")

    def test_identical_entry_stored_once(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """Re-sending an identical entry is a no-op, like Loki's dedupe."""
        body = {"streams": [{"stream": {"a": "b"}, "values": _values("x", ts=time.time_ns())}]}
        _push_json(fake_loki, client, body)
        _push_json(fake_loki, client, body)
        assert len(fake_loki.stored()) == 1


class TestFakeLokiQuery:
    @pytest.fixture
    def filled(self, fake_loki: FakeLoki, client: httpx.Client) -> tuple[FakeLoki, int]:
        """Four entries one second apart in two streams; returns the fake and the first ts."""
        start = time.time_ns() - 60 * NS
        lines = [
            orjson.dumps({"message": f"m{i}", "agentuitySessionId": "s1" if i < 2 else "s2"}).decode()
            for i in range(4)
        ]
        body = {
            "streams": [
                {
                    "stream": {"service": "api", "level": "info" if i % 2 == 0 else "error"},
                    "values": [
                        [str(start + i * NS), lines[i], {"agentuitySessionId": "s1" if i < 2 else "s2"}]
                    ],
                }
                for i in range(4)
            ]
        }
        assert _push_json(fake_loki, client, body).status_code == 204
        return fake_loki, start

    def _query(self, fake: FakeLoki, client: httpx.Client, **params: Any) -> httpx.Response:
        return client.get(f"{fake.url}/loki/api/v1/query_range", params=params)

    @staticmethod
    def _lines(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["status"] == "success"
        assert answer["data"]["resultType"] == "streams"
        values = [v for s in answer["data"]["result"] for v in s["values"]]
        values.sort(key=lambda v: int(v[0]))
        return [orjson.loads(v[1])["message"] for v in values]

    def test_structured_metadata_filter(self, filled: tuple[FakeLoki, int], client: httpx.Client) -> None:
        """| agentuitySessionId="s1" filters on structured metadata."""
        fake, _ = filled
        assert self._lines(self._query(fake, client, query='{service="api"} | agentuitySessionId="s1"')) == [
            "m0",
            "m1",
        ]

    def test_line_filter_and_json(self, filled: tuple[FakeLoki, int], client: httpx.Client) -> None:
        """|= then | json then a parsed-field filter (clashing names get _extracted)."""
        fake, _ = filled
        query = '{service="api"} |= "s2" | json | agentuitySessionId_extracted="s2" | message="m3"'
        assert self._lines(self._query(fake, client, query=query)) == ["m3"]

    def test_metadata_merged_into_stream(self, filled: tuple[FakeLoki, int], client: httpx.Client) -> None:
        """Without the categorize flag structured metadata is merged into stream labels."""
        fake, _ = filled
        result = self._query(fake, client, query='{level="error"}').json()["data"]["result"]
        assert {s["stream"]["agentuitySessionId"] for s in result} == {"s1", "s2"}

    def test_categorize_labels(self, filled: tuple[FakeLoki, int], client: httpx.Client) -> None:
        """With categorize-labels the metadata moves to the third value element."""
        fake, _ = filled
        response = client.get(
            f"{fake.url}/loki/api/v1/query_range",
            params={"query": '{level="error"}'},
            headers={"X-Loki-Response-Encoding-Flags": "categorize-labels"},
        )
        data = response.json()["data"]
        assert data["encodingFlags"] == ["categorize-labels"]
        (stream,) = data["result"]
        assert stream["stream"] == {"service": "api", "level": "error"}
        assert {v[2]["structuredMetadata"]["agentuitySessionId"] for v in stream["values"]} == {"s1", "s2"}

    def test_start_inclusive_end_exclusive(self, filled: tuple[FakeLoki, int], client: httpx.Client) -> None:
        """start is inclusive and end exclusive."""
        fake, start = filled
        response = self._query(fake, client, query='{service="api"}', start=start + NS, end=start + 3 * NS)
        assert self._lines(response) == ["m1", "m2"]

    def test_limit_and_direction(self, filled: tuple[FakeLoki, int], client: httpx.Client) -> None:
        """limit keeps the first entries in the requested direction."""
        fake, _ = filled
        forward = self._query(fake, client, query='{service="api"}', limit=2, direction="forward")
        backward = self._query(fake, client, query='{service="api"}', limit=2)
        assert self._lines(forward) == ["m0", "m1"]
        assert self._lines(backward) == ["m2", "m3"]

    def test_limit_over_5000_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """limit is capped by max_entries_limit_per_query."""
        response = self._query(fake_loki, client, query='{a="b"}', limit=5001)
        assert response.status_code == 400
        assert "(5001 > 5000)" in response.text

    def test_empty_compatible_selector_is_400(self, fake_loki: FakeLoki, client: httpx.Client) -> None:
        """A selector that can match empty is refused."""
        response = self._query(fake_loki, client, query='{service=~".*"}')
        assert response.status_code == 400
        assert "empty-compatible" in response.text

    def test_rfc3339_and_seconds_times(self, filled: tuple[FakeLoki, int], client: httpx.Client) -> None:
        """start/end accept RFC 3339 and epoch seconds too."""
        fake, start = filled
        end = dt.datetime.fromtimestamp((start + 10 * NS) / NS, tz=dt.timezone.utc).isoformat()
        response = self._query(fake, client, query='{service="api"}', start=str(start // NS - 1), end=end)
        assert self._lines(response) == ["m0", "m1", "m2", "m3"]

    def test_labels_lists_stream_labels_only(
        self, filled: tuple[FakeLoki, int], client: httpx.Client
    ) -> None:
        """/labels lists stream labels, not structured metadata keys."""
        fake, _ = filled
        answer = client.get(f"{fake.url}/loki/api/v1/labels").json()
        assert answer == {"status": "success", "data": ["level", "service"]}

    def test_label_values(self, filled: tuple[FakeLoki, int], client: httpx.Client) -> None:
        """/label/<name>/values lists a label's values."""
        fake, _ = filled
        answer = client.get(f"{fake.url}/loki/api/v1/label/level/values").json()
        assert answer["data"] == ["error", "info"]


class TestLogQLParser:
    def test_labels_with_escapes(self) -> None:
        """Go escapes in label values are decoded."""
        assert parse_labels(r'{a="x\"y\\z\n\x41\u00e9", b=`raw\n`}') == [("a", 'x"y\\z\nAé'), ("b", "raw\\n")]

    @pytest.mark.parametrize("text", ['{a="x}', "{a=x}", '{1a="x"}', '{a!="x"}', '{a="x"} junk', '{a="\n"}'])
    def test_bad_label_sets(self, text: str) -> None:
        """Malformed label sets are refused."""
        with pytest.raises(LogQLError):
            parse_labels(text)

    @pytest.mark.parametrize("query", ['{a="b"} | logfmt', '{a="b"} |= ', '{a="b"} ||'])
    def test_unsupported_queries_refused(self, query: str) -> None:
        """Queries outside the subset fail loudly."""
        with pytest.raises(LogQLError):
            parse_query(query)


# --- OTLP -----------------------------------------------------------------------------------


class TestFakeOTLP:
    def test_other_content_type_is_415(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """Only protobuf and JSON are accepted."""
        response = client.post(
            f"{fake_otlp.url}/v1/logs", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert response.status_code == 415

    def test_bad_protobuf_is_400_with_status(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """Undecodable protobuf is a 400 with a protobuf google.rpc.Status."""
        response = client.post(
            f"{fake_otlp.url}/v1/logs",
            content=b"\xff\xff\xff",
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 400
        assert status_pb2.Status.FromString(response.content).message.startswith("proto:")

    def test_json_hex_ids_decoded(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """OTLP JSON's hex traceId/spanId are read as hex, not base64."""
        record = {
            "timeUnixNano": "1",
            "traceId": "0af7651916cd43dd8448eb211c80319c",
            "spanId": "b7ad6b7169203331",
        }
        body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]}
        assert client.post(f"{fake_otlp.url}/v1/logs", json=body).status_code == 200
        assert fake_otlp.records[0].trace_id == "0af7651916cd43dd8448eb211c80319c"

    def test_wrong_length_id_is_400(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """A traceId that is not 16 bytes is refused, with a JSON Status."""
        body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "abcd"}]}]}]}
        response = client.post(f"{fake_otlp.url}/v1/logs", json=body)
        assert response.status_code == 400
        assert "traceId" in response.json()["message"]

    def test_gzip_protobuf_and_response_encoding(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """gzip'd protobuf is decoded; the answer is a protobuf ExportLogsServiceResponse."""
        export = logs_service_pb2.ExportLogsServiceRequest()
        export.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hi"
        response = client.post(
            f"{fake_otlp.url}/v1/logs",
            content=gzip.compress(export.SerializeToString()),
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        )
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-protobuf"
        logs_service_pb2.ExportLogsServiceResponse.FromString(response.content)
        assert fake_otlp.records[0].body == "hi"

    def test_partial_success_in_json(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """A scripted partial success is reported in the JSON mapping."""
        fake_otlp.partial_success_next(1, "dropped")
        body = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "a"}}]}]}]}
        answer = client.post(f"{fake_otlp.url}/v1/logs", json=body).json()
        assert answer == {"partialSuccess": {"rejectedLogRecords": "1", "errorMessage": "dropped"}}
        assert fake_otlp.records == []

    def test_unknown_path_is_404(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """Only /v1/logs exists."""
        assert client.post(f"{fake_otlp.url}/v1/traces", json={}).status_code == 404

    def test_json_status_is_parseable(self, fake_otlp: FakeOTLP, client: httpx.Client) -> None:
        """Errors for JSON requests are google.rpc.Status in JSON."""
        fake_otlp.fail_next(status=503)
        response = client.post(f"{fake_otlp.url}/v1/logs", json={})
        status = json_format.Parse(response.text, status_pb2.Status())
        assert (status.code, status.message) == (14, "service unavailable")


# --- generic HTTP ---------------------------------------------------------------------------


class TestFakeHTTPSink:
    def test_required_header_missing_is_401(self, client: httpx.Client) -> None:
        """A configured token must be present."""
        with FakeHTTPSink(required_headers={"Authorization": "Bearer t"}) as fake:
            assert client.post(fake.endpoint, json=[]).status_code == 401

    def test_other_content_type_is_415(self, fake_http_sink: FakeHTTPSink, client: httpx.Client) -> None:
        """Only NDJSON and JSON bodies are read."""
        response = client.post(fake_http_sink.endpoint, content=b"x", headers={"Content-Type": "text/csv"})
        assert response.status_code == 415

    def test_invalid_ndjson_is_400(self, fake_http_sink: FakeHTTPSink, client: httpx.Client) -> None:
        """A line that is not JSON is a 400."""
        response = client.post(
            fake_http_sink.endpoint,
            content=b'{"a":1}\n{oops\n',
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert response.status_code == 400
        assert fake_http_sink.records == []

    def test_body_limit_is_413(self, client: httpx.Client) -> None:
        """A body over the limit is a 413."""
        with FakeHTTPSink(max_body_bytes=100) as fake:
            assert client.post(fake.endpoint, json=[{"m": "x" * 200}]).status_code == 413

    def test_wrong_path_is_404(self, fake_http_sink: FakeHTTPSink, client: httpx.Client) -> None:
        """Only the configured path accepts logs."""
        assert client.post(f"{fake_http_sink.url}/other", json=[]).status_code == 404
