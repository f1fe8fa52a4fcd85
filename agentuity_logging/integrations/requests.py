"""Outgoing propagation for requests: calls made inside a session carry its session and thread headers.

Opt in per ``requests.Session`` with :func:`instrument`, or for every session of the process (and the
module-level ``requests.get`` and friends) with :func:`install`, undone by :func:`uninstall`. Needs
``requests``: ``pip install 'agentuity-logging[requests]'``.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from agentuity_logging._errors import require
from agentuity_logging.integrations._web import SESSION_HEADER, THREAD_HEADER, add_session_headers

if TYPE_CHECKING:
    import requests as _requests

__all__ = [
    "SESSION_HEADER",
    "THREAD_HEADER",
    "install",
    "installed",
    "instrument",
    "uninstall",
    "uninstrument",
]

S = TypeVar("S", bound="_requests.Session")

_MARK = "_agentuity_propagating"


def _import_requests() -> Any:
    return require("requests", feature="agentuity_logging.integrations.requests", extra="requests")


def _propagating(send: Any) -> Any:
    @functools.wraps(send)
    def send_with_session(request: Any, *args: Any, **kwargs: Any) -> Any:
        add_session_headers(request.headers)
        return send(request, *args, **kwargs)

    setattr(send_with_session, _MARK, True)
    return send_with_session


def instrument(session: S) -> S:
    """Make ``session`` add the headers to every request it sends (idempotent); return it.

    The session's adapters, retries and auth are untouched: only its ``send`` is wrapped, on this
    instance.
    """
    _import_requests()
    if not getattr(session.send, _MARK, False):
        session.send = _propagating(session.send)  # type: ignore[method-assign]
    return session


def uninstrument(session: _requests.Session) -> None:
    """Undo :func:`instrument` on ``session``."""
    if getattr(session.__dict__.get("send"), _MARK, False):
        del session.__dict__["send"]


_lock = threading.Lock()
_original: list[Any] = []


def install() -> None:
    """Propagate from every ``requests.Session`` in the process (idempotent)."""
    requests = _import_requests()
    with _lock:
        if _original:
            return
        original = requests.Session.send

        @functools.wraps(original)
        def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            add_session_headers(request.headers)
            return original(self, request, *args, **kwargs)

        _original.append(original)
        requests.Session.send = send


def uninstall() -> None:
    """Undo :func:`install` (no error when it is not installed)."""
    with _lock:
        if not _original:
            return
        requests = _import_requests()
        requests.Session.send = _original.pop()


def installed() -> bool:
    """Return whether :func:`install` is in effect."""
    return bool(_original)
