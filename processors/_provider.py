"""The one interface every model provider implements, what it is asked and what it answers.

Conversations, tools and tool calls have one provider-neutral shape here; each provider
translates it to its wire format and back. The second half holds what the HTTP providers
share: reading the key, posting, and classifying every failure into baton's error tree.
"""

from __future__ import annotations

import email.utils
import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag

from processors._catalog import TOOL_NAME, RouteSpec
from processors._errors import (
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from processors._http import read_at_most
from topics import ConfigurationError, JsonLimitExceeded, loads_json

__all__ = [
    "MAX_ANSWER_BYTES",
    "ChatMessage",
    "Completion",
    "TextCallback",
    "Message",
    "Provider",
    "StreamingProvider",
    "ToolCall",
    "ToolCallMessage",
    "ToolDefinition",
    "ToolResultMessage",
    "WireToolNames",
    "api_key",
    "call_id",
    "check_status",
    "error_code",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "excerpt",
    "is_count",
    "message_text",
    "origin",
    "parse_arguments",
    "parse_retry_after",
    "post_json",
    "read_json",
    "redact",
    "transport_errors",
]

#: The largest (non-streamed) answer read from a model provider. Larger than ``MAX_JSON_BYTES``:
#: a long answer is bounded by ``max_tokens``, and with claim checks on it travels by
#: reference (docs/payloads.md); without them a result over the record limit still fails.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_MAX_MESSAGE = 300
_MAX_ERROR_BODY = 64 * 1024
_WIRE_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})
_REDACTED = "[redacted]"
_WIRE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_WIRE_MAX = 64


class _Neutral(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ChatMessage(_Neutral):
    """One message of a chat conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


def _empty_object_schema() -> dict[str, JsonValue]:
    return {"type": "object", "properties": {}}


class ToolDefinition(_Neutral):
    """A tool offered to the model: what it is called, what it does, what it takes."""

    name: str = Field(
        pattern=TOOL_NAME,
        description="The registry's name: letters, digits, '.', '_' or '-' (at most 64).",
    )
    description: str = Field(default="", description="What the tool does, for the model.")
    parameters: dict[str, JsonValue] = Field(
        default_factory=_empty_object_schema,
        description="JSON Schema of the arguments (an object schema).",
    )


class ToolCall(_Neutral):
    """A tool call the model asked for.

    ``arguments_error`` says why the call cannot be made as asked: providers set it when the
    model's arguments cannot be read (they are then ``{}``), the agent processor when the tool
    was not offered or the arguments break its schema. Such a call is not made; the error is
    fed back to the model as the call's result instead.
    """

    id: str = Field(min_length=1, description="The call's id; its result names it.")
    name: str = Field(description="The tool's name, as the model asked for it.")
    arguments: dict[str, JsonValue] = Field(default_factory=dict, description="The arguments.")
    arguments_error: str | None = Field(
        default=None, description="Why the call cannot be made as asked; null when it can."
    )

    def in_message(self) -> dict[str, JsonValue]:
        """The call as an assistant message carries it: ``{id, name, arguments}``."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


class ToolCallMessage(_Neutral):
    """An assistant message that made tool calls (and may have said something too)."""

    role: Literal["assistant"]
    content: str | None = Field(default=None, description="What the model said beside them.")
    tool_calls: list[ToolCall] = Field(min_length=1, description="The calls, in order.")


class ToolResultMessage(_Neutral):
    """What one tool call returned."""

    role: Literal["tool"]
    tool_call_id: str = Field(min_length=1, description="The id of the call it answers.")
    name: str = Field(description="The tool's name.")
    content: str = Field(description="The result as JSON text, or an error message.")
    is_error: bool = Field(
        default=False, description="The content is an error (Anthropic is told so)."
    )


def _message_kind(value: Any) -> str:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    if role == "tool":
        return "tool_result"
    if isinstance(value, dict):
        calls = value.get("tool_calls")
    else:
        calls = getattr(value, "tool_calls", None)
    return "tool_calls" if role == "assistant" and calls is not None else "chat"


#: One message of a conversation, in the neutral shape every provider translates.
Message = Annotated[
    Annotated[ChatMessage, Tag("chat")]
    | Annotated[ToolCallMessage, Tag("tool_calls")]
    | Annotated[ToolResultMessage, Tag("tool_result")],
    Discriminator(_message_kind),
]


@dataclass(frozen=True)
class Completion:
    """A model's answer to one call.

    Attributes:
        text: The answer as the model wrote it (``""`` when it only asked for tool calls).
        input_tokens: Prompt tokens billed, cached ones included.
        output_tokens: Completion tokens billed, reasoning ones included.
        tool_calls: The tool calls the model asked for, in its order.
        cached_input_tokens: How many of ``input_tokens`` the provider's prompt cache served
            (priced at the route's ``cached_input_usd_per_mtok``); 0 when it does not say.
        reasoning_tokens: How many of ``output_tokens`` the model spent reasoning, unseen;
            0 when it does not say.
    """

    text: str
    input_tokens: int
    output_tokens: int
    tool_calls: tuple[ToolCall, ...] = ()
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0


#: Where a streaming provider hands each piece of the answer's text, as it arrives.
TextCallback = Callable[[str], Awaitable[None]]


class Provider(Protocol):
    """A model provider: one chat completion per call, errors classified.

    Implementations raise only errors of baton's tree (``ProviderTimeout``,
    ``ProviderUnavailable``, ``ProviderRateLimited``, ``ProviderRejected``,
    ``ConfigurationError``) and never retry on their own: the caller owns the one retry layer.
    """

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
        """Ask the route's model for one completion.

        Args:
            route: Where the call goes (provider, model, timeout, prices).
            messages: The conversation, templates already rendered.
            temperature: Sampling temperature.
            max_tokens: Cap on completion tokens, or ``None`` for the route's
                ``max_output_tokens`` (then the provider's default).
            output_schema: JSON Schema the answer should follow, or ``None`` for free text.
            idempotency_key: Stable across retries of the step.
            tools: Tools the model may ask to call, or ``None`` for none.
        """
        ...


@runtime_checkable
class StreamingProvider(Protocol):
    """A provider that can also stream: the same completion, its text handed on as it comes.

    ``stream`` returns exactly the ``Completion`` that ``complete`` would for the same
    answer (text, tool calls, usage) and raises the same errors, classified the same way: a
    connection cut or an ``error`` event mid-stream is as retryable as a 5xx. ``on_text``
    gets each piece of the answer's text in order; the pieces join to ``Completion.text``.
    """

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
        """Ask the route's model for one completion, streamed (see ``Provider.complete``)."""
        ...


def estimate_tokens(text: str) -> int:
    """A deterministic token count for text whose real count is unknown: ~4 chars a token."""
    return max(1, math.ceil(len(text) / 4))


def message_text(message: ChatMessage | ToolCallMessage | ToolResultMessage) -> str:
    """A message's text, tool calls written out as JSON (for estimates and scripts)."""
    if isinstance(message, ToolCallMessage):
        calls = orjson.dumps([c.in_message() for c in message.tool_calls]).decode()
        return f"{message.content}\n{calls}" if message.content else calls
    return message.content


def estimate_prompt_tokens(
    messages: Sequence[ChatMessage | ToolCallMessage | ToolResultMessage],
) -> int:
    """The estimated prompt tokens of a conversation: each message's text, estimated."""
    return sum(estimate_tokens(message_text(m)) for m in messages)


def is_count(value: object) -> bool:
    """Whether ``value`` is a token count a provider may report: an int, not negative."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_arguments(text: str) -> tuple[dict[str, JsonValue], str | None]:
    """A tool call's JSON arguments text read into an object, or ``{}`` and why not.

    Raises:
        JsonLimitExceeded: The arguments nest deeper or are larger than baton accepts.
    """
    if not text.strip():
        return {}, None  # some servers send "" for a call without arguments
    try:
        value = loads_json(text, what="the tool call's arguments")
    except orjson.JSONDecodeError as exc:
        return {}, f"the arguments are not JSON: {exc} (arguments: {excerpt(text)!r})"
    if not isinstance(value, dict):
        return {}, f"the arguments are not a JSON object: {excerpt(text)!r}"
    return value, None


def call_id(idempotency_key: str, turn: int, index: int) -> str:
    """A deterministic tool-call id, for calls the model did not give one.

    The same step (``idempotency_key``), conversation length (``turn``) and position
    (``index``) always give the same id, so a retried call names its calls as before.
    """
    digest = hashlib.sha256(f"{idempotency_key}\x00{turn}\x00{index}".encode()).hexdigest()
    return f"call_{digest[:24]}"


# -- shared by the HTTP providers --------------------------------------------------------------


class WireToolNames:
    """Tool names as the OpenAI and Anthropic wire formats allow them, and back.

    Registry names may hold '.', which neither API accepts in a tool name: each character it
    does not accept becomes '_', and a name that would then clash with another gets a
    numbered suffix. Names the APIs accept are sent as they are. The mapping depends only on
    the names, so every turn of a conversation sends the same ones.

    Args:
        names: Every tool name of the call: the tools offered and those in past calls.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._wire: dict[str, str] = {}
        self._neutral: dict[str, str] = {}
        # Names that are already safe first, so they keep their spelling.
        for name in sorted(set(names), key=lambda n: (_WIRE_UNSAFE.search(n) is not None, n)):
            base = _WIRE_UNSAFE.sub("_", name)[:_WIRE_MAX]
            wire, count = base, 1
            while wire in self._neutral:
                count += 1
                suffix = f"_{count}"
                wire = base[: _WIRE_MAX - len(suffix)] + suffix
            self._wire[name] = wire
            self._neutral[wire] = name

    @classmethod
    def of(
        cls, tools: Sequence[ToolDefinition] | None, messages: Sequence[Message]
    ) -> WireToolNames:
        """The names of a call's tools and of the tool calls and results in its messages."""
        names = [t.name for t in tools or ()]
        for message in messages:
            if isinstance(message, ToolCallMessage):
                names += [c.name for c in message.tool_calls]
            elif isinstance(message, ToolResultMessage):
                names.append(message.name)
        return cls(names)

    def wire(self, name: str) -> str:
        """The name to send."""
        return self._wire.get(name) or _WIRE_UNSAFE.sub("_", name)[:_WIRE_MAX]

    def neutral(self, wire: str) -> str:
        """The registry name of a name the model sent (unknown names are kept as sent)."""
        return self._neutral.get(wire, wire)


def api_key(route: RouteSpec, environ: Mapping[str, str], where: str) -> str | None:
    """The route's API key from ``environ``, or ``None`` when the route names no variable.

    Raises:
        ConfigurationError: The route names a variable that is unset or empty.
    """
    if route.api_key_env is None:
        return None
    key = environ.get(route.api_key_env)
    if not key:
        raise ConfigurationError(f"{where}: the API key variable {route.api_key_env} is not set")
    return key


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: Mapping[str, JsonValue],
    headers: Mapping[str, str],
    *,
    timeout: float,
    where: str,
    key: str | None,
) -> httpx.Response:
    """POST ``body`` as JSON; a transport failure becomes one of baton's errors.

    The answer is read as it streams in, and no further than ``MAX_ANSWER_BYTES``: a larger
    success is refused without holding it in memory (an error's body is kept cut short, it
    only gives a message).

    Raises:
        ProviderTimeout: No answer within ``timeout`` (connect, write, read or pool).
        ProviderUnavailable: The connection failed, was reset or closed without an answer.
        ConfigurationError: The URL is unusable.
        JsonLimitExceeded: A success answer larger than ``MAX_ANSWER_BYTES``.
    """
    sent = {"Content-Type": "application/json", "Accept": "application/json", **headers}
    content = orjson.dumps(body)
    with transport_errors(where, timeout, key):
        async with client.stream(
            "POST", url, content=content, headers=sent, timeout=timeout
        ) as streamed:
            answer, complete = await read_at_most(streamed, MAX_ANSWER_BYTES)
    if not complete and 200 <= streamed.status_code < 300:
        raise JsonLimitExceeded(
            f"{where}: the answer is over {MAX_ANSWER_BYTES} bytes, the answer size limit"
        )
    # The body as read (decoded): the headers that described it on the wire go.
    kept = [
        (name, value)
        for name, value in streamed.headers.multi_items()
        if name.lower() not in _WIRE_HEADERS
    ]
    return httpx.Response(
        streamed.status_code, headers=kept, content=answer, request=streamed.request
    )


@contextmanager
def transport_errors(where: str, timeout: float, key: str | None) -> Iterator[None]:
    """Turn the HTTP client's transport failures inside the block into baton's errors.

    Raises:
        ProviderTimeout: No answer (or no next bytes of one) within ``timeout``.
        ProviderUnavailable: The connection failed, was reset or closed without an answer.
        ConfigurationError: The URL is unusable.
    """
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderTimeout(
            f"{where}: no answer within {timeout:g} s ({type(exc).__name__})"
        ) from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise ConfigurationError(f"{where}: unusable base_url: {exc}") from None
    except httpx.RequestError as exc:
        detail = redact(str(exc), key)
        reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        raise ProviderUnavailable(f"{where}: {reason}") from None


def check_status(response: httpx.Response, where: str, key: str | None) -> None:
    """Classify a response that is not a success; return quietly on a 2xx.

    Raises:
        ProviderRateLimited: HTTP 429 (``retry_after`` from ``Retry-After``).
        ProviderUnavailable: HTTP 408, 409 or 5xx (Anthropic's 529 "overloaded" too).
        ProviderRejected: Any other status outside 2xx, with the provider's own message.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    message = provider_message(response, key)
    if status == 429:
        raise ProviderRateLimited(
            f"{where}: HTTP 429 (rate limited): {message}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status in (408, 409) or status >= 500:
        raise ProviderUnavailable(f"{where}: HTTP {status}: {message}")
    raise ProviderRejected(f"{where}: HTTP {status}: {message}", status=status)


def read_json(response: httpx.Response, where: str, key: str | None) -> object:
    """A successful response's JSON body, within ``MAX_JSON_DEPTH`` and ``MAX_ANSWER_BYTES``.

    Raises:
        ProviderUnavailable: The body is not JSON.
        JsonLimitExceeded: The body nests deeper or is larger than baton accepts (permanent:
            the same call would answer the same way).
    """
    try:
        return loads_json(response.content, what=f"{where}: the answer", max_bytes=MAX_ANSWER_BYTES)
    except orjson.JSONDecodeError:
        raise ProviderUnavailable(
            f"{where}: HTTP {response.status_code} with a body that is not JSON: "
            f"{redact(excerpt(response.text), key)!r}"
        ) from None


def provider_message(response: httpx.Response, key: str | None) -> str:
    """The provider's own explanation, from the error shapes servers use.

    OpenAI and Anthropic: ``{"error": {"message": ...}}``; Ollama: ``{"error": "..."}``;
    older vLLM: ``{"message": ...}``; FastAPI-style servers: ``{"detail": "..."}``. Only the
    body's first ``_MAX_ERROR_BODY`` bytes are read: the message is an excerpt anyway.
    """
    body = response.content[:_MAX_ERROR_BODY]
    text = body.decode("utf-8", errors="replace")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
        elif isinstance(data.get("message"), str):
            text = data["message"]
        elif isinstance(data.get("detail"), str):
            text = data["detail"]
    return redact(excerpt(text), key) or "(no message)"


def error_code(response: httpx.Response) -> str | None:
    """The ``error.code`` of OpenAI's error shape (e.g. ``insufficient_quota``), if any."""
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delay-seconds or an HTTP date.

    Args:
        value: The header's value, or ``None`` when absent.
        now: The current Unix time (defaults to the clock), for HTTP dates.

    Returns:
        Seconds to wait (never negative), or ``None`` when absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def excerpt(text: str) -> str:
    """Text on one line, cut to a length fit for an error message."""
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def redact(text: str, key: str | None) -> str:
    """``text`` with the key replaced: it must never reach a message or a log."""
    # Some servers echo what they were sent.
    return text.replace(key, _REDACTED) if key else text


def origin(url: str, path: str) -> str:
    """Scheme, host, port and API root of ``url`` (``path`` taken off): never credentials."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path.removesuffix(path)}"
