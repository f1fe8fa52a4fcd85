"""A thread registry backed by a :class:`ThreadStore`: how ``session()`` finds and saves threads.

Joining loads the thread from the store into a fresh :class:`Thread` for that session; releasing merges
what the session *changed* onto the latest stored version by compare-and-set. Changes are the keys the
session set or deleted, plus keys whose value changed in place (``state["history"].append(...)``),
found by comparing each value's JSON with the JSON it had when loaded. So two processes updating
different keys of one thread at once both survive; for the same key the last writer wins.

Each session gets its own :class:`Thread` object (unlike the in-memory registry, which hands concurrent
sessions the same object): a session sees other sessions' writes from the next time it joins.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from agentuity_logging._context import (
    DEFAULT_THREAD_TTL_S,
    MemoryThreadRegistry,
    Session,
    State,
    Thread,
    ThreadRegistry,
)
from agentuity_logging._errors import ConfigurationError
from agentuity_logging._ids import new_thread_id
from agentuity_logging._internal import report_once
from agentuity_logging._storage._crypto import KeyMaterial, Keyring
from agentuity_logging._storage._threads import (
    ENV_THREAD_STORE,
    ThreadData,
    ThreadStore,
    thread_store_from_url,
)

__all__ = ["StoreThreadRegistry", "ThreadState", "thread_registry_from_settings"]

_FINGERPRINT_OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
_MEMORY_URLS: Final = frozenset({"memory", "memory:", "memory://"})
_DELETED: Final = object()


class ThreadState(State):
    """``session.thread.state`` from a store: a :class:`State` that remembers which keys were written.

    Values must be JSON-serialisable to be saved, and come back as JSON types (a tuple as a list, a
    datetime as an ISO string). A value that cannot be saved is skipped with a warning; the rest is saved.
    """

    __slots__ = ("_written",)

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        super().__init__(initial)
        self._written: set[str] = set()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._written.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._written.add(key)


def _fingerprint(value: Any) -> bytes | None:
    try:
        return orjson.dumps(value, option=_FINGERPRINT_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        return None


def _fingerprints(mapping: Mapping[str, Any]) -> dict[str, bytes | None]:
    return {key: _fingerprint(value) for key, value in mapping.items()}


class StoredThread(Thread):
    """A :class:`Thread` loaded from a store, carrying what it looked like when loaded."""

    __slots__ = ("_base_metadata", "_base_state", "version")

    def __init__(
        self,
        thread_id: str,
        *,
        ttl_s: float,
        data: ThreadData | None = None,
    ) -> None:
        super().__init__(
            thread_id,
            metadata=None if data is None else data.metadata,
            state=ThreadState(None if data is None else data.state),
            ttl_s=ttl_s,
            created_at=None if data is None else data.created_at,
        )
        self.version = 0 if data is None else data.version
        self._base_state = _fingerprints(self.state)
        self._base_metadata = _fingerprints(self.metadata)

    def _changes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(metadata changes, state changes)``: key -> new value, or ``_DELETED``."""
        written = self.state._written if isinstance(self.state, ThreadState) else set()
        return (
            _diff(self.metadata, self._base_metadata, ()),
            _diff(self.state, self._base_state, written),
        )

    def _saved(self, data: ThreadData) -> None:
        """Take the saved record as the new baseline (a second release sends only newer changes)."""
        self.version = data.version
        self.updated_at = data.updated_at
        self.expires_at = data.expires_at
        self._base_state = _fingerprints(self.state)
        self._base_metadata = _fingerprints(self.metadata)
        if isinstance(self.state, ThreadState):
            self.state._written.clear()


def _diff(
    current: Mapping[str, Any], base: Mapping[str, bytes | None], written: Iterable[str]
) -> dict[str, Any]:
    changed: dict[str, Any] = {
        key: value
        for key, value in current.items()
        if key not in base or base[key] is None or _fingerprint(value) != base[key]
    }
    for key in base:
        if key not in current:
            changed[key] = _DELETED
    # Written keys count even when set to the value they had: "last writer wins" includes this one.
    for key in written:
        if key not in changed:
            changed[key] = current.get(key, _DELETED)
    return changed


def _saveable(thread_id: str, what: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Drop values that cannot be stored as JSON, saying so once; the others are still saved."""
    kept: dict[str, Any] = {}
    for key, value in changes.items():
        if value is not _DELETED and _fingerprint(value) is None:
            report_once(
                f"thread-store:unsaveable:{what}",
                "thread %s: %s key %r holds a %s, which is not JSON-serialisable; not saved",
                thread_id,
                what,
                key,
                type(value).__name__,
            )
            continue
        kept[key] = value
    return kept


def _apply(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if value is _DELETED:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


class StoreThreadRegistry:
    """Threads kept in a :class:`ThreadStore` (SQLite, Redis, memory), shared by processes using it.

    ``join`` raises :class:`~agentuity_logging._storage._crypto.StateDecryptionError` (out of
    ``session()``) when the thread's state cannot be opened, rather than silently starting over.

    Args:
        store: where threads live.
        ttl_s: a thread's lifetime after its last session (the store's TTL by default).
        owns_store: close ``store`` in :meth:`close` (true when built from a URL).
    """

    def __init__(self, store: ThreadStore, ttl_s: float | None = None, *, owns_store: bool = False) -> None:
        if ttl_s is not None and not ttl_s > 0:
            raise ConfigurationError(f"ttl_s: expected a positive number of seconds, got {ttl_s!r}")
        self.store = store
        self.ttl_s = store.ttl_s if ttl_s is None else float(ttl_s)
        self._owns_store = owns_store

    def join(self, thread_id: str | None) -> Thread:
        """Load thread ``thread_id``; an unknown or expired one becomes a new thread with a new ID.

        A new thread is not written until its first session ends.
        """
        if thread_id is not None:
            data = self.store.load(thread_id)
            if data is not None:
                return StoredThread(data.id, ttl_s=self.ttl_s, data=data)
            # One warning per process (then counted): a per-ID key would let clients sending random
            # IDs grow the duplicate filter without bound.
            report_once(
                "thread-store:unknown-thread",
                "thread %s is unknown or expired; starting a new thread (old state is not restored)",
                thread_id,
            )
        return StoredThread(new_thread_id(), ttl_s=self.ttl_s)

    def release(self, thread: Thread, session: Session) -> None:
        """Merge the session's changes onto the stored thread and push its expiry to now + ``ttl_s``."""
        thread.touch()
        if not isinstance(thread, StoredThread):
            return  # joined through another registry before configure() swapped this one in
        meta_changes, state_changes = thread._changes()
        meta_changes = _saveable(thread.id, "metadata", meta_changes)
        state_changes = _saveable(thread.id, "state", state_changes)

        def merge(current: ThreadData | None) -> tuple[dict[str, Any], dict[str, Any]]:
            if current is None:
                # New, or expired or deleted while this session ran: what it sees is the thread now.
                return (
                    _saveable(thread.id, "metadata", thread.metadata),
                    _saveable(thread.id, "state", thread.state),
                )
            return _apply(current.metadata, meta_changes), _apply(current.state, state_changes)

        thread._saved(self.store.update(thread.id, merge, ttl_s=self.ttl_s))

    def close(self) -> None:
        """Close the store when this registry opened it (from a URL). Idempotent."""
        if self._owns_store:
            self.store.close()

    def __repr__(self) -> str:
        return f"StoreThreadRegistry({self.store!r}, ttl_s={self.ttl_s!r})"


def thread_registry_from_settings(
    thread_store: str | ThreadStore | None = None,
    *,
    state_key: Keyring | KeyMaterial | None = None,
    ttl_s: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> ThreadRegistry:
    """Build the thread registry ``configure(thread_store=..., state_key=..., thread_ttl_s=...)`` asks for.

    ``thread_store`` is a URL or a :class:`ThreadStore`; ``None`` reads ``AGENTUITY_THREAD_STORE``.
    ``memory`` (or nothing set) gives the in-process :class:`MemoryThreadRegistry`, which keeps live
    objects (no JSON round trip). ``state_key`` defaults to ``AGENTUITY_STATE_KEY``; a store object that
    has no keyring gets it. Close the returned registry (``close()``, when it has one) on reconfigure.

    Raises:
        ConfigurationError: a bad URL, key or TTL, a persistent store without a key, or a ``state_key``
            for a store object that already has a keyring.
        MissingDependencyError: the store's extra is not installed.
    """
    env = os.environ if environ is None else environ
    if isinstance(thread_store, ThreadStore):
        if state_key is not None and not thread_store.plaintext_state:
            if thread_store.keyring is not None:
                raise ConfigurationError(
                    "state_key: the thread store passed already has a keyring; give the key to one"
                )
            thread_store.keyring = Keyring.coerce(state_key)
        return StoreThreadRegistry(thread_store, ttl_s)
    lifetime = DEFAULT_THREAD_TTL_S if ttl_s is None else ttl_s
    source = "thread_store"
    url = thread_store
    if url is None:
        url, source = env.get(ENV_THREAD_STORE, "").strip(), ENV_THREAD_STORE
    if not url or url.strip().lower() in _MEMORY_URLS:
        if not lifetime > 0:
            raise ConfigurationError(f"thread_ttl_s: expected a positive number of seconds, got {lifetime!r}")
        if state_key is not None:
            Keyring.coerce(state_key)  # a malformed key fails now, even though memory does not use it
        return MemoryThreadRegistry(ttl_s=lifetime)
    store = thread_store_from_url(url, key=state_key, ttl_s=lifetime, environ=env, source=source)
    return StoreThreadRegistry(store, lifetime, owns_store=True)
