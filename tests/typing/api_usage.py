"""User-style code that mypy --strict checks: it breaks when the public API's types drift.

Not collected by pytest (no test functions); checked by ``mypy`` as part of the test command.
"""

from __future__ import annotations

import asyncio
import logging

import agentuity_logging as al
from agentuity_logging.stdlib import ConsoleFormatter, JsonFormatter, SessionContextFilter
from agentuity_logging.testing import capture_logs

al.configure(level="INFO", format="json", service="svc")
log: al.Logger = al.get_logger("planner", component="planner")
child: al.Logger = log.child(step=1)
child.info("hello %s", "world", user="u1")
child.info("seed style", {"sessionId": "x"})
enabled: bool = child.isEnabledFor(logging.DEBUG)

with al.session(metadata={"route": "/chat"}) as s:
    sid: str = s.id
    tid: str = s.thread.id
    s.state.set("k", 1)
    value: object = s.state.get("k")
    maybe: str | None = al.session_id()
    meta: dict[str, str] = al.external_metadata()
    with al.bound(user="u1"), al.span("llm.call", model="m") as sp:
        span_id: str = sp.id


@al.session()
def handle(x: int) -> str:
    return str(x)


@al.session()
async def handle_async(x: int) -> int:
    return x


result: str = handle(1)
number: int = asyncio.run(handle_async(2))
run_in_pool = al.wrap(lambda: al.session_id())
with al.ContextThreadPoolExecutor(max_workers=1) as pool:
    future_id: str | None = pool.submit(al.session_id).result()

handler = logging.StreamHandler()
handler.addFilter(SessionContextFilter())
handler.setFormatter(JsonFormatter(service="svc"))
handler.setFormatter(ConsoleFormatter(colors=False))
config: dict[str, object] = al.logging_config(format="json")

with capture_logs() as entries:
    log.info("captured")
first: dict[str, object] = entries[0]
