"""No leaks between concurrent requests: every record carries exactly its own session's IDs."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict

import structlog

import agentuity_logging as al
from agentuity_logging.testing import capture_logs

from .helpers import JsonLines


def _check(entries: list[dict[str, object]], expected_per_session: int) -> int:
    """Every record names its session in a field; the stamped IDs must agree with it."""
    per_session: defaultdict[object, int] = defaultdict(int)
    for entry in entries:
        assert entry["agentuitySessionId"] == entry["expected_session"], entry
        assert entry["agentuityThreadId"] == entry["expected_thread"], entry
        per_session[entry["expected_session"]] += 1
    assert set(per_session.values()) == {expected_per_session}
    return len(per_session)


class TestAsyncio:
    def test_one_thousand_concurrent_tasks_never_leak(self) -> None:
        """1,000 tasks interleaving awaits each log only with their own session's IDs."""
        al.configure(format="json", stream=JsonLines())
        log = al.get_logger("agent")
        slog = structlog.get_logger("agent")

        async def request(i: int) -> None:
            async with al.session() as s:
                ids = {"expected_session": s.id, "expected_thread": s.thread.id}
                for step in range(3):
                    log.info("step", step=step, **ids)
                    await asyncio.sleep(0)
                    slog.info("structlog step", step=step, **ids)
                    logging.getLogger("thirdparty").info("lib", extra=ids)
                    await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.gather(*(request(i) for i in range(1000)))

        with capture_logs(logging.INFO) as logs:
            asyncio.run(main())
        assert len(logs) == 9000
        assert _check(logs, 9) == 1000


class TestThreads:
    def test_eight_threads_running_many_sessions_never_leak(self) -> None:
        """8 threads x 200 sessions, each joining a shared thread sometimes, never cross IDs."""
        al.configure(format="json", stream=JsonLines())
        log = al.get_logger("worker")
        with al.session() as shared:
            shared_thread = shared.thread.id
        barrier = threading.Barrier(8)

        def worker(n: int) -> None:
            barrier.wait()
            for i in range(200):
                kwargs = {"thread_id": shared_thread} if i % 4 == 0 else {}
                with al.session(**kwargs) as s:
                    ids = {"expected_session": s.id, "expected_thread": s.thread.id}
                    log.info("a", worker=n, **ids)
                    with al.bound(i=i):
                        log.info("b", **ids)
                    al.wrap(lambda ids=ids: log.info("c", **ids))()

        with capture_logs(logging.INFO) as logs:
            threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert len(logs) == 8 * 200 * 3
        assert _check(logs, 3) == 1600
