"""The ``scripted`` provider: a deterministic built-in model for demos and tests.

No network. A route's ``script`` rules are tried in order against the last user message; the
first whose ``match`` regex is found (or that has no ``match``) answers with its ``reply``,
rendered in the template sandbox. Token counts are estimated from the text (about four
characters a token) and latency is simulated: ``latency_ms`` is the median, ``latency_sigma``
adds a log-normal tail, and the draw is seeded by the step's idempotency key, so a step sees
the same latency on every run.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
from pydantic import JsonValue

from processors._catalog import RouteSpec, ScriptRule
from processors._errors import ProviderRejected
from processors._provider import ChatMessage, Completion, estimate_tokens
from processors._templates import compile_template, is_template, render_value

__all__ = ["ScriptedProvider", "simulated_latency"]


class ScriptedProvider:
    """Answers from the route's script.

    Args:
        sleep: How simulated latency is waited out (``asyncio.sleep``; tests may pass a fake).
    """

    def __init__(self, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._sleep = sleep

    async def complete(
        self,
        route: RouteSpec,
        messages: Sequence[ChatMessage],
        *,
        temperature: float,
        max_tokens: int | None,
        output_schema: Mapping[str, JsonValue] | None,
        idempotency_key: str,
    ) -> Completion:
        """Answer from the first matching script rule (see ``Provider.complete``).

        Raises:
            ProviderRejected: No rule matches the last user message.
            TemplateRenderError: The matching rule's reply does not render.
        """
        delay = simulated_latency(route, idempotency_key)
        if delay > 0:
            await self._sleep(delay)
        prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
        for rule in route.script:
            groups = _match(rule, prompt)
            if groups is None:
                continue
            context = {
                "prompt": prompt,
                "messages": [{"role": m.role, "content": m.content} for m in messages],
                "match": groups,
                "input_text": "\n".join(m.content for m in messages),
            }
            text = _render(rule.reply, context)
            input_tokens = sum(estimate_tokens(m.content) for m in messages)
            return Completion(text, input_tokens=input_tokens, output_tokens=estimate_tokens(text))
        raise ProviderRejected(
            f"scripted model {route.model!r}: no script rule matches the last user message "
            f"{prompt[:80]!r}"
        )


def _match(rule: ScriptRule, prompt: str) -> list[str] | None:
    """``None`` when the rule does not apply, else the match followed by its groups."""
    if rule.match is None:
        return []
    found = re.search(rule.match, prompt)
    if found is None:
        return None
    return [found.group(0), *(g if g is not None else "" for g in found.groups())]


def _render(reply: str | dict[str, JsonValue], context: Mapping[str, Any]) -> str:
    if isinstance(reply, str):
        value = compile_template(reply).render(context) if is_template(reply) else reply
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    return orjson.dumps(render_value(reply, context)).decode()


def simulated_latency(route: RouteSpec, idempotency_key: str) -> float:
    """Seconds a scripted call takes: the same for the same step, never past the timeout."""
    if route.latency_ms <= 0:
        return 0.0
    factor = 1.0
    if route.latency_sigma > 0:
        factor = math.exp(route.latency_sigma * random.Random(idempotency_key).gauss(0.0, 1.0))
    return min(route.latency_ms * factor / 1000.0, route.timeout_s)
