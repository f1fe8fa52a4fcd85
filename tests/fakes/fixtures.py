"""Pytest fixtures that start a fake backend per test and always stop it.

Loaded from ``tests/conftest.py`` (``pytest_plugins``). Each fixture yields a started fake on
a free 127.0.0.1 port; teardown closes its sockets and joins its threads.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.datadog import FakeDatadog
from tests.fakes.http_sink import FakeHTTPSink
from tests.fakes.loki import FakeLoki
from tests.fakes.otlp import FakeOTLP


@pytest.fixture
def fake_datadog() -> Iterator[FakeDatadog]:
    """A fake Datadog intake + logs search API."""
    fake = FakeDatadog()
    with fake:
        yield fake


@pytest.fixture
def fake_loki() -> Iterator[FakeLoki]:
    """A fake Loki (push, query_range, labels)."""
    fake = FakeLoki()
    with fake:
        yield fake


@pytest.fixture
def fake_otlp() -> Iterator[FakeOTLP]:
    """A fake OTLP/HTTP logs receiver."""
    fake = FakeOTLP()
    with fake:
        yield fake


@pytest.fixture
def fake_http_sink() -> Iterator[FakeHTTPSink]:
    """A fake generic HTTP (NDJSON/JSON) collector."""
    fake = FakeHTTPSink()
    with fake:
        yield fake
