"""The OpenAI Responses API provider.

One ``POST {base_url}/responses`` per call over the shared ``httpx.AsyncClient`` (which must
not retry on its own). The neutral conversation is sent whole every time, with ``store:
false``: baton keeps the conversation in its own run state, so nothing is left on OpenAI's side
and no ``previous_response_id`` is needed.

- system messages become the top-level ``instructions``; user and assistant messages become
  ``message`` input items; an assistant turn's tool calls become ``function_call`` items
  (``call_id``, ``name``, JSON-text ``arguments``) and each tool result a
  ``function_call_output`` item naming the same ``call_id``;
- tools are flat ``{type: function, name, description, parameters, strict}``; ``strict`` is
  true only when the schema already keeps OpenAI's strict rules (``fits_strict``), and always
  sent: a tool's default is strict, and the API refuses a strict schema that breaks them;
- an output schema is ``text.format = {type: json_schema, name, schema, strict}``;
- ``max_output_tokens`` caps visible and reasoning tokens together; ``temperature`` is sent
  only when the route ``accepts_temperature`` (reasoning models refuse one).

The answer's ``message`` items give the text (their ``output_text`` parts joined), its
``function_call`` items the neutral ``ToolCall``s; ``reasoning`` and other items are not part
of the answer. Usage gives ``input_tokens``/``output_tokens`` and the cached and reasoning
parts of them. A response whose ``status`` is ``incomplete`` or ``failed`` is an error,
classified below; HTTP errors are classified as the chat-completions provider does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx
import orjson
from pydantic import JsonValue

from processors._catalog import RouteSpec
from processors._errors import ProviderRateLimited, ProviderRejected, ProviderUnavailable
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
    error_code,
    estimate_prompt_tokens,
    estimate_tokens,
    excerpt,
    is_count,
    origin,
    parse_arguments,
    post_json,
    provider_message,
    read_json,
    redact,
)
from topics import ConfigurationError

__all__ = ["ResponsesProvider", "fits_strict"]

_PATH = "/responses"
_FORMAT_NAME = "output"

# OpenAI's strict mode accepts a subset of JSON Schema: these keywords, these formats, every
# object closed (``additionalProperties: false``) with every property required, at most this
# deep. A schema outside it is sent with ``strict: false`` rather than refused by the API.
_STRICT_KEYWORDS = frozenset(
    {
        "$defs",
        "$ref",
        "additionalProperties",
        "anyOf",
        "const",
        "definitions",
        "description",
        "enum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "format",
        "items",
        "maxItems",
        "maximum",
        "minItems",
        "minimum",
        "multipleOf",
        "pattern",
        "properties",
        "required",
        "title",
        "type",
    }
)
_STRICT_FORMATS = frozenset(
    {"date", "date-time", "duration", "email", "hostname", "ipv4", "ipv6", "time", "uuid"}
)
_STRICT_MAX_DEPTH = 10

# ``error.code`` of a failed response that another try may get past.
_FAILED_RETRYABLE = frozenset({"server_error", "vector_store_timeout"})


class ResponsesProvider:
    """Responses over the OpenAI Responses API (or a server speaking its wire format).

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
        """Ask the route's model for one response (see ``Provider.complete``).

        Raises:
            ProviderTimeout: No answer within ``route.timeout_s``.
            ProviderUnavailable: Connection errors, HTTP 408/409/5xx, a response that failed
                with ``server_error``, a body that is not a response.
            ProviderRateLimited: HTTP 429 (``retry_after`` from ``Retry-After``), or a
                response that failed with ``rate_limit_exceeded``.
            ProviderRejected: Any other 4xx (an exhausted quota's 429 too), a response cut
                off (``incomplete``) or failed for any other reason, or a refusal.
            ConfigurationError: The route's key variable is unset or its URL is unusable.
        """
        if route.base_url is None:
            raise ConfigurationError(
                f"model {route.model!r}: an openai-responses route needs base_url"
            )
        url = route.base_url.rstrip("/") + _PATH
        where = f"model {route.model!r} at {origin(url, _PATH)}"
        key = api_key(route, self._environ, where)
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        names = WireToolNames.of(tools, messages)
        instructions, items = _wire_input(messages, names)
        body: dict[str, JsonValue] = {"model": route.model}
        if instructions:
            body["instructions"] = "\n\n".join(instructions)
        body["input"] = items
        body["store"] = False
        if route.accepts_temperature:
            body["temperature"] = temperature
        cap = route.output_cap(max_tokens)
        if cap is not None:
            body["max_output_tokens"] = cap
        if output_schema is not None:
            body["text"] = {
                "format": {
                    "type": "json_schema",
                    "name": _FORMAT_NAME,
                    "schema": dict(output_schema),
                    "strict": fits_strict(output_schema),
                }
            }
        if tools:
            body["tools"] = [_wire_tool(t, names) for t in tools]
        response = await post_json(
            self._client, url, body, headers, timeout=route.timeout_s, where=where, key=key
        )
        if response.status_code == 429 and error_code(response) == "insufficient_quota":
            # OpenAI says 429 for an exhausted quota too; waiting does not refill it.
            message = provider_message(response, key)
            raise ProviderRejected(f"{where}: HTTP 429: {message}", status=429)
        check_status(response, where, key)
        data = read_json(response, where, key)
        return _completion(data, where, key, messages, idempotency_key, names)


def fits_strict(schema: Mapping[str, JsonValue]) -> bool:
    """Whether OpenAI's strict mode accepts ``schema`` as it is.

    The root must be an object schema; every object in it closed with
    ``additionalProperties: false`` and every property listed in ``required``; only the
    keywords and formats strict mode supports; at most ten levels deep. Baton never rewrites a
    schema to fit (that would change what it allows): one that does not fit goes non-strict.
    """
    return schema.get("type") == "object" and _strict_node(dict(schema), 0)


def _strict_node(node: JsonValue, depth: int) -> bool:
    if not isinstance(node, dict) or depth > _STRICT_MAX_DEPTH:
        return False
    if not set(node) <= _STRICT_KEYWORDS:
        return False
    if "format" in node and node["format"] not in _STRICT_FORMATS:
        return False
    if "$ref" in node and not (isinstance(node["$ref"], str) and node["$ref"].startswith("#")):
        return False
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "object" in kinds or "properties" in node:
        properties = node.get("properties", {})
        required = node.get("required", [])
        if not isinstance(properties, dict) or not isinstance(required, list):
            return False
        if node.get("additionalProperties") is not False:
            return False
        if len(required) != len(properties) or set(required) != set(properties):
            return False
        if not all(_strict_node(p, depth + 1) for p in properties.values()):
            return False
    elif "required" in node or "additionalProperties" in node:
        return False
    if "items" in node and not _strict_node(node["items"], depth + 1):
        return False
    branches = node.get("anyOf", [])
    if not isinstance(branches, list) or not all(_strict_node(b, depth + 1) for b in branches):
        return False
    for defs in ("$defs", "definitions"):
        table = node.get(defs, {})
        if not isinstance(table, dict) or not all(
            _strict_node(d, depth + 1) for d in table.values()
        ):
            return False
    return True


def _wire_input(
    messages: Sequence[Message], names: WireToolNames
) -> tuple[list[str], list[JsonValue]]:
    """The system texts, and the rest of the conversation as Responses input items."""
    instructions: list[str] = []
    items: list[JsonValue] = []
    for message in messages:
        if isinstance(message, ChatMessage):
            if message.role == "system":
                instructions.append(message.content)
            else:
                items.append({"type": "message", "role": message.role, "content": message.content})
        elif isinstance(message, ToolCallMessage):
            if message.content:
                items.append({"type": "message", "role": "assistant", "content": message.content})
            items += [
                {
                    "type": "function_call",
                    "call_id": call.id,
                    "name": names.wire(call.name),
                    "arguments": orjson.dumps(call.arguments).decode(),
                }
                for call in message.tool_calls
            ]
        else:
            # The API has no error flag on a result: the content says it failed.
            items.append(
                {
                    "type": "function_call_output",
                    "call_id": message.tool_call_id,
                    "output": message.content,
                }
            )
    return instructions, items


def _wire_tool(tool: ToolDefinition, names: WireToolNames) -> dict[str, JsonValue]:
    wire: dict[str, JsonValue] = {"type": "function", "name": names.wire(tool.name)}
    if tool.description:
        wire["description"] = tool.description
    wire["parameters"] = tool.parameters
    wire["strict"] = fits_strict(tool.parameters)
    return wire


def _completion(
    data: object,
    where: str,
    key: str | None,
    messages: Sequence[Message],
    idempotency_key: str,
    names: WireToolNames,
) -> Completion:
    if not isinstance(data, dict):
        raise ProviderUnavailable(f"{where}: the answer is not a response object")
    status = data.get("status")
    if status == "failed":
        raise _failed(data.get("error"), where, key)
    if status == "incomplete":
        raise _incomplete(data, where)
    if status not in (None, "completed"):
        # Without ``background`` a response is answered finished; anything else is unusable.
        raise ProviderUnavailable(f"{where}: the response is {excerpt(repr(status))}, not done")
    output = data.get("output")
    if not isinstance(output, list):
        raise ProviderUnavailable(f"{where}: the answer has no output")
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[ToolCall] = []
    for index, item in enumerate(output):
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(item, dict) or not isinstance(kind, str):
            raise ProviderUnavailable(f"{where}: output item {index} has no type")
        if kind == "message":
            _read_message(item, index, where, texts, refusals)
        elif kind == "function_call":
            turn = len(messages)
            call = _tool_call(item, index, where, idempotency_key, turn, len(calls))
            calls.append(call.model_copy(update={"name": names.neutral(call.name)}))
        # reasoning and built-in tool items are the model's own business, not the answer.
    text = "".join(texts)
    if refusals and not text and not calls:
        refusal = redact(excerpt(" ".join(refusals)), key)
        raise ProviderRejected(f"{where}: the model refused: {refusal}")
    usage = data.get("usage")
    if usage is None:
        # Some compatible servers leave usage out; estimate so budgets still see the call.
        said = text + "".join(orjson.dumps(c.in_message()).decode() for c in calls)
        return Completion(
            text,
            input_tokens=estimate_prompt_tokens(messages),
            output_tokens=estimate_tokens(said),
            tool_calls=tuple(calls),
        )
    input_tokens, output_tokens, cached, reasoning = _usage(usage, where)
    return Completion(
        text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        tool_calls=tuple(calls),
        cached_input_tokens=cached,
        reasoning_tokens=reasoning,
    )


def _read_message(
    item: dict[str, object], index: int, where: str, texts: list[str], refusals: list[str]
) -> None:
    content = item.get("content")
    if not isinstance(content, list):
        raise ProviderUnavailable(f"{where}: message item {index} has no content")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "output_text":
            assert isinstance(part, dict)
            text = part.get("text")
            if not isinstance(text, str):
                raise ProviderUnavailable(f"{where}: message item {index} has a text without text")
            texts.append(text)
        elif kind == "refusal":
            assert isinstance(part, dict)
            refusal = part.get("refusal")
            refusals.append(refusal if isinstance(refusal, str) else "")


def _tool_call(
    item: dict[str, object], index: int, where: str, idempotency_key: str, turn: int, nth: int
) -> ToolCall:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ProviderUnavailable(f"{where}: function_call item {index} has no name")
    # ``call_id`` is what the result must name; ``id`` is only the item's own id.
    given = item.get("call_id")
    ident = given if isinstance(given, str) and given else call_id(idempotency_key, turn, nth)
    arguments = item.get("arguments")
    error: str | None = None
    if isinstance(arguments, str):
        parsed, error = parse_arguments(arguments)
    elif isinstance(arguments, dict):  # not the API's shape, but some compatible servers
        parsed = arguments
    elif arguments is None:
        parsed = {}
    else:
        parsed, error = {}, "the arguments are not JSON text"
    return ToolCall(id=ident, name=name, arguments=parsed, arguments_error=error)


def _usage(usage: object, where: str) -> tuple[int, int, int, int]:
    """Input, output, cached input and reasoning tokens; the details count 0 when absent."""
    if not isinstance(usage, dict):
        raise ProviderUnavailable(f"{where}: the answer's usage has no valid token counts")
    input_tokens = usage.get("input_tokens")
    output_tokens = usage.get("output_tokens")
    cached = _detail(usage, "input_tokens_details", "cached_tokens")
    reasoning = _detail(usage, "output_tokens_details", "reasoning_tokens")
    counts = (input_tokens, output_tokens, cached, reasoning)
    if not all(is_count(c) for c in counts):
        raise ProviderUnavailable(f"{where}: the answer's usage has no valid token counts")
    assert isinstance(input_tokens, int) and isinstance(output_tokens, int)
    assert isinstance(cached, int) and isinstance(reasoning, int)
    if cached > input_tokens or reasoning > output_tokens:
        raise ProviderUnavailable(f"{where}: the answer's usage counts more parts than the whole")
    return input_tokens, output_tokens, cached, reasoning


def _detail(usage: dict[str, object], details: str, name: str) -> object:
    table = usage.get(details)
    if table is None:
        return 0
    if not isinstance(table, dict):
        return None  # not a count: the caller refuses it
    value = table.get(name, 0)
    return 0 if value is None else value


def _failed(error: object, where: str, key: str | None) -> Exception:
    """The error a ``failed`` response stands for, by its ``error.code``."""
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    said = redact(excerpt(message), key) if isinstance(message, str) else "(no message)"
    reason = f"the response failed ({code}): {said}" if isinstance(code, str) else None
    if reason is None:
        return ProviderUnavailable(f"{where}: the response failed without saying why: {said}")
    if code == "rate_limit_exceeded":
        return ProviderRateLimited(f"{where}: {reason}")
    if code in _FAILED_RETRYABLE:
        return ProviderUnavailable(f"{where}: {reason}")
    # invalid_prompt and the image errors: the same input fails the same way.
    return ProviderRejected(f"{where}: {reason}")


def _incomplete(data: dict[str, object], where: str) -> ProviderRejected:
    """The error an ``incomplete`` response stands for: the same call stops the same way."""
    details = data.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if reason == "max_output_tokens":
        usage = data.get("usage")
        spent = ""
        if isinstance(usage, dict) and is_count(usage.get("output_tokens")):
            reasoning = _detail(usage, "output_tokens_details", "reasoning_tokens")
            spent = f" after {usage['output_tokens']} output tokens"
            if is_count(reasoning) and reasoning:
                spent += f", {reasoning} of them reasoning"
        return ProviderRejected(
            f"{where}: the answer was cut off at max_output_tokens{spent}: raise the step's "
            "max_tokens or the route's max_output_tokens"
        )
    if reason == "content_filter":
        return ProviderRejected(f"{where}: the answer was stopped by the content filter")
    named = excerpt(reason) if isinstance(reason, str) else "no reason given"
    return ProviderRejected(f"{where}: the response is incomplete ({named})")
