"""``get_logger()``: a thin logger over ``logging.Logger`` with keyword fields and ``child()``.

A call below the level costs one cached ``isEnabledFor``; an enabled call builds the record with the
stdlib's own ``makeRecord`` (so custom record factories, filters and handlers all apply) and the caller's
frame, found directly rather than by the stdlib's frame walk. ``child()`` merges fields once, at creation,
so a call costs the same on a child nested ten deep as on the root logger.
"""

from __future__ import annotations

import io
import logging
import sys
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, TypeAlias

from agentuity_logging._internal import report_once
from agentuity_logging._records import normalize_fields

__all__ = ["Logger", "get_logger"]

ExcInfo: TypeAlias = (
    bool
    | BaseException
    | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None]
    | None
)

DEBUG: Final = logging.DEBUG
INFO: Final = logging.INFO
WARNING: Final = logging.WARNING
ERROR: Final = logging.ERROR
CRITICAL: Final = logging.CRITICAL

# Keyword names that steer the call instead of becoming fields (the stdlib's own parameters).
_CONTROL: Final = frozenset({"exc_info", "stack_info", "stacklevel", "extra"})


def _exc_tuple(
    exc_info: ExcInfo,
) -> tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None] | None:
    if not exc_info:
        return None
    if isinstance(exc_info, BaseException):
        return (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple):
        return exc_info
    return sys.exc_info()


class Logger:
    """A logger that puts keyword fields on its records and makes child loggers.

    ``log.info("charged", amount=12)`` logs with the field ``amount``. A dict as the only positional
    argument after the message is taken as fields too (``log.info("msg", {"k": "v"})``), not as the
    stdlib's ``%(k)s`` mapping. ``exc_info``, ``stack_info``, ``stacklevel`` and ``extra`` keep their stdlib
    meaning. A log call never raises into the application.
    """

    __slots__ = ("_fields", "_logger", "name")

    def __init__(self, logger: logging.Logger, fields: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self.name = logger.name
        self._fields: dict[str, Any] = normalize_fields(fields) if fields else {}

    @property
    def stdlib(self) -> logging.Logger:
        """The ``logging.Logger`` underneath (levels, handlers and propagation live there)."""
        return self._logger

    @property
    def fields(self) -> dict[str, Any]:
        """A copy of the fields this logger adds to every record."""
        return dict(self._fields)

    def child(self, **fields: Any) -> Logger:
        """Return a new logger adding ``fields`` on top of this one's; this logger is unchanged."""
        clone = Logger.__new__(Logger)
        clone._logger = self._logger
        clone.name = self.name
        clone._fields = {**self._fields, **normalize_fields(fields)}
        return clone

    bind = child

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - the stdlib's name, on purpose
        """Return whether a record at ``level`` would be created."""
        return self._logger.isEnabledFor(level)

    def setLevel(self, level: int | str) -> None:  # noqa: N802 - the stdlib's name, on purpose
        """Set the level of the underlying stdlib logger (shared by all its children)."""
        self._logger.setLevel(level)

    def debug(self, msg: object, /, *args: Any, **fields: Any) -> None:
        """Log ``msg`` at DEBUG."""
        if self._logger.isEnabledFor(DEBUG):
            self._emit(DEBUG, msg, args, fields)

    def info(self, msg: object, /, *args: Any, **fields: Any) -> None:
        """Log ``msg`` at INFO."""
        if self._logger.isEnabledFor(INFO):
            self._emit(INFO, msg, args, fields)

    def warning(self, msg: object, /, *args: Any, **fields: Any) -> None:
        """Log ``msg`` at WARNING."""
        if self._logger.isEnabledFor(WARNING):
            self._emit(WARNING, msg, args, fields)

    warn = warning

    def error(self, msg: object, /, *args: Any, **fields: Any) -> None:
        """Log ``msg`` at ERROR."""
        if self._logger.isEnabledFor(ERROR):
            self._emit(ERROR, msg, args, fields)

    def exception(self, msg: object, /, *args: Any, **fields: Any) -> None:
        """Log ``msg`` at ERROR with the exception being handled (``exc_info=True`` by default)."""
        if self._logger.isEnabledFor(ERROR):
            fields.setdefault("exc_info", True)
            self._emit(ERROR, msg, args, fields)

    def critical(self, msg: object, /, *args: Any, **fields: Any) -> None:
        """Log ``msg`` at CRITICAL."""
        if self._logger.isEnabledFor(CRITICAL):
            self._emit(CRITICAL, msg, args, fields)

    fatal = critical

    def log(self, level: int, msg: object, /, *args: Any, **fields: Any) -> None:
        """Log ``msg`` at ``level`` (a level that is not an int is logged at ERROR, and said once)."""
        if not isinstance(level, int):
            report_once("bad-level", "log() level must be an int, got %r; using ERROR", level)  # type: ignore[unreachable]
            level = ERROR
        if self._logger.isEnabledFor(level):
            self._emit(level, msg, args, fields)

    def _emit(self, level: int, msg: object, args: tuple[Any, ...], fields: dict[str, Any]) -> None:
        # Frame 0 is this method, 1 the level method, 2 its caller: the line the record points at.
        try:
            exc_info: ExcInfo = None
            stack_info = False
            stacklevel = 1
            extra: Mapping[str, Any] | None = None
            if fields and not _CONTROL.isdisjoint(fields):
                exc_info = fields.pop("exc_info", None)
                stack_info = bool(fields.pop("stack_info", False))
                stacklevel = fields.pop("stacklevel", 1)
                extra = fields.pop("extra", None)
            if len(args) == 1 and isinstance(args[0], Mapping):
                fields = {**args[0], **fields}
                args = ()
            try:
                frame = sys._getframe(1 + max(int(stacklevel), 1))
                co = frame.f_code
                fn, lno, func = co.co_filename, frame.f_lineno, co.co_name
            except (ValueError, TypeError):
                frame = None
                fn, lno, func = "(unknown file)", 0, "(unknown function)"
            sinfo = None
            if stack_info and frame is not None:
                buf = io.StringIO()
                buf.write("Stack (most recent call last):\n")
                traceback.print_stack(frame, file=buf)
                sinfo = buf.getvalue().rstrip("\n")
            logger = self._logger
            record = logger.makeRecord(
                logger.name, level, fn, lno, msg, args, _exc_tuple(exc_info), func, None, sinfo
            )
            rd = record.__dict__
            if self._fields:
                rd.update(self._fields)
            if extra:
                rd.update(normalize_fields(extra))
            if fields:
                rd.update(normalize_fields(fields))
        except Exception as exc:
            report_once("logger-call", "a log call could not be recorded: %r", exc)
            return
        # Handlers already guard their own errors (Handler.handleError); a failing filter does not.
        try:
            logger.handle(record)
        except Exception as exc:
            report_once("logger-handle", "a filter or handler raised from a log call: %r", exc)


def get_logger(name: str | None = None, **fields: Any) -> Logger:
    """Return a :class:`Logger` over ``logging.getLogger(name)`` adding ``fields`` to every record.

    With no name, the caller's module name is used (``__name__`` of the calling code).
    """
    if name is None:
        try:
            name = sys._getframe(1).f_globals.get("__name__") or "root"
        except ValueError:  # pragma: no cover - no caller frame
            name = "root"
    return Logger(logging.getLogger(name), fields)
