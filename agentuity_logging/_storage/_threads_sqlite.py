"""The SQLite thread store: one host, many processes, one file.

WAL mode lets readers run beside the one writer; every write is a ``BEGIN IMMEDIATE`` transaction, which
takes the write lock before reading the version it compares, so compare-and-set is atomic across
processes; ``busy_timeout`` makes a writer wait for the lock instead of failing. Each OS thread gets its
own connection (SQLite connections must not be shared between threads mid-transaction), and a forked
child opens its own instead of touching the parent's.

Metadata is indexed in ``thread_record_metadata (thread_id, key, value)`` with an index on
``(key, value)``; state is a sealed BLOB. The table names avoid ``threads``, so the file may be shared
with the session log store.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

from agentuity_logging._context import DEFAULT_THREAD_TTL_S
from agentuity_logging._storage._crypto import Keyring
from agentuity_logging._storage._threads import Record, ThreadStore, ThreadStoreError, successor

__all__ = ["SQLiteThreadStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS thread_records (
    thread_id  TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    metadata   TEXT NOT NULL,
    state      BLOB
);
CREATE INDEX IF NOT EXISTS thread_records_expires ON thread_records (expires_at);
CREATE INDEX IF NOT EXISTS thread_records_updated ON thread_records (updated_at);
CREATE TABLE IF NOT EXISTS thread_record_metadata (
    thread_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    PRIMARY KEY (thread_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS thread_record_metadata_kv ON thread_record_metadata (key, value);
"""
_SELECT: Final = (
    "SELECT thread_id, version, created_at, updated_at, expires_at, metadata, state FROM thread_records"
)
# Sweep expired rows every this many writes of this store object (and on demand with prune()).
_PRUNE_EVERY_WRITES: Final = 256


def _record(row: tuple[str, int, float, float, float, str, bytes | None]) -> Record:
    return Record(
        thread_id=row[0],
        version=row[1],
        created_at=row[2],
        updated_at=row[3],
        expires_at=row[4],
        metadata=row[5].encode("utf-8"),
        state=row[6],
    )


class SQLiteThreadStore(ThreadStore):
    """Thread records in a SQLite file (see :class:`ThreadStore` for the contract).

    Args:
        path: the database file (created with its directory's permissions; keep it private).
        keyring: seals state; ``None`` allows metadata-only access (listing, the CLI).
        ttl_s: how long a thread lives after its last save.
        busy_timeout_ms: how long a writer waits for another process's write lock.
        clock: epoch seconds now (tests freeze it).

    Raises:
        ThreadStoreError: the file cannot be opened or is not a database.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keyring: Keyring | None = None,
        ttl_s: float = DEFAULT_THREAD_TTL_S,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(keyring=keyring, ttl_s=ttl_s, clock=clock)
        self.path = os.fspath(path)
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: builtins.list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._closed = False
        self._writes = 0
        # Statement by statement inside one write transaction: executescript() would commit it early.
        with self._transaction() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly our block.
        # check_same_thread=False only so close() may close it from another thread; it is used by one.
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000.0,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise ThreadStoreError(f"the SQLite thread store {self.path!r} is closed")
        pid = os.getpid()
        if pid != self._pid:
            # Forked: the parent's connections are not ours to use or close (closing them here could
            # release the parent's locks); forget them and start over in this process. The lock is
            # replaced, not taken: another parent thread may have held it at the fork.
            self._lock = threading.Lock()
            self._connections = []
            self._local = threading.local()
            self._pid = pid
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock before the first read."""
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ThreadStoreError(f"SQLite thread store {self.path!r}: {exc}") from exc

    def _read(self, thread_id: str) -> Record | None:
        try:
            row = self._conn().execute(_SELECT + " WHERE thread_id = ?", (thread_id,)).fetchone()
        except sqlite3.Error as exc:
            raise ThreadStoreError(f"SQLite thread store {self.path!r}: {exc}") from exc
        return None if row is None else _record(row)

    def _write(
        self,
        thread_id: str,
        *,
        expected_version: int,
        now: float,
        expires_at: float,
        metadata: bytes,
        index: builtins.list[tuple[str, str]],
        state: bytes | None,
    ) -> Record | None:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT version, created_at, expires_at FROM thread_records WHERE thread_id = ?",
                (thread_id,),
            ).fetchone()
            record = successor(
                thread_id,
                None if row is None else (row[0], row[1], row[2]),
                expected_version=expected_version,
                now=now,
                expires_at=expires_at,
                metadata=metadata,
                state=state,
            )
            if record is None:
                return None
            conn.execute(
                "INSERT OR REPLACE INTO thread_records"
                " (thread_id, version, created_at, updated_at, expires_at, metadata, state)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    thread_id,
                    record.version,
                    record.created_at,
                    now,
                    expires_at,
                    metadata.decode("utf-8"),
                    state,
                ),
            )
            conn.execute("DELETE FROM thread_record_metadata WHERE thread_id = ?", (thread_id,))
            conn.executemany(
                "INSERT INTO thread_record_metadata (thread_id, key, value) VALUES (?, ?, ?)",
                [(thread_id, k, v) for k, v in index],
            )
            self._writes += 1
            if self._writes % _PRUNE_EVERY_WRITES == 0:
                self._prune_in(conn, now)
            return record

    def _remove(self, thread_id: str, now: float) -> bool:
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT expires_at FROM thread_records WHERE thread_id = ?", (thread_id,)
            ).fetchone()
            conn.execute("DELETE FROM thread_records WHERE thread_id = ?", (thread_id,))
            conn.execute("DELETE FROM thread_record_metadata WHERE thread_id = ?", (thread_id,))
            return row is not None and row[0] > now

    def _query(
        self, filters: builtins.list[tuple[str, str]], limit: int, now: float
    ) -> builtins.list[Record]:
        sql = _SELECT + " AS r WHERE r.expires_at > ?"
        params: builtins.list[object] = [now]
        for key, value in filters:
            # One indexed EXISTS per filter: each is a lookup on (key, value) then the primary key.
            sql += (
                " AND EXISTS (SELECT 1 FROM thread_record_metadata AS m"
                " WHERE m.key = ? AND m.value = ? AND m.thread_id = r.thread_id)"
            )
            params += [key, value]
        sql += " ORDER BY r.updated_at DESC, r.thread_id DESC LIMIT ?"
        params.append(limit)
        try:
            rows = self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise ThreadStoreError(f"SQLite thread store {self.path!r}: {exc}") from exc
        return [_record(row) for row in rows]

    def _prune(self, now: float) -> int:
        with self._transaction() as conn:
            return self._prune_in(conn, now)

    @staticmethod
    def _prune_in(conn: sqlite3.Connection, now: float) -> int:
        conn.execute(
            "DELETE FROM thread_record_metadata WHERE thread_id IN "
            "(SELECT thread_id FROM thread_records WHERE expires_at <= ?)",
            (now,),
        )
        return conn.execute("DELETE FROM thread_records WHERE expires_at <= ?", (now,)).rowcount

    def close(self) -> None:
        """Close every connection this store opened in this process. Idempotent."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __repr__(self) -> str:
        return f"SQLiteThreadStore({self.path!r}, ttl_s={self.ttl_s!r})"
