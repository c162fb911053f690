"""The response cache, processor side: the key, what is cached, hits, expiry.

Model calls go through the real httpx client to the loopback fake OpenAI server, which
counts them; the cache is the in-memory ``MemoryResponseCache`` (the worker's topic-backed
one is tested on the real broker in tests/integration/test_cache.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from processors import (
    LlmProcessor,
    MemoryResponseCache,
    ModelCatalog,
    OutputSchemaViolation,
    ProviderUnavailable,
    RouteSpec,
    ScriptRule,
    cache_key,
    cacheable,
    execute,
)
from processors._agent import AgentProcessor
from streams._config import load_settings
from tests.fakes import ChatAnswer, ErrorStatus, FakeOpenAIServer, Malformed
from tests.fakes.steps import DISPATCHED_AT, step_request
from topics import (
    CachedToolCall,
    CacheEntry,
    Codec,
    ConfigurationError,
    StepKind,
    StepRequested,
    StepStatus,
    Usage,
)

KEY = "sk-cache-test-5d21"
ENV = {"LLM_KEY": KEY}
T0 = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category"],
    "properties": {"category": {"enum": ["refund", "bug"]}},
}
ROUTE = RouteSpec(
    provider="openai",
    model="gpt-test",
    base_url="http://127.0.0.1:9",
    input_usd_per_mtok=Decimal("2"),
    output_usd_per_mtok=Decimal("8"),
)
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You triage tickets."},
    {"role": "user", "content": "My order arrived broken"},
]
TOOLS: list[dict[str, Any]] = [
    {"name": "lookup_order", "description": "Find an order.", "parameters": {"type": "object"}},
]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _key(**changes: Any) -> str:
    call: dict[str, Any] = {
        "route_name": "fast",
        "route": ROUTE,
        "messages": MESSAGES,
        "temperature": 0.0,
        "max_tokens": 200,
        "output_schema": SCHEMA,
        "tools": TOOLS,
    }
    call.update(changes)
    return cache_key(
        call["route_name"],
        call["route"],
        call["messages"],
        temperature=call["temperature"],
        max_tokens=call["max_tokens"],
        output_schema=call["output_schema"],
        tools=call["tools"],
    )


def _catalog(base_url: str) -> ModelCatalog:
    return ModelCatalog(
        routes={
            "fast": ROUTE.model_copy(update={"base_url": base_url, "api_key_env": "LLM_KEY"}),
            "demo": RouteSpec(provider="scripted", model="demo", script=[ScriptRule(reply="hi")]),
        }
    )


def _request(
    route: str = "fast", *, step: str = "classify", attempt: int = 1, **params: Any
) -> StepRequested:
    fields: dict[str, Any] = {"route": route, "messages": MESSAGES, "max_tokens": 50}
    fields.update(params)
    return step_request(StepKind.llm, fields, step=step, attempt=attempt)


def _llm(
    fake: FakeOpenAIServer,
    client: httpx.AsyncClient,
    cache: MemoryResponseCache,
    clock: Clock | None = None,
) -> LlmProcessor:
    return LlmProcessor(
        _catalog(fake.base_url), client, ENV, cache=cache, clock=clock or Clock(DISPATCHED_AT)
    )


# -- the key ----------------------------------------------------------------------------------


def test_the_key_is_a_sha256_that_is_stable_for_the_same_call() -> None:
    key = _key()
    assert len(key) == 64 and int(key, 16) >= 0
    assert _key() == key
    reordered_schema = dict(reversed(list(SCHEMA.items())))
    reordered_messages = [dict(reversed(list(m.items()))) for m in MESSAGES]
    assert _key(output_schema=reordered_schema, messages=reordered_messages) == key
    assert _key(temperature=0) == key  # an int 0 is the same temperature as 0.0
    assert _key(route=ROUTE.model_copy(update={"base_url": "http://elsewhere"})) == key
    assert _key(route=ROUTE.model_copy(update={"input_usd_per_mtok": Decimal(9)})) == key


@pytest.mark.parametrize(
    "change",
    [
        {"route_name": "fast-2"},
        {"route": ROUTE.model_copy(update={"model": "gpt-test-2"})},
        {"route": ROUTE.model_copy(update={"provider": "anthropic"})},
        {"messages": [MESSAGES[0], {"role": "user", "content": "My order arrived broken!"}]},
        {"messages": [{**MESSAGES[0], "role": "user"}, MESSAGES[1]]},
        {"messages": MESSAGES[1:]},
        {"temperature": 0.5},
        {"max_tokens": 201},
        {"max_tokens": None},
        {"output_schema": None},
        {"output_schema": {**SCHEMA, "required": []}},
        {"tools": None},
        {"tools": [{**TOOLS[0], "description": "Find one order."}]},
    ],
    ids=lambda change: ",".join(change),
)
def test_the_key_changes_with_each_part_of_the_call(change: dict[str, Any]) -> None:
    assert _key(**change) != _key()


def test_the_routes_output_cap_stands_in_for_a_missing_max_tokens() -> None:
    capped = ROUTE.model_copy(update={"max_output_tokens": 200})
    assert _key(route=capped, max_tokens=None) == _key(route=capped, max_tokens=200)
    assert _key(route=capped, max_tokens=None) != _key(route=ROUTE, max_tokens=None)


def test_no_tools_and_an_empty_tool_list_are_the_same_call() -> None:
    assert _key(tools=[]) == _key(tools=None)


def test_only_temperature_zero_calls_on_real_or_priced_routes_are_cacheable() -> None:
    assert cacheable(ROUTE, 0.0)
    assert not cacheable(ROUTE, 0.2)
    free_script = RouteSpec(provider="scripted", model="m", script=[ScriptRule(reply="x")])
    assert not cacheable(free_script, 0.0)
    priced_script = free_script.model_copy(update={"input_usd_per_mtok": Decimal(1)})
    assert cacheable(priced_script, 0.0)
    free_http = ROUTE.model_copy(update={"input_usd_per_mtok": 0, "output_usd_per_mtok": 0})
    assert cacheable(free_http, 0.0)


# -- hits and misses --------------------------------------------------------------------------


async def test_a_repeated_call_is_answered_from_the_cache_and_reports_the_saving(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(
        ChatAnswer('{"category": "refund"}', prompt_tokens=1000, completion_tokens=50)
    )
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    first_worker = _llm(fake_openai, http_client, cache)
    second_worker = _llm(fake_openai, http_client, cache)

    first = await first_worker.run(_request(output_schema=SCHEMA))
    again = await second_worker.run(_request(output_schema=SCHEMA, step="other-step"))

    assert len(fake_openai.requests) == 1
    assert first.usage is not None and first.usage.cost_usd == Decimal("0.0024")
    assert not first.usage.cached
    assert again.output == first.output == {"category": "refund"}
    assert again.usage == Usage(
        input_tokens=0,
        output_tokens=0,
        cost_usd=Decimal(0),
        route="fast",
        provider="openai",
        model="gpt-test",
        cached=True,
        saved_usd=Decimal("0.0024"),
    )


async def test_a_hit_becomes_an_ok_result_with_the_cached_usage(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ChatAnswer("Sorry to hear that.", prompt_tokens=10, completion_tokens=5))
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    processor = _llm(fake_openai, http_client, cache)
    await processor.run(_request())

    retried = _request(attempt=2)
    result = await execute(processor, retried, worker="w2", now=lambda: DISPATCHED_AT)

    assert result.status == StepStatus.ok and result.output == "Sorry to hear that."
    assert result.usage is not None and result.usage.cached
    assert result.usage.saved_usd == Decimal("0.00006")
    assert len(fake_openai.requests) == 1


async def test_the_same_attempt_run_again_is_charged_its_own_call_once_more_saves_nothing(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    # At-least-once: a worker called the model, cached the answer and died before its result
    # counted; the same attempt runs again on another worker and finds its own answer.
    fake_openai.reply(ChatAnswer("Sorry to hear that.", prompt_tokens=1000, completion_tokens=50))
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    first = await _llm(fake_openai, http_client, cache).run(_request())
    again = await _llm(fake_openai, http_client, cache).run(_request())
    other_attempt = await _llm(fake_openai, http_client, cache).run(_request(attempt=2))

    assert len(fake_openai.requests) == 1
    assert first.usage is not None and again.usage is not None
    assert again.output == first.output
    assert again.usage == first.usage.model_copy(update={"cached": True})
    assert again.usage.cost_usd == Decimal("0.0024") and again.usage.saved_usd == 0
    assert other_attempt.usage is not None
    assert other_attempt.usage.cost_usd == 0 and other_attempt.usage.saved_usd == Decimal("0.0024")


async def test_a_call_that_differs_in_any_way_goes_to_the_model(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ChatAnswer('{"category": "bug"}'))
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    processor = _llm(fake_openai, http_client, cache)

    await processor.run(_request())
    await processor.run(_request(max_tokens=51))
    await processor.run(_request(output_schema=SCHEMA))
    await processor.run(_request(messages=MESSAGES[1:]))

    assert len(fake_openai.requests) == 4 and len(cache) == 4


@pytest.mark.parametrize("params", [{"temperature": 0.7}, {"cache": False}])
async def test_a_call_above_temperature_zero_or_opted_out_is_never_cached(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    fake_openai.reply(ChatAnswer("It depends."))
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    processor = _llm(fake_openai, http_client, cache)

    outcomes = [await processor.run(_request(**params)) for _ in range(2)]

    assert len(fake_openai.requests) == 2 and len(cache) == 0
    assert not any(o.usage is not None and o.usage.cached for o in outcomes)


async def test_free_scripted_routes_are_not_cached(http_client: httpx.AsyncClient) -> None:
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    processor = LlmProcessor(_catalog("http://127.0.0.1:9"), http_client, ENV, cache=cache)

    outcome = await processor.run(_request("demo"))

    assert outcome.output == "hi" and len(cache) == 0


async def test_llm_params_default_to_temperature_zero_and_caching(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ChatAnswer("cached by default"))
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    processor = _llm(fake_openai, http_client, cache)
    bare = {"route": "fast", "messages": MESSAGES}

    await processor.run(step_request(StepKind.llm, bare))
    outcome = await processor.run(step_request(StepKind.llm, bare))

    assert outcome.usage is not None and outcome.usage.cached
    assert len(fake_openai.requests) == 1


async def test_an_answer_that_breaks_the_output_schema_is_not_cached(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(ChatAnswer("not json at all"))
    fake_openai.reply(ChatAnswer('{"category": "bug"}'))
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    processor = _llm(fake_openai, http_client, cache)

    with pytest.raises(OutputSchemaViolation) as refused:
        await processor.run(_request(output_schema=SCHEMA))
    assert refused.value.usage is not None and not refused.value.usage.cached
    assert len(cache) == 0
    retried = await processor.run(_request(output_schema=SCHEMA))

    assert retried.output == {"category": "bug"}
    assert len(fake_openai.requests) == 2 and len(cache) == 1


async def test_a_failed_call_is_not_cached(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ErrorStatus(503))
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    catalog = _catalog(fake_openai.base_url)
    route = catalog.routes["fast"].model_copy(update={"retries": 0})
    processor = LlmProcessor(
        ModelCatalog(routes={"fast": route}), http_client, ENV, cache=cache, clock=Clock(T0)
    )

    with pytest.raises(ProviderUnavailable):
        await processor.run(_request())

    assert len(cache) == 0


async def test_an_entry_older_than_the_ttl_is_not_served(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ChatAnswer("fresh answer"))
    clock = Clock(DISPATCHED_AT)
    cache = MemoryResponseCache(ttl_s=60, clock=clock)
    processor = _llm(fake_openai, http_client, cache, clock)
    await processor.run(_request())

    clock.now += timedelta(seconds=59)
    assert (await processor.run(_request())).usage.cached  # type: ignore[union-attr]  # has usage
    clock.now += timedelta(seconds=1)
    expired = await processor.run(_request())

    assert expired.usage is not None and not expired.usage.cached
    assert len(fake_openai.requests) == 2


async def test_without_a_cache_every_call_goes_to_the_model(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ChatAnswer("no cache here"))
    processor = LlmProcessor(_catalog(fake_openai.base_url), http_client, ENV)

    await processor.run(_request())
    await processor.run(_request())

    assert len(fake_openai.requests) == 2


# -- agent turns ------------------------------------------------------------------------------


async def test_an_agent_turn_with_tool_calls_is_cached_with_its_calls(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "lookup_order", "arguments": '{"order_id": 7}'},
            }
        ],
    }
    body = {
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10},
    }
    fake_openai.reply(Malformed(orjson.dumps(body)))
    cache = MemoryResponseCache(ttl_s=60, clock=Clock(DISPATCHED_AT))
    processor = AgentProcessor(_catalog(fake_openai.base_url), http_client, ENV, cache=cache)
    turn = step_request(StepKind.agent, {"route": "fast", "messages": MESSAGES, "tools": TOOLS})

    first = await processor.run(turn)
    again = await processor.run(turn.model_copy(update={"attempt": 2}))
    other_tools = await processor.run(
        step_request(StepKind.agent, {"route": "fast", "messages": MESSAGES, "tools": []})
    )

    assert again.output == first.output
    assert isinstance(first.output, dict) and first.output["type"] == "tool_calls"
    assert first.output["calls"] == [
        {
            "id": "call_1",
            "name": "lookup_order",
            "arguments": {"order_id": 7},
            "arguments_error": None,
        }
    ]
    assert again.usage is not None and again.usage.cached
    assert again.usage.saved_usd == first.usage.cost_usd  # type: ignore[union-attr]  # has usage
    assert other_tools.usage is not None and not other_tools.usage.cached
    assert len(fake_openai.requests) == 2


# -- the in-memory cache ----------------------------------------------------------------------


def _entry(key: str, created_at: datetime = T0, text: str = "answer") -> CacheEntry:
    return CacheEntry(
        key=key,
        route="fast",
        provider="openai",
        model="gpt-test",
        text=text,
        input_tokens=10,
        output_tokens=5,
        cost_usd=Decimal("0.0001"),
        created_at=created_at,
    )


async def test_the_latest_entry_under_a_key_wins_and_an_expired_one_removes_it() -> None:
    clock = Clock(T0 + timedelta(seconds=30))
    cache = MemoryResponseCache(ttl_s=60, clock=clock)
    await cache.put(_entry("k", text="first"))
    await cache.put(_entry("k", text="second"))
    assert (await cache.get("k")).text == "second"  # type: ignore[union-attr]  # a hit

    cache.remember(_entry("k", created_at=T0 - timedelta(days=2)))

    assert await cache.get("k") is None and len(cache) == 0


async def test_expired_entries_are_swept_as_new_ones_arrive() -> None:
    clock = Clock(T0)
    cache = MemoryResponseCache(ttl_s=60, clock=clock)
    for i in range(3):
        cache.remember(_entry(f"old-{i}", created_at=T0))
    clock.now += timedelta(seconds=61)

    cache.remember(_entry("new", created_at=clock.now))

    assert len(cache) == 1 and await cache.get("new") is not None
    cache.forget("new")
    assert await cache.get("new") is None


def test_a_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        MemoryResponseCache(ttl_s=0)


def test_an_entry_with_tool_calls_round_trips_through_the_codec() -> None:
    call = CachedToolCall(id="c1", name="lookup_order", arguments={"order_id": 7})
    entry = _entry("k").model_copy(update={"tool_calls": [call], "origin": "run-1/classify@2"})
    codec = Codec()
    assert codec.decode(codec.encode(entry), CacheEntry) == entry


# -- the setting ------------------------------------------------------------------------------


def test_the_ttl_is_a_setting_of_at_most_the_topics_retention() -> None:
    assert load_settings({}).cache_ttl == 86_400
    assert load_settings({"BATON_CACHE_TTL": "0"}).cache_ttl == 0
    assert load_settings({"BATON_CACHE_TTL": "604800"}).cache_ttl == 7 * 86_400
    with pytest.raises(ConfigurationError, match=r"cache_ttl \(environment variable BATON_CACHE"):
        load_settings({"BATON_CACHE_TTL": "604801"})
