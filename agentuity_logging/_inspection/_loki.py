"""``--source loki``: records read back with ``query_range`` and LogQL on structured metadata.

The shipper sends session, thread and span IDs as structured metadata (and keeps them in the JSON line),
so one session is ``{level=~".+"} | agentuitySessionId="sess_…"``: a label filter on the metadata, no
line parsing. ``level`` is a stream label our shipper always sets, which makes ``{level=~".+"}`` the
selector that matches every stream it writes; ``--loki-selector`` narrows it (``{service="checkout"}``).

Loki has no cursor: pages are fetched by re-querying from the last timestamp seen and dropping the
entries already read at that timestamp (as ``logcli`` does), at most 5,000 entries per query.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from agentuity_logging._delivery._protocol import check_url, redact_url
from agentuity_logging._errors import require
from agentuity_logging._inspection._sources import (
    Progress,
    RecordFilter,
    RecordSource,
    SourceError,
    SourceOptions,
    UsageError,
    remote_json,
)
from agentuity_logging._records import SESSION_KEY, SPAN_KEY, THREAD_KEY
from agentuity_logging._storage._logstore import format_us

__all__ = ["LokiSource", "logql"]

#: Loki's default ``max_entries_limit_per_query``.
PAGE_LIMIT: Final = 5000
_QUERY_PATH: Final = "/loki/api/v1/query_range"


def logql(selector: str, what: RecordFilter) -> str:
    """Return the LogQL query for ``what`` (IDs are validated before they get here: no quoting issue)."""
    if what.session_id is not None:
        return f'{selector} | {SESSION_KEY}="{what.session_id}"'
    if what.thread_id is not None:
        return f'{selector} | {THREAD_KEY}="{what.thread_id}"'
    if what.any_session:
        return f'{selector} | {SESSION_KEY}!=""'
    if what.any_thread:
        return f'{selector} | {THREAD_KEY}!=""'
    return selector


def _event(ts_ns: int, line: str, labels: dict[str, Any]) -> dict[str, Any]:
    """The schema dict of one entry: the JSON line, or a minimal record around a plain line."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "message" in data:
        event: dict[str, Any] = data
    else:
        event = {
            "timestamp": format_us(ts_ns // 1000),
            "level": str(labels.get("level", "info")),
            "logger": "",
            "message": line,
        }
    # IDs live in structured metadata too (merged into the stream's labels in answers).
    for key in (SESSION_KEY, THREAD_KEY, SPAN_KEY):
        if key not in event and isinstance(labels.get(key), str):
            event[key] = labels[key]
    event.setdefault("timestamp", format_us(ts_ns // 1000))
    return event


class LokiSource(RecordSource):
    """Reads records from Loki's HTTP API (``--loki-url``, ``--loki-tenant``, ``--loki-user``).

    Raises:
        UsageError: no ``--loki-url`` or a malformed one.
        MissingDependencyError: ``httpx`` is not installed.
    """

    name = "loki"

    def __init__(self, options: SourceOptions) -> None:
        super().__init__(options)
        if not options.loki_url:
            raise UsageError("--source loki needs --loki-url URL (or AGENTUITY_LOKI_URL)")
        try:
            self.base = check_url(options.loki_url, "--loki-url")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        selector = options.loki_selector.strip()
        if not (selector.startswith("{") and selector.endswith("}")):
            raise UsageError(
                f'--loki-selector must be a stream selector like {{service="x"}}, got {selector!r}'
            )
        self.selector = selector
        self.where = redact_url(self.base)
        require("httpx", feature="--source loki", extra="cli")
        import httpx

        headers = {"Accept": "application/json"}
        if options.loki_tenant:
            headers["X-Scope-OrgID"] = options.loki_tenant
        auth = (options.loki_user, options.loki_password or "") if options.loki_user else None
        self._client = httpx.Client(headers=headers, auth=auth, timeout=options.timeout_s)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _get(self, params: dict[str, str]) -> dict[str, Any]:
        answer = remote_json(
            lambda: self._client.get(self.base + _QUERY_PATH, params=params),
            backend="Loki",
            where=self.where,
            refused="the credentials",
            detail=lambda response: _excerpt(response.text),
        )
        if not isinstance(answer, dict) or answer.get("status") != "success":
            raise SourceError(
                f"Loki at {self.where} did not answer success: {_excerpt(orjson.dumps(answer).decode())}"
            )
        return answer

    def fetch(
        self,
        what: RecordFilter,
        start_us: int,
        end_us: int,
        progress: Progress | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Page through ``query_range`` forward in time (start inclusive, end exclusive)."""
        query = logql(self.selector, what)
        start_ns, end_ns = start_us * 1000, end_us * 1000
        records: list[dict[str, Any]] = []
        # Entries already read at the timestamp the next page starts from (logcli's overlap rule).
        at_boundary: set[tuple[str, str]] = set()
        while start_ns < end_ns:
            answer = self._get(
                {
                    "query": query,
                    "start": str(start_ns),
                    "end": str(end_ns),
                    "limit": str(PAGE_LIMIT),
                    "direction": "forward",
                }
            )
            entries: list[tuple[int, str, dict[str, Any]]] = []
            for stream in answer.get("data", {}).get("result", []) or []:
                labels = stream.get("stream") or {}
                entries.extend(
                    (int(value[0]), str(value[1]), labels)
                    for value in stream.get("values") or []
                    if isinstance(value, list) and len(value) >= 2
                )
            entries.sort(key=lambda e: e[0])
            fresh = 0
            for ts_ns, line, labels in entries:
                if ts_ns == start_ns and (str(ts_ns), line) in at_boundary:
                    continue
                records.append(_event(ts_ns, line, labels))
                fresh += 1
            if progress is not None:
                progress(len(records))
            if len(entries) < PAGE_LIMIT or not entries:
                break
            if limit is not None and len(records) >= limit:
                self.partial = f"stopped after {len(records):,} records (narrow the search with --since)"
                break
            last = entries[-1][0]
            if last == start_ns and fresh == 0:
                # More than a page of entries share one nanosecond: Loki cannot page past them.
                self.partial = "more than 5,000 entries share one timestamp; some were skipped"
                start_ns = last + 1
                at_boundary = set()
                continue
            at_boundary = (at_boundary if last == start_ns else set()) | {
                (str(ts), line) for ts, line, _ in entries if ts == last
            }
            start_ns = last
        return records


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text[:300] + ("…" if len(text) > 300 else "")
