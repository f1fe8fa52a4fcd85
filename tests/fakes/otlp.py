"""A fake OpenTelemetry Collector OTLP/HTTP logs receiver (``POST /v1/logs``).

Decodes with the official ``opentelemetry-proto`` classes: protobuf directly, OTLP JSON via
``json_format.Parse`` after turning the hex ``traceId``/``spanId`` (OTLP JSON's one
departure from proto3 JSON, which would expect base64) into base64. gzip and deflate bodies;
415 for other content types; IDs of the wrong length are a 400 like the collector's pdata.
Answers 200 with an ``ExportLogsServiceResponse`` in the request's encoding, errors as a
``google.rpc.Status`` in the request's encoding. ``partial_success_next`` scripts a partial
success (the rejected records are not stored).
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from tests.fakes._server import FakeServer, ReceivedRequest, Reply, decompress

__all__ = ["FakeOTLP", "OTLPRecord", "any_value"]

LOGS_PATH = "/v1/logs"
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"


@dataclass
class OTLPRecord:
    """One received log record, flattened for assertions."""

    resource: dict[str, Any]
    scope_name: str
    scope_version: str
    time_unix_nano: int
    observed_time_unix_nano: int
    severity_number: int
    severity_text: str
    body: Any
    attributes: dict[str, Any]
    trace_id: str  # hex, "" when absent
    span_id: str
    flags: int = 0
    encoding: str = ""


def any_value(value: common_pb2.AnyValue) -> Any:
    """An ``AnyValue`` as a Python value (kvlist → dict, array → list, unset → None)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


class _InvalidError(Exception):
    pass


def _hex_to_base64(records: list[Any]) -> None:
    for record in records:
        if not isinstance(record, dict):
            raise _InvalidError("logRecords must hold objects")
        for key, size in (("traceId", 16), ("spanId", 8)):
            value = record.get(key)
            if value in (None, ""):
                continue
            try:
                raw = bytes.fromhex(value)
            except (TypeError, ValueError) as exc:
                raise _InvalidError(f"invalid {key} {value!r}: not hex") from exc
            if len(raw) != size:
                raise _InvalidError(f"invalid {key} {value!r}: length must be {size * 2} hex digits")
            record[key] = base64.b64encode(raw).decode()


class FakeOTLP(FakeServer):
    """Fake collector. Point ``OTLPProtocol(fake.url)`` at it."""

    name: ClassVar[str] = "otlp"
    fault_paths: ClassVar[frozenset[str] | None] = frozenset({LOGS_PATH})

    def __init__(self) -> None:
        super().__init__()
        self.exports: list[Any] = []  # ExportLogsServiceRequest messages
        self.records: list[OTLPRecord] = []
        self._partial: list[tuple[int, str]] = []
        self._store_lock = threading.Lock()

    def partial_success_next(self, rejected: int, message: str = "rejected by policy") -> None:
        """Accept the next export but report ``rejected`` records as rejected (not stored)."""
        with self._store_lock:
            self._partial.append((rejected, message))

    def _encoding(self, request: ReceivedRequest) -> str:
        return _JSON if request.media_type == _JSON else _PROTOBUF

    def error_reply(self, request: ReceivedRequest, status: int, message: str) -> Reply:
        """A ``google.rpc.Status`` in the request's encoding, like the collector."""
        code = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 429: 8, 503: 14}.get(status, 2)
        status_msg = status_pb2.Status(code=code, message=message)
        if self._encoding(request) == _JSON:
            body = json_format.MessageToJson(status_msg, indent=None).encode()
            return Reply(status, body, {"Content-Type": _JSON})
        return Reply(status, status_msg.SerializeToString(), {"Content-Type": _PROTOBUF})

    def handle(self, request: ReceivedRequest) -> Reply:
        """Decode, store and answer one export."""
        if request.path != LOGS_PATH:
            return Reply(404, b"404 page not found", {"Content-Type": "text/plain"})
        if request.method != "POST":
            return Reply(405, b"405 method not allowed, supported: [POST]")
        if request.media_type not in (_JSON, _PROTOBUF):
            return Reply(
                415,
                b"415 unsupported media type, supported: [application/json, application/x-protobuf]",
                {"Content-Type": "text/plain"},
            )
        try:
            body = decompress(request.raw_body, request.header("content-encoding"))
            export = self._decode(body, request.media_type)
        except (_InvalidError, ValueError) as exc:
            return self.error_reply(request, 400, str(exc))
        rejected, message = 0, ""
        with self._store_lock:
            if self._partial:
                rejected, message = self._partial.pop(0)
        records = self._flatten(export, request.media_type)
        with self._store_lock:
            self.exports.append(export)
            self.records.extend(records[: max(0, len(records) - rejected)])
        response = logs_service_pb2.ExportLogsServiceResponse()
        if rejected or message:
            response.partial_success.rejected_log_records = rejected
            response.partial_success.error_message = message
        if request.media_type == _JSON:
            body_out = json_format.MessageToJson(response, indent=None).encode()
        else:
            body_out = response.SerializeToString()
        return Reply(200, body_out, {"Content-Type": request.media_type})

    @staticmethod
    def _decode(body: bytes, media_type: str) -> Any:
        export = logs_service_pb2.ExportLogsServiceRequest()
        if media_type == _PROTOBUF:
            try:
                export.ParseFromString(body)
            except DecodeError as exc:
                raise _InvalidError(f"proto: {exc}") from exc
            for resource_logs in export.resource_logs:
                for scope_logs in resource_logs.scope_logs:
                    for record in scope_logs.log_records:
                        if len(record.trace_id) not in (0, 16) or len(record.span_id) not in (0, 8):
                            raise _InvalidError("invalid length for ID")
            return export
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _InvalidError(f"json: {exc}") from exc
        if not isinstance(data, dict):
            raise _InvalidError("json: ExportLogsServiceRequest must be an object")
        for resource_logs in data.get("resourceLogs") or []:
            for scope_logs in (resource_logs or {}).get("scopeLogs") or []:
                _hex_to_base64((scope_logs or {}).get("logRecords") or [])
        try:
            json_format.ParseDict(data, export)
        except json_format.ParseError as exc:
            raise _InvalidError(f"json: {exc}") from exc
        return export

    @staticmethod
    def _flatten(export: Any, media_type: str) -> list[OTLPRecord]:
        out: list[OTLPRecord] = []
        for resource_logs in export.resource_logs:
            resource = {kv.key: any_value(kv.value) for kv in resource_logs.resource.attributes}
            for scope_logs in resource_logs.scope_logs:
                out.extend(
                    OTLPRecord(
                        resource=resource,
                        scope_name=scope_logs.scope.name,
                        scope_version=scope_logs.scope.version,
                        time_unix_nano=record.time_unix_nano,
                        observed_time_unix_nano=record.observed_time_unix_nano,
                        severity_number=record.severity_number,
                        severity_text=record.severity_text,
                        body=any_value(record.body),
                        attributes={kv.key: any_value(kv.value) for kv in record.attributes},
                        trace_id=record.trace_id.hex(),
                        span_id=record.span_id.hex(),
                        flags=record.flags,
                        encoding="json" if media_type == _JSON else "protobuf",
                    )
                    for record in scope_logs.log_records
                )
        return out
