"""``--source datadog``: records read back with the logs search API v2.

``POST https://api.<site>/api/v2/logs/events/search`` with ``DD-API-KEY`` and ``DD-APPLICATION-KEY``
(``DD_API_KEY``, ``DD_APP_KEY``, ``DD_SITE``); one session is ``@agentuitySessionId:"sess_…"`` (the
shipper sends IDs as attributes, never tags). Pages of at most 1,000 follow ``meta.page.after``; a
``meta.status`` of ``timeout`` or any ``meta.warnings`` means Datadog answered with part of the data,
which the CLI says on stderr.

Datadog keeps what the intake reserves (``message``, ``status``, ``service``, ``hostname``, the
timestamp) at the top of each answer and every other key under ``attributes.attributes``: the record is
rebuilt in the log schema from both (timestamps have millisecond precision there).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Final

import orjson

from agentuity_logging._delivery._datadog import DATADOG_SITES
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
from agentuity_logging._storage._logstore import format_us, parse_timestamp_us

__all__ = ["DatadogSource", "search_query"]

#: The search API's largest page.
PAGE_LIMIT: Final = 1000
_SEARCH_PATH: Final = "/api/v2/logs/events/search"
# Keys the intake protocol adds to each entry; they are not part of our records.
_INTAKE_KEYS: Final = frozenset({"ddsource", "ddtags", "hostname", "status", "dd"})


def search_query(what: RecordFilter) -> str:
    """Return the search query for ``what`` (values quoted: IDs may contain ``-``)."""
    if what.session_id is not None:
        return f'@{SESSION_KEY}:"{what.session_id}"'
    if what.thread_id is not None:
        return f'@{THREAD_KEY}:"{what.thread_id}"'
    if what.any_session:
        return f"@{SESSION_KEY}:*"
    if what.any_thread:
        return f"@{THREAD_KEY}:*"
    return "*"


def _iso_ms(ts_us: int) -> str:
    moment = datetime.fromtimestamp(ts_us / 1_000_000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _event(item: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the schema dict from one ``data[]`` item."""
    top = item.get("attributes") or {}
    custom = top.get("attributes") or {}
    ts = parse_timestamp_us(custom.get("timestamp")) or parse_timestamp_us(top.get("timestamp"))
    event: dict[str, Any] = {
        "timestamp": format_us(ts) if ts is not None else top.get("timestamp"),
        "level": str(custom.get("level") or top.get("status") or "info"),
        "logger": str(custom.get("logger") or ""),
        "message": str(top.get("message") if top.get("message") is not None else custom.get("message", "")),
    }
    if isinstance(custom.get(SESSION_KEY), str):
        event[SESSION_KEY] = custom[SESSION_KEY]
        event[THREAD_KEY] = custom.get(THREAD_KEY)
    if custom.get(SPAN_KEY) is not None:
        event[SPAN_KEY] = custom[SPAN_KEY]
    if top.get("service") is not None and "service" not in custom:
        event["service"] = top["service"]
    for key, value in custom.items():
        if key in event or key in _INTAKE_KEYS or key in ("timestamp", "level", "logger", "message"):
            continue
        event[key] = value
    return event


class DatadogSource(RecordSource):
    """Reads records from Datadog's logs search API.

    Raises:
        UsageError: ``DD_API_KEY``/``DD_APP_KEY`` missing, an unknown ``DD_SITE`` or a bad ``--dd-url``.
        MissingDependencyError: ``httpx`` is not installed.
    """

    name = "datadog"

    def __init__(self, options: SourceOptions) -> None:
        super().__init__(options)
        if not options.dd_api_key or not options.dd_app_key:
            raise UsageError(
                "--source datadog needs DD_API_KEY and DD_APP_KEY (an application key with logs_read_data)"
            )
        if options.dd_url:
            try:
                self.base = check_url(options.dd_url, "--dd-url")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        else:
            if options.dd_site not in DATADOG_SITES:
                raise UsageError(
                    f"unknown Datadog site {options.dd_site!r} (DD_SITE / --dd-site); expected one of: "
                    + ", ".join(DATADOG_SITES)
                )
            self.base = f"https://api.{options.dd_site}"
        self.where = redact_url(self.base)
        require("httpx", feature="--source datadog", extra="cli")
        import httpx

        self._client = httpx.Client(
            headers={
                "DD-API-KEY": options.dd_api_key,
                "DD-APPLICATION-KEY": options.dd_app_key,
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
            timeout=options.timeout_s,
        )

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = remote_json(
            lambda: self._client.post(self.base + _SEARCH_PATH, content=orjson.dumps(body)),
            backend="Datadog",
            where=self.where,
            refused="the API or application key",
            detail=lambda response: _errors(response.content),
        )
        if not isinstance(answer, dict):
            raise SourceError(f"Datadog at {self.where} answered with an unexpected document")
        return answer

    def fetch(
        self,
        what: RecordFilter,
        start_us: int,
        end_us: int,
        progress: Progress | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Follow ``meta.page.after`` cursors until the last page."""
        body: dict[str, Any] = {
            "filter": {
                "query": search_query(what),
                "from": _iso_ms(start_us),
                "to": _iso_ms(end_us),
                "indexes": ["*"],
            },
            "sort": "timestamp",
            "page": {"limit": PAGE_LIMIT},
        }
        records: list[dict[str, Any]] = []
        while True:
            answer = self._post(body)
            records.extend(_event(item) for item in answer.get("data") or [] if isinstance(item, dict))
            meta = answer.get("meta") or {}
            if meta.get("status") == "timeout" or meta.get("warnings"):
                warnings = meta.get("warnings") or []
                detail = "; ".join(
                    str(w.get("title") or w.get("detail") or w) if isinstance(w, dict) else str(w)
                    for w in warnings
                )
                self.partial = "Datadog answered with partial results" + (
                    f" ({detail})" if detail else " (the search timed out)"
                )
            if progress is not None:
                progress(len(records))
            cursor = (meta.get("page") or {}).get("after")
            if not cursor:
                break
            if limit is not None and len(records) >= limit:
                self.partial = f"stopped after {len(records):,} records (narrow the search with --since)"
                break
            body["page"] = {"limit": PAGE_LIMIT, "cursor": cursor}
        return records


def _errors(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = " ".join(body.decode("utf-8", "replace").split())
        return text[:300]
    errors = data.get("errors") if isinstance(data, dict) else None
    if isinstance(errors, list) and errors:
        parts = []
        for error in errors:
            if isinstance(error, dict):
                parts.append(": ".join(str(error[k]) for k in ("title", "detail") if error.get(k)))
            else:
                parts.append(str(error))
        return "; ".join(p for p in parts if p)[:300]
    return body.decode("utf-8", "replace")[:300]
