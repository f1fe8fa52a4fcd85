"""``SessionMiddleware`` for WSGI apps: Flask and raw WSGI. Needs no extra.

Each request runs in its own session::

    app = Flask(__name__)
    init_flask(app)            # or: app.wsgi_app = SessionMiddleware(app.wsgi_app)

The session lives in a context of its own that the middleware enters for the app call and for each chunk
of the body, not in the server thread's context: a streamed body logs inside the session, and a server
that reuses its threads (or forgets to call ``close()``) can never carry one request's IDs into the next.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeAlias

from agentuity_logging._context import session_id
from agentuity_logging.integrations._web import (
    INTERNAL_ERROR,
    SESSION_HEADER,
    THREAD_HEADER,
    RequestSession,
    error_body,
)

__all__ = ["SESSION_HEADER", "THREAD_HEADER", "SessionMiddleware", "flask_error_handler", "init_flask"]

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
# Loose on purpose: servers type start_response's write() return differently (or not at all).
StartResponse: TypeAlias = Callable[..., Any]
WSGIApp: TypeAlias = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_OWN_HEADERS = frozenset({SESSION_HEADER, THREAD_HEADER})


def _route_of(environ: dict[str, Any]) -> str | None:
    # Werkzeug (Flask) keeps the request in the environ until the request context is popped, which is
    # after start_response: the matched rule ("/items/<int:id>") is readable there.
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    return rule if isinstance(rule, str) else None


def _exc_info(exc: BaseException) -> ExcInfo:
    return (type(exc), exc, exc.__traceback__)


class _Exchange:
    """One request's state: its context, its session, and whether the headers may still change."""

    __slots__ = ("ctx", "environ", "req", "sent_body", "start_response", "started")

    def __init__(
        self, ctx: contextvars.Context, req: RequestSession, environ: dict[str, Any], start: StartResponse
    ) -> None:
        self.ctx = ctx
        self.req = req
        self.environ = environ
        self.start_response = start
        self.started = False
        self.sent_body = False

    def start(self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None) -> Any:
        """The ``start_response`` the app sees: records the status and adds the session headers."""
        self.started = True
        with contextlib.suppress(ValueError):  # a malformed status line is the server's to reject
            self.req.set_status(int(status.split(" ", 1)[0]))
        self.req.set_route(_route_of(self.environ))
        merged = [(k, v) for k, v in headers if k.lower() not in _OWN_HEADERS]
        merged.extend(self.req.response_headers())
        if exc_info is not None:
            return self.start_response(status, merged, exc_info)
        return self.start_response(status, merged)

    def fail(self, exc: Exception) -> list[bytes]:
        """Log ``exc`` once and answer 500 JSON if the headers can still change; return the body."""
        self.ctx.run(self.req.log_unhandled, exc)
        if self.sent_body:
            return []  # the status line is out: end the body here (see SessionMiddleware)
        body = self.req.error_json()
        self.req.set_status(500)
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *self.req.response_headers(),
        ]
        try:
            # exc_info lets a second start_response replace the first one's headers (PEP 3333).
            if self.started:
                self.start_response("500 Internal Server Error", headers, _exc_info(exc))
            else:
                self.start_response("500 Internal Server Error", headers)
        except Exception:
            return []
        return [body]


class _SessionBody:
    """The response iterable: each chunk is produced inside the request's context; ``close()`` ends it."""

    __slots__ = ("_body", "_closed", "_ex", "_failure", "_it", "_tail")

    def __init__(self, body: Iterable[bytes], ex: _Exchange) -> None:
        self._body = body
        self._ex = ex
        self._it: Iterator[bytes] | None = None
        self._tail: list[bytes] | None = None
        self._failure: BaseException | None = None
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._tail is not None:
            if self._tail:
                return self._tail.pop(0)
            raise StopIteration
        ex = self._ex
        try:
            if self._it is None:
                self._it = ex.ctx.run(iter, self._body)
            chunk = ex.ctx.run(next, self._it)
        except StopIteration:
            raise
        except Exception as exc:
            self._failure = exc
            self._tail = ex.fail(exc)
            return self.__next__()
        except BaseException as exc:
            self._failure = exc
            raise
        if chunk:
            ex.sent_body = True
        return chunk

    def close(self) -> None:
        """Close the app's iterable, then end the session (called by the server; idempotent)."""
        if self._closed:
            return
        self._closed = True
        ex = self._ex
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                try:
                    ex.ctx.run(close)
                except Exception as exc:
                    if self._failure is None:
                        self._failure = exc
                        ex.ctx.run(ex.req.log_unhandled, exc)
        finally:
            ex.ctx.run(ex.req.end, self._failure)


class SessionMiddleware:
    """WSGI middleware running each request as one session.

    The thread comes from the ``X-Agentuity-Thread-Id`` header or the ``agentuity_thread_id`` cookie
    (validated; an invalid value starts a new thread and logs a warning). Responses carry
    ``x-agentuity-session-id`` and ``x-agentuity-thread-id``; the session lasts until the server closes
    the body; its metadata gets ``method``, ``path``, ``route`` (Flask's rule when there is one),
    ``status`` and ``durationMs``.

    An exception escaping the app is logged once with its traceback and the client gets the JSON 500 body.
    If part of the body was already sent, the body simply ends there (the log line says what happened).
    Flask handles its own exceptions before they reach a WSGI middleware: use :func:`init_flask` there.

    Args:
        app: the WSGI app to wrap.
        set_cookie: also answer with a ``Set-Cookie`` for the thread, so a browser keeps its conversation.
    """

    def __init__(self, app: WSGIApp, *, set_cookie: bool = False) -> None:
        self.app = app
        self.set_cookie = set_cookie

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Run one request."""
        req = RequestSession(
            method=str(environ.get("REQUEST_METHOD", "GET")),
            path=str(environ.get("PATH_INFO", "")),
            thread_header=environ.get("HTTP_X_AGENTUITY_THREAD_ID"),
            cookie=environ.get("HTTP_COOKIE"),
            caller_session=environ.get("HTTP_X_AGENTUITY_SESSION_ID"),
            set_cookie=self.set_cookie,
        )
        ctx = contextvars.copy_context()
        ctx.run(req.begin)
        ex = _Exchange(ctx, req, environ, start_response)
        try:
            body = ctx.run(self.app, environ, ex.start)
        except Exception as exc:
            answer = ex.fail(exc)
            ctx.run(req.end, exc)
            return answer
        except BaseException as exc:
            ctx.run(req.end, exc)
            raise
        return _SessionBody(body, ex)


def flask_error_handler(error: Exception) -> tuple[dict[str, Any], int]:
    """Flask handler for 500: the JSON error body with the session ID (Flask has logged the error).

    Register it with ``app.register_error_handler(500, flask_error_handler)`` (or use :func:`init_flask`).
    """
    return error_body(INTERNAL_ERROR, session_id()), 500


def init_flask(app: Any, *, set_cookie: bool = False) -> Any:
    """Run every request of Flask ``app`` in a session and answer its 500s with the JSON error body.

    Flask logs an unhandled exception once (``app.logger``, with the traceback, inside the session), then
    calls its 500 handler: :func:`flask_error_handler` answers without internals. Returns ``app``.
    """
    app.wsgi_app = SessionMiddleware(app.wsgi_app, set_cookie=set_cookie)
    app.register_error_handler(500, flask_error_handler)
    return app
