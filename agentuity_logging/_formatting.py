"""Formatters (JSON for machines, console for people) and the handler base shared by every output.

Both formatters render from the one schema dict (:mod:`agentuity_logging._records`), so a stdlib record
and a structlog event come out the same. Each has ``format(record)`` for the stdlib and
``format_event(event)`` for events that never were a ``LogRecord`` (the direct structlog path).
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any, ClassVar, Final

import orjson
from pythonjsonlogger.orjson import OrjsonFormatter

from agentuity_logging._internal import INTERNAL_LOGGER_NAME, report_once
from agentuity_logging._json import OPTIONS as _OPTIONS
from agentuity_logging._json import dumps, make_default, safe_default
from agentuity_logging._records import (
    _SKIP,
    EXCEPTION_KEY,
    SCHEMA_KEYS,
    SESSION_KEY,
    SPAN_KEY,
    STACK_KEY,
    THREAD_KEY,
    event_from_record,
)

_dumps: Final = orjson.dumps

__all__ = ["ConsoleFormatter", "EventHandler", "JsonFormatter", "StreamOutput", "escape_control"]


def with_service(event: dict[str, Any], service: str | None) -> dict[str, Any]:
    """Return ``event`` with ``service`` placed after the IDs, unless a field already names one."""
    if service is None or "service" in event:
        return event
    out: dict[str, Any] = {}
    placed = False
    for key, value in event.items():
        if not placed and key not in _HEAD:
            out["service"] = service
            placed = True
        out[key] = value
    if not placed:
        out["service"] = service
    return out


_HEAD: Final = frozenset({"timestamp", "level", "logger", "message", SESSION_KEY, THREAD_KEY, SPAN_KEY})


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line in the package's schema; python-json-logger's options still apply.

    Honours ``rename_fields``, ``static_fields``, ``defaults``, ``reserved_attrs``, ``json_default``,
    ``prefix`` and a ``fmt`` naming extra record attributes. ``service`` adds a ``service`` key (a
    ``service`` field on the record wins). Usable from ``dictConfig`` with
    ``"()": "agentuity_logging.stdlib.JsonFormatter"``. Formatting never raises: a value JSON cannot hold is
    rendered as text and the rest of the record stays intact.
    """

    def __init__(
        self,
        *args: Any,
        service: str | None = None,
        json_default: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, json_default=json_default, **kwargs)
        self._service = service
        # python-json-logger's default fmt asks for "message", which our schema always has.
        self._extra_required = tuple(f for f in self._required_fields if f not in SCHEMA_KEYS)
        custom_reserved = kwargs.get("reserved_attrs") is not None
        self._skip: frozenset[str] = (
            frozenset(self._skip_fields) | _SKIP if custom_reserved or self._extra_required else _SKIP
        )
        self._plain = not (
            self.rename_fields
            or self.static_fields
            or self.defaults
            or self._extra_required
            or self.rename_fields_keep_missing
            or self.timestamp
            or self.prefix
        )
        self._default = make_default(json_default)
        self._fast = self._plain and service is None

    @property
    def service(self) -> str | None:
        """The ``service`` key added to every line (``None``: none)."""
        return self._service

    @service.setter
    def service(self, value: str | None) -> None:
        self._service = value
        self._fast = self._plain and value is None

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON line."""
        try:
            event = event_from_record(record, self._skip)
            if self._fast or (self._plain and "service" in event):
                # The hot path: one bare orjson call (no ``default=``, no options: each costs ~10% of
                # the call). A value orjson cannot hold, or a non-string key, raises and falls through
                # to format_event, which renders it safely.
                try:
                    return _dumps(event).decode()
                except Exception:  # noqa: S110 - format_event below renders it safely
                    pass
            if self._extra_required:
                event = dict(event)
                for name in self._extra_required:
                    if name not in event:
                        event[name] = record.__dict__.get(name)
            return self.format_event(event)
        except Exception as exc:
            return self._fallback(exc, getattr(record, "msg", None))

    def format_bytes(self, record: logging.LogRecord) -> bytes:
        """:meth:`format` as UTF-8 bytes, for binary streams (no decode on the hot path)."""
        try:
            event = event_from_record(record, self._skip)
            if self._fast or (self._plain and "service" in event):
                try:
                    return _dumps(event)
                except Exception:  # noqa: S110 - format() below renders it safely
                    pass
        except Exception:  # noqa: S110 - format() reports it and renders a fallback line
            pass
        return self.format(record).encode()

    def format_event_bytes(self, event: Mapping[str, Any]) -> bytes:
        """:meth:`format_event` as UTF-8 bytes, for binary streams."""
        if self._plain and (self.service is None or "service" in event):
            try:
                return _dumps(event)  # the hot case inline, as in format_event()
            except Exception:  # noqa: S110 - rendered below
                pass
        data = self._event_json_with_default(event)
        return data if data is not None else self._careful_event(event).encode()

    def format_event(self, event: Mapping[str, Any]) -> str:
        """Render a schema dict (from structlog or a record) as one JSON line."""
        if self._plain and (self.service is None or "service" in event):
            # The bare orjson call first, inline (the structlog path's hot case: a call is ~3% of
            # it); ``default=`` only renders what it refuses, so the two calls give the same line.
            try:
                return _dumps(event).decode()
            except Exception:  # noqa: S110 - rendered below
                pass
        data = self._event_json_with_default(event)
        return data.decode() if data is not None else self._careful_event(event)

    def _event_json_with_default(self, event: Mapping[str, Any]) -> bytes | None:
        """orjson with our ``default=`` when no option of ours applies, else ``None`` (a refusal too)."""
        if self._plain and (self.service is None or "service" in event):
            try:
                return orjson.dumps(event, default=self._default, option=_OPTIONS)
            except Exception:  # noqa: S110 - the careful path renders it
                pass
        return None

    def _careful_event(self, event: Mapping[str, Any]) -> str:
        """The line with the service, python-json-logger's options and any value made safe."""
        try:
            ev = event
            if self.service is not None and "service" not in ev:
                ev = with_service(dict(ev), self.service)
            if not self._plain:
                ev = self._apply_options(ev)
            return self.prefix + dumps(ev, self.json_default).decode("utf-8")
        except Exception as exc:
            return self._fallback(exc, event.get("message"))

    def _apply_options(self, event: Mapping[str, Any]) -> dict[str, Any]:
        # python-json-logger's order: defaults first (overridable), then the record, then static fields.
        rename = self.rename_fields.get
        out: dict[str, Any] = {rename(k, k): v for k, v in self.defaults.items()}
        for key, value in event.items():
            out[rename(key, key)] = value
        for key, value in self.static_fields.items():
            out[rename(key, key)] = value
        if self.rename_fields_keep_missing:
            for name in self.rename_fields.values():
                out.setdefault(name, None)
        return out

    def _fallback(self, exc: Exception, msg: object) -> str:
        report_once("json-format", "JsonFormatter could not render a record: %r", exc)
        return dumps({"level": "error", "message": safe_default(msg), "formatError": repr(exc)}).decode()


# --- console ----------------------------------------------------------------------------------------

# Control characters (C0, DEL, C1) and Unicode line/paragraph separators are escaped, so a message cannot
# start a fake log line or move the cursor.
_CONTROL_TABLE: Final[dict[int, str]] = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))},
    0x09: "\\t",
    0x0A: "\\n",
    0x0D: "\\r",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape_control(text: str) -> str:
    """Return ``text`` with control characters written as visible escapes."""
    return text.translate(_CONTROL_TABLE)


_LEVEL_STYLE: Final = {
    "debug": "\x1b[2m",
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31m",
    "critical": "\x1b[1;31m",
}
_DIM: Final = "\x1b[2m"
_BOLD: Final = "\x1b[1m"
_CYAN: Final = "\x1b[36m"
_RESET: Final = "\x1b[0m"


def colors_wanted(stream: IO[Any] | None) -> bool:
    """Decide on colours like other tools do: ``NO_COLOR`` off, ``FORCE_COLOR`` on, else a TTY."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return bool(stream is not None and stream.isatty())
    except Exception:
        return False


class ConsoleFormatter(logging.Formatter):
    """One readable line per record: time, level, logger, message, ``key=value`` fields, the IDs.

    ``colors=None`` colours only when stderr is a terminal. Control characters in messages and values
    are escaped so no message can forge a log line; a traceback follows, indented.
    """

    def __init__(
        self, *, colors: bool | None = None, service: str | None = None, show_ids: bool = True
    ) -> None:
        super().__init__()
        self.colors = colors_wanted(sys.stderr) if colors is None else colors
        self.service = service
        self.show_ids = show_ids

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a line for people."""
        try:
            return self.format_event(event_from_record(record))
        except Exception as exc:
            report_once("console-format", "ConsoleFormatter could not render a record: %r", exc)
            return escape_control(str(getattr(record, "msg", "")))

    def format_event(self, event: Mapping[str, Any]) -> str:
        """Render a schema dict as a line for people."""
        c = self.colors
        ts = str(event.get("timestamp", ""))
        time_part = ts[11:23] if len(ts) >= 23 else ts
        level = str(event.get("level", ""))
        level_text = f"{level.upper():<8}"
        if c:
            level_text = f"{_LEVEL_STYLE.get(level, '')}{level_text}{_RESET}"
            time_part = f"{_DIM}{time_part}{_RESET}"
        logger = escape_control(str(event.get("logger", "")))
        message = escape_control(str(event.get("message", "")))
        if c:
            logger = f"{_CYAN}{logger}{_RESET}"
            message = f"{_BOLD}{message}{_RESET}"
        parts = [f"{time_part} {level_text} {logger}: {message}"]
        for key, value in event.items():
            if key in _HEAD or key in (EXCEPTION_KEY, STACK_KEY):
                continue
            parts.append(self._pair(key, value))
        if self.service is not None and "service" not in event:
            parts.append(self._pair("service", self.service))
        if self.show_ids:
            for key, short in (
                (SPAN_KEY, "span"),
                (SESSION_KEY, "session"),
                (THREAD_KEY, "thread"),
            ):
                if key in event:
                    parts.append(self._pair(short, event[key]))
        line = " ".join(parts)
        exc = event.get(EXCEPTION_KEY)
        if isinstance(exc, Mapping):
            text = exc.get("traceback") or f"{exc.get('type')}: {exc.get('message')}"
            line += "\n" + _indent(str(text))
        stack = event.get(STACK_KEY)
        if stack:
            line += "\n" + _indent(str(stack))
        return line

    def _pair(self, key: str, value: Any) -> str:
        text = value if isinstance(value, str) else dumps({"v": value}).decode()[5:-1]
        rendered = escape_control(text)
        if isinstance(value, str) and (not rendered or " " in rendered or "=" in rendered):
            rendered = '"' + rendered.replace('"', '\\"') + '"'
        key = escape_control(key)
        return f"{_DIM}{key}={_RESET}{rendered}" if self.colors else f"{key}={rendered}"


def _indent(text: str) -> str:
    return "\n".join("    " + escape_control(line) for line in text.rstrip("\n").split("\n"))


# --- handlers -----------------------------------------------------------------------------------------


class EventHandler(logging.Handler):
    """A handler that also takes schema dicts directly (the structlog path), not only ``LogRecord``\\s.

    Every output of the package (stream, shippers, log store, test capture) derives from it, so stdlib
    records and structlog events reach the same places. Records from the package's own diagnostics
    logger are ignored, so a failing output can never feed its own failure back into itself.
    """

    ignored_prefixes: ClassVar[tuple[str, ...]] = (INTERNAL_LOGGER_NAME,)

    def handle_event(self, event: Mapping[str, Any], levelno: int) -> None:
        """Take one event at ``levelno`` that bypassed ``logging`` (never raises)."""
        if levelno < self.level:
            return
        try:
            self.emit_event(event)
        except Exception as exc:
            report_once(
                f"emit-event:{type(self).__name__}",
                "%s could not handle an event: %r",
                type(self).__name__,
                exc,
            )

    def emit_event(self, event: Mapping[str, Any]) -> None:
        """Deliver one schema dict (subclasses implement)."""
        raise NotImplementedError

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until what this output holds is delivered; ``True`` when it was within ``timeout_s``.

        Outputs with a background worker (shippers, the log store) override it; a synchronous output
        only flushes its stream. ``agentuity_logging.flush()`` calls it on every output.
        """
        self.flush()
        return True

    #: Stamps each record with the session context before the filters run; ``configure()`` sets a
    #: ``SessionContextFilter`` here on the outputs it installs (cheaper than one in ``filters``).
    stamper: logging.Filter | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        """Drop the package's own diagnostics, stamp, then apply the normal filters."""
        if record.name.startswith(self.ignored_prefixes):
            return False
        stamper = self.stamper
        if stamper is not None:
            stamper.filter(record)
        if self.filters:
            return bool(super().filter(record))
        return True


def _is_binary(stream: object) -> bool:
    """Whether ``stream`` takes bytes (a file opened ``"wb"``, ``sys.stdout.buffer``, a ``BytesIO``)."""
    if isinstance(stream, io.TextIOBase):
        return False
    if isinstance(stream, (io.RawIOBase, io.BufferedIOBase)):
        return True
    mode = getattr(stream, "mode", "")
    return isinstance(mode, str) and "b" in mode


class StreamOutput(EventHandler):
    """Writes formatted lines to a stream (stderr by default), for records and events alike.

    The stream may be text or binary: a binary one (``sys.stdout.buffer``, a file opened ``"wb"``)
    gets the JSON formatter's bytes as orjson made them, with no decoding and no text layer. Unlike
    ``logging.StreamHandler`` it survives ``dictConfig`` closing it: writing to a stream does not
    depend on the handler being open.
    """

    terminator = "\n"

    def __init__(self, stream: IO[Any] | None = None, formatter: logging.Formatter | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        if formatter is not None:
            self.setFormatter(formatter)

    @property
    def stream(self) -> IO[Any]:
        """The stream written to; assigning one also notes whether it takes bytes."""
        return self._stream

    @stream.setter
    def stream(self, stream: IO[Any]) -> None:
        self._stream = stream
        self._binary = _is_binary(stream)

    def emit(self, record: logging.LogRecord) -> None:
        """Format and write a stdlib record."""
        try:
            if self._binary:
                render = getattr(self.formatter, "format_bytes", None)
                self._write(render(record) if render is not None else self.format(record).encode())
            else:
                self._write(self.format(record))
        except RecursionError:  # pragma: no cover - same as the stdlib
            raise
        except Exception:
            self.handleError(record)

    def emit_event(self, event: Mapping[str, Any]) -> None:
        """Format and write a schema dict (structlog path)."""
        fmt = self.formatter
        if self._binary:
            render_bytes = getattr(fmt, "format_event_bytes", None)
            if render_bytes is not None:
                self._write(render_bytes(event))
                return
        render = getattr(fmt, "format_event", None)
        line = render(event) if render is not None else dumps(event).decode()
        if self._binary:
            self._write(line.encode())
            return
        # _write() inline: the structlog path's default case, where a call is ~2% of the log call.
        stream = self._stream
        with self.lock:  # type: ignore[union-attr]
            stream.write(line + self.terminator)
        flush = getattr(stream, "flush", None)
        if flush is not None:
            flush()

    def _write(self, line: str | bytes) -> None:
        """Write one line and its terminator (a text line to a text stream, bytes to a binary one)."""
        data = line + b"\n" if isinstance(line, bytes) else line + self.terminator
        with self.lock:  # type: ignore[union-attr]
            self._stream.write(data)
        # Flushing outside the lock keeps a slow terminal from holding other threads' records.
        flush = getattr(self._stream, "flush", None)
        if flush is not None:
            flush()

    def __repr__(self) -> str:
        name = getattr(self.stream, "name", type(self.stream).__name__)
        return f"<StreamOutput {name} ({logging.getLevelName(self.level)})>"
