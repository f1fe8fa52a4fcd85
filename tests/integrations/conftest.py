"""Real servers on loopback for the middleware tests, each stopped by its fixture."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentuity_logging._context import Session, add_session_listener, remove_session_listener


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class UvicornServer:
    """A uvicorn server in a thread on a free loopback port; logging configuration left untouched."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = _loopback_socket()
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            backlog=2048,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="test-uvicorn", daemon=True
        )

    def start(self) -> None:
        self.thread.start()
        deadline = threading.Event()
        for _ in range(500):
            if self.server.started:
                return
            deadline.wait(0.01)
        raise RuntimeError("uvicorn did not start within 5 s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


class WsgiServer:
    """Werkzeug's threaded WSGI server in a thread on a free loopback port, request log muted."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

        class QuietHandler(WSGIRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                return

        class Server(ThreadedWSGIServer):
            request_queue_size = 1024  # the listen backlog: 500 clients connect at once

        self.server = Server("127.0.0.1", 0, app, handler=QuietHandler)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="test-wsgi",
            daemon=True,
        )

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the WSGI server did not stop"


@pytest.fixture
def uvicorn_server() -> Iterator[Callable[[Any], UvicornServer]]:
    """Start uvicorn servers for ASGI apps; every one is stopped after the test."""
    servers: list[UvicornServer] = []

    def start(app: Any) -> UvicornServer:
        srv = UvicornServer(app)
        srv.start()
        servers.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in servers:
            srv.stop()


@pytest.fixture
def wsgi_server() -> Iterator[Callable[[Any], WsgiServer]]:
    """Start WSGI servers; every one is stopped after the test."""
    servers: list[WsgiServer] = []

    def start(app: Any) -> WsgiServer:
        srv = WsgiServer(app)
        srv.start()
        servers.append(srv)
        return srv

    try:
        yield start
    finally:
        for srv in servers:
            srv.stop()


class EndedSessions:
    """A session listener keeping every session that ended, by ID."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.metadata: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.ended = threading.Condition(self.lock)

    def session_started(self, session: Session) -> None:
        return

    def session_ended(self, session: Session) -> None:
        with self.ended:
            self.sessions[session.id] = session
            self.metadata[session.id] = dict(session.metadata)
            self.ended.notify_all()

    def wait_for(self, session_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """Return the metadata of ``session_id`` once it ended (servers end it after the reply)."""
        with self.ended:
            if not self.ended.wait_for(lambda: session_id in self.metadata, timeout_s):
                raise AssertionError(f"session {session_id} did not end within {timeout_s} s")
            return self.metadata[session_id]


@pytest.fixture
def ended_sessions() -> Iterator[EndedSessions]:
    """Collect the sessions that end during the test."""
    listener = EndedSessions()
    add_session_listener(listener)
    try:
        yield listener
    finally:
        remove_session_listener(listener)
