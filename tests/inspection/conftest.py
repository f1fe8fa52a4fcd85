"""Fixtures for the CLI tests: a store filled by a real run, and a runner for the commands."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from agentuity_logging._inspection._commands import cli

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Filled:
    """A store written by a real run of the fill script, and what the run says it did."""

    path: Path
    manifest: dict[str, Any]

    @property
    def sessions(self) -> list[str]:
        """Session IDs in the order the run started them."""
        return list(self.manifest["sessions"])


def fill(path: Path, *extra: str) -> dict[str, Any]:
    """Run ``tests/inspection/fill_store.py`` in its own process; return its manifest."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTUITY_", "DD_"))}
    done = subprocess.run(
        [sys.executable, "-m", "tests.inspection.fill_store", str(path), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    manifest: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return manifest


@dataclass(frozen=True)
class Demo:
    """A store written by a real run of ``examples/demo.py``, and the JSON lines the demo printed."""

    path: Path
    records: list[dict[str, Any]]
    thread_store: str
    state_key: str

    @property
    def sessions(self) -> list[str]:
        """Session IDs in the order the demo ran them."""
        return list(dict.fromkeys(r["agentuitySessionId"] for r in self.records if "agentuitySessionId" in r))

    @property
    def thread(self) -> str:
        """The conversation's thread ID."""
        threads = {str(r["agentuityThreadId"]) for r in self.records if "agentuityThreadId" in r}
        assert len(threads) == 1
        return threads.pop()

    def of(self, session_id: str) -> list[dict[str, Any]]:
        """The records the demo printed for one session, as the store keeps them (no ``service``)."""
        return [
            {k: v for k, v in r.items() if k != "service"}
            for r in self.records
            if r.get("agentuitySessionId") == session_id
        ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo run once per module in its own process: store, thread store and state key in tmp."""
    from agentuity_logging._storage._crypto import generate_key

    directory = tmp_path_factory.mktemp("demo")
    store = directory / "logs.sqlite3"
    thread_store = f"sqlite:///{directory / 'threads.db'}"
    key = generate_key()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTUITY_", "DD_", "OTEL_"))}
    env.update(AGENTUITY_LOG_STORE=str(store), AGENTUITY_THREAD_STORE=thread_store, AGENTUITY_STATE_KEY=key)
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    records = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return Demo(store, records, thread_store, key)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    """A store filled once per module by a real run (4 sessions, 2 threads, one failed turn)."""
    path = tmp_path_factory.mktemp("store") / "logs.sqlite3"
    return Filled(path, fill(path))


class Cli:
    """Runs ``agentuity-logging`` in-process with click's runner, stdout and stderr apart."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
        """Invoke the command line with ``args``."""
        return self.runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    def json(self, *args: str, env: Mapping[str, str | None] | None = None) -> Any:
        """Invoke with ``args`` (which include ``--json``) and parse the one document printed."""
        result = self(*args, env=env)
        assert result.exit_code == 0, result.stderr
        return orjson.loads(result.stdout)

    def json_lines(self, *args: str, env: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
        """Invoke with ``args`` and parse every stdout line as JSON."""
        result = self(*args, env=env)
        assert result.exit_code == 0, result.stderr
        return [orjson.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def run() -> Cli:
    """The command line, in-process."""
    return Cli()


def messages(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``message`` of each record."""
    return [str(r["message"]) for r in records]
