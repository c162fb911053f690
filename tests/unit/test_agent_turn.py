"""The agent processor: one model turn, a final answer or tool calls handed back, never made.

Turns go through the real httpx client to the loopback OpenAI and Anthropic fakes, and to the
scripted provider; between turns the test plays the coordinator: it appends the assistant
message the turn returned and one tool result per call, and sends the next turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from processors import (
    Breakers,
    CircuitOpen,
    InvalidParams,
    LlmProcessor,
    ModelCatalog,
    OutputSchemaViolation,
    ProviderUnavailable,
    RouteSpec,
    ScriptRule,
    UnknownRoute,
    execute,
)
from processors._agent import AgentParams, AgentProcessor
from tests.fakes import ChatAnswer, ErrorStatus, FakeOpenAIServer, Malformed
from tests.fakes.anthropic_server import FakeAnthropicServer, MessageAnswer, ToolUse
from tests.fakes.steps import DISPATCHED_AT, step_request
from topics import ConfigurationError, StepKind, StepRequested, StepStatus, Usage

KEY = "sk-agent-test-77c1"
ENV = {"AGENT_KEY": KEY}
ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order_id"],
    "properties": {"order_id": {"type": "integer"}},
    "additionalProperties": False,
}
TOOLS: list[dict[str, Any]] = [
    {"name": "lookup_order", "description": "Find an order by id.", "parameters": ORDER_SCHEMA},
    {
        "name": "return_policy",
        "description": "The return policy.",
        "parameters": {"type": "object", "properties": {}},
    },
]
QUESTION: list[dict[str, Any]] = [
    {"role": "system", "content": "You help with orders."},
    {"role": "user", "content": "Where is order 7, and can I return it?"},
]
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status", "returnable"],
    "properties": {"status": {"type": "string"}, "returnable": {"type": "boolean"}},
}


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def _no_sleep(seconds: float) -> None:
    pass


def _catalog(
    openai_url: str = "http://127.0.0.1:9", anthropic_url: str = "http://127.0.0.1:9"
) -> ModelCatalog:
    http: dict[str, Any] = {
        "api_key_env": "AGENT_KEY",
        "input_usd_per_mtok": Decimal("2.50"),
        "output_usd_per_mtok": Decimal("10"),
        "timeout_s": 5.0,
    }
    scripted = RouteSpec(
        provider="scripted",
        model="demo-agent",
        script=[
            ScriptRule(
                match='"status"',
                reply={
                    "status": "{{ tool_results[0].output.status }}",
                    "returnable": "{{ tool_results[1].output.days > 0 }}",
                },
            ),
            ScriptRule(
                match=r"(?i)order (\d+)",
                reply={
                    "tool_calls": [
                        {"name": "lookup_order", "arguments": {"order_id": "{{ match[1] | int }}"}},
                        {"name": "return_policy", "arguments": {}},
                    ]
                },
            ),
        ],
    )
    return ModelCatalog(
        routes={
            "gpt": RouteSpec(provider="openai", model="gpt-test", base_url=openai_url, **http),
            "claude": RouteSpec(
                provider="anthropic", model="claude-test", base_url=anthropic_url, **http
            ),
            "demo": scripted,
        }
    )


def _turn(
    route: str,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    turn: int = 1,
    **more: Any,
) -> StepRequested:
    params: dict[str, Any] = {
        "route": route,
        "messages": messages,
        "tools": TOOLS if tools is None else tools,
        "temperature": 0.0,
        "max_tokens": None,
        "output_schema": None,
    }
    params.update(more)
    return step_request(
        StepKind.agent, params, step="agent", idempotency_key=f"run-1/agent/turn-{turn}"
    )


def _processor(catalog: ModelCatalog, client: httpx.AsyncClient, **more: Any) -> AgentProcessor:
    return AgentProcessor(catalog, client, ENV, sleep=_no_sleep, **more)


def _openai_tool_calls(calls: list[tuple[str, str, str]], content: str | None = None) -> Malformed:
    """A chat completion asking for tool calls, as OpenAI sends it (see test_tool_calling)."""
    message = {
        "role": "assistant",
        "content": content,
        "tool_calls": [
            {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}
            for ident, name, arguments in calls
        ],
    }
    body = {
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 200, "completion_tokens": 30},
    }
    return Malformed(orjson.dumps(body))


def _output(value: object) -> dict[str, Any]:
    assert isinstance(value, dict)
    return value


def _results(output: dict[str, Any], contents: list[str]) -> list[dict[str, Any]]:
    """What the coordinator appends after a tool_calls turn: the assistant, then each result."""
    results = [
        {"role": "tool", "tool_call_id": call["id"], "name": call["name"], "content": content}
        for call, content in zip(output["calls"], contents, strict=True)
    ]
    return [output["assistant"], *results]


# -- final answers ----------------------------------------------------------------------------


async def test_a_final_answer_is_the_text_with_usage_and_exact_cost(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ChatAnswer("Order 7 has shipped.", prompt_tokens=1000, completion_tokens=20))
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    outcome = await processor.run(_turn("gpt", QUESTION))

    assert outcome.output == {"type": "final", "content": "Order 7 has shipped."}
    assert outcome.usage == Usage(
        input_tokens=1000,
        output_tokens=20,
        cost_usd=Decimal("0.0027"),
        route="gpt",
        provider="openai",
        model="gpt-test",
    )
    body = fake_openai.requests[0].body
    assert [t["function"]["name"] for t in body["tools"]] == ["lookup_order", "return_policy"]
    assert body["messages"] == QUESTION


async def test_a_final_answer_with_an_output_schema_is_the_checked_json(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.reply('```json\n{"status": "shipped", "returnable": true}\n```')
    processor = _processor(_catalog(anthropic_url=fake_anthropic.base_url), http_client)

    outcome = await processor.run(_turn("claude", QUESTION, output_schema=ANSWER_SCHEMA))

    assert outcome.output == {"type": "final", "content": {"status": "shipped", "returnable": True}}
    body = fake_anthropic.requests[0].body
    assert "JSON Schema" in body["system"]
    assert body["system"].startswith("You help with orders.\n\n")


async def test_a_final_answer_breaking_the_schema_fails_and_keeps_its_usage(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.reply(MessageAnswer('{"status": "shipped"}', input_tokens=100, output_tokens=10))
    processor = _processor(_catalog(anthropic_url=fake_anthropic.base_url), http_client)

    with pytest.raises(OutputSchemaViolation, match="output: 'returnable' is a required") as caught:
        await processor.run(_turn("claude", QUESTION, output_schema=ANSWER_SCHEMA))

    assert fake_anthropic.call_count == 1
    assert caught.value.usage is not None
    assert caught.value.usage.cost_usd == Decimal("0.00035")


# -- tool calls -------------------------------------------------------------------------------


async def test_tool_calls_come_back_with_the_assistant_message_and_are_not_made(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(
        _openai_tool_calls(
            [("call_1", "lookup_order", '{"order_id": 7}'), ("call_2", "return_policy", "{}")],
            content="Let me check.",
        )
    )
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    outcome = await processor.run(_turn("gpt", QUESTION, output_schema=ANSWER_SCHEMA))

    assert outcome.output == {
        "type": "tool_calls",
        "assistant": {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "call_1", "name": "lookup_order", "arguments": {"order_id": 7}},
                {"id": "call_2", "name": "return_policy", "arguments": {}},
            ],
        },
        "calls": [
            {
                "id": "call_1",
                "name": "lookup_order",
                "arguments": {"order_id": 7},
                "arguments_error": None,
            },
            {"id": "call_2", "name": "return_policy", "arguments": {}, "arguments_error": None},
        ],
    }
    assert outcome.usage is not None and outcome.usage.output_tokens == 30
    assert fake_openai.call_count == 1  # one model call; no tool was called


async def test_calls_that_cannot_be_made_as_asked_carry_why_and_the_step_succeeds(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(
        _openai_tool_calls(
            [
                ("c1", "lookup_order", '{"order_id": 7'),
                ("c2", "lookup_order", '{"order_id": "seven"}'),
                ("c3", "delete_everything", "{}"),
                ("c4", "lookup_order", '{"order_id": 8}'),
            ]
        )
    )
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    result = await execute(
        processor, _turn("gpt", QUESTION), worker="w1", now=lambda: DISPATCHED_AT
    )

    assert result.status is StepStatus.ok
    calls = _output(result.output)["calls"]
    errors = [c["arguments_error"] for c in calls]
    assert errors[0] is not None and errors[0].startswith("the arguments are not JSON")
    assert errors[1] == (
        "the arguments do not match the tool's parameters: "
        "arguments.order_id: 'seven' is not of type 'integer'"
    )
    assert (
        errors[2] == "there is no tool 'delete_everything' (the tools: lookup_order, return_policy)"
    )
    assert errors[3] is None
    assert [c["arguments"] for c in calls] == [
        {},
        {"order_id": "seven"},
        {},
        {"order_id": 8},
    ]


async def test_an_anthropic_agent_loop_feeds_the_assistant_message_back_as_it_came(
    fake_anthropic: FakeAnthropicServer, http_client: httpx.AsyncClient
) -> None:
    fake_anthropic.enqueue(
        MessageAnswer(
            None,
            tool_uses=(
                ToolUse("lookup_order", {"order_id": 7}, id="toolu_1"),
                ToolUse("return_policy", {}, id="toolu_2"),
            ),
        ),
        MessageAnswer('{"status": "shipped", "returnable": true}'),
    )
    processor = _processor(_catalog(anthropic_url=fake_anthropic.base_url), http_client)

    first = _output(
        (await processor.run(_turn("claude", QUESTION, output_schema=ANSWER_SCHEMA))).output
    )
    assert first["type"] == "tool_calls"
    assert first["assistant"]["content"] is None
    messages = [*QUESTION, *_results(first, ['{"status": "shipped"}', '{"days": 30}'])]
    second = await processor.run(_turn("claude", messages, output_schema=ANSWER_SCHEMA, turn=2))

    assert second.output == {"type": "final", "content": {"status": "shipped", "returnable": True}}
    assert fake_anthropic.requests[1].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "lookup_order",
                    "input": {"order_id": 7},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "return_policy", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": '{"status": "shipped"}',
                },
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": '{"days": 30}'},
            ],
        },
    ]


async def test_an_openai_agent_loop_sends_the_results_as_tool_messages(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(_openai_tool_calls([("call_9", "lookup_order", '{"order_id": 7}')]))
    fake_openai.reply("It has shipped.")
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    first = _output((await processor.run(_turn("gpt", QUESTION))).output)
    second = await processor.run(
        _turn("gpt", [*QUESTION, *_results(first, ['{"status": "shipped"}'])], turn=2)
    )

    assert second.output == {"type": "final", "content": "It has shipped."}
    assert fake_openai.requests[1].body["messages"][2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_9",
                    "type": "function",
                    "function": {"name": "lookup_order", "arguments": '{"order_id":7}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_9", "content": '{"status": "shipped"}'},
    ]


async def test_a_scripted_agent_runs_two_tools_then_answers(http_client: httpx.AsyncClient) -> None:
    processor = _processor(_catalog(), http_client)

    first = await processor.run(_turn("demo", QUESTION, output_schema=ANSWER_SCHEMA))
    calls = _output(first.output)["calls"]
    assert [(c["name"], c["arguments"], c["arguments_error"]) for c in calls] == [
        ("lookup_order", {"order_id": 7}, None),
        ("return_policy", {}, None),
    ]
    again = await processor.run(_turn("demo", QUESTION, output_schema=ANSWER_SCHEMA))
    assert again == first  # ids and all: a retried turn names its calls as before

    results = ['{"status": "shipped"}', '{"days": 30}']
    messages = [*QUESTION, *_results(_output(first.output), results)]
    second = await processor.run(_turn("demo", messages, output_schema=ANSWER_SCHEMA, turn=2))

    assert second.output == {"type": "final", "content": {"status": "shipped", "returnable": True}}
    assert second.usage is not None and second.usage.provider == "scripted"


async def test_a_turn_without_tools_offers_none(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    outcome = await processor.run(_turn("gpt", QUESTION, tools=[]))

    assert outcome.output == {"type": "final", "content": "ok"}
    assert "tools" not in fake_openai.requests[0].body


# -- the shared machinery ---------------------------------------------------------------------


async def test_retryable_errors_are_retried_in_process(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(ErrorStatus(503), ErrorStatus(429, retry_after="0"))
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    outcome = await processor.run(_turn("gpt", QUESTION))

    assert outcome.output == {"type": "final", "content": "ok"}
    assert fake_openai.call_count == 3


async def test_the_llm_and_agent_processors_can_share_one_set_of_breakers(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ErrorStatus(503))
    breakers = Breakers()
    catalog = _catalog(fake_openai.base_url)
    agent = _processor(catalog, http_client, breakers=breakers)
    llm = LlmProcessor(catalog, http_client, ENV, sleep=_no_sleep, breakers=breakers)

    with pytest.raises(ProviderUnavailable):
        await agent.run(_turn("gpt", QUESTION))  # three failures
    with pytest.raises(CircuitOpen):  # two more failures open it; the third try is refused
        await llm.run(step_request(StepKind.llm, {"route": "gpt", "messages": QUESTION[1:]}))

    assert fake_openai.call_count == 5
    assert agent.breakers is llm.breakers
    assert breakers.is_open(f"openai:{fake_openai.base_url}")


# -- requests that cannot be served -----------------------------------------------------------


async def test_an_unknown_route_or_a_bad_schema_makes_no_call(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    processor = _processor(_catalog(fake_openai.base_url), http_client)
    bad_tool = {"name": "t", "parameters": {"type": "objekt"}}

    with pytest.raises(UnknownRoute):
        await processor.run(_turn("nope", QUESTION))
    with pytest.raises(ConfigurationError, match=r"not a valid JSON Schema: schema.type"):
        await processor.run(_turn("gpt", QUESTION, output_schema={"type": "objekt"}))
    with pytest.raises(ConfigurationError, match=r"tool 't': parameters: not a valid JSON Schema"):
        await processor.run(_turn("gpt", QUESTION, tools=[bad_tool]))
    assert fake_openai.call_count == 0


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"messages": []}, "messages: List should have at least 1 item"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.chat.role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.tool_result.tool_call_id"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": []}]},
            "messages.0.tool_calls.tool_calls: List should have at least 1 item",
        ),
        ({"tools": [{"name": "has space"}]}, "tools.0.name: String should match pattern"),
        ({"tools": [{"name": "a"}, {"name": "a"}]}, "tool names must be unique: a"),
        ({"temperature": 3}, "temperature"),
    ],
)
async def test_params_of_the_wrong_shape_are_refused(
    http_client: httpx.AsyncClient, change: dict[str, Any], fragment: str
) -> None:
    request = _turn("demo", QUESTION)
    assert isinstance(request.params, dict)
    params = {**request.params, **change}

    with pytest.raises(InvalidParams, match="agent params: ") as caught:
        await _processor(_catalog(), http_client).run(step_request(StepKind.agent, params))
    assert fragment in str(caught.value)


def test_a_whole_conversation_parses_into_the_neutral_shapes() -> None:
    params = AgentParams.model_validate(
        {
            "route": "demo",
            "messages": [
                *QUESTION,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "name": "lookup_order", "arguments": {"order_id": 7}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "name": "lookup_order", "content": "{}"},
                {"role": "assistant", "content": "Shipped."},
            ],
        }
    )

    kinds = [type(m).__name__ for m in params.messages]
    assert kinds == [
        "ChatMessage",
        "ChatMessage",
        "ToolCallMessage",
        "ToolResultMessage",
        "ChatMessage",
    ]
    assert params.tools == []
