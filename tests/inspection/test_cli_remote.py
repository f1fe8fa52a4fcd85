"""The CLI's Loki and Datadog sources against the fake backends, filled by the real shippers.

One run of the fill script writes the local store and ships the same records to a fake Loki (protobuf
push) and a fake Datadog (intake v2); the CLI then reads them back through ``query_range`` and the logs
search API, and must tell the same story as the local store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from agentuity_logging._delivery._loki import LokiProtocol
from agentuity_logging._inspection import _datadog, _loki
from agentuity_logging._storage._logstore import parse_timestamp_us
from tests.fakes.datadog import FakeDatadog
from tests.fakes.events import make_event, rfc3339, send
from tests.fakes.loki import FakeLoki
from tests.inspection.conftest import Cli, Filled, fill, messages


@dataclass(frozen=True)
class Remote:
    """The fakes and the run that filled them (and the local store)."""

    loki: FakeLoki
    datadog: FakeDatadog
    filled: Filled

    def loki_args(self) -> list[str]:
        """Source options for the fake Loki."""
        return ["--source", "loki", "--loki-url", self.loki.url]

    def datadog_args(self) -> list[str]:
        """Source options for the fake Datadog (keys go in the environment)."""
        return ["--source", "datadog", "--dd-url", self.datadog.url]

    def env(self) -> dict[str, str | None]:
        """The Datadog keys."""
        return {"DD_API_KEY": self.datadog.api_key, "DD_APP_KEY": self.datadog.application_key}


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """Fake Loki and Datadog filled (with the local store) by one real run."""
    with FakeLoki() as loki, FakeDatadog() as datadog:
        path = tmp_path_factory.mktemp("remote") / "logs.sqlite3"
        manifest = fill(path, "--loki", loki.url, "--datadog", datadog.url, "--dd-api-key", datadog.api_key)
        yield Remote(loki, datadog, Filled(path, manifest))


SOURCES = ["loki", "datadog"]


def args_of(remote: Remote, name: str) -> list[str]:
    """The source options of ``name``."""
    return remote.loki_args() if name == "loki" else remote.datadog_args()


class TestSameStory:
    """Every source answers the same for the same run."""

    @pytest.mark.parametrize("name", SOURCES)
    def test_session_list_ids(self, run: Cli, remote: Remote, name: str) -> None:
        """The same sessions, newest first, each with its thread and record count."""
        local = run.json("session", "list", "--json", "--store", str(remote.filled.path))
        found = run.json("session", "list", "--json", *args_of(remote, name), env=remote.env())
        assert [s["id"] for s in found] == [s["id"] for s in local]
        assert [s["threadId"] for s in found] == [s["threadId"] for s in local]
        assert [s["logCount"] for s in found] == [s["logCount"] for s in local]
        assert [s["errorCount"] for s in found] == [s["errorCount"] for s in local]

    @pytest.mark.parametrize("name", SOURCES)
    def test_failed_session_is_found(self, run: Cli, remote: Remote, name: str) -> None:
        """``--failed`` finds the turn whose root span failed."""
        found = run.json("session", "list", "--failed", "--json", *args_of(remote, name), env=remote.env())
        assert remote.filled.manifest["failed"] in [s["id"] for s in found]
        failed = next(s for s in found if s["id"] == remote.filled.manifest["failed"])
        assert failed["error"] == "ToolError: search backend timed out"

    @pytest.mark.parametrize("name", SOURCES)
    def test_session_logs_match_the_local_store(self, run: Cli, remote: Remote, name: str) -> None:
        """``session logs --json``: the same records in the same order, in the log schema."""
        sid = remote.filled.sessions[0]
        local = run.json_lines("session", "logs", sid, "--json", "--store", str(remote.filled.path))
        found = run.json_lines("session", "logs", sid, "--json", *args_of(remote, name), env=remote.env())
        assert messages(found) == messages(local)
        assert [r["level"] for r in found] == [r["level"] for r in local]
        assert [r["logger"] for r in found] == [r["logger"] for r in local]
        assert all(r["agentuitySessionId"] == sid for r in found)
        if name == "loki":  # the JSON line is the record itself: identical, timestamps included
            assert [{k: v for k, v in r.items() if k != "service"} for r in found] == local
        else:  # Datadog keeps fields as attributes and times to the millisecond
            assert found[0]["turn"] == 1
            for remote_record, local_record in zip(found, local, strict=True):
                local_us = parse_timestamp_us(local_record["timestamp"])
                remote_us = parse_timestamp_us(remote_record["timestamp"])
                assert local_us is not None
                assert remote_us is not None
                assert 0 <= local_us - remote_us < 1001  # cut to the millisecond (+1 for float rounding)

    @pytest.mark.parametrize("name", SOURCES)
    def test_session_logs_level_filter(self, run: Cli, remote: Remote, name: str) -> None:
        """``--level`` works the same remotely."""
        found = run.json_lines(
            "session",
            "logs",
            remote.filled.manifest["failed"],
            "--level",
            "warning",
            "--json",
            *args_of(remote, name),
            env=remote.env(),
        )
        assert messages(found) == ["search backend slow", "span tool.search"]

    @pytest.mark.parametrize("name", SOURCES)
    def test_session_get_has_the_spans(self, run: Cli, remote: Remote, name: str) -> None:
        """``session get``: levels, spans with their nesting and the failed span."""
        found = run.json(
            "session",
            "get",
            remote.filled.manifest["failed"],
            "--json",
            *args_of(remote, name),
            env=remote.env(),
        )
        assert found["success"] is False
        assert found["levels"] == {"debug": 1, "info": 5, "warning": 1, "error": 1}
        spans = {s["name"]: s for s in found["spans"]}
        assert spans["llm.call"]["parentSpanId"] == spans["plan"]["spanId"]
        assert spans["tool.search"]["status"] == "error"
        assert spans["plan"]["status"] == "ok"

    @pytest.mark.parametrize("name", SOURCES)
    def test_session_get_text_waterfall(self, run: Cli, remote: Remote, name: str) -> None:
        """The text view draws the same spans."""
        result = run(
            "session", "get", remote.filled.manifest["failed"], *args_of(remote, name), env=remote.env()
        )
        assert result.exit_code == 0, result.stderr
        for span in ("plan", "llm.call", "tool.search"):
            assert f"  {span} " in result.stdout

    @pytest.mark.parametrize("name", SOURCES)
    def test_thread_get_sessions_in_order(self, run: Cli, remote: Remote, name: str) -> None:
        """``thread get``: the thread's three sessions, oldest first."""
        found = run.json(
            "thread",
            "get",
            remote.filled.manifest["thread_a"],
            "--json",
            *args_of(remote, name),
            env=remote.env(),
        )
        assert [s["id"] for s in found["sessions"]] == remote.filled.sessions[:3]

    @pytest.mark.parametrize("name", SOURCES)
    def test_thread_list(self, run: Cli, remote: Remote, name: str) -> None:
        """``thread list``: both threads, most recent first."""
        found = run.json("thread", "list", "--json", *args_of(remote, name), env=remote.env())
        assert [t["id"] for t in found] == [
            remote.filled.manifest["thread_b"],
            remote.filled.manifest["thread_a"],
        ]
        assert found[1]["sessionCount"] == 3

    @pytest.mark.parametrize("name", SOURCES)
    def test_metadata_filter_matches_record_fields(self, run: Cli, remote: Remote, name: str) -> None:
        """Remote records carry no session metadata: ``--metadata`` matches their fields instead."""
        found = run.json(
            "session", "list", "-m", "model=sim-1", "--json", *args_of(remote, name), env=remote.env()
        )
        assert {s["id"] for s in found} == set(remote.filled.sessions[:3])

    @pytest.mark.parametrize("name", SOURCES)
    def test_unknown_session_exits_1(self, run: Cli, remote: Remote, name: str) -> None:
        """No records for the session: exit 1."""
        result = run("session", "get", "sess_nobody", *args_of(remote, name), env=remote.env())
        assert result.exit_code == 1
        assert "not found" in result.stderr


class TestLokiPaging:
    """Loki has no cursor: pages re-query from the last timestamp and drop the overlap."""

    def test_pages_across_entries_sharing_a_timestamp(
        self, run: Cli, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """25 records, 4 of them at one nanosecond across a page boundary, pages of 10: each once."""
        monkeypatch.setattr(_loki, "PAGE_LIMIT", 10)
        base = time.time() - 60
        events = []
        for i in range(25):
            # Records 8..11 share one timestamp: the first page ends in the middle of them.
            moment = base + (8 if 8 <= i <= 11 else i) * 0.001
            events.append(make_event(f"record {i:02d}", timestamp=rfc3339_at(moment)))
        with FakeLoki() as loki:
            import httpx

            protocol = LokiProtocol(loki.url, service="pager", encoding="json")
            request = protocol.encode([protocol.prepare(e) for e in events])
            with httpx.Client() as client:
                assert send(client, request).status_code == 204
            found = run.json_lines(
                "session",
                "logs",
                events[0]["agentuitySessionId"],
                "--json",
                "--source",
                "loki",
                "--loki-url",
                loki.url,
            )
            queries = [r for r in loki.requests if r.path.endswith("/query_range")]
        assert sorted(messages(found)) == [f"record {i:02d}" for i in range(25)]
        assert len(queries) >= 3
        assert all(int(q.param("limit") or 0) <= 10 for q in queries)


def rfc3339_at(seconds: float) -> str:
    """The schema's timestamp for epoch ``seconds``."""
    import datetime as dt

    return rfc3339(dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc))


class TestDatadogPaging:
    """Datadog pages with ``meta.page.after`` cursors."""

    def test_follows_cursors(self, run: Cli, remote: Remote, monkeypatch: pytest.MonkeyPatch) -> None:
        """Pages of 3 still return every record of the session, in order."""
        monkeypatch.setattr(_datadog, "PAGE_LIMIT", 3)
        before = len(remote.datadog.requests)
        sid = remote.filled.sessions[0]
        found = run.json_lines("session", "logs", sid, "--json", *remote.datadog_args(), env=remote.env())
        searches = [r for r in remote.datadog.requests[before:] if r.path.endswith("/search")]
        assert len(found) == 9
        assert len(searches) == 3
        assert all(orjson.loads(r.raw_body)["page"]["limit"] == 3 for r in searches)

    def test_partial_results_are_reported(
        self, run: Cli, remote: Remote, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A ``meta.status`` of ``timeout`` prints a warning on stderr; the records still print."""
        original = _datadog.DatadogSource._post

        def timing_out(self: _datadog.DatadogSource, body: dict[str, Any]) -> dict[str, Any]:
            answer = original(self, body)
            answer["meta"]["status"] = "timeout"
            return answer

        monkeypatch.setattr(_datadog.DatadogSource, "_post", timing_out)
        result = run("session", "logs", remote.filled.sessions[0], *remote.datadog_args(), env=remote.env())
        assert result.exit_code == 0
        assert len(result.stdout.splitlines()) == 9
        assert "warning: Datadog answered with partial results" in result.stderr


class TestRemoteFailures:
    """A backend down or refusing credentials: one clear line, no traceback, non-zero exit."""

    def test_loki_down(self, run: Cli) -> None:
        """Nothing listening: "cannot reach Loki", exit 3."""
        loki = FakeLoki()
        with loki:
            url = loki.url
        result = run("session", "list", "--source", "loki", "--loki-url", url)
        assert result.exit_code == 3
        assert result.stderr.startswith(f"agentuity-logging: error: cannot reach Loki at {url}")
        assert len(result.stderr.strip().splitlines()) == 1

    def test_loki_refuses_without_tenant(self, run: Cli) -> None:
        """Auth on and no tenant: Loki's 401 is reported in one line."""
        with FakeLoki(require_tenant=True) as loki:
            refused = run("session", "list", "--source", "loki", "--loki-url", loki.url)
            allowed = run(
                "session", "list", "--source", "loki", "--loki-url", loki.url, "--loki-tenant", "t1"
            )
        assert refused.exit_code == 3
        assert "refused the credentials (HTTP 401): no org id" in refused.stderr
        assert allowed.exit_code == 1  # reachable, empty: nothing found

    def test_datadog_wrong_application_key(self, run: Cli, remote: Remote) -> None:
        """A wrong application key: 403 in one line, exit 3, the keys never printed."""
        env = {**remote.env(), "DD_APP_KEY": "wrong-key-123"}
        result = run("session", "list", *remote.datadog_args(), env=env)
        assert result.exit_code == 3
        assert "refused the API or application key (HTTP 403)" in result.stderr
        assert "wrong-key-123" not in result.stderr
        assert remote.datadog.api_key not in result.stderr

    def test_datadog_down(self, run: Cli) -> None:
        """Nothing listening: "cannot reach Datadog", exit 3."""
        fake = FakeDatadog()
        with fake:
            url = fake.url
        result = run(
            "session",
            "list",
            "--source",
            "datadog",
            "--dd-url",
            url,
            env={"DD_API_KEY": "k", "DD_APP_KEY": "a"},
        )
        assert result.exit_code == 3
        assert "cannot reach Datadog" in result.stderr
        assert "Traceback" not in result.stderr

    def test_datadog_needs_keys(self, run: Cli) -> None:
        """No DD_API_KEY/DD_APP_KEY: a usage error saying so."""
        result = run(
            "session",
            "list",
            "--source",
            "datadog",
            "--dd-url",
            "http://127.0.0.1:9",
            env={"DD_API_KEY": None, "DD_APP_KEY": None},
        )
        assert result.exit_code == 2
        assert "DD_API_KEY and DD_APP_KEY" in result.stderr

    def test_unknown_datadog_site(self, run: Cli) -> None:
        """A site that does not exist is a usage error listing the real ones."""
        result = run(
            "session",
            "list",
            "--source",
            "datadog",
            "--dd-site",
            "example.com",
            env={"DD_API_KEY": "k", "DD_APP_KEY": "a"},
        )
        assert result.exit_code == 2
        assert "datadoghq.eu" in result.stderr

    def test_loki_needs_a_url(self, run: Cli) -> None:
        """``--source loki`` without a URL is a usage error."""
        result = run("session", "list", "--source", "loki", env={"AGENTUITY_LOKI_URL": None})
        assert result.exit_code == 2
        assert "--loki-url" in result.stderr
