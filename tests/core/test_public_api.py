"""The public surface: pinned __all__, and an import that changes nothing and loads nothing optional."""

from __future__ import annotations

import json
import subprocess
import sys

import agentuity_logging

EXPECTED = [
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

PROBE = """
import json, logging, sys
before = set(sys.modules)
root_handlers = list(logging.getLogger().handlers)
factory = logging.getLogRecordFactory()
import agentuity_logging
print(json.dumps({
    "new": sorted(set(sys.modules) - before),
    "handlers_changed": logging.getLogger().handlers != root_handlers,
    "factory_changed": logging.getLogRecordFactory() is not factory,
}))
"""

OPTIONAL = (
    "httpx",
    "cramjam",
    "cryptography",
    "redis",
    "click",
    "rich",
    "loguru",
    "opentelemetry",
    "structlog",
    "sqlite3",
)


class TestPublicApi:
    def test_all_is_pinned(self) -> None:
        """__all__ is exactly the documented, sorted list."""
        assert agentuity_logging.__all__ == EXPECTED
        assert sorted(EXPECTED) == EXPECTED

    def test_every_name_in_all_exists(self) -> None:
        """Every exported name resolves."""
        for name in agentuity_logging.__all__:
            assert getattr(agentuity_logging, name) is not None

    def test_import_installs_nothing_and_loads_nothing_optional(self) -> None:
        """Importing the package adds no handler, keeps the record factory, imports no extra."""
        out = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
        )
        probe = json.loads(out.stdout)
        assert probe["handlers_changed"] is False
        assert probe["factory_changed"] is False
        loaded = [m for m in probe["new"] if m.split(".")[0] in OPTIONAL]
        assert loaded == []

    def test_missing_dependency_error_names_the_extra(self) -> None:
        """MissingDependencyError tells exactly what to pip install."""
        err = agentuity_logging.MissingDependencyError("RedisThreadStore", "redis", "redis")
        assert str(err) == "RedisThreadStore needs 'redis': pip install 'agentuity-logging[redis]'"
        assert isinstance(err, ImportError)
        assert isinstance(err, agentuity_logging.AgentuityLoggingError)
