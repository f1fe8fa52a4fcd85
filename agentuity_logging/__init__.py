"""Session-aware logging for AI-agent applications.

Every log record knows its request (a *session*, ``sess_…``) and its conversation (a *thread*,
``thrd_…``), from every logger: ours, the stdlib's, structlog's and third-party libraries'.

    import agentuity_logging as al

    al.configure()
    log = al.get_logger("planner")
    with al.session() as s:
        log.info("planning", steps=3)   # carries agentuitySessionId and agentuityThreadId
"""

from __future__ import annotations

from agentuity_logging._config import configure, flush, logging_config, shutdown
from agentuity_logging._context import (
    ContextThreadPoolExecutor,
    Session,
    State,
    Thread,
    bound,
    current_session,
    external_metadata,
    session,
    session_id,
    thread_id,
    wrap,
)
from agentuity_logging._errors import (
    AgentuityLoggingError,
    ConfigurationError,
    MissingDependencyError,
)
from agentuity_logging._ids import (
    new_session_id,
    new_thread_id,
    validate_session_id,
    validate_thread_id,
)
from agentuity_logging._logger import Logger, get_logger
from agentuity_logging._spans import Span, current_span, span

__version__ = "0.1.0"

__all__ = [
    "AgentuityLoggingError",
    "ConfigurationError",
    "ContextThreadPoolExecutor",
    "Logger",
    "MissingDependencyError",
    "Session",
    "Span",
    "State",
    "Thread",
    "__version__",
    "bound",
    "configure",
    "current_session",
    "current_span",
    "external_metadata",
    "flush",
    "get_logger",
    "logging_config",
    "new_session_id",
    "new_thread_id",
    "session",
    "session_id",
    "shutdown",
    "span",
    "thread_id",
    "validate_session_id",
    "validate_thread_id",
    "wrap",
]
