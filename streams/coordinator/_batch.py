"""One partition's open commit: the transitions it gathers and how they become durable.

A ``Batch`` is open for at most the commit interval (longer only while the partition's
previous batch is still committing: one commit per partition is in flight at a time, and
the batch opened during it reads the runs it changed through it, ``parent``). It
collects, for one partition, the input offsets it consumed, the outputs it sent, the new
state of every run it changed and the run events those changes produced; then it commits
them together:

- ``exactly_once``: a Kafka transaction on one of the partition's two transactional
  producers (ids ``<prefix>-coordinator-<partition>-a|b``, used in turn: while one
  transaction's markers are being written, the next one runs on the other producer instead
  of waiting for them; whoever owns the partition next starts both, which fences a zombie).
  Outputs, the journal record, the run-event batch, the flushed snapshots and the input
  offsets commit together; a crash before the commit leaves no trace.
- ``at_least_once``: outputs go out at once; at the commit their delivery is awaited, then
  the journal, run events and snapshots are written, then the input offsets. A crash at any
  point means inputs are processed again from the last committed state: transitions may
  repeat, none is lost.

Either way the new states reach the partition's store only once committed, and a batch
that fails is dropped whole (``abort``) and its inputs read again. The store keeps them in
the stored form (``_store.pack``) with a version one above the last committed one.

Each commit writes one ``RunJournal`` and one ``RunEventBatch`` record (more only when they
pass the record size), not one per run; now and then (``flush``) it also writes the runs
changed since the last flush to the compacted ``run-state`` topic, after which the journal
before it is no longer needed, and an ``AuditAnchor`` with those runs' audit chain heads
(signed with the worker key, when there is one: docs/audit.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams._metrics import Tally
from streams.coordinator._state import RunState
from streams.coordinator._store import PartitionStore, summary_record
from topics import (
    MAX_RECORD_BYTES,
    AnchoredRun,
    ApprovalRequested,
    Codec,
    RunEventBatch,
    RunJournal,
    TopicCatalog,
    anchor_runs,
    sign_anchor,
)

if TYPE_CHECKING:
    from streams._tracing import Headers, PendingSpan

__all__ = ["ANCHOR_KEY_ID", "AtLeastOnceBatch", "Batch", "ExactlyOnceBatch", "Prepared"]

#: Runs per ``AuditAnchor`` record (a run id, a seq and a hash each: well under the limit).
ANCHOR_RUNS_PER_RECORD = 2000
#: The key id anchors signed with the worker key carry.
ANCHOR_KEY_ID = "worker"


@dataclass
class Prepared:
    """What a commit makes durable, built just before it.

    Attributes:
        installs: Per run: the version, its new state and its stored record (of what is kept:
            a finished run's summary, mostly).
        journal: The journal records' values.
        events: The run-event batch records' values.
        snapshots: The records flushed to ``run-state``, by run (empty: not a flush).
        anchors: The audit anchor's records (a flush only).
    """

    installs: list[tuple[str, int, RunState, bytes]] = field(default_factory=list)
    journal: list[bytes] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    snapshots: dict[str, bytes] = field(default_factory=dict)
    anchors: list[bytes] = field(default_factory=list)


class Batch:
    """The shared part: pending state on top of the partition's store.

    Args:
        store: The partition's committed runs.
        catalog: The topics.
        codec: Frames the journal and run-event batches.
    """

    def __init__(
        self,
        store: PartitionStore,
        catalog: TopicCatalog,
        codec: Codec,
        written: Counter[str] | None = None,
    ) -> None:
        self.store = store
        #: Records and bytes written to the coordinator's own topics, by topic (shared).
        self.written: Counter[str] = written if written is not None else Counter()
        self.partition = store.partition
        self.catalog = catalog
        self.codec = codec
        self.opened = time.monotonic()
        self._pending: dict[str, tuple[RunState, bytes]] = {}
        #: Input offsets to commit (the next offset to read), and the first consumed.
        self.offsets: dict[TopicPartition, int] = {}
        self.first: dict[TopicPartition, int] = {}
        #: Encoded run events, in order.
        self.events: list[bytes] = []
        #: Approval requests sent (acted on once committed).
        self.approvals: list[ApprovalRequested] = []
        #: What the batch did, for the metrics (counted once committed).
        self.tally = Tally()
        #: The spans of the traced runs' events (emitted once committed; tracing on only).
        self.spans: list[PendingSpan] = []
        #: Whether this commit also flushes the store to ``run-state`` (and anchors).
        self.flush = False
        #: The worker key anchors are signed with (``None``: unsigned).
        self.anchor_key: bytes | None = None
        #: Records and timers handled.
        self.handled = 0
        #: The journal's next offset after the commit (known once its records are sent).
        self.journal_end: int | None = None
        #: The partition's batch still committing when this one opened: this one reads its
        #: runs through it, and is dropped with it if that commit fails.
        self.parent: Batch | None = None
        #: The input offsets this worker last committed for the partition (set by the loop
        #: before the commit): an at-least-once flush that consumed nothing commits them
        #: again, which the group refuses unless this worker still owns the partition.
        self.fence: dict[TopicPartition, int] = {}
        #: Whether the commit proved this worker still owned the partition (a transaction,
        #: or an offset commit the group accepted): only then may the journal be deleted.
        self.owned = False

    def get(self, run_id: str) -> RunState | None:
        """A run's state as of this point of the batch (and of the commit before it)."""
        pending = self._pending.get(run_id)
        if pending is None and self.parent is not None:
            pending = self.parent._pending.get(run_id)
        return pending[0] if pending is not None else self.store.get(run_id)

    def put(self, run_id: str, state: RunState, body: bytes) -> None:
        """Write a run's state, with its JSON (made durable when the batch commits)."""
        self._pending[run_id] = (state, body)

    @property
    def touched(self) -> set[str]:
        """The runs this batch changed."""
        return set(self._pending)

    def consumed(self, tp: TopicPartition, offset: int) -> None:
        """Note an input record handled (its offset commits with the batch)."""
        self.first.setdefault(tp, offset)
        self.offsets[tp] = offset + 1

    async def begin(self) -> None:
        """Start the batch (before its first send)."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int,
        headers: Headers | None = None,
    ) -> Awaitable[Any]:
        """Send one output record (``headers``: its ``traceparent``, when traced)."""
        raise NotImplementedError

    async def commit(self) -> Prepared:
        """Make the batch durable and move the inputs' offsets past it."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Drop the batch."""
        self._pending.clear()
        self.spans.clear()

    def prepare(self) -> Prepared:
        """Stored records for every changed run, and the batch records to write."""
        prepared = Prepared()
        entries = []
        for run_id, (state, body) in self._pending.items():
            version = self.store.version(run_id) + 1
            _, record = summary_record(version, state, body)
            prepared.installs.append((run_id, version, state, record))
            entries.append(self.codec.journal_entry(run_id, record))
        if entries:
            prepared.journal = [self.codec.batch(RunJournal, c) for c in _chunks(entries)]
        if self.events:
            prepared.events = [self.codec.batch(RunEventBatch, c) for c in _chunks(self.events)]
        if self.flush:
            snapshots = dict(self.store.dirty)
            snapshots.update((run_id, record) for run_id, _, _, record in prepared.installs)
            prepared.snapshots = snapshots
            prepared.anchors = self._anchors(prepared)
        return prepared

    def _anchors(self, prepared: Prepared) -> list[bytes]:
        """The anchor of this flush: the heads of the runs changed since the last one."""
        heads = dict(self.store.heads)
        for run_id, _, state, _ in prepared.installs:
            if state.audit_head and state.seq:
                heads[run_id] = (state.seq - 1, state.audit_head)
        if not heads:
            return []
        runs = [
            AnchoredRun.model_construct(run_id=run_id, seq=seq, head=head)
            for run_id, (seq, head) in sorted(heads.items())
        ]
        anchors = anchor_runs(self.partition, datetime.now(UTC), runs, ANCHOR_RUNS_PER_RECORD)
        if self.anchor_key is not None:
            anchors = [sign_anchor(a, ANCHOR_KEY_ID, self.anchor_key) for a in anchors]
        return [self.codec.encode(anchor) for anchor in anchors]

    async def _write(self, prepared: Prepared) -> tuple[list[Awaitable[Any]], list[Awaitable[Any]]]:
        """Send the journal, the run events and the snapshots; their delivery futures.

        Returns:
            The journal records' futures, and the others'.
        """
        journal: list[Awaitable[Any]] = []
        others: list[Awaitable[Any]] = []
        p = self.partition
        catalog = self.catalog
        for value in prepared.journal:
            journal.append(await self.send(catalog.run_journal.name, None, value, p))
            self._count(catalog.run_journal.name, value)
        for value in prepared.events:
            others.append(await self.send(catalog.run_events.name, None, value, p))
            self._count(catalog.run_events.name, value)
        for run_id, record in prepared.snapshots.items():
            others.append(await self.send(catalog.run_state.name, run_id.encode(), record, p))
            self._count(catalog.run_state.name, record)
        for value in prepared.anchors:
            others.append(await self.send(catalog.audit_anchors.name, None, value, p))
            self._count(catalog.audit_anchors.name, value)
        return journal, others

    def _count(self, topic: str, value: bytes) -> None:
        self.written[f"{topic}:records"] += 1
        self.written[f"{topic}:bytes"] += len(value)

    def _installed(self, prepared: Prepared, journal: list[Any]) -> None:
        for run_id, version, state, record in prepared.installs:
            self.store.install(run_id, version, state, record)
        if prepared.snapshots:
            self.store.flushed(time.time())
        if journal:
            self.journal_end = max(meta.offset for meta in journal) + 1
        self._pending.clear()


class ExactlyOnceBatch(Batch):
    """A batch inside one Kafka transaction."""

    def __init__(
        self,
        store: PartitionStore,
        catalog: TopicCatalog,
        codec: Codec,
        producer: AIOKafkaProducer,
        group_id: str,
        written: Counter[str] | None = None,
    ) -> None:
        super().__init__(store, catalog, codec, written)
        self._producer = producer
        self._group_id = group_id

    async def begin(self) -> None:
        await self._producer.begin_transaction()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int,
        headers: Headers | None = None,
    ) -> Awaitable[Any]:
        future: Awaitable[Any] = await self._producer.send(
            topic, value, key=key, partition=partition, headers=headers
        )
        return future

    async def commit(self) -> Prepared:
        prepared = self.prepare()
        sent, others = await self._write(prepared)
        # Their delivery first: a broker that verifies transactional writes (Kafka 3.6+)
        # refuses a first write to a partition while the transaction's offsets are being
        # added (NOT_ENOUGH_REPLICAS, retried 20 ms later), so they do not overlap.
        journal = [await f for f in sent]
        await asyncio.gather(*others)
        if self.offsets:
            await self._producer.send_offsets_to_transaction(self.offsets, self._group_id)
        await self._producer.commit_transaction()
        self.owned = True  # a fenced producer's transaction does not commit
        self._installed(prepared, journal)
        return prepared

    async def abort(self) -> None:
        await super().abort()
        await self._producer.abort_transaction()


class AtLeastOnceBatch(Batch):
    """A batch whose outputs are delivered before its state and offsets are saved."""

    def __init__(
        self,
        store: PartitionStore,
        catalog: TopicCatalog,
        codec: Codec,
        producer: AIOKafkaProducer,
        consumer: AIOKafkaConsumer,
        written: Counter[str] | None = None,
    ) -> None:
        super().__init__(store, catalog, codec, written)
        self._producer = producer
        self._consumer = consumer
        self._deliveries: list[Awaitable[Any]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int,
        headers: Headers | None = None,
    ) -> Awaitable[Any]:
        future: Awaitable[Any] = await self._producer.send(
            topic, value, key=key, partition=partition, headers=headers
        )
        self._deliveries.append(future)
        return future

    async def commit(self) -> Prepared:
        await asyncio.gather(*self._deliveries)
        self._deliveries.clear()
        prepared = self.prepare()
        sent, _ = await self._write(prepared)
        await asyncio.gather(*self._deliveries)
        self._deliveries.clear()
        # Nothing fences a plain producer: a zombie (frozen past its session timeout) writes
        # on as if it owned the partition. Only an offset commit asks the group, so a flush
        # that consumed nothing commits the last offsets again before the journal goes.
        offsets = self.offsets or (self.fence if self.flush else {})
        if offsets:
            await self._consumer.commit(offsets)
            self.owned = True
        self._installed(prepared, [await f for f in sent])
        return prepared

    async def abort(self) -> None:
        await super().abort()
        self._deliveries.clear()


def _chunks(items: list[bytes], limit: int = MAX_RECORD_BYTES - 1024) -> list[list[bytes]]:
    """Items split into groups whose bytes stay under the record limit (one group at least)."""
    groups: list[list[bytes]] = [[]]
    size = 0
    for item in items:
        if groups[-1] and size + len(item) > limit:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += len(item)
    return groups if groups[-1] or len(groups) == 1 else groups[:-1]
