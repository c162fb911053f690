"""One partition's share of a batch: its outputs, its state writes, its input offsets.

``exactly_once``: a Kafka transaction per batch on the partition's own transactional producer
(transactional id ``<prefix>-coordinator-<partition>``, so whoever owns the partition next
fences a zombie that still thinks it does). Outputs, state changelog records and the input
offsets commit together; a crash before the commit leaves no trace.

``at_least_once``: outputs first (their delivery awaited), then the state changelog records,
then the input offsets. A crash at any point means inputs are processed again from the last
saved state, so transitions may repeat; none is lost.

Either way, state writes become visible to later reads in the same batch at once, and reach
the partition's store only once the batch is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, MutableMapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

__all__ = ["Batch", "ExactlyOnceBatch", "AtLeastOnceBatch"]


class Batch:
    """The shared part: pending state on top of the partition's store."""

    def __init__(self, partition: int, store: MutableMapping[bytes, bytes], changelog: str) -> None:
        self.partition = partition
        self._store = store
        self._changelog = changelog
        self._pending: dict[bytes, bytes] = {}

    def get(self, key: bytes) -> bytes | None:
        """A run's state as of this point of the batch."""
        pending = self._pending.get(key)
        return pending if pending is not None else self._store.get(key)

    async def begin(self) -> None:
        """Start the batch."""

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int
    ) -> Awaitable[Any]:
        """Send one output record."""
        raise NotImplementedError

    async def put(self, key: bytes, value: bytes) -> None:
        """Write a run's state."""
        raise NotImplementedError

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Make the batch durable and move the inputs' offsets past it."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Drop the batch."""
        self._pending.clear()

    def _apply(self) -> None:
        self._store.update(self._pending)
        self._pending.clear()


class ExactlyOnceBatch(Batch):
    """A batch inside one Kafka transaction."""

    def __init__(
        self,
        partition: int,
        store: MutableMapping[bytes, bytes],
        changelog: str,
        producer: AIOKafkaProducer,
        group_id: str,
    ) -> None:
        super().__init__(partition, store, changelog)
        self._producer = producer
        self._group_id = group_id

    async def begin(self) -> None:
        await self._producer.begin_transaction()

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int
    ) -> Awaitable[Any]:
        future: Awaitable[Any] = await self._producer.send(
            topic, value, key=key, partition=partition
        )
        return future

    async def put(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value
        await self._producer.send(self._changelog, value, key=key, partition=self.partition)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await self._producer.send_offsets_to_transaction(offsets, self._group_id)
        await self._producer.commit_transaction()
        self._apply()

    async def abort(self) -> None:
        await super().abort()
        await self._producer.abort_transaction()


class AtLeastOnceBatch(Batch):
    """A batch whose outputs are delivered before its state and offsets are saved."""

    def __init__(
        self,
        partition: int,
        store: MutableMapping[bytes, bytes],
        changelog: str,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
    ) -> None:
        super().__init__(partition, store, changelog)
        self._producer = producer
        self._consumer = consumer
        self._deliveries: list[Awaitable[Any]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int
    ) -> Awaitable[Any]:
        future: Awaitable[Any] = await self._producer.send(
            topic, value, key=key, partition=partition
        )
        self._deliveries.append(future)
        return future

    async def put(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.gather(*self._deliveries)
        self._deliveries.clear()
        saved = [
            await self._producer.send(self._changelog, value, key=key, partition=self.partition)
            for key, value in self._pending.items()
        ]
        await asyncio.gather(*saved)
        self._apply()
        await self._consumer.commit(offsets)

    async def abort(self) -> None:
        await super().abort()
        self._deliveries.clear()
