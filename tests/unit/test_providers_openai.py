"""The OpenAI-compatible provider: the wire format, and every failure classified.

Most tests go through the real httpx client to a real HTTP server on loopback speaking the
chat-completions wire format (``fake_openai``); ``httpx.MockTransport`` covers the odd bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from processors import (
    ChatMessage,
    Completion,
    OpenAIProvider,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RouteSpec,
)
from processors._openai import parse_retry_after
from tests.fakes import (
    ChatAnswer,
    Delay,
    Disconnect,
    ErrorStatus,
    FakeOpenAIServer,
    Malformed,
    RecordedRequest,
)
from topics import BatonError, ConfigurationError, PermanentError, RetryableError

KEY = "sk-test-2b1c9e0f7a"
ENV = {"BATON_TEST_KEY": KEY}
MESSAGES = [
    ChatMessage(role="system", content="You triage tickets."),
    ChatMessage(role="user", content="My order arrived broken"),
]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category"],
    "properties": {"category": {"enum": ["refund", "bug"]}},
}


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _route(base_url: str, **overrides: Any) -> RouteSpec:
    fields: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-test",
        "base_url": base_url,
        "api_key_env": "BATON_TEST_KEY",
        "timeout_s": 2.0,
    }
    fields.update(overrides)
    return RouteSpec(**fields)


async def _complete(
    provider: OpenAIProvider,
    route: RouteSpec,
    *,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    output_schema: dict[str, Any] | None = None,
) -> Completion:
    return await provider.complete(
        route,
        MESSAGES,
        temperature=temperature,
        max_tokens=max_tokens,
        output_schema=output_schema,
        idempotency_key="run-1/classify",
    )


# -- the wire format --------------------------------------------------------------------------


async def test_the_request_is_the_chat_completions_wire_format(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ChatAnswer('{"category": "refund"}', prompt_tokens=31, completion_tokens=7))
    provider = OpenAIProvider(http_client, ENV)

    completion = await _complete(
        provider,
        _route(fake_openai.base_url),
        temperature=0.3,
        max_tokens=50,
        output_schema=SCHEMA,
    )

    assert completion == Completion('{"category": "refund"}', input_tokens=31, output_tokens=7)
    (request,) = fake_openai.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.header("Content-Type") == "application/json"
    assert request.body == {
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "You triage tickets."},
            {"role": "user", "content": "My order arrived broken"},
        ],
        "temperature": 0.3,
        "max_tokens": 50,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": SCHEMA, "strict": False},
        },
    }


async def test_optional_fields_and_auth_are_left_out_when_not_given(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    provider = OpenAIProvider(http_client, {})
    route = _route(fake_openai.base_url + "/", api_key_env=None)  # a trailing slash too

    completion = await _complete(provider, route)

    assert completion.text == "ok"
    (request,) = fake_openai.requests
    assert request.path == "/v1/chat/completions"
    assert request.header("Authorization") is None
    assert set(request.body) == {"model", "messages", "temperature"}


async def test_a_missing_key_variable_is_a_configuration_error_without_a_call(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    provider = OpenAIProvider(http_client, {"OTHER": "x"})

    with pytest.raises(ConfigurationError, match="the API key variable BATON_TEST_KEY is not set"):
        await _complete(provider, _route(fake_openai.base_url))
    assert fake_openai.call_count == 0


async def test_the_client_does_not_retry_on_its_own(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(ErrorStatus(503), Disconnect())
    provider = OpenAIProvider(http_client, ENV)

    with pytest.raises(ProviderUnavailable):
        await _complete(provider, _route(fake_openai.base_url))
    assert fake_openai.call_count == 1
    with pytest.raises(ProviderUnavailable):
        await _complete(provider, _route(fake_openai.base_url))
    assert fake_openai.call_count == 2


# -- every fault classified, through the real client ------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "fragment"),
    [
        (ErrorStatus(500, "boom"), ProviderUnavailable, "HTTP 500: boom"),
        (ErrorStatus(502, body=b"<html>Bad gateway</html>"), ProviderUnavailable, "HTTP 502"),
        (ErrorStatus(503), ProviderUnavailable, "HTTP 503"),
        (ErrorStatus(408), ProviderUnavailable, "HTTP 408"),
        (ErrorStatus(409), ProviderUnavailable, "HTTP 409"),
        (ErrorStatus(429, "slow down"), ProviderRateLimited, "HTTP 429 (rate limited): slow down"),
        (ErrorStatus(400, "max_tokens is too large"), ProviderRejected, "max_tokens is too large"),
        (ErrorStatus(401, "Incorrect API key"), ProviderRejected, "HTTP 401: Incorrect API key"),
        (ErrorStatus(404, "model not found"), ProviderRejected, "HTTP 404: model not found"),
        (ErrorStatus(422), ProviderRejected, "HTTP 422"),
        (
            ErrorStatus(429, "You exceeded your current quota", code="insufficient_quota"),
            ProviderRejected,
            "HTTP 429: You exceeded your current quota",
        ),
        (Malformed(), ProviderUnavailable, "not JSON"),
        (Malformed(b"<html>oops</html>", content_type="text/html"), ProviderUnavailable, "oops"),
        (Malformed(b'{"choices": []}'), ProviderUnavailable, "no choices"),
        (Malformed(b'{"object": "chat.completion"}'), ProviderUnavailable, "no choices"),
        (Malformed(b'{"choices": [{"index": 0}]}'), ProviderUnavailable, "has no message"),
        (ChatAnswer(None), ProviderUnavailable, "has no text content"),
        (ChatAnswer(None, refusal="I can't help"), ProviderRejected, "refused: I can't help"),
        (Disconnect(), ProviderUnavailable, "RemoteProtocolError"),
        (Disconnect(reset=True), ProviderUnavailable, "model 'gpt-test' at http://127.0.0.1"),
        (Delay(5.0), ProviderTimeout, "no answer within 0.3 s"),
    ],
)
async def test_every_fault_is_classified(
    fake_openai: FakeOpenAIServer,
    http_client: httpx.AsyncClient,
    fault: Any,
    error: type[BatonError],
    fragment: str,
) -> None:
    fake_openai.enqueue(fault)
    provider = OpenAIProvider(http_client, ENV)

    with pytest.raises(BatonError) as caught:
        timeout = 0.3 if isinstance(fault, Delay) else 10.0
        await _complete(provider, _route(fake_openai.base_url, timeout_s=timeout))

    assert type(caught.value) is error
    assert fragment in str(caught.value)
    assert KEY not in str(caught.value)
    # A timed-out request may reach the server a moment after the client gave up on it
    # (a loaded machine schedules the server's thread late): wait for it, with a deadline.
    await _eventually(lambda: fake_openai.call_count == 1)
    # the client is still usable after the fault
    assert (await _complete(provider, _route(fake_openai.base_url))).text == "ok"


async def test_retry_after_seconds_are_carried_on_the_error(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(ErrorStatus(429, retry_after="7"), ErrorStatus(429))
    provider = OpenAIProvider(http_client, ENV)

    with pytest.raises(ProviderRateLimited) as first:
        await _complete(provider, _route(fake_openai.base_url))
    with pytest.raises(ProviderRateLimited) as second:
        await _complete(provider, _route(fake_openai.base_url))

    assert first.value.retry_after == 7.0
    assert first.value.retryable
    assert second.value.retry_after is None


async def test_a_refused_connection_is_unavailable(http_client: httpx.AsyncClient) -> None:
    server = FakeOpenAIServer().start()
    base_url = server.base_url
    server.stop()  # nothing listens on the port any more

    with pytest.raises(ProviderUnavailable, match="ConnectError"):
        await _complete(OpenAIProvider(http_client, ENV), _route(base_url))


async def test_the_key_never_appears_in_error_messages(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    def echo_headers(status: int) -> Callable[[RecordedRequest], ErrorStatus]:
        def answer(request: RecordedRequest) -> ErrorStatus:
            return ErrorStatus(status, f"bad request, you sent {dict(request.headers)}")

        return answer

    provider = OpenAIProvider(http_client, ENV)
    for status in (400, 401, 429, 500):
        fake_openai.enqueue(echo_headers(status))
        with pytest.raises(BatonError) as caught:
            await _complete(provider, _route(fake_openai.base_url))
        assert KEY not in str(caught.value)
        assert "[redacted]" in str(caught.value)
    fake_openai.enqueue(Malformed(f"not json {KEY}".encode()))
    with pytest.raises(ProviderUnavailable) as malformed:
        await _complete(provider, _route(fake_openai.base_url))
    assert KEY not in str(malformed.value)


async def test_credentials_in_the_base_url_stay_out_of_messages(
    http_client: httpx.AsyncClient,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": {"message": "down"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        route = _route("https://user:hunter2@llm.example.com/v1")
        with pytest.raises(ProviderUnavailable) as caught:
            await _complete(OpenAIProvider(client, ENV), route)
    assert "hunter2" not in str(caught.value)
    assert "https://llm.example.com/v1" in str(caught.value)


# -- odd bodies, with MockTransport -----------------------------------------------------------


def _mock(response: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(response))


def _chat(content: str, usage: Any) -> bytes:
    body: dict[str, Any] = {"choices": [{"message": {"role": "assistant", "content": content}}]}
    if usage is not ...:
        body["usage"] = usage
    return orjson.dumps(body)


async def test_missing_usage_is_estimated_so_budgets_still_see_the_call() -> None:
    async with _mock(lambda r: httpx.Response(200, content=_chat("x" * 41, ...))) as client:
        completion = await _complete(OpenAIProvider(client, ENV), _route("http://llm"))
    # 41 chars -> 11 tokens; the prompt: 20 chars -> 5, 23 chars -> 6
    assert completion == Completion("x" * 41, input_tokens=11, output_tokens=11)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "3", "completion_tokens": 1},
        {"prompt_tokens": 3},
        {"prompt_tokens": -1, "completion_tokens": 1},
        {"prompt_tokens": True, "completion_tokens": 1},
        "lots",
    ],
)
async def test_unreadable_usage_is_a_malformed_answer(usage: Any) -> None:
    async with _mock(lambda r: httpx.Response(200, content=_chat("hi", usage))) as client:
        with pytest.raises(ProviderUnavailable, match="no valid token counts"):
            await _complete(OpenAIProvider(client, ENV), _route("http://llm"))


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"error": "model \\"x\\" not found"}', 'model "x" not found'),  # Ollama
        (b'{"object": "error", "message": "bad temperature"}', "bad temperature"),  # old vLLM
        (b'{"detail": "Not Found"}', "Not Found"),
        (b"", "(no message)"),
        (b"x" * 2000, "..."),
    ],
)
async def test_provider_messages_are_read_from_the_shapes_servers_use(
    body: bytes, fragment: str
) -> None:
    async with _mock(lambda r: httpx.Response(400, content=body)) as client:
        with pytest.raises(ProviderRejected) as caught:
            await _complete(OpenAIProvider(client, ENV), _route("http://llm"))
    assert fragment in str(caught.value)
    assert caught.value.status == 400
    assert len(str(caught.value)) < 400


async def test_a_redirect_is_not_followed_and_is_permanent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(301, headers={"Location": "http://elsewhere/"})

    async with _mock(handler) as client:
        with pytest.raises(ProviderRejected, match="HTTP 301"):
            await _complete(OpenAIProvider(client, ENV), _route("http://llm"))


@pytest.mark.parametrize(
    ("exception", "error"),
    [
        (httpx.ConnectError("refused"), ProviderUnavailable),
        (httpx.ReadError("reset"), ProviderUnavailable),
        (httpx.RemoteProtocolError("bad framing"), ProviderUnavailable),
        (httpx.ConnectTimeout("slow"), ProviderTimeout),
        (httpx.PoolTimeout("busy"), ProviderTimeout),
        (httpx.WriteTimeout("slow"), ProviderTimeout),
    ],
)
async def test_transport_errors_are_retryable(
    exception: Exception, error: type[RetryableError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    async with _mock(handler) as client:
        with pytest.raises(error) as caught:
            await _complete(OpenAIProvider(client, ENV), _route("http://llm"))
    assert caught.value.retryable
    assert not isinstance(caught.value, PermanentError)


async def test_the_route_timeout_is_the_request_timeout() -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(
            200, content=_chat("hi", {"prompt_tokens": 1, "completion_tokens": 1})
        )

    async with _mock(handler) as client:
        await _complete(OpenAIProvider(client, ENV), _route("http://llm", timeout_s=12.5))
    assert seen == [{"connect": 12.5, "read": 12.5, "write": 12.5, "pool": 12.5}]


# -- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("-3", 0.0),
        ("Sat, 21 Nov 2026 09:30:45 GMT", 30.0),
        ("Sat, 21 Nov 2026 09:29:00 GMT", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    value: str | None, expected: float | None
) -> None:
    now = datetime(2026, 11, 21, 9, 30, 15, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=now) == expected


async def test_an_http_date_retry_after_reaches_the_error(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    in_a_minute = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 60, UTC)
    header = in_a_minute.strftime("%a, %d %b %Y %H:%M:%S GMT")
    fake_openai.enqueue(ErrorStatus(429, retry_after=header))

    with pytest.raises(ProviderRateLimited) as caught:
        await _complete(OpenAIProvider(http_client, ENV), _route(fake_openai.base_url))

    assert caught.value.retry_after is not None
    assert 55 <= caught.value.retry_after <= 60


async def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the server never saw the request"
        await asyncio.sleep(0.01)
