"""The coordinator runtime: the services of one worker's coordinator, wired together.

- ``CoordinatorLoop`` (``_loop``): the exactly-once consume-decide-produce loop, the
  partitions it owns, takeovers and commits; with ``Handler`` (``_handling``) for each event
  and ``PartitionStore`` (``_store``) for each partition's runs.
- ``WakeIndex`` (``_wakeups``): when each run next needs attention; the loop fires it.
- ``ApprovalsIndex`` (``_approvals_index``): the open approval requests, for the API.
- ``ApprovalNotifier`` (``_notifier``): the optional approval webhook.
- ``SpendFollower`` (``_spend``): the tenants' spend ledger, when a tenant has a ceiling.
- ``ControlFollower`` (``_control_feed``): the operators' pauses and caps in force
  (``_control``), read to the end before the coordinator joins its group.
- ``measure`` (``_gauges``): what the runtime shows when the worker's metrics are scraped.

See docs/decisions/0001 (why the coordinator has its own loop) and 0003 (how its state is
kept: journal, snapshots, retention).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from processors import Claims, ModelCatalog, ToolRegistry
from streams._access import Access
from streams._deadletters import letter_for
from streams._kafka import kafka_producer
from streams._metrics import Metrics
from streams._policies import Policies
from streams._workflows import WorkflowBook, WorkflowFeed
from streams.coordinator._approvals_index import ApprovalsIndex
from streams.coordinator._assignor import CopartitionedAssignor
from streams.coordinator._control import ControlBook
from streams.coordinator._control_feed import ControlFollower
from streams.coordinator._gauges import measure
from streams.coordinator._handling import Handler
from streams.coordinator._ledger import SpendLedger
from streams.coordinator._loop import CoordinatorLoop, LoopSettings
from streams.coordinator._notifier import ApprovalNotifier
from streams.coordinator._spend import SpendFollower
from streams.coordinator._state import RunState
from streams.coordinator._store import PartitionStore, pack
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

__all__ = ["CoordinatorRuntime"]

log = logging.getLogger(__name__)


class CoordinatorRuntime:
    """Runs the coordinator for the partitions this worker owns.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        feed: The deployed workflows.
        url: This worker's HTTP API address (told to the other coordinators).
        worker_id: This worker's name (its static group membership).
        exactly_once: Use Kafka transactions (else at-least-once).
        session_timeout: Seconds before a silent worker's partitions move.
        commit_interval: Seconds a batch gathers transitions before it commits.
        flush_interval: Seconds between flushes of the runs to ``run-state``.
        policies: The organisation's policies.
        access: Reviewers and signing keys.
        webhook: A URL told about each approval request.
        models: The model catalog.
        tools: The tool registry.
        metrics: The worker's metrics (the runtime adds its own to them).
        clock: The time.
        tracing: Traces runs (``None``: tracing is off).
        codec: The worker's codec (default: the static schema ids).
        claims: Claim checks for large payloads (``None``: off).
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
        commit_interval: float = 0.05,
        flush_interval: float = 5.0,
        policies: Policies | None = None,
        access: Access | None = None,
        webhook: str | None = None,
        models: ModelCatalog | None = None,
        tools: ToolRegistry | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tracing: Tracing | None = None,
        codec: Codec | None = None,
        claims: Claims | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.worker_id = worker_id
        self.tracing = tracing
        self.metrics = metrics if metrics is not None else Metrics()
        self.catalog = catalog
        self.codec = codec or Codec()
        self.feed = feed
        self.book: WorkflowBook = feed.book
        self.url = url
        self.exactly_once = exactly_once
        self.clock = clock
        self.policies = policies or Policies()
        self.access = access or Access()
        #: The tenants' spend ledger, read from ``baton.spend`` (when a tenant has a ceiling).
        self.ledger = SpendLedger(self.policies) if self.policies.tenants else None
        self.wakeups = WakeIndex()
        #: The operators' pauses and caps in force, read from ``baton.control``.
        self.control = ControlBook()
        self.index = ApprovalsIndex(catalog.partitions)
        self.notifier = ApprovalNotifier(webhook) if webhook else None
        self.handler = Handler(
            catalog=catalog,
            codec=self.codec,
            feed=feed,
            wakeups=self.wakeups,
            policies=self.policies,
            access=self.access,
            models=models,
            ledger=self.ledger,
            tools=tools,
            clock=clock,
            tracing=tracing,
            control=self.control,
            claims=claims,
        )
        self.loop = CoordinatorLoop(
            bootstrap=bootstrap,
            catalog=catalog,
            codec=self.codec,
            handler=self.handler,
            wakeups=self.wakeups,
            approvals=self.index,
            settings=LoopSettings(
                exactly_once=exactly_once,
                commit_interval=commit_interval,
                flush_interval=flush_interval,
                session_timeout=session_timeout,
            ),
            url=url,
            worker_id=worker_id,
            poison=self.dead_letter_record,
            on_request=self.notifier.notify if self.notifier else None,
            metrics=self.metrics,
            tracing=tracing,
        )
        measure(self, self.metrics)
        self.control_feed = ControlFollower(
            bootstrap=bootstrap,
            catalog=catalog,
            codec=self.codec,
            book=self.control,
            released=self.release,
            poison=self.dead_letter_record,
        )
        self.spend: SpendFollower | None = None
        if self.ledger is not None:
            self.spend = SpendFollower(
                bootstrap=bootstrap,
                catalog=catalog,
                codec=self.codec,
                ledger=self.ledger,
                window_s=max(c.window for c in self.policies.tenants.values()),
                wake=self.loop.wake,
                poison=self.dead_letter_record,
                clock=clock,
            )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every service and join the group."""
        self.plain: AIOKafkaProducer = kafka_producer(
            worker_source(self.worker_id),
            self.codec,
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=BATCH_BYTES,
        )
        await self.plain.start()
        if self.notifier is not None:
            self.notifier.start()
        # Before the loop: a run must never start because its tenant's pause was not read.
        await self.control_feed.start()
        if self.ledger is not None:
            # Ceilings set at run time whose ledger entries may be older than its window.
            for tenant, command in self.control.caps.items():
                self.ledger.seed(
                    tenant, command.issued_at, command.max_cost_usd, f"caps/{command.command_id}"
                )
        if self.spend is not None:
            await self.spend.start()
        await self.loop.start(self.plain)

    async def stop(self) -> None:
        """Commit what is open, then stop every service."""
        await self.loop.stop()
        await self.control_feed.stop()
        if self.spend is not None:
            await self.spend.stop()
        if self.notifier is not None:
            await self.notifier.stop()
        await self.plain.stop()

    # -- what the API reads ----------------------------------------------------------------

    @property
    def approvals(self) -> dict[str, ApprovalRequested]:
        """Open approval requests of the runs this worker owns, by approval id."""
        return self.index.requests

    @property
    def ready(self) -> set[int]:
        """The partitions this worker owns and serves."""
        return self.loop.ready

    @property
    def assignor(self) -> CopartitionedAssignor:
        """The group's assignor (it knows every partition's owner)."""
        return self.loop.assignor

    @property
    def events_processed(self) -> int:
        """Records and wake-ups committed."""
        return self.loop.events_processed

    @property
    def written(self) -> dict[str, int]:
        """Records and bytes written to the coordinator's own topics (``<topic>:records``)."""
        return dict(self.loop.written)

    @property
    def runs(self) -> dict[str, int]:
        """Runs in flight and finished runs remembered, over the partitions owned."""
        stores = list(self.loop.stores.values())
        return {
            "in_flight": sum(s.in_flight for s in stores),
            "finished": sum(s.finished for s in stores),
        }

    @property
    def restores(self) -> dict[str, dict[str, float]]:
        """What the last takeover of each partition read: records and seconds."""
        return {
            str(partition): {
                "snapshots": read.snapshots,
                "journal": read.journal,
                "seconds": round(read.seconds, 3),
            }
            for partition, read in sorted(self.loop.restored.items())
            if partition in self.loop.ready
        }

    @property
    def stores(self) -> dict[int, PartitionStore]:
        """The runs of each partition this worker owns."""
        return self.loop.stores

    def owner_of(self, run_id: str) -> tuple[bool, str | None]:
        """Whether this worker owns the run, and else the owner's API address (if known)."""
        partition = partition_for(run_id, self.catalog.partitions)
        if partition in self.loop.ready:
            return True, self.url
        return False, self.loop.assignor.owners.get(partition)

    def state_of(self, run_id: str) -> RunState | None:
        """A run's committed state, when this worker owns it."""
        return self.loop.state_of(run_id)

    def hold(self, state: RunState) -> None:
        """Give the runtime a run's committed state, as a takeover would (tests, tools)."""
        partition = partition_for(state.run_id, self.catalog.partitions)
        store = self.loop.stores.setdefault(
            partition, PartitionStore(partition, self.catalog.run_retention_s)
        )
        version = store.version(state.run_id) + 1
        store.install(state.run_id, version, state, pack(version, state))
        self.index.update(state.run_id, state)

    def release(self, key: str) -> None:
        """A pause was lifted: wake the runs it held here, the longest held first.

        Each goes on in its next pass (``run_resumed``), in that order: the runs of one
        partition are released in the order they were held.
        """
        held: list[tuple[datetime, str]] = []
        for partition in sorted(self.loop.ready):
            for run_id, run in self.loop.stores[partition].active():
                state = run if isinstance(run, RunState) else run.state()
                if state.held_by == key and state.paused_at is not None:
                    held.append((state.paused_at, run_id))
        now = time.time()
        woken = [run_id for _, run_id in sorted(held)]
        # Runs held in a batch that has not committed yet are not in the store as held:
        # woken too, after the others (a run with nothing due changes nothing).
        woken += sorted(self.loop.uncommitted() - set(woken))
        for n, run_id in enumerate(woken):
            self.wakeups.schedule(run_id, now + n * 1e-6)
        log.info("%s resumed: %d held runs woken", key, len(held))

    async def dead_letter_record(self, record: Any, reason: str) -> None:
        """Send a record read outside a batch (workflows, restores) to the dead letters."""
        log.warning("dead-lettering %s[%d]: %s", record.topic, record.partition, reason)
        letter = letter_for(record, error_class="DecodeError", reason=reason, at=self.clock())
        await self.plain.send_and_wait(
            self.catalog.dead_letter.name,
            self.codec.encode(letter),
            key=record.key,
            partition=record.partition % self.catalog.partitions,
        )
        self.metrics.dead_lettered(letter.error_class)
