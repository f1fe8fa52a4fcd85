"""Credentials never leak (reprs, errors, warnings, stats) and secret-named fields are masked."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentuity_logging import ConfigurationError
from agentuity_logging._delivery._redaction import DEFAULT_REDACT, REDACTED, Redactor
from agentuity_logging.shipping import (
    DatadogShipper,
    HTTPShipper,
    LokiShipper,
    OTLPShipper,
    ShippingHandler,
)
from tests.fakes import FakeDatadog, FakeHTTPSink

from .shipping_support import FAST_RETRY, ShipperFactory, attach, shipper_factory

SECRET = "s3cr3t-value-that-must-not-leak"


@pytest.fixture
def make() -> Iterator[ShipperFactory]:
    """Creates shippers and closes them after the test."""
    yield from shipper_factory()


class TestCredentialsNeverShown:
    @pytest.mark.parametrize(
        "build",
        [
            lambda: DatadogShipper(SECRET, url="http://127.0.0.1:9"),
            lambda: LokiShipper("http://127.0.0.1:9", auth=("user", SECRET)),
            lambda: OTLPShipper("http://127.0.0.1:9", headers={"Authorization": SECRET}),
            lambda: HTTPShipper("http://127.0.0.1:9/logs", headers={"X-Token": SECRET}),
        ],
        ids=["datadog", "loki", "otlp", "http"],
    )
    def test_repr_str_and_stats_hide_credentials(self, build: Any) -> None:
        """repr(), str(), a handler's repr and stats() never contain the credential."""
        shipper = build()
        try:
            shown = [repr(shipper), str(shipper), repr(ShippingHandler(shipper)), str(shipper.stats())]
            assert all(SECRET not in text for text in shown)
        finally:
            shipper.close(0)

    def test_configuration_errors_hide_the_key(self) -> None:
        """An error about another argument never echoes the API key."""
        with pytest.raises(ConfigurationError) as info:
            DatadogShipper(SECRET, site="not-a-site")
        assert SECRET not in str(info.value)

    def test_url_credentials_are_hidden(self) -> None:
        """User info in a URL does not show up in the shipper's repr."""
        shipper = HTTPShipper(f"http://user:{SECRET}@127.0.0.1:9/logs")
        try:
            assert SECRET not in repr(shipper)
            assert SECRET not in shipper.endpoint
        finally:
            shipper.close(0)

    def test_a_backend_echoing_the_key_is_scrubbed(
        self,
        fake_http_sink: FakeHTTPSink,
        make: ShipperFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """An error body quoting our token reaches stats() and warnings with the token removed."""
        fake_http_sink.reject_next(1, status=400, body=f"bad token {SECRET}")
        shipper = make(HTTPShipper, fake_http_sink.endpoint, headers={"X-Token": SECRET})
        with caplog.at_level(logging.DEBUG, logger="agentuity_logging.internal"):
            attach(shipper).info("record")
            assert shipper.flush(5)
        assert "bad token" in (shipper.stats()["last_error"] or "")
        assert SECRET not in str(shipper.stats())
        assert all(SECRET not in r.getMessage() for r in caplog.records)

    def test_auth_failures_never_log_the_key(
        self, fake_datadog: FakeDatadog, make: ShipperFactory, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The refused-credentials error and the retry warnings do not contain the key."""
        shipper = make(DatadogShipper, SECRET, url=fake_datadog.url, **FAST_RETRY)
        with caplog.at_level(logging.DEBUG, logger="agentuity_logging.internal"):
            attach(shipper).info("record")
            shipper.flush(2)
        assert caplog.records
        assert all(SECRET not in r.getMessage() for r in caplog.records)


class TestFieldMasking:
    def test_defaults_cover_the_usual_names(self) -> None:
        """authorization, api_key, password, token, secret and cookie names are masked."""
        event = {
            "Authorization": "Bearer x",
            "api_key": "k",
            "apiKey": "k",
            "X-Api-Key": "k",
            "password": "p",
            "db_passwd": "p",
            "access_token": "t",
            "client_secret": "s",
            "Set-Cookie": "c",
            "user": "ada",
        }
        masked = Redactor()(event)
        assert {k for k, v in masked.items() if v == REDACTED} == set(event) - {"user"}
        assert masked["user"] == "ada"

    def test_nested_dicts_and_lists_are_searched(self) -> None:
        """Secrets inside nested dicts and lists of dicts are masked too."""
        event = {"request": {"headers": {"cookie": "c", "accept": "*/*"}}, "calls": [{"token": "t"}]}
        masked = Redactor()(event)
        assert masked["request"]["headers"] == {"cookie": REDACTED, "accept": "*/*"}
        assert masked["calls"] == [{"token": REDACTED}]

    def test_numbers_and_booleans_are_kept(self) -> None:
        """Token counts and flags under secret-looking names are not credentials."""
        event = {"prompt_tokens": 812, "max_tokens": 4096, "has_password": True, "token": None}
        assert Redactor()(event) == event

    def test_the_callers_event_is_never_mutated(self) -> None:
        """Masking copies what it changes; the original dict (shared with other outputs) is intact."""
        nested = {"password": "p"}
        event = {"user": nested, "token": "t"}
        Redactor()(event)
        assert event == {"user": {"password": "p"}, "token": "t"}

    def test_a_clean_event_is_returned_as_is(self) -> None:
        """With nothing to mask the same object comes back (no copy on the hot path)."""
        event = {"message": "hi", "level": "info"}
        redactor = Redactor()
        assert redactor(event) is event
        assert redactor(event) is event

    def test_a_custom_list_replaces_the_defaults(
        self, fake_datadog: FakeDatadog, make: ShipperFactory
    ) -> None:
        """redact=[...] masks those names instead of the defaults."""
        shipper = make(DatadogShipper, fake_datadog.api_key, url=fake_datadog.url, redact=["ssn"])
        attach(shipper).info("x", extra={"ssn": "123", "password": "visible"})
        assert shipper.flush(5)
        (entry,) = fake_datadog.entries
        assert entry["ssn"] == REDACTED
        assert entry["password"] == "visible"

    def test_an_empty_list_disables_masking(self) -> None:
        """redact=[] turns masking off."""
        event = {"password": "p"}
        assert Redactor([])(event) is event

    def test_a_single_string_is_refused(self, fake_datadog: FakeDatadog) -> None:
        """redact="token" (a string, not a list) is a configuration error."""
        with pytest.raises(ConfigurationError, match="redact"):
            DatadogShipper(fake_datadog.api_key, url=fake_datadog.url, redact="token")  # type: ignore[arg-type]

    @given(
        st.dictionaries(
            st.one_of(st.sampled_from(DEFAULT_REDACT), st.text(max_size=12)),
            st.one_of(st.text(max_size=5), st.integers(), st.none()),
            max_size=8,
        )
    )
    def test_no_secret_named_text_survives(self, event: dict[str, Any]) -> None:
        """For any event: a text value under a secret-like name is masked, everything else is kept."""
        redactor = Redactor()
        masked = redactor(event)
        assert set(masked) == set(event)
        for key, value in event.items():
            if redactor.is_secret(key) and isinstance(value, str):
                assert masked[key] == REDACTED
            else:
                assert masked[key] == value
