"""JSON encoding of events with orjson, safe for any value a user can put in a field.

``dumps`` is the fast path: orjson with a ``default`` that renders what JSON cannot hold (bytes, sets,
Decimal, exceptions, arbitrary objects). When orjson refuses the whole document (recursion, integers
beyond 64 bits, a ``default`` that fails), a slower walk sanitises the event field by field, so one bad
field never drops the rest of the record.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

import orjson

__all__ = ["MAX_STRING_CHARS", "OPTIONS", "dumps", "make_default", "safe_default", "sanitize"]

#: Strings longer than this are cut (with a marker) when a line must be made safe.
MAX_STRING_CHARS: Final = 65_536
_MAX_DEPTH: Final = 64
OPTIONS: Final = orjson.OPT_NON_STR_KEYS
_OPTIONS: Final = OPTIONS
_RECURSION: Final = "<recursion>"


def _unrepresentable(obj: object) -> str:
    try:
        return repr(obj)
    except Exception:
        return f"<unrepresentable {type(obj).__name__}>"


def safe_default(obj: Any) -> Any:
    """Turn a value orjson cannot serialise into one it can (never raises)."""
    try:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj).decode("utf-8", "backslashreplace")
        if isinstance(obj, (set, frozenset)):
            try:
                return sorted(obj)
            except TypeError:
                return list(obj)
        if isinstance(obj, Decimal):
            return str(obj)
        if isinstance(obj, BaseException):
            return f"{type(obj).__name__}: {obj}"
        if isinstance(obj, enum.Enum):
            return obj.value
        if isinstance(obj, type):
            return f"{obj.__module__}.{obj.__qualname__}"
        if isinstance(obj, complex):
            return str(obj)
        if dataclasses.is_dataclass(obj):
            return {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}
        if isinstance(obj, Mapping):
            return dict(obj)
        if hasattr(obj, "__iter__") and not isinstance(obj, str):
            return list(obj)[:10_000]
        return str(obj)
    except Exception:
        return _unrepresentable(obj)


def make_default(first: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """Return an orjson ``default`` trying ``first`` (a user's ``json_default``), then ours."""
    return safe_default if first is None else _chain(first)


def _chain(first: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Return a default that tries ``first`` (a user's ``json_default``) and falls back to ours."""

    def default(obj: Any) -> Any:
        try:
            return first(obj)
        except Exception:
            return safe_default(obj)

    return default


def sanitize(value: Any, default: Callable[[Any], Any] = safe_default) -> Any:
    """Return a deep copy of ``value`` that orjson can always encode.

    Cycles become ``"<recursion>"``, integers beyond 64 bits strings, NaN/inf strings, strings longer
    than :data:`MAX_STRING_CHARS` are cut with a marker, and anything else goes through ``default``.
    """
    active: set[int] = set()

    def walk(v: Any, depth: int) -> Any:
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, str):
            if len(v) > MAX_STRING_CHARS:
                return v[:MAX_STRING_CHARS] + f"…[truncated {len(v) - MAX_STRING_CHARS} chars]"
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates: orjson refuses them
                return v.encode("utf-8", "backslashreplace").decode("utf-8")
            return v
        if isinstance(v, int):
            return v if -(2**63) <= v < 2**64 else str(v)
        if isinstance(v, float):
            return v if math.isfinite(v) else str(v)
        if depth > _MAX_DEPTH:
            return "<too deep>"
        if isinstance(v, (dict, list, tuple)):
            if id(v) in active:
                return _RECURSION
            active.add(id(v))
            try:
                if isinstance(v, dict):
                    return {(k if isinstance(k, str) else str(k)): walk(x, depth + 1) for k, x in v.items()}
                return [walk(x, depth + 1) for x in v]
            finally:
                active.discard(id(v))
        try:
            orjson.dumps(v, option=_OPTIONS)
        except Exception:
            converted = default(v)
            if converted is v or depth >= _MAX_DEPTH:
                return _unrepresentable(v)
            return walk(converted, depth + 1)
        return v

    try:
        return walk(value, 0)
    except Exception:
        return _unrepresentable(value)


def dumps(event: Mapping[str, Any], default: Callable[[Any], Any] | None = None) -> bytes:
    """Encode ``event`` as one line of JSON bytes; never raises, never drops a field.

    ``default`` is tried before our own fallbacks (python-json-logger's ``json_default`` option).
    """
    fallback = make_default(default)
    try:
        return orjson.dumps(event, default=fallback, option=_OPTIONS)
    except Exception:  # noqa: S110 - handled below: one value poisoned the document
        pass
    # Sanitise field by field, keep every key.
    clean: dict[str, Any] = {}
    for key, value in event.items():
        name = key if isinstance(key, str) else str(key)
        try:
            orjson.dumps(value, default=fallback, option=_OPTIONS)
            clean[name] = value
        except Exception:
            clean[name] = sanitize(value, fallback)
    try:
        return orjson.dumps(clean, default=fallback, option=_OPTIONS)
    except Exception:
        return orjson.dumps(sanitize(clean, fallback), option=_OPTIONS)
