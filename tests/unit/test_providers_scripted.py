"""The scripted provider: deterministic answers, token counts and latency, no network."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from processors import (
    ChatMessage,
    Completion,
    ProviderRejected,
    RouteSpec,
    ScriptedProvider,
    ScriptRule,
    TemplateRenderError,
)
from processors._scripted import simulated_latency

CLASSIFIER = RouteSpec(
    provider="scripted",
    model="demo-classifier",
    script=[
        ScriptRule(
            match="(?i)refund|broken|money back",
            reply={
                "category": "refund",
                "risk": "{{ 'high' if 'lawyer' in prompt else 'low' }}",
            },
        ),
        ScriptRule(match=r"(?i)crash(es|ed)? on (\w+)", reply="bug on {{ match[2] }}"),
        ScriptRule(match=r"(?i)how do i (?P<what>.+)\?", reply={"category": "question"}),
    ],
)


class _Sleeps:
    """Records the waits it is asked for instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def _ask(
    route: RouteSpec,
    prompt: str,
    *,
    key: str = "run-1/classify",
    provider: ScriptedProvider | None = None,
    history: list[ChatMessage] | None = None,
) -> Completion:
    messages = [*(history or []), ChatMessage(role="user", content=prompt)]
    return await (provider or ScriptedProvider()).complete(
        route,
        messages,
        temperature=0.0,
        max_tokens=None,
        output_schema=None,
        idempotency_key=key,
    )


async def test_the_first_matching_rule_answers_and_json_replies_are_rendered() -> None:
    calm = await _ask(CLASSIFIER, "My order arrived broken, I want my money back")
    angry = await _ask(CLASSIFIER, "Refund now or my lawyer calls you")

    assert json.loads(calm.text) == {"category": "refund", "risk": "low"}
    assert json.loads(angry.text) == {"category": "refund", "risk": "high"}


async def test_match_holds_the_match_then_its_groups() -> None:
    completion = await _ask(CLASSIFIER, "The app crashes on Android every time")
    assert completion.text == "bug on Android"


async def test_templates_see_the_conversation() -> None:
    route = RouteSpec(
        provider="scripted",
        model="echo",
        script=[
            ScriptRule(
                reply="{{ messages | length }} messages; last: {{ prompt }}; "
                "all: {{ input_text | replace('\n', ' / ') }}"
            )
        ],
    )
    history = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="first"),
        ChatMessage(role="assistant", content="draft"),
    ]

    completion = await _ask(route, "second", history=history)

    assert completion.text == "4 messages; last: second; all: Be brief. / first / draft / second"


async def test_the_prompt_is_the_last_user_message() -> None:
    route = RouteSpec(
        provider="scripted", model="m", script=[ScriptRule(match="^fix it$", reply="fixed")]
    )
    messages = [
        ChatMessage(role="user", content="fix it"),
        ChatMessage(role="assistant", content="no"),
    ]
    completion = await ScriptedProvider().complete(
        route, messages, temperature=0, max_tokens=None, output_schema=None, idempotency_key="k"
    )
    assert completion.text == "fixed"


async def test_a_rule_without_match_matches_everything() -> None:
    route = RouteSpec(
        provider="scripted",
        model="m",
        script=[ScriptRule(match="never", reply="no"), ScriptRule(reply="fallback {{ match }}")],
    )
    assert (await _ask(route, "anything")).text == "fallback []"


async def test_no_matching_rule_is_rejected() -> None:
    with pytest.raises(ProviderRejected, match="no script rule matches the last user message"):
        await _ask(CLASSIFIER, "Hello there")


async def test_a_reply_that_does_not_render_is_a_permanent_error() -> None:
    route = RouteSpec(provider="scripted", model="m", script=[ScriptRule(reply="{{ nope.x }}")])
    with pytest.raises(TemplateRenderError):
        await _ask(route, "hi")


async def test_a_single_expression_reply_yielding_json_is_answered_as_json_text() -> None:
    route = RouteSpec(
        provider="scripted",
        model="m",
        script=[
            ScriptRule(
                match=r"(\d+) and (\d+)", reply="{{ {'sum': match[1] | int + match[2] | int} }}"
            )
        ],
    )
    assert json.loads((await _ask(route, "add 2 and 40")).text) == {"sum": 42}


async def test_token_counts_are_deterministic_estimates() -> None:
    route = RouteSpec(provider="scripted", model="m", script=[ScriptRule(reply="x" * 9)])

    completion = await _ask(route, "y" * 8, history=[ChatMessage(role="system", content="")])

    # ceil(9 / 4) = 3 out; in: 8 chars -> 2, an empty message still counts 1
    assert (completion.input_tokens, completion.output_tokens) == (3, 3)


async def test_answers_are_the_same_every_time() -> None:
    first = [await _ask(CLASSIFIER, p) for p in ("broken!", "crashed on iOS", "How do I pay?")]
    again = [await _ask(CLASSIFIER, p) for p in ("broken!", "crashed on iOS", "How do I pay?")]
    assert first == again


# -- latency ----------------------------------------------------------------------------------


def _slow(latency_ms: float, sigma: float = 0.0, timeout_s: float = 60.0) -> RouteSpec:
    return RouteSpec(
        provider="scripted",
        model="m",
        script=[ScriptRule(reply="ok")],
        latency_ms=latency_ms,
        latency_sigma=sigma,
        timeout_s=timeout_s,
    )


async def test_latency_is_slept_with_the_given_sleep() -> None:
    sleeps = _Sleeps()
    await _ask(_slow(250), "hi", provider=ScriptedProvider(sleep=sleeps))
    assert sleeps.waits == [0.25]


async def test_no_latency_means_no_sleep() -> None:
    sleeps = _Sleeps()
    await _ask(CLASSIFIER, "broken", provider=ScriptedProvider(sleep=sleeps))
    assert sleeps.waits == []


def test_latency_is_deterministic_per_step_and_varies_across_steps() -> None:
    route = _slow(100, sigma=1.0)
    keys = [f"run-{i}/draft" for i in range(200)]

    first = [simulated_latency(route, k) for k in keys]
    again = [simulated_latency(route, k) for k in keys]

    assert first == again
    assert len(set(first)) == len(keys)
    ordered = sorted(first)
    median = (ordered[99] + ordered[100]) / 2
    assert 0.07 < median < 0.14  # the median is latency_ms
    assert ordered[-1] > 0.5  # a long tail


def test_without_sigma_the_latency_is_fixed_and_never_past_the_timeout() -> None:
    assert {simulated_latency(_slow(80), f"k{i}") for i in range(20)} == {0.08}
    assert (
        max(simulated_latency(_slow(1000, 3.0, timeout_s=2.0), f"k{i}") for i in range(50)) == 2.0
    )


async def test_the_real_sleep_is_asyncio_and_does_not_block_the_loop() -> None:
    route = _slow(200)
    started = time.monotonic()
    answers: list[Any] = await asyncio.gather(*(_ask(route, "hi", key=f"k{i}") for i in range(20)))
    elapsed = time.monotonic() - started
    assert [a.text for a in answers] == ["ok"] * 20
    assert 0.19 < elapsed < 1.5  # twenty concurrent calls take one latency, not twenty
