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
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from tests.fakes._loopback import LoopbackServer, disconnect, read_request

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


class FakeToolServer(LoopbackServer[RecordedRequest]):
    """A loopback HTTP server whose answers tests set per route (see the module doc)."""

    thread_name = "fake-tools"

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[tuple[str, str], _Route] = {}

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

    # -- serving --------------------------------------------------------------------------

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        read = await read_request(reader)
        if read is None:
            return False
        method, parts = read.method, urlsplit(read.target)
        query = parse_qs(parts.query, keep_blank_values=True)
        request = RecordedRequest(
            method, read.target, parts.path, query, read.headers, read.raw_body, read.body, read.at
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
        return disconnect(writer, reset=answer.reset)


@pytest.fixture
def tool_server() -> Iterator[FakeToolServer]:
    """A started ``FakeToolServer``, stopped after the test."""
    with FakeToolServer() as server:
        yield server
