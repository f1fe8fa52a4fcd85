"""ASGI SessionMiddleware on a real uvicorn server (and at the websocket scope level)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from agentuity_logging import bound, get_logger, new_thread_id, session_id, thread_id
from agentuity_logging._records import SESSION_KEY, THREAD_KEY
from agentuity_logging._spans import span
from agentuity_logging.integrations.asgi import SessionMiddleware
from agentuity_logging.integrations.errors import error_response
from agentuity_logging.testing import capture_logs
from tests.integrations.conftest import EndedSessions, UvicornServer

log = get_logger("tests.asgi.app")
SECRET = "secret-db-password at /srv/app/internal.py"


class OrderNotFoundError(Exception):
    pass


def make_app(*, set_cookie: bool = False) -> FastAPI:
    app = FastAPI()
    app.add_middleware(SessionMiddleware, set_cookie=set_cookie)

    @app.get("/work/{n}")
    async def work(n: int) -> dict[str, Any]:
        with bound(req=n):
            log.info("start")
            await asyncio.sleep(0)
            with span("inner", n=n):
                await asyncio.sleep(0.001)
                logging.getLogger("thirdparty.client").info("library line")
            log.info("end")
        return {"sessionId": session_id(), "threadId": thread_id()}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def body() -> Any:
            for i in range(3):
                log.info("chunk", i=i)
                await asyncio.sleep(0.05)
                yield f"{i}\n"
            log.info("stream done")

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/stream-fails")
    async def stream_fails() -> StreamingResponse:
        async def body() -> Any:
            yield "first\n"
            await asyncio.sleep(0.01)
            raise RuntimeError(SECRET)

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> None:
        log.info("about to fail")
        raise RuntimeError(SECRET)

    @app.get("/missing")
    async def missing() -> None:
        raise HTTPException(status_code=404, detail="nope")

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> None:
        raise OrderNotFoundError(f"order {order_id} not found")

    @app.exception_handler(OrderNotFoundError)
    async def not_found(request: Request, exc: OrderNotFoundError) -> JSONResponse:
        response: JSONResponse = error_response(exc, status=404).to_starlette()
        return response

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        return {"sessionId": session_id(), "threadId": thread_id()}

    return app


StartServer = Callable[[Any], UvicornServer]


def entries_of(logs: list[dict[str, Any]], sid: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get(SESSION_KEY) == sid]


class TestConcurrentRequests:
    def test_500_concurrent_requests_never_share_ids(
        self, uvicorn_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """500 concurrent requests: every record carries exactly its own request's session and thread."""
        server = uvicorn_server(make_app())
        shared_thread = new_thread_id()

        async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
            headers = {"x-agentuity-thread-id": shared_thread} if i % 2 == 0 else {}
            return await client.get(f"/work/{i}", headers=headers)

        async def main() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
                return list(await asyncio.gather(*(one(client, i) for i in range(500))))

        with capture_logs() as logs:
            responses = asyncio.run(main())
            sessions = {}
            threads = {}
            for i, resp in enumerate(responses):
                assert resp.status_code == 200
                body = resp.json()
                assert body["sessionId"] == resp.headers["x-agentuity-session-id"]
                assert body["threadId"] == resp.headers["x-agentuity-thread-id"]
                sessions[i] = body["sessionId"]
                threads[i] = body["threadId"]
            for sid in sessions.values():
                ended_sessions.wait_for(sid)

        assert len(set(sessions.values())) == 500
        assert all(threads[i] == shared_thread for i in range(0, 500, 2))
        assert len({threads[i] for i in range(1, 500, 2)}) == 250
        owner = {sid: i for i, sid in sessions.items()}
        per_request: dict[int, list[str]] = {i: [] for i in range(500)}
        for entry in logs:
            if "req" in entry:
                i = entry["req"]
                assert entry[SESSION_KEY] == sessions[i], f"record of request {i} has another's ID"
                assert entry[THREAD_KEY] == threads[i]
                per_request[i].append(entry["message"])
            elif SESSION_KEY in entry:
                pytest.fail(f"record without its request marker inside a session: {entry}")
            if SESSION_KEY in entry:
                assert owner[entry[SESSION_KEY]] == entry["req"]
        for i, messages in per_request.items():
            assert sorted(messages) == ["end", "library line", "span inner", "start"], i
        meta = ended_sessions.metadata[sessions[7]]
        assert meta["method"] == "GET"
        assert meta["route"] == "/work/{n}"
        assert meta["path"] == "/work/7"
        assert meta["status"] == 200
        assert meta["durationMs"] > 0


class TestThreadFromRequest:
    def test_thread_header_joins_the_thread(self, uvicorn_server: StartServer) -> None:
        """A valid x-agentuity-thread-id header joins that thread; the response names it."""
        server = uvicorn_server(make_app())
        tid = new_thread_id()
        resp = httpx.get(f"{server.url}/whoami", headers={"x-agentuity-thread-id": tid})
        assert resp.json()["threadId"] == tid
        assert resp.headers["x-agentuity-thread-id"] == tid

    def test_thread_cookie_joins_the_thread(self, uvicorn_server: StartServer) -> None:
        """A valid agentuity_thread_id cookie joins that thread."""
        server = uvicorn_server(make_app())
        tid = new_thread_id()
        resp = httpx.get(f"{server.url}/whoami", headers={"cookie": f"other=1; agentuity_thread_id={tid}"})
        assert resp.json()["threadId"] == tid

    def test_no_thread_starts_a_new_one_per_request(self, uvicorn_server: StartServer) -> None:
        """Without a header or cookie every request starts its own thread."""
        server = uvicorn_server(make_app())
        first = httpx.get(f"{server.url}/whoami").json()["threadId"]
        second = httpx.get(f"{server.url}/whoami").json()["threadId"]
        assert first != second

    @pytest.mark.parametrize(
        "bad",
        ["EVILthrd", "thrd_EVIL<script>", "thrd_EVIL../../etc", "thrd_" + "EVIL" * 40, "sess_EVIL"],
    )
    def test_invalid_thread_header_never_reaches_a_record(
        self, uvicorn_server: StartServer, bad: str
    ) -> None:
        """An invalid thread header starts a new thread, logs a warning, and appears in no record."""
        server = uvicorn_server(make_app())
        with capture_logs() as logs:
            resp = httpx.get(f"{server.url}/whoami", headers={"x-agentuity-thread-id": bad})
        body = resp.json()
        assert body["threadId"] != bad
        assert body["threadId"].startswith("thrd_")
        warnings = [e for e in entries_of(logs, body["sessionId"]) if e["level"] == "warning"]
        assert len(warnings) == 1
        assert "x-agentuity-thread-id header" in warnings[0]["message"]
        assert "EVIL" not in json.dumps(logs)
        assert "EVIL" not in resp.text

    def test_invalid_cookie_never_reaches_a_record(self, uvicorn_server: StartServer) -> None:
        """An invalid thread cookie starts a new thread and is not logged."""
        server = uvicorn_server(make_app())
        with capture_logs() as logs:
            resp = httpx.get(f"{server.url}/whoami", headers={"cookie": "agentuity_thread_id=EVIL"})
        assert resp.json()["threadId"].startswith("thrd_")
        assert "EVIL" not in json.dumps(logs)
        assert any("agentuity_thread_id cookie" in e["message"] for e in logs)

    def test_set_cookie_option_answers_with_the_thread_cookie(self, uvicorn_server: StartServer) -> None:
        """set_cookie=True answers with a Set-Cookie naming the thread."""
        server = uvicorn_server(make_app(set_cookie=True))
        resp = httpx.get(f"{server.url}/whoami")
        assert resp.cookies["agentuity_thread_id"] == resp.json()["threadId"]

    def test_caller_session_is_kept_as_metadata(
        self, uvicorn_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """A valid x-agentuity-session-id from the caller becomes callerSessionId; our session is new."""
        server = uvicorn_server(make_app())
        caller = "sess_" + "ab" * 16
        resp = httpx.get(f"{server.url}/whoami", headers={"x-agentuity-session-id": caller})
        sid = resp.json()["sessionId"]
        assert sid != caller
        assert ended_sessions.wait_for(sid)["callerSessionId"] == caller


class TestStreaming:
    def test_streaming_body_logs_inside_the_session(
        self, uvicorn_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """Records logged while the body streams carry the session; it ends after the body does."""
        server = uvicorn_server(make_app())
        with capture_logs() as logs:
            with httpx.stream("GET", f"{server.url}/stream") as resp:
                sid = resp.headers["x-agentuity-session-id"]
                text = "".join(resp.iter_text())
            meta = ended_sessions.wait_for(sid)
        assert text == "0\n1\n2\n"
        mine = [e["message"] for e in entries_of(logs, sid)]
        assert mine == ["chunk", "chunk", "chunk", "stream done"]
        assert meta["status"] == 200
        assert meta["durationMs"] >= 150

    def test_failure_mid_stream_is_logged_once_and_the_stream_is_cut(
        self, uvicorn_server: StartServer
    ) -> None:
        """An exception after the body began is logged once; the client sees a broken stream."""
        server = uvicorn_server(make_app())
        with capture_logs() as logs, httpx.stream("GET", f"{server.url}/stream-fails") as resp:
            sid = resp.headers["x-agentuity-session-id"]
            with pytest.raises(httpx.HTTPError):
                resp.read()
        tracebacks = [e for e in logs if "exception" in e]
        assert len(tracebacks) == 1
        assert tracebacks[0][SESSION_KEY] == sid


class TestErrors:
    def test_unhandled_exception_is_logged_once_and_answered_with_json(
        self, uvicorn_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """An unhandled exception: one record with traceback and session, a JSON 500 without internals."""
        server = uvicorn_server(make_app())
        with capture_logs() as logs:
            resp = httpx.get(f"{server.url}/boom")
            sid = resp.headers["x-agentuity-session-id"]
            meta = ended_sessions.wait_for(sid)
        assert resp.status_code == 500
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == {"success": False, "error": "Internal Server Error", "sessionId": sid}
        for leak in ("Traceback", "secret", ".py", "/srv", "RuntimeError"):
            assert leak not in resp.text
        failures = [e for e in logs if "exception" in e]
        assert len(failures) == 1
        assert failures[0][SESSION_KEY] == sid
        assert failures[0]["level"] == "error"
        assert "RuntimeError" in failures[0]["exception"]["traceback"]
        assert not [e for e in logs if e["logger"].startswith("uvicorn") and e["level"] == "error"]
        assert meta["status"] == 500
        assert ended_sessions.sessions[sid].success is False

    def test_http_exception_passes_through(
        self, uvicorn_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """A handled HTTPException keeps the framework's answer, gains the session headers."""
        server = uvicorn_server(make_app())
        with capture_logs() as logs:
            resp = httpx.get(f"{server.url}/missing")
        assert resp.status_code == 404
        assert resp.json() == {"detail": "nope"}
        sid = resp.headers["x-agentuity-session-id"]
        assert ended_sessions.wait_for(sid)["status"] == 404
        assert not [e for e in logs if "exception" in e]

    def test_error_response_helper_in_an_exception_handler(self, uvicorn_server: StartServer) -> None:
        """error_response() builds the same JSON shape for a handled error, with the session ID."""
        server = uvicorn_server(make_app())
        resp = httpx.get(f"{server.url}/orders/42")
        sid = resp.headers["x-agentuity-session-id"]
        assert resp.status_code == 404
        assert resp.json() == {"success": False, "error": "order 42 not found", "sessionId": sid}


# --- websockets, at the ASGI scope level (no websocket library is installed for uvicorn) ----------------


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    log.info("ws got", text=text)
    await asyncio.sleep(0)
    await websocket.send_text(f"{session_id()} {text}")
    await websocket.close()


async def ws_fails(websocket: WebSocket) -> None:
    await websocket.accept()
    raise RuntimeError(SECRET)


async def ws_refuses(websocket: WebSocket) -> None:
    await websocket.close(code=1008)


ws_app = SessionMiddleware(
    Starlette(
        routes=[
            WebSocketRoute("/ws", ws_echo),
            WebSocketRoute("/ws-fails", ws_fails),
            WebSocketRoute("/ws-refuses", ws_refuses),
        ]
    )
)


async def drive_websocket(
    path: str, text: str = "hi", headers: list[tuple[bytes, bytes]] | None = None
) -> list[dict[str, Any]]:
    """Run one websocket connection through the app with a scripted client; return what it sent."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in (
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": text},
    ):
        inbox.put_nowait(message)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if inbox.empty():
            return {"type": "websocket.disconnect", "code": 1000}
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 50000),
        "subprotocols": [],
    }
    await ws_app(scope, receive, send)
    return sent


def accept_headers(sent: list[dict[str, Any]]) -> dict[str, str]:
    accept = next(m for m in sent if m["type"] == "websocket.accept")
    return {k.decode(): v.decode() for k, v in accept["headers"]}


class TestWebsocket:
    def test_each_connection_is_its_own_session(self, ended_sessions: EndedSessions) -> None:
        """Concurrent websocket connections get a session each; records and accept headers agree."""

        async def main() -> list[list[dict[str, Any]]]:
            return list(await asyncio.gather(*(drive_websocket("/ws", f"m{i}") for i in range(20))))

        with capture_logs() as logs:
            runs = asyncio.run(main())
        seen = set()
        for i, sent in enumerate(runs):
            sid = accept_headers(sent)["x-agentuity-session-id"]
            reply = next(m for m in sent if m["type"] == "websocket.send")["text"]
            assert reply == f"{sid} m{i}"
            (got,) = [e for e in logs if e.get("text") == f"m{i}"]
            assert got[SESSION_KEY] == sid
            seen.add(sid)
            meta = ended_sessions.metadata[sid]
            assert meta["method"] == "WEBSOCKET"
            assert meta["route"] == "/ws"
            assert meta["status"] == 101
        assert len(seen) == 20

    def test_websocket_thread_header_is_validated(self) -> None:
        """A websocket's thread header joins a valid thread and refuses an invalid one."""
        tid = new_thread_id()
        good = asyncio.run(drive_websocket("/ws", headers=[(b"x-agentuity-thread-id", tid.encode())]))
        assert accept_headers(good)["x-agentuity-thread-id"] == tid
        with capture_logs() as logs:
            bad = asyncio.run(drive_websocket("/ws", headers=[(b"x-agentuity-thread-id", b"EVIL")]))
        assert accept_headers(bad)["x-agentuity-thread-id"].startswith("thrd_")
        assert "EVIL" not in json.dumps(logs)

    def test_websocket_failure_is_logged_once_and_closed_1011(self) -> None:
        """An exception in a websocket handler is logged once and closes the socket with 1011."""
        with capture_logs() as logs:
            sent = asyncio.run(drive_websocket("/ws-fails"))
        sid = accept_headers(sent)["x-agentuity-session-id"]
        assert sent[-1] == {"type": "websocket.close", "code": 1011, "reason": ""}
        failures = [e for e in logs if "exception" in e]
        assert len(failures) == 1
        assert failures[0][SESSION_KEY] == sid

    def test_refused_websocket_is_a_403(self, ended_sessions: EndedSessions) -> None:
        """A close before the accept is recorded as status 403."""
        asyncio.run(drive_websocket("/ws-refuses"))
        (meta,) = [m for m in ended_sessions.metadata.values() if m["path"] == "/ws-refuses"]
        assert meta["status"] == 403


class TestRawAsgi:
    def test_lifespan_passes_through(self) -> None:
        """Scopes other than http and websocket reach the app untouched, outside any session."""
        seen: list[tuple[str, str | None]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append((scope["type"], session_id()))

        async def receive() -> dict[str, Any]:
            return {"type": "lifespan.startup"}

        async def send(message: Any) -> None:
            return None

        asyncio.run(SessionMiddleware(app)({"type": "lifespan"}, receive, send))
        assert seen == [("lifespan", None)]

    def test_app_headers_of_the_same_name_are_replaced(self) -> None:
        """A response that already named a session gets ours instead, once."""
        sent: list[dict[str, Any]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"X-Agentuity-Session-Id", b"sess_forged"), (b"x-other", b"1")],
                }
            )
            await send({"type": "http.response.body", "body": b"ok"})

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        asyncio.run(SessionMiddleware(app)(scope, receive, send))
        names = [k.lower() for k, _ in sent[0]["headers"]]
        assert names.count(b"x-agentuity-session-id") == 1
        assert (b"x-agentuity-session-id", b"sess_forged") not in sent[0]["headers"]
        assert b"x-other" in names

    def test_app_returning_without_response_gets_no_error_from_us(self) -> None:
        """Cancellation propagates out of the middleware and still ends the session."""

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise asyncio.CancelledError

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        async def send(message: Any) -> None:
            return None

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(SessionMiddleware(app)(scope, receive, send))
        assert session_id() is None

    def test_unhandled_error_without_session_leak(self) -> None:
        """After a failed request the caller's context holds no session."""

        async def app(scope: Any, receive: Any, send: Any) -> None:
            raise ValueError("x")

        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/p", "headers": []}
        with capture_logs():
            asyncio.run(SessionMiddleware(app)(scope, receive, send))
        assert sent[0]["status"] == 500
        assert json.loads(sent[1]["body"])["success"] is False
        assert session_id() is None
