"""The loopback fake OpenAI server itself: usable from sync and async tests, faults as scripted."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.fakes import (
    ChatAnswer,
    Delay,
    Disconnect,
    ErrorStatus,
    FakeOpenAIServer,
    Malformed,
    RecordedRequest,
)

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_it_speaks_the_wire_format_to_a_sync_client(fake_openai: FakeOpenAIServer) -> None:
    with httpx.Client(base_url=fake_openai.base_url) as client:
        response = client.post("/chat/completions", json=BODY, headers={"X-Trace": "t1"})

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "ok"}
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    (request,) = fake_openai.requests
    assert request.body == BODY
    assert request.header("x-trace") == "t1"


async def test_it_serves_an_async_client_and_answers_by_function(
    fake_openai: FakeOpenAIServer,
) -> None:
    def echo(request: RecordedRequest) -> ChatAnswer:
        return ChatAnswer(request.body["messages"][-1]["content"].upper(), completion_tokens=1)

    fake_openai.reply(echo)
    async with httpx.AsyncClient(base_url=fake_openai.base_url) as client:
        response = await client.post("/chat/completions", json=BODY)

    assert response.json()["choices"][0]["message"]["content"] == "HI"
    assert response.json()["usage"]["completion_tokens"] == 1
    assert len(await fake_openai.wait_for_requests_async(1)) == 1


def test_queued_answers_come_first_then_the_default(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply("default")
    fake_openai.enqueue(
        ErrorStatus(429, "wait", retry_after="2", code="rate_limit_exceeded"),
        Malformed(b"<html>", status=502, content_type="text/html"),
        "queued",
    )
    with httpx.Client(base_url=fake_openai.base_url) as client:
        responses = [client.post("/chat/completions", json=BODY) for _ in range(4)]

    assert [r.status_code for r in responses] == [429, 502, 200, 200]
    assert responses[0].headers["Retry-After"] == "2"
    assert responses[0].json()["error"] == {
        "message": "wait",
        "type": "invalid_request_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert responses[1].text == "<html>"
    contents = [r.json()["choices"][0]["message"]["content"] for r in responses[2:]]
    assert contents == ["queued", "default"]


def test_a_delay_answers_late(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.enqueue(Delay(0.3, then="late"))
    with httpx.Client(base_url=fake_openai.base_url) as client:
        started = time.monotonic()
        response = client.post("/chat/completions", json=BODY)
        elapsed = time.monotonic() - started

    assert response.json()["choices"][0]["message"]["content"] == "late"
    assert elapsed >= 0.3


@pytest.mark.parametrize("reset", [False, True])
def test_a_disconnect_leaves_the_client_without_an_answer(
    fake_openai: FakeOpenAIServer, reset: bool
) -> None:
    fake_openai.enqueue(Disconnect(reset=reset))
    with httpx.Client(base_url=fake_openai.base_url) as client:
        with pytest.raises(httpx.TransportError):
            client.post("/chat/completions", json=BODY)
        assert client.post("/chat/completions", json=BODY).status_code == 200


def test_other_paths_are_404_and_recorded(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.enqueue(ErrorStatus(500))
    with httpx.Client(base_url=fake_openai.url) as client:
        response = client.get("/v1/models")

    assert response.status_code == 404
    assert fake_openai.requests[0].path == "/v1/models"
    # the queued fault is still there for the next completion
    with httpx.Client(base_url=fake_openai.base_url) as client:
        assert client.post("/chat/completions", json=BODY).status_code == 500


def test_waiting_for_requests_fails_at_the_deadline(fake_openai: FakeOpenAIServer) -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match="expected 1 requests within 0.2 s, got 0"):
        fake_openai.wait_for_requests(1, timeout=0.2)
    assert time.monotonic() - started >= 0.2


async def test_waiting_async_fails_at_the_deadline(fake_openai: FakeOpenAIServer) -> None:
    with pytest.raises(AssertionError, match="got 0"):
        await fake_openai.wait_for_requests_async(1, timeout=0.1)


def test_reset_forgets_requests_and_script(fake_openai: FakeOpenAIServer) -> None:
    fake_openai.reply("x")
    fake_openai.enqueue(ErrorStatus(500))
    with httpx.Client(base_url=fake_openai.base_url) as client:
        client.post("/chat/completions", json=BODY)
        fake_openai.reset()
        response = client.post("/chat/completions", json=BODY)

    assert response.json()["choices"][0]["message"]["content"] == "ok"
    assert fake_openai.call_count == 1


def test_stopping_drops_a_request_in_flight() -> None:
    server = FakeOpenAIServer().start()
    server.enqueue(Delay(60))
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        started = time.monotonic()
        threading.Timer(0.2, server.stop).start()
        with pytest.raises(httpx.TransportError):
            client.post("/chat/completions", json=BODY)
    assert time.monotonic() - started < 4
