"""The loopback fake tool server itself: routes, queues, recording, faults."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.fakes.tool_server import Delay, Disconnect, ErrorStatus, FakeToolServer, Json, Text


def test_routes_answer_their_queue_then_their_default(tool_server: FakeToolServer) -> None:
    tool_server.route("POST", "/a", Json({"default": True}))
    tool_server.enqueue("POST", "/a", ErrorStatus(429, retry_after="2"), Text("plain", status=201))
    with httpx.Client(base_url=tool_server.url) as client:
        responses = [client.post("/a?x=1&x=2&y=", json={"k": "v"}) for _ in range(3)]
        missing = client.get("/nowhere")

    assert [r.status_code for r in responses] == [429, 201, 200]
    assert responses[0].headers["Retry-After"] == "2"
    assert responses[0].json() == {"error": "simulated failure"}
    assert responses[1].text == "plain"
    assert responses[2].json() == {"default": True}
    assert missing.status_code == 404
    first = tool_server.requests[0]
    assert (first.method, first.path, first.target) == ("POST", "/a", "/a?x=1&x=2&y=")
    assert first.query == {"x": ["1", "2"], "y": [""]}
    assert first.body == {"k": "v"}
    assert first.header("Content-Type") == "application/json"
    assert tool_server.call_count == 4


def test_a_delay_answers_late_and_a_disconnect_does_not_answer(
    tool_server: FakeToolServer,
) -> None:
    tool_server.route("GET", "/slow", Delay(0.2, then=Json("late")))
    tool_server.route("GET", "/gone", Disconnect(reset=True))
    with httpx.Client(base_url=tool_server.url) as client:
        started = time.monotonic()
        assert client.get("/slow").json() == "late"
        assert time.monotonic() - started >= 0.2
        with pytest.raises(httpx.TransportError):
            client.get("/gone")

    assert len(tool_server.wait_for_requests(2)) == 2


def test_reset_forgets_everything(tool_server: FakeToolServer) -> None:
    tool_server.route("GET", "/a", Json(1))
    with httpx.Client(base_url=tool_server.url) as client:
        client.get("/a")
        tool_server.reset()
        assert client.get("/a").status_code == 404

    assert len(tool_server.requests) == 1
