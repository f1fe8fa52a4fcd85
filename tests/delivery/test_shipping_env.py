"""shippers_from_env(): the environment variables that create shippers, and half-set ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentuity_logging import ConfigurationError
from agentuity_logging.shipping import (
    DatadogShipper,
    LokiShipper,
    OTLPShipper,
    Shipper,
    shippers_from_env,
)
from tests.fakes import FakeLoki, FakeOTLP

from .shipping_support import attach


@pytest.fixture
def created() -> Iterator[list[Shipper]]:
    """Shippers made by a test; closed afterwards."""
    shippers: list[Shipper] = []
    yield shippers
    for shipper in shippers:
        shipper.close(0)


def build(created: list[Shipper], env: dict[str, str], **kwargs: object) -> list[Shipper]:
    shippers = shippers_from_env(env, **kwargs)  # type: ignore[arg-type]
    created.extend(shippers)
    return shippers


class TestShippersFromEnv:
    def test_nothing_set_means_no_shippers(self, created: list[Shipper]) -> None:
        """An environment without the variables creates nothing."""
        assert build(created, {"PATH": "/bin"}) == []

    def test_dd_api_key_creates_a_datadog_shipper_for_the_site(self, created: list[Shipper]) -> None:
        """DD_API_KEY (+ DD_SITE) makes a DatadogShipper posting to that site's intake."""
        (shipper,) = build(created, {"DD_API_KEY": "k" * 32, "DD_SITE": "datadoghq.eu"})
        assert isinstance(shipper, DatadogShipper)
        assert shipper.endpoint == "https://http-intake.logs.datadoghq.eu/api/v2/logs"

    def test_dd_site_without_a_key_is_an_error(self, created: list[Shipper]) -> None:
        """A half-set Datadog environment fails loudly."""
        with pytest.raises(ConfigurationError, match="DD_SITE is set but DD_API_KEY is not"):
            build(created, {"DD_SITE": "datadoghq.eu"})

    def test_unknown_dd_site_is_an_error(self, created: list[Shipper]) -> None:
        """A site that is not a Datadog site is refused, without echoing the key."""
        with pytest.raises(ConfigurationError, match="unknown Datadog site") as info:
            build(created, {"DD_API_KEY": "k" * 32, "DD_SITE": "example.com"})
        assert "k" * 32 not in str(info.value)

    def test_loki_url_creates_a_loki_shipper(self, created: list[Shipper], fake_loki: FakeLoki) -> None:
        """AGENTUITY_LOKI_URL makes a LokiShipper that delivers."""
        (shipper,) = build(created, {"AGENTUITY_LOKI_URL": fake_loki.url})
        assert isinstance(shipper, LokiShipper)
        attach(shipper).info("via env")
        assert shipper.flush(5)
        assert ["via env" in e.line for e in fake_loki.stored()] == [True]

    def test_loki_url_credentials_become_basic_auth(self, created: list[Shipper]) -> None:
        """https://user:token@host is split into basic auth; the token is not in the endpoint."""
        (shipper,) = build(created, {"AGENTUITY_LOKI_URL": "https://123:glc_token@logs.example.net"})
        assert shipper.endpoint == "https://logs.example.net/loki/api/v1/push"
        assert "glc_token" not in repr(shipper)

    @pytest.mark.parametrize("url", ["loki:3100", "ftp://loki", "http://", "http://host:port"])
    def test_malformed_loki_url_is_an_error(self, created: list[Shipper], url: str) -> None:
        """A malformed URL is a ConfigurationError naming the variable."""
        with pytest.raises(ConfigurationError, match="AGENTUITY_LOKI_URL"):
            build(created, {"AGENTUITY_LOKI_URL": url})

    def test_otlp_base_endpoint_gets_the_logs_path(self, created: list[Shipper], fake_otlp: FakeOTLP) -> None:
        """OTEL_EXPORTER_OTLP_ENDPOINT is a base URL: /v1/logs is appended; headers and service apply."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": fake_otlp.url,
            "OTEL_EXPORTER_OTLP_HEADERS": "x-team=a%20b,x-other=c",
            "OTEL_SERVICE_NAME": "planner",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        }
        (shipper,) = build(created, env)
        assert isinstance(shipper, OTLPShipper)
        assert shipper.endpoint == fake_otlp.url + "/v1/logs"
        attach(shipper).info("via env")
        assert shipper.flush(5)
        (record,) = fake_otlp.records
        assert record.resource["service.name"] == "planner"
        assert record.resource["deployment.environment"] == "test"
        assert fake_otlp.requests[0].header("x-team") == "a b"

    def test_otlp_logs_endpoint_wins(self, created: list[Shipper]) -> None:
        """The logs-specific endpoint is preferred over the base one."""
        env = {
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs.example:4318/v1/logs",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other.example:4318",
        }
        (shipper,) = build(created, env)
        assert shipper.endpoint == "http://logs.example:4318/v1/logs"

    def test_otlp_logs_endpoint_is_used_as_is(self, created: list[Shipper]) -> None:
        """The spec's rule: a signal-specific endpoint gets no path; the base one gets /v1/logs."""
        (custom,) = build(created, {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://gw.example/otlp/logs"})
        assert custom.endpoint == "http://gw.example/otlp/logs"
        (base,) = build(created, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://gw.example/otlp/"})
        assert base.endpoint == "http://gw.example/otlp/v1/logs"

    def test_otlp_shipper_takes_exactly_one_endpoint(self) -> None:
        with pytest.raises(ConfigurationError, match="one of endpoint="):
            OTLPShipper()
        with pytest.raises(ConfigurationError, match="one of endpoint="):
            OTLPShipper("http://a:4318", logs_endpoint="http://a:4318/logs")

    def test_otlp_grpc_is_refused(self, created: list[Shipper]) -> None:
        """OTLP over gRPC is not what the shipper speaks: a clear error, not silence."""
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
            build(created, env)

    def test_malformed_otlp_headers_are_an_error(self, created: list[Shipper]) -> None:
        """OTEL_EXPORTER_OTLP_HEADERS must be key=value pairs."""
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_HEADERS": "oops"}
        with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_HEADERS"):
            build(created, env)

    def test_all_three_at_once(self, created: list[Shipper]) -> None:
        """Every configured backend gets its shipper, in a stable order."""
        env = {
            "DD_API_KEY": "k" * 32,
            "AGENTUITY_LOKI_URL": "http://loki:3100",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        }
        kinds = [type(s).__name__ for s in build(created, env)]
        assert kinds == ["DatadogShipper", "LokiShipper", "OTLPShipper"]

    def test_spool_dir_gets_a_subdirectory_per_shipper(self, created: list[Shipper], tmp_path: Path) -> None:
        """One spool_dir for all: each shipper spools in its own subdirectory."""
        env = {"DD_API_KEY": "k" * 32, "AGENTUITY_LOKI_URL": "http://loki:3100"}
        build(created, env, spool_dir=str(tmp_path))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["datadog", "loki"]

    def test_a_failure_closes_what_was_already_created(self, created: list[Shipper], tmp_path: Path) -> None:
        """When one shipper cannot be created, the ones made before it are closed."""
        blocker = tmp_path / "loki"
        blocker.write_text("a file where the loki spool should go")
        env = {"DD_API_KEY": "k" * 32, "AGENTUITY_LOKI_URL": "http://loki:3100"}
        with pytest.raises(ConfigurationError, match="not usable"):
            build(created, env, spool_dir=str(tmp_path))
        # The Datadog spool was released: it can be opened again.
        again = DatadogShipper("k" * 32, spool_dir=tmp_path / "datadog")
        again.close(0)

    def test_default_is_os_environ(self, created: list[Shipper], monkeypatch: pytest.MonkeyPatch) -> None:
        """Without an argument the process environment is read."""
        monkeypatch.setenv("DD_API_KEY", "k" * 32)
        monkeypatch.delenv("AGENTUITY_LOKI_URL", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", raising=False)
        shippers = shippers_from_env()
        created.extend(shippers)
        assert [type(s).__name__ for s in shippers] == ["DatadogShipper"]
