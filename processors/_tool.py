"""The ``tool`` processor: one call of a registered tool per attempt, and the HTTP exchange.

An HTTP tool's request is rendered from its templates, pinned to its ``base_url`` (refused,
never sent, if it would leave it), and sent with the step's idempotency key as
``Idempotency-Key``, the same on every attempt and retry, so a repeated call has one effect.
Secrets are read from the environment when the call is made and redacted from every error,
log line and answer, even when the far side echoes them back.

An MCP tool (``SERVER.TOOL``) is called over its server's connection (``processors._mcp``),
after the same argument check and through the same retry layer, its idempotency key in the
request's ``_meta``.

The one retry layer of a tool call lives here, as in the llm processor: retryable errors are
tried again in-process (tenacity) a few times, waiting what ``Retry-After`` asked for or
backing off exponentially with jitter; a longer wait than this processor sits out, or one
past the step's deadline, ends the attempt with its ``retry_after`` for the coordinator.
The shared httpx client must not retry on its own (the default transport does not).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import math
import random
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import jmespath
import orjson
from jmespath.exceptions import JMESPathError
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from processors._errors import InvalidParams
from processors._http import read_at_most
from processors._openai import parse_retry_after
from processors._processor import STEP_TRACE, StepOutput, parse_params
from processors._schema import schema_problems
from processors._templates import compile_template, is_template, render_value
from processors._tools import (
    PATH_PARAMETER,
    HttpEndpoint,
    HttpToolSpec,
    McpToolSpec,
    ToolFailed,
    ToolRateLimited,
    ToolRegistry,
    ToolRejected,
    ToolRequestRefused,
    ToolTimeout,
    ToolUnavailable,
    accepts_idempotency_key,
    path_parameter,
)
from topics import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    BatonError,
    ConfigurationError,
    JsonLimitExceeded,
    RetryableError,
    StepKind,
    StepRequested,
    loads_json,
)

__all__ = ["HttpAnswer", "HttpCall", "ToolParams", "ToolProcessor", "call_with_retries", "redact"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_V = TypeVar("_V")
_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 10.0
_BACKOFF_JITTER = 0.2
_MAX_MESSAGE = 300
_REDACTED = "[redacted]"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ToolParams(BaseModel):
    """What the coordinator sends a ``tool`` step (templates already rendered)."""

    model_config = ConfigDict(frozen=True)

    tool: str = Field(min_length=1, description="Tool name in the registry.")
    args: dict[str, JsonValue] = Field(
        default_factory=dict, description="The arguments, checked against the tool's schema."
    )


class ToolProcessor:
    """Runs ``tool`` steps.

    Args:
        registry: The tools steps may call.
        http_client: Shared client for HTTP tools; it must not retry on its own.
        environ: Where secrets are read, by the names header templates give.
        sleep: How waits between in-process retries are spent.
        clock: The current time, to keep retries inside the step's deadline.
        max_retry_wait: The longest single wait (seconds) sat out in-process; a longer
            ``Retry-After`` ends the attempt and is left to the coordinator's delayed retry.
    """

    kind = StepKind.tool

    def __init__(
        self,
        registry: ToolRegistry,
        http_client: httpx.AsyncClient,
        environ: Mapping[str, str],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], datetime] = _utcnow,
        max_retry_wait: float = 30.0,
    ) -> None:
        self._registry = registry
        self._client = http_client
        self._environ = environ
        self._sleep = sleep
        self._clock = clock
        self._max_retry_wait = max_retry_wait

    async def run(self, request: StepRequested) -> StepOutput:
        """Call the step's tool with its arguments.

        Raises:
            InvalidParams: The params are not a tool step's, or the arguments break the
                tool's ``args_schema`` (the message names each field).
            UnknownTool: The tool is not registered (the message lists the known ones).
            ToolUnavailable: The tool's MCP server has not been listed and cannot be now.
            ToolRequestRefused: The rendered request would leave the tool's ``base_url``.
            ConfigurationError: A secret's variable is unset.
            RetryableError: Still failing after the in-process retries (its subclasses say how).
            PermanentError: The tool refused the call, or failed (``ToolRejected``,
                ``ToolFailed``, a python tool's own baton error).
        """
        params = parse_params(ToolParams, request)
        spec = await self._registry.lookup(params.tool)
        what = f"tool {params.tool!r}"
        problems = schema_problems(spec.args_schema, params.args, "args")
        if problems:
            raise InvalidParams(f"{what}: " + "; ".join(problems))
        call: Callable[[], Awaitable[JsonValue]]
        if isinstance(spec, HttpToolSpec):
            context = {"args": params.args, "idempotency_key": request.idempotency_key}
            prepared = HttpCall.prepare(spec, context, self._environ, request.idempotency_key, what)
            call = lambda: self._call_http(spec, prepared)  # noqa: E731
        elif isinstance(spec, McpToolSpec):
            servers = self._registry.mcp
            assert servers is not None  # an MCP tool comes from the registry's servers
            trace = STEP_TRACE.get()
            call = lambda: servers.call(  # noqa: E731
                spec, params.args, request.idempotency_key, trace
            )
        else:
            function = self._registry.function(params.tool)
            secrets = tuple(v for v in (self._environ.get(n) for n in spec.secrets) if v)
            call = lambda: _call_python(  # noqa: E731
                function, params.args, request.idempotency_key, spec.timeout_s, what, secrets
            )
        output = await call_with_retries(
            call,
            request=request,
            retries=spec.retries,
            sleep=self._sleep,
            clock=self._clock,
            max_retry_wait=self._max_retry_wait,
        )
        return StepOutput(output)

    async def _call_http(self, spec: HttpToolSpec, prepared: HttpCall) -> JsonValue:
        answer = await prepared.send(self._client)
        if spec.answer is None:
            return redact(answer.value, prepared.secrets)
        if not answer.is_json:
            raise ToolUnavailable(
                f"{prepared.where}: the answer is not JSON, so `answer` cannot select from it"
            )
        try:
            selected: JsonValue = jmespath.search(spec.answer, answer.value)
        except JMESPathError as exc:
            raise ToolFailed(f"{prepared.where}: answer {spec.answer!r}: {exc}") from None
        return redact(selected, prepared.secrets)


# -- python tools -----------------------------------------------------------------------------


async def _call_python(
    function: Callable[..., Any],
    args: dict[str, JsonValue],
    idempotency_key: str,
    timeout_s: float,
    what: str,
    secrets: Sequence[str] = (),
) -> JsonValue:
    """Call a python tool; whatever it raises or answers leaves here redacted and bounded."""
    kwargs = {"idempotency_key": idempotency_key} if accepts_idempotency_key(function) else {}
    arguments = copy.deepcopy(args)  # the tool may change its dict; the request stays as sent
    try:
        async with asyncio.timeout(timeout_s):
            if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
                type(function).__call__
            ):
                result = await function(arguments, **kwargs)
            else:
                # A sync tool may block (files, sockets): keep it off the event loop.
                result = await asyncio.to_thread(function, arguments, **kwargs)
            if inspect.isawaitable(result):
                result = await result
    except TimeoutError:
        raise ToolTimeout(f"{what}: no answer within {timeout_s:g} s") from None
    except BatonError as exc:
        # The tool's own error keeps its class (and retry_after); its text is redacted.
        exc.args = (_excerpt(redact(str(exc), secrets)),)
        raise
    except Exception as exc:
        trace = "".join(traceback.format_exception(exc))
        logger.warning("%s raised:\n%s", what, redact(trace, secrets))
        raise ToolFailed(
            _excerpt(redact(f"{what}: {type(exc).__name__}: {exc}", secrets))
        ) from None
    answer = redact(_json(result, what, "the answer"), secrets)
    try:
        size = len(orjson.dumps(answer))
    except orjson.JSONEncodeError as exc:  # an integer past 64 bits
        raise ToolFailed(f"{what}: the answer is not JSON: {exc}") from None
    if size > MAX_JSON_BYTES:
        raise JsonLimitExceeded(
            f"{what}: the answer is {size} bytes of JSON, over the limit of {MAX_JSON_BYTES}"
        )
    return answer


def _json(value: Any, what: str, where: str, depth: int = 0) -> JsonValue:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ToolFailed(f"{what}: {where} is {value}, which JSON cannot hold")
        return value
    if not isinstance(value, Mapping | list | tuple):
        raise ToolFailed(f"{what}: {where} is a {type(value).__name__}, not JSON")
    if depth >= MAX_JSON_DEPTH:  # also where a value that contains itself ends
        raise JsonLimitExceeded(
            f"{what}: the answer nests deeper than the limit of {MAX_JSON_DEPTH} levels"
        )
    if isinstance(value, Mapping):
        result: dict[str, JsonValue] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ToolFailed(f"{what}: {where} has a key {key!r} that is not a string")
            result[key] = _json(item, what, f"{where}.{key}", depth + 1)
        return result
    return [_json(item, what, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]


# -- the HTTP exchange ------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpAnswer:
    """A 2xx answer.

    Attributes:
        value: The body's JSON; its text when it is not JSON; ``None`` when it is empty.
        is_json: Whether the body was JSON.
    """

    value: JsonValue
    is_json: bool


@dataclass(frozen=True)
class HttpCall:
    """One rendered, pinned HTTP request, ready to send (and send again on retries).

    Attributes:
        method: The HTTP method.
        url: The pinned URL (no query).
        query: Query parameters, in order.
        headers: Every header, secrets included: never log or show these.
        content: The JSON body, if any.
        timeout_s: Seconds the whole exchange may take.
        max_response_bytes: Largest answer read.
        secrets: Secret values to redact from messages and answers.
        where: Names the call in messages: what, method, origin and path (no secrets).
    """

    method: str
    url: httpx.URL
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str]
    content: bytes | None
    timeout_s: float
    max_response_bytes: int
    secrets: tuple[str, ...]
    where: str

    @classmethod
    def prepare(
        cls,
        endpoint: HttpEndpoint,
        context: Mapping[str, Any],
        environ: Mapping[str, str],
        idempotency_key: str,
        what: str,
    ) -> HttpCall:
        """Render an endpoint's templates over ``context`` and pin the URL.

        Args:
            endpoint: The tool or source.
            context: What templates read (``args``..., or ``query`` and ``top_k``).
            environ: Where secrets are read.
            idempotency_key: Sent as ``Idempotency-Key``.
            what: Names the tool or source in messages.

        Raises:
            ToolRequestRefused: The path would leave ``base_url``, a path parameter is empty
                or holds a ``.`` or ``..`` segment, or a header value would break the header
                block or is not ASCII.
            TemplateRenderError: A template fails (a missing argument, a type error).
            InvalidParams: A query value renders to something that is not a scalar or list,
                or a path parameter to something that is not a string or number.
            ConfigurationError: A secret's variable is unset (the message names it).
        """
        url = endpoint.url(_render_path(endpoint.path, context, what), what)
        method = endpoint.method
        where = f"{what} ({method} {_origin(url)}{url.path})"
        secrets: dict[str, str] = {}
        for name in sorted(endpoint.header_secrets()):
            value = environ.get(name)
            if not value:
                raise ConfigurationError(f"{what}: the secret {name} is not set")
            secrets[name] = value
        headers = {"Accept": "application/json", "Idempotency-Key": idempotency_key}
        header_context = {**context, "secrets": secrets}
        for name, template in endpoint.headers.items():
            value = _render_text(template, header_context)
            if value is None:
                continue
            if any(c in value for c in "\r\n\0"):
                raise ToolRequestRefused(f"{where}: header {name} would hold a line break")
            if not value.isascii():
                raise ToolRequestRefused(f"{where}: header {name} would hold non-ASCII text")
            headers[name] = value
        content = None
        if endpoint.body is not None:
            headers["Content-Type"] = "application/json"
            content = orjson.dumps(render_value(endpoint.body, context))
        return cls(
            method=method,
            url=url,
            query=_render_query(endpoint, context, where),
            headers=headers,
            content=content,
            timeout_s=endpoint.timeout_s,
            max_response_bytes=endpoint.max_response_bytes,
            secrets=tuple(v for v in secrets.values() if v),
            where=where,
        )

    async def send(self, client: httpx.AsyncClient) -> HttpAnswer:
        """Send the request once and read a 2xx answer.

        Raises:
            ToolTimeout: No complete answer within ``timeout_s``.
            ToolUnavailable: Connection errors, HTTP 408/409/5xx.
            ToolRateLimited: HTTP 429 (``retry_after`` from ``Retry-After``).
            ToolRejected: Any other 4xx, or a redirect (never followed: it could leave the
                pinned host).
            ToolFailed: The answer is larger than ``max_response_bytes``.
            JsonLimitExceeded: The answer's JSON nests deeper than ``MAX_JSON_DEPTH``.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                async with client.stream(
                    self.method,
                    self.url,
                    params=list(self.query),
                    headers=dict(self.headers),
                    content=self.content,
                    timeout=self.timeout_s,
                    follow_redirects=False,
                ) as response:
                    body, complete = await read_at_most(response, self.max_response_bytes)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise ToolTimeout(
                f"{self.where}: no answer within {self.timeout_s:g} s ({type(exc).__name__})"
            ) from None
        except httpx.RequestError as exc:
            detail = redact(str(exc), self.secrets)
            reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            raise ToolUnavailable(f"{self.where}: {reason}") from None
        return self._classify(response, body, complete)

    def _classify(self, response: httpx.Response, body: bytes, complete: bool) -> HttpAnswer:
        status = response.status_code
        if status == 429:
            raise ToolRateLimited(
                f"{self.where}: HTTP 429 (rate limited): {self._message(body)}",
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status in (408, 409) or status >= 500:
            raise ToolUnavailable(f"{self.where}: HTTP {status}: {self._message(body)}")
        if 300 <= status < 400:
            raise ToolRejected(
                f"{self.where}: HTTP {status}: redirects are not followed", status=status
            )
        if not 200 <= status < 300:
            raise ToolRejected(f"{self.where}: HTTP {status}: {self._message(body)}", status=status)
        if not complete:
            raise ToolFailed(
                f"{self.where}: the answer is larger than {self.max_response_bytes} bytes"
            )
        if not body.strip():
            return HttpAnswer(None, is_json=False)
        try:
            # The body is already within max_response_bytes; its nesting is checked here.
            parsed: JsonValue = loads_json(
                body, what=f"{self.where}: the answer", max_bytes=self.max_response_bytes
            )
        except orjson.JSONDecodeError:
            return HttpAnswer(body.decode("utf-8", errors="replace"), is_json=False)
        return HttpAnswer(parsed, is_json=True)

    def _message(self, body: bytes) -> str:
        """The far side's own explanation, from the usual error shapes, redacted."""
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
        message = redact(_excerpt(" ".join(text.split())), self.secrets)
        return message or "(no message)"


def _render_path(template: str, context: Mapping[str, Any], what: str) -> str:
    """The path with each ``{{ }}`` placeholder's value percent-encoded inside its segment."""
    parts: list[str] = []
    end = 0
    for match in PATH_PARAMETER.finditer(template):
        parts.append(template[end : match.start()])
        value = compile_template(match.group()).render(context)
        if value is None or isinstance(value, dict | list):
            kind = "null" if value is None else f"a {type(value).__name__}"
            raise InvalidParams(
                f"{what}: path parameter {match.group()} is {kind}, not a string or number"
            )
        encoded = path_parameter(value)
        if encoded is None:
            shown = repr(value) if len(str(value)) <= 60 else repr(str(value)[:57] + "...")
            raise ToolRequestRefused(
                f"{what}: path parameter {match.group()} = {shown} refused: a path parameter "
                "may not be empty or hold a '.' or '..' segment"
            )
        parts.append(encoded)
        end = match.end()
    parts.append(template[end:])
    return "".join(parts)


def _render_text(template: str, context: Mapping[str, Any]) -> str | None:
    if not is_template(template):
        return template
    value = compile_template(template).render(context)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else orjson.dumps(value).decode()


def _render_query(
    endpoint: HttpEndpoint, context: Mapping[str, Any], where: str
) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, template in endpoint.query.items():
        value = render_value(template, context) if isinstance(template, str) else template
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if isinstance(item, bool):
                pairs.append((name, "true" if item else "false"))
            elif isinstance(item, str | int | float):
                pairs.append((name, str(item)))
            else:
                raise InvalidParams(
                    f"{where}: query parameter {name} is a {type(item).__name__}, "
                    "not a string, number or list of them"
                )
    return pairs


def _origin(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


def _excerpt(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def redact(value: _V, secrets: Sequence[str]) -> _V:
    """``value`` (text or JSON) with every secret replaced by ``[redacted]``."""
    if not secrets:
        return value
    result: Any = value
    if isinstance(value, str):
        for secret in secrets:
            result = result.replace(secret, _REDACTED)
    elif isinstance(value, dict):
        result = {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    elif isinstance(value, list):
        result = [redact(item, secrets) for item in value]
    return result  # type: ignore[no-any-return]  # the same shape as ``value``


# -- the retry layer --------------------------------------------------------------------------


async def call_with_retries(
    call: Callable[[], Awaitable[_T]],
    *,
    request: StepRequested,
    retries: int,
    sleep: Callable[[float], Awaitable[None]],
    clock: Callable[[], datetime],
    max_retry_wait: float,
) -> _T:
    """Call, retrying retryable errors in-process (the one retry layer of tools and sources).

    Waits what ``Retry-After`` asked for, else backs off exponentially from 0.2 s with jitter.
    Stops after ``retries`` retries, before a wait longer than ``max_retry_wait``, and before
    a wait that would end past the step's deadline; the last error is raised as it is.
    """

    def stop(state: RetryCallState) -> bool:
        if state.attempt_number > retries:
            return True
        if state.upcoming_sleep > max_retry_wait:
            return True
        return clock() + timedelta(seconds=state.upcoming_sleep) >= request.deadline_at

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning(
            "run %s step %s: %s; try %d of %d in %.2f s",
            request.run_id,
            request.step,
            error,
            state.attempt_number + 1,
            retries + 1,
            state.upcoming_sleep,
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda e: isinstance(e, RetryableError)),
        stop=stop,
        wait=_wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> _T:
        # tenacity awaits only what it sees is a coroutine function; a lambda is not one.
        return await call()

    result: _T = await retrying(attempt)
    return result


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, RetryableError) and error.retry_after is not None:
        return error.retry_after
    # Exponential from 0.2 s, capped, plus jitter so callers that failed together spread.
    backoff = min(_BACKOFF_FIRST * 2.0 ** (state.attempt_number - 1), _BACKOFF_MAX)
    return backoff + random.uniform(0, _BACKOFF_JITTER)
