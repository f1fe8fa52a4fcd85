"""A fake Datadog: the logs intake v2 and the logs search API, on one loopback port.

Intake (``POST /api/v2/logs``) checks what Datadog checks: the ``DD-API-KEY`` (401 missing,
403 wrong), ``Content-Type: application/json``, gzip/deflate bodies, at most 1,000 entries
and 5 MB uncompressed (413), entries over 1 MB accepted and truncated, and answers ``202 {}``.
Entries outside the accepted time window (18 h in the past, 2 h in the future) are accepted
but never indexed, as on Datadog.

Search (``POST /api/v2/logs/events/search``) needs both keys and serves what was indexed,
with the ``@attr:value``/``service:x`` query subset, ``from``/``to``, ``page.limit`` ≤ 1000
and cursor paging, in Datadog's answer shape (custom attributes under
``attributes.attributes``).
"""

from __future__ import annotations

import base64
import datetime as dt
import http
import itertools
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from tests.fakes._server import FakeServer, ReceivedRequest, Reply, decompress

__all__ = ["DatadogLog", "FakeDatadog", "QueryError", "parse_query"]

INTAKE_PATH = "/api/v2/logs"
SEARCH_PATH = "/api/v2/logs/events/search"
MAX_ENTRIES = 1000
MAX_PAYLOAD_BYTES = 5_000_000
MAX_ENTRY_BYTES = 1_000_000
MAX_PAGE_LIMIT = 1000
PAST_WINDOW_S = 18 * 3600
FUTURE_WINDOW_S = 2 * 3600

# Datadog's default remappers: the first attribute present wins.
_TIMESTAMP_KEYS = (
    "@timestamp",
    "timestamp",
    "_timestamp",
    "Timestamp",
    "eventTime",
    "date",
    "published_date",
)
_STATUS_KEYS = ("status", "severity", "level")
_HOST_KEYS = ("hostname", "host", "syslog.hostname")
_MESSAGE_KEYS = ("message", "msg", "log")
_RESERVED = frozenset({"service", "ddsource", "ddtags"})


@dataclass
class DatadogLog:
    """One indexed log, as the search API serves it."""

    id: str
    timestamp_ms: int
    status: str
    service: str | None
    host: str | None
    message: str
    source: str | None
    tags: list[str]
    attributes: dict[str, Any]  # custom attributes (the event's own fields)
    entry: dict[str, Any]  # the entry as received (after truncation)
    truncated: bool = False
    seq: int = 0

    def as_search_item(self) -> dict[str, Any]:
        """Datadog's ``data[]`` item for this log."""
        stamp = dt.datetime.fromtimestamp(self.timestamp_ms / 1000, tz=dt.timezone.utc)
        return {
            "id": self.id,
            "type": "log",
            "attributes": {
                "timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
                "status": self.status,
                "service": self.service,
                "host": self.host,
                "message": self.message,
                "tags": list(self.tags),
                "attributes": self.attributes,
            },
        }


def _status(value: Any) -> str:
    """Datadog's status remapper: by prefix, unknown → info."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")[value]
    text = str(value).strip().lower() if value is not None else ""
    for prefix, status in (
        ("emerg", "emergency"),
        ("f", "emergency"),
        ("a", "alert"),
        ("c", "critical"),
        ("e", "error"),
        ("w", "warning"),
        ("n", "notice"),
        ("i", "info"),
        ("d", "debug"),
        ("trace", "debug"),
        ("verbose", "debug"),
        ("o", "ok"),
        ("s", "ok"),
    ):
        if text.startswith(prefix):
            return status
    return "info"


def _timestamp_ms(value: Any) -> int | None:
    """ISO 8601 or epoch milliseconds to epoch ms, ``None`` when unreadable."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp() * 1000)


def _date_math(value: Any, now_ms: int) -> int:
    """Search ``from``/``to``: ``now``, ``now-15m``, ISO 8601 or epoch ms; raises ValueError."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(f"invalid date {value!r}")
    match = re.fullmatch(r"now(?:([+-])(\d+)([smhdw]))?", value.strip())
    if match:
        if not match.group(1):
            return now_ms
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(3)]
        delta = int(match.group(2)) * unit * 1000
        return now_ms + delta if match.group(1) == "+" else now_ms - delta
    parsed = _timestamp_ms(value)
    if parsed is None:
        raise ValueError(f"invalid date {value!r}")
    return parsed


# --- the query subset ----------------------------------------------------------------------


class QueryError(ValueError):
    """The search query uses syntax the fake does not support, or is malformed."""


Matcher = Callable[[DatadogLog], bool]


def _tokens(query: str) -> list[list[tuple[str, bool]]]:
    """Split on spaces outside quotes; each char carries whether it is literal (quoted/escaped)."""
    tokens: list[list[tuple[str, bool]]] = []
    current: list[tuple[str, bool]] = []
    quoted = False
    chars = iter(query)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise QueryError("dangling backslash")
            current.append((escaped, True))
        elif char == '"':
            quoted = not quoted
        elif quoted:
            current.append((char, True))
        elif char.isspace():
            if current:
                tokens.append(current)
                current = []
        elif char in "()":
            raise QueryError("the fake search does not support parentheses")
        else:
            current.append((char, False))
    if quoted:
        raise QueryError("unterminated quote")
    if current:
        tokens.append(current)
    return tokens


def _pattern(chars: list[tuple[str, bool]]) -> re.Pattern[str]:
    parts = []
    for char, literal in chars:
        if not literal and char == "*":
            parts.append(".*")
        elif not literal and char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [v for item in value for v in _values(item)]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return []
    return [orjson.dumps(value).decode()]


def _attribute(attributes: dict[str, Any], path: str) -> Any:
    """``@a.b.c``: a flat key ``a.b.c`` or the nested path."""
    if path in attributes:
        return attributes[path]
    node: Any = attributes
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _term(chars: list[tuple[str, bool]]) -> Matcher:
    colon = next((i for i, (c, lit) in enumerate(chars) if c == ":" and not lit), None)
    if colon is None:
        if [c for c, _ in chars] == ["*"]:
            return lambda log: True
        text = _pattern(chars)
        words = re.compile(text.pattern, re.IGNORECASE | re.DOTALL)
        return lambda log: words.search(log.message) is not None
    key = "".join(c for c, _ in chars[:colon])
    pattern = _pattern(chars[colon + 1 :])
    if not key:
        raise QueryError("empty attribute name")

    def matches(values: list[str]) -> bool:
        return any(pattern.fullmatch(v) for v in values)

    if key.startswith("@"):
        path = key[1:]
        return lambda log: matches(_values(_attribute(log.attributes, path)))
    if key in ("service", "status", "host", "source"):
        return lambda log: matches(_values(getattr(log, key)))
    prefix = key + ":"
    return lambda log: matches([t[len(prefix) :] for t in log.tags if t.startswith(prefix)])


def _negated(matcher: Matcher) -> Matcher:
    return lambda log: not matcher(log)


def parse_query(query: str) -> Matcher:
    """Compile the supported subset: terms ANDed (``AND`` optional), ``-``/``NOT`` negation,
    ``@attr:value``, ``service:``/``status:``/``host:``/``source:``, ``tag:value``, free text
    (case-insensitive, message), ``*`` and ``?`` wildcards, quoted values.
    """
    matchers: list[Matcher] = []
    negate_next = False
    for chars in _tokens(query):
        word = "".join(c for c, _ in chars)
        if word == "AND" and not any(lit for _, lit in chars):
            continue
        if word == "OR":
            raise QueryError("the fake search does not support OR")
        if word == "NOT":
            negate_next = True
            continue
        negate = negate_next
        negate_next = False
        if chars[0] == ("-", False) and len(chars) > 1:
            negate = True
            chars = chars[1:]
        matcher = _term(chars)
        matchers.append(_negated(matcher) if negate else matcher)
    return lambda log: all(m(log) for m in matchers)


class FakeDatadog(FakeServer):
    """Fake Datadog intake + logs search. Point ``DatadogProtocol(url=fake.url)`` at it."""

    name: ClassVar[str] = "datadog"
    fault_paths: ClassVar[frozenset[str] | None] = frozenset({INTAKE_PATH})
    # Datadog documents no Retry-After; its rate limits say when the period resets.
    rate_limit_header: ClassVar[str] = "X-RateLimit-Reset"

    def __init__(
        self,
        *,
        api_key: str = "fake-dd-api-key-0123456789",
        application_key: str = "fake-dd-app-key-0123456789",
        enforce_time_window: bool = True,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.application_key = application_key
        self.enforce_time_window = enforce_time_window
        self.logs: list[DatadogLog] = []
        self.payloads: list[list[dict[str, Any]]] = []
        self.discarded: list[dict[str, Any]] = []
        self._store_lock = threading.Lock()
        self._seq = itertools.count()

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every accepted entry, in arrival order (including ones outside the time window)."""
        with self._store_lock:
            return [entry for payload in self.payloads for entry in payload]

    def error_reply(self, request: ReceivedRequest, status: int, message: str) -> Reply:
        """Datadog's error shape: ``{"errors": [{"status", "title", "detail"}]}``."""
        try:
            title = http.HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        body = {"errors": [{"status": str(status), "title": title, "detail": message}]}
        return Reply(status, orjson.dumps(body), {"Content-Type": "application/json"})

    def handle(self, request: ReceivedRequest) -> Reply:
        """Route to the intake or the search API."""
        if request.path == INTAKE_PATH:
            if request.method != "POST":
                return self.error_reply(request, 405, "method not allowed")
            return self._intake(request)
        if request.path == SEARCH_PATH:
            if request.method != "POST":
                return self.error_reply(request, 405, "method not allowed")
            return self._search(request)
        return self.error_reply(request, 404, "not found")

    # --- intake -------------------------------------------------------------------------

    def _intake(self, request: ReceivedRequest) -> Reply:
        key = request.header("dd-api-key") or request.param("dd-api-key")
        if not key:
            return self.error_reply(request, 401, "API key is missing")
        if key != self.api_key:
            return self.error_reply(request, 403, "Invalid API key")
        if request.media_type != "application/json":
            return self.error_reply(request, 415, f"unsupported content type {request.media_type!r}")
        try:
            body = decompress(request.raw_body, request.header("content-encoding"))
        except ValueError as exc:
            return self.error_reply(request, 400, str(exc))
        if len(body) > MAX_PAYLOAD_BYTES:
            return self.error_reply(request, 413, "payload too large: 5MB uncompressed maximum")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self.error_reply(request, 400, f"invalid JSON: {exc}")
        entries = [data] if isinstance(data, dict) else data
        if not isinstance(entries, list):
            return self.error_reply(request, 400, "payload must be an object or an array")
        if len(entries) > MAX_ENTRIES:
            return self.error_reply(request, 413, f"too many entries: {len(entries)} > 1000")
        if not all(isinstance(e, dict) for e in entries):
            return self.error_reply(request, 400, "each log entry must be a JSON object")
        accepted = [self._truncate(e) for e in entries]
        now_ms = int(time.time() * 1000)
        with self._store_lock:
            self.payloads.append([e for e, _ in accepted])
            for entry, truncated in accepted:
                log = self._index(entry, truncated, now_ms)
                if log is None:
                    self.discarded.append(entry)
                else:
                    self.logs.append(log)
        return Reply(202, b"{}", {"Content-Type": "application/json"})

    @staticmethod
    def _truncate(entry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Datadog accepts logs over 1 MB and truncates them; the fake cuts the message."""
        size = len(orjson.dumps(entry))
        if size <= MAX_ENTRY_BYTES:
            return entry, False
        message = str(entry.get("message", "")).encode()
        keep = max(0, len(message) - (size - MAX_ENTRY_BYTES) - 64)
        cut = dict(entry)
        cut["message"] = message[:keep].decode("utf-8", "ignore") + "...TRUNCATED..."
        return cut, True

    def _index(self, entry: dict[str, Any], truncated: bool, now_ms: int) -> DatadogLog | None:
        stamp_key = next((k for k in _TIMESTAMP_KEYS if k in entry), None)
        stamp = _timestamp_ms(entry[stamp_key]) if stamp_key else None
        if stamp is None:
            stamp = now_ms
        if self.enforce_time_window and not (
            now_ms - PAST_WINDOW_S * 1000 <= stamp <= now_ms + FUTURE_WINDOW_S * 1000
        ):
            return None
        status_key = next((k for k in _STATUS_KEYS if k in entry), None)
        host_key = next((k for k in _HOST_KEYS if k in entry), None)
        message_key = next((k for k in _MESSAGE_KEYS if k in entry), None)
        source = entry.get("ddsource")
        tags = [t.strip() for t in str(entry.get("ddtags") or "").split(",") if t.strip()]
        if source:
            tags.append(f"source:{source}")
        used = {stamp_key, status_key, host_key, message_key, *_RESERVED}
        service = entry.get("service")
        return DatadogLog(
            id=base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
            timestamp_ms=stamp,
            status=_status(entry[status_key]) if status_key else "info",
            service=str(service) if service is not None else None,
            host=str(entry[host_key]) if host_key else None,
            message=str(entry[message_key]) if message_key else "",
            source=str(source) if source else None,
            tags=tags,
            attributes={k: v for k, v in entry.items() if k not in used},
            entry=entry,
            truncated=truncated,
            seq=next(self._seq),
        )

    # --- search -------------------------------------------------------------------------

    def _search_error(self, status: int, message: str) -> Reply:
        """The API's error shape: ``{"errors": ["…"]}``."""
        return Reply(status, orjson.dumps({"errors": [message]}), {"Content-Type": "application/json"})

    def _search(self, request: ReceivedRequest) -> Reply:
        if request.header("dd-api-key") != self.api_key or (
            request.header("dd-application-key") != self.application_key
        ):
            return self._search_error(403, "Forbidden")
        try:
            body = orjson.loads(request.raw_body) if request.raw_body.strip() else {}
        except orjson.JSONDecodeError as exc:
            return self._search_error(400, f"invalid JSON: {exc}")
        if not isinstance(body, dict):
            return self._search_error(400, "body must be an object")
        flt = body.get("filter") or {}
        page = body.get("page") or {}
        sort = body.get("sort", "timestamp")
        limit = page.get("limit", 10)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_LIMIT:
            return self._search_error(400, f"page[limit] must be between 1 and {MAX_PAGE_LIMIT}")
        if sort not in ("timestamp", "-timestamp"):
            return self._search_error(400, f"invalid sort {sort!r}")
        now_ms = int(time.time() * 1000)
        try:
            start = _date_math(flt.get("from", "now-15m"), now_ms)
            end = _date_math(flt.get("to", "now"), now_ms)
            matcher = parse_query(str(flt.get("query") or "*"))
            offset = self._cursor_offset(page.get("cursor"))
        except ValueError as exc:
            return self._search_error(400, str(exc))
        with self._store_lock:
            found = [log for log in self.logs if start <= log.timestamp_ms <= end and matcher(log)]
        found.sort(key=lambda log: (log.timestamp_ms, log.seq), reverse=sort == "-timestamp")
        items = found[offset : offset + limit]
        meta: dict[str, Any] = {
            "elapsed": 1,
            "request_id": uuid.uuid4().hex,
            "status": "done",
        }
        answer: dict[str, Any] = {"data": [log.as_search_item() for log in items], "meta": meta}
        if offset + limit < len(found):
            after = base64.urlsafe_b64encode(orjson.dumps({"offset": offset + limit})).decode()
            meta["page"] = {"after": after}
            answer["links"] = {"next": f"{self.url}{SEARCH_PATH}?page[cursor]={after}"}
        return Reply(200, orjson.dumps(answer), {"Content-Type": "application/json"})

    @staticmethod
    def _cursor_offset(cursor: Any) -> int:
        if cursor is None:
            return 0
        try:
            data = orjson.loads(base64.urlsafe_b64decode(str(cursor).encode()))
            offset = int(data["offset"])
        except Exception as exc:
            raise ValueError(f"invalid cursor {cursor!r}") from exc
        if offset < 0:
            raise ValueError(f"invalid cursor {cursor!r}")
        return offset
