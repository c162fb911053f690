"""A real MCP server, built with the official SDK, for baton's MCP tests.

Run as ``python -m tests.mcp_server stdio`` (the tests spawn it) or served over Streamable
HTTP by ``http_app()`` in the tests' own uvicorn. Its tools:

- ``add(a, b)``: structured content ``{"sum": a + b}``.
- ``echo(text)``: text content only.
- ``fail(reason)``: an ``isError`` result.
- ``whoami()``: the ``_meta`` and HTTP headers the call arrived with (what the tests assert
  the idempotency key, trace context and configured headers by).
- ``slow(seconds)``: answers after sleeping, for timeouts.
- ``crash()``: ends the process without answering (stdio only: a lost connection).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, TextContent
from starlette.applications import Starlette

TTL_MS = 60_000


def build() -> MCPServer:
    server = MCPServer(
        "baton-test",
        cache_hints={"tools/list": CacheHint(ttl_ms=TTL_MS, scope="public")},
    )

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    @server.tool(description="Echo the text back.")
    def echo(text: str) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=text)])

    @server.tool(description="Always fails, with the reason as its text.")
    def fail(reason: str) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=reason)], is_error=True)

    @server.tool(description="The _meta and headers this call arrived with.")
    def whoami(ctx: Context) -> dict[str, Any]:
        meta = dict(ctx.request_context.meta or {})
        headers = dict(ctx.headers or {})
        return {"meta": meta, "headers": headers, "protocol": ctx.protocol_version}

    @server.tool(description="Answer after a while.")
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"

    @server.tool(description="End the server process without answering.")
    def crash() -> str:
        os._exit(3)

    return server


def http_app() -> Starlette:
    return build().streamable_http_app()


if __name__ == "__main__":
    build().run(sys.argv[1] if len(sys.argv) > 1 else "stdio")  # type: ignore[arg-type]  # argv
