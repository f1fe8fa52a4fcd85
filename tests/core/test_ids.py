"""IDs: the shape of generated IDs and the validator for IDs from outside."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentuity_logging import new_session_id, new_thread_id, validate_session_id, validate_thread_id
from agentuity_logging._ids import MAX_ID_LENGTH


class TestGeneratedIds:
    def test_session_ids_are_prefix_and_32_lowercase_hex(self) -> None:
        """A new session ID is sess_ plus 32 lowercase hex characters."""
        assert re.fullmatch(r"sess_[0-9a-f]{32}", new_session_id())

    def test_thread_ids_are_prefix_and_32_lowercase_hex(self) -> None:
        """A new thread ID is thrd_ plus 32 lowercase hex characters."""
        assert re.fullmatch(r"thrd_[0-9a-f]{32}", new_thread_id())

    def test_generated_ids_are_unique(self) -> None:
        """Ten thousand generated IDs never collide."""
        assert len({new_session_id() for _ in range(10_000)}) == 10_000


class TestValidator:
    @pytest.mark.parametrize(
        "value",
        ["sess_abc", "sess_A-b_9", "sess_" + "a" * (MAX_ID_LENGTH - 5)],
    )
    def test_accepts_well_formed_outside_ids(self, value: str) -> None:
        """IDs with the prefix and [A-Za-z0-9_-] up to 128 characters pass unchanged."""
        assert validate_session_id(value) == value

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            ("thrd_abc", "wrong prefix"),
            ("sess_", "nothing after the prefix"),
            ("sess_a b", "forbidden characters"),
            ("sess_a\nINFO forged", "forbidden characters"),
            ("sess_" + "a" * MAX_ID_LENGTH, "too long"),
            (12, "not a string"),
        ],
    )
    def test_rejects_malformed_ids_naming_the_problem(self, value: object, problem: str) -> None:
        """A malformed ID raises ValueError saying what is wrong and what shape is expected."""
        with pytest.raises(ValueError, match=problem) as info:
            validate_session_id(value)
        assert "expected 'sess_'" in str(info.value)

    def test_error_message_escapes_the_bad_value(self) -> None:
        """The error shows an escaped excerpt, so a hostile value cannot inject a newline into logs."""
        with pytest.raises(ValueError, match="forbidden") as info:
            validate_thread_id("thrd_x\n2026-01-01 INFO fake")
        assert "\n" not in str(info.value)

    @given(st.text(max_size=200))
    def test_validated_ids_never_contain_unsafe_characters(self, text: str) -> None:
        """Whatever comes in, an accepted ID matches the safe alphabet and length."""
        try:
            value = validate_thread_id("thrd_" + text)
        except ValueError:
            return
        assert re.fullmatch(r"thrd_[A-Za-z0-9_-]{1,123}", value)
