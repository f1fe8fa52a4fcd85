"""The thread store contract: versioned records of thread metadata and encrypted state, with expiry.

A store keeps one record per thread: its metadata (JSON, unencrypted, indexed so threads can be listed by
``key=value``), its state (JSON, sealed by the keyring), a version that every successful save increments,
and an expiry ``ttl_s`` after the last save. Writers never overwrite blindly: :meth:`ThreadStore.save`
succeeds only when the stored version is the one the writer read (compare-and-set), and
:meth:`ThreadStore.update` wraps that in a retry loop, so two processes updating one thread at once both
land. Expired records read as absent and are never brought back.

Backends implement five raw operations (``_read``, ``_write``, ``_remove``, ``_query``, ``_prune``);
everything users call lives here, once: encoding, encryption, validation, the retry loop.
"""

from __future__ import annotations

import abc
import builtins
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from agentuity_logging._context import DEFAULT_THREAD_TTL_S
from agentuity_logging._errors import AgentuityLoggingError, ConfigurationError
from agentuity_logging._ids import validate_thread_id
from agentuity_logging._storage._crypto import (
    KeyMaterial,
    Keyring,
    StateDecryptionError,
    keyring_from_env,
    sealed_key_id,
)

__all__ = [
    "ENV_THREAD_STORE",
    "ThreadData",
    "ThreadInfo",
    "ThreadStore",
    "ThreadStoreError",
    "VersionConflictError",
    "index_value",
    "thread_store_from_url",
]

#: The environment variable naming the thread store: ``memory``, ``sqlite:///path`` or ``redis://…``.
ENV_THREAD_STORE: Final = "AGENTUITY_THREAD_STORE"

_JSON_OPTIONS: Final = orjson.OPT_NON_STR_KEYS
_MAX_UPDATE_ATTEMPTS: Final = 50
_URL_SHAPES: Final = "'memory', 'sqlite:///path/to/threads.db' or 'redis://host:port/db'"

#: ``fn`` for :meth:`ThreadStore.update`: current record (``None`` if absent) -> (metadata, state).
UpdateFn = Callable[["ThreadData | None"], tuple[Mapping[str, Any], Mapping[str, Any]]]


class ThreadStoreError(AgentuityLoggingError):
    """The store itself failed (database locked for too long, Redis unreachable, store closed)."""


class VersionConflictError(ThreadStoreError):
    """A compare-and-set save lost: the thread changed (or appeared) since the version the writer read."""

    def __init__(self, thread_id: str, expected_version: int) -> None:
        self.thread_id = thread_id
        self.expected_version = expected_version
        super().__init__(f"thread {thread_id} is no longer at version {expected_version}: reload and retry")


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """What a store knows about a thread without opening its state (listing needs no key).

    ``key_id`` is the ID of the key that sealed the state (``None`` when there is no sealed state).
    """

    id: str
    version: int
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    key_id: str | None


@dataclass(frozen=True, slots=True)
class ThreadData(ThreadInfo):
    """A thread's full record: :class:`ThreadInfo` plus its decrypted ``state``."""

    state: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Record:
    """A stored record as backends hold it: times in epoch seconds, metadata JSON, state encoded."""

    thread_id: str
    version: int
    created_at: float
    updated_at: float
    expires_at: float
    metadata: bytes
    state: bytes | None


def successor(
    thread_id: str,
    old: tuple[int, float, float] | None,
    *,
    expected_version: int,
    now: float,
    expires_at: float,
    metadata: bytes,
    state: bytes | None,
) -> Record | None:
    """The record a compare-and-set save writes over ``old`` (version, created_at, expires_at).

    ``None`` when ``expected_version`` does not match. Live records have versions from 1, so 0 matches
    exactly "absent or expired"; counting on past an expired record keeps a stale writer's version
    from matching again. Every backend applies this one rule inside its own atomic section.
    """
    live = old is not None and old[2] > now
    if (old[0] if live and old is not None else 0) != expected_version:
        return None
    return Record(
        thread_id=thread_id,
        version=(old[0] if old is not None else 0) + 1,
        created_at=old[1] if live and old is not None else now,
        updated_at=now,
        expires_at=expires_at,
        metadata=metadata,
        state=state,
    )


def index_value(value: Any) -> str | None:
    """Return the text a metadata value is indexed (and filtered) under, or ``None`` if not indexed.

    Only scalars are indexed: strings as themselves, other scalars as their JSON (``true``, ``3``,
    ``null``), so ``vip=true`` on the command line finds ``{"vip": True}``.
    """
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, (bool, int, float)):
        try:
            return orjson.dumps(value).decode("utf-8")
        except orjson.JSONEncodeError:  # NaN, inf, huge ints: not indexable
            return None
    return None


def index_pairs(metadata: Mapping[str, Any]) -> builtins.list[tuple[str, str]]:
    """Return the ``(key, value)`` pairs a record with ``metadata`` is indexed under."""
    pairs = []
    for key, value in metadata.items():
        text = index_value(value)
        if text is not None:
            pairs.append((str(key), text))
    return pairs


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _encode_json(thread_id: str, what: str, value: Mapping[str, Any]) -> bytes:
    try:
        return orjson.dumps(dict(value), option=_JSON_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise ValueError(f"thread {thread_id}: {what} is not JSON-serialisable: {exc}") from None


class ThreadStore(abc.ABC):
    """Versioned, expiring thread records: the contract every backend meets.

    Thread-safe, and (for SQLite and Redis) safe across processes. State is sealed with the keyring
    before it leaves the process; a persistent store built without a keyring can list and read metadata
    but raises :class:`StateDecryptionError` when asked for sealed state and refuses to save state.

    Args:
        keyring: seals and opens state (persistent stores); ``None`` for metadata-only access.
        ttl_s: how long a thread lives after its last save.
        clock: epoch seconds now (tests freeze it).
    """

    #: Whether state is kept as plain JSON (the in-memory store: it never leaves the process).
    plaintext_state: bool = False

    def __init__(
        self,
        *,
        keyring: Keyring | None = None,
        ttl_s: float = DEFAULT_THREAD_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not ttl_s > 0:
            raise ConfigurationError(f"ttl_s: expected a positive number of seconds, got {ttl_s!r}")
        self.keyring = keyring
        self.ttl_s = float(ttl_s)
        self.clock = clock

    # --- the raw operations backends implement ---------------------------------------------------

    @abc.abstractmethod
    def _read(self, thread_id: str) -> Record | None:
        """Return the stored record, expired or not, or ``None``."""

    @abc.abstractmethod
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
        """Atomically replace the record when it is live at ``expected_version`` (or, for 0, absent or
        expired at ``now``); return the new record (version + 1, ``created_at`` kept when it was live),
        or ``None`` when the condition failed."""

    @abc.abstractmethod
    def _remove(self, thread_id: str, now: float) -> bool:
        """Delete the record and its index entries; return whether a live one was there."""

    @abc.abstractmethod
    def _query(
        self, filters: builtins.list[tuple[str, str]], limit: int, now: float
    ) -> builtins.list[Record]:
        """Return up to ``limit`` live records matching every ``(key, value)``, newest update first."""

    @abc.abstractmethod
    def _prune(self, now: float) -> int:
        """Drop records expired at ``now``; return how many."""

    def close(self) -> None:  # noqa: B027 - optional: only stores holding connections override it
        """Release connections. Idempotent."""

    def __enter__(self) -> ThreadStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- encoding ------------------------------------------------------------------------------

    def _seal(self, thread_id: str, plain: bytes, *, empty: bool) -> bytes | None:
        if self.plaintext_state:
            return plain
        if self.keyring is None:
            if empty:
                return None
            raise ConfigurationError(
                f"cannot save the state of thread {thread_id}: no state key is configured "
                "(set AGENTUITY_STATE_KEY or pass state_key=...)"
            )
        return self.keyring.encrypt(thread_id, plain)

    def _open(self, record: Record) -> dict[str, Any]:
        if record.state is None:
            return {}
        if self.plaintext_state:
            plain = record.state
        elif self.keyring is None:
            raise StateDecryptionError(
                record.thread_id,
                "no state key is configured (set AGENTUITY_STATE_KEY)",
                key_id=sealed_key_id(record.state),
            )
        else:
            plain = self.keyring.decrypt(record.thread_id, record.state)
        try:
            state = orjson.loads(plain)
        except orjson.JSONDecodeError:
            raise StateDecryptionError(
                record.thread_id, "the opened record is not JSON (corrupted before sealing)"
            ) from None
        if not isinstance(state, dict):
            raise StateDecryptionError(record.thread_id, "the opened record is not a JSON object")
        return state

    def _info(self, record: Record) -> ThreadInfo:
        return ThreadInfo(
            id=record.thread_id,
            version=record.version,
            metadata=orjson.loads(record.metadata),
            created_at=_utc(record.created_at),
            updated_at=_utc(record.updated_at),
            expires_at=_utc(record.expires_at),
            key_id=None if record.state is None or self.plaintext_state else sealed_key_id(record.state),
        )

    def _data(self, record: Record) -> ThreadData:
        state = self._open(record)
        info = self._info(record)
        return ThreadData(
            id=info.id,
            version=info.version,
            metadata=info.metadata,
            created_at=info.created_at,
            updated_at=info.updated_at,
            expires_at=info.expires_at,
            key_id=info.key_id,
            state=state,
        )

    def _live(self, thread_id: str) -> Record | None:
        record = self._read(validate_thread_id(thread_id))
        if record is None or record.expires_at <= self.clock():
            return None
        return record

    # --- the contract ---------------------------------------------------------------------------

    def load(self, thread_id: str) -> ThreadData | None:
        """Return the thread with its decrypted state, or ``None`` when unknown or expired.

        Raises:
            ValueError: ``thread_id`` is not a well-formed thread ID.
            StateDecryptionError: the state exists but cannot be opened (never an empty state instead).
            ThreadStoreError: the backend failed.
        """
        record = self._live(thread_id)
        return None if record is None else self._data(record)

    def info(self, thread_id: str) -> ThreadInfo | None:
        """Return the thread's metadata, version and times without opening its state (no key needed)."""
        record = self._live(thread_id)
        return None if record is None else self._info(record)

    def save(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any],
        state: Mapping[str, Any],
        expected_version: int,
        ttl_s: float | None = None,
    ) -> ThreadData:
        """Replace the thread if it is still at ``expected_version`` (0: it must not exist, or be expired).

        The expiry moves to now + ``ttl_s`` (the store's TTL by default).

        Raises:
            VersionConflictError: the stored version is not ``expected_version``.
            ValueError: a bad thread ID, or metadata or state that is not JSON-serialisable.
            ConfigurationError: state to save but no state key.
            ThreadStoreError: the backend failed.
        """
        validate_thread_id(thread_id)
        if expected_version < 0:
            raise ValueError(f"expected_version: expected 0 or more, got {expected_version!r}")
        meta_json = _encode_json(thread_id, "metadata", metadata)
        plain = _encode_json(thread_id, "state", state)
        sealed = self._seal(thread_id, plain, empty=not state)
        now = self.clock()
        lifetime = self.ttl_s if ttl_s is None else ttl_s
        record = self._write(
            thread_id,
            expected_version=expected_version,
            now=now,
            expires_at=now + lifetime,
            metadata=meta_json,
            index=index_pairs(metadata),
            state=sealed,
        )
        if record is None:
            raise VersionConflictError(thread_id, expected_version)
        info = self._info(record)
        return ThreadData(
            id=info.id,
            version=info.version,
            metadata=info.metadata,
            created_at=info.created_at,
            updated_at=info.updated_at,
            expires_at=info.expires_at,
            key_id=info.key_id,
            state=orjson.loads(plain),
        )

    def update(self, thread_id: str, fn: UpdateFn, *, ttl_s: float | None = None) -> ThreadData:
        """Load, apply ``fn``, save by compare-and-set; on a conflict, reload and apply again.

        ``fn(current)`` gets the live record (``None`` if absent or expired) and returns the new
        ``(metadata, state)``. It may run several times, so it must not have side effects.

        Raises:
            VersionConflictError: still conflicting after many attempts (heavy contention).
            StateDecryptionError: the current state cannot be opened (nothing is overwritten).
        """
        expected = 0
        for attempt in range(_MAX_UPDATE_ATTEMPTS):
            current = self.load(thread_id)
            metadata, state = fn(current)
            expected = 0 if current is None else current.version
            try:
                return self.save(
                    thread_id,
                    metadata=metadata,
                    state=state,
                    expected_version=expected,
                    ttl_s=ttl_s,
                )
            except VersionConflictError:
                # Back off with jitter so writers that collided do not collide again in lock-step.
                time.sleep(random.uniform(0, min(0.05, 0.0005 * 2**attempt)))
        raise VersionConflictError(thread_id, expected)

    def list(
        self, *, metadata: Mapping[str, Any] | None = None, limit: int = 100
    ) -> builtins.list[ThreadInfo]:
        """Return up to ``limit`` live threads whose metadata has every ``key=value`` given, newest first.

        Values compare as :func:`index_value` renders them; non-scalar metadata is not filterable.
        """
        if limit <= 0:
            return []
        filters: builtins.list[tuple[str, str]] = []
        for key, value in (metadata or {}).items():
            text = index_value(value)
            if text is None:
                raise ValueError(
                    f"metadata filter {key!r}: expected a string or scalar, got {type(value).__name__}"
                )
            filters.append((str(key), text))
        return [self._info(r) for r in self._query(filters, limit, self.clock())]

    def delete(self, thread_id: str) -> bool:
        """Delete the thread; return whether a live one was there."""
        return self._remove(validate_thread_id(thread_id), self.clock())

    def prune(self) -> int:
        """Drop expired records now (stores also do it as they go); return how many."""
        return self._prune(self.clock())


def _sqlite_path(url: str, rest: str, source: str) -> str:
    if not rest or rest == "/":
        raise ConfigurationError(f"{source}: {url!r} names no file; expected {_URL_SHAPES}")
    if "?" in rest or "#" in rest:
        raise ConfigurationError(f"{source}: {url!r}: sqlite URLs take no query; expected {_URL_SHAPES}")
    # sqlite:///abs/path -> /abs/path; SQLAlchemy's sqlite:////abs/path means the same; sqlite://rel.db.
    return "/" + rest.lstrip("/") if rest.startswith("/") else rest


def thread_store_from_url(
    url: str,
    *,
    key: Keyring | KeyMaterial | None = None,
    ttl_s: float = DEFAULT_THREAD_TTL_S,
    require_key: bool = True,
    environ: Mapping[str, str] | None = None,
    source: str = "thread_store",
) -> ThreadStore:
    """Open the store a URL names: ``memory``, ``sqlite:///path`` or ``redis://host:port/db``.

    ``key`` (a :class:`Keyring`, or key text: comma-separated, current first) defaults to
    ``AGENTUITY_STATE_KEY``. SQLite and Redis encrypt state, so they need a key unless
    ``require_key=False`` (the CLI listing threads); the memory store keeps state in plain JSON.

    Raises:
        ConfigurationError: an unknown scheme, a malformed URL or key, or no key where one is needed.
            Messages never repeat a Redis URL (it may hold a password).
        MissingDependencyError: ``redis`` or ``cryptography`` is not installed.
    """
    text = url.strip() if isinstance(url, str) else ""
    scheme = text.split(":", 1)[0].lower() if ":" in text else text.lower()

    def keyring() -> Keyring | None:
        ring = Keyring.coerce(key) if key is not None else keyring_from_env(environ)
        if ring is None and require_key:
            raise ConfigurationError(
                f"{source}: {scheme} thread stores encrypt thread state at rest and need a key: set "
                "AGENTUITY_STATE_KEY or pass state_key=... (`agentuity-logging keygen` makes one)"
            )
        return ring

    if text.lower() in ("memory", "memory:", "memory://"):
        from agentuity_logging._storage._threads_memory import MemoryThreadStore

        if key is not None:
            Keyring.coerce(key)  # a bad key fails now even though memory does not use it
        return MemoryThreadStore(ttl_s=ttl_s)
    if scheme == "sqlite" and text[len("sqlite") :].startswith("://"):
        from agentuity_logging._storage._threads_sqlite import SQLiteThreadStore

        path = _sqlite_path(text, text[len("sqlite://") :], source)
        return SQLiteThreadStore(path, keyring=keyring(), ttl_s=ttl_s)
    if scheme in ("redis", "rediss", "unix"):
        parts = urlsplit(text)
        db = parts.path.lstrip("/")
        if scheme != "unix" and (not parts.hostname or (db and not db.isdigit())):
            raise ConfigurationError(
                f"{source}: expected 'redis://host:port/db' with a numeric db, got a {scheme} URL "
                "that is not one"
            )
        try:
            _ = parts.port
        except ValueError:
            raise ConfigurationError(f"{source}: the {scheme} URL has a bad port") from None
        from agentuity_logging._storage._threads_redis import RedisThreadStore

        return RedisThreadStore.from_url(text, keyring=keyring(), ttl_s=ttl_s)
    # A URL with "@" may carry a password: name its scheme only.
    shown = f"a {scheme!r} URL" if "@" in text else ascii(text[:40])
    raise ConfigurationError(f"{source}: expected {_URL_SHAPES}, got {shown}")
