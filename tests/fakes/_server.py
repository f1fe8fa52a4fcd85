"""Plumbing shared by the fake backends: a real loopback HTTP server with scripted faults.

Each fake is a ``FakeServer`` subclass that implements ``handle`` (decode, check, store,
answer like the real service) and ``error_reply`` (the vendor's error body shape). The base
class owns the socket, the threads, request-body reading (Content-Length and chunked) and
the fault script, so the fakes share one implementation of ``fail_next``, ``slow_next``,
``drop_connection_next``, ``down``/``up`` and friends.

Everything is bounded: sockets time out, scripted delays wake up on ``stop()``, ``stop()``
closes open keep-alive connections and joins every handler thread.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import socketserver
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar

__all__ = ["FakeServer", "ReceivedRequest", "Reply", "decompress"]

#: Seconds a connection may sit idle or mid-request before the fake gives up on it.
SOCKET_TIMEOUT_S = 5.0
#: Hard cap on a request body the fakes read (the real services' limits are lower).
MAX_READ_BYTES = 64 * 1024 * 1024


@dataclass
class ReceivedRequest:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lowercased
    raw_body: bytes  # as received (after de-chunking, before Content-Encoding)
    chunked: bool = False
    status: int | None = None  # what the fake answered; None if the connection was dropped
    state: dict[str, Any] = field(default_factory=dict)  # per-request notes of a fake
    client_port: int = 0  # the sender's port: one per connection

    def header(self, name: str, default: str | None = None) -> str | None:
        """Header value by case-insensitive name."""
        return self.headers.get(name.lower(), default)

    @property
    def media_type(self) -> str:
        """Content-Type without parameters, lowercased (``""`` when missing)."""
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def param(self, name: str) -> str | None:
        """First value of a query-string parameter."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Reply:
    """What the fake answers."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    kind: str  # "reply" | "slow" | "drop"
    reply: Reply | None = None
    seconds: float = 0.0
    make: Callable[[ReceivedRequest], Reply] | None = None


class _BodyTooLargeError(Exception):
    pass


def decompress(body: bytes, encoding: str | None) -> bytes:
    """Undo a Content-Encoding (gzip, deflate as zlib or raw); raises ``ValueError``."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity"):
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"cannot decode {encoding} body: {exc}") from exc
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, asks the fake for a reply, writes it (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    # Headers and body go out in two writes; with Nagle on, a keep-alive client waits ~40 ms for the
    # second. Real intakes answer at once, so neither should the fakes.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def _read_body(self) -> tuple[bytes, bool]:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ConnectionError("connection closed inside a chunked body")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks), True
                total += size
                if total > MAX_READ_BYTES:
                    raise _BodyTooLargeError
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_READ_BYTES:
            raise _BodyTooLargeError
        return (self.rfile.read(length) if length else b""), False

    def _dispatch(self) -> None:
        fake = self.server.fake
        try:
            body, chunked = self._read_body()
        except _BodyTooLargeError:
            self.close_connection = True
            self._write(Reply(413, b"request body too large"))
            return
        except ValueError:
            self.close_connection = True
            self._write(Reply(400, b"malformed chunked body"))
            return
        split = urllib.parse.urlsplit(self.path)
        request = ReceivedRequest(
            method=self.command,
            path=split.path,
            query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            raw_body=body,
            chunked=chunked,
            client_port=self.client_address[1],
        )
        reply = fake._respond(request)
        if reply is None:
            # A scripted dropped connection: no answer at all, the socket just closes.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)


class _Server(ThreadingHTTPServer):
    # Handler threads are joined on close (every one is bounded by SOCKET_TIMEOUT_S).
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeServer) -> None:
        self.fake = fake
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn): skip the DNS lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, OSError):
            self.fake.errors.append(error)


_F = TypeVar("_F", bound="FakeServer")


class FakeServer:
    """Base of the fake backends: a loopback HTTP server with a fault-injection script.

    Use as a context manager or call ``start()``/``stop()``; fixtures do it for tests.
    ``fault_paths`` limits scripted faults to the ingest endpoints (``None``: every path).
    """

    name: ClassVar[str] = "fake"
    fault_paths: ClassVar[frozenset[str] | None] = None
    #: Header a 429 uses to say when to come back.
    rate_limit_header: ClassVar[str] = "Retry-After"

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._faults: deque[_Fault] = deque()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._port = 0
        self._unavailable = False
        self.requests: list[ReceivedRequest] = []
        self.errors: list[BaseException] = []
        self._in_flight = 0
        #: The most requests this fake was handling at the same time.
        self.in_flight_peak = 0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self: _F) -> _F:
        """Bind 127.0.0.1 on a free port (the same port again after ``down()``) and serve."""
        self._stopping.clear()
        server = _Server(("127.0.0.1", self._port), self)
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},  # bounds how long stop() waits
            name=f"fake-{self.name}-{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and join every thread; idempotent."""
        self._stopping.set()
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=SOCKET_TIMEOUT_S)

    def __enter__(self: _F) -> _F:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._port}"

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)
            self._lock.notify_all()

    # --- fault injection ----------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 503,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` ingest requests with ``status`` (vendor error body by default)."""
        self._script(n, status, body, headers)

    def reject_next(
        self,
        n: int = 1,
        *,
        status: int = 400,
        body: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Refuse the next ``n`` ingest requests (default 400) without storing anything."""
        self._script(n, status, body, headers)

    def rate_limit_next(
        self,
        n: int = 1,
        *,
        retry_after: str | None = "1",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer 429 to the next ``n`` ingest requests, saying when to retry if given.

        The delay goes into the service's own header (``rate_limit_header``).
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra.setdefault(self.rate_limit_header, retry_after)
        self._script(n, 429, None, extra)

    def slow_next(self, n: int = 1, seconds: float = 1.0) -> None:
        """Delay the next ``n`` ingest requests by ``seconds``, then handle them normally."""
        with self._lock:
            self._faults.extend(_Fault("slow", seconds=seconds) for _ in range(n))

    def drop_connection_next(self, n: int = 1) -> None:
        """Read the next ``n`` ingest requests, then close the socket without answering."""
        with self._lock:
            self._faults.extend(_Fault("drop") for _ in range(n))

    def down(self, *, refuse: bool = True) -> None:
        """Go away: refuse connections (``refuse=True``) or answer 503 to ingest requests."""
        if refuse:
            self.stop()
        else:
            self._unavailable = True

    def up(self) -> None:
        """Come back on the same port after ``down()``."""
        self._unavailable = False
        if self._server is None:
            self.start()

    def clear_faults(self) -> None:
        """Forget every scripted fault not yet used."""
        with self._lock:
            self._faults.clear()

    def _script(
        self,
        n: int,
        status: int,
        body: bytes | str | None,
        headers: Mapping[str, str] | None,
    ) -> None:
        extra = dict(headers or {})
        if body is None:

            def make(request: ReceivedRequest) -> Reply:
                reply = self.error_reply(request, status, _REASONS.get(status, "error"))
                reply.headers.update(extra)
                return reply

            faults = [_Fault("reply", make=make) for _ in range(n)]
        else:
            data = body.encode() if isinstance(body, str) else body
            faults = [_Fault("reply", reply=Reply(status, data, extra)) for _ in range(n)]
        with self._lock:
            self._faults.extend(faults)

    # --- waiting ------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
        """Wait until ``predicate()`` holds or the timeout.

        The predicate is checked again whenever a request is answered or a connection opens
        or closes.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def wait_for_requests(self, n: int, timeout_s: float = 5.0) -> bool:
        """Wait until ``n`` requests have been answered (or dropped)."""
        return self.wait_for(lambda: len(self.requests) >= n, timeout_s)

    # --- request handling ---------------------------------------------------------------

    def _respond(self, request: ReceivedRequest) -> Reply | None:
        with self._lock:
            self._in_flight += 1
            self.in_flight_peak = max(self.in_flight_peak, self._in_flight)
        try:
            return self._respond_now(request)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _respond_now(self, request: ReceivedRequest) -> Reply | None:
        faulted = self.fault_paths is None or request.path in self.fault_paths
        fault = None
        if faulted:
            with self._lock:
                fault = self._faults.popleft() if self._faults else None
            if fault is not None and fault.kind == "slow":
                self._stopping.wait(fault.seconds)
                fault = None
        reply: Reply | None
        if fault is not None and fault.kind == "drop":
            reply = None
        elif fault is not None:
            reply = fault.make(request) if fault.make else fault.reply
        elif faulted and self._unavailable:
            reply = self.error_reply(request, 503, "service unavailable")
        else:
            try:
                reply = self.handle(request)
            except Exception as exc:
                self.errors.append(exc)
                reply = Reply(500, f"fake {self.name} crashed: {exc!r}".encode())
        request.status = None if reply is None else reply.status
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()
        return reply

    def handle(self, request: ReceivedRequest) -> Reply:
        """Answer one request like the real service (subclasses)."""
        raise NotImplementedError

    def error_reply(self, request: ReceivedRequest, status: int, message: str) -> Reply:
        """An error answer in the vendor's shape; plain text by default."""
        return Reply(status, message.encode(), {"Content-Type": "text/plain; charset=utf-8"})


_REASONS = {
    400: "bad request",
    401: "unauthorized",
    403: "forbidden",
    404: "not found",
    408: "request timeout",
    413: "request entity too large",
    415: "unsupported media type",
    422: "unprocessable entity",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}
