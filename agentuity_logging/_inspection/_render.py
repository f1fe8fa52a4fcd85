"""Output for the CLI: rich tables and colours on a terminal, plain text in a pipe, JSON for machines.

One :class:`Output` per command decides the mode once: ``--json`` wins; otherwise rich when stdout is a
terminal (or ``FORCE_COLOR`` is set), plain aligned text when it is not, so ``grep``/``awk`` see stable
columns and no escape codes. Every value that came from a log record is escaped (control characters
become visible) before it reaches a terminal, and printed through rich ``Text`` (never as markup).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any, Final

import orjson

from agentuity_logging._formatting import ConsoleFormatter, escape_control
from agentuity_logging._json import dumps, safe_default

__all__ = ["Output", "format_duration", "short_time"]

_STATUS_STYLE: Final = {"ok": "green", "failed": "red", "running": "yellow"}


def format_duration(ms: float | None) -> str:
    """``1.2 s``, ``340 ms``, ``12.5 ms``; empty for ``None``."""
    if ms is None:
        return ""
    if ms >= 60_000:
        return f"{ms / 60_000:.1f} min"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.1f} ms"


def short_time(stamp: str | None) -> str:
    """``2024-05-01T12:00:00.123456Z`` -> ``2024-05-01 12:00:00.123Z`` (empty for ``None``)."""
    if not stamp:
        return ""
    if len(stamp) >= 23 and stamp[10] == "T":
        return f"{stamp[:10]} {stamp[11:23]}Z"
    return stamp


def status_of(session: Mapping[str, Any]) -> str:
    """``ok``, ``failed`` or ``running``."""
    success = session.get("success")
    if success is None:
        return "running"
    return "ok" if success else "failed"


def _metadata_text(metadata: Mapping[str, Any] | None) -> str:
    if not metadata:
        return ""
    parts = []
    for key, value in metadata.items():
        text = value if isinstance(value, str) else dumps({"v": value}).decode()[5:-1]
        parts.append(f"{key}={text}")
    return escape_control(" ".join(parts))


def _plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines.extend("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in rows)
    return "\n".join(lines)


class Output:
    """Where a command writes: JSON, rich, or plain, decided once per command."""

    def __init__(self, *, as_json: bool = False, stream: IO[str] | None = None) -> None:
        self.stream: IO[str] = stream if stream is not None else sys.stdout
        self.as_json = as_json
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.styled = not as_json and (tty or bool(os.environ.get("FORCE_COLOR")))
        self._console: Any = None
        self._line_formatter = ConsoleFormatter(colors=self.styled and not os.environ.get("NO_COLOR"))

    @property
    def console(self) -> Any:
        """A rich ``Console`` on the output stream (created on first use)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(
                file=self.stream, force_terminal=self.styled or None, highlight=False, soft_wrap=False
            )
        return self._console

    @property
    def width(self) -> int:
        """The terminal width (100 when not a terminal)."""
        if self.styled:
            return int(self.console.width)
        try:
            return max(60, int(os.environ.get("COLUMNS", "100")))
        except ValueError:
            return 100

    def write(self, text: str) -> None:
        """Write a line of text."""
        self.stream.write(text + "\n")

    def json_document(self, document: Any) -> None:
        """One JSON document, indented."""
        data = orjson.dumps(
            document, default=safe_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
        )
        self.stream.write(data.decode("utf-8") + "\n")

    def json_line(self, event: Mapping[str, Any]) -> None:
        """One record as a JSON line in the log schema."""
        self.stream.write(dumps(event).decode("utf-8") + "\n")
        self.stream.flush()

    def record(self, event: Mapping[str, Any]) -> None:
        """One record: a JSON line with ``--json``, else the console line the package itself writes."""
        if self.as_json:
            self.json_line(event)
            return
        self.stream.write(self._line_formatter.format_event(event) + "\n")
        self.stream.flush()

    # --- sessions ---------------------------------------------------------------------------------

    def sessions(self, sessions: Sequence[Mapping[str, Any]]) -> None:
        """``session list``."""
        if self.as_json:
            self.json_document(list(sessions))
            return
        headers = ("session", "started", "duration", "status", "records", "errors", "thread", "metadata")
        rows = [
            (
                str(s["id"]),
                short_time(s.get("startedAt")),
                format_duration(s.get("durationMs")),
                status_of(s),
                str(s.get("logCount") if s.get("logCount") is not None else ""),
                str(s.get("errorCount") or 0),
                str(s.get("threadId") or ""),
                _metadata_text(s.get("metadata")),
            )
            for s in sessions
        ]
        if not self.styled:
            self.write(_plain_table(headers, rows))
            return
        from rich.table import Table
        from rich.text import Text

        # IDs are copied from here: never cut them. The thread column only when the terminal is wide.
        wide = self.width >= 150
        table = Table(header_style="bold", box=None, pad_edge=False)
        for i, name in enumerate(headers):
            if name == "thread" and not wide:
                continue
            # Fixed-size values keep their width; a narrow terminal cuts the last columns instead.
            fitted = max([len(name), *(len(row[i]) for row in rows)])
            table.add_column(
                name,
                no_wrap=name != "metadata",
                overflow="fold",
                min_width=None if name == "metadata" else fitted,
            )
        for row in rows:
            cells = [Text(c) for c in row]
            cells[3].stylize(_STATUS_STYLE.get(row[3], ""))
            if row[5] != "0":
                cells[5].stylize("red")
            cells[0].stylize("cyan")
            if not wide:
                del cells[6]
            table.add_row(*cells)
        self.console.print(table)

    def session_detail(self, session: Mapping[str, Any], timeline: Any) -> None:
        """``session get``: facts, level counts, thread, then the waterfall."""
        if self.as_json:
            self.json_document(session)
            return
        thread = session.get("thread") or {}
        levels = session.get("levels") or {}
        facts: list[tuple[str, str]] = [
            ("session", str(session["id"])),
            ("status", status_of(session)),
            ("started", short_time(session.get("startedAt"))),
            ("ended", short_time(session.get("endedAt"))),
            ("duration", format_duration(session.get("durationMs"))),
            ("records", str(session.get("logCount") if session.get("logCount") is not None else "")),
            ("by level", ", ".join(f"{k} {v}" for k, v in levels.items()) or "none"),
            ("errors", str(session.get("errorCount") or 0)),
            ("thread", str(session.get("threadId") or "")),
        ]
        if thread.get("expiresAt"):
            facts.append(("thread expires", short_time(thread.get("expiresAt"))))
        if session.get("error"):
            facts.append(("error", escape_control(str(session["error"]))))
        metadata = session.get("metadata") or {}
        for key, value in metadata.items():
            text = value if isinstance(value, str) else dumps({"v": value}).decode()[5:-1]
            facts.append((f"metadata.{escape_control(str(key))}", escape_control(text)))
        self._facts(facts, status_key="status")
        if timeline is None:
            self.write("")
            self.write("no spans or records")
            return
        self.write("")
        if self.styled:
            self.console.print(timeline)
        else:
            self.write(str(timeline))
        if session.get("eventsTruncated"):
            self.write(f"(the timeline shows the first records; `session logs {session['id']}` has them all)")

    def _facts(self, facts: Sequence[tuple[str, str]], status_key: str | None = None) -> None:
        width = max(len(k) for k, _ in facts)
        if not self.styled:
            for key, value in facts:
                self.write(f"{key + ':':<{width + 1}} {value}")
            return
        from rich.text import Text

        for key, value in facts:
            line = Text()
            line.append(f"{key + ':':<{width + 1}} ", style="dim")
            style = _STATUS_STYLE.get(value, "") if key == status_key else ""
            line.append(value, style=style or ("cyan" if key in ("session", "thread") else ""))
            self.console.print(line)

    # --- threads ----------------------------------------------------------------------------------

    def threads(self, threads: Sequence[Mapping[str, Any]]) -> None:
        """``thread list``."""
        if self.as_json:
            self.json_document(list(threads))
            return
        headers = ("thread", "created", "updated", "expires", "sessions", "metadata")
        rows = [
            (
                str(t["id"]),
                short_time(t.get("createdAt")),
                short_time(t.get("updatedAt")),
                ("expired" if t.get("expired") else short_time(t.get("expiresAt"))),
                str(t.get("sessionCount") if t.get("sessionCount") is not None else ""),
                _metadata_text(t.get("metadata")),
            )
            for t in threads
        ]
        if not self.styled:
            self.write(_plain_table(headers, rows))
            return
        from rich.table import Table
        from rich.text import Text

        table = Table(header_style="bold", box=None, pad_edge=False)
        for name in headers:
            table.add_column(
                name, no_wrap=name != "metadata", overflow="fold", min_width=37 if name == "thread" else None
            )
        for row in rows:
            cells = [Text(c) for c in row]
            cells[0].stylize("cyan")
            if row[3] == "expired":
                cells[3].stylize("dim")
            table.add_row(*cells)
        self.console.print(table)

    def thread_detail(self, thread: Mapping[str, Any], note: str | None = None) -> None:
        """``thread get``: facts, state keys, then its sessions in order."""
        if self.as_json:
            self.json_document(thread)
            return
        keys = thread.get("stateKeys")
        if keys is None:
            state = note or "unknown (set AGENTUITY_THREAD_STORE to read them)"
        else:
            state = ", ".join(escape_control(k) for k in keys) or "(empty)"
        expires = short_time(thread.get("expiresAt")) or "unknown"
        if thread.get("expired"):
            expires += " (expired)"
        facts = [
            ("thread", str(thread["id"])),
            ("created", short_time(thread.get("createdAt"))),
            ("updated", short_time(thread.get("updatedAt"))),
            ("expires", expires),
            ("state keys", state),
            ("sessions", str(len(thread.get("sessions") or []))),
        ]
        for key, value in (thread.get("metadata") or {}).items():
            text = value if isinstance(value, str) else dumps({"v": value}).decode()[5:-1]
            facts.append((f"metadata.{escape_control(str(key))}", escape_control(text)))
        self._facts(facts)
        sessions = thread.get("sessions") or []
        if sessions:
            self.write("")
            self.sessions(sessions)
