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
from dataclasses import dataclass

import httpx
import orjson
from pydantic import JsonValue

from processors._catalog import DEFAULT_ANTHROPIC_MAX_TOKENS, RouteSpec
from processors._errors import ProviderRateLimited, ProviderRejected, ProviderUnavailable
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
    post_json,
    read_json,
    redact,
)
from processors._sse import StreamBudget, event_stream
from topics import ConfigurationError, loads_json

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
        check_status(response, call.where, call.key)
        data = read_json(response, call.where, call.key)
        return _completion(data, call.where, call.key, messages, idempotency_key, call.names)

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
        """The same message, streamed: ``stream: true``, the text handed to ``on_text``.

        The events (``message_start``, ``content_block_start``/``_delta``/``_stop`` with
        ``text_delta`` and ``input_json_delta``, ``message_delta`` with the stop reason and
        usage, ``message_stop``; ``ping`` ignored) are merged into the message the call
        would have answered whole, which is then read exactly as ``complete`` reads it.

        Raises:
            ProviderUnavailable: As ``complete``; also an ``error`` event (other than those
                below), or a stream that ends (or is cut) before ``message_stop``.
            ProviderRateLimited: An ``error`` event of type ``rate_limit_error``.
            ProviderRejected: An ``error`` event that says the request is at fault
                (``invalid_request_error``, ``authentication_error``, ...).
            JsonLimitExceeded: The answer is over the JSON size limit.
            ProviderTimeout, ConfigurationError: As ``complete``.
        """
        call = self._call(route, messages, temperature, max_tokens, output_schema, tools)
        body: dict[str, JsonValue] = {**call.body, "stream": True}
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
                check_status(response, call.where, call.key)
                data = read_json(response, call.where, call.key)
                completion = _completion(
                    data, call.where, call.key, messages, idempotency_key, call.names
                )
                if completion.text:
                    await on_text(completion.text)
                return completion
            merged = _Merged(call.where, call.key)
            async for event in events:
                delta = merged.add(event.event, event.data)
                if delta:
                    await on_text(delta)
                if merged.stopped:
                    break
            else:
                raise ProviderUnavailable(f"{call.where}: the stream ended before message_stop")
        return _completion(
            merged.message(), call.where, call.key, messages, idempotency_key, call.names
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
        return _Call(url, where, key, headers, names, body)


@dataclass(frozen=True)
class _Call:
    """One call as it goes out: where, with which key and headers, and its body."""

    url: str
    where: str
    key: str | None
    headers: dict[str, str]
    names: WireToolNames
    body: dict[str, JsonValue]


#: Stream ``error`` types, as the HTTP status the same error has as a whole answer.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class _Merged:
    """The message a stream of events adds up to."""

    def __init__(self, where: str, key: str | None) -> None:
        self._where = where
        self._key = key
        self._budget = StreamBudget(where)
        self._message: dict[str, JsonValue] | None = None
        self._blocks: dict[int, dict[str, JsonValue]] = {}
        self._json: dict[int, list[str]] = {}
        self._usage: dict[str, JsonValue] = {}
        self._stop: JsonValue = None
        self.stopped = False

    def add(self, event: str, data: str) -> str:
        """Merge one event; the text it adds.

        Raises:
            ProviderUnavailable, ProviderRateLimited, ProviderRejected: An ``error`` event,
                classified as its HTTP status would be; or an event that is not JSON.
        """
        try:
            value = loads_json(data, what=f"{self._where}: a stream event")
        except orjson.JSONDecodeError:
            raise ProviderUnavailable(
                f"{self._where}: a stream event is not JSON: {redact(excerpt(data), self._key)!r}"
            ) from None
        payload = value if isinstance(value, dict) else {}
        kind = payload.get("type", event)
        if kind == "error":
            self._error(payload.get("error"))
        elif kind == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict):
                raise ProviderUnavailable(f"{self._where}: message_start has no message")
            self._message = message
            if isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
        elif kind == "content_block_start":
            block = payload.get("content_block")
            index = payload.get("index")
            if not isinstance(block, dict) or not isinstance(index, int):
                raise ProviderUnavailable(f"{self._where}: a content block starts without one")
            self._blocks[index] = dict(block)
            first = block.get("text")
            if block.get("type") == "text" and isinstance(first, str):
                self._budget.keep(first)
                return first
        elif kind == "content_block_delta":
            return self._delta(payload)
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and "stop_reason" in delta:
                self._stop = delta["stop_reason"]
            if isinstance(payload.get("usage"), dict):
                self._usage.update(payload["usage"])  # cumulative counts: the last wins
        elif kind == "message_stop":
            self.stopped = True
        return ""  # ping, content_block_stop, and events this reader does not know

    def _delta(self, payload: dict[str, JsonValue]) -> str:
        index, delta = payload.get("index"), payload.get("delta")
        block = self._blocks.get(index) if isinstance(index, int) else None
        if block is None or not isinstance(delta, dict) or not isinstance(index, int):
            raise ProviderUnavailable(f"{self._where}: a delta for a block that did not start")
        text, piece = delta.get("text"), delta.get("partial_json")
        if delta.get("type") == "text_delta" and isinstance(text, str):
            self._budget.keep(text)
            block["text"] = str(block.get("text", "")) + text
            return text
        if delta.get("type") == "input_json_delta" and isinstance(piece, str):
            self._budget.keep(piece)
            self._json.setdefault(index, []).append(piece)
        return ""  # thinking and signature deltas are not part of the answer

    def _error(self, error: JsonValue) -> None:
        kind = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        text = redact(excerpt(str(message)), self._key) if message else "(no message)"
        status = _ERROR_STATUS.get(kind, 500) if isinstance(kind, str) else 500
        described = f"{self._where}: error in the stream ({kind or 'unknown'}): {text}"
        if status == 429:
            raise ProviderRateLimited(described)
        if status >= 500:
            raise ProviderUnavailable(described)
        raise ProviderRejected(described, status=status)

    def message(self) -> dict[str, JsonValue]:
        """The merged answer, in the shape of a whole message."""
        if self._message is None:
            raise ProviderUnavailable(f"{self._where}: the stream has no message_start")
        content: list[JsonValue] = []
        for index, block in sorted(self._blocks.items()):
            if block.get("type") == "tool_use":
                block = {**block, "input": _streamed_input(block, self._json.get(index))}
            content.append(block)
        message = {**self._message, "content": content, "stop_reason": self._stop}
        if self._usage:
            message["usage"] = dict(self._usage)
        return message


def _streamed_input(block: dict[str, JsonValue], pieces: list[str] | None) -> JsonValue:
    """A tool_use block's input: its JSON pieces joined and read, or the text when unreadable.

    Text that is not a JSON object is handed on as text, so the call gets the
    ``arguments_error`` an unreadable input gets as a whole answer.
    """
    if not pieces:
        return block.get("input") or {}
    text = "".join(pieces)
    if not text.strip():
        return {}
    try:
        value = loads_json(text, what="the tool call's arguments")
    except orjson.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


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
