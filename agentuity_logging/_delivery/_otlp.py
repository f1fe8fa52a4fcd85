"""OTLP/HTTP logs: ``ExportLogsServiceRequest`` as protobuf (default) or OTLP JSON, gzip'd.

A record becomes a ``LogRecord`` with the session and thread IDs as attributes, user fields
as typed ``AnyValue`` attributes, exceptions under the ``exception.*`` semantic conventions
and, when the event carries OpenTelemetry IDs, ``traceId``/``spanId`` so backends link the
log to its trace. Records are prepared once in the OTLP JSON mapping (encoding-independent,
so a spool written with one encoding can be sent with the other) and turned into protobuf
with the hand-written encoder in ``_protobuf``.
"""

from __future__ import annotations

import base64
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import orjson

from agentuity_logging import _json
from agentuity_logging._delivery._protobuf import (
    LEN,
    VARINT,
    field_bytes,
    field_double,
    field_fixed64,
    field_string,
    field_varint,
    iter_fields,
)
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
    trace_context,
    validate_headers,
)

__all__ = ["SEVERITY_NUMBERS", "OTLPProtocol"]

#: Python levels to OTLP ``SeverityNumber`` (the SDK's own mapping).
SEVERITY_NUMBERS = {
    "notset": 0,
    "trace": 1,
    "debug": 5,
    "info": 9,
    "notice": 10,
    "warning": 13,
    "error": 17,
    "critical": 21,
}
SCOPE_NAME = "agentuity_logging"
#: One record's JSON form beyond this is truncated (message first); OTLP has no own limit.
MAX_RECORD_BYTES = 1_000_000

_PATH = "/v1/logs"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_MAX_VALUE_DEPTH = 16
_RETRYABLE = frozenset({429, 502, 503, 504})
# Keys that map to LogRecord fields rather than attributes.
_FIELDS = frozenset({"timestamp", "level", "message", "logger", "service", "exception"})
_PROTECTED = frozenset({"timestamp", "level", "logger", "service", "agentuitySessionId", "agentuityThreadId"})


def _any_value(value: Any, depth: int = 0) -> dict[str, Any]:
    """A Python value as an OTLP JSON ``AnyValue`` (int64 as a decimal string, per the spec)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return {"intValue": str(value)}
        return {"stringValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {"doubleValue": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, str):
        return {"stringValue": safe_text(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytesValue": base64.b64encode(bytes(value)).decode("ascii")}
    if depth >= _MAX_VALUE_DEPTH:
        return {"stringValue": as_text(value)}
    if isinstance(value, Mapping):
        return {
            "kvlistValue": {
                "values": [{"key": as_text(k), "value": _any_value(v, depth + 1)} for k, v in value.items()]
            }
        }
    if isinstance(value, list | tuple | set | frozenset):
        return {"arrayValue": {"values": [_any_value(v, depth + 1) for v in value]}}
    try:
        rendered = _json.safe_default(value)
    except Exception:
        rendered = None
    if rendered is None or rendered is value or isinstance(rendered, str):
        return {"stringValue": as_text(value if rendered is None else rendered)}
    return _any_value(rendered, depth + 1)


def _stacktrace(exception: Mapping[str, Any]) -> str | None:
    """The exception's text traceback, or one rebuilt from its frames."""
    text = exception.get("traceback") or exception.get("stacktrace")
    if isinstance(text, str) and text:
        return text
    frames = exception.get("frames")
    if not isinstance(frames, list) or not frames:
        return None
    lines = ["Traceback (most recent call last):"]
    for frame in frames:
        if isinstance(frame, Mapping):
            lines.append(
                f'  File "{frame.get("file", "?")}", line {frame.get("line", "?")}, '
                f"in {frame.get('function', '?')}"
            )
        else:
            lines.append(f"  {as_text(frame)}")
    lines.append(f"{exception.get('type') or 'Exception'}: {exception.get('message') or ''}")
    return "\n".join(lines)


def _exception_attributes(exception: Any) -> list[dict[str, Any]]:
    """``exception.type/message/stacktrace`` per the OpenTelemetry semantic conventions."""
    if not isinstance(exception, Mapping):
        return [{"key": "exception.message", "value": {"stringValue": as_text(exception)}}]
    attributes = []
    for key, value in (
        ("exception.type", exception.get("type")),
        ("exception.message", exception.get("message")),
        ("exception.stacktrace", _stacktrace(exception)),
    ):
        if value is not None:
            attributes.append({"key": key, "value": {"stringValue": as_text(value)}})
    return attributes


def _status_message(headers: Mapping[str, str], body: bytes) -> str | bytes:
    """The ``message`` of a ``google.rpc.Status`` error body (JSON or protobuf), else the body."""
    content_type = (header_value(headers, "Content-Type") or "").lower()
    if "protobuf" in content_type:
        try:
            for number, wire_type, value in iter_fields(body):
                if number == 2 and wire_type == LEN and isinstance(value, bytes):
                    return value.decode("utf-8", "replace")
        except ValueError:
            pass
        return b""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return body


def _partial_success(headers: Mapping[str, str], body: bytes) -> tuple[int, str | None]:
    """``partialSuccess`` of an ``ExportLogsServiceResponse``: (rejected records, message)."""
    if not body:
        return 0, None
    content_type = (header_value(headers, "Content-Type") or "").lower()
    if "json" in content_type or body[:1] == b"{":
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 0, None
        partial = data.get("partialSuccess") if isinstance(data, dict) else None
        if not isinstance(partial, dict):
            return 0, None
        try:
            rejected = int(partial.get("rejectedLogRecords") or 0)
        except (TypeError, ValueError):
            rejected = 0
        message = partial.get("errorMessage")
        return rejected, message if isinstance(message, str) and message else None
    rejected, message = 0, None
    try:
        for number, wire_type, value in iter_fields(body):
            if number == 1 and wire_type == LEN and isinstance(value, bytes):
                for inner, inner_type, inner_value in iter_fields(value):
                    if inner == 1 and inner_type == VARINT and isinstance(inner_value, int):
                        rejected = inner_value
                    elif inner == 2 and inner_type == LEN and isinstance(inner_value, bytes):
                        message = inner_value.decode("utf-8", "replace") or None
    except ValueError:
        return 0, None
    return rejected, message


# --- protobuf from the OTLP JSON form --------------------------------------------------------


def _pb_any(value: Mapping[str, Any]) -> bytes:
    """``AnyValue``: exactly one oneof field, written even when zero (presence matters)."""
    if "stringValue" in value:
        return field_string(1, str(value["stringValue"]))
    if "boolValue" in value:
        return field_varint(2, 1 if value["boolValue"] else 0)
    if "intValue" in value:
        return field_varint(3, int(value["intValue"]))
    if "doubleValue" in value:
        return field_double(4, float(value["doubleValue"]))
    if "arrayValue" in value:
        items = value["arrayValue"].get("values", [])
        return field_bytes(5, b"".join(field_bytes(1, _pb_any(v)) for v in items))
    if "kvlistValue" in value:
        items = value["kvlistValue"].get("values", [])
        return field_bytes(6, b"".join(field_bytes(1, _pb_key_value(kv)) for kv in items))
    if "bytesValue" in value:
        return field_bytes(7, base64.b64decode(value["bytesValue"]))
    return b""


def _pb_key_value(item: Mapping[str, Any]) -> bytes:
    """``KeyValue {key = 1; value = 2}``."""
    return field_string(1, str(item["key"])) + field_bytes(2, _pb_any(item.get("value", {})))


def _pb_record(record: Mapping[str, Any]) -> bytes:
    """``LogRecord`` (field numbers from opentelemetry/proto/logs/v1/logs.proto)."""
    parts = [field_fixed64(1, int(record.get("timeUnixNano", 0)))]
    if record.get("severityNumber"):
        parts.append(field_varint(2, int(record["severityNumber"])))
    if record.get("severityText"):
        parts.append(field_string(3, str(record["severityText"])))
    if "body" in record:
        parts.append(field_bytes(5, _pb_any(record["body"])))
    parts.extend(field_bytes(6, _pb_key_value(kv)) for kv in record.get("attributes", ()))
    if record.get("traceId"):
        parts.append(field_bytes(9, bytes.fromhex(record["traceId"])))
    if record.get("spanId"):
        parts.append(field_bytes(10, bytes.fromhex(record["spanId"])))
    parts.append(field_fixed64(11, int(record.get("observedTimeUnixNano", 0))))
    return b"".join(parts)


def _pb_request(
    groups: Sequence[tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]],
    scope: Mapping[str, str],
) -> bytes:
    """``ExportLogsServiceRequest``: per group, ``ResourceLogs`` with one ``ScopeLogs``."""
    scope_msg = field_string(1, scope["name"])
    if scope.get("version"):
        scope_msg += field_string(2, scope["version"])
    scope_field = field_bytes(1, scope_msg)
    out = []
    for resource_attributes, records in groups:
        resource = b"".join(field_bytes(1, _pb_key_value(kv)) for kv in resource_attributes)
        log_records = b"".join(field_bytes(2, _pb_safe(r)) for r in records)
        scope_logs = field_bytes(2, scope_field + log_records)
        out.append(field_bytes(1, field_bytes(1, resource) + scope_logs))
    return b"".join(out)


def _scope_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("agentuity-logging")
    except Exception:
        return None


class OTLPProtocol(WireProtocol):
    """OTLP/HTTP logs exporter protocol (``POST <endpoint>/v1/logs``).

    Args:
        endpoint: collector base URL (``http://collector:4318``) or the full ``…/v1/logs``.
        exact: use ``endpoint`` as the logs URL as is (a signal-specific endpoint, such as
            ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``, is never given a path by the OpenTelemetry spec).
        headers: extra headers (``OTEL_EXPORTER_OTLP_HEADERS``); values are secrets.
        encoding: ``"protobuf"`` or ``"json"`` (the OTLP JSON mapping).
        resource: resource attributes (``deployment.environment``, ``service.version``…).
        service: ``service.name``; defaults to the record's ``service``, then the resource's.

    Raises:
        ValueError: a bad endpoint, encoding or header.
    """

    name = "otlp"
    max_batch_records = 512
    max_batch_bytes = 4_000_000

    def __init__(
        self,
        endpoint: str,
        *,
        headers: Mapping[str, str] | None = None,
        encoding: Literal["protobuf", "json"] = "protobuf",
        resource: Mapping[str, Any] | None = None,
        service: str | None = None,
        exact: bool = False,
    ) -> None:
        base = check_url(endpoint, "OTLP endpoint")
        self.endpoint = base if exact or base.endswith(_PATH) else base + _PATH
        if encoding not in ("protobuf", "json"):
            raise ValueError(f"OTLP encoding must be 'protobuf' or 'json', got {encoding!r}")
        self.encoding = encoding
        self.resource = dict(resource or {})
        self.service = service
        self._scope = {"name": SCOPE_NAME}
        version = _scope_version()
        if version:
            self._scope["version"] = version
        user_headers = validate_headers(headers)
        self._secret_values = list(user_headers.values())
        content_type = "application/x-protobuf" if encoding == "protobuf" else "application/json"
        self._headers = {**user_headers, "Content-Type": content_type, "Content-Encoding": "gzip"}

    def _secrets(self) -> Iterable[str]:
        return self._secret_values

    def prepare(self, event: dict[str, Any]) -> bytes:
        """``{"service": …, "record": <LogRecord in OTLP JSON>}``, at most about 1 MB."""
        now = time.time_ns()
        try:
            data = orjson.dumps(self._prepared(event, now))
            if len(data) <= MAX_RECORD_BYTES:
                return data
            fitted = orjson.loads(fit_record(event, MAX_RECORD_BYTES, protected=_PROTECTED))
            return orjson.dumps(self._prepared(fitted, now))
        except Exception:
            body = {"stringValue": as_text(event.get("message"))[: MAX_RECORD_BYTES // 4]}
            record = {"timeUnixNano": str(now), "observedTimeUnixNano": str(now), "body": body}
            return orjson.dumps({"service": None, "record": record})

    def _prepared(self, event: Mapping[str, Any], now: int) -> dict[str, Any]:
        level = level_name(event.get("level"))
        record: dict[str, Any] = {
            "timeUnixNano": str(event_time_ns(event.get("timestamp"), now)),
            "observedTimeUnixNano": str(now),
            "severityNumber": SEVERITY_NUMBERS.get(level, 0),
            "severityText": level.upper(),
            "body": {"stringValue": as_text(event.get("message", ""))},
        }
        trace_id, span_id, used = trace_context(event)
        attributes: list[dict[str, Any]] = []
        logger = event.get("logger")
        if logger is not None:
            attributes.append({"key": "logger.name", "value": {"stringValue": as_text(logger)}})
        for key, value in event.items():
            if key not in _FIELDS and key not in used:
                attributes.append({"key": as_text(key), "value": _any_value(value)})
        if "exception" in event:
            attributes.extend(_exception_attributes(event["exception"]))
        record["attributes"] = attributes
        if trace_id:
            record["traceId"] = trace_id
        if span_id:
            record["spanId"] = span_id
        service = event.get("service")
        return {"service": as_text(service) if service else None, "record": record}

    def _resource_attributes(self, service: str | None) -> list[dict[str, Any]]:
        name = self.service or service or self.resource.get("service.name") or "unknown_service"
        attributes = {**self.resource, "service.name": name}
        return [{"key": str(k), "value": _any_value(v)} for k, v in attributes.items()]

    def encode(self, prepared: Sequence[bytes], *, verified: bool = False) -> Request:
        """One export request: records grouped into one ``ResourceLogs`` per service."""
        groups: dict[str | None, list[dict[str, Any]]] = {}
        for raw in prepared:
            item = decode_prepared(raw)
            if isinstance(item, dict) and isinstance(item.get("record"), dict):
                service = item.get("service") if isinstance(item.get("service"), str) else None
                record = item["record"]
            else:
                now = str(time.time_ns())
                text = safe_text(raw.decode("utf-8", "replace"))
                service = None
                record = {
                    "timeUnixNano": now,
                    "observedTimeUnixNano": now,
                    "body": {"stringValue": text},
                }
            groups.setdefault(None if self.service else service, []).append(record)
        resources = [(self._resource_attributes(service), records) for service, records in groups.items()]
        if self.encoding == "json":
            resource_logs = [
                {
                    "resource": {"attributes": attributes},
                    "scopeLogs": [{"scope": self._scope, "logRecords": records}],
                }
                for attributes, records in resources
            ]
            body = orjson.dumps({"resourceLogs": resource_logs})
        else:
            body = _pb_request(resources, self._scope)
        return Request("POST", self.endpoint, dict(self._headers), gzip_bytes(body), len(prepared))

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Answer:
        """OTLP's rules: partial success counted, 429/502/503/504 retried, others dropped."""
        if 200 <= status < 300:
            rejected, message = _partial_success(headers, body)
            return Answer(Outcome.SENT, message=self._message(message), rejected=rejected)
        message = self._message(_status_message(headers, body)) or f"HTTP {status}"
        if status in (401, 403):
            return Answer(Outcome.AUTH, message=message)
        if status == 413:
            return Answer(Outcome.SPLIT, message=message)
        if status in _RETRYABLE:
            delay = parse_retry_after(header_value(headers, "Retry-After"))
            return Answer(Outcome.RETRY, retry_after_s=delay, message=message)
        return Answer(Outcome.REFUSED, message=message)


def _pb_safe(record: Mapping[str, Any]) -> bytes:
    """Encode one record; a damaged spool record degrades to its text instead of failing."""
    try:
        return _pb_record(record)
    except Exception:
        now = time.time_ns()
        text = safe_text(orjson.dumps(record, default=str).decode("utf-8", "replace"))
        return _pb_record({"timeUnixNano": now, "observedTimeUnixNano": now, "body": {"stringValue": text}})
