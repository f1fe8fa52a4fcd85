"""A fake generic HTTP log collector (Vector ``http_server``, Fluent Bit ``http``, Logstash).

Accepts NDJSON (``application/x-ndjson``) or JSON (an array of records, or one record),
gzip/deflate bodies; 415 for other content types, 400 for undecodable bodies, 401 when
``required_headers`` are missing or wrong, 413 above ``max_body_bytes`` (uncompressed).
Records are kept decoded for assertions; answers ``success_status`` (200) with an empty body.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, ClassVar

import orjson

from tests.fakes._server import FakeServer, ReceivedRequest, Reply, decompress

__all__ = ["FakeHTTPSink"]

_NDJSON = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonlines"})


class FakeHTTPSink(FakeServer):
    """Fake collector on ``path``. Point ``HTTPProtocol(fake.url + fake.path)`` at it."""

    name: ClassVar[str] = "http"

    def __init__(
        self,
        *,
        path: str = "/logs",
        required_headers: Mapping[str, str] | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
        success_status: int = 200,
    ) -> None:
        super().__init__()
        self.path = path
        self.required_headers = {k.lower(): v for k, v in (required_headers or {}).items()}
        self.max_body_bytes = max_body_bytes
        self.success_status = success_status
        self.records: list[Any] = []
        self.batches: list[list[Any]] = []
        self._store_lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        """The full URL to post to."""
        return self.url + self.path

    def handle(self, request: ReceivedRequest) -> Reply:
        """Check, decode and keep one batch."""
        if request.path != self.path:
            return self.error_reply(request, 404, "not found")
        if request.method != "POST":
            return self.error_reply(request, 405, "method not allowed")
        for name, value in self.required_headers.items():
            if request.header(name) != value:
                return self.error_reply(request, 401, "unauthorized")
        try:
            body = decompress(request.raw_body, request.header("content-encoding"))
        except ValueError as exc:
            return self.error_reply(request, 400, str(exc))
        if len(body) > self.max_body_bytes:
            return self.error_reply(request, 413, "payload too large")
        try:
            if request.media_type in _NDJSON:
                records = [orjson.loads(line) for line in body.splitlines() if line.strip()]
            elif request.media_type == "application/json":
                data = orjson.loads(body)
                records = data if isinstance(data, list) else [data]
            else:
                return self.error_reply(request, 415, f"unsupported {request.media_type!r}")
        except orjson.JSONDecodeError as exc:
            return self.error_reply(request, 400, f"invalid JSON: {exc}")
        with self._store_lock:
            self.batches.append(records)
            self.records.extend(records)
        return Reply(self.success_status)
