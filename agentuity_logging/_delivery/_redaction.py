"""Secret masking: fields named like credentials are replaced before a record leaves the process.

A field matches when one of the patterns occurs in its name, ignoring case and the separators
``_``, ``-``, ``.`` and spaces (so ``api_key`` also catches ``X-Api-Key`` and ``apiKey``). Nested
dicts and lists are searched too. Numbers, booleans and ``None`` are kept even under a matching
name: they cannot be credentials, and AI applications log token *counts* (``prompt_tokens=812``)
that a plain substring rule on ``token`` would otherwise destroy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["CONTAINER_TYPES", "DEFAULT_REDACT", "REDACTED", "Redactor"]

#: Field-name patterns masked by default (the ``redact=`` option replaces this list).
DEFAULT_REDACT: Final = (
    "authorization",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "token",
    "secret",
    "cookie",
    "set-cookie",
)
#: What a masked value becomes.
REDACTED: Final = "[REDACTED]"

_SEPARATORS: Final = str.maketrans("", "", "_-. ")
# The keys a stdlib record's event has besides user fields (see ``agentuity_logging._records``).
_SCHEMA_TEXT_KEYS: Final = (
    "timestamp",
    "level",
    "logger",
    "message",
    "agentuitySessionId",
    "agentuityThreadId",
    "spanId",
)
# Values that can never carry a credential, kept even under a secret-looking name.
_PLAIN: Final = (int, float, bool, type(None))
_MAX_DEPTH: Final = 16
#: Value types searched for nested secrets.
CONTAINER_TYPES: Final = frozenset({dict, list, tuple})
# Field names seen so far and whether they are secret; bounded so hostile key churn cannot grow it.
_CACHE_LIMIT: Final = 4096


def _normalise(name: str) -> str:
    return name.lower().translate(_SEPARATORS)


class Redactor:
    """Masks secret-named fields of an event, copying only what it changes (never mutates its input).

    Args:
        patterns: field-name patterns; ``None`` means :data:`DEFAULT_REDACT`, an empty list disables
            masking.

    Raises:
        TypeError: ``patterns`` is a single string (a common slip for a one-item list).
    """

    __slots__ = ("_cache", "harmless_names", "patterns", "schema_names_clean")

    def __init__(self, patterns: Iterable[str] | None = None) -> None:
        if isinstance(patterns, str):
            raise TypeError("redact= takes a list of field-name patterns, not one string")
        chosen = DEFAULT_REDACT if patterns is None else tuple(patterns)
        self.patterns: tuple[str, ...] = tuple(
            p for p in dict.fromkeys(_normalise(str(p)) for p in chosen) if p
        )
        self._cache: dict[str, bool] = {}
        #: Names known not to be secret: most events only have those, and checking a whole event
        #: against this set (plus its values' types) is two C calls.
        self.harmless_names: set[str] = set()
        #: Whether no pattern matches a key of the schema itself (``redact=["message"]`` does): then
        #: an event holding only those keys needs no look at its names.
        self.schema_names_clean = not any(self.is_secret(name) for name in _SCHEMA_TEXT_KEYS)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def is_secret(self, name: str) -> bool:
        """Return whether a field called ``name`` holds a secret."""
        known = self._cache.get(name)
        if known is not None:
            return known
        folded = _normalise(name)
        secret = any(p in folded for p in self.patterns)
        if len(self._cache) < _CACHE_LIMIT:
            self._cache[name] = secret
            if not secret:
                self.harmless_names.add(name)
        return secret

    def __call__(self, event: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return ``event`` with secret fields masked (``event`` itself when nothing matched)."""
        if not self.patterns:
            return event
        if self.harmless_names.issuperset(event) and CONTAINER_TYPES.isdisjoint(map(type, event.values())):
            return event
        return self._mapping(event, 0)

    def _mapping(self, data: Mapping[Any, Any], depth: int) -> Mapping[Any, Any]:
        out: dict[Any, Any] | None = None
        cache = self._cache
        for key, value in data.items():
            secret = cache.get(key) if type(key) is str else None
            if secret is None:
                secret = self.is_secret(key if isinstance(key, str) else str(key))
            if secret:
                if isinstance(value, _PLAIN):
                    continue
                new: Any = REDACTED
            elif type(value) is dict or type(value) is list or type(value) is tuple:
                if depth >= _MAX_DEPTH:
                    continue
                new = self._value(value, depth + 1)
                if new is value:
                    continue
            else:
                continue
            if out is None:
                out = dict(data)
            out[key] = new
        return data if out is None else out

    def _value(self, value: Any, depth: int) -> Any:
        if type(value) is dict:
            return self._mapping(value, depth)
        changed = False
        items = []
        for item in value:
            if type(item) is dict or type(item) is list or type(item) is tuple:
                new = item if depth >= _MAX_DEPTH else self._value(item, depth + 1)
                changed = changed or new is not item
                items.append(new)
            else:
                items.append(item)
        if not changed:
            return value
        return items if type(value) is list else tuple(items)
