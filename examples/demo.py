"""A multi-turn agent, simulated: three requests (sessions) of one conversation (thread).

What it shows, with no network and no cloud:

* one ``configure()`` call: JSON lines on stdout, and every record also kept in the embedded SQLite store
  (``AGENTUITY_LOG_STORE``, else ``./.agentuity/logs.sqlite3``) for ``agentuity-logging session ...``;
* child loggers per component (planner, tool, llm), a third-party library's own stdlib logger and a
  structlog logger, all carrying the same ``agentuitySessionId``/``agentuityThreadId``;
* an asyncio fan-out of tool calls and a thread-pool step that keep the session;
* spans around the LLM and tool steps (the timeline of ``agentuity-logging session get``);
* one handled error whose error response carries the session ID.

Run it: ``python examples/demo.py`` (the README's demo command also reads the store back).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys

import structlog

import agentuity_logging as al
from agentuity_logging.integrations.errors import error_response

log = al.get_logger("agent")
planner = log.child(component="planner")
tool_log = log.child(component="tool")
llm_log = log.child(component="llm")
vendor = logging.getLogger("vendor.search")  # a third-party library, knowing nothing of sessions
events = structlog.get_logger("agent.events")

TURNS = [
    "What is the weather in Lisbon?",
    "And in Porto tomorrow?",
    "Book me a table for two there.",
]


class ToolError(Exception):
    """A tool refused the request (the demo's handled error)."""


def fake_llm(prompt: str) -> str:
    """A deterministic stand-in for a model call."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    return f"plan-{digest}"


async def call_tool(name: str, query: str) -> dict[str, str]:
    """One tool call; the search tool logs through a third-party logger."""
    with al.span(f"tool.{name}", query=query):
        await asyncio.sleep(0.01)
        vendor.info("GET /search q=%s", query)
        if name == "booking":
            raise ToolError("no table available for two at 20:00")
        tool_log.info("tool finished", tool=name)
        return {"tool": name, "result": f"{name}:{query}"}


def summarise(results: list[dict[str, str]]) -> str:
    """A CPU-bound step run on a worker thread, still inside the session."""
    llm_log.info("summarising on a worker thread", results=len(results))
    return "; ".join(r["result"] for r in results)


async def handle_turn(turn: int, text: str, thread_id: str | None, pool: al.ContextThreadPoolExecutor) -> str:
    """One request: a session joining the conversation's thread."""
    async with al.session(thread_id=thread_id, metadata={"turn": turn, "channel": "demo"}) as s:
        s.thread.metadata.setdefault("user", "demo-user")
        history = s.thread.state.get("history", [])
        planner.info("turn received", turn=turn, chars=len(text), history=len(history))
        with al.span("llm.plan", model="demo-model"):
            plan = fake_llm(text)
            llm_log.info("plan ready", plan=plan)
        tools = ["weather", "search"] if turn < 3 else ["search", "booking"]
        try:
            with al.span("tools.fanout", tools=tools):
                results = await asyncio.gather(*(call_tool(name, text) for name in tools))
        except ToolError as err:
            log.exception("tool failed", tool="booking")
            response = error_response(err, status=409)
            events.warning("answered with an error", status=response.status)
            print(json.dumps(response.body), file=sys.stderr)
            return s.thread.id
        loop = asyncio.get_running_loop()
        summary = await loop.run_in_executor(pool, summarise, list(results))
        s.thread.state["history"] = [*history, summary]
        events.info("turn answered", turn=turn, tools=len(results))
        return s.thread.id


async def conversation() -> None:
    thread_id: str | None = None
    with al.ContextThreadPoolExecutor(max_workers=2) as pool:
        for turn, text in enumerate(TURNS, start=1):
            thread_id = await handle_turn(turn, text, thread_id, pool)


def main() -> None:
    al.configure(format="json", stream=sys.stdout, service="demo-agent", store=True)
    asyncio.run(conversation())
    al.shutdown()


if __name__ == "__main__":
    main()
