"""Reading a streamed model answer: Server-Sent Events over one POST, bounded and classified.

Both HTTP providers stream the same way: ``POST`` the body with ``Accept: text/event-stream``,
then read the answer's events as they arrive (``SseDecoder``, the WHATWG event-stream
format: ``event:``/``data:`` fields, a blank line ends an event, ``:`` starts a comment).
A failure is classified exactly as a request/response call's is (``transport_errors``,
``check_status``): a cut connection or a read timeout mid-stream is the same retryable error
as one before the answer. The stream is bounded like a JSON answer: no event's data, and
nothing a provider keeps of the answer, may pass ``MAX_JSON_BYTES`` (``StreamBudget``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import orjson
from pydantic import JsonValue

from processors._http import read_at_most
from processors._provider import transport_errors
from topics import MAX_JSON_BYTES, JsonLimitExceeded

__all__ = ["ServerEvent", "SseDecoder", "StreamBudget", "event_stream"]

_ERROR_BODY = 64 * 1024
#: What the wire may carry beyond the answer kept: one-token events are mostly framing.
_FRAMING_ALLOWANCE = 32


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One server-sent event.

    Attributes:
        event: The ``event:`` field (``message`` when the server sent none).
        data: The ``data:`` lines, joined with newlines.
        id: The last ``id:`` field seen, if any.
    """

    event: str
    data: str
    id: str | None = None


class SseDecoder:
    """Turns the bytes of an event stream into events, as they arrive in any split.

    Args:
        max_line: The longest line, and the most data one event may hold (bytes); more
            raises ``JsonLimitExceeded``.
    """

    def __init__(self, max_line: int = MAX_JSON_BYTES) -> None:
        self._pending = b""
        self._after_cr = False
        self._max_line = max_line
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        """The events ``chunk`` completes (bytes of an unfinished line are kept)."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the second half of a CRLF split between two chunks
        self._after_cr = chunk.endswith(b"\r")
        buffer = self._pending + chunk
        lines = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > self._max_line:
            raise JsonLimitExceeded(f"an event stream line is over {self._max_line} bytes")
        events = []
        for raw in lines:
            event = self._line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerEvent | None:
        if not line:
            if not self._data and not self._event:
                return None
            event = ServerEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._size = "", [], 0
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1
            if self._size > self._max_line:
                raise JsonLimitExceeded(f"an event's data is over {self._max_line} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None


class StreamBudget:
    """Counts what a provider keeps of a streamed answer against ``MAX_JSON_BYTES``.

    Args:
        where: Names the call in the error.
    """

    def __init__(self, where: str) -> None:
        self._where = where
        self._kept = 0

    def keep(self, text: str) -> None:
        """Count ``text`` as kept.

        Raises:
            JsonLimitExceeded: The answer kept so far is over the JSON size limit.
        """
        self._kept += len(text.encode("utf-8", errors="surrogatepass"))
        if self._kept > MAX_JSON_BYTES:
            raise JsonLimitExceeded(
                f"{self._where}: the answer is over {MAX_JSON_BYTES} bytes, the JSON size limit"
            )


@asynccontextmanager
async def event_stream(
    client: httpx.AsyncClient,
    url: str,
    body: Mapping[str, JsonValue],
    headers: Mapping[str, str],
    *,
    timeout: float,
    where: str,
    key: str | None,
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[ServerEvent] | None]]:
    """POST ``body`` and read the answer as an event stream.

    Yields the response and its events. A response that is not a success, or a success
    that is not an event stream (a server that answers whole despite ``stream: true``), is
    read (bounded, like ``post_json``) and yielded with ``None`` for the events: the caller
    classifies it, or reads it as the request/response answer.

    Raises:
        ProviderTimeout: No answer, or no next bytes, within ``timeout``.
        ProviderUnavailable: The connection failed, was reset or closed, before or during
            the stream.
        ConfigurationError: The URL is unusable.
        JsonLimitExceeded: The answer is over the JSON size limit.
    """
    sent = {"Content-Type": "application/json", "Accept": "text/event-stream", **headers}
    content = orjson.dumps(body)
    with transport_errors(where, timeout, key):
        async with client.stream(
            "POST", url, content=content, headers=sent, timeout=timeout
        ) as streamed:
            media = streamed.headers.get("content-type", "").split(";")[0].strip().lower()
            if not 200 <= streamed.status_code < 300 or media != "text/event-stream":
                yield await _whole(streamed, where), None
                return
            events = _events(streamed, where)
            try:
                yield streamed, events
            finally:
                await events.aclose()  # the caller may stop early (at [DONE])


async def _whole(streamed: httpx.Response, where: str) -> httpx.Response:
    success = 200 <= streamed.status_code < 300
    answer, complete = await read_at_most(streamed, MAX_JSON_BYTES if success else _ERROR_BODY)
    if not complete and success:
        raise JsonLimitExceeded(
            f"{where}: the answer is over {MAX_JSON_BYTES} bytes, the JSON size limit"
        )
    kept = [
        (name, value)
        for name, value in streamed.headers.multi_items()
        if name.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    return httpx.Response(
        streamed.status_code, headers=kept, content=answer, request=streamed.request
    )


async def _events(streamed: httpx.Response, where: str) -> AsyncGenerator[ServerEvent, None]:
    decoder = SseDecoder()
    wire = 0
    async for chunk in streamed.aiter_bytes():
        wire += len(chunk)
        if wire > _FRAMING_ALLOWANCE * MAX_JSON_BYTES:
            raise JsonLimitExceeded(
                f"{where}: the event stream is over {_FRAMING_ALLOWANCE * MAX_JSON_BYTES} bytes"
            )
        for event in decoder.feed(chunk):
            yield event
