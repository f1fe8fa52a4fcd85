"""Outgoing propagation: httpx (sync and async) and requests add the session and thread headers."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests

from agentuity_logging import MissingDependencyError, session
from agentuity_logging.integrations import httpx as al_httpx
from agentuity_logging.integrations import requests as al_requests
from agentuity_logging.integrations.asgi import SessionMiddleware
from tests.integrations.conftest import EndedSessions, UvicornServer

StartServer = Callable[[Any], UvicornServer]


async def echo_headers(scope: Any, receive: Any, send: Any) -> None:
    """Raw ASGI app answering with the agentuity headers it received, as JSON."""
    import json

    got = {
        k.decode().lower(): v.decode()
        for k, v in scope["headers"]
        if k.decode().lower().startswith("x-agentuity-")
    }
    body = json.dumps(got).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def echo(uvicorn_server: StartServer) -> str:
    """URL of a loopback server echoing the x-agentuity-* request headers."""
    return uvicorn_server(echo_headers).url


@pytest.fixture(autouse=True)
def _uninstall() -> Any:
    """Leave no global patch behind."""
    yield
    al_httpx.uninstall()
    al_requests.uninstall()


class TestHttpx:
    def test_instrumented_sync_client_sends_the_headers(self, echo: str) -> None:
        """An instrumented httpx.Client sends the session and thread inside a session, nothing outside."""
        with al_httpx.instrument(httpx.Client()) as client:
            with session() as s:
                inside = client.get(echo).json()
            outside = client.get(echo).json()
        assert inside == {"x-agentuity-session-id": s.id, "x-agentuity-thread-id": s.thread.id}
        assert outside == {}

    def test_instrumented_async_client_sends_the_headers_per_task(self, echo: str) -> None:
        """An instrumented AsyncClient sends each concurrent task's own session."""

        async def call(client: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
            async with session() as s:
                await asyncio.sleep(0)
                return s.id, (await client.get(echo)).json()

        async def main() -> list[tuple[str, dict[str, str]]]:
            async with al_httpx.instrument(httpx.AsyncClient()) as client:
                return list(await asyncio.gather(*(call(client) for _ in range(20))))

        for sid, got in asyncio.run(main()):
            assert got["x-agentuity-session-id"] == sid

    def test_event_hooks_can_be_passed_directly(self, echo: str) -> None:
        """propagate is an ordinary request event hook."""
        with httpx.Client(event_hooks={"request": [al_httpx.propagate]}) as client, session() as s:
            assert client.get(echo).json()["x-agentuity-session-id"] == s.id

    def test_instrument_is_idempotent(self) -> None:
        """Instrumenting twice adds the hook once."""
        client = al_httpx.instrument(al_httpx.instrument(httpx.Client()))
        assert client.event_hooks["request"].count(al_httpx.propagate) == 1
        client.close()

    def test_explicit_header_is_kept(self, echo: str) -> None:
        """A header the caller set explicitly is not overwritten."""
        forwarded = "sess_" + "cd" * 16
        with al_httpx.instrument(httpx.Client()) as client, session():
            got = client.get(echo, headers={"X-Agentuity-Session-Id": forwarded}).json()
        assert got["x-agentuity-session-id"] == forwarded

    def test_install_covers_every_client_and_uninstall_undoes_it(self, echo: str) -> None:
        """install() makes plain clients (sync and async) propagate; uninstall() stops it."""
        al_httpx.install()
        al_httpx.install()
        assert al_httpx.installed()

        async def async_call() -> dict[str, str]:
            async with httpx.AsyncClient() as client:
                return (await client.get(echo)).json()

        with session() as s:
            assert httpx.get(echo).json()["x-agentuity-session-id"] == s.id
            assert asyncio.run(async_call())["x-agentuity-thread-id"] == s.thread.id
            al_httpx.uninstall()
            assert httpx.get(echo).json() == {}
        assert not al_httpx.installed()

    def test_missing_httpx_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without httpx, instrument() raises MissingDependencyError naming the extra."""
        monkeypatch.setitem(sys.modules, "httpx", None)
        with pytest.raises(MissingDependencyError, match=r"agentuity-logging\[httpx\]"):
            al_httpx.instrument(object())  # type: ignore[type-var]


class TestRequests:
    def test_instrumented_session_sends_the_headers(self, echo: str) -> None:
        """An instrumented requests.Session sends the session and thread inside a session only."""
        http = al_requests.instrument(requests.Session())
        with session() as s:
            inside = http.get(echo, timeout=10).json()
        outside = http.get(echo, timeout=10).json()
        http.close()
        assert inside == {"x-agentuity-session-id": s.id, "x-agentuity-thread-id": s.thread.id}
        assert outside == {}

    def test_uninstrument_and_idempotence(self, echo: str) -> None:
        """instrument() twice wraps once; uninstrument() restores the session's own send."""
        http = al_requests.instrument(al_requests.instrument(requests.Session()))
        al_requests.uninstrument(http)
        with session():
            assert http.get(echo, timeout=10).json() == {}
        http.close()

    def test_install_covers_module_level_calls(self, echo: str) -> None:
        """install() covers requests.get(); uninstall() stops it."""
        al_requests.install()
        al_requests.install()
        with session() as s:
            assert requests.get(echo, timeout=10).json()["x-agentuity-session-id"] == s.id
            al_requests.uninstall()
            assert requests.get(echo, timeout=10).json() == {}
        assert not al_requests.installed()

    def test_missing_requests_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without requests, install() raises MissingDependencyError naming the extra."""
        monkeypatch.setitem(sys.modules, "requests", None)
        with pytest.raises(MissingDependencyError, match=r"agentuity-logging\[requests\]"):
            al_requests.install()


class TestAcrossServices:
    def test_called_service_joins_the_thread_and_links_the_caller(
        self, uvicorn_server: StartServer, ended_sessions: EndedSessions
    ) -> None:
        """Service B, called from A's session, joins A's thread and records A's session as its caller."""
        from agentuity_logging import session_id, thread_id

        async def service_b(scope: Any, receive: Any, send: Any) -> None:
            import json

            body = json.dumps({"sessionId": session_id(), "threadId": thread_id()}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        b = uvicorn_server(SessionMiddleware(service_b))
        with al_httpx.instrument(httpx.Client()) as client, session() as a:
            got = client.get(b.url).json()
        assert got["threadId"] == a.thread.id
        assert got["sessionId"] != a.id
        assert ended_sessions.wait_for(got["sessionId"])["callerSessionId"] == a.id
