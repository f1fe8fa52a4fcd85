"""Shipping benchmark: delivered records/s, application-thread cost, memory during an outage.

One run, contenders interleaved round by round, all against the same loopback sink (a separate
process, so it does not share the producer's GIL). The sink decodes every request (Datadog JSON
arrays, Loki JSON pushes, OTLP protobuf) and checks every record: each message carries the run's
ID and its sequence number, and a record counts as delivered only when its number arrived once.

Contenders:

* ``plain``: a logger with a ``StreamHandler`` on a ``StringIO``: the ceiling one producer reaches.
* ``logging_loki``: python-logging-loki's ``LokiHandler`` (a request inside every log call) and
  ``LokiQueueHandler`` (the same, on a listener thread).
* ``otel``: the OpenTelemetry SDK's ``BatchLogRecordProcessor`` with its OTLP/HTTP exporter.
* ``ours-datadog``: ``DatadogShipper`` (gzip level 1), ``ours-loki-json``: ``LokiShipper(encoding="json")``.
  With python-isal installed (the ``isal`` extra) they gzip with ISA-L, and ``…-zlib`` runs the same
  shippers with zlib's gzip, as an installation without the extra would.

Run::

    .venv/bin/python benchmarks/bench_shipping.py            # ~1 minute
    .venv/bin/python benchmarks/bench_shipping.py --full     # the one-minute outage at 10,000 records/s
    .venv/bin/python benchmarks/bench_shipping.py --instructions   # exact CPU instructions (valgrind)
    .venv/bin/python benchmarks/bench_shipping.py --instructions --session   # records in a session
    .venv/bin/python benchmarks/bench_shipping.py --round-trip-ms 50 --rounds 3  # a far-away backend

``--session`` runs every producer loop inside ``agentuity_logging.session()`` with the package's
record factory installed (as ``configure()`` does), so every record carries ``agentuitySessionId`` and
``agentuityThreadId``: the product's real workload. The plain ceiling pays for the stamping too.

``--instructions`` counts instructions per record of the whole process (producer and worker,
request building, gzip and HTTP included) under valgrind's callgrind, for N and 11N records in
fresh processes: the difference over 10N excludes start-up. Producer and worker share one GIL, so
the ratio plain / ours is what the delivered rate tends to on a quiet machine, minus what runs
with the GIL released (gzip, socket I/O) on a second core. It also gives the application thread's
share alone (callgrind's per-thread counts): the deterministic form of the application-thread cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import gzip
import http.client
import io
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from _callgrind import callgrind_by_thread

RUN_PATTERN = re.compile(rb"bench-([0-9a-z]+)-([0-9]+)\b")


# --- the sink (runs in its own process) --------------------------------------------------------


class SinkState:
    """Per-run bitmaps of the sequence numbers seen."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple[bytearray, list[int]]] = {}  # run -> (seen, [unique, dups])
        self.down = False
        self.delay_s = 0.0  # how long the sink takes to answer a delivery (a far-away backend)
        self.requests = 0

    def reset(self, run: str, n: int) -> None:
        self.runs[run] = (bytearray(n), [0, 0])

    def mark(self, text: bytes) -> None:
        for match in RUN_PATTERN.finditer(text):
            run = self.runs.get(match.group(1).decode())
            if run is None:
                continue
            seen, counts = run
            index = int(match.group(2))
            if index < len(seen):
                if seen[index]:
                    counts[1] += 1
                else:
                    seen[index] = 1
                    counts[0] += 1

    def ingest(self, path: str, headers: dict[str, str], body: bytes) -> int:
        encoding = headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif headers.get("content-type") == "application/x-protobuf" and path.startswith("/loki"):
            import cramjam

            body = bytes(cramjam.snappy.decompress_raw(body))
        if path.startswith("/api/v2/logs"):
            entries = orjson.loads(body)
            self.mark("\n".join(e.get("message", "") for e in entries).encode())
            return 202
        if path.startswith("/loki/api/v1/push"):
            if headers.get("content-type", "").startswith("application/json"):
                data = orjson.loads(body)
                lines = [v[1] for s in data["streams"] for v in s["values"]]
                self.mark("\n".join(lines).encode())
            else:
                self.mark(body)
            return 204
        if path.startswith("/v1/logs"):
            from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

            request = logs_service_pb2.ExportLogsServiceRequest()
            request.ParseFromString(body)
            texts = [
                record.body.string_value
                for resource in request.resource_logs
                for scope in resource.scope_logs
                for record in scope.log_records
            ]
            self.mark("\n".join(texts).encode())
            return 200
        return 404


async def _serve_sink(port: int, runs: list[str]) -> None:
    state = SinkState()
    for spec in runs:
        run, _, n = spec.partition(":")
        state.reset(run, int(n))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                if "chunked" in headers.get("transfer-encoding", ""):
                    chunks = []
                    while True:
                        size = int((await reader.readline()).split(b";")[0], 16)
                        if size == 0:
                            await reader.readline()
                            break
                        chunks.append(await reader.readexactly(size))
                        await reader.readline()
                    body = b"".join(chunks)
                else:
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                path, _, query = target.partition("?")
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                reply = b""
                if path == "/_reset":
                    state.reset(params["run"], int(params["n"]))
                    status = 200
                elif path == "/_status":
                    _seen, counts = state.runs.get(params["run"], (bytearray(), [0, 0]))
                    reply = orjson.dumps({"unique": counts[0], "duplicates": counts[1]})
                    status = 200
                elif path == "/_down":
                    state.down = params.get("on") == "1"
                    status = 200
                elif path == "/_delay":
                    state.delay_s = int(params["ms"]) / 1000
                    status = 200
                elif state.down:
                    status = 503
                else:
                    state.requests += 1
                    status = state.ingest(path, headers, body)
                    if state.delay_s:
                        await asyncio.sleep(state.delay_s)
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(reply)}\r\n"
                    "Content-Type: application/json\r\n\r\n".encode()
                    + reply
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    async with server:
        await server.serve_forever()


class Sink:
    """Starts and talks to the sink process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, runs: tuple[tuple[str, int], ...] = ()) -> None:
        """Start the sink process; ``runs`` are registered before it accepts a connection."""
        expect = [f"--expect={run}:{n}" for run, n in runs]
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--sink", str(self.port), *expect], stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("sink did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return bytes(response.read())

    def reset(self, run: str, n: int) -> None:
        self._get(f"/_reset?run={run}&n={n}")

    def delay(self, ms: int) -> None:
        self._get(f"/_delay?ms={ms}")

    def status(self, run: str) -> dict[str, int]:
        return orjson.loads(self._get(f"/_status?run={run}"))  # type: ignore[no-any-return]

    def wait_for(self, run: str, n: int, timeout_s: float) -> dict[str, int]:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(run)
            if status["unique"] >= n or time.monotonic() > deadline:
                return status
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- contenders ------------------------------------------------------------------------------

_runs = iter(range(1, 1 << 30))


def new_run() -> str:
    return f"r{next(_runs):x}{os.getpid():x}"


def fresh_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"bench.{new_run()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers[:] = [handler]
    return logger


#: Whether producers log inside a session (``--session``); set once by ``use_sessions``.
IN_SESSION = False


def use_sessions() -> None:
    """Stamp every record with the session IDs (the record factory) and log inside a session."""
    global IN_SESSION
    from agentuity_logging.stdlib import install_record_factory

    install_record_factory()
    IN_SESSION = True


def producer_context() -> contextlib.AbstractContextManager[object]:
    """A session around a producer loop under ``--session``, else nothing."""
    if not IN_SESSION:
        return contextlib.nullcontext()
    import agentuity_logging

    return agentuity_logging.session()


def produce(logger: logging.Logger, run: str, n: int) -> float:
    """Log ``n`` records; return the CPU seconds the application thread spent doing it.

    CPU time of this thread (not wall time): while a background worker holds the GIL this thread
    waits, and that wait is the worker's cost (counted in the delivered rate), not the log call's.
    Under ``--session`` the loop runs inside one session, as a request handler's logging does.
    """
    info = logger.info
    with producer_context():
        start = time.thread_time()
        for i in range(n):
            info("bench-%s-%d user request handled", run, i)
        return time.thread_time() - start


def bench_plain(sink: Sink, n: int) -> dict[str, Any]:
    stream = io.StringIO()
    logger = fresh_logger(logging.StreamHandler(stream))
    run = new_run()
    start = time.perf_counter()
    cpu = produce(logger, run, n)
    elapsed = time.perf_counter() - start
    return {"rate": n / elapsed, "app_us": cpu / n * 1e6, "delivered": n}


@contextlib.contextmanager
def zlib_gzip() -> Any:
    """Gzip with zlib for the duration, as without python-isal (the ``isal`` extra)."""
    from agentuity_logging._delivery import _protocol

    saved = _protocol._gzip
    _protocol._gzip = _protocol._gzip_with_zlib
    try:
        yield
    finally:
        _protocol._gzip = saved


def bench_ours(sink: Sink, n: int, kind: str, *, zlib_only: bool = False, **options: Any) -> dict[str, Any]:
    if zlib_only:
        with zlib_gzip():
            return bench_ours(sink, n, kind, **options)
    from agentuity_logging.shipping import DatadogShipper, LokiShipper, ShippingHandler

    shipper = (
        DatadogShipper("bench-key-0123456789", url=sink.url, **options)
        if kind == "datadog"
        else LokiShipper(sink.url, encoding="json", **options)
    )
    try:
        logger = fresh_logger(ShippingHandler(shipper))
        logger.info("warm-up: connect, build the TLS context, import lazily")
        shipper.flush(30)
        run = new_run()
        sink.reset(run, n)
        start = time.perf_counter()
        app = produce(logger, run, n)
        ok = shipper.flush(timeout=120)
        total = time.perf_counter() - start
        status = sink.wait_for(run, n, 10)
        assert ok, shipper.stats()
    finally:
        shipper.close()
    return {
        "rate": status["unique"] / total,
        "app_us": app / n * 1e6,
        "delivered": status["unique"],
        "duplicates": status["duplicates"],
    }


def bench_logging_loki(sink: Sink, n: int, queued: bool) -> dict[str, Any]:
    import warnings
    from queue import Queue

    import logging_loki

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        url = sink.url + "/loki/api/v1/push"
        handler: logging.Handler
        if queued:
            handler = logging_loki.LokiQueueHandler(Queue(-1), url=url, version="1")
        else:
            handler = logging_loki.LokiHandler(url=url, version="1")
    logger = fresh_logger(handler)
    logger.info("warm-up")
    run = new_run()
    sink.reset(run, n)
    start = time.perf_counter()
    app = produce(logger, run, n)
    if queued:
        handler.listener.stop()  # type: ignore[attr-defined]
    total = time.perf_counter() - start
    status = sink.wait_for(run, n, 10)
    handler.close()
    return {"rate": status["unique"] / total, "app_us": app / n * 1e6, "delivered": status["unique"]}


def bench_otel(sink: Sink, n: int) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider()
    provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=sink.url + "/v1/logs"))
    )
    logger = fresh_logger(LoggingHandler(logger_provider=provider))
    logger.info("warm-up")
    provider.force_flush(30_000)
    run = new_run()
    sink.reset(run, n)
    start = time.perf_counter()
    app = produce(logger, run, n)
    provider.force_flush(120_000)
    total = time.perf_counter() - start
    status = sink.wait_for(run, n, 2)
    provider.shutdown()
    return {"rate": status["unique"] / total, "app_us": app / n * 1e6, "delivered": status["unique"]}


class LeanReference(logging.Handler):
    """A reference point, not a shipper: the least a batching Datadog shipper can do here.

    The handler appends a tuple; a thread turns 1,000 of them into dicts, one ``orjson.dumps``,
    gzip level 1, and one ``http.client`` POST. No schema (a float timestamp, no session IDs),
    no bounds, retries, spool, masking, fork or exit handling. It shows what "delivered/plain"
    this machine allows for the Datadog body the issue's 0.92 figure was measured with.
    """

    def __init__(self, port: int) -> None:
        super().__init__()
        self.items: list[tuple[float, str, str, str]] = []
        self.port = port
        self.sent = 0
        self.wake = threading.Event()
        self.done = False
        self.thread = threading.Thread(target=self._run, name="lean-reference", daemon=True)
        self.thread.start()

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        self.items.append((record.created, record.levelname, record.name, record.getMessage()))
        if len(self.items) >= 1000:
            self.wake.set()
        return True

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip", "DD-API-KEY": "k"}
        while True:
            self.wake.wait(1.0)
            self.wake.clear()
            items, self.items = self.items, []
            for start in range(0, len(items), 1000):
                chunk = items[start : start + 1000]
                body = orjson.dumps(
                    [
                        {"timestamp": t, "status": level, "logger": name, "message": message, "service": "b"}
                        for t, level, name, message in chunk
                    ]
                )
                connection.request("POST", "/api/v2/logs", zlib.compress(body, 1, wbits=31), headers)
                connection.getresponse().read()
                self.sent += len(chunk)
            if self.done and not self.items:
                return


def bench_lean(sink: Sink, n: int) -> dict[str, Any]:
    handler = LeanReference(sink.port)
    logger = fresh_logger(handler)
    run = new_run()
    sink.reset(run, n)
    start = time.perf_counter()
    app = produce(logger, run, n)
    handler.done = True
    handler.wake.set()
    handler.thread.join(120)
    total = time.perf_counter() - start
    status = sink.wait_for(run, n, 10)
    return {"rate": status["unique"] / total, "app_us": app / n * 1e6, "delivered": status["unique"]}


# --- the cost of one log call on the application's thread ------------------------------------


def bench_call_cost(sink: Sink, bursts: int = 250, burst: int = 200) -> tuple[float, float, float]:
    """CPU µs per log call on the calling thread, plain and ours, in alternating bursts.

    Bursts of ``burst`` calls, plain and ours taking turns (which goes first alternates), so each
    pair meets the same machine: here its speed drifts by tens of percent within seconds, and a
    ratio of two runs taken apart measured that drift more than the log call. Between bursts the
    shipper is flushed (untimed), so a burst measures the log call alone, as a request handler
    logging a few lines would see it, rather than the log call plus the slowdown any busy
    background thread (ours, or the application's own) causes by sharing the GIL. That second
    cost is what the delivered rate above accounts for.

    Returns the plain and our µs per call, and the median of the pairs' ratios.
    """
    from agentuity_logging.shipping import DatadogShipper, ShippingHandler

    shipper = DatadogShipper("bench-key-0123456789", url=sink.url)
    loggers = {
        "plain": fresh_logger(logging.StreamHandler(io.StringIO())),
        "ours": fresh_logger(ShippingHandler(shipper)),
    }
    for logger in loggers.values():
        logger.info("warm-up")
    shipper.flush(30)
    spent = {"plain": 0.0, "ours": 0.0}
    ratios = []
    try:
        with producer_context():
            for b in range(bursts):
                pair = {}
                for kind in ("plain", "ours") if b % 2 else ("ours", "plain"):
                    info = loggers[kind].info
                    start = time.thread_time()
                    for i in range(burst):
                        info("bench-%s-%d user request handled", "cost", b * burst + i)
                    pair[kind] = time.thread_time() - start
                    spent[kind] += pair[kind]
                if pair["plain"] > 0:
                    ratios.append(pair["ours"] / pair["plain"])
                shipper.flush(30)
    finally:
        shipper.close()
    calls = bursts * burst
    return spent["plain"] / calls * 1e6, spent["ours"] / calls * 1e6, statistics.median(ratios)


# --- memory during an outage -----------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_outage(seconds: float, rate: int, *, spool: bool) -> dict[str, Any]:
    """Log ``rate`` records/s for ``seconds`` to a backend that is down, then bring it up."""
    from agentuity_logging.shipping import DatadogShipper, ShippingHandler

    sink = Sink()  # chosen port, not started yet: connections are refused
    with tempfile.TemporaryDirectory() as spool_dir:
        shipper = DatadogShipper(
            "bench-key-0123456789",
            url=sink.url,
            spool_dir=spool_dir if spool else None,
            retry_max_s=1.0,
        )
        logger = fresh_logger(ShippingHandler(shipper))
        run = new_run()
        total = int(seconds * rate)
        samples = []
        gc.collect()
        start = time.monotonic()
        i = 0
        for second in range(int(seconds)):
            for _ in range(rate // 100):
                for _ in range(100):
                    logger.info("bench-%s-%d user request handled", run, i)
                    i += 1
                pause = start + (i / rate) - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            samples.append((second + 1, rss_bytes()))
        stats_down = shipper.stats()
        sink.start(runs=((run, total),))
        try:
            ok = shipper.flush(timeout=600)
            status = sink.wait_for(run, total, 30)
        finally:
            shipper.close()
            sink.stop()
    first_full = samples[min(len(samples) - 1, max(1, len(samples) // 4))][1]
    return {
        "logged": total,
        "rss_mb": [round(b / 2**20, 1) for _, b in samples],
        "rss_growth_after_quarter_mb": round((samples[-1][1] - first_full) / 2**20, 1),
        "dropped_while_down": stats_down["dropped"],
        "spooled_while_down": stats_down["spooled"],
        "delivered_after": status["unique"],
        "duplicates": status["duplicates"],
        "flushed": ok,
    }


# --- instructions (valgrind) -----------------------------------------------------------------


def instructions_child(kind: str, url: str, n: int) -> None:
    """Log ``n`` records through ``kind`` and wait until the sink has them (runs under callgrind)."""
    from agentuity_logging.shipping import DatadogShipper, LokiShipper, ShippingHandler

    shipper = None
    kind, _, backend = kind.partition("-")
    if kind == "plain":
        handler: logging.Handler = logging.StreamHandler(io.StringIO())
    else:
        shipper = (
            DatadogShipper("bench-key-0123456789", url=url)
            if kind == "datadog"
            else LokiShipper(url, encoding="json")
        )
        handler = ShippingHandler(shipper)
    logger = fresh_logger(handler)
    logger.info("warm-up")
    if shipper is not None:
        shipper.flush(30)
    with zlib_gzip() if backend == "zlib" else contextlib.nullcontext():
        produce(logger, "instr", n)
        if shipper is not None:
            assert shipper.flush(120), shipper.stats()
            shipper.close()


def instructions_per_record(sink: Sink, kind: str, n: int) -> tuple[float, float]:
    """Instructions per record: the whole process's, and the application thread's alone."""

    def totals(count: int) -> list[int]:
        return callgrind_by_thread(
            [
                sys.executable,
                __file__,
                "--instructions-child",
                kind,
                sink.url,
                str(count),
                *(["--session"] if IN_SESSION else []),
            ]
        )

    small, large = totals(n), totals(11 * n)
    return (sum(large) - sum(small)) / (10 * n), (large[0] - small[0]) / (10 * n)


def bench_instructions(n: int) -> None:
    sink = Sink()
    sink.start()
    try:
        from agentuity_logging._delivery._protocol import GZIP_BACKEND

        kinds = ["plain", "datadog", "loki"]
        if GZIP_BACKEND != "zlib":
            kinds += ["datadog-zlib", "loki-zlib"]
        counts = {kind: instructions_per_record(sink, kind, n) for kind in kinds}
    finally:
        sink.stop()
    where = "in a session" if IN_SESSION else "outside a session"
    print(f"\ninstructions per record, {where} (callgrind, {n:,} and {11 * n:,} records)")
    print(f"  {'':12} {'whole process':>14} {'plain/this':>11} {'app thread':>11} {'this/plain':>11}")
    plain_total, plain_app = counts["plain"]
    for kind, (total, app) in counts.items():
        print(f"  {kind:12} {total:14,.0f} {plain_total / total:11.2f} {app:11,.0f} {app / plain_app:11.2f}")
    print(
        "  (whole process: plain/this is what the delivered rate tends to; app thread: the log\n"
        "   calls' own thread, worker excluded, against the plain call: the application-thread cost)"
    )


# --- a far-away backend ----------------------------------------------------------------------


def bench_round_trip(n: int, ms: int, rounds: int, in_flight: tuple[int, ...] = (1, 4)) -> None:
    """Delivered records/s when every delivery takes ``ms`` to answer, by ``max_in_flight``."""
    sink = Sink()
    sink.start()
    rates: dict[int, list[float]] = {k: [] for k in in_flight}
    try:
        sink.delay(ms)
        for _ in range(rounds):
            for k in in_flight:
                rates[k].append(bench_ours(sink, n, "datadog", max_in_flight=k)["rate"])
    finally:
        sink.stop()
    print(f"\nDatadog, the sink answering after {ms} ms, {n:,} records per run, {rounds} runs")
    for k, measured in rates.items():
        print(
            f"  max_in_flight={k}: delivered/s median {statistics.median(measured):,.0f} "
            f"({min(measured):,.0f}-{max(measured):,.0f}); one 1,000-entry batch per round trip "
            f"per request in flight allows {k * 1000 / (ms / 1000):,.0f}/s"
        )


# --- driver ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--expect", action="append", default=[], help=argparse.SUPPRESS)
    # The default queue holds 100,000 records: a bigger burst than that is a drop test.
    parser.add_argument("-n", type=int, default=100_000, help="records per throughput run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--full", action="store_true", help="one-minute outage at 10,000 records/s")
    parser.add_argument("--skip-outage", action="store_true")
    parser.add_argument("--instructions", action="store_true", help="instruction counts (valgrind)")
    parser.add_argument("--session", action="store_true", help="log inside a session (records carry IDs)")
    parser.add_argument(
        "--round-trip-ms",
        type=int,
        help="only: Datadog's delivered rate when the sink answers after this long (a far-away backend)",
    )
    parser.add_argument("--instructions-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.session:
        use_sessions()
    if args.sink:
        asyncio.run(_serve_sink(args.sink, args.expect))
        return
    if args.instructions_child:
        kind, url, count = args.instructions_child
        instructions_child(kind, url, int(count))
        return
    if args.instructions:
        bench_instructions(2000)
        return

    if args.round_trip_ms is not None:
        bench_round_trip(args.n, args.round_trip_ms, args.rounds)
        return
    from agentuity_logging._delivery._protocol import GZIP_BACKEND

    sink = Sink()
    sink.start()
    try:
        contenders: dict[str, Callable[[], dict[str, Any]]] = {
            "ours-datadog": lambda: bench_ours(sink, args.n, "datadog"),
            "ours-loki-json": lambda: bench_ours(sink, args.n, "loki"),
            **(
                {
                    "ours-datadog-zlib": lambda: bench_ours(sink, args.n, "datadog", zlib_only=True),
                    "ours-loki-json-zlib": lambda: bench_ours(sink, args.n, "loki", zlib_only=True),
                }
                if GZIP_BACKEND != "zlib"
                else {}
            ),
            "reference-lean-datadog": lambda: bench_lean(sink, args.n),
            "otel-batch": lambda: bench_otel(sink, args.n),
            "logging_loki-LokiQueueHandler": lambda: bench_logging_loki(sink, 2000, True),
            "logging_loki-LokiHandler": lambda: bench_logging_loki(sink, 2000, False),
        }
        # Each contender's run is paired with a plain run just before or after it, and its ratio is
        # taken against that one: the machine's speed drifts by tens of percent within a minute here,
        # so a ratio of two medians taken minutes apart says less than the median of the ratios.
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in ("plain", *contenders)}
        ratios: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for round_no in range(args.rounds):
            # Each round starts one contender later, so none always follows the same one.
            shift = round_no % len(names)
            for name in names[shift:] + names[:shift]:
                run = contenders[name]
                # The plain run goes first in even rounds and second in odd ones, so a drift of the
                # machine's speed within a pair does not always favour the same side.
                measured = {}
                for side in ("plain", name) if round_no % 2 == 0 else (name, "plain"):
                    gc.collect()
                    measured[side] = bench_plain(sink, args.n) if side == "plain" else run()
                results["plain"].append(measured["plain"])
                results[name].append(measured[name])
                ratios[name].append(measured[name]["rate"] / measured["plain"]["rate"])
            print(f"round {round_no + 1}/{args.rounds} done", file=sys.stderr)

        costs = [bench_call_cost(sink) for _ in range(args.rounds)]
    finally:
        sink.stop()

    plain_us = statistics.median(r["app_us"] for r in results["plain"])
    print(f"\nthroughput, {args.rounds} interleaved rounds, {args.n:,} records per run")
    print("vs plain: the median (and range) of each run's rate over the plain run paired with it")
    print(
        f"{'contender':32} {'delivered/s':>11} {'vs plain':>9} {'range':>11} {'producer CPU µs':>16} "
        f"{'vs plain':>9} verified at sink"
    )
    for name, rows in results.items():
        rate = statistics.median(r["rate"] for r in rows)
        app = statistics.median(r["app_us"] for r in rows)
        delivered = min(r["delivered"] for r in rows)
        dups = max(r.get("duplicates", 0) for r in rows)
        spread = ratios.get(name, [1.0])
        print(
            f"{name:32} {rate:11,.0f} {statistics.median(spread):9.2f} "
            f"{min(spread):5.2f}-{max(spread):<5.2f} {app:16.2f} {app / plain_us:9.2f} "
            f"{delivered:,}" + (f" (+{dups} dup)" if dups else "")
        )

    plain_cost = statistics.median(c[0] for c in costs)
    ours_cost = statistics.median(c[1] for c in costs)
    paired = sorted(c[2] for c in costs)
    print("\napplication-thread cost of one log call (CPU, alternating bursts of 200, worker idle meanwhile)")
    print(f"  plain StreamHandler: {plain_cost:.2f} µs   ShippingHandler(Datadog): {ours_cost:.2f} µs")
    middle = statistics.median(paired)
    print(
        f"  ratio, median over rounds of each round's median of paired bursts: {middle:.2f} "
        f"({paired[0]:.2f}-{paired[-1]:.2f})"
    )

    if not args.skip_outage:
        seconds = 60.0 if args.full else 10.0
        for spool in (False, True):
            result = bench_outage(seconds, 10_000, spool=spool)
            label = "with spool" if spool else "memory only"
            print(f"\noutage {seconds:.0f} s at 10,000 records/s, {label}:")
            for key, value in result.items():
                print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
