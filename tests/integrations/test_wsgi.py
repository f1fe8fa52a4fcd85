"""WSGI SessionMiddleware on a real threaded WSGI server (werkzeug), with Flask and raw WSGI apps."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from flask import Flask

from agentuity_logging import bound, get_logger, new_thread_id, session_id, thread_id
from agentuity_logging._context import current_snapshot
from agentuity_logging._records import SESSION_KEY, THREAD_KEY
from agentuity_logging._spans import span
from agentuity_logging.integrations.errors import error_response
from agentuity_logging.integrations.wsgi import SessionMiddleware, init_flask
from agentuity_logging.testing import capture_logs
from tests.integrations.conftest import EndedSessions, WsgiServer

log = get_logger("tests.wsgi.app")
SECRET = "secret-db-password at /srv/app/internal.py"


class OrderNotFoundError(Exception):
    pass


def make_flask() -> Flask:
    app = Flask("tests.wsgi.flask")

    @app.get("/work/<int:n>")
    def work(n: int) -> dict[str, Any]:
        with bound(req=n):
            log.info("start")
            with span("inner", n=n):
                logging.getLogger("thirdparty.client").info("library line")
            log.info("end")
        return {"sessionId": session_id(), "threadId": thread_id()}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError(SECRET)

    @app.get("/orders/<int:order_id>")
    def order(order_id: int) -> None:
        raise OrderNotFoundError(f"order {order_id} not found")

    @app.errorhandler(OrderNotFoundError)
    def not_found(exc: OrderNotFoundError) -> Any:
        return error_response(exc, status=404)

    return init_flask(app)  # type: ignore[no-any-return]


def streaming_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    for i in range(3):
        log.info("chunk", i=i)
        time.sleep(0.05)
        yield f"{i}\n".encode()
    log.info("stream done")


def raising_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    log.info("about to fail")
    raise RuntimeError(SECRET)


def fails_after_start_response(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise RuntimeError(SECRET)
    yield b""  # pragma: no cover - makes this a generator


def fails_mid_stream(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first\n"
    raise RuntimeError(SECRET)


StartServer = Callable[[Any], WsgiServer]


def entries_of(logs: list[dict[str, Any]], sid: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get(SESSION_KEY) == sid]


class TestConcurrentRequests:
    def test_500_concurrent_requests_never_share_ids(
        self, wsgi_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """500 requests from 500 client threads: every record carries exactly its own request's IDs."""
        server = wsgi_server(make_flask())
        shared_thread = new_thread_id()
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)

        with capture_logs() as logs, httpx.Client(base_url=server.url, limits=limits, timeout=60) as client:

            def one(i: int) -> httpx.Response:
                headers = {"x-agentuity-thread-id": shared_thread} if i % 2 == 0 else {}
                return client.get(f"/work/{i}", headers=headers)

            with ThreadPoolExecutor(max_workers=500) as pool:
                responses = list(pool.map(one, range(500)))
            sessions, threads = {}, {}
            for i, resp in enumerate(responses):
                assert resp.status_code == 200
                body = resp.json()
                assert body["sessionId"] == resp.headers["x-agentuity-session-id"]
                assert body["threadId"] == resp.headers["x-agentuity-thread-id"]
                sessions[i], threads[i] = body["sessionId"], body["threadId"]
            for sid in sessions.values():
                ended_sessions.wait_for(sid)

        assert len(set(sessions.values())) == 500
        assert all(threads[i] == shared_thread for i in range(0, 500, 2))
        owner = {sid: i for i, sid in sessions.items()}
        per_request: dict[int, list[str]] = {i: [] for i in range(500)}
        for entry in logs:
            if SESSION_KEY not in entry:
                continue
            assert "req" in entry, f"record without its request marker inside a session: {entry}"
            i = entry["req"]
            assert entry[SESSION_KEY] == sessions[i], f"record of request {i} has another's ID"
            assert entry[THREAD_KEY] == threads[i]
            assert owner[entry[SESSION_KEY]] == i
            per_request[i].append(entry["message"])
        for i, messages in per_request.items():
            assert sorted(messages) == ["end", "library line", "span inner", "start"], i
        meta = ended_sessions.metadata[sessions[3]]
        assert meta["method"] == "GET"
        assert meta["route"] == "/work/<int:n>"
        assert meta["path"] == "/work/3"
        assert meta["status"] == 200
        assert meta["durationMs"] > 0


class TestThreadFromRequest:
    def test_thread_header_and_cookie_join_the_thread(self, wsgi_server: StartServer) -> None:
        """A valid thread header or cookie joins that thread; the response names it."""
        server = wsgi_server(make_flask())
        tid = new_thread_id()
        by_header = httpx.get(f"{server.url}/work/1", headers={"X-Agentuity-Thread-Id": tid})
        by_cookie = httpx.get(f"{server.url}/work/2", headers={"cookie": f"agentuity_thread_id={tid}"})
        assert by_header.json()["threadId"] == tid
        assert by_cookie.json()["threadId"] == tid
        assert by_header.headers["x-agentuity-thread-id"] == tid

    @pytest.mark.parametrize("bad", ["EVIL", "thrd_EVIL<script>", "thrd_" + "EVIL" * 40])
    def test_invalid_thread_header_never_reaches_a_record(self, wsgi_server: StartServer, bad: str) -> None:
        """An invalid thread header starts a new thread, logs a warning, and appears in no record."""
        server = wsgi_server(make_flask())
        with capture_logs() as logs:
            resp = httpx.get(f"{server.url}/work/1", headers={"x-agentuity-thread-id": bad})
        body = resp.json()
        assert body["threadId"].startswith("thrd_")
        assert body["threadId"] != bad
        warnings = [e for e in entries_of(logs, body["sessionId"]) if e["level"] == "warning"]
        assert len(warnings) == 1
        assert "EVIL" not in json.dumps(logs)


class TestStreaming:
    def test_streaming_body_logs_inside_the_session(
        self, wsgi_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """Chunks produced while the server streams log inside the session; it ends after the body."""
        server = wsgi_server(SessionMiddleware(streaming_app))
        with capture_logs() as logs:
            with httpx.stream("GET", f"{server.url}/s") as resp:
                sid = resp.headers["x-agentuity-session-id"]
                text = "".join(resp.iter_text())
            meta = ended_sessions.wait_for(sid)
        assert text == "0\n1\n2\n"
        assert [e["message"] for e in entries_of(logs, sid)] == ["chunk", "chunk", "chunk", "stream done"]
        assert meta["durationMs"] >= 150
        assert meta["status"] == 200
        assert meta["route"] == "/s"

    def test_failure_mid_stream_is_logged_once(
        self, wsgi_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """An exception after part of the body was sent is logged once; the body ends there."""
        server = wsgi_server(SessionMiddleware(fails_mid_stream))
        with capture_logs() as logs:
            resp = httpx.get(f"{server.url}/")
            sid = resp.headers["x-agentuity-session-id"]
            ended_sessions.wait_for(sid)
        assert resp.text == "first\n"
        failures = [e for e in logs if "exception" in e]
        assert len(failures) == 1
        assert failures[0][SESSION_KEY] == sid
        assert ended_sessions.sessions[sid].success is False


class TestErrors:
    def test_flask_unhandled_exception_is_logged_once_and_answered_with_json(
        self, wsgi_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """Flask: one record with traceback and session; the client gets the JSON 500 without internals."""
        server = wsgi_server(make_flask())
        with capture_logs() as logs:
            resp = httpx.get(f"{server.url}/boom")
            sid = resp.headers["x-agentuity-session-id"]
            meta = ended_sessions.wait_for(sid)
        assert resp.status_code == 500
        assert resp.json() == {"success": False, "error": "Internal Server Error", "sessionId": sid}
        for leak in ("Traceback", "secret", ".py", "/srv", "RuntimeError"):
            assert leak not in resp.text
        failures = [e for e in logs if "exception" in e]
        assert len(failures) == 1
        assert failures[0][SESSION_KEY] == sid
        assert meta["status"] == 500

    @pytest.mark.parametrize("app", [raising_app, fails_after_start_response])
    def test_raw_wsgi_unhandled_exception_is_logged_once_and_answered_with_json(
        self, wsgi_server: StartServer, app: Any
    ) -> None:
        """Raw WSGI: the middleware logs once and answers the JSON 500, even after start_response."""
        server = wsgi_server(SessionMiddleware(app))
        with capture_logs() as logs:
            resp = httpx.get(f"{server.url}/x")
        sid = resp.headers["x-agentuity-session-id"]
        assert resp.status_code == 500
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == {"success": False, "error": "Internal Server Error", "sessionId": sid}
        assert "secret" not in resp.text
        failures = [e for e in logs if "exception" in e]
        assert len(failures) == 1
        assert failures[0][SESSION_KEY] == sid
        assert "RuntimeError" in failures[0]["exception"]["traceback"]

    def test_flask_error_response_helper(self, wsgi_server: StartServer) -> None:
        """error_response() is a Flask response as it is, in the same JSON shape."""
        server = wsgi_server(make_flask())
        resp = httpx.get(f"{server.url}/orders/7")
        sid = resp.headers["x-agentuity-session-id"]
        assert resp.status_code == 404
        assert resp.json() == {"success": False, "error": "order 7 not found", "sessionId": sid}


class TestContextIsolation:
    def test_server_thread_context_is_never_touched(self) -> None:
        """The session lives in its own context: after the call, iteration and close, ours is unchanged."""
        before = current_snapshot()
        seen: list[str | None] = []

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
            start_response("200 OK", [])
            seen.append(session_id())
            yield b"a"
            seen.append(session_id())

        statuses: list[str] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return lambda data: None

        body = SessionMiddleware(app)({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, start_response)
        assert current_snapshot() is before
        chunks = list(body)
        assert current_snapshot() is before
        body.close()  # type: ignore[attr-defined]
        body.close()  # type: ignore[attr-defined]
        assert chunks == [b"a"]
        assert seen[0] is not None
        assert seen[0] == seen[1]
        assert session_id() is None

    def test_unclosed_body_leaks_nothing(self) -> None:
        """A server that never calls close() leaves no session in its thread."""

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            start_response("200 OK", [])
            return [b"x"]

        body = SessionMiddleware(app)({}, lambda status, headers, exc_info=None: None)
        assert list(body) == [b"x"]
        assert session_id() is None
