"""get_logger(): keyword fields, the seed's dict style, child loggers, caller information."""

from __future__ import annotations

import logging
import sys

import pytest

import agentuity_logging as al
from agentuity_logging.testing import capture_logs

from .helpers import JsonLines


@pytest.fixture
def stream() -> JsonLines:
    out = JsonLines()
    al.configure(format="json", stream=out, level="DEBUG")
    return out


class TestFields:
    def test_keyword_fields_land_on_the_record(self, stream: JsonLines) -> None:
        """log.info("msg", k=v) puts k on the record."""
        al.get_logger("t").info("charged", amount=12, currency="EUR")
        (rec,) = stream.records()
        assert rec["message"] == "charged"
        assert rec["amount"] == 12
        assert rec["currency"] == "EUR"

    def test_percent_args_still_format(self, stream: JsonLines) -> None:
        """Positional %-arguments format the message as in the stdlib."""
        al.get_logger("t").info("hello %s, %d", "world", 3)
        assert stream.records()[0]["message"] == "hello world, 3"

    def test_a_dict_as_only_argument_is_taken_as_fields(self, stream: JsonLines) -> None:
        """The seed's style log.info("msg", {"sessionId": ...}) gives fields, not %-mapping args."""
        al.get_logger("t").info("Processing request", {"sessionId": "abc", "n": 1})
        (rec,) = stream.records()
        assert rec["message"] == "Processing request"
        assert rec["sessionId"] == "abc"
        assert rec["n"] == 1

    def test_default_name_is_the_callers_module(self) -> None:
        """get_logger() without a name uses the calling module's name."""
        assert al.get_logger().name == __name__

    def test_every_level_method_logs_at_its_level(self, stream: JsonLines) -> None:
        """debug/info/warning/error/critical/log map to their stdlib levels."""
        log = al.get_logger("t")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        log.log(logging.WARNING, "l")
        assert [r["level"] for r in stream.records()] == [
            "debug",
            "info",
            "warning",
            "error",
            "critical",
            "warning",
        ]


class TestChild:
    def test_child_merges_fields_and_leaves_parent_unchanged(self, stream: JsonLines) -> None:
        """child() returns a new logger with merged fields; the parent logs without them."""
        parent = al.get_logger("t", app="a")
        child = parent.child(component="planner")
        child.info("from child")
        parent.info("from parent")
        from_child, from_parent = stream.records()
        assert from_child["app"] == "a"
        assert from_child["component"] == "planner"
        assert "component" not in from_parent
        assert parent.fields == {"app": "a"}

    def test_children_nest_and_inner_values_win(self, stream: JsonLines) -> None:
        """A grandchild carries all ancestors' fields, the nearest value winning."""
        log = al.get_logger("t").child(a=1, b=1).child(b=2).child(c=3)
        log.info("deep", c=4)
        rec = stream.records()[0]
        assert (rec["a"], rec["b"], rec["c"]) == (1, 2, 4)

    def test_child_cost_does_not_depend_on_depth(self) -> None:
        """A child ten deep holds one flat dict of fields, like a depth-one child."""
        log = al.get_logger("t")
        for i in range(10):
            log = log.child(**{f"f{i}": i})
        assert log.fields == {f"f{i}": i for i in range(10)}
        assert log.stdlib is logging.getLogger("t")

    def test_call_fields_beat_bound_fields(self, stream: JsonLines) -> None:
        """A per-call field wins over the same name from bound()."""
        with al.bound(step="outer"):
            al.get_logger("t").info("x", step="call")
        assert stream.records()[0]["step"] == "call"


class TestStdlibParity:
    def test_funcname_and_lineno_point_at_the_caller(self) -> None:
        """The record names the function and line that called log.info, not our wrapper."""
        log = al.get_logger("t")
        with capture_logs():
            records: list[logging.LogRecord] = []
            handler = logging.Handler()
            handler.emit = records.append  # type: ignore[method-assign]
            logging.getLogger().addHandler(handler)
            try:
                line = sys._getframe().f_lineno + 1
                log.info("here")
            finally:
                logging.getLogger().removeHandler(handler)
        assert records[0].funcName == "test_funcname_and_lineno_point_at_the_caller"
        assert records[0].lineno == line
        assert records[0].pathname == __file__

    def test_stacklevel_moves_up_the_stack(self) -> None:
        """stacklevel=2 attributes the record to the caller's caller, like the stdlib."""
        log = al.get_logger("t")
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)

        def helper() -> None:
            log.info("via helper", stacklevel=2)

        try:
            helper()
        finally:
            root.removeHandler(handler)
        assert records[0].funcName == "test_stacklevel_moves_up_the_stack"

    def test_exc_info_and_exception_attach_the_traceback(self, stream: JsonLines) -> None:
        """exception() and exc_info= produce a structured exception."""
        log = al.get_logger("t")
        try:
            raise KeyError("missing")
        except KeyError as err:
            log.exception("failed")
            log.warning("also", exc_info=err)
        first, second = stream.records()
        assert first["exception"]["type"] == "KeyError"
        assert first["exception"]["frames"][-1]["function"] == (
            "test_exc_info_and_exception_attach_the_traceback"
        )
        assert second["exception"]["message"] == "'missing'"
        assert "exc_info" not in second

    def test_stack_info_is_rendered(self, stream: JsonLines) -> None:
        """stack_info=True adds the current stack."""
        al.get_logger("t").info("where", stack_info=True)
        assert "test_stack_info_is_rendered" in stream.records()[0]["stack"]

    def test_is_enabled_for_follows_the_stdlib_logger(self) -> None:
        """isEnabledFor reflects the underlying logger's effective level."""
        log = al.get_logger("t.level")
        log.setLevel(logging.WARNING)
        try:
            assert not log.isEnabledFor(logging.INFO)
            assert log.isEnabledFor(logging.ERROR)
        finally:
            log.setLevel(logging.NOTSET)

    def test_calls_below_the_level_create_no_record(self, stream: JsonLines) -> None:
        """A disabled level produces nothing."""
        log = al.get_logger("t.quiet")
        log.setLevel(logging.ERROR)
        try:
            log.info("dropped")
        finally:
            log.setLevel(logging.NOTSET)
        assert stream.records() == []


class TestNeverRaises:
    def test_bad_format_arguments_do_not_raise(self, stream: JsonLines) -> None:
        """Mismatched %-arguments are rendered, not raised."""
        al.get_logger("t").info("%d items", "not a number")
        rec = stream.records()[0]
        assert "bad log arguments" in rec["message"]

    def test_a_raising_filter_does_not_reach_the_caller(self) -> None:
        """A filter that raises is contained; the application goes on."""
        log = al.get_logger("t.badfilter")

        def bad_filter(record: logging.LogRecord) -> bool:
            raise RuntimeError("filter bug")

        log.stdlib.addFilter(bad_filter)
        try:
            log.info("still fine")
        finally:
            log.stdlib.removeFilter(bad_filter)

    def test_unprintable_message_object_does_not_raise(self, stream: JsonLines) -> None:
        """A message whose __str__ raises is rendered as a placeholder."""

        class Hostile:
            def __str__(self) -> str:
                raise ValueError("no")

            __repr__ = __str__

        al.get_logger("t").info(Hostile(), extra_field=1)
        rec = stream.records()[0]
        assert rec["extra_field"] == 1
