"""Label-set parsing and a LogQL subset for the fake Loki.

Written from the Prometheus/LogQL grammar, not from our encoder, so that it checks the
encoder: label values are Go string literals (``"…"`` with escapes, or raw `` `…` ``).

Supported queries: ``{name="v", name=~"re", name!="v", name!~"re"}`` followed by any of
``|= "text"``, ``!= "text"``, ``|~ "re"``, ``!~ "re"``, ``| json`` and label filters
``| name="v"`` (also ``!=``, ``=~``, ``!~``) on stream labels, structured metadata and
``json``-parsed fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "LogQLError",
    "Query",
    "parse_labels",
    "parse_query",
]

LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}


class LogQLError(ValueError):
    """A label set or query that Loki would refuse to parse."""


def _unquote(text: str, pos: int) -> tuple[str, int]:
    """Read a Go string literal starting at ``text[pos]``; returns (value, position after)."""
    quote = text[pos]
    if quote == "`":
        end = text.find("`", pos + 1)
        if end < 0:
            raise LogQLError(f"{pos + 1}: unterminated raw string")
        return text[pos + 1 : end], end + 1
    if quote not in "\"'":
        raise LogQLError(f"{pos + 1}: expected a quoted string")
    out = bytearray()
    i = pos + 1
    while True:
        if i >= len(text) or text[i] == "\n":
            raise LogQLError(f"{pos + 1}: unterminated quoted string")
        char = text[i]
        if char == quote:
            break
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        if i + 1 >= len(text):
            raise LogQLError(f"{i + 1}: unterminated quoted string")
        kind = text[i + 1]
        if kind in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[kind].encode()
            i += 2
        elif kind == "x":
            digits = text[i + 2 : i + 4]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
                raise LogQLError(f"{i + 1}: invalid escape sequence")
            out.append(int(digits, 16))
            i += 4
        elif kind in "01234567":
            digits = text[i + 1 : i + 4]
            if not re.fullmatch(r"[0-7]{3}", digits) or int(digits, 8) > 255:
                raise LogQLError(f"{i + 1}: invalid escape sequence")
            out.append(int(digits, 8))
            i += 4
        elif kind in "uU":
            width = 4 if kind == "u" else 8
            digits = text[i + 2 : i + 2 + width]
            if not re.fullmatch(rf"[0-9a-fA-F]{{{width}}}", digits):
                raise LogQLError(f"{i + 1}: invalid escape sequence")
            out += chr(int(digits, 16)).encode("utf-8", "surrogatepass")
            i += 2 + width
        else:
            raise LogQLError(f"{i + 1}: unknown escape sequence \\{kind}")
    try:
        return out.decode("utf-8"), i + 1
    except UnicodeDecodeError as exc:
        raise LogQLError(f"{pos + 1}: invalid UTF-8 in label value") from exc


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


@dataclass(frozen=True)
class Matcher:
    """One ``name op "value"`` matcher (stream selector or label filter)."""

    name: str
    op: str
    value: str

    def matches(self, value: str) -> bool:
        """Prometheus semantics: a missing label is the empty string; regexes are anchored."""
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        found = re.fullmatch(self.value, value, re.DOTALL) is not None
        return found if self.op == "=~" else not found


def _matchers(text: str, pos: int, *, push: bool) -> tuple[list[Matcher], int]:
    """Parse ``{…}`` at ``pos``; ``push`` allows only ``=`` (a push's label set)."""
    pos = _skip_space(text, pos)
    if pos >= len(text) or text[pos] != "{":
        raise LogQLError(f"{pos + 1}: expected '{{'")
    pos += 1
    result: list[Matcher] = []
    while True:
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == "}":
            return result, pos + 1
        name_match = LABEL_NAME.match(text, pos)
        if not name_match:
            raise LogQLError(f"{pos + 1}: unexpected character inside braces")
        name = name_match.group()
        pos = _skip_space(text, name_match.end())
        op = next((o for o in ("=~", "!~", "!=", "=") if text.startswith(o, pos)), None)
        if op is None or (push and op != "="):
            raise LogQLError(f"{pos + 1}: unexpected operator")
        pos = _skip_space(text, pos + len(op))
        if pos >= len(text):
            raise LogQLError(f"{pos + 1}: unexpected end of input")
        value, pos = _unquote(text, pos)
        if op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise LogQLError(f"invalid regexp {value!r}: {exc}") from exc
        result.append(Matcher(name, op, value))
        pos = _skip_space(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "}":
            return result, pos + 1
        else:
            raise LogQLError(f"{pos + 1}: expected ',' or '}}'")


def parse_labels(text: str) -> list[tuple[str, str]]:
    """Parse a push's stream labels ``{a="x", b="y"}`` into (name, value) pairs, in order."""
    matchers, pos = _matchers(text, 0, push=True)
    if _skip_space(text, pos) != len(text):
        raise LogQLError(f"{pos + 1}: unexpected text after the label set")
    return [(m.name, m.value) for m in matchers]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: a line filter, ``json``, or a label filter."""

    kind: str  # "line" | "json" | "label"
    op: str = ""
    value: str = ""
    name: str = ""


@dataclass
class Query:
    """A parsed query: stream matchers and pipeline stages."""

    matchers: list[Matcher]
    stages: list[Stage] = field(default_factory=list)

    def selects(self, labels: dict[str, str]) -> bool:
        """Whether a stream's labels satisfy the selector."""
        return all(m.matches(labels.get(m.name, "")) for m in self.matchers)

    def run(self, line: str, stream: dict[str, str], metadata: dict[str, str]) -> dict[str, str] | None:
        """Run the pipeline on one entry; returns the parsed labels, or None if filtered out."""
        known = {**stream, **metadata}
        parsed: dict[str, str] = {}
        for stage in self.stages:
            if stage.kind == "line":
                if stage.op in ("|=", "!="):
                    found = stage.value in line
                else:
                    found = re.search(stage.value, line) is not None
                if found != (stage.op in ("|=", "|~")):
                    return None
            elif stage.kind == "json":
                parsed.update(_json_labels(line, set(known) | set(parsed)))
            else:
                value = {**known, **parsed}.get(stage.name, "")
                if not Matcher(stage.name, stage.op, stage.value).matches(value):
                    return None
        return parsed


def _json_labels(line: str, existing: set[str]) -> dict[str, str]:
    """Loki's ``| json``: flatten objects with ``_``, skip arrays, suffix clashes ``_extracted``."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return {"__error__": "JSONParserErr"}
    if not isinstance(data, dict):
        return {"__error__": "JSONParserErr"}
    out: dict[str, str] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = re.sub(r"[^a-zA-Z0-9_]", "_", prefix + key)
            if isinstance(value, dict):
                walk(value, name + "_")
                continue
            if isinstance(value, list):
                continue
            if name in existing:
                name += "_extracted"
            if value is None:
                out[name] = ""
            elif isinstance(value, str):
                out[name] = value
            else:
                out[name] = orjson.dumps(value).decode()

    walk(data, "")
    return out


def parse_query(text: str) -> Query:
    """Parse the supported LogQL subset; raises ``LogQLError`` like Loki's 400s."""
    matchers, pos = _matchers(text, 0, push=False)
    if not matchers:
        raise LogQLError("parse error: a stream selector needs at least one matcher")
    if all(m.matches("") for m in matchers):
        raise LogQLError(
            "queries require at least one regexp or equality matcher that does not have an "
            'empty-compatible value. For instance, app=~".*" does not meet this requirement, '
            'but app=~".+" will'
        )
    stages: list[Stage] = []
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text):
            return Query(matchers, stages)
        op = next((o for o in ("|=", "!=", "|~", "!~") if text.startswith(o, pos)), None)
        if op is not None:
            pos = _skip_space(text, pos + 2)
            if pos >= len(text):
                raise LogQLError(f"{pos + 1}: unexpected end of input")
            value, pos = _unquote(text, pos)
            stages.append(Stage("line", op, value))
            continue
        if text[pos] != "|":
            raise LogQLError(f"parse error at position {pos + 1}: unexpected {text[pos]!r}")
        pos = _skip_space(text, pos + 1)
        name_match = LABEL_NAME.match(text, pos)
        if not name_match:
            raise LogQLError(f"parse error at position {pos + 1}: expected a stage")
        name = name_match.group()
        pos = _skip_space(text, name_match.end())
        label_op = next((o for o in ("=~", "!~", "!=", "==", "=") if text.startswith(o, pos)), None)
        if name == "json" and label_op is None:
            stages.append(Stage("json"))
            continue
        if label_op is None:
            raise LogQLError(f"parse error: the fake Loki does not support the stage {name!r}")
        pos = _skip_space(text, pos + len(label_op))
        if pos >= len(text):
            raise LogQLError(f"{pos + 1}: unexpected end of input")
        value, pos = _unquote(text, pos)
        stages.append(Stage("label", "=" if label_op == "==" else label_op, value, name))
