"""Grafana Loki push API: protobuf + snappy (default) or gzip'd JSON.

Labels stay few and bounded (service, env, level and static user labels): every distinct
label set is a stream with its own index entries, so a per-session label would create a
stream per conversation. Session, thread and span IDs go into structured metadata instead,
and stay in the JSON line, so both ``| agentuitySessionId="…"`` and ``| json`` find them.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import orjson

from agentuity_logging._delivery._protobuf import field_bytes, field_string, field_varint
from agentuity_logging._delivery._protocol import (
    Answer,
    Outcome,
    Request,
    WireProtocol,
    as_text,
    check_url,
    decode_prepared,
    event_time_ns,
    fit_record,
    gzip_bytes,
    header_value,
    level_name,
    parse_retry_after,
    safe_text,
    validate_headers,
)

__all__ = ["LokiProtocol", "format_labels", "quote_label_value"]

#: Loki's default ``max_line_size`` ("256KB", where KB is 1000 bytes).
MAX_LINE_BYTES = 256_000
MAX_LABEL_NAMES = 15
MAX_LABEL_NAME_BYTES = 1024
MAX_LABEL_VALUE_BYTES = 2048
#: Our own cap per structured-metadata value; Loki allows 64 KB for all of them together.
MAX_METADATA_VALUE_CHARS = 1024

_PATH = "/loki/api/v1/push"
_NS = 1_000_000_000
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_LEVEL_VALUE = re.compile(r"^[a-z0-9_]{1,20}$")
_NEEDS_QUOTING = re.compile(r'[\\"\x00-\x1f\x7f]')
_QUOTES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Event keys sent as structured metadata (each also stays in the JSON line).
_METADATA_KEYS = (
    "agentuitySessionId",
    "agentuityThreadId",
    "spanId",
    "traceId",
    "trace_id",
    "span_id",
)
# Label names whose values differ per request or conversation: a stream each.
_PER_REQUEST = frozenset(_METADATA_KEYS) | {"agentuity_session_id", "agentuity_thread_id"}
# Labels we set per record; a static label of the same name would be overwritten.
_RECORD_LABELS = ("service", "env", "level")
_LINE_PROTECTED = frozenset({"timestamp", "level", "logger", *_METADATA_KEYS})


def quote_label_value(value: str) -> str:
    """Quote a label value the way Prometheus' label parser reads it (Go string syntax)."""
    if not _NEEDS_QUOTING.search(value):
        return f'"{value}"'
    out = []
    for char in value:
        escaped = _QUOTES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char < " " or char == "\x7f":
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def format_labels(labels: Mapping[str, str]) -> str:
    """Render a label set as Loki's stream selector text, ``{a="x", b="y"}``, sorted by name."""
    return "{" + ", ".join(f"{k}={quote_label_value(labels[k])}" for k in sorted(labels)) + "}"


def _cut_bytes(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    return text if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def _label_value(value: Any) -> str:
    """A record value as a label value: text, valid UTF-8, within Loki's length limit."""
    return _cut_bytes(as_text(value), MAX_LABEL_VALUE_BYTES)


def _metadata_value(value: Any) -> str:
    """Structured metadata must be strings: render IDs that arrived as numbers or UUIDs."""
    return as_text(value)[:MAX_METADATA_VALUE_CHARS]


def _validate_static_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Check user labels: Prometheus names, bounded values, and no per-request IDs."""
    result: dict[str, str] = {}
    for name, value in (labels or {}).items():
        if name in _PER_REQUEST:
            raise ValueError(
                f"{name!r} cannot be a Loki label: its value changes per request, and every "
                "distinct label set is a separate stream (cardinality would explode). It is "
                "already sent as structured metadata; query it with "
                f'`{{service="…"}} | {name}="…"`'
            )
        if not isinstance(name, str) or not _LABEL_NAME.match(name):
            raise ValueError(f"invalid Loki label name {name!r}: must match [a-zA-Z_][a-zA-Z0-9_]*")
        if name == "level":
            raise ValueError("'level' is set per record from the log level; do not pass it")
        if len(name.encode()) > MAX_LABEL_NAME_BYTES:
            raise ValueError(f"Loki label name {name[:40]!r}… is over {MAX_LABEL_NAME_BYTES} bytes")
        if not isinstance(value, str) or not value:
            raise ValueError(f"Loki label {name!r} needs a non-empty string value")
        if len(safe_text(value).encode()) > MAX_LABEL_VALUE_BYTES:
            raise ValueError(f"Loki label {name!r} value is over {MAX_LABEL_VALUE_BYTES} bytes")
        result[name] = safe_text(value)
    total = len(set(result) | set(_RECORD_LABELS))
    if total > MAX_LABEL_NAMES:
        raise ValueError(
            f"too many Loki labels: {total} with service/env/level, Loki's limit is "
            f"{MAX_LABEL_NAMES}; put the rest in the log line"
        )
    return result


class _Entry:
    """One decoded prepared record, ready to place into its stream."""

    __slots__ = ("labels", "line", "metadata", "ts")

    def __init__(self, ts: int, labels: dict[str, str], line: str, metadata: dict[str, str]) -> None:
        self.ts = ts
        self.labels = labels
        self.line = line
        self.metadata = metadata


class LokiProtocol(WireProtocol):
    """Loki push API (``POST /loki/api/v1/push``).

    Args:
        url: Loki base URL (``http://loki:3100``); ``/loki/api/v1/push`` is appended.
        labels: static stream labels (low cardinality only; IDs are refused).
        tenant_id: ``X-Scope-OrgID`` for multi-tenant Loki.
        auth: ``(user, password)`` for basic auth (Grafana Cloud: instance ID and token).
        headers: extra headers; their values are treated as secrets.
        encoding: ``"protobuf"`` (snappy block compressed, needs ``cramjam``) or ``"json"``.
        service: the ``service`` label; defaults to the record's ``service`` field.

    Raises:
        ValueError: a bad URL, encoding, header or label (including per-request ID labels).
        MissingDependencyError: protobuf encoding without ``cramjam`` installed.
    """

    name = "loki"
    max_batch_records = 5000
    # Loki's default burst is 6 MB per tenant: keep each push around 1 MB.
    max_batch_bytes = 1_000_000

    def __init__(
        self,
        url: str,
        *,
        labels: Mapping[str, str] | None = None,
        tenant_id: str | None = None,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        encoding: Literal["protobuf", "json"] = "protobuf",
        service: str | None = None,
    ) -> None:
        base = check_url(url, "Loki url")
        self.endpoint = base if base.endswith(_PATH) else base + _PATH
        if encoding not in ("protobuf", "json"):
            raise ValueError(f"Loki encoding must be 'protobuf' or 'json', got {encoding!r}")
        self.encoding = encoding
        self._compress: Callable[[bytes], bytes]
        if encoding == "protobuf":
            from agentuity_logging._errors import require

            require("cramjam", feature="Loki protobuf push", extra="ship")
            import cramjam

            # Loki reads the snappy *block* format, not the framed one.
            self._compress = lambda data: bytes(cramjam.snappy.compress_raw(data))
        else:
            self._compress = gzip_bytes
        self.labels = _validate_static_labels(labels)
        self.service = _label_value(service) if service else None
        self._secret_values: list[str] = []
        all_headers = validate_headers(headers)
        self._secret_values.extend(all_headers.values())
        if auth is not None:
            user, password = auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            all_headers["Authorization"] = f"Basic {token}"
            self._secret_values.extend((token, password))
        if tenant_id is not None:
            all_headers["X-Scope-OrgID"] = tenant_id
        if encoding == "protobuf":
            all_headers["Content-Type"] = "application/x-protobuf"
        else:
            all_headers["Content-Type"] = "application/json"
            all_headers["Content-Encoding"] = "gzip"
        self._headers = validate_headers(all_headers)

    def _secrets(self) -> Iterable[str]:
        return self._secret_values

    def prepare(self, event: dict[str, Any]) -> bytes:
        """``[ns, labels, line, structured metadata]`` as JSON; the line is at most 256 KB."""
        now = time.time_ns()
        try:
            ts = event_time_ns(event.get("timestamp"), now)
            labels = self._stream_labels(event)
            metadata = {k: _metadata_value(event[k]) for k in _METADATA_KEYS if event.get(k) is not None}
        except Exception:
            ts, labels, metadata = now, {**self.labels, "level": "unknown"}, {}
        line = fit_record(event, MAX_LINE_BYTES, protected=_LINE_PROTECTED).decode("utf-8")
        return orjson.dumps([str(ts), labels, line, metadata])

    def _stream_labels(self, event: Mapping[str, Any]) -> dict[str, str]:
        labels = dict(self.labels)
        service = self.service or event.get("service")
        if service:
            labels["service"] = _label_value(service)
        env = event.get("env")
        if "env" not in labels and isinstance(env, str) and env:
            labels["env"] = _label_value(env)
        level = level_name(event.get("level"))
        labels["level"] = level if _LEVEL_VALUE.match(level) else "unknown"
        return labels

    def _entry(self, record: bytes) -> _Entry:
        """Decode a prepared record; a damaged one becomes a plain line rather than a loss."""
        item = decode_prepared(record)
        if (
            isinstance(item, list)
            and len(item) == 4
            and isinstance(item[0], str)
            and item[0].lstrip("-").isdigit()
            and isinstance(item[1], dict)
            and item[1]
            and isinstance(item[2], str)
            and isinstance(item[3], dict)
        ):
            labels = {str(k): _label_value(v) for k, v in item[1].items()}
            metadata = {str(k): _metadata_value(v) for k, v in item[3].items()}
            return _Entry(int(item[0]), labels, item[2], metadata)
        line = safe_text(record.decode("utf-8", "replace"))
        return _Entry(time.time_ns(), {**self.labels, "level": "unknown"}, line, {})

    def _streams(self, prepared: Sequence[bytes]) -> dict[str, list[_Entry]]:
        """Group entries per stream (label set), each stream sorted by timestamp."""
        streams: dict[str, list[_Entry]] = {}
        for record in prepared:
            entry = self._entry(record)
            streams.setdefault(format_labels(entry.labels), []).append(entry)
        for entries in streams.values():
            # Stable: entries with the same timestamp keep their logging order.
            entries.sort(key=lambda e: e.ts)
        return streams

    def encode(self, prepared: Sequence[bytes]) -> Request:
        """One push request: protobuf ``PushRequest`` + snappy block, or gzip'd JSON."""
        streams = self._streams(prepared)
        if self.encoding == "json":
            payload = {
                "streams": [
                    {
                        "stream": entries[0].labels,
                        "values": [
                            [str(e.ts), e.line, e.metadata] if e.metadata else [str(e.ts), e.line]
                            for e in entries
                        ],
                    }
                    for entries in streams.values()
                ]
            }
            body = orjson.dumps(payload)
        else:
            body = b"".join(
                field_bytes(1, _stream_message(labels, entries)) for labels, entries in streams.items()
            )
        return Request("POST", self.endpoint, dict(self._headers), self._compress(body), len(prepared))

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Answer:
        """Loki's rules: 400/422 drop (a 400 may be a partial write), 429/5xx retry."""
        if 200 <= status < 300:
            return Answer(Outcome.SENT)
        message = self._message(body) or f"HTTP {status}"
        if status in (401, 403):
            return Answer(Outcome.AUTH, message=message)
        if status == 413:
            return Answer(Outcome.SPLIT, message=message)
        if status == 429 or 500 <= status < 600:
            delay = parse_retry_after(header_value(headers, "Retry-After"))
            return Answer(Outcome.RETRY, retry_after_s=delay, message=message)
        return Answer(Outcome.REFUSED, message=message)


def _stream_message(labels: str, entries: Sequence[_Entry]) -> bytes:
    """``StreamAdapter {labels = 1; repeated EntryAdapter entries = 2}``."""
    parts = [field_string(1, labels)]
    for entry in entries:
        seconds, nanos = divmod(entry.ts, _NS)
        timestamp = (field_varint(1, seconds) if seconds else b"") + (
            field_varint(2, nanos) if nanos else b""
        )
        message = field_bytes(1, timestamp) + field_string(2, entry.line)
        for name, value in entry.metadata.items():
            # LabelPairAdapter {name = 1; value = 2}
            message += field_bytes(3, field_string(1, name) + field_string(2, value))
        parts.append(field_bytes(2, message))
    return b"".join(parts)
