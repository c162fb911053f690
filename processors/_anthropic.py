"""The Anthropic Messages provider.

One ``POST {base_url}/messages`` per call over the shared ``httpx.AsyncClient`` (which must not
retry on its own), with ``x-api-key`` and ``anthropic-version`` headers. The neutral
conversation is translated to the Messages wire format:

- system messages are lifted out into the top-level ``system`` text (the API has no system
  role); with an ``output_schema`` an instruction to answer with JSON following the schema
  is added there, as the API has no ``response_format`` (the caller checks the answer);
- ``max_tokens`` is required: the step's, else the route's ``max_output_tokens``, else 1024;
- tools go out as ``tools: [{name, description, input_schema}]``; an assistant turn that made
  tool calls becomes ``tool_use`` content blocks, and consecutive tool results become
  ``tool_result`` blocks of one user message.

The answer's ``text`` blocks are joined into the text, its ``tool_use`` blocks become neutral
``ToolCall``s, and ``usage.input_tokens``/``usage.output_tokens`` are the token counts.
Failures are classified like the OpenAI provider's (529 "overloaded" is a 5xx: retryable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx
import orjson
from pydantic import JsonValue

from processors._catalog import DEFAULT_ANTHROPIC_MAX_TOKENS, RouteSpec
from processors._errors import ProviderRejected, ProviderUnavailable
from processors._provider import (
    ChatMessage,
    Completion,
    Message,
    ToolCall,
    ToolCallMessage,
    ToolDefinition,
    WireToolNames,
    api_key,
    call_id,
    check_status,
    estimate_prompt_tokens,
    estimate_tokens,
    excerpt,
    is_count,
    origin,
    parse_arguments,
    post_json,
    read_json,
    redact,
)
from topics import ConfigurationError

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "json_instruction"]

#: The ``anthropic-version`` header every call sends.
ANTHROPIC_VERSION = "2023-06-01"

_PATH = "/messages"


class AnthropicProvider:
    """Messages over the Anthropic API (or a server speaking its wire format).

    Args:
        http_client: The shared client (no retries of its own; timeouts are set per call).
        environ: Where API keys are looked up by the route's ``api_key_env`` name.
    """

    def __init__(self, http_client: httpx.AsyncClient, environ: Mapping[str, str]) -> None:
        self._client = http_client
        self._environ = environ

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
        """Ask the route's model for one message (see ``Provider.complete``).

        Raises:
            ProviderTimeout: No answer within ``route.timeout_s``.
            ProviderUnavailable: Connection errors, HTTP 408/409/5xx (529 included), a body
                that is not a message.
            ProviderRateLimited: HTTP 429 (``retry_after`` from ``retry-after``).
            ProviderRejected: Any other 4xx, or the model refused to answer.
            ConfigurationError: The route's key variable is unset or its URL is unusable.
        """
        if route.base_url is None:
            raise ConfigurationError(f"model {route.model!r}: an anthropic route needs base_url")
        url = route.base_url.rstrip("/") + _PATH
        where = f"model {route.model!r} at {origin(url, _PATH)}"
        key = api_key(route, self._environ, where)
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if key is not None:
            headers["x-api-key"] = key
        names = WireToolNames.of(tools, messages)
        system, conversation = _wire_conversation(messages, names)
        if output_schema is not None:
            system.append(json_instruction(output_schema))
        body: dict[str, JsonValue] = {
            "model": route.model,
            "max_tokens": route.output_cap(max_tokens) or DEFAULT_ANTHROPIC_MAX_TOKENS,
        }
        if system:
            body["system"] = "\n\n".join(system)
        body["messages"] = conversation
        body["temperature"] = temperature
        if tools:
            body["tools"] = [_wire_tool(t, names) for t in tools]
        response = await post_json(
            self._client, url, body, headers, timeout=route.timeout_s, where=where, key=key
        )
        check_status(response, where, key)
        data = read_json(response, where, key)
        return _completion(data, where, key, messages, idempotency_key, names)


def json_instruction(schema: Mapping[str, JsonValue]) -> str:
    """The system-prompt instruction that asks for JSON following ``schema``."""
    return (
        "Answer with one JSON value that follows this JSON Schema, and nothing else "
        "(no prose, no code fence).\nJSON Schema: " + orjson.dumps(dict(schema)).decode()
    )


def _wire_conversation(
    messages: Sequence[Message], names: WireToolNames
) -> tuple[list[str], list[JsonValue]]:
    """The system texts, and the user/assistant messages in the Messages wire format."""
    system: list[str] = []
    conversation: list[JsonValue] = []
    results: list[JsonValue] | None = None  # the user message that collects tool results
    for message in messages:
        if isinstance(message, ChatMessage):
            if message.role == "system":
                system.append(message.content)
                continue
            if message.role == "user" and results is not None:
                # Text after tool results belongs in the same user turn, after them.
                results.append({"type": "text", "text": message.content})
                results = None
                continue
            conversation.append({"role": message.role, "content": message.content})
        elif isinstance(message, ToolCallMessage):
            blocks: list[JsonValue] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks += [
                {"type": "tool_use", "id": c.id, "name": names.wire(c.name), "input": c.arguments}
                for c in message.tool_calls
            ]
            conversation.append({"role": "assistant", "content": blocks})
        else:
            block: dict[str, JsonValue] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            if message.is_error:
                block["is_error"] = True
            if results is None:
                results = []
                conversation.append({"role": "user", "content": results})
            results.append(block)
            continue
        results = None
    return system, conversation


def _wire_tool(tool: ToolDefinition, names: WireToolNames) -> dict[str, JsonValue]:
    wire: dict[str, JsonValue] = {"name": names.wire(tool.name)}
    if tool.description:
        wire["description"] = tool.description
    wire["input_schema"] = tool.parameters
    return wire


def _completion(
    data: object,
    where: str,
    key: str | None,
    messages: Sequence[Message],
    idempotency_key: str,
    names: WireToolNames,
) -> Completion:
    content = data.get("content") if isinstance(data, dict) else None
    if not isinstance(content, list):
        raise ProviderUnavailable(f"{where}: the answer has no content")
    assert isinstance(data, dict)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if not isinstance(block, dict) or not isinstance(kind, str):
            raise ProviderUnavailable(f"{where}: content block {index} has no type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise ProviderUnavailable(f"{where}: text block {index} has no text")
            texts.append(text)
        elif kind == "tool_use":
            turn = len(messages)
            call = _tool_call(block, index, where, idempotency_key, turn, len(calls))
            calls.append(call.model_copy(update={"name": names.neutral(call.name)}))
        # Other blocks (thinking, server tools) are not part of the answer.
    text = "".join(texts)
    if data.get("stop_reason") == "refusal" and not calls:
        raise ProviderRejected(f"{where}: the model refused: {redact(excerpt(text), key)}")
    usage = data.get("usage")
    if usage is None:
        said = text + "".join(orjson.dumps(c.in_message()).decode() for c in calls)
        return Completion(
            text,
            input_tokens=estimate_prompt_tokens(messages),
            output_tokens=estimate_tokens(said),
            tool_calls=tuple(calls),
        )
    input_tokens = usage.get("input_tokens") if isinstance(usage, dict) else None
    output_tokens = usage.get("output_tokens") if isinstance(usage, dict) else None
    if not is_count(input_tokens) or not is_count(output_tokens):
        raise ProviderUnavailable(f"{where}: the answer's usage has no valid token counts")
    assert isinstance(input_tokens, int) and isinstance(output_tokens, int)
    return Completion(
        text, input_tokens=input_tokens, output_tokens=output_tokens, tool_calls=tuple(calls)
    )


def _tool_call(
    block: dict[str, object], index: int, where: str, idempotency_key: str, turn: int, nth: int
) -> ToolCall:
    name = block.get("name")
    if not isinstance(name, str) or not name:
        raise ProviderUnavailable(f"{where}: tool_use block {index} has no name")
    given = block.get("id")
    ident = given if isinstance(given, str) and given else call_id(idempotency_key, turn, nth)
    raw = block.get("input")
    error: str | None = None
    if isinstance(raw, dict):
        arguments: dict[str, JsonValue] = raw
    elif isinstance(raw, str):  # not the API's shape, but some compatible servers send text
        arguments, error = parse_arguments(raw)
    elif raw is None:
        arguments = {}
    else:
        arguments, error = {}, f"the arguments are not a JSON object: {excerpt(repr(raw))}"
    return ToolCall(id=ident, name=name, arguments=arguments, arguments_error=error)
