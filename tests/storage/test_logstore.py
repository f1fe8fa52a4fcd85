"""The session log store: what it writes, how its writer behaves, retention, and the queries' plans."""

from __future__ import annotations

import atexit
import io
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import agentuity_logging as al
from agentuity_logging._context import session
from agentuity_logging._internal import problem_counts
from agentuity_logging._spans import span
from agentuity_logging._stamping import SessionContextFilter
from agentuity_logging._storage._logstore import (
    DEFAULT_STORE_PATH,
    ENV_LOG_STORE,
    LogStore,
    LogStoreHandler,
    default_store_path,
    format_us,
    parse_timestamp_us,
)
from tests.forking import child_deadline


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where a test's store lives."""
    return tmp_path / "logs.sqlite3"


@pytest.fixture
def handler(store_path: Path) -> Iterator[LogStoreHandler]:
    """A handler on a fresh store, listening to sessions; closed after the test."""
    h = LogStoreHandler(LogStore(store_path, flush_interval_s=0.05), listen=True)
    h.addFilter(SessionContextFilter())
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def logger(handler: LogStoreHandler) -> Iterator[logging.Logger]:
    """A private stdlib logger writing only to ``handler``."""
    log = logging.getLogger(f"test.logstore.{id(handler)}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)


def reader(path: Path) -> LogStore:
    """A read-only view of the store (close it)."""
    return LogStore(path, readonly=True)


def event(message: str, ts: str = "2026-01-01T00:00:00.000000Z", **fields: Any) -> dict[str, Any]:
    """A schema dict, as the structlog path hands it over."""
    return {"timestamp": ts, "level": "info", "logger": "test", "message": message, **fields}


class TestWriting:
    """What lands in the tables."""

    def test_records_round_trip_in_the_schema(self, handler: LogStoreHandler, logger: logging.Logger) -> None:
        """A stdlib record comes back as the same schema dict: keys, order, values, timestamp text."""
        with session() as s:
            logger.info("charged %s", "card", extra={"amount": 12, "tags": ["a", "b"]})
        assert handler.flush()
        with reader(handler.store.path) as store:
            [(_, got)] = store.session_logs(s.id)
        assert list(got) == [
            "timestamp",
            "level",
            "logger",
            "message",
            "agentuitySessionId",
            "agentuityThreadId",
            "amount",
            "tags",
        ]
        assert got["message"] == "charged card"
        assert got["amount"] == 12
        assert got["tags"] == ["a", "b"]
        assert got["agentuityThreadId"] == s.thread.id

    def test_timestamp_text_is_preserved_exactly(
        self, handler: LogStoreHandler, logger: logging.Logger
    ) -> None:
        """The stored time renders back to exactly the record's timestamp text."""
        from agentuity_logging._records import event_from_record

        seen: list[str] = []

        class Spy(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(event_from_record(record)["timestamp"])

        spy = Spy()
        logger.addHandler(spy)
        try:
            with session() as s:
                for i in range(50):
                    logger.info("tick %d", i)
        finally:
            logger.removeHandler(spy)
        assert handler.flush()
        with reader(handler.store.path) as store:
            assert [e["timestamp"] for _, e in store.session_logs(s.id)] == seen

    def test_structlog_events(self, handler: LogStoreHandler) -> None:
        """Events from the structlog path (``emit_event``) are stored like records."""
        al.configure(stream=io.StringIO(), handlers=[handler])
        with session() as s:
            structlog.get_logger("planner").warning("thinking", steps=3)
        assert handler.flush()
        with reader(handler.store.path) as store:
            [(_, got)] = store.session_logs(s.id)
        assert got["logger"] == "planner"
        assert got["level"] == "warning"
        assert got["steps"] == 3

    def test_running_session_is_listed_then_completed(
        self, handler: LogStoreHandler, logger: logging.Logger
    ) -> None:
        """The start upserts the session (listed while running); the end adds outcome and duration."""
        with session(metadata={"user": "u1"}) as s:
            logger.info("working")
            assert handler.flush()
            with reader(handler.store.path) as store:
                running = store.get_session(s.id)
            assert running is not None
            assert running["endedAt"] is None
            assert running["success"] is None
            s.metadata["outcome"] = "done"
        assert handler.flush()
        with reader(handler.store.path) as store:
            ended = store.get_session(s.id)
        assert ended is not None
        assert ended["success"] is True
        assert ended["durationMs"] > 0
        assert ended["metadata"] == {"user": "u1", "outcome": "done"}

    def test_error_count_counts_error_and_above(
        self, handler: LogStoreHandler, logger: logging.Logger
    ) -> None:
        """``errorCount`` is the number of records at ERROR or CRITICAL in the session."""
        with session() as s:
            logger.warning("w")
            logger.error("e1")
            logger.critical("c")
            logger.info("i")
        with session():
            logger.error("other session")
        assert handler.flush()
        with reader(handler.store.path) as store:
            found = store.get_session(s.id)
        assert found is not None
        assert found["errorCount"] == 2
        assert found["logCount"] == 4
        assert found["levels"] == {"info": 1, "warning": 1, "error": 1, "critical": 1}

    def test_failed_session(self, handler: LogStoreHandler) -> None:
        """A session whose body raised is stored as failed, with the error."""
        with pytest.raises(KeyError), session() as s:
            raise KeyError("missing")
        assert handler.flush()
        with reader(handler.store.path) as store:
            found = store.get_session(s.id)
        assert found is not None
        assert found["success"] is False
        assert found["error"] == "KeyError: 'missing'"

    def test_thread_saved_with_metadata(self, handler: LogStoreHandler) -> None:
        """A session's thread is upserted with its metadata and expiry."""
        with session() as first:
            first.thread.metadata["customer"] = "acme"
        with session(thread_id=first.thread.id):
            pass
        assert handler.flush()
        with reader(handler.store.path) as store:
            thread = store.get_thread(first.thread.id)
            listed = store.list_threads(metadata={"customer": "acme"})
        assert thread is not None
        assert thread["metadata"] == {"customer": "acme"}
        assert len(thread["sessions"]) == 2
        assert thread["expiresAt"] > thread["updatedAt"]
        assert [t["id"] for t in listed] == [first.thread.id]

    def test_spans_land_in_the_spans_table_and_as_records(
        self, handler: LogStoreHandler, logger: logging.Logger
    ) -> None:
        """A finished span is a row in ``spans`` (nesting, status, error, attributes) and a record."""
        span_logger = logging.getLogger("agentuity_logging.span")
        span_logger.addHandler(handler)
        span_logger.setLevel(logging.INFO)
        try:
            with session() as s, span("outer", model="m"), pytest.raises(ValueError), span("inner"):
                raise ValueError("bad")
        finally:
            span_logger.removeHandler(handler)
            span_logger.setLevel(logging.NOTSET)
        assert handler.flush()
        with reader(handler.store.path) as store:
            spans = {sp["name"]: sp for sp in store.session_spans(s.id)}
            records = [e for _, e in store.session_logs(s.id)]
        assert spans["inner"]["parentSpanId"] == spans["outer"]["spanId"]
        assert spans["inner"]["status"] == "error"
        assert spans["inner"]["error"] == {"type": "ValueError", "message": "bad"}
        assert spans["outer"]["attributes"] == {"model": "m"}
        assert spans["outer"]["durationMs"] >= spans["inner"]["durationMs"]
        assert spans["outer"]["start"] <= spans["inner"]["start"]  # RFC 3339 UTC text sorts by time
        assert [r["message"] for r in records] == ["span inner", "span outer"]

    def test_records_without_a_session_listener_still_list_their_session(self, store_path: Path) -> None:
        """A record naming a session the store was never told about creates that session's row."""
        with LogStore(store_path) as store:
            store.write([event("hi", agentuitySessionId="sess_x", agentuityThreadId="thrd_y")])
            found = store.get_session("sess_x")
        assert found is not None
        assert found["threadId"] == "thrd_y"
        assert found["logCount"] == 1

    def test_values_json_cannot_hold_are_rendered(self, store_path: Path) -> None:
        """Bytes, sets and objects in fields are stored as text; nothing is lost, nothing raises."""

        class Thing:
            def __str__(self) -> str:
                return "a thing"

        weird = event(
            "w", agentuitySessionId="sess_w", agentuityThreadId=None, raw=b"\xff", ids={3, 1}, thing=Thing()
        )
        with LogStore(store_path) as store:
            store.write([weird])
            [(_, got)] = store.session_logs("sess_w")
        assert got["ids"] == [1, 3]
        assert got["thing"] == "a thing"
        assert isinstance(got["raw"], str)

    def test_hand_made_events_with_odd_types(self, store_path: Path) -> None:
        """A mapping with a non-text message or logger is stored, not refused."""
        odd = {
            "timestamp": "not a time",
            "level": 5,
            "logger": None,
            "message": {"k": 1},
            "agentuitySessionId": 7,
        }
        with LogStore(store_path) as store:
            assert store.write([odd]) == 1
            [(_, got)] = store.session_logs("7")
        assert got["message"] == '{"k":1}'
        assert got["level"] == "info"


class TestHandler:
    """The background writer: never blocks, never raises, says what it dropped."""

    def test_writer_thread_is_a_named_daemon(self, handler: LogStoreHandler, logger: logging.Logger) -> None:
        """The first record starts one daemon thread with a recognisable name."""
        logger.info("start")
        assert handler.flush()
        thread = handler._thread
        assert thread is not None
        assert thread.daemon
        assert thread.name == "agentuity-logging-logstore"

    def test_full_queue_drops_and_counts(self, store_path: Path) -> None:
        """While the writer is stuck, records beyond ``max_queue`` are dropped and counted, not blocked."""
        h = LogStoreHandler(LogStore(store_path, max_queue=10, batch_size=5))
        try:
            h.emit_event(event("first"))
            assert h.flush()
            with h.store._lock:  # the writer cannot commit while the test holds the store
                start = time.perf_counter()
                for i in range(100):
                    h.emit_event(event(f"e{i}"))
                elapsed = time.perf_counter() - start
                assert not h.flush(timeout=0.2)
            assert h.flush(timeout=5)
            stats = h.stats()
        finally:
            h.close()
        assert elapsed < 0.5
        assert stats["dropped"]["queue_full"] >= 80
        assert stats["written"] + stats["dropped"]["queue_full"] == 101
        assert problem_counts()["logstore-drop:queue_full"] >= 1

    def test_unwritable_store_never_raises(self, tmp_path: Path) -> None:
        """A store that cannot be created: records are dropped and counted, the app goes on."""
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        h = LogStoreHandler(LogStore(blocker / "logs.sqlite3"))
        try:
            h.emit_event(event("lost"))
            with session():
                h.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "lost too", None, None))
            assert h.flush()
            stats = h.stats()
        finally:
            h.close()
        assert stats["dropped"]["write_failed"] == 2
        assert stats["failed_batches"] >= 1

    def test_after_close_records_are_dropped_quietly(self, store_path: Path) -> None:
        """Logging to a closed handler neither raises nor writes."""
        h = LogStoreHandler(LogStore(store_path))
        h.emit_event(event("kept"))
        h.close()
        h.emit_event(event("too late"))
        assert h.stats()["dropped"]["closed"] == 1
        with reader(store_path) as store:
            assert [e["message"] for _, e in store.logs_after(0)] == ["kept"]

    def test_close_is_idempotent_and_unregisters_atexit(
        self, store_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``close()`` twice is fine; the atexit hook registered at start is removed."""
        registered: list[Any] = []
        unregistered: list[Any] = []
        monkeypatch.setattr(atexit, "register", registered.append)
        monkeypatch.setattr(atexit, "unregister", unregistered.append)
        h = LogStoreHandler(LogStore(store_path))
        h.emit_event(event("x"))
        h.close()
        h.close()
        assert len(registered) == 1
        assert unregistered == registered

    def test_close_removes_the_session_listener(self, store_path: Path) -> None:
        """A closed handler is no longer told about sessions."""
        h = LogStoreHandler(LogStore(store_path), listen=True)
        with session():
            pass
        assert h.flush()
        h.close()
        with session():  # a listener still registered would count this as dropped ("closed")
            pass
        assert h.stats()["dropped"] == {}

    def test_internal_records_are_ignored(self, handler: LogStoreHandler) -> None:
        """Records of the package's own diagnostics logger never reach the store."""
        internal = logging.LogRecord(
            "agentuity_logging.internal", logging.WARNING, __file__, 1, "x", None, None
        )
        handler.handle(internal)
        assert handler.flush()
        assert handler.stats()["written"] == 0

    def test_arguments_are_rendered_at_call_time(
        self, handler: LogStoreHandler, logger: logging.Logger
    ) -> None:
        """A mutable %-argument changed after the call does not change the stored message."""
        items = ["a"]
        logger.info("items %s", items)
        items.append("b")
        assert handler.flush()
        with reader(handler.store.path) as store:
            assert [e["message"] for _, e in store.logs_after(0)] == ["items ['a']"]

    def test_concurrent_threads(self, handler: LogStoreHandler, logger: logging.Logger) -> None:
        """Eight threads logging at once: every record stored once, each with its own session."""

        def work(n: int) -> None:
            with session():
                for i in range(200):
                    logger.info("t%d r%d", n, i)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert handler.flush()
        with reader(handler.store.path) as store:
            sessions = store.list_sessions(count=None)
            assert sorted(s["logCount"] for s in sessions) == [200] * 8
            for s in sessions:
                messages = [e["message"] for _, e in store.session_logs(s["id"])]
                n = messages[0].split()[0]
                assert messages == [f"{n} r{i}" for i in range(200)]


class TestFork:
    """A forked child writes its own records and never the parent's."""

    @pytest.mark.forks
    @pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads running
    def test_child_starts_fresh(self, handler: LogStoreHandler) -> None:
        """Queued parent records are written once (by the parent); the child's by the child."""
        handler.emit_event(event("parent before fork"))
        assert handler.flush()
        with handler.store._lock:  # park the parent's writer with records in its queue
            for i in range(3):
                handler.emit_event(event(f"parent queued {i}"))
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    child_deadline()
                    handler.emit_event(event("child"))
                    code = 0 if handler.flush(10) and handler.stats()["written"] == 1 else 3
                finally:
                    os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert handler.flush()
        with reader(handler.store.path) as store:
            found = sorted(e["message"] for _, e in store.logs_after(0))
        assert found == [
            "child",
            "parent before fork",
            "parent queued 0",
            "parent queued 1",
            "parent queued 2",
        ]


class TestRetention:
    """Old and excess records go away; the app never notices."""

    def test_age(self, store_path: Path) -> None:
        """Records, spans and ended sessions older than ``retention_days`` are deleted."""
        now = time.time()
        old = format_us(int((now - 10 * 86400) * 1_000_000))
        new = format_us(int(now * 1_000_000))
        with LogStore(store_path, retention_days=7) as store:
            store.write(
                [
                    event("old", ts=old, agentuitySessionId="sess_old"),
                    event("new", ts=new, agentuitySessionId="sess_new"),
                ]
            )
            deleted = store.prune()
            remaining = [e["message"] for _, e in store.logs_after(0)]
            sessions = [s["id"] for s in store.list_sessions()]
        assert deleted == 1
        assert remaining == ["new"]
        assert sessions == ["sess_new"]

    def test_size(self, store_path: Path) -> None:
        """Past ``max_bytes`` the oldest records go until the data fits (and the file shrinks)."""
        limit = 400_000
        with LogStore(store_path, max_bytes=limit, retention_days=None) as store:
            stamp = format_us(int(time.time() * 1_000_000))
            for batch in range(10):
                store.write([event(f"b{batch} r{i}", ts=stamp, payload="x" * 200) for i in range(1000)])
            assert store.used_bytes() > limit
            store.prune()
            assert store.used_bytes() <= limit
            remaining = [e["message"] for _, e in store.logs_after(0, limit=100_000)]
        assert remaining[-1] == "b9 r999"
        assert not any(m.startswith("b0 ") for m in remaining)
        assert os.path.getsize(store_path) < 10 * limit

    def test_writer_prunes_periodically(self, store_path: Path) -> None:
        """The writer thread applies retention on its own schedule."""
        old = format_us(int((time.time() - 30 * 86400) * 1_000_000))
        h = LogStoreHandler(LogStore(store_path, retention_days=1, prune_interval_s=0.1))
        try:
            h.emit_event(event("ancient", ts=old))
            assert h.flush()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with reader(store_path) as store:
                    if not store.logs_after(0):
                        break
                time.sleep(0.1)
            else:
                pytest.fail("the writer never pruned")
        finally:
            h.close()


class TestQueries:
    """The CLI's queries use the indexes."""

    def test_session_logs_plan_uses_the_session_index(self, store_path: Path) -> None:
        """``EXPLAIN QUERY PLAN`` of ``session logs`` is a search of ``logs_by_session``."""
        with LogStore(store_path) as store:
            store.write([event("x", agentuitySessionId="sess_a")])
            plan = store.session_logs_plan("sess_a")
        assert any("USING INDEX logs_by_session" in line for line in plan)
        assert not any(line.startswith("SCAN logs") for line in plan)

    @pytest.mark.parametrize(
        ("sql", "index"),
        [
            ("SELECT * FROM sessions WHERE thread_id = 'x' ORDER BY started_at", "sessions_by_thread"),
            ("SELECT * FROM sessions ORDER BY started_at DESC LIMIT 20", "sessions_by_start"),
            (
                "SELECT session_key FROM session_metadata WHERE key = 'k' AND value = 'v'",
                "session_metadata_by_value",
            ),
            ("SELECT * FROM spans WHERE session_key = 1 ORDER BY start", "spans_by_session"),
        ],
    )
    def test_listing_queries_use_indexes(self, store_path: Path, sql: str, index: str) -> None:
        """The listing and filtering queries are index searches too."""
        with LogStore(store_path) as store:
            store.write([event("x", agentuitySessionId="sess_a")])
            plan = [str(row[-1]) for row in store.connection().execute(f"EXPLAIN QUERY PLAN {sql}")]
        assert any(index in line for line in plan), plan

    def test_readonly_store_does_not_create_files(self, tmp_path: Path) -> None:
        """Reading a store that is not there raises and creates nothing."""
        with pytest.raises(FileNotFoundError):
            LogStore(tmp_path / "absent.sqlite3", readonly=True)
        assert list(tmp_path.iterdir()) == []

    def test_readonly_store_cannot_write(self, store_path: Path) -> None:
        """A read-only store refuses writes."""
        with LogStore(store_path) as store:
            store.write([event("x")])
        with reader(store_path) as store, pytest.raises(sqlite3.OperationalError):
            store.connection().execute("DELETE FROM logs")


class TestSettings:
    """Where the store lives and what it accepts."""

    def test_default_path(self) -> None:
        """Without the variable: ``./.agentuity/logs.sqlite3``, made absolute."""
        assert default_store_path({}) == Path(DEFAULT_STORE_PATH).absolute()
        assert Path(DEFAULT_STORE_PATH) == Path(".agentuity") / "logs.sqlite3"

    def test_environment_variable(self, tmp_path: Path) -> None:
        """``AGENTUITY_LOG_STORE`` names the file."""
        assert default_store_path({ENV_LOG_STORE: str(tmp_path / "x.db")}) == tmp_path / "x.db"

    @pytest.mark.parametrize(
        "option", ["batch_size", "max_queue", "flush_interval_s", "retention_days", "max_bytes"]
    )
    def test_bad_settings_raise(self, store_path: Path, option: str) -> None:
        """Non-positive sizes and intervals are refused when the store is made."""
        with pytest.raises(ValueError, match=option):
            LogStore(store_path, **{option: 0})  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2026-01-02T03:04:05.123456Z", 1767323045123456),
            ("2026-01-02T03:04:05.123Z", 1767323045123000),
            ("2026-01-02T03:04:05+00:00", 1767323045000000),
            ("2026-01-02T04:04:05.5+01:00", 1767323045500000),
            (1767323045.25, 1767323045250000),
            (1767323045250, 1767323045250000),
            ("garbage", None),
        ],
    )
    def test_parse_timestamp(self, text: object, expected: int | None) -> None:
        """Timestamps in the forms backends use parse to microseconds."""
        assert parse_timestamp_us(text) == expected

    def test_format_round_trip(self) -> None:
        """``format_us`` and ``parse_timestamp_us`` are inverses."""
        assert parse_timestamp_us(format_us(1767323045123456)) == 1767323045123456
