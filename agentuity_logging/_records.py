"""The one record schema, built once for every path (stdlib, structlog, shippers, store).

An *event* is a plain dict with keys in this order::

    timestamp, level, logger, message, agentuitySessionId, agentuityThreadId, spanId,
    <fields...>, exception, stack

``timestamp`` is RFC 3339 UTC with microseconds, ``level`` is lowercase, the IDs are absent outside a
session and ``spanId`` outside a span. Field names that would clash with the schema or with
``logging.LogRecord`` attributes get a trailing underscore (``message`` -> ``message_``), so no field can
overwrite the schema and no field is lost.

Everything here is on the hot path of a log call: keep it lean and never let it raise.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from types import TracebackType
from typing import Any, Final, TypeAlias

__all__ = [
    "CLASHING_NAMES",
    "DIGITS3_BYTES",
    "EXCEPTION_KEY",
    "LAST_US",
    "LEVEL_NAMES",
    "RECORD_ATTRS",
    "SCHEMA_KEYS",
    "SESSION_KEY",
    "SPAN_KEY",
    "STANDARD_ATTRIBUTES",
    "STRUCTLOG_KEYS",
    "THREAD_KEY",
    "PlainValues",
    "bad_arguments_message",
    "cached_second",
    "event_from_record",
    "exception_info",
    "format_timestamp",
    "normalize_fields",
    "plain_event",
    "plain_lines",
    "record_message",
    "timestamp_us",
]

SESSION_KEY: Final = "agentuitySessionId"
THREAD_KEY: Final = "agentuityThreadId"
SPAN_KEY: Final = "spanId"
EXCEPTION_KEY: Final = "exception"
STACK_KEY: Final = "stack"

#: Keys our schema owns. A user field of the same name is renamed, never dropped.
SCHEMA_KEYS: Final = frozenset(
    {
        "timestamp",
        "level",
        "logger",
        "message",
        SESSION_KEY,
        THREAD_KEY,
        SPAN_KEY,
        EXCEPTION_KEY,
        STACK_KEY,
    }
)

_LogRecord: Final = logging.LogRecord
_PROBE = logging.LogRecord("probe", logging.INFO, __file__, 0, "", None, None)
#: The attributes every ``LogRecord`` has, in the order ``LogRecord.__init__`` sets them.
_STD_KEYS: Final = tuple(_PROBE.__dict__)
_N_STD: Final = len(_STD_KEYS)
_LAST_STD: Final = _STD_KEYS[-1]
#: How many attributes ``LogRecord.__init__`` sets (a record with no fields has exactly these).
STANDARD_ATTRIBUTES: Final = _N_STD


def _reserve_record_slots() -> None:
    """Add the attributes the package stores on records to ``LogRecord``'s shared attribute layout.

    CPython (3.11+) keeps an instance's attributes in a key table shared by its class, and lets new
    names join that table only while the class is young: each new instance shrinks the room left.
    An attribute outside the table turns the record's attributes into a private dict when it is set
    (~170 ns per record here). The IDs are first set on the first record logged inside a session,
    usually long after start-up logging used that room up, so they are set once here, at import.
    Harmless when it comes too late: records then work exactly as before.
    """
    probe = logging.LogRecord("probe", logging.INFO, __file__, 0, "", None, None)
    for name in (SESSION_KEY, THREAD_KEY, SPAN_KEY, "_agentuity_event"):
        setattr(probe, name, None)


_reserve_record_slots()

#: Attributes of a LogRecord that are not user fields (the stdlib's own, plus ones formatters add).
RECORD_ATTRS: Final = frozenset(
    {
        *_STD_KEYS,
        "message",
        "asctime",
        "taskName",
        "exc_text",
        "stack_info",
        "_agentuity_exc",
        "_agentuity_event",
        "_agentuity_raw",
    }
)

#: A field with one of these names is renamed ``name_`` on the way into a record.
CLASHING_NAMES: Final = SCHEMA_KEYS | RECORD_ATTRS

#: Names the stdlib builder skips when it collects fields (IDs are placed first separately).
_SKIP: Final = RECORD_ATTRS | {SESSION_KEY, THREAD_KEY, SPAN_KEY}

LEVEL_NAMES: Final[dict[int, str]] = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
    logging.NOTSET: "notset",
}


def level_name(levelno: int, levelname: str = "") -> str:
    """Return the schema's lowercase level name for ``levelno``."""
    return LEVEL_NAMES.get(levelno) or (levelname or f"level{levelno}").lower()


def normalize_fields(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """Return ``fields`` with string keys, names that clash with the schema suffixed by ``_``."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        name = key if isinstance(key, str) else str(key)
        if name in CLASHING_NAMES:
            name += "_"
            while name in fields or name in out:  # the user also has "message_": keep both
                name += "_"
        out[name] = value
    return out


# The start of the last second formatted (as a float) and its date-and-seconds prefix, re-derived once per
# second. Threads may race on the pair; the tuple is replaced whole, so a reader sees a consistent pair.
_ts_cache: tuple[float, str] = (-2.0, "")

_DIGITS3: Final = tuple(f"{i:03d}" for i in range(1000))
_DIGITS3Z: Final = tuple(f"{i:03d}Z" for i in range(1000))
DIGITS3_BYTES: Final = tuple(b"%03d" % i for i in range(1000))


def _new_second(created: float) -> tuple[float, str]:
    global _ts_cache
    second = math.floor(created)
    _ts_cache = (float(second), time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second)))
    return _ts_cache


def format_timestamp(created: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with microseconds: ``2026-11-25T10:44:59.123456Z``.

    On the hot path of every record, so the arithmetic stays in small integers: the offset into the
    cached second is exact (both floats are close), and the fraction is two table look-ups.
    """
    start, prefix = _ts_cache
    frac = created - start
    if 0.0 <= frac < LAST_US:  # (the same test is inlined in event_from_record)
        us = int(frac * 1_000_000)
    else:
        start, prefix = _new_second(created)
        us = _micros(created - start)
    return prefix + _DIGITS3[us // 1000] + _DIGITS3Z[us % 1000]


#: Offsets below this map to microseconds 0..999_998 without rounding up to the next second.
LAST_US: Final = 0.999_999


def _micros(frac: float) -> int:
    # Near 1.0 the product can round up to 1_000_000 (possible only for times close to the epoch).
    return min(int(frac * 1_000_000), 999_999)


def cached_second(created: float) -> tuple[float, str, int]:
    """The cached second for ``created`` (moved there if needed): its start, its prefix and the micros.

    For batch builders that inline :func:`format_timestamp`'s fast test and call this on a miss.
    """
    start, prefix = _new_second(created)
    return start, prefix, _micros(created - start)


def timestamp_us(created: float) -> int:
    """Return the microseconds since the epoch that :func:`format_timestamp` renders for ``created``."""
    second = math.floor(created)
    return second * 1_000_000 + _micros(created - second)


def record_message(record: logging.LogRecord) -> str:
    """Return ``record.getMessage()``, or a safe rendering when its %-arguments do not fit."""
    try:
        return record.getMessage()
    except Exception as exc:
        return bad_arguments_message(record.msg, record.args, exc)


def bad_arguments_message(msg: object, args: object, exc: Exception) -> str:
    """Render a message whose ``%``-arguments did not fit: the template, then the arguments and why."""
    try:
        return f"{msg!s} [bad log arguments {args!r}: {type(exc).__name__}: {exc}]"
    except Exception:
        return f"<unprintable log message: {type(exc).__name__}>"


def exception_info(
    exc_info: tuple[type[BaseException] | None, BaseException | None, TracebackType | None],
    *,
    max_frames: int = 64,
) -> dict[str, Any] | None:
    """Return ``{"type", "message", "frames", "traceback"}`` for an exception, or ``None``.

    ``frames`` lists the innermost ``max_frames`` frames as ``{"file", "line", "function"}``;
    ``traceback`` is the stdlib's text rendering (with the cause chain) for people.
    """
    etype, value, tb = exc_info
    if etype is None or value is None:
        return None
    try:
        summary = traceback.extract_tb(tb)[-max_frames:] if tb is not None else []
        frames = [{"file": f.filename, "line": f.lineno, "function": f.name} for f in summary]
        try:
            message = str(value)
        except Exception:
            message = f"<unprintable {etype.__name__}>"
        text = "".join(traceback.format_exception(etype, value, tb))
        return {
            "type": etype.__qualname__
            if etype.__module__ == "builtins"
            else f"{etype.__module__}.{etype.__qualname__}",
            "message": message,
            "frames": frames,
            "traceback": text,
        }
    except Exception as err:  # a hostile __str__/__repr__ chain
        return {"type": getattr(etype, "__name__", "?"), "message": f"<unformattable: {err!r}>"}


def event_from_record(record: logging.LogRecord, skip: frozenset[str] | set[str] = _SKIP) -> dict[str, Any]:
    """Build the schema dict for a stdlib ``LogRecord`` (cached on the record for other handlers).

    ``skip`` names record attributes that are not fields (python-json-logger's ``reserved_attrs``).
    Callers must not mutate the returned dict: with the default ``skip`` it is shared by every handler
    that formats the same record.
    """
    d = record.__dict__
    if skip is _SKIP:
        cached = d.get("_agentuity_event")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
    # Inlined (message, level, timestamp), with literal keys: this runs for every record.
    msg = record.msg
    if msg.__class__ is str and not record.args and record.__class__ is _LogRecord:
        message = msg  # what LogRecord.getMessage() returns; a subclass may override it
    else:
        message = record_message(record)
    try:
        level = LEVEL_NAMES[record.levelno]
    except KeyError:
        level = level_name(record.levelno, record.levelname)
    created = record.created
    start, prefix = _ts_cache
    frac = created - start
    if 0.0 <= frac < LAST_US:
        us = int(frac * 1_000_000)
        stamp = prefix + _DIGITS3[us // 1000] + _DIGITS3Z[us % 1000]
    else:
        stamp = format_timestamp(created)
    extra = len(d) - _N_STD
    sid = d.get("agentuitySessionId") if extra > 0 else None
    event: dict[str, Any]
    if sid is None:
        event = {"timestamp": stamp, "level": level, "logger": record.name, "message": message}
    else:
        # One six-key literal: growing a four-key dict past five keys would resize it.
        event = {
            "timestamp": stamp,
            "level": level,
            "logger": record.name,
            "message": message,
            "agentuitySessionId": sid,
            "agentuityThreadId": d.get("agentuityThreadId"),
        }
        extra -= 2
    if extra > 0:  # something besides the IDs: a span, fields, attributes a formatter added
        span = d.get("spanId")
        if span is not None:
            event["spanId"] = span
            extra -= 1
        if extra > 0:  # fields, or attributes a formatter added
            # LogRecord.__init__ sets its attributes first and in a known order, so fields (ours,
            # `extra=`, a filter's) all come after them: skip the standard ones without looking.
            standard_first = next(islice(d, _N_STD - 1, None)) == _LAST_STD
            items: Iterable[tuple[str, Any]] = d.items()
            if standard_first:
                items = islice(items, _N_STD, None)
            for key, value in items:
                if key not in skip:
                    event[key + "_" if key in SCHEMA_KEYS else key] = value
            raw = d.get("_agentuity_raw")
            if raw is not None:
                # Top-level keys set verbatim by the package itself (a finished span's spanId, name,
                # start...), which LogRecord attribute names would otherwise shadow.
                event.update(raw)
    if record.exc_info or record.exc_text or record.stack_info:
        _add_exception(event, record)
    if skip is _SKIP:
        d["_agentuity_event"] = event
    return event


#: What a log call captures of a plain record (see :func:`plain_event`): ``(created, levelno, name,
#: message, session ID or None, thread ID or None)``.
PlainValues: TypeAlias = tuple[float, int, str, str, "str | None", "str | None"]


def plain_event(values: PlainValues) -> dict[str, Any]:
    """The schema dict of a plain record, from the few values a log call captured.

    A plain record holds only the standard attributes (and the session's text IDs), has a level
    in ``LEVEL_NAMES`` and no exception or stack: :func:`event_from_record` would build exactly this
    dict for it. The shipping engine queues these values instead of a copy of the record's
    ``__dict__``.
    """
    created, levelno, name, message, session_id, thread_id = values
    stamp = format_timestamp(created)  # off the hot path now: plain_lines serves the common batch
    if session_id is None:
        return {"timestamp": stamp, "level": LEVEL_NAMES[levelno], "logger": name, "message": message}
    return {
        "timestamp": stamp,
        "level": LEVEL_NAMES[levelno],
        "logger": name,
        "message": message,
        "agentuitySessionId": session_id,
        "agentuityThreadId": thread_id,
    }


_LEVEL_BYTES: Final = {levelno: name.encode() for levelno, name in LEVEL_NAMES.items()}
_CLOSE_BRACE: Final = dict.fromkeys(LEVEL_NAMES, b"}")


def plain_lines(items: Sequence[PlainValues], closers: Mapping[int, bytes] = _CLOSE_BRACE) -> list[bytes]:
    """The schema JSON of plain records, byte for byte ``orjson.dumps(plain_event(values))``.

    The batch form of :func:`plain_event` for the shipping worker: one join of ready-made pieces and
    one encoder call (the message) per record. The timestamp's second, the level-and-logger run
    between the microseconds and the message, and the session's IDs are encoded once per batch (the
    microseconds come from a table of three-digit groups: ``%06d`` alone cost ~100 ns). Each line
    ends with ``closers[levelno]`` instead of its closing brace, so a protocol can append attributes
    of its own (Datadog's reserved ones) without another copy.

    Raises:
        Exception: whatever the encoder refuses (a message with lone surrogates, say): the caller
            then builds those records one by one, on the general path.
    """
    import orjson

    dumps = orjson.dumps
    join = b"".join
    digits = DIGITS3_BYTES
    levels = _LEVEL_BYTES
    start, prefix = _ts_cache
    head = b'{"timestamp":"' + prefix.encode()
    middles: dict[tuple[int, str], bytes] = {}
    sessions: dict[tuple[str, str | None], bytes] = {}
    lines: list[bytes] = []
    append = lines.append
    last_name: object = None
    last_level = -1
    middle = closer = b""
    for created, levelno, name, message, session_id, thread_id in items:
        frac = created - start
        if 0.0 <= frac < LAST_US:
            us = int(frac * 1_000_000)
        else:
            start, prefix, us = cached_second(created)
            head = b'{"timestamp":"' + prefix.encode()
        if name is not last_name or levelno != last_level:
            closer = closers[levelno]
            if type(name) is str:
                key = (levelno, name)
                found = middles.get(key)
                if found is None:
                    found = middles[key] = b'Z","level":"%s","logger":%s,"message":' % (
                        levels[levelno],
                        dumps(name),
                    )
                middle, last_name, last_level = found, name, levelno
            else:  # not cached: the next record renders it again
                middle = b'Z","level":"%s","logger":%s,"message":' % (levels[levelno], dumps(name))
                last_name = None
        if session_id is None:
            append(join((head, digits[us // 1000], digits[us % 1000], middle, dumps(message), closer)))
        else:
            pair = (session_id, thread_id)
            ids = sessions.get(pair)
            if ids is None:
                ids = sessions[pair] = b',"agentuitySessionId":%s,"agentuityThreadId":%s' % (
                    dumps(session_id),
                    dumps(thread_id),
                )
            append(join((head, digits[us // 1000], digits[us % 1000], middle, dumps(message), ids, closer)))
    return lines


def _add_exception(event: dict[str, Any], record: logging.LogRecord) -> None:
    d = record.__dict__
    if record.exc_info:
        exc = d.get("_agentuity_exc")
        if exc is None:
            exc = exception_info(record.exc_info)
            d["_agentuity_exc"] = exc
        if exc is not None:
            event[EXCEPTION_KEY] = exc
    elif record.exc_text:
        event[EXCEPTION_KEY] = {"type": None, "message": None, "traceback": record.exc_text}
    if record.stack_info:
        event[STACK_KEY] = record.stack_info


#: structlog method names and the stdlib levels they stand for.
METHOD_LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "log": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "err": logging.ERROR,
    "exception": logging.ERROR,
    "failure": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}
_METHOD_NAMES: Final = {m: LEVEL_NAMES[n] for m, n in METHOD_LEVELS.items()}
#: structlog keys that are not user fields.
STRUCTLOG_KEYS: Final = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "logger_name",
        "exc_info",
        "exception",
        "stack_info",
        "stack",
        SESSION_KEY,
        THREAD_KEY,
        SPAN_KEY,
        "_record",
        "_from_structlog",
    }
)


def event_from_structlog(
    method_name: str, event_dict: Mapping[str, Any], created: float | None = None
) -> dict[str, Any]:
    """Build the schema dict for a structlog event (the keys ``event``, ``level``, ``logger``...).

    structlog's own ``timestamp`` is replaced by ours so every path shares one time format; ``exc_info``
    becomes the structured ``exception``; other keys are fields (renamed on a clash).
    """
    level = event_dict.get("level")
    if not isinstance(level, str) or not level:
        level = _METHOD_NAMES.get(method_name, "info")
    else:
        level = level.lower()
        if level == "exception":
            level = "error"
    msg = event_dict.get("event")
    event: dict[str, Any] = {
        "timestamp": format_timestamp(time.time() if created is None else created),
        "level": level,
        "logger": str(event_dict.get("logger") or event_dict.get("logger_name") or "structlog"),
        "message": msg if isinstance(msg, str) else ("" if msg is None else _as_text(msg)),
    }
    sid = event_dict.get(SESSION_KEY)
    if sid is not None:
        event[SESSION_KEY] = sid
        event[THREAD_KEY] = event_dict.get(THREAD_KEY)
    span = event_dict.get(SPAN_KEY)
    if span is not None:
        event[SPAN_KEY] = span
    for key, value in event_dict.items():
        if key in STRUCTLOG_KEYS:
            continue
        name = key if isinstance(key, str) else str(key)
        if name in SCHEMA_KEYS:
            name += "_"
        event[name] = value
    exc = event_dict.get("exc_info")
    if exc:
        if isinstance(exc, BaseException):
            info = exception_info((type(exc), exc, exc.__traceback__))
        elif isinstance(exc, tuple):
            info = exception_info(exc)
        else:
            import sys

            info = exception_info(sys.exc_info())
        if info is not None:
            event[EXCEPTION_KEY] = info
    elif "exception" in event_dict:  # already rendered by format_exc_info / dict_tracebacks
        rendered = event_dict["exception"]
        event[EXCEPTION_KEY] = (
            {"type": None, "message": None, "traceback": rendered} if isinstance(rendered, str) else rendered
        )
    stack = event_dict.get("stack")
    if isinstance(stack, str):
        event[STACK_KEY] = stack
    elif event_dict.get("stack_info"):
        event[STACK_KEY] = "Stack (most recent call last):\n" + "".join(traceback.format_stack()[:-2])
    return event


def _as_text(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
