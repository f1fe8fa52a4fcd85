"""Benchmark the session log store: its writer's ingest rate against the stdlib, and `session logs` at 1M.

Run: ``.venv/bin/python benchmarks/bench_store.py [--records N] [--big N]``

Ingest ("its writer ingests at least 100,000 records/s, at least half the plain stdlib call rate measured
in the same run"), all in this one process:

* the plain stdlib call rate: ``logger.info("request %d handled", i)`` with a ``StreamHandler`` on a
  ``StringIO``;
* the writer's ingest rate: records go to a :class:`LogStoreHandler` whose writer is held back while
  a round of 20,480 is queued, then released and timed until ``flush()`` says everything is
  committed, round after round (the rate is records over drain time). Twice:
  as ``configure(store=...)`` sets it up (a JSON output on the same logger renders each record's schema
  event on the calling thread, and the writer reuses it), and with the store handler alone (the
  writer builds every event itself);
* for information, the application-side call rate with the store handler, and calls + flush when the
  writer runs concurrently with the logging loop (one process, one GIL: the two compete).

Every record is logged inside a session (100 records each), so each carries session and thread IDs and
every session is upserted at its start and end, as in an application.

Query: a store of ``--big`` records (10,000 sessions, records interleaved as concurrent requests do) and
one of 10,000 records are built directly with multi-row INSERTs into temporary files; ``session logs``
for one session is timed in both (median of repeated runs) and SQLite's query plan is printed.
"""

from __future__ import annotations

import argparse
import gc
import io
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agentuity_logging._context import add_session_listener, remove_session_listener, session
from agentuity_logging._formatting import JsonFormatter, StreamOutput
from agentuity_logging._logger import Logger
from agentuity_logging._stamping import install_record_factory, uninstall_record_factory
from agentuity_logging._storage._logstore import _LOG_GROUP, _LOG_INSERT_HEAD, LogStore, LogStoreHandler

SESSION_SIZE = 100


def with_args(logger: logging.Logger, i: int) -> None:
    """The stdlib call of the comparison."""
    logger.info("request %d handled", i)


def with_fields(logger: logging.Logger, i: int) -> None:
    """The same record with a keyword field instead of an argument (our Logger)."""
    Logger(logger).info("request handled", request=i)


def _log_loop(
    logger: logging.Logger, n: int, call: Callable[[logging.Logger, int], None] = with_args
) -> float:
    """Log ``n`` records in sessions of SESSION_SIZE; return the elapsed seconds."""
    start = time.perf_counter()
    i = 0
    while i < n:
        with session(metadata={"user": f"u{i % 7}"}):
            for _ in range(min(SESSION_SIZE, n - i)):
                call(logger, i)
                i += 1
    return time.perf_counter() - start


def _store_logger(
    directory: Path, name: str, n: int, *, with_output: bool = False
) -> tuple[logging.Logger, LogStoreHandler]:
    store = LogStore(directory / f"{name}.sqlite3", max_queue=2 * n + 10_000, retention_days=None)
    handler = LogStoreHandler(store)
    add_session_listener(handler)
    logger = logging.getLogger(f"bench.{name}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if with_output:  # configure()'s main output comes first: it renders the event the store reuses
        logger.addHandler(StreamOutput(io.StringIO(), JsonFormatter()))
    logger.addHandler(handler)
    return logger, handler


def _release(logger: logging.Logger, handler: LogStoreHandler) -> None:
    for other in list(logger.handlers):
        logger.removeHandler(other)
    remove_session_listener(handler)
    handler.close()


def writer_rate(
    directory: Path, name: str, n: int, *, with_output: bool, round_size: int = 20_480
) -> tuple[float, float]:
    """(records/s the writer commits, records/s of the logging calls), the writer held back meanwhile.

    Records are queued in rounds of ``round_size`` (ten full batches) while the writer waits, then the
    writer is released and timed until ``flush()`` returns; the rate is all records over all drain
    times. Rounds keep the queue as long as a busy application's would be, not ``n`` records long
    (which would mostly measure the garbage collector walking a huge queue).
    """
    call = with_fields
    logger, handler = _store_logger(directory, name, n, with_output=with_output)
    calls_s = drain_s = 0.0
    written = 0
    try:
        _log_loop(logger, 20_000, call)  # warm up: file, schema, statement cache
        assert handler.flush(60)
        while written < n:
            size = min(round_size, n - written)
            # Hold the writer back (it waits for the store's lock) until the round is queued.
            with handler.store._lock:
                calls_s += _log_loop(logger, size, call)
            start = time.perf_counter()
            assert handler.flush(300)
            drain_s += time.perf_counter() - start
            written += size
        stats = handler.stats()
    finally:
        _release(logger, handler)
    if stats["dropped"]:
        raise SystemExit(f"records were dropped: {stats}")
    return n / drain_s, n / calls_s


def concurrent_rate(directory: Path, n: int) -> float:
    """Records/s from the first call to the end of ``flush()``, the writer running alongside."""
    logger, handler = _store_logger(directory, "concurrent", n)
    try:
        _log_loop(logger, 20_000)
        assert handler.flush(60)
        start = time.perf_counter()
        _log_loop(logger, n)
        assert handler.flush(300)
        return n / (time.perf_counter() - start)
    finally:
        _release(logger, handler)


def bench_ingest(n: int, directory: Path) -> dict[str, float]:
    """Measure the rates; return them in records per second."""
    install_record_factory()
    try:
        plain = logging.getLogger("bench.plain")
        plain.propagate = False
        plain.setLevel(logging.INFO)
        stream = logging.StreamHandler(io.StringIO())
        plain.addHandler(stream)
        _log_loop(plain, 20_000)  # warm up
        stdlib_s = min(_log_loop(plain, n) for _ in range(3))
        plain.removeHandler(stream)
        gc.collect()
        # Best of three: on a shared VM a run can lose a third of its CPU to neighbours; the fastest
        # run is the one least disturbed (the stdlib figure is a best-of-two for the same reason).
        runs = []
        for k in range(3):
            gc.collect()
            runs.append(writer_rate(directory, f"configured{k}", n, with_output=True))
        writer_configured = max(rate for rate, _ in runs)
        alone_runs = []
        for k in range(2):
            gc.collect()
            alone_runs.append(writer_rate(directory, f"alone{k}", n, with_output=False))
        writer_alone = max(rate for rate, _ in alone_runs)
        calls = max(rate for _, rate in alone_runs)
        gc.collect()
        concurrent = concurrent_rate(directory, n)
    finally:
        uninstall_record_factory()
    return {
        "stdlib": n / stdlib_s,
        "writer_configured": writer_configured,
        "writer_alone": writer_alone,
        "calls": calls,
        "concurrent": concurrent,
    }


def build_store(path: Path, n_records: int, per_session: int = SESSION_SIZE) -> list[str]:
    """Fill a store file with ``n_records`` records in sessions of ``per_session``; return session IDs."""
    store = LogStore(path, retention_days=None, max_bytes=None)
    conn = store._writer()  # the direct loader: raw multi-row INSERTs, no handler
    now_us = int(time.time() * 1_000_000) - n_records
    session_ids = [f"sess_{os.urandom(16).hex()}" for _ in range(n_records // per_session)]
    thread_id = f"thrd_{os.urandom(16).hex()}"
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO sessions (id, thread_id, started_at, ended_at, success, log_count) VALUES (?,?,?,?,1,?)",
        [(sid, thread_id, now_us + k, now_us + k + 1000, per_session) for k, sid in enumerate(session_ids)],
    )
    keys = dict(conn.execute("SELECT id, key FROM sessions").fetchall())
    conn.execute("COMMIT")
    rows: list[list[object]] = []
    for i in range(n_records):
        # Sessions interleave, as concurrent requests do: a session's records are spread over the file.
        # Columns as the writer fills them: standard level names and the session's thread are implied.
        sid = session_ids[i % len(session_ids)]
        rows.append([now_us + i, 20, "", "bench", f"request {i} handled", keys[sid], "", "", f'{{"i":{i}}}'])
        if len(rows) == 65_536 or i == n_records - 1:
            conn.execute("BEGIN")
            store._values(conn, _LOG_INSERT_HEAD, 9, rows, group=_LOG_GROUP)
            conn.execute("COMMIT")
            rows = []
    store.close()
    return session_ids


def time_session_logs(path: Path, session_id: str, runs: int = 30) -> tuple[float, int, list[str]]:
    """Median milliseconds of ``session logs`` for one session, the record count, and the plan."""
    with LogStore(path, readonly=True) as store:
        store.session_logs(session_id)  # open the connection, warm the page cache
        timings = []
        for _ in range(runs):
            start = time.perf_counter()
            found = store.session_logs(session_id)
            timings.append((time.perf_counter() - start) * 1000)
        plan = store.session_logs_plan(session_id)
    return statistics.median(timings), len(found), plan


def main() -> None:
    """Run both benchmarks and print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="records for the ingest runs")
    parser.add_argument("--big", type=int, default=1_000_000, help="records in the large query store")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentuity-bench-") as tmp:
        directory = Path(tmp)
        rates = bench_ingest(args.records, directory)
        writer = rates["writer_configured"]
        stdlib = rates["stdlib"]
        print(f"ingest, {args.records:,} records in sessions of {SESSION_SIZE}:")
        print(f"  stdlib StreamHandler(StringIO) call rate      : {stdlib:>10,.0f} records/s")
        print(
            f"  store writer as configure(store=...) runs it  : {writer:>10,.0f} records/s  (need >= 100,000)"
        )
        print(f"  ratio writer / stdlib                         : {writer / stdlib:.2f}  (need >= 0.50)")
        print("  for information:")
        print(f"    store writer alone, building every event    : {rates['writer_alone']:>10,.0f} records/s")
        print(f"    logging calls, store handler alone          : {rates['calls']:>10,.0f} records/s")
        print(f"    calls + flush, writer running concurrently  : {rates['concurrent']:>10,.0f} records/s")
        ok_ingest = writer >= 100_000 and writer >= 0.5 * rates["stdlib"]

        start = time.perf_counter()
        big_ids = build_store(directory / "big.sqlite3", args.big)
        small_ids = build_store(directory / "small.sqlite3", 10_000)
        print(f"\nbuilt stores of {args.big:,} and 10,000 records in {time.perf_counter() - start:.1f} s")
        big_ms, big_n, plan = time_session_logs(directory / "big.sqlite3", big_ids[len(big_ids) // 2])
        small_ms, small_n, _ = time_session_logs(directory / "small.sqlite3", small_ids[len(small_ids) // 2])
        print(
            f"  session logs, {args.big:,}-record store : {big_ms:7.2f} ms ({big_n} records)  (need < 50 ms)"
        )
        print(f"  session logs, 10,000-record store     : {small_ms:7.2f} ms ({small_n} records)")
        print(f"  ratio big / small                     : {big_ms / small_ms:.2f}  (need <= 1.50)")
        print("  EXPLAIN QUERY PLAN:")
        for line in plan:
            print(f"    {line}")
        ok_query = big_ms < 50 and big_ms <= 1.5 * small_ms and any("logs_by_session" in p for p in plan)
    print(f"\ntargets: ingest {'met' if ok_ingest else 'MISSED'}, query {'met' if ok_query else 'MISSED'}")


if __name__ == "__main__":
    main()
