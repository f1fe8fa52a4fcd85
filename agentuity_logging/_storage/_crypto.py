"""AES-256-GCM for thread state at rest, under a keyring that lets keys rotate.

A sealed record is ``version (1 byte) | key ID (4 bytes) | nonce (12 bytes) | ciphertext + tag``. The key
ID says which key of the keyring sealed it, so a keyring of one current key plus old keys opens records
written before a rotation while every new write uses the current key. The associated data binds the
record to its thread ID (and to its header): a record copied onto another thread fails to open, exactly
like a tampered one or one sealed with a key we do not hold, and each of these raises
:class:`StateDecryptionError` naming the thread. Nothing here ever returns garbage or an empty state in
place of state it cannot open.

``cryptography`` is imported on first use (the ``crypto`` extra), never by ``import agentuity_logging``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Final

from agentuity_logging._errors import (
    AgentuityLoggingError,
    ConfigurationError,
    MissingDependencyError,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENV_STATE_KEY",
    "KEY_BYTES",
    "Keyring",
    "StateDecryptionError",
    "generate_key",
    "key_id",
    "keyring_from_env",
    "sealed_key_id",
]

#: The environment variable holding the state key(s): URL-safe base64, comma-separated, current first.
ENV_STATE_KEY: Final = "AGENTUITY_STATE_KEY"
#: AES-256: keys are 32 bytes.
KEY_BYTES: Final = 32

_FORMAT_VERSION: Final = 1
_KEY_ID_BYTES: Final = 4
_NONCE_BYTES: Final = 12
_HEADER_BYTES: Final = 1 + _KEY_ID_BYTES
_TAG_BYTES: Final = 16
_AAD_PREFIX: Final = b"agentuity-logging/thread-state\x00"
# Domain-separated so a key ID can never be mistaken for (or compared against) a plain hash of the key.
_KEY_ID_PREFIX: Final = b"agentuity-logging/state-key-id\x00"
# 32 bytes in base64 is 43 characters plus one "=" of padding (which we accept missing).
_KEY_TEXT: Final = re.compile(r"[A-Za-z0-9_-]{43}=?")
_HOW_TO_GET_ONE: Final = "generate one with `agentuity-logging keygen`"

KeyMaterial = str | bytes


class StateDecryptionError(AgentuityLoggingError):
    """A thread's stored state could not be opened: tampered, wrong key, or copied from another thread.

    Raised instead of returning garbage or silently starting over with empty state. ``thread_id`` names
    the thread; ``key_id`` is the ID of the key the record says it was sealed with (when readable).
    """

    def __init__(self, thread_id: str, reason: str, *, key_id: str | None = None) -> None:
        self.thread_id = thread_id
        self.key_id = key_id
        self.reason = reason
        super().__init__(f"cannot decrypt the state of thread {thread_id}: {reason}")


def generate_key() -> str:
    """Return a new random 32-byte state key in URL-safe base64 (what ``agentuity-logging keygen`` prints)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def key_id(key: bytes) -> str:
    """Return the 8-hex-digit ID of a raw 32-byte ``key``: what sealed records carry to name their key.

    It is a truncated SHA-256 over a fixed label and the key: it identifies, it reveals nothing usable.
    """
    return hashlib.sha256(_KEY_ID_PREFIX + key).digest()[:_KEY_ID_BYTES].hex()


def sealed_key_id(sealed: bytes) -> str | None:
    """Return the key ID a sealed record names, or ``None`` when it is not a sealed record at all."""
    if len(sealed) < _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES or sealed[0] != _FORMAT_VERSION:
        return None
    return sealed[1:_HEADER_BYTES].hex()


def _parse_key(material: KeyMaterial, *, source: str, position: int, count: int) -> bytes:
    """Decode one key; errors say where it came from and what shape is expected, never the key itself."""
    where = source if count == 1 else f"{source} (key {position} of {count})"
    if isinstance(material, (bytes, bytearray, memoryview)):
        raw = bytes(material)
        if len(raw) != KEY_BYTES:
            raise ConfigurationError(
                f"{where}: expected {KEY_BYTES} raw bytes or URL-safe base64 text, "
                f"got {len(raw)} bytes; {_HOW_TO_GET_ONE}"
            )
        return raw
    if not isinstance(material, str):
        raise ConfigurationError(f"{where}: expected a URL-safe base64 string, got {type(material).__name__}")
    text = material.strip()
    if _KEY_TEXT.fullmatch(text) is None:
        raise ConfigurationError(
            f"{where}: expected a {KEY_BYTES}-byte key in URL-safe base64 (44 characters), "
            f"got {len(text)} characters that are not one; {_HOW_TO_GET_ONE}"
        )
    try:
        raw = base64.urlsafe_b64decode(text[:43] + "=")
    except (binascii.Error, ValueError):  # pragma: no cover - the regex admits only decodable text
        raise ConfigurationError(f"{where}: not valid URL-safe base64; {_HOW_TO_GET_ONE}") from None
    return raw


def _aesgcm_class() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise MissingDependencyError("Encrypted thread state", "cryptography", "crypto") from exc
    return AESGCM


class Keyring:
    """One current key that seals new records, plus old keys that still open records sealed before.

    Rotate by making a new key current and keeping the old one in ``old`` until every live thread has
    been saved again (each save re-seals with the current key) or has expired: one thread TTL after
    every writer switched, the old key can go.

    Thread-safe: the ciphers are stateless once built.

    Raises:
        ConfigurationError: a key that is not 32 bytes (raw, or URL-safe base64 text).
        MissingDependencyError: ``cryptography`` is not installed (the ``crypto`` extra).
    """

    __slots__ = ("_ciphers", "_current", "_current_id")

    def __init__(
        self,
        current: KeyMaterial,
        old: Iterable[KeyMaterial] = (),
        *,
        source: str = "state_key",
    ) -> None:
        materials = [current, *old]
        keys = [
            _parse_key(m, source=source, position=i, count=len(materials))
            for i, m in enumerate(materials, start=1)
        ]
        aesgcm = _aesgcm_class()
        # A list per ID: two keys sharing a 32-bit ID (a 1 in 4 billion chance) must both be tried.
        ciphers: dict[str, list[AESGCM]] = {}
        seen: set[bytes] = set()
        for raw in keys:
            if raw in seen:
                continue
            seen.add(raw)
            ciphers.setdefault(key_id(raw), []).append(aesgcm(raw))
        self._ciphers = ciphers
        self._current_id = key_id(keys[0])
        self._current = aesgcm(keys[0])

    @classmethod
    def parse(cls, text: str, *, source: str = ENV_STATE_KEY) -> Keyring:
        """Build a keyring from comma-separated keys, the current one first (the environment format)."""
        parts = [p.strip() for p in text.split(",")]
        if not parts or any(not p for p in parts):
            raise ConfigurationError(
                f"{source}: expected one or more URL-safe base64 keys separated by commas, "
                f"current key first, with no empty entries; {_HOW_TO_GET_ONE}"
            )
        return cls(parts[0], parts[1:], source=source)

    @classmethod
    def coerce(cls, value: Keyring | KeyMaterial | Iterable[KeyMaterial]) -> Keyring:
        """Accept a keyring, one key (text may hold several, comma-separated) or a sequence of keys."""
        if isinstance(value, Keyring):
            return value
        if isinstance(value, str):
            return cls.parse(value, source="state_key")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls(bytes(value))
        items = list(value)
        if not items:
            raise ConfigurationError("state_key: expected at least one key, got an empty sequence")
        return cls(items[0], items[1:])

    @property
    def current_key_id(self) -> str:
        """The ID of the key new records are sealed with."""
        return self._current_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        """IDs of every key held, the current one first."""
        return (self._current_id, *(k for k in self._ciphers if k != self._current_id))

    def encrypt(self, thread_id: str, plaintext: bytes) -> bytes:
        """Seal ``plaintext`` for ``thread_id`` with the current key (a fresh random nonce each time)."""
        header = bytes([_FORMAT_VERSION]) + bytes.fromhex(self._current_id)
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._current.encrypt(nonce, plaintext, _aad(header, thread_id))

    def decrypt(self, thread_id: str, sealed: bytes) -> bytes:
        """Open a record sealed for ``thread_id``.

        Raises:
            StateDecryptionError: not a sealed record, a key ID not in this keyring, or authentication
                failed (tampered, sealed for another thread, or a different key with the same ID).
        """
        from cryptography.exceptions import InvalidTag

        found_id = sealed_key_id(sealed)
        if found_id is None:
            raise StateDecryptionError(thread_id, "the stored record is not sealed state (corrupted)")
        candidates = self._ciphers.get(found_id)
        if not candidates:
            raise StateDecryptionError(
                thread_id,
                f"it was sealed with key {found_id}, which is not among the configured keys "
                f"({', '.join(self.key_ids)}); add that key to {ENV_STATE_KEY} after the current one",
                key_id=found_id,
            )
        header = sealed[:_HEADER_BYTES]
        nonce = sealed[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
        body = sealed[_HEADER_BYTES + _NONCE_BYTES :]
        aad = _aad(header, thread_id)
        for cipher in candidates:
            try:
                return cipher.decrypt(nonce, body, aad)
            except InvalidTag:
                continue
        raise StateDecryptionError(
            thread_id,
            f"authentication failed with key {found_id}: the record was tampered with, "
            "copied from another thread, or sealed with a different key",
            key_id=found_id,
        )

    def __repr__(self) -> str:
        # IDs only: a repr must never carry key material into a log line.
        return f"Keyring(current={self._current_id!r}, key_ids={list(self.key_ids)!r})"


def _aad(header: bytes, thread_id: str) -> bytes:
    return _AAD_PREFIX + header + thread_id.encode("utf-8")


def keyring_from_env(environ: Mapping[str, str] | None = None) -> Keyring | None:
    """Return the keyring in ``AGENTUITY_STATE_KEY``, or ``None`` when it is unset or empty.

    Raises:
        ConfigurationError: the variable is set but is not a comma-separated list of 32-byte keys.
    """
    env = os.environ if environ is None else environ
    text = env.get(ENV_STATE_KEY, "").strip()
    return Keyring.parse(text, source=ENV_STATE_KEY) if text else None
