"""A batch opened while its partition's previous batch commits reads the runs through it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition

from streams.coordinator._batch import AtLeastOnceBatch
from streams.coordinator._store import PartitionStore
from tests.unit.test_store import running
from topics import Codec, TopicCatalog

CATALOG = TopicCatalog(prefix="chain", partitions=4)
CODEC = Codec()


class Metadata:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class Producer:
    """Acknowledges every record at once, with its offset on its topic."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any:
        self.sent.append((topic, key))
        future: asyncio.Future[Metadata] = asyncio.get_running_loop().create_future()
        future.set_result(Metadata(len(self.sent)))
        return future


class Consumer:
    def __init__(self) -> None:
        self.committed: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))


def batch(store: PartitionStore, producer: Producer, consumer: Consumer) -> AtLeastOnceBatch:
    return AtLeastOnceBatch(store, CATALOG, CODEC, producer, consumer)  # type: ignore[arg-type]


async def test_the_next_batch_sees_the_committing_batchs_runs_and_builds_on_them() -> None:
    store = PartitionStore(0, 3600)
    producer, consumer = Producer(), Consumer()
    first = batch(store, producer, consumer)
    one = running("r1")
    first.put("r1", one, one.to_bytes())
    first.consumed(TopicPartition("chain.step-results", 0), 7)

    second = batch(store, producer, consumer)
    second.parent = first
    assert store.get("r1") is None  # not committed yet
    assert second.get("r1") == one  # but the next batch builds on it
    two = one.model_copy(update={"seq": one.seq + 1})
    second.put("r1", two, two.to_bytes())
    assert second.get("r1") == two and first.get("r1") == one

    await first.commit()
    assert store.get("r1") == one and store.version("r1") == 1
    assert second.get("r1") == two
    await second.commit()
    assert store.get("r1") == two and store.version("r1") == 2
    assert consumer.committed == [{TopicPartition("chain.step-results", 0): 8}]


async def test_a_run_the_committing_batch_did_not_touch_reads_from_the_store() -> None:
    store = PartitionStore(0, 3600)
    producer, consumer = Producer(), Consumer()
    base = batch(store, producer, consumer)
    kept = running("r2")
    base.put("r2", kept, kept.to_bytes())
    await base.commit()
    first = batch(store, producer, consumer)
    second = batch(store, producer, consumer)
    second.parent = first
    assert second.get("r2") == kept
    assert second.get("nobody") is None
