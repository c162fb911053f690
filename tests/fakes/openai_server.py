"""A fake OpenAI-compatible chat-completions server on loopback, for fault injection.

The server is real HTTP/1.1 on ``127.0.0.1`` (a free port), running its own event loop in its
own thread, so it serves sync tests and async tests (with their own loop) alike. It records
every request and answers ``POST .../chat/completions`` from a script::

    server.reply("hello")                            # the default answer, for every request
    server.reply(lambda req: ChatAnswer(req.body["model"]))   # or computed per request
    server.enqueue(ErrorStatus(429, retry_after="1"), Disconnect())  # next answers, in order
    server.wait_for_requests(3)                      # poll with a deadline (sync tests)
    await server.wait_for_requests_async(3)          # same, for async tests
    server.requests[0].body["messages"]              # what the client sent

Answers: a ``str`` (the assistant's content), a ``ChatAnswer``, or a fault: ``ErrorStatus``
(any status, optional ``Retry-After``, OpenAI's error JSON or a raw body), ``Delay`` (answer
late, e.g. past the client's timeout), ``Malformed`` (a body that is not a chat completion),
``Disconnect`` (close or reset the connection without answering). Other paths get a 404.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.fakes._loopback import LoopbackServer, disconnect, read_request

__all__ = [
    "Answer",
    "ChatAnswer",
    "Delay",
    "Disconnect",
    "ErrorStatus",
    "FakeOpenAIServer",
    "Malformed",
    "RecordedRequest",
    "Responder",
    "Streamed",
    "fake_openai",
]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it.

    Attributes:
        method: HTTP method.
        path: Request target (path and query).
        headers: Header names lower-cased.
        raw_body: The body bytes.
        body: The body parsed as JSON, or ``None`` when it is not JSON.
        at: ``time.monotonic()`` when the request had been read in full.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    raw_body: bytes
    body: Any
    at: float

    def header(self, name: str) -> str | None:
        """A header's value, by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class ChatAnswer:
    """A successful chat completion.

    Attributes:
        content: The assistant's text (``None`` sends ``content: null``).
        prompt_tokens: ``usage.prompt_tokens``.
        completion_tokens: ``usage.completion_tokens``.
        usage: Whether to send ``usage`` at all.
        refusal: ``message.refusal`` (with ``content=None``, a refusal).
        finish_reason: ``choices[0].finish_reason``.
    """

    content: str | None = "ok"
    prompt_tokens: int = 10
    completion_tokens: int = 5
    usage: bool = True
    refusal: str | None = None
    finish_reason: str = "stop"
    tool_calls: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class Streamed:
    """How a request that asked for ``stream: true`` gets its answer.

    The answer's text goes out ``piece`` characters an event (tool calls' arguments too),
    ``delay`` seconds apart, as OpenAI streams it: a role chunk, content chunks, a finish
    chunk, a usage chunk (when asked for with ``stream_options.include_usage``), ``[DONE]``.
    A request that did not ask for a stream gets ``answer`` whole.

    Attributes:
        answer: What the stream adds up to (a ``str`` or ``ChatAnswer``; the Anthropic
            fake takes a ``MessageAnswer`` too).
        piece: Characters per content event.
        delay: Seconds between events.
        cut_after: Drop the connection after this many events (mid-body).
        error_after: After this many events, send an error chunk and end the stream.
    """

    answer: Any = field(default_factory=ChatAnswer)  # a MessageAnswer, for the Anthropic fake
    piece: int = 3
    delay: float = 0.0
    cut_after: int | None = None
    error_after: int | None = None


@dataclass(frozen=True)
class ErrorStatus:
    """An error answer: OpenAI's ``{"error": {...}}`` JSON unless ``body`` is given.

    Attributes:
        status: HTTP status code.
        message: ``error.message``.
        code: ``error.code`` (e.g. ``insufficient_quota``).
        retry_after: The ``Retry-After`` header's value, if any.
        body: A raw body to send instead of the error JSON.
        headers: More headers.
    """

    status: int
    message: str = "simulated failure"
    code: str | None = None
    retry_after: str | None = None
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delay:
    """Wait, then answer (``then``, or the default answer); the connection stays open.

    Attributes:
        seconds: How long to wait before answering.
        then: What to answer afterwards; ``None`` for the default answer.
    """

    seconds: float
    then: Answer | None = None


@dataclass(frozen=True)
class Malformed:
    """A body that is not a chat completion.

    Attributes:
        body: The bytes sent.
        status: HTTP status code.
        content_type: The ``Content-Type`` header.
    """

    body: bytes = b'{"choices": [{"message": '
    status: int = 200
    content_type: str = "application/json"


@dataclass(frozen=True)
class Disconnect:
    """Drop the connection without an answer.

    Attributes:
        reset: Send a TCP reset (RST) instead of an orderly close (FIN).
    """

    reset: bool = False


Answer = str | ChatAnswer | ErrorStatus | Delay | Malformed | Disconnect | Streamed
Responder = Callable[[RecordedRequest], Answer]


class FakeOpenAIServer(LoopbackServer[RecordedRequest]):
    """A loopback OpenAI-compatible server whose answers tests script (see the module doc)."""

    thread_name = "fake-openai"

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[Answer | Responder] = deque()
        self._default: Answer | Responder = ChatAnswer()
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """What a route's ``base_url`` should be: ``http://127.0.0.1:<port>/v1``."""
        return f"{self.url}/v1"

    # -- the script -----------------------------------------------------------------------

    def reply(self, answer: Answer | Responder) -> None:
        """Set the default answer (a value, or a function of the request)."""
        with self._lock:
            self._default = answer

    def enqueue(self, *answers: Answer | Responder) -> None:
        """Answer the next requests with these, in order, before the default resumes."""
        with self._lock:
            self._queue.extend(answers)

    def reset(self) -> None:
        """Forget recorded requests and queued answers; the default answer becomes "ok"."""
        with self._lock:
            self._requests.clear()
            self._queue.clear()
            self._default = ChatAnswer()

    # -- serving --------------------------------------------------------------------------

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        read = await read_request(reader)
        if read is None:
            return False
        method, target = read.method, read.target
        request = RecordedRequest(method, target, read.headers, read.raw_body, read.body, read.at)
        with self._lock:
            self._requests.append(request)
            answer: Answer | Responder | None = None
            if method == "POST" and target.split("?")[0].endswith("/chat/completions"):
                answer = self._queue.popleft() if self._queue else self._default
            self._lock.notify_all()
        if answer is None:
            error = {"message": f"no route {method} {target}", "type": "invalid_request_error"}
            return await self._send_json(writer, 404, {"error": error})
        return await self._answer(writer, request, answer)

    async def _answer(
        self, writer: asyncio.StreamWriter, request: RecordedRequest, answer: Answer | Responder
    ) -> bool:
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, Delay):
            await asyncio.sleep(answer.seconds)
            if answer.then is not None:
                return await self._answer(writer, request, answer.then)
            with self._lock:
                default = self._default
            return await self._answer(writer, request, default)
        asked = isinstance(request.body, dict) and request.body.get("stream") is True
        if isinstance(answer, Streamed) and not asked:
            answer = answer.answer
        if isinstance(answer, str | ChatAnswer) and asked:
            answer = Streamed(answer)
        if isinstance(answer, str):
            answer = ChatAnswer(answer)
        if isinstance(answer, ChatAnswer):
            return await self._send_json(writer, 200, self._completion(request, answer))
        if isinstance(answer, Streamed):
            frames = self._chunks(request, answer)
            if answer.error_after is not None:
                error = {"error": {"message": "simulated stream failure", "type": "server_error"}}
                frames = [*frames[: answer.error_after], b"data: " + orjson.dumps(error) + b"\n\n"]
            return await self._send_sse(
                writer, frames, delay=answer.delay, cut_after=answer.cut_after
            )
        if isinstance(answer, ErrorStatus):
            headers = dict(answer.headers)
            if answer.retry_after is not None:
                headers["Retry-After"] = answer.retry_after
            if answer.body is not None:
                return await self._send(writer, answer.status, answer.body, headers)
            error = {
                "message": answer.message,
                "type": "server_error" if answer.status >= 500 else "invalid_request_error",
                "param": None,
                "code": answer.code,
            }
            return await self._send_json(writer, answer.status, {"error": error}, headers)
        if isinstance(answer, Malformed):
            content_type = {"Content-Type": answer.content_type}
            return await self._send(writer, answer.status, answer.body, content_type)
        return disconnect(writer, reset=answer.reset)

    def _completion(self, request: RecordedRequest, answer: ChatAnswer) -> dict[str, Any]:
        model = request.body.get("model") if isinstance(request.body, dict) else None
        message: dict[str, Any] = {"role": "assistant", "content": answer.content}
        if answer.refusal is not None:
            message["refusal"] = answer.refusal
        if answer.tool_calls:
            message["tool_calls"] = [
                {"id": ident, "type": "function", "function": {"name": name, "arguments": args}}
                for ident, name, args in answer.tool_calls
            ]
        completion: dict[str, Any] = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model or "fake",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": answer.finish_reason,
                }
            ],
        }
        if answer.usage:
            completion["usage"] = {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            }
        return completion

    def _chunks(self, request: RecordedRequest, streamed: Streamed) -> list[bytes]:
        answer = (
            ChatAnswer(streamed.answer) if isinstance(streamed.answer, str) else streamed.answer
        )
        body = request.body if isinstance(request.body, dict) else {}
        ident, created = f"chatcmpl-fake-{next(self._ids)}", int(time.time())
        model = body.get("model") or "fake"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            value = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(value) + b"\n\n"

        def pieces(text: str) -> list[str]:
            return [text[i : i + streamed.piece] for i in range(0, len(text), streamed.piece)]

        frames = [chunk({"role": "assistant", "content": "" if answer.content else None})]
        frames += [chunk({"content": p}) for p in pieces(answer.content or "")]
        if answer.refusal is not None:
            frames += [chunk({"refusal": p}) for p in pieces(answer.refusal)]
        for index, (call_id, name, args) in enumerate(answer.tool_calls):
            start = {"index": index, "id": call_id, "type": "function"}
            frames.append(
                chunk({"tool_calls": [{**start, "function": {"name": name, "arguments": ""}}]})
            )
            frames += [
                chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
                for p in pieces(args)
            ]
        frames.append(chunk({}, answer.finish_reason))
        options = body.get("stream_options")
        if answer.usage and isinstance(options, dict) and options.get("include_usage"):
            usage = {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            }
            value = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            frames.append(b"data: " + orjson.dumps(value) + b"\n\n")
        frames.append(b"data: [DONE]\n\n")
        return frames


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A started ``FakeOpenAIServer``, stopped after the test."""
    with FakeOpenAIServer() as server:
        yield server
