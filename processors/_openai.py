"""The OpenAI-compatible chat-completions provider (OpenAI, vLLM, Ollama, LM Studio).

One ``POST {base_url}/chat/completions`` per call over a shared ``httpx.AsyncClient``. The
client must not retry on its own (the default transport does not): the LLM processor owns the
one retry layer, driven by how this module classifies every failure.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC

import httpx
import orjson
from pydantic import JsonValue

from processors._catalog import RouteSpec
from processors._errors import (
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from processors._provider import ChatMessage, Completion, estimate_tokens
from topics import ConfigurationError

__all__ = ["OpenAIProvider", "parse_retry_after"]

_MAX_MESSAGE = 300
_REDACTED = "[redacted]"


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
        messages: Sequence[ChatMessage],
        *,
        temperature: float,
        max_tokens: int | None,
        output_schema: Mapping[str, JsonValue] | None,
        idempotency_key: str,
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
        if route.base_url is None:
            raise ConfigurationError(f"model {route.model!r}: an openai route needs base_url")
        url = route.base_url.rstrip("/") + "/chat/completions"
        where = f"model {route.model!r} at {_origin(url)}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key: str | None = None
        if route.api_key_env is not None:
            key = self._environ.get(route.api_key_env)
            if not key:
                raise ConfigurationError(
                    f"{where}: the API key variable {route.api_key_env} is not set"
                )
            headers["Authorization"] = f"Bearer {key}"
        body: dict[str, JsonValue] = {
            "model": route.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": temperature,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if output_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": dict(output_schema), "strict": False},
            }
        try:
            response = await self._client.post(
                url, content=orjson.dumps(body), headers=headers, timeout=route.timeout_s
            )
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"{where}: no answer within {route.timeout_s:g} s ({type(exc).__name__})"
            ) from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConfigurationError(f"{where}: unusable base_url: {exc}") from None
        except httpx.RequestError as exc:
            detail = _redact(str(exc), key)
            reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            raise ProviderUnavailable(f"{where}: {reason}") from None
        return _read(response, where, key, messages)


def _read(
    response: httpx.Response, where: str, key: str | None, messages: Sequence[ChatMessage]
) -> Completion:
    status = response.status_code
    if status == 429:
        message = _provider_message(response, key)
        if _error_code(response) == "insufficient_quota":
            # OpenAI says 429 for an exhausted quota too; waiting does not refill it.
            raise ProviderRejected(f"{where}: HTTP 429: {message}", status=status)
        raise ProviderRateLimited(
            f"{where}: HTTP 429 (rate limited): {message}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status in (408, 409) or status >= 500:
        message = _provider_message(response, key)
        raise ProviderUnavailable(f"{where}: HTTP {status}: {message}")
    if status < 200 or status >= 300:
        message = _provider_message(response, key)
        raise ProviderRejected(f"{where}: HTTP {status}: {message}", status=status)
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise ProviderUnavailable(
            f"{where}: HTTP {status} with a body that is not JSON: "
            f"{_redact(_excerpt(response.text), key)!r}"
        ) from None
    return _completion(data, where, key, messages)


def _completion(
    data: object, where: str, key: str | None, messages: Sequence[ChatMessage]
) -> Completion:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        raise ProviderUnavailable(f"{where}: the answer has no choices")
    first = choices[0]
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        raise ProviderUnavailable(f"{where}: the answer's first choice has no message")
    content = message.get("content")
    if content is None and isinstance(message.get("refusal"), str):
        refusal = _redact(_excerpt(message["refusal"]), key)
        raise ProviderRejected(f"{where}: the model refused: {refusal}")
    if not isinstance(content, str):
        raise ProviderUnavailable(f"{where}: the answer's message has no text content")
    assert isinstance(data, dict)
    usage = data.get("usage")
    if usage is None:
        # Some local servers leave usage out; estimate so budgets still see the call.
        prompt = sum(estimate_tokens(m.content) for m in messages)
        return Completion(content, input_tokens=prompt, output_tokens=estimate_tokens(content))
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if not _is_count(prompt_tokens) or not _is_count(completion_tokens):
        raise ProviderUnavailable(f"{where}: the answer's usage has no valid token counts")
    assert isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)
    return Completion(content, input_tokens=prompt_tokens, output_tokens=completion_tokens)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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


def _provider_message(response: httpx.Response, key: str | None) -> str:
    """The provider's own explanation, from the shapes OpenAI-compatible servers use."""
    text = response.text
    try:
        data = orjson.loads(response.content)
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
    return _redact(_excerpt(text), key) or "(no message)"


def _error_code(response: httpx.Response) -> str | None:
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _redact(text: str, key: str | None) -> str:
    # Some servers echo what they were sent; the key must never reach a message or a log.
    return text.replace(key, _REDACTED) if key else text


def _origin(url: str) -> str:
    """Scheme, host and port only: credentials in a URL never reach a message."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(invalid URL)"
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}{parsed.path.removesuffix('/chat/completions')}"
