"""Shared fixtures: every test starts from an unconfigured logging set-up and leaves none behind."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
import structlog

from agentuity_logging import _config, _context
from agentuity_logging._stamping import uninstall_record_factory

pytest_plugins = ["tests.fakes.fixtures"]


@pytest.fixture(autouse=True)
def _clean_logging() -> Iterator[None]:
    """Restore root handlers and level, the record factory, structlog, the context and os.environ."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    level = root.level
    factory = logging.getLogRecordFactory()
    environ = dict(os.environ)
    registry = _context.get_thread_registry()
    snapshot = _context.current_snapshot()
    structlog_config = structlog.get_config()
    try:
        yield
    finally:
        _config.unconfigure()
        uninstall_record_factory()
        logging.setLogRecordFactory(factory)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        os.environ.clear()
        os.environ.update(environ)
        _context.set_thread_registry(registry)
        assert _context.current_snapshot() is snapshot, "a test leaked a session or bound() context"
        structlog.configure(**structlog_config)
