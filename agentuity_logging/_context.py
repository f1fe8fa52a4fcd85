"""Sessions, threads and bound fields, carried in one ``ContextVar``.

The variable holds an immutable :class:`Snapshot`; entering a session, a span or a ``bound()`` block
creates a new snapshot and sets it, and leaving resets the variable with its ``Token`` in ``finally``.
Nothing is mutated in place, so concurrent asyncio tasks and threads can never see each other's IDs, and a
log call costs a single ``ContextVar.get()``: the snapshot carries the record attributes pre-merged.
"""

from __future__ import annotations

import contextvars
import functools
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar, Token
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Final, ParamSpec, Protocol, TypeVar, overload

from agentuity_logging._ids import (
    SESSION_PREFIX,
    THREAD_PREFIX,
    new_session_id,
    new_thread_id,
    validate_id,
)
from agentuity_logging._internal import Listeners, report_once
from agentuity_logging._records import SESSION_KEY, SPAN_KEY, THREAD_KEY, normalize_fields

__all__ = [
    "ContextThreadPoolExecutor",
    "Session",
    "SessionListener",
    "Snapshot",
    "State",
    "Thread",
    "add_session_listener",
    "bound",
    "current_session",
    "current_snapshot",
    "external_metadata",
    "remove_session_listener",
    "session",
    "session_id",
    "thread_id",
    "wrap",
]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_THREAD_TTL_S: Final = 3600.0


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class State(MutableMapping[str, Any]):
    """A string-keyed mapping of state: ``get``/``set``/``delete`` plus the whole dict protocol.

    ``session.state`` is request-scoped: it is emptied when the session ends. ``thread.state`` lives as long
    as the thread. Not thread-safe by itself: one session is one request, so share it across threads only
    with your own lock.
    """

    __slots__ = ("_data",)

    def __init__(self, initial: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = dict(initial) if initial else {}

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``."""
        self[key] = value

    def delete(self, key: str) -> bool:
        """Remove ``key``; return whether it was there (never raises ``KeyError``)."""
        try:
            del self[key]
        except KeyError:
            return False
        return True

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"state keys are strings, got {type(key).__name__}")
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        # Keys only: state may hold user data that must not leak into logs through a repr.
        return f"{type(self).__name__}(keys={sorted(self._data)!r})"

    def to_dict(self) -> dict[str, Any]:
        """Return a shallow copy as a plain dict."""
        return dict(self._data)


class Thread:
    """One conversation: many sessions sharing an ID, metadata and state, expiring after inactivity.

    A thread expires ``ttl_s`` seconds (one hour by default) after its last session ended or started.
    """

    __slots__ = ("created_at", "expires_at", "id", "metadata", "state", "ttl_s", "updated_at")

    def __init__(
        self,
        thread_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        state: State | None = None,
        ttl_s: float = DEFAULT_THREAD_TTL_S,
        created_at: datetime | None = None,
    ) -> None:
        now = _utcnow()
        self.id = thread_id
        self.metadata: dict[str, Any] = dict(metadata) if metadata else {}
        self.state: State = state if state is not None else State()
        self.ttl_s = ttl_s
        self.created_at = created_at or now
        self.updated_at = now
        self.expires_at = datetime.fromtimestamp(now.timestamp() + ttl_s, timezone.utc)

    def touch(self) -> None:
        """Push the expiry ``ttl_s`` seconds past now (a session of the thread is active)."""
        now = _utcnow()
        self.updated_at = now
        self.expires_at = datetime.fromtimestamp(now.timestamp() + self.ttl_s, timezone.utc)

    def expired(self, now: datetime | None = None) -> bool:
        """Return whether the thread's lifetime has run out."""
        return (now or _utcnow()) >= self.expires_at

    def __repr__(self) -> str:
        return f"Thread(id={self.id!r}, expires_at={self.expires_at.isoformat()!r})"


class Session:
    """One request: an ID, its thread, JSON-able metadata and request-scoped state.

    ``success`` is ``None`` while the session runs, then ``True``/``False`` depending on whether the body
    raised. ``state`` is emptied when the session ends; ``metadata`` is kept (the log store saves it).
    """

    __slots__ = ("ended_at", "error", "id", "metadata", "started_at", "state", "success", "thread")

    def __init__(self, session_id: str, thread: Thread, metadata: Mapping[str, Any] | None) -> None:
        self.id = session_id
        self.thread = thread
        self.metadata: dict[str, Any] = dict(metadata) if metadata else {}
        self.state = State()
        self.started_at = _utcnow()
        self.ended_at: datetime | None = None
        self.success: bool | None = None
        self.error: str | None = None

    @property
    def duration_ms(self) -> float | None:
        """Milliseconds from start to end, or ``None`` while running."""
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds() * 1000.0

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, thread={self.thread.id!r})"


class Snapshot:
    """What the context holds: the active session, bound fields, the active span.

    ``attrs`` is the ready-made dict of record attributes (IDs first, then fields) that a log call copies
    onto its record; it is built once per context change, never per log call. ``session_id`` and
    ``thread_id`` repeat the IDs and ``rest`` holds the other attributes (span, fields) for stamping code
    that sets the IDs as plain attributes. Never mutate a snapshot.
    """

    __slots__ = ("attrs", "fields", "rest", "session", "session_id", "span", "thread_id")

    def __init__(self, session: Session | None, fields: Mapping[str, Any], span: Any | None = None) -> None:
        self.session = session
        self.fields = fields
        self.span = span
        attrs: dict[str, Any] = {}
        self.session_id: str | None
        self.thread_id: str | None
        if session is not None:
            attrs[SESSION_KEY] = self.session_id = session.id
            attrs[THREAD_KEY] = self.thread_id = session.thread.id
        else:
            self.session_id = self.thread_id = None
        rest: dict[str, Any] = {}
        if span is not None:
            rest[SPAN_KEY] = span.id
        rest.update(fields)
        attrs.update(rest)
        self.attrs = attrs
        self.rest = rest

    def replace(self, **changes: Any) -> Snapshot:
        """Return a new snapshot with ``session``, ``fields`` or ``span`` replaced."""
        return Snapshot(
            changes.get("session", self.session),
            changes.get("fields", self.fields),
            changes.get("span", self.span),
        )


_EMPTY: Final = Snapshot(None, {})
_CONTEXT: Final[ContextVar[Snapshot]] = ContextVar("agentuity_logging.context", default=_EMPTY)

#: The fast accessor used by stamping code: one C call, no Python frame.
current_snapshot: Final = _CONTEXT.get


def set_snapshot(snapshot: Snapshot) -> Token[Snapshot]:
    """Make ``snapshot`` current; reset with :func:`reset_snapshot` in a ``finally``."""
    return _CONTEXT.set(snapshot)


def reset_snapshot(token: Token[Snapshot], previous: Snapshot) -> None:
    """Restore the snapshot from before ``token``; fall back to ``previous`` from a foreign context."""
    try:
        _CONTEXT.reset(token)
    except ValueError:
        # The token was made in another Context (an async generator finalised elsewhere, say):
        # restoring the value we replaced is the best we can do there.
        _CONTEXT.set(previous)


def current_session() -> Session | None:
    """Return the active :class:`Session`, or ``None`` outside a session."""
    return _CONTEXT.get().session


def session_id() -> str | None:
    """Return the active session's ID, or ``None``."""
    s = _CONTEXT.get().session
    return None if s is None else s.id


def thread_id() -> str | None:
    """Return the active session's thread ID, or ``None``."""
    s = _CONTEXT.get().session
    return None if s is None else s.thread.id


def external_metadata() -> dict[str, str]:
    """Return ``{"agentuitySessionId": ..., "agentuityThreadId": ...}`` for tagging calls to other services.

    Empty outside a session, so it can always be merged into a payload.
    """
    s = _CONTEXT.get().session
    if s is None:
        return {}
    return {SESSION_KEY: s.id, THREAD_KEY: s.thread.id}


# --- threads: where sessions find their conversation -------------------------------------------------


class ThreadRegistry(Protocol):
    """Where sessions find their thread. The default keeps threads in this process's memory.

    ``configure(thread_store=...)`` swaps in one backed by a persistent store.
    """

    def join(self, thread_id: str | None) -> Thread:
        """Return the live thread ``thread_id`` (or a new thread when it is ``None`` or expired)."""

    def release(self, thread: Thread, session: Session) -> None:
        """Record that ``session`` of ``thread`` ended (extend the expiry, persist state)."""


class MemoryThreadRegistry:
    """Threads kept in this process: joining an ID returns the very same :class:`Thread` until it expires."""

    def __init__(self, ttl_s: float = DEFAULT_THREAD_TTL_S, max_threads: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_threads = max_threads
        self._threads: dict[str, Thread] = {}
        self._lock = threading.Lock()

    def join(self, thread_id: str | None) -> Thread:
        """Return the live thread ``thread_id``, or a new one (see :class:`ThreadRegistry`)."""
        with self._lock:
            if thread_id is not None:
                thread = self._threads.get(thread_id)
                if thread is not None and not thread.expired():
                    thread.touch()
                    return thread
                if thread is not None:
                    del self._threads[thread_id]
                    report_once(
                        f"thread-expired:{thread_id}",
                        "thread %s expired; starting a fresh thread instead of resurrecting it",
                        thread_id,
                    )
                    thread_id = None
            if len(self._threads) >= self.max_threads:
                self._prune()
            thread = Thread(thread_id or new_thread_id(), ttl_s=self.ttl_s)
            self._threads[thread.id] = thread
            return thread

    def release(self, thread: Thread, session: Session) -> None:
        """Extend the thread's life from the end of ``session``."""
        thread.touch()

    def _prune(self) -> None:
        now = _utcnow()
        for key in [k for k, t in self._threads.items() if t.expired(now)]:
            del self._threads[key]
        # Still full of live threads: forget the oldest rather than grow without bound.
        overflow = len(self._threads) - self.max_threads + 1
        if overflow > 0:
            for key in sorted(self._threads, key=lambda k: self._threads[k].updated_at)[:overflow]:
                del self._threads[key]


_registry: ThreadRegistry = MemoryThreadRegistry()


def get_thread_registry() -> ThreadRegistry:
    """Return the registry new sessions use to find their thread."""
    return _registry


def set_thread_registry(registry: ThreadRegistry) -> ThreadRegistry:
    """Install ``registry`` for new sessions; return the previous one."""
    global _registry
    previous, _registry = _registry, registry
    return previous


# --- session lifecycle listeners (the log store, middleware) -----------------------------------------


class SessionListener(Protocol):
    """Told when sessions start and end (the log store saves them; never raise from these)."""

    def session_started(self, session: Session) -> None:
        """Called on entry, inside the new context."""

    def session_ended(self, session: Session) -> None:
        """Called on exit, still inside the session's context, after ``success``/``ended_at`` are set."""


_listeners: Final = Listeners[SessionListener]("session listener")


def add_session_listener(listener: SessionListener) -> None:
    """Register ``listener`` (idempotent)."""
    _listeners.add(listener)


def remove_session_listener(listener: SessionListener) -> None:
    """Unregister ``listener`` (no error if absent)."""
    _listeners.remove(listener)


def _notify(method: str, sess: Session) -> None:
    _listeners.notify(method, sess)


def _is_cancelled(exc: BaseException) -> bool:
    """Whether ``exc`` is asyncio's cancellation, without importing asyncio for the check."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


# --- session() ----------------------------------------------------------------------------------------


class session:  # noqa: N801 - used like a function: ``with session():``, ``@session()``
    """Run a block, a coroutine or each call of a function as one session.

    Usable as ``with session() as s``, ``async with session() as s`` and as a decorator on sync and async
    functions (each call is a new session). ``session_id`` and ``thread_id`` come from outside and are
    validated: a malformed one raises ``ValueError`` here, before anything is logged. Omitting
    ``thread_id`` starts a new thread; passing a live one joins it (the same :class:`Thread` object).
    Nested sessions restore the outer one on exit, also when the body raises.
    """

    __slots__ = ("_entries", "_metadata", "_session_id", "_thread_id")

    def __init__(
        self,
        *,
        session_id: str | None = None,
        thread_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self._session_id = None if session_id is None else validate_id(session_id, SESSION_PREFIX)
        self._thread_id = None if thread_id is None else validate_id(thread_id, THREAD_PREFIX)
        self._metadata = dict(metadata) if metadata else None
        self._entries: list[tuple[Session, Token[Snapshot], Snapshot]] = []

    def _enter(self) -> Session:
        thread = _registry.join(self._thread_id)
        sess = Session(self._session_id or new_session_id(), thread, self._metadata)
        previous = _CONTEXT.get()
        token = _CONTEXT.set(previous.replace(session=sess))
        self._entries.append((sess, token, previous))
        _notify("session_started", sess)
        return sess

    def _exit(self, exc: BaseException | None) -> None:
        sess, token, previous = self._entries.pop()
        try:
            sess.ended_at = _utcnow()
            sess.success = exc is None or isinstance(exc, GeneratorExit) or _is_cancelled(exc)
            if exc is not None and not sess.success:
                sess.error = f"{type(exc).__name__}: {exc}"
            if exc is not None and _is_cancelled(exc):
                sess.error = "cancelled"
            try:
                _registry.release(sess.thread, sess)
            except Exception as err:
                report_once("thread-release", "saving thread %s failed: %r", sess.thread.id, err)
            _notify("session_ended", sess)
        finally:
            sess.state.clear()
            reset_snapshot(token, previous)

    def __enter__(self) -> Session:
        return self._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Session:
        return self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit(exc)

    def _fresh(self) -> session:
        clone = session.__new__(session)
        clone._session_id = self._session_id
        clone._thread_id = self._thread_id
        clone._metadata = self._metadata
        clone._entries = []
        return clone

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` so that each call runs in a new session."""
        import inspect  # deferred: keeps `import agentuity_logging` light

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with self._fresh():
                    return await fn(*args, **kwargs)

            return run_async

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            with self._fresh():
                return fn(*args, **kwargs)

        return run


class bound:  # noqa: N801 - used like a function: ``with bound(user="u1"):``
    """Add ``fields`` to every record logged inside the block, from every logger.

    Nestable: inner values win, and each block restores what was there before. Field names that clash
    with the record schema are renamed (see :func:`agentuity_logging._records.normalize_fields`).
    """

    __slots__ = ("_fields", "_tokens")

    def __init__(self, **fields: Any) -> None:
        self._fields = normalize_fields(fields)
        self._tokens: list[tuple[Token[Snapshot], Snapshot]] = []

    def __enter__(self) -> None:
        previous = _CONTEXT.get()
        merged = {**previous.fields, **self._fields}
        self._tokens.append((_CONTEXT.set(previous.replace(fields=merged)), previous))

    def __exit__(self, *exc: object) -> None:
        token, previous = self._tokens.pop()
        reset_snapshot(token, previous)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


# --- crossing into threads -----------------------------------------------------------------------


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """Return ``fn`` bound to the caller's context, for running on another thread.

    The context (our session and every other ``ContextVar``, structlog's included) is captured now; each
    call runs in a fresh copy of it, so concurrent calls cannot disturb each other or the caller.
    """
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return run


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose jobs run in the context of the code that submitted them.

    Use it for ``loop.run_in_executor`` (which, unlike ``asyncio.to_thread``, does not copy the context).
    """

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)`` in a copy of the submitter's context."""
        ctx = contextvars.copy_context()
        return super().submit(ctx.run, fn, *args, **kwargs)  # type: ignore[arg-type]
