"""Outgoing propagation for httpx: calls made inside a session carry its session and thread headers.

The service called (with our middleware) joins the same thread and links its session to the caller's
(``callerSessionId`` in its metadata). Opt in per client, sync or async::

    client = instrument(httpx.AsyncClient())           # or event_hooks={"request": [apropagate]}

or for every client of the process with :func:`install` (undone by :func:`uninstall`). Needs ``httpx``:
``pip install 'agentuity-logging[httpx]'``.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from agentuity_logging._errors import require
from agentuity_logging.integrations._web import SESSION_HEADER, THREAD_HEADER, add_session_headers

if TYPE_CHECKING:
    import httpx as _httpx

__all__ = [
    "SESSION_HEADER",
    "THREAD_HEADER",
    "apropagate",
    "install",
    "installed",
    "instrument",
    "propagate",
    "uninstall",
]

C = TypeVar("C", "_httpx.Client", "_httpx.AsyncClient")


def _import_httpx() -> Any:
    return require("httpx", feature="agentuity_logging.integrations.httpx", extra="httpx")


def propagate(request: _httpx.Request) -> None:
    """``httpx.Client`` request event hook adding the session and thread headers."""
    add_session_headers(request.headers)


async def apropagate(request: _httpx.Request) -> None:
    """``httpx.AsyncClient`` request event hook adding the session and thread headers."""
    add_session_headers(request.headers)


def instrument(client: C) -> C:
    """Add the propagation hook to ``client`` (sync or async; idempotent) and return it."""
    httpx = _import_httpx()
    hook: Any = apropagate if isinstance(client, httpx.AsyncClient) else propagate
    hooks: dict[str, list[Any]] = dict(client.event_hooks)
    if hook not in hooks["request"]:
        hooks["request"] = [*hooks["request"], hook]
        client.event_hooks = hooks
    return client


_lock = threading.Lock()
_originals: dict[str, Any] = {}


def install() -> None:
    """Propagate from every ``httpx.Client`` and ``httpx.AsyncClient`` in the process (idempotent)."""
    httpx = _import_httpx()
    with _lock:
        if _originals:
            return
        sync_send = httpx.Client.send
        async_send = httpx.AsyncClient.send

        @functools.wraps(sync_send)
        def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            add_session_headers(request.headers)
            return sync_send(self, request, *args, **kwargs)

        @functools.wraps(async_send)
        async def asend(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            add_session_headers(request.headers)
            return await async_send(self, request, *args, **kwargs)

        _originals["sync"] = sync_send
        _originals["async"] = async_send
        httpx.Client.send = send
        httpx.AsyncClient.send = asend


def uninstall() -> None:
    """Undo :func:`install` (no error when it is not installed)."""
    with _lock:
        if not _originals:
            return
        httpx = _import_httpx()
        httpx.Client.send = _originals.pop("sync")
        httpx.AsyncClient.send = _originals.pop("async")


def installed() -> bool:
    """Return whether :func:`install` is in effect."""
    return bool(_originals)
