"""stdlib ``logging`` integration: stamping filter, JSON and console formatters, the stream output.

All are usable from ``logging.config.dictConfig`` with the ``"()"`` key, for example::

    "formatters": {"json": {"()": "agentuity_logging.stdlib.JsonFormatter"}},
    "filters": {"session": {"()": "agentuity_logging.stdlib.SessionContextFilter"}},
"""

from __future__ import annotations

from agentuity_logging._formatting import (
    ConsoleFormatter,
    EventHandler,
    JsonFormatter,
    StreamOutput,
    escape_control,
)
from agentuity_logging._records import event_from_record
from agentuity_logging._stamping import (
    SessionContextFilter,
    install_record_factory,
    uninstall_record_factory,
)

__all__ = [
    "ConsoleFormatter",
    "EventHandler",
    "JsonFormatter",
    "SessionContextFilter",
    "StreamOutput",
    "escape_control",
    "event_from_record",
    "install_record_factory",
    "uninstall_record_factory",
]
