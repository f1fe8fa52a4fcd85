"""Sessions, threads and bound fields in the context, across tasks and threads."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from datetime import timedelta

import pytest

import agentuity_logging as al
from agentuity_logging import _context


class TestSessionForms:
    def test_with_block_exposes_the_session_and_restores_none(self) -> None:
        """``with session()`` makes a session current inside and none after."""
        with al.session() as s:
            assert al.current_session() is s
            assert al.session_id() == s.id
            assert al.thread_id() == s.thread.id
        assert al.current_session() is None
        assert al.session_id() is None
        assert al.thread_id() is None

    async def _async_body(self) -> str | None:
        async with al.session() as s:
            await asyncio.sleep(0)
            assert al.session_id() == s.id
            return s.id

    def test_async_with_works(self) -> None:
        """``async with session()`` works the same across an await."""
        sid = asyncio.run(self._async_body())
        assert sid is not None
        assert sid.startswith("sess_")

    def test_decorated_sync_function_gets_a_new_session_per_call(self) -> None:
        """Each call of a decorated function runs in its own session."""

        @al.session()
        def handler() -> str | None:
            return al.session_id()

        first, second = handler(), handler()
        assert first is not None
        assert second is not None
        assert first != second
        assert al.session_id() is None

    def test_decorated_async_function_gets_a_new_session_per_call(self) -> None:
        """Each await of a decorated coroutine function runs in its own session."""

        @al.session(metadata={"route": "/chat"})
        async def handler() -> tuple[str | None, object]:
            s = al.current_session()
            assert s is not None
            return s.id, s.metadata["route"]

        async def main() -> list[tuple[str | None, object]]:
            return list(await asyncio.gather(handler(), handler()))

        results = asyncio.run(main())
        assert results[0][0] != results[1][0]
        assert {r[1] for r in results} == {"/chat"}

    def test_given_ids_are_used(self) -> None:
        """Passing session_id and thread_id uses them."""
        with al.session(session_id="sess_abc", thread_id="thrd_def") as s:
            assert s.id == "sess_abc"
            assert s.thread.id == "thrd_def"

    @pytest.mark.parametrize(
        "kwargs", [{"session_id": "thrd_x"}, {"thread_id": "sess_x"}, {"session_id": "sess_a b"}]
    )
    def test_bad_ids_raise_value_error_before_anything_runs(self, kwargs: dict[str, str]) -> None:
        """A malformed ID raises ValueError at session() time."""
        with pytest.raises(ValueError, match="invalid"):
            al.session(**kwargs)


class TestNesting:
    def test_nested_sessions_restore_the_outer_one(self) -> None:
        """Leaving an inner session makes the outer one current again."""
        with al.session() as outer:
            with al.session() as inner:
                assert al.current_session() is inner
            assert al.current_session() is outer

    def test_outer_session_is_restored_when_the_body_raises(self) -> None:
        """An exception in the inner body still restores the outer session and marks failure."""
        with al.session() as outer:
            with pytest.raises(RuntimeError), al.session() as inner:
                raise RuntimeError("boom")
            assert al.current_session() is outer
        assert inner.success is False
        assert inner.error == "RuntimeError: boom"
        assert outer.success is True

    def test_session_timing_is_recorded(self) -> None:
        """A finished session has an end time and a duration."""
        with al.session() as s:
            assert s.success is None
            assert s.duration_ms is None
        assert s.ended_at is not None
        assert s.duration_ms is not None
        assert s.duration_ms >= 0


class TestState:
    def test_state_has_get_set_delete_and_the_dict_protocol(self) -> None:
        """session.state supports get/set/delete and mapping operations."""
        with al.session() as s:
            s.state.set("a", 1)
            s.state["b"] = 2
            assert s.state.get("a") == 1
            assert dict(s.state) == {"a": 1, "b": 2}
            assert s.state.delete("a") is True
            assert s.state.delete("a") is False
            assert "a" not in s.state
            assert len(s.state) == 1

    def test_state_is_emptied_when_the_session_ends(self) -> None:
        """Request-scoped state does not outlive the session."""
        with al.session() as s:
            s.state.set("secret", "x")
        assert len(s.state) == 0

    def test_state_repr_shows_keys_not_values(self) -> None:
        """A repr of state never shows the values it holds."""
        state = al.State({"token": "hunter2"})
        assert "hunter2" not in repr(state)
        assert "token" in repr(state)


class TestThreads:
    def test_omitting_thread_id_starts_a_new_thread(self) -> None:
        """Two sessions without a thread ID are in different threads."""
        with al.session() as a, al.session() as b:
            assert a.thread.id != b.thread.id

    def test_joining_a_thread_returns_the_same_thread_object(self) -> None:
        """Sessions passing a live thread ID share the Thread object and its metadata."""
        with al.session() as first:
            first.thread.metadata["topic"] = "billing"
        with al.session(thread_id=first.thread.id) as second:
            assert second.thread is first.thread
            assert second.thread.metadata == {"topic": "billing"}

    def test_thread_lifetime_defaults_to_one_hour(self) -> None:
        """A thread expires one hour after it was last used, by default."""
        with al.session() as s:
            lifetime = s.thread.expires_at - s.thread.updated_at
        assert timedelta(minutes=59) < lifetime <= timedelta(hours=1)

    def test_thread_lifetime_is_configurable(self) -> None:
        """configure(thread_ttl_s=...) sets the lifetime of new threads."""
        al.configure(thread_ttl_s=60, stream=_Sink())
        with al.session() as s:
            lifetime = s.thread.expires_at - s.thread.updated_at
        assert lifetime <= timedelta(seconds=60)

    def test_an_expired_thread_is_not_resurrected(self) -> None:
        """Joining an expired thread ID starts a fresh thread with empty state."""
        _context.set_thread_registry(_context.MemoryThreadRegistry(ttl_s=0.0))
        with al.session() as first:
            first.thread.state["k"] = "v"
        with al.session(thread_id=first.thread.id) as second:
            assert second.thread is not first.thread
            assert "k" not in second.thread.state


class TestBound:
    def test_bound_fields_nest_and_inner_wins(self) -> None:
        """Nested bound() blocks merge fields, the inner value winning, and restore on exit."""
        with al.bound(user="u1", step=1):
            with al.bound(step=2):
                assert _context.current_snapshot().fields == {"user": "u1", "step": 2}
            assert _context.current_snapshot().fields == {"user": "u1", "step": 1}
        assert _context.current_snapshot().fields == {}

    def test_bound_fields_survive_entering_a_session(self) -> None:
        """Fields bound outside a session are still there inside it."""
        with al.bound(tenant="t1"), al.session():
            assert _context.current_snapshot().attrs["tenant"] == "t1"


class TestExternalMetadata:
    def test_external_metadata_names_the_session_and_thread(self) -> None:
        """external_metadata() returns the IDs under the agentuity keys."""
        with al.session() as s:
            assert al.external_metadata() == {
                "agentuitySessionId": s.id,
                "agentuityThreadId": s.thread.id,
            }

    def test_external_metadata_is_empty_outside_a_session(self) -> None:
        """Outside a session it is an empty dict, safe to merge into any payload."""
        assert al.external_metadata() == {}


class TestCrossingThreads:
    def test_wrap_runs_the_function_in_the_callers_context(self) -> None:
        """A wrapped function sees the caller's session on another thread."""
        seen: list[str | None] = []
        with al.session() as s:
            t = threading.Thread(target=al.wrap(lambda: seen.append(al.session_id())))
            t.start()
            t.join()
        assert seen == [s.id]

    def test_plain_thread_does_not_see_the_session(self) -> None:
        """Without wrap(), a new thread starts with an empty context (why wrap exists)."""
        seen: list[str | None] = []
        with al.session():
            t = threading.Thread(target=lambda: seen.append(al.session_id()))
            t.start()
            t.join()
        assert seen == [None]

    def test_executor_jobs_run_in_the_submitters_context(self) -> None:
        """ContextThreadPoolExecutor carries the submitting session into each job."""
        with al.ContextThreadPoolExecutor(max_workers=2) as pool:
            with al.session() as a:
                fa = pool.submit(al.session_id)
            with al.session() as b:
                fb = list(pool.map(lambda _: al.session_id(), range(3)))
        assert fa.result() == a.id
        assert fb == [b.id] * 3

    def test_run_in_executor_with_our_pool_keeps_the_session(self) -> None:
        """loop.run_in_executor loses the context on a plain pool but keeps it on ours."""

        async def main() -> tuple[str | None, str | None, str | None]:
            loop = asyncio.get_running_loop()
            async with al.session() as s:
                with al.ContextThreadPoolExecutor(1) as ours:
                    kept = await loop.run_in_executor(ours, al.session_id)
                copied = await asyncio.to_thread(al.session_id)
                assert s.id == kept == copied
                return kept, copied, s.id

        kept, copied, sid = asyncio.run(main())
        assert kept == copied == sid

    def test_asyncio_tasks_inherit_the_session(self) -> None:
        """Tasks created inside a session carry it."""

        async def main() -> tuple[list[str | None], str]:
            async with al.session() as s:
                results = await asyncio.gather(*(asyncio.to_thread(al.session_id) for _ in range(3)))
                task_ids = await asyncio.gather(
                    *(asyncio.create_task(asyncio.sleep(0, al.session_id())) for _ in range(3))
                )
                return [*results, *task_ids], s.id

        values, sid = asyncio.run(main())
        assert values == [sid] * 6


class TestContextvarsExtras:
    def test_ids_survive_inside_contextvars_extras_sandbox(self) -> None:
        """contextvars-extras' sandbox copies our context var like any other."""
        from contextvars_extras.context_management import bind_to_sandbox_context

        with al.session() as s:
            seen = bind_to_sandbox_context(al.session_id)()
        assert seen == s.id

    def test_ids_survive_beside_a_contextvars_extras_registry(self) -> None:
        """A ContextVarsRegistry's temporary values and our session coexist."""
        from contextvars_extras import ContextVarsRegistry

        class Current(ContextVarsRegistry):
            user: str = "nobody"

        current = Current()
        with al.session() as s, current(user="alice"):
            assert current.user == "alice"
            assert al.session_id() == s.id
            copied = contextvars.copy_context().run(lambda: (current.user, al.session_id()))
        assert copied == ("alice", s.id)
        assert current.user == "nobody"


class _Sink:
    """A write-only text stream for configure() in tests that do not read the output."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False
