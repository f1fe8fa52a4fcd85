"""Generic HTTP collectors (Vector, Fluent Bit, Logstash): our JSON records, gzip'd.

The records are the package's one JSON schema, unchanged; the collector's pipeline maps them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from agentuity_logging._delivery._protocol import (
    Answer,
    Outcome,
    Request,
    WireProtocol,
    check_url,
    dumps_safe,
    fit_record,
    gzip_bytes,
    header_value,
    parse_retry_after,
    validate_headers,
)

__all__ = ["HTTPProtocol"]

#: Per-record bound: Fluent Bit's HTTP input buffers 4 MB per request by default.
MAX_RECORD_BYTES = 1_000_000
_PROTECTED = frozenset({"timestamp", "level", "logger", "agentuitySessionId", "agentuityThreadId"})


class HTTPProtocol(WireProtocol):
    """POST batches of JSON records to a URL, as NDJSON or as one JSON array.

    Args:
        url: the collector's URL, used exactly as given.
        format: ``"ndjson"`` (``application/x-ndjson``) or ``"json_array"``.
        headers: extra headers (tokens); values are secrets.

    Raises:
        ValueError: a bad URL, format or header.
    """

    name = "http"
    max_batch_records = 1000
    max_batch_bytes = 1_000_000

    def __init__(
        self,
        url: str,
        *,
        format: Literal["ndjson", "json_array"] = "ndjson",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        check_url(url, "HTTP url")
        self.endpoint = url
        if format not in ("ndjson", "json_array"):
            raise ValueError(f"HTTP format must be 'ndjson' or 'json_array', got {format!r}")
        self.format = format
        user_headers = validate_headers(headers)
        self._secret_values = list(user_headers.values())
        content_type = "application/x-ndjson" if format == "ndjson" else "application/json"
        self._headers = {**user_headers, "Content-Type": content_type, "Content-Encoding": "gzip"}

    def _secrets(self) -> Iterable[str]:
        return self._secret_values

    def prepare(self, event: dict[str, Any]) -> bytes:
        """The event's JSON, at most 1 MB (message truncated first)."""
        return fit_record(event, MAX_RECORD_BYTES, protected=_PROTECTED)

    def encode(self, prepared: Sequence[bytes], *, verified: bool = False) -> Request:
        """NDJSON lines or a JSON array of the records, gzip'd."""
        records = (
            prepared  # objects' bytes from prepare(), none holding a raw newline
            if verified
            else [
                r
                if r[:1] == b"{" and r[-1:] == b"}" and b"\n" not in r
                else dumps_safe({"message": r.decode("utf-8", "replace")})
                for r in prepared
            ]
        )
        if self.format == "ndjson":
            body = b"\n".join(records) + b"\n" if records else b""
        else:
            body = b"[" + b",".join(records) + b"]"
        return Request("POST", self.endpoint, dict(self._headers), gzip_bytes(body), len(prepared))

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Answer:
        """2xx sent, 413 split, 401/403 stop, 408/429/5xx retry, anything else dropped."""
        if 200 <= status < 300:
            return Answer(Outcome.SENT)
        message = self._message(body) or f"HTTP {status}"
        if status in (401, 403):
            return Answer(Outcome.AUTH, message=message)
        if status == 413:
            return Answer(Outcome.SPLIT, message=message)
        if status in (408, 429) or 500 <= status < 600:
            delay = parse_retry_after(header_value(headers, "Retry-After"))
            return Answer(Outcome.RETRY, retry_after_s=delay, message=message)
        return Answer(Outcome.REFUSED, message=message)
