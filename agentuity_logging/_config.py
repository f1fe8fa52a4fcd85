"""``configure()``: the one-call drop-in for stdlib logging and structlog.

It owns a small amount of process state: the outputs it installed on the root logger (so a second call
replaces them instead of adding more), and whether it wired structlog. Nothing here runs at import.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Final, Literal

from agentuity_logging._context import ThreadRegistry, set_thread_registry
from agentuity_logging._errors import ConfigurationError
from agentuity_logging._internal import report_once

if TYPE_CHECKING:
    from agentuity_logging._formatting import EventHandler
from agentuity_logging._stamping import (
    SessionContextFilter,
    install_record_factory,
    uninstall_record_factory,
)

__all__ = [
    "ENV_LOG_FORMAT",
    "ENV_LOG_LEVEL",
    "ENV_SERVICE",
    "add_output",
    "configure",
    "flush",
    "logging_config",
    "outputs",
    "remove_output",
    "shutdown",
]

ENV_LOG_LEVEL: Final = "AGENTUITY_LOG_LEVEL"
ENV_LOG_FORMAT: Final = "AGENTUITY_LOG_FORMAT"
ENV_SERVICE: Final = "AGENTUITY_SERVICE"
ENV_THREAD_STORE: Final = "AGENTUITY_THREAD_STORE"
ENV_LOG_STORE: Final = "AGENTUITY_LOG_STORE"
_SHIPPING_ENV: Final = (
    "DD_API_KEY",
    "DD_SITE",
    "AGENTUITY_LOKI_URL",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)

Format = Literal["json", "console", "auto"]
_FORMATS: Final = ("json", "console", "auto")

_lock = threading.RLock()
# Handlers configure() put on the root logger, and every output structlog events go to.
_installed: tuple[logging.Handler, ...] = ()
_outputs: tuple[EventHandler, ...] = ()
_structlog_wired = False
_owned: list[Any] = []


def outputs() -> tuple[EventHandler, ...]:
    """Return the outputs structlog events currently go to (the ones ``configure()`` installed)."""
    return _outputs


def add_output(handler: EventHandler) -> None:
    """Send structlog events to ``handler`` too (stdlib records reach it through the root logger)."""
    global _outputs
    with _lock:
        if handler not in _outputs:
            _outputs = (*_outputs, handler)


def remove_output(handler: EventHandler) -> None:
    """Stop sending structlog events to ``handler``."""
    global _outputs
    with _lock:
        _outputs = tuple(h for h in _outputs if h is not handler)


def parse_level(value: object, *, source: str = "level") -> int:
    """Return a stdlib level number from a name (``"info"``) or a number; ``ConfigurationError`` else."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{source}: expected a level name or number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        number = logging.getLevelName(text.upper())
        if isinstance(number, int):
            return number
    raise ConfigurationError(
        f"{source}: unknown log level {value!r}; expected one of "
        "debug, info, warning, error, critical (or a number)"
    )


def _resolve_format(value: object, stream: IO[Any]) -> Literal["json", "console"]:
    from agentuity_logging._formatting import colors_wanted

    if value not in _FORMATS:
        raise ConfigurationError(f"format: expected one of {', '.join(_FORMATS)}, got {value!r}")
    if value == "auto":
        return "console" if colors_wanted(stream) else "json"
    return value  # type: ignore[return-value]


def _settings(level: int | str | None, fmt: str | None, service: str | None) -> tuple[int, str, str | None]:
    env = os.environ
    if level is None and env.get(ENV_LOG_LEVEL):
        level_no = parse_level(env[ENV_LOG_LEVEL], source=ENV_LOG_LEVEL)
    else:
        level_no = parse_level(logging.INFO if level is None else level)
    if fmt is None:
        fmt = env.get(ENV_LOG_FORMAT) or "auto"
        if fmt not in _FORMATS:
            raise ConfigurationError(f"{ENV_LOG_FORMAT}: expected one of {', '.join(_FORMATS)}, got {fmt!r}")
    if service is None:
        service = env.get(ENV_SERVICE) or None
    return level_no, fmt, service


def configure(
    *,
    level: int | str | None = None,
    format: Format | None = None,
    service: str | None = None,
    stream: IO[Any] | None = None,
    replace: bool = False,
    structlog: bool = True,
    thread_ttl_s: float | None = None,
    handlers: Sequence[EventHandler] = (),
    stamp_all_records: bool = False,
    thread_store: Any = None,
    state_key: str | bytes | None = None,
    store: str | os.PathLike[str] | bool | Any | None = None,
    ship_to: Sequence[Any] | None = None,
) -> None:
    """Set up session-aware logging for stdlib and structlog in one call.

    Installs one output on the root logger writing to ``stream`` (stderr by default; a text stream or a
    binary one such as ``sys.stdout.buffer``, which gets orjson's bytes as they are) in ``format``
    (``"json"``, ``"console"``, or ``"auto"``: console on a terminal, JSON otherwise), stamps every record
    from every logger with the session IDs, and routes structlog events to the same outputs in the same
    schema. Calling it again reconfigures: the outputs it installed before are replaced, never duplicated.
    Handlers somebody else installed stay unless ``replace=True``.

    Defaults come from ``AGENTUITY_LOG_LEVEL`` (else INFO), ``AGENTUITY_LOG_FORMAT`` (else auto) and
    ``AGENTUITY_SERVICE``. ``handlers`` adds more outputs (shippers, the log store).

    Records are stamped by a :class:`~agentuity_logging.stdlib.SessionContextFilter`, the ``stamper``
    of each output it installs (it runs before the output's own filters), so every record reaching
    them, from any logger, carries the IDs. With ``stamp_all_records=True`` a record factory stamps
    every record at creation instead, so handlers you attach yourself (anywhere) see the IDs too; it
    stamps records nobody handles as well, but costs no more per handled call (see docs/performance.md).

    ``thread_store`` (a URL ``memory``, ``sqlite:///path``, ``redis://host:port/db``, or a store object;
    default ``AGENTUITY_THREAD_STORE``) keeps thread state and metadata across processes, its state
    encrypted with ``state_key`` (default ``AGENTUITY_STATE_KEY``). ``thread_ttl_s`` sets how long a
    thread lives after its last session (one hour by default).

    ``store`` keeps sessions, threads, spans and logs in the embedded SQLite store that the
    ``agentuity-logging`` command reads: a path, ``True`` for the default path, or a ``LogStore``;
    default ``AGENTUITY_LOG_STORE`` when set, else no store. ``ship_to`` lists shippers
    (``agentuity_logging.shipping``) to forward every record to; when it is ``None`` the shippers the
    environment names (``DD_API_KEY``, ``AGENTUITY_LOKI_URL``, ``OTEL_EXPORTER_OTLP_*``) are created. Pass
    ``ship_to=[]`` to ship nothing whatever the environment says.

    Raises:
        ConfigurationError: a bad level, format or environment value (raised now, not at log time).
    """
    global _installed, _outputs, _structlog_wired
    level_no, fmt, service = _settings(level, format, service)
    out_stream: IO[Any] = stream if stream is not None else sys.stderr
    chosen = _resolve_format(fmt, out_stream)
    if thread_ttl_s is not None and not thread_ttl_s > 0:
        raise ConfigurationError(f"thread_ttl_s: expected a positive number, got {thread_ttl_s!r}")
    registry: ThreadRegistry | None = None
    if (
        thread_store is not None
        or state_key is not None
        or thread_ttl_s is not None
        or os.environ.get(ENV_THREAD_STORE)
    ):
        # Built before anything changes, so a bad URL or key leaves the old set-up in place.
        from agentuity_logging._storage._registry import thread_registry_from_settings

        registry = thread_registry_from_settings(thread_store, state_key=state_key, ttl_s=thread_ttl_s)

    # Imported here, not at module level: `import agentuity_logging` stays free of orjson and
    # python-json-logger until something is configured.
    from agentuity_logging._formatting import ConsoleFormatter, JsonFormatter, StreamOutput, colors_wanted

    formatter: logging.Formatter = (
        JsonFormatter(service=service)
        if chosen == "json"
        else ConsoleFormatter(colors=colors_wanted(out_stream), service=service)
    )
    main = StreamOutput(out_stream, formatter)
    owned: list[Any] = []  # resources this call creates, closed when configure() runs again
    try:
        extra_outputs = [*_store_outputs(store, owned), *_shipping_outputs(ship_to, service, owned)]
    except BaseException:
        for resource in owned:
            _close_quietly(resource)
        raise
    new_outputs: tuple[EventHandler, ...] = (main, *extra_outputs, *handlers)
    for handler in new_outputs:
        if handler.stamper is None and not any(isinstance(f, SessionContextFilter) for f in handler.filters):
            handler.stamper = SessionContextFilter()

    with _lock:
        root = logging.getLogger()
        for old in _installed:
            root.removeHandler(old)
        _release_owned()
        _owned.extend(owned)
        if replace:
            for other in list(root.handlers):
                root.removeHandler(other)
                other.close()
        for handler in new_outputs:
            root.addHandler(handler)
        root.setLevel(level_no)
        # Keep outputs added with add_output() (test capture) that configure() did not install itself.
        extra = tuple(h for h in _outputs if h not in _installed)
        _installed = new_outputs
        _outputs = (*new_outputs, *extra)
        if stamp_all_records:
            install_record_factory()
        else:
            uninstall_record_factory()
        if registry is not None:
            _close_quietly(set_thread_registry(registry))
        if structlog:
            from agentuity_logging.structlog import configure_direct

            configure_direct(level=level_no, handlers=outputs)
            _structlog_wired = True
        elif _structlog_wired:
            import structlog as _structlog

            _structlog.reset_defaults()
            _structlog_wired = False


def _store_outputs(store: Any, owned: list[Any]) -> list[EventHandler]:
    """The log-store output ``configure(store=...)`` asks for (or ``AGENTUITY_LOG_STORE`` names)."""
    if store is None:
        store = os.environ.get(ENV_LOG_STORE) or None
    if store is None or store is False:
        return []
    from agentuity_logging._context import add_session_listener
    from agentuity_logging._storage._logstore import LogStore, LogStoreHandler

    target = None if store is True else store
    if not isinstance(target, (LogStore, str, os.PathLike)) and target is not None:
        raise ConfigurationError(f"store: expected a path, True or a LogStore, got {type(store).__name__}")
    handler = LogStoreHandler(target)
    owned.append(handler)
    add_session_listener(handler)
    return [handler]


def _shipping_outputs(
    ship_to: Sequence[Any] | None, service: str | None, owned: list[Any]
) -> list[EventHandler]:
    """One ``ShippingHandler`` per shipper, from ``ship_to`` or the environment."""
    if ship_to is not None and not ship_to:
        return []
    if ship_to is None and not any(os.environ.get(name) for name in _SHIPPING_ENV):
        return []  # nothing to ship: do not even import the shipping module (httpx)
    from agentuity_logging.shipping import Shipper, ShippingHandler, shippers_from_env

    if ship_to is None:
        shippers: list[Any] = list(shippers_from_env(service=service))
        owned.extend(shippers)  # created here, so closed here when reconfigured
    else:
        shippers = list(ship_to)
        for shipper in shippers:
            if not isinstance(shipper, Shipper):
                raise ConfigurationError(
                    "ship_to: expected shippers from agentuity_logging.shipping, "
                    f"got {type(shipper).__name__}"
                )
    return [ShippingHandler(shipper) for shipper in shippers]


def _release_owned() -> None:
    """Close what an earlier configure() created (store writer, environment shippers)."""
    from agentuity_logging._context import remove_session_listener

    for resource in _owned:
        remove_session_listener(resource)
        _close_quietly(resource)
    _owned.clear()


def _close_quietly(obj: object) -> None:
    close = getattr(obj, "close", None)
    if close is not None:
        try:
            close()
        except Exception as exc:
            report_once(f"close:{type(obj).__name__}", "closing %s failed: %r", type(obj).__name__, exc)


def flush(timeout_s: float | None = 5.0) -> bool:
    """Wait until every output has delivered what it holds (store written, shippers sent).

    Returns ``True`` when all did within ``timeout_s`` (``None`` waits as long as it takes).
    """
    ok = True
    for handler in _outputs:
        try:
            ok = handler.drain(timeout_s) and ok
        except Exception as exc:
            report_once(f"drain:{type(handler).__name__}", "flushing %r failed: %r", handler, exc)
            ok = False
    return ok


def shutdown(timeout_s: float | None = 5.0) -> bool:
    """Flush every output, then undo ``configure()`` and close what it opened; return the flush result."""
    ok = flush(timeout_s)
    unconfigure()
    return ok


def unconfigure() -> None:
    """Undo ``configure()``: remove its outputs, its record factory and its structlog wiring."""
    global _installed, _outputs, _structlog_wired
    with _lock:
        root = logging.getLogger()
        for handler in _installed:
            root.removeHandler(handler)
        _outputs = tuple(h for h in _outputs if h not in _installed)
        _installed = ()
        _release_owned()
        uninstall_record_factory()
        if _structlog_wired:
            import structlog as _structlog

            _structlog.reset_defaults()
            _structlog_wired = False


def logging_config(
    *,
    level: int | str | None = None,
    format: Format | None = None,
    service: str | None = None,
    stream: str = "ext://sys.stderr",
) -> dict[str, Any]:
    """Return the ``logging.config.dictConfig`` dict equivalent to ``configure()`` for stdlib logging.

    Stamping is done by a :class:`~agentuity_logging.stdlib.SessionContextFilter` on the handler (a dict
    config cannot install a record factory). ``"auto"`` resolves against stderr now.
    """
    level_no, fmt, service = _settings(level, format, service)
    chosen = _resolve_format(fmt, sys.stderr)
    formatter: Mapping[str, Any] = (
        {"()": "agentuity_logging.stdlib.JsonFormatter", "service": service}
        if chosen == "json"
        else {"()": "agentuity_logging.stdlib.ConsoleFormatter", "service": service}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"agentuity_session": {"()": "agentuity_logging.stdlib.SessionContextFilter"}},
        "formatters": {"agentuity": dict(formatter)},
        "handlers": {
            "agentuity": {
                "()": "agentuity_logging.stdlib.StreamOutput",
                "stream": stream,
                "formatter": "agentuity",
                "filters": ["agentuity_session"],
            }
        },
        "root": {"level": logging.getLevelName(level_no), "handlers": ["agentuity"]},
    }
