"""The OpenAI-compatible chat-completions provider (OpenAI, vLLM, Ollama, LM Studio).

One ``POST {base_url}/chat/completions`` per call over a shared ``httpx.AsyncClient``. The
client must not retry on its own (the default transport does not): the LLM processor owns the
one retry layer, driven by how this module classifies every failure.

Tools go out as ``tools: [{type: function, function: {name, description, parameters}}]``;
the model's ``message.tool_calls`` come back as neutral ``ToolCall``s, their JSON-text
arguments parsed. Follow-up turns carry the assistant's ``tool_calls`` and one
``{role: tool, tool_call_id, content}`` message per result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
import orjson
from pydantic import JsonValue

from processors._catalog import RouteSpec
from processors._errors import ProviderRejected, ProviderUnavailable
from processors._provider import (
    ChatMessage,
    Completion,
    Message,
    TextCallback,
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
    parse_retry_after,
    post_json,
    provider_message,
    read_json,
    redact,
)
from processors._sse import StreamBudget, event_stream
from topics import ConfigurationError, loads_json

__all__ = ["OpenAIProvider", "parse_retry_after"]

_PATH = "/chat/completions"


class OpenAIProvider:
    """Chat completions over any OpenAI-compatible HTTP API.

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
        """Ask the route's model for one completion (see ``Provider.complete``).

        Raises:
            ProviderTimeout: No answer within ``route.timeout_s``.
            ProviderUnavailable: Connection errors, HTTP 408/409/5xx, a body that is not a
                chat completion.
            ProviderRateLimited: HTTP 429 (``retry_after`` from ``Retry-After``).
            ProviderRejected: Any other 4xx, or the model refused to answer.
            ConfigurationError: The route's key variable is unset or its URL is unusable.
        """
        call = self._call(route, messages, temperature, max_tokens, output_schema, tools)
        response = await post_json(
            self._client,
            call.url,
            call.body,
            call.headers,
            timeout=route.timeout_s,
            where=call.where,
            key=call.key,
        )
        return self._answer(response, call, messages, idempotency_key)

    async def stream(
        self,
        route: RouteSpec,
        messages: Sequence[Message],
        *,
        temperature: float,
        max_tokens: int | None,
        output_schema: Mapping[str, JsonValue] | None,
        idempotency_key: str,
        tools: Sequence[ToolDefinition] | None = None,
        on_text: TextCallback,
    ) -> Completion:
        """The same completion, streamed: ``stream: true``, the text handed to ``on_text``.

        The chunks (``data:`` lines, ``data: [DONE]`` last; usage in the last chunk, asked
        for with ``stream_options.include_usage``) are merged into the chat completion the
        call would have answered whole, which is then read exactly as ``complete`` reads it.

        Raises:
            ProviderUnavailable: As ``complete``; also an ``error`` chunk, or a stream that
                ends (or is cut) before ``[DONE]``.
            JsonLimitExceeded: The answer is over the JSON size limit.
            ProviderTimeout, ProviderRateLimited, ProviderRejected, ConfigurationError: As
                ``complete``.
        """
        call = self._call(route, messages, temperature, max_tokens, output_schema, tools)
        body: dict[str, JsonValue] = {
            **call.body,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with event_stream(
            self._client,
            call.url,
            body,
            call.headers,
            timeout=route.timeout_s,
            where=call.where,
            key=call.key,
        ) as (response, events):
            if events is None:  # answered whole (or an error): read as request/response
                completion = self._answer(response, call, messages, idempotency_key)
                if completion.text:
                    await on_text(completion.text)
                return completion
            merged = _Merged(call.where, call.key)
            async for event in events:
                if event.data.strip() == "[DONE]":
                    break
                delta = merged.add(event.data)
                if delta:
                    await on_text(delta)
            else:
                raise ProviderUnavailable(f"{call.where}: the stream ended before [DONE]")
        return _completion(
            merged.completion(), call.where, call.key, messages, idempotency_key, call.names
        )

    def _call(
        self,
        route: RouteSpec,
        messages: Sequence[Message],
        temperature: float,
        max_tokens: int | None,
        output_schema: Mapping[str, JsonValue] | None,
        tools: Sequence[ToolDefinition] | None,
    ) -> _Call:
        if route.base_url is None:
            raise ConfigurationError(f"model {route.model!r}: an openai route needs base_url")
        url = route.base_url.rstrip("/") + _PATH
        where = f"model {route.model!r} at {origin(url, _PATH)}"
        key = api_key(route, self._environ, where)
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        names = WireToolNames.of(tools, messages)
        body: dict[str, JsonValue] = {
            "model": route.model,
            "messages": [_wire_message(m, names) for m in messages],
            "temperature": temperature,
        }
        cap = route.output_cap(max_tokens)
        if cap is not None:
            body["max_tokens"] = cap
        if output_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": dict(output_schema), "strict": False},
            }
        if tools:
            body["tools"] = [_wire_tool(t, names) for t in tools]
        return _Call(url, where, key, headers, names, body)

    def _answer(
        self,
        response: httpx.Response,
        call: _Call,
        messages: Sequence[Message],
        idempotency_key: str,
    ) -> Completion:
        where, key = call.where, call.key
        if response.status_code == 429 and _error_code(response) == "insufficient_quota":
            # OpenAI says 429 for an exhausted quota too; waiting does not refill it.
            message = provider_message(response, key)
            raise ProviderRejected(f"{where}: HTTP 429: {message}", status=429)
        check_status(response, where, key)
        data = read_json(response, where, key)
        return _completion(data, where, key, messages, idempotency_key, call.names)


@dataclass(frozen=True)
class _Call:
    """One call as it goes out: where, with which key and headers, and its body."""

    url: str
    where: str
    key: str | None
    headers: dict[str, str]
    names: WireToolNames
    body: dict[str, JsonValue]


class _Merged:
    """The chat completion a stream of chunks adds up to (the first choice, and usage)."""

    def __init__(self, where: str, key: str | None) -> None:
        self._where = where
        self._key = key
        self._budget = StreamBudget(where)
        self._content: list[str] | None = None
        self._refusal: list[str] | None = None
        self._calls: dict[int, dict[str, str]] = {}
        self._usage: JsonValue = None

    def add(self, data: str) -> str:
        """Merge one chunk (a ``data:`` payload); the text it adds.

        Raises:
            ProviderUnavailable: The chunk is not JSON, or it is an error.
        """
        try:
            chunk = loads_json(data, what=f"{self._where}: a stream chunk")
        except orjson.JSONDecodeError:
            raise ProviderUnavailable(
                f"{self._where}: a stream chunk is not JSON: {redact(excerpt(data), self._key)!r}"
            ) from None
        if not isinstance(chunk, dict):
            raise ProviderUnavailable(f"{self._where}: a stream chunk is not an object")
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            text = redact(excerpt(str(message)), self._key) or "(no message)"
            raise ProviderUnavailable(f"{self._where}: error in the stream: {text}")
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        delta = first.get("delta") if isinstance(first, dict) else None
        if not isinstance(delta, dict):
            return ""
        for index, raw in enumerate(delta.get("tool_calls") or []):
            self._tool_call(index, raw)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            self._budget.keep(refusal)
            self._refusal = self._refusal or []
            self._refusal.append(refusal)
        content = delta.get("content")
        if not isinstance(content, str):
            return ""
        self._budget.keep(content)
        self._content = self._content or []
        self._content.append(content)
        return content

    def _tool_call(self, position: int, raw: object) -> None:
        if not isinstance(raw, dict):
            raise ProviderUnavailable(f"{self._where}: a streamed tool call is not an object")
        index = raw.get("index", position)
        if not isinstance(index, int):
            raise ProviderUnavailable(f"{self._where}: a streamed tool call has no index")
        call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        if isinstance(raw.get("id"), str) and not call["id"]:
            call["id"] = raw["id"]
        function = raw.get("function")
        if isinstance(function, dict):
            for part in ("name", "arguments"):
                piece = function.get(part)
                if isinstance(piece, str):
                    self._budget.keep(piece)
                    call[part] += piece

    def completion(self) -> dict[str, JsonValue]:
        """The merged answer, in the shape of a whole chat completion."""
        message: dict[str, JsonValue] = {
            "role": "assistant",
            "content": "".join(self._content) if self._content is not None else None,
        }
        if self._refusal is not None:
            message["refusal"] = "".join(self._refusal)
        if self._calls:
            message["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for _, call in sorted(self._calls.items())
            ]
        answer: dict[str, JsonValue] = {"choices": [{"index": 0, "message": message}]}
        if self._usage is not None:
            answer["usage"] = self._usage
        return answer


def _wire_message(message: Message, names: WireToolNames) -> dict[str, JsonValue]:
    if isinstance(message, ChatMessage):
        return {"role": message.role, "content": message.content}
    if isinstance(message, ToolCallMessage):
        return {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": names.wire(call.name),
                        "arguments": orjson.dumps(call.arguments).decode(),
                    },
                }
                for call in message.tool_calls
            ],
        }
    return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}


def _wire_tool(tool: ToolDefinition, names: WireToolNames) -> dict[str, JsonValue]:
    function: dict[str, JsonValue] = {"name": names.wire(tool.name)}
    if tool.description:
        function["description"] = tool.description
    function["parameters"] = tool.parameters
    return {"type": "function", "function": function}


def _completion(
    data: object,
    where: str,
    key: str | None,
    messages: Sequence[Message],
    idempotency_key: str,
    names: WireToolNames,
) -> Completion:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ProviderUnavailable(f"{where}: the answer has no choices")
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        raise ProviderUnavailable(f"{where}: the answer's first choice has no message")
    raw_calls = message.get("tool_calls")
    turn = len(messages)
    calls = _tool_calls(raw_calls, where, idempotency_key, turn, names) if raw_calls else ()
    content = message.get("content")
    if content is None and not calls:
        if isinstance(message.get("refusal"), str):
            refusal = redact(excerpt(message["refusal"]), key)
            raise ProviderRejected(f"{where}: the model refused: {refusal}")
        raise ProviderUnavailable(f"{where}: the answer's message has no text content")
    if content is not None and not isinstance(content, str):
        raise ProviderUnavailable(f"{where}: the answer's message has no text content")
    text = content or ""
    assert isinstance(data, dict)
    usage = data.get("usage")
    if usage is None:
        # Some local servers leave usage out; estimate so budgets still see the call.
        said = text + "".join(orjson.dumps(c.in_message()).decode() for c in calls)
        return Completion(
            text,
            input_tokens=estimate_prompt_tokens(messages),
            output_tokens=estimate_tokens(said),
            tool_calls=calls,
        )
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not is_count(prompt_tokens) or not is_count(completion_tokens):
        raise ProviderUnavailable(f"{where}: the answer's usage has no valid token counts")
    assert isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)
    return Completion(
        text, input_tokens=prompt_tokens, output_tokens=completion_tokens, tool_calls=calls
    )


def _tool_calls(
    raw: object, where: str, idempotency_key: str, turn: int, names: WireToolNames
) -> tuple[ToolCall, ...]:
    if not isinstance(raw, list):
        raise ProviderUnavailable(f"{where}: the answer's tool_calls is not a list")
    calls = []
    for index, item in enumerate(raw):
        function = item.get("function") if isinstance(item, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ProviderUnavailable(f"{where}: tool call {index} has no function name")
        assert isinstance(item, dict) and isinstance(function, dict)
        given = item.get("id")
        ident = given if isinstance(given, str) and given else call_id(idempotency_key, turn, index)
        arguments = function.get("arguments")
        error: str | None = None
        if isinstance(arguments, dict):  # a few local servers send the object itself
            parsed: dict[str, JsonValue] = arguments
        elif isinstance(arguments, str):
            parsed, error = parse_arguments(arguments)
        elif arguments is None:
            parsed = {}
        else:
            parsed, error = {}, "the arguments are not JSON text"
        calls.append(
            ToolCall(id=ident, name=names.neutral(name), arguments=parsed, arguments_error=error)
        )
    return tuple(calls)


def _error_code(response: httpx.Response) -> str | None:
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
