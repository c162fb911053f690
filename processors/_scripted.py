"""The ``scripted`` provider: a deterministic built-in model for demos and tests.

No network. A route's ``script`` rules are tried in order against the last user message (or,
when the conversation ends with tool results, against those results); the first whose
``match`` regex is found (or that has no ``match``) answers with its ``reply``, rendered in
the template sandbox. A reply ``{tool_calls: [{name, arguments}]}`` asks for tool calls
instead, with ids derived from the step's idempotency key, so a scripted agent can call tools
in one turn and answer from their results in the next. Token counts are estimated from the
text (about four characters a token) and latency is simulated: ``latency_ms`` is the median,
``latency_sigma`` adds a log-normal tail, and the draw is seeded by the step's idempotency
key, so a step sees the same latency on every run.
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

from processors._catalog import RouteSpec, ScriptRule, script_tool_calls
from processors._errors import ProviderRejected
from processors._provider import (
    ChatMessage,
    Completion,
    Message,
    ToolCall,
    ToolCallMessage,
    ToolDefinition,
    ToolResultMessage,
    call_id,
    estimate_prompt_tokens,
    estimate_tokens,
    message_text,
)
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
        messages: Sequence[Message],
        *,
        temperature: float,
        max_tokens: int | None,
        output_schema: Mapping[str, JsonValue] | None,
        idempotency_key: str,
        tools: Sequence[ToolDefinition] | None = None,
    ) -> Completion:
        """Answer from the first matching script rule (see ``Provider.complete``).

        Raises:
            ProviderRejected: No rule matches, or the matching rule asks for tool calls and
                the call offers no tools.
            TemplateRenderError: The matching rule's reply does not render.
        """
        delay = simulated_latency(route, idempotency_key)
        if delay > 0:
            await self._sleep(delay)
        prompt, results = _prompt(messages)
        for rule in route.script:
            groups = _match(rule, prompt)
            if groups is None:
                continue
            context = {
                "prompt": prompt,
                "messages": [_context_message(m) for m in messages],
                "match": groups,
                "input_text": "\n".join(message_text(m) for m in messages),
                "tool_results": results,
            }
            input_tokens = estimate_prompt_tokens(messages)
            calls = script_tool_calls(rule.reply)
            if calls is None:
                text = _render(rule.reply, context)
                return Completion(
                    text, input_tokens=input_tokens, output_tokens=estimate_tokens(text)
                )
            if not tools:
                raise ProviderRejected(
                    f"scripted model {route.model!r}: the matching rule asks for tool calls, "
                    "but the call offers no tools"
                )
            tool_calls = tuple(
                ToolCall(
                    id=call_id(idempotency_key, len(messages), index),
                    name=str(call["name"]),
                    arguments=render_value(call.get("arguments", {}), context),
                )
                for index, call in enumerate(calls)
            )
            said = orjson.dumps([c.in_message() for c in tool_calls]).decode()
            return Completion(
                "",
                input_tokens=input_tokens,
                output_tokens=estimate_tokens(said),
                tool_calls=tool_calls,
            )
        what = "the tool results" if results else "the last user message"
        raise ProviderRejected(
            f"scripted model {route.model!r}: no script rule matches {what} {prompt[:80]!r}"
        )


def _prompt(messages: Sequence[Message]) -> tuple[str, list[dict[str, JsonValue]]]:
    """What rules match against: the last user message, or the tool results ending the talk.

    Returns:
        The text, and the tool results (``[]`` when the text is a user message).
    """
    for end in range(len(messages) - 1, -1, -1):
        message = messages[end]
        if isinstance(message, ToolResultMessage):
            start = end
            while start > 0 and isinstance(messages[start - 1], ToolResultMessage):
                start -= 1
            run = [m for m in messages[start : end + 1] if isinstance(m, ToolResultMessage)]
            results: list[dict[str, JsonValue]] = [
                {
                    "name": m.name,
                    "tool_call_id": m.tool_call_id,
                    "content": m.content,
                    "output": _json_or_text(m.content),
                    "is_error": m.is_error,
                }
                for m in run
            ]
            return "\n".join(m.content for m in run), results
        if isinstance(message, ChatMessage) and message.role == "user":
            return message.content, []
    return "", []


def _json_or_text(text: str) -> JsonValue:
    try:
        value: JsonValue = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return value


def _context_message(message: Message) -> dict[str, JsonValue]:
    if isinstance(message, ChatMessage):
        return {"role": message.role, "content": message.content}
    if isinstance(message, ToolCallMessage):
        return {
            "role": "assistant",
            "content": message.content or "",
            "tool_calls": [c.in_message() for c in message.tool_calls],
        }
    return {
        "role": "tool",
        "content": message.content,
        "name": message.name,
        "tool_call_id": message.tool_call_id,
    }


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
