"""Event factories and a sender shared by the protocol and fake tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from agentuity_logging._delivery._protocol import Request

__all__ = ["SESSION_ID", "SPAN_ID", "THREAD_ID", "TRACE_ID", "make_event", "rfc3339", "send"]

SESSION_ID = "sess_3f2a9c4e1b7d4a60"
THREAD_ID = "thrd_8c1d2e3f4a5b6c7d"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"


def rfc3339(moment: dt.datetime | None = None) -> str:
    """Our schema's timestamp: RFC 3339 UTC with microseconds."""
    moment = moment or dt.datetime.now(dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_event(
    message: str = "hello", *, level: str = "info", session: bool = True, **fields: Any
) -> dict[str, Any]:
    """An event in our JSON schema (keys in schema order), stamped now unless overridden."""
    event: dict[str, Any] = {
        "timestamp": fields.pop("timestamp", None) or rfc3339(),
        "level": level,
        "logger": fields.pop("logger", "app.agent"),
        "message": message,
    }
    if session:
        event["agentuitySessionId"] = SESSION_ID
        event["agentuityThreadId"] = THREAD_ID
    event.update(fields)
    return event


def send(client: httpx.Client, request: Request) -> httpx.Response:
    """Send an encoded ``Request`` as the engine would."""
    return client.request(request.method, request.url, headers=request.headers, content=request.body)
