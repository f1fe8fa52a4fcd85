"""Error responses for handled errors, in the same shape as the middleware's answer to unhandled ones.

``{"success": false, "error": "<message>", "sessionId": "sess_..."}``: the client can quote the session ID
to support, and support finds every line of the request with it. Needs no extra::

    @app.exception_handler(OrderNotFound)                    # FastAPI / Starlette
    async def not_found(request, exc):
        return error_response(exc, status=404).to_starlette()

    @app.errorhandler(OrderNotFound)                         # Flask: the tuple is a Flask response
    def not_found(exc):
        return error_response(exc, status=404)
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, NamedTuple

from agentuity_logging._context import current_session
from agentuity_logging.integrations._web import SESSION_HEADER, THREAD_HEADER, error_body

__all__ = ["ErrorResponse", "error_body", "error_response"]


class ErrorResponse(NamedTuple):
    """A JSON error answer as ``(body, status, headers)``; Flask takes the tuple as it is."""

    body: dict[str, Any]
    status: int
    headers: dict[str, str]

    def to_starlette(self) -> Any:
        """Return a Starlette/FastAPI ``JSONResponse`` (only called from a Starlette app)."""
        from starlette.responses import JSONResponse

        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def _message(error: str | BaseException, status: int) -> str:
    if isinstance(error, str):
        return error
    if status >= 500:
        # A server-side exception's text is an internal detail (paths, SQL, hostnames): never send it.
        return _phrase(status)
    try:
        text = str(error)
    except Exception:
        text = ""
    return text or _phrase(status)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(error: str | BaseException, status: int = 500) -> ErrorResponse:
    """Build the JSON error answer for a handled error in the current session.

    A string is sent as it is. An exception's text is sent for 4xx statuses (a message meant for the
    client: "order 42 not found"); for 5xx only the status phrase is sent, since a server error's text can
    reveal internals. The headers name the session and thread, like every response of the middleware.

    Raises:
        ValueError: ``status`` is not an HTTP error status (400-599).
    """
    if not 400 <= status <= 599:
        raise ValueError(f"status: expected an HTTP error status 400-599, got {status!r}")
    sess = current_session()
    headers: dict[str, str] = {}
    if sess is not None:
        headers = {SESSION_HEADER: sess.id, THREAD_HEADER: sess.thread.id}
    body = error_body(_message(error, status), None if sess is None else sess.id)
    return ErrorResponse(body, status, headers)
