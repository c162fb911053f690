"""The coordinator runtime: a consume-decide-produce loop on Kafka, exactly once.

Every coordinator worker joins the consumer group ``<prefix>-coordinator`` on the topics that
carry run events (tasks, step results, control commands, timers). The assignor gives each
member whole partition numbers across all of them, so a member sees every event of its runs.

Per batch and partition: decode each record, load the run's state, ``decide``, send the
events it emits and the new state (to the compacted ``run-state`` changelog), then commit:
with ``exactly_once`` all of it is one Kafka transaction, input offsets included. When a
worker takes a partition over, it first starts the partition's transactional producer (which
fences the previous owner and aborts what it left open), then reads the partition's state back
from the changelog, then resumes consuming it. See docs/decisions/0001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from processors import ModelCatalog, ToolRegistry
from streams._access import Access
from streams._emitter import run_id_of
from streams._policies import Policies
from streams._workflows import WorkflowBook, WorkflowFeed
from streams.coordinator._assignor import CopartitionedAssignor
from streams.coordinator._batch import AtLeastOnceBatch, Batch, ExactlyOnceBatch, Store
from streams.coordinator._decide import Context, Inbound, decide
from streams.coordinator._ledger import SpendLedger
from streams.coordinator._state import RunState
from streams.coordinator._wakeups import WakeIndex
from streams.workflow import Workflow
from topics import (
    ApprovalRequested,
    Codec,
    ControlCommand,
    DeadLetter,
    DecodeError,
    Event,
    RetryableError,
    RunEvent,
    RunResult,
    SpendRecorded,
    StepRequested,
    TaskSubmitted,
    TimerFired,
    Topic,
    TopicCatalog,
    partition_for,
)

__all__ = ["CoordinatorRuntime"]


@dataclass(frozen=True)
class _Restored:
    """A changelog record as the restore saw it (for its dead letter)."""

    topic: str
    partition: int
    key: bytes
    value: bytes
    offset: int | None = None


log = logging.getLogger(__name__)


class CoordinatorRuntime(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Runs the coordinator for the partitions this worker owns.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        feed: The deployed workflows.
        url: This worker's HTTP API address (told to the other coordinators).
        worker_id: This worker's name (its static group membership).
        exactly_once: Use Kafka transactions (else at-least-once).
        session_timeout: Seconds before a silent worker's partitions move.
        clock: The time.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        catalog: TopicCatalog,
        feed: WorkflowFeed,
        url: str,
        worker_id: str,
        exactly_once: bool,
        session_timeout: float = 15.0,
        policies: Policies | None = None,
        access: Access | None = None,
        webhook: str | None = None,
        models: ModelCatalog | None = None,
        tools: ToolRegistry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.bootstrap = bootstrap
        self.catalog = catalog
        self.codec = Codec()
        self.feed = feed
        self.book: WorkflowBook = feed.book
        self.url = url
        self.worker_id = worker_id
        self.exactly_once = exactly_once
        self.session_timeout = session_timeout
        self.clock = clock
        self.policies = policies or Policies()
        self.access = access or Access()
        self.webhook = webhook
        self.models = models
        self.tools = tools
        #: The tenants' spend ledger, read from ``baton.spend`` (when a tenant has a ceiling).
        self.ledger = SpendLedger(self.policies) if self.policies.tenants else None
        #: Open approval requests of the runs this worker owns, by approval id.
        self.approvals: dict[str, ApprovalRequested] = {}
        self._by_run: dict[str, set[str]] = {}
        self._notifications: asyncio.Queue[ApprovalRequested] = asyncio.Queue()
        self.group_id = f"{catalog.prefix}-coordinator"
        self.assignor = CopartitionedAssignor(url, catalog.partitions)
        self.wakeups = WakeIndex()
        self.stores: dict[int, Store] = {}
        self.ready: set[int] = set()
        self.events_processed = 0
        self._inputs: dict[str, Topic] = {
            t.name: t
            for t in (
                catalog.tasks,
                catalog.step_results,
                catalog.control,
                catalog.timers,
                catalog.approvals_decided,
            )
        }
        self._routes: dict[type[Event], Topic] = {
            RunEvent: catalog.run_events,
            RunResult: catalog.results,
            DeadLetter: catalog.dead_letter,
            ApprovalRequested: catalog.approvals_requested,
            TimerFired: catalog.timers,
            TaskSubmitted: catalog.tasks,
            ControlCommand: catalog.control,
            SpendRecorded: catalog.spend,
        }
        self._transactional: dict[int, AIOKafkaProducer] = {}
        self._suspended: set[int] = set()
        self._restoring: set[int] = set()
        self._restore_queue: asyncio.Queue[int] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and start consuming."""
        self.plain = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=2
        )
        await self.plain.start()
        self._restorer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self._restorer.start()
        port = self.url.rsplit(":", 1)[-1]
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            # Static membership: restarted under the same id (and address), a worker takes
            # its partitions back at once instead of waiting out its old session.
            group_instance_id=f"{self.worker_id}-{port}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
            partition_assignment_strategy=(self.assignor,),
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(max(1.0, self.session_timeout / 6) * 1000),
            max_poll_records=1000,
        )
        self.consumer.subscribe(topics=list(self._inputs), listener=self)
        await self.consumer.start()
        self._tasks = [
            asyncio.create_task(self._consume(), name="coordinator-consume"),
            asyncio.create_task(self._restore_partitions(), name="coordinator-restore"),
            asyncio.create_task(self._fire_wakeups(), name="coordinator-wakeups"),
            asyncio.create_task(self._notify(), name="coordinator-webhook"),
        ]
        if self.ledger is not None:
            self._ledger_reader = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                fetch_max_wait_ms=20,
            )
            await self._ledger_reader.start()
            self._tasks.append(asyncio.create_task(self._follow_ledger(), name="spend-ledger"))

    async def stop(self) -> None:
        """Finish the batch in hand, then leave."""
        self._stopping = True
        async with self._lock:
            for task in self._tasks:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.consumer.stop()
        for producer in self._transactional.values():
            await producer.stop()
        await self._restorer.stop()
        if self.ledger is not None:
            await self._ledger_reader.stop()
        await self.plain.stop()

    # -- rebalancing -------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Called before a rebalance: the batch in hand finishes and commits first."""
        async with self._lock:
            self._suspended = {tp.partition for tp in revoked}

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Keep what stays ours; release what left; restore what is new."""
        now_ours = {tp.partition for tp in assigned}
        for partition in self._suspended - now_ours:
            await self._release(partition)
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
        return [TopicPartition(t, p) for t in self._inputs for p in sorted(partitions)]

    async def _release(self, partition: int) -> None:
        self.ready.discard(partition)
        self._restoring.discard(partition)
        self.stores.pop(partition, None)
        self.wakeups.retain({key.decode() for store in self.stores.values() for key in store})
        for run_id in [r for r in self._by_run if self._partition(r) == partition]:
            for approval_id in self._by_run.pop(run_id):
                self.approvals.pop(approval_id, None)
        producer = self._transactional.pop(partition, None)
        if producer is not None:
            with contextlib.suppress(KafkaError):
                await producer.stop()

    async def _restore_partitions(self) -> None:
        while True:
            partition = await self._restore_queue.get()
            if partition not in self._restoring:
                continue
            try:
                await self._restore(partition)
            except Exception:
                log.exception("restoring partition %d failed; trying again", partition)
                await asyncio.sleep(1)
                self._restore_queue.put_nowait(partition)

    async def _restore(self, partition: int) -> None:
        started = time.monotonic()
        if self.exactly_once and partition not in self._transactional:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                transactional_id=f"{self.group_id}-{partition}",
                enable_idempotence=True,
                acks="all",
                linger_ms=2,
            )
            # Starting it fences the partition's previous owner and aborts whatever it left
            # open, so the changelog read next is final.
            await producer.start()
            self._transactional[partition] = producer
        tp = TopicPartition(self.catalog.run_state.name, partition)
        self._restorer.assign([tp])
        await self._restorer.seek_to_beginning(tp)
        end = (await self._restorer.end_offsets([tp]))[tp]
        store: Store = {}
        while await self._restorer.position(tp) < end:
            records = (await self._restorer.getmany(tp, timeout_ms=500)).get(tp, [])
            for record in records:
                if record.value is None:
                    store.pop(record.key, None)
                elif record.key is None:
                    await self.dead_letter_record(record, "a run state without a run id")
                else:
                    store[record.key] = record.value
        if partition not in self._restoring:
            return  # revoked while restoring
        self.stores[partition] = store
        unfinished = 0
        for key, raw in list(store.items()):
            assert isinstance(raw, bytes)
            try:
                if orjson.loads(raw).get("status") is not None:
                    continue
                state = RunState.from_bytes(raw)
                store[key] = state  # busy soon: keep it decoded
                wake = state.next_wake()
                self._index(key.decode(errors="replace"), state)
            except ValueError as exc:  # orjson and pydantic errors both are ValueErrors
                # Not a run state (written by someone else): keep it out, keep the bytes.
                del store[key]
                await self.dead_letter_record(
                    _Restored(tp.topic, partition, key, raw), f"not a run state: {exc}"
                )
                continue
            unfinished += 1
            self.wakeups.schedule(key.decode(errors="replace"), wake)
        self._restoring.discard(partition)
        self.ready.add(partition)
        self.consumer.resume(*self._input_tps({partition}))
        log.info(
            "partition %d restored: %d runs (%d unfinished) in %.2fs",
            partition,
            len(store),
            unfinished,
            time.monotonic() - started,
        )

    # -- the loop ----------------------------------------------------------------------------

    async def _consume(self) -> None:
        while not self._stopping:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=1000)
            if not batch:
                continue
            async with self._lock:
                await self._process(batch)

    async def _process(self, batch: dict[TopicPartition, list[Any]]) -> None:
        by_partition: dict[int, list[tuple[TopicPartition, Any]]] = defaultdict(list)
        for tp, records in batch.items():
            if tp.partition not in self.ready:
                if tp.partition not in self._suspended and records:
                    self.consumer.seek(tp, records[0].offset)  # not ours yet: read again later
                continue
            by_partition[tp.partition].extend((tp, record) for record in records)
        commits = []
        for partition, items in by_partition.items():
            unit = self._batch(partition)
            await unit.begin()
            offsets: dict[TopicPartition, int] = {}
            try:
                for tp, record in items:
                    await self._handle(unit, record)
                    offsets[tp] = record.offset + 1
            except Exception:
                log.exception("batch on partition %d failed; it will be read again", partition)
                await unit.abort()
                for tp in {tp for tp, _ in items}:
                    first = min(r.offset for t, r in items if t == tp)
                    self.consumer.seek(tp, first)
                continue
            commits.append(self._commit(unit, offsets, items))
        await asyncio.gather(*commits)

    async def _commit(
        self,
        unit: Batch,
        offsets: dict[TopicPartition, int],
        items: list[tuple[TopicPartition, Any]],
    ) -> None:
        emitted = [r for r in unit.emitted if isinstance(r, ApprovalRequested)]
        try:
            await unit.commit(offsets)
        except Exception:
            log.exception("commit on partition %d failed; it will be read again", unit.partition)
            with contextlib.suppress(Exception):
                await unit.abort()
            for tp in offsets:
                self.consumer.seek(tp, min(r.offset for t, r in items if t == tp))
            return
        self.events_processed += len(items)
        for key, state in unit.saved.items():
            self._index(key.decode(), state)
        if self.webhook:
            for request in emitted:
                self._notifications.put_nowait(request)

    def _batch(self, partition: int) -> Batch:
        store = self.stores[partition]
        changelog = self.catalog.run_state.name
        if self.exactly_once:
            return ExactlyOnceBatch(
                partition, store, changelog, self._transactional[partition], self.group_id
            )
        return AtLeastOnceBatch(partition, store, changelog, self.plain, self.consumer)

    # -- one record ---------------------------------------------------------------------------

    async def _handle(self, unit: Batch, record: Any) -> None:
        topic = self._inputs[record.topic]
        now = self.clock()
        try:
            inbound: Inbound = self.codec.decode_for(topic, record.value, record.key)  # type: ignore[assignment]
        except DecodeError as exc:
            await self._dead_letter(unit, record, "DecodeError", exc.reason, now)
            return
        run_id = run_id_of(inbound)
        if run_id is None:
            await self._dead_letter(unit, record, "MissingRunId", "the event names no run", now)
            return
        home = partition_for(run_id, self.catalog.partitions)
        if home != record.partition:
            # Published with another partitioner: move it to where its run lives.
            await unit.send(record.topic, run_id.encode(), record.value, home)
            return
        key = run_id.encode()
        state = unit.get(key)
        workflow = await self._workflow_for(state, inbound)
        decision = decide(
            state,
            inbound,
            Context(
                now=now,
                workflow=workflow,
                tiers=self.catalog.retry_tiers,
                catalog=self.catalog,
                codec=self.codec,
                policies=self.policies,
                access=self.access,
                models=self.models,
                ledger=self.ledger,
                tools=self.tools,
            ),
        )
        if decision.dead_letter is not None:
            await self._dead_letter(
                unit,
                record,
                "Unprocessable",
                decision.dead_letter,
                now,
                run_id=run_id,
                payload_type=type(inbound).__name__,
            )
        for event in decision.emit:
            await self._emit(unit, event)
            if isinstance(event, ApprovalRequested):
                unit.emitted.append(event)
        if decision.state is not None:
            unit.put(key, decision.state)
            self.wakeups.schedule(run_id, decision.state.next_wake())

    async def _emit(self, unit: Batch, event: Event) -> None:
        if isinstance(event, SpendRecorded):
            spend = self.catalog.spend
            tenant = event.tenant.encode()
            await unit.send(
                spend.name,
                tenant,
                self.codec.encode(event),
                partition_for(event.tenant, spend.partitions),
            )
            return
        if isinstance(event, StepRequested):
            topic = (
                self.catalog.retry(event.retry_tier)
                if event.retry_tier
                else self.catalog.steps(event.kind)
            )
        else:
            topic = self._routes[type(event)]
        run_id = run_id_of(event)
        assert run_id is not None, "everything the coordinator emits belongs to a run"
        await unit.send(
            topic.name,
            run_id.encode(),
            self.codec.encode(event),
            partition_for(run_id, topic.partitions),
        )

    async def _dead_letter(
        self,
        unit: Batch,
        record: Any,
        error_class: str,
        reason: str,
        now: datetime,
        *,
        run_id: str | None = None,
        payload_type: str | None = None,
    ) -> None:
        log.warning(
            "dead-lettering %s[%d]@%d: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            error_class,
            reason,
        )
        letter = DeadLetter(
            dead_letter_id=f"{record.topic}/{record.partition}/{record.offset}",
            origin_topic=record.topic,
            origin_partition=record.partition,
            origin_offset=record.offset,
            key=record.key,
            payload=record.value or b"",
            payload_type=payload_type,
            error_class=error_class,
            error=reason,
            run_id=run_id,
            at=now,
        )
        await unit.send(
            self.catalog.dead_letter.name,
            run_id.encode() if run_id else record.key,
            self.codec.encode(letter),
            record.partition,
        )

    async def _workflow_for(self, state: RunState | None, event: Inbound) -> Workflow | None:
        if isinstance(event, TaskSubmitted) and state is None:
            found = self.book.resolve(event.workflow, event.workflow_version)
            if found is None:
                await self._catch_up()
                found = self.book.resolve(event.workflow, event.workflow_version)
            return found
        if state is None or not state.workflow_version:
            return None
        found = self.book.by_hash(state.workflow_version)
        if found is None:
            await self._catch_up()
            found = self.book.by_hash(state.workflow_version)
        return found

    async def _catch_up(self) -> None:
        """Deployed a moment ago? Read the workflows topic to its end first."""
        try:
            await self.feed.catch_up()
        except RetryableError as exc:
            log.warning("workflow definitions are not caught up: %s", exc)

    # -- approvals -------------------------------------------------------------------------

    def _partition(self, run_id: str) -> int:
        return partition_for(run_id, self.catalog.partitions)

    def _index(self, run_id: str, state: RunState) -> None:
        """Keep the open approval requests of one run in the index the API reads."""
        for approval_id in self._by_run.pop(run_id, set()):
            self.approvals.pop(approval_id, None)
        if state.finished:
            return
        ids = set()
        for name, step in state.steps.items():
            approval = step.approval
            if approval is None:
                continue
            self.approvals[approval.approval_id] = ApprovalRequested(
                approval_id=approval.approval_id,
                run_id=run_id,
                step=name,
                workflow=state.workflow,
                tenant=state.tenant,
                reason=approval.reason,
                approvers=approval.approvers,
                quorum=approval.quorum,
                level=approval.level,
                deadline=approval.deadline,
                context=approval.context,
                cost_usd=state.usage.cost_usd,
                requested_at=approval.requested_at,
            )
            ids.add(approval.approval_id)
        if ids:
            self._by_run[run_id] = ids

    async def _notify(self) -> None:
        """Tell the webhook about each new request and escalation (best effort, retried)."""
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                request = await self._notifications.get()
                if not self.webhook:
                    continue
                body = {"event": "approval_requested", **request.model_dump(mode="json")}
                try:
                    async for attempt in AsyncRetrying(
                        stop=stop_after_attempt(3),
                        wait=wait_exponential(multiplier=0.5, max=5),
                        reraise=True,
                    ):
                        with attempt:
                            response = await http.post(self.webhook, json=body)
                            response.raise_for_status()
                except (httpx.HTTPError, OSError) as exc:
                    log.warning("webhook for %s failed: %s", request.approval_id, exc)

    # -- the spend ledger ----------------------------------------------------------------------

    async def _follow_ledger(self) -> None:
        """Apply ``baton.spend`` in order; nudge our runs whose reservations got a verdict."""
        assert self.ledger is not None
        reader = self._ledger_reader
        topic = self.catalog.spend.name
        tps = [TopicPartition(topic, p) for p in range(self.catalog.spend.partitions)]
        reader.assign(tps)
        longest = max(c.window for c in self.policies.tenants.values())
        since = int((self.clock().timestamp() - longest - 600) * 1000)
        starts = await reader.offsets_for_times({tp: since for tp in tps})
        for tp in tps:
            found = starts.get(tp)
            if found is None:
                await reader.seek_to_end(tp)
            else:
                reader.seek(tp, found.offset)
        while True:
            batch = await reader.getmany(timeout_ms=500, max_records=2000)
            for records in batch.values():
                for record in records:
                    try:
                        entry = self.codec.decode(record.value, SpendRecorded)
                    except DecodeError as exc:
                        await self.dead_letter_record(record, exc.reason)
                        continue
                    verdict = self.ledger.apply(entry)
                    if verdict is not None and self._partition(entry.run_id) in self.ready:
                        await self._wake(entry.run_id)

    async def _wake(self, run_id: str) -> None:
        event = TimerFired(run_id=run_id, fired_at=self.clock())
        await self.plain.send(
            self.catalog.timers.name,
            self.codec.encode(event),
            key=run_id.encode(),
            partition=self._partition(run_id),
        )

    # -- timers --------------------------------------------------------------------------------

    async def _fire_wakeups(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            now = self.clock()
            for run_id in self.wakeups.pop_due(now.timestamp()):
                await self._wake(run_id)

    async def dead_letter_record(self, record: Any, reason: str) -> None:
        """Send a record read outside a batch (workflows, the changelog) to the dead letters."""
        log.warning("dead-lettering %s[%d]: %s", record.topic, record.partition, reason)
        letter = DeadLetter(
            dead_letter_id=f"{record.topic}/{record.partition}/{getattr(record, 'offset', '-')}",
            origin_topic=record.topic,
            origin_partition=record.partition,
            origin_offset=getattr(record, "offset", None),
            key=record.key,
            payload=record.value or b"",
            error_class="DecodeError",
            error=reason,
            at=self.clock(),
        )
        await self.plain.send_and_wait(
            self.catalog.dead_letter.name,
            self.codec.encode(letter),
            key=record.key,
            partition=record.partition % self.catalog.partitions,
        )

    # -- reads for the API ---------------------------------------------------------------------

    def owner_of(self, run_id: str) -> tuple[bool, str | None]:
        """Whether this worker owns the run, and else the owner's API address (if known)."""
        partition = partition_for(run_id, self.catalog.partitions)
        if partition in self.ready:
            return True, self.url
        return False, self.assignor.owners.get(partition)

    def state_of(self, run_id: str) -> RunState | None:
        """A run's committed state, when this worker owns it."""
        partition = partition_for(run_id, self.catalog.partitions)
        stored = self.stores.get(partition, {}).get(run_id.encode())
        if isinstance(stored, bytes):
            return RunState.from_bytes(stored)
        return stored
