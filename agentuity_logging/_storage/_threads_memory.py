"""The in-memory thread store: one process, no dependencies, state kept as plain JSON bytes.

State is not encrypted here: it never leaves the process, and the process holds the key anyway. It is
still kept as JSON, so values behave exactly as they would in SQLite or Redis (a tuple comes back a list)
and no caller can mutate a stored record through a reference it kept.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable
from typing import Final

from agentuity_logging._context import DEFAULT_THREAD_TTL_S
from agentuity_logging._storage._threads import Record, ThreadStore, successor

__all__ = ["MemoryThreadStore"]

# Sweep expired records every this many writes, so a long-running process does not grow without bound.
_PRUNE_EVERY_WRITES: Final = 1024


class MemoryThreadStore(ThreadStore):
    """Thread records in a dict under a lock (see :class:`ThreadStore` for the contract)."""

    plaintext_state = True

    def __init__(
        self, *, ttl_s: float = DEFAULT_THREAD_TTL_S, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(keyring=None, ttl_s=ttl_s, clock=clock)
        self._records: dict[str, Record] = {}
        self._index: dict[str, builtins.list[tuple[str, str]]] = {}
        self._lock = threading.Lock()
        self._writes = 0

    def _read(self, thread_id: str) -> Record | None:
        with self._lock:
            return self._records.get(thread_id)

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
        with self._lock:
            old = self._records.get(thread_id)
            record = successor(
                thread_id,
                None if old is None else (old.version, old.created_at, old.expires_at),
                expected_version=expected_version,
                now=now,
                expires_at=expires_at,
                metadata=metadata,
                state=state,
            )
            if record is None:
                return None
            self._records[thread_id] = record
            self._index[thread_id] = index
            self._writes += 1
            if self._writes % _PRUNE_EVERY_WRITES == 0:
                self._prune_locked(now)
            return record

    def _remove(self, thread_id: str, now: float) -> bool:
        with self._lock:
            old = self._records.pop(thread_id, None)
            self._index.pop(thread_id, None)
            return old is not None and old.expires_at > now

    def _query(
        self, filters: builtins.list[tuple[str, str]], limit: int, now: float
    ) -> builtins.list[Record]:
        wanted = set(filters)
        with self._lock:
            found = [
                r
                for tid, r in self._records.items()
                if r.expires_at > now and wanted.issubset(self._index.get(tid, ()))
            ]
        found.sort(key=lambda r: (r.updated_at, r.thread_id), reverse=True)
        return found[:limit]

    def _prune(self, now: float) -> int:
        with self._lock:
            return self._prune_locked(now)

    def _prune_locked(self, now: float) -> int:
        dead = [tid for tid, r in self._records.items() if r.expires_at <= now]
        for tid in dead:
            del self._records[tid]
            self._index.pop(tid, None)
        return len(dead)

    def __repr__(self) -> str:
        return f"MemoryThreadStore(ttl_s={self.ttl_s!r})"
