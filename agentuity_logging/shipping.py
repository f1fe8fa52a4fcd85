"""Ship logs to Datadog, Grafana Loki, an OpenTelemetry Collector or any HTTP collector.

Every shipper is one delivery engine (a background worker with a bounded queue, batching, retries,
an optional disk spool) plus the backend's wire protocol. Attach one to stdlib logging with
:class:`ShippingHandler`, or pass it to ``configure(ship_to=[...])``::

    from agentuity_logging.shipping import DatadogShipper, ShippingHandler

    shipper = DatadogShipper(api_key=os.environ["DD_API_KEY"], service="planner")
    logging.getLogger().addHandler(ShippingHandler(shipper))
    ...
    shipper.close()   # or let interpreter exit flush it

Needs the ``ship`` extra: ``pip install 'agentuity-logging[ship]'``. See ``docs/shipping.md``.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from agentuity_logging._delivery._engine import DeliveryEngine, EngineOptions
from agentuity_logging._delivery._protocol import WireProtocol, redact_url
from agentuity_logging._delivery._redaction import DEFAULT_REDACT, REDACTED
from agentuity_logging._errors import ConfigurationError
from agentuity_logging._formatting import EventHandler
from agentuity_logging._internal import INTERNAL_LOGGER_NAME, report_once
from agentuity_logging._records import format_timestamp

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_REDACT",
    "ENV_DD_API_KEY",
    "ENV_DD_SITE",
    "ENV_LOKI_URL",
    "ENV_OTLP_ENDPOINT",
    "ENV_OTLP_HEADERS",
    "ENV_OTLP_LOGS_ENDPOINT",
    "ENV_OTLP_PROTOCOL",
    "ENV_OTLP_RESOURCE_ATTRIBUTES",
    "ENV_OTLP_SERVICE_NAME",
    "REDACTED",
    "DatadogShipper",
    "EngineOptions",
    "HTTPShipper",
    "LokiShipper",
    "OTLPShipper",
    "Shipper",
    "ShippingHandler",
    "shippers_from_env",
]

ENV_DD_API_KEY: Final = "DD_API_KEY"
ENV_DD_SITE: Final = "DD_SITE"
ENV_LOKI_URL: Final = "AGENTUITY_LOKI_URL"
ENV_OTLP_LOGS_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"
ENV_OTLP_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_OTLP_HEADERS: Final = "OTEL_EXPORTER_OTLP_HEADERS"
ENV_OTLP_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
ENV_OTLP_SERVICE_NAME: Final = "OTEL_SERVICE_NAME"
ENV_OTLP_RESOURCE_ATTRIBUTES: Final = "OTEL_RESOURCE_ATTRIBUTES"

# Loggers a shipping handler never ships: our own diagnostics and the HTTP clients' chatter (the
# worker's own requests would otherwise come back as records to send, forever).
_IGNORED_LOGGERS: Final = frozenset({INTERNAL_LOGGER_NAME, "httpx", "httpcore", "urllib3", "requests"})


def _configuration_error(exc: ValueError) -> ConfigurationError:
    return exc if isinstance(exc, ConfigurationError) else ConfigurationError(str(exc))


class Shipper:
    """A destination for log records: a wire protocol on the shared delivery engine.

    Use a subclass (:class:`DatadogShipper`, :class:`LokiShipper`, :class:`OTLPShipper`,
    :class:`HTTPShipper`). Thread-safe; its worker starts with the first record. It keeps running
    until :meth:`close` or interpreter exit, whatever happens to the handlers feeding it.
    """

    #: What a shipper of this class is called in diagnostics.
    kind: ClassVar[str] = "Shipper"

    def __init__(self, protocol: WireProtocol, **options: Unpack[EngineOptions]) -> None:
        self._endpoint = redact_url(protocol.endpoint)
        self._engine = DeliveryEngine(protocol, name=f"{type(self).__name__}({self._endpoint})", **options)

    @property
    def endpoint(self) -> str:
        """The URL records are posted to, without credentials."""
        return self._endpoint

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue one schema dict (what ``event_from_record`` builds) for delivery; never raises.

        ``timestamp`` and ``level`` are filled in when missing. The dict is copied, so the caller
        may reuse it.
        """
        try:
            data = dict(event)
            if "timestamp" not in data:
                data = {"timestamp": format_timestamp(time.time()), **data}
            data.setdefault("level", "info")
            self._engine.submit_event(data)
        except Exception as exc:
            report_once(f"send:{self.kind}", "%s.send() failed: %r", type(self).__name__, exc)

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is queued and wait; see :meth:`DeliveryEngine.flush`.

        Returns:
            ``True`` when every record queued so far was delivered or finally refused.
        """
        return self._engine.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout`` (default ``close_timeout_s``, 5 s) and stop; idempotent.

        Returns:
            ``True`` when every record was delivered or finally refused.
        """
        return self._engine.close(timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._engine.closed

    def stats(self) -> dict[str, Any]:
        """Delivery counters: ``enqueued``, ``sent``, ``retried``, ``dropped`` (reason -> count),
        ``spooled``, ``queue_depth`` and ``last_error`` (never holds a credential)."""
        return self._engine.stats()

    def handler(self, level: int | str = logging.NOTSET) -> ShippingHandler:
        """Return a new :class:`ShippingHandler` feeding this shipper."""
        return ShippingHandler(self, level=level)

    def __enter__(self) -> Shipper:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self._endpoint} {state}>"

    __str__ = __repr__


class DatadogShipper(Shipper):
    """Ships to Datadog's HTTP logs intake v2 (``{url}/api/v2/logs``), gzip'd JSON arrays.

    Each entry is the record in the package's schema, so the session and thread IDs and the
    user's fields are top-level attributes (``@agentuitySessionId:sess_…`` in search), plus
    ``ddsource``, ``service``, ``hostname``, ``ddtags`` and ``status`` from the level. Batches stay
    within 1,000 entries and 5 MB; an entry above 1 MB is truncated with a marker, never dropped.

    Args:
        api_key: the ``DD-API-KEY``; never shown in a repr, error, warning or ``stats()``.
        site: the Datadog site (``datadoghq.com``, ``datadoghq.eu``, ``us3.datadoghq.com``, ...).
        service: the ``service`` attribute (default: each record's ``service`` field).
        source: ``ddsource`` (selects the integration pipeline).
        hostname: ``hostname`` (default: this machine's name).
        tags: ``ddtags``: a mapping, a list of ``"k:v"`` or one ``"k:v,k:v"`` string.
        url: intake base URL replacing the site's (a proxy, a test server).
        **options: the engine's :class:`EngineOptions` (``spool_dir=``, queue bounds, ...).

    Raises:
        ConfigurationError: a missing key, an unknown site, a bad URL, tag or option.
        MissingDependencyError: the ``ship`` extra is not installed.
    """

    kind = "datadog"

    def __init__(
        self,
        api_key: str,
        *,
        site: str = "datadoghq.com",
        service: str | None = None,
        source: str = "python",
        hostname: str | None = None,
        tags: Mapping[str, str] | Sequence[str] | str | None = None,
        url: str | None = None,
        **options: Unpack[EngineOptions],
    ) -> None:
        from agentuity_logging._delivery._datadog import DatadogProtocol

        try:
            protocol = DatadogProtocol(
                api_key,
                site=site,
                url=url,
                service=service,
                source=source,
                hostname=hostname,
                tags=tags,
            )
        except ValueError as exc:
            raise _configuration_error(exc) from None
        super().__init__(protocol, **options)


class LokiShipper(Shipper):
    """Ships to Grafana Loki's push API (``{url}/loki/api/v1/push``).

    Stream labels stay few and bounded (``service``, ``level`` and the ``labels`` you pass); the
    session and thread IDs go into each entry's structured metadata and its JSON line, never into
    labels: a label per session would make one stream per request and ruin Loki's index.

    Args:
        url: Loki base URL, e.g. ``http://loki:3100``.
        labels: static stream labels (low cardinality: ``env``, ``region``...).
        tenant_id: ``X-Scope-OrgID`` for multi-tenant Loki.
        auth: ``(user, password)`` basic auth (Grafana Cloud: instance ID and access token).
        headers: extra request headers (their values are treated as secrets).
        encoding: ``"protobuf"`` (snappy-compressed, the default) or ``"json"`` (gzip'd).
        service: the ``service`` label (default: each record's ``service`` field).
        **options: the engine's :class:`EngineOptions`.

    Raises:
        ConfigurationError: a bad URL, label, header, encoding or option.
        MissingDependencyError: the ``ship`` extra is not installed.
    """

    kind = "loki"

    def __init__(
        self,
        url: str,
        *,
        labels: Mapping[str, str] | None = None,
        tenant_id: str | None = None,
        auth: tuple[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        encoding: Literal["protobuf", "json"] = "protobuf",
        service: str | None = None,
        **options: Unpack[EngineOptions],
    ) -> None:
        from agentuity_logging._delivery._loki import LokiProtocol

        try:
            protocol = LokiProtocol(
                url,
                labels=labels,
                tenant_id=tenant_id,
                auth=auth,
                headers=headers,
                encoding=encoding,
                service=service,
            )
        except ValueError as exc:
            raise _configuration_error(exc) from None
        super().__init__(protocol, **options)


class OTLPShipper(Shipper):
    """Ships OTLP/HTTP logs (``{endpoint}/v1/logs``) to an OpenTelemetry Collector.

    The session and thread IDs become log attributes, trace and span IDs are set when a record
    carries them, and ``service.name`` and the ``resource`` attributes describe the process.

    Args:
        endpoint: collector base URL, e.g. ``http://collector:4318`` (``/v1/logs`` is appended).
        logs_endpoint: instead of ``endpoint``, the full logs URL, used as is (like the collector's
            ``otlphttp`` exporter and ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``).
        headers: extra request headers (their values are treated as secrets).
        encoding: ``"protobuf"`` (default) or ``"json"``.
        resource: resource attributes (``deployment.environment``, ``service.version``...).
        service: ``service.name`` (default: each record's ``service``, then ``resource``).
        **options: the engine's :class:`EngineOptions`.

    Raises:
        ConfigurationError: a bad endpoint (or both or neither given), header, encoding or option.
        MissingDependencyError: the ``ship`` extra is not installed.
    """

    kind = "otlp"

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        logs_endpoint: str | None = None,
        headers: Mapping[str, str] | None = None,
        encoding: Literal["protobuf", "json"] = "protobuf",
        resource: Mapping[str, Any] | None = None,
        service: str | None = None,
        **options: Unpack[EngineOptions],
    ) -> None:
        from agentuity_logging._delivery._otlp import OTLPProtocol

        url = endpoint if logs_endpoint is None else logs_endpoint
        if url is None or (endpoint is not None and logs_endpoint is not None):
            raise ConfigurationError("OTLPShipper takes one of endpoint= (a base URL) or logs_endpoint=")
        try:
            protocol = OTLPProtocol(
                url,
                headers=headers,
                encoding=encoding,
                resource=resource,
                service=service,
                exact=logs_endpoint is not None,
            )
        except ValueError as exc:
            raise _configuration_error(exc) from None
        super().__init__(protocol, **options)


class HTTPShipper(Shipper):
    """Posts gzip'd batches of JSON records to any HTTP collector (Vector, Fluent Bit, Logstash).

    Args:
        url: the collector's URL, used as given.
        format: ``"ndjson"`` (one record per line, the default) or ``"json_array"``.
        headers: extra request headers (their values are treated as secrets).
        **options: the engine's :class:`EngineOptions`.

    Raises:
        ConfigurationError: a bad URL, header, format or option.
        MissingDependencyError: the ``ship`` extra is not installed.
    """

    kind = "http"

    def __init__(
        self,
        url: str,
        *,
        format: Literal["ndjson", "json_array"] = "ndjson",
        headers: Mapping[str, str] | None = None,
        **options: Unpack[EngineOptions],
    ) -> None:
        from agentuity_logging._delivery._http import HTTPProtocol

        try:
            protocol = HTTPProtocol(url, format=format, headers=headers)
        except ValueError as exc:
            raise _configuration_error(exc) from None
        super().__init__(protocol, **options)


class ShippingHandler(EventHandler):
    """A logging handler that queues records for a :class:`Shipper` (stdlib and structlog alike).

    A log call only appends to the shipper's queue: no network I/O, no JSON encoding and no lock
    of the logging module's on the application's thread. Records from the package's own
    diagnostics and from ``httpx``, ``httpcore``, ``urllib3`` and ``requests`` are never shipped,
    so a failing backend cannot feed its own errors back in. ``close()`` (which
    ``logging.config.dictConfig`` calls on every existing handler) detaches the handler but leaves
    the shipper running: only ``shipper.close()`` or interpreter exit stops it. Usable from
    ``dictConfig`` with ``"()": "agentuity_logging.shipping.ShippingHandler"``.

    Args:
        shipper: where records go.
        level: the handler's level (a name or a number).
    """

    ignored_prefixes: ClassVar[tuple[str, ...]] = tuple(sorted(f"{name}." for name in _IGNORED_LOGGERS))

    def __init__(self, shipper: Shipper, level: int | str = logging.NOTSET) -> None:
        super().__init__(level)
        if not isinstance(shipper, Shipper):
            raise TypeError(f"ShippingHandler needs a Shipper, got {type(shipper).__name__}")
        self.shipper = shipper
        self._submit_record = shipper._engine.submit_record
        self._submit_event = shipper._engine.submit_event
        # Logger name -> ignored? (a dict lookup per record instead of five prefix tests).
        self._ignored: dict[str, bool] = {}

    def _remember(self, name: str) -> bool:
        """Decide (once per logger name) whether records of ``name`` are ignored."""
        ignored = name in _IGNORED_LOGGERS or name.startswith(self.ignored_prefixes)
        if len(self._ignored) < 10_000:  # logger names are few; never let odd ones grow it forever
            self._ignored[name] = ignored
        return ignored

    def filter(self, record: logging.LogRecord) -> bool:
        """Refuse our own and the HTTP clients' records, then apply the handler's filters."""
        if record.name in _IGNORED_LOGGERS:
            return False
        return super().filter(record)

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and queue ``record`` without taking the handler lock (the queue is thread-safe)."""
        try:
            ignored = self._ignored.get(record.name)
            if ignored is None:
                ignored = self._remember(record.name)
            if ignored:
                return False
            stamper = self.stamper
            if stamper is not None:
                stamper.filter(record)
            if self.filters:
                outcome: Any = logging.Filterer.filter(self, record)
                if not outcome:
                    return False
                if isinstance(outcome, logging.LogRecord):  # Python 3.12+: a replacement record
                    record = outcome
            self._submit_record(record)
        except Exception as exc:
            report_once("shipping-handle", "ShippingHandler could not queue a record: %r", exc)
            return False
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Queue a stdlib record (used when something calls ``emit`` directly)."""
        self._submit_record(record)

    def emit_event(self, event: Mapping[str, Any]) -> None:
        """Queue a schema dict (the structlog path)."""
        self._submit_event(event)

    def flush(self) -> None:
        """Ask the shipper to send what it has now; does not wait.

        ``logging.shutdown`` and ``dictConfig`` call this while holding the logging module's lock:
        waiting there for the worker (which may itself need that lock to log) could deadlock.
        Use ``shipper.flush(timeout)`` to wait for delivery.
        """
        self.shipper._engine.nudge()

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until the shipper delivered (or finally refused) everything; ``agentuity_logging.flush()``."""
        return self.shipper.flush(timeout_s)

    def close(self) -> None:
        """Detach from the logging module; the shipper keeps running (see the class docs)."""
        super().close()

    def __repr__(self) -> str:
        return f"<ShippingHandler {self.shipper!r} ({logging.getLevelName(self.level)})>"


# --- from the environment -----------------------------------------------------------------


def _env_url(environ: Mapping[str, str], name: str) -> str:
    value = environ[name].strip()
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises on a malformed port
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise ConfigurationError(f"{name}: expected an http:// or https:// URL, got {redact_url(value)!r}")
    return value


def _split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """Take ``user:password@`` out of a URL (Grafana Cloud style) as basic-auth credentials."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    auth = (
        urllib.parse.unquote(parts.username),
        urllib.parse.unquote(parts.password or ""),
    )
    return redact_url(url) + (f"?{parts.query}" if parts.query else ""), auth


def _key_values(environ: Mapping[str, str], name: str) -> dict[str, str]:
    """Parse ``k=v,k=v`` (values percent-decoded), as the OpenTelemetry spec defines it."""
    result: dict[str, str] = {}
    for item in environ.get(name, "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"{name}: expected key=value pairs separated by commas")
        result[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return result


def shippers_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    service: str | None = None,
    **options: Unpack[EngineOptions],
) -> list[Shipper]:
    """Create the shippers the environment asks for (none when no variable is set).

    * ``DD_API_KEY`` (and ``DD_SITE``, default ``datadoghq.com``): a :class:`DatadogShipper`.
    * ``AGENTUITY_LOKI_URL``: a :class:`LokiShipper`; ``https://user:token@host`` becomes basic auth.
    * ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` (with
      ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_SERVICE_NAME`` and
      ``OTEL_RESOURCE_ATTRIBUTES``): an :class:`OTLPShipper`.

    Args:
        environ: the variables to read (default ``os.environ``).
        service: the service name given to every shipper (``OTEL_SERVICE_NAME`` wins for OTLP).
        **options: engine options for every shipper; a ``spool_dir`` is a parent directory in
            which each shipper gets its own subdirectory (``datadog``, ``loki``, ``otlp``).

    Raises:
        ConfigurationError: a half-set or malformed environment (``DD_SITE`` without
            ``DD_API_KEY``, a malformed URL, ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``...), checked
            before any shipper is created.
    """
    env = os.environ if environ is None else environ
    plans: list[tuple[type[Shipper], dict[str, Any]]] = []

    api_key = env.get(ENV_DD_API_KEY, "").strip()
    site = env.get(ENV_DD_SITE, "").strip()
    if site and not api_key:
        raise ConfigurationError(
            f"{ENV_DD_SITE} is set but {ENV_DD_API_KEY} is not: set both to ship to Datadog"
        )
    if api_key:
        plans.append(
            (DatadogShipper, {"api_key": api_key, "site": site or "datadoghq.com", "service": service})
        )

    if env.get(ENV_LOKI_URL, "").strip():
        url, auth = _split_userinfo(_env_url(env, ENV_LOKI_URL))
        plans.append((LokiShipper, {"url": url, "auth": auth, "service": service}))

    endpoint_var = next(
        (n for n in (ENV_OTLP_LOGS_ENDPOINT, ENV_OTLP_ENDPOINT) if env.get(n, "").strip()), None
    )
    if endpoint_var is not None:
        # The OpenTelemetry spec: the signal-specific variable is the logs URL as is; the general one is
        # a base to which the exporter appends /v1/logs.
        endpoint = _env_url(env, endpoint_var)
        where = "logs_endpoint" if endpoint_var == ENV_OTLP_LOGS_ENDPOINT else "endpoint"
        wire = env.get(ENV_OTLP_PROTOCOL, "http/protobuf").strip() or "http/protobuf"
        encodings = {"http/protobuf": "protobuf", "http/json": "json"}
        if wire not in encodings:
            raise ConfigurationError(
                f"{ENV_OTLP_PROTOCOL}={wire!r} is not supported: OTLPShipper speaks "
                "http/protobuf or http/json"
            )
        plans.append(
            (
                OTLPShipper,
                {
                    where: endpoint,
                    "headers": _key_values(env, ENV_OTLP_HEADERS) or None,
                    "encoding": encodings[wire],
                    "resource": _key_values(env, ENV_OTLP_RESOURCE_ATTRIBUTES) or None,
                    "service": env.get(ENV_OTLP_SERVICE_NAME, "").strip() or service,
                },
            )
        )

    shippers: list[Shipper] = []
    try:
        for cls, kwargs in plans:
            engine_options: dict[str, Any] = dict(options)
            spool_dir = engine_options.get("spool_dir")
            if spool_dir is not None:
                engine_options["spool_dir"] = os.path.join(spool_dir, cls.kind)
            shippers.append(cls(**kwargs, **engine_options))
    except BaseException:
        for shipper in shippers:
            shipper.close(timeout=0)
        raise
    return shippers
