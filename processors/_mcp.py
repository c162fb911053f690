"""MCP servers' tools: one connection per server, its tool listing, and the calls.

Needs the optional ``mcp`` extra (the official SDK): ``ToolRegistry`` imports this module only
when tools.yaml declares ``mcp_servers``, and says so at start when the SDK is missing.

A server is reached over stdio (baton spawns its ``command``) or Streamable HTTP (its ``url``,
fixed by configuration; the SDK follows no redirect off that origin), at protocol revision
2025-11-25 (the initialize handshake; a session), 2026-07-28 (stateless, no handshake) or
``auto`` (``server/discover``, falling back to initialize). One connection per server is kept
open and shared by every call; a broken one is dropped and made again on the next call. The
SDK runs a connection inside anyio task groups, which must be left from the task that entered
them, so each connection is held open by a task of its own.

The listing (``tools/list``) is kept for the ``ttlMs`` the server gives (2026-07-28), else for
the server's ``list_ttl_s``, and made again when stale: before a call (``fresh``) or in the
background (``keep_fresh``). A stale listing that cannot be refreshed is used as it is, and
tried again a few seconds later.

Each call carries, in its request's ``_meta``, the step's idempotency key
(``io.baton/idempotency-key``, the same on every attempt) and, when the step is traced, its W3C
trace context (``traceparent``, ``tracestate``: the unprefixed keys MCP reserves for them).
Its answer is the result's ``structuredContent`` when there is one, else its text content
joined. Errors map onto baton's tree::

    isError: true                        ToolFailed (ToolUnavailable when the result's _meta
                                         says "io.baton/retryable": true)
    a timeout (connecting included)      ToolTimeout
    connection lost, transport errors,   ToolUnavailable
    HTTP 5xx (JSON-RPC internal error)
    any other JSON-RPC error             ToolRejected
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from typing import Any, Final, cast

import mcp_types
import orjson
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import JsonValue, ValidationError

from processors._errors import ToolFailed, ToolRejected, ToolTimeout, ToolUnavailable
from processors._templates import compile_template, is_template
from processors._tool import redact
from processors._tools import McpServerSpec, McpToolSpec
from topics import MAX_JSON_BYTES, BatonError, ConfigurationError, JsonLimitExceeded

__all__ = ["IDEMPOTENCY_KEY_META", "RETRYABLE_META", "McpServers"]

logger = logging.getLogger(__name__)

#: The ``_meta`` key a call's idempotency key travels under (baton's own prefix, as MCP's
#: naming rules ask of keys that are not the protocol's).
IDEMPOTENCY_KEY_META: Final = "io.baton/idempotency-key"
#: A failed result (``isError``) whose ``_meta`` holds this key set to true is retryable.
RETRYABLE_META: Final = "io.baton/retryable"
#: W3C trace context keys MCP reserves, unprefixed, in ``_meta`` (SEP-414).
TRACE_KEYS: Final = ("traceparent", "tracestate")

_MODES: Final = {"2025-11-25": "legacy", "2026-07-28": "2026-07-28", "auto": "auto"}
_MAX_PAGES: Final = 100  # a listing that never ends cannot hang a worker
_MAX_MESSAGE: Final = 300
_CLOSE_WAIT_S: Final = 5.0
_MIN_REFRESH_WAIT_S: Final = 5.0
_MAX_REFRESH_WAIT_S: Final = 300.0


class McpServers:
    """Every MCP server of one tools.yaml: connections, listings and calls.

    Args:
        specs: Server name to its configuration.
        environ: Where the secrets of header and env templates are read.
        clock: Monotonic seconds, for listing lifetimes.
    """

    def __init__(
        self,
        specs: Mapping[str, McpServerSpec],
        environ: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._servers = {name: _Server(name, spec, environ, clock) for name, spec in specs.items()}

    def listed(self) -> dict[str, McpToolSpec]:
        """Every tool of the last listings, by baton name (``SERVER.TOOL``)."""
        tools: dict[str, McpToolSpec] = {}
        for server in self._servers.values():
            tools.update(server.tools)
        return tools

    def tool(self, name: str) -> McpToolSpec | None:
        """The tool ``SERVER.TOOL`` as last listed, or ``None``."""
        server = self._servers.get(name.partition(".")[0])
        return server.tools.get(name) if server is not None else None

    def fresh_for(self, server: str) -> float:
        """Seconds ``server``'s listing stays fresh (0 or less: stale, or never listed)."""
        return self._servers[server].seconds_left()

    async def fresh(self, server: str) -> None:
        """List ``server``'s tools if its listing is stale; no-op for a name that is no server.

        Raises:
            ToolUnavailable, ToolTimeout: It has never been listed and cannot be now.
        """
        found = self._servers.get(server)
        if found is not None:
            await found.fresh()

    async def refresh(self) -> None:
        """List every server whose listing is stale; failures are logged, not raised."""
        await asyncio.gather(*(s.fresh_or_log() for s in self._servers.values()))

    async def keep_fresh(self) -> None:
        """``refresh`` each time the first listing goes stale, until cancelled."""
        while True:
            await self.refresh()
            left = min(s.seconds_left() for s in self._servers.values())
            await asyncio.sleep(min(max(left, _MIN_REFRESH_WAIT_S), _MAX_REFRESH_WAIT_S))

    async def call(
        self,
        spec: McpToolSpec,
        args: dict[str, JsonValue],
        idempotency_key: str,
        trace: Mapping[str, str],
    ) -> JsonValue:
        """Call one tool once (retries are the caller's: ``call_with_retries``).

        Args:
            spec: The tool, as listed.
            args: Its arguments (already checked against its ``inputSchema``).
            idempotency_key: Sent in ``_meta`` as ``io.baton/idempotency-key``.
            trace: The step's W3C trace context; its ``traceparent`` and ``tracestate`` go
                into ``_meta`` as they are.

        Raises:
            ToolFailed: The tool answered ``isError`` (or an answer baton cannot use).
            ToolRejected: The server refused the request (a JSON-RPC error).
            ToolTimeout: No answer within the server's ``timeout_s``.
            ToolUnavailable: The server cannot be reached, or the connection broke.
            JsonLimitExceeded: The answer is larger than an event may carry.
        """
        return await self._servers[spec.server].call(spec, args, idempotency_key, trace)

    async def aclose(self) -> None:
        """Close every connection (stopping the processes baton started)."""
        await asyncio.gather(*(server.drop() for server in self._servers.values()))


class _Server:
    """One server: its connection (made when first needed) and its last listing."""

    def __init__(
        self,
        name: str,
        spec: McpServerSpec,
        environ: Mapping[str, str],
        clock: Callable[[], float],
    ) -> None:
        self.name = name
        self.spec = spec
        self.tools: dict[str, McpToolSpec] = {}
        self._environ = environ
        self._clock = clock
        self._listed_at: float | None = None
        self._ttl_s = spec.list_ttl_s
        self._lock = asyncio.Lock()
        self._connection: _Connection | None = None
        self._secrets: tuple[str, ...] = ()
        self._what = f"MCP server {name!r}"

    # -- the listing ---------------------------------------------------------------------------

    def seconds_left(self) -> float:
        if self._listed_at is None:
            return 0.0
        return self._listed_at + self._ttl_s - self._clock()

    async def fresh(self) -> None:
        if self.seconds_left() > 0:
            return
        async with self._lock:
            if self.seconds_left() > 0:
                return  # listed while this call waited for the lock
            try:
                await self._list()
            except BatonError as exc:
                if self._listed_at is None:
                    raise
                # The last listing serves a few seconds more, so calls do not each wait on
                # a server that is down before trying it themselves.
                self._listed_at = self._clock()
                self._ttl_s = min(self.spec.list_ttl_s, _MIN_REFRESH_WAIT_S)
                logger.warning("%s: using its last tool listing: %s", self._what, exc)

    async def fresh_or_log(self) -> None:
        try:
            await self.fresh()
        except BatonError as exc:
            logger.warning("%s: cannot list its tools: %s", self._what, exc)

    async def _list(self) -> None:
        listed: list[mcp_types.Tool] = []
        ttl_ms: int | None = None
        cursor: str | None = None
        with self._errors(f"{self._what}: tools/list"):
            async with asyncio.timeout(self.spec.timeout_s):
                client = await self._client()
                for _ in range(_MAX_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    if cursor is None and "ttl_ms" in page.model_fields_set:
                        ttl_ms = page.ttl_ms
                    listed.extend(page.tools)
                    cursor = page.next_cursor
                    if cursor is None:
                        break
        self.tools = self._specs(listed)
        self._ttl_s = ttl_ms / 1000 if ttl_ms is not None else self.spec.list_ttl_s
        self._listed_at = self._clock()
        logger.info(
            "%s lists %d tools: %s (fresh for %g s)",
            self._what,
            len(self.tools),
            ", ".join(sorted(self.tools)) or "none",
            self._ttl_s,
        )

    def _specs(self, listed: list[mcp_types.Tool]) -> dict[str, McpToolSpec]:
        allowed = None if self.spec.tools is None else set(self.spec.tools)
        specs: dict[str, McpToolSpec] = {}
        for tool in listed:
            if allowed is not None and tool.name not in allowed:
                continue
            name = f"{self.name}.{tool.name}"
            try:
                specs[name] = McpToolSpec(
                    description=tool.description or tool.title or tool.name,
                    args_schema=tool.input_schema,
                    server=self.name,
                    name=tool.name,
                    timeout_s=self.spec.timeout_s,
                    retries=self.spec.retries,
                )
            except ValidationError as exc:
                problems = "; ".join(e["msg"] for e in exc.errors())
                logger.warning("%s: tool %r left out: %s", self._what, tool.name, problems)
                continue
            if len(name) > 64:
                specs.pop(name)
                logger.warning("%s: tool %r left out: its name is too long", self._what, name)
        missing = sorted((allowed or set()) - {s.name for s in specs.values()})
        if missing:
            logger.warning("%s does not list %s", self._what, ", ".join(missing))
        return specs

    # -- calls ---------------------------------------------------------------------------------

    async def call(
        self,
        spec: McpToolSpec,
        args: dict[str, JsonValue],
        idempotency_key: str,
        trace: Mapping[str, str],
    ) -> JsonValue:
        fields: dict[str, Any] = {IDEMPOTENCY_KEY_META: idempotency_key}
        fields.update({key: trace[key] for key in TRACE_KEYS if trace.get(key)})
        # An open TypedDict (PEP 728 extra_items), which mypy does not read yet.
        meta = cast(mcp_types.RequestParamsMeta, fields)
        what = f"tool {self.name}.{spec.name!r}"
        with self._errors(what):
            async with asyncio.timeout(self.spec.timeout_s):
                client = await self._client()
                result = await client.call_tool(spec.name, dict(args), meta=meta)
        return self._answer(result, what)

    def _answer(self, result: mcp_types.CallToolResult, what: str) -> JsonValue:
        if result.is_error:
            message = _excerpt(redact(" ".join(_text(result).split()), self._secrets))
            error = f"{what}: the tool reported an error: {message or '(no message)'}"
            if (result.meta or {}).get(RETRYABLE_META) is True:
                raise ToolUnavailable(error)
            raise ToolFailed(error)
        value: JsonValue
        if result.structured_content is not None:
            value = result.structured_content
        elif any(isinstance(b, mcp_types.TextContent) for b in result.content):
            value = _text(result)
        else:  # images, audio, resources: passed on as the blocks they are
            value = [
                b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in result.content
            ]
        value = redact(value, self._secrets)
        try:
            size = len(orjson.dumps(value))
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise ToolFailed(f"{what}: the answer is not JSON: {exc}") from None
        if size > MAX_JSON_BYTES:
            raise JsonLimitExceeded(
                f"{what}: the answer is {size} bytes of JSON, over the limit of {MAX_JSON_BYTES}"
            )
        return value

    # -- the connection ------------------------------------------------------------------------

    async def _client(self) -> Client:
        if self._connection is not None and self._connection.broken:
            await self.drop(self._connection)
        if self._connection is None:  # checked again: another call may have connected
            self._connection = self._connect()
        connection = self._connection
        try:
            return await connection.client()
        except BaseException:
            await self.drop(connection)
            raise

    def _connect(self) -> _Connection:
        secrets = {name: self._secret(name) for name in sorted(self.spec.secrets())}
        self._secrets = tuple(v for v in secrets.values() if v)
        spec = self.spec
        target: Any
        http = None
        if spec.url is not None:
            headers = {k: self._render(v, secrets, k) for k, v in spec.headers.items()}
            http = create_mcp_http_client(headers=headers)
            target = streamable_http_client(spec.url, http_client=http)
        else:
            assert spec.command is not None  # one of the two, checked by the config
            env = {k: self._render(v, secrets, k) for k, v in spec.env.items()}
            target = StdioServerParameters(
                command=spec.command, args=list(spec.args), env=env or None, cwd=spec.cwd
            )
        client = Client(
            target,
            mode=_MODES[spec.protocol],
            read_timeout_seconds=spec.timeout_s,
            client_info=mcp_types.Implementation(name="baton", version="0.1.0"),
            cache=None,  # the listing is kept here, for the coordinator too
        )
        return _Connection(client, http, self._what)

    def _secret(self, name: str) -> str:
        value = self._environ.get(name)
        if not value:
            raise ConfigurationError(f"{self._what}: the secret {name} is not set")
        return value

    def _render(self, template: str, secrets: Mapping[str, str], field: str) -> str:
        if not is_template(template):
            return template
        value = compile_template(template).render({"secrets": secrets})
        text = "" if value is None else str(value)
        if any(c in text for c in "\r\n\0"):
            raise ConfigurationError(f"{self._what}: {field} would hold a line break")
        return text

    async def drop(self, connection: _Connection | None = None) -> None:
        """Close ``connection`` (the current one when left out); the next call connects."""
        connection = connection or self._connection
        if connection is None:
            return
        if self._connection is connection:
            self._connection = None
        await connection.close()

    # -- errors --------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map what the SDK and its transports raise to baton's errors; drop broken links."""
        try:
            yield
        except BatonError:
            raise
        except TimeoutError:
            raise ToolTimeout(f"{what}: no answer within {self.spec.timeout_s:g} s") from None
        except MCPError as exc:
            message = _excerpt(redact(exc.message, self._secrets))
            if exc.code == mcp_types.REQUEST_TIMEOUT:
                raise ToolTimeout(f"{what}: {message}") from None
            if exc.code == mcp_types.CONNECTION_CLOSED:
                self._mark_broken()
                raise ToolUnavailable(f"{what}: {message}") from None
            if exc.code == mcp_types.INTERNAL_ERROR:  # also how the transport spells HTTP 5xx
                raise ToolUnavailable(f"{what}: {message}") from None
            raise ToolRejected(f"{what}: JSON-RPC error {exc.code}: {message}") from None
        except RuntimeError as exc:
            message = _excerpt(redact(f"{what}: {exc}", self._secrets))
            # The SDK checks structured content against the tool's outputSchema; it says so
            # only in the message. Any other RuntimeError is the connection's.
            if "schema" in str(exc) or "structured content" in str(exc):
                raise ToolFailed(message) from None
            self._mark_broken()
            raise ToolUnavailable(message) from None
        except Exception as exc:  # transports raise what they raise (OSError, httpx2, anyio)
            self._mark_broken()
            detail = _excerpt(redact(str(exc), self._secrets))
            reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            raise ToolUnavailable(f"{what}: {reason}") from None

    def _mark_broken(self) -> None:
        if self._connection is not None:
            self._connection.broken = True


class _Connection:
    """One open ``Client``, entered and left by a task of its own (see the module docstring)."""

    def __init__(self, client: Client, http: Any, what: str) -> None:
        self.broken = False
        self._what = what
        self._closing = asyncio.Event()
        self._ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._hold(client, http), name=f"mcp {what}")

    async def client(self) -> Client:
        # Shielded: one caller's timeout must not cancel the connection others wait for.
        return await asyncio.shield(self._ready)

    async def _hold(self, client: Client, http: Any) -> None:
        try:
            async with AsyncExitStack() as stack:
                if http is not None:
                    await stack.enter_async_context(http)
                await stack.enter_async_context(client)
                self._ready.set_result(client)
                await self._closing.wait()
        except asyncio.CancelledError:
            self._settle(ToolUnavailable(f"{self._what}: the connection was closed"))
            raise
        except Exception as exc:  # the connection's own task: nothing above it to tell
            if not self._settle(_unwrap(exc)):
                logger.warning("%s: the connection ended: %s", self._what, _unwrap(exc))
        finally:
            self.broken = True
            self._settle(ToolUnavailable(f"{self._what}: the connection was closed"))

    def _settle(self, error: BaseException) -> bool:
        """Fail the callers waiting for the connection; ``False`` when it was made already."""
        if self._ready.done():
            return False
        self._ready.set_exception(error)
        self._ready.exception()  # retrieved: a connection nobody waited for is not a bug
        return True

    async def close(self) -> None:
        self.broken = True
        self._closing.set()
        if not self._ready.done():
            self._task.cancel()  # still connecting: stop it
        done, _ = await asyncio.wait({self._task}, timeout=_CLOSE_WAIT_S)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=_CLOSE_WAIT_S)


def _unwrap(exc: BaseException) -> BaseException:
    """The first real error inside the exception groups anyio's task groups raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _text(result: mcp_types.CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, mcp_types.TextContent))


def _excerpt(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
