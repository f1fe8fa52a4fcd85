"""Grafana Loki push API: protobuf + snappy (default) or gzip'd JSON.

Labels stay few and bounded (service, env, level and static user labels): every distinct
label set is a stream with its own index entries, so a per-session label would create a
stream per conversation. Session, thread and span IDs go into structured metadata instead,
and stay in the JSON line, so both ``| agentuitySessionId="…"`` and ``| json`` find them.
"""

from __future__ import annotations

import base64
import itertools
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

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
from agentuity_logging._records import (
    DIGITS3_BYTES,
    LAST_US,
    LEVEL_NAMES,
    PlainValues,
    cached_second,
    plain_event,
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
_METADATA_KEY_SET = frozenset(_METADATA_KEYS)
# Keys that send a record past the fast path of ``prepare`` (they shape labels or metadata).
_PLAIN_BLOCKERS = frozenset({"service", "env", *_METADATA_KEYS})
# The same for a record in a session: its IDs are metadata the fast path writes itself; the other
# trace keys (rare: a caller's own fields) still go the slower way.
_SESSION_BLOCKERS = _PLAIN_BLOCKERS - {"agentuitySessionId", "agentuityThreadId", "spanId"}
_SID, _TID, _SPAN = "agentuitySessionId", "agentuityThreadId", "spanId"
_SECONDS_CACHE_LIMIT = 64
# Label sets remembered as their JSON (service, env, level -> bytes); bounded, as values come from records.
_LABELS_CACHE_LIMIT = 1024
# Timestamps of 19 digits (2001-09-09 to 2286) sort as text: the key of a prepared value is its
# ``["<ts>"`` prefix's digits. Any other timestamp is prepared in the general format.
_MIN_TS19 = 10**18
_MAX_TS19 = 10**19
_TS_DIGITS = operator.itemgetter(slice(2, 21))
_dumps = orjson.dumps
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
_LAST = operator.itemgetter(2)
_LAST_BYTE = operator.itemgetter(-1)


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


#: The in-line IDs, the line's end (and metadata) and the IDs' length in the line, for no session.
_NO_IDS: Final = (b"", b'}"]', 0)


def _escaped(fragment: bytes) -> bytes:
    """``fragment`` (JSON text, no raw control characters) as the inside of a JSON string."""
    return _dumps(fragment.decode())[1:-1]


class LokiProtocol(WireProtocol):
    """Loki push API (``POST /loki/api/v1/push``).

    A prepared record is ``<stream labels JSON>\\n<JSON push value>``: the labels (keys sorted) are
    the stream's key as is, and the value (``["<ns>", "<line>", {metadata}]``) goes into the JSON
    body unchanged, so a JSON push is built by grouping and joining bytes, never by parsing them.
    Records in the earlier ``[ns, labels, line, metadata]`` format (a spool written by an older
    version, or a timestamp outside 19 digits) take the general path, which decodes every record.

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
    # Measured (bench_shipping.py, ten alternating paired rounds): 2,000-record pushes delivered
    # 0.77 of the plain call rate against 0.67 for 5,000 (likely: less left for a burst's tail).
    default_batch_records = 2000
    prepares_exact_bytes = True
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
        # (service, env, level) of a record -> its stream labels as sorted JSON and a newline.
        self._label_json: dict[tuple[Any, Any, Any], bytes] = {}
        # Standard level -> labels JSON and newline, for records carrying no service or env.
        self._level_labels = {
            level: _dumps(self._stream_labels({"level": level}), option=orjson.OPT_SORT_KEYS) + b"\n"
            for level in ("debug", "info", "warning", "error", "critical")
        }
        # The same by level number, for plain records (``prepare_plain``).
        self._levelno_labels = {
            n: self._level_labels[name] for n, name in LEVEL_NAMES.items() if name in self._level_labels
        }
        # "2026-11-25T10:44:59." -> "1795603499": the seconds of recent timestamps.
        self._seconds: dict[str, str] = {}

    def _secrets(self) -> Iterable[str]:
        return self._secret_values

    def prepare(self, event: dict[str, Any]) -> bytes:
        """``<labels JSON>\\n["<ns>","<line>",{metadata}]``; the line is at most 256 KB.

        The common record (a standard level, our own timestamp format, no ``service`` or ``env``,
        and either no IDs or the session's text IDs) is one encoder call for the line and one for
        the value, its labels and the nanoseconds of its second looked up: the nanoseconds are the
        second's digits followed by the timestamp's six fraction digits and ``000``. A session
        record's metadata is a literal dict of its IDs, in ``_METADATA_KEYS`` order, exactly what
        ``_prepare_any`` builds for it.
        """
        try:
            plain = _PLAIN_BLOCKERS.isdisjoint(event)
            if plain or _SESSION_BLOCKERS.isdisjoint(event):
                labels = self._level_labels.get(event["level"])
                stamp = event["timestamp"]
                if labels is not None and type(stamp) is str and len(stamp) == 27 and stamp[26] == "Z":
                    seconds = self._seconds.get(stamp[:20])
                    fraction = stamp[20:26]
                    if seconds is not None and fraction.isdigit() and fraction.isascii():
                        # No ``default``/``option``: what orjson refuses takes the slower paths.
                        line = _dumps(event)
                        if len(line) <= MAX_LINE_BYTES:
                            ns = seconds + fraction + "000"
                            if plain:
                                return labels + _dumps((ns, line.decode()))
                            # Text IDs within the metadata cap (their total bounds each one) are
                            # kept as they are: orjson has just encoded them, so they are valid
                            # UTF-8 and ``_metadata_value`` would return them unchanged.
                            sid, tid, span = event.get(_SID), event.get(_TID), event.get(_SPAN)
                            if type(sid) is str and type(tid) is str:
                                if span is None:
                                    if len(sid) + len(tid) <= MAX_METADATA_VALUE_CHARS:
                                        return labels + _dumps((ns, line.decode(), {_SID: sid, _TID: tid}))
                                elif (
                                    type(span) is str
                                    and len(sid) + len(tid) + len(span) <= MAX_METADATA_VALUE_CHARS
                                ):
                                    metadata = {_SID: sid, _TID: tid, _SPAN: span}
                                    return labels + _dumps((ns, line.decode(), metadata))
        except Exception:  # noqa: S110 - an unusual value: the slower paths render it
            pass
        return self._prepare_any(event)

    def prepare_plain(self, items: Sequence[PlainValues]) -> list[bytes]:
        """Plain records, as :meth:`prepare`'s fast path writes them, in one pass over the batch.

        Each push value is joined from pieces: the nanoseconds (the cached second's digits, the
        record's six fraction digits, ``000``) and the line already escaped as a JSON string, whose
        constant runs (the timestamp's second, level and logger, the IDs) are escaped once per batch
        and whose message is encoded twice (into the line, then into the string). A record this
        cannot take as is (a second not cached yet, a line over the limit, long IDs) goes through
        :meth:`prepare`, which also caches its second. Byte for byte :meth:`prepare`'s output (tests).
        """
        labels_of, seconds_of, dumps, join, digits = (
            self._levelno_labels,
            self._seconds,
            _dumps,
            b"".join,
            DIGITS3_BYTES,
        )
        middles: dict[tuple[int, str], tuple[bytes, bytes, int]] = {}
        sessions: dict[tuple[str, str], tuple[bytes, bytes, int] | None] = {}
        out: list[bytes] = []
        append = out.append
        start, prefix, seconds, head = -2.0, "", b"", b""  # the first record moves to its second
        last_name: object = None
        last_level = -1
        labels = middle = b""
        fixed = 0
        for values in items:
            created, levelno, name, message, sid, tid = values
            frac = created - start
            if 0.0 <= frac < LAST_US:
                us = int(frac * 1_000_000)
            else:
                start, prefix, us = cached_second(created)
                known = seconds_of.get(prefix)
                seconds = b'["' + known.encode() if known is not None else b""
                head = b'","{\\"timestamp\\":\\"' + prefix.encode()
                last_name = None  # ``labels`` below ends with this second's digits: rebuild it
            if name is not last_name or levelno != last_level:
                found = labels_of.get(levelno)
                if not seconds or found is None or type(name) is not str:
                    last_name = None
                    append(self.prepare(plain_event(values)))
                    if not seconds and prefix in seconds_of:  # prepare() cached this second
                        seconds = b'["' + seconds_of[prefix].encode()
                    continue
                cached = middles.get((levelno, name))
                if cached is None:
                    plain = b'Z","level":"%s","logger":%s,"message":' % (
                        LEVEL_NAMES[levelno].encode(),
                        dumps(name),
                    )
                    cached = middles[(levelno, name)] = (found, _escaped(plain), 34 + 6 + len(plain) + 1)
                labels, middle, fixed = found + seconds, cached[1], cached[2]
                last_name, last_level = name, levelno
            if sid is None:
                ids = _NO_IDS
            else:
                found_ids = sessions.get((sid, tid))  # type: ignore[arg-type]
                if found_ids is None:
                    if (sid, tid) in sessions or len(sid) + len(tid) > MAX_METADATA_VALUE_CHARS:  # type: ignore[arg-type]
                        sessions[(sid, tid)] = None  # type: ignore[index]
                        append(self.prepare(plain_event(values)))
                        continue
                    in_line = b',"agentuitySessionId":%s,"agentuityThreadId":%s' % (dumps(sid), dumps(tid))
                    metadata = b'}",' + dumps({_SID: sid, _TID: tid}) + b"]"
                    found_ids = sessions[(sid, tid)] = (_escaped(in_line), metadata, len(in_line))  # type: ignore[index]
                ids = found_ids
            encoded = dumps(message)
            if fixed + len(encoded) + ids[2] > MAX_LINE_BYTES:
                append(self.prepare(plain_event(values)))
                continue
            high, low = digits[us // 1000], digits[us % 1000]
            escaped = dumps(encoded.decode())[1:-1]  # _escaped(), inline: a call per record costs ~70 ns
            append(join((labels, high, low, b"000", head, high, low, middle, escaped, ids[0], ids[1])))
        return out

    def _prepare_any(self, event: dict[str, Any]) -> bytes:
        """The same format for any labels and metadata; other records go to the general path."""
        now = time.time_ns()
        try:
            key = (event.get("service"), event.get("env"), event.get("level"))
            labels = self._label_json.get(key)
            if labels is None:
                labels = _dumps(self._stream_labels(event), option=orjson.OPT_SORT_KEYS) + b"\n"
                if len(self._label_json) < _LABELS_CACHE_LIMIT:
                    self._label_json[key] = labels
            stamp = event.get("timestamp")
            ts = event_time_ns(stamp, now)
            line = _dumps(event)
            if _MIN_TS19 <= ts < _MAX_TS19 and len(line) <= MAX_LINE_BYTES:
                if type(stamp) is str and len(stamp) == 27 and stamp[19] == "." and stamp[26] == "Z":
                    self._remember_second(stamp[:20], ts)
                if _METADATA_KEY_SET.isdisjoint(event):
                    return labels + _dumps((str(ts), line.decode()))
                metadata = {k: _metadata_value(event[k]) for k in _METADATA_KEYS if event.get(k) is not None}
                return labels + _dumps((str(ts), line.decode(), metadata))
        except Exception:  # noqa: S110 - an unusual value: the general path renders it
            pass
        return self._prepare_general(event, now)

    def _remember_second(self, prefix: str, ts: int) -> None:
        """Cache the seconds' digits of ``prefix`` (``2026-11-25T10:44:59.``); a few seconds only."""
        if prefix in self._seconds:
            return
        if len(self._seconds) >= _SECONDS_CACHE_LIMIT:
            self._seconds.clear()
        self._seconds[prefix] = str(ts // _NS)

    def _prepare_general(self, event: dict[str, Any], now: int) -> bytes:
        """The ``[ns, labels, line, metadata]`` format: any event, any timestamp, never raises."""
        try:
            ts = event_time_ns(event.get("timestamp"), now)
            labels = self._stream_labels(event)
            metadata = {k: _metadata_value(event[k]) for k in _METADATA_KEYS if event.get(k) is not None}
        except Exception:
            ts, labels, metadata = now, {**self.labels, "level": "unknown"}, {}
        line = fit_record(event, MAX_LINE_BYTES, protected=_LINE_PROTECTED).decode("utf-8")
        return bytes(memoryview(orjson.dumps([str(ts), labels, line, metadata])))

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
        if record[:1] == b"{":
            labels_json, _, value_json = record.partition(b"\n")
            labels, value = decode_prepared(labels_json), decode_prepared(value_json)
            if isinstance(value, list) and 2 <= len(value) <= 3:
                item = [value[0], labels, value[1], value[2] if len(value) == 3 else {}]
            else:
                item = None
        else:
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

    def encode(self, prepared: Sequence[bytes], *, verified: bool = False) -> Request:
        """One push request: protobuf ``PushRequest`` + snappy block, or gzip'd JSON."""
        if self.encoding == "json":
            body = self._json_body(prepared, verified=verified)
            if body is None:
                streams = self._streams(prepared)
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
                field_bytes(1, _stream_message(labels, entries))
                for labels, entries in self._streams(prepared).items()
            )
        return Request("POST", self.endpoint, dict(self._headers), self._compress(body), len(prepared))

    @staticmethod
    def _json_body(prepared: Sequence[bytes], *, verified: bool = False) -> bytes | None:
        """The JSON push body joined from prepared records, or ``None`` if one needs decoding.

        Batch-level C calls only: split each record at its newline, check the shape of all values
        at once (each ``[…]``, no stray newline), group by the labels' bytes with a
        stable sort (logging order kept within a stream) and sort each stream by its timestamp
        digits (stable too: equal timestamps keep their order). ``verified`` records are
        prepare()'s own, so their shape is not checked.
        """
        split = list(map(bytes.partition, prepared, itertools.repeat(b"\n")))
        labels = list(map(_FIRST, split))
        values = list(map(_LAST, split))
        if not verified:
            try:
                # Single-byte counts run at memchr speed; a multi-byte pattern would scan slower.
                shaped = (
                    bytes(map(_FIRST, values)).count(b"[") == len(values)
                    and bytes(map(_LAST_BYTE, values)).count(b"]") == len(values)
                    and b"\n".join(values).count(b"\n") == len(values) - 1
                )
            except IndexError:  # an empty value: a damaged record
                return None
            if not shaped:
                return None
        if labels.count(labels[0]) == len(labels):  # one stream: the usual batch
            groups: Iterable[tuple[bytes, list[bytes]]] = ((labels[0], values),)
        else:
            pairs = sorted(zip(labels, values, strict=True), key=_FIRST)
            groups = ((key, list(map(_SECOND, group))) for key, group in itertools.groupby(pairs, _FIRST))
        streams = []
        for key, entries in groups:
            if not (key[:1] == b"{" and key[-1:] == b"}" and isinstance(decode_prepared(key), dict)):
                return None
            entries.sort(key=_TS_DIGITS)
            streams.append(b'{"stream":' + key + b',"values":[' + b",".join(entries) + b"]}")
        return b'{"streams":[' + b",".join(streams) + b"]}"

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
