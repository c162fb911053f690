"""A fake Anthropic Messages server on loopback, for wire-format checks and fault injection.

It is the fake OpenAI server (same loop-in-a-thread, recording, queue and faults: see
``tests.fakes.openai_server``) answering ``POST .../messages`` in the Messages wire format::

    server.reply("hello")                                   # a text answer, for every request
    server.reply(MessageAnswer(tool_uses=(ToolUse("lookup", {"id": 7}),)))   # a tool call
    server.enqueue(ErrorStatus(529), ErrorStatus(429, retry_after="2"))      # next answers
    server.requests[0].body["system"]                       # what the client sent

Answers: a ``str`` (one text block), a ``MessageAnswer``, or the OpenAI fake's faults:
``ErrorStatus`` (Anthropic's ``{"type": "error", "error": {type, message}}`` unless ``body``
is given; ``code`` is the error's type; ``retry_after`` the ``retry-after`` header),
``Delay``, ``Malformed`` and ``Disconnect``. A ``ChatAnswer`` is answered as the same text
and token counts, so fault tables written for the OpenAI fake work here too. Other paths
get a 404.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.fakes._loopback import read_request
from tests.fakes.openai_server import (
    Answer,
    ChatAnswer,
    ErrorStatus,
    FakeOpenAIServer,
    RecordedRequest,
    Streamed,
)

__all__ = [
    "AnthropicAnswer",
    "AnthropicResponder",
    "FakeAnthropicServer",
    "MessageAnswer",
    "ToolUse",
    "fake_anthropic",
]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class ToolUse:
    """A ``tool_use`` content block.

    Attributes:
        name: The tool's name.
        input: The arguments (any JSON: the real API sends an object).
        id: The block's id; ``None`` numbers it ``toolu_fake_<n>``.
    """

    name: str
    input: Any = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class MessageAnswer:
    """A successful message.

    Attributes:
        text: One text block first (``None``: no text block).
        tool_uses: ``tool_use`` blocks after it.
        input_tokens: ``usage.input_tokens``.
        output_tokens: ``usage.output_tokens``.
        usage: Whether to send ``usage`` at all.
        stop_reason: ``stop_reason``; ``None`` sends ``tool_use`` when there are tool uses,
            else ``end_turn``.
        blocks: Raw content blocks to send instead of ``text`` and ``tool_uses``.
    """

    text: str | None = "ok"
    tool_uses: Sequence[ToolUse] = ()
    input_tokens: int = 10
    output_tokens: int = 5
    usage: bool = True
    stop_reason: str | None = None
    blocks: Sequence[Any] | None = None


AnthropicAnswer = Answer | MessageAnswer
AnthropicResponder = Callable[[RecordedRequest], AnthropicAnswer]


class FakeAnthropicServer(FakeOpenAIServer):
    """A loopback Anthropic Messages server whose answers tests script (see the module doc)."""

    thread_name = "fake-anthropic"

    def __init__(self) -> None:
        super().__init__()
        self._default = MessageAnswer()  # type: ignore[assignment]  # base slots hold ours too
        self._message_ids = itertools.count(1)
        self._tool_ids = itertools.count(1)

    def reply(self, answer: AnthropicAnswer | AnthropicResponder) -> None:
        """Set the default answer (a value, or a function of the request)."""
        with self._lock:
            self._default = answer  # type: ignore[assignment]  # see __init__

    def enqueue(self, *answers: AnthropicAnswer | AnthropicResponder) -> None:
        """Answer the next requests with these, in order, before the default resumes."""
        with self._lock:
            self._queue.extend(answers)  # type: ignore[arg-type]  # see __init__

    def reset(self) -> None:
        """Forget recorded requests and queued answers; the default answer becomes "ok"."""
        super().reset()
        with self._lock:
            self._default = MessageAnswer()  # type: ignore[assignment]  # see __init__

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        read = await read_request(reader)
        if read is None:
            return False
        request = RecordedRequest(
            read.method, read.target, read.headers, read.raw_body, read.body, read.at
        )
        with self._lock:
            self._requests.append(request)
            answer: AnthropicAnswer | AnthropicResponder | None = None
            if request.method == "POST" and request.path.split("?")[0].endswith("/messages"):
                answer = self._queue.popleft() if self._queue else self._default
            self._lock.notify_all()
        if answer is None:
            message = f"no route {request.method} {request.path}"
            return await self._send_json(writer, 404, _error("not_found_error", message))
        return await self._answer(writer, request, answer)

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        request: RecordedRequest,
        answer: AnthropicAnswer | AnthropicResponder,
    ) -> bool:
        if callable(answer):
            answer = answer(request)
        asked = isinstance(request.body, dict) and request.body.get("stream") is True
        if isinstance(answer, Streamed):
            if not asked:
                return await self._answer(writer, request, answer.answer)
            return await self._stream(writer, request, answer)
        if asked and isinstance(answer, str | ChatAnswer | MessageAnswer):
            return await self._stream(writer, request, Streamed(answer))
        if isinstance(answer, str):
            answer = MessageAnswer(answer)
        if isinstance(answer, ChatAnswer):
            answer = MessageAnswer(
                answer.content,
                input_tokens=answer.prompt_tokens,
                output_tokens=answer.completion_tokens,
                usage=answer.usage,
                stop_reason="refusal" if answer.refusal is not None else None,
            )
        if isinstance(answer, MessageAnswer):
            return await self._send_json(writer, 200, self._message(request, answer))
        if isinstance(answer, ErrorStatus):
            headers = {"request-id": f"req_fake_{next(self._message_ids)}", **answer.headers}
            if answer.retry_after is not None:
                headers["retry-after"] = answer.retry_after
            if answer.body is not None:
                return await self._send(writer, answer.status, answer.body, headers)
            kind = answer.code or _ERROR_TYPES.get(answer.status, "api_error")
            return await self._send_json(
                writer, answer.status, _error(kind, answer.message), headers
            )
        return await super()._answer(writer, request, answer)

    async def _stream(
        self, writer: asyncio.StreamWriter, request: RecordedRequest, streamed: Streamed
    ) -> bool:
        """The answer as the Messages API streams it: the whole message, event by event."""
        answer = streamed.answer
        if isinstance(answer, str):
            answer = MessageAnswer(answer)
        if isinstance(answer, ChatAnswer):
            answer = MessageAnswer(
                answer.content,
                input_tokens=answer.prompt_tokens,
                output_tokens=answer.completion_tokens,
                usage=answer.usage,
                stop_reason="refusal" if answer.refusal is not None else None,
            )
        whole = self._message(request, answer)

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return (
                f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data}) + b"\n\n"
            )

        def pieces(text: str) -> list[str]:
            return [text[i : i + streamed.piece] for i in range(0, len(text), streamed.piece)]

        start = {k: v for k, v in whole.items() if k not in ("usage", "content")}
        start.update(content=[], stop_reason=None)
        if "usage" in whole:
            start["usage"] = {"input_tokens": whole["usage"]["input_tokens"], "output_tokens": 1}
        frames = [event("message_start", {"message": start}), event("ping", {})]
        for index, block in enumerate(whole["content"]):
            if block["type"] == "text":
                opened = {"type": "text", "text": ""}
                deltas = [{"type": "text_delta", "text": p} for p in pieces(block["text"])]
            elif block["type"] == "tool_use":
                opened = {**block, "input": {}}
                args = orjson.dumps(block["input"]).decode()
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces(args)]
            else:
                opened, deltas = block, []
            frames.append(event("content_block_start", {"index": index, "content_block": opened}))
            frames += [event("content_block_delta", {"index": index, "delta": d}) for d in deltas]
            frames.append(event("content_block_stop", {"index": index}))
        delta: dict[str, Any] = {
            "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None}
        }
        if "usage" in whole:
            delta["usage"] = {"output_tokens": whole["usage"]["output_tokens"]}
        frames.append(event("message_delta", delta))
        frames.append(event("message_stop", {}))
        if streamed.error_after is not None:
            failure = {"error": {"type": "overloaded_error", "message": "Overloaded"}}
            frames = [*frames[: streamed.error_after], event("error", failure)]
        return await self._send_sse(
            writer, frames, delay=streamed.delay, cut_after=streamed.cut_after
        )

    def _message(self, request: RecordedRequest, answer: MessageAnswer) -> dict[str, Any]:
        model = request.body.get("model") if isinstance(request.body, dict) else None
        if answer.blocks is not None:
            content = list(answer.blocks)
        else:
            content = [] if answer.text is None else [{"type": "text", "text": answer.text}]
            for use in answer.tool_uses:
                ident = use.id or f"toolu_fake_{next(self._tool_ids)}"
                content.append(
                    {"type": "tool_use", "id": ident, "name": use.name, "input": use.input}
                )
        stop = answer.stop_reason or ("tool_use" if answer.tool_uses else "end_turn")
        message: dict[str, Any] = {
            "id": f"msg_fake_{next(self._message_ids)}",
            "type": "message",
            "role": "assistant",
            "model": model or "fake",
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
        }
        if answer.usage:
            message["usage"] = {
                "input_tokens": answer.input_tokens,
                "output_tokens": answer.output_tokens,
            }
        return message


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropicServer]:
    """A started ``FakeAnthropicServer``, stopped after the test."""
    with FakeAnthropicServer() as server:
        yield server
