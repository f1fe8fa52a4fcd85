"""Fill a session log store (and optionally Loki and Datadog) the way an application does.

``python -m tests.inspection.fill_store PATH [--loki URL] [--datadog URL --dd-api-key KEY]`` runs a
small multi-turn agent through the public logging API (sessions with metadata, a thread across turns,
nested spans, stdlib and structlog records, a failing turn, a record outside any session), writing to
the store at PATH and shipping the same records to the given backends. It prints a JSON manifest of
what it did on stdout: session IDs in order, the failed one, both threads.

The CLI tests use ``examples/demo.py`` for the local store; this script covers what the demo cannot:
a session that fails (the demo handles its error), and shipping the same run to the fake Loki *and*
the fake Datadog (the environment has no Datadog URL override for ``configure()``'s shippers).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import logging
import sys
from typing import Any

import orjson
import structlog

import agentuity_logging as al
from agentuity_logging._context import add_session_listener
from agentuity_logging._formatting import EventHandler
from agentuity_logging._spans import span
from agentuity_logging._storage._logstore import LogStoreHandler


class ToolError(RuntimeError):
    """A simulated tool failure."""


def turn(log: al.Logger, thread_id: str | None, number: int, ids: list[str], *, fail: bool = False) -> str:
    """One request of the conversation: plan, call the model, run a tool. Returns the thread ID."""
    planner = structlog.get_logger("agent.planner")
    metadata = {"user": "u1", "turn": number, "vip": number == 1}
    with al.session(thread_id=thread_id, metadata=metadata) as s:
        ids.append(s.id)
        s.thread.metadata["customer"] = "acme"
        log.info("turn started", turn=number)
        with span("plan", steps=2):
            planner.info("planning", options=["search", "answer"])
            with span("llm.call", model="sim-1") as llm:
                log.debug("prompt built", tokens=120 + number)
                llm.set(output_tokens=42)
            log.info("plan ready")
        with span("tool.search", query=f"q{number}"):
            if fail:
                log.warning("search backend slow", latency_ms=2500)
                raise ToolError("search backend timed out")
            log.info("found results", hits=3)
        log.info("turn finished")
        return s.thread.id


def main() -> None:
    """Run the simulation; see the module docstring for the arguments."""
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--loki")
    parser.add_argument("--datadog")
    parser.add_argument("--dd-api-key")
    args = parser.parse_args()

    outputs: list[EventHandler] = []
    shippers: list[Any] = []
    if args.loki or args.datadog:
        from agentuity_logging.shipping import DatadogShipper, LokiShipper, ShippingHandler

        if args.loki:
            shippers.append(LokiShipper(args.loki, service="fill"))
        if args.datadog:
            shippers.append(DatadogShipper(args.dd_api_key, url=args.datadog, service="fill"))
        outputs.extend(ShippingHandler(s) for s in shippers)
    store_handler: LogStoreHandler | None = None
    if "store" in inspect.signature(al.configure).parameters:
        al.configure(level="debug", format="json", stream=io.StringIO(), handlers=outputs, store=args.store)
    else:
        store_handler = LogStoreHandler(args.store)
        add_session_listener(store_handler)
        al.configure(level="debug", format="json", stream=io.StringIO(), handlers=[store_handler, *outputs])

    log = al.get_logger("agent")
    ids: list[str] = []
    thread_a = turn(log, None, 1, ids)
    turn(log, thread_a, 2, ids)
    with contextlib.suppress(ToolError):
        turn(log, thread_a, 3, ids, fail=True)
    with al.session(metadata={"user": "u2"}) as other:
        log.warning("rate limited", retry_in_s=1)
        logging.getLogger("third.party").error("upstream said 500")
    log.info("outside any session")

    for shipper in shippers:
        if not shipper.flush(10):
            raise SystemExit(f"{shipper!r} did not flush: {shipper.stats()}")
        shipper.close()
    if store_handler is not None:
        store_handler.close()
    manifest = {
        "sessions": [*ids, other.id],
        "failed": ids[2],
        "other": other.id,
        "thread_a": thread_a,
        "thread_b": other.thread.id,
    }
    sys.stdout.write(orjson.dumps(manifest).decode() + "\n")


if __name__ == "__main__":
    main()
