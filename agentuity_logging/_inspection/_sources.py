"""Where the CLI reads sessions from: one :class:`Source` interface, three implementations.

Every source answers in the same JSON-ready shapes, so the commands and their output never depend on
where the data lives:

* a **session** ``{"id", "threadId", "startedAt", "endedAt", "durationMs", "success", "error",
  "errorCount", "logCount", "metadata"}`` (``session get`` adds ``levels``, ``thread``, ``spans`` and
  ``events``);
* a **thread** ``{"id", "createdAt", "updatedAt", "expiresAt", "expired", "metadata", "sessionCount"}``
  (``thread get`` adds ``sessions`` in order, and ``stateKeys``);
* a **record**: the log schema dict (``timestamp``, ``level``, ``logger``, ``message``, IDs, fields).

``local`` reads the SQLite session log store. The remote sources (Loki, Datadog) only hold log records,
so :class:`RecordSource` derives sessions and threads from them by grouping on ``agentuitySessionId``
and ``agentuityThreadId``: a session starts at its first record and ends at its last, it failed when one
of its root spans failed (or, without spans, when it logged an error), and it has no metadata.
"""

from __future__ import annotations

import abc
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from agentuity_logging._records import SESSION_KEY, SPAN_KEY, THREAD_KEY
from agentuity_logging._storage._logstore import (
    LEVEL_NUMBERS,
    SPAN_LOGGER_NAME,
    LogStore,
    default_store_path,
    format_us,
    index_value,
    parse_timestamp_us,
)

__all__ = [
    "EVENT_LIMIT",
    "NotFoundError",
    "Progress",
    "RecordFilter",
    "RecordSource",
    "SessionQuery",
    "Source",
    "SourceError",
    "SourceOptions",
    "UsageError",
    "derive_sessions",
    "open_source",
]

#: ``session get`` lists at most this many records on its timeline (``session logs`` has them all).
EVENT_LIMIT: Final = 1000
_US: Final = 1_000_000

#: Called by remote sources as records arrive (the CLI shows it as progress on a terminal).
Progress = Callable[[int], None]


class SourceError(Exception):
    """The source could not answer: a backend down, credentials refused, a store unreadable (exit 3)."""


def remote_json(
    send: Callable[[], Any], *, backend: str, where: str, refused: str, detail: Callable[[Any], str]
) -> Any:
    """Send one request to a remote backend and return its JSON answer, or raise :class:`SourceError`.

    One clear line for each way it can fail: unreachable, credentials refused (401/403), another
    status, an answer that is not JSON. ``detail`` renders the error body; no URL secret is shown.
    """
    import httpx

    try:
        response = send()
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot reach {backend} at {where}: {exc or type(exc).__name__}") from None
    if response.status_code in (401, 403):
        raise SourceError(
            f"{backend} at {where} refused {refused} (HTTP {response.status_code}): {detail(response)}"
        )
    if response.status_code != 200:
        raise SourceError(f"{backend} at {where} answered HTTP {response.status_code}: {detail(response)}")
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise SourceError(f"{backend} at {where} answered with something that is not JSON") from None


class UsageError(Exception):
    """The source options do not fit together (a missing URL or key): a usage error (exit 2)."""


class NotFoundError(Exception):
    """Nothing to read at all (no store file): treated like "not found" (exit 1)."""


@dataclass
class SourceOptions:
    """Every source option of every subcommand (``--source``, ``--store``, ``--loki-*``, ``--dd-*``)."""

    source: str = "local"
    store: Path | None = None
    loki_url: str | None = None
    loki_selector: str = '{level=~".+"}'
    loki_tenant: str | None = None
    loki_user: str | None = None
    loki_password: str | None = None
    dd_site: str = "datadoghq.com"
    dd_url: str | None = None
    dd_api_key: str | None = None
    dd_app_key: str | None = None
    since_s: float = 86_400.0
    timeout_s: float = 30.0
    max_records: int = 200_000
    #: Called (once) when a follow command waits for the local store file to appear.
    wait_for_store: Callable[[Path], None] | None = None


@dataclass
class SessionQuery:
    """``session list`` filters."""

    count: int | None = 20
    thread_id: str | None = None
    success: bool | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    started_after_us: int | None = None
    started_before_us: int | None = None


@dataclass(frozen=True)
class RecordFilter:
    """What a remote query selects: one session, one thread, any session's records, or everything."""

    session_id: str | None = None
    thread_id: str | None = None
    any_session: bool = False
    any_thread: bool = False


class Source(abc.ABC):
    """One place sessions and their records can be read from."""

    name: str = "?"
    #: Where the data is, for messages (a path or a URL without credentials).
    where: str = "?"

    @abc.abstractmethod
    def list_sessions(self, query: SessionQuery, progress: Progress | None = None) -> list[dict[str, Any]]:
        """Return sessions matching ``query``, newest first."""

    @abc.abstractmethod
    def get_session(self, session_id: str, progress: Progress | None = None) -> dict[str, Any] | None:
        """Return one session with ``levels``, ``thread``, ``spans`` and ``events``, or ``None``."""

    @abc.abstractmethod
    def session_logs(
        self, session_id: str, min_level: int = 0, progress: Progress | None = None
    ) -> list[dict[str, Any]] | None:
        """Return the session's records in order, or ``None`` when the session is unknown."""

    @abc.abstractmethod
    def follow(
        self,
        session_id: str | None,
        min_level: int = 0,
        *,
        interval_s: float = 0.5,
        after_session_end: bool = False,
        skip_existing: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Yield new records as they arrive, forever (or, with ``after_session_end``, until it ends)."""

    @abc.abstractmethod
    def list_threads(
        self, count: int | None, metadata: Mapping[str, str], progress: Progress | None = None
    ) -> list[dict[str, Any]]:
        """Return threads, most recently active first."""

    @abc.abstractmethod
    def get_thread(self, thread_id: str, progress: Progress | None = None) -> dict[str, Any] | None:
        """Return one thread with its ``sessions`` in order, or ``None``."""

    def close(self) -> None:  # noqa: B027 - only sources holding resources override it
        """Release connections."""


# --- local: the SQLite store ---------------------------------------------------------------------------


class LocalSource(Source):
    """The session log store (``--store``, ``AGENTUITY_LOG_STORE`` or ``./.agentuity/logs.sqlite3``)."""

    name = "local"

    def __init__(self, path: Path | None, *, wait: Callable[[Path], None] | None = None) -> None:
        self.path = path if path is not None else default_store_path()
        self.where = str(self.path)
        if wait is not None and not self.path.exists():
            # Following an app that has not written yet: wait for its store like ``tail -F``.
            wait(self.path)
            while not self.path.exists():
                time.sleep(0.25)
        try:
            self.store = LogStore(self.path, readonly=True)
        except FileNotFoundError:
            raise NotFoundError(
                f"no log store at {self.path} (run the app with configure(store=...) or "
                "AGENTUITY_LOG_STORE set, or pass --store PATH)"
            ) from None

    def _guard(self, fn: Callable[[], Any]) -> Any:
        import sqlite3

        try:
            return fn()
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"cannot read the log store {self.path}: {exc}") from None

    def list_sessions(self, query: SessionQuery, progress: Progress | None = None) -> list[dict[str, Any]]:
        """Return sessions matching ``query`` from the store's indexes."""
        return self._guard(  # type: ignore[no-any-return]
            lambda: self.store.list_sessions(
                count=query.count,
                thread_id=query.thread_id,
                success=query.success,
                metadata=query.metadata,
                started_after_us=query.started_after_us,
                started_before_us=query.started_before_us,
            )
        )

    def get_session(self, session_id: str, progress: Progress | None = None) -> dict[str, Any] | None:
        """Return the session row with its level counts, thread, spans and first records."""

        def read() -> dict[str, Any] | None:
            found = self.store.get_session(session_id)
            if found is None:
                return None
            thread = (
                self.store.get_thread(found["threadId"], with_sessions=False) if found["threadId"] else None
            )
            if thread is not None:
                thread.pop("sessions", None)
            found["thread"] = thread
            found["spans"] = self.store.session_spans(session_id)
            events = self.store.session_logs(session_id, limit=EVENT_LIMIT + 1)
            found["events"] = [_timeline_event(e) for _, e in events[:EVENT_LIMIT]]
            found["eventsTruncated"] = len(events) > EVENT_LIMIT
            return found

        return self._guard(read)  # type: ignore[no-any-return]

    def session_logs(
        self, session_id: str, min_level: int = 0, progress: Progress | None = None
    ) -> list[dict[str, Any]] | None:
        """Return the session's records (one index range scan)."""

        def read() -> list[dict[str, Any]] | None:
            records = self.store.session_logs(session_id, min_level=min_level)
            if not records and self.store.get_session(session_id) is None:
                return None
            return [event for _, event in records]

        return self._guard(read)  # type: ignore[no-any-return]

    def follow(
        self,
        session_id: str | None,
        min_level: int = 0,
        *,
        interval_s: float = 0.5,
        after_session_end: bool = False,
        skip_existing: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Poll the store for records with a higher id than the last one seen."""
        store = self.store
        last: int = self._guard(store.last_log_id) if skip_existing else 0

        def newer(after: int) -> list[tuple[int, dict[str, Any]]]:
            return self._guard(  # type: ignore[no-any-return]
                lambda: store.logs_after(after, session_id=session_id, min_level=min_level)
            )

        while True:
            batch = newer(last)
            for row_id, event in batch:
                last = row_id
                yield event
            if len(batch) >= 1000:
                continue
            if after_session_end and session_id is not None:
                found = self._guard(lambda: store.get_session(session_id))
                if found is not None and found["endedAt"] is not None:
                    # One more read: records logged just before the end may have landed meanwhile.
                    for row_id, event in newer(last):
                        last = row_id
                        yield event
                    return
            time.sleep(interval_s)

    def list_threads(
        self, count: int | None, metadata: Mapping[str, str], progress: Progress | None = None
    ) -> list[dict[str, Any]]:
        """Return threads from the store, most recently updated first."""
        return self._guard(  # type: ignore[no-any-return]
            lambda: self.store.list_threads(count=count, metadata=metadata)
        )

    def get_thread(self, thread_id: str, progress: Progress | None = None) -> dict[str, Any] | None:
        """Return the thread row with its sessions, oldest first."""
        return self._guard(lambda: self.store.get_thread(thread_id))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the store."""
        self.store.close()


def _timeline_event(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "timestamp": event.get("timestamp"),
        "level": event.get("level"),
        "logger": event.get("logger"),
        "message": event.get("message"),
        "spanId": event.get(SPAN_KEY),
    }


# --- remote: sessions derived from records ----------------------------------------------------------


@dataclass
class _Aggregate:
    id: str
    thread_id: str | None = None
    first_us: int | None = None
    last_us: int | None = None
    count: int = 0
    errors: int = 0
    first_error: str | None = None
    levels: Counter[str] = field(default_factory=Counter)
    root_failed: bool | None = None
    root_error: str | None = None
    fields: dict[str, set[str]] = field(default_factory=dict)

    def add(self, event: Mapping[str, Any], ts: int | None) -> None:
        self.count += 1
        if self.thread_id is None and isinstance(event.get(THREAD_KEY), str):
            self.thread_id = event[THREAD_KEY]
        if ts is not None:
            self.first_us = ts if self.first_us is None else min(self.first_us, ts)
            self.last_us = ts if self.last_us is None else max(self.last_us, ts)
        level = str(event.get("level") or "info")
        self.levels[level] += 1
        if LEVEL_NUMBERS.get(level, 20) >= 40:
            self.errors += 1
            if self.first_error is None:
                self.first_error = str(event.get("message", ""))
        if event.get("logger") == SPAN_LOGGER_NAME and not event.get("parentSpanId"):
            failed = _span_status(event) == "error"
            self.root_failed = failed or bool(self.root_failed)
            if failed and self.root_error is None:
                error = event.get("error")
                self.root_error = (
                    f"{str(error.get('type')).rsplit('.', 1)[-1]}: {error.get('message')}"
                    if isinstance(error, Mapping)
                    else str(event.get("name", "span"))
                )
        for key, value in event.items():
            text = index_value(value)
            if text is not None and len(self.fields) < 256:
                self.fields.setdefault(key, set()).add(text)

    def session(self) -> dict[str, Any]:
        success = not self.root_failed if self.root_failed is not None else self.errors == 0
        duration = None
        if self.first_us is not None and self.last_us is not None:
            duration = (self.last_us - self.first_us) / 1000.0
        return {
            "id": self.id,
            "threadId": self.thread_id,
            "startedAt": None if self.first_us is None else format_us(self.first_us),
            "endedAt": None if self.last_us is None else format_us(self.last_us),
            "durationMs": duration,
            "success": success,
            "error": None if success else (self.root_error or self.first_error),
            "errorCount": self.errors,
            "logCount": self.count,
            "metadata": {},
        }


def _span_status(event: Mapping[str, Any]) -> str:
    """A span record's status. Datadog's intake owns the ``status`` attribute (it holds the level
    there), so when the span's own is missing the record's level and ``error`` tell it."""
    status = event.get("status")
    if status in ("ok", "error"):
        return str(status)
    return "error" if event.get("error") or _level_of(event) >= 40 else "ok"


def derive_sessions(events: Iterable[Mapping[str, Any]]) -> dict[str, _Aggregate]:
    """Group records by session ID (records without one are skipped)."""
    sessions: dict[str, _Aggregate] = {}
    for event in events:
        sid = event.get(SESSION_KEY)
        if not isinstance(sid, str):
            continue
        agg = sessions.get(sid)
        if agg is None:
            agg = sessions[sid] = _Aggregate(sid)
        agg.add(event, parse_timestamp_us(event.get("timestamp")))
    return sessions


def _thread_of(thread_id: str, sessions: list[dict[str, Any]]) -> dict[str, Any]:
    starts = [s["startedAt"] for s in sessions if s["startedAt"]]
    ends = [s["endedAt"] or s["startedAt"] for s in sessions if s["endedAt"] or s["startedAt"]]
    return {
        "id": thread_id,
        "createdAt": min(starts) if starts else None,
        "updatedAt": max(ends) if ends else None,
        "expiresAt": None,
        "expired": None,
        "metadata": {},
        "sessionCount": len(sessions),
    }


def _span_of(event: Mapping[str, Any]) -> dict[str, Any]:
    attributes = {
        k: v
        for k, v in event.items()
        if k
        not in {
            "timestamp",
            "level",
            "logger",
            "message",
            SESSION_KEY,
            THREAD_KEY,
            SPAN_KEY,
            "parentSpanId",
            "name",
            "start",
            "end",
            "durationMs",
            "status",
            "error",
            "service",
        }
    }
    return {
        "spanId": event.get(SPAN_KEY),
        "parentSpanId": event.get("parentSpanId"),
        "name": event.get("name"),
        "start": event.get("start"),
        "end": event.get("end"),
        "durationMs": event.get("durationMs"),
        "status": _span_status(event),
        "error": event.get("error"),
        "attributes": attributes,
    }


def _sort_key(event: Mapping[str, Any]) -> int:
    ts = parse_timestamp_us(event.get("timestamp"))
    return 0 if ts is None else ts


class RecordSource(Source):
    """A source that only stores log records (Loki, Datadog): sessions and threads are derived.

    Subclasses implement :meth:`fetch`; everything else is done here, once, for both backends.
    """

    def __init__(self, options: SourceOptions) -> None:
        self.options = options
        #: Set when the backend said its answer is incomplete (the CLI prints a warning).
        self.partial: str | None = None

    @abc.abstractmethod
    def fetch(
        self,
        what: RecordFilter,
        start_us: int,
        end_us: int,
        progress: Progress | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Return the records ``what`` selects between ``start_us`` and ``end_us``, oldest first."""

    def _window(self) -> tuple[int, int]:
        now = int(time.time() * _US)
        return now - int(self.options.since_s * _US), now + _US

    def _records(self, what: RecordFilter, progress: Progress | None) -> list[dict[str, Any]]:
        start, end = self._window()
        records = self.fetch(what, start, end, progress, self.options.max_records)
        records.sort(key=_sort_key)
        return records

    def list_sessions(self, query: SessionQuery, progress: Progress | None = None) -> list[dict[str, Any]]:
        """Derive sessions from every record carrying a session ID in the window."""
        what = (
            RecordFilter(thread_id=query.thread_id)
            if query.thread_id is not None
            else RecordFilter(any_session=True)
        )
        aggregates = derive_sessions(self._records(what, progress))
        found = []
        for agg in aggregates.values():
            session = agg.session()
            if query.success is not None and session["success"] is not query.success:
                continue
            started = agg.first_us
            if query.started_after_us is not None and (started is None or started <= query.started_after_us):
                continue
            if query.started_before_us is not None and (
                started is None or started >= query.started_before_us
            ):
                continue
            # Remote records carry no session metadata: --metadata k=v matches the records' fields.
            if any(value not in agg.fields.get(key, ()) for key, value in query.metadata.items()):
                continue
            found.append(session)
        # Aggregates come in order of their first record (records are sorted by time, stably), which
        # is start order; ties at the backend's precision keep the backend's order instead of IDs'.
        found.reverse()
        return found if query.count is None else found[: query.count]

    def get_session(self, session_id: str, progress: Progress | None = None) -> dict[str, Any] | None:
        """Derive the session from its records."""
        records = self._records(RecordFilter(session_id=session_id), progress)
        aggregates = derive_sessions(records)
        agg = aggregates.get(session_id)
        if agg is None:
            return None
        session = agg.session()
        session["levels"] = dict(
            sorted(agg.levels.items(), key=lambda kv: (LEVEL_NUMBERS.get(kv[0], 20), kv[0]))
        )
        session["thread"] = (
            None
            if agg.thread_id is None
            else {
                "id": agg.thread_id,
                "createdAt": None,
                "updatedAt": None,
                "expiresAt": None,
                "expired": None,
                "metadata": {},
                "sessionCount": None,
            }
        )
        spans = [_span_of(e) for e in records if e.get("logger") == SPAN_LOGGER_NAME and e.get(SPAN_KEY)]
        spans.sort(key=lambda s: parse_timestamp_us(s.get("start")) or 0)
        session["spans"] = spans
        session["events"] = [_timeline_event(e) for e in records[:EVENT_LIMIT]]
        session["eventsTruncated"] = len(records) > EVENT_LIMIT
        return session

    def session_logs(
        self, session_id: str, min_level: int = 0, progress: Progress | None = None
    ) -> list[dict[str, Any]] | None:
        """Return the session's records (filtered by level here: both backends index it differently)."""
        records = self._records(RecordFilter(session_id=session_id), progress)
        if not records:
            return None
        return [e for e in records if _level_of(e) >= min_level]

    def follow(
        self,
        session_id: str | None,
        min_level: int = 0,
        *,
        interval_s: float = 2.0,
        after_session_end: bool = False,
        skip_existing: bool = True,
    ) -> Iterator[dict[str, Any]]:
        """Re-query from the newest timestamp seen, dropping records already yielded."""
        what = RecordFilter(session_id=session_id) if session_id is not None else RecordFilter()
        now = int(time.time() * _US)
        since = now if skip_existing else self._window()[0]
        seen: set[str] = set()
        interval_s = max(interval_s, 1.0)  # remote APIs are rate limited: poll gently
        while True:
            end = int(time.time() * _US) + _US
            records = self.fetch(what, since, end, None, 5000)
            records.sort(key=_sort_key)
            newest = since
            fresh: set[str] = set()
            for event in records:
                ts = parse_timestamp_us(event.get("timestamp")) or since
                identity = f"{ts}\x00{event.get('message')}\x00{event.get('logger')}\x00{event.get(SPAN_KEY)}"
                if ts >= newest:
                    if ts > newest:
                        fresh = set()
                    newest = ts
                    fresh.add(identity)
                if identity in seen:
                    continue
                seen.add(identity)
                if _level_of(event) >= min_level:
                    yield event
            # Keep only the identities at the newest timestamp: the next query starts there.
            seen = fresh
            since = newest
            time.sleep(interval_s)

    def list_threads(
        self, count: int | None, metadata: Mapping[str, str], progress: Progress | None = None
    ) -> list[dict[str, Any]]:
        """Derive threads from the sessions of every record carrying a thread ID in the window."""
        aggregates = derive_sessions(self._records(RecordFilter(any_thread=True), progress))
        by_thread: dict[str, list[dict[str, Any]]] = {}
        latest: dict[str, int] = {}
        for position, agg in enumerate(aggregates.values()):
            if agg.thread_id is None:
                continue
            if any(value not in agg.fields.get(key, ()) for key, value in metadata.items()):
                continue
            by_thread.setdefault(agg.thread_id, []).append(agg.session())
            latest[agg.thread_id] = position
        threads = [_thread_of(tid, sessions) for tid, sessions in by_thread.items()]
        # Most recent activity first; at equal times the thread whose session started last.
        threads.sort(key=lambda t: (t["updatedAt"] or "", latest[t["id"]]), reverse=True)
        return threads if count is None else threads[:count]

    def get_thread(self, thread_id: str, progress: Progress | None = None) -> dict[str, Any] | None:
        """Derive the thread and its sessions from its records."""
        aggregates = derive_sessions(self._records(RecordFilter(thread_id=thread_id), progress))
        sessions = [agg.session() for agg in aggregates.values()]  # in start order
        if not sessions:
            return None
        thread = _thread_of(thread_id, sessions)
        thread["sessions"] = sessions
        return thread


def _level_of(event: Mapping[str, Any]) -> int:
    level = event.get("level")
    return LEVEL_NUMBERS.get(level, 20) if isinstance(level, str) else 20


def open_source(options: SourceOptions) -> Source:
    """Return the source ``options.source`` names.

    Raises:
        UsageError: options missing for that source (a URL, keys).
        NotFoundError: the local store file does not exist.
        MissingDependencyError: a remote source without ``httpx``.
    """
    if options.source == "local":
        return LocalSource(options.store, wait=options.wait_for_store)
    if options.source == "loki":
        from agentuity_logging._inspection._loki import LokiSource

        return LokiSource(options)
    if options.source == "datadog":
        from agentuity_logging._inspection._datadog import DatadogSource

        return DatadogSource(options)
    raise UsageError(f"unknown source {options.source!r}; expected local, loki or datadog")
