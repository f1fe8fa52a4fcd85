"""The examples of ``docs/shipping.md`` run as written, against the fake backends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fakes import FakeHTTPSink, FakeLoki, FakeOTLP

PAGE = Path(__file__).resolve().parents[2] / "docs" / "shipping.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_every_example_runs(
    fake_loki: FakeLoki,
    fake_otlp: FakeOTLP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each python block runs in order (local URLs pointed at the fakes); the quick start delivers."""
    monkeypatch.setenv("DD_API_KEY", "docs-example-key-0123456789")
    with FakeHTTPSink(path="/logs") as sink:
        code = "\n".join(BLOCK.findall(PAGE.read_text(encoding="utf-8")))
        code = code.replace("http://localhost:3100", fake_loki.url)
        code = code.replace("http://localhost:4318", fake_otlp.url)
        code = code.replace("http://localhost:8686/logs", sink.endpoint)
        namespace: dict[str, object] = {"__name__": "docs_shipping"}
        try:
            exec(compile(code, str(PAGE), "exec"), namespace)
        finally:
            for value in namespace.values():
                close = getattr(value, "close", None)
                if callable(close) and type(value).__name__.endswith("Shipper"):
                    close(0)
    assert ['"plan ready"' in e.line for e in fake_loki.stored()] == [True]
