"""The Redis thread store: many hosts sharing threads through one Redis (the ``redis`` extra).

Layout, under a prefix (``agentuity:threads:`` by default):

- ``{prefix}t:{thread_id}``: a hash (version, created, updated, expires, metadata JSON, sealed state)
  whose Redis TTL is the thread's expiry, so Redis itself forgets expired threads;
- ``{prefix}m:["key","value"]``: a set of the thread IDs whose metadata has ``key=value`` (JSON-quoted
  so no ``=`` or ``:`` in a key or value can make two pairs collide), kept alive as long as its
  longest-lived member;
- ``{prefix}all``: a sorted set of thread IDs scored by expiry, for listing without a filter.

Compare-and-set is ``WATCH`` on the thread's hash, a version check, then ``MULTI``/``EXEC``: if another
client writes the hash in between, ``EXEC`` fails and :meth:`ThreadStore.update` retries. The index sets
may briefly name expired threads; listing skips and removes those. Single-node Redis (or a primary with
replicas); Redis Cluster is not supported, since a transaction here spans keys in different slots.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from agentuity_logging._context import DEFAULT_THREAD_TTL_S
from agentuity_logging._errors import MissingDependencyError
from agentuity_logging._storage._crypto import Keyring
from agentuity_logging._storage._threads import (
    Record,
    ThreadStore,
    ThreadStoreError,
    index_pairs,
    successor,
)

__all__ = ["RedisThreadStore"]

DEFAULT_PREFIX: Final = "agentuity:threads:"

# Extend each index set's TTL to at least ARGV[1] ms; never shorten one a longer-lived thread needs.
# (PEXPIRE ... GT would do it, but treats a set with no TTL yet as infinite, and needs Redis 7.)
_EXTEND_TTL: Final = """
local ms = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
return 0
"""


def _redis_module() -> Any:
    try:
        import redis
    except ImportError as exc:
        raise MissingDependencyError("RedisThreadStore", "redis", "redis") from exc
    return redis


class RedisThreadStore(ThreadStore):
    """Thread records in Redis (see :class:`ThreadStore` for the contract).

    Args:
        client: a ``redis.Redis`` with ``decode_responses=False`` (state is binary).
        keyring: seals state; ``None`` allows metadata-only access (listing, the CLI).
        ttl_s: how long a thread lives after its last save (also the Redis TTL of its keys).
        prefix: the key prefix, so several applications can share one database.
        clock: epoch seconds now (tests freeze it); Redis TTLs are set relative to it.
        owns_client: close ``client`` in :meth:`close` (true when built by :meth:`from_url`).

    Raises:
        MissingDependencyError: ``redis`` is not installed (``pip install 'agentuity-logging[redis]'``).
    """

    def __init__(
        self,
        client: Any,
        *,
        keyring: Keyring | None = None,
        ttl_s: float = DEFAULT_THREAD_TTL_S,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        owns_client: bool = False,
    ) -> None:
        super().__init__(keyring=keyring, ttl_s=ttl_s, clock=clock)
        self._redis = _redis_module()
        self._client = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._all_key = f"{prefix}all"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        keyring: Keyring | None = None,
        ttl_s: float = DEFAULT_THREAD_TTL_S,
        prefix: str = DEFAULT_PREFIX,
    ) -> RedisThreadStore:
        """Connect lazily to ``redis://host:port/db`` (``rediss://`` for TLS); the store owns the client."""
        redis = _redis_module()
        client = redis.Redis.from_url(url, decode_responses=False)
        return cls(client, keyring=keyring, ttl_s=ttl_s, prefix=prefix, owns_client=True)

    def _thread_key(self, thread_id: str) -> str:
        return f"{self._prefix}t:{thread_id}"

    def _index_key(self, key: str, value: str) -> str:
        return self._prefix + "m:" + orjson.dumps([key, value]).decode("utf-8")

    def _error(self, exc: Exception) -> ThreadStoreError:
        # Name the failure, never the URL: it may carry a password.
        return ThreadStoreError(f"Redis thread store: {type(exc).__name__}: {exc}")

    @staticmethod
    def _decode(thread_id: str, raw: dict[bytes, bytes]) -> Record:
        return Record(
            thread_id=thread_id,
            version=int(raw[b"version"]),
            created_at=float(raw[b"created"]),
            updated_at=float(raw[b"updated"]),
            expires_at=float(raw[b"expires"]),
            metadata=raw[b"metadata"],
            state=raw.get(b"state"),
        )

    def _read(self, thread_id: str) -> Record | None:
        try:
            raw = self._client.hgetall(self._thread_key(thread_id))
        except self._redis.RedisError as exc:
            raise self._error(exc) from exc
        return self._decode(thread_id, raw) if raw else None

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
        key = self._thread_key(thread_id)
        ttl_ms = max(1, int((expires_at - now) * 1000))
        try:
            with self._client.pipeline(transaction=True) as pipe:
                try:
                    # After WATCH the pipeline runs commands immediately, until MULTI.
                    pipe.watch(key)
                    raw = pipe.hgetall(key)
                    old = self._decode(thread_id, raw) if raw else None
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
                    old_index = (
                        {self._index_key(k, v) for k, v in index_pairs(orjson.loads(old.metadata))}
                        if old is not None
                        else set()
                    )
                    new_index = {self._index_key(k, v) for k, v in index}
                    pipe.multi()
                    fields = {
                        b"version": str(record.version),
                        b"created": repr(record.created_at),
                        b"updated": repr(now),
                        b"expires": repr(expires_at),
                        b"metadata": metadata,
                    }
                    if state is not None:
                        fields[b"state"] = state
                    else:
                        pipe.hdel(key, b"state")
                    pipe.hset(key, mapping=fields)
                    pipe.pexpire(key, ttl_ms)
                    for gone in old_index - new_index:
                        pipe.srem(gone, thread_id)
                    for added in new_index:
                        pipe.sadd(added, thread_id)
                    if new_index:
                        pipe.eval(_EXTEND_TTL, len(new_index), *sorted(new_index), ttl_ms)
                    pipe.zadd(self._all_key, {thread_id: expires_at})
                    # Keep the listing set bounded: drop what expired (by this writer's clock).
                    pipe.zremrangebyscore(self._all_key, "-inf", now)
                    pipe.execute()
                except self._redis.WatchError:
                    return None
        except self._redis.RedisError as exc:
            raise self._error(exc) from exc
        return record

    def _remove(self, thread_id: str, now: float) -> bool:
        key = self._thread_key(thread_id)
        try:
            while True:
                with self._client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(key)
                        raw = pipe.hgetall(key)
                        old = self._decode(thread_id, raw) if raw else None
                        pipe.multi()
                        pipe.delete(key)
                        if old is not None:
                            for k, v in index_pairs(orjson.loads(old.metadata)):
                                pipe.srem(self._index_key(k, v), thread_id)
                        pipe.zrem(self._all_key, thread_id)
                        pipe.execute()
                    except self._redis.WatchError:
                        continue  # rewritten meanwhile: its index entries changed, read again
                    return old is not None and old.expires_at > now
        except self._redis.RedisError as exc:
            raise self._error(exc) from exc

    def _query(
        self, filters: builtins.list[tuple[str, str]], limit: int, now: float
    ) -> builtins.list[Record]:
        try:
            if filters:
                keys = [self._index_key(k, v) for k, v in filters]
                ids = sorted(m.decode("utf-8") for m in self._client.sinter(keys))
            else:
                # Scored by expiry: the newest writes sit at the top (for one TTL per application).
                # Over-fetch a little: some may be gone by the time we read them.
                ids = [
                    m.decode("utf-8")
                    for m in self._client.zrevrangebyscore(
                        self._all_key, "+inf", f"({now}", start=0, num=limit * 2 + 10
                    )
                ]
            if not ids:
                return []
            with self._client.pipeline(transaction=False) as pipe:
                for tid in ids:
                    pipe.hgetall(self._thread_key(tid))
                raws = pipe.execute()
            found: builtins.list[Record] = []
            stale: builtins.list[str] = []
            for tid, raw in zip(ids, raws, strict=True):
                record = self._decode(tid, raw) if raw else None
                if record is None or record.expires_at <= now:
                    stale.append(tid)
                    continue
                if filters and not set(filters).issubset(index_pairs(orjson.loads(record.metadata))):
                    continue  # the set named it, but its metadata changed since (a lost race)
                found.append(record)
            if stale and filters:
                with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.srem(key, *stale)
                    pipe.execute()
        except self._redis.RedisError as exc:
            raise self._error(exc) from exc
        found.sort(key=lambda r: (r.updated_at, r.thread_id), reverse=True)
        return found[:limit]

    def _prune(self, now: float) -> int:
        # Redis expires the records itself; only the listing set needs a sweep.
        try:
            return int(self._client.zremrangebyscore(self._all_key, "-inf", now))
        except self._redis.RedisError as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        """Close the client's connections when this store created it. Idempotent."""
        if self._owns_client:
            self._client.close()

    def __repr__(self) -> str:
        return f"RedisThreadStore(prefix={self._prefix!r}, ttl_s={self.ttl_s!r})"
