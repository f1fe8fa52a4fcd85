"""The CLI against the local store, filled by a real run of ``examples/demo.py``.

The demo runs once per module in its own process (store, thread store and state key in a temporary
directory); its JSON lines on stdout are the reference the CLI's answers are checked against. A few
filters need a failed session, which the demo does not have: those use the fill script's run.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from agentuity_logging._context import session
from agentuity_logging._stamping import SessionContextFilter
from agentuity_logging._storage._logstore import LogStore, LogStoreHandler
from tests.inspection.conftest import ROOT, Cli, Demo, Filled, messages

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SCHEMA_HEAD = ["timestamp", "level", "logger", "message", "agentuitySessionId", "agentuityThreadId"]


class TestSessionList:
    """``session list``."""

    def test_lists_every_session_newest_first(self, run: Cli, demo: Demo) -> None:
        """The demo's three turns are listed, the last one first."""
        found = run.json("session", "list", "--json", "--store", str(demo.path))
        assert [s["id"] for s in found] == demo.sessions[::-1]

    def test_json_objects_carry_the_session_fields(self, run: Cli, demo: Demo) -> None:
        """Each JSON object has the id, thread, timing, outcome, counts and metadata."""
        found = run.json("session", "list", "--json", "--store", str(demo.path))
        for item in found:
            turn = demo.sessions.index(item["id"]) + 1
            assert item["threadId"] == demo.thread
            assert item["success"] is True
            assert item["metadata"] == {"turn": turn, "channel": "demo"}
            assert item["durationMs"] > 0
            assert item["logCount"] == len(demo.of(item["id"]))
            assert item["startedAt"] <= demo.of(item["id"])[0]["timestamp"]
        errors = {s["id"]: s["errorCount"] for s in found}
        assert errors[demo.sessions[2]] == sum(r["level"] == "error" for r in demo.of(demo.sessions[2]))
        assert errors[demo.sessions[0]] == 0

    def test_plain_text_when_piped(self, run: Cli, demo: Demo) -> None:
        """Without a terminal the table is plain aligned text: a header, one row per session, no escapes."""
        result = run("session", "list", "--store", str(demo.path))
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert lines[0].split()[:4] == ["SESSION", "STARTED", "DURATION", "STATUS"]
        assert [line.split()[0] for line in lines[1:]] == demo.sessions[::-1]
        assert "\x1b[" not in result.stdout
        assert "turn=3 channel=demo" in lines[1]

    def test_rich_table_on_a_terminal(self, run: Cli, demo: Demo) -> None:
        """On a terminal (FORCE_COLOR) the list is a coloured table with every ID whole."""
        result = run("session", "list", "--store", str(demo.path), env={"FORCE_COLOR": "1", "COLUMNS": "200"})
        assert "\x1b[" in result.stdout
        plain = ANSI.sub("", result.stdout)
        assert all(sid in plain for sid in demo.sessions)

    def test_count_limits_the_list(self, run: Cli, demo: Demo) -> None:
        """``--count 2`` lists the two newest sessions."""
        found = run.json("session", "list", "--count", "2", "--json", "--store", str(demo.path))
        assert [s["id"] for s in found] == demo.sessions[::-1][:2]

    def test_thread_filter(self, run: Cli, demo: Demo) -> None:
        """``--thread`` lists that thread's sessions; another thread has none (exit 1)."""
        found = run.json("session", "list", "--thread", demo.thread, "--json", "--store", str(demo.path))
        other = run("session", "list", "--thread", "thrd_other", "--json", "--store", str(demo.path))
        assert len(found) == 3
        assert other.exit_code == 1

    def test_metadata_filters_match_all_pairs(self, run: Cli, demo: Demo) -> None:
        """``--metadata`` pairs are ANDed and match numbers by their JSON text."""
        path = str(demo.path)
        demo_channel = run.json("session", "list", "-m", "channel=demo", "--json", "--store", path)
        turn_two = run.json(
            "session", "list", "-m", "channel=demo", "-m", "turn=2", "--json", "--store", path
        )
        assert len(demo_channel) == 3
        assert [s["id"] for s in turn_two] == [demo.sessions[1]]

    def test_start_after_and_before(self, run: Cli, demo: Demo) -> None:
        """``--start-after``/``--start-before`` bound the start time (exclusive)."""
        path = str(demo.path)
        everything = run.json("session", "list", "--json", "--store", path)
        second = next(s for s in everything if s["id"] == demo.sessions[1])
        after = run.json("session", "list", "--start-after", second["startedAt"], "--json", "--store", path)
        before = run.json("session", "list", "--start-before", second["startedAt"], "--json", "--store", path)
        assert [s["id"] for s in after] == [demo.sessions[2]]
        assert [s["id"] for s in before] == [demo.sessions[0]]

    def test_failed_and_success_filters(self, run: Cli, filled: Filled) -> None:
        """``--failed`` finds the turn that raised; ``--success`` the others (the fill script's run)."""
        failed = run.json("session", "list", "--failed", "--json", "--store", str(filled.path))
        succeeded = run.json("session", "list", "--success", "--json", "--store", str(filled.path))
        assert [s["id"] for s in failed] == [filled.manifest["failed"]]
        assert failed[0]["error"] == "ToolError: search backend timed out"
        assert {s["id"] for s in succeeded} == set(filled.sessions) - {filled.manifest["failed"]}

    def test_the_demo_has_no_failed_session(self, run: Cli, demo: Demo) -> None:
        """The demo handles its tool error, so ``--failed`` finds nothing: exit 1, ``[]``."""
        result = run("session", "list", "--failed", "--json", "--store", str(demo.path))
        assert result.exit_code == 1
        assert orjson.loads(result.stdout) == []

    def test_nothing_found_in_text_mode(self, run: Cli, demo: Demo) -> None:
        """Without ``--json`` an empty answer is one line on stderr and exit 1."""
        result = run("session", "list", "-m", "channel=none", "--store", str(demo.path))
        assert result.exit_code == 1
        assert result.stdout == ""
        assert "no sessions found" in result.stderr

    def test_bad_iso_time_is_a_usage_error(self, run: Cli, demo: Demo) -> None:
        """A time that is not ISO 8601 exits 2 and shows the expected shape."""
        result = run("session", "list", "--start-after", "yesterday", "--store", str(demo.path))
        assert result.exit_code == 2
        assert "ISO 8601" in result.stderr

    def test_bad_thread_id_names_the_expected_shape(self, run: Cli, demo: Demo) -> None:
        """A malformed ``--thread`` exits 2 naming the ``thrd_`` shape."""
        result = run("session", "list", "--thread", "sess_x", "--store", str(demo.path))
        assert result.exit_code == 2
        assert "expected 'thrd_'" in result.stderr


class TestSessionGet:
    """``session get``."""

    def test_json_document(self, run: Cli, demo: Demo) -> None:
        """One document: the session, counts by level, its thread, spans and records."""
        third = demo.sessions[2]
        found = run.json("session", "get", third, "--json", "--store", str(demo.path))
        records = demo.of(third)
        assert found["id"] == third
        assert found["success"] is True
        levels: dict[str, int] = {}
        for r in records:
            levels[r["level"]] = levels.get(r["level"], 0) + 1
        assert found["levels"] == levels
        assert found["thread"]["id"] == demo.thread
        assert found["thread"]["metadata"] == {"user": "demo-user"}
        assert found["thread"]["sessionCount"] == 3
        spans = {s["name"]: s for s in found["spans"]}
        assert set(spans) == {"llm.plan", "tools.fanout", "tool.search", "tool.booking"}
        assert spans["tool.booking"]["parentSpanId"] == spans["tools.fanout"]["spanId"]
        assert spans["tool.booking"]["status"] == "error"
        assert spans["tool.booking"]["error"]["message"] == "no table available for two at 20:00"
        assert spans["llm.plan"]["attributes"] == {"model": "demo-model"}
        assert messages(found["events"]) == messages(records)

    def test_text_shows_facts_and_waterfall(self, run: Cli, demo: Demo) -> None:
        """Plain text: status, counts, thread, then spans as bars with records placed on them."""
        result = run("session", "get", demo.sessions[2], "--store", str(demo.path))
        assert result.exit_code == 0
        out = result.stdout
        assert re.search(r"^status:\s+ok$", out, re.M)
        assert re.search(r"^by level:\s+info \d+, warning 1, error 3$", out, re.M)
        assert re.search(rf"^thread:\s+{demo.thread}$", out, re.M)
        assert re.search(r"^metadata.turn:\s+3$", out, re.M)
        bars = {
            m.group(1).strip(): m.group(2) for m in re.finditer(r"^(\s*[\w.]+)\s+\|([ =#*!E]+)\|", out, re.M)
        }
        assert set(bars) >= {"session", "llm.plan", "tools.fanout", "tool.search", "tool.booking"}
        assert "#" in bars["tool.booking"]  # failed spans are drawn with '#'
        assert "=" in bars["tool.search"]
        fanout, booking = bars["tools.fanout"], bars["tool.booking"]
        assert fanout.index("#") <= booking.index("#")
        assert fanout.rindex("#") >= booking.rindex("#")
        assert re.search(r"^\s+\. error tool failed\s+\|\s*E\s*\|", out, re.M)

    def test_rich_on_a_terminal(self, run: Cli, demo: Demo) -> None:
        """With a terminal (FORCE_COLOR) the facts and waterfall are coloured rich output."""
        result = run("session", "get", demo.sessions[0], "--store", str(demo.path), env={"FORCE_COLOR": "1"})
        assert result.exit_code == 0
        assert "\x1b[" in result.stdout
        plain = ANSI.sub("", result.stdout)
        assert "█" in plain
        assert "●" in plain
        assert "tools.fanout" in plain

    def test_html_page(self, run: Cli, demo: Demo, tmp_path: Path) -> None:
        """``--html FILE`` writes a self-contained page with an SVG waterfall."""
        page = tmp_path / "session.html"
        result = run("session", "get", demo.sessions[2], "--html", str(page), "--store", str(demo.path))
        assert result.exit_code == 0
        assert f"wrote {page}" in result.stderr
        text = page.read_text()
        assert text.startswith("<!doctype html>")
        assert "<svg" in text
        assert "<rect" in text
        assert "<circle" in text
        assert "tool.booking" in text
        assert "tool failed" in text
        assert "<script" not in text
        assert not re.search(r"(src|href)=", text)

    def test_not_found_exits_1(self, run: Cli, demo: Demo) -> None:
        """An unknown but well-formed ID: one line on stderr, exit 1."""
        result = run("session", "get", "sess_0000", "--store", str(demo.path))
        assert result.exit_code == 1
        assert result.stdout == ""
        assert result.stderr.strip() == f"agentuity-logging: session sess_0000 not found in {demo.path}"

    def test_malformed_id_names_the_expected_shape(self, run: Cli, demo: Demo) -> None:
        """A malformed ID exits 2 and says what a session ID looks like."""
        result = run("session", "get", "thrd_123", "--store", str(demo.path))
        assert result.exit_code == 2
        assert "expected 'sess_' followed by letters, digits" in result.stderr

    def test_source_options_may_come_before_the_argument(self, run: Cli, demo: Demo) -> None:
        """``--store PATH`` works before the session ID as well as after it."""
        found = run.json("session", "get", "--store", str(demo.path), demo.sessions[0], "--json")
        assert found["id"] == demo.sessions[0]


class TestSessionLogs:
    """``session logs``."""

    @pytest.mark.parametrize("turn", [0, 1, 2])
    def test_json_lines_are_what_the_app_logged(self, run: Cli, demo: Demo, turn: int) -> None:
        """One record per line, exactly the records the demo printed for the session, in order."""
        sid = demo.sessions[turn]
        records = run.json_lines("session", "logs", sid, "--json", "--store", str(demo.path))
        assert records == demo.of(sid)
        assert all(list(r)[:6] == SCHEMA_HEAD for r in records)

    def test_level_filter(self, run: Cli, demo: Demo) -> None:
        """``--level warning`` keeps warnings and above."""
        sid = demo.sessions[2]
        records = run.json_lines(
            "session", "logs", sid, "--level", "warning", "--json", "--store", str(demo.path)
        )
        assert records == [r for r in demo.of(sid) if r["level"] in ("warning", "error", "critical")]
        assert len(records) == 4

    def test_plain_lines(self, run: Cli, demo: Demo) -> None:
        """Without ``--json``: the package's console lines, no colour when piped."""
        sid = demo.sessions[0]
        result = run("session", "logs", sid, "--store", str(demo.path))
        assert result.exit_code == 0
        lines = result.stdout.splitlines()
        assert len(lines) == len(demo.of(sid))
        assert "INFO     agent: turn received component=planner turn=1" in lines[0]
        assert f"session={sid}" in lines[0]
        assert "\x1b[" not in result.stdout

    def test_unknown_session_exits_1(self, run: Cli, demo: Demo) -> None:
        """No such session: exit 1."""
        result = run("session", "logs", "sess_nothing", "--store", str(demo.path))
        assert result.exit_code == 1
        assert "not found" in result.stderr

    def test_follow_an_ended_session_prints_it_and_stops(self, run: Cli, demo: Demo) -> None:
        """``--follow`` on a session that already ended prints its records and exits 0."""
        sid = demo.sessions[1]
        records = run.json_lines("session", "logs", sid, "--follow", "--json", "--store", str(demo.path))
        assert records == demo.of(sid)


@pytest.fixture
def live_store(tmp_path: Path) -> Iterator[tuple[LogStoreHandler, logging.Logger]]:
    """A store with a handler listening to sessions, fed by a private logger."""
    handler = LogStoreHandler(LogStore(tmp_path / "live.sqlite3", flush_interval_s=0.05), listen=True)
    handler.addFilter(SessionContextFilter())
    logger = logging.getLogger(f"test.live.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler, logger
    finally:
        logger.removeHandler(handler)
        handler.close()


class TestFollow:
    """Following records as they are written."""

    def test_session_logs_follow_until_the_session_ends(
        self, run: Cli, live_store: tuple[LogStoreHandler, logging.Logger]
    ) -> None:
        """``session logs --follow`` prints records as they land and stops when the session ends."""
        handler, logger = live_store
        started = threading.Event()
        ids: list[str] = []

        def app() -> None:
            with session() as s:
                ids.append(s.id)
                logger.info("first")
                handler.flush()
                started.set()
                time.sleep(0.6)
                logger.info("second")
                time.sleep(0.3)
                logger.info("third")

        worker = threading.Thread(target=app)
        worker.start()
        try:
            assert started.wait(5)
            records = run.json_lines(
                "session", "logs", ids[0], "--follow", "--json", "--store", str(handler.store.path)
            )
        finally:
            worker.join()
        assert messages(records) == ["first", "second", "third"]

    def test_tail_prints_new_records(
        self, run: Cli, live_store: tuple[LogStoreHandler, logging.Logger]
    ) -> None:
        """``tail --count 3`` prints the next three records written, then exits 0."""
        handler, logger = live_store
        logger.info("old")  # written before tail starts: not shown
        assert handler.flush()
        stop = threading.Event()

        def app() -> None:
            n = 0
            while not stop.is_set():
                with session():
                    logger.warning("tick %d", n)
                n += 1
                stop.wait(0.1)

        worker = threading.Thread(target=app)
        worker.start()
        try:
            result = run("tail", "--count", "3", "--json", "--store", str(handler.store.path))
        finally:
            stop.set()
            worker.join()
        assert result.exit_code == 0, result.stderr
        records = [orjson.loads(line) for line in result.stdout.splitlines()]
        assert len(records) == 3
        assert all(r["message"].startswith("tick ") for r in records)
        numbers = [int(r["message"].split()[1]) for r in records]
        assert numbers == sorted(numbers)

    def test_tail_level_and_session_filters(
        self, run: Cli, live_store: tuple[LogStoreHandler, logging.Logger]
    ) -> None:
        """``tail --session S --level error`` shows only that session's errors."""
        handler, logger = live_store
        stop = threading.Event()
        ids: list[str] = []
        ready = threading.Event()

        def app() -> None:
            with session() as s:
                ids.append(s.id)
                ready.set()
                while not stop.is_set():
                    logger.info("chatter")
                    logger.error("broken")
                    with session():
                        logger.error("someone else")
                    stop.wait(0.1)

        worker = threading.Thread(target=app)
        worker.start()
        try:
            assert ready.wait(5)
            result = run(
                "tail",
                "--session",
                ids[0],
                "--level",
                "error",
                "-n",
                "2",
                "--json",
                "--store",
                str(handler.store.path),
            )
        finally:
            stop.set()
            worker.join()
        assert result.exit_code == 0, result.stderr
        records = [orjson.loads(line) for line in result.stdout.splitlines()]
        assert messages(records) == ["broken", "broken"]
        assert {r["agentuitySessionId"] for r in records} == {ids[0]}


class TestThreads:
    """``thread list`` and ``thread get``."""

    def test_thread_list(self, run: Cli, demo: Demo) -> None:
        """The demo's one thread, with its session count and metadata."""
        threads = run.json("thread", "list", "--json", "--store", str(demo.path))
        assert [t["id"] for t in threads] == [demo.thread]
        assert threads[0]["sessionCount"] == 3
        assert threads[0]["metadata"] == {"user": "demo-user"}
        assert threads[0]["expired"] is False

    def test_thread_list_text_and_filter(self, run: Cli, demo: Demo) -> None:
        """Text rows, and ``--metadata`` filtering on indexed thread metadata."""
        listed = run("thread", "list", "-m", "user=demo-user", "--store", str(demo.path))
        none = run("thread", "list", "-m", "user=nobody", "--store", str(demo.path))
        assert listed.exit_code == 0
        assert demo.thread in listed.stdout
        assert none.exit_code == 1

    def test_thread_get_lists_sessions_in_order(self, run: Cli, demo: Demo) -> None:
        """One document with metadata, expiry and the sessions oldest first."""
        found = run.json(
            "thread",
            "get",
            demo.thread,
            "--json",
            "--store",
            str(demo.path),
            env={"AGENTUITY_THREAD_STORE": None},
        )
        assert [s["id"] for s in found["sessions"]] == demo.sessions
        assert found["expiresAt"] > found["updatedAt"]
        assert found["stateKeys"] is None

    def test_state_keys_from_the_demos_thread_store(self, run: Cli, demo: Demo) -> None:
        """With the thread store and key the demo used, its state keys are listed, never values."""
        env = {"AGENTUITY_THREAD_STORE": demo.thread_store, "AGENTUITY_STATE_KEY": demo.state_key}
        result = run("thread", "get", demo.thread, "--json", "--store", str(demo.path), env=env)
        assert result.exit_code == 0, result.stderr
        found = orjson.loads(result.stdout)
        assert found["stateKeys"] == ["history"]
        assert "plan-" not in result.stdout  # the history's values stay sealed

    def test_thread_get_text(self, run: Cli, demo: Demo) -> None:
        """Text: facts with state keys, then the sessions as a table."""
        env = {"AGENTUITY_THREAD_STORE": demo.thread_store, "AGENTUITY_STATE_KEY": demo.state_key}
        result = run("thread", "get", demo.thread, "--store", str(demo.path), env=env)
        assert result.exit_code == 0
        assert re.search(r"^sessions:\s+3$", result.stdout, re.M)
        assert re.search(r"^state keys:\s+history$", result.stdout, re.M)
        assert re.search(r"^metadata.user:\s+demo-user$", result.stdout, re.M)
        assert all(sid in result.stdout for sid in demo.sessions)

    def test_state_keys_need_the_key(self, run: Cli, demo: Demo) -> None:
        """Without AGENTUITY_STATE_KEY the keys are unknown and the output says why (exit 0)."""
        env = {"AGENTUITY_THREAD_STORE": demo.thread_store, "AGENTUITY_STATE_KEY": None}
        result = run("thread", "get", demo.thread, "--store", str(demo.path), env=env)
        assert result.exit_code == 0
        assert "set AGENTUITY_STATE_KEY" in result.stdout

    def test_wrong_key_is_an_error_naming_the_thread(self, run: Cli, demo: Demo) -> None:
        """State sealed with another key: one line naming the thread, exit 3, no traceback."""
        from agentuity_logging._storage._crypto import generate_key

        env = {"AGENTUITY_THREAD_STORE": demo.thread_store, "AGENTUITY_STATE_KEY": generate_key()}
        result = run("thread", "get", demo.thread, "--store", str(demo.path), env=env)
        assert result.exit_code == 3
        assert demo.thread in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr

    def test_thread_not_found(self, run: Cli, demo: Demo) -> None:
        """An unknown thread exits 1."""
        result = run(
            "thread", "get", "thrd_unknown", "--store", str(demo.path), env={"AGENTUITY_THREAD_STORE": None}
        )
        assert result.exit_code == 1

    def test_thread_only_in_the_thread_store(self, run: Cli, demo: Demo, tmp_path: Path) -> None:
        """A thread the log store never saw but the thread store holds is still shown (exit 0)."""
        from agentuity_logging._storage._threads import thread_store_from_url

        url = f"sqlite:///{tmp_path / 'threads.db'}"
        with thread_store_from_url(url, require_key=False) as threads:
            threads.save("thrd_elsewhere", metadata={"team": "x"}, state={}, expected_version=0)
        found = run.json(
            "thread",
            "get",
            "thrd_elsewhere",
            "--json",
            "--store",
            str(demo.path),
            env={"AGENTUITY_THREAD_STORE": url},
        )
        assert found["sessions"] == []
        assert found["metadata"] == {"team": "x"}
        assert found["stateKeys"] == []


class TestKeygen:
    """``keygen``."""

    def test_prints_only_a_new_key(self, run: Cli) -> None:
        """One line: 32 random bytes in URL-safe base64; two runs differ."""
        first, second = run("keygen"), run("keygen")
        assert first.exit_code == 0
        lines = first.stdout.splitlines()
        assert len(lines) == 1
        assert len(base64.urlsafe_b64decode(lines[0])) == 32
        assert first.stdout != second.stdout
        assert first.stderr == ""


class TestOutputSafety:
    """Values from records cannot forge lines or inject markup."""

    def test_control_characters_and_markup_are_escaped(self, run: Cli, tmp_path: Path) -> None:
        """A message with a newline and rich markup prints as one escaped line, in both modes."""
        path = tmp_path / "evil.sqlite3"
        sid = "sess_evil"
        event = {
            "timestamp": "2026-01-01T00:00:00.000000Z",
            "level": "info",
            "logger": "app",
            "message": "line\nFAKE ERROR [bold red]x[/] <script>alert(1)</script>",
            "agentuitySessionId": sid,
            "agentuityThreadId": "thrd_evil",
        }
        with LogStore(path) as store:
            store.write([event])
        plain = run("session", "logs", sid, "--store", str(path))
        rich = run("session", "get", sid, "--store", str(path), env={"FORCE_COLOR": "1", "COLUMNS": "200"})
        assert len(plain.stdout.splitlines()) == 1
        assert "line\\nFAKE ERROR [bold red]x[/]" in plain.stdout
        assert "line\\nFAKE ERROR [bold red]x" in ANSI.sub("", rich.stdout)  # shown, not interpreted
        page = tmp_path / "evil.html"
        run("session", "get", sid, "--html", str(page), "--store", str(path))
        assert "<script>alert" not in page.read_text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.read_text()


class TestErrors:
    """Failures are one line on stderr with a meaningful exit code."""

    def test_missing_store_exits_1(self, run: Cli, tmp_path: Path) -> None:
        """No store file: "not found", with how to make one."""
        result = run("session", "list", "--store", str(tmp_path / "none.sqlite3"))
        assert result.exit_code == 1
        assert "no log store at" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1

    def test_store_from_the_environment(self, run: Cli, demo: Demo) -> None:
        """``AGENTUITY_LOG_STORE`` names the store when ``--store`` is absent."""
        found = run.json("session", "list", "--json", env={"AGENTUITY_LOG_STORE": str(demo.path)})
        assert len(found) == 3

    def test_default_store_in_the_working_directory(
        self, run: Cli, demo: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With neither, the store is ``./.agentuity/logs.sqlite3``."""
        (tmp_path / ".agentuity").mkdir()
        (tmp_path / ".agentuity" / "logs.sqlite3").write_bytes(demo.path.read_bytes())
        monkeypatch.chdir(tmp_path)
        found = run.json("session", "list", "--json", env={"AGENTUITY_LOG_STORE": None})
        assert len(found) == 3

    def test_corrupt_store_exits_3_without_traceback(self, run: Cli, tmp_path: Path) -> None:
        """A file that is not a store: one line, exit 3."""
        path = tmp_path / "junk.sqlite3"
        path.write_bytes(b"this is not a database" * 100)
        result = run("session", "list", "--store", str(path))
        assert result.exit_code == 3
        assert "cannot read the log store" in result.stderr
        assert "Traceback" not in result.stderr

    def test_missing_extra_names_the_install_command(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without click the command says what to pip install and exits 2."""
        from agentuity_logging._inspection import _cli

        monkeypatch.delitem(sys.modules, "agentuity_logging._inspection._commands")
        monkeypatch.setitem(sys.modules, "click", None)
        with pytest.raises(SystemExit) as exited:
            _cli.main(["session", "list"])
        assert exited.value.code == 2

    def test_missing_extra_message(self, tmp_path: Path) -> None:
        """The message names the extra (checked in a process where click cannot be imported)."""
        blocker = tmp_path / "click.py"
        blocker.write_text("raise ImportError('no click here', name='click')\n")
        done = subprocess.run(
            [sys.executable, "-c", "from agentuity_logging._inspection._cli import main; main(['keygen'])"],
            env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2
        assert "pip install 'agentuity-logging[cli]'" in done.stderr
        assert "Traceback" not in done.stderr


class TestHelp:
    """``--help`` everywhere, with examples."""

    @pytest.mark.parametrize(
        "command",
        [
            ["session", "list"],
            ["session", "get"],
            ["session", "logs"],
            ["thread", "list"],
            ["thread", "get"],
            ["tail"],
            ["keygen"],
        ],
    )
    def test_every_command_has_examples(self, run: Cli, command: list[str]) -> None:
        """Each command's help shows examples and (except keygen) the source options."""
        result = run(*command, "--help")
        assert result.exit_code == 0
        assert "Examples:" in result.stdout
        assert "agentuity-logging " + " ".join(command) in result.stdout
        if command != ["keygen"]:
            assert "--source [local|loki|datadog]" in result.stdout
            assert "--store" in result.stdout
            assert "--loki-url" in result.stdout

    def test_top_level_help(self, run: Cli) -> None:
        """The top level lists the groups and the exit codes."""
        result = run("--help")
        assert result.exit_code == 0
        for word in ("session", "thread", "tail", "keygen", "Exit codes"):
            assert word in result.stdout


class TestRealProcess:
    """The module entry point in a real process."""

    def test_python_dash_m(self, demo: Demo) -> None:
        """``python -m agentuity_logging session logs ID --json --store PATH`` prints JSON lines."""
        sid = demo.sessions[0]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentuity_logging",
                "session",
                "logs",
                sid,
                "--json",
                "--store",
                str(demo.path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert [orjson.loads(line) for line in done.stdout.splitlines()] == demo.of(sid)

    def test_broken_pipe_is_quiet(self, demo: Demo) -> None:
        """A reader that goes away (``| head -1``) ends the command without a traceback."""
        cli = f"{sys.executable} -m agentuity_logging"
        command = f"{cli} session logs {demo.sessions[0]} --store {demo.path} | head -1"
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0
        assert len(done.stdout.splitlines()) == 1
        assert "Traceback" not in done.stderr
