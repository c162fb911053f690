"""Reading an HTTP answer no further than a limit (model providers and tools alike)."""

from __future__ import annotations

import httpx

__all__ = ["read_at_most"]


async def read_at_most(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether that was all of it."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), False
    return bytes(body), True
