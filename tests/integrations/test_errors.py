"""error_response(): the JSON error shape for handled errors."""

from __future__ import annotations

import json

import pytest

from agentuity_logging import session
from agentuity_logging.integrations.errors import ErrorResponse, error_body, error_response


class TestErrorResponse:
    def test_string_error_inside_a_session(self) -> None:
        """A message string is sent as it is, with the session ID in body and headers."""
        with session() as s:
            resp = error_response("thread expired", status=410)
        assert resp.body == {"success": False, "error": "thread expired", "sessionId": s.id}
        assert resp.status == 410
        assert resp.headers == {
            "x-agentuity-session-id": s.id,
            "x-agentuity-thread-id": s.thread.id,
        }

    def test_client_error_exception_text_is_sent(self) -> None:
        """For a 4xx the exception's text is the message (it is meant for the client)."""
        with session():
            resp = error_response(LookupError("order 42 not found"), status=404)
        assert resp.body["error"] == "order 42 not found"

    def test_server_error_exception_text_is_never_sent(self) -> None:
        """For a 5xx only the status phrase is sent: the exception text may hold internals."""
        with session():
            resp = error_response(RuntimeError("password=hunter2 at /srv/app.py"))
        assert resp.status == 500
        assert resp.body["error"] == "Internal Server Error"
        assert "hunter2" not in json.dumps(resp.body)

    def test_empty_exception_text_falls_back_to_the_phrase(self) -> None:
        """An exception without text gets the status phrase."""
        assert error_response(PermissionError(), status=403).body["error"] == "Forbidden"

    def test_outside_a_session_has_no_session_id(self) -> None:
        """Outside a session the body has no sessionId and there are no session headers."""
        resp = error_response("bad request", status=400)
        assert resp.body == {"success": False, "error": "bad request"}
        assert resp.headers == {}

    def test_is_a_flask_style_tuple(self) -> None:
        """The answer unpacks as (body, status, headers), which Flask takes as a response."""
        body, status, headers = error_response("nope", status=404)
        assert isinstance(error_response("nope", status=404), tuple)
        assert (body["error"], status, headers) == ("nope", 404, {})

    def test_to_starlette_builds_a_json_response(self) -> None:
        """to_starlette() returns a JSONResponse with the body, status and headers."""
        with session() as s:
            response = error_response("gone", status=410).to_starlette()
        assert response.status_code == 410
        assert json.loads(response.body) == {"success": False, "error": "gone", "sessionId": s.id}
        assert response.headers["x-agentuity-session-id"] == s.id

    @pytest.mark.parametrize("status", [200, 302, 399, 600])
    def test_non_error_status_is_refused(self, status: int) -> None:
        """A status outside 400-599 is a ValueError naming it."""
        with pytest.raises(ValueError, match=str(status)):
            error_response("x", status=status)

    def test_error_body_shape(self) -> None:
        """error_body() is the shared shape."""
        assert error_body("e", "sess_1") == {"success": False, "error": "e", "sessionId": "sess_1"}
        assert isinstance(error_response("x", 400), ErrorResponse)
