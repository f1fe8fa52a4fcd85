"""User-style code for ``agentuity_logging.shipping`` that mypy --strict checks (never executed)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from agentuity_logging.shipping import (
    DEFAULT_REDACT,
    DatadogShipper,
    HTTPShipper,
    LokiShipper,
    OTLPShipper,
    Shipper,
    ShippingHandler,
    shippers_from_env,
)


def build() -> list[Shipper]:
    datadog = DatadogShipper(
        "key",
        site="datadoghq.eu",
        service="svc",
        tags={"env": "prod"},
        spool_dir=Path("/var/spool/app"),
        max_queue_records=10_000,
        block_timeout_s=0.1,
        redact=[*DEFAULT_REDACT, "ssn"],
    )
    loki = LokiShipper("http://loki:3100", labels={"env": "prod"}, encoding="json", tenant_id="t")
    otlp = OTLPShipper("http://collector:4318", headers={"x": "y"}, resource={"a": 1})
    http = HTTPShipper("http://vector:8686/logs", format="json_array", flush_interval_s=0.5)
    return [datadog, loki, otlp, http, *shippers_from_env({}, service="svc", close_timeout_s=2.0)]


def use(shipper: Shipper) -> None:
    handler: logging.Handler = ShippingHandler(shipper, level="INFO")
    logging.getLogger().addHandler(handler)
    shipper.send({"message": "direct", "answer": 42})
    delivered: bool = shipper.flush(timeout=5)
    stats: dict[str, Any] = shipper.stats()
    dropped: dict[str, int] = stats["dropped"]
    closed: bool = shipper.close(timeout=1)
    print(delivered, dropped, closed, shipper.endpoint)
