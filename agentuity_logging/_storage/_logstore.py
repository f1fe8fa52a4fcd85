"""The session log store: one SQLite file holding sessions, threads, log records and spans.

:class:`LogStore` owns the schema, the writes and the queries the CLI needs; :class:`LogStoreHandler` is
the output that fills it from the application (stdlib records, structlog events and session start/end)
through a background writer thread, so a log call never waits for the disk.

Layout (times are integer microseconds since the epoch, UTC)::

    sessions(key, id, thread_id, started_at, ended_at, duration_ms, success, error, error_count,
             log_count, metadata)            + session_metadata(session_key, key, value)
    threads(id, created_at, updated_at, expires_at, metadata) + thread_metadata(thread_id, key, value)
    logs(id, ts, levelno, level, logger, message, session_key, thread_id, span_id, fields)
    spans(id, span_id, parent_span_id, session_key, thread_id, name, start, end, duration_ms, status,
          error, attrs)

``logs.session_key`` points at ``sessions.key`` (an integer) instead of repeating the 37-character
session ID: the index ``logs(session_key)`` is several times smaller and inserts ran about 1.6x faster
with it (measured). Its entries are ordered by ``(session_key, id)``, and ``id`` grows in logging order,
so "the logs of a session in order" is one index range scan with no sort. ``logs.level`` holds a name
only when it is not the standard one for ``levelno``, and ``logs.thread_id`` only when it differs from
the session's thread: both are NULL (free) otherwise.

Retention: records older than ``retention_days`` and, when the file grows past ``max_bytes``, the oldest
records are deleted by the writer every ``prune_interval_s``; freed pages go back to the file system
(``auto_vacuum=INCREMENTAL``).
"""

from __future__ import annotations

import atexit
import calendar
import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any, Final

import orjson

from agentuity_logging._context import Session, Thread, add_session_listener
from agentuity_logging._formatting import EventHandler
from agentuity_logging._internal import report_once
from agentuity_logging._json import dumps, safe_default
from agentuity_logging._records import SESSION_KEY, SPAN_KEY, THREAD_KEY, event_from_record, timestamp_us
from agentuity_logging._spans import SPAN_LOGGER_NAME

__all__ = [
    "DEFAULT_STORE_PATH",
    "ENV_LOG_STORE",
    "LEVEL_NUMBERS",
    "SPAN_LOGGER_NAME",
    "LogStore",
    "LogStoreHandler",
    "default_store_path",
    "format_us",
    "index_value",
    "parse_timestamp_us",
]

#: The environment variable naming the store file (``configure(store=...)`` wins over it).
ENV_LOG_STORE: Final = "AGENTUITY_LOG_STORE"
#: Where the store lives when nothing names it: beside the project, like ``.pytest_cache``.
DEFAULT_STORE_PATH: Final = os.path.join(".agentuity", "logs.sqlite3")

#: Schema level names and their stdlib numbers (``--level`` filters by number).
LEVEL_NUMBERS: Final[dict[str, int]] = {
    "notset": 0,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_US: Final = 1_000_000
_DAY_US: Final = 86_400 * _US
# The seven keys that have their own columns; every other key of an event goes into ``fields``.
_HEAD: Final = frozenset({"timestamp", "level", "logger", "message", SESSION_KEY, THREAD_KEY, SPAN_KEY})
_JSON_OPTIONS: Final = orjson.OPT_NON_STR_KEYS
_SPAN_COLUMNS: Final = frozenset({"parentSpanId", "name", "start", "end", "durationMs", "status", "error"})
_LOG_COLUMNS: Final = "ts, levelno, level, logger, message, session_key, thread_id, span_id, fields"
_SPAN_INSERT_COLUMNS: Final = (
    "span_id, parent_span_id, session_key, thread_id, name, start, end, duration_ms, status, error, attrs"
)
# ``logs.level`` holds a name only when it is not the standard one for ``levelno``, and
# ``logs.thread_id`` only when it differs from the session's thread: NULL is free to store.
_LEVEL_EXPR: Final = (
    "coalesce(logs.level, CASE logs.levelno WHEN 0 THEN 'notset' WHEN 10 THEN 'debug' WHEN 20 THEN 'info' "
    "WHEN 30 THEN 'warning' WHEN 40 THEN 'error' WHEN 50 THEN 'critical' END)"
)
_LOG_SELECT: Final = (
    f"SELECT logs.id, logs.ts, {_LEVEL_EXPR}, logs.logger, logs.message, sessions.id, "  # noqa: S608
    "coalesce(logs.thread_id, sessions.thread_id), logs.span_id, logs.fields "
    "FROM logs LEFT JOIN sessions ON sessions.key = logs.session_key"
)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    key         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    thread_id   TEXT,
    started_at  INTEGER,
    ended_at    INTEGER,
    duration_ms REAL,
    success     INTEGER,
    error       TEXT,
    error_count INTEGER NOT NULL DEFAULT 0,
    log_count   INTEGER NOT NULL DEFAULT 0,
    metadata    TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (started_at);
CREATE INDEX IF NOT EXISTS sessions_by_thread ON sessions (thread_id, started_at);
CREATE TABLE IF NOT EXISTS session_metadata (
    session_key INTEGER NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (session_key, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS session_metadata_by_value ON session_metadata (key, value);
CREATE TABLE IF NOT EXISTS threads (
    id         TEXT PRIMARY KEY,
    created_at INTEGER,
    updated_at INTEGER,
    expires_at INTEGER,
    metadata   TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS threads_by_update ON threads (updated_at);
CREATE TABLE IF NOT EXISTS thread_metadata (
    thread_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (thread_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS thread_metadata_by_value ON thread_metadata (key, value);
CREATE TABLE IF NOT EXISTS logs (
    id          INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    levelno     INTEGER NOT NULL,
    level       TEXT,
    logger      TEXT,
    message     TEXT,
    session_key INTEGER,
    thread_id   TEXT,
    span_id     TEXT,
    fields      TEXT
);
CREATE INDEX IF NOT EXISTS logs_by_session ON logs (session_key) WHERE session_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS spans (
    id             INTEGER PRIMARY KEY,
    span_id        TEXT,
    parent_span_id TEXT,
    session_key    INTEGER,
    thread_id      TEXT,
    name           TEXT,
    start          INTEGER,
    end            INTEGER,
    duration_ms    REAL,
    status         TEXT,
    error          TEXT,
    attrs          TEXT
);
CREATE INDEX IF NOT EXISTS spans_by_session ON spans (session_key, start)
    WHERE session_key IS NOT NULL;
INSERT OR IGNORE INTO store_info (key, value) VALUES ('schema_version', '1');
"""

_SESSION_UPSERT_HEAD: Final = (
    "INSERT INTO sessions (id, thread_id, started_at, ended_at, duration_ms, success, error, metadata) "
    "VALUES "
)
_SESSION_UPSERT_TAIL: Final = """
ON CONFLICT (id) DO UPDATE SET
    thread_id = excluded.thread_id, started_at = excluded.started_at, ended_at = excluded.ended_at,
    duration_ms = excluded.duration_ms, success = excluded.success, error = excluded.error,
    metadata = excluded.metadata
"""
_SESSION_PLACEHOLDER_HEAD: Final = "INSERT OR IGNORE INTO sessions (id, thread_id, started_at) VALUES "
_SESSION_KEYS_SQL: Final = "SELECT id, key, thread_id FROM sessions WHERE id IN (VALUES "
_THREAD_UPSERT_HEAD: Final = "INSERT INTO threads (id, created_at, updated_at, expires_at, metadata) VALUES "
_THREAD_UPSERT_TAIL: Final = """
ON CONFLICT (id) DO UPDATE SET
    created_at = coalesce(threads.created_at, excluded.created_at), updated_at = excluded.updated_at,
    expires_at = excluded.expires_at, metadata = excluded.metadata
"""
_LOG_INSERT_HEAD: Final = f"INSERT INTO logs ({_LOG_COLUMNS}) VALUES "  # noqa: S608 - constant columns
_SPAN_INSERT_HEAD: Final = f"INSERT INTO spans ({_SPAN_INSERT_COLUMNS}) VALUES "  # noqa: S608


#: Statements over fewer rows than this are made for their exact row count (see ``LogStore._values``).
_EXACT_BELOW: Final = 64


@functools.lru_cache(maxsize=1024)
def _values_sql(head: str, group: str, count: int, tail: str) -> str:
    """``head`` + ``count`` times ``group`` (``(?,?,…)``) + ``tail`` (built once per shape)."""
    return head + ",".join([group] * count) + tail


def _placeholders(width: int) -> str:
    return "(" + ",".join("?" * width) + ")"


# Text columns that are usually absent are bound as '' and stored as NULL by ``nullif``: sqlite3 binds
# str, int and float directly but sends every None through its adapter lookup (``__conform__``
# attribute probes), which cost about a third of the writer's time (measured with callgrind).
_LOG_GROUP: Final = "(?,?,nullif(?,''),?,?,?,nullif(?,''),nullif(?,''),nullif(?,''))"


# --- time and values -------------------------------------------------------------------------------


def format_us(ts_us: int) -> str:
    """Render microseconds since the epoch as the schema's RFC 3339 UTC timestamp."""
    seconds, micros = divmod(int(ts_us), _US)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _us_from_created(created: float) -> int:
    return int(created * _US)


class _SecondCache:
    """Parses ``YYYY-MM-DDTHH:MM:SS`` prefixes to epoch seconds, remembering the last one."""

    __slots__ = ("prefix", "seconds")

    def __init__(self) -> None:
        self.prefix = ""
        self.seconds = 0

    def __call__(self, prefix: str) -> int:
        if prefix != self.prefix:
            seconds = calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S"))
            self.prefix, self.seconds = prefix, seconds
            return seconds
        return self.seconds


_seconds_of = _SecondCache()


def parse_timestamp_us(value: object) -> int | None:
    """Return microseconds since the epoch for a timestamp, or ``None`` when it is not one.

    Accepts the schema's ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fast path), any ISO 8601 text with an offset
    (no offset means UTC), and numbers: epoch seconds, milliseconds, microseconds or nanoseconds, told
    apart by magnitude.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        magnitude = abs(number)
        if magnitude >= 1e17:
            return int(number // 1000)
        if magnitude >= 1e14:
            return int(number)
        if magnitude >= 1e11:
            return int(number * 1000)
        return round(number * _US)
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        if len(text) == 27 and text[19] == "." and text[26] == "Z" and text[10] == "T":
            return _seconds_of(text[:19]) * _US + int(text[20:26])
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return parse_timestamp_us(float(text))
        if text[-1:] in "zZ":
            text = text[:-1] + "+00:00"
        # Python 3.10's fromisoformat wants 0, 3 or 6 fraction digits: normalise to 6.
        head, dot, rest = text.partition(".")
        if dot:
            digits = len(rest) - len(rest.lstrip("0123456789"))
            frac, tail = rest[:digits], rest[digits:]
            text = f"{head}.{(frac + '000000')[:6]}{tail}"
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError, IndexError):
        return None
    if moment.tzinfo is None:
        return calendar.timegm(moment.timetuple()) * _US + moment.microsecond
    return int(moment.timestamp()) * _US + moment.microsecond


def _dt_us(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    return int(moment.timestamp()) * _US + moment.microsecond


def index_value(value: Any) -> str | None:
    """Return the text a metadata value is indexed (and filtered) under, or ``None`` if not indexed.

    The thread stores' rule: strings as themselves, other scalars as their JSON (``true``, ``3``), so
    ``--metadata vip=true`` finds ``{"vip": True}``; lists and objects are not indexed.
    """
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        try:
            return orjson.dumps(value).decode("utf-8")
        except orjson.JSONEncodeError:
            return None
    return None


def _index_pairs(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs = []
    for key, value in metadata.items():
        text = index_value(value)
        if text is not None:
            pairs.append((str(key), text))
    return pairs


def _levelno(level: object) -> int:
    if isinstance(level, str):
        number = LEVEL_NUMBERS.get(level)
        if number is not None:
            return number
        lowered = level.lower()
        number = LEVEL_NUMBERS.get(lowered)
        if number is not None:
            return number
        if lowered.startswith("level") and lowered[5:].isdigit():
            return int(lowered[5:])
        if lowered in ("warn",):
            return logging.WARNING
        if lowered in ("fatal",):
            return logging.CRITICAL
    return logging.INFO


def _span_row(span_id: str, sid: str | None, tid: str | None, extra: Mapping[str, Any]) -> list[Any]:
    """The ``spans`` row of a finished span's record (its top-level keys are in ``extra``)."""
    error = extra.get("error")
    duration = extra.get("durationMs")
    parent = extra.get("parentSpanId")
    attrs = {k: v for k, v in extra.items() if k not in _SPAN_COLUMNS}
    start = parse_timestamp_us(extra.get("start"))
    return [
        span_id,
        parent if isinstance(parent, str) else None,
        sid,
        tid,
        str(extra.get("name", "")),
        start,
        parse_timestamp_us(extra.get("end")),
        float(duration) if isinstance(duration, (int, float)) else None,
        str(extra.get("status") or ("error" if error else "ok")),
        None if error is None else _json_text(error),
        dumps(attrs).decode("utf-8") if attrs else None,
    ]


def _clean_event(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return ``event`` in the builder's shape: the four basic keys as text, the thread with the session.

    Events from the schema builders already are (returned as they are); a hand-made mapping is copied
    and fixed, so every column value is one SQLite can bind.
    """
    if (
        isinstance(event.get("level"), str)
        and isinstance(event.get("logger"), str)
        and isinstance(event.get("message"), str)
        and "timestamp" in event
        and (SESSION_KEY not in event or THREAD_KEY in event)
    ):
        return event
    out = dict(event)
    out.setdefault("timestamp", None)
    for key in ("logger", "message"):
        value = out.get(key)
        out[key] = value if isinstance(value, str) else ("" if value is None else _json_text(value))
    if not isinstance(out.get("level"), str):
        out["level"] = "info"
    if SESSION_KEY in out:
        out.setdefault(THREAD_KEY, None)
    return out


def _json_text(value: Any) -> str:
    """Any value as JSON text (never raises: ``dumps`` renders what JSON cannot hold)."""
    return dumps({"v": value}).decode("utf-8")[5:-1]


def _loads(text: str | bytes | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def default_store_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return the store file: ``AGENTUITY_LOG_STORE``, else ``./.agentuity/logs.sqlite3`` (absolute)."""
    env = os.environ if environ is None else environ
    named = env.get(ENV_LOG_STORE, "").strip()
    return Path(named or DEFAULT_STORE_PATH).expanduser().absolute()


# --- what the writer is handed --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ThreadSnapshot:
    id: str
    created_at: int | None
    updated_at: int | None
    expires_at: int | None
    metadata: str
    pairs: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, thread: Thread) -> _ThreadSnapshot:
        metadata = dict(thread.metadata)
        return cls(
            thread.id,
            _dt_us(thread.created_at),
            _dt_us(thread.updated_at),
            _dt_us(thread.expires_at),
            dumps(metadata).decode("utf-8"),
            tuple(_index_pairs(metadata)),
        )


@dataclass(frozen=True, slots=True)
class _SessionSnapshot:
    """A session as it was when it started or ended (copied on the app's thread: it may change)."""

    id: str
    thread_id: str
    started_at: int | None
    ended_at: int | None
    duration_ms: float | None
    success: bool | None
    error: str | None
    metadata: str
    pairs: tuple[tuple[str, str], ...]
    thread: _ThreadSnapshot

    @classmethod
    def of(cls, session: Session) -> _SessionSnapshot:
        metadata = dict(session.metadata)
        return cls(
            session.id,
            session.thread.id,
            _dt_us(session.started_at),
            _dt_us(session.ended_at),
            session.duration_ms,
            session.success,
            session.error,
            dumps(metadata).decode("utf-8"),
            tuple(_index_pairs(metadata)),
            _ThreadSnapshot.of(session.thread),
        )


class _Flush:
    """A marker in the queue: set once everything queued before it is committed."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


# --- the store -----------------------------------------------------------------------------------------


def _max_variables() -> int:
    # SQLite allowed 999 bound variables per statement before 3.32, 32766 since.
    return 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


class LogStore:
    """A SQLite file of sessions, threads, log records and spans, with retention.

    The application writes through :class:`LogStoreHandler`; the CLI reads with ``readonly=True``.
    Several processes may write one file (WAL, ``busy_timeout``). Not for sharing one object between
    threads mid-call: the writer thread has its own connection, reads share another under a lock.

    Args:
        path: the file; ``None`` means :func:`default_store_path` (``AGENTUITY_LOG_STORE`` or
            ``./.agentuity/logs.sqlite3``). Its directory is created.
        retention_days: delete records (and ended sessions, expired threads) older than this; ``None``
            keeps them forever.
        max_bytes: when the data outgrows this, delete the oldest records down to 90% of it; ``None``
            means no limit.
        batch_size: records the writer commits per transaction (it wakes early when this many wait).
        flush_interval_s: longest time a record waits in the queue before the writer commits it.
        max_queue: records held in memory at most; beyond, new records are dropped and counted.
        prune_interval_s: how often the writer applies retention.
        readonly: open for reading only (the file must exist; nothing is created).

    Raises:
        FileNotFoundError: ``readonly`` and the file does not exist.
        ValueError: a non-positive size, count or interval.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        retention_days: float | None = 7.0,
        max_bytes: int | None = 512 * 1024 * 1024,
        batch_size: int = 2048,
        flush_interval_s: float = 0.2,
        max_queue: int = 100_000,
        prune_interval_s: float = 60.0,
        readonly: bool = False,
    ) -> None:
        for name, value in (
            ("batch_size", batch_size),
            ("flush_interval_s", flush_interval_s),
            ("max_queue", max_queue),
            ("prune_interval_s", prune_interval_s),
        ):
            if not value > 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")
        if retention_days is not None and not retention_days > 0:
            raise ValueError(f"retention_days: expected a positive number or None, got {retention_days!r}")
        if max_bytes is not None and not max_bytes > 0:
            raise ValueError(f"max_bytes: expected a positive number or None, got {max_bytes!r}")
        self.path = Path(path).expanduser().absolute() if path is not None else default_store_path()
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self.batch_size = int(batch_size)
        self.flush_interval_s = float(flush_interval_s)
        self.max_queue = int(max_queue)
        self.prune_interval_s = float(prune_interval_s)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise FileNotFoundError(f"no log store at {self.path}")
        self._lock = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None
        # session ID -> (sessions.key, its thread ID), for the sessions this writer has seen.
        self._keys: dict[str, tuple[int, str | None]] = {}
        self._chunk = max(1, min(2048, _max_variables() // 11))
        self._closed = False

    def __repr__(self) -> str:
        return f"LogStore({str(self.path)!r})"

    # --- connections ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise sqlite3.ProgrammingError(f"the log store {self.path} is closed")
        if self.readonly:
            uri = self.path.as_uri() + "?mode=ro"
            return sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None, check_same_thread=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=10.0,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=1024,
        )
        try:
            # auto_vacuum and page_size only take effect before the first table exists (and page_size
            # before WAL): set them first; on an existing file they are no-ops.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA page_size = 8192")  # fewer page splits for appended rows
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            # Checkpoint every ~16 MB of WAL rather than 8 MB: fewer, larger copies (measured ~8%).
            conn.execute("PRAGMA wal_autocheckpoint = 2000")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def _writer(self) -> sqlite3.Connection:
        conn = self._write_conn
        if conn is None:
            conn = self._write_conn = self._connect()
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn = self._read_conn
        if conn is None:
            conn = self._read_conn = self._connect()
        return conn

    def close(self) -> None:
        """Close the connections (idempotent). Queries after this raise ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._closed = True
            for conn in (self._write_conn, self._read_conn):
                if conn is not None:
                    conn.close()
            self._write_conn = self._read_conn = None

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _forget_connections(self) -> None:
        """In a forked child: drop the parent's connections without closing them (SQLite forbids
        using a connection across fork; closing it here could disturb the parent's locks)."""
        _ABANDONED.extend(c for c in (self._write_conn, self._read_conn) if c is not None)
        self._write_conn = self._read_conn = None
        self._keys.clear()
        self._lock = threading.Lock()

    def connection(self) -> sqlite3.Connection:
        """The read connection (for ``EXPLAIN QUERY PLAN`` and ad-hoc queries; do not close it)."""
        with self._lock:
            return self._reader()

    # --- writing -------------------------------------------------------------------------------

    def write(self, items: Iterable[object]) -> int:
        """Commit ``items`` in one transaction; return how many log records were written.

        Items are stdlib ``LogRecord``\\s, schema dicts (structlog events) and the handler's session
        snapshots, in logging order. Called by the writer thread; usable directly for imports.

        Raises:
            sqlite3.Error: the transaction failed (nothing of it was written).
        """
        # The writer's hot loop: locals only, one dict lookup per column, no per-record function calls
        # beyond the one schema builder and the JSON encoder. Sessions this writer already knows get
        # their key here; rows of new sessions wait in ``pending`` for the transaction to learn theirs.
        rows: list[list[Any]] = []
        pending: list[list[Any]] = []
        spans: list[list[Any]] = []
        snapshots: dict[str, _SessionSnapshot] = {}
        counts: dict[int, list[int]] = {}
        keys = self._keys
        append = rows.append
        levels = LEVEL_NUMBERS
        encode = orjson.dumps
        event: Mapping[str, Any]
        # An event's time column comes from its timestamp text, so it renders back to exactly that
        # text; the seconds part is parsed once per second.
        prefix, base = "", 0
        for item in items:
            if isinstance(item, logging.LogRecord):
                try:
                    event = event_from_record(item)
                    # The builder's own arithmetic (``timestamp_us``): the stored time renders back
                    # to exactly the record's timestamp text (a test holds the two together).
                    ts = timestamp_us(item.created)
                except Exception as exc:
                    report_once("logstore-bad-record", "log store: a record could not be read: %r", exc)
                    continue
                built = True
            elif isinstance(item, _SessionSnapshot):
                snapshots[item.id] = item  # the latest wins: an end supersedes its start
                continue
            elif isinstance(item, Mapping):
                event = _clean_event(item)
                built = False
                stamp = event.get("timestamp")
                if stamp.__class__ is str and len(stamp) == 27 and stamp[:19] == prefix and stamp[26] == "Z":
                    ts = base + int(stamp[20:26])
                else:
                    parsed = parse_timestamp_us(stamp)
                    if parsed is None:
                        ts = _us_from_created(time.time())
                    else:
                        ts = parsed
                        if stamp.__class__ is str and len(stamp) == 27 and stamp[26] == "Z":
                            prefix, base = stamp[:19], parsed - parsed % _US
            else:
                continue
            sid = event.get(SESSION_KEY)
            if sid is None:
                head = 4
                tid = None
            else:
                head = 6
                if sid.__class__ is not str:
                    sid = str(sid)
                tid = event.get(THREAD_KEY)
                if tid is not None and tid.__class__ is not str:
                    tid = str(tid)
            span_id = event.get(SPAN_KEY)
            if span_id is not None:
                head += 1
                if span_id.__class__ is not str:
                    span_id = str(span_id)
            # The builders put the schema's keys first, in order (``_records``), and the thread
            # whenever the session: what follows them is the fields. Other mappings are sorted out.
            if len(event) <= head:
                fields = ""
                extra: dict[str, Any] = {}
            else:
                if built:
                    extra = dict(islice(event.items(), head, None))
                else:
                    extra = {k: v for k, v in event.items() if k not in _HEAD}
                if extra:
                    try:
                        fields = encode(extra, default=safe_default, option=_JSON_OPTIONS).decode()
                    except Exception:
                        fields = dumps(extra).decode("utf-8")  # sanitises field by field
                else:
                    fields = ""
            level = event.get("level")
            levelno = levels.get(level)  # type: ignore[arg-type]
            if levelno is None:
                levelno = _levelno(level)
                level = level if isinstance(level, str) else "info"
            else:
                level = ""  # the standard name: implied by levelno (stored as NULL)
            logger = event.get("logger")
            # '' is stored as NULL (see _LOG_GROUP): no span, no thread (or the session's own), no fields.
            row = [ts, levelno, level, logger, event.get("message"), sid, tid or "", span_id or "", fields]
            append(row)
            if sid is not None:
                known = keys.get(sid)
                if known is None:
                    pending.append(row)
                else:
                    key = row[5] = known[0]
                    if tid == known[1]:
                        row[6] = ""  # the session's own thread: implied
                    tally = counts.get(key)
                    if tally is None:
                        tally = counts[key] = [0, 0]
                    tally[0] += 1
                    if levelno >= logging.ERROR:
                        tally[1] += 1
            if logger == SPAN_LOGGER_NAME and span_id is not None:
                spans.append(_span_row(span_id, sid, tid, extra))
        if not rows and not snapshots:
            return 0
        with self._lock:
            conn = self._writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                written = self._commit(conn, rows, pending, spans, snapshots, counts)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                # Keys learnt inside a rolled-back transaction may not exist.
                self._keys.clear()
                raise
        return written

    # A batch is committed in a handful of statements whatever it holds: each statement releases the
    # GIL and, while the application logs in a busy loop, re-taking it can wait the interpreter's
    # whole switch interval (5 ms). One statement per session (start and end, metadata, thread) or
    # per row (``executemany``) made the writer wait more than it worked (measured: a third of the
    # ingest rate lost); multi-row statements in power-of-two chunks keep the count down and every
    # statement in sqlite3's cache.

    def _commit(  # noqa: PLR0917 - private; the write loop's results, in one call
        self,
        conn: sqlite3.Connection,
        rows: list[list[Any]],
        pending: list[list[Any]],
        spans: list[list[Any]],
        snapshots: dict[str, _SessionSnapshot],
        counts: dict[int, list[int]],
    ) -> int:
        keys = self._keys
        if snapshots:
            self._values(
                conn,
                _SESSION_UPSERT_HEAD,
                8,
                [
                    (
                        s.id,
                        s.thread_id,
                        s.started_at,
                        s.ended_at,
                        s.duration_ms,
                        None if s.success is None else int(s.success),
                        s.error,
                        s.metadata,
                    )
                    for s in snapshots.values()
                ],
                _SESSION_UPSERT_TAIL,
            )
        wanted = {row[5] for row in pending}
        wanted.update(span[2] for span in spans if span[2] is not None)
        wanted.update(snapshots)
        missing = [sid for sid in wanted if sid not in keys]
        if missing:
            unannounced = {sid for sid in missing if sid not in snapshots}
            if unannounced:
                # Records of a session the store was never told about (a set-up without the session
                # listener, or a record logged before the start notification): list the session anyway.
                first: dict[str, tuple[str, str | None, int]] = {}
                for row in pending:
                    if row[5] in unannounced and row[5] not in first:
                        first[row[5]] = (row[5], row[6] or None, row[0])
                for span in spans:
                    if span[2] in unannounced and span[2] not in first:
                        first[span[2]] = (span[2], span[3], span[5] or 0)
                self._values(conn, _SESSION_PLACEHOLDER_HEAD, 3, list(first.values()))
            for found_id, key, thread_id in self._values(
                conn, _SESSION_KEYS_SQL, 1, [(sid,) for sid in missing], ")"
            ):
                keys[found_id] = (key, thread_id)
        if snapshots:
            self._save_metadata(conn, snapshots)
        for row in pending:
            key, thread_id = keys[row[5]]
            row[5] = key
            if row[6] == (thread_id or ""):
                row[6] = ""
            tally = counts.get(key)
            if tally is None:
                tally = counts[key] = [0, 0]
            tally[0] += 1
            if row[1] >= logging.ERROR:
                tally[1] += 1
        for span in spans:
            if span[2] is not None:
                span[2] = keys[span[2]][0]
        self._values(conn, _LOG_INSERT_HEAD, 9, rows, group=_LOG_GROUP)
        self._values(conn, _SPAN_INSERT_HEAD, 11, spans)
        if counts:
            self._values(
                conn,
                "WITH c(k, n, e) AS (VALUES ",
                3,
                [(key, n, e) for key, (n, e) in counts.items()],
                ") UPDATE sessions SET log_count = log_count + (SELECT n FROM c WHERE k = sessions.key), "
                "error_count = error_count + (SELECT e FROM c WHERE k = sessions.key) "
                "WHERE key IN (SELECT k FROM c)",
            )
        if len(keys) > 8192:  # bounded: forget them all, the next batches learn the live ones again
            keys.clear()
        return len(rows)

    def _save_metadata(self, conn: sqlite3.Connection, snapshots: dict[str, _SessionSnapshot]) -> None:
        """Replace the indexed metadata of the sessions (and their threads) in ``snapshots``."""
        keys = self._keys
        session_keys = [(keys[sid][0],) for sid in snapshots]
        self._values(conn, "DELETE FROM session_metadata WHERE session_key IN (VALUES ", 1, session_keys, ")")
        pairs = [(keys[s.id][0], k, v) for s in snapshots.values() for k, v in s.pairs]
        self._values(
            conn, "INSERT OR REPLACE INTO session_metadata (session_key, key, value) VALUES ", 3, pairs
        )
        threads = {s.thread.id: s.thread for s in snapshots.values()}
        self._values(
            conn,
            _THREAD_UPSERT_HEAD,
            5,
            [(t.id, t.created_at, t.updated_at, t.expires_at, t.metadata) for t in threads.values()],
            _THREAD_UPSERT_TAIL,
        )
        self._values(
            conn, "DELETE FROM thread_metadata WHERE thread_id IN (VALUES ", 1, [(t,) for t in threads], ")"
        )
        thread_pairs = [(t.id, k, v) for t in threads.values() for k, v in t.pairs]
        self._values(
            conn, "INSERT OR REPLACE INTO thread_metadata (thread_id, key, value) VALUES ", 3, thread_pairs
        )

    def _values(
        self,
        conn: sqlite3.Connection,
        head: str,
        width: int,
        rows: Sequence[Sequence[Any]],
        tail: str = "",
        *,
        group: str | None = None,
    ) -> list[Any]:
        """Run ``head (?,…),(?,…)… tail`` over ``rows`` in few statements; return the rows they select.

        Chunks are powers of two down to 64 rows, then one statement of the exact remainder: a full
        batch is one statement, and the shapes stay few enough for sqlite3's statement cache.
        """
        found: list[Any] = []
        total = len(rows)
        position = 0
        while position < total:
            size = self._chunk
            while size > total - position and size > _EXACT_BELOW:
                size //= 2
            size = min(size, total - position)
            params = list(chain.from_iterable(rows[position : position + size]))
            sql = _values_sql(head, group or _placeholders(width), size, tail)
            found.extend(conn.execute(sql, params).fetchall())
            position += size
        return found

    # --- retention -----------------------------------------------------------------------------

    def prune(self, now_us: int | None = None) -> int:
        """Apply retention now: by age, then by size. Return how many log records were deleted.

        Deletes in chunks, each its own short transaction, so readers and other writers are never
        held up for long.
        """
        now = _us_from_created(time.time()) if now_us is None else now_us
        deleted = 0
        with self._lock:
            conn = self._writer()
            if self.retention_days is not None:
                cutoff = now - int(self.retention_days * _DAY_US)
                deleted += self._prune_logs_before(conn, cutoff)
                self._prune_sessions(conn, cutoff, now)
            if self.max_bytes is not None:
                deleted += self._prune_to_size(conn, now)
            if deleted:
                self._keys.clear()
                conn.execute("PRAGMA incremental_vacuum")
        return deleted

    def _prune_logs_before(self, conn: sqlite3.Connection, cutoff: int) -> int:
        # ``id`` grows in logging order, so the oldest records are the first ids: walk from the start
        # in chunks while the oldest is past the cutoff (no index on ``ts`` needed, none kept).
        deleted = 0
        while True:
            row = conn.execute("SELECT ts FROM logs ORDER BY id LIMIT 1").fetchone()
            if row is None or row[0] >= cutoff:
                break
            with _transaction(conn):
                cursor = conn.execute(
                    "DELETE FROM logs WHERE id IN (SELECT id FROM logs ORDER BY id LIMIT 5000) AND ts < ?",
                    (cutoff,),
                )
            if cursor.rowcount <= 0:
                break
            deleted += cursor.rowcount
        while True:
            row = conn.execute("SELECT start FROM spans ORDER BY id LIMIT 1").fetchone()
            if row is None or (row[0] or 0) >= cutoff:
                break
            with _transaction(conn):
                cursor = conn.execute(
                    "DELETE FROM spans WHERE id IN (SELECT id FROM spans ORDER BY id LIMIT 5000) "
                    "AND coalesce(start, 0) < ?",
                    (cutoff,),
                )
            if cursor.rowcount <= 0:
                break
        return deleted

    def _prune_sessions(self, conn: sqlite3.Connection, cutoff: int, now: int) -> None:
        with _transaction(conn):
            conn.execute(
                "DELETE FROM session_metadata WHERE session_key IN (SELECT key FROM sessions "
                "WHERE coalesce(ended_at, started_at, 0) < ?)",
                (cutoff,),
            )
            conn.execute("DELETE FROM sessions WHERE coalesce(ended_at, started_at, 0) < ?", (cutoff,))
            conn.execute(
                "DELETE FROM thread_metadata WHERE thread_id IN (SELECT id FROM threads "
                "WHERE coalesce(updated_at, created_at, 0) < ? AND coalesce(expires_at, 0) < ?)",
                (cutoff, now),
            )
            conn.execute(
                "DELETE FROM threads WHERE coalesce(updated_at, created_at, 0) < ? "
                "AND coalesce(expires_at, 0) < ?",
                (cutoff, now),
            )

    def used_bytes(self) -> int:
        """Bytes of the file holding data (pages in use; free pages excluded)."""
        with self._lock:
            conn = self._writer() if not self.readonly else self._reader()
            return _used_bytes(conn)

    def _prune_to_size(self, conn: sqlite3.Connection, now: int) -> int:
        assert self.max_bytes is not None
        target = 0.9 * self.max_bytes
        deleted = 0
        # Pages emptied by deleting the oldest rows are released at once, but index pages only
        # partly empty stay: measure again after each round rather than trust one estimate.
        for _ in range(8):
            used = _used_bytes(conn)
            if used <= self.max_bytes if not deleted else used <= target:
                break
            first, last = conn.execute("SELECT min(id), max(id) FROM logs").fetchone()
            if first is None:
                break
            share = max(0.02, 1.0 - target / used)
            boundary = first + int((last - first + 1) * share) + 1
            while True:
                with _transaction(conn):
                    cursor = conn.execute(
                        "DELETE FROM logs WHERE id IN "
                        "(SELECT id FROM logs WHERE id < ? ORDER BY id LIMIT 20000)",
                        (boundary,),
                    )
                if cursor.rowcount <= 0:
                    break
                deleted += cursor.rowcount
            oldest = conn.execute("SELECT ts FROM logs ORDER BY id LIMIT 1").fetchone()
            horizon = oldest[0] if oldest is not None else now
            with _transaction(conn):
                conn.execute("DELETE FROM spans WHERE coalesce(start, 0) < ?", (horizon,))
            self._prune_sessions(conn, horizon, now)
        return deleted

    # --- reading (the CLI's local source) -------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._reader().execute(sql, params).fetchall()

    def list_sessions(
        self,
        *,
        count: int | None = 20,
        thread_id: str | None = None,
        success: bool | None = None,
        metadata: Mapping[str, str] | None = None,
        started_after_us: int | None = None,
        started_before_us: int | None = None,
        oldest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Return sessions as JSON-ready dicts, newest first, filtered as the arguments say.

        ``metadata`` matches indexed values as text (see :func:`index_value`); all pairs must match.
        ``success`` selects ended sessions that succeeded (``True``) or failed (``False``); running
        sessions have neither outcome yet.
        """
        where: list[str] = []
        params: list[Any] = []
        if thread_id is not None:
            where.append("thread_id = ?")
            params.append(thread_id)
        if success is not None:
            where.append("success = ?")
            params.append(int(success))
        if started_after_us is not None:
            where.append("started_at > ?")
            params.append(started_after_us)
        if started_before_us is not None:
            where.append("started_at < ?")
            params.append(started_before_us)
        for key, value in (metadata or {}).items():
            where.append("key IN (SELECT session_key FROM session_metadata WHERE key = ? AND value = ?)")
            params.extend((key, value))
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions"  # noqa: S608 - constant columns; values bound
        if where:
            sql += " WHERE " + " AND ".join(where)
        order = "ASC" if oldest_first else "DESC"
        sql += f" ORDER BY started_at {order}, key {order}"
        if count is not None:
            sql += " LIMIT ?"
            params.append(int(count))
        return [_session_dict(row) for row in self._query(sql, params)]

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        """Return one session with ``levels`` (record counts by level), or ``None`` when unknown."""
        rows = self._query(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,))  # noqa: S608
        if not rows:
            return None
        session = _session_dict(rows[0])
        key = rows[0][0]
        levels = self._query(
            f"SELECT {_LEVEL_EXPR} AS name, count(*) FROM logs WHERE session_key = ? "  # noqa: S608
            "GROUP BY name ORDER BY min(levelno)",
            (key,),
        )
        session["levels"] = dict(levels)
        return session

    def session_logs(
        self, session_id: str, *, min_level: int = 0, after_id: int = 0, limit: int | None = None
    ) -> list[tuple[int, dict[str, Any]]]:
        """Return ``(id, event)`` pairs of one session's records in logging order.

        ``after_id`` continues from a previous call (``--follow``). The query is one range scan of the
        ``logs_by_session`` index: its cost depends on the session's size, not the store's.
        """
        sql = (
            f"{_LOG_SELECT} WHERE logs.session_key = (SELECT key FROM sessions WHERE id = ?) "  # noqa: S608
            "AND logs.id > ?"
        )
        params: list[Any] = [session_id, after_id]
        if min_level:
            sql += " AND logs.levelno >= ?"
            params.append(min_level)
        sql += " ORDER BY logs.id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [(row[0], _event(row)) for row in self._query(sql, params)]

    def session_logs_plan(self, session_id: str) -> list[str]:
        """Return SQLite's ``EXPLAIN QUERY PLAN`` lines for :meth:`session_logs` (the benchmark)."""
        sql = (
            f"EXPLAIN QUERY PLAN {_LOG_SELECT} WHERE logs.session_key = "  # noqa: S608
            "(SELECT key FROM sessions WHERE id = ?) AND logs.id > ? ORDER BY logs.id"
        )
        return [str(row[-1]) for row in self._query(sql, (session_id, 0))]

    def logs_after(
        self,
        after_id: int,
        *,
        session_id: str | None = None,
        min_level: int = 0,
        limit: int = 1000,
    ) -> list[tuple[int, dict[str, Any]]]:
        """Return ``(id, event)`` pairs of records newer than ``after_id`` (``tail``)."""
        if session_id is not None:
            return self.session_logs(session_id, min_level=min_level, after_id=after_id, limit=limit)
        sql = f"{_LOG_SELECT} WHERE logs.id > ?"
        params: list[Any] = [after_id]
        if min_level:
            sql += " AND logs.levelno >= ?"
            params.append(min_level)
        sql += " ORDER BY logs.id LIMIT ?"
        params.append(limit)
        return [(row[0], _event(row)) for row in self._query(sql, params)]

    def last_log_id(self, *, back: int = 0) -> int:
        """Return the id ``back`` records before the newest one (0 when there are not that many)."""
        row = self._query("SELECT id FROM logs ORDER BY id DESC LIMIT 1 OFFSET ?", (back,))
        return int(row[0][0]) if row else 0

    def session_spans(self, session_id: str) -> list[dict[str, Any]]:
        """Return the session's finished spans, by start time."""
        rows = self._query(
            "SELECT span_id, parent_span_id, name, start, end, duration_ms, status, error, attrs "
            "FROM spans WHERE session_key = (SELECT key FROM sessions WHERE id = ?) "
            "ORDER BY start, id",
            (session_id,),
        )
        return [
            {
                "spanId": r[0],
                "parentSpanId": r[1],
                "name": r[2],
                "start": None if r[3] is None else format_us(r[3]),
                "end": None if r[4] is None else format_us(r[4]),
                "durationMs": r[5],
                "status": r[6],
                "error": _loads(r[7]),
                "attributes": _loads(r[8]) or {},
            }
            for r in rows
        ]

    def list_threads(
        self, *, count: int | None = 20, metadata: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Return threads, most recently updated first, with their session counts."""
        where: list[str] = []
        params: list[Any] = []
        for key, value in (metadata or {}).items():
            where.append("id IN (SELECT thread_id FROM thread_metadata WHERE key = ? AND value = ?)")
            params.extend((key, value))
        sql = (
            "SELECT id, created_at, updated_at, expires_at, metadata, "
            "(SELECT count(*) FROM sessions WHERE sessions.thread_id = threads.id) FROM threads"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY updated_at DESC, id"
        if count is not None:
            sql += " LIMIT ?"
            params.append(int(count))
        return [_thread_dict(row) for row in self._query(sql, params)]

    def get_thread(self, thread_id: str, *, with_sessions: bool = True) -> dict[str, Any] | None:
        """Return a thread with its ``sessions`` (oldest first), or ``None`` when unknown."""
        rows = self._query(
            "SELECT id, created_at, updated_at, expires_at, metadata, "
            "(SELECT count(*) FROM sessions WHERE sessions.thread_id = threads.id) "
            "FROM threads WHERE id = ?",
            (thread_id,),
        )
        if rows and not with_sessions:
            return _thread_dict(rows[0])
        sessions = self.list_sessions(count=None, thread_id=thread_id, oldest_first=True)
        if not rows:
            if not sessions:
                return None
            # Sessions whose thread row never arrived (records without the session listener).
            thread: dict[str, Any] = {
                "id": thread_id,
                "createdAt": sessions[0]["startedAt"],
                "updatedAt": sessions[-1]["endedAt"] or sessions[-1]["startedAt"],
                "expiresAt": None,
                "expired": None,
                "metadata": {},
                "sessionCount": len(sessions),
            }
        else:
            thread = _thread_dict(rows[0])
        thread["sessions"] = sessions
        return thread


_ABANDONED: list[sqlite3.Connection] = []

_SESSION_COLUMNS: Final = (
    "key, id, thread_id, started_at, ended_at, duration_ms, success, error, error_count, log_count, metadata"
)


class _transaction:  # noqa: N801 - reads as a statement: ``with _transaction(conn):``
    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _used_bytes(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _session_dict(row: Sequence[Any]) -> dict[str, Any]:
    return {
        "id": row[1],
        "threadId": row[2],
        "startedAt": None if row[3] is None else format_us(row[3]),
        "endedAt": None if row[4] is None else format_us(row[4]),
        "durationMs": row[5],
        "success": None if row[6] is None else bool(row[6]),
        "error": row[7],
        "errorCount": row[8],
        "logCount": row[9],
        "metadata": _loads(row[10]) or {},
    }


def _thread_dict(row: Sequence[Any]) -> dict[str, Any]:
    expires = row[3]
    return {
        "id": row[0],
        "createdAt": None if row[1] is None else format_us(row[1]),
        "updatedAt": None if row[2] is None else format_us(row[2]),
        "expiresAt": None if expires is None else format_us(expires),
        "expired": None if expires is None else expires <= _us_from_created(time.time()),
        "metadata": _loads(row[4]) or {},
        "sessionCount": row[5],
    }


def _event(row: Sequence[Any]) -> dict[str, Any]:
    """Rebuild the schema dict of a stored record (the same keys, in the same order)."""
    event: dict[str, Any] = {
        "timestamp": format_us(row[1]),
        "level": row[2],
        "logger": row[3],
        "message": row[4],
    }
    if row[5] is not None:
        event[SESSION_KEY] = row[5]
        event[THREAD_KEY] = row[6]
    if row[7] is not None:
        event[SPAN_KEY] = row[7]
    if row[8]:
        fields = _loads(row[8])
        if isinstance(fields, dict):
            event.update(fields)
    return event


# --- the handler -------------------------------------------------------------------------------------


def _register_fork_hook(handler: LogStoreHandler) -> None:
    # Through a weak reference: the hook must not keep a closed handler (and its store) alive.
    ref = weakref.WeakMethod(handler._after_fork_in_child)

    def hook() -> None:
        method = ref()
        if method is not None:
            method()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=hook)


class LogStoreHandler(EventHandler):
    """The output that fills a :class:`LogStore`: records, structlog events and sessions.

    Also a session listener: register it with ``add_session_listener`` (``listen=True`` does) and every
    session is upserted when it starts (so a running session is listed) and again when it ends, with
    its metadata, outcome and thread. A finished span's record also lands in ``spans``.

    ``emit()`` only appends to an in-memory queue (no lock, no I/O); a named daemon thread commits
    batches. It never blocks or raises into the application: when the queue is full, or the file
    cannot be written, records are dropped and counted (``stats()``), and the problem is said once
    through ``agentuity_logging.internal``. Call :meth:`flush` to wait for the disk; :meth:`close` (also
    run at exit) flushes and stops the thread. A forked child starts with an empty queue and its own
    thread and connection, and never writes the parent's records.
    """

    def __init__(
        self,
        store: LogStore | str | os.PathLike[str] | None = None,
        *,
        level: int = logging.NOTSET,
        listen: bool = False,
    ) -> None:
        super().__init__(level)
        self.store = store if isinstance(store, LogStore) else LogStore(store)
        self._queue: deque[object] = deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._pid = os.getpid()
        self._max_queue = self.store.max_queue
        self._batch_size = self.store.batch_size
        self._dropped: Counter[str] = Counter()
        self._written = 0
        self._failures = 0
        self._drop_lock = threading.Lock()
        self._atexit_registered = False
        _register_fork_hook(self)
        if listen:
            add_session_listener(self)

    def __repr__(self) -> str:
        return f"<LogStoreHandler {self.store.path} ({logging.getLevelName(self.level)})>"

    # --- the application's side (hot path) --------------------------------------------------------

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and enqueue ``record`` without the handler lock (the queue append is atomic)."""
        rv: Any = self.filter(record)  # Python 3.12+ filters may return a replacement record
        if isinstance(rv, logging.LogRecord):
            record = rv
        if rv:
            self.emit(record)
        return bool(rv)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue a stdlib record for the writer (never blocks, never raises)."""
        try:
            if record.args and "_agentuity_event" not in record.__dict__:
                # %-arguments may be mutable objects the caller changes after the call: render the
                # message now. Records without arguments are turned into events on the writer thread.
                event_from_record(record)
            self._put(record)
        except Exception as exc:
            self._drop("error", 1, exc)

    def emit_event(self, event: Mapping[str, Any]) -> None:
        """Queue a schema dict (the structlog path) for the writer."""
        self._put(event)

    def _put(self, item: object) -> None:
        if self._thread is None:
            self._start()
        if self._closed:
            self._drop("closed", 1)
            return
        queue = self._queue
        n = len(queue)
        if n >= self._max_queue:
            if self._forked():
                self._put(item)
                return
            self._drop("queue_full", 1)
            return
        queue.append(item)
        if n + 1 >= self._batch_size and not self._wake.is_set():
            # Once per batch, not per record: os.getpid() is a system call (0.36 us measured here).
            # The fork hook resets a child; this catches forks made without it (a C extension's).
            if self._forked():
                self._put(item)  # the parent's queue was dropped with this record in it
                return
            self._wake.set()

    def _forked(self) -> bool:
        """Return whether this is a forked child the fork hook did not reset (and reset it)."""
        if self._pid == os.getpid():
            return False
        self._after_fork_in_child()
        return True

    def session_started(self, session: Session) -> None:
        """Upsert the session (and its thread) as running."""
        self._put_session(session)

    def session_ended(self, session: Session) -> None:
        """Upsert the session with its end, duration, outcome and final metadata."""
        self._put_session(session)

    def _put_session(self, session: Session) -> None:
        try:
            snapshot = _SessionSnapshot.of(session)
        except Exception as exc:
            self._drop("error", 1, exc)
            return
        self._forked()
        if self._thread is None:
            self._start()
        if self._closed:
            self._drop("closed", 1)
            return
        # Session rows are few and make the store's listing right: kept past a full queue of records
        # (up to twice its size, so even a writer stuck for good cannot grow memory without end).
        if len(self._queue) >= 2 * self._max_queue:
            self._drop("queue_full", 1)
            return
        self._queue.append(snapshot)

    def _drop(self, reason: str, n: int, exc: BaseException | None = None) -> None:
        with self._drop_lock:
            self._dropped[reason] += n
        if exc is not None:
            report_once(
                f"logstore-drop:{reason}",
                "log store %s: dropped records (%s): %r",
                self.store.path,
                reason,
                exc,
            )
        else:
            report_once(
                f"logstore-drop:{reason}",
                "log store %s: dropped records (%s)",
                self.store.path,
                reason,
            )

    # --- lifecycle --------------------------------------------------------------------------------

    def _start(self) -> None:
        self._forked()
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="agentuity-logging-logstore", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # interpreter shutting down: no new threads
                self._closed = True
                self._drop("closed", 0, exc)
                return
            self._thread = thread
            if not self._atexit_registered:
                atexit.register(self._at_exit)
                self._atexit_registered = True

    def _at_exit(self) -> None:
        self.close(timeout=5.0)

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here and its locks may be held by threads that vanished:
        # everything is new. Records queued by the parent are the parent's to write.
        self._pid = os.getpid()
        self._written = self._failures = 0
        self._dropped = Counter()
        self._queue = deque()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._thread = None
        self._stopping = False
        self._atexit_registered = False
        self.store._forget_connections()

    def flush(self, timeout: float | None = 5.0) -> bool:  # type: ignore[override]
        """Wait until everything queued so far is committed; return ``False`` on timeout."""
        self._forked()
        if self._thread is None or not self._thread.is_alive():
            return not self._queue
        marker = _Flush()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def drain(self, timeout_s: float | None = None) -> bool:
        """``agentuity_logging.flush()``'s hook: :meth:`flush` with its timeout."""
        return self.flush(timeout_s)

    def close(self, timeout: float = 5.0) -> None:
        """Flush, stop the writer and close the store (idempotent; at most ``timeout`` seconds)."""
        from agentuity_logging._context import remove_session_listener

        remove_session_listener(self)
        with self._start_lock:
            if self._closed:
                super().close()
                return
            self._closed = True
        thread = self._thread
        stopped = True
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            self._stopping = True
            self._wake.set()
            thread.join(timeout)
            stopped = not thread.is_alive()
        if self._atexit_registered:
            atexit.unregister(self._at_exit)
            self._atexit_registered = False
        if stopped:
            self.store.close()
        super().close()

    def stats(self) -> dict[str, Any]:
        """Return ``{"written", "queued", "dropped": {reason: n}, "failed_batches"}``."""
        with self._drop_lock:
            dropped = dict(self._dropped)
        return {
            "written": self._written,
            "queued": len(self._queue),
            "dropped": dropped,
            "failed_batches": self._failures,
        }

    # --- the writer thread ------------------------------------------------------------------------

    def _run(self) -> None:
        store = self.store
        next_prune = time.monotonic() + min(store.prune_interval_s, 5.0)
        interval = store.flush_interval_s
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self._drain()
                if self._stopping:
                    self._drain()
                    break
            except Exception as exc:  # the thread must outlive any surprise: later batches still count
                report_once("logstore-writer", "log store %s: the writer failed: %r", store.path, exc)
                if self._stopping:
                    break
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + store.prune_interval_s
                try:
                    store.prune()
                except Exception as exc:
                    report_once("logstore-prune", "log store %s: pruning failed: %r", store.path, exc)

    def _drain(self) -> None:
        queue = self._queue
        size = self._batch_size
        while queue:
            batch: list[object] = []
            markers: list[_Flush] = []
            popleft = queue.popleft
            records = 0
            try:
                # Session snapshots ride along without counting: under load every batch then holds
                # exactly ``batch_size`` records, which is one INSERT statement.
                while records < size:
                    item = popleft()
                    if isinstance(item, _Flush):
                        markers.append(item)
                        break  # commit what precedes the marker, then release it
                    batch.append(item)
                    if not isinstance(item, _SessionSnapshot):
                        records += 1
            except IndexError:
                pass
            if batch:
                self._write(batch)
            for marker in markers:
                marker.done.set()

    def _write(self, batch: Sequence[object]) -> None:
        try:
            self._written += self.store.write(batch)
            return
        except sqlite3.OperationalError:
            # "database is locked" after busy_timeout: another process held the write lock for long.
            # Try once more, then give the batch up rather than let the queue grow.
            time.sleep(0.05)
        except Exception as exc:
            self._fail(batch, exc)
            return
        try:
            self._written += self.store.write(batch)
        except Exception as exc:
            self._fail(batch, exc)

    def _fail(self, batch: Sequence[object], exc: BaseException) -> None:
        self._failures += 1
        n = sum(1 for item in batch if not isinstance(item, _SessionSnapshot))
        self._drop("write_failed", n, exc)
