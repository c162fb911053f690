"""A fake HTTP tool and search server on loopback that records every request.

Real HTTP/1.1 on ``127.0.0.1`` (a free port), with its own event loop in its own thread, so it
serves sync and async tests alike. Answers are set per route (method and path, without the
query); a route answers its queued answers first, then its default::

    server.route("POST", "/tickets/42/reply", Json({"id": "r-1"}))      # the default answer
    server.route("GET", "/search", lambda req: Json({"q": req.query["q"][0]}))  # per request
    server.enqueue("POST", "/tickets/42/reply", ErrorStatus(429, retry_after="1"), Disconnect())
    server.requests[0].headers["idempotency-key"]                      # what the client sent
    server.wait_for_requests(3)                                        # poll with a deadline

Answers: ``Json`` (any status), ``Text`` (raw bytes and a content type), ``ErrorStatus`` (a
status, optional ``Retry-After``, a JSON ``{"error": message}`` or a raw body), ``Delay``
(answer late), ``Disconnect`` (close, or reset, without answering). A request to a path with
no route gets a 404, and is recorded like every other.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

__all__ = [
    "Delay",
    "Disconnect",
    "ErrorStatus",
    "FakeToolServer",
    "Json",
    "RecordedRequest",
    "Responder",
    "ToolAnswer",
    "Text",
    "tool_server",
]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it.

    Attributes:
        method: HTTP method.
        target: The request target as sent (path and query, still percent-encoded).
        path: The target's path (still percent-encoded).
        query: The query's parameters, each with every value it was given.
        headers: Header names lower-cased.
        raw_body: The body bytes.
        body: The body parsed as JSON, or ``None`` when it is not JSON.
        at: ``time.monotonic()`` when the request had been read in full.
    """

    method: str
    target: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    raw_body: bytes
    body: Any
    at: float

    def header(self, name: str) -> str | None:
        """A header's value, by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Json:
    """A JSON answer.

    Attributes:
        body: What is sent, as JSON.
        status: HTTP status code.
        headers: More headers.
    """

    body: Any
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Text:
    """A raw answer.

    Attributes:
        body: The bytes (or text, sent as UTF-8).
        status: HTTP status code.
        content_type: The ``Content-Type`` header.
    """

    body: bytes | str
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class ErrorStatus:
    """An error answer: ``{"error": message}`` unless ``body`` is given.

    Attributes:
        status: HTTP status code.
        message: The error's message.
        retry_after: The ``Retry-After`` header's value, if any.
        body: A raw body to send instead.
        headers: More headers.
    """

    status: int
    message: str = "simulated failure"
    retry_after: str | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delay:
    """Wait, then answer (``then``, or the route's default); the connection stays open.

    Attributes:
        seconds: How long to wait.
        then: What to answer afterwards.
    """

    seconds: float
    then: ToolAnswer | None = None


@dataclass(frozen=True)
class Disconnect:
    """Drop the connection without an answer.

    Attributes:
        reset: Send a TCP reset (RST) instead of an orderly close (FIN).
    """

    reset: bool = False


ToolAnswer = Json | Text | ErrorStatus | Delay | Disconnect
Responder = Callable[[RecordedRequest], ToolAnswer]


@dataclass
class _Route:
    default: ToolAnswer | Responder
    queue: deque[ToolAnswer | Responder] = field(default_factory=deque)


class FakeToolServer:
    """A loopback HTTP server whose answers tests set per route (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._routes: dict[tuple[str, str], _Route] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeToolServer:
        """Start serving on a free loopback port; returns the server."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-tools", daemon=True)
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

    def __enter__(self) -> FakeToolServer:
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

    # -- the script -----------------------------------------------------------------------

    def route(self, method: str, path: str, answer: ToolAnswer | Responder) -> None:
        """Set the default answer of ``method path`` (a value, or a function of the request)."""
        with self._lock:
            key = (method.upper(), path)
            if key in self._routes:
                self._routes[key].default = answer
            else:
                self._routes[key] = _Route(answer)

    def enqueue(self, method: str, path: str, *answers: ToolAnswer | Responder) -> None:
        """Answer the next requests to ``method path`` with these, in order, then the default.

        The route must exist (``route`` sets its default).
        """
        with self._lock:
            self._routes[(method.upper(), path)].queue.extend(answers)

    def reset(self) -> None:
        """Forget recorded requests and every route."""
        with self._lock:
            self._requests.clear()
            self._routes.clear()

    # -- what was seen --------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def call_count(self) -> int:
        """How many requests were received."""
        with self._lock:
            return len(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Block until ``count`` requests were received; fail after ``timeout`` seconds."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise AssertionError(
                    f"expected {count} requests within {timeout} s, got {len(self._requests)}"
                )
            return list(self._requests)

    # -- serving --------------------------------------------------------------------------

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

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read one request and answer it; ``False`` when the connection is done."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
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
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        request = RecordedRequest(
            method, target, parts.path, query, headers, raw, body, time.monotonic()
        )
        with self._lock:
            self._requests.append(request)
            route = self._routes.get((method, parts.path))
            answer: ToolAnswer | Responder | None = None
            default: ToolAnswer | Responder | None = None
            if route is not None:
                answer = route.queue.popleft() if route.queue else route.default
                default = route.default
            self._lock.notify_all()
        if answer is None or default is None:
            return await self._answer(
                writer, request, ErrorStatus(404, f"no route {method} {parts.path}"), default
            )
        return await self._answer(writer, request, answer, default)

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        request: RecordedRequest,
        answer: ToolAnswer | Responder,
        default: ToolAnswer | Responder | None,
    ) -> bool:
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, Delay):
            await asyncio.sleep(answer.seconds)
            then = answer.then if answer.then is not None else default
            assert then is not None, "a Delay without `then` needs a route default"
            return await self._answer(writer, request, then, default)
        if isinstance(answer, Json):
            merged = {"Content-Type": "application/json", **answer.headers}
            return await self._send(writer, answer.status, orjson.dumps(answer.body), merged)
        if isinstance(answer, Text):
            body = answer.body.encode() if isinstance(answer.body, str) else answer.body
            return await self._send(
                writer, answer.status, body, {"Content-Type": answer.content_type}
            )
        if isinstance(answer, ErrorStatus):
            headers = dict(answer.headers)
            if answer.retry_after is not None:
                headers["Retry-After"] = answer.retry_after
            if answer.body is not None:
                return await self._send(writer, answer.status, answer.body, headers)
            headers.setdefault("Content-Type", "application/json")
            payload = orjson.dumps({"error": answer.message})
            return await self._send(writer, answer.status, payload, headers)
        if answer.reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return False

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


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


@pytest.fixture
def tool_server() -> Iterator[FakeToolServer]:
    """A started ``FakeToolServer``, stopped after the test."""
    with FakeToolServer() as server:
        yield server
