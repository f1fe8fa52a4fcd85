"""Datadog HTTP logs intake v2: JSON arrays of log entries, gzip'd.

Session and thread IDs stay custom attributes (searchable as ``@agentuitySessionId:…``),
never tags: tags are for low-cardinality grouping. OpenTelemetry trace IDs are added as
``dd.trace_id``/``dd.span_id`` in Datadog's decimal form so logs link to APM traces.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import orjson

from agentuity_logging._delivery._protocol import (
    SPAN_ID_KEYS,
    TRACE_ID_KEYS,
    Answer,
    Outcome,
    Request,
    WireProtocol,
    _hex_id,
    check_url,
    dumps_safe,
    fit_record,
    gzip_bytes,
    header_value,
    level_name,
    parse_retry_after,
    safe_text,
    trace_context,
    validate_headers,
)
from agentuity_logging._records import LEVEL_NAMES, PlainValues, plain_event, plain_lines

__all__ = ["DATADOG_SITES", "DatadogProtocol"]

#: Sites with a logs intake at ``http-intake.logs.<site>``.
DATADOG_SITES = (
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
)
MAX_ENTRIES = 1000
MAX_PAYLOAD_BYTES = 5_000_000
MAX_ENTRY_BYTES = 1_000_000

_PATH = "/api/v2/logs"
_LOW_64_BITS = (1 << 64) - 1
_STATUS = {
    "debug": "debug",
    "info": "info",
    "warning": "warning",
    "error": "error",
    "critical": "critical",
}
_TRACE_KEYS = frozenset((*TRACE_ID_KEYS, *SPAN_ID_KEYS))
# An event holding none of these keys gets the reserved attributes spliced in after its own keys:
# the same bytes ``_entry`` would produce, without a per-entry dict.
_SPLICE_BLOCKERS = frozenset({"ddsource", "service", "hostname", "ddtags", "status", "dd", *_TRACE_KEYS})
# The same for a record inside one of our spans: its ``spanId`` is the only trace key, and the splice
# adds the ``dd.span_id`` that ``_entry`` would append after the reserved attributes.
_SPAN_SPLICE_BLOCKERS = _SPLICE_BLOCKERS - {"spanId"}
_dumps: Final = orjson.dumps
# Never cut by per-entry truncation: Datadog needs them to place and find the entry.
_PROTECTED = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "agentuitySessionId",
        "agentuityThreadId",
        "spanId",
        "traceId",
        "service",
        "hostname",
        "ddsource",
        "ddtags",
        "status",
        "dd",
    }
)


def _format_tags(tags: Mapping[str, str] | Iterable[str] | str | None) -> str | None:
    """Render tags as Datadog's ``k:v,k:v``; a comma inside a tag would silently split it."""
    if tags is None:
        return None
    if isinstance(tags, str):
        items = [t.strip() for t in tags.split(",")]
    elif isinstance(tags, Mapping):
        items = [f"{k}:{v}" for k, v in tags.items()]
    else:
        items = [str(t) for t in tags]
    for item in items:
        if "," in item:
            raise ValueError(f"Datadog tag {item!r} contains a comma; tags are 'key:value'")
    return ",".join(i for i in items if i) or None


def _error_message(body: bytes) -> str | bytes:
    """Datadog's ``{"errors": [...]}`` as one line, or the raw body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list) or not errors:
        return body
    parts = []
    for error in errors:
        if isinstance(error, dict):
            title, detail = error.get("title"), error.get("detail")
            parts.append(": ".join(str(p) for p in (title, detail) if p) or dumps_safe(error).decode())
        else:
            parts.append(str(error))
    return "; ".join(parts)


class DatadogProtocol(WireProtocol):
    """Datadog logs intake v2 (``POST /api/v2/logs``).

    Args:
        api_key: the ``DD-API-KEY``; never shown in a repr, message or error.
        site: Datadog site, one of ``DATADOG_SITES``.
        url: intake base URL overriding ``site`` (a proxy, or a test server).
        service: the ``service`` reserved attribute for records without a ``service`` field of their
            own (a record's field wins, as in the JSON line ``configure(service=...)`` writes).
        source: ``ddsource`` (selects Datadog's integration pipeline).
        hostname: ``hostname``; defaults to this machine's name.
        tags: ``ddtags`` as a mapping, a list of ``"k:v"`` or one ``"k:v,k:v"`` string.

    Raises:
        ValueError: missing key, unknown site, a bad URL or a tag containing a comma.
    """

    name = "datadog"
    max_batch_records = MAX_ENTRIES
    prepares_exact_bytes = True
    # The body adds brackets and a comma per entry to the records' own bytes.
    max_batch_bytes = MAX_PAYLOAD_BYTES - MAX_ENTRIES - 1

    def __init__(
        self,
        api_key: str,
        *,
        site: str = "datadoghq.com",
        url: str | None = None,
        service: str | None = None,
        source: str = "python",
        hostname: str | None = None,
        tags: Mapping[str, str] | Sequence[str] | str | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("Datadog needs an API key: pass api_key= (usually from DD_API_KEY)")
        if site not in DATADOG_SITES:
            raise ValueError(f"unknown Datadog site {site!r}; expected one of: {', '.join(DATADOG_SITES)}")
        base = check_url(url, "Datadog url") if url is not None else f"https://http-intake.logs.{site}"
        self.endpoint = base if base.endswith(_PATH) else base + _PATH
        self.site = site
        self.service = service
        self.source = source
        self.hostname = hostname or socket.gethostname()
        self.ddtags = _format_tags(tags)
        # Reserved attributes every entry gets from us, so a record field of that name would be lost.
        # ``service`` is not one: a record's own ``service`` wins over ``service=``.
        self._overwritten = frozenset(
            {"ddsource", "hostname", "status", *(("ddtags",) if self.ddtags else ())}
        )
        self._suffixes = self._reserved_suffixes()
        # The same suffixes by level number, for plain records (``prepare_plain``).
        self._closers = {n: self._suffixes[name] for n, name in LEVEL_NAMES.items() if name in self._suffixes}
        self._headers = validate_headers(
            {
                "DD-API-KEY": api_key.strip(),
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            }
        )

    def _secrets(self) -> Iterable[str]:
        return (self._headers["DD-API-KEY"],)

    def _reserved_suffixes(self) -> dict[str, bytes]:
        """Per level, the reserved attributes as JSON members closing an entry (``,"ddsource":…}``)."""
        suffixes = {}
        for level, status in _STATUS.items():
            reserved = self._entry({"level": level})
            del reserved["level"]
            reserved["status"] = status
            suffixes[level] = b"," + dumps_safe(reserved)[1:]
        return suffixes

    def prepare(self, event: dict[str, Any]) -> bytes:
        """One intake entry: the event plus Datadog's reserved attributes, at most 1 MB.

        The common entry (a known level, no key Datadog reserves, no trace IDs other than a span's
        ``spanId``) is the event's JSON with the reserved attributes (and ``dd.span_id``) spliced in
        before its closing brace: one encoder call and no per-entry dict. Everything else, and
        anything the encoder refuses, takes the general path.
        """
        try:
            suffix = self._suffixes[event["level"]]
            splice = _SPLICE_BLOCKERS.isdisjoint(event)
            if not splice and _SPAN_SPLICE_BLOCKERS.isdisjoint(event):
                # Inside a span: the general path would parse every trace key to find this one.
                splice = True
                span_id = _hex_id(event["spanId"], 16)
                if span_id is not None:
                    suffix = suffix[:-1] + b',"dd":{"span_id":"' + str(int(span_id, 16)).encode() + b'"}}'
            if splice:
                # No ``default``/``option``: a value or key orjson cannot take raises here, and the
                # general path renders it. Without them the call is measurably cheaper.
                data = _dumps(event)
                if len(data) + len(suffix) <= MAX_ENTRY_BYTES:
                    # A new exact-size object: orjson's own result keeps a larger buffer alive.
                    return data[:-1] + suffix
        except Exception:  # noqa: S110 - an unusual level or value: the general path handles it
            pass
        return self._prepare_general(event)

    def prepare_plain(self, items: Sequence[PlainValues]) -> list[bytes]:
        """Plain records' entries: the schema's bytes closed by the reserved attributes.

        What :meth:`prepare` splices for such a record, made in one pass over the batch; an entry
        over 1 MB is made again by :meth:`prepare`, which truncates it.
        """
        entries = plain_lines(items, self._closers)
        if max(map(len, entries), default=0) > MAX_ENTRY_BYTES:
            entries = [
                entry if len(entry) <= MAX_ENTRY_BYTES else self.prepare(plain_event(values))
                for entry, values in zip(entries, items, strict=True)
            ]
        return entries

    def _prepare_general(self, event: dict[str, Any]) -> bytes:
        try:
            entry = self._entry(event)
        except Exception:
            entry = {"message": safe_text(str(dumps_safe(event), "utf-8", "replace"))}
        return bytes(memoryview(fit_record(entry, MAX_ENTRY_BYTES, protected=_PROTECTED)))

    def _entry(self, event: Mapping[str, Any]) -> dict[str, Any]:
        entry = dict(event) if self._overwritten.isdisjoint(event) else self._renamed(event)
        entry["ddsource"] = self.source
        service = event.get("service") or self.service
        if service is not None:
            entry["service"] = service
        entry["hostname"] = self.hostname
        if self.ddtags:
            entry["ddtags"] = self.ddtags
        level = event.get("level")
        entry["status"] = _STATUS.get(level) or _STATUS.get(level_name(level), "info")  # type: ignore[arg-type]
        if _TRACE_KEYS.isdisjoint(event):
            return entry  # most records: no trace to correlate, skip parsing IDs
        trace_id, span_id, _ = trace_context(event)
        existing = entry.get("dd", {})
        if (trace_id or span_id) and isinstance(existing, Mapping):
            # Datadog correlates on the low 64 bits as an unsigned decimal, which also
            # matches OpenTelemetry's 128-bit IDs; a 128-bit decimal would never match.
            dd = dict(existing)
            if trace_id:
                dd["trace_id"] = str(int(trace_id, 16) & _LOW_64_BITS)
            if span_id:
                dd["span_id"] = str(int(span_id, 16))
            entry["dd"] = dd
        return entry

    def _renamed(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``event`` whose fields named like a reserved attribute we set get a ``_`` suffix.

        The package's clash rule (as for the schema's own keys): the record's ``status`` (a span's
        ``"ok"``) would otherwise vanish under the level. More underscores if that name is taken too.
        """
        entry: dict[str, Any] = {}
        for key, value in event.items():
            name = key
            if key in self._overwritten:
                name = key + "_"
                while name in event or name in entry:
                    name += "_"
            entry[name] = value
        return entry

    def encode(self, prepared: Sequence[bytes], *, verified: bool = False) -> Request:
        """A gzip'd JSON array of the entries (the engine keeps it within 1,000 and 5 MB)."""
        if verified:  # every entry is an object's bytes from prepare(): nothing to check
            return self._request(b"[" + b",".join(prepared) + b"]", len(prepared))
        # A damaged spool record must not turn the whole array into a 400. Checked in C over the
        # batch: our entries hold no raw newline (JSON escapes it), so when the records joined by
        # newlines have exactly one newline per boundary, each one between "}" and "{", every
        # record is an object's bytes, and the newlines can become the array's commas.
        joined = b"\n".join(prepared)
        boundaries = len(prepared) - 1
        if (
            joined[:1] == b"{"
            and joined[-1:] == b"}"
            and joined.count(b"\n") == boundaries
            and joined.count(b"}\n{") == boundaries
        ):
            body = b"[" + joined.replace(b"\n", b",") + b"]"
        else:
            entries = [
                record
                if record[:1] == b"{" and record[-1:] == b"}"
                else dumps_safe({"message": record.decode("utf-8", "replace")})
                for record in prepared
            ]
            body = b"[" + b",".join(entries) + b"]"
        return self._request(body, len(prepared))

    def _request(self, body: bytes, count: int) -> Request:
        return Request("POST", self.endpoint, dict(self._headers), gzip_bytes(body), count)

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Answer:
        """Datadog's rules: 400 drop, 401/403 stop, 413 split, 408/429/5xx retry."""
        if 200 <= status < 300:
            return Answer(Outcome.SENT)
        message = self._message(_error_message(body)) or f"HTTP {status}"
        if status in (401, 403):
            return Answer(Outcome.AUTH, message=message)
        if status == 413:
            return Answer(Outcome.SPLIT, message=message)
        if status in (408, 429) or 500 <= status < 600:
            # The intake documents no Retry-After; its rate limits say when they reset.
            delay = parse_retry_after(header_value(headers, "X-RateLimit-Reset"))
            if delay is None:
                delay = parse_retry_after(header_value(headers, "Retry-After"))
            return Answer(Outcome.RETRY, retry_after_s=delay, message=message)
        return Answer(Outcome.REFUSED, message=message)
