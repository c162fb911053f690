"""Fuzzing the doors where outside JSON comes in: model answers, tool and search answers.

The async tests run on pytest-asyncio's loop (it drives hypothesis' examples too): an
``asyncio.run`` per example would replace, and so leak, the loop it leaves current.

Whatever the far side sends (random bytes, random JSON, JSON nested thousands deep, a body
over the size limit, deep JSON inside an otherwise valid answer), the decoders either give a
value or raise one of baton's errors: never a RecursionError, never anything else. Deep
answers fail with ``JsonLimitExceeded`` (or, for a structured answer, an
``OutputSchemaViolation`` naming the limit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors import (
    AnthropicProvider,
    ChatMessage,
    OpenAIProvider,
    OutputSchemaViolation,
    RetrieveProcessor,
    RouteSpec,
    ToolDefinition,
    ToolProcessor,
    ToolRegistry,
    ToolsConfig,
)
from processors._llm import structured_answer
from processors._provider import MAX_ANSWER_BYTES, parse_arguments
from tests.fakes.steps import step_request
from topics import MAX_JSON_BYTES, MAX_JSON_DEPTH, BatonError, JsonLimitExceeded, StepKind, Usage

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what JSON integers carry
    | st.floats()
    | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=40,
)


def _deep(depth: int, shape: str) -> bytes:
    if shape == "list":
        return b"[" * depth + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'[{"a":' * (depth // 2) + b"null" + b"}]" * (depth // 2)


DEEP_TEXTS = st.builds(
    _deep, st.integers(MAX_JSON_DEPTH - 3, 3000), st.sampled_from(["list", "object", "mixed"])
)
LARGE_TEXT = b'"' + b"x" * MAX_JSON_BYTES + b'"'


def _large() -> bytes:
    return LARGE_TEXT  # built by a function, so a failure report does not print a megabyte


VALUES_AS_TEXT = JSON_VALUES.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS))
# What goes inside an otherwise well-formed answer: any value, or one nested past the limit.
INNER = st.one_of(VALUES_AS_TEXT, DEEP_TEXTS)


def _openai_body(content: bytes, arguments: bytes, usage: bytes) -> bytes:
    call = b'{"id":"c1","function":{"name":"lookup","arguments":' + orjson.dumps(
        arguments.decode("utf-8", errors="replace")
    )
    message = b'{"role":"assistant","content":' + content + b',"tool_calls":[' + call + b"}}]}"
    return b'{"choices":[{"message":' + message + b'}],"usage":' + usage + b"}"


def _anthropic_body(text: bytes, tool_input: bytes) -> bytes:
    return (
        b'{"content":[{"type":"text","text":' + text + b'},{"type":"tool_use","id":"t1",'
        b'"name":"lookup","input":' + tool_input + b'}],"stop_reason":"end_turn",'
        b'"usage":{"input_tokens":3,"output_tokens":4}}'
    )


BODIES = st.one_of(
    st.binary(max_size=200),
    VALUES_AS_TEXT,
    DEEP_TEXTS,
    st.builds(_large),
    st.builds(_openai_body, INNER, INNER, INNER),
    st.builds(_anthropic_body, INNER, INNER),
)


def _serve(body: bytes) -> httpx.AsyncClient:
    answer = httpx.Response(200, content=body)
    return httpx.AsyncClient(transport=httpx.MockTransport(lambda request: answer))


async def _only_baton_errors(call: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await call()
    except BatonError as exc:
        return exc


ENV = {"KEY": "k-1"}
MESSAGES = [ChatMessage(role="user", content="hello")]
TOOLS = [ToolDefinition(name="lookup", description="Look up.", parameters={"type": "object"})]


def _route(provider: str) -> RouteSpec:
    return RouteSpec(
        provider=provider, model="m", base_url="http://llm/v1", api_key_env="KEY", timeout_s=2.0
    )


@FUZZ
@given(BODIES)
async def test_the_providers_answer_or_raise_baton_errors_only(body: bytes) -> None:
    for provider, route in ((OpenAIProvider, "openai"), (AnthropicProvider, "anthropic")):

        async def complete(provider: Any = provider, route: str = route) -> Any:
            async with _serve(body) as client:
                return await provider(client, ENV).complete(
                    _route(route),
                    MESSAGES,
                    temperature=0.0,
                    max_tokens=16,
                    output_schema=None,
                    idempotency_key="run-1/s",
                    tools=TOOLS,
                )

        await _only_baton_errors(complete)


@pytest.mark.parametrize("shape", ["list", "object", "mixed"])
@pytest.mark.parametrize("provider", [OpenAIProvider, AnthropicProvider])
async def test_a_deep_answer_fails_permanently_naming_the_limit(provider: Any, shape: str) -> None:
    async def complete() -> Any:
        async with _serve(_deep(5000, shape)) as client:
            return await provider(client, ENV).complete(
                _route("openai" if provider is OpenAIProvider else "anthropic"),
                MESSAGES,
                temperature=0.0,
                max_tokens=16,
                output_schema=None,
                idempotency_key="run-1/s",
            )

    error = await _only_baton_errors(complete)
    assert isinstance(error, JsonLimitExceeded)
    assert not error.retryable
    assert f"nests deeper than the limit of {MAX_JSON_DEPTH} levels" in str(error)
    assert str(error).startswith("model 'm' at http://llm/v1: the answer")


async def test_deep_tool_call_arguments_fail_naming_the_limit() -> None:
    usage = b'{"prompt_tokens":1,"completion_tokens":1}'
    body = _openai_body(b"null", _deep(2000, "object"), usage)

    async def complete() -> Any:
        async with _serve(body) as client:
            return await OpenAIProvider(client, ENV).complete(
                _route("openai"),
                MESSAGES,
                temperature=0.0,
                max_tokens=16,
                output_schema=None,
                idempotency_key="run-1/s",
                tools=TOOLS,
            )

    error = await _only_baton_errors(complete)
    assert isinstance(error, JsonLimitExceeded)
    assert "the tool call's arguments nests deeper than the limit of 64 levels" in str(error)


TEXTS = st.one_of(
    st.text(max_size=200),
    VALUES_AS_TEXT.map(lambda b: b.decode()),
    DEEP_TEXTS.map(lambda b: b.decode()),
    DEEP_TEXTS.map(lambda b: "Here:\n```json\n" + b.decode() + "\n```"),
    st.builds(_large).map(bytes.decode),
)


@FUZZ
@given(TEXTS)
def test_structured_answers_are_json_or_an_output_schema_violation(text: str) -> None:
    usage = Usage(input_tokens=1, output_tokens=1)
    try:
        structured_answer(text, {"type": "object"}, usage)
    except OutputSchemaViolation as exc:
        assert exc.usage == usage  # billed all the same


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("[" * 100_000 + "]" * 100_000, "nests deeper than the limit of 64 levels"),
        ("```json\n" + "[" * 70 + "]" * 70 + "\n```", "nests deeper than the limit of 64 levels"),
        ('"' + "x" * MAX_JSON_BYTES + '"', f"over the JSON limit of {MAX_JSON_BYTES}"),
    ],
    ids=["deep", "deep-fenced", "large"],
)
def test_a_structured_answer_over_the_limits_names_the_limit(text: str, limit: str) -> None:
    with pytest.raises(OutputSchemaViolation, match=limit):
        structured_answer(text, {"type": "object"}, Usage(input_tokens=1, output_tokens=1))


@FUZZ
@given(TEXTS)
def test_tool_call_arguments_are_read_or_refused_with_a_baton_error(text: str) -> None:
    try:
        arguments, error = parse_arguments(text)
    except JsonLimitExceeded:
        return
    assert isinstance(arguments, dict)
    assert error is None or isinstance(error, str)


def _tool_processor(client: httpx.AsyncClient, answer: str | None) -> ToolProcessor:
    spec: dict[str, Any] = {
        "kind": "http",
        "description": "Look up.",
        "base_url": "http://tools.example",
        "path": "/lookup/{{ args.id }}",
        "retries": 0,
        "answer": answer,
    }
    registry = ToolRegistry(ToolsConfig.model_validate({"tools": {"lookup": spec}}))
    return ToolProcessor(registry, client, {})


@FUZZ
@given(BODIES, st.sampled_from([None, "data", "items[0].text"]))
async def test_tool_answers_are_json_text_or_baton_errors(body: bytes, answer: str | None) -> None:
    request = step_request(StepKind.tool, {"tool": "lookup", "args": {"id": "1"}})

    async def call() -> Any:
        async with _serve(body) as client:
            return await _tool_processor(client, answer).run(request)

    await _only_baton_errors(call)


@FUZZ
@given(BODIES)
async def test_search_answers_are_documents_or_baton_errors(body: bytes) -> None:
    source: dict[str, Any] = {
        "kind": "http",
        "base_url": "http://search.example",
        "path": "/search",
        "query": {"q": "{{ query }}"},
        "retries": 0,
        "results": {"items": "hits", "metadata": "meta"},
    }
    config = ToolsConfig.model_validate({"sources": {"help": source}})
    request = step_request(StepKind.retrieve, {"source": "help", "query": "refund policy"})

    async def call() -> Any:
        async with _serve(body) as client:
            return await RetrieveProcessor(config.sources, client, {}).run(request)

    await _only_baton_errors(call)


def _nested_lists(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


@FUZZ
@given(st.one_of(JSON_VALUES, st.integers(MAX_JSON_DEPTH - 3, 3000).map(_nested_lists)))
async def test_python_tool_answers_are_json_or_baton_errors(answer: Any) -> None:
    async def answering(args: dict[str, Any]) -> Any:  # async: no worker thread per example
        return answer

    registry = ToolRegistry(
        ToolsConfig.model_validate(
            {"tools": {"t": {"kind": "python", "description": "T.", "entry_point": "t"}}}
        ),
        callables={"t": answering},
    )
    request = step_request(StepKind.tool, {"tool": "t", "args": {}})

    async def call() -> Any:
        async with _serve(b"") as client:  # never called; a real client builds an SSL context
            return await ToolProcessor(registry, client, {}).run(request)

    await _only_baton_errors(call)


@pytest.mark.parametrize("provider", [OpenAIProvider, AnthropicProvider])
async def test_an_endless_answer_is_refused_as_it_streams_in(provider: Any) -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"choices": [{"message": {"content": "'
        while True:  # never ends: only reading no further than the limit stops it
            sent.append(1)
            yield b"x" * 65536

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=endless()))
    async with httpx.AsyncClient(transport=transport) as client:
        # a model's answer may be larger than other JSON (claim checks carry it by reference)
        with pytest.raises(JsonLimitExceeded, match=f"over {MAX_ANSWER_BYTES} bytes, the answer"):
            await provider(client, ENV).complete(
                _route("openai" if provider is OpenAIProvider else "anthropic"),
                MESSAGES,
                temperature=0.0,
                max_tokens=16,
                output_schema=None,
                idempotency_key="run-1/s",
            )
    assert len(sent) <= MAX_ANSWER_BYTES // 65536 + 1
