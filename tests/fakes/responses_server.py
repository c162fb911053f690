"""A fake OpenAI Responses API server on loopback, for wire-format checks and fault injection.

It is the fake OpenAI server (same loop-in-a-thread, recording, queue and faults: see
``tests.fakes.openai_server``) answering ``POST .../responses`` in the Responses wire format::

    server.reply("hello")                                        # one output_text, every time
    server.reply(ResponseAnswer(calls=(FunctionCall("lookup", {"id": 7}),)))   # a tool call
    server.enqueue(ResponseAnswer(status="failed", error=("server_error", "boom")))
    server.enqueue(ErrorStatus(429, retry_after="2"))            # OpenAI's error JSON
    server.requests[0].body["input"]                             # what the client sent

Answers: a ``str`` (one ``message`` item with one ``output_text`` part), a ``ResponseAnswer``,
or the OpenAI fake's faults (``ErrorStatus`` with OpenAI's ``{"error": {...}}``, ``Delay``,
``Malformed``, ``Disconnect``). A ``ChatAnswer`` is answered as the same text and token
counts, so fault tables written for the OpenAI fake work here too. Other paths get a 404.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from tests.fakes._loopback import read_request
from tests.fakes.openai_server import Answer, ChatAnswer, FakeOpenAIServer, RecordedRequest

__all__ = [
    "FakeResponsesServer",
    "FunctionCall",
    "ResponseAnswer",
    "ResponsesAnswer",
    "ResponsesResponder",
    "fake_responses",
]


@dataclass(frozen=True)
class FunctionCall:
    """A ``function_call`` output item.

    Attributes:
        name: The tool's name.
        arguments: The arguments: any JSON is sent as JSON text (as the API does), a ``str``
            as it is.
        call_id: The call's id; ``None`` numbers it ``call_fake_<n>``.
    """

    name: str
    arguments: Any = field(default_factory=dict)
    call_id: str | None = None


@dataclass(frozen=True)
class ResponseAnswer:
    """A response object.

    Attributes:
        text: One ``message`` item with this ``output_text`` first (``None``: no message).
        calls: ``function_call`` items after it.
        input_tokens: ``usage.input_tokens``.
        output_tokens: ``usage.output_tokens``.
        cached_tokens: ``usage.input_tokens_details.cached_tokens``.
        reasoning_tokens: ``usage.output_tokens_details.reasoning_tokens``; when not 0 a
            ``reasoning`` item leads the output, as a reasoning model's does.
        usage: Whether to send ``usage`` at all.
        status: ``status``: completed, incomplete, failed.
        incomplete_reason: ``incomplete_details.reason`` (with ``status="incomplete"``).
        error: ``error`` as ``(code, message)`` (with ``status="failed"``).
        refusal: A ``refusal`` content part instead of the text.
        output: Raw output items to send instead of all the above.
    """

    text: str | None = "ok"
    calls: Sequence[FunctionCall] = ()
    input_tokens: int = 10
    output_tokens: int = 5
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    usage: bool = True
    status: str = "completed"
    incomplete_reason: str | None = None
    error: tuple[str, str] | None = None
    refusal: str | None = None
    output: Sequence[Any] | None = None


ResponsesAnswer = Answer | ResponseAnswer
ResponsesResponder = Callable[[RecordedRequest], ResponsesAnswer]


class FakeResponsesServer(FakeOpenAIServer):
    """A loopback Responses API server whose answers tests script (see the module doc)."""

    thread_name = "fake-responses"

    def __init__(self) -> None:
        super().__init__()
        self._default = ResponseAnswer()  # type: ignore[assignment]  # base slots hold ours too
        self._response_ids = itertools.count(1)
        self._call_ids = itertools.count(1)

    def reply(self, answer: ResponsesAnswer | ResponsesResponder) -> None:
        """Set the default answer (a value, or a function of the request)."""
        with self._lock:
            self._default = answer  # type: ignore[assignment]  # see __init__

    def enqueue(self, *answers: ResponsesAnswer | ResponsesResponder) -> None:
        """Answer the next requests with these, in order, before the default resumes."""
        with self._lock:
            self._queue.extend(answers)  # type: ignore[arg-type]  # see __init__

    def reset(self) -> None:
        """Forget recorded requests and queued answers; the default answer becomes "ok"."""
        super().reset()
        with self._lock:
            self._default = ResponseAnswer()  # type: ignore[assignment]  # see __init__

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
            answer: ResponsesAnswer | ResponsesResponder | None = None
            if request.method == "POST" and request.path.split("?")[0].endswith("/responses"):
                answer = self._queue.popleft() if self._queue else self._default
            self._lock.notify_all()
        if answer is None:
            error = {
                "message": f"no route {request.method} {request.path}",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
            return await self._send_json(writer, 404, {"error": error})
        return await self._answer(writer, request, answer)

    async def _answer(
        self,
        writer: asyncio.StreamWriter,
        request: RecordedRequest,
        answer: ResponsesAnswer | ResponsesResponder,
    ) -> bool:
        if callable(answer):
            answer = answer(request)
        if isinstance(answer, str):
            answer = ResponseAnswer(answer)
        if isinstance(answer, ChatAnswer):
            answer = ResponseAnswer(
                None if answer.refusal is not None else answer.content,
                input_tokens=answer.prompt_tokens,
                output_tokens=answer.completion_tokens,
                usage=answer.usage,
                refusal=answer.refusal,
            )
        if isinstance(answer, ResponseAnswer):
            return await self._send_json(writer, 200, self._response(request, answer))
        return await super()._answer(writer, request, answer)

    def _response(self, request: RecordedRequest, answer: ResponseAnswer) -> dict[str, Any]:
        body = request.body if isinstance(request.body, dict) else {}
        ident = next(self._response_ids)
        if answer.output is not None:
            output = list(answer.output)
        else:
            output = []
            if answer.reasoning_tokens:
                output.append({"type": "reasoning", "id": f"rs_fake_{ident}", "summary": []})
            parts: list[dict[str, Any]] = []
            if answer.text is not None:
                parts.append({"type": "output_text", "text": answer.text, "annotations": []})
            if answer.refusal is not None:
                parts.append({"type": "refusal", "refusal": answer.refusal})
            if parts:
                output.append(
                    {
                        "type": "message",
                        "id": f"msg_fake_{ident}",
                        "status": "completed",
                        "role": "assistant",
                        "content": parts,
                    }
                )
            for call in answer.calls:
                number = next(self._call_ids)
                arguments = call.arguments
                if not isinstance(arguments, str):
                    arguments = orjson.dumps(arguments).decode()
                output.append(
                    {
                        "type": "function_call",
                        "id": f"fc_fake_{number}",
                        "call_id": call.call_id or f"call_fake_{number}",
                        "name": call.name,
                        "arguments": arguments,
                        "status": "completed",
                    }
                )
        response: dict[str, Any] = {
            "id": f"resp_fake_{ident}",
            "object": "response",
            "created_at": int(time.time()),
            "status": answer.status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model", "fake"),
            "output": output,
            "parallel_tool_calls": True,
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "tools": body.get("tools", []),
        }
        if answer.incomplete_reason is not None:
            response["incomplete_details"] = {"reason": answer.incomplete_reason}
        if answer.error is not None:
            code, message = answer.error
            response["error"] = {"code": code, "message": message}
        response["usage"] = None
        if answer.usage:
            response["usage"] = {
                "input_tokens": answer.input_tokens,
                "input_tokens_details": {"cached_tokens": answer.cached_tokens},
                "output_tokens": answer.output_tokens,
                "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
                "total_tokens": answer.input_tokens + answer.output_tokens,
            }
        return response


@pytest.fixture
def fake_responses() -> Iterator[FakeResponsesServer]:
    """A started ``FakeResponsesServer``, stopped after the test."""
    with FakeResponsesServer() as server:
        yield server
