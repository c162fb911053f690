"""Tool calling in one neutral shape, translated to each provider's wire format and back.

Requests go through the real httpx client to the loopback fakes; the bodies they record are
compared with the wire formats as the OpenAI and Anthropic APIs document them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from processors import (
    ChatMessage,
    Completion,
    OpenAIProvider,
    ProviderRejected,
    ProviderUnavailable,
    RouteSpec,
    ScriptedProvider,
    ScriptRule,
)
from processors._anthropic import AnthropicProvider
from processors._provider import (
    Message,
    ToolCall,
    ToolCallMessage,
    ToolDefinition,
    ToolResultMessage,
    call_id,
)
from tests.fakes import FakeOpenAIServer, Malformed
from tests.fakes.anthropic_server import FakeAnthropicServer, MessageAnswer, ToolUse

ENV = {"TOOLS_TEST_KEY": "sk-tools-3f9a"}
ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "integer"}},
}
TOOLS = [
    ToolDefinition(
        name="lookup_order", description="Find an order by id.", parameters=ORDER_SCHEMA
    ),
    ToolDefinition(name="return_policy"),
]
QUESTION: list[Message] = [
    ChatMessage(role="system", content="You help with orders."),
    ChatMessage(role="user", content="Where is order 7, and can I return it?"),
]
CONVERSATION: list[Message] = [
    *QUESTION,
    ToolCallMessage(
        role="assistant",
        content="Let me look.",
        tool_calls=[
            ToolCall(id="call_1", name="lookup_order", arguments={"order_id": 7}),
            ToolCall(id="call_2", name="return_policy", arguments={}),
        ],
    ),
    ToolResultMessage(
        role="tool", tool_call_id="call_1", name="lookup_order", content='{"status": "shipped"}'
    ),
    ToolResultMessage(
        role="tool",
        tool_call_id="call_2",
        name="return_policy",
        content="the policy service is down",
        is_error=True,
    ),
]


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _route(provider: str, base_url: str) -> RouteSpec:
    return RouteSpec(
        provider=provider,
        model="m-test",
        base_url=base_url,
        api_key_env="TOOLS_TEST_KEY",
        timeout_s=5.0,
    )


async def _ask(
    provider: OpenAIProvider | AnthropicProvider | ScriptedProvider,
    route: RouteSpec,
    messages: list[Message],
    tools: list[ToolDefinition] | None = TOOLS,
    key: str = "run-1/agent/turn-1",
) -> Completion:
    return await provider.complete(
        route,
        messages,
        temperature=0.0,
        max_tokens=None,
        output_schema=None,
        idempotency_key=key,
        tools=tools,
    )


def _openai_tool_calls(calls: list[Any], content: str | None = None) -> Malformed:
    """A chat completion asking for tool calls, exactly as OpenAI sends it.

    The fake's ``ChatAnswer`` has no tool calls; ``Malformed`` sends any body as it is.
    """
    message = {"role": "assistant", "content": content, "tool_calls": calls, "refusal": None}
    body = {
        "id": "chatcmpl-tools",
        "object": "chat.completion",
        "model": "m-test",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 80, "completion_tokens": 12, "total_tokens": 92},
    }
    return Malformed(orjson.dumps(body))


def _function_call(ident: str | None, name: str, arguments: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": name}}
    if ident is not None:
        call["id"] = ident
    if arguments is not ...:
        call["function"]["arguments"] = arguments
    return call


# -- OpenAI -----------------------------------------------------------------------------------


async def test_openai_requests_carry_tools_and_follow_ups_in_its_wire_format(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply("Order 7 has shipped; I could not check the return policy.")

    completion = await _ask(
        OpenAIProvider(http_client, ENV), _route("openai", fake_openai.base_url), CONVERSATION
    )

    assert completion.text == "Order 7 has shipped; I could not check the return policy."
    assert completion.tool_calls == ()
    body = fake_openai.requests[0].body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "Find an order by id.",
                "parameters": ORDER_SCHEMA,
            },
        },
        {
            "type": "function",
            "function": {
                "name": "return_policy",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]
    assert body["messages"] == [
        {"role": "system", "content": "You help with orders."},
        {"role": "user", "content": "Where is order 7, and can I return it?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_id":7}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "return_policy", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
        {"role": "tool", "tool_call_id": "call_2", "content": "the policy service is down"},
    ]


async def test_openai_without_tools_sends_no_tools_key(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    await _ask(
        OpenAIProvider(http_client, ENV), _route("openai", fake_openai.base_url), QUESTION, None
    )
    assert "tools" not in fake_openai.requests[0].body


async def test_openai_tool_calls_come_back_neutral(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(
        _openai_tool_calls(
            [
                _function_call("call_a", "lookup_order", '{"order_id": 7}'),
                _function_call("call_b", "return_policy", "{}"),
            ]
        )
    )

    completion = await _ask(
        OpenAIProvider(http_client, ENV), _route("openai", fake_openai.base_url), QUESTION
    )

    assert completion == Completion(
        "",
        input_tokens=80,
        output_tokens=12,
        tool_calls=(
            ToolCall(id="call_a", name="lookup_order", arguments={"order_id": 7}),
            ToolCall(id="call_b", name="return_policy", arguments={}),
        ),
    )


@pytest.mark.parametrize(
    ("arguments", "expected", "error"),
    [
        ('{"order_id": 7', {}, "the arguments are not JSON"),
        ("[7]", {}, "the arguments are not a JSON object"),
        ('"7"', {}, "the arguments are not a JSON object"),
        (7, {}, "the arguments are not JSON text"),
        ("", {}, None),
        (..., {}, None),
        ({"order_id": 7}, {"order_id": 7}, None),  # a few local servers send the object
    ],
)
async def test_openai_arguments_that_cannot_be_read_are_reported_not_raised(
    fake_openai: FakeOpenAIServer,
    http_client: httpx.AsyncClient,
    arguments: Any,
    expected: dict[str, Any],
    error: str | None,
) -> None:
    fake_openai.reply(_openai_tool_calls([_function_call("c1", "lookup_order", arguments)]))

    completion = await _ask(
        OpenAIProvider(http_client, ENV), _route("openai", fake_openai.base_url), QUESTION
    )

    (call,) = completion.tool_calls
    assert call.arguments == expected
    if error is None:
        assert call.arguments_error is None
    else:
        assert call.arguments_error is not None and call.arguments_error.startswith(error)


async def test_openai_text_beside_tool_calls_is_kept_and_missing_ids_are_made_stably(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(
        _openai_tool_calls(
            [_function_call(None, "lookup_order", '{"order_id": 7}')], content="Checking."
        )
    )
    provider = OpenAIProvider(http_client, ENV)
    route = _route("openai", fake_openai.base_url)

    first = await _ask(provider, route, QUESTION)
    again = await _ask(provider, route, QUESTION)
    other_step = await _ask(provider, route, QUESTION, key="run-2/agent/turn-1")

    assert first.text == "Checking."
    assert first.tool_calls[0].id == call_id("run-1/agent/turn-1", 2, 0)
    assert again.tool_calls == first.tool_calls
    assert other_step.tool_calls[0].id != first.tool_calls[0].id


@pytest.mark.parametrize(
    ("calls", "fragment"),
    [
        ([{"id": "c1", "type": "function", "function": {"arguments": "{}"}}], "no function name"),
        (["c1"], "no function name"),
        ({"id": "c1"}, "tool_calls is not a list"),
    ],
)
async def test_openai_tool_calls_without_a_shape_are_malformed_answers(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient, calls: Any, fragment: str
) -> None:
    fake_openai.reply(_openai_tool_calls(calls))

    with pytest.raises(ProviderUnavailable, match=fragment):
        await _ask(
            OpenAIProvider(http_client, ENV), _route("openai", fake_openai.base_url), QUESTION
        )


# -- Anthropic --------------------------------------------------------------------------------


async def test_anthropic_requests_carry_tools_and_follow_ups_in_its_wire_format(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.reply("Order 7 has shipped.")
    messages: list[Message] = [
        *CONVERSATION,
        ChatMessage(role="user", content="Answer in one line."),
    ]

    completion = await _ask(
        AnthropicProvider(http_client, ENV),
        _route("anthropic", fake_anthropic.base_url),
        messages,
    )

    assert completion.text == "Order 7 has shipped."
    body = fake_anthropic.requests[0].body
    assert body["tools"] == [
        {
            "name": "lookup_order",
            "description": "Find an order by id.",
            "input_schema": ORDER_SCHEMA,
        },
        {"name": "return_policy", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["system"] == "You help with orders."
    assert body["messages"] == [
        {"role": "user", "content": "Where is order 7, and can I return it?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "lookup_order",
                    "input": {"order_id": 7},
                },
                {"type": "tool_use", "id": "call_2", "name": "return_policy", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "call_1",
                    "content": '{"status": "shipped"}',
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": "the policy service is down",
                    "is_error": True,
                },
                {"type": "text", "text": "Answer in one line."},
            ],
        },
    ]


async def test_anthropic_an_assistant_turn_without_text_is_only_tool_use_blocks(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    messages: list[Message] = [
        *QUESTION,
        ToolCallMessage(
            role="assistant", tool_calls=[ToolCall(id="t1", name="return_policy", arguments={})]
        ),
        ToolResultMessage(role="tool", tool_call_id="t1", name="return_policy", content="30 days"),
    ]

    await _ask(
        AnthropicProvider(http_client, ENV), _route("anthropic", fake_anthropic.base_url), messages
    )

    assert fake_anthropic.requests[0].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "return_policy", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "30 days"}],
        },
    ]


async def test_anthropic_tool_use_blocks_come_back_neutral(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.reply(
        MessageAnswer(
            "I'll check both.",
            tool_uses=(
                ToolUse("lookup_order", {"order_id": 7}, id="toolu_01"),
                ToolUse("return_policy", {}, id="toolu_02"),
            ),
            input_tokens=90,
            output_tokens=40,
        )
    )

    completion = await _ask(
        AnthropicProvider(http_client, ENV), _route("anthropic", fake_anthropic.base_url), QUESTION
    )

    assert completion == Completion(
        "I'll check both.",
        input_tokens=90,
        output_tokens=40,
        tool_calls=(
            ToolCall(id="toolu_01", name="lookup_order", arguments={"order_id": 7}),
            ToolCall(id="toolu_02", name="return_policy", arguments={}),
        ),
    )


@pytest.mark.parametrize(
    ("given", "expected", "error"),
    [
        ([7], {}, "the arguments are not a JSON object"),
        ("not json", {}, "the arguments are not JSON"),
        ('{"order_id": 7}', {"order_id": 7}, None),
        (None, {}, None),
    ],
)
async def test_anthropic_input_that_is_not_an_object_is_reported_not_raised(
    fake_anthropic: FakeAnthropicServer,
    http_client: httpx.AsyncClient,
    given: Any,
    expected: dict[str, Any],
    error: str | None,
) -> None:
    fake_anthropic.reply(MessageAnswer(None, tool_uses=(ToolUse("lookup_order", given),)))

    completion = await _ask(
        AnthropicProvider(http_client, ENV), _route("anthropic", fake_anthropic.base_url), QUESTION
    )

    (call,) = completion.tool_calls
    assert completion.text == ""
    assert call.arguments == expected
    if error is None:
        assert call.arguments_error is None
    else:
        assert call.arguments_error is not None and call.arguments_error.startswith(error)


# -- the same conversation, both providers ----------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_call_id_goes_out_and_comes_back_unchanged(
    fake_openai: FakeOpenAIServer,
    fake_anthropic: FakeAnthropicServer,
    http_client: httpx.AsyncClient,
    provider: str,
) -> None:
    fake_openai.reply(
        _openai_tool_calls([_function_call("id-9", "lookup_order", '{"order_id":9}')])
    )
    fake_anthropic.reply(
        MessageAnswer(None, tool_uses=(ToolUse("lookup_order", {"order_id": 9}, "id-9"),))
    )
    client: OpenAIProvider | AnthropicProvider
    if provider == "openai":
        client, base_url = OpenAIProvider(http_client, ENV), fake_openai.base_url
    else:
        client, base_url = AnthropicProvider(http_client, ENV), fake_anthropic.base_url
    route = _route(provider, base_url)

    first = await _ask(client, route, QUESTION)
    (call,) = first.tool_calls
    follow_up: list[Message] = [
        *QUESTION,
        ToolCallMessage(role="assistant", tool_calls=list(first.tool_calls)),
        ToolResultMessage(role="tool", tool_call_id=call.id, name=call.name, content='"late"'),
    ]
    await _ask(client, route, follow_up)

    assert call == ToolCall(id="id-9", name="lookup_order", arguments={"order_id": 9})
    sent = json.dumps((fake_openai.requests or fake_anthropic.requests)[-1].body)
    assert sent.count('"id-9"') == 2  # the assistant's call, and the result naming it


# -- scripted ---------------------------------------------------------------------------------

AGENT = RouteSpec(
    provider="scripted",
    model="demo-agent",
    script=[
        ScriptRule(
            match=r'"status"',
            reply="Order {{ tool_results[0].output.order_id }} has {{ "
            "tool_results[0].output.status }}; returns: {{ tool_results[1].content }}.",
        ),
        ScriptRule(
            match=r"(?i)order (\d+)",
            reply={
                "tool_calls": [
                    {"name": "lookup_order", "arguments": {"order_id": "{{ match[1] | int }}"}},
                    {"name": "return_policy"},
                ]
            },
        ),
    ],
)


async def test_a_scripted_agent_calls_two_tools_then_answers_from_their_results() -> None:
    provider = ScriptedProvider()

    turn_1 = await _ask(provider, AGENT, QUESTION)

    first, second = turn_1.tool_calls
    assert turn_1.text == ""
    assert (first.name, first.arguments) == ("lookup_order", {"order_id": 7})
    assert (second.name, second.arguments) == ("return_policy", {})
    assert first.id == call_id("run-1/agent/turn-1", 2, 0)
    assert second.id == call_id("run-1/agent/turn-1", 2, 1)
    assert turn_1.output_tokens > 0
    assert await _ask(provider, AGENT, QUESTION) == turn_1  # the same every time

    conversation: list[Message] = [
        *QUESTION,
        ToolCallMessage(role="assistant", tool_calls=list(turn_1.tool_calls)),
        ToolResultMessage(
            role="tool",
            tool_call_id=first.id,
            name="lookup_order",
            content='{"order_id": 7, "status": "shipped"}',
        ),
        ToolResultMessage(
            role="tool", tool_call_id=second.id, name="return_policy", content="30 days"
        ),
    ]
    turn_2 = await _ask(provider, AGENT, conversation, key="run-1/agent/turn-2")

    assert turn_2.tool_calls == ()
    assert turn_2.text == "Order 7 has shipped; returns: 30 days."


async def test_a_scripted_tool_call_reply_needs_tools_on_offer() -> None:
    with pytest.raises(ProviderRejected, match="asks for tool calls, but the call offers no tools"):
        await _ask(ScriptedProvider(), AGENT, QUESTION, tools=None)


async def test_scripted_rules_match_tool_results_only_when_they_end_the_conversation() -> None:
    route = RouteSpec(
        provider="scripted",
        model="m",
        script=[ScriptRule(match="shipped", reply="from the tool"), ScriptRule(reply="other")],
    )
    answered = [*CONVERSATION[:3], CONVERSATION[3]]
    asked_again: list[Message] = [*answered, ChatMessage(role="user", content="thanks")]

    assert (await _ask(ScriptedProvider(), route, answered)).text == "from the tool"
    assert (await _ask(ScriptedProvider(), route, asked_again)).text == "other"


@pytest.mark.parametrize(
    ("reply", "fragment"),
    [
        ({"tool_calls": [], "x": 1}, "a reply with `tool_calls` has no other keys"),
        ({"tool_calls": []}, "must be a non-empty list"),
        ({"tool_calls": [{"name": "a b"}]}, "tool_calls.0.name"),
        ({"tool_calls": [{"name": "a", "arguments": [1]}]}, "tool_calls.0.arguments"),
        ({"tool_calls": [{"name": "a", "args": {}}]}, "`name` and `arguments` only"),
    ],
)
def test_a_bad_tool_call_reply_is_refused_when_the_catalog_loads(
    reply: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        ScriptRule(reply=reply)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_registry_names_with_dots_are_sent_as_the_apis_allow_and_mapped_back(
    fake_openai: FakeOpenAIServer,
    fake_anthropic: FakeAnthropicServer,
    http_client: httpx.AsyncClient,
    provider: str,
) -> None:
    tools = [ToolDefinition(name="payments.refund"), ToolDefinition(name="payments_refund")]
    past: list[Message] = [
        *QUESTION,
        ToolCallMessage(
            role="assistant", tool_calls=[ToolCall(id="c0", name="payments.refund", arguments={})]
        ),
        ToolResultMessage(role="tool", tool_call_id="c0", name="payments.refund", content="{}"),
    ]
    fake_openai.reply(_openai_tool_calls([_function_call("c1", "payments_refund_2", "{}")]))
    fake_anthropic.reply(MessageAnswer(None, tool_uses=(ToolUse("payments_refund_2", {}, "c1"),)))
    client: OpenAIProvider | AnthropicProvider
    if provider == "openai":
        client, server = OpenAIProvider(http_client, ENV), fake_openai
    else:
        client, server = AnthropicProvider(http_client, ENV), fake_anthropic
    completion = await _ask(client, _route(provider, server.base_url), past, tools)

    body = server.requests[0].body
    if provider == "openai":
        sent_tools = [t["function"]["name"] for t in body["tools"]]
        sent_call = body["messages"][2]["tool_calls"][0]["function"]["name"]
    else:
        sent_tools = [t["name"] for t in body["tools"]]
        sent_call = body["messages"][1]["content"][0]["name"]
    assert sent_tools == ["payments_refund_2", "payments_refund"]
    assert sent_call == "payments_refund_2"
    assert completion.tool_calls[0].name == "payments.refund"
