"""Process lifecycles: exit and SIGTERM flush, SIGKILL with a spool, fork and multiprocessing."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentuity_logging import ConfigurationError
from agentuity_logging.shipping import DatadogShipper
from tests.fakes import FakeDatadog
from tests.forking import in_child

from .shipping_support import ShipperFactory, attach, messages, run_script, shipper_factory, start_script

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process semantics")

SCRIPT_HEAD = """
import logging, sys, time
from agentuity_logging.shipping import DatadogShipper, ShippingHandler
shipper = DatadogShipper({key!r}, url={url!r}, flush_interval_s=30, retry_initial_s=0.02,
                         retry_max_s=0.1, spool_dir={spool!r})
log = logging.getLogger("app")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(ShippingHandler(shipper))
"""


def script(fake: FakeDatadog, body: str, spool: Path | None = None) -> str:
    head = SCRIPT_HEAD.format(key=fake.api_key, url=fake.url, spool=None if spool is None else str(spool))
    return head + body


@pytest.fixture
def make() -> Iterator[ShipperFactory]:
    """Creates shippers and closes them after the test."""
    yield from shipper_factory()


class TestExit:
    def test_normal_exit_flushes(self, fake_datadog: FakeDatadog) -> None:
        """A process that ends without close() still delivers every record (atexit)."""
        result = run_script(script(fake_datadog, "for i in range(100): log.info('record %d', i)\n"))
        assert result.returncode == 0, result.stderr
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(100)]

    def test_exit_code_is_kept(self, fake_datadog: FakeDatadog) -> None:
        """The exit flush does not change the process's exit status."""
        result = run_script(script(fake_datadog, "log.info('bye')\nsys.exit(3)\n"))
        assert result.returncode == 3
        assert messages(fake_datadog.entries) == ["bye"]

    def test_exit_is_bounded_when_the_backend_is_down(self, fake_datadog: FakeDatadog) -> None:
        """With the backend down, exit waits close_timeout_s at most, then leaves."""
        fake_datadog.down()
        body = "shipper._engine._s.close_timeout_s = 0.5\nlog.info('lost')\nt0 = time.monotonic()\n"
        body += "import atexit\natexit.register(lambda: print(round(time.monotonic() - t0, 2)))\n"
        result = run_script(script(fake_datadog, body), timeout=15)
        assert result.returncode == 0, result.stderr
        assert float(result.stdout.strip()) < 3.0

    def test_sigterm_flushes_then_dies_of_sigterm(self, fake_datadog: FakeDatadog) -> None:
        """SIGTERM (default disposition) flushes the queue, then the process dies of SIGTERM."""
        body = "for i in range(100): log.info('record %d', i)\nprint('ready', flush=True)\ntime.sleep(60)\n"
        process = start_script(script(fake_datadog, body))
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == -signal.SIGTERM
        finally:
            process.kill()
            process.communicate()
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(100)]

    def test_an_application_sigterm_handler_is_left_alone(self, fake_datadog: FakeDatadog) -> None:
        """When the application handles SIGTERM itself, the engine does not take it over."""
        body = (
            "import signal\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
            "log.info('record')\nprint('ready', flush=True)\ntime.sleep(60)\n"
        )
        process = start_script(script(fake_datadog, body))
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 7  # their handler ran; atexit then flushed
        finally:
            process.kill()
            process.communicate()
        assert messages(fake_datadog.entries) == ["record"]

    def test_sigterm_handler_is_restored_when_the_last_shipper_closes(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """In-process: the engine's SIGTERM hook is removed again by close()."""
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            pytest.skip("the test runner handles SIGTERM itself")
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        attach(shipper).info("record")
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        shipper.close(2)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


class TestKilledProcess:
    def test_records_of_a_sigkilled_process_arrive_from_the_next_one(
        self, fake_datadog: FakeDatadog, tmp_path: Path
    ) -> None:
        """With a spool, records of a process killed by SIGKILL are sent by the next process."""
        fake_datadog.down()
        body = (
            "for i in range(200): log.info('record %d', i)\n"
            "while shipper.stats()['spooled'] < 200: time.sleep(0.01)\n"
            "print('ready', flush=True)\ntime.sleep(60)\n"
        )
        process = start_script(script(fake_datadog, body, spool=tmp_path))
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            process.send_signal(signal.SIGKILL)
            assert process.wait(20) == -signal.SIGKILL
        finally:
            process.kill()
            process.communicate()
        fake_datadog.up()
        result = run_script(script(fake_datadog, "sys.exit(0 if shipper.flush(10) else 5)\n", spool=tmp_path))
        assert result.returncode == 0, result.stderr
        assert messages(fake_datadog.entries) == [f"record {i}" for i in range(200)]

    def test_a_live_process_keeps_its_spool_to_itself(
        self, fake_datadog: FakeDatadog, tmp_path: Path
    ) -> None:
        """A second process pointing at a spool_dir in use gets a clear error naming the holder."""
        process = start_script(
            script(fake_datadog, "print('ready', flush=True)\ntime.sleep(60)\n", spool=tmp_path)
        )
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
            with pytest.raises(ConfigurationError, match=f"process {process.pid}"):
                DatadogShipper(fake_datadog.api_key, url=fake_datadog.url, spool_dir=tmp_path)
        finally:
            process.kill()
            process.communicate()


@pytest.mark.forks
class TestFork:
    def test_child_ships_its_own_records_and_never_the_parents(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A forked child starts a fresh worker; the parent's queued records are sent once, by the parent."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, flush_interval_s=30)
        logger = attach(shipper)
        for i in range(5):
            logger.info("parent %d", i)

        def child() -> bool:
            for i in range(3):
                logger.info("child %d", i)
            return shipper.flush(10) and shipper.stats()["enqueued"] == 3

        assert in_child(child) == 0
        assert shipper.flush(5)
        got = sorted(messages(fake_datadog.entries))
        assert got == sorted([f"parent {i}" for i in range(5)] + [f"child {i}" for i in range(3)])

    def test_child_works_when_the_fork_happened_under_a_held_lock(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A lock another thread held at fork time is replaced in the child, not inherited locked."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url)
        logger = attach(shipper)
        logger.info("parent")
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with shipper._engine._lock:
                held.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert held.wait(5)

            def child() -> bool:
                logger.info("child")
                return shipper.flush(10)

            assert in_child(child) == 0
        finally:
            release.set()
            holder.join()
        assert shipper.flush(5)
        assert sorted(messages(fake_datadog.entries)) == ["child", "parent"]

    def test_pid_check_covers_a_fork_the_hook_missed(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the at-fork hook, the PID check on the next log call still resets the child."""
        monkeypatch.setattr(os, "register_at_fork", lambda **kwargs: None)
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, flush_interval_s=30)
        monkeypatch.undo()
        logger = attach(shipper)
        logger.info("parent")

        def child() -> bool:
            logger.info("child")
            return shipper.flush(10) and shipper.stats()["enqueued"] == 1

        assert in_child(child) == 0
        assert shipper.flush(5)
        assert sorted(messages(fake_datadog.entries)) == ["child", "parent"]

    def test_child_of_a_spooling_parent_ships_from_memory(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, tmp_path: Path
    ) -> None:
        """The parent's spool stays the parent's; the child delivers from memory."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, spool_dir=tmp_path)
        logger = attach(shipper)
        logger.info("parent")

        def child() -> bool:
            logger.info("child")
            return shipper.flush(10) and shipper._engine._spool is None

        assert in_child(child) == 0
        logger.info("parent again")
        assert shipper.flush(5)
        assert sorted(messages(fake_datadog.entries)) == ["child", "parent", "parent again"]

    def test_multiprocessing_child_flushes_when_it_exits(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """A multiprocessing worker (which exits through os._exit) still delivers its records."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, flush_interval_s=30)
        logger = attach(shipper)

        def work() -> None:
            for i in range(4):
                logger.info("worker %d", i)

        context = multiprocessing.get_context("fork")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            process = context.Process(target=work)
            process.start()
        process.join(20)
        assert process.exitcode == 0
        assert messages(fake_datadog.entries) == [f"worker {i}" for i in range(4)]
