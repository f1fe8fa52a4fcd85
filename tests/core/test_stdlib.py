"""stdlib integration: stamping from any logger, the JSON and console formatters, dictConfig."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import logging.handlers
import queue
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import agentuity_logging as al
from agentuity_logging._config import outputs
from agentuity_logging.stdlib import ConsoleFormatter, JsonFormatter, SessionContextFilter

from .helpers import JsonLines


def _logger_with(formatter: logging.Formatter, *, stamp: bool = True) -> tuple[logging.Logger, io.StringIO]:
    """A private logger writing to its own StringIO (python-json-logger's test style)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    if stamp:
        handler.addFilter(SessionContextFilter())
    logger = logging.getLogger(f"test.{id(out)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, out


def _json(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


class TestStamping:
    def test_third_party_loggers_carry_the_ids_after_configure(self) -> None:
        """Once configure() ran, a plain logging.getLogger() record carries both IDs."""
        out = JsonLines()
        al.configure(format="json", stream=out)
        with al.session() as s:
            logging.getLogger("somelib.http").warning("retrying")
        (rec,) = out.records()
        assert rec["agentuitySessionId"] == s.id
        assert rec["agentuityThreadId"] == s.thread.id

    def test_stamp_all_records_reaches_handlers_configure_did_not_install(self) -> None:
        """With stamp_all_records=True, a handler of the user's on another logger sees the IDs."""
        al.configure(format="json", stream=JsonLines(), stamp_all_records=True)
        seen: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = seen.append  # type: ignore[method-assign]
        own = logging.getLogger("isolated")
        own.addHandler(handler)
        own.propagate = False
        try:
            with al.session() as s, al.bound(user="u"):
                own.info("hi")
        finally:
            own.removeHandler(handler)
            own.propagate = True
        assert seen[0].agentuitySessionId == s.id  # type: ignore[attr-defined]
        assert seen[0].agentuityThreadId == s.thread.id  # type: ignore[attr-defined]
        assert seen[0].user == "u"  # type: ignore[attr-defined]

    def test_a_users_filter_on_our_output_sees_the_ids(self) -> None:
        """configure() stamps before the output's own filters run, so a filter can select by session."""
        out = JsonLines()
        al.configure(format="json", stream=out)
        (output,) = outputs()
        wanted: list[str] = []

        def only_wanted(record: logging.LogRecord) -> bool:
            return getattr(record, "agentuitySessionId", None) in wanted

        output.addFilter(only_wanted)
        with al.session() as kept:
            wanted.append(kept.id)
            logging.getLogger("x").warning("kept")
        with al.session():
            logging.getLogger("x").warning("dropped")
        assert [r["message"] for r in out.records()] == ["kept"]

    def test_default_configure_leaves_the_record_factory_alone(self) -> None:
        """By default stamping is a filter on our outputs: the global record factory is untouched."""
        factory = logging.getLogRecordFactory()
        al.configure(format="json", stream=JsonLines())
        assert logging.getLogRecordFactory() is factory

    def test_records_reaching_our_output_have_the_attributes(self) -> None:
        """The LogRecord itself carries agentuitySessionId/agentuityThreadId attributes."""
        al.configure(format="json", stream=JsonLines())
        seen: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = seen.append  # type: ignore[method-assign]
        logging.getLogger().addHandler(handler)
        with al.session() as s, al.bound(user="u"):
            logging.getLogger("x").info("hi")
        assert seen[0].agentuitySessionId == s.id  # type: ignore[attr-defined]
        assert seen[0].agentuityThreadId == s.thread.id  # type: ignore[attr-defined]
        assert seen[0].user == "u"  # type: ignore[attr-defined]

    def test_filter_alone_stamps_without_configure(self) -> None:
        """SessionContextFilter on a handler is enough, without configure()."""
        logger, out = _logger_with(JsonFormatter())
        with al.session() as s:
            logger.info("x")
        assert _json(out)[0]["agentuitySessionId"] == s.id

    @pytest.mark.skipif(
        sys.implementation.name != "cpython" or sys.version_info < (3, 11),
        reason="CPython's shared attribute layout",
    )
    def test_stamped_attributes_keep_the_records_compact_layout(self) -> None:
        """Importing the package reserves its record attributes in LogRecord's shared layout.

        A name outside that layout turns the record's attributes into a private dict when it is set
        (the control below); the stamped names must not (see ``_records._reserve_record_slots``).
        """
        probe = textwrap.dedent(
            """
            import json, logging, sys
            import agentuity_logging

            # Start-up logging, before any session: it uses up the room left in the layout.
            formatter = logging.Formatter("%(asctime)s %(message)s")
            for _ in range(20):
                formatter.format(logging.LogRecord("x", logging.INFO, "x.py", 1, "m", None, None))

            def size(name):
                record = logging.LogRecord("x", logging.INFO, "x.py", 1, "m", None, None)
                setattr(record, name, "v")
                return sys.getsizeof(record.__dict__)

            names = ["agentuitySessionId", "agentuityThreadId", "spanId", "_agentuity_event"]
            sizes = {n: size(n) for n in names}
            sizes["control"] = max(size("notReserved1"), size("notReserved2"))
            print(json.dumps(sizes))
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
        )
        sizes = json.loads(out.stdout)
        control = sizes.pop("control")
        assert all(size < control for size in sizes.values()), sizes

    def test_ids_are_absent_outside_a_session(self) -> None:
        """Outside a session the ID keys are left out, not null."""
        logger, out = _logger_with(JsonFormatter())
        logger.info("x")
        assert "agentuitySessionId" not in _json(out)[0]

    def test_a_buffered_record_keeps_the_ids_of_the_session_that_created_it(self) -> None:
        """A MemoryHandler flushed inside a later session does not relabel earlier records."""
        out = io.StringIO()
        target = logging.StreamHandler(out)
        target.setFormatter(JsonFormatter())
        target.addFilter(SessionContextFilter())
        buffer = logging.handlers.MemoryHandler(capacity=100, target=target)
        buffer.addFilter(SessionContextFilter())
        logger = logging.getLogger("test.buffered")
        logger.handlers[:] = [buffer]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        try:
            with al.session() as first:
                logger.info("in the first request")
            with al.session():
                buffer.flush()
        finally:
            logger.handlers.clear()
            buffer.close()
        assert _json(out)[0]["agentuitySessionId"] == first.id

    def test_stamping_survives_a_queue_handler_hop(self) -> None:
        """Stamped on the logging thread, the IDs survive QueueHandler/QueueListener."""
        q: queue.Queue[logging.LogRecord] = queue.Queue()
        out = io.StringIO()
        target = logging.StreamHandler(out)
        target.setFormatter(JsonFormatter())
        listener = logging.handlers.QueueListener(q, target)
        qh = logging.handlers.QueueHandler(q)
        qh.addFilter(SessionContextFilter())
        logger = logging.getLogger("test.queue")
        logger.handlers[:] = [qh]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        listener.start()
        try:
            with al.session() as s:
                logger.info("queued")
        finally:
            listener.stop()
            logger.handlers.clear()
        assert _json(out)[0]["agentuitySessionId"] == s.id


class TestJsonFormatter:
    def test_schema_order_and_formats(self) -> None:
        """Keys come in the documented order with RFC 3339 UTC microsecond timestamps."""
        logger, out = _logger_with(JsonFormatter())
        with al.session(), al.bound(user="u1"):
            logger.info("hello", extra={"step": 2})
        rec = _json(out)[0]
        assert list(rec)[:6] == [
            "timestamp",
            "level",
            "logger",
            "message",
            "agentuitySessionId",
            "agentuityThreadId",
        ]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rec["timestamp"])
        assert rec["level"] == "info"
        assert rec["user"] == "u1"
        assert rec["step"] == 2

    def test_exception_is_structured(self) -> None:
        """An exception becomes {type, message, frames, traceback}."""
        logger, out = _logger_with(JsonFormatter())
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("oops")
        exc = _json(out)[0]["exception"]
        assert exc["type"] == "ValueError"
        assert exc["message"] == "bad"
        assert exc["frames"][0]["function"] == "test_exception_is_structured"
        assert "Traceback" in exc["traceback"]

    def test_python_json_logger_options_are_honoured(self) -> None:
        """rename_fields, static_fields, defaults and json_default work as in python-json-logger."""

        class Money:
            pass

        fmt = JsonFormatter(
            rename_fields={"level": "severity"},
            static_fields={"env": "prod"},
            defaults={"region": "eu", "env": "dev"},
            json_default=lambda o: "money" if isinstance(o, Money) else str(o),
        )
        logger, out = _logger_with(fmt)
        logger.info("x", extra={"price": Money()})
        rec = _json(out)[0]
        assert rec["severity"] == "info"
        assert "level" not in rec
        assert rec["env"] == "prod"
        assert rec["region"] == "eu"
        assert rec["price"] == "money"

    def test_reserved_attrs_are_honoured(self) -> None:
        """reserved_attrs lists record attributes that are not fields."""
        logger, out = _logger_with(JsonFormatter(reserved_attrs=["secret_attr"]))
        logger.info("x", extra={"secret_attr": 1, "kept": 2})
        rec = _json(out)[0]
        assert "secret_attr" not in rec
        assert rec["kept"] == 2

    def test_service_is_added_and_a_field_wins(self) -> None:
        """service= adds a service key; a service field on the record takes precedence."""
        logger, out = _logger_with(JsonFormatter(service="api"))
        logger.info("a")
        logger.info("b", extra={"service": "webhook-handler"})
        first, second = _json(out)
        assert first["service"] == "api"
        assert second["service"] == "webhook-handler"

    def test_is_a_python_json_logger_formatter(self) -> None:
        """It subclasses python-json-logger's formatter, so code checking for one accepts it."""
        from pythonjsonlogger.core import BaseJsonFormatter

        assert isinstance(JsonFormatter(), BaseJsonFormatter)


class TestConsoleFormatter:
    def test_readable_line_with_fields_and_ids(self) -> None:
        """A console line has the level, logger, message, key=value fields and the IDs."""
        logger, out = _logger_with(ConsoleFormatter(colors=False))
        with al.session() as s:
            logger.warning("low balance", extra={"amount": 3, "note": "two words"})
        line = out.getvalue()
        assert "WARNING" in line
        assert "low balance" in line
        assert "amount=3" in line
        assert 'note="two words"' in line
        assert f"session={s.id}" in line

    def test_control_characters_cannot_forge_a_line(self) -> None:
        """Newlines and escape sequences in a message are escaped: one record, one line."""
        logger, out = _logger_with(ConsoleFormatter(colors=False))
        logger.info("ok\n2026-01-01 00:00:00.000 ERROR   fake: forged\x1b[2J", extra={"v": "a\rb"})
        text = out.getvalue()
        assert text.count("\n") == 1
        assert "\\n2026" in text
        assert "\\x1b" in text
        assert "\x1b" not in text
        assert "a\\rb" in text

    def test_colours_only_when_asked(self) -> None:
        """colors=True adds ANSI styles; colors=False never does."""
        logger, out = _logger_with(ConsoleFormatter(colors=True))
        logger.error("red")
        assert "\x1b[31m" in out.getvalue()
        logger2, out2 = _logger_with(ConsoleFormatter(colors=False))
        logger2.error("plain")
        assert "\x1b[" not in out2.getvalue()

    def test_traceback_is_indented_below_the_line(self) -> None:
        """An exception's traceback follows the line, indented, with messages escaped."""
        logger, out = _logger_with(ConsoleFormatter(colors=False))
        try:
            raise RuntimeError("multi\nline")
        except RuntimeError:
            logger.exception("failed")
        lines = out.getvalue().splitlines()
        assert lines[0].endswith("failed")
        assert all(line.startswith("    ") for line in lines[1:])


class TestDictConfig:
    def test_formatters_and_filter_work_from_dictconfig(self) -> None:
        """JsonFormatter and SessionContextFilter load from dictConfig's "()" key."""
        out = io.StringIO()
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "filters": {"s": {"()": "agentuity_logging.stdlib.SessionContextFilter"}},
                "formatters": {
                    "j": {"()": "agentuity_logging.stdlib.JsonFormatter", "static_fields": {"x": 1}},
                    "c": {"()": "agentuity_logging.stdlib.ConsoleFormatter", "colors": False},
                },
                "handlers": {
                    "h": {
                        "class": "logging.StreamHandler",
                        "stream": out,
                        "formatter": "j",
                        "filters": ["s"],
                    },
                },
                "loggers": {"dc": {"handlers": ["h"], "level": "INFO", "propagate": False}},
            }
        )
        try:
            with al.session() as s:
                logging.getLogger("dc").info("from dictConfig")
        finally:
            logging.getLogger("dc").handlers.clear()
        rec = _json(out)[0]
        assert rec["agentuitySessionId"] == s.id
        assert rec["x"] == 1

    def test_logging_config_returns_an_equivalent_dictconfig(self) -> None:
        """logging_config() builds a dict that dictConfig accepts and that stamps and formats JSON."""
        config = al.logging_config(level="DEBUG", format="json", service="svc", stream="ext://sys.stdout")
        assert config["root"]["level"] == "DEBUG"
        root = logging.getLogger()
        saved = list(root.handlers)
        logging.config.dictConfig(config)
        try:
            out = JsonLines()
            handler = next(h for h in root.handlers if h not in saved)
            handler.stream = out  # type: ignore[attr-defined]
            with al.session() as s:
                logging.getLogger("lc").debug("hi")
            rec = out.records()[0]
        finally:
            for h in list(root.handlers):
                if h not in saved:
                    root.removeHandler(h)
        assert rec["agentuitySessionId"] == s.id
        assert rec["service"] == "svc"
        assert rec["level"] == "debug"

    @pytest.mark.parametrize("fmt", ["json", "console"])
    def test_logging_config_formats(self, fmt: str) -> None:
        """Both formats produce a formatter entry pointing at our classes."""
        config = al.logging_config(format=fmt)  # type: ignore[arg-type]
        assert config["formatters"]["agentuity"]["()"].startswith("agentuity_logging.stdlib.")
