"""The ``stream`` topic's writer: a step attempt's streamed text, coalesced into chunks.

The processors' service opens an ``AttemptStream`` for every llm and agent attempt and makes
it current around the attempt (``processors.streaming_to``); the model client hands it each
call and its text. Pieces are coalesced: a chunk goes out when ``flush_chars`` characters
are waiting or the oldest waiting piece is ``flush_s`` old, not one record per token. Each
chunk is keyed and partitioned by run id like every record of the run.

Best effort, by design: chunks are a preview, not the result (that goes through
``step-results`` unchanged, exactly once as ever). A chunk that cannot be written is
logged and dropped; it never fails or delays the step beyond the wait for the last chunk's
delivery before the result is reported (so a reader of both sees the text first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from processors import TextCallback
from topics import Codec, StepKind, StepRequested, StreamChunk, TopicCatalog, partition_for

__all__ = ["AttemptStream", "turn_of"]

log = logging.getLogger(__name__)

#: Step kinds whose model calls stream.
STREAMED_KINDS = frozenset({StepKind.llm, StepKind.agent})


def turn_of(request: StepRequested) -> int:
    """An agent turn's number (the tool-call rounds in its conversation); 0 for other steps."""
    if request.kind != StepKind.agent or not isinstance(request.params, dict):
        return 0
    messages = request.params.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(
        1
        for m in messages
        if isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls")
    )


class AttemptStream:
    """The streamed text of one step attempt (a ``processors.TextStream``).

    Args:
        producer: Writes the chunks (an ``EventProducer``).
        catalog: The topics.
        codec: Encodes the chunks.
        request: The attempt.
        clock: The time, for each chunk's ``at``.
        flush_s: The longest a piece of text waits before it goes out.
        flush_chars: Characters waiting that send a chunk at once.
    """

    def __init__(
        self,
        producer: Any,
        catalog: TopicCatalog,
        codec: Codec,
        request: StepRequested,
        clock: Callable[[], datetime],
        *,
        flush_s: float = 0.05,
        flush_chars: int = 512,
    ) -> None:
        self._producer = producer
        self._topic = catalog.stream
        self._codec = codec
        self._request = request
        self._clock = clock
        self._flush_s = flush_s
        self._flush_chars = flush_chars
        self._turn = turn_of(request)
        self._seq = 0
        self._calls = 0
        self._waiting: list[str] = []
        self._restart: int | None = request.attempt - 1 if request.attempt > 1 else None
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._deliveries: list[asyncio.Future[Any]] = []

    def call(self) -> TextCallback:
        """A model call begins; a second one of this attempt starts the text over."""
        self._calls += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._calls > 1:
            self._waiting.clear()  # the cut call's unsent text is superseded anyway
            self._restart = self._request.attempt
        return self._text

    async def _text(self, text: str) -> None:
        self._waiting.append(text)
        if sum(len(t) for t in self._waiting) >= self._flush_chars:
            await self._flush(final=False)
        elif self._timer is None:
            self._timer = asyncio.create_task(self._later())

    async def _later(self) -> None:
        await asyncio.sleep(self._flush_s)
        self._timer = None
        await self._flush(final=False)

    async def finish(self) -> None:
        """The call answered in full: what is waiting goes out, marked ``final``."""
        await self._flush(final=True)

    async def close(self) -> None:
        """The attempt is over: send what waits, then wait (briefly) for the chunks' delivery."""
        if self._waiting:
            await self._flush(final=False)
        if self._deliveries:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*self._deliveries), timeout=5.0)
            self._deliveries.clear()

    async def _flush(self, *, final: bool) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
            self._timer = None
        async with self._lock:
            if not self._waiting and not final:
                return
            text, self._waiting = "".join(self._waiting), []
            request = self._request
            chunk = StreamChunk(
                run_id=request.run_id,
                step=request.step,
                turn=self._turn,
                attempt=request.attempt,
                seq=self._seq,
                text=text,
                final=final,
                restarted=self._restart is not None,
                supersedes_attempt=self._restart,
                at=self._clock(),
            )
            self._seq += 1
            self._restart = None
            try:
                delivery = await self._producer.send(
                    self._topic.name,
                    self._codec.encode(chunk),
                    key=request.run_id.encode(),
                    partition=partition_for(request.run_id, self._topic.partitions),
                )
                self._deliveries.append(delivery)
            except Exception as exc:  # a preview: the step goes on without it
                log.warning("stream chunk of %s/%s dropped: %s", request.run_id, request.step, exc)
