"""The ``llm`` processor, and the model call it shares with the ``agent`` processor.

``ModelClient`` is the one way a processor calls a model: it looks the route up in the
catalog, picks its provider, guards the call with the provider's circuit breaker, runs the one
retry layer, and prices the usage. Retryable errors are tried again in-process (tenacity) a
few times, waiting what ``Retry-After`` asked for or backing off exponentially with jitter;
permanent errors never are. When the far side asks for a longer wait than this processor will
sit out, or the step's deadline would pass, the failure is reported at once with its
``retry_after`` so the coordinator can schedule a delayed retry instead.

With a response cache (``processors._cache``), ``ModelClient.answer`` serves a repeated call
from it: no provider call, no tokens, no cost, and the original call's cost reported as
``saved_usd`` -- unless the entry is the same step attempt's own answer (its worker died
after caching it): then the hit is charged as the call it was, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from processors._anthropic import AnthropicProvider
from processors._breaker import Breakers
from processors._cache import ResponseCache, cache_key, cacheable
from processors._catalog import ModelCatalog, RouteSpec
from processors._errors import CircuitOpen, OutputSchemaViolation
from processors._openai import OpenAIProvider
from processors._processor import StepOutput, parse_params
from processors._provider import (
    ChatMessage,
    Completion,
    Message,
    Provider,
    StreamingProvider,
    ToolCall,
    ToolDefinition,
)
from processors._responses import ResponsesProvider
from processors._schema import check_schema, schema_problems
from processors._scripted import ScriptedProvider
from processors._streaming import current_stream
from topics import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    CachedToolCall,
    CacheEntry,
    ConfigurationError,
    JsonLimitExceeded,
    RetryableError,
    StepKind,
    StepRequested,
    Usage,
    check_json,
)

__all__ = [
    "LlmParams",
    "LlmProcessor",
    "ModelClient",
    "ModelProcessor",
    "default_providers",
    "parse_json_answer",
    "structured_answer",
]

logger = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 10.0
_BACKOFF_JITTER = 0.2
_T = TypeVar("_T")
_FENCED = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n(?P<body>.*?)\r?\n?[ \t]*```", re.DOTALL)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LlmParams(BaseModel):
    """What the coordinator sends an ``llm`` step (templates already rendered).

    ``temperature`` defaults to 0, which makes the call cacheable: a repeated call is served
    from the response cache unless ``cache`` is false.
    """

    model_config = ConfigDict(frozen=True)

    route: str = Field(min_length=1, description="Route name in the model catalog.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature.")
    max_tokens: int | None = Field(default=None, ge=1, description="Cap on completion tokens.")
    output_schema: dict[str, JsonValue] | None = Field(
        default=None, description="JSON Schema the answer must satisfy; the output is the JSON."
    )
    cache: bool = Field(
        default=True,
        description="Whether a repeated call may be answered from the response cache "
        "(only at temperature 0).",
    )


def default_providers(
    http_client: httpx.AsyncClient, environ: Mapping[str, str]
) -> dict[str, Provider]:
    """Every provider baton ships, by the catalog's ``provider`` name."""
    return {
        "openai": OpenAIProvider(http_client, environ),
        "openai-responses": ResponsesProvider(http_client, environ),
        "anthropic": AnthropicProvider(http_client, environ),
        "scripted": ScriptedProvider(),
    }


class ModelClient:
    """Calls the model of a catalog route: breaker, the one retry layer, usage priced.

    Args:
        catalog: The model catalog routes are looked up in.
        http_client: Shared client for HTTP providers; it must not retry on its own.
        environ: Where API keys are read, by the variable names routes give.
        providers: Providers by catalog ``provider`` name (defaults to ``default_providers``).
        sleep: How waits between in-process retries are spent.
        clock: The current time, to keep retries inside the step's deadline.
        max_retry_wait: The longest single wait (seconds) sat out in-process; a longer
            ``Retry-After`` ends the attempt and is left to the coordinator's delayed retry.
        breakers: The circuit breakers, shared by every processor of the worker that calls
            models (a new set when not given).
        cache: The response cache ``answer`` uses; ``None``: every call goes to the model.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        http_client: httpx.AsyncClient,
        environ: Mapping[str, str],
        *,
        providers: Mapping[str, Provider] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = _utcnow,
        max_retry_wait: float = 30.0,
        breakers: Breakers | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self._catalog = catalog
        self._cache = cache
        self.breakers = breakers or Breakers()
        self._providers: Mapping[str, Provider] = providers or default_providers(
            http_client, environ
        )
        self._sleep = sleep
        self._clock = clock
        self._max_retry_wait = max_retry_wait

    def route(self, name: str) -> RouteSpec:
        """The route called ``name``.

        Raises:
            UnknownRoute: The catalog has no such route.
        """
        return self._catalog.route(name)

    async def answer(
        self,
        request: StepRequested,
        route_name: str,
        messages: Sequence[Message],
        *,
        temperature: float,
        max_tokens: int | None,
        output_schema: Mapping[str, JsonValue] | None,
        read: Callable[[Completion, Usage], _T],
        tools: Sequence[ToolDefinition] | None = None,
        cache: bool = True,
    ) -> tuple[_T, Usage]:
        """The step's output from one completion: the cached one for this call, else the model's.

        A hit makes no provider call; its usage has no tokens and no cost, ``cached`` set,
        ``saved_usd`` what the original call cost, and the provider and model that answered
        it; a hit on this same attempt's own entry is charged instead (``_hit_usage``).
        After a miss, the answer is cached once ``read`` has accepted it, so an answer
        that breaks the output schema is never served again.

        Args:
            request: The step the call is for.
            route_name: The route to call.
            messages: The conversation.
            temperature: Sampling temperature (only 0 is cached).
            max_tokens: Cap on completion tokens, or ``None`` for the route's.
            output_schema: JSON Schema the answer must satisfy, if any.
            read: Turns a completion (and its usage) into the step's output; raises when the
                answer is unusable.
            tools: Tools the model may ask to call.
            cache: Whether this step may use the cache (it is used only when the client has
                one and the call is cacheable: see ``processors._cache``).

        Returns:
            What ``read`` returned, and the usage.

        Raises:
            UnknownRoute: The route is not in the catalog.
            ConfigurationError: The route's provider is not available here, or its config
                is unusable.
            RetryableError: Still failing after the in-process retries (its subclasses say how).
            PermanentError: The provider refused the call, or ``read`` refused the answer.
        """
        route = self._catalog.route(route_name)
        store = self._cache if cache and cacheable(route, temperature) else None
        key = None
        if store is not None:
            key = cache_key(
                route_name,
                route,
                messages,
                temperature=temperature,
                max_tokens=max_tokens,
                output_schema=output_schema,
                tools=tools,
            )
            entry = await store.get(key)
            if entry is not None:
                usage = _hit_usage(entry, request, route_name)
                return read(_completion_of(entry), usage), usage
        completion, usage = await self.complete(
            request,
            route_name,
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            output_schema=output_schema,
            tools=tools,
        )
        output = read(completion, usage)
        if store is not None and key is not None:
            await store.put(_entry_of(key, completion, usage, self._clock(), origin_of(request)))
        return output, usage

    async def complete(
        self,
        request: StepRequested,
        route_name: str,
        messages: Sequence[Message],
        *,
        temperature: float,
        max_tokens: int | None,
        output_schema: Mapping[str, JsonValue] | None,
        tools: Sequence[ToolDefinition] | None = None,
    ) -> tuple[Completion, Usage]:
        """One completion on ``route_name`` for the step ``request``, retried as it may be.

        Always calls the model: ``answer`` is the same call with the response cache in front.

        Returns:
            The completion, and what it used and cost (exactly, from the catalog's prices).

        Raises:
            UnknownRoute: The route is not in the catalog.
            ConfigurationError: The route's provider is not available here, or its config
                is unusable.
            RetryableError: Still failing after the in-process retries (its subclasses say how).
            PermanentError: The provider refused the call.
        """
        route = self._catalog.route(route_name)
        provider = self._providers.get(route.provider)
        if provider is None:
            raise ConfigurationError(f"no {route.provider!r} provider in this worker")

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > route.retries:
                return True
            if state.upcoming_sleep > self._max_retry_wait:
                return True
            return self._clock() + timedelta(seconds=state.upcoming_sleep) >= request.deadline_at

        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            logger.warning(
                "run %s step %s: %s; try %d of %d in %.2f s",
                request.run_id,
                request.step,
                error,
                state.attempt_number + 1,
                route.retries + 1,
                state.upcoming_sleep,
            )

        retrying = AsyncRetrying(
            # An open circuit is not waited out here: the coordinator falls back instead.
            retry=retry_if_exception(
                lambda e: isinstance(e, RetryableError) and not isinstance(e, CircuitOpen)
            ),
            stop=stop,
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        endpoint = f"{route.provider}:{route.base_url or route_name}"

        async def guarded() -> Completion:
            self.breakers.before_call(endpoint, route.breaker_failures, route.breaker_cooldown_s)
            try:
                result = await _call(
                    provider,
                    route,
                    messages,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    output_schema=output_schema,
                    idempotency_key=request.idempotency_key,
                    tools=tools,
                )
            except BaseException as exc:
                self.breakers.after_call(endpoint, route.breaker_failures, exc)
                raise
            self.breakers.after_call(endpoint, route.breaker_failures, None)
            return result

        # Most calls succeed at once: tenacity is entered only after a first retryable
        # failure, which it is handed as its first attempt's outcome (no extra call), so
        # the attempts, waits and logs are exactly those of retrying from the start.
        first: RetryableError | None = None
        try:
            completion = await guarded()
        except RetryableError as exc:
            if isinstance(exc, CircuitOpen):
                raise
            first = exc
        if first is not None:
            pending: list[RetryableError] = [first]

            async def again() -> Completion:
                if pending:
                    raise pending.pop()
                return await guarded()

            completion = await retrying(again)
        usage = Usage(
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            cost_usd=route.cost(
                completion.input_tokens,
                completion.output_tokens,
                cached_input_tokens=completion.cached_input_tokens,
            ),
            route=route_name,
            provider=route.provider,
            model=route.model,
        )
        return completion, usage

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryableError) and error.retry_after is not None:
            return error.retry_after
        # Exponential from 0.2 s, capped, plus jitter so callers that failed together spread.
        backoff = min(_BACKOFF_FIRST * 2.0 ** (state.attempt_number - 1), _BACKOFF_MAX)
        return backoff + random.uniform(0, _BACKOFF_JITTER)


async def _call(
    provider: Provider,
    route: RouteSpec,
    messages: Sequence[Message],
    *,
    temperature: float,
    max_tokens: int | None,
    output_schema: Mapping[str, JsonValue] | None,
    idempotency_key: str,
    tools: Sequence[ToolDefinition] | None,
) -> Completion:
    """One provider call: streamed to the attempt's text stream when the route says so.

    A provider that cannot stream answers whole, and its text goes out as one piece.
    """
    stream = current_stream() if route.stream else None
    if stream is None:
        return await provider.complete(
            route,
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            output_schema=output_schema,
            idempotency_key=idempotency_key,
            tools=tools,
        )
    on_text = stream.call()
    if isinstance(provider, StreamingProvider):
        completion = await provider.stream(
            route,
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            output_schema=output_schema,
            idempotency_key=idempotency_key,
            tools=tools,
            on_text=on_text,
        )
    else:
        completion = await provider.complete(
            route,
            messages,
            temperature=temperature,
            max_tokens=max_tokens,
            output_schema=output_schema,
            idempotency_key=idempotency_key,
            tools=tools,
        )
        if completion.text:
            await on_text(completion.text)
    await stream.finish()
    return completion


def origin_of(request: StepRequested) -> str:
    """The step attempt a call is made for, as a cache entry records it."""
    return f"{request.idempotency_key}@{request.attempt}"


def _hit_usage(entry: CacheEntry, request: StepRequested, route_name: str) -> Usage:
    """What a cache hit used: nothing (a saving), or the call itself when it was this attempt's.

    An entry this very attempt made means the attempt is running again: the worker that
    called the model cached the answer and then died or was fenced before its result
    counted. That call was made and paid for once, for this run, and nothing has charged it
    yet; the hit charges it (``cached``, nothing saved), so the run's usage and budget are
    the same as if the worker had not died. Any other hit was paid for by another call.
    """
    if entry.origin == origin_of(request):
        logger.info(
            "run %s step %s: its attempt %d runs again; the answer it paid for is in the cache",
            request.run_id,
            request.step,
            request.attempt,
        )
        return Usage(
            input_tokens=entry.input_tokens,
            output_tokens=entry.output_tokens,
            cost_usd=entry.cost_usd,
            route=route_name,
            provider=entry.provider,
            model=entry.model,
            cached=True,
        )
    logger.debug(
        "run %s step %s: answered from the cache (saved $%s)",
        request.run_id,
        request.step,
        entry.cost_usd,
    )
    return Usage(
        route=route_name,
        provider=entry.provider,
        model=entry.model,
        cached=True,
        saved_usd=entry.cost_usd,
    )


def _entry_of(
    key: str, completion: Completion, usage: Usage, now: datetime, origin: str
) -> CacheEntry:
    return CacheEntry(
        key=key,
        route=usage.route or "",
        provider=usage.provider or "",
        model=usage.model or "",
        text=completion.text,
        tool_calls=[CachedToolCall(**call.model_dump()) for call in completion.tool_calls],
        input_tokens=completion.input_tokens,
        output_tokens=completion.output_tokens,
        cost_usd=usage.cost_usd,
        created_at=now,
        origin=origin,
    )


def _completion_of(entry: CacheEntry) -> Completion:
    return Completion(
        text=entry.text,
        input_tokens=entry.input_tokens,
        output_tokens=entry.output_tokens,
        tool_calls=tuple(ToolCall.model_validate(call.model_dump()) for call in entry.tool_calls),
    )


class ModelProcessor:
    """What the processors that call models (``llm``, ``agent``) are built from: a ModelClient.

    Args:
        catalog: The model catalog routes are looked up in.
        http_client: Shared client for HTTP providers; it must not retry on its own.
        environ: Where API keys are read, by the variable names routes give.
        providers: Providers by catalog ``provider`` name (defaults to ``default_providers``).
        sleep: How waits between in-process retries are spent.
        clock: The current time, to keep retries inside the step's deadline.
        max_retry_wait: The longest single wait (seconds) sat out in-process; a longer
            ``Retry-After`` ends the attempt and is left to the coordinator's delayed retry.
        breakers: The circuit breakers (share one set between the model processors).
        cache: The response cache (share one between the model processors); ``None``: none.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        http_client: httpx.AsyncClient,
        environ: Mapping[str, str],
        *,
        providers: Mapping[str, Provider] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = _utcnow,
        max_retry_wait: float = 30.0,
        breakers: Breakers | None = None,
        cache: ResponseCache | None = None,
    ) -> None:
        self._model = ModelClient(
            catalog,
            http_client,
            environ,
            providers=providers,
            sleep=sleep,
            clock=clock,
            max_retry_wait=max_retry_wait,
            breakers=breakers,
            cache=cache,
        )
        self.breakers = self._model.breakers


class LlmProcessor(ModelProcessor):
    """Runs ``llm`` steps (constructed as ``ModelProcessor``)."""

    kind = StepKind.llm

    async def run(self, request: StepRequested) -> StepOutput:
        """Call the step's route (or answer from the cache) and check the answer.

        Raises:
            InvalidParams: The params are not an llm step's.
            UnknownRoute: The route is not in the catalog.
            ConfigurationError: The output schema is not a JSON Schema, or the route's
                provider is not available here.
            OutputSchemaViolation: The answer is not JSON or does not match the schema.
            RetryableError: Still failing after the in-process retries (its subclasses say how).
            PermanentError: The provider refused the call.
        """
        params = parse_params(LlmParams, request)
        self._model.route(params.route)
        if params.output_schema is not None:
            check_schema(params.output_schema)  # before the call: a bad schema costs nothing
        schema = params.output_schema

        def read(completion: Completion, usage: Usage) -> JsonValue:
            if schema is None:
                return completion.text
            answer: JsonValue = structured_answer(completion.text, schema, usage)
            return answer

        output, usage = await self._model.answer(
            request,
            params.route,
            params.messages,
            temperature=params.temperature,
            max_tokens=params.max_tokens,
            output_schema=schema,
            read=read,
            cache=params.cache,
        )
        return StepOutput(output, usage)


def structured_answer(text: str, schema: Mapping[str, JsonValue], usage: Usage) -> Any:
    """The JSON in an answer, checked against the step's output schema.

    Raises:
        OutputSchemaViolation: The answer is not JSON, is over the JSON limits (the message
            names the limit), or does not match ``schema``; it carries ``usage``, as the call
            was billed all the same.
    """
    try:
        answer = parse_json_answer(text)
    except (ValueError, JsonLimitExceeded) as exc:
        raise OutputSchemaViolation(str(exc), usage=usage) from None
    problems = schema_problems(schema, answer, "output")
    if problems:
        raise OutputSchemaViolation(
            "the answer does not match the output schema: " + "; ".join(problems), usage=usage
        )
    return answer


def parse_json_answer(text: str) -> Any:
    """The JSON in a model's answer: the whole text, or the first fenced ```json block.

    Raises:
        ValueError: There is no JSON to read (the message says why and where).
        JsonLimitExceeded: The answer is larger than ``MAX_JSON_BYTES``, or its JSON nests
            deeper than ``MAX_JSON_DEPTH``.
    """
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > MAX_JSON_BYTES:
        raise JsonLimitExceeded(
            f"the answer is {size} bytes, over the JSON limit of {MAX_JSON_BYTES}"
        )
    try:
        return _loads(text)
    except ValueError as exc:
        fenced = _FENCED.search(text)
        if fenced is not None:
            try:
                return _loads(fenced.group("body"))
            except ValueError as inner:
                raise ValueError(f"the answer's ```json block is not JSON: {inner}") from None
        excerpt = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"the answer is not JSON: {exc} (answer: {excerpt!r})") from None


def _loads(text: str) -> Any:
    # The stdlib parser for its messages (the model reads them on a retry), bounded: it
    # recurses per level, so nesting past Python's stack is a limit, not a crash.
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JsonLimitExceeded(
            f"the answer nests deeper than the limit of {MAX_JSON_DEPTH} levels"
        ) from None
    check_json(value, what="the answer")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
