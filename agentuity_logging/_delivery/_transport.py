"""The delivery worker's HTTP/1.1 connection: one request in flight, kept alive between batches.

A shipper sends one request per batch from a background thread that shares the GIL with the
application. Every blocking call the worker makes releases the GIL, and while the application is
busy logging, taking it back costs the worker up to a switch interval (5 ms by default). So the
direct connection here writes each request with one ``sendall`` (head and body together) and reads
the answer through ``http.client``'s parser from one buffered socket: measured, httpx made eight
system calls and spent ~550 µs of CPU per request where this makes two or three and ~160 µs.

httpx stays the transport when an environment proxy (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``,
not bypassed by ``NO_PROXY``) applies to the URL: it knows proxies, this connection does not.

Both raise :class:`TransportError` (worth a retry: refused or dropped connections, timeouts, TLS
failures, garbled answers) or :class:`RequestRefusedError` (the request itself cannot be sent).
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DirectConnection",
    "HttpxConnection",
    "RequestRefusedError",
    "Transport",
    "TransportError",
    "open_transport",
]

#: After this long unused, a kept-alive connection is checked before a request (the server may
#: have closed it; the answer would otherwise be an error and a needless backoff).
IDLE_CHECK_S = 1.0


class TransportError(Exception):
    """The request may not have arrived: connection refused or dropped, timeout, TLS, bad answer."""


class RequestRefusedError(Exception):
    """The request cannot be sent at all (a scheme we do not speak, a header HTTP cannot carry)."""


class Transport(Protocol):
    """What the engine needs of a connection."""

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float,
        *,
        while_waiting: Callable[[], None] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send one request; return the status, headers and body of the answer.

        ``while_waiting`` (which must not raise) may run once the request is sent and before the
        answer is read, so the caller's own work overlaps the server's.
        """

    def close(self) -> None:
        """Close the connection (idempotent)."""


def _proxied(parts: SplitResult) -> bool:
    """Whether an environment proxy applies to this URL (the stdlib's reading of the variables)."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2])


def open_transport(url: str, verify: bool | ssl.SSLContext) -> Transport:
    """The connection for ``url``: direct, or through httpx when an environment proxy applies."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RequestRefusedError(f"unsupported URL scheme {parts.scheme!r}")
    if _proxied(parts):
        return HttpxConnection(verify)
    return DirectConnection(verify)


def _tls_context(verify: bool | ssl.SSLContext) -> ssl.SSLContext:
    if isinstance(verify, ssl.SSLContext):
        return verify
    if not verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:  # httpx's choice of trust store, when it is installed (the ``ship`` extra brings it)
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


class DirectConnection:
    """One keep-alive HTTP/1.1 connection on a plain (or TLS) socket; not thread-safe."""

    __slots__ = ("_context", "_key", "_last_used", "_sock", "_user_agent", "_verify")

    def __init__(self, verify: bool | ssl.SSLContext = True) -> None:
        from agentuity_logging import __version__

        self._verify = verify
        self._context: ssl.SSLContext | None = None
        self._sock: socket.socket | None = None
        self._key: tuple[str, str, int] | None = None
        self._last_used = 0.0
        self._user_agent = f"agentuity-logging/{__version__}"

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float,
        *,
        while_waiting: Callable[[], None] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestRefusedError(f"unsupported URL {parts.scheme}://{parts.hostname or ''}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise RequestRefusedError(f"bad port in URL: {exc}") from None
        key = (parts.scheme, parts.hostname, port)
        message = self._message(method, parts, headers, body)
        reused = self._sock is not None and self._key == key
        if reused and time.monotonic() - self._last_used > IDLE_CHECK_S and self._peer_closed():
            reused = False
        if not reused:
            self.close()
        try:
            try:
                return self._exchange(key, message, method, timeout, while_waiting)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                # The server closed the kept-alive connection before reading this request: once
                # more on a new connection (what urllib3 and httpcore do too).
                self.close()
                return self._exchange(key, message, method, timeout, while_waiting)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(f"{type(exc).__name__}: {exc or 'no answer'}") from None

    def _message(self, method: str, parts: SplitResult, headers: Mapping[str, str], body: bytes) -> bytes:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rpartition("@")[2]
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lowered = {name.lower() for name in headers}
        if "user-agent" not in lowered:
            lines.append(f"User-Agent: {self._user_agent}")
        for name, value in headers.items():
            if name.lower() not in ("host", "content-length"):
                lines.append(f"{name}: {value}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise RequestRefusedError("a header holds characters HTTP/1.1 cannot carry") from None
        return head + body

    def _exchange(
        self,
        key: tuple[str, str, int],
        message: bytes,
        method: str,
        timeout: float,
        while_waiting: Callable[[], None] | None,
    ) -> tuple[int, Any, bytes]:
        sock = self._sock
        if sock is None:
            sock = self._connect(key, timeout)
        sock.settimeout(timeout)
        sock.sendall(message)
        if while_waiting is not None:
            while_waiting()
        response = http.client.HTTPResponse(sock, method=method)
        try:
            response.begin()
            data = response.read()
        finally:
            response.close()  # the buffered reader only; the socket stays ours
        if response.will_close:
            self.close()
        else:
            self._last_used = time.monotonic()
        return response.status, response.headers, data

    def _connect(self, key: tuple[str, str, int], timeout: float) -> socket.socket:
        scheme, host, port = key
        sock = socket.create_connection((host, port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._context is None:
                    self._context = _tls_context(self._verify)
                sock = self._context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        self._sock, self._key = sock, key
        return sock

    def _peer_closed(self) -> bool:
        """Whether the idle connection was closed by the server (readable means EOF or garbage)."""
        sock = self._sock
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        sock, self._sock, self._key = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):  # a socket that is already gone
                sock.close()


class HttpxConnection:
    """The same interface over an ``httpx.Client`` (environment proxies, via httpx's own reading)."""

    __slots__ = ("_client", "_verify")

    def __init__(self, verify: bool | ssl.SSLContext = True) -> None:
        self._verify = verify
        self._client: httpx.Client | None = None

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float,
        *,
        while_waiting: Callable[[], None] | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        import httpx  # httpx gives no moment between sending and reading: ``while_waiting`` never runs

        client = self._client
        if client is None:
            client = self._client = httpx.Client(
                verify=self._verify,
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                follow_redirects=False,  # a redirect must never carry our credentials elsewhere
            )
        try:
            response = client.request(method, url, content=body, headers=dict(headers), timeout=timeout)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            raise RequestRefusedError(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:
            raise TransportError(f"{type(exc).__name__}: {exc or 'no answer'}") from None
        return response.status_code, response.headers, response.content

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()
