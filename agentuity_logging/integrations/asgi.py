"""``SessionMiddleware`` for ASGI apps: Starlette, FastAPI and raw ASGI. Needs no extra.

Each HTTP request and each websocket connection runs in its own session::

    app = FastAPI()
    app.add_middleware(SessionMiddleware)

Add it with ``add_middleware`` (inside Starlette's error middleware) so that an exception the app did not
handle reaches it: it is logged once, with its traceback and the session ID, and the client gets
``{"success": false, "error": "Internal Server Error", "sessionId": "sess_..."}`` and nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

from agentuity_logging.integrations._web import (
    SESSION_HEADER,
    THREAD_HEADER,
    RequestSession,
)

__all__ = ["SESSION_HEADER", "THREAD_HEADER", "SessionMiddleware"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

_OWN_HEADERS = frozenset({SESSION_HEADER.encode(), THREAD_HEADER.encode()})


def _header(headers: Any, name: bytes) -> str | None:
    for key, value in headers or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _with_session_headers(headers: Any, req: RequestSession) -> list[tuple[bytes, bytes]]:
    # Our headers replace any the app set under the same names, so the response names one session.
    out = [(k, v) for k, v in headers or () if bytes(k).lower() not in _OWN_HEADERS]
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in req.response_headers())
    return out


def _route_of(scope: Scope) -> str | None:
    route = scope.get("route")  # Starlette's router puts the matched route here
    path = getattr(route, "path", None) if route is not None else None
    return path if isinstance(path, str) else None


class SessionMiddleware:
    """Raw ASGI middleware running each request and websocket connection as one session.

    The thread comes from the ``x-agentuity-thread-id`` header or the ``agentuity_thread_id`` cookie
    (validated; an invalid value starts a new thread and logs a warning). Responses carry
    ``x-agentuity-session-id`` and ``x-agentuity-thread-id`` (for websockets, on the accept). The session
    lasts until the response body has ended, so a streaming body logs inside it; its metadata gets
    ``method``, ``path``, ``route``, ``status`` and ``durationMs``.

    Args:
        app: the ASGI app to wrap.
        set_cookie: also answer with a ``Set-Cookie`` for the thread, so a browser keeps its conversation.
    """

    def __init__(self, app: ASGIApp, *, set_cookie: bool = False) -> None:
        self.app = app
        self.set_cookie = set_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run one connection; other scope types (``lifespan``) pass through untouched."""
        kind = scope.get("type")
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _request(self, scope: Scope, method: str) -> RequestSession:
        headers = scope.get("headers")
        return RequestSession(
            method=method,
            path=str(scope.get("path", "")),
            thread_header=_header(headers, b"x-agentuity-thread-id"),
            cookie=_header(headers, b"cookie"),
            caller_session=_header(headers, b"x-agentuity-session-id"),
            set_cookie=self.set_cookie,
        )

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = self._request(scope, str(scope.get("method", "GET")))
        started = False

        async def send_with_session(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                req.set_status(int(message.get("status", 200)))
                message = {**message, "headers": _with_session_headers(message.get("headers"), req)}
            await send(message)

        req.begin()
        failure: BaseException | None = None
        try:
            await self.app(scope, receive, send_with_session)
        except Exception as exc:
            failure = exc
            req.log_unhandled(exc)
            if not started:
                body = req.error_json()
                req.set_status(500)
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ]
                # The client may be gone already; the failure is logged above either way.
                with contextlib.suppress(Exception):
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 500,
                            "headers": _with_session_headers(headers, req),
                        }
                    )
                    await send({"type": "http.response.body", "body": body, "more_body": False})
            # Not re-raised: the server would log it a second time. When the body had already begun,
            # the server sees an unfinished response and drops the connection, so the client cannot
            # mistake a truncated stream for a complete one.
        except BaseException as exc:  # cancellation, client gone: end the session, let it unwind
            failure = exc
            raise
        finally:
            req.set_route(_route_of(scope))
            req.end(failure)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        req = self._request(scope, "WEBSOCKET")
        accepted = False
        closed = False

        async def send_with_session(message: Message) -> None:
            nonlocal accepted, closed
            kind = message["type"]
            if kind == "websocket.accept":
                accepted = True
                req.set_status(101)
                message = {**message, "headers": _with_session_headers(message.get("headers"), req)}
            elif kind == "websocket.close":
                closed = True
                if not accepted:
                    req.set_status(403)  # a close before the accept is an HTTP 403 to the client
            elif kind == "websocket.http.response.start":  # the denial-response extension
                req.set_status(int(message.get("status", 403)))
                message = {**message, "headers": _with_session_headers(message.get("headers"), req)}
            await send(message)

        req.begin()
        failure: BaseException | None = None
        try:
            await self.app(scope, receive, send_with_session)
        except Exception as exc:
            failure = exc
            req.log_unhandled(exc)
            if not closed:
                # 1011: the server met an unexpected condition (RFC 6455); before the accept the
                # server turns the close into a 403.
                if not accepted:
                    req.set_status(403)
                # The client may be gone already; the failure is logged above either way.
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": 1011, "reason": ""})
        except BaseException as exc:
            failure = exc
            raise
        finally:
            req.set_route(_route_of(scope))
            req.end(failure)
