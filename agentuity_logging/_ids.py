"""Session and thread identifiers: how they are made and how outside values are checked.

Generated IDs are ``sess_`` / ``thrd_`` followed by 32 lowercase hex characters. IDs arriving from outside
(HTTP headers, CLI arguments, a caller's ``session(session_id=...)``) are accepted more loosely so that
other systems' IDs can be joined, but they must carry the right prefix, use only ``[A-Za-z0-9_-]`` and be
at most 128 characters: nothing that could forge a log line or a query ever reaches a record.
"""

from __future__ import annotations

import os
import re
from typing import Final

__all__ = [
    "MAX_ID_LENGTH",
    "SESSION_PREFIX",
    "THREAD_PREFIX",
    "new_session_id",
    "new_thread_id",
    "validate_id",
    "validate_session_id",
    "validate_thread_id",
]

SESSION_PREFIX: Final = "sess_"
THREAD_PREFIX: Final = "thrd_"
MAX_ID_LENGTH: Final = 128

_ALLOWED = re.compile(r"[A-Za-z0-9_-]+")


def new_session_id() -> str:
    """Return a fresh ``sess_`` ID with 128 random bits."""
    return SESSION_PREFIX + os.urandom(16).hex()


def new_thread_id() -> str:
    """Return a fresh ``thrd_`` ID with 128 random bits."""
    return THREAD_PREFIX + os.urandom(16).hex()


def new_span_id() -> str:
    """Return a fresh span ID (16 lowercase hex characters, the W3C/OpenTelemetry span ID size)."""
    return os.urandom(8).hex()


def validate_id(value: object, prefix: str, *, what: str | None = None) -> str:
    """Return ``value`` when it is a well-formed ID with ``prefix``; raise ``ValueError`` naming the problem.

    The error message shows at most a short, escaped excerpt of the bad value, so a hostile header cannot
    inject text into whatever logs the error.
    """
    kind = what or ("session ID" if prefix == SESSION_PREFIX else "thread ID")
    expected = f"expected {prefix!r} followed by letters, digits, '_' or '-' (at most {MAX_ID_LENGTH} chars)"
    if not isinstance(value, str):
        raise ValueError(f"invalid {kind}: not a string ({type(value).__name__}); {expected}")
    excerpt = ascii(value[:40]) + ("…" if len(value) > 40 else "")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"invalid {kind} {excerpt}: {len(value)} characters is too long; {expected}")
    if not value.startswith(prefix):
        raise ValueError(f"invalid {kind} {excerpt}: wrong prefix; {expected}")
    if len(value) == len(prefix):
        raise ValueError(f"invalid {kind} {excerpt}: nothing after the prefix; {expected}")
    if _ALLOWED.fullmatch(value) is None:
        raise ValueError(f"invalid {kind} {excerpt}: forbidden characters; {expected}")
    return value


def validate_session_id(value: object) -> str:
    """Validate a session ID from outside (see :func:`validate_id`)."""
    return validate_id(value, SESSION_PREFIX)


def validate_thread_id(value: object) -> str:
    """Validate a thread ID from outside (see :func:`validate_id`)."""
    return validate_id(value, THREAD_PREFIX)
