"""Per-call cost of the core against the stdlib and the peers, measured interleaved in one run.

Baseline A is a plain stdlib call: a logger at INFO, ``logging.Formatter()`` (the default), a
``StreamHandler`` on an in-memory stream. Every other variant is printed as a ratio to A measured in the
same rounds, so a noisy shared machine moves numerator and denominator together.

Targets (issue 2): (a) stamping (configure()'s filter) + default formatter <= 1.06 A; (b) a JSON
line with session context through our JsonFormatter <= 1.20 A; (c) our structlog path <= 1.10 of
structlog's own merge_contextvars + JSONRenderer(orjson) + BytesLogger; (d) a call below the level
through our logger
<= 1.5 of the same stdlib call; (e) a child nested 10 deep within 5% of depth 1.

Run: python benchmarks/bench_core.py [--rounds 15] [--calls 20000]
"""

from __future__ import annotations

import argparse
import contextvars
import io
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from pythonjsonlogger.json import JsonFormatter as PjlJsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter as PjlOrjsonFormatter

import agentuity_logging as al
from agentuity_logging._config import outputs, unconfigure
from agentuity_logging._formatting import StreamOutput
from agentuity_logging._stamping import SessionContextFilter, install_record_factory, uninstall_record_factory
from agentuity_logging.stdlib import JsonFormatter

Setup = Callable[[], tuple[Callable[[], None], Callable[[], None]]]


class Sink(io.StringIO):
    def isatty(self) -> bool:
        return False


def _stdlib_logger(
    name: str, formatter: logging.Formatter, *filters: Any
) -> tuple[logging.Logger, logging.StreamHandler[Any]]:
    handler = logging.StreamHandler(Sink())
    handler.setFormatter(formatter)
    for f in filters:
        handler.addFilter(f)
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def _reset(handler: Any) -> Callable[[], None]:
    """Give the handler a fresh in-memory stream before each round.

    A fresh StringIO, not ``seek(0); truncate()``: after a truncate, StringIO copies every write into
    a UCS-4 buffer (about 4 ns per character here), which would penalise longer JSON lines for a
    reason no real file or pipe has.
    """

    def reset() -> None:
        handler.stream = Sink()

    return reset


def plain() -> tuple[Callable[[], None], Callable[[], None]]:
    logger, handler = _stdlib_logger("bench.plain", logging.Formatter())
    return (lambda: logger.info("user logged in")), _reset(handler)


def bare_context_filter() -> tuple[Callable[[], None], Callable[[], None]]:
    """The reference point the issue names: a minimal contextvar filter, ~1.05 A."""
    var: contextvars.ContextVar[str | None] = contextvars.ContextVar("bench_sid", default=None)
    var.set("sess_x")

    class Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.sid = var.get()
            return True

    logger, handler = _stdlib_logger("bench.barefilter", logging.Formatter(), Filter())
    return (lambda: logger.info("user logged in")), _reset(handler)


def ours_stamping_factory() -> tuple[Callable[[], None], Callable[[], None]]:
    logger, handler = _stdlib_logger("bench.stamp", logging.Formatter())
    return (lambda: logger.info("user logged in")), _reset(handler)


def ours_stamping_filter() -> tuple[Callable[[], None], Callable[[], None]]:
    logger, handler = _stdlib_logger("bench.stampfilter", logging.Formatter(), SessionContextFilter())
    return (lambda: logger.info("user logged in")), _reset(handler)


def ours_json() -> tuple[Callable[[], None], Callable[[], None]]:
    logger, handler = _stdlib_logger("bench.json", JsonFormatter(), SessionContextFilter())
    return (lambda: logger.info("user logged in")), _reset(handler)


def _configured_output(
    name: str, formatter: logging.Formatter
) -> tuple[Callable[[], None], Callable[[], None]]:
    """configure()'s own output, built as configure() builds it, alone on one logger."""
    output = StreamOutput(Sink(), formatter)
    output.stamper = SessionContextFilter()
    logger = logging.getLogger(name)
    logger.handlers[:] = [output]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return (lambda: logger.info("user logged in")), _reset(output)


def configured_plain() -> tuple[Callable[[], None], Callable[[], None]]:
    return _configured_output("bench.configured.plain", logging.Formatter())


def configured_json() -> tuple[Callable[[], None], Callable[[], None]]:
    return _configured_output("bench.configured.json", JsonFormatter())


def pjl_json() -> tuple[Callable[[], None], Callable[[], None]]:
    logger, handler = _stdlib_logger("bench.pjl", PjlJsonFormatter())
    return (lambda: logger.info("user logged in")), _reset(handler)


def pjl_orjson() -> tuple[Callable[[], None], Callable[[], None]]:
    logger, handler = _stdlib_logger("bench.pjlorjson", PjlOrjsonFormatter())
    return (lambda: logger.info("user logged in")), _reset(handler)


def _structlog_pipeline(*extra: Any, **fields: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    bytes_logger = structlog.BytesLogger(io.BytesIO())
    logger = structlog.wrap_logger(
        bytes_logger,
        processors=[
            structlog.contextvars.merge_contextvars,
            *extra,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )

    def reset() -> None:
        out = io.BytesIO()
        bytes_logger._file = out
        bytes_logger._write = out.write
        bytes_logger._flush = out.flush

    if fields:  # a separate lambda: unpacking an empty dict would slow the baseline down
        return (lambda: logger.info("user logged in", **fields)), reset
    return (lambda: logger.info("user logged in")), reset


def structlog_keyword() -> tuple[Callable[[], None], Callable[[], None]]:
    """The peer pipeline with a keyword field on the call."""
    return _structlog_pipeline(user_id=42)


def structlog_baseline() -> tuple[Callable[[], None], Callable[[], None]]:
    """The peer the issue names: merge_contextvars + JSONRenderer(orjson) + BytesLogger."""
    return _structlog_pipeline()


def structlog_with_ids() -> tuple[Callable[[], None], Callable[[], None]]:
    """The peer pipeline carrying what our line carries: a level, an ISO timestamp and the session
    IDs bound once with structlog's own ``bind_contextvars`` (how a structlog user would add them).

    The IDs are bound in a context of this variant's own (one ``Context.run`` per call, ~0.1 µs), so
    the other structlog variants keep their empty contextvars.
    """
    call, reset = _structlog_pipeline(
        structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)
    )
    current = al.current_session()
    assert current is not None, "run inside the benchmark's session"
    context = contextvars.copy_context()
    context.run(
        structlog.contextvars.bind_contextvars,
        agentuitySessionId=current.id,
        agentuityThreadId=current.thread.id,
    )
    run = context.run
    return (lambda: run(call)), reset


def structlog_with_time() -> tuple[Callable[[], None], Callable[[], None]]:
    """The same with a level and an ISO timestamp, which our schema always carries."""
    return _structlog_pipeline(
        structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)
    )


def _reset_configured(*, binary: bool = False) -> Callable[[], None]:
    """A fresh stream for configure()'s output before each round.

    Looked up when the round starts: every structlog variant shares the output of the last
    configure() call, so each one sets the stream it measures (text, or bytes like BytesLogger's).
    """

    def reset() -> None:
        outputs()[0].stream = io.BytesIO() if binary else Sink()

    return reset


def ours_structlog() -> tuple[Callable[[], None], Callable[[], None]]:
    al.configure(format="json", stream=Sink(), level="INFO")
    logger = structlog.get_logger("bench")
    return (lambda: logger.info("user logged in")), _reset_configured()


def ours_structlog_binary() -> tuple[Callable[[], None], Callable[[], None]]:
    al.configure(format="json", stream=Sink(), level="INFO")
    logger = structlog.get_logger("bench")
    return (lambda: logger.info("user logged in")), _reset_configured(binary=True)


def ours_structlog_bound_elsewhere() -> tuple[Callable[[], None], Callable[[], None]]:
    """The direct path once bind_contextvars was used in some other context (another request).

    structlog's registry then holds those names for good, and our path asks each of them whether
    it is bound here; the peer scans the current context instead, so it does not pay for them.
    """
    al.configure(format="json", stream=Sink(), level="INFO")
    logger = structlog.get_logger("bench")
    contextvars.copy_context().run(structlog.contextvars.bind_contextvars, request_id="r-1", user="u-1")
    return (lambda: logger.info("user logged in")), _reset_configured(binary=True)


def ours_structlog_keyword() -> tuple[Callable[[], None], Callable[[], None]]:
    al.configure(format="json", stream=Sink(), level="INFO")
    logger = structlog.get_logger("bench")
    return (lambda: logger.info("user logged in", user_id=42)), _reset_configured()


def stdlib_below_level() -> tuple[Callable[[], None], Callable[[], None]]:
    logger, _ = _stdlib_logger("bench.below.std", logging.Formatter())
    return (lambda: logger.debug("not shown")), lambda: None


def ours_below_level() -> tuple[Callable[[], None], Callable[[], None]]:
    _stdlib_logger("bench.below.ours", logging.Formatter())
    logger = al.get_logger("bench.below.ours")
    return (lambda: logger.debug("not shown")), lambda: None


def ours_child(depth: int) -> Setup:
    """Ten fields either way: one child holding all ten (depth 1) or ten nested children."""

    def setup() -> tuple[Callable[[], None], Callable[[], None]]:
        _, handler = _stdlib_logger(f"bench.child{depth}", logging.Formatter(), SessionContextFilter())
        logger = al.get_logger(f"bench.child{depth}")
        if depth == 1:
            logger = logger.child(**{f"k{i}": i for i in range(10)})
        else:
            for i in range(depth):
                logger = logger.child(**{f"k{i}": i})
        return (lambda: logger.info("user logged in")), _reset(handler)

    return setup


def import_time_ms() -> tuple[float, float]:
    def run(code: str) -> float:
        samples = []
        for _ in range(7):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            samples.append(time.perf_counter() - start)
        return statistics.median(samples) * 1000

    return run("import logging"), run("import agentuity_logging")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calls", type=int, default=5_000)
    args = parser.parse_args()

    # Everything runs inside one session, so stamping really copies IDs onto each record.
    session = al.session()
    session.__enter__()
    try:
        variants: dict[str, Setup] = {
            "A  plain stdlib": plain,
            "   bare context filter": bare_context_filter,
            "(a) ours: stamping (configure's filter) + default Formatter": ours_stamping_filter,
            "    ours: stamping (stamp_all_records factory) + default Formatter": ours_stamping_factory,
            "(b) ours: JsonFormatter, session context": ours_json,
            "(a') configure()'s output, default Formatter": configured_plain,
            "(b') configure()'s output, JSON": configured_json,
            "    python-json-logger JsonFormatter": pjl_json,
            "    python-json-logger OrjsonFormatter": pjl_orjson,
            "S  structlog merge_contextvars+JSONRenderer(orjson)+BytesLogger": structlog_baseline,
            "   structlog same + add_log_level + TimeStamper(iso, utc)": structlog_with_time,
            "   structlog same + the session IDs bound with bind_contextvars": structlog_with_ids,
            "(c) ours: structlog direct path": ours_structlog,
            "(c) ours: structlog direct path, a binary stream": ours_structlog_binary,
            "    ours: the same, names bound with bind_contextvars elsewhere": ours_structlog_bound_elsewhere,
            "S2 structlog bare pipeline, a keyword field": structlog_keyword,
            "(c2) ours: structlog direct path, a keyword field": ours_structlog_keyword,
            "D  stdlib call below level": stdlib_below_level,
            "(d) ours: call below level": ours_below_level,
            "E1 ours: one child, 10 fields": ours_child(1),
            "(e) ours: 10 nested children, 1 field each": ours_child(10),
        }
        # The plain, pjl and structlog-baseline variants must not be stamped: measure them without the
        # record factory, and ours with it, in alternating rounds of the same run.
        with_factory = {"    ours: stamping (stamp_all_records factory) + default Formatter"}
        prepared = {name: setup() for name, setup in variants.items()}
        # structlog's registry of the names ever bound with bind_contextvars only grows, so binding in
        # one variant would tax the others: it is emptied for every variant but the one that needs it
        # (merge_contextvars scans the context, not the registry, so the peers never read it).
        registry: dict[str, Any] = structlog.contextvars._CONTEXT_VARS
        registered = dict(registry)
        with_registry = {"    ours: the same, names bound with bind_contextvars elsewhere"}
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (call, reset) in prepared.items():
                if name in with_factory:
                    install_record_factory()
                else:
                    uninstall_record_factory()
                registry.clear()
                if name in with_registry:
                    registry.update(registered)
                reset()
                start = time.perf_counter()
                for _ in range(args.calls):
                    call()
                times[name].append((time.perf_counter() - start) / args.calls)
    finally:
        session.__exit__(None, None, None)
        unconfigure()
        uninstall_record_factory()

    # Each variant's ratio is computed per round against its baseline measured in the same round, then
    # the median over rounds is printed: drift in machine speed cancels out within a round.
    def base_of(name: str) -> str:
        if name.startswith(("(c2)", "S2")):
            return "S2 structlog bare pipeline, a keyword field"
        if name.startswith(("(c)", "S")) or name.strip().startswith("structlog") or name in with_registry:
            return "S  structlog merge_contextvars+JSONRenderer(orjson)+BytesLogger"
        if name.startswith(("(d)", "D ")):
            return "D  stdlib call below level"
        if name.startswith(("(e)", "E1")):
            return "E1 ours: one child, 10 fields"
        return "A  plain stdlib"

    print(f"{'variant':66} {'ns/call':>9}  ratio (median of per-round ratios)")
    for name, values in times.items():
        base = base_of(name)
        ratios = [v / b for v, b in zip(values, times[base], strict=True)]
        print(
            f"{name:66} {statistics.median(values) * 1e9:9.0f}  {statistics.median(ratios):.3f} "
            f"{base.split()[0]}"
        )
    std_ms, ours_ms = import_time_ms()
    print(
        f"\nimport time: python -c 'import logging' {std_ms:.1f} ms, "
        f"'import agentuity_logging' {ours_ms:.1f} ms (+{ours_ms - std_ms:.1f} ms)"
    )


if __name__ == "__main__":
    main()
