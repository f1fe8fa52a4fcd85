"""The delivery engine: one background worker under every shipper.

A shipper is this engine plus a :class:`~agentuity_logging._delivery._protocol.WireProtocol`. The
engine owns everything that is hard to get right once per backend:

* **The application's thread only appends.** A log call puts the record's values (six for a plain
  record, else a copy of its attributes; its message rendered) or a schema event dict on a bounded
  in-memory queue and returns; building the schema, masking secrets, JSON encoding and compression
  all happen on the worker, a queue of plain records in one pass (``WireProtocol.prepare_plain``).
* **Bounded memory.** The queue is bounded by records *and* bytes (100,000 / 64 MiB by default).
  When it is full the newest record is dropped and counted (``dropped["queue_full"]``); with
  ``block_timeout_s`` a log call may instead wait that long for room first.
* **Batches** fill up to the protocol's limits (count and bytes) and leave when full, when the
  oldest record is ``flush_interval_s`` old, or on ``flush()``/``close()``. One keep-alive
  connection per shipper (:mod:`._transport`) and one request in flight by default, so records
  arrive in order; ``max_in_flight=N`` sends up to N batches at once on N connections (for a
  far-away backend: one request in flight delivers at most one batch per round trip) and still
  acknowledges them in order.
* **Every answer is classified** by the protocol: retried with exponential backoff and full
  jitter (no retry limit, honouring ``Retry-After``), split in halves on 413, dropped and counted
  on a final refusal, or paused on an authentication failure (records kept, slow re-probe).
* **Durability** with ``spool_dir=``: each record is appended to the disk spool before it is
  sent and acknowledged after, so a crash, a kill or an outage longer than the queue loses nothing
  and the next process replays the rest (see :mod:`._spool`).
* **Lifecycle**: ``flush(timeout)`` waits for real; ``close(timeout)`` is idempotent and bounded
  even while the backend is down; atexit, SIGTERM and ``multiprocessing`` exits flush; a forked
  child starts over with fresh locks, queue and thread and never resends its parent's records.

The engine never raises into the application and never logs into itself: its own problems go to
``agentuity_logging.internal`` once (then are counted), records logged from its worker thread are
never enqueued, and the HTTP client's own log lines from the worker are filtered out.
"""

from __future__ import annotations

import atexit
import bisect
import itertools
import logging
import math
import os
import queue
import random
import signal
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypedDict

from agentuity_logging._delivery._protocol import Answer, Outcome, WireProtocol, redact_url
from agentuity_logging._delivery._redaction import CONTAINER_TYPES, Redactor
from agentuity_logging._delivery._spool import DEFAULT_SPOOL_MAX_BYTES, Spool, SpoolBatch
from agentuity_logging._delivery._transport import (
    RequestRefusedError,
    Transport,
    TransportError,
    open_transport,
)
from agentuity_logging._errors import ConfigurationError, require
from agentuity_logging._internal import report_once
from agentuity_logging._records import (
    LEVEL_NAMES,
    SESSION_KEY,
    SPAN_KEY,
    STANDARD_ATTRIBUTES,
    THREAD_KEY,
    event_from_record,
    plain_event,
    record_message,
)

if TYPE_CHECKING:
    import ssl

__all__ = [
    "DEFAULT_FLUSH_INTERVAL_S",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_RECORDS",
    "DeliveryEngine",
    "EngineOptions",
    "backoff_s",
    "close_all",
]

#: Records the in-memory queue holds before it drops (a burst of 100,000 small records fits).
DEFAULT_MAX_QUEUE_RECORDS: Final = 100_000
#: Bytes the in-memory queue holds before it drops.
DEFAULT_MAX_QUEUE_BYTES: Final = 64 * 1024 * 1024
#: Longest a record waits for its batch to fill. One second, like OpenTelemetry's batch processor:
#: a request per second per process is negligible for every backend, and a second of latency is
#: below what their own indexing adds.
DEFAULT_FLUSH_INTERVAL_S: Final = 1.0
DEFAULT_RETRY_INITIAL_S: Final = 0.5
DEFAULT_RETRY_MAX_S: Final = 10.0
#: A ``Retry-After`` longer than this is capped (a server asking for an hour is not honoured).
RETRY_AFTER_MAX_S: Final = 120.0
DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
#: Bound of ``max_in_flight``: each request in flight holds a connection and a thread.
MAX_IN_FLIGHT: Final = 32
DEFAULT_FLUSH_TIMEOUT_S: Final = 10.0
#: Bound of ``close()`` and of the flush at interpreter exit or SIGTERM.
DEFAULT_CLOSE_TIMEOUT_S: Final = 5.0
#: After a 401/403, how often the credentials are tried again.
DEFAULT_AUTH_RETRY_S: Final = 60.0
DEFAULT_SPOOL_FSYNC_INTERVAL_S: Final = 1.0

# Bytes counted for a queued record on top of its message (the record object, its fields): the
# byte bound is estimated on the application thread and exact once the worker encoded a record.
_RECORD_OVERHEAD: Final = 256
_EVENT_FIELD_BYTES: Final = 32
# The HTTP client's loggers: records they emit from a worker thread are filtered out.
_CLIENT_LOGGERS: Final = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.proxy")


class EngineOptions(TypedDict, total=False):
    """The delivery options every shipper takes as keyword arguments.

    Durations are in seconds, sizes in bytes. See ``docs/shipping.md`` for the guarantees.
    """

    #: Directory of the disk spool; ``None`` (default) keeps records in memory only.
    spool_dir: str | os.PathLike[str] | None
    #: Bound of the spool's size on disk (default 512 MiB).
    spool_max_bytes: int
    #: How often spooled records are fsync'd (default 1 s).
    spool_fsync_interval_s: float
    #: Records the in-memory queue holds (default 100,000).
    max_queue_records: int
    #: Bytes the in-memory queue holds (default 64 MiB).
    max_queue_bytes: int
    #: Records per request (default and maximum: the protocol's limit).
    max_batch_records: int
    #: Bytes per request (default and maximum: the protocol's limit).
    max_batch_bytes: int
    #: Longest a record waits for its batch to fill (default 1 s).
    flush_interval_s: float
    #: How long a log call may wait for room in a full queue (default 0: never wait, drop).
    block_timeout_s: float
    #: Timeout of one HTTP request (default 10 s).
    request_timeout_s: float
    #: Requests sent at the same time, each on its own connection (default 1; at most 32).
    max_in_flight: int
    #: What ``flush()`` waits at most when called without a timeout (default 10 s).
    flush_timeout_s: float
    #: What ``close()`` (and the flush at exit or SIGTERM) waits at most (default 5 s).
    close_timeout_s: float
    #: Upper bound of the first retry wait (default 0.5 s); doubles per attempt.
    retry_initial_s: float
    #: Cap of a retry wait (default 10 s).
    retry_max_s: float
    #: How often refused credentials are tried again (default 60 s).
    auth_retry_s: float
    #: Field-name patterns masked before sending (default: ``DEFAULT_REDACT``).
    redact: Iterable[str] | None
    #: TLS verification: ``True`` (default), ``False``, or an ``ssl.SSLContext``.
    verify: bool | ssl.SSLContext
    #: Flush on SIGTERM when nothing else handles it (default ``True``).
    flush_on_sigterm: bool


def _positive(options: Mapping[str, Any], name: str, default: float, *, zero: bool = False) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name}: expected a number of seconds or bytes, got {value!r}")
    if value < 0 or (value == 0 and not zero):
        qualifier = "zero or more" if zero else "more than zero"
        raise ConfigurationError(f"{name}: expected {qualifier}, got {value!r}")
    return float(value)


def _count(options: Mapping[str, Any], name: str, default: int, *, minimum: int = 1) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name}: expected an integer of at least {minimum}, got {value!r}")
    return value


class _Settings:
    """Validated :class:`EngineOptions` (raises ``ConfigurationError`` naming the bad option)."""

    def __init__(self, protocol: WireProtocol, options: Mapping[str, Any]) -> None:
        unknown = set(options) - set(EngineOptions.__annotations__)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        spool_dir = options.get("spool_dir")
        if spool_dir is not None and not isinstance(spool_dir, str | os.PathLike):
            raise ConfigurationError(f"spool_dir: expected a directory path, got {spool_dir!r}")
        self.spool_dir = spool_dir
        self.spool_max_bytes = _count(options, "spool_max_bytes", DEFAULT_SPOOL_MAX_BYTES, minimum=1 << 20)
        self.spool_fsync_interval_s = _positive(
            options, "spool_fsync_interval_s", DEFAULT_SPOOL_FSYNC_INTERVAL_S, zero=True
        )
        self.max_queue_records = _count(options, "max_queue_records", DEFAULT_MAX_QUEUE_RECORDS)
        self.max_queue_bytes = _count(options, "max_queue_bytes", DEFAULT_MAX_QUEUE_BYTES, minimum=64 << 10)
        self.max_batch_records = min(
            _count(
                options, "max_batch_records", protocol.default_batch_records or protocol.max_batch_records
            ),
            protocol.max_batch_records,
        )
        self.max_batch_bytes = min(
            _count(options, "max_batch_bytes", protocol.max_batch_bytes, minimum=1024),
            protocol.max_batch_bytes,
        )
        self.flush_interval_s = _positive(options, "flush_interval_s", DEFAULT_FLUSH_INTERVAL_S)
        self.block_timeout_s = _positive(options, "block_timeout_s", 0.0, zero=True)
        self.request_timeout_s = _positive(options, "request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S)
        self.max_in_flight = _count(options, "max_in_flight", 1)
        if self.max_in_flight > MAX_IN_FLIGHT:
            raise ConfigurationError(
                f"max_in_flight: expected at most {MAX_IN_FLIGHT}, got {self.max_in_flight}"
            )
        self.flush_timeout_s = _positive(options, "flush_timeout_s", DEFAULT_FLUSH_TIMEOUT_S)
        self.close_timeout_s = _positive(options, "close_timeout_s", DEFAULT_CLOSE_TIMEOUT_S, zero=True)
        self.retry_initial_s = _positive(options, "retry_initial_s", DEFAULT_RETRY_INITIAL_S)
        self.retry_max_s = _positive(options, "retry_max_s", DEFAULT_RETRY_MAX_S)
        self.auth_retry_s = _positive(options, "auth_retry_s", DEFAULT_AUTH_RETRY_S)
        redact = options.get("redact")
        try:
            self.redactor = Redactor(redact)
        except TypeError as exc:
            raise ConfigurationError(f"redact: {exc}") from None
        self.verify: bool | ssl.SSLContext = options.get("verify", True)
        self.flush_on_sigterm = bool(options.get("flush_on_sigterm", True))


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(max_s, initial_s * 2**(attempt-1))]``.

    Full jitter (rather than a fixed delay) spreads the retries of many processes that failed at
    the same moment, so a recovering backend is not hit by all of them at once.
    """
    ceiling = min(max_s, initial_s * (2.0 ** min(max(attempt - 1, 0), 62)))
    return random.random() * ceiling


# Thread idents of the running delivery workers, whose records must never be shipped. A set
# membership test after one C call is ~5x cheaper on the hot path than a ``threading.local``
# attribute (measured under callgrind: ~120 against ~625 instructions per log call).
_worker_threads: set[int] = set()
_get_ident: Final = threading.get_ident
_LogRecord: Final = logging.LogRecord
_getpid: Final = os.getpid


def on_worker_thread() -> bool:
    """Whether the calling thread is one of the delivery engines' workers."""
    return _get_ident() in _worker_threads


class _WorkerRecordFilter(logging.Filter):
    """Drops the HTTP client's log records when they come from one of our worker threads.

    httpx logs every request at INFO; without this, each batch we send would print a line in the
    application's console (and, through a shipping handler, be shipped in turn).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record unless it was logged on a delivery worker thread."""
        return _get_ident() not in _worker_threads


_client_filter: Final = _WorkerRecordFilter()


class _Part:
    """A part of a batch handed to a sender thread, and what became of it."""

    __slots__ = ("batch", "done", "finished", "slot")

    def __init__(self, batch: SpoolBatch, slot: int) -> None:
        self.batch = batch
        self.slot = slot  # the connection it goes out on
        self.done = threading.Event()
        self.finished = False


class _MemoryStore:
    """Prepared records waiting to be sent when there is no disk spool.

    A list read from ``head`` on: taking a batch and acknowledging it are slices and sums done in
    C, never a Python loop over the records (the worker shares the GIL with the application).
    """

    __slots__ = ("head", "pending", "pending_bytes", "records")

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.head = 0
        self.pending = 0
        self.pending_bytes = 0

    def append(self, records: list[bytes], size: int | None = None) -> int:
        """Keep ``records`` (``size``: their total length, when the caller has it); all fit."""
        self.records += records
        self.pending += len(records)
        self.pending_bytes += sum(map(len, records)) if size is None else size
        return len(records)

    def peek(self, max_records: int, max_bytes: int) -> SpoolBatch | None:
        if not self.pending:
            return None
        head = self.head
        batch = self.records[head : head + max_records]
        # The longest prefix within the byte bound (always at least one record).
        count, size = _within_bytes(batch, max_bytes)
        return SpoolBatch(batch[:count] if count < len(batch) else batch, [], size)

    def ack(self, batch: SpoolBatch, start: int, end: int) -> None:
        self.head += end - start
        self.pending -= end - start
        self.pending_bytes -= _size_of(batch, start, end)
        if self.head >= 4096 and self.head * 2 >= len(self.records):
            del self.records[: self.head]  # one memmove now and then, not a pop per record
            self.head = 0


def _within_bytes(records: list[bytes], max_bytes: int) -> tuple[int, int]:
    """How many of ``records`` (at least one) fit in ``max_bytes``, and their size."""
    size = sum(map(len, records))
    if size <= max_bytes:
        return len(records), size
    sizes = list(itertools.accumulate(map(len, records)))
    count = max(1, bisect.bisect_right(sizes, max_bytes))
    return count, sizes[count - 1]


def _size_of(batch: SpoolBatch, start: int, end: int) -> int:
    """Bytes of ``batch.records[start:end]`` (the whole batch's size is known already)."""
    if start == 0 and end == len(batch.records):
        return batch.size
    return sum(map(len, batch.records[start:end]))


# Engines with a running worker, for the SIGTERM flush.
_live: weakref.WeakSet[DeliveryEngine] = weakref.WeakSet()
_live_lock = threading.Lock()


# Forks seen by the at-fork hook: an engine compares it with its own count on every log call.
_forks = 0


def _reinit_after_fork() -> None:
    # Another thread may have held the lock at the moment of the fork: the child's copy would stay
    # locked forever.
    global _live_lock, _forks
    _live_lock = threading.Lock()
    _forks += 1
    _worker_threads.clear()  # the parent's workers do not exist in the child


os.register_at_fork(after_in_child=_reinit_after_fork)
_sigterm_installed = False
# Connections a forked child inherited: never used or closed there (their sockets belong to the
# parent, their pool lock may be held), kept referenced so no finaliser touches them either.
_abandoned: list[object] = []


def _sigterm_handler(signum: int, frame: object) -> None:
    """Flush every live engine, then die of SIGTERM as the process would have without us.

    Runs on the main thread between two bytecodes, possibly while that thread holds one of our
    locks: so the flush happens on a fresh thread and this handler only starts it. A second
    SIGTERM while flushing kills at once (the default action is back in place).
    """
    global _sigterm_installed
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _sigterm_installed = False

    def flush_then_die() -> None:
        try:
            close_all()
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    try:
        threading.Thread(target=flush_then_die, name="agentuity-logging-sigterm", daemon=True).start()
    except RuntimeError:  # interpreter shutting down: nothing left to flush with
        os.kill(os.getpid(), signal.SIGTERM)


def close_all() -> None:
    """Close every running engine of this process together (at exit, on SIGTERM).

    All of them start their final flush at once, so several shippers with an unreachable backend
    cost one ``close_timeout_s`` rather than one each.
    """
    with _live_lock:
        engines = list(_live)
    for engine in engines:
        engine._begin_close(engine._s.close_timeout_s)
    for engine in engines:
        engine.close()


def _install_sigterm_flush() -> None:
    """Take over SIGTERM only where it would kill without cleanup (the default disposition)."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _sigterm_handler)
            _sigterm_installed = True
    except (ValueError, OSError, AttributeError):  # not the main interpreter, or no SIGTERM
        return


def _restore_sigterm() -> None:
    """Put SIGTERM back to the default when the last engine closes (if it is still ours)."""
    global _sigterm_installed
    if not _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _sigterm_handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_installed = False
    except (ValueError, OSError):
        return


def _snapshot_reader() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Return a function building the schema dict of a record snapshot (for one worker thread).

    The snapshot is lent to one ``LogRecord`` shell for the call to the one schema builder: a new
    record object per snapshot costs more instructions than the builder's own cheap paths.
    """
    shell = logging.LogRecord.__new__(logging.LogRecord)
    build = event_from_record

    def event_from_snapshot(snapshot: dict[str, Any]) -> dict[str, Any]:
        shell.__dict__ = snapshot
        return build(shell)

    return event_from_snapshot


def _compact(records: list[bytes]) -> list[bytes]:
    """Copy records into exactly-sized ``bytes`` objects.

    ``orjson.dumps`` returns ``bytes`` that keep their 4 KiB working buffer allocated whatever the
    length (measured: 4,097 bytes held for a 170-byte record). Records can wait in memory for a
    long time during an outage, so each would cost 4 KiB instead of its size; one ``join`` and
    one slice per record (~0.1 µs) gives the memory back.
    """
    blob = b"".join(records)
    out = []
    start = 0
    for record in records:
        end = start + len(record)
        out.append(blob[start:end])
        start = end
    return out


_SID: Final = SESSION_KEY
_TID: Final = THREAD_KEY
_SPAN: Final = SPAN_KEY
# Keys of a stdlib record's event outside a session: timestamp, level, logger, message.
_BASE_KEYS: Final = 4
_TEXT: Final = (str, type(None))


class DeliveryEngine:
    """Queue, batch, encode, send, retry, spool: the machinery under every shipper.

    Args:
        protocol: the backend's wire protocol (what a request looks like, what answers mean).
        name: how diagnostics and errors name this shipper (never holds a credential).
        **options: :class:`EngineOptions`.

    Raises:
        ConfigurationError: an option is malformed, or ``spool_dir`` is unusable or in use.
        MissingDependencyError: ``httpx`` is not installed (the ``ship`` extra).
    """

    def __init__(self, protocol: WireProtocol, *, name: str, **options: Any) -> None:
        require("httpx", feature=name, extra="ship")
        self.protocol = protocol
        self.name = name
        self._s = settings = _Settings(protocol, options)
        self._secrets = tuple(s for s in protocol._secrets() if isinstance(s, str) and len(s) >= 4)
        self._spool: Spool | None = None
        if settings.spool_dir is not None:
            self._spool = Spool(
                settings.spool_dir,
                protocol=protocol.name,
                max_bytes=settings.spool_max_bytes,
                fsync_interval_s=settings.spool_fsync_interval_s,
            )
        self._closed = False
        self._reset()
        weak = weakref.WeakMethod(self._after_fork)

        def after_fork_in_child() -> None:
            method = weak()
            if method is not None:
                method()

        # A hook per engine, holding it weakly: an engine nobody references can still be collected.
        os.register_at_fork(after_in_child=after_fork_in_child)
        if self._spool is not None and self._spool.pending:
            # Records a previous process left behind go out now, not at the first new log call.
            self._start()

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (whose parent owns the old state)."""
        self._pid = os.getpid()
        self._forks = _forks
        self._lock = threading.Lock()
        # Producers waiting for room (block_timeout_s) and flush() callers waiting for progress.
        self._space = threading.Condition(self._lock)
        self._progress = threading.Condition(self._lock)
        self._wakeup = threading.Event()
        self._wake_sent = False
        # Queued items in arrival order, each told by its type alone (no wrapper per record): a
        # ``tuple`` holds a plain record's values (see ``_records.plain_event``), a ``dict`` is a
        # schema event, a ``list`` holds one copy of a record's ``__dict__`` (a "snapshot").
        self._incoming: list[Any] = []
        self._in_records = 0
        self._in_bytes = 0
        # Prepared records held in memory: the memory store's content, or those the spool refused.
        self._resident_records = 0
        self._resident_bytes = 0
        self._held: list[bytes] = []
        self._store: Spool | _MemoryStore = self._spool if self._spool is not None else _MemoryStore()
        self._replayed = self._spool.pending if self._spool is not None else 0
        # Records taken from the queue by the worker (enqueued = drained + still queued).
        self._drained = 0
        self._finished = 0
        self._flush_target = 0
        self._sent = 0
        self._retried = 0
        self._dropped: Counter[str] = Counter()
        self._last_error: str | None = None
        self._paused_until = 0.0
        self._waiting_producers = 0
        self._thread: threading.Thread | None = None
        self._mp_finalizer: Any = None
        # A connection per request in flight: the worker's first, then the senders'.
        self._clients: list[Transport | None] = [None] * self._s.max_in_flight
        # The sender threads' job queues, by connection (``max_in_flight`` > 1), started lazily.
        self._senders: dict[int, queue.SimpleQueue[_Part | None]] = {}
        self._sender_threads: list[threading.Thread] = []
        self._closing = False
        self._close_deadline = math.inf
        # Set when a retry would land after the close deadline: stop sending, do not spin.
        self._gave_up = False
        self._done = threading.Event()
        s = self._s
        self._max_records = s.max_queue_records
        self._max_bytes = s.max_queue_bytes
        self._batch_records = s.max_batch_records
        self._batch_bytes = s.max_batch_bytes
        # What the worker left in its store after sending full batches (a partial batch): queued
        # records top it up, and a full batch wakes the worker early.
        self._partial_records = 0
        self._partial_bytes = 0
        # Zero until the worker runs, so that the first record takes the path that starts it.
        self._wake_records = 0
        self._wake_bytes = 0
        self._recompute_limits()

    def _recompute_limits(self) -> None:
        """Fold the worker's counts into the four numbers a log call compares against.

        The hot path then reads one attribute per bound instead of two (called with the lock held,
        or before the worker exists).
        """
        self._room_records = self._max_records - self._resident_records
        self._room_bytes = self._max_bytes - self._resident_bytes
        self._wake_at_records = self._wake_records - self._partial_records
        self._wake_at_bytes = self._wake_bytes - self._partial_bytes

    # --- the application's side ----------------------------------------------------------

    def submit_record(self, record: logging.LogRecord) -> None:
        """Queue a stdlib record; called inside a log call, never raises.

        The application's thread does the least that keeps the record faithful: it renders the
        message (``%``-arguments may be mutable objects the caller changes next) and captures what
        the event is built from. For a record holding only the standard attributes (and the
        session's text IDs), with a known level and no exception or stack, that is six values in
        one tuple (see ``_records.plain_event``); any other record's ``__dict__`` is copied (one
        C-level copy; other handlers keep adding attributes to the record while they format it).
        The worker builds the schema from either. Measured, building it here instead would make
        a log call cost 1.2x a plain ``StreamHandler``'s (see ``docs/shipping.md``). When another
        output already built the schema dict for this record, that dict is queued as is.

        The common case (queued, no batch full yet) is inlined here rather than calling
        :meth:`_submit`: a Python call and a ``with`` block cost more than the rest of the append
        (``with lock`` ~2,000 instructions against ~900 for ``acquire``/``release``).
        """
        attributes = record.__dict__
        event = attributes.get("_agentuity_event")
        if event is not None:
            message = event.get("message")
            size = len(message) if type(message) is str else 0
            self._submit(event if type(event) is dict else dict(event), size + _RECORD_OVERHEAD)
            return
        msg = record.msg
        args = record.args
        try:
            # LogRecord.getMessage() inlined for the stdlib class (a subclass may override it).
            if msg.__class__ is str and record.__class__ is _LogRecord:
                message = msg % args if args else msg
            else:
                message = record.getMessage()
        except Exception:
            message = record_message(record)
        payload: Any
        try:
            fields = len(attributes) - STANDARD_ATTRIBUTES
            plain = (
                (
                    fields == 0
                    or (
                        fields == 2
                        and type(attributes.get(_SID)) is str
                        and type(attributes.get(_TID)) is str
                    )
                )
                and record.levelno in LEVEL_NAMES
                and record.exc_info is None
                and record.exc_text is None
                and record.stack_info is None
            )
        except Exception:  # a filter set levelno to something unhashable: the general path copes
            plain = False
        if plain:
            created, levelno, name = record.created, record.levelno, record.name
            if fields:
                payload = (created, levelno, name, message, attributes[_SID], attributes[_TID])
            else:
                payload = (created, levelno, name, message, None, None)
        else:
            snapshot = attributes.copy()
            snapshot["msg"] = message
            snapshot["args"] = None
            payload = [snapshot]
        size = len(message) + _RECORD_OVERHEAD
        if self._forks == _forks and not self._closed and _get_ident() not in _worker_threads:
            lock = self._lock
            lock.acquire()
            try:
                records = self._in_records + 1
                total = self._in_bytes + size
                if (
                    records <= self._room_records
                    and total <= self._room_bytes
                    and (self._wake_sent or (records < self._wake_at_records and total < self._wake_at_bytes))
                ):
                    self._incoming.append(payload)
                    self._in_records = records
                    self._in_bytes = total
                    return
            finally:
                lock.release()
        self._submit(payload, size)

    def submit_event(self, event: Mapping[str, Any]) -> None:
        """Queue a schema dict (a structlog event, or ``Shipper.send``); it must not change later."""
        message = event.get("message")
        size = len(message) if isinstance(message, str) else 0
        size += _RECORD_OVERHEAD + _EVENT_FIELD_BYTES * len(event)
        self._submit(event if type(event) is dict else dict(event), size)

    def _submit(self, payload: Any, size: int) -> None:
        """Append one item: the hot path of every log call.

        A few attribute reads, one uncontended lock, one append. Forks are noticed through the
        at-fork hook's counter here (``os.getpid()`` is a real system call, ~0.2 µs); the PID itself
        is checked whenever the worker is woken and on the slower paths (start, flush, close),
        which also catches a fork the hook never saw.
        """
        if (
            self._forks != _forks or self._closed or _get_ident() in _worker_threads
        ) and not self._admit_unusual():
            return
        with self._lock:
            records = self._in_records + 1
            total = self._in_bytes + size
            if records <= self._room_records and total <= self._room_bytes:
                self._incoming.append(payload)
                self._in_records = records
                self._in_bytes = total
                if self._wake_sent or (records < self._wake_at_records and total < self._wake_at_bytes):
                    return  # the common case: queued, no batch full yet
                self._wake_sent = True
                dropped = False
            else:
                dropped = not self._append_when_full(payload, size)
        if dropped:
            report_once(
                f"queue-full:{self.name}",
                "%s: queue full (%d records / %d bytes); dropping new records until it drains",
                self.name,
                self._max_records,
                self._max_bytes,
            )
            return
        # A batch is full (or this is the first record): wake the worker, starting it if needed.
        if self._pid != _getpid():
            self._after_fork()
            return
        if self._thread is None:
            self._start()
        self._wakeup.set()

    def _append_when_full(self, payload: Any, size: int) -> bool:
        """With the lock held and the queue full: wait for room if allowed, else count a drop.

        The newest record is the one dropped: the queued ones are older and closer to being sent.
        Returns whether the item was appended.
        """
        if not self._wait_for_room(size):
            self._dropped["queue_full"] += 1
            return False
        self._incoming.append(payload)
        self._in_records += 1
        self._in_bytes += size
        self._wake_sent = True
        return True

    def _admit_unusual(self) -> bool:
        """The rare cases of a log call: first call after a fork, a record from our worker, closed."""
        if self._forks != _forks or self._pid != _getpid():
            # A fork the at-fork hook did not see (a C extension calling fork() directly).
            self._after_fork()
        if _get_ident() in _worker_threads:
            # Logged on our own worker (a user __str__ called while encoding): shipping it from
            # here could feed the worker its own output forever.
            self._drop_now("reentrant", 1)
            return False
        if self._closed:
            self._drop_now("closed", 1)
            return False
        return True

    def _wait_for_room(self, size: int) -> bool:
        """With the lock held: wait up to ``block_timeout_s`` for room; whether there is room now."""
        timeout = self._s.block_timeout_s
        if timeout <= 0 or self._closing:
            return False
        deadline = time.monotonic() + timeout
        self._waiting_producers += 1
        try:
            while (
                self._in_records + self._resident_records >= self._max_records
                or self._in_bytes + self._resident_bytes + size > self._max_bytes
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    return False
                if not self._wake_sent:
                    self._wake_sent = True
                    self._wakeup.set()
                self._space.wait(remaining)
            return True
        finally:
            self._waiting_producers -= 1

    def _drop_now(self, reason: str, count: int) -> None:
        with self._lock:
            self._dropped[reason] += count
        if reason == "closed":
            report_once(
                f"closed:{self.name}",
                "%s is closed; records logged after close() are dropped",
                self.name,
                level=logging.INFO,
            )

    def nudge(self) -> None:
        """Ask the worker to send what it has now, without waiting (safe under any lock)."""
        if self._pid != os.getpid() or self._closed:
            return
        with self._lock:
            self._flush_target = max(self._flush_target, self._replayed + self._drained + self._in_records)
        self._wakeup.set()

    # --- flush, close, stats -------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued so far and wait until it was delivered or finally refused.

        Args:
            timeout: seconds to wait at most (``None``: the ``flush_timeout_s`` option).

        Returns:
            ``True`` when every record enqueued before the call (and every record a previous
            process left in the spool) was delivered or finally refused; ``False`` on timeout,
            while sending is paused by an authentication error, or from the worker thread itself.
        """
        if self._pid != os.getpid():
            self._after_fork()
        if _get_ident() in _worker_threads:
            return False
        limit = self._s.flush_timeout_s if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + limit
        with self._lock:
            target = self._replayed + self._drained + self._in_records
            if self._finished >= target:
                return True
            self._flush_target = max(self._flush_target, target)
        if self._thread is None:
            self._start()
        self._wakeup.set()
        with self._lock:
            while self._finished < target:
                if self._paused_until or self._done.is_set():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._progress.wait(remaining)
            return self._finished >= target

    def close(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout``, then stop the worker; idempotent, never hangs past the bound.

        Records still in memory at the deadline are dropped (``dropped["shutdown"]``); with a
        spool they stay on disk for the next process. Returns whether everything was delivered.

        Args:
            timeout: seconds at most (``None``: the ``close_timeout_s`` option, 5 s by default).
        """
        if self._pid != os.getpid():
            self._after_fork()
        limit = self._s.close_timeout_s if timeout is None else max(0.0, timeout)
        first = self._begin_close(limit)
        thread = self._thread
        if thread is None:
            if first:
                self._finish()
        elif thread is not threading.current_thread():
            thread.join(max(0.0, self._close_deadline - time.monotonic()) + 0.25)
            if thread.is_alive() and first:
                report_once(
                    f"close-timeout:{self.name}",
                    "%s: close() gave up after %.1f s with a request still in flight",
                    self.name,
                    limit,
                )
        with self._lock:
            return self._finished >= self._replayed + self._drained + self._in_records

    def _begin_close(self, limit_s: float) -> bool:
        """Stop taking records and start the final flush; whether this call began closing."""
        with self._lock:
            first = not self._closed
            self._closed = True
            if first:
                self._close_deadline = time.monotonic() + limit_s
                self._closing = True
                self._space.notify_all()
        if first:
            with _live_lock:
                _live.discard(self)
                last = not _live
            atexit.unregister(self._close_at_exit)
            finalizer, self._mp_finalizer = self._mp_finalizer, None
            if finalizer is not None:
                finalizer.cancel()
            if last:
                _restore_sigterm()
        self._wakeup.set()
        return first

    def _close_at_exit(self) -> None:
        try:
            close_all()
        except Exception as exc:  # pragma: no cover - atexit must never raise
            report_once(f"atexit:{self.name}", "%s: flush at exit failed: %r", self.name, exc)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def stats(self) -> dict[str, Any]:
        """Counters of this process: see ``docs/shipping.md`` for each key.

        ``enqueued``, ``sent``, ``retried`` (records sent again after a failed attempt) and
        ``dropped`` (reason -> records) count since start; ``spooled`` (records waiting on disk)
        and ``queue_depth`` (records waiting in memory) are current levels; ``last_error`` is the
        latest failure in words, without credentials.
        """
        with self._lock:
            return {
                "enqueued": self._drained + self._in_records,
                "sent": self._sent,
                "retried": self._retried,
                "dropped": dict(self._dropped),
                "spooled": self._spool.pending if self._spool is not None else 0,
                "queue_depth": self._in_records + self._resident_records,
                "last_error": self._last_error,
            }

    # --- lifecycle -----------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(
                target=self._run, name=f"agentuity-logging-{self.protocol.name}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:
                # "can't create new thread at interpreter shutdown": nothing can be sent any more.
                self._closed = True
                self._done.set()
                report_once(
                    f"start:{self.name}", "%s: cannot start its worker (interpreter exiting)", self.name
                )
                return
            self._thread = thread
            self._wake_records = min(self._s.max_batch_records, self._s.max_queue_records)
            self._wake_bytes = min(self._s.max_batch_bytes, self._s.max_queue_bytes)
            self._recompute_limits()
        atexit.register(self._close_at_exit)
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            # multiprocessing's forked children leave through os._exit(): atexit never runs there,
            # multiprocessing's own finalizers do. (Registered here, at the first record, because
            # a child clears the finalizers it inherited before it runs its target.)
            weak = weakref.ref(self)

            def close_at_process_exit() -> None:
                engine = weak()
                if engine is not None:
                    engine.close()

            self._mp_finalizer = mp_util.Finalize(None, close_at_process_exit, exitpriority=10)
        with _live_lock:
            _live.add(self)
        if self._s.flush_on_sigterm:
            _install_sigterm_flush()
        for name in _CLIENT_LOGGERS:
            logging.getLogger(name).addFilter(_client_filter)

    def _after_fork(self) -> None:
        """In a forked child: start over, never touching (or resending) the parent's state."""
        if self._pid == os.getpid():
            return
        spool = self._spool
        _abandoned.extend(client for client in self._clients if client is not None)
        self._spool = None
        self._reset()
        if spool is not None:
            spool.abandon()
            report_once(
                f"fork-spool:{self.name}",
                "%s: a forked child does not share its parent's spool_dir; it ships from memory "
                "(create the shipper after the fork for a spool per worker)",
                self.name,
                level=logging.INFO,
            )

    # --- the worker ----------------------------------------------------------------------

    def _run(self) -> None:
        ident = _get_ident()
        _worker_threads.add(ident)
        try:
            while not self._guarded_loop():
                self._wakeup.wait(0.5)
        finally:
            _worker_threads.discard(ident)
            self._finish()

    def _guarded_loop(self) -> bool:
        """Run the loop; on a bug, say it once and return False so the worker carries on."""
        try:
            self._loop()
        except Exception as exc:
            # A bug must not end delivery for good.
            self._report_bug(exc)
            return self._closing and time.monotonic() >= self._close_deadline
        return True

    def _report_bug(self, exc: Exception) -> None:
        self._note_error(f"internal error: {type(exc).__name__}: {exc}")
        report_once(
            f"worker-crash:{self.name}",
            "%s: delivery worker error, continuing: %r",
            self.name,
            exc,
            level=logging.ERROR,
        )

    def _drain_meanwhile(self) -> None:
        """Prepare queued records while a request awaits its answer (the server works meanwhile).

        Run by the transport between sending and reading: on a burst, building the next batch no
        longer waits for the sink to answer the last one. It never raises into the transport, which
        would take a bug of ours for a failed request and send the batch twice.
        """
        try:
            self._drain()
        except Exception as exc:
            self._report_bug(exc)

    def _loop(self) -> None:
        interval = self._s.flush_interval_s
        next_flush = time.monotonic() + interval
        while True:
            now = time.monotonic()
            if not self._ready():
                due = next_flush
                if self._paused_until:
                    due = self._paused_until
                spool = self._spool
                if spool is not None:
                    sync_at = spool.sync_due_at
                    if sync_at is not None:
                        due = min(due, sync_at)
                if due > now:
                    self._wakeup.wait(due - now)
            self._wake_sent = False
            self._wakeup.clear()
            self._drain()
            now = time.monotonic()
            if self._paused_until and now >= self._paused_until:
                self._paused_until = 0.0  # time to probe the credentials again
            force = now >= next_flush or self._closing or self._flush_target > self._finished
            if now >= next_flush:
                next_flush = now + interval
            self._send_ready(force=force)
            self._sync_spool()
            if self._closing and (
                self._paused_until
                or self._gave_up
                or time.monotonic() >= self._close_deadline
                or self._all_done()
            ):
                return

    def _ready(self) -> bool:
        """Whether there is work that should not wait for the timer."""
        if self._closing:
            return True
        if self._paused_until:
            return False
        pending = self._in_records or self._store.pending or self._held
        if pending and self._flush_target > self._finished:
            return True
        return (
            self._in_records >= self._wake_records
            or self._in_bytes >= self._wake_bytes
            or self._store.pending >= self._batch_records
        )

    def _all_done(self) -> bool:
        with self._lock:
            return self._finished >= self._replayed + self._drained + self._in_records

    def _sync_spool(self) -> None:
        spool = self._spool
        if spool is not None:
            due = spool.sync_due_at
            if due is not None and time.monotonic() >= due:
                spool.sync()

    def _drain(self) -> None:
        """Move queued records into the store: build, mask, encode (and append to the spool)."""
        store = self._store
        compact = not self.protocol.prepares_exact_bytes
        redactor = self._s.redactor
        # Plain records hold schema text and text IDs only: clean unless a pattern names a schema key.
        plain_clean = not redactor or redactor.schema_names_clean
        prepare_plain, only_plain = self.protocol.prepare_plain, {tuple}
        while True:
            if self._held and not self._store_held():
                return  # the spool is full: records wait in memory until deliveries free room
            with self._lock:
                # Everything queued, in one swap: the lock is held and producers wait for it.
                items = self._incoming
                if not items:
                    return
                self._incoming = []
                size_in = self._in_bytes  # the byte count of exactly these items
            prepared: list[bytes] | None = None
            failed = 0
            if plain_clean and set(map(type, items)) == only_plain:
                # The common batch: plain records only. The protocol builds them in one pass.
                try:
                    prepared = prepare_plain(items)
                    if len(prepared) != len(items):
                        prepared = None  # a protocol bug; the general path keeps the count right
                except Exception:
                    prepared = None  # something it could not take this way: record by record
            if prepared is None:
                prepared, failed = self._prepare_each(items)
            if prepared and compact:
                prepared = _compact(prepared)
            size = sum(map(len, prepared))
            if isinstance(store, _MemoryStore):
                accepted = store.append(prepared, size)
            else:
                accepted = store.append(prepared) if prepared else 0
            refused = prepared[accepted:]
            with self._lock:
                self._in_records -= len(items)
                self._drained += len(items)
                self._in_bytes -= size_in
                if store is not self._spool:
                    self._resident_records += accepted
                    self._resident_bytes += size
                if refused:
                    self._held = refused
                    self._resident_records += len(refused)
                    self._resident_bytes += sum(map(len, refused))
                self._recompute_limits()
                if failed:
                    self._dropped["encode_error"] += failed
                    self._finished += failed
                    self._progress.notify_all()
                if self._waiting_producers:
                    self._space.notify_all()
            if refused:
                self._spool_refused(refused)
                return

    def _prepare_each(self, items: list[Any]) -> tuple[list[bytes], int]:
        """Build, mask and prepare queued items one by one; the prepared records and the failures."""
        prepare = self.protocol.prepare
        from_snapshot = _snapshot_reader()
        redactor = self._s.redactor
        masking = bool(redactor)
        # The redactor's own fast paths, inlined (a function call costs as much as a check). A
        # stdlib record's event holding only schema keys is clean: the builder renders timestamp,
        # level, logger and message as text, so only the IDs' values need a look. Any other event
        # is clean when all its names are known to be harmless and it holds no container.
        schema_clean = redactor.schema_names_clean
        harmless = redactor.harmless_names
        containers = CONTAINER_TYPES
        # Locals: a session record pays for this check on every record (global look-ups and
        # additions measured ~360 instructions of its ~1,660).
        base_keys, with_ids, with_span = _BASE_KEYS, _BASE_KEYS + 2, _BASE_KEYS + 3
        sid_key, tid_key, span_key, text_types = _SID, _TID, _SPAN, _TEXT
        build_plain = plain_event
        plain_clean = not masking or schema_clean
        prepared: list[bytes] = []
        append = prepared.append
        failed = 0
        event: Mapping[str, Any]
        for payload in items:
            try:
                kind = type(payload)
                if kind is tuple:
                    event = build_plain(payload)
                    if not plain_clean:
                        event = redactor(event)
                    append(prepare(event if type(event) is dict else dict(event)))
                    continue
                if kind is list:
                    event = from_snapshot(payload[0])
                    # The builder always starts with timestamp, level, logger and message (all
                    # text); in a session the IDs follow (and a span ID in a span). Such an
                    # event needs no look at its names, only at the IDs' values, which a
                    # caller could have set to anything through ``extra=``.
                    if masking and not (
                        schema_clean
                        and (
                            (keys := len(event)) == base_keys
                            or (
                                type(event.get(sid_key)) is str
                                and type(event[tid_key]) in text_types
                                and (
                                    keys == with_ids
                                    or (keys == with_span and type(event.get(span_key)) is str)
                                )
                            )
                        )
                    ):
                        event = redactor(event)
                else:
                    event = payload
                    if masking and not (
                        harmless.issuperset(event) and containers.isdisjoint(map(type, event.values()))
                    ):
                        event = redactor(event)
                append(prepare(event if type(event) is dict else dict(event)))
            except Exception as exc:
                failed += 1
                report_once(
                    f"prepare:{self.name}",
                    "%s: could not encode a record, dropped: %r",
                    self.name,
                    exc,
                )
        return prepared, failed

    def _store_held(self) -> bool:
        """Offer the records the spool refused earlier again; whether all of them fit now."""
        held = self._held
        accepted = self._store.append(held)
        if accepted:
            moved = held[:accepted]
            with self._lock:
                self._held = held[accepted:]
                self._resident_records -= accepted
                self._resident_bytes -= sum(map(len, moved))
                self._recompute_limits()
                if self._waiting_producers:
                    self._space.notify_all()
        if self._held and self._store.pending == 0:
            self._spool_refused(self._held)
        return not self._held

    def _spool_refused(self, refused: list[bytes]) -> None:
        """The spool refused records: fine while it is full of pending ones, fatal for a giant."""
        if self._store.pending:
            self._note_error("spool full: records wait in memory until deliveries free room")
            report_once(
                f"spool-full:{self.name}",
                "%s: spool_dir is full (%d bytes); new records wait in memory",
                self.name,
                self._s.spool_max_bytes,
            )
            return
        # An empty spool still refused the first record: it can never fit. Drop that one.
        record = refused[0]
        with self._lock:
            self._held = refused[1:]
            self._resident_records -= 1
            self._resident_bytes -= len(record)
            self._recompute_limits()
            self._dropped["too_large"] += 1
            self._finished += 1
            self._progress.notify_all()

    def _send_ready(self, *, force: bool) -> None:
        """Send full batches, and the last partial one too when ``force``."""
        store = self._store
        at_once = self._s.max_in_flight
        try:
            while not self._paused_until:
                if self._closing and time.monotonic() >= self._close_deadline:
                    return
                batch = store.peek(self._batch_records * at_once, self._batch_bytes * at_once)
                if batch is None:
                    return
                parts = [batch] if at_once == 1 else self._parts(batch)
                # A batch is full when it reached a bound, or when more records wait than it holds
                # (the byte bound stopped it short of the count).
                last = parts[-1]
                full = (
                    len(last.records) >= self._batch_records
                    or last.size >= self._batch_bytes
                    or store.pending > len(batch.records)
                )
                if not (force or full):
                    parts.pop()  # the partial batch waits for more records, or for its time
                if not parts:
                    return
                if not (self._deliver(parts[0]) if len(parts) == 1 else self._deliver_parts(parts)):
                    return
                # Between batches of a burst, keep the queue moving so producers never see it full.
                self._drain()
        finally:
            with self._lock:
                self._partial_records = store.pending
                self._partial_bytes = store.pending_bytes
                self._recompute_limits()

    def _deliver(self, batch: SpoolBatch, slot: int = 0) -> bool:
        """Send one batch (split on 413); whether it is finished (False: stopped, or paused).

        On the worker (``slot`` 0) each finished range is acknowledged at once. A sender thread's
        part is acknowledged by the worker afterwards, in order (see :meth:`_deliver_parts`).
        """
        ranges = [(0, len(batch.records))]
        done = 0
        while ranges:
            start, end = ranges.pop()
            outcome = self._attempt(batch.records[start:end], slot)
            if outcome is None:
                return False
            if outcome is Outcome.SPLIT:
                if end - start > 1:
                    middle = (start + end) // 2
                    ranges.append((middle, end))
                    ranges.append((start, middle))
                    continue
                self._count_drop("too_large", 1)
            if slot == 0:
                self._acknowledge(batch, done, end)
            done = end
        return True

    def _parts(self, batch: SpoolBatch) -> list[SpoolBatch]:
        """Cut a batch taken for several requests into batches within the protocol's bounds."""
        records, ends = batch.records, batch.ends
        parts = []
        start = 0
        while start < len(records):
            count, size = _within_bytes(records[start : start + self._batch_records], self._batch_bytes)
            end = start + count
            parts.append(SpoolBatch(records[start:end], ends[start:end], size))
            start = end
        return parts

    def _deliver_parts(self, parts: list[SpoolBatch]) -> bool:
        """Send ``parts`` at once (the first on this thread), then acknowledge them in order.

        Whether all of them finished. A part finished after one that did not (delivery stopped:
        the close deadline, or refused credentials) stays unacknowledged and is sent again later:
        at least once, as after a crash.
        """
        jobs = [_Part(part, slot) for slot, part in enumerate(parts[1:], 1)]
        for job in jobs:
            senders = self._sender(job.slot)
            if senders is not None:
                senders.put(job)
        finished = self._deliver(parts[0])
        for job in jobs:
            if job.slot not in self._senders:
                # No thread to be had (the interpreter is exiting): this thread sends it, unacknowledged.
                job.finished = finished and self._deliver(job.batch, job.slot)
                job.done.set()
            while not job.done.wait(0.02):
                # Keep the queue moving while the senders wait for their answers.
                self._drain_meanwhile()
                self._sync_spool()
            finished = finished and job.finished
            if finished:
                self._acknowledge(job.batch, 0, len(job.batch.records))
        return finished

    def _sender(self, slot: int) -> queue.SimpleQueue[_Part | None] | None:
        """The job queue of the sender thread owning connection ``slot``, started if needed."""
        jobs = self._senders.get(slot)
        if jobs is None:
            jobs = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._send_parts,
                args=(slot, jobs),
                name=f"agentuity-logging-{self.protocol.name}-{slot}",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # "can't create new thread at interpreter shutdown"
                return None
            self._senders[slot] = jobs
            self._sender_threads.append(thread)
        return jobs

    def _send_parts(self, slot: int, jobs: queue.SimpleQueue[_Part | None]) -> None:
        """A sender thread: send each part it is given on its own connection, until ``None``."""
        ident = _get_ident()
        _worker_threads.add(ident)  # its own diagnostics never come back to the shipper
        try:
            while (job := jobs.get()) is not None:
                try:
                    job.finished = self._deliver(job.batch, slot)
                except Exception as exc:
                    self._report_bug(exc)
                finally:
                    job.done.set()
        finally:
            _worker_threads.discard(ident)

    def _acknowledge(self, batch: SpoolBatch, start: int, end: int) -> None:
        self._store.ack(batch, start, end)
        with self._lock:
            if self._store is not self._spool:
                self._resident_records -= end - start
                self._resident_bytes -= _size_of(batch, start, end)
                self._recompute_limits()
            self._finished += end - start
            self._progress.notify_all()
            if self._waiting_producers:
                self._space.notify_all()

    def _attempt(self, records: list[bytes], slot: int = 0) -> Outcome | None:
        """Send ``records`` as one request until an answer is final.

        Returns SENT, REFUSED (both counted), SPLIT, or ``None`` when delivery stopped: the close
        deadline passed, or the credentials were refused (sending paused).
        """
        try:
            # Records in memory are what prepare() returned; records on disk get checked.
            request = self.protocol.encode(records, verified=self._spool is None)
        except Exception as exc:
            self._count_drop("encode_error", len(records), f"could not build a request: {exc!r}")
            return Outcome.REFUSED
        attempt = 0
        while True:
            if self._closing and time.monotonic() >= self._close_deadline:
                return None
            answer = self._post(request.method, request.url, request.headers, request.body, slot)
            outcome = answer.outcome
            if outcome is Outcome.SENT:
                rejected = min(max(answer.rejected, 0), len(records))
                with self._lock:
                    self._sent += len(records) - rejected
                if rejected:
                    self._count_drop("rejected", rejected, answer.message)
                return outcome
            if outcome is Outcome.RETRY:
                attempt += 1
                with self._lock:
                    self._retried += len(records)
                message = answer.message or "temporary failure"
                self._note_error(message)
                report_once(
                    f"retry:{self.name}",
                    "%s: delivery failed (%s); retrying with backoff",
                    self.name,
                    self._scrub(message),
                )
                delay = backoff_s(attempt, self._s.retry_initial_s, self._s.retry_max_s)
                if answer.retry_after_s is not None:
                    delay = max(min(answer.retry_after_s, RETRY_AFTER_MAX_S), delay)
                if not self._wait_retry(delay, slot):
                    return None
                continue
            if outcome is Outcome.SPLIT:
                self._note_error(answer.message or "payload too large")
                return outcome
            if outcome is Outcome.AUTH:
                self._pause_for_auth(answer)
                return None
            self._count_drop("refused", len(records), answer.message)
            return Outcome.REFUSED

    def _post(self, method: str, url: str, headers: dict[str, str], body: bytes, slot: int = 0) -> Answer:
        """One HTTP request on connection ``slot``; transport failures become retryable answers."""
        timeout = self._s.request_timeout_s
        if self._closing:
            timeout = max(0.05, min(timeout, self._close_deadline - time.monotonic()))
        try:
            client = self._clients[slot]
            if client is None:
                client = self._clients[slot] = open_transport(url, self._s.verify)
            # Only the worker drains the queue; a sender thread just waits for its answer.
            meanwhile = self._drain_meanwhile if slot == 0 else None
            status, answer_headers, content = client.request(
                method, url, headers, body, timeout, while_waiting=meanwhile
            )
        except RequestRefusedError as exc:
            return Answer(Outcome.REFUSED, message=str(exc))
        except TransportError as exc:
            return Answer(Outcome.RETRY, message=str(exc))
        except Exception as exc:
            return Answer(Outcome.RETRY, message=f"{type(exc).__name__}: {exc}")
        try:
            return self.protocol.classify(status, answer_headers, content)
        except Exception as exc:
            return Answer(
                Outcome.REFUSED,
                message=f"HTTP {status}, unreadable answer ({type(exc).__name__})",
            )

    def _wait_retry(self, delay: float, slot: int = 0) -> bool:
        """Wait before a retry, still draining the queue; False when the close deadline cuts it."""
        until = time.monotonic() + delay
        while True:
            now = time.monotonic()
            if self._closing and until > self._close_deadline:
                self._gave_up = True  # the retry would come after the deadline: stop now, not then
                return False
            if now >= until:
                return True
            if slot:
                # A sender thread: the worker drains and syncs; this one looks at the deadline.
                time.sleep(min(until - now, 0.1))
                continue
            due = until
            spool = self._spool
            if spool is not None and spool.sync_due_at is not None:
                due = min(due, max(now, spool.sync_due_at))
            self._wakeup.wait(due - now)
            self._wake_sent = False
            self._wakeup.clear()
            self._drain()
            self._sync_spool()

    def _pause_for_auth(self, answer: Answer) -> None:
        message = answer.message or "credentials refused"
        self._paused_until = time.monotonic() + self._s.auth_retry_s
        self._note_error(f"credentials refused: {message}")
        report_once(
            f"auth:{self.name}",
            "%s: the backend refused the credentials (%s). Sending is paused and retried every "
            "%.0f s; records are kept%s.",
            self.name,
            self._scrub(message),
            self._s.auth_retry_s,
            " in the spool" if self._spool is not None else " in memory while the queue has room",
            level=logging.ERROR,
        )
        with self._lock:
            self._progress.notify_all()

    def _count_drop(self, reason: str, count: int, message: str | None = None) -> None:
        """Count records finally not delivered, and say why once per reason."""
        with self._lock:
            self._dropped[reason] += count
        if message:
            self._note_error(message)
        report_once(
            f"dropped:{reason}:{self.name}",
            "%s: %d record(s) dropped (%s)%s",
            self.name,
            count,
            reason,
            f": {self._scrub(message)}" if message else "",
        )

    def _note_error(self, message: str) -> None:
        text = self._scrub(message)
        with self._lock:
            self._last_error = text

    def _scrub(self, text: str) -> str:
        """Remove credentials from a message (the protocol's secrets, URL user info)."""
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        if "://" in text and "@" in text:
            text = " ".join(redact_url(w) if "://" in w and "@" in w else w for w in text.split())
        return text[:500]

    def _finish(self) -> None:
        """The worker's last act: count what cannot be delivered, release the connection and spool."""
        spool = self._spool
        if spool is not None and not spool.closed:
            # Whatever is still in memory goes to disk, for the next process to deliver.
            try:
                self._drain()
            except Exception as exc:  # pragma: no cover - best effort on the way out
                report_once(f"final-drain:{self.name}", "%s: final spool write failed: %r", self.name, exc)
        with self._lock:
            lost = self._in_records + self._resident_records
            self._incoming.clear()
            self._held = []
            if lost:
                self._dropped["shutdown"] += lost
            self._in_records = self._in_bytes = 0
            self._resident_records = self._resident_bytes = 0
            self._recompute_limits()
        if lost:
            report_once(
                f"shutdown-loss:{self.name}",
                "%s: %d record(s) not delivered before close() timed out%s",
                self.name,
                lost,
                "" if spool is None else " (the spool was full)",
                level=logging.ERROR,
            )
        for jobs in self._senders.values():
            jobs.put(None)  # idle by now: the worker waits for every part it hands out
        for thread in self._sender_threads:
            thread.join(1.0)
        self._senders = {}
        self._sender_threads = []
        clients, self._clients = self._clients, [None] * len(self._clients)
        for client in clients:
            if client is None:
                continue
            try:
                client.close()
            except Exception as exc:  # pragma: no cover - closing sockets on the way out
                report_once(f"client-close:{self.name}", "%s: %r", self.name, exc)
        if spool is not None:
            spool.close()
        if isinstance(self._store, _MemoryStore):
            self._store = _MemoryStore()
        self._done.set()
        with self._lock:
            self._progress.notify_all()
            self._space.notify_all()

    def __repr__(self) -> str:
        return f"<DeliveryEngine {self.name}>"
