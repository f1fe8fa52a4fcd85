"""The ``agentuity-logging`` commands (click). Imported only once ``_cli`` has checked for the extra.

Exit codes: 0 found, 1 not found (no such session or thread, nothing listed, no store file),
2 usage error (a malformed ID names the expected shape), 3 the source failed (backend down, credentials
refused, unreadable store or thread state), 130 interrupted.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from agentuity_logging._errors import AgentuityLoggingError, MissingDependencyError
from agentuity_logging._ids import validate_session_id, validate_thread_id
from agentuity_logging._inspection._render import Output
from agentuity_logging._inspection._sources import (
    NotFoundError,
    Progress,
    RecordSource,
    SessionQuery,
    Source,
    SourceError,
    SourceOptions,
    UsageError,
    open_source,
)
from agentuity_logging._storage._logstore import LEVEL_NUMBERS, parse_timestamp_us

__all__ = ["cli"]

EXIT_NOT_FOUND: Final = 1
EXIT_USAGE: Final = 2
EXIT_SOURCE: Final = 3
EXIT_INTERRUPTED: Final = 130
ENV_THREAD_STORE: Final = "AGENTUITY_THREAD_STORE"
ENV_STATE_KEY: Final = "AGENTUITY_STATE_KEY"

F = TypeVar("F", bound=Callable[..., Any])

_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_SINCE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ExitError(Exception):
    """Leave with ``code`` after printing ``message`` (if any) on stderr as one line."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _fail(code: int, message: str) -> ExitError:
    return ExitError(code, message)


# --- option parsing ---------------------------------------------------------------------------------


def _id_callback(
    validate: Callable[[object], str],
) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A click callback running one of ``_ids``' validators: a bad ID is a usage error (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return callback


_session_id = _id_callback(validate_session_id)
_thread_id = _id_callback(validate_thread_id)


def _iso_time(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    parsed = parse_timestamp_us(value)
    if parsed is None or value.strip().lstrip("-").replace(".", "", 1).isdigit():
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 time; expected e.g. 2024-05-01T12:00:00Z or 2024-05-01",
            ctx=ctx,
            param=param,
        )
    return parsed


def _metadata_pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected key=value", ctx=ctx, param=param)
        pairs[key] = value
    return pairs


def _since(ctx: click.Context, param: click.Parameter, value: str) -> float:
    match = _SINCE.match(value or "")
    if match is None or float(match.group(1)) <= 0:
        raise click.BadParameter(f"{value!r}: expected a duration like 30m, 24h or 7d", ctx=ctx, param=param)
    return float(match.group(1)) * _UNIT_S[match.group(2)]


_SOURCE_HELP: Final = """\b
Sources (options of every command, before or after its arguments):
  --source local    the SQLite session log store (default)
  --source loki     Grafana Loki (--loki-url), LogQL on structured metadata
  --source datadog  Datadog logs search (DD_API_KEY, DD_APP_KEY, DD_SITE)
"""

_SOURCE_OPTIONS: Final[list[Callable[[F], F]]] = [
    click.option(
        "--source",
        type=click.Choice(["local", "loki", "datadog"]),
        default="local",
        show_default=True,
        envvar="AGENTUITY_LOG_SOURCE",
        help="Where to read sessions and records from.",
    ),
    click.option(
        "--store",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Local store file [default: $AGENTUITY_LOG_STORE, else ./.agentuity/logs.sqlite3].",
    ),
    click.option("--loki-url", envvar="AGENTUITY_LOKI_URL", help="Loki base URL, e.g. http://loki:3100."),
    click.option(
        "--loki-selector",
        envvar="AGENTUITY_LOKI_SELECTOR",
        default='{level=~".+"}',
        show_default=True,
        help="Stream selector to search in (every stream our shipper writes has a level label).",
    ),
    click.option(
        "--loki-tenant", envvar="AGENTUITY_LOKI_TENANT", help="X-Scope-OrgID for multi-tenant Loki."
    ),
    click.option(
        "--loki-user",
        envvar="AGENTUITY_LOKI_USER",
        help="Basic-auth user (Grafana Cloud instance ID); the password comes from $AGENTUITY_LOKI_PASSWORD.",
    ),
    click.option(
        "--dd-site", envvar="DD_SITE", default="datadoghq.com", show_default=True, help="Datadog site."
    ),
    click.option(
        "--dd-url",
        envvar="AGENTUITY_DD_API_URL",
        help="Datadog API base URL, overriding --dd-site (a proxy). Keys come from DD_API_KEY/DD_APP_KEY.",
    ),
    click.option(
        "--since",
        "since_s",
        default="24h",
        show_default=True,
        callback=_since,
        help="How far back remote sources search (30m, 24h, 7d).",
    ),
]
_SOURCE_KEYS: Final = (
    "source",
    "store",
    "loki_url",
    "loki_selector",
    "loki_tenant",
    "loki_user",
    "dd_site",
    "dd_url",
    "since_s",
)


def source_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the source options to a command; the command receives one ``SourceOptions`` first."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        values = {key: kwargs.pop(key) for key in _SOURCE_KEYS}
        env = os.environ
        options = SourceOptions(
            **values,
            loki_password=env.get("AGENTUITY_LOKI_PASSWORD") or None,
            dd_api_key=env.get("DD_API_KEY") or None,
            dd_app_key=env.get("DD_APP_KEY") or None,
        )
        return fn(options, **kwargs)

    decorated: Any = wrapper
    for option in reversed(_SOURCE_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def _level_option(fn: F) -> F:
    return click.option(
        "--level",
        "-l",
        type=click.Choice(_LEVELS, case_sensitive=False),
        default=None,
        help="Only records at this level or above.",
    )(fn)


def _min_level(level: str | None) -> int:
    return 0 if level is None else LEVEL_NUMBERS[level.lower()]


# --- running a command --------------------------------------------------------------------------------


def _say(message: str) -> None:
    click.echo(f"agentuity-logging: {message}", err=True)


def _waiting(path: Path) -> None:
    _say(f"waiting for the log store at {path} to appear (Ctrl-C to stop)")


@contextmanager
def _progress(source: Source) -> Iterator[Progress | None]:
    """A spinner with a record count on stderr, for remote queries on a terminal."""
    if not isinstance(source, RecordSource) or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"Querying {source.name} at {source.where}…") as status:

        def report(count: int) -> None:
            status.update(f"Querying {source.name} at {source.where}… {count:,} records")

        yield report


def _run(options: SourceOptions, body: Callable[[Source], int]) -> None:
    """Open the source, run ``body`` with it, and turn every failure into one line and an exit code."""
    source: Source | None = None
    try:
        source = open_source(options)
        code = body(source)
        if isinstance(source, RecordSource) and source.partial:
            _say(f"warning: {source.partial}")
    except ExitError as exc:
        if exc.message:
            _say(exc.message)
        code = exc.code
    except UsageError as exc:
        _say(f"error: {exc}")
        code = EXIT_USAGE
    except MissingDependencyError as exc:
        _say(f"error: {exc}")
        code = EXIT_USAGE
    except NotFoundError as exc:
        _say(str(exc))
        code = EXIT_NOT_FOUND
    except SourceError as exc:
        _say(f"error: {exc}")
        code = EXIT_SOURCE
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        if source is not None:
            source.close()
    sys.exit(code)


# --- the command tree ------------------------------------------------------------------------------

_CONTEXT: Final = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=_CONTEXT, epilog=_SOURCE_HELP)
@click.version_option(package_name="agentuity-logging", prog_name="agentuity-logging")
def cli() -> None:
    """Inspect sessions, threads and logs: "what happened in session sess_…?" in one command.

    \b
    Examples:
      agentuity-logging session list --failed
      agentuity-logging session get sess_3f2a…
      agentuity-logging session logs sess_3f2a… --level warning
      agentuity-logging tail --level error

    Exit codes: 0 found, 1 not found, 2 usage error, 3 the source failed.
    """


@cli.group(context_settings=_CONTEXT)
def session() -> None:
    """List sessions, show one, print its logs."""


@session.command(
    "list",
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  agentuity-logging session list
  agentuity-logging session list --count 50 --failed
  agentuity-logging session list --thread thrd_8c1d… --json
  agentuity-logging session list --metadata user=u42 --start-after 2024-05-01T00:00:00Z
  agentuity-logging session list --source loki --loki-url http://localhost:3100 --since 2h
""",
)
@click.option(
    "--count", "-n", type=click.IntRange(min=1), default=20, show_default=True, help="At most N sessions."
)
@click.option("--thread", "thread_id", callback=_thread_id, help="Only sessions of this thread.")
@click.option("--success/--failed", "success", default=None, help="Only sessions that succeeded / failed.")
@click.option(
    "--metadata",
    "-m",
    multiple=True,
    callback=_metadata_pairs,
    metavar="KEY=VALUE",
    help="Only sessions whose metadata has KEY=VALUE (repeatable; all must match).",
)
@click.option(
    "--start-after", callback=_iso_time, metavar="ISO", help="Only sessions started after this time."
)
@click.option(
    "--start-before", callback=_iso_time, metavar="ISO", help="Only sessions started before this time."
)
@click.option("--json", "as_json", is_flag=True, help="A JSON list of session objects.")
@source_options
def session_list(
    options: SourceOptions,
    *,
    count: int,
    thread_id: str | None,
    success: bool | None,
    metadata: dict[str, str],
    start_after: int | None,
    start_before: int | None,
    as_json: bool,
) -> None:
    """List sessions, newest first."""
    query = SessionQuery(count, thread_id, success, metadata, start_after, start_before)

    def body(source: Source) -> int:
        with _progress(source) as progress:
            sessions = source.list_sessions(query, progress)
        out = Output(as_json=as_json)
        if not sessions and not as_json:
            _say(f"no sessions found in {source.where}")
            return EXIT_NOT_FOUND
        out.sessions(sessions)
        return 0 if sessions else EXIT_NOT_FOUND

    _run(options, body)


@session.command(
    "get",
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  agentuity-logging session get sess_3f2a9c4e1b7d4a60
  agentuity-logging session get sess_3f2a9c4e1b7d4a60 --json | jq .levels
  agentuity-logging session get sess_3f2a9c4e1b7d4a60 --html session.html
""",
)
@click.argument("session_id", callback=_session_id)
@click.option("--json", "as_json", is_flag=True, help="One JSON document.")
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write a self-contained HTML page with an SVG waterfall to FILE.",
)
@source_options
def session_get(options: SourceOptions, session_id: str, as_json: bool, html_file: Path | None) -> None:
    """Show a session: metadata, timing, status, counts by level, its thread, and a timeline."""

    def body(source: Source) -> int:
        from agentuity_logging._inspection._timeline import render_html, render_text, timeline_rows

        with _progress(source) as progress:
            found = source.get_session(session_id, progress)
        if found is None:
            raise _fail(EXIT_NOT_FOUND, f"session {session_id} not found in {source.where}")
        out = Output(as_json=as_json)
        timeline = None
        if not as_json:
            laid_out = timeline_rows(found)
            if laid_out is not None:
                timeline = render_text(laid_out, out.width, styled=out.styled)
        out.session_detail(found, timeline)
        if html_file is not None:
            try:
                html_file.write_text(render_html(found), encoding="utf-8")
            except OSError as exc:
                raise _fail(EXIT_SOURCE, f"error: cannot write {html_file}: {exc.strerror or exc}") from None
            _say(f"wrote {html_file}")
        return 0

    _run(options, body)


@session.command(
    "logs",
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  agentuity-logging session logs sess_3f2a9c4e1b7d4a60
  agentuity-logging session logs sess_3f2a9c4e1b7d4a60 --level warning
  agentuity-logging session logs sess_3f2a9c4e1b7d4a60 --json --store ./logs.sqlite3 | jq .message
  agentuity-logging session logs sess_3f2a9c4e1b7d4a60 --follow
""",
)
@click.argument("session_id", callback=_session_id)
@_level_option
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one record per line, in the log schema.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new records (local: until the session ends; remote: until Ctrl-C).",
)
@source_options
def session_logs(
    options: SourceOptions, session_id: str, level: str | None, as_json: bool, follow: bool
) -> None:
    """Print a session's log records in order."""
    min_level = _min_level(level)
    if follow:
        options.wait_for_store = _waiting

    def body(source: Source) -> int:
        out = Output(as_json=as_json)
        if follow:
            # From the session's first record on, then live: one stream, so nothing falls in between.
            for event in source.follow(session_id, min_level, after_session_end=True, skip_existing=False):
                out.record(event)
            return 0
        with _progress(source) as progress:
            records = source.session_logs(session_id, min_level, progress)
        if records is None:
            raise _fail(EXIT_NOT_FOUND, f"session {session_id} not found in {source.where}")
        for event in records:
            out.record(event)
        return 0

    _run(options, body)


@cli.group(context_settings=_CONTEXT)
def thread() -> None:
    """List threads, show one with its sessions."""


@thread.command(
    "list",
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  agentuity-logging thread list
  agentuity-logging thread list --metadata customer=acme --json
""",
)
@click.option(
    "--count", "-n", type=click.IntRange(min=1), default=20, show_default=True, help="At most N threads."
)
@click.option(
    "--metadata",
    "-m",
    multiple=True,
    callback=_metadata_pairs,
    metavar="KEY=VALUE",
    help="Only threads whose metadata has KEY=VALUE (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document: a list of thread objects.")
@source_options
def thread_list(options: SourceOptions, count: int, metadata: dict[str, str], as_json: bool) -> None:
    """List threads, most recently active first."""

    def body(source: Source) -> int:
        with _progress(source) as progress:
            threads = source.list_threads(count, metadata, progress)
        if not threads and not as_json:
            _say(f"no threads found in {source.where}")
            return EXIT_NOT_FOUND
        Output(as_json=as_json).threads(threads)
        return 0 if threads else EXIT_NOT_FOUND

    _run(options, body)


@thread.command(
    "get",
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  agentuity-logging thread get thrd_8c1d2e3f4a5b6c7d
  AGENTUITY_THREAD_STORE=sqlite:///threads.db agentuity-logging thread get thrd_8c1d… --json
""",
)
@click.argument("thread_id", callback=_thread_id)
@click.option("--json", "as_json", is_flag=True, help="One JSON document with a `sessions` list in order.")
@source_options
def thread_get(options: SourceOptions, thread_id: str, as_json: bool) -> None:
    """Show a thread: metadata, expiry, state keys (not values) and its sessions in order.

    State keys come from the thread store named by AGENTUITY_THREAD_STORE (encrypted state needs
    AGENTUITY_STATE_KEY).
    """

    def body(source: Source) -> int:
        with _progress(source) as progress:
            found = source.get_thread(thread_id, progress)
        keys, note, info = _state_keys(thread_id)
        if found is None and info is None:
            raise _fail(EXIT_NOT_FOUND, f"thread {thread_id} not found in {source.where}")
        document: dict[str, Any] = found or {
            "id": thread_id,
            "createdAt": None,
            "updatedAt": None,
            "expiresAt": None,
            "expired": None,
            "metadata": {},
            "sessionCount": 0,
            "sessions": [],
        }
        if info is not None:
            # The thread store is the live truth for expiry; the log store saw the thread at session ends.
            document.update(
                {k: v for k, v in info.items() if v is not None and (k == "expiresAt" or not document.get(k))}
            )
            document["expired"] = False
        document["stateKeys"] = keys
        Output(as_json=as_json).thread_detail(document, note)
        return 0

    _run(options, body)


def _state_keys(thread_id: str) -> tuple[list[str] | None, str | None, dict[str, Any] | None]:
    """Read the thread's state keys from ``AGENTUITY_THREAD_STORE``: (keys, note, thread facts)."""
    url = os.environ.get(ENV_THREAD_STORE, "").strip()
    if not url:
        return None, None, None
    try:
        from agentuity_logging._storage._threads import thread_store_from_url
    except ImportError:  # the thread stores are not part of this installation
        return None, "unknown (this installation has no thread stores)", None
    try:
        store = thread_store_from_url(url, require_key=False, source=ENV_THREAD_STORE)
    except MissingDependencyError as exc:
        raise _fail(EXIT_USAGE, f"error: {exc}") from None
    except AgentuityLoggingError as exc:
        raise _fail(EXIT_USAGE, f"error: {exc}") from None
    try:
        info = store.info(thread_id)
        if info is None:
            return None, "unknown (no live record in the thread store: expired or never saved)", None
        facts = {
            "createdAt": info.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "updatedAt": info.updated_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "expiresAt": info.expires_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "metadata": dict(info.metadata) or None,
        }
        if info.key_id is not None and not os.environ.get(ENV_STATE_KEY, "").strip():
            return None, "unknown (the state is encrypted: set AGENTUITY_STATE_KEY to list its keys)", facts
        data = store.load(thread_id)
        if data is None:
            return None, "unknown (the thread expired while reading)", facts
        return sorted(data.state), None, facts
    except AgentuityLoggingError as exc:
        # A tampered record or the wrong key: say so, never list nothing as if the state were empty.
        raise _fail(EXIT_SOURCE, f"error: {exc}") from None
    finally:
        store.close()


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  agentuity-logging tail
  agentuity-logging tail --level warning
  agentuity-logging tail --session sess_3f2a9c4e1b7d4a60 --json
  agentuity-logging tail --level error --count 1   # wait for the next error
""",
)
@click.option("--session", "session_id", callback=_session_id, help="Only records of this session.")
@_level_option
@click.option("--json", "as_json", is_flag=True, help="JSON lines in the log schema.")
@click.option("--count", "-n", type=click.IntRange(min=1), default=None, help="Stop after N records.")
@source_options
def tail(
    options: SourceOptions, session_id: str | None, level: str | None, as_json: bool, count: int | None
) -> None:
    """Follow new records live (Ctrl-C to stop); waits for the local store to appear if need be."""
    min_level = _min_level(level)
    options.wait_for_store = _waiting

    def body(source: Source) -> int:
        out = Output(as_json=as_json)
        for seen, event in enumerate(source.follow(session_id, min_level), start=1):
            out.record(event)
            if count is not None and seen >= count:
                break
        return 0

    _run(options, body)


@cli.command(
    context_settings=_CONTEXT,
    epilog="""\b
Examples:
  agentuity-logging keygen
  export AGENTUITY_STATE_KEY="$(agentuity-logging keygen)"
  # rotate: new key first, old keys after it
  export AGENTUITY_STATE_KEY="$(agentuity-logging keygen),$AGENTUITY_STATE_KEY"
""",
)
def keygen() -> None:
    """Print a new thread-state key (32 random bytes, URL-safe base64) and nothing else."""
    try:
        from agentuity_logging._storage._crypto import generate_key
    except ImportError:  # pragma: no cover - the crypto module ships with the package
        import base64

        click.echo(base64.urlsafe_b64encode(os.urandom(32)).decode("ascii"))
        return
    click.echo(generate_key())
