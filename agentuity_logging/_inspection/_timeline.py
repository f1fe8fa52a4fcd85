"""A session's timeline: its spans as a waterfall, its log records placed on it.

:func:`timeline_rows` lays the session out once (spans nested under their parents, each record under the
span it was logged in, everything in time order); :func:`render_text` draws the rows for a terminal
(rich, coloured) or a pipe (plain ASCII), and :func:`render_html` writes a self-contained HTML page with
an SVG waterfall (no scripts, no external files; every value is escaped).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from agentuity_logging._formatting import escape_control
from agentuity_logging._storage._logstore import LEVEL_NUMBERS, parse_timestamp_us

__all__ = ["Row", "Timeline", "render_html", "render_text", "timeline_rows"]

_LEVEL_COLORS: Final = {
    "debug": "#8a8f98",
    "info": "#2f9e44",
    "warning": "#e8a317",
    "error": "#e03131",
    "critical": "#a61e4d",
}
_LEVEL_STYLES: Final = {
    "debug": "dim",
    "info": "green",
    "warning": "yellow",
    "error": "red",
    "critical": "bold red",
}


@dataclass
class Row:
    """One line of the waterfall: the session, a span, or a record (``kind``)."""

    kind: str  # "session" | "span" | "event"
    label: str
    depth: int
    start_us: int
    end_us: int
    status: str  # spans and the session: "ok" | "error" | "running"; records: their level
    detail: str = ""
    children: list[Row] = field(default_factory=list)


@dataclass
class Timeline:
    """The laid-out session: its time range and rows in drawing order."""

    start_us: int
    end_us: int
    rows: list[Row]
    hidden: int = 0

    @property
    def span_us(self) -> int:
        """The drawn duration (at least one microsecond)."""
        return max(1, self.end_us - self.start_us)


def _ms(us: float) -> str:
    ms = us / 1000.0
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.1f} ms"


def timeline_rows(session: Mapping[str, Any], max_rows: int = 200) -> Timeline | None:
    """Lay out ``session`` (a ``session get`` document); ``None`` when it has no spans and no records."""
    spans: Sequence[Mapping[str, Any]] = session.get("spans") or []
    events: Sequence[Mapping[str, Any]] = session.get("events") or []
    if not spans and not events:
        return None
    times: list[int] = []
    for item in (*spans, *events):
        for key in ("start", "end", "timestamp"):
            ts = parse_timestamp_us(item.get(key))
            if ts is not None:
                times.append(ts)
    for key in ("startedAt", "endedAt"):
        ts = parse_timestamp_us(session.get(key))
        if ts is not None:
            times.append(ts)
    if not times:
        return None
    start, end = min(times), max(times)
    ended = session.get("endedAt") is not None
    success = session.get("success")
    root = Row(
        "session",
        "session",
        0,
        start,
        end,
        "running" if not ended else ("ok" if success is not False else "error"),
        _ms(end - start),
    )
    nodes: dict[str, Row] = {}
    for sp in spans:
        s0 = parse_timestamp_us(sp.get("start")) or start
        s1 = parse_timestamp_us(sp.get("end")) or s0
        duration = sp.get("durationMs")
        detail = _ms(float(duration) * 1000) if isinstance(duration, (int, float)) else _ms(s1 - s0)
        status = str(sp.get("status") or "ok")
        if status == "error" and isinstance(sp.get("error"), Mapping):
            detail += f" {str(sp['error'].get('type')).rsplit('.', 1)[-1]}"
        row = Row("span", escape_control(str(sp.get("name") or "span")), 0, s0, s1, status, detail)
        span_id = sp.get("spanId")
        if isinstance(span_id, str):
            nodes[span_id] = row
    for sp in spans:
        span_id, parent = sp.get("spanId"), sp.get("parentSpanId")
        if not isinstance(span_id, str) or span_id not in nodes:
            continue
        owner = nodes.get(parent) if isinstance(parent, str) else None
        (owner or root).children.append(nodes[span_id])
    for ev in events:
        ts = parse_timestamp_us(ev.get("timestamp")) or start
        level = str(ev.get("level") or "info")
        if ev.get("logger") == "agentuity_logging.span":
            continue  # the span's own record: already drawn as its bar
        message = escape_control(str(ev.get("message") or ""))
        row = Row("event", message, 0, ts, ts, level, f"+{_ms(ts - start)}")
        owner = nodes.get(ev["spanId"]) if isinstance(ev.get("spanId"), str) else None
        (owner or root).children.append(row)
    rows: list[Row] = []

    def walk(node: Row, depth: int) -> None:
        node.depth = depth
        rows.append(node)
        # Spans and records in time order; a span before the records that start with it.
        for child in sorted(node.children, key=lambda r: (r.start_us, r.kind != "span")):
            walk(child, depth + 1)

    walk(root, 0)
    hidden = max(0, len(rows) - max_rows)
    return Timeline(start, end, rows[:max_rows], hidden)


def _bar(timeline: Timeline, row: Row, width: int) -> tuple[int, int]:
    scale = width / timeline.span_us
    a = int((row.start_us - timeline.start_us) * scale)
    a = min(max(a, 0), width - 1)
    if row.kind == "event":
        return a, a + 1
    b = round((row.end_us - timeline.start_us) * scale)
    return a, min(max(b, a + 1), width)


def _marker(level: str) -> str:
    number = LEVEL_NUMBERS.get(level, 20)
    if number >= 40:
        return "E"
    if number >= 30:
        return "!"
    return "*"


def render_text(timeline: Timeline, width: int = 100, *, styled: bool = False) -> Any:
    """Draw the waterfall: a rich ``Table`` when ``styled``, else plain text lines joined by newlines."""
    label_width = min(40, max(16, width // 3))
    detail_width = 22
    bar_width = max(10, width - label_width - detail_width - 4)
    total = _ms(timeline.span_us)
    if styled:
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, show_header=True, pad_edge=False, expand=False)
        table.add_column("span / record", no_wrap=True, max_width=label_width, overflow="ellipsis")
        axis = f"0{' ' * max(1, bar_width - len(total) - 1)}{total}"
        table.add_column(axis, no_wrap=True, width=bar_width)
        table.add_column("", no_wrap=True, width=detail_width)
        for row in timeline.rows:
            a, b = _bar(timeline, row, bar_width)
            bar = Text(" " * a)
            indent = "  " * row.depth
            if row.kind == "event":
                style = _LEVEL_STYLES.get(row.status, "")
                bar.append("●", style=style)
                label = Text(indent + "· ", style="dim")
                label.append(f"{row.status} ", style=style)
                label.append(row.label)
            else:
                style = {"ok": "green", "error": "red", "running": "yellow"}.get(row.status, "cyan")
                bar.append("█" * (b - a), style=style)
                label = Text(indent + row.label, style="bold" if row.kind == "session" else "")
            table.add_row(label, bar, Text(row.detail, style="dim"))
        if timeline.hidden:
            table.add_row(Text(f"… {timeline.hidden} more rows", style="dim"), "", "")
        return table
    lines = [
        f"{'span / record':<{label_width}}  0{' ' * max(1, bar_width - len(total) - 1)}{total}",
    ]
    for row in timeline.rows:
        a, b = _bar(timeline, row, bar_width)
        indent = "  " * row.depth
        if row.kind == "event":
            text = f"{indent}. {row.status} {row.label}"
            drawn = " " * a + _marker(row.status) + " " * (bar_width - a - 1)
        else:
            text = indent + row.label
            fill = "#" if row.status == "error" else "="
            drawn = " " * a + fill * (b - a) + " " * (bar_width - b)
        if len(text) > label_width:
            text = text[: label_width - 1] + "…"
        lines.append(f"{text:<{label_width}}  |{drawn}|  {row.detail}")
    if timeline.hidden:
        lines.append(f"… {timeline.hidden} more rows")
    return "\n".join(lines)


# --- HTML ------------------------------------------------------------------------------------------

_CSS: Final = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1f2328; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
code, td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
table { border-collapse: collapse; }
td, th { padding: 3px 10px; text-align: left; vertical-align: top; border-bottom: 1px solid #eaeef2; }
th { color: #59636e; font-weight: 600; }
.ok { color: #2f9e44; } .error { color: #e03131; } .running { color: #e8a317; }
svg text { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; fill: #1f2328; }
svg .axis { stroke: #d0d7de; } svg .dim { fill: #59636e; }
pre { background: #f6f8fa; padding: 8px; border-radius: 4px; white-space: pre-wrap; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def render_html(session: Mapping[str, Any], records: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Return a self-contained HTML page for a ``session get`` document (SVG waterfall, tables)."""
    import json

    timeline = timeline_rows(session, max_rows=2000)
    status = (
        "running"
        if session.get("endedAt") is None and session.get("success") is None
        else ("ok" if session.get("success") else "error")
    )
    facts = [
        ("status", f'<span class="{status}">{_e(status)}</span>'),
        ("thread", f"<code>{_e(session.get('threadId'))}</code>"),
        ("started", _e(session.get("startedAt"))),
        ("ended", _e(session.get("endedAt"))),
        (
            "duration",
            _e(_ms(float(session["durationMs"]) * 1000) if session.get("durationMs") is not None else ""),
        ),
        ("records", _e(session.get("logCount"))),
        ("errors", _e(session.get("errorCount"))),
        ("levels", _e(", ".join(f"{k}: {v}" for k, v in (session.get("levels") or {}).items()))),
    ]
    if session.get("error"):
        facts.append(("error", f'<span class="error">{_e(session.get("error"))}</span>'))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Session {_e(session.get('id'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Session <code>{_e(session.get('id'))}</code></h1>",
        "<table>",
        *(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in facts),
        "</table>",
    ]
    metadata = session.get("metadata") or {}
    if metadata:
        parts += ["<h2>Metadata</h2>", f"<pre>{_e(json.dumps(metadata, indent=2, default=str))}</pre>"]
    parts.append("<h2>Timeline</h2>")
    if timeline is None:
        parts.append("<p>No spans or records.</p>")
    else:
        parts.append(_svg(timeline))
    rows = records if records is not None else session.get("events") or []
    if rows:
        parts += [
            "<h2>Records</h2>",
            "<table><tr><th>time</th><th>level</th><th>logger</th><th>message</th></tr>",
        ]
        for ev in rows:
            level = str(ev.get("level") or "")
            color = _LEVEL_COLORS.get(level, "#1f2328")
            parts.append(
                f'<tr><td class="mono">{_e(ev.get("timestamp"))}</td>'
                f'<td style="color:{color}">{_e(level)}</td>'
                f'<td class="mono">{_e(ev.get("logger"))}</td><td>{_e(ev.get("message"))}</td></tr>'
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _svg(timeline: Timeline) -> str:
    label_w, bar_w, row_h, top = 320, 640, 20, 28
    width = label_w + bar_w + 110
    height = top + row_h * len(timeline.rows) + 10
    total = timeline.span_us
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="session timeline">'
        )
    ]
    for i in range(5):
        x = label_w + bar_w * i / 4
        out.append(f'<line class="axis" x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{height}"/>')
        out.append(f'<text class="dim" x="{x + 2:.1f}" y="{top - 12}">{_e(_ms(total * i / 4))}</text>')
    for n, row in enumerate(timeline.rows):
        y = top + n * row_h
        x0 = label_w + bar_w * (row.start_us - timeline.start_us) / total
        label = row.label if len(row.label) <= 40 else row.label[:39] + "…"
        indent = 12 * row.depth
        if row.kind == "event":
            color = _LEVEL_COLORS.get(row.status, "#1f2328")
            out.append(
                f'<text x="{indent + 4}" y="{y + 14}" class="dim">{_e(row.status)} {_e(label)}</text>'
                f'<circle cx="{x0:.1f}" cy="{y + 10}" r="4.5" fill="{color}">'
                f"<title>{_e(row.status)} {_e(row.label)} ({_e(row.detail)})</title></circle>"
            )
        else:
            x1 = label_w + bar_w * (row.end_us - timeline.start_us) / total
            color = {"ok": "#4c9aff", "error": "#e03131", "running": "#e8a317"}.get(row.status, "#4c9aff")
            weight = ' font-weight="bold"' if row.kind == "session" else ""
            out.append(
                f'<text x="{indent + 4}" y="{y + 14}"{weight}>{_e(label)}</text>'
                f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(2.0, x1 - x0):.1f}" height="{row_h - 6}" '
                f'rx="2" fill="{color}"><title>{_e(row.label)}: {_e(row.detail)}</title></rect>'
                f'<text class="dim" x="{label_w + bar_w + 8}" y="{y + 14}">{_e(row.detail)}</text>'
            )
    out.append("</svg>")
    return "".join(out)
