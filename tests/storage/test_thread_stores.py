"""One contract suite for every thread store (memory, SQLite, Redis), plus the registry on top of them."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agentuity_logging import _internal
from agentuity_logging._context import (
    MemoryThreadRegistry,
    Session,
    State,
    Thread,
    session,
    set_thread_registry,
)
from agentuity_logging._errors import ConfigurationError, MissingDependencyError
from agentuity_logging._ids import new_thread_id
from agentuity_logging._storage._crypto import ENV_STATE_KEY, Keyring, StateDecryptionError, generate_key
from agentuity_logging._storage._registry import (
    StoreThreadRegistry,
    ThreadState,
    thread_registry_from_settings,
)
from agentuity_logging._storage._threads import (
    ENV_THREAD_STORE,
    ThreadData,
    ThreadStore,
    VersionConflictError,
    thread_store_from_url,
)
from agentuity_logging._storage._threads_memory import MemoryThreadStore
from agentuity_logging._storage._threads_redis import RedisThreadStore
from agentuity_logging._storage._threads_sqlite import SQLiteThreadStore
from tests.forking import child_deadline

KEY = generate_key()
RING = Keyring(KEY)
TTL_S = 60.0
BACKENDS = ["memory", "sqlite", "redis"]
PERSISTENT = ["sqlite", "redis"]


class Clock:
    """A frozen clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


OpenStore = Callable[..., ThreadStore]


@pytest.fixture
def clock() -> Clock:
    """A frozen clock shared by every store a test opens."""
    return Clock()


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'threads.db'}"
    if backend == "redis":
        url: str = request.getfixturevalue("redis_url")
        return url
    return "memory"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test."""
    param: str = request.param
    return param


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of the backend's empty database."""
    return _url(backend, request, tmp_path)


@pytest.fixture
def open_store(backend: str, store_url: str, clock: Clock, tmp_path: Path) -> Iterator[OpenStore]:
    """Open stores on the backend's shared data (memory: the one store); close them all afterwards."""
    opened: list[ThreadStore] = []
    shared_memory = MemoryThreadStore(ttl_s=TTL_S, clock=clock)

    def open_(keyring: Keyring | None = RING, ttl_s: float = TTL_S) -> ThreadStore:
        store: ThreadStore
        if backend == "memory":
            return shared_memory
        if backend == "sqlite":
            store = SQLiteThreadStore(tmp_path / "threads.db", keyring=keyring, ttl_s=ttl_s, clock=clock)
        else:
            store = RedisThreadStore.from_url(store_url, keyring=keyring, ttl_s=ttl_s)
            store.clock = clock
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> ThreadStore:
    """One store on the backend under test."""
    return open_store()


def _tid() -> str:
    return new_thread_id()


def _create(
    store: ThreadStore, tid: str, state: Mapping[str, Any] | None = None, **metadata: Any
) -> ThreadData:
    return store.save(tid, metadata=metadata, state=state or {}, expected_version=0)


class TestLoadAndSave:
    def test_unknown_thread_loads_as_none(self, store: ThreadStore) -> None:
        """Loading a thread never saved gives None."""
        assert store.load(_tid()) is None
        assert store.info(_tid()) is None

    def test_saved_thread_loads_back(self, store: ThreadStore) -> None:
        """What was saved (metadata and state) is what loads."""
        tid = _tid()
        saved = _create(store, tid, {"n": 1, "items": ["a"]}, user="u1")
        loaded = store.load(tid)
        assert loaded is not None
        assert loaded == saved
        assert loaded.id == tid
        assert loaded.version == 1
        assert dict(loaded.metadata) == {"user": "u1"}
        assert dict(loaded.state) == {"n": 1, "items": ["a"]}

    def test_each_save_increments_the_version(self, store: ThreadStore) -> None:
        """Versions start at 1 and grow by one per save."""
        tid = _tid()
        first = _create(store, tid)
        second = store.save(tid, metadata={}, state={"x": 1}, expected_version=first.version)
        assert (first.version, second.version) == (1, 2)

    def test_stale_version_is_a_conflict(self, store: ThreadStore) -> None:
        """Saving against a version that is no longer current fails and changes nothing."""
        tid = _tid()
        _create(store, tid, {"v": "first"})
        store.save(tid, metadata={}, state={"v": "second"}, expected_version=1)
        with pytest.raises(VersionConflictError, match="no longer at version 1"):
            store.save(tid, metadata={}, state={"v": "stale"}, expected_version=1)
        loaded = store.load(tid)
        assert loaded is not None
        assert loaded.state == {"v": "second"}

    def test_creating_an_existing_thread_is_a_conflict(self, store: ThreadStore) -> None:
        """Version 0 means "must not exist": a second creator loses."""
        tid = _tid()
        _create(store, tid)
        with pytest.raises(VersionConflictError):
            _create(store, tid)

    def test_updating_a_missing_thread_is_a_conflict(self, store: ThreadStore) -> None:
        """A non-zero expected version on a thread that does not exist fails."""
        with pytest.raises(VersionConflictError):
            store.save(_tid(), metadata={}, state={}, expected_version=3)

    def test_created_at_is_kept_and_updated_at_moves(self, store: ThreadStore, clock: Clock) -> None:
        """A save keeps the creation time and stamps the update time."""
        tid = _tid()
        first = _create(store, tid)
        clock.advance(5)
        second = store.save(tid, metadata={}, state={}, expected_version=1)
        assert second.created_at == first.created_at
        assert (second.updated_at - first.updated_at).total_seconds() == pytest.approx(5)

    def test_values_come_back_as_json(self, store: ThreadStore) -> None:
        """State is JSON on every backend: a tuple comes back a list, nesting survives."""
        tid = _tid()
        _create(store, tid, {"pair": (1, 2), "deep": {"a": [{"b": None}]}, "text": "é✓"})
        loaded = store.load(tid)
        assert loaded is not None
        assert loaded.state == {"pair": [1, 2], "deep": {"a": [{"b": None}]}, "text": "é✓"}

    def test_non_json_metadata_is_refused(self, store: ThreadStore) -> None:
        """Metadata that JSON cannot hold raises ValueError naming the thread."""
        tid = _tid()
        with pytest.raises(ValueError, match=tid):
            _create(store, tid, obj=object())

    def test_malformed_thread_id_is_refused(self, store: ThreadStore) -> None:
        """A thread ID of the wrong shape is a ValueError, before any I/O."""
        with pytest.raises(ValueError, match="thread ID"):
            store.load("thrd_../../etc")
        with pytest.raises(ValueError, match="thread ID"):
            store.save("sess_abc", metadata={}, state={}, expected_version=0)


class TestUpdate:
    def test_update_creates_a_missing_thread(self, store: ThreadStore) -> None:
        """update() hands fn None for a missing thread and saves what it returns."""
        tid = _tid()
        seen: list[ThreadData | None] = []

        def fn(current: ThreadData | None) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
            seen.append(current)
            return {"k": "v"}, {"n": 1}

        data = store.update(tid, fn)
        assert seen == [None]
        assert data.version == 1
        assert data.state == {"n": 1}

    def test_update_retries_after_a_conflict(self, store: ThreadStore) -> None:
        """When another writer lands between load and save, fn runs again on the new version."""
        tid = _tid()
        _create(store, tid, {"a": 1})
        calls: list[int] = []

        def fn(current: ThreadData | None) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
            assert current is not None
            calls.append(current.version)
            if len(calls) == 1:  # someone else writes while we think
                store.save(
                    tid, metadata={}, state={**current.state, "b": 2}, expected_version=current.version
                )
            return current.metadata, {**current.state, "c": 3}

        data = store.update(tid, fn)
        assert calls == [1, 2]
        assert data.state == {"a": 1, "b": 2, "c": 3}

    def test_concurrent_increments_are_all_kept(self, open_store: OpenStore) -> None:
        """Eight threads incrementing one counter through update() lose no increment."""
        tid = _tid()
        stores = [open_store() for _ in range(2)]
        per_thread = 25

        def increment(current: ThreadData | None) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
            n = 0 if current is None else current.state.get("n", 0)
            return {}, {"n": n + 1}

        def work(s: ThreadStore) -> None:
            for _ in range(per_thread):
                s.update(tid, increment)

        workers = [threading.Thread(target=work, args=(stores[i % 2],)) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        loaded = stores[0].load(tid)
        assert loaded is not None
        assert loaded.state == {"n": 8 * per_thread}


class TestExpiry:
    def test_expired_thread_loads_as_none(self, store: ThreadStore, clock: Clock) -> None:
        """After its TTL a thread is gone: load and info give None."""
        tid = _tid()
        _create(store, tid, {"secret": 1})
        clock.advance(TTL_S - 1)
        assert store.load(tid) is not None
        clock.advance(1)
        assert store.load(tid) is None
        assert store.info(tid) is None

    def test_save_pushes_the_expiry(self, store: ThreadStore, clock: Clock) -> None:
        """Each save moves the expiry to now + TTL."""
        tid = _tid()
        _create(store, tid)
        clock.advance(TTL_S - 1)
        data = store.save(tid, metadata={}, state={}, expected_version=1)
        assert data.expires_at.timestamp() == pytest.approx(clock.now + TTL_S)
        clock.advance(TTL_S - 1)
        assert store.load(tid) is not None

    def test_ttl_can_be_given_per_save(self, store: ThreadStore, clock: Clock) -> None:
        """save(ttl_s=...) overrides the store's TTL."""
        tid = _tid()
        store.save(tid, metadata={}, state={}, expected_version=0, ttl_s=5)
        clock.advance(5)
        assert store.load(tid) is None

    def test_expired_thread_is_not_resurrected(self, store: ThreadStore, clock: Clock) -> None:
        """Creating over an expired thread starts clean: its old state is not merged back."""
        tid = _tid()
        _create(store, tid, {"old": True}, team="a")
        clock.advance(TTL_S)
        data = store.update(tid, lambda current: ({}, {"new": True}) if current is None else ({}, {"bad": 1}))
        assert data.state == {"new": True}
        assert data.metadata == {}
        assert data.created_at.timestamp() == clock.now

    def test_stale_writer_cannot_save_over_an_expired_thread(self, store: ThreadStore, clock: Clock) -> None:
        """A writer holding the version from before expiry gets a conflict."""
        tid = _tid()
        _create(store, tid)
        clock.advance(TTL_S)
        with pytest.raises(VersionConflictError):
            store.save(tid, metadata={}, state={}, expected_version=1)

    def test_prune_drops_expired_threads(self, store: ThreadStore, clock: Clock) -> None:
        """prune() forgets expired threads and keeps live ones."""
        old, new = _tid(), _tid()
        _create(store, old, team="x")
        clock.advance(TTL_S / 2)
        _create(store, new, team="x")
        clock.advance(TTL_S / 2)
        store.prune()
        assert [t.id for t in store.list(metadata={"team": "x"})] == [new]
        assert store.load(new) is not None


class TestList:
    def test_filters_by_metadata(self, store: ThreadStore, clock: Clock) -> None:
        """list(metadata=...) returns the threads having every key=value given."""
        a, b, c = _tid(), _tid(), _tid()
        _create(store, a, team="red", tier="gold")
        clock.advance(1)
        _create(store, b, team="red", tier="free")
        clock.advance(1)
        _create(store, c, team="blue", tier="gold")
        assert {t.id for t in store.list(metadata={"team": "red"})} == {a, b}
        assert [t.id for t in store.list(metadata={"team": "red", "tier": "gold"})] == [a]
        assert store.list(metadata={"team": "green"}) == []

    def test_lists_newest_first_with_a_limit(self, store: ThreadStore, clock: Clock) -> None:
        """Threads come most recently updated first, at most limit of them."""
        ids = []
        for _ in range(5):
            tid = _tid()
            _create(store, tid, app="demo")
            ids.append(tid)
            clock.advance(1)
        assert [t.id for t in store.list(limit=3)] == ids[::-1][:3]
        assert [t.id for t in store.list(metadata={"app": "demo"}, limit=2)] == ids[::-1][:2]

    def test_scalars_match_their_text(self, store: ThreadStore) -> None:
        """Booleans and numbers are filterable by value or by their JSON text (as the CLI passes)."""
        tid = _tid()
        _create(store, tid, vip=True, turns=3)
        assert [t.id for t in store.list(metadata={"vip": True})] == [tid]
        assert [t.id for t in store.list(metadata={"vip": "true", "turns": "3"})] == [tid]

    def test_changed_metadata_moves_the_index(self, store: ThreadStore) -> None:
        """After metadata changes, the old value no longer finds the thread and the new one does."""
        tid = _tid()
        _create(store, tid, stage="draft")
        store.save(tid, metadata={"stage": "done"}, state={}, expected_version=1)
        assert store.list(metadata={"stage": "draft"}) == []
        assert [t.id for t in store.list(metadata={"stage": "done"})] == [tid]

    def test_expired_threads_are_not_listed(self, store: ThreadStore, clock: Clock) -> None:
        """Listing skips expired threads, filtered or not."""
        _create(store, _tid(), team="red")
        clock.advance(TTL_S)
        assert store.list() == []
        assert store.list(metadata={"team": "red"}) == []

    def test_listing_does_not_open_state(self, open_store: OpenStore) -> None:
        """Listing works without a key: it returns metadata, never state."""
        tid = _tid()
        _create(open_store(), tid, {"secret": 1}, team="red")
        infos = open_store(keyring=None).list(metadata={"team": "red"})
        assert [i.id for i in infos] == [tid]
        assert not hasattr(infos[0], "state")

    def test_non_scalar_filter_is_refused(self, store: ThreadStore) -> None:
        """Only scalar values are indexed, so filtering by a list is an error."""
        with pytest.raises(ValueError, match="expected a string or scalar"):
            store.list(metadata={"tags": ["a"]})


class TestDelete:
    def test_deleted_thread_is_gone(self, store: ThreadStore) -> None:
        """delete() removes the thread from load and list, and says it was there."""
        tid = _tid()
        _create(store, tid, team="red")
        assert store.delete(tid) is True
        assert store.load(tid) is None
        assert store.list(metadata={"team": "red"}) == []

    def test_deleting_an_unknown_thread_says_so(self, store: ThreadStore) -> None:
        """delete() of a thread that is not there returns False."""
        assert store.delete(_tid()) is False


# --- encryption at rest: only the persistent stores seal state ------------------------------------


@pytest.fixture(params=PERSISTENT)
def persistent(request: pytest.FixtureRequest) -> str:
    """A persistent backend (state sealed at rest)."""
    param: str = request.param
    return param


@pytest.fixture
def open_sealed(
    persistent: str, request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> Iterator[OpenStore]:
    """Open persistent stores on one shared database with the keyring a test chooses."""
    url = _url(persistent, request, tmp_path)
    opened: list[ThreadStore] = []

    def open_(keyring: Keyring | None = RING, ttl_s: float = TTL_S) -> ThreadStore:
        store = thread_store_from_url(url, key=keyring, ttl_s=ttl_s, require_key=False, environ={})
        store.clock = clock
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def _raw_state(store: ThreadStore, tid: str) -> bytes:
    """Read the stored state bytes straight from the database."""
    if isinstance(store, SQLiteThreadStore):
        with sqlite3.connect(store.path) as conn:
            row = conn.execute("SELECT state FROM thread_records WHERE thread_id = ?", (tid,)).fetchone()
        conn.close()
        value: bytes = row[0]
        return value
    assert isinstance(store, RedisThreadStore)
    raw: bytes = store._client.hget(store._thread_key(tid), b"state")
    return raw


def _write_raw_state(store: ThreadStore, tid: str, state: bytes) -> None:
    """Overwrite the stored state bytes behind the store's back (an attacker with database access)."""
    if isinstance(store, SQLiteThreadStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute("UPDATE thread_records SET state = ? WHERE thread_id = ?", (state, tid))
        conn.close()
    else:
        assert isinstance(store, RedisThreadStore)
        store._client.hset(store._thread_key(tid), b"state", state)


class TestEncryptionAtRest:
    def test_state_is_sealed_in_the_database(self, open_sealed: OpenStore) -> None:
        """The database holds ciphertext, not the state's text; metadata stays readable."""
        store = open_sealed()
        tid = _tid()
        _create(store, tid, {"secret": "hunter2"}, team="red")
        assert b"hunter2" not in _raw_state(store, tid)
        info = store.info(tid)
        assert info is not None
        assert info.metadata == {"team": "red"}
        assert info.key_id == Keyring(KEY).current_key_id

    def test_wrong_key_raises_naming_the_thread(self, open_sealed: OpenStore) -> None:
        """A store with another key refuses to open the state; it never returns empty state."""
        tid = _tid()
        _create(open_sealed(), tid, {"secret": 1})
        with pytest.raises(StateDecryptionError, match=tid):
            open_sealed(keyring=Keyring(generate_key())).load(tid)

    def test_tampered_state_raises(self, open_sealed: OpenStore) -> None:
        """One flipped byte in the stored state is detected on load."""
        store = open_sealed()
        tid = _tid()
        _create(store, tid, {"secret": 1})
        sealed = bytearray(_raw_state(store, tid))
        sealed[-3] ^= 0x40
        _write_raw_state(store, tid, bytes(sealed))
        with pytest.raises(StateDecryptionError, match="tampered"):
            store.load(tid)

    def test_state_copied_to_another_thread_raises(self, open_sealed: OpenStore) -> None:
        """A valid record moved onto another thread does not open there."""
        store = open_sealed()
        victim, attacker = _tid(), _tid()
        _create(store, victim, {"role": "admin"})
        _create(store, attacker, {"role": "guest"})
        _write_raw_state(store, attacker, _raw_state(store, victim))
        with pytest.raises(StateDecryptionError) as info:
            store.load(attacker)
        assert info.value.thread_id == attacker

    def test_update_never_overwrites_state_it_cannot_open(self, open_sealed: OpenStore) -> None:
        """update() with the wrong key raises instead of replacing the thread with fresh state."""
        tid = _tid()
        _create(open_sealed(), tid, {"keep": 1})
        with pytest.raises(StateDecryptionError):
            open_sealed(keyring=Keyring(generate_key())).update(tid, lambda c: ({}, {}))
        loaded = open_sealed().load(tid)
        assert loaded is not None
        assert loaded.state == {"keep": 1}

    def test_rotation_reads_old_and_writes_new(self, open_sealed: OpenStore) -> None:
        """With new + old keys, old records open and the next save re-seals with the new key."""
        old_key, new_key = KEY, generate_key()
        tid = _tid()
        _create(open_sealed(), tid, {"n": 1})
        rotated = open_sealed(keyring=Keyring(new_key, [old_key]))
        data = rotated.update(tid, lambda c: ({}, {"n": 2}))
        assert data.key_id == Keyring(new_key).current_key_id
        loaded = open_sealed(keyring=Keyring(new_key)).load(tid)
        assert loaded is not None
        assert loaded.state == {"n": 2}

    def test_without_a_key_state_is_refused_clearly(self, open_sealed: OpenStore) -> None:
        """A keyless store can read metadata but says which variable to set for state."""
        tid = _tid()
        _create(open_sealed(), tid, {"n": 1})
        keyless = open_sealed(keyring=None)
        with pytest.raises(StateDecryptionError, match=ENV_STATE_KEY):
            keyless.load(tid)
        with pytest.raises(ConfigurationError, match=ENV_STATE_KEY):
            keyless.save(_tid(), metadata={}, state={"n": 1}, expected_version=0)


# --- the registry: session() on a store -----------------------------------------------------------


@pytest.fixture
def registry(store: ThreadStore) -> StoreThreadRegistry:
    """A registry on the store under test."""
    return StoreThreadRegistry(store, ttl_s=TTL_S)


def _run_session(
    registry: StoreThreadRegistry, thread_id: str | None, body: Callable[[Thread], None]
) -> Thread:
    """Join, run ``body``, release: what ``session()`` does around a request."""
    thread = registry.join(thread_id)
    body(thread)
    registry.release(thread, _dummy_session(thread))
    return thread


class TestStoreThreadRegistry:
    def test_thread_state_has_the_session_state_interface(self, registry: StoreThreadRegistry) -> None:
        """thread.state is a State: get/set/delete, the mapping protocol and to_dict."""
        thread = registry.join(None)
        assert isinstance(thread.state, State)
        assert isinstance(thread.state, ThreadState)
        thread.state.set("a", 1)
        thread.state["b"] = 2
        assert thread.state.get("a") == 1
        assert thread.state.delete("a") is True
        assert thread.state.delete("a") is False
        assert thread.state.to_dict() == {"b": 2}
        assert list(thread.state) == ["b"]
        assert "b" in thread.state

    def test_state_persists_across_sessions(self, registry: StoreThreadRegistry) -> None:
        """What one session stores in thread state, the next session of the thread sees."""
        first = _run_session(registry, None, lambda t: t.state.update(turns=1))
        first.metadata["user"] = "u1"
        registry.release(first, _dummy_session(first))
        second = registry.join(first.id)
        assert second.id == first.id
        assert second.state.to_dict() == {"turns": 1}
        assert second.metadata == {"user": "u1"}

    def test_new_thread_is_saved_even_without_state(self, registry: StoreThreadRegistry) -> None:
        """A session that writes nothing still records its thread, so the ID can be joined again."""
        thread = _run_session(registry, None, lambda t: None)
        assert registry.join(thread.id).id == thread.id

    def test_unknown_thread_id_starts_a_new_thread_with_a_warning(
        self, registry: StoreThreadRegistry, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Joining an ID the store does not know gives a new ID and says so."""
        _internal._reset_for_tests()
        unknown = _tid()
        with caplog.at_level(logging.WARNING, logger=_internal.INTERNAL_LOGGER_NAME):
            thread = registry.join(unknown)
        assert thread.id != unknown
        assert thread.state.to_dict() == {}
        assert any(unknown in r.getMessage() for r in caplog.records)

    def test_expired_thread_is_never_resurrected(self, registry: StoreThreadRegistry, clock: Clock) -> None:
        """After the TTL, joining the old ID gives a new thread without the old state."""
        old = _run_session(registry, None, lambda t: t.state.update(secret=1))
        clock.advance(TTL_S)
        fresh = registry.join(old.id)
        assert fresh.id != old.id
        assert "secret" not in fresh.state

    def test_release_pushes_the_expiry(self, registry: StoreThreadRegistry, clock: Clock) -> None:
        """Each session's end gives the thread another TTL."""
        thread = _run_session(registry, None, lambda t: None)
        clock.advance(TTL_S - 1)
        _run_session(registry, thread.id, lambda t: None)
        clock.advance(TTL_S - 1)
        assert registry.join(thread.id).id == thread.id

    def test_concurrent_sessions_writing_different_keys_both_survive(self, open_store: OpenStore) -> None:
        """Two sessions of one thread, open at once on two store handles, merge their writes."""
        one, two = StoreThreadRegistry(open_store(), TTL_S), StoreThreadRegistry(open_store(), TTL_S)
        base = _run_session(one, None, lambda t: t.state.update(shared=0))
        a, b = one.join(base.id), two.join(base.id)
        a.state["from_a"] = 1
        b.state["from_b"] = 2
        del b.state["shared"]
        one.release(a, _dummy_session(a))
        two.release(b, _dummy_session(b))
        assert one.join(base.id).state.to_dict() == {"from_a": 1, "from_b": 2}

    def test_same_key_last_writer_wins(self, open_store: OpenStore) -> None:
        """When two sessions write one key, the one that ends last wins."""
        one, two = StoreThreadRegistry(open_store(), TTL_S), StoreThreadRegistry(open_store(), TTL_S)
        base = _run_session(one, None, lambda t: t.state.update(k="base"))
        a, b = one.join(base.id), two.join(base.id)
        a.state["k"] = "a"
        b.state["k"] = "b"
        two.release(b, _dummy_session(b))
        one.release(a, _dummy_session(a))
        assert one.join(base.id).state["k"] == "a"

    def test_rewriting_the_loaded_value_still_counts_as_a_write(self, open_store: OpenStore) -> None:
        """Setting a key to the value it had is a write too: it wins over an older concurrent write."""
        one, two = StoreThreadRegistry(open_store(), TTL_S), StoreThreadRegistry(open_store(), TTL_S)
        base = _run_session(one, None, lambda t: t.state.update(k="base"))
        a, b = one.join(base.id), two.join(base.id)
        b.state["k"] = "b"
        two.release(b, _dummy_session(b))
        a.state["k"] = "base"
        one.release(a, _dummy_session(a))
        assert one.join(base.id).state["k"] == "base"

    def test_in_place_mutation_is_saved(self, registry: StoreThreadRegistry) -> None:
        """Appending to a list held in state is saved like an assignment."""
        thread = _run_session(registry, None, lambda t: t.state.update(history=["hi"]))
        again = _run_session(registry, thread.id, lambda t: t.state["history"].append("there"))
        assert registry.join(again.id).state["history"] == ["hi", "there"]

    def test_unsaveable_value_is_skipped_with_a_warning(
        self, registry: StoreThreadRegistry, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A value JSON cannot hold is left out (with a warning); the other keys are saved."""
        _internal._reset_for_tests()
        with caplog.at_level(logging.WARNING, logger=_internal.INTERNAL_LOGGER_NAME):
            thread = _run_session(registry, None, lambda t: t.state.update(ok=1, bad=object()))
        assert registry.join(thread.id).state.to_dict() == {"ok": 1}
        assert any("'bad'" in r.getMessage() for r in caplog.records)

    def test_sessions_use_the_store_end_to_end(self, registry: StoreThreadRegistry) -> None:
        """With the registry installed, session(thread_id=...) carries thread state between requests."""
        set_thread_registry(registry)
        with session() as first:
            first.thread.state["cart"] = ["apple"]
        with session(thread_id=first.thread.id) as second:
            assert second.thread.state.to_dict() == {"cart": ["apple"]}
            assert type(second.thread.state).__mro__[1:] == type(second.state).__mro__


def _dummy_session(thread: Thread) -> Session:
    return Session("sess_test", thread, None)


class TestRegistryDecryption:
    def test_undecryptable_thread_raises_out_of_session(self, open_sealed: OpenStore) -> None:
        """Joining a thread whose state cannot be opened raises in the app, it does not reset."""
        tid = _tid()
        _create(open_sealed(), tid, {"n": 1})
        set_thread_registry(StoreThreadRegistry(open_sealed(keyring=Keyring(generate_key()))))
        with pytest.raises(StateDecryptionError, match=tid), session(thread_id=tid):
            pass


# --- two processes at once --------------------------------------------------------------------------

_CHILD = r"""
import sys
import time
from agentuity_logging._context import Session
from agentuity_logging._storage._registry import StoreThreadRegistry
from agentuity_logging._storage._threads import thread_store_from_url

url, tid, name, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = thread_store_from_url(url)
registry = StoreThreadRegistry(store)

def increment(current):
    time.sleep(0.002)  # think time between read and write, so the two processes really collide
    state = {} if current is None else dict(current.state)
    state["count"] = state.get("count", 0) + 1
    return ({} if current is None else current.metadata), state

print("ready", flush=True)
sys.stdin.readline()  # the parent's "go": both processes start together
for n in range(rounds):
    store.update(tid, increment)
    thread = registry.join(tid)
    thread.state[f"{name}-{n}"] = n
    registry.release(thread, Session("sess_" + name, thread, None))
store.close()
print("done", flush=True)
"""


class TestTwoProcesses:
    def test_two_processes_updating_one_thread_lose_nothing(
        self, persistent: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> None:
        """Two processes hammering one thread keep every increment and every key either wrote."""
        url = _url(persistent, request, tmp_path)
        rounds = 40
        with thread_store_from_url(url, key=KEY) as store:
            tid = _tid()
            store.save(tid, metadata={"app": "test"}, state={}, expected_version=0)
        env = {**os.environ, ENV_STATE_KEY: KEY}
        children = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, url, tid, name, str(rounds)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
            )
            for name in ("p1", "p2")
        ]
        try:
            for child in children:
                assert child.stdout is not None
                assert child.stdout.readline().strip() == "ready"
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            results = [child.communicate(timeout=120) for child in children]
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
        for child, (out, err) in zip(children, results, strict=True):
            assert child.returncode == 0, err
            assert out.strip() == "done"
        with thread_store_from_url(url, key=KEY) as store:
            data = store.load(tid)
        assert data is not None
        assert data.state["count"] == 2 * rounds
        expected = {f"{name}-{n}" for name in ("p1", "p2") for n in range(rounds)}
        assert expected <= set(data.state)
        assert data.metadata == {"app": "test"}


# --- URLs and configuration ---------------------------------------------------------------------------


class TestThreadStoreFromUrl:
    def test_memory(self) -> None:
        """'memory' opens the in-process store, no key needed."""
        with thread_store_from_url("memory", environ={}) as store:
            assert isinstance(store, MemoryThreadStore)

    def test_sqlite_absolute_path(self, tmp_path: Path) -> None:
        """sqlite:///abs/path opens that file (and sqlite:////abs/path means the same)."""
        path = tmp_path / "t.db"
        for url in (f"sqlite://{path}", f"sqlite:///{path}"):
            with thread_store_from_url(url, key=KEY) as store:
                assert isinstance(store, SQLiteThreadStore)
                assert store.path == str(path)
        assert path.exists()

    def test_sqlite_relative_path(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """sqlite://name.db is relative to the working directory."""
        monkeypatch.chdir(tmp_path)
        with thread_store_from_url("sqlite://rel.db", key=KEY):
            pass
        assert (tmp_path / "rel.db").exists()

    def test_redis(self, redis_url: str) -> None:
        """redis://host:port/db opens a Redis store."""
        with thread_store_from_url(redis_url, key=KEY) as store:
            assert isinstance(store, RedisThreadStore)
            assert store.list() == []

    def test_key_comes_from_the_environment(self, tmp_path: Path) -> None:
        """Without key=..., AGENTUITY_STATE_KEY is used."""
        with thread_store_from_url(f"sqlite://{tmp_path / 't.db'}", environ={ENV_STATE_KEY: KEY}) as store:
            assert store.keyring is not None
            assert store.keyring.current_key_id == Keyring(KEY).current_key_id

    @pytest.mark.parametrize(
        "url",
        [
            "",
            "postgres://h/db",
            "sqlite://",
            "sqlite:///",
            "sqlite:///x.db?mode=ro",
            "redis://h:port/0",
            "redis://h:6379/zero",
        ],
    )
    def test_bad_url_is_a_configuration_error(self, url: str) -> None:
        """Unknown schemes and malformed URLs raise ConfigurationError showing the expected shapes."""
        with pytest.raises(ConfigurationError, match="thread_store"):
            thread_store_from_url(url, key=KEY)

    def test_redis_password_is_never_echoed(self) -> None:
        """A bad URL carrying a password is described without it."""
        with pytest.raises(ConfigurationError) as info:
            thread_store_from_url("redis://:hunter2@h:6379/zero", key=KEY)
        assert "hunter2" not in str(info.value)
        with pytest.raises(ConfigurationError) as info:
            thread_store_from_url("mysql://root:hunter2@h/db", key=KEY)
        assert "hunter2" not in str(info.value)

    def test_persistent_store_needs_a_key(self, tmp_path: Path) -> None:
        """SQLite without a key fails at configuration time, naming the variable to set."""
        with pytest.raises(ConfigurationError, match=ENV_STATE_KEY):
            thread_store_from_url(f"sqlite://{tmp_path / 't.db'}", environ={})
        with thread_store_from_url(f"sqlite://{tmp_path / 't.db'}", environ={}, require_key=False) as store:
            assert store.keyring is None

    def test_bad_ttl_is_refused(self) -> None:
        """A TTL that is not positive is a configuration error."""
        with pytest.raises(ConfigurationError, match="ttl_s"):
            thread_store_from_url("memory", ttl_s=0)

    def test_missing_redis_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the redis package the error says to install the redis extra."""
        monkeypatch.setitem(sys.modules, "redis", None)
        with pytest.raises(MissingDependencyError, match=r"agentuity-logging\[redis\]"):
            thread_store_from_url("redis://127.0.0.1:1/0", key=KEY)


class TestThreadRegistryFromSettings:
    def test_default_is_the_in_memory_registry(self) -> None:
        """Nothing configured (or 'memory') keeps the in-process registry."""
        assert isinstance(thread_registry_from_settings(environ={}), MemoryThreadRegistry)
        assert isinstance(thread_registry_from_settings("memory", ttl_s=5), MemoryThreadRegistry)

    def test_environment_names_the_store(self, tmp_path: Path) -> None:
        """AGENTUITY_THREAD_STORE and AGENTUITY_STATE_KEY configure a persistent registry."""
        env = {ENV_THREAD_STORE: f"sqlite://{tmp_path / 't.db'}", ENV_STATE_KEY: KEY}
        registry = thread_registry_from_settings(environ=env, ttl_s=30)
        assert isinstance(registry, StoreThreadRegistry)
        try:
            assert registry.ttl_s == 30
            assert isinstance(registry.store, SQLiteThreadStore)
        finally:
            registry.close()

    def test_bad_environment_is_named_in_the_error(self) -> None:
        """A malformed AGENTUITY_THREAD_STORE is reported under that name."""
        with pytest.raises(ConfigurationError, match=ENV_THREAD_STORE):
            thread_registry_from_settings(environ={ENV_THREAD_STORE: "nope://"})

    def test_store_object_receives_the_state_key(self, tmp_path: Path) -> None:
        """A store passed without a keyring gets state_key; one with a keyring refuses a second."""
        store = SQLiteThreadStore(tmp_path / "t.db")
        try:
            registry = thread_registry_from_settings(store, state_key=KEY)
            assert isinstance(registry, StoreThreadRegistry)
            assert store.keyring is not None
            with pytest.raises(ConfigurationError, match="already has a keyring"):
                thread_registry_from_settings(store, state_key=KEY)
        finally:
            store.close()

    def test_malformed_state_key_fails_even_for_memory(self) -> None:
        """A bad state_key is reported at configure time whatever the store."""
        with pytest.raises(ConfigurationError, match="state_key"):
            thread_registry_from_settings("memory", state_key="not-a-key")


class TestRedisSpecifics:
    def test_thread_key_carries_a_redis_ttl(self, redis_url: str) -> None:
        """Redis itself expires the thread's hash after the TTL."""
        with thread_store_from_url(redis_url, key=KEY, ttl_s=120) as store:
            assert isinstance(store, RedisThreadStore)
            tid = _tid()
            _create(store, tid, team="red")
            ttl_ms = store._client.pttl(store._thread_key(tid))
            assert 110_000 < ttl_ms <= 120_000
            index_ttl = store._client.pttl(store._index_key("team", "red"))
            assert 110_000 < index_ttl <= 120_000


class TestSQLiteSpecifics:
    def test_uses_wal_and_an_index_for_metadata_filters(self, tmp_path: Path) -> None:
        """The file is in WAL mode and a metadata filter is answered from the (key, value) index."""
        with SQLiteThreadStore(tmp_path / "t.db", keyring=Keyring(KEY)) as store:
            assert isinstance(store, SQLiteThreadStore)
            conn = store._conn()
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            plan = conn.execute(
                "EXPLAIN QUERY PLAN SELECT thread_id FROM thread_record_metadata WHERE key = ? AND value = ?",
                ("team", "red"),
            ).fetchall()
            assert any("thread_record_metadata_kv" in str(row) for row in plan)

    @pytest.mark.forks
    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_forked_child_opens_its_own_connection(self, tmp_path: Path) -> None:
        """A child forked after the parent used the store writes through a fresh connection."""
        with SQLiteThreadStore(tmp_path / "t.db", keyring=RING) as store:
            assert isinstance(store, SQLiteThreadStore)
            tid = _tid()
            _create(store, tid, {"n": 1})
            parent_conn = store._conn()
            with warnings.catch_warnings():
                # 3.12+ warns about forking a process with threads (the Redis fixture's log reader).
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                code = 1
                try:
                    child_deadline()
                    fresh = store._conn() is not parent_conn
                    store.update(tid, lambda c: ({}, {"n": 0 if c is None else c.state["n"] + 1}))
                    code = 0 if fresh else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            loaded = store.load(tid)
            assert loaded is not None
            assert loaded.state == {"n": 2}

    def test_closed_store_refuses_work(self, tmp_path: Path) -> None:
        """After close(), operations raise ThreadStoreError instead of reopening silently."""
        from agentuity_logging._storage._threads import ThreadStoreError

        store = SQLiteThreadStore(tmp_path / "t.db")
        store.close()
        store.close()
        with pytest.raises(ThreadStoreError, match="closed"):
            store.load(_tid())
