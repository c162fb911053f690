"""Taking partitions over: their runs read back from ``run-state`` and from the journal.

``run-state`` holds each run's last flushed record (compacted, and deleted by the broker
past the retention); ``run-journal`` holds what commits changed since the last flush (the
coordinator deletes the rest). Both are read with ``read_committed`` up to their end, every
record through ``PartitionStore.load``, which keeps the newest version of each run whatever
the order: so both topics, and every partition taken over at once, are read together. A
takeover reads the runs in flight, the runs finished within the retention and the journal of
a few seconds: never every run ever made.

The caller starts the partitions' transactional producers first: that fences the previous
owner and aborts what it left open, so what is read is final.

A record that is not a stored run (or a journal record that does not decode) is sent to the
dead-letter topic with its place and bytes, and left out; the restore goes on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams._deadletters import too_large
from streams.coordinator._store import PartitionStore
from topics import Codec, DecodeError, RunJournal, TopicCatalog

__all__ = ["Restored", "restore_partitions"]

Poison = Callable[[Any, str], Awaitable[None]]


@dataclass
class Restored:
    """What a takeover read for one partition.

    Attributes:
        snapshots: ``run-state`` records read.
        journal: Journal entries read.
        seconds: How long the takeover's read took (all its partitions together).
    """

    snapshots: int = 0
    journal: int = 0
    seconds: float = 0.0


async def restore_partitions(
    reader: AIOKafkaConsumer,
    catalog: TopicCatalog,
    codec: Codec,
    stores: dict[int, PartitionStore],
    poison: Poison,
) -> dict[int, Restored]:
    """Read the runs of these partitions into their stores (see the module docstring)."""
    started = time.monotonic()
    restored = {partition: Restored() for partition in stores}
    state_topic, journal_topic = catalog.run_state.name, catalog.run_journal.name
    tps = [TopicPartition(t, p) for p in stores for t in (state_topic, journal_topic)]
    async for record in _read_all(reader, tps):
        store = stores[record.partition]
        counts = restored[record.partition]
        problem = too_large(record)
        if problem is not None:
            await poison(record, problem)
        elif record.topic == state_topic:
            if await _snapshot(store, record, poison):
                counts.snapshots += 1
        else:
            counts.journal += await _journal(store, record, codec, poison)
    for store in stores.values():
        store.settle()
        store.expire(time.time())
    for counts in restored.values():
        counts.seconds = time.monotonic() - started
    return restored


async def _snapshot(store: PartitionStore, record: Any, poison: Poison) -> bool:
    if record.key is None:
        await poison(record, "a run-state record without a run id")
        return False
    if record.value is None:
        return False  # a tombstone: the run was forgotten
    try:
        store.load(
            record.key.decode(), record.value, written_at=record.timestamp / 1000, journal=False
        )
    except (ValueError, UnicodeDecodeError) as exc:
        await poison(record, f"a run-state record that is not a stored run: {exc}")
        return False
    return True


async def _journal(store: PartitionStore, record: Any, codec: Codec, poison: Poison) -> int:
    try:
        journal = codec.decode(record.value, RunJournal)
    except DecodeError as exc:
        await poison(record, exc.reason)
        return 0
    loaded = 0
    for entry in journal.entries:
        try:
            store.load(entry.run_id, entry.record, written_at=record.timestamp / 1000, journal=True)
        except ValueError as exc:
            await poison(record, f"journal entry of {entry.run_id!r}: {exc}")
            continue
        loaded += 1
    return loaded


async def _read_all(reader: AIOKafkaConsumer, tps: list[TopicPartition]) -> Any:
    """Every record of these partitions, from their start to their (committed) end."""
    starts = await reader.beginning_offsets(tps)
    ends = await reader.end_offsets(tps)
    todo = {tp for tp in tps if ends[tp] > starts[tp]}
    if not todo:
        return
    reader.assign(sorted(todo))
    for tp in todo:
        reader.seek(tp, starts[tp])
    while todo:
        batch = await reader.getmany(*todo, timeout_ms=500, max_records=5000)
        for records in batch.values():
            for record in records:
                yield record
        for tp in list(todo):
            if await reader.position(tp) >= ends[tp]:
                todo.discard(tp)
