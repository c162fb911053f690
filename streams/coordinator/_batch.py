"""One partition's share of a batch: its outputs, its state writes, its input offsets.

``exactly_once``: a Kafka transaction per batch on the partition's own transactional producer
(transactional id ``<prefix>-coordinator-<partition>``, so whoever owns the partition next
fences a zombie that still thinks it does). Outputs, state changelog records and the input
offsets commit together; a crash before the commit leaves no trace.

``at_least_once``: outputs first (their delivery awaited), then the state changelog records,
then the input offsets. A crash at any point means inputs are processed again from the last
saved state, so transitions may repeat; none is lost.

Either way, state writes become visible to later reads in the same batch at once, and reach
the partition's store only once the batch is committed. A run written several times in one
batch gets one changelog record, its last state.

The store holds each run's state as the changelog bytes it was restored from, or as the
decoded ``RunState`` once a batch has read or written it (so a busy run is not decoded again
for every event).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, MutableMapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.coordinator._state import RunState

__all__ = ["AtLeastOnceBatch", "Batch", "ExactlyOnceBatch", "Store"]

#: One partition's runs: changelog bytes until first read, then the decoded state.
Store = MutableMapping[bytes, "bytes | RunState"]


class Batch:
    """The shared part: pending state on top of the partition's store."""

    def __init__(self, partition: int, store: Store, changelog: str) -> None:
        self.partition = partition
        self._store = store
        self._changelog = changelog
        self._pending: dict[bytes, RunState] = {}
        #: After the commit: the states it saved, by key.
        self.saved: dict[bytes, RunState] = {}
        #: Events worth acting on once the batch is committed (approval requests).
        self.emitted: list[Any] = []

    def get(self, key: bytes) -> RunState | None:
        """A run's state as of this point of the batch."""
        pending = self._pending.get(key)
        if pending is not None:
            return pending
        stored = self._store.get(key)
        if isinstance(stored, bytes):
            stored = RunState.from_bytes(stored)
            self._store[key] = stored
        return stored

    async def begin(self) -> None:
        """Start the batch."""

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int
    ) -> Awaitable[Any]:
        """Send one output record."""
        raise NotImplementedError

    def put(self, key: bytes, state: RunState) -> None:
        """Write a run's state (saved when the batch commits)."""
        self._pending[key] = state

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Make the batch durable and move the inputs' offsets past it."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Drop the batch."""
        self._pending.clear()

    def _encoded(self) -> dict[bytes, bytes]:
        return {key: state.to_bytes() for key, state in self._pending.items()}

    def _apply(self, encoded: dict[bytes, bytes]) -> None:
        # Finished runs are rarely read again: keep them as their compact bytes.
        for key, state in self._pending.items():
            self._store[key] = encoded[key] if state.finished else state
        self.saved = dict(self._pending)
        self._pending.clear()


class ExactlyOnceBatch(Batch):
    """A batch inside one Kafka transaction."""

    def __init__(
        self,
        partition: int,
        store: Store,
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

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        encoded = self._encoded()
        for key, value in encoded.items():
            await self._producer.send(self._changelog, value, key=key, partition=self.partition)
        await self._producer.send_offsets_to_transaction(offsets, self._group_id)
        await self._producer.commit_transaction()
        self._apply(encoded)

    async def abort(self) -> None:
        await super().abort()
        await self._producer.abort_transaction()


class AtLeastOnceBatch(Batch):
    """A batch whose outputs are delivered before its state and offsets are saved."""

    def __init__(
        self,
        partition: int,
        store: Store,
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

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.gather(*self._deliveries)
        self._deliveries.clear()
        encoded = self._encoded()
        saved = [
            await self._producer.send(self._changelog, value, key=key, partition=self.partition)
            for key, value in encoded.items()
        ]
        await asyncio.gather(*saved)
        self._apply(encoded)
        await self._consumer.commit(offsets)

    async def abort(self) -> None:
        await super().abort()
        self._deliveries.clear()
