"""The OpenAI Responses API provider: the wire format, usage and cost, every failure classified.

The tests go through the real httpx client to a real HTTP server on loopback speaking the
Responses wire format (``fake_responses``); ``httpx.MockTransport`` covers the odd bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
    ResponsesProvider,
    RouteSpec,
    ToolCall,
    ToolCallMessage,
    ToolDefinition,
    ToolResultMessage,
)
from processors._provider import Message
from processors._responses import fits_strict
from tests.fakes import Delay, Disconnect, ErrorStatus, Malformed, RecordedRequest
from tests.fakes.responses_server import FakeResponsesServer, FunctionCall, ResponseAnswer
from tests.fakes.steps import step_request
from topics import BatonError, ConfigurationError, StepKind, Usage

KEY = "sk-resp-test-8f3a1c"
ENV = {"OPENAI_TEST_KEY": KEY}
MESSAGES: list[Message] = [
    ChatMessage(role="system", content="You triage tickets."),
    ChatMessage(role="user", content="My order arrived broken"),
    ChatMessage(role="assistant", content="Sorry to hear that. Which order?"),
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Order 7"),
]
#: Open (no additionalProperties: false): strict mode would refuse it.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category"],
    "properties": {"category": {"enum": ["refund", "bug"]}},
}
#: Keeps strict mode's rules.
STRICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["refund", "bug"]},
        "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    },
    "required": ["category", "confidence"],
    "additionalProperties": False,
}
ORDER_TOOL = ToolDefinition(
    name="orders.status",
    description="Where an order is.",
    parameters={
        "type": "object",
        "properties": {"id": {"type": "string"}},
        "required": ["id"],
        "additionalProperties": False,
    },
)
NOTE_TOOL = ToolDefinition(name="note", parameters={"type": "object", "properties": {}})


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _route(base_url: str, **overrides: Any) -> RouteSpec:
    fields: dict[str, Any] = {
        "provider": "openai-responses",
        "model": "gpt-test",
        "base_url": base_url,
        "api_key_env": "OPENAI_TEST_KEY",
        "timeout_s": 2.0,
    }
    fields.update(overrides)
    return RouteSpec(**fields)


async def _complete(
    provider: ResponsesProvider,
    route: RouteSpec,
    *,
    messages: list[Message] | None = None,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    output_schema: dict[str, Any] | None = None,
    tools: list[ToolDefinition] | None = None,
) -> Completion:
    return await provider.complete(
        route,
        MESSAGES if messages is None else messages,
        temperature=temperature,
        max_tokens=max_tokens,
        output_schema=output_schema,
        idempotency_key="run-1/classify",
        tools=tools,
    )


# -- the wire format --------------------------------------------------------------------------


async def test_the_request_is_the_responses_wire_format(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.reply(ResponseAnswer('{"category": "refund"}', input_tokens=31, output_tokens=7))

    completion = await _complete(
        ResponsesProvider(http_client, ENV),
        _route(fake_responses.base_url),
        temperature=0.3,
        max_tokens=50,
        output_schema=SCHEMA,
    )

    assert completion == Completion('{"category": "refund"}', input_tokens=31, output_tokens=7)
    (request,) = fake_responses.requests
    assert (request.method, request.path) == ("POST", "/v1/responses")
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.header("Content-Type") == "application/json"
    assert request.body == {
        "model": "gpt-test",
        "instructions": "You triage tickets.\n\nBe brief.",
        "input": [
            {"type": "message", "role": "user", "content": "My order arrived broken"},
            {"type": "message", "role": "assistant", "content": "Sorry to hear that. Which order?"},
            {"type": "message", "role": "user", "content": "Order 7"},
        ],
        "store": False,
        "temperature": 0.3,
        "max_output_tokens": 50,
        "text": {
            "format": {"type": "json_schema", "name": "output", "schema": SCHEMA, "strict": False}
        },
    }


async def test_optional_fields_and_auth_are_left_out_when_not_given(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    route = _route(fake_responses.base_url + "/", api_key_env=None)  # a trailing slash too

    completion = await _complete(
        ResponsesProvider(http_client, {}),
        route,
        messages=[ChatMessage(role="user", content="hi")],
    )

    assert completion.text == "ok"
    (request,) = fake_responses.requests
    assert request.path == "/v1/responses"
    assert request.header("Authorization") is None
    assert set(request.body) == {"model", "input", "store", "temperature"}


async def test_a_route_that_accepts_no_temperature_sends_none_and_its_cap_is_sent(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    route = _route(fake_responses.base_url, accepts_temperature=False, max_output_tokens=4000)

    await _complete(ResponsesProvider(http_client, ENV), route, temperature=0.7)

    body = fake_responses.requests[0].body
    assert "temperature" not in body
    assert body["max_output_tokens"] == 4000


def test_only_responses_routes_may_refuse_a_temperature() -> None:
    with pytest.raises(ValueError, match="`accepts_temperature: false` is for openai-responses"):
        RouteSpec(provider="openai", model="m", base_url="http://llm/v1", accepts_temperature=False)


async def test_a_schema_that_keeps_the_strict_rules_is_sent_strict(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.reply('{"category": "bug", "confidence": 0.9}')
    processor = LlmProcessor(
        ModelCatalog(routes={"smart": _route(fake_responses.base_url)}), http_client, ENV
    )
    params = {
        "route": "smart",
        "messages": [{"role": "user", "content": "Classify: the app crashes"}],
        "output_schema": STRICT_SCHEMA,
    }

    outcome = await processor.run(step_request(StepKind.llm, params))

    assert outcome.output == {"category": "bug", "confidence": 0.9}
    assert fake_responses.requests[0].body["text"] == {
        "format": {
            "type": "json_schema",
            "name": "output",
            "schema": STRICT_SCHEMA,
            "strict": True,
        }
    }


@pytest.mark.parametrize(
    ("schema", "strict"),
    [
        (STRICT_SCHEMA, True),
        ({"type": "object", "properties": {}, "additionalProperties": False}, True),
        (
            {
                "type": "object",
                "properties": {
                    "items": {
                        "type": "array",
                        "items": {"$ref": "#/$defs/item"},
                        "maxItems": 3,
                    }
                },
                "required": ["items"],
                "additionalProperties": False,
                "$defs": {
                    "item": {
                        "anyOf": [
                            {"type": "string", "format": "date"},
                            {
                                "type": "object",
                                "properties": {"n": {"type": "integer"}},
                                "required": ["n"],
                                "additionalProperties": False,
                            },
                        ]
                    }
                },
            },
            True,
        ),
        (SCHEMA, False),  # open object
        ({"type": "object", "properties": {}}, False),  # open object
        (  # an optional property
            {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            False,
        ),
        (  # a nested open object
            {
                "type": "object",
                "properties": {"a": {"type": "object", "properties": {}}},
                "required": ["a"],
                "additionalProperties": False,
            },
            False,
        ),
        (  # a keyword strict mode lacks
            {
                "type": "object",
                "properties": {"a": {"type": "string", "minLength": 2}},
                "required": ["a"],
                "additionalProperties": False,
            },
            False,
        ),
        (  # a format strict mode lacks
            {
                "type": "object",
                "properties": {"a": {"type": "string", "format": "uri"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            False,
        ),
        ({"anyOf": [STRICT_SCHEMA]}, False),  # the root must be an object
        ({"type": "array", "items": {"type": "string"}}, False),
    ],
)
def test_fits_strict(schema: dict[str, Any], strict: bool) -> None:
    assert fits_strict(schema) is strict


def test_fits_strict_has_a_depth_limit() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(12):
        schema = {
            "type": "object",
            "properties": {"x": schema},
            "required": ["x"],
            "additionalProperties": False,
        }
    assert not fits_strict(schema)
    assert fits_strict(schema["properties"]["x"]["properties"]["x"]["properties"]["x"])


# -- tools ------------------------------------------------------------------------------------


async def test_a_tool_call_round_trip(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    provider = ResponsesProvider(http_client, ENV)
    route = _route(fake_responses.base_url)
    question: list[Message] = [
        ChatMessage(role="system", content="You answer questions about orders."),
        ChatMessage(role="user", content="Where are A-1 and A-2?"),
    ]
    fake_responses.enqueue(
        ResponseAnswer(
            text=None,
            calls=(
                FunctionCall("orders_status", {"id": "A-1"}, call_id="call_a"),
                FunctionCall("orders_status", '{"id": "A-2"}', call_id="call_b"),
            ),
            input_tokens=80,
            output_tokens=30,
        ),
        ResponseAnswer("A-1 is on the van; A-2 is at the depot."),
    )

    first = await _complete(provider, route, messages=question, tools=[ORDER_TOOL, NOTE_TOOL])

    assert first == Completion(
        "",
        input_tokens=80,
        output_tokens=30,
        tool_calls=(
            ToolCall(id="call_a", name="orders.status", arguments={"id": "A-1"}),
            ToolCall(id="call_b", name="orders.status", arguments={"id": "A-2"}),
        ),
    )
    assert fake_responses.requests[0].body["tools"] == [
        {
            "type": "function",
            "name": "orders_status",
            "description": "Where an order is.",
            "parameters": ORDER_TOOL.parameters,
            "strict": True,
        },
        {
            "type": "function",
            "name": "note",
            "parameters": {"type": "object", "properties": {}},
            "strict": False,
        },
    ]

    follow_up = [
        *question,
        ToolCallMessage(role="assistant", content="Looking.", tool_calls=list(first.tool_calls)),
        ToolResultMessage(
            role="tool", tool_call_id="call_a", name="orders.status", content='{"where": "van"}'
        ),
        ToolResultMessage(
            role="tool",
            tool_call_id="call_b",
            name="orders.status",
            content="ToolTimeout: no answer",
            is_error=True,
        ),
    ]
    second = await _complete(provider, route, messages=follow_up, tools=[ORDER_TOOL])

    assert second.text == "A-1 is on the van; A-2 is at the depot."
    assert second.tool_calls == ()
    body = fake_responses.requests[1].body
    assert body["instructions"] == "You answer questions about orders."
    assert body["input"] == [
        {"type": "message", "role": "user", "content": "Where are A-1 and A-2?"},
        {"type": "message", "role": "assistant", "content": "Looking."},
        {
            "type": "function_call",
            "call_id": "call_a",
            "name": "orders_status",
            "arguments": '{"id":"A-1"}',
        },
        {
            "type": "function_call",
            "call_id": "call_b",
            "name": "orders_status",
            "arguments": '{"id":"A-2"}',
        },
        {"type": "function_call_output", "call_id": "call_a", "output": '{"where": "van"}'},
        {"type": "function_call_output", "call_id": "call_b", "output": "ToolTimeout: no answer"},
    ]


async def test_calls_without_an_id_get_a_stable_one_and_bad_arguments_are_flagged(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.reply(
        ResponseAnswer(
            output=[
                {"type": "function_call", "name": "note", "arguments": "{not json"},
                {"type": "function_call", "name": "note", "arguments": ""},
            ]
        )
    )
    provider = ResponsesProvider(http_client, ENV)
    route = _route(fake_responses.base_url)

    first = await _complete(provider, route, tools=[NOTE_TOOL])
    again = await _complete(provider, route, tools=[NOTE_TOOL])

    assert [c.id for c in first.tool_calls] == [c.id for c in again.tool_calls]
    assert len({c.id for c in first.tool_calls}) == 2
    bad, empty = first.tool_calls
    assert bad.arguments == {} and bad.arguments_error is not None
    assert "not JSON" in bad.arguments_error
    assert empty.arguments == {} and empty.arguments_error is None


async def test_output_text_parts_are_joined_and_other_items_ignored(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.reply(
        ResponseAnswer(
            output=[
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": "Refund, ", "annotations": []},
                        {"type": "output_text", "text": "approved.", "annotations": []},
                    ],
                },
            ]
        )
    )

    completion = await _complete(
        ResponsesProvider(http_client, ENV), _route(fake_responses.base_url)
    )

    assert completion == Completion("Refund, approved.", input_tokens=10, output_tokens=5)


# -- usage and cost ---------------------------------------------------------------------------


async def test_cached_and_reasoning_tokens_are_read_and_cached_input_is_priced_as_such(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.reply(
        ResponseAnswer(
            "fine",
            input_tokens=10_000,
            output_tokens=3_000,
            cached_tokens=8_000,
            reasoning_tokens=2_500,
        )
    )
    prices = {"input_usd_per_mtok": Decimal("2"), "output_usd_per_mtok": Decimal("8")}
    catalog = ModelCatalog(
        routes={
            "cached": _route(
                fake_responses.base_url, cached_input_usd_per_mtok=Decimal("0.5"), **prices
            ),
            "plain": _route(fake_responses.base_url, **prices),
        }
    )
    processor = LlmProcessor(catalog, http_client, ENV)

    completion = await _complete(
        ResponsesProvider(http_client, ENV), catalog.route("cached"), max_tokens=4000
    )
    cached = await processor.run(step_request(StepKind.llm, _ask("cached")))
    plain = await processor.run(step_request(StepKind.llm, _ask("plain")))

    assert completion == Completion(
        "fine",
        input_tokens=10_000,
        output_tokens=3_000,
        cached_input_tokens=8_000,
        reasoning_tokens=2_500,
    )
    # 2000 * $2 + 8000 * $0.50 + 3000 * $8, per million
    assert cached.usage == Usage(
        input_tokens=10_000,
        output_tokens=3_000,
        cost_usd=Decimal("0.032"),
        route="cached",
        provider="openai-responses",
        model="gpt-test",
    )
    # no cached price: every input token at $2
    assert plain.usage is not None and plain.usage.cost_usd == Decimal("0.044")


def test_cost_prices_cached_input_only_when_the_route_has_a_price() -> None:
    route = _route("http://llm/v1", input_usd_per_mtok=Decimal("1.25"))
    priced = _route(
        "http://llm/v1",
        input_usd_per_mtok=Decimal("1.25"),
        cached_input_usd_per_mtok=Decimal("0.125"),
        output_usd_per_mtok=Decimal("10"),
    )

    assert route.cost(1_000_000, 0, cached_input_tokens=900_000) == Decimal("1.25")
    assert priced.cost(1_000_000, 0, cached_input_tokens=900_000) == Decimal("0.2375")
    assert priced.cost(1_000_000, 0) == Decimal("1.25")
    # cached tokens are part of the input tokens: never more of them than that
    assert priced.cost(10, 0, cached_input_tokens=50) == Decimal("0.00000125")


def _ask(route: str) -> dict[str, Any]:
    return {"route": route, "messages": [{"role": "user", "content": "hi"}]}


async def test_missing_usage_is_estimated_so_budgets_still_see_the_call(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.reply(ResponseAnswer("x" * 41, usage=False))

    completion = await _complete(
        ResponsesProvider(http_client, ENV),
        _route(fake_responses.base_url),
        messages=[ChatMessage(role="user", content="y" * 23)],
    )

    assert completion == Completion("x" * 41, input_tokens=6, output_tokens=11)


@pytest.mark.parametrize(
    "usage",
    [
        {"input_tokens": "3", "output_tokens": 1},
        {"input_tokens": 3},
        {"input_tokens": -1, "output_tokens": 1},
        {"input_tokens": True, "output_tokens": 1},
        {"input_tokens": 3, "output_tokens": 1, "input_tokens_details": {"cached_tokens": -2}},
        {"input_tokens": 3, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 4}},
        {"input_tokens": 3, "output_tokens": 1, "output_tokens_details": "lots"},
        "lots",
    ],
)
async def test_unreadable_usage_is_a_malformed_answer(usage: Any) -> None:
    body = {
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
        "usage": usage,
    }
    async with _mock(lambda r: httpx.Response(200, content=orjson.dumps(body))) as client:
        with pytest.raises(ProviderUnavailable, match="usage"):
            await _complete(ResponsesProvider(client, ENV), _route("http://llm/v1"))


# -- every fault classified, through the real client ------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error", "fragment"),
    [
        (
            ResponseAnswer(
                "Refund, appr",
                status="incomplete",
                incomplete_reason="max_output_tokens",
                output_tokens=64,
                reasoning_tokens=60,
            ),
            ProviderRejected,
            "cut off at max_output_tokens after 64 output tokens, 60 of them reasoning",
        ),
        (
            ResponseAnswer(None, status="incomplete", incomplete_reason="content_filter"),
            ProviderRejected,
            "stopped by the content filter",
        ),
        (
            ResponseAnswer(None, status="incomplete"),
            ProviderRejected,
            "the response is incomplete (no reason given)",
        ),
        (
            ResponseAnswer(None, status="failed", error=("server_error", "The model broke")),
            ProviderUnavailable,
            "the response failed (server_error): The model broke",
        ),
        (
            ResponseAnswer(None, status="failed", error=("rate_limit_exceeded", "Too fast")),
            ProviderRateLimited,
            "the response failed (rate_limit_exceeded): Too fast",
        ),
        (
            ResponseAnswer(None, status="failed", error=("invalid_prompt", "Prompt flagged")),
            ProviderRejected,
            "the response failed (invalid_prompt): Prompt flagged",
        ),
        (ResponseAnswer(None, status="failed"), ProviderUnavailable, "failed without saying why"),
        (ResponseAnswer(None, status="in_progress"), ProviderUnavailable, "'in_progress'"),
        (
            ResponseAnswer(None, refusal="I can't help with that"),
            ProviderRejected,
            "the model refused: I can't help with that",
        ),
        (ErrorStatus(500, "boom"), ProviderUnavailable, "HTTP 500: boom"),
        (ErrorStatus(502, body=b"<html>Bad gateway</html>"), ProviderUnavailable, "HTTP 502"),
        (ErrorStatus(503), ProviderUnavailable, "HTTP 503"),
        (ErrorStatus(408), ProviderUnavailable, "HTTP 408"),
        (ErrorStatus(429, "slow down"), ProviderRateLimited, "HTTP 429 (rate limited): slow down"),
        (
            ErrorStatus(429, "You exceeded your current quota", code="insufficient_quota"),
            ProviderRejected,
            "HTTP 429: You exceeded your current quota",
        ),
        (
            ErrorStatus(400, "Unsupported parameter: 'temperature'", code="unsupported_parameter"),
            ProviderRejected,
            "HTTP 400: Unsupported parameter: 'temperature'",
        ),
        (
            ErrorStatus(
                400,
                "Your input exceeds the context window of this model.",
                code="context_length_exceeded",
            ),
            ProviderRejected,
            "HTTP 400: Your input exceeds the context window",
        ),
        (ErrorStatus(401, "Incorrect API key"), ProviderRejected, "HTTP 401: Incorrect API key"),
        (ErrorStatus(404, "model gpt-nope"), ProviderRejected, "HTTP 404: model gpt-nope"),
        (Malformed(b'{"output": ['), ProviderUnavailable, "not JSON"),
        (Malformed(b'{"status": "completed"}'), ProviderUnavailable, "the answer has no output"),
        (Malformed(b"[1, 2]"), ProviderUnavailable, "not a response object"),
        (Malformed(b'{"output": ["hi"]}'), ProviderUnavailable, "output item 0 has no type"),
        (
            Malformed(b'{"output": [{"type": "message", "content": "hi"}]}'),
            ProviderUnavailable,
            "message item 0 has no content",
        ),
        (
            ResponseAnswer(output=[{"type": "function_call", "call_id": "c"}]),
            ProviderUnavailable,
            "function_call item 0 has no name",
        ),
        (Disconnect(), ProviderUnavailable, "RemoteProtocolError"),
        (Disconnect(reset=True), ProviderUnavailable, "model 'gpt-test' at http://127.0.0.1"),
        (Delay(5.0), ProviderTimeout, "no answer within 0.3 s"),
    ],
)
async def test_every_fault_is_classified(
    fake_responses: FakeResponsesServer,
    http_client: httpx.AsyncClient,
    fault: Any,
    error: type[BatonError],
    fragment: str,
) -> None:
    fake_responses.enqueue(fault)
    provider = ResponsesProvider(http_client, ENV)

    with pytest.raises(BatonError) as caught:
        timeout = 0.3 if isinstance(fault, Delay) else 10.0
        await _complete(provider, _route(fake_responses.base_url, timeout_s=timeout))

    assert type(caught.value) is error
    assert caught.value.retryable is (error is not ProviderRejected)
    assert fragment in str(caught.value)
    assert KEY not in str(caught.value)
    # A timed-out request may reach the server a moment after the client gave up on it
    # (a loaded machine schedules the server's thread late): wait for it, with a deadline.
    await _eventually(lambda: fake_responses.call_count == 1)
    # the client is still usable after the fault
    assert (await _complete(provider, _route(fake_responses.base_url))).text == "ok"


async def test_a_bad_request_is_permanent_and_names_the_status(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.enqueue(ErrorStatus(400, "Invalid type for 'input'.", code="invalid_type"))

    with pytest.raises(ProviderRejected) as caught:
        await _complete(ResponsesProvider(http_client, ENV), _route(fake_responses.base_url))

    assert caught.value.status == 400
    assert not caught.value.retryable
    assert str(caught.value) == (
        f"model 'gpt-test' at {fake_responses.base_url}: HTTP 400: Invalid type for 'input'."
    )


async def test_retry_after_is_carried_on_a_429(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.enqueue(ErrorStatus(429, "Rate limit reached", retry_after="7"))

    with pytest.raises(ProviderRateLimited) as caught:
        await _complete(ResponsesProvider(http_client, ENV), _route(fake_responses.base_url))

    assert caught.value.retryable
    assert caught.value.retry_after == 7.0


async def test_an_llm_step_waits_out_a_429_and_retries_a_5xx_then_succeeds(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.enqueue(
        ErrorStatus(429, "Rate limit reached", retry_after="3"),
        ErrorStatus(503, "Service unavailable"),
        ResponseAnswer(status="failed", error=("server_error", "try again")),
    )
    fake_responses.reply('{"category": "refund"}')
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    route = _route(fake_responses.base_url, retries=3)
    processor = LlmProcessor(ModelCatalog(routes={"r": route}), http_client, ENV, sleep=sleep)
    params = {**_ask("r"), "output_schema": SCHEMA}

    outcome = await processor.run(step_request(StepKind.llm, params))

    assert outcome.output == {"category": "refund"}
    assert fake_responses.call_count == 4
    assert len(waits) == 3 and waits[0] == 3.0


async def test_a_permanent_failure_is_not_retried(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    fake_responses.enqueue(
        ResponseAnswer(None, status="incomplete", incomplete_reason="max_output_tokens")
    )
    route = _route(fake_responses.base_url, retries=3)
    processor = LlmProcessor(ModelCatalog(routes={"r": route}), http_client, ENV)

    with pytest.raises(ProviderRejected, match="max_output_tokens"):
        await processor.run(step_request(StepKind.llm, _ask("r")))
    assert fake_responses.call_count == 1


async def test_the_key_never_appears_in_error_messages(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    def echo_headers(status: int) -> Callable[[RecordedRequest], ErrorStatus]:
        def answer(request: RecordedRequest) -> ErrorStatus:
            return ErrorStatus(status, f"bad request, you sent {dict(request.headers)}")

        return answer

    provider = ResponsesProvider(http_client, ENV)
    for status in (400, 401, 429, 500):
        fake_responses.enqueue(echo_headers(status))
        with pytest.raises(BatonError) as caught:
            await _complete(provider, _route(fake_responses.base_url))
        assert KEY not in str(caught.value)
        assert "[redacted]" in str(caught.value)
    fake_responses.enqueue(ResponseAnswer(status="failed", error=("invalid_prompt", f"no {KEY}")))
    with pytest.raises(ProviderRejected) as failed:
        await _complete(provider, _route(fake_responses.base_url))
    assert KEY not in str(failed.value)


async def test_a_missing_key_variable_is_a_configuration_error_without_a_call(
    fake_responses: FakeResponsesServer, http_client: httpx.AsyncClient
) -> None:
    provider = ResponsesProvider(http_client, {"OTHER": "x"})

    with pytest.raises(ConfigurationError, match="the API key variable OPENAI_TEST_KEY"):
        await _complete(provider, _route(fake_responses.base_url))
    assert fake_responses.call_count == 0


def _mock(response: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(response))


async def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the server never saw the request"
        await asyncio.sleep(0.01)
