"""The Anthropic Messages provider: the wire format, and every failure classified.

Most tests go through the real httpx client to a real HTTP server on loopback speaking the
Messages wire format (``fake_anthropic``); ``httpx.MockTransport`` covers the odd bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from processors import (
    ChatMessage,
    Completion,
    LlmProcessor,
    ModelCatalog,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RouteSpec,
)
from processors._anthropic import AnthropicProvider, json_instruction
from tests.fakes import Delay, Disconnect, ErrorStatus, Malformed, RecordedRequest
from tests.fakes.anthropic_server import FakeAnthropicServer, MessageAnswer
from tests.fakes.steps import step_request
from topics import BatonError, ConfigurationError, PermanentError, RetryableError, StepKind, Usage

KEY = "sk-ant-test-5d1e7c"
ENV = {"ANTHROPIC_TEST_KEY": KEY}
MESSAGES = [
    ChatMessage(role="system", content="You triage tickets."),
    ChatMessage(role="user", content="My order arrived broken"),
    ChatMessage(role="assistant", content="Sorry to hear that. Which order?"),
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Order 7"),
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
        "provider": "anthropic",
        "model": "claude-test",
        "base_url": base_url,
        "api_key_env": "ANTHROPIC_TEST_KEY",
        "timeout_s": 2.0,
    }
    fields.update(overrides)
    return RouteSpec(**fields)


async def _complete(
    provider: AnthropicProvider,
    route: RouteSpec,
    *,
    messages: list[ChatMessage] | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    output_schema: dict[str, Any] | None = None,
) -> Completion:
    return await provider.complete(
        route,
        MESSAGES if messages is None else messages,
        temperature=temperature,
        max_tokens=max_tokens,
        output_schema=output_schema,
        idempotency_key="run-1/classify",
    )


# -- the wire format --------------------------------------------------------------------------


async def test_the_request_is_the_messages_wire_format(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.reply(MessageAnswer("A refund.", input_tokens=31, output_tokens=7))
    provider = AnthropicProvider(http_client, ENV)

    completion = await _complete(
        provider, _route(fake_anthropic.base_url), temperature=0.3, max_tokens=50
    )

    assert completion == Completion("A refund.", input_tokens=31, output_tokens=7)
    (request,) = fake_anthropic.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.header("x-api-key") == KEY
    assert request.header("anthropic-version") == "2023-06-01"
    assert request.header("Authorization") is None
    assert request.header("Content-Type") == "application/json"
    assert request.body == {
        "model": "claude-test",
        "max_tokens": 50,
        "system": "You triage tickets.\n\nBe brief.",
        "messages": [
            {"role": "user", "content": "My order arrived broken"},
            {"role": "assistant", "content": "Sorry to hear that. Which order?"},
            {"role": "user", "content": "Order 7"},
        ],
        "temperature": 0.3,
    }


async def test_without_system_messages_or_a_key_neither_is_sent(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    provider = AnthropicProvider(http_client, {})
    route = _route(fake_anthropic.base_url + "/", api_key_env=None)  # a trailing slash too

    completion = await _complete(provider, route, messages=[ChatMessage(role="user", content="hi")])

    assert completion.text == "ok"
    (request,) = fake_anthropic.requests
    assert request.path == "/v1/messages"
    assert request.header("x-api-key") is None
    assert request.header("anthropic-version") == "2023-06-01"
    assert set(request.body) == {"model", "max_tokens", "messages", "temperature"}


@pytest.mark.parametrize(
    ("step", "route_cap", "sent"),
    [(50, 300, 50), (None, 300, 300), (None, None, 1024)],
)
async def test_max_tokens_is_the_steps_else_the_routes_else_1024(
    fake_anthropic: FakeAnthropicServer,
    http_client: httpx.AsyncClient,
    step: int | None,
    route_cap: int | None,
    sent: int,
) -> None:
    route = _route(fake_anthropic.base_url, max_output_tokens=route_cap)

    await _complete(AnthropicProvider(http_client, ENV), route, max_tokens=step)

    assert fake_anthropic.requests[0].body["max_tokens"] == sent


async def test_structured_output_is_asked_for_in_the_system_prompt(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.reply('{"category": "refund"}')

    completion = await _complete(
        AnthropicProvider(http_client, ENV), _route(fake_anthropic.base_url), output_schema=SCHEMA
    )

    assert completion.text == '{"category": "refund"}'
    body = fake_anthropic.requests[0].body
    assert "response_format" not in body
    assert body["system"] == "You triage tickets.\n\nBe brief.\n\n" + json_instruction(SCHEMA)
    assert orjson.dumps(SCHEMA).decode() in body["system"]


async def test_text_blocks_are_joined_and_other_blocks_ignored(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.reply(
        MessageAnswer(
            blocks=[
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Refund, "},
                {"type": "text", "text": "approved."},
            ]
        )
    )

    completion = await _complete(
        AnthropicProvider(http_client, ENV), _route(fake_anthropic.base_url)
    )

    assert completion == Completion("Refund, approved.", input_tokens=10, output_tokens=5)


async def test_a_missing_key_variable_is_a_configuration_error_without_a_call(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    provider = AnthropicProvider(http_client, {"OTHER": "x"})

    with pytest.raises(ConfigurationError, match="the API key variable ANTHROPIC_TEST_KEY"):
        await _complete(provider, _route(fake_anthropic.base_url))
    assert fake_anthropic.call_count == 0


# -- every fault classified, through the real client ------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "fragment"),
    [
        (ErrorStatus(500, "boom"), ProviderUnavailable, "HTTP 500: boom"),
        (ErrorStatus(529, "Overloaded"), ProviderUnavailable, "HTTP 529: Overloaded"),
        (ErrorStatus(502, body=b"<html>Bad gateway</html>"), ProviderUnavailable, "HTTP 502"),
        (ErrorStatus(503), ProviderUnavailable, "HTTP 503"),
        (ErrorStatus(408), ProviderUnavailable, "HTTP 408"),
        (ErrorStatus(409), ProviderUnavailable, "HTTP 409"),
        (ErrorStatus(429, "slow down"), ProviderRateLimited, "HTTP 429 (rate limited): slow down"),
        (
            ErrorStatus(400, "max_tokens: 99999999 > 64000"),
            ProviderRejected,
            "HTTP 400: max_tokens: 99999999 > 64000",
        ),
        (ErrorStatus(401, "invalid x-api-key"), ProviderRejected, "HTTP 401: invalid x-api-key"),
        (ErrorStatus(403), ProviderRejected, "HTTP 403"),
        (ErrorStatus(404, "model: claude-nope"), ProviderRejected, "HTTP 404: model: claude-nope"),
        (ErrorStatus(413, "Request exceeds the maximum size"), ProviderRejected, "HTTP 413"),
        (Malformed(b'{"content": ['), ProviderUnavailable, "not JSON"),
        (Malformed(b"<html>oops</html>", content_type="text/html"), ProviderUnavailable, "oops"),
        (Malformed(b'{"type": "message"}'), ProviderUnavailable, "the answer has no content"),
        (Malformed(b'{"content": "hi"}'), ProviderUnavailable, "the answer has no content"),
        (Malformed(b'{"content": ["hi"]}'), ProviderUnavailable, "block 0 has no type"),
        (Malformed(b'{"content": [{"type": "text"}]}'), ProviderUnavailable, "has no text"),
        (MessageAnswer(blocks=[{"type": "tool_use", "id": "t"}]), ProviderUnavailable, "no name"),
        (
            MessageAnswer("I can't help with that", stop_reason="refusal"),
            ProviderRejected,
            "refused: I can't help with that",
        ),
        (Disconnect(), ProviderUnavailable, "RemoteProtocolError"),
        (Disconnect(reset=True), ProviderUnavailable, "model 'claude-test' at http://127.0.0.1"),
        (Delay(5.0), ProviderTimeout, "no answer within 0.3 s"),
    ],
)
async def test_every_fault_is_classified(
    fake_anthropic: FakeAnthropicServer,
    http_client: httpx.AsyncClient,
    fault: Any,
    error: type[BatonError],
    fragment: str,
) -> None:
    fake_anthropic.enqueue(fault)
    provider = AnthropicProvider(http_client, ENV)

    with pytest.raises(BatonError) as caught:
        timeout = 0.3 if isinstance(fault, Delay) else 10.0
        await _complete(provider, _route(fake_anthropic.base_url, timeout_s=timeout))

    assert type(caught.value) is error
    assert fragment in str(caught.value)
    assert KEY not in str(caught.value)
    # A timed-out request may reach the server a moment after the client gave up on it
    # (a loaded machine schedules the server's thread late): wait for it, with a deadline.
    await _eventually(lambda: fake_anthropic.call_count == 1)
    # the client is still usable after the fault
    assert (await _complete(provider, _route(fake_anthropic.base_url))).text == "ok"


async def test_the_error_shape_is_anthropics(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.enqueue(ErrorStatus(400, "messages: roles must alternate"))

    with pytest.raises(ProviderRejected) as caught:
        await _complete(AnthropicProvider(http_client, ENV), _route(fake_anthropic.base_url))

    assert caught.value.status == 400
    assert str(caught.value) == (
        f"model 'claude-test' at {fake_anthropic.base_url}: HTTP 400: "
        "messages: roles must alternate"
    )


async def test_retry_after_is_carried_on_the_error(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    in_a_minute = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 60, UTC)
    fake_anthropic.enqueue(
        ErrorStatus(429, retry_after="7"),
        ErrorStatus(429, retry_after=in_a_minute.strftime("%a, %d %b %Y %H:%M:%S GMT")),
        ErrorStatus(429),
    )
    provider = AnthropicProvider(http_client, ENV)
    waits = []
    for _ in range(3):
        with pytest.raises(ProviderRateLimited) as caught:
            await _complete(provider, _route(fake_anthropic.base_url))
        assert caught.value.retryable
        waits.append(caught.value.retry_after)

    assert fake_anthropic.requests[0].header("x-api-key") == KEY
    assert waits[0] == 7.0
    assert waits[1] is not None and 55 <= waits[1] <= 60
    assert waits[2] is None


async def test_a_refused_connection_is_unavailable(http_client: httpx.AsyncClient) -> None:
    server = FakeAnthropicServer().start()
    base_url = server.base_url
    server.stop()  # nothing listens on the port any more

    with pytest.raises(ProviderUnavailable, match="ConnectError"):
        await _complete(AnthropicProvider(http_client, ENV), _route(base_url))


async def test_the_key_never_appears_in_error_messages(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    def echo_headers(status: int) -> Callable[[RecordedRequest], ErrorStatus]:
        def answer(request: RecordedRequest) -> ErrorStatus:
            return ErrorStatus(status, f"bad request, you sent {dict(request.headers)}")

        return answer

    provider = AnthropicProvider(http_client, ENV)
    for status in (400, 401, 429, 500, 529):
        fake_anthropic.enqueue(echo_headers(status))
        with pytest.raises(BatonError) as caught:
            await _complete(provider, _route(fake_anthropic.base_url))
        assert KEY not in str(caught.value)
        assert "[redacted]" in str(caught.value)
    fake_anthropic.enqueue(Malformed(f"not json {KEY}".encode()))
    with pytest.raises(ProviderUnavailable) as malformed:
        await _complete(provider, _route(fake_anthropic.base_url))
    assert KEY not in str(malformed.value)
    fake_anthropic.enqueue(MessageAnswer(f"no: {KEY}", stop_reason="refusal"))
    with pytest.raises(ProviderRejected) as refused:
        await _complete(provider, _route(fake_anthropic.base_url))
    assert KEY not in str(refused.value)


# -- odd bodies, with MockTransport -----------------------------------------------------------


def _mock(response: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(response))


def _message(text: str, usage: Any) -> bytes:
    body: dict[str, Any] = {"type": "message", "content": [{"type": "text", "text": text}]}
    if usage is not ...:
        body["usage"] = usage
    return orjson.dumps(body)


async def test_missing_usage_is_estimated_so_budgets_still_see_the_call() -> None:
    messages = [ChatMessage(role="user", content="y" * 23)]
    async with _mock(lambda r: httpx.Response(200, content=_message("x" * 41, ...))) as client:
        completion = await _complete(
            AnthropicProvider(client, ENV), _route("http://llm"), messages=messages
        )
    assert completion == Completion("x" * 41, input_tokens=6, output_tokens=11)


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": "3", "output_tokens": 1},
        {"input_tokens": 3},
        {"input_tokens": -1, "output_tokens": 1},
        {"input_tokens": True, "output_tokens": 1},
        "lots",
    ],
)
async def test_unreadable_usage_is_a_malformed_answer(usage: Any) -> None:
    async with _mock(lambda r: httpx.Response(200, content=_message("hi", usage))) as client:
        with pytest.raises(ProviderUnavailable, match="no valid token counts"):
            await _complete(AnthropicProvider(client, ENV), _route("http://llm"))


@pytest.mark.parametrize(
    ("exception", "error"),
    [
        (httpx.ConnectError("refused"), ProviderUnavailable),
        (httpx.ReadError("reset"), ProviderUnavailable),
        (httpx.ConnectTimeout("slow"), ProviderTimeout),
        (httpx.ReadTimeout("slow"), ProviderTimeout),
    ],
)
async def test_transport_errors_are_retryable(
    exception: Exception, error: type[RetryableError]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exception

    async with _mock(handler) as client:
        with pytest.raises(error) as caught:
            await _complete(AnthropicProvider(client, ENV), _route("http://llm"))
    assert caught.value.retryable
    assert not isinstance(caught.value, PermanentError)


async def test_the_route_timeout_is_the_request_timeout() -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        usage = {"input_tokens": 1, "output_tokens": 1}
        return httpx.Response(200, content=_message("hi", usage))

    async with _mock(handler) as client:
        await _complete(AnthropicProvider(client, ENV), _route("http://llm", timeout_s=12.5))
    assert seen == [{"connect": 12.5, "read": 12.5, "write": 12.5, "pool": 12.5}]


async def test_credentials_in_the_base_url_stay_out_of_messages() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(529, json={"type": "error", "error": {"message": "Overloaded"}})

    async with _mock(handler) as client:
        route = _route("https://user:hunter2@llm.example.com/v1")
        with pytest.raises(ProviderUnavailable) as caught:
            await _complete(AnthropicProvider(client, ENV), route)
    assert "hunter2" not in str(caught.value)
    assert "https://llm.example.com/v1: HTTP 529: Overloaded" in str(caught.value)


# -- through the llm processor ----------------------------------------------------------------


async def test_an_llm_step_on_an_anthropic_route_retries_an_overload_and_prices_usage(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.enqueue(ErrorStatus(529, "Overloaded"))
    fake_anthropic.reply(
        MessageAnswer('{"category": "refund"}', input_tokens=1000, output_tokens=20)
    )
    route = _route(
        fake_anthropic.base_url,
        input_usd_per_mtok=Decimal("3"),
        output_usd_per_mtok=Decimal("15"),
    )
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    processor = LlmProcessor(ModelCatalog(routes={"strong": route}), http_client, ENV, sleep=sleep)
    params = {
        "route": "strong",
        "messages": [{"role": "user", "content": "Classify: my order arrived broken"}],
        "output_schema": SCHEMA,
    }

    outcome = await processor.run(step_request(StepKind.llm, params))

    assert outcome.output == {"category": "refund"}
    assert outcome.usage == Usage(
        input_tokens=1000,
        output_tokens=20,
        cost_usd=Decimal("0.0033"),
        route="strong",
        provider="anthropic",
        model="claude-test",
    )
    assert fake_anthropic.call_count == 2
    assert len(waits) == 1


async def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the server never saw the request"
        await asyncio.sleep(0.01)
