"""AES-256-GCM sealing of thread state: round trip, rotation, tamper, wrong key, thread binding."""

from __future__ import annotations

import base64
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentuity_logging._errors import ConfigurationError, MissingDependencyError
from agentuity_logging._storage._crypto import (
    ENV_STATE_KEY,
    Keyring,
    StateDecryptionError,
    generate_key,
    key_id,
    keyring_from_env,
    sealed_key_id,
)

THREAD = "thrd_" + "a" * 32
OTHER_THREAD = "thrd_" + "b" * 32
PLAINTEXT = b'{"secret":"the cake is a lie"}'
# Built once: Hypothesis runs a test body many times and the keyring is not what varies.
_FIXED_RING = Keyring(generate_key())


def _raw(key: str) -> bytes:
    return base64.urlsafe_b64decode(key)


class TestGenerateKey:
    def test_is_32_bytes_of_url_safe_base64(self) -> None:
        """A generated key is 44 URL-safe base64 characters that decode to 32 bytes."""
        key = generate_key()
        assert len(key) == 44
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
        assert len(_raw(key)) == 32

    def test_is_random(self) -> None:
        """Two generated keys differ."""
        assert generate_key() != generate_key()

    def test_is_accepted_by_a_keyring(self) -> None:
        """What keygen prints is what AGENTUITY_STATE_KEY accepts."""
        key = generate_key()
        assert Keyring.parse(key).current_key_id == key_id(_raw(key))


class TestRoundTrip:
    def test_decrypt_returns_what_was_encrypted(self) -> None:
        """Sealing then opening for the same thread gives the plaintext back."""
        ring = Keyring(generate_key())
        assert ring.decrypt(THREAD, ring.encrypt(THREAD, PLAINTEXT)) == PLAINTEXT

    def test_ciphertext_hides_the_plaintext(self) -> None:
        """The sealed bytes do not contain the plaintext."""
        ring = Keyring(generate_key())
        assert b"cake" not in ring.encrypt(THREAD, PLAINTEXT)

    def test_each_seal_uses_a_fresh_nonce(self) -> None:
        """Sealing the same plaintext twice gives different bytes."""
        ring = Keyring(generate_key())
        assert ring.encrypt(THREAD, PLAINTEXT) != ring.encrypt(THREAD, PLAINTEXT)

    def test_sealed_record_names_its_key(self) -> None:
        """The record carries the 8-hex-digit ID of the key that sealed it."""
        ring = Keyring(generate_key())
        sealed = ring.encrypt(THREAD, PLAINTEXT)
        assert sealed_key_id(sealed) == ring.current_key_id
        assert len(ring.current_key_id) == 8
        int(ring.current_key_id, 16)

    def test_raw_bytes_key_works_like_its_text(self) -> None:
        """A raw 32-byte key and its base64 text are the same key."""
        key = generate_key()
        assert Keyring(_raw(key)).decrypt(THREAD, Keyring(key).encrypt(THREAD, PLAINTEXT)) == PLAINTEXT

    @given(plaintext=st.binary(max_size=2048), suffix=st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True))
    def test_any_bytes_for_any_thread(self, plaintext: bytes, suffix: str) -> None:
        """Any plaintext round-trips for any valid thread ID."""
        ring = _FIXED_RING
        thread = "thrd_" + suffix
        assert ring.decrypt(thread, ring.encrypt(thread, plaintext)) == plaintext


class TestRotation:
    def test_old_records_open_with_the_old_key_kept(self) -> None:
        """After rotating, a keyring of new + old opens records sealed with the old key."""
        old, new = generate_key(), generate_key()
        sealed = Keyring(old).encrypt(THREAD, PLAINTEXT)
        assert Keyring(new, [old]).decrypt(THREAD, sealed) == PLAINTEXT

    def test_new_records_use_the_current_key(self) -> None:
        """A rotated keyring seals with its first key only."""
        old, new = generate_key(), generate_key()
        sealed = Keyring(new, [old]).encrypt(THREAD, PLAINTEXT)
        assert sealed_key_id(sealed) == key_id(_raw(new))
        with pytest.raises(StateDecryptionError):
            Keyring(old).decrypt(THREAD, sealed)

    def test_environment_lists_current_key_first(self) -> None:
        """AGENTUITY_STATE_KEY holds comma-separated keys, the current one first."""
        old, new = generate_key(), generate_key()
        ring = keyring_from_env({ENV_STATE_KEY: f"{new}, {old}"})
        assert ring is not None
        assert ring.key_ids == (key_id(_raw(new)), key_id(_raw(old)))

    def test_dropped_key_is_named_in_the_error(self) -> None:
        """Opening a record whose key was dropped names that key's ID and the thread."""
        old, new = generate_key(), generate_key()
        sealed = Keyring(old).encrypt(THREAD, PLAINTEXT)
        with pytest.raises(StateDecryptionError) as info:
            Keyring(new).decrypt(THREAD, sealed)
        assert info.value.thread_id == THREAD
        assert info.value.key_id == key_id(_raw(old))
        assert THREAD in str(info.value)
        assert key_id(_raw(old)) in str(info.value)

    def test_coerce_accepts_a_sequence_of_keys(self) -> None:
        """A list of keys is a keyring with the first one current."""
        old, new = generate_key(), generate_key()
        ring = Keyring.coerce([new, old])
        assert ring.current_key_id == key_id(_raw(new))
        assert Keyring.coerce(ring) is ring


class TestTamper:
    @pytest.mark.parametrize("position", [0, 1, 5, 10, 17, 20, -1])
    def test_any_flipped_byte_is_detected(self, position: int) -> None:
        """Flipping one byte anywhere (header, key ID, nonce, body, tag) fails to open."""
        ring = Keyring(generate_key())
        sealed = bytearray(ring.encrypt(THREAD, PLAINTEXT))
        sealed[position] ^= 0x01
        with pytest.raises(StateDecryptionError, match=THREAD):
            ring.decrypt(THREAD, bytes(sealed))

    def test_truncated_record_is_detected(self) -> None:
        """A record cut short fails to open instead of returning a prefix."""
        ring = Keyring(generate_key())
        sealed = ring.encrypt(THREAD, PLAINTEXT)
        for cut in (0, 3, 20, len(sealed) - 1):
            with pytest.raises(StateDecryptionError):
                ring.decrypt(THREAD, sealed[:cut])

    def test_wrong_key_is_detected(self) -> None:
        """A different key that happens to be configured never yields garbage."""
        sealed = Keyring(generate_key()).encrypt(THREAD, PLAINTEXT)
        with pytest.raises(StateDecryptionError, match="not among the configured keys"):
            Keyring(generate_key()).decrypt(THREAD, sealed)


class TestThreadBinding:
    def test_record_copied_to_another_thread_fails(self) -> None:
        """A sealed record moved to another thread's row does not open there."""
        ring = Keyring(generate_key())
        sealed = ring.encrypt(THREAD, PLAINTEXT)
        with pytest.raises(StateDecryptionError) as info:
            ring.decrypt(OTHER_THREAD, sealed)
        assert info.value.thread_id == OTHER_THREAD
        assert "copied from another thread" in str(info.value)


class TestKeyFormat:
    @pytest.mark.parametrize(
        "bad",
        [
            "short",
            base64.urlsafe_b64encode(b"x" * 16).decode(),
            base64.urlsafe_b64encode(b"x" * 33).decode(),
            base64.b64encode(b"\xfb" * 32).decode(),  # standard base64 ("+", "/"), not URL-safe
            "!" * 44,
        ],
    )
    def test_malformed_key_is_a_configuration_error(self, bad: str) -> None:
        """Keys that are not 32 bytes of URL-safe base64 are refused with a clear message."""
        with pytest.raises(ConfigurationError, match="32-byte key in URL-safe base64"):
            Keyring.parse(bad)

    def test_error_never_echoes_the_key(self) -> None:
        """The message describes the bad key without repeating it."""
        bad = base64.urlsafe_b64encode(b"supersecretvalue" * 3).decode()
        with pytest.raises(ConfigurationError) as info:
            keyring_from_env({ENV_STATE_KEY: bad})
        assert bad not in str(info.value)
        assert ENV_STATE_KEY in str(info.value)
        assert "keygen" in str(info.value)

    def test_error_says_which_key_of_a_list_is_bad(self) -> None:
        """In a rotated list, the message names the position of the bad key."""
        with pytest.raises(ConfigurationError, match=r"key 2 of 2"):
            Keyring.parse(generate_key() + ",nope")

    def test_raw_key_of_wrong_length_is_refused(self) -> None:
        """Raw bytes must be exactly 32."""
        with pytest.raises(ConfigurationError, match="got 16 bytes"):
            Keyring(b"k" * 16)

    def test_empty_entry_in_a_list_is_refused(self) -> None:
        """A trailing comma is a mistake, not an empty key."""
        with pytest.raises(ConfigurationError, match="no empty entries"):
            Keyring.parse(generate_key() + ",")

    def test_key_without_padding_is_accepted(self) -> None:
        """The trailing '=' of the base64 text may be left out."""
        key = generate_key()
        assert Keyring.parse(key.rstrip("=")).current_key_id == Keyring.parse(key).current_key_id

    def test_unset_environment_gives_no_keyring(self) -> None:
        """No AGENTUITY_STATE_KEY (or an empty one) means no keyring, not an error."""
        assert keyring_from_env({}) is None
        assert keyring_from_env({ENV_STATE_KEY: "  "}) is None

    def test_repr_shows_key_ids_only(self) -> None:
        """A keyring's repr carries IDs, never key material."""
        key = generate_key()
        ring = Keyring(key)
        assert key not in repr(ring)
        assert ring.current_key_id in repr(ring)


class TestMissingDependency:
    def test_without_cryptography_the_error_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Building a keyring without cryptography says to install the crypto extra."""
        monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
        with pytest.raises(MissingDependencyError, match=r"agentuity-logging\[crypto\]"):
            Keyring(generate_key())
