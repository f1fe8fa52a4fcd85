"""The worker's HTTP/1.1 connection: kept alive, recovering from closes, errors classified.

A scripted loopback server shows exactly what goes over the wire: every connection it accepted,
every request's raw bytes, and answers chosen per request (keep-alive, ``Connection: close``,
chunked, a silent close, a slow answer). TLS runs against a throwaway self-signed certificate.
"""

from __future__ import annotations

import datetime
import http.client
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentuity_logging._delivery._transport import (
    DirectConnection,
    HttpxConnection,
    RequestRefusedError,
    TransportError,
    open_transport,
)

OK = b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone"
CHUNKED = (
    b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nslow \r\n4\r\ndown\r\n0\r\n\r\n"
)
SILENT = b""  # read the request, then close without answering
STALL = b"stall"  # read the request, never answer


class ScriptedServer:
    """Accepts connections, reads whole requests, answers from a script (default: 202)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # so close() is noticed quickly
        self.tls = tls
        self.script: deque[bytes] = deque()
        self.connections = 0
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(5)
            buffer = b""
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                answer = self.script.popleft() if self.script else OK
                if answer == SILENT:
                    return
                if answer == STALL:
                    self.stop.wait(10)
                    return
                conn.sendall(answer)
                if b"Connection: close" in answer:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    s = ScriptedServer()
    yield s
    s.close()


@pytest.fixture
def connection() -> Iterator[DirectConnection]:
    c = DirectConnection()
    yield c
    c.close()


HEADERS = {"Content-Type": "application/json", "DD-API-KEY": "k"}


class TestDirectConnection:
    def test_a_request_carries_host_length_and_our_headers(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        """The request line, Host, Content-Length, the protocol's headers, then the body intact."""
        body = b"x" * 50_000
        status, headers, content = connection.request(
            "POST", server.url + "/api/v2/logs?a=1", HEADERS, body, 5
        )
        assert (status, content, headers.get("content-type")) == (202, b"{}", "application/json")
        raw = server.requests[0]
        head, _, sent = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "POST /api/v2/logs?a=1 HTTP/1.1"
        assert f"Host: 127.0.0.1:{server.listener.getsockname()[1]}" in lines
        assert "Content-Length: 50000" in lines
        assert "DD-API-KEY: k" in lines
        assert any(line.startswith("User-Agent: agentuity-logging/") for line in lines)
        assert sent == body

    def test_the_connection_is_kept_alive_between_requests(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        for _ in range(5):
            assert connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)[0] == 202
        assert server.connections == 1
        assert len(server.requests) == 5

    def test_while_waiting_runs_after_the_request_is_sent_and_before_the_answer_is_read(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        """The worker prepares the next batch while the server works on this one."""
        server.script.append(CHUNKED)
        seen: list[tuple[bool, int]] = []

        def meanwhile() -> None:
            deadline = time.monotonic() + 5
            while not server.requests and time.monotonic() < deadline:
                time.sleep(0.005)
            seen.append((bool(server.requests), len(server.requests)))

        status = connection.request("POST", server.url + "/p", HEADERS, b"{}", 5, while_waiting=meanwhile)
        assert status[0] == 429  # the answer read after the callback is this request's own
        assert seen == [(True, 1)]

    def test_connection_close_answer_opens_a_new_connection_next_time(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        server.script.extend([CLOSE])
        assert connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)[:1] == (200,)
        assert connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)[0] == 202
        assert server.connections == 2

    def test_a_chunked_answer_is_read_whole_with_its_headers(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        server.script.append(CHUNKED)
        status, headers, content = connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)
        assert (status, headers.get("retry-after"), content) == (429, "3", b"slow down")
        assert connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)[0] == 202
        assert server.connections == 1

    def test_a_kept_alive_connection_the_server_dropped_is_replaced_once_silently(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        """The server closing an idle keep-alive connection is not a delivery failure."""
        assert connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)[0] == 202
        server.script.append(SILENT)
        assert connection.request("POST", server.url + "/p", HEADERS, b"second", 5)[0] == 202
        assert server.connections == 2
        assert server.requests[-1].endswith(b"second")

    def test_a_fresh_connection_closed_without_an_answer_is_a_transport_error(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        server.script.append(SILENT)
        with pytest.raises(TransportError, match="RemoteDisconnected"):
            connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)
        assert len(server.requests) == 1  # not sent twice on a new connection

    def test_a_slow_answer_times_out_as_a_transport_error(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        server.script.append(STALL)
        with pytest.raises(TransportError, match="timed out"):
            connection.request("POST", server.url + "/p", HEADERS, b"{}", 0.3)
        assert connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)[0] == 202

    def test_nobody_listening_is_a_transport_error(self, connection: DirectConnection) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(TransportError, match="refused"):
            connection.request("POST", f"http://127.0.0.1:{port}/p", HEADERS, b"{}", 2)

    def test_a_header_http_cannot_carry_is_refused_before_sending(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        with pytest.raises(RequestRefusedError):
            connection.request("POST", server.url + "/p", {"X-Name": "caf\u00e9 \u2603"}, b"{}", 5)
        assert server.requests == []

    def test_an_unknown_scheme_is_refused(self, connection: DirectConnection) -> None:
        with pytest.raises(RequestRefusedError, match="ftp"):
            connection.request("POST", "ftp://127.0.0.1/p", HEADERS, b"{}", 5)

    def test_http_client_parser_errors_are_transport_errors(
        self, server: ScriptedServer, connection: DirectConnection
    ) -> None:
        server.script.append(b"NOT HTTP AT ALL\r\n\r\n")
        with pytest.raises(TransportError, match="BadStatusLine"):
            connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)
        assert issubclass(http.client.BadStatusLine, http.client.HTTPException)


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


class TestTls:
    def test_verification_is_on_by_default_and_an_unknown_certificate_fails(self, tmp_path: Path) -> None:
        context, _ = _self_signed(tmp_path)
        server = ScriptedServer(tls=context)
        connection = DirectConnection()
        try:
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)
            assert server.requests == []
        finally:
            connection.close()
            server.close()

    def test_a_trusted_certificate_and_verify_false_both_deliver(self, tmp_path: Path) -> None:
        context, cert_path = _self_signed(tmp_path)
        server = ScriptedServer(tls=context)
        trusting = DirectConnection(ssl.create_default_context(cafile=str(cert_path)))
        unverified = DirectConnection(verify=False)
        try:
            assert trusting.request("POST", server.url + "/p", HEADERS, b"one", 5)[0] == 202
            assert trusting.request("POST", server.url + "/p", HEADERS, b"two", 5)[0] == 202
            assert unverified.request("POST", server.url + "/p", HEADERS, b"three", 5)[0] == 202
            assert [r.rpartition(b"\r\n\r\n")[2] for r in server.requests] == [b"one", b"two", b"three"]
            assert server.connections == 2
        finally:
            trusting.close()
            unverified.close()
            server.close()


class TestChoice:
    def test_direct_unless_an_environment_proxy_applies(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in (
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ):
            monkeypatch.delenv(name, raising=False)
        assert isinstance(open_transport("https://intake.example/x", True), DirectConnection)
        monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
        assert isinstance(open_transport("https://intake.example/x", True), HttpxConnection)
        assert isinstance(open_transport("http://intake.example/x", True), DirectConnection)
        monkeypatch.setenv("no_proxy", "intake.example")
        assert isinstance(open_transport("https://intake.example/x", True), DirectConnection)

    def test_the_httpx_connection_speaks_the_same_interface(self, server: ScriptedServer) -> None:
        connection = HttpxConnection()
        try:
            server.script.append(CHUNKED)
            status, headers, content = connection.request("POST", server.url + "/p", HEADERS, b"{}", 5)
            assert (status, headers.get("retry-after"), content) == (429, "3", b"slow down")
            with pytest.raises(RequestRefusedError):
                connection.request("POST", "ftp://127.0.0.1/p", HEADERS, b"{}", 5)
        finally:
            connection.close()
