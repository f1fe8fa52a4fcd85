"""A fake Grafana Loki: push (protobuf+snappy or JSON), ``query_range`` and ``labels``.

Push (``POST /loki/api/v1/push``) reads JSON only for ``Content-Type: application/json``,
anything else as snappy-block protobuf decoded with classes built from ``push.proto``
(``tests.fakes.logproto``), independently of our encoder. It validates like Loki's
distributor: labels parse and are at most 15, name/value lengths, duplicates, lines at most
256,000 bytes, at most 128 structured-metadata entries and 64 KB, samples not older than
7 days nor more than 10 minutes ahead, timestamps as JSON strings, structured-metadata
values as strings; invalid entries are dropped and answered with a 400 naming the first
problem while valid ones are kept (Loki's partial acceptance). Zero streams is a 422, a
body over the limit a 413, a missing ``X-Scope-OrgID`` with ``require_tenant`` a 401
``no org id``. Success is ``204``. Identical entries (timestamp, line, metadata) are
stored once, like Loki.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cramjam
import orjson
from google.protobuf.message import DecodeError

from tests.fakes import logproto
from tests.fakes._server import FakeServer, ReceivedRequest, Reply, decompress
from tests.fakes.logql import LABEL_NAME, LogQLError, parse_labels, parse_query

__all__ = ["FakeLoki", "LokiEntry", "LokiPush", "LokiStream"]

PUSH_PATH = "/loki/api/v1/push"
QUERY_RANGE_PATH = "/loki/api/v1/query_range"
LABELS_PATH = "/loki/api/v1/labels"
CATEGORIZE_HEADER = "x-loki-response-encoding-flags"
_NS = 1_000_000_000


@dataclass
class LokiEntry:
    """One stored entry."""

    tenant: str
    labels: dict[str, str]
    ts_ns: int
    line: str
    structured_metadata: dict[str, str]
    seq: int = 0


@dataclass
class LokiStream:
    """One stream of a push, as sent (entries in the order they were in the request)."""

    labels: dict[str, str]
    labels_text: str | None  # protobuf's label string; None for JSON
    entries: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)


@dataclass
class LokiPush:
    """One decoded push request."""

    encoding: str  # "protobuf" | "json"
    tenant: str
    streams: list[LokiStream]


class _InvalidError(Exception):
    """A request-level decoding error (400 for the whole request)."""


def _stamp(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / _NS, tz=dt.timezone.utc).isoformat()


def _format(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


class FakeLoki(FakeServer):
    """Fake Loki single binary. Point ``LokiProtocol(fake.url)`` at it."""

    name: ClassVar[str] = "loki"
    fault_paths: ClassVar[frozenset[str] | None] = frozenset({PUSH_PATH})

    def __init__(
        self,
        *,
        require_tenant: bool = False,
        max_line_bytes: int = 256_000,
        max_label_names: int = 15,
        max_label_name_bytes: int = 1024,
        max_label_value_bytes: int = 2048,
        max_structured_metadata_entries: int = 128,
        max_structured_metadata_bytes: int = 64_000,
        max_body_bytes: int = 16 * 1024 * 1024,
        max_entries_limit: int = 5000,
        reject_old_samples_max_age_s: float = 7 * 86400,
        creation_grace_period_s: float = 600,
    ) -> None:
        super().__init__()
        self.require_tenant = require_tenant
        self.max_line_bytes = max_line_bytes
        self.max_label_names = max_label_names
        self.max_label_name_bytes = max_label_name_bytes
        self.max_label_value_bytes = max_label_value_bytes
        self.max_structured_metadata_entries = max_structured_metadata_entries
        self.max_structured_metadata_bytes = max_structured_metadata_bytes
        self.max_body_bytes = max_body_bytes
        self.max_entries_limit = max_entries_limit
        self.reject_old_samples_max_age_s = reject_old_samples_max_age_s
        self.creation_grace_period_s = creation_grace_period_s
        self.entries: list[LokiEntry] = []
        self.pushes: list[LokiPush] = []
        self._store_lock = threading.Lock()
        self._seq = itertools.count()
        self._seen: set[tuple[str, str, int, str, tuple[tuple[str, str], ...]]] = set()

    def error_reply(self, request: ReceivedRequest, status: int, message: str) -> Reply:
        """Loki's errors are plain text ending in a newline (Go's ``http.Error``)."""
        return Reply(status, f"{message}\n".encode(), {"Content-Type": "text/plain; charset=utf-8"})

    def stored(self, tenant: str = "fake") -> list[LokiEntry]:
        """Stored entries of a tenant in arrival order."""
        with self._store_lock:
            return [e for e in self.entries if e.tenant == tenant]

    def handle(self, request: ReceivedRequest) -> Reply:
        """Route to push, query_range or labels."""
        tenant = request.header("x-scope-orgid")
        if self.require_tenant and not tenant:
            return self.error_reply(request, 401, "no org id")
        tenant = tenant or "fake"
        if request.path == PUSH_PATH:
            if request.method != "POST":
                return self.error_reply(request, 405, "method not allowed")
            return self._push(request, tenant)
        if request.path == QUERY_RANGE_PATH and request.method in ("GET", "POST"):
            return self._query_range(request, tenant)
        if request.path == LABELS_PATH and request.method in ("GET", "POST"):
            return self._labels(tenant)
        if request.path.startswith("/loki/api/v1/label/") and request.path.endswith("/values"):
            return self._label_values(request.path.split("/")[5], tenant)
        return self.error_reply(request, 404, "404 page not found")

    # --- push ---------------------------------------------------------------------------

    def _push(self, request: ReceivedRequest, tenant: str) -> Reply:
        if len(request.raw_body) > self.max_body_bytes:
            return self.error_reply(request, 413, "request body too large")
        try:
            body = decompress(request.raw_body, request.header("content-encoding"))
            if len(body) > self.max_body_bytes:
                return self.error_reply(request, 413, "request body too large")
            if request.media_type == "application/json":
                push = self._decode_json(body, tenant)
            else:
                push = self._decode_protobuf(body, tenant)
        except (_InvalidError, ValueError) as exc:
            return self.error_reply(request, 400, str(exc))
        if not push.streams:
            return self.error_reply(request, 422, "push request contains no streams")
        with self._store_lock:
            self.pushes.append(push)
        errors: list[str] = []
        for stream in push.streams:
            errors.extend(self._ingest(stream, tenant))
        if errors:
            message = errors[0] if len(errors) == 1 else f"{len(errors)} errors like: {errors[0]}"
            return self.error_reply(request, 400, message)
        return Reply(204)

    def _decode_protobuf(self, body: bytes, tenant: str) -> LokiPush:
        try:
            raw = bytes(cramjam.snappy.decompress_raw(body))
        except Exception as exc:
            raise _InvalidError(f"snappy: corrupt input ({exc})") from exc
        if len(raw) > self.max_body_bytes:
            raise _InvalidError("decompressed body too large")
        try:
            message = logproto.PushRequest.FromString(raw)
        except DecodeError as exc:
            raise _InvalidError(f"proto: cannot parse PushRequest: {exc}") from exc
        streams = []
        for stream in message.streams:
            entries = [
                (
                    e.timestamp.seconds * _NS + e.timestamp.nanos,
                    e.line,
                    {p.name: p.value for p in e.structuredMetadata},
                )
                for e in stream.entries
            ]
            streams.append(LokiStream({}, stream.labels, entries))
        return LokiPush("protobuf", tenant, streams)

    @staticmethod
    def _decode_json(body: bytes, tenant: str) -> LokiPush:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _InvalidError(f"loghttp.PushRequest: cannot parse JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("streams", []), list):
            raise _InvalidError("loghttp.PushRequest: streams must be an array")
        streams = []
        for item in data.get("streams") or []:
            if not isinstance(item, dict):
                raise _InvalidError("loghttp.PushRequest: each stream must be an object")
            labels = item.get("stream", {})
            if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
                raise _InvalidError("loghttp.PushRequest: stream labels must be string values")
            values = item.get("values", [])
            if not isinstance(values, list):
                raise _InvalidError("loghttp.PushRequest: values must be an array")
            entries = []
            for value in values:
                if not isinstance(value, list) or len(value) not in (2, 3):
                    raise _InvalidError("loghttp.PushRequest: a value must be [ts, line] or [ts, line, {}]")
                ts, line = value[0], value[1]
                if not isinstance(ts, str):
                    raise _InvalidError(
                        f"loghttp.PushRequest: timestamp must be a string, got {type(ts).__name__}"
                    )
                if not ts.lstrip("-").isdigit():
                    raise _InvalidError(f"loghttp.PushRequest: invalid timestamp {ts!r}")
                if not isinstance(line, str):
                    raise _InvalidError("loghttp.PushRequest: line must be a string")
                metadata = value[2] if len(value) == 3 else {}
                if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                    raise _InvalidError("loghttp.PushRequest: structured metadata values must be strings")
                entries.append((int(ts), line, dict(metadata)))
            streams.append(LokiStream(dict(labels), None, entries))
        return LokiPush("json", tenant, streams)

    def _labels_of(self, stream: LokiStream) -> tuple[dict[str, str], str]:
        """Validate a stream's label set like the distributor; raises ``_InvalidError``."""
        if stream.labels_text is not None:
            try:
                pairs = parse_labels(stream.labels_text)
            except LogQLError as exc:
                raise _InvalidError(
                    f"Error parsing labels '{stream.labels_text}' with error: parse error: {exc}"
                ) from exc
        else:
            pairs = list(stream.labels.items())
        shown = stream.labels_text or _format(dict(pairs))
        if not pairs:
            raise _InvalidError("error at least one label pair is required per stream")
        for name, _ in pairs:
            if not LABEL_NAME.fullmatch(name):
                raise _InvalidError(f"Error parsing labels '{shown}' with error: invalid label name {name!r}")
        if len(pairs) > self.max_label_names:
            raise _InvalidError(
                f"entry for stream '{shown}' has {len(pairs)} label names; limit {self.max_label_names}"
            )
        seen: set[str] = set()
        for name, value in pairs:
            if len(name.encode()) > self.max_label_name_bytes:
                raise _InvalidError(f"stream '{shown}' has label name too long: '{name}'")
            if len(value.encode()) > self.max_label_value_bytes:
                raise _InvalidError(f"stream '{shown}' has label value too long: '{value}'")
            if name in seen:
                raise _InvalidError(f"stream '{shown}' has duplicate label name: '{name}'")
            seen.add(name)
        labels = dict(pairs)
        return labels, _format(labels)

    def _ingest(self, stream: LokiStream, tenant: str) -> list[str]:
        """Validate and store one stream's entries; returns one error per rejected entry."""
        try:
            labels, shown = self._labels_of(stream)
        except _InvalidError as exc:
            return [str(exc)] * max(1, len(stream.entries))
        stream.labels = labels
        now = time.time_ns()
        oldest = now - int(self.reject_old_samples_max_age_s * _NS)
        newest = now + int(self.creation_grace_period_s * _NS)
        errors = []
        for ts, line, metadata in stream.entries:
            metadata_size = sum(len(k) + len(v) for k, v in metadata.items())
            if ts < oldest:
                errors.append(
                    f"entry for stream '{shown}' has timestamp too old: {_stamp(ts)}, "
                    f"oldest acceptable timestamp is: {_stamp(oldest)}"
                )
            elif ts > newest:
                errors.append(f"entry for stream '{shown}' has timestamp too new: {_stamp(ts)}")
            elif len(line.encode()) > self.max_line_bytes:
                errors.append(
                    f"Max entry size '{self.max_line_bytes}' bytes exceeded for stream "
                    f"'{shown}' while adding an entry with length '{len(line.encode())}' bytes"
                )
            elif len(metadata) > self.max_structured_metadata_entries:
                errors.append(
                    f"stream '{shown}' has too many structured metadata labels: "
                    f"'{len(metadata)}', limit: '{self.max_structured_metadata_entries}'. Please "
                    "see `limits_config.max_structured_metadata_entries_count` or contact your "
                    "Loki administrator to increase it."
                )
            elif metadata_size > self.max_structured_metadata_bytes:
                errors.append(
                    f"stream '{shown}' has structured metadata too large: '{metadata_size}' "
                    f"bytes, limit: '{self.max_structured_metadata_bytes}' bytes. Please see "
                    "`limits_config.max_structured_metadata_size` or contact your Loki "
                    "administrator to increase it."
                )
            else:
                key = (tenant, shown, ts, line, tuple(sorted(metadata.items())))
                with self._store_lock:
                    if key in self._seen:
                        continue  # Loki ignores an exact duplicate of a stored entry
                    self._seen.add(key)
                    self.entries.append(LokiEntry(tenant, labels, ts, line, dict(metadata), next(self._seq)))
        return errors

    # --- query --------------------------------------------------------------------------

    @staticmethod
    def _time(value: str | None, default: int) -> int:
        """Loki's time parameter: ns integer (≤ 10 digits: seconds), float seconds, RFC 3339."""
        if value is None or value == "":
            return default
        if "." in value and value.replace(".", "", 1).lstrip("-").isdigit():
            return int(float(value) * _NS)
        if value.lstrip("-").isdigit():
            number = int(value)
            return number * _NS if len(value.lstrip("-")) <= 10 else number
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise LogQLError(f"cannot parse {value!r} to a valid timestamp") from exc
        return int(parsed.timestamp()) * _NS + parsed.microsecond * 1000

    def _query_error(self, message: str) -> Reply:
        return Reply(400, f"{message}\n".encode(), {"Content-Type": "text/plain; charset=utf-8"})

    def _query_range(self, request: ReceivedRequest, tenant: str) -> Reply:
        query_text = request.param("query")
        if not query_text:
            return self._query_error("query must not be empty")
        try:
            query = parse_query(query_text)
            now = time.time_ns()
            end = self._time(request.param("end"), now)
            start = self._time(request.param("start"), end - 3600 * _NS)
        except LogQLError as exc:
            return self._query_error(str(exc))
        limit_text = request.param("limit") or "100"
        if not limit_text.lstrip("-").isdigit():
            return self._query_error(f"invalid limit {limit_text!r}")
        limit = int(limit_text)
        if limit <= 0:
            return self._query_error("limit must be a positive value")
        if limit > self.max_entries_limit:
            return self._query_error(
                f"max entries limit per query exceeded, limit > max_entries_limit_per_query "
                f"({limit} > {self.max_entries_limit})"
            )
        if end <= start:
            return self._query_error("end timestamp must not be before or equal to start time")
        direction = (request.param("direction") or "backward").lower()
        if direction not in ("forward", "backward"):
            return self._query_error(f"invalid direction {direction!r}")
        categorize = "categorize-labels" in (request.header(CATEGORIZE_HEADER) or "")
        with self._store_lock:
            candidates = [e for e in self.entries if e.tenant == tenant and start <= e.ts_ns < end]
        found: list[tuple[LokiEntry, dict[str, str]]] = []
        for entry in candidates:
            if not query.selects(entry.labels):
                continue
            parsed = query.run(entry.line, entry.labels, entry.structured_metadata)
            if parsed is not None:
                found.append((entry, parsed))
        found.sort(key=lambda item: (item[0].ts_ns, item[0].seq), reverse=direction == "backward")
        found = found[:limit]
        streams: dict[str, dict[str, Any]] = {}
        for entry, parsed in found:
            if categorize:
                stream_labels = dict(entry.labels)
                extra: dict[str, Any] = {}
                if entry.structured_metadata:
                    extra["structuredMetadata"] = dict(entry.structured_metadata)
                if parsed:
                    extra["parsed"] = parsed
                value: list[Any] = [str(entry.ts_ns), entry.line]
                if extra:
                    value.append(extra)
            else:
                stream_labels = {**entry.labels, **entry.structured_metadata, **parsed}
                value = [str(entry.ts_ns), entry.line]
            key = _format(stream_labels)
            streams.setdefault(key, {"stream": stream_labels, "values": []})["values"].append(value)
        data: dict[str, Any] = {
            "resultType": "streams",
            "result": [streams[k] for k in sorted(streams)],
            "stats": {"summary": {"totalEntriesReturned": len(found)}},
        }
        if categorize:
            data["encodingFlags"] = ["categorize-labels"]
        answer = {"status": "success", "data": data}
        return Reply(200, orjson.dumps(answer), {"Content-Type": "application/json"})

    def _labels(self, tenant: str) -> Reply:
        with self._store_lock:
            names = sorted({k for e in self.entries if e.tenant == tenant for k in e.labels})
        body = orjson.dumps({"status": "success", "data": names})
        return Reply(200, body, {"Content-Type": "application/json"})

    def _label_values(self, name: str, tenant: str) -> Reply:
        with self._store_lock:
            values = sorted({e.labels[name] for e in self.entries if e.tenant == tenant and name in e.labels})
        body = orjson.dumps({"status": "success", "data": values})
        return Reply(200, body, {"Content-Type": "application/json"})
