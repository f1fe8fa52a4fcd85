"""What the ASGI and WSGI middleware share: one request's session, its headers and its error body.

The middleware modules only translate their protocol (ASGI messages, WSGI ``start_response``) into calls
on :class:`RequestSession`; reading and validating the thread, the session metadata, the response headers,
the one log line of an unhandled exception and the JSON error body all live here, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any, Final

from agentuity_logging._context import Session, current_snapshot, session
from agentuity_logging._ids import MAX_ID_LENGTH, SESSION_PREFIX, THREAD_PREFIX, validate_id
from agentuity_logging._json import dumps

__all__ = [
    "MIDDLEWARE_LOGGER_NAME",
    "SESSION_HEADER",
    "THREAD_COOKIE",
    "THREAD_HEADER",
    "RequestSession",
    "add_session_headers",
    "cookie_value",
    "error_body",
    "error_json",
]

SESSION_HEADER: Final = "x-agentuity-session-id"
THREAD_HEADER: Final = "x-agentuity-thread-id"
THREAD_COOKIE: Final = "agentuity_thread_id"
MIDDLEWARE_LOGGER_NAME: Final = "agentuity_logging.middleware"
INTERNAL_ERROR: Final = "Internal Server Error"

_log: Final = logging.getLogger(MIDDLEWARE_LOGGER_NAME)


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """Return the first value of cookie ``name`` in a ``Cookie`` header, or ``None``.

    A plain split rather than ``http.cookies``: that parser gives up on the whole header when one cookie
    (somebody else's) is malformed, and the value is validated afterwards anyway.
    """
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"')
    return None


def _reject_reason(value: str, prefix: str) -> str | None:
    """Say why ``value`` is not a valid ID without repeating any of it (it came from a client)."""
    try:
        validate_id(value, prefix)
    except ValueError:
        if len(value) > MAX_ID_LENGTH:
            return f"longer than {MAX_ID_LENGTH} characters"
        if not value.startswith(prefix):
            return f"does not start with {prefix!r}"
        if len(value) == len(prefix):
            return "nothing after the prefix"
        return "forbidden characters"
    return None


def add_session_headers(headers: MutableMapping[str, str]) -> None:
    """Add the current session and thread headers to an outgoing request's ``headers``.

    Nothing outside a session; headers the caller set explicitly are kept (forwarding another session's
    IDs on purpose is allowed).
    """
    sess = current_snapshot().session
    if sess is None:
        return
    if SESSION_HEADER not in headers:
        headers[SESSION_HEADER] = sess.id
    if THREAD_HEADER not in headers:
        headers[THREAD_HEADER] = sess.thread.id


def error_body(message: str, session_id: str | None) -> dict[str, Any]:
    """Return ``{"success": false, "error": message, "sessionId": ...}`` (``sessionId`` when known)."""
    body: dict[str, Any] = {"success": False, "error": message}
    if session_id is not None:
        body["sessionId"] = session_id
    return body


def error_json(message: str, session_id: str | None) -> bytes:
    """Return :func:`error_body` as JSON bytes."""
    return dumps(error_body(message, session_id))


class RequestSession:
    """One request (or websocket connection) run as one session; not shared between requests.

    ``begin()`` reads the thread from the header or the cookie (the header wins when both are there) and
    enters the session; ``end()`` writes ``status`` and ``durationMs`` into the session metadata and
    leaves it. An invalid thread ID starts a new thread and logs a warning inside the new session that
    says why, never what: the bad value reaches no record.
    """

    __slots__ = (
        "_cm",
        "_t0",
        "caller_session",
        "cookie",
        "metadata",
        "session",
        "set_cookie",
        "status",
        "thread_header",
    )

    def __init__(
        self,
        *,
        method: str,
        path: str,
        thread_header: str | None,
        cookie: str | None,
        caller_session: str | None = None,
        set_cookie: bool = False,
    ) -> None:
        self.metadata: dict[str, Any] = {"method": method, "path": path, "route": path}
        self.thread_header = thread_header
        self.cookie = cookie
        self.caller_session = caller_session
        self.set_cookie = set_cookie
        self.status: int | None = None
        self.session: Session | None = None
        self._cm: session | None = None
        self._t0 = 0.0

    def _thread(self) -> tuple[str | None, str | None]:
        """Return ``(thread_id, problem)``: the joinable thread ID, or why the client's one was refused."""
        value: str | None
        if self.thread_header is not None:
            value, source = self.thread_header, f"{THREAD_HEADER} header"
        else:
            value = cookie_value(self.cookie, THREAD_COOKIE)
            source = f"{THREAD_COOKIE} cookie"
        if value is None:
            return None, None
        reason = _reject_reason(value, THREAD_PREFIX)
        if reason is not None:
            return None, f"the {source} ({reason})"
        return value, None

    def begin(self) -> Session:
        """Enter the request's session (call :meth:`end` exactly once after)."""
        thread_id, problem = self._thread()
        if self.caller_session is not None and _reject_reason(self.caller_session, SESSION_PREFIX) is None:
            # The calling service's session (sent by our httpx/requests propagation): kept as a link.
            self.metadata["callerSessionId"] = self.caller_session
        self._t0 = time.perf_counter()
        self._cm = session(thread_id=thread_id, metadata=self.metadata)
        sess = self._cm.__enter__()
        # Session copies the metadata dict: write status and duration into the session's own one.
        self.metadata = sess.metadata
        self.session = sess
        if problem is not None:
            _log.warning("ignored an invalid thread ID in %s; started a new thread", problem)
        return sess

    def set_route(self, route: str | None) -> None:
        """Record the matched route template (``/items/{id}``) when the framework found one."""
        if route:
            self.metadata["route"] = route

    def set_status(self, status: int) -> None:
        """Record the response status."""
        self.status = status
        self.metadata["status"] = status

    def response_headers(self) -> list[tuple[str, str]]:
        """Return the headers every response of the session carries."""
        sess = self.session
        if sess is None:
            return []
        headers = [(SESSION_HEADER, sess.id), (THREAD_HEADER, sess.thread.id)]
        if self.set_cookie:
            headers.append(
                ("set-cookie", f"{THREAD_COOKIE}={sess.thread.id}; Path=/; HttpOnly; SameSite=Lax")
            )
        return headers

    def log_unhandled(self, exc: BaseException) -> None:
        """Log an exception the app did not handle: once, with its traceback, inside the session."""
        _log.error(
            "unhandled exception in %s %s",
            self.metadata.get("method"),
            self.metadata.get("path"),
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    def error_json(self) -> bytes:
        """Return the body of the 500 answer: no traceback, no paths, only the session to quote."""
        return error_json(INTERNAL_ERROR, None if self.session is None else self.session.id)

    def end(self, exc: BaseException | None = None) -> None:
        """Write ``status`` and ``durationMs`` into the metadata and leave the session (idempotent)."""
        cm, self._cm = self._cm, None
        if cm is None:
            return
        self.metadata["durationMs"] = round((time.perf_counter() - self._t0) * 1000.0, 3)
        if "status" not in self.metadata and exc is not None:
            self.metadata["status"] = 500
        cm.__exit__(None if exc is None else type(exc), exc, None if exc is None else exc.__traceback__)
