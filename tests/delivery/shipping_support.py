"""Helpers for the delivery engine and shipper tests: shipper factories, loggers, subprocess scripts."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any, TypeVar

from agentuity_logging._internal import _reset_for_tests
from agentuity_logging.shipping import Shipper, ShippingHandler

S = TypeVar("S", bound=Shipper)

#: Fast retries for tests: the engine's real defaults (0.5 s, 10 s) would make fault tests slow.
FAST_RETRY: dict[str, Any] = {"retry_initial_s": 0.02, "retry_max_s": 0.1}
REPO = Path(__file__).resolve().parents[2]
_names = count()


class ShipperFactory:
    """Creates shippers and closes every one of them when the test ends."""

    def __init__(self) -> None:
        self.made: list[Shipper] = []

    def __call__(self, cls: type[S], *args: Any, **kwargs: Any) -> S:
        shipper = cls(*args, **kwargs)
        self.made.append(shipper)
        return shipper

    def close_all(self) -> None:
        for shipper in self.made:
            shipper.close(timeout=2)


def shipper_factory() -> Iterator[ShipperFactory]:
    """Body of the ``make`` fixture: yield a factory, close what it made, reset diagnostics."""
    _reset_for_tests()
    factory = ShipperFactory()
    try:
        yield factory
    finally:
        factory.close_all()
        _reset_for_tests()


def attach(shipper: Shipper, level: int = logging.DEBUG) -> logging.Logger:
    """A fresh, non-propagating logger whose only handler feeds ``shipper``."""
    logger = logging.getLogger(f"tests.delivery.{next(_names)}")
    logger.propagate = False
    logger.setLevel(level)
    logger.handlers[:] = [ShippingHandler(shipper)]
    return logger


def poll_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    """Wait until ``predicate()`` holds, checking every 10 ms, or give up at the deadline.

    For conditions no event announces (the worker moving records to disk).
    """
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.01)
    return True


def messages(entries: list[dict[str, Any]]) -> list[str]:
    """The ``message`` of each Datadog entry, in arrival order."""
    return [str(e.get("message")) for e in entries]


def run_script(
    body: str, *, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter with the repository importable."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        check=False,
    )


def start_script(body: str) -> subprocess.Popen[str]:
    """Start ``body`` in a fresh interpreter (stdout piped, line-buffered text)."""
    return subprocess.Popen(
        [sys.executable, "-u", "-c", textwrap.dedent(body)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
