"""Bad input: values JSON cannot hold and clashing field names never raise and never lose the record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import logging
from decimal import Decimal
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

import agentuity_logging as al
from agentuity_logging._json import MAX_STRING_CHARS, dumps, sanitize

from .helpers import JsonLines


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque>"


class Hostile:
    def __str__(self) -> str:
        raise RuntimeError("str fails")

    def __repr__(self) -> str:
        raise RuntimeError("repr fails")


def _recursive() -> dict[str, Any]:
    d: dict[str, Any] = {"a": 1}
    d["self"] = d
    return d


@pytest.fixture
def stream() -> JsonLines:
    out = JsonLines()
    al.configure(format="json", stream=out)
    return out


UNSERIALISABLE = [
    (b"\xffbytes", "\\xffbytes"),
    ({3, 1, 2}, [1, 2, 3]),
    (Decimal("1.10"), "1.10"),
    (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), "2026-01-02T03:04:05+00:00"),
    (Point(1, 2), {"x": 1, "y": 2}),
    (ValueError("nope"), "ValueError: nope"),
    (Opaque(), "<Opaque>"),
    (2**80, str(2**80)),
    (float("nan"), None),
]


class TestUnserialisableValues:
    @pytest.mark.parametrize(("value", "expected"), UNSERIALISABLE)
    def test_value_is_rendered_and_other_fields_survive(
        self, stream: JsonLines, value: object, expected: object
    ) -> None:
        """A value JSON cannot hold is rendered; the message and other fields are intact."""
        al.get_logger("t").info("msg", bad=value, good="kept")
        rec = stream.records()[0]
        assert rec["bad"] == expected
        assert rec["good"] == "kept"
        assert rec["message"] == "msg"

    @pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
    @pytest.mark.parametrize(("value", "expected"), UNSERIALISABLE)
    def test_the_structlog_path_renders_them_the_same(
        self, value: object, expected: object, binary: bool
    ) -> None:
        """structlog events take the same rendering, on text and binary streams alike."""
        out = io.BytesIO() if binary else JsonLines()
        al.configure(format="json", stream=out)
        structlog.get_logger("t").info("msg", bad=value, good="kept", nested={1: "int key"})
        line = out.getvalue()
        rec = json.loads(line.decode() if isinstance(line, bytes) else line)
        assert (rec["bad"], rec["good"], rec["message"]) == (expected, "kept", "msg")
        assert rec["nested"] == {"1": "int key"}

    def test_recursive_structure_is_cut(self, stream: JsonLines) -> None:
        """A dict containing itself renders with a recursion marker."""
        al.get_logger("t").info("msg", loop=_recursive(), good=1)
        rec = stream.records()[0]
        assert rec["loop"] == {"a": 1, "self": "<recursion>"}
        assert rec["good"] == 1

    def test_object_whose_str_and_repr_raise(self, stream: JsonLines) -> None:
        """Even a value whose __str__ and __repr__ raise gets a placeholder."""
        al.get_logger("t").info("msg", bad=Hostile(), good=1)
        rec = stream.records()[0]
        assert rec["bad"] == "<unrepresentable Hostile>"
        assert rec["good"] == 1

    def test_huge_string_is_written_whole_on_the_fast_path(self, stream: JsonLines) -> None:
        """A 5 MB string is logged as one valid line."""
        al.get_logger("t").info("msg", blob="x" * 5_000_000)
        assert len(stream.records()[0]["blob"]) == 5_000_000

    def test_sanitize_truncates_huge_strings_with_a_marker(self) -> None:
        """The safe walk caps strings and says how much it cut."""
        out = sanitize({"s": "y" * (MAX_STRING_CHARS + 10)})
        assert out["s"].endswith("[truncated 10 chars]")

    def test_lone_surrogates_are_escaped(self, stream: JsonLines) -> None:
        """Invalid UTF-8 (a lone surrogate) does not break the line."""
        al.get_logger("t").info("bad \udcff text", v="\ud800")
        rec = stream.records()[0]
        assert rec["v"] == "\\ud800"
        assert rec["message"].startswith("bad ")

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
            lambda children: (
                st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
            ),
            max_leaves=10,
        )
    )
    def test_any_value_encodes(self, value: object) -> None:
        """Any nesting of scalars, bytes, lists and dicts encodes to valid JSON."""
        import json

        assert json.loads(dumps({"v": value, "after": 1}))["after"] == 1


class TestClashingNames:
    @pytest.mark.parametrize("name", ["message", "args", "name", "levelname", "msg", "exc_text"])
    def test_logrecord_attribute_names_get_a_trailing_underscore(self, stream: JsonLines, name: str) -> None:
        """A field named like a LogRecord attribute is kept as name_ and does not crash."""
        al.get_logger("t").info("real", **{name: "user value"})
        rec = stream.records()[0]
        assert rec[f"{name}_"] == "user value"
        assert rec["message"] == "real"

    @pytest.mark.parametrize("name", ["timestamp", "level", "logger", "agentuitySessionId"])
    def test_schema_names_cannot_be_overwritten(self, stream: JsonLines, name: str) -> None:
        """A field named like a schema key is kept as name_; the schema value stays ours."""
        with al.session() as s:
            al.get_logger("t").info("m", **{name: "forged"})
        rec = stream.records()[0]
        assert rec[f"{name}_"] == "forged"
        assert rec[name] != "forged"
        assert rec["agentuitySessionId"] == s.id

    def test_stdlib_extra_with_schema_names_is_renamed(self, stream: JsonLines) -> None:
        """A third-party extra={"level": ...} cannot replace our level."""
        logging.getLogger("lib").warning("w", extra={"level": "fake", "timestamp": 0})
        rec = stream.records()[0]
        assert rec["level"] == "warning"
        assert rec["level_"] == "fake"
        assert rec["timestamp_"] == 0

    def test_a_renamed_field_does_not_overwrite_a_field_of_the_same_new_name(self, stream: JsonLines) -> None:
        """message= and message_= in one call keep both values."""
        al.get_logger("t").info("m", message="a", message_="b")
        rec = stream.records()[0]
        assert {rec["message__"], rec["message_"]} == {"a", "b"}

    def test_non_string_field_keys_in_nested_dicts(self, stream: JsonLines) -> None:
        """Nested dicts with non-string keys still render."""
        al.get_logger("t").info("m", counts={1: "a", (2, 3): "b"})
        rec = stream.records()[0]
        assert rec["counts"]["1"] == "a"


class TestProperties:
    @given(st.dictionaries(st.text(max_size=12), st.integers(), max_size=8))
    def test_renaming_never_loses_a_field_and_never_clashes(self, fields: dict[str, int]) -> None:
        """normalize_fields keeps every value and no resulting name is one the schema owns."""
        from agentuity_logging._records import CLASHING_NAMES, normalize_fields

        out = normalize_fields(fields)
        assert sorted(out.values()) == sorted(fields.values())
        assert not (set(out) & CLASHING_NAMES)

    @given(st.text(max_size=200), st.text(max_size=50))
    def test_console_lines_never_contain_control_characters(self, message: str, value: str) -> None:
        """Whatever the message and field hold, a console record is one line without raw controls."""
        from agentuity_logging.stdlib import ConsoleFormatter

        fmt = ConsoleFormatter(colors=False)
        line = fmt.format_event(
            {"timestamp": "t", "level": "info", "logger": "l", "message": message, "v": value}
        )
        assert "\n" not in line
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in line)
