"""The worker's response cache: model answers shared by every worker through a topic.

Entries live on the compacted ``llm-cache`` topic, keyed by cache key. Every worker that runs
``llm`` or ``agent`` processors reads the whole topic into memory when it starts (up to the
end offsets it finds, before its processors take requests) and keeps following it; an answer
one worker caches is served by all of them from then on. A miss that the model answered is
kept in memory at once and written to the topic without waiting for the broker.

Entries older than the TTL (``cache_ttl``) are not served, not kept in memory, and leave the
topic through its retention (the longest TTL allowed). The latest record under a key wins,
as compaction would keep it.

The cache never fails a step: a record that does not decode is skipped, a write that fails
is logged, and while the topic cannot be read the worker just misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from processors import MemoryResponseCache
from streams._deadletters import letter_for, too_large
from streams._kafka import kafka_consumer, kafka_producer
from streams._metrics import Metrics
from topics import (
    MAX_RECORD_BYTES,
    CacheEntry,
    Codec,
    ConfigurationError,
    DecodeError,
    RetryableError,
    TopicCatalog,
    client_source,
)

__all__ = ["KafkaResponseCache"]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class KafkaResponseCache:
    """A ``ResponseCache`` shared through the catalog's ``llm_cache`` topic.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Encodes and decodes entries.
        ttl_s: Seconds an entry is served after the model answered; must be positive.
        clock: The current time.
        load_timeout_s: How long ``start`` waits to read the topic to its end before it lets
            the worker start anyway (the rest is read in the background).
        metrics: The worker's metrics (dead letters written).
        source: The ``ce_source`` of the entries it writes.
        max_entry_bytes: The largest entry written to the topic; a larger one (a long
            answer) is kept in this worker's memory only (``claim_threshold`` when claim
            checks are on: no record passes it).
    """

    def __init__(
        self,
        bootstrap: str,
        catalog: TopicCatalog,
        codec: Codec,
        *,
        ttl_s: float,
        clock: Callable[[], datetime] = _utcnow,
        load_timeout_s: float = 60.0,
        metrics: Metrics | None = None,
        source: str | None = None,
        max_entry_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._max_entry_bytes = max_entry_bytes
        self._source = source or client_source("workers")
        self.entries = MemoryResponseCache(ttl_s, clock)
        self._metrics = metrics
        self._topic = catalog.llm_cache
        self._dead_letters = catalog.dead_letter
        self._bootstrap = bootstrap
        self._codec = codec
        self._load_timeout_s = load_timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._partitions: list[TopicPartition] = []
        self._advanced = asyncio.Event()
        #: Records read from the topic so far (entries, tombstones and skipped ones).
        self.records_read = 0
        #: Records skipped because they are not cache entries.
        self.skipped = 0
        #: Entries written to the topic that the broker refused.
        self.write_failures = 0

    async def start(self) -> None:
        """Read the topic up to its current end, then keep following it in the background.

        Raises:
            RetryableError: The cluster cannot be reached.
            ConfigurationError: The cluster has no cache topic.
        """
        consumer = kafka_consumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        producer = kafka_producer(
            self._source,
            self._codec,
            bootstrap_servers=self._bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        try:
            await consumer.start()
            await producer.start()
            exists = self._topic.name in await consumer.topics()
        except KafkaError as exc:
            await consumer.stop()
            await producer.stop()
            raise RetryableError(
                f"cannot open the response cache {self._topic.name}: {exc}"
            ) from exc
        if not exists:
            await consumer.stop()
            await producer.stop()
            raise ConfigurationError(
                f"the response cache topic {self._topic.name} does not exist "
                "(`baton topics create` creates it)"
            )
        self._consumer, self._producer = consumer, producer
        self._partitions = [
            TopicPartition(self._topic.name, p) for p in range(self._topic.partitions)
        ]
        consumer.assign(self._partitions)
        await consumer.seek_to_beginning(*self._partitions)
        ends = await consumer.end_offsets(self._partitions)
        self._task = asyncio.create_task(self._follow(), name="response-cache")
        started = time.monotonic()
        if not await self.caught_up(ends, self._load_timeout_s):
            log.warning(
                "the response cache was not read to its end in %.0f s; reading on in the "
                "background (until then, calls it has answered before may miss)",
                self._load_timeout_s,
            )
        log.info(
            "response cache: %d entries from %d records in %.1f s",
            len(self.entries),
            self.records_read,
            time.monotonic() - started,
        )

    async def stop(self) -> None:
        """Stop following the topic, after sending the entries written so far."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                await self._producer.flush()
            await self._producer.stop()
        if self._consumer is not None:
            await self._consumer.stop()

    async def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if one younger than the TTL has been read or written here."""
        return await self.entries.get(key)

    async def put(self, entry: CacheEntry) -> None:
        """Keep an entry here at once, and write it to the topic for every other worker."""
        self.entries.remember(entry)
        if self._producer is None:
            return
        value = self._codec.encode(entry)
        if len(value) > self._max_entry_bytes:
            return
        try:
            delivery = await self._producer.send(self._topic.name, value, key=entry.key.encode())
        except KafkaError as exc:
            self.write_failures += 1
            log.warning("could not write a response cache entry: %s", exc)
            return
        delivery.add_done_callback(self._delivered)

    async def caught_up(self, ends: dict[TopicPartition, int], timeout_s: float) -> bool:
        """Wait until every partition has been read up to ``ends``; whether it was in time."""
        assert self._consumer is not None
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [tp for tp in self._partitions if await self._consumer.position(tp) < ends[tp]]
            if not behind:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)

    async def end_offsets(self) -> dict[TopicPartition, int]:
        """The topic's end offsets now (to wait for with ``caught_up``)."""
        assert self._consumer is not None
        ends: dict[TopicPartition, int] = await self._consumer.end_offsets(self._partitions)
        return ends

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("reading the response cache: %s", exc)
                await asyncio.sleep(1.0)  # the client reconnects on its own; do not spin
                continue
            for records in batches.values():
                for record in records:
                    problem = self._apply(record)
                    if problem is not None:
                        await self._dead_letter(record, problem)
            self._advanced.set()

    def _apply(self, record: ConsumerRecord[bytes, bytes]) -> str | None:
        """Take one record into the cache; why it was refused, if it was."""
        self.records_read += 1
        key = record.key.decode(errors="replace") if record.key is not None else None
        if record.value is None:
            if key is not None:
                self.entries.forget(key)
            return None
        problem = too_large(record)
        if problem is None:
            try:
                entry = self._codec.decode(record.value, CacheEntry)
            except DecodeError as exc:
                problem = exc.reason
            else:
                if entry.key == key:
                    self.entries.remember(entry)
                    return None
                problem = "its key is not the entry's"
        self.skipped += 1
        log.warning("skipping the response cache record at offset %d: %s", record.offset, problem)
        return problem

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        assert self._producer is not None
        letter = letter_for(record, error_class="DecodeError", reason=reason, at=_utcnow())
        try:
            await self._producer.send_and_wait(
                self._dead_letters.name,
                self._codec.encode(letter),
                key=record.key,
                partition=record.partition % self._dead_letters.partitions,
            )
        except KafkaError as exc:
            log.warning("could not dead-letter a response cache record: %s", exc)
            return
        if self._metrics is not None:
            self._metrics.dead_lettered(letter.error_class)

    def _delivered(self, delivery: asyncio.Future[object]) -> None:
        if delivery.cancelled():
            return
        error = delivery.exception()
        if error is not None:
            self.write_failures += 1
            log.warning("could not write a response cache entry: %s", error)
