"""``GET /v1/runs/{id}/stream``: a run's streamed text as Server-Sent Events.

The run's owner serves it. It reads the ``stream`` partition of the run (the run id's
partition, as the processors wrote it) from the run's start (found by time, with a margin
for clocks) or, with ``Last-Event-ID``, from the record after the one named, and sends each
of the run's chunks as ``event: chunk`` (``id:`` the record's offset). When the run has
finished it reads on to the end of the partition as it then is, and sends ``event: end``
with the run's status: every chunk was delivered before its step's result, so none is
missed. A comment line every ``keepalive_s`` keeps proxies from closing an idle stream.

The chunks are a preview, not the result: read the result from ``GET /v1/runs/{id}``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
from aiokafka import TopicPartition

from streams._kafka import kafka_consumer
from streams.coordinator import RunState
from topics import Codec, DecodeError, StreamChunk, TopicCatalog, partition_for

__all__ = ["RunStreamReader"]

_CLOCK_MARGIN_MS = 60_000

Write = Callable[[bytes], Awaitable[None]]


def frame(event: str, data: object, ident: int | None = None) -> bytes:
    """One server-sent event."""
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


class RunStreamReader:
    """Serves runs' chunks from the ``stream`` topic.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Decodes the chunks.
        keepalive_s: Seconds between keep-alive comments on an idle stream.
        max_streams: Streams served at once (each holds a Kafka consumer).
    """

    def __init__(
        self,
        bootstrap: str,
        catalog: TopicCatalog,
        codec: Codec,
        keepalive_s: float = 15.0,
        max_streams: int = 64,
    ) -> None:
        self.bootstrap = bootstrap
        self.catalog = catalog
        self.codec = codec
        self.keepalive_s = keepalive_s
        self.max_streams = max_streams
        self._open = 0

    def has_room(self) -> bool:
        """Whether another stream may be served (or relayed) now."""
        return self._open < self.max_streams

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Count a stream as open inside the block."""
        self._open += 1
        try:
            yield
        finally:
            self._open -= 1

    async def serve(
        self,
        run_id: str,
        state_of: Callable[[], RunState | None],
        write: Write,
        after: int | None,
    ) -> None:
        """Write the run's chunks, then ``end`` once the run has finished.

        Args:
            run_id: The run.
            state_of: The run's current state (``None`` once forgotten).
            write: Sends bytes to the client.
            after: The offset of the last chunk the client has (``Last-Event-ID``).
        """
        async with self.slot():
            await self._serve(run_id, state_of, write, after)

    async def _serve(
        self,
        run_id: str,
        state_of: Callable[[], RunState | None],
        write: Write,
        after: int | None,
    ) -> None:
        topic = self.catalog.stream
        tp = TopicPartition(topic.name, partition_for(run_id, topic.partitions))
        consumer = kafka_consumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            state = state_of()
            if after is not None:
                consumer.seek(tp, after + 1)
            elif state is not None:
                since = int(state.started_at.timestamp() * 1000) - _CLOCK_MARGIN_MS
                found = (await consumer.offsets_for_times({tp: max(since, 0)}))[tp]
                if found is not None:
                    consumer.seek(tp, found.offset)
                else:
                    consumer.seek(tp, (await consumer.end_offsets([tp]))[tp])
            idle = time.monotonic()
            end: int | None = None
            while True:
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=500)
                for record in batch.get(tp, []):
                    chunk = self._chunk(record.value)
                    if chunk is not None and chunk.run_id == run_id:
                        await write(frame("chunk", _view(chunk), record.offset))
                        idle = time.monotonic()
                if end is not None and await consumer.position(tp) >= end:
                    break
                if end is None:
                    state = state_of()
                    if state is None or state.finished:
                        end = (await consumer.end_offsets([tp]))[tp]
                        continue
                if time.monotonic() - idle >= self.keepalive_s:
                    await write(b": keep-alive\n\n")
                    idle = time.monotonic()
            status = state.status.value if state is not None and state.status else "unknown"
            await write(frame("end", {"run_id": run_id, "status": status}))
        finally:
            await consumer.stop()

    def _chunk(self, value: bytes | None) -> StreamChunk | None:
        try:
            return self.codec.decode(value, StreamChunk) if value is not None else None
        except DecodeError:
            return None


def _view(chunk: StreamChunk) -> dict[str, object]:
    view: dict[str, object] = chunk.model_dump(mode="json")
    view.pop("run_id")
    return view
