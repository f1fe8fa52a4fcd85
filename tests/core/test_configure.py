"""configure(): one call, idempotent, environment defaults, clear errors."""

from __future__ import annotations

import io
import logging

import pytest

import agentuity_logging as al
from agentuity_logging import ConfigurationError
from agentuity_logging.stdlib import StreamOutput

from .helpers import JsonLines


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, StreamOutput)]


class TestIdempotence:
    def test_second_call_reconfigures_without_duplicating(self) -> None:
        """Calling configure() twice leaves one output, writing to the latest stream."""
        first, second = JsonLines(), JsonLines()
        al.configure(format="json", stream=first)
        al.configure(format="json", stream=second)
        assert len(_ours()) == 1
        logging.getLogger("x").warning("once")
        assert first.records() == []
        assert len(second.records()) == 1

    def test_existing_handlers_are_left_alone(self) -> None:
        """A handler installed by someone else stays, unless replace=True."""
        theirs = logging.NullHandler()
        logging.getLogger().addHandler(theirs)
        al.configure(format="json", stream=JsonLines())
        assert theirs in logging.getLogger().handlers
        al.configure(format="json", stream=JsonLines(), replace=True)
        assert theirs not in logging.getLogger().handlers
        assert len(_ours()) == 1


class TestSettings:
    def test_level_defaults_to_info(self) -> None:
        """Without level or environment, the root level is INFO."""
        al.configure(stream=JsonLines())
        assert logging.getLogger().level == logging.INFO

    def test_environment_sets_level_format_and_service(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """AGENTUITY_LOG_LEVEL, AGENTUITY_LOG_FORMAT and AGENTUITY_SERVICE are the defaults."""
        monkeypatch.setenv("AGENTUITY_LOG_LEVEL", "debug")
        monkeypatch.setenv("AGENTUITY_LOG_FORMAT", "json")
        monkeypatch.setenv("AGENTUITY_SERVICE", "billing")
        out = JsonLines()
        al.configure(stream=out)
        logging.getLogger("x").debug("d")
        rec = out.records()[0]
        assert rec["level"] == "debug"
        assert rec["service"] == "billing"

    def test_auto_format_is_json_when_not_a_terminal(self) -> None:
        """format="auto" writes JSON to a non-TTY stream."""
        out = JsonLines()
        al.configure(format="auto", stream=out)
        logging.getLogger("x").warning("w")
        assert out.records()[0]["message"] == "w"

    def test_console_format_writes_readable_lines(self) -> None:
        """format="console" writes the console rendering."""
        out = JsonLines()
        al.configure(format="console", stream=out)
        logging.getLogger("x").warning("readable")
        assert "WARNING" in out.getvalue()
        assert not out.getvalue().startswith("{")

    @pytest.mark.parametrize("fmt", ["json", "console"])
    def test_a_binary_stream_gets_the_same_lines_as_bytes(self, fmt: str) -> None:
        """stream= may take bytes (sys.stdout.buffer, a file opened "wb"): stdlib and structlog alike."""
        import json

        import structlog

        text, binary = JsonLines(), io.BytesIO()
        for stream in (text, binary):
            al.configure(format=fmt, stream=stream)
            with al.session(session_id="sess_" + "a" * 32, thread_id="thrd_" + "b" * 32):
                logging.getLogger("x").warning("from stdlib \u00e9", extra={"n": 1})
                structlog.get_logger("y").warning("from structlog", n=2)
        text_lines = text.getvalue().splitlines()
        binary_lines = binary.getvalue().decode().splitlines()
        assert len(binary_lines) == len(text_lines) == 2
        if fmt == "json":
            for a, b in zip(text_lines, binary_lines, strict=True):
                ours, theirs = json.loads(a), json.loads(b)
                ours.pop("timestamp"), theirs.pop("timestamp")
                assert ours == theirs
                assert theirs["agentuitySessionId"] == "sess_" + "a" * 32
        else:
            assert [line[13:] for line in binary_lines] == [line[13:] for line in text_lines]

    def test_a_stream_assigned_later_is_seen_as_binary_or_text(self) -> None:
        output = StreamOutput(JsonLines())
        output.stream = io.BytesIO()
        output.handle(logging.LogRecord("x", logging.INFO, "x.py", 1, "as bytes", None, None))
        assert b"as bytes" in output.stream.getvalue()

    @pytest.mark.parametrize(
        ("env", "value", "match"),
        [
            ("AGENTUITY_LOG_LEVEL", "loud", "unknown log level 'loud'"),
            ("AGENTUITY_LOG_FORMAT", "xml", "expected one of json, console, auto"),
        ],
    )
    def test_bad_environment_values_fail_at_configure_time(
        self, monkeypatch: pytest.MonkeyPatch, env: str, value: str, match: str
    ) -> None:
        """A bad environment value raises ConfigurationError naming the variable."""
        monkeypatch.setenv(env, value)
        with pytest.raises(ConfigurationError, match=match) as info:
            al.configure(stream=JsonLines())
        assert env in str(info.value)

    def test_bad_arguments_fail_clearly(self) -> None:
        """A bad level or format argument raises ConfigurationError (also a ValueError)."""
        with pytest.raises(ConfigurationError, match="unknown log level"):
            al.configure(level="chatty", stream=JsonLines())
        with pytest.raises(ValueError, match="format"):
            al.configure(format="yaml", stream=JsonLines())  # type: ignore[arg-type]
