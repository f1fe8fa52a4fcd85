"""Instructions per log call (valgrind callgrind), for the same variants as bench_core.py.

Wall-clock ratios on a shared machine wander by +-5%; instruction counts do not (the same binary and
inputs give the same total). Each variant runs N and 11N calls in two fresh processes under callgrind;
the difference divided by 10N is the cost of one call, start-up excluded. Needs ``valgrind``
(``apt-get install valgrind``); slow (about a minute), so it is a separate script.

Run: python benchmarks/instructions_core.py
"""

from __future__ import annotations

import shutil
import sys

from _callgrind import callgrind_total

CALLS = 500

VARIANT = r"""
import io, logging, sys, contextvars
import orjson, structlog
import agentuity_logging as al
from agentuity_logging.stdlib import SessionContextFilter, JsonFormatter
from pythonjsonlogger.orjson import OrjsonFormatter

which, n = sys.argv[1], int(sys.argv[2])


class Sink(io.StringIO):
    def isatty(self):
        return False


lg = logging.getLogger("p")
h = logging.StreamHandler(Sink())
lg.addHandler(h)
lg.propagate = False
lg.setLevel(logging.INFO)
var = contextvars.ContextVar("v", default=None)
var.set("sess_x")


class Bare(logging.Filter):
    def filter(self, record):
        record.sid = var.get()
        return True


call = lambda: lg.info("user logged in")
if which == "bare_filter":
    h.addFilter(Bare())
elif which in ("stamping", "json"):
    h.addFilter(SessionContextFilter())
    if which == "json":
        h.setFormatter(JsonFormatter())
elif which in ("configured_plain", "configured_json"):
    # configure()'s own output (its stamper, its filter chain), on this logger alone.
    from agentuity_logging._config import outputs
    al.configure(format="json", stream=Sink())
    (h,) = outputs()
    if which == "configured_plain":
        h.setFormatter(logging.Formatter())
    lg.handlers[:] = [h]
elif which == "pjl_orjson":
    h.setFormatter(OrjsonFormatter())
elif which in ("structlog_bare", "structlog_time", "structlog_kw"):
    extra = [structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    slog = structlog.wrap_logger(
        structlog.BytesLogger(io.BytesIO()),
        processors=[structlog.contextvars.merge_contextvars, *(extra if which == "structlog_time" else []),
                    structlog.processors.JSONRenderer(serializer=orjson.dumps)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    call = lambda: slog.info("user logged in")
    if which == "structlog_kw":
        call = lambda: slog.info("user logged in", user_id=42)
elif which in ("ours_structlog", "ours_structlog_kw"):
    al.configure(format="json", stream=Sink())
    slog = structlog.get_logger("bench")
    call = lambda: slog.info("user logged in")
    if which == "ours_structlog_kw":
        call = lambda: slog.info("user logged in", user_id=42)
elif which == "below_stdlib":
    call = lambda: lg.debug("not shown")
elif which == "below_ours":
    ours = al.get_logger("p")
    call = lambda: ours.debug("not shown")
elif which.startswith("child"):
    # The same ten fields either way: one child holding all ten, or ten nested children with one each.
    h.addFilter(SessionContextFilter())
    ours = al.get_logger("p")
    if which == "child1":
        ours = ours.child(**{f"k{i}": i for i in range(10)})
    else:
        for i in range(10):
            ours = ours.child(**{f"k{i}": i})
    call = lambda: ours.info("user logged in")
with al.session():
    for _ in range(n):
        call()
"""

ROWS = [
    ("A   plain stdlib (default Formatter, StreamHandler)", "plain", "plain"),
    ("    bare context filter", "bare_filter", "plain"),
    ("(a) ours: SessionContextFilter + default Formatter", "stamping", "plain"),
    ("(b) ours: JsonFormatter, session context", "json", "plain"),
    ("(a') configure()'s output, default Formatter", "configured_plain", "plain"),
    ("(b') configure()'s output, JSON", "configured_json", "plain"),
    ("    python-json-logger OrjsonFormatter (no context)", "pjl_orjson", "plain"),
    ("S   structlog merge_contextvars+JSONRenderer(orjson)+BytesLogger", "structlog_bare", "structlog_bare"),
    ("    structlog same + add_log_level + TimeStamper", "structlog_time", "structlog_bare"),
    ("(c) ours: structlog direct path", "ours_structlog", "structlog_bare"),
    ("(c') ours vs structlog with level + timestamp", "ours_structlog", "structlog_time"),
    ("S2  structlog bare pipeline, a keyword field", "structlog_kw", "structlog_kw"),
    ("(c2) ours: structlog direct path, a keyword field", "ours_structlog_kw", "structlog_kw"),
    ("D   stdlib call below level", "below_stdlib", "below_stdlib"),
    ("(d) ours: call below level", "below_ours", "below_stdlib"),
    ("E1  ours: one child with 10 fields", "child1", "child1"),
    ("(e) ours: 10 nested children, 1 field each", "child10", "child1"),
]


def instructions(which: str, n: int) -> int:
    return callgrind_total([sys.executable, "-c", VARIANT, which, str(n)])


def per_call(which: str) -> float:
    return (instructions(which, 11 * CALLS) - instructions(which, CALLS)) / (10 * CALLS)


def main() -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed: apt-get install valgrind")
    cache: dict[str, float] = {}
    print(f"{'variant':66} {'instr/call':>10}  ratio")
    for label, which, base in ROWS:
        for name in (which, base):
            if name not in cache:
                cache[name] = per_call(name)
        print(f"{label:66} {cache[which]:10.0f}  {cache[which] / cache[base]:.3f}")


if __name__ == "__main__":
    main()
