"""The contract between the delivery engine and each backend's wire protocol.

The engine owns threads, queues, retries and the spool; a ``WireProtocol`` only knows one
backend: how to serialize a record (``prepare``), how to build a request from a batch
(``encode``) and what an answer means (``classify``). The helpers here are shared by the
protocols: never-raising JSON rendering, per-record truncation, timestamps, Retry-After
parsing and secret redaction.
"""

from __future__ import annotations

import abc
import calendar
import datetime as _dt
import email.utils
import enum
import math
import re
import sys
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from agentuity_logging import _json
from agentuity_logging._records import PlainValues, plain_event

__all__ = [
    "GZIP_BACKEND",
    "MESSAGE_LIMIT_CHARS",
    "SPAN_ID_KEYS",
    "TRACE_ID_KEYS",
    "Answer",
    "Outcome",
    "Request",
    "WireProtocol",
    "as_text",
    "check_url",
    "decode_prepared",
    "dumps_safe",
    "event_time_ns",
    "fit_record",
    "gzip_bytes",
    "header_value",
    "level_name",
    "parse_retry_after",
    "redact_url",
    "safe_text",
    "trace_context",
    "validate_headers",
]

#: Longest backend message kept in an ``Answer`` (characters).
MESSAGE_LIMIT_CHARS = 500

_REDACTED = "[redacted]"
# Secrets shorter than this are not searched for: replacing every "a" in a message helps nobody.
_MIN_SECRET_CHARS = 4
# Authorization schemes are not secret; redacting every "Basic" in a message helps nobody.
_SCHEMES = frozenset({"basic", "bearer", "token", "apikey", "api-key"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$"
)


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request the engine will send.

    ``headers`` and ``body`` are left out of the repr: headers carry API keys.
    """

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    count: int


class Outcome(enum.Enum):
    """What the engine should do with a batch after the backend answered."""

    SENT = "sent"
    RETRY = "retry"
    SPLIT = "split"
    REFUSED = "refused"
    AUTH = "auth"


@dataclass(frozen=True, slots=True)
class Answer:
    """A backend's answer, classified.

    ``message`` is the backend's own words, trimmed and with our secrets removed;
    ``rejected`` counts records a 2xx answer still refused (OTLP partial success).
    """

    outcome: Outcome
    retry_after_s: float | None = None
    message: str | None = None
    rejected: int = 0


class WireProtocol(abc.ABC):
    """One backend's wire format: serialize records, build requests, read answers.

    Implementations are immutable after construction and safe to share between threads.
    Their ``repr`` shows the protocol name and endpoint only, never a header value.
    """

    name: str
    max_batch_records: int
    max_batch_bytes: int
    #: Records per request unless the user sets ``max_batch_records`` (``None``: the maximum).
    default_batch_records: int | None = None
    endpoint: str
    #: Whether ``prepare`` returns exact-size ``bytes`` objects. ``orjson.dumps`` results keep a
    #: 4 KiB buffer each, so the engine copies records out of them unless this says it need not.
    prepares_exact_bytes: bool = False

    @abc.abstractmethod
    def prepare(self, event: dict[str, Any]) -> bytes:
        """Serialize one event for this backend; applies per-record limits and never raises."""

    def prepare_plain(self, items: Sequence[PlainValues]) -> list[bytes]:
        """Serialize plain records (see :func:`~agentuity_logging._records.plain_event`) at once.

        The engine's batch path for the common record: a protocol overrides it to build the bytes
        ``prepare(plain_event(values))`` would give without building each event dict. It may raise
        on a record it cannot take this way; the engine then prepares the batch record by record.
        """
        prepare = self.prepare
        return [prepare(plain_event(values)) for values in items]

    @abc.abstractmethod
    def encode(self, prepared: Sequence[bytes], *, verified: bool = False) -> Request:
        """Build one request from prepared records (possibly from an earlier process's spool).

        ``verified`` says every record is what this process's :meth:`prepare` returned (the
        engine's memory store): checks for damaged or foreign records may then be skipped.
        """

    @abc.abstractmethod
    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Answer:
        """Map an HTTP answer to an ``Answer`` following the backend's documented rules."""

    def _secrets(self) -> Iterable[str]:
        """Values that must never appear in a repr, message or error (API keys, passwords)."""
        return ()

    def _message(self, body: bytes | str | None) -> str | None:
        """Render a backend message: decoded safely, secrets removed, trimmed to 500 chars."""
        if body is None:
            return None
        text = body if isinstance(body, str) else body.decode("utf-8", "replace")
        text = safe_text(text).strip()
        if not text:
            return None
        for secret in self._secrets():
            # "Bearer <token>" may come back as just the token: redact each part as well.
            for part in (secret, *secret.split()):
                if len(part) >= _MIN_SECRET_CHARS and part.lower() not in _SCHEMES:
                    text = text.replace(part, _REDACTED)
        if len(text) > MESSAGE_LIMIT_CHARS:
            text = text[: MESSAGE_LIMIT_CHARS - 1] + "…"
        return text

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} endpoint={redact_url(self.endpoint)!r}>"

    __str__ = __repr__


# --- text and JSON --------------------------------------------------------------------------


def safe_text(text: str) -> str:
    """Return ``text`` as encodable UTF-8: lone surrogates become ``\\udcxx`` escapes.

    Strings decoded with ``surrogateescape`` (file names, raw bytes) would otherwise make
    every JSON encoder raise; this matches how the record encoder renders them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def as_text(value: Any) -> str:
    """Render any value as clean text (``str``, else ``repr``); never raises."""
    if isinstance(value, str):
        return safe_text(value)
    try:
        text = _json.safe_default(value)
        return safe_text(text if isinstance(text, str) else str(text))
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def dumps_safe(obj: Any) -> bytes:
    """Serialize ``obj`` to JSON with the package's record encoder; never raises.

    Values JSON cannot hold are rendered (``str``/``repr``), never dropped: see
    ``agentuity_logging._json``.
    """
    try:
        if isinstance(obj, Mapping):
            return _json.dumps(obj)
        return orjson.dumps(_json.sanitize(obj), option=orjson.OPT_NON_STR_KEYS)
    except Exception:
        return b'{"message":"<unserializable record>"}'


def _marker(removed: int) -> str:
    return f"…[truncated {removed} bytes]"


def _shrink(record: dict[str, Any], key: str, limit: int, data: bytes) -> bytes:
    """Cut ``record[key]`` (rendered as text) until the serialized record fits ``limit``."""
    value = record[key]
    text = value if isinstance(value, str) else dumps_safe(value).decode("utf-8")
    raw = safe_text(text).encode("utf-8")
    keep = len(raw)
    # Each cut byte shrinks the JSON by at least one byte (escapes only make it more), so
    # cutting the measured excess (plus room for the marker) converges in a few rounds.
    while len(data) > limit and keep > 0:
        keep = max(0, keep - (len(data) - limit) - len(_marker(len(raw))) - 8)
        kept = raw[:keep].decode("utf-8", "ignore")
        record[key] = kept + _marker(len(raw) - len(kept.encode("utf-8")))
        data = dumps_safe(record)
    return data


def fit_record(
    record: Mapping[str, Any],
    limit: int,
    *,
    text_key: str = "message",
    protected: frozenset[str] = frozenset(),
) -> bytes:
    """Serialize ``record`` to JSON of at most ``limit`` bytes, truncating, never dropping.

    Values are cut with a ``…[truncated N bytes]`` marker (N counts the UTF-8 bytes
    removed). The message goes first when cutting it can be enough; otherwise the largest
    other values go first (a huge field should not erase a short message). ``protected``
    values (timestamps, IDs, reserved attributes) are only cut as a last resort.
    """
    data = dumps_safe(record)
    if len(data) <= limit:
        return data
    work = dict(record)
    message = work.get(text_key)
    # The vendor rule is "truncate the message": do that first whenever it is enough.
    message_first = isinstance(message, str) and len(message.encode("utf-8", "replace")) > (len(data) - limit)
    if message_first:
        data = _shrink(work, text_key, limit, data)
        if len(data) <= limit:
            return data
    others = sorted(
        (k for k in work if k != text_key and k not in protected),
        key=lambda k: len(dumps_safe(work[k])),
        reverse=True,
    )
    if not message_first and text_key in work:
        others.append(text_key)
    for key in others:
        data = _shrink(work, key, limit, data)
        if len(data) <= limit:
            return data
    # Protected values themselves are absurdly large: cut those too rather than send nothing.
    for key in sorted(work, key=lambda k: len(dumps_safe(work[k])), reverse=True):
        data = _shrink(work, key, limit, data)
        if len(data) <= limit:
            break
    return data


# --- time -----------------------------------------------------------------------------------


def _numeric_time_ns(value: float) -> int:
    """Epoch number in s, ms, µs or ns (guessed from magnitude) to nanoseconds."""
    magnitude = abs(value)
    scale = (
        1
        if magnitude >= 1e17
        else 1_000
        if magnitude >= 1e14
        else 1_000_000
        if magnitude >= 1e11
        else 1_000_000_000
    )
    # Integers stay exact; floats are rounded once at the end.
    return value * scale if isinstance(value, int) else round(value * scale)


# (RFC 3339 text up to the second, its epoch in ns); replaced whole, so threads never see a
# half-updated pair.
_last_second: tuple[str, int] = ("", 0)


def _remember_second(prefix: str, epoch_ns: int) -> None:
    global _last_second
    _last_second = (prefix, epoch_ns)


def event_time_ns(value: Any, default_ns: int | None = None) -> int:
    """Nanoseconds since the epoch of an event timestamp (RFC 3339 string or epoch number).

    Anything unreadable yields ``default_ns`` (the current time if not given): a record
    with a bad timestamp is still delivered, stamped when it was prepared.
    """
    if isinstance(value, str):
        # Fast path for our own format ("2026-11-25T10:44:59.123456Z"): consecutive records
        # share the second, so the calendar arithmetic is cached for the last one seen.
        if len(value) == 27 and value[26] == "Z" and value[19] == ".":
            prefix, fraction = value[:19], value[20:26]
            cached = _last_second
            if cached[0] == prefix and fraction.isdigit():
                return cached[1] + int(fraction) * 1000
        match = _RFC3339.match(value.strip())
        if match:
            year, month, day, hour, minute, second, frac, zulu, sign, off_h, off_m = match.groups()
            try:
                moment = _dt.datetime(  # naive on purpose: only validates the fields
                    int(year), int(month), int(day), int(hour), int(minute), int(second)
                )
            except ValueError:
                moment = None
            if moment is not None:
                seconds = calendar.timegm(moment.timetuple())
                if sign and not zulu:
                    offset = int(off_h) * 3600 + int(off_m) * 60
                    seconds -= offset if sign == "+" else -offset
                nanos = int((frac or "0")[:9].ljust(9, "0"))
                if zulu and len(value) == 27:
                    _remember_second(value[:19], seconds * 1_000_000_000)
                return seconds * 1_000_000_000 + nanos
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return _numeric_time_ns(value)
        except (OverflowError, ValueError):
            pass
    return time.time_ns() if default_ns is None else default_ns


# --- HTTP helpers ---------------------------------------------------------------------------


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts and httpx.Headers alike."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    Returns ``None`` when absent or unreadable; a date in the past yields ``0.0``.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    now = time.time() if now_s is None else now_s
    return max(0.0, moment.timestamp() - now)


def _gzip_with_zlib(data: bytes) -> bytes:
    if sys.version_info >= (3, 11):
        return zlib.compress(data, 1, 31)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def _fastest_gzip() -> tuple[Callable[[bytes], bytes], str]:
    """ISA-L's gzip when python-isal is installed (the ``isal`` extra), else zlib's."""
    try:
        from isal import isal_zlib
    except ImportError:
        return _gzip_with_zlib, "zlib"
    compress = isal_zlib.compress

    def gzip_with_isal(data: bytes) -> bytes:
        return compress(data, 1, 31)

    return gzip_with_isal, "isal"


_gzip, GZIP_BACKEND = _fastest_gzip()


def gzip_bytes(data: bytes) -> bytes:
    """Gzip ``data`` at level 1: cheap on the worker thread, still shrinks JSON 5-10x.

    With python-isal installed, ISA-L's deflate does it: on a batch of 1,000 records it took ~50 µs
    against zlib's ~360-560 µs here, for a body as small (see ``docs/performance.md``). The output
    is ordinary gzip either way. One call per body: each call releases the GIL, and while the
    application's thread is busy logging, taking the GIL back costs the worker up to a switch
    interval (5 ms by default), so every release saved speeds delivery in a burst.
    """
    return _gzip(data)


def validate_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """Copy user headers, refusing names or values HTTP cannot carry.

    Errors name the header, never its value (values are usually credentials).
    """
    result: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ValueError(f"invalid HTTP header name {name!r}")
        if not isinstance(value, str) or "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"invalid value for HTTP header {name!r}: must be one line of text")
        result[name] = value
    return result


def redact_url(url: str) -> str:
    """``url`` without userinfo or query string, both of which may hold credentials."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_url(url: str, what: str) -> str:
    """Validate an http(s) URL given by the user and strip trailing slashes."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"{what} must be an http:// or https:// URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} must be an http:// or https:// URL, got {redact_url(url)!r}")
    return url.rstrip("/")


def decode_prepared(record: bytes) -> Any:
    """Parse one prepared record, or ``None`` if it is not valid JSON (a damaged spool)."""
    try:
        return orjson.loads(record)
    except orjson.JSONDecodeError:
        return None


_HEX = re.compile(r"^[0-9a-fA-F]+$")


def _hex_id(value: Any, length: int) -> str | None:
    if isinstance(value, str) and len(value) == length and _HEX.match(value):
        lowered = value.lower()
        return None if lowered.strip("0") == "" else lowered
    return None


#: Event keys that may carry an OpenTelemetry trace ID (32 hex), in order of preference.
TRACE_ID_KEYS = ("trace_id", "traceId")
#: Event keys that may carry an OpenTelemetry span ID (16 hex), in order of preference.
SPAN_ID_KEYS = ("span_id", "otelSpanId", "spanId")


def trace_context(event: Mapping[str, Any]) -> tuple[str | None, str | None, frozenset[str]]:
    """The event's OpenTelemetry trace and span IDs (lowercase hex) and the keys they came from.

    Only well-formed, non-zero IDs count: a ``spanId`` that is not 16 hex characters is an
    application span name, not an OTel ID, and stays an ordinary attribute.
    """
    trace_id = span_id = None
    used: set[str] = set()
    for key in TRACE_ID_KEYS:
        trace_id = _hex_id(event.get(key), 32)
        if trace_id:
            used.add(key)
            break
    for key in SPAN_ID_KEYS:
        span_id = _hex_id(event.get(key), 16)
        if span_id:
            used.add(key)
            break
    return trace_id, span_id, frozenset(used)


def level_name(value: Any) -> str:
    """Normalize an event's level to lowercase text (``warn`` → ``warning``)."""
    text = value.lower() if isinstance(value, str) else "info"
    return {"warn": "warning", "fatal": "critical", "err": "error"}.get(text, text)
