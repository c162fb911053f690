"""The llm processor: routes, the one retry layer, structured output, usage and cost.

Calls go through the real httpx client to the loopback fake OpenAI server, which counts them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from processors import (
    InvalidParams,
    LlmProcessor,
    ModelCatalog,
    OutputSchemaViolation,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
    RouteSpec,
    ScriptRule,
    UnknownRoute,
    execute,
)
from processors._llm import parse_json_answer
from tests.fakes import ChatAnswer, Delay, ErrorStatus, FakeOpenAIServer, Malformed
from tests.fakes.steps import DISPATCHED_AT, step_request
from topics import ConfigurationError, StepKind, StepRequested, StepStatus, Usage

KEY = "sk-llm-test-91ac"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category", "risk"],
    "properties": {"category": {"enum": ["refund", "bug"]}, "risk": {"enum": ["low", "high"]}},
}


class _Sleeps:
    """Records the waits it is asked for instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _catalog(base_url: str, **overrides: Any) -> ModelCatalog:
    fields: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-test",
        "base_url": base_url,
        "api_key_env": "LLM_KEY",
        "input_usd_per_mtok": Decimal("0.15"),
        "output_usd_per_mtok": Decimal("0.60"),
        "timeout_s": 2.0,
        "retries": 2,
    }
    fields.update(overrides)
    demo = RouteSpec(
        provider="scripted",
        model="demo",
        input_usd_per_mtok=Decimal("1"),
        script=[
            ScriptRule(
                match="(?i)refund|broken",
                reply={
                    "category": "refund",
                    "risk": "{{ 'high' if 'lawyer' in prompt else 'low' }}",
                },
            ),
            ScriptRule(reply='```json\n{"category": "bug", "risk": "low"}\n```'),
        ],
    )
    return ModelCatalog(routes={"fast": RouteSpec(**fields), "demo": demo})


def _request(
    route: str = "fast", schema: dict[str, Any] | None = None, **more: Any
) -> StepRequested:
    params: dict[str, Any] = {
        "route": route,
        "messages": [{"role": "user", "content": "Classify: my order arrived broken"}],
        "temperature": 0.0,
        "max_tokens": None,
        "output_schema": schema,
    }
    params.update(more)
    return step_request(StepKind.llm, params, step="classify")


def _processor(
    catalog: ModelCatalog, client: httpx.AsyncClient, sleeps: _Sleeps | None = None, **more: Any
) -> LlmProcessor:
    if sleeps is not None:
        more["sleep"] = sleeps
    return LlmProcessor(catalog, client, {"LLM_KEY": KEY}, **more)


# -- success ----------------------------------------------------------------------------------


async def test_the_output_is_the_validated_json_with_usage_and_exact_cost(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(
        ChatAnswer(
            '{"category": "refund", "risk": "low"}', prompt_tokens=1000, completion_tokens=20
        )
    )
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    outcome = await processor.run(_request(schema=SCHEMA))

    assert outcome.output == {"category": "refund", "risk": "low"}
    assert outcome.usage == Usage(
        input_tokens=1000,
        output_tokens=20,
        cost_usd=Decimal("0.000162"),
        route="fast",
        provider="openai",
        model="gpt-test",
    )
    (request,) = fake_openai.requests
    assert request.body["response_format"]["json_schema"]["schema"] == SCHEMA


async def test_a_fenced_json_answer_is_accepted(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply('Sure! Here it is:\n```json\n{"category": "bug", "risk": "high"}\n```\n')
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    outcome = await processor.run(_request(schema=SCHEMA))

    assert outcome.output == {"category": "bug", "risk": "high"}


async def test_without_a_schema_the_output_is_the_text(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply('{"looks": "like json"}')
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    outcome = await processor.run(_request())

    assert outcome.output == '{"looks": "like json"}'


async def test_a_scripted_route_needs_no_network(http_client: httpx.AsyncClient) -> None:
    processor = _processor(_catalog("http://127.0.0.1:9"), http_client)

    calm = await processor.run(_request("demo", SCHEMA))
    angry = await processor.run(
        _request("demo", SCHEMA, messages=[{"role": "user", "content": "refund or my lawyer"}])
    )
    fenced = await processor.run(
        _request("demo", SCHEMA, messages=[{"role": "user", "content": "it crashes"}])
    )

    assert calm.output == {"category": "refund", "risk": "low"}
    assert angry.output == {"category": "refund", "risk": "high"}
    assert fenced.output == {"category": "bug", "risk": "low"}
    assert calm.usage is not None
    assert calm.usage.provider == "scripted"
    assert calm.usage.cost_usd == Decimal(calm.usage.input_tokens) / 10**6


# -- the retry layer --------------------------------------------------------------------------


async def test_retry_after_is_honoured_between_real_calls(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(ErrorStatus(429, retry_after="1"))
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    outcome = await processor.run(_request())

    assert outcome.output == "ok"
    first, second = fake_openai.requests
    assert second.at - first.at >= 0.95


async def test_the_wait_is_what_retry_after_asked_for(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(ErrorStatus(429, retry_after="3"), ErrorStatus(503))
    sleeps = _Sleeps()
    processor = _processor(_catalog(fake_openai.base_url), http_client, sleeps)

    outcome = await processor.run(_request())

    assert outcome.output == "ok"
    assert fake_openai.call_count == 3
    assert sleeps.waits[0] == 3.0
    assert 0.4 <= sleeps.waits[1] <= 0.6  # no Retry-After: backoff, second retry


async def test_without_retry_after_the_backoff_is_exponential_with_jitter(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(ErrorStatus(500), ErrorStatus(502), ErrorStatus(503), ErrorStatus(504))
    sleeps = _Sleeps()
    processor = _processor(_catalog(fake_openai.base_url, retries=4), http_client, sleeps)

    outcome = await processor.run(_request())

    assert outcome.output == "ok"
    assert fake_openai.call_count == 5
    lows = [0.2, 0.4, 0.8, 1.6]
    assert all(low <= wait <= low + 0.2 for low, wait in zip(lows, sleeps.waits, strict=True))


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (ErrorStatus(503), ProviderUnavailable),
        (ErrorStatus(429), ProviderRateLimited),
        (Malformed(), ProviderUnavailable),
        (Delay(3.0), ProviderTimeout),
    ],
)
async def test_retryable_errors_are_tried_route_retries_more_times(
    fake_openai: FakeOpenAIServer,
    http_client: httpx.AsyncClient,
    fault: Any,
    error: type[Exception],
) -> None:
    fake_openai.reply(fault)
    sleeps = _Sleeps()
    # Only the slow answer needs a short timeout; the others must never hit one, even on a
    # loaded machine.
    timeout = 0.2 if isinstance(fault, Delay) else 10.0
    processor = _processor(_catalog(fake_openai.base_url, timeout_s=timeout), http_client, sleeps)

    with pytest.raises(error):
        await processor.run(_request())

    assert fake_openai.call_count == 3
    assert len(sleeps.waits) == 2


async def test_no_retries_means_one_call(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ErrorStatus(503))
    processor = _processor(_catalog(fake_openai.base_url, retries=0), http_client, _Sleeps())

    with pytest.raises(ProviderUnavailable):
        await processor.run(_request())
    assert fake_openai.call_count == 1


async def test_a_timeout_then_an_answer_succeeds(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.enqueue(Delay(5.0))
    # Long enough for the second, prompt answer on a loaded machine; short of the delay.
    processor = _processor(_catalog(fake_openai.base_url, timeout_s=1.5), http_client, _Sleeps())

    outcome = await processor.run(_request())

    assert outcome.output == "ok"
    assert fake_openai.call_count == 2


@pytest.mark.parametrize(
    "fault",
    [
        ErrorStatus(400),
        ErrorStatus(401),
        ErrorStatus(404),
        ErrorStatus(429, code="insufficient_quota"),
    ],
)
async def test_permanent_errors_are_never_retried(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient, fault: ErrorStatus
) -> None:
    fake_openai.reply(fault)
    sleeps = _Sleeps()
    processor = _processor(_catalog(fake_openai.base_url), http_client, sleeps)

    with pytest.raises(ProviderRejected) as caught:
        await processor.run(_request())

    assert fake_openai.call_count == 1
    assert sleeps.waits == []
    assert KEY not in str(caught.value)


async def test_a_schema_violation_is_not_retried_and_keeps_its_usage(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(
        ChatAnswer('{"category": "weather"}', prompt_tokens=100, completion_tokens=10)
    )
    processor = _processor(_catalog(fake_openai.base_url), http_client, _Sleeps())

    with pytest.raises(OutputSchemaViolation) as caught:
        await processor.run(_request(schema=SCHEMA))

    assert fake_openai.call_count == 1
    assert str(caught.value) == (
        "the answer does not match the output schema: "
        "output: 'risk' is a required property; "
        "output.category: 'weather' is not one of ['refund', 'bug']"
    )
    assert caught.value.usage is not None
    assert caught.value.usage.cost_usd == Decimal("0.000021")


async def test_an_answer_that_is_not_json_says_why(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply("I think it is a refund.")
    processor = _processor(_catalog(fake_openai.base_url), http_client, _Sleeps())

    with pytest.raises(
        OutputSchemaViolation,
        match=r"the answer is not JSON: Expecting value at line 1 column 1 "
        r"\(answer: 'I think it is a refund.'\)",
    ):
        await processor.run(_request(schema=SCHEMA))
    assert fake_openai.call_count == 1


async def test_a_retry_after_longer_than_the_in_process_limit_is_left_to_the_coordinator(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ErrorStatus(429, retry_after="120"))
    sleeps = _Sleeps()
    processor = _processor(_catalog(fake_openai.base_url), http_client, sleeps, max_retry_wait=30)

    result = await execute(processor, _request(), worker="w1", now=lambda: DISPATCHED_AT)

    assert fake_openai.call_count == 1
    assert sleeps.waits == []
    assert result.status is StepStatus.failed
    assert result.error is not None
    assert (result.error.error_class, result.error.retryable, result.error.retry_after_s) == (
        "ProviderRateLimited",
        True,
        120.0,
    )


async def test_retries_stop_before_the_step_deadline(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    fake_openai.reply(ErrorStatus(503))
    request = _request()
    almost_due = request.deadline_at - timedelta(seconds=0.1)
    sleeps = _Sleeps()
    processor = _processor(
        _catalog(fake_openai.base_url), http_client, sleeps, clock=lambda: almost_due
    )

    with pytest.raises(ProviderUnavailable):
        await processor.run(request)

    assert fake_openai.call_count == 1
    assert sleeps.waits == []


# -- requests that cannot be served -----------------------------------------------------------


async def test_an_unknown_route_makes_no_call(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    with pytest.raises(UnknownRoute, match="'strong' is not in the model catalog"):
        await processor.run(_request("strong"))
    assert fake_openai.call_count == 0


async def test_an_invalid_output_schema_makes_no_call(
    fake_openai: FakeOpenAIServer, http_client: httpx.AsyncClient
) -> None:
    processor = _processor(_catalog(fake_openai.base_url), http_client)

    with pytest.raises(ConfigurationError, match=r"not a valid JSON Schema: schema.type"):
        await processor.run(_request(schema={"type": "objekt"}))
    assert fake_openai.call_count == 0


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"messages": []}, "route: Field required"),
        ({"route": "fast", "messages": []}, "messages: List should have at least 1 item"),
        ({"route": "fast", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (
            {"route": "fast", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            "temperature",
        ),
        ("not an object", "Input should be a valid dictionary"),
    ],
)
async def test_params_of_the_wrong_shape_are_refused(
    http_client: httpx.AsyncClient, params: Any, fragment: str
) -> None:
    processor = _processor(_catalog("http://127.0.0.1:9"), http_client)

    with pytest.raises(InvalidParams, match="llm params: ") as caught:
        await processor.run(step_request(StepKind.llm, params))
    assert fragment in str(caught.value)


# -- the JSON in an answer --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("  [1, 2]\n", [1, 2]),
        ('"just a string"', "just a string"),
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('```\n{"a": 1}\n```', {"a": 1}),
        ('Here you go:\n\n```JSON\n{"a": [1,\n 2]}\n```\nAnything else?', {"a": [1, 2]}),
    ],
)
def test_json_is_read_whole_or_from_a_fenced_block(text: str, expected: Any) -> None:
    assert parse_json_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the answer is not JSON: Expecting value at line 1 column 1"),
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": 1', "Expecting ',' delimiter"),
        ('```json\n{"a": }\n```', "the answer's ```json block is not JSON: Expecting value"),
        ("x" * 500, "x" * 77 + "...'"),
    ],
)
def test_text_without_json_says_why(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_json_answer(text)
    assert fragment in str(caught.value)
    assert len(str(caught.value)) < 200
