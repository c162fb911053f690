"""T9's model provider: an OpenAI-compatible chat-completions server on loopback.

It runs on the bench's event loop (``asyncio.start_server`` on 127.0.0.1, a free port) and
answers ``POST /<arm>/v1/chat/completions`` with ``bench._questions.model_reply`` for the
request's ``model``, reporting token usage from the sizes of the prompt and the answer. It
keeps a ledger per arm (the first path segment) and model: calls, answers that were not the
JSON asked for, and the tokens it reported, so the bench can set the provider's side of the
bill against what baton accounted for.

Plain HTTP/1.1 with keep-alive and ``Content-Length`` bodies (what baton's HTTP client
sends); anything else gets a 4xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson

from bench._questions import completion_tokens, model_reply, prompt_tokens

__all__ = ["ChatServer", "Ledger"]


@dataclass
class Ledger:
    """What the server answered one arm, by model id."""

    calls: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    input_tokens: Counter[str] = field(default_factory=Counter)
    output_tokens: Counter[str] = field(default_factory=Counter)

    def copy(self) -> Ledger:
        """A snapshot."""
        return Ledger(
            Counter(self.calls),
            Counter(self.malformed),
            Counter(self.input_tokens),
            Counter(self.output_tokens),
        )

    def since(self, earlier: Ledger) -> Ledger:
        """What was added after the snapshot ``earlier``."""
        return Ledger(
            self.calls - earlier.calls,
            self.malformed - earlier.malformed,
            self.input_tokens - earlier.input_tokens,
            self.output_tokens - earlier.output_tokens,
        )


class ChatServer:
    """The loopback model server (see the module docstring)."""

    def __init__(self) -> None:
        self.ledgers: dict[str, Ledger] = {}
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self.port = 0

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._serve, host="127.0.0.1", port=0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop open connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def base_url(self, arm: str) -> str:
        """The ``base_url`` of an arm's routes."""
        return f"http://127.0.0.1:{self.port}/{arm}/v1"

    def ledger(self, arm: str) -> Ledger:
        """The arm's ledger so far (a snapshot)."""
        return self.ledgers.setdefault(arm, Ledger()).copy()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._exchange(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        method, target, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            return await self._send(writer, 411, {"error": {"message": "Content-Length only"}})
        body = await reader.readexactly(int(headers["content-length"]))
        path = target.split("?")[0].strip("/").split("/")
        if method != "POST" or len(path) != 4 or path[1:] != ["v1", "chat", "completions"]:
            return await self._send(writer, 404, {"error": {"message": f"no route {target}"}})
        try:
            request = orjson.loads(body)
            model = str(request["model"])
            contents = [str(m.get("content") or "") for m in request["messages"]]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return await self._send(writer, 400, {"error": {"message": "not a chat request"}})
        return await self._send(writer, 200, self._complete(path[0], model, contents))

    def _complete(self, arm: str, model: str, contents: list[str]) -> dict[str, Any]:
        reply = model_reply(model, contents[-1] if contents else "")
        used_in, used_out = prompt_tokens(contents), completion_tokens(reply.text)
        ledger = self.ledgers.setdefault(arm, Ledger())
        ledger.calls[model] += 1
        ledger.malformed[model] += not reply.well_formed
        ledger.input_tokens[model] += used_in
        ledger.output_tokens[model] += used_out
        return {
            "id": f"chatcmpl-bench-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.text},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": used_in,
                "completion_tokens": used_out,
                "total_tokens": used_in + used_out,
            },
        }

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: Any) -> bool:
        body = orjson.dumps(payload)
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        return status < 400 or status == 404
