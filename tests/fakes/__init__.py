"""Protocol-faithful fake backends (Datadog, Loki, OTLP, generic HTTP) on loopback sockets."""

from tests.fakes._server import FakeServer, ReceivedRequest, Reply
from tests.fakes.datadog import FakeDatadog
from tests.fakes.http_sink import FakeHTTPSink
from tests.fakes.loki import FakeLoki
from tests.fakes.otlp import FakeOTLP

__all__ = ["FakeDatadog", "FakeHTTPSink", "FakeLoki", "FakeOTLP", "FakeServer", "ReceivedRequest", "Reply"]
