"""A run's timeline: its events, read from the ``run-events`` topic by the run's owner.

Every event of a run is on one partition of ``run-events`` (the run's), in order, packed in
``RunEventBatch`` records with the other runs of each commit. The owner knows when the run
started and how many events it has (``RunState.seq``; a finished run's summary keeps both
for the run retention, and ``run-events`` is kept longer than that). So a timeline is read
from the offset of the run's start (found by time, with a margin for clocks), forward, keeping
the run's events, until all of them are read, or a bound is reached: then the answer's
**cursor** (the offset to read on from) asks for the rest. A watcher polls with the cursor
until the run has ended and every event is read.

Reads are committed only (``read_committed``): a timeline never shows an event the coordinator
did not commit. Each read is bounded in records, events and seconds, and few run at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams._kafka import kafka_consumer
from streams.coordinator import RunState
from topics import Codec, DecodeError, RunEvent, TopicCatalog, partition_for

__all__ = ["MAX_EVENTS", "TimelineReader", "TimelinePage"]

log = logging.getLogger(__name__)

#: The most events one answer holds.
MAX_EVENTS = 500
#: Records one read decodes at most (each holds a commit's events, of many runs).
_MAX_RECORDS = 5000
_READ_SECONDS = 3.0
#: Read from this long before the run started: producers' clocks are not the coordinator's.
_CLOCK_MARGIN_MS = 60_000
_CONCURRENT_READS = 4


@dataclass(frozen=True, slots=True)
class TimelinePage:
    """Events of one run from one read.

    Attributes:
        events: The run's events read, in order (JSON form).
        cursor: The offset to read on from.
        more: Whether records were left unread at the end of the partition as it was.
    """

    events: list[dict[str, Any]]
    cursor: int
    more: bool


class TimelineReader:
    """Reads runs' events from ``run-events``, for the runs this worker owns.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Decodes the event batches.
    """

    def __init__(self, bootstrap: str, catalog: TopicCatalog, codec: Codec) -> None:
        self.bootstrap = bootstrap
        self.catalog = catalog
        self.codec = codec
        self._reads = asyncio.Semaphore(_CONCURRENT_READS)

    async def read(self, state: RunState, cursor: int | None, limit: int) -> TimelinePage:
        """The run's events from ``cursor`` (or its start): ``limit`` or so of them.

        Every event of the last record read is kept, so a page may hold a few more.
        """
        topic = self.catalog.run_events
        tp = TopicPartition(topic.name, partition_for(state.run_id, topic.partitions))
        async with self._reads:
            consumer = kafka_consumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )
            await consumer.start()
            try:
                consumer.assign([tp])
                end = (await consumer.end_offsets([tp]))[tp]
                start = cursor if cursor is not None else await self._start(consumer, tp, state)
                start = min(start, end)
                consumer.seek(tp, start)
                return await self._scan(consumer, tp, state, start, end, limit)
            finally:
                await consumer.stop()

    async def _start(self, consumer: AIOKafkaConsumer, tp: TopicPartition, state: RunState) -> int:
        since_ms = int(state.started_at.timestamp() * 1000) - _CLOCK_MARGIN_MS
        found = (await consumer.offsets_for_times({tp: max(since_ms, 0)}))[tp]
        if found is not None:
            return int(found.offset)
        return int((await consumer.beginning_offsets([tp]))[tp])

    async def _scan(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        state: RunState,
        start: int,
        end: int,
        limit: int,
    ) -> TimelinePage:
        events: list[dict[str, Any]] = []
        position = start
        records = 0
        deadline = time.monotonic() + _READ_SECONDS
        last_seq = state.seq - 1 if state.finished else None
        done = False
        while not done and position < end and records < _MAX_RECORDS:
            if time.monotonic() > deadline:
                break
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=200)
            for record in batch.get(tp, []):
                records += 1
                position = record.offset + 1
                for event in self._events(record.value):
                    if event.run_id == state.run_id:
                        events.append(event.model_dump(mode="json"))
                        done = done or (last_seq is not None and event.seq >= last_seq)
                # A record's events are all kept, so the cursor never splits one.
                if done or len(events) >= limit:
                    done = True
                    break
            else:
                # Transaction markers take offsets too: the position says where reading is.
                position = max(position, await consumer.position(tp))
        complete = last_seq is not None and any(e["seq"] >= last_seq for e in events)
        return TimelinePage(events, position, position < end and not complete)

    def _events(self, value: bytes | None) -> list[RunEvent]:
        try:
            return self.codec.run_events(value)
        except DecodeError:
            return []  # not run events: nothing of any run's timeline
