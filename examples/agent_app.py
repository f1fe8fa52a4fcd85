"""A multi-turn agent behind FastAPI: every request a session, every LLM and tool step a span.

Run the server (JSON lines on stderr, every record and span also in the local session store)::

    python examples/agent_app.py                     # http://127.0.0.1:8000
    curl -s -XPOST localhost:8000/chat -H 'content-type: application/json' \
        -d '{"message": "weather in Oslo?"}'

or let it talk to itself over loopback and exit::

    python examples/agent_app.py --self-test
    agentuity-logging session get <the last session ID it prints>

The LLM and the tools are simulated (no network, no model): the point is the timeline they leave. Each
``POST /chat`` is one turn; send the ``x-agentuity-thread-id`` header from the first answer to continue the
conversation (the thread keeps the history in ``thread.state``). The agent notifies a webhook handler over
HTTP with propagation switched on, so the handler's session joins the same thread and names the agent's
session as its caller: one conversation, two components, one query (see docs/integrations.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import threading
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import agentuity_logging as al
from agentuity_logging import current_span, span
from agentuity_logging.integrations import httpx as al_httpx
from agentuity_logging.integrations.asgi import SessionMiddleware
from agentuity_logging.integrations.errors import error_response

SERVICE = "agent-app"
DEFAULT_STORE = os.path.join(".agentuity", "logs.sqlite3")

log = al.get_logger("agent")
planner_log = log.child(component="planner")
tool_log = log.child(component="tool")
webhook_log = al.get_logger("webhooks").child(service="webhook-handler")


class ChatRequest(BaseModel):
    message: str


class RefusedError(Exception):
    """A request the agent will not act on (a handled error: 422 with the session ID)."""


# --- the simulated model and tools ------------------------------------------------------------------


@span("llm.complete", model="sim-1")
async def complete(prompt: str, *, purpose: str) -> str:
    """Pretend to call an LLM: latency, token counts, a deterministic answer."""
    current = current_span()
    await asyncio.sleep(random.uniform(0.01, 0.04))
    tokens_in, tokens_out = len(prompt.split()) * 3, 24
    if current is not None:
        current.set(purpose=purpose, tokensIn=tokens_in, tokensOut=tokens_out)
    log.info("model answered", purpose=purpose, tokensOut=tokens_out)
    if purpose == "plan":
        return "weather,calendar" if "weather" in prompt else "search"
    return f"Here is what I found about {prompt!r}."


async def run_tool(name: str, query: str) -> str:
    """Run one tool inside its own span; the calendar tool is blocking and runs on a worker thread."""
    async with span("tool.run", tool=name):
        tool_log.info("tool started", tool=name)
        if name == "calendar":
            result = await asyncio.to_thread(blocking_calendar_lookup, query)
        else:
            await asyncio.sleep(random.uniform(0.005, 0.02))
            result = f"{name}: ok"
        tool_log.info("tool finished", tool=name)
        return result


def blocking_calendar_lookup(query: str) -> str:
    """A blocking client on a worker thread: asyncio.to_thread carries the session and the span."""
    with span("calendar.query"):
        tool_log.debug("querying calendar", query=query)
        return "calendar: free after 15:00"


# --- the app -----------------------------------------------------------------------------------------


def create_app(webhook_url: str | None = None) -> FastAPI:
    """Build the FastAPI app; ``webhook_url`` is where turn notifications go (this app's own /webhook)."""
    app = FastAPI()
    app.add_middleware(SessionMiddleware)
    state: dict[str, Any] = {"webhook_url": webhook_url}

    @app.post("/chat")
    async def chat(body: ChatRequest) -> dict[str, Any]:
        sess = al.current_session()
        assert sess is not None  # the middleware runs every request in a session
        history: list[str] = sess.thread.state.setdefault("history", [])
        async with span("agent.turn", turn=len(history) + 1):
            if "refund" in body.message:
                raise RefusedError("refunds need a human: ask support")
            if "crash" in body.message:
                raise RuntimeError("simulated bug with internals: /srv/agent/secrets.py")
            plan = await complete(body.message, purpose="plan")
            planner_log.info("plan ready", tools=plan.split(","))
            results = await asyncio.gather(*(run_tool(t, body.message) for t in plan.split(",")))
            answer = await complete(body.message + " " + " ".join(results), purpose="answer")
            history.append(body.message)
            await notify_webhook(state["webhook_url"], len(history))
        return {"answer": answer, "turn": len(history), "sessionId": sess.id}

    @app.post("/webhook")
    async def webhook(request: Request) -> dict[str, Any]:
        payload = await request.json()
        webhook_log.info("turn finished", turn=payload.get("turn"))
        return {"ok": True}

    @app.exception_handler(RefusedError)
    async def refused(request: Request, exc: RefusedError) -> JSONResponse:
        log.warning("request refused", reason=str(exc))
        response: JSONResponse = error_response(exc, status=422).to_starlette()
        return response

    return app


async def notify_webhook(url: str | None, turn: int) -> None:
    """Tell the webhook handler about the turn; the instrumented client sends session and thread."""
    if url is None:
        return
    async with span("webhook.notify"), al_httpx.instrument(httpx.AsyncClient(timeout=5)) as client:
        await client.post(url, json={"turn": turn})


# --- running it --------------------------------------------------------------------------------------


def serve_in_thread(app: FastAPI, sock: socket.socket) -> tuple[uvicorn.Server, threading.Thread]:
    """Start uvicorn on ``sock`` in a thread (log_config=None: our configure() owns logging)."""
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    started = threading.Event()
    for _ in range(500):
        if server.started:
            break
        started.wait(0.01)
    return server, thread


def self_test() -> int:
    """Start the server on a free loopback port, hold a three-turn conversation, and stop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server, thread = serve_in_thread(create_app(webhook_url=f"{base}/webhook"), sock)
    last_session = ""
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            headers: dict[str, str] = {}
            for message in ("weather in Oslo tomorrow?", "and my calendar?", "summarise please"):
                resp = client.post("/chat", json={"message": message}, headers=headers)
                resp.raise_for_status()
                headers["x-agentuity-thread-id"] = resp.headers["x-agentuity-thread-id"]
                last_session = resp.headers["x-agentuity-session-id"]
                print(f"turn {resp.json()['turn']}: session {last_session}")
            refused = client.post("/chat", json={"message": "refund me"}, headers=headers)
            print(f"handled error {refused.status_code}: {refused.json()}")
            crashed = client.post("/chat", json={"message": "crash"}, headers=headers)
            print(f"unhandled error {crashed.status_code}: {crashed.json()}")
        print(f"thread {headers['x-agentuity-thread-id']}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    print(f"inspect the last turn: agentuity-logging session get {last_session}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-test", action="store_true", help="talk to itself over loopback, exit")
    parser.add_argument("--store", default=DEFAULT_STORE, help=f"session store file ({DEFAULT_STORE})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    al.configure(service=SERVICE, format="json", store=args.store)
    if args.self_test:
        return self_test()
    app = create_app(webhook_url=f"http://{args.host}:{args.port}/webhook")
    uvicorn.run(app, host=args.host, port=args.port, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
