"""What every fake HTTP server on loopback shares: its own loop in its own thread, HTTP/1.1.

A subclass decides what one request gets (``_one_exchange``): it reads the request with
``read_request``, records it under ``_lock`` (then ``notify_all``), and answers with
``_send``/``_send_json`` or drops the connection with ``disconnect``. Everything else (start
and stop, the recorded requests and waiting for them) is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import orjson

__all__ = ["HttpRequest", "LoopbackServer", "disconnect", "read_request"]

RequestT = TypeVar("RequestT")


@dataclass(frozen=True)
class HttpRequest:
    """One request as read off the connection (header names lower-cased)."""

    method: str
    target: str
    headers: dict[str, str]
    raw_body: bytes
    body: Any  # the body parsed as JSON, or None when it is not JSON
    at: float


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """Read one request; ``None`` when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    method, target, _ = request_line.split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raw = await _read_chunked(reader)
    else:
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    return HttpRequest(method, target, headers, raw, body, time.monotonic())


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def disconnect(writer: asyncio.StreamWriter, *, reset: bool) -> bool:
    """Drop the connection without an answer (a TCP reset when ``reset``); returns ``False``."""
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    return False


class LoopbackServer(Generic[RequestT]):
    """A fake HTTP server on ``127.0.0.1`` (a free port) recording what it was sent."""

    thread_name = "fake-http"

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[RequestT] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Start serving on a free loopback port; returns the server."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=10)
        return self

    def stop(self) -> None:
        """Stop serving, dropping open connections."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    # -- what was seen --------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestT]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def call_count(self) -> int:
        """How many requests were received."""
        with self._lock:
            return len(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RequestT]:
        """Block until ``count`` requests were received; fail after ``timeout`` seconds."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise AssertionError(
                    f"expected {count} requests within {timeout} s, got {len(self._requests)}"
                )
            return list(self._requests)

    async def wait_for_requests_async(self, count: int, timeout: float = 5.0) -> list[RequestT]:
        """Like ``wait_for_requests``, without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while self.call_count < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} requests within {timeout} s, got {self.call_count}"
                )
            await asyncio.sleep(0.005)
        return self.requests

    # -- serving --------------------------------------------------------------------------

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read one request and answer it; ``False`` when the connection is done."""
        raise NotImplementedError

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, host="127.0.0.1", port=0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one_exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping; ending quietly keeps asyncio from logging it
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        merged = {"Content-Type": "application/json", **(headers or {})}
        return await self._send(writer, status, orjson.dumps(payload), merged)

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, headers: Mapping[str, str]
    ) -> bool:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        return True

    async def _send_sse(
        self,
        writer: asyncio.StreamWriter,
        frames: list[bytes],
        *,
        delay: float = 0.0,
        cut_after: int | None = None,
    ) -> bool:
        """A 200 event stream, chunked, one frame a chunk, ``delay`` seconds apart.

        With ``cut_after``, the connection is dropped after that many frames, mid-body (no
        last chunk): what a client sees when a server dies mid-stream.
        """
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(head.encode("latin-1"))
        await writer.drain()
        for sent, frame in enumerate(frames):
            if cut_after is not None and sent >= cut_after:
                return disconnect(writer, reset=False)
            if delay and sent:
                await asyncio.sleep(delay)
            writer.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
            await writer.drain()
        if cut_after is not None and cut_after >= len(frames):
            return disconnect(writer, reset=False)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
