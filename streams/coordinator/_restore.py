"""Taking a partition over: its runs read back from ``run-state``, then from the journal.

``run-state`` holds each run's last flushed record (compacted, and deleted by the broker
past the retention); ``run-journal`` holds what commits changed since the last flush (the
coordinator deletes the rest). Both are read with ``read_committed`` up to their end, every
record through ``PartitionStore.load``, which keeps the newest version of each run whatever
the order. So a takeover reads the runs in flight, the runs finished within the retention
and the journal of a few seconds: never every run ever made.

The caller starts the partition's transactional producers first: that fences the previous
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

__all__ = ["Restored", "restore_partition"]

Poison = Callable[[Any, str], Awaitable[None]]


@dataclass(frozen=True)
class Restored:
    """What a takeover read.

    Attributes:
        snapshots: ``run-state`` records read.
        journal: Journal entries read.
        seconds: How long it took.
    """

    snapshots: int
    journal: int
    seconds: float


async def restore_partition(
    reader: AIOKafkaConsumer,
    catalog: TopicCatalog,
    codec: Codec,
    store: PartitionStore,
    poison: Poison,
) -> Restored:
    """Read one partition's runs into ``store`` (see the module docstring)."""
    started = time.monotonic()
    partition = store.partition
    snapshots = 0
    state_tp = TopicPartition(catalog.run_state.name, partition)
    async for record in _read_all(reader, state_tp):
        if record.key is None:
            await poison(record, "a run-state record without a run id")
            continue
        if record.value is None:
            continue  # a tombstone: the run was forgotten
        problem = too_large(record)
        if problem is not None:
            await poison(record, problem)
            continue
        try:
            store.load(
                record.key.decode(),
                record.value,
                written_at=record.timestamp / 1000,
                journal=False,
            )
        except (ValueError, UnicodeDecodeError) as exc:
            await poison(record, f"a run-state record that is not a stored run: {exc}")
            continue
        snapshots += 1
    entries = 0
    journal_tp = TopicPartition(catalog.run_journal.name, partition)
    async for record in _read_all(reader, journal_tp):
        problem = too_large(record)
        if problem is not None:
            await poison(record, problem)
            continue
        try:
            journal = codec.decode(record.value, RunJournal)
        except DecodeError as exc:
            await poison(record, exc.reason)
            continue
        for entry in journal.entries:
            try:
                store.load(
                    entry.run_id, entry.record, written_at=record.timestamp / 1000, journal=True
                )
            except ValueError as exc:
                await poison(record, f"journal entry of {entry.run_id!r}: {exc}")
                continue
            entries += 1
    store.settle()
    store.expire(time.time())
    return Restored(snapshots, entries, time.monotonic() - started)


async def _read_all(reader: AIOKafkaConsumer, tp: TopicPartition) -> Any:
    """Every record of one partition, from its start to its (committed) end."""
    reader.assign([tp])
    await reader.seek_to_beginning(tp)
    end = (await reader.end_offsets([tp]))[tp]
    while await reader.position(tp) < end:
        batch = await reader.getmany(tp, timeout_ms=500, max_records=5000)
        for record in batch.get(tp, []):
            yield record
