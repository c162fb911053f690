"""The coordinator's consume-decide-produce loop, and the partitions it owns.

Every coordinator joins the consumer group ``<prefix>-coordinator`` on the topics that carry
run events. The assignor gives each member whole partition numbers across all of them, so a
member sees every event of its runs. Each pass of the loop:

1. fetches what has arrived (up to ``max_records``), and hands each record of a partition it
   owns to the ``Handler`` inside that partition's open ``Batch`` (opened on first use);
2. lets ``decide`` look at the runs whose wake-up is due (at most ``timers_per_pass``), in the
   same batches: deadlines never travel through a topic;
3. commits every batch open for ``commit_interval`` (a Kafka transaction under exactly-once),
   now and then with a flush of the partition's store to ``run-state``, after which the
   journal before it is deleted.

A batch that fails to commit is aborted: the runs keep their committed state and the inputs
are read again from the first offset it consumed.

Taking a partition over: start its two transactional producers (which fences the previous
owner and aborts what it left open), read its runs back (``_restore``), rebuild the wake-up
and approvals indexes from the stored headers, then resume its inputs. Losing one: its open
batch commits first (``on_partitions_revoked``), then everything about it is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.errors import KafkaError

from streams._kafka import kafka_consumer, kafka_producer
from streams._metrics import Metrics
from streams.coordinator._approvals_index import ApprovalsIndex
from streams.coordinator._assignor import CopartitionedAssignor
from streams.coordinator._batch import AtLeastOnceBatch, Batch, ExactlyOnceBatch
from streams.coordinator._handling import Handler
from streams.coordinator._restore import Restored, restore_partitions
from streams.coordinator._state import RunState
from streams.coordinator._store import PartitionStore, StoredRun
from streams.coordinator._wakeups import WakeIndex
from topics import (
    BATCH_BYTES,
    ApprovalRequested,
    Codec,
    TopicCatalog,
    partition_for,
    worker_source,
)

if TYPE_CHECKING:
    from streams._tracing import Tracing

__all__ = ["CoordinatorLoop", "LoopSettings"]

log = logging.getLogger(__name__)

# A fetch returns as soon as anything is there, or after 100 ms when nothing is: a record
# waits for no timer, and an idle worker sends a handful of fetches a second, not hundreds
# (measured: 16 KiB or 5 ms kept an idle worker at 15% of a core and added ~5 ms a hop).
# Under load the responses are large anyway: records gather while a pass is handled.
FETCH_MIN_BYTES = 1
FETCH_WAIT_MS = 100
#: Seconds a takeover's producers may take to start (InitProducerId, fencing the last owner).
PRODUCER_START_S = 30.0
#: Seconds a revocation waits for the revoked partitions' commits before rejoining regardless.
REVOKE_SETTLE_S = 20.0


async def _let_the_next_fetch_go() -> None:
    """Yield so the consumer sends its next fetch before the pass, not after it.

    aiokafka fetches from a broker only once everything fetched from it is consumed, and it
    sends that next fetch from its own task: two turns of the event loop after ``getmany``
    (measured). A pass handles its records without yielding, so without this the next fetch
    left only after the pass, and a result arriving meanwhile waited for the pass and then
    a fetch round trip; with a fetch outstanding, the broker answers the moment it arrives.
    """
    await asyncio.sleep(0)
    await asyncio.sleep(0)


@dataclass(frozen=True)
class LoopSettings:
    """How the loop batches and commits.

    Attributes:
        exactly_once: Kafka transactions (else at-least-once).
        commit_interval: Seconds a batch stays open gathering transitions before it commits.
        flush_interval: Seconds between flushes of a partition's store to ``run-state`` (a
            takeover reads the journal since the last flush).
        flush_runs: A flush also happens once this many runs changed since the last one.
        session_timeout: Seconds before a silent member's partitions move.
        max_records: Records fetched per pass.
        timers_per_pass: Due wake-ups looked at per pass, at most.
    """

    exactly_once: bool
    commit_interval: float = 0.05
    flush_interval: float = 5.0
    flush_runs: int = 20_000
    session_timeout: float = 15.0
    max_records: int = 2000
    timers_per_pass: int = 500


class CoordinatorLoop(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Runs the coordinator for the partitions this worker owns.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Decodes and encodes events.
        handler: Handles each record and due wake-up.
        wakeups: The runs' next wake-ups.
        approvals: The open approval requests (for the API).
        settings: Batching and commits.
        url: This worker's HTTP API address (told to the other members).
        worker_id: This worker's name (its static group membership).
        poison: Sends a record read outside a batch (restores) to the dead-letter topic.
        on_request: Told about each approval request once it is committed.
        metrics: Counts what each batch did once it committed, and the commit's duration.
        tracing: Emits each committed batch's spans (``None``: tracing is off).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        catalog: TopicCatalog,
        codec: Codec,
        handler: Handler,
        wakeups: WakeIndex,
        approvals: ApprovalsIndex,
        settings: LoopSettings,
        url: str,
        worker_id: str,
        poison: Callable[[Any, str], Awaitable[None]],
        on_request: Callable[[ApprovalRequested], None] | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.catalog = catalog
        self.codec = codec
        self.handler = handler
        self.tracing = tracing
        self.wakeups = wakeups
        self.approvals = approvals
        self.settings = settings
        self.url = url
        self.worker_id = worker_id
        self._poison = poison
        self._on_request = on_request
        self.metrics = metrics if metrics is not None else Metrics()
        self.group_id = f"{catalog.prefix}-coordinator"
        self.assignor = CopartitionedAssignor(url, catalog.partitions)
        #: The partitions whose runs are loaded and whose inputs are consumed.
        self.ready: set[int] = set()
        self.stores: dict[int, PartitionStore] = {}
        #: Records and wake-ups handled (committed).
        self.events_processed = 0
        #: What the last takeover of each partition read.
        self.restored: dict[int, Restored] = {}
        #: Records and bytes written to the coordinator's own topics (journal, run events,
        #: snapshots), by ``<topic>:records`` and ``<topic>:bytes``.
        self.written: Counter[str] = Counter()
        self._batches: dict[int, Batch] = {}
        #: Per partition, the batch whose commit is in flight (one at a time) and its task.
        self._committing: dict[int, tuple[Batch, asyncio.Task[bool]]] = {}
        self._producers: dict[int, tuple[AIOKafkaProducer, ...]] = {}
        self._turn: dict[int, int] = {}
        self._last_flush: dict[int, float] = {}
        #: Per partition, the input offsets this worker's commits last moved to.
        self._offsets: dict[int, dict[TopicPartition, int]] = {}
        self._suspended: set[int] = set()
        #: The group generation of the last assignment, to notice the ones this worker missed.
        self._generation: int | None = None
        #: Rebalance callbacks so far: a fetch made before one is not handled (see _consume).
        self._rebalances = 0
        self._restoring: set[int] = set()
        self._restore_queue: asyncio.Queue[int] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, plain: AIOKafkaProducer) -> None:
        """Join the group and start consuming (``plain``: the non-transactional producer)."""
        self.plain = plain
        self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self._admin.start()
        self._reader = kafka_consumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self._reader.start()
        port = self.url.rsplit(":", 1)[-1]
        session = self.settings.session_timeout
        self.consumer = kafka_consumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            # Static membership: restarted under the same id (and address), a worker takes
            # its partitions back at once instead of waiting out its old session.
            group_instance_id=f"{self.worker_id}-{port}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if self.settings.exactly_once else "read_uncommitted",
            partition_assignment_strategy=(self.assignor,),
            session_timeout_ms=int(session * 1000),
            heartbeat_interval_ms=int(max(1.0, session / 6) * 1000),
            max_poll_records=self.settings.max_records,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            fetch_min_bytes=FETCH_MIN_BYTES,
        )
        self.consumer.subscribe(topics=self.handler.inputs, listener=self)
        await self.consumer.start()
        self._tasks = [
            asyncio.create_task(self._consume(), name="coordinator-loop"),
            asyncio.create_task(self._restore_partitions(), name="coordinator-restore"),
        ]

    async def stop(self) -> None:
        """Commit what is open, then leave."""
        self._stopping = True
        async with self._lock:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._settle(set(self._batches) | set(self._committing))
        await self.consumer.stop()
        for pair in self._producers.values():
            for producer in pair:
                with contextlib.suppress(KafkaError):
                    await producer.stop()
        await self._reader.stop()
        await self._admin.close()

    # -- reads for the API -----------------------------------------------------------------

    def state_of(self, run_id: str) -> RunState | None:
        """A run's committed state, when this worker owns it."""
        store = self.stores.get(partition_for(run_id, self.catalog.partitions))
        return store.get(run_id) if store is not None else None

    def uncommitted(self) -> set[str]:
        """The runs that batches not yet committed changed (their stored state is older)."""
        batches = [*self._batches.values(), *(b for b, _ in self._committing.values())]
        return {run_id for batch in batches for run_id in batch.touched}

    def wake(self, run_id: str) -> None:
        """Have ``decide`` look at a run soon (a ledger verdict arrived), if it is ours."""
        if partition_for(run_id, self.catalog.partitions) in self.ready:
            self.wakeups.schedule(run_id, time.time())

    # -- rebalancing -------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Called before a rebalance: what is open commits first."""
        self._rebalances += 1
        async with self._lock:
            partitions = {tp.partition for tp in revoked}
            try:
                await asyncio.wait_for(self._settle(partitions), REVOKE_SETTLE_S)
            except TimeoutError:
                # A commit that does not end must not keep this member out of the group
                # (once, in a rolling restart, a worker never rejoined). Safe to go on: the
                # next owner fences this worker's producers, so what is still in flight
                # either commits before it reads or not at all.
                log.warning(
                    "partitions %s still committing %gs into a revocation; rejoining anyway",
                    sorted(p for p in self._committing if p in partitions),
                    REVOKE_SETTLE_S,
                )
            self._suspended = partitions

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Keep what stays ours; release what left; restore what is new.

        After generations this worker was not part of (it froze past its session timeout,
        or lost the group), nothing is kept: another member may have owned its partitions
        meanwhile, fencing their producers and moving their runs on.
        """
        self._rebalances += 1
        now_ours = {tp.partition for tp in assigned}
        generation = self.consumer._coordinator.generation  # aiokafka has no public accessor
        missed = self._generation is not None and generation != self._generation + 1
        self._generation = generation
        for partition in self._suspended - now_ours if not missed else self._suspended:
            await self._release(partition)
        if missed:
            log.warning(
                "coordinator rejoined at generation %d after missing some: taking every "
                "partition over afresh",
                generation,
            )
        self._suspended = set()
        new = now_ours - self.ready - self._restoring
        if new:
            self.consumer.pause(*self._input_tps(new))
            for partition in sorted(new):
                self._restoring.add(partition)
                self._restore_queue.put_nowait(partition)
        log.info(
            "coordinator partitions: %s (restoring %s)", sorted(now_ours), sorted(self._restoring)
        )

    def _input_tps(self, partitions: set[int]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.handler.inputs for p in sorted(partitions)]

    async def _release(self, partition: int) -> None:
        self.ready.discard(partition)
        self._restoring.discard(partition)
        self.stores.pop(partition, None)
        self._offsets.pop(partition, None)
        batch = self._batches.pop(partition, None)
        if batch is not None:
            with contextlib.suppress(Exception):
                await batch.abort()
        count = self.catalog.partitions
        self.wakeups.retain(lambda run_id: partition_for(run_id, count) != partition)
        self.approvals.forget_partition(partition)
        flight = self._committing.pop(partition, None)
        if flight is not None:
            # A commit still in flight: a revocation stopped waiting for it. Its producers
            # stop below, and a stopped producer never ends the transaction the commit
            # awaits: left, it would hang this worker's stop and hold back every later
            # batch of the partition should it come back. The next owner fences it, so it
            # committed before that owner read, or not at all.
            log.warning("partition %d left with a commit in flight; abandoning it", partition)
            flight[1].cancel()
        for producer in self._producers.pop(partition, ()):
            with contextlib.suppress(KafkaError):
                await producer.stop()

    async def _restore_partitions(self) -> None:
        while True:
            first = await self._restore_queue.get()
            wanted = {first}
            while not self._restore_queue.empty():
                wanted.add(self._restore_queue.get_nowait())
            partitions = sorted(p for p in wanted if p in self._restoring)
            if not partitions:
                continue
            try:
                await self._restore(partitions)
            except Exception:
                log.exception("restoring partitions %s failed; trying again", partitions)
                await asyncio.sleep(1)
                for partition in partitions:
                    self._restore_queue.put_nowait(partition)

    async def _restore(self, partitions: list[int]) -> None:
        """Take partitions over together: fence, read their runs, then resume their inputs."""
        # Under exactly-once, starting them fences the partitions' previous owner and aborts
        # whatever it left open, so the runs read next are final. Under at-least-once each
        # partition has a producer of its own too: a producer has one request in flight at
        # a time, and one shared by every partition made each wait for the others' writes.
        starting: dict[int, tuple[AIOKafkaProducer, ...]] = {}
        for partition in partitions:
            if partition not in self._producers:
                own: tuple[AIOKafkaProducer, ...]
                if self.settings.exactly_once:
                    own = (self._producer(partition, "a"), self._producer(partition, "b"))
                else:
                    own = (self._producer(partition, None),)
                starting[partition] = own
                self._producers[partition] = own
        try:
            # aiokafka's start retries InitProducerId against the coordinator it found first
            # for as long as a connection error repeats: a takeover once stood "restoring"
            # forever. Past the deadline the producers are dropped and the retry starts anew
            # (kept, unstarted, the retry would have used them as they were).
            await asyncio.wait_for(
                asyncio.gather(*(p.start() for own in starting.values() for p in own)),
                PRODUCER_START_S,
            )
        except BaseException:
            for partition, own in starting.items():
                self._producers.pop(partition, None)
                for producer in own:
                    with contextlib.suppress(Exception):
                        await producer.stop()
            raise
        stores = {p: PartitionStore(p, self.catalog.run_retention_s) for p in partitions}
        restored = await restore_partitions(
            self._reader, self.catalog, self.codec, stores, self._poison
        )
        async with self._lock:
            for partition, store in stores.items():
                if partition not in self._restoring:
                    continue  # revoked while restoring
                self._install_restored(partition, store)
                self.restored[partition] = restored[partition]
                read = restored[partition]
                log.info(
                    "partition %d restored: %d runs in flight, %d finished within the "
                    "retention (%d snapshots, %d journal entries) in %.2fs",
                    partition,
                    store.in_flight,
                    store.finished,
                    read.snapshots,
                    read.journal,
                    read.seconds,
                )

    def _install_restored(self, partition: int, store: PartitionStore) -> None:
        self.stores[partition] = store
        self._last_flush[partition] = time.monotonic()
        for run_id, run in store.active():
            if isinstance(run, StoredRun):
                self.wakeups.schedule(run_id, run.wake_s)
                if run.approval:
                    self.approvals.update(run_id, run.state())
            else:
                self.wakeups.schedule(run_id, run.next_wake())
        self._restoring.discard(partition)
        self.ready.add(partition)
        self.consumer.resume(*self._input_tps({partition}))

    def _producer(self, partition: int, side: str | None) -> AIOKafkaProducer:
        """A partition's producer: transactional (``side`` a or b) or only idempotent."""
        return kafka_producer(
            worker_source(self.worker_id),
            self.codec,
            bootstrap_servers=self.bootstrap,
            transactional_id=f"{self.group_id}-{partition}-{side}" if side else None,
            enable_idempotence=True,
            acks="all",
            linger_ms=1,
            max_batch_size=BATCH_BYTES,
            # Retriable refusals in a transaction (the broker's transaction verification
            # answers NOT_ENOUGH_REPLICAS while the transaction is being updated) are
            # short-lived: 20 ms, not the default 100 ms, before trying again.
            retry_backoff_ms=20,
        )

    # -- the loop ----------------------------------------------------------------------------

    async def _consume(self) -> None:
        while not self._stopping:
            try:
                records = await self.consumer.getmany(
                    timeout_ms=self._wait_ms(), max_records=self.settings.max_records
                )
                fetched_at = self._rebalances
                if records:
                    await _let_the_next_fetch_go()
                async with self._lock:
                    if self._rebalances != fetched_at:
                        # A rebalance came between the fetch and the pass: the assignment
                        # these records were read under is gone, and the consumer reads
                        # every partition again from its committed offset. Handling them,
                        # or seeking to them, could skip what another owner has not yet
                        # committed (found by the fault suite, around a zombie's return).
                        records = {}
                    await self._pass(records)
            except asyncio.CancelledError:
                raise
            except Exception:  # a loop that dies stops every run of this worker
                log.exception("coordinator pass failed; going on")
                await asyncio.sleep(0.5)

    def _wait_ms(self) -> int:
        """How long a fetch may wait: until the oldest open batch or the next wake-up is due.

        A due batch waiting for its partition's commit in flight is looked at again in 2 ms.
        """
        wait = 0.1
        if self._batches:
            oldest = min(b.opened for b in self._batches.values())
            wait = min(wait, oldest + self.settings.commit_interval - time.monotonic())
            if wait <= 0 and any(p in self._committing for p in self._batches):
                wait = 0.002
        due = self.wakeups.next_due()
        if due is not None:
            wait = min(wait, due - time.time())
        return max(0, int(wait * 1000))

    async def _pass(self, records: dict[TopicPartition, list[Any]]) -> None:
        by_partition: dict[int, list[tuple[TopicPartition, Any]]] = defaultdict(list)
        for tp, items in records.items():
            if tp.partition not in self.ready:
                if tp.partition not in self._suspended and items:
                    self.consumer.seek(tp, items[0].offset)  # not ours yet: read again later
                continue
            by_partition[tp.partition].extend((tp, record) for record in items)
        for partition, items in by_partition.items():
            batch = await self._batch(partition)
            if batch is None:
                self._read_again(items)
                continue
            for n, (tp, record) in enumerate(items):
                try:
                    await self.handler.record(batch, record)
                except Exception as exc:  # a send refused (a fenced or failed producer)
                    await self._drop(batch, exc)
                    self._read_again([(t, r) for t, r in items[n:] if t not in batch.first])
                    break
                batch.consumed(tp, record.offset)
                batch.handled += 1
        await self._fire_timers()
        await self._housekeep()
        await self._reap()
        oldest = time.monotonic() - self.settings.commit_interval
        self._commit([p for p, b in self._batches.items() if b.opened <= oldest])

    async def _housekeep(self) -> None:
        """Flush a quiet partition too: its journal is deleted and old runs forgotten."""
        due = time.monotonic() - self.settings.flush_interval
        for partition in sorted(self.ready):
            if partition in self._batches or self._last_flush.get(partition, 0.0) > due:
                continue
            store = self.stores[partition]
            if store.dirty or store.finished:
                await self._batch(partition)
            else:
                self._last_flush[partition] = time.monotonic()

    async def _fire_timers(self) -> None:
        now = time.time()
        for run_id in self.wakeups.pop_due(now, self.settings.timers_per_pass):
            partition = partition_for(run_id, self.catalog.partitions)
            if partition not in self.ready:
                continue
            batch = await self._batch(partition)
            if batch is None:
                self.wakeups.schedule(run_id, now + 1)
                continue
            try:
                changed = await self.handler.timer(batch, run_id)
            except Exception as exc:
                await self._drop(batch, exc)
                self.wakeups.schedule(run_id, now + 1)
                continue
            batch.handled += 1
            if changed:
                self.wakeups.moved(run_id)
            else:
                state = batch.get(run_id)
                self.wakeups.unchanged(run_id, state.next_wake() if state else None, now)

    async def _batch(self, partition: int) -> Batch | None:
        """The partition's open batch (opened now if none is); ``None`` if it cannot begin."""
        batch = self._batches.get(partition)
        if batch is not None:
            return batch
        store = self.stores[partition]
        committing = self._committing.get(partition)
        if self.settings.exactly_once:
            pair = self._producers[partition]
            turn = self._turn.get(partition, 0)
            self._turn[partition] = turn + 1
            batch = ExactlyOnceBatch(
                store, self.catalog, self.codec, pair[turn % 2], self.group_id, self.written
            )
        else:
            producer = self._producers[partition][0]
            batch = AtLeastOnceBatch(
                store, self.catalog, self.codec, producer, self.consumer, self.written
            )
        try:
            await batch.begin()
        except Exception:  # a KafkaError, or aiokafka's assertion on a fenced producer
            log.exception("cannot begin a batch on partition %d", partition)
            return None
        if committing is not None:
            batch.parent = committing[0]
        batch.anchor_key = self.handler.access.worker_key
        last = self._last_flush.get(partition, 0.0)
        if (
            time.monotonic() - last >= self.settings.flush_interval
            or len(store.dirty) >= self.settings.flush_runs
        ):
            batch.flush = True
        self._batches[partition] = batch
        return batch

    def _read_again(self, items: list[tuple[TopicPartition, Any]]) -> None:
        """Seek back to these records: unhandled, they would be skipped by a later commit."""
        for tp in {tp for tp, _ in items}:
            self.consumer.seek(tp, min(r.offset for t, r in items if t == tp))

    async def _drop(self, batch: Batch, exc: Exception) -> None:
        """A batch that failed while open: undo it, alone, and let the pass go on.

        Its partition's inputs are read again; the other partitions' records in the same
        fetch are handled as usual (a failure that ended the whole pass skipped them).
        """
        log.warning(
            "partition %d: a batch failed before its commit (%s: %s); its inputs are read again",
            batch.partition,
            type(exc).__name__,
            exc,
        )
        self.metrics.commit_failed()
        if self._batches.get(batch.partition) is batch:
            del self._batches[batch.partition]
        await self._undo(batch)

    def _commit(self, partitions: list[int]) -> None:
        """Start committing these partitions' open batches, in the background.

        A partition whose previous commit is still in flight keeps its batch open: commits
        of one partition go one after the other, and the loop goes on reading meanwhile.
        """
        for partition in partitions:
            if partition in self._committing or partition not in self._batches:
                continue
            batch = self._batches.pop(partition)
            batch.fence = dict(self._offsets.get(partition, {}))
            task = asyncio.create_task(self._commit_one(batch), name=f"commit-{partition}")
            self._committing[partition] = (batch, task)

    async def _reap(self) -> None:
        """Settle the commits that ended: a failed one is undone with the batch built on it."""
        for partition, (batch, task) in list(self._committing.items()):
            if not task.done():
                continue
            del self._committing[partition]
            child = self._batches.get(partition)
            if child is not None and child.parent is batch:
                if task.result():
                    child.parent = None
                else:
                    del self._batches[partition]
                    await self._undo(child)
            if not task.result():
                await self._undo(batch)

    async def _settle(self, partitions: set[int]) -> None:
        """Commit these partitions' open batches and wait until nothing of theirs is in flight."""
        while True:
            flights = [t for p, (_, t) in self._committing.items() if p in partitions]
            if flights:
                await asyncio.wait(flights)
            await self._reap()
            open_ = [p for p in self._batches if p in partitions]
            if not open_ and not any(p in self._committing for p in partitions):
                return
            self._commit(open_)

    async def _commit_one(self, batch: Batch) -> bool:
        """Commit one batch; whether it committed (if not, the loop undoes it)."""
        partition = batch.partition
        if batch.flush:
            batch.store.expire(time.time())
            batch.store.refresh(time.time())
        started = time.monotonic()
        try:
            prepared = await batch.commit()
        except Exception:
            log.exception("commit on partition %d failed; its inputs will be read again", partition)
            self.metrics.commit_failed()
            return False
        self.metrics.committed(batch.tally, batch.handled, time.monotonic() - started)
        if batch.spans and self.tracing is not None:
            self.tracing.emit(batch.spans)
        self.events_processed += batch.handled
        if batch.offsets and partition in self.ready:
            self._offsets.setdefault(partition, {}).update(batch.offsets)
        for run_id, _, state, _ in prepared.installs:
            self.approvals.update(run_id, state)
        if self._on_request is not None:
            for request in batch.approvals:
                self._on_request(request)
        if batch.flush:
            self._last_flush[partition] = time.monotonic()
            # Only a commit that proved this worker still owns the partition: a zombie's
            # flush would delete the entries its interim owner wrote meanwhile, runs that
            # are nowhere else (found by the fault suite, at-least-once).
            if batch.journal_end is not None and batch.owned:
                self._truncate(partition, batch.journal_end)
        return True

    async def _undo(self, batch: Batch) -> None:
        """A batch that did not commit: drop it, read its inputs again, keep the runs' wakes."""
        with contextlib.suppress(Exception):
            await batch.abort()
        for tp, offset in batch.first.items():
            if tp.partition in self.ready:
                self.consumer.seek(tp, offset)
        for run_id in batch.touched:
            state = batch.store.get(run_id)
            self.wakeups.schedule(run_id, state.next_wake() if state else None)

    def _truncate(self, partition: int, offset: int) -> None:
        """Delete the journal before a flush (in the background: it only saves reading)."""
        tp = TopicPartition(self.catalog.run_journal.name, partition)

        async def delete() -> None:
            try:
                await self._admin.delete_records({tp: RecordsToDelete(offset)}, timeout_ms=10_000)
            except Exception as exc:  # the next flush tries again; the retention is a backstop
                log.warning("could not delete the journal of partition %d: %s", partition, exc)

        task = asyncio.create_task(delete(), name=f"journal-truncate-{partition}")
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
