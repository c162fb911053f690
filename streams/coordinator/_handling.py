"""One event of one run, turned into what the coordinator's batch sends and saves.

``Handler.record`` takes a consumed record, ``Handler.timer`` a run whose wake-up is due.
Both work the same way: first *compute* everything the event leads to, with no side effect
(``decide``, then encoding every output and the new state, checking each against the record
size limit), then *apply* it to the partition's open batch (send, put, run events).

Nothing a record contains can stop its partition:

- bytes that do not decode, or an event that names no run, go to the dead-letter topic;
- a computation that raises (a bug, or input ``decide`` cannot handle) is tried
  ``MAX_TRIES`` times, then the record goes to the dead-letter topic whole, with the error;
- a run whose new state or one of whose outputs would pass ``MAX_RECORD_BYTES`` ends
  ``failed`` with a result that says so, instead of writing the oversized record.

Kafka errors while sending are not the record's fault: they fail the whole batch, which is
aborted and read again.

With tracing on (``streams._tracing``), a task that starts a run gets the run's trace, and
every event of a traced run records its spans in the batch and sends its outputs with a
``traceparent`` header; with it off, ``tracing`` is ``None`` and none of that happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import JsonValue

from processors import Claims, ModelCatalog, ToolRegistry, template_budget
from streams._access import Access
from streams._deadletters import letter_for
from streams._deadletters import too_large as record_too_large
from streams._policies import Policies
from streams._workflows import WorkflowBook, WorkflowFeed
from streams.coordinator._batch import Batch
from streams.coordinator._claimed import claim_decision, payload_lost, resolve_event, resolve_state
from streams.coordinator._control import ControlBook, usd
from streams.coordinator._decide import Context, Decision, Inbound, decide, too_large
from streams.coordinator._ledger import SpendLedger
from streams.coordinator._state import RunState, RunTrace
from streams.coordinator._wakeups import WakeIndex
from streams.workflow import Workflow
from topics import (
    MAX_RECORD_BYTES,
    ApprovalRequested,
    Codec,
    ControlAction,
    ControlCommand,
    DeadLetter,
    DecodeError,
    Event,
    PermanentError,
    RetryableError,
    RunEvent,
    RunResult,
    SpendKind,
    SpendRecorded,
    StepRequested,
    TaskSubmitted,
    TimerFired,
    Topic,
    TopicCatalog,
    partition_for,
    run_id_of,
)

if TYPE_CHECKING:
    from streams._tracing import Tracing

__all__ = ["MAX_TRIES", "Handler"]

log = logging.getLogger(__name__)

#: Times a record's computation is tried before the record is dead-lettered.
MAX_TRIES = 3


@dataclass
class _Effects:
    """What one event leads to, computed and encoded, not yet sent."""

    state: RunState | None = None
    body: bytes = b""
    outputs: list[tuple[str, bytes | None, bytes, int]] = field(default_factory=list)
    events: list[bytes] = field(default_factory=list)
    approvals: list[ApprovalRequested] = field(default_factory=list)
    dead_letter: str | None = None
    #: The decision's events, for the batch's tally.
    emitted: tuple[Any, ...] = ()


class Handler:
    """Handles the events of the runs on the partitions a coordinator owns.

    Args:
        catalog: The topics.
        codec: Decodes inputs, encodes outputs.
        feed: The deployed workflows (read again when a run's version is missing).
        wakeups: Where each run's next wake-up is noted.
        policies: The organisation's policies.
        access: Reviewers and signing keys.
        models: The model catalog.
        ledger: The tenants' spend ledger, when a tenant has a ceiling.
        tools: The tool registry.
        clock: The time.
        tracing: Traces runs (``None``: tracing is off).
        control: The operators' pauses in force.
        claims: Claim checks: payloads over the threshold are saved and emitted as blob
            references, and resolved before ``decide`` (``None``: off).
    """

    def __init__(
        self,
        *,
        catalog: TopicCatalog,
        codec: Codec,
        feed: WorkflowFeed,
        wakeups: WakeIndex,
        policies: Policies,
        access: Access,
        models: ModelCatalog | None,
        ledger: SpendLedger | None,
        tools: ToolRegistry | None,
        clock: Callable[[], datetime],
        tracing: Tracing | None = None,
        control: ControlBook | None = None,
        claims: Claims | None = None,
    ) -> None:
        self.catalog = catalog
        self.control = control
        self.claims = claims
        self.tracing = tracing
        self.codec = codec
        self.feed = feed
        self.book: WorkflowBook = feed.book
        self.wakeups = wakeups
        self.policies = policies
        self.access = access
        self.models = models
        self.ledger = ledger
        self.tools = tools
        self.clock = clock
        self._inputs: dict[str, Topic] = {
            t.name: t
            # Not ``timers``: deadlines fire inside the loop (``_wakeups``); what older
            # releases wrote there is due again by the runs' own state.
            for t in (
                catalog.tasks,
                catalog.step_results,
                catalog.control,
                catalog.approvals_decided,
            )
        }
        self._routes: dict[type[Event], Topic] = {
            RunResult: catalog.results,
            DeadLetter: catalog.dead_letter,
            ApprovalRequested: catalog.approvals_requested,
            TimerFired: catalog.timers,
            TaskSubmitted: catalog.tasks,
            ControlCommand: catalog.control,
        }

    @property
    def inputs(self) -> list[str]:
        """The topics the coordinator consumes."""
        return list(self._inputs)

    # -- entry points --------------------------------------------------------------------------

    async def record(self, batch: Batch, record: Any) -> None:
        """Handle one consumed record (its offset is noted in the batch by the caller)."""
        now = self.clock()
        started = time.time_ns() if self.tracing is not None else 0
        oversized = record_too_large(record)
        if oversized is not None:
            await self._dead_letter(batch, record, "RecordTooLarge", oversized, now)
            return
        try:
            inbound: Inbound = self.codec.decode_for(  # type: ignore[assignment]  # per topic
                self._inputs[record.topic], record.value, record.key
            )
        except DecodeError as exc:
            await self._dead_letter(batch, record, "DecodeError", exc.reason, now)
            return
        if isinstance(inbound, ControlCommand) and inbound.scope is not None:
            # A tenant's or workflow's: every worker's control follower applies it. A caps
            # command's owner also writes it to the tenant's ledger, once.
            if inbound.action == ControlAction.caps:
                await self._caps(batch, inbound, record, now)
            return
        run_id = run_id_of(inbound)
        if run_id is None:
            await self._dead_letter(batch, record, "MissingRunId", "the event names no run", now)
            return
        home = partition_for(run_id, self.catalog.partitions)
        if home != record.partition:
            # Published with another partitioner: move it to where its run lives.
            await batch.send(
                record.topic, run_id.encode(), record.value, home, record.headers or None
            )
            return
        effects = await self._compute(batch, run_id, inbound, now, record.headers)
        if isinstance(effects, Exception):
            await self._dead_letter(
                batch,
                record,
                type(effects).__name__,
                f"not handled after {MAX_TRIES} tries: {effects}",
                now,
                run_id=run_id,
                payload_type=type(inbound).__name__,
            )
            return
        if effects.dead_letter is not None:
            await self._dead_letter(
                batch,
                record,
                "Unprocessable",
                effects.dead_letter,
                now,
                run_id=run_id,
                payload_type=type(inbound).__name__,
            )
        await self._apply(batch, run_id, inbound, effects, record, started)

    async def _caps(
        self, batch: Batch, command: ControlCommand, record: Any, now: datetime
    ) -> None:
        """Write a tenant's new ceiling to its ledger, audited by a control event.

        The event is a run event of the scope (``caps/<tenant>``, never a run id), its
        ``seq`` the command's offset, in this partition's run-event batch.
        """
        tenant = command.tenant
        assert tenant is not None, "a caps command names its tenant"
        account = self.policies.account(tenant)
        detail: dict[str, JsonValue] = {
            "command_id": command.command_id,
            "issued_by": command.issued_by,
            "why": command.reason,
            "max_cost_usd": usd(command.max_cost_usd),
        }
        ceiling = self.policies.ceiling(tenant)
        if account != tenant or ceiling is None:
            kind = "tenant_caps_ignored"
            detail["reason"] = (
                f"tenant {tenant} has no ceiling of its own in policies.yaml (tenants:)"
            )
        else:
            kind = "tenant_caps_changed"
            detail["policies_max_cost_usd"] = usd(ceiling.max_cost_usd)
            entry = SpendRecorded(
                tenant=account,
                reservation_id=f"caps/{command.command_id}",
                kind=SpendKind.uncap if command.max_cost_usd is None else SpendKind.cap,
                amount_usd=command.max_cost_usd or Decimal(0),
                run_id="",
                step="",
                at=command.issued_at,
            )
            spend = self.catalog.spend
            await batch.send(
                spend.name,
                account.encode(),
                self.codec.encode(entry),
                partition_for(account, spend.partitions),
            )
        log.info("control: %s for %s (%s)", kind, tenant, command.command_id)
        event = RunEvent(
            run_id=command.scope or "",
            seq=record.offset,
            type=kind,
            at=now,
            tenant=tenant,
            detail=detail,
        )
        batch.events.append(self.codec.encode_item(event))

    async def timer(self, batch: Batch, run_id: str) -> bool:
        """Look at a run whose wake-up is due; whether its state changed."""
        now = self.clock()
        fired = TimerFired(run_id=run_id, fired_at=now)
        effects = await self._compute(batch, run_id, fired, now, None)
        if isinstance(effects, Exception):
            log.error("timer of run %s failed %d times: %s", run_id, MAX_TRIES, effects)
            return False
        await self._apply(batch, run_id, fired, effects, None, 0)
        return effects.state is not None

    # -- compute, then apply -------------------------------------------------------------------

    async def _compute(
        self, batch: Batch, run_id: str, inbound: Inbound, now: datetime, headers: Any
    ) -> _Effects | Exception:
        state = batch.get(run_id)
        trace = None
        if self.tracing is not None and state is None and isinstance(inbound, TaskSubmitted):
            trace = self.tracing.run_trace(headers)
        error: Exception | None = None
        for attempt in range(1, MAX_TRIES + 1):
            try:
                workflow = await self._workflow_for(state, inbound)
                context = self._context(now, workflow, trace)
                if self.claims is None:
                    # Every template this event renders shares one budget (decisions/0004).
                    with template_budget():
                        decision = decide(state, inbound, context)
                else:
                    decision = await self._decide_claimed(run_id, state, inbound, context)
                effects = self._encode(decision)
                if effects is None:
                    effects = self._encode(too_large(state, inbound, context, self._limit))
                    assert effects is not None, "a too-large decision is small"
                return effects
            except Exception as exc:  # anything: a record must never stop its partition
                error = exc
                log.warning(
                    "run %s: %s failed (try %d of %d): %s: %s",
                    run_id,
                    type(inbound).__name__,
                    attempt,
                    MAX_TRIES,
                    type(exc).__name__,
                    exc,
                    exc_info=attempt == MAX_TRIES,
                )
        assert error is not None
        return error

    async def _decide_claimed(
        self, run_id: str, state: RunState | None, inbound: Inbound, context: Context
    ) -> Decision:
        """``decide`` over the run's real payloads; its state and events claimed after."""
        assert self.claims is not None
        try:
            seen = await resolve_state(self.claims, state)
            event = await resolve_event(self.claims, inbound)
        except PermanentError as exc:  # missing or altered: reading again cannot help
            log.warning("run %s: a payload cannot be read: %s", run_id, exc)
            decision = payload_lost(state, inbound, context, str(exc))
        else:
            with template_budget():
                decision = decide(seen, event, context)
        return await claim_decision(self.claims, self.codec, run_id, decision)

    @property
    def _limit(self) -> int:
        return MAX_RECORD_BYTES

    def _encode(self, decision: Decision) -> _Effects | None:
        """Encode what a decision emits and saves; ``None`` when a record would be too big.

        Run events come encoded (and chained) by ``decide`` already: those bytes are the
        ones the audit chain hashed, and the ones written.
        """
        effects = _Effects(
            state=decision.state, dead_letter=decision.dead_letter, emitted=decision.emit
        )
        if decision.state is not None:
            effects.body = decision.state.to_bytes()
            if len(effects.body) > MAX_RECORD_BYTES:
                return None
        bodies = iter(decision.bodies)
        for event in decision.emit:
            if isinstance(event, RunEvent):
                item = next(bodies, None) or self.codec.encode_item(event)
                if len(item) > MAX_RECORD_BYTES:
                    return None
                effects.events.append(item)
                continue
            value = self.codec.encode(event)
            if len(value) > MAX_RECORD_BYTES:
                return None
            effects.outputs.append(self._destination(event, value))
            if isinstance(event, ApprovalRequested):
                effects.approvals.append(event)
        return effects

    def _destination(self, event: Event, value: bytes) -> tuple[str, bytes | None, bytes, int]:
        if isinstance(event, SpendRecorded):
            spend = self.catalog.spend
            return (
                spend.name,
                event.tenant.encode(),
                value,
                partition_for(event.tenant, spend.partitions),
            )
        if isinstance(event, StepRequested):
            topic = (
                self.catalog.retry(event.retry_tier)
                if event.retry_tier
                else self.catalog.steps(event.kind_name)
            )
        else:
            topic = self._routes[type(event)]
        run_id = run_id_of(event)
        assert run_id is not None, "everything the coordinator emits belongs to a run"
        return topic.name, run_id.encode(), value, partition_for(run_id, topic.partitions)

    async def _apply(
        self,
        batch: Batch,
        run_id: str,
        inbound: Inbound,
        effects: _Effects,
        record: Any | None,
        started: int,
    ) -> None:
        if self.tracing is None:
            for topic, key, value, partition in effects.outputs:
                await batch.send(topic, key, value, partition)
        else:
            await self._apply_traced(batch, run_id, effects, record, started)
        batch.events.extend(effects.events)
        batch.approvals.extend(effects.approvals)
        state = effects.state
        batch.tally.decision(effects.emitted, inbound, state.tenant if state else None)
        if state is not None:
            batch.put(run_id, state, effects.body)
            self.wakeups.schedule(run_id, state.next_wake())

    async def _apply_traced(
        self, batch: Batch, run_id: str, effects: _Effects, record: Any | None, started: int
    ) -> None:
        """Send the outputs with their ``traceparent`` headers; record the event's spans.

        ``record`` is ``None`` for a wake-up: no ``process`` span, the sends are children
        of the run's span. ``started`` is when the record's handling began.
        """
        assert self.tracing is not None
        state = effects.state if effects.state is not None else batch.get(run_id)
        run = state.trace if state is not None else None
        if run is None:  # started with tracing off: not traced
            for topic, key, value, partition in effects.outputs:
                await batch.send(topic, key, value, partition)
            return
        headers = self.tracing.handled(batch.spans, run, run_id, record, effects.outputs, started)
        for (topic, key, value, partition), sent in zip(effects.outputs, headers, strict=True):
            await batch.send(topic, key, value, partition, sent)
        if effects.state is not None and any(type(e) is RunResult for e in effects.emitted):
            self.tracing.ended(batch.spans, effects.state)

    def _context(
        self, now: datetime, workflow: Workflow | None, trace: RunTrace | None = None
    ) -> Context:
        return Context(
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
            trace=trace,
            control=self.control,
        )

    async def _dead_letter(
        self,
        batch: Batch,
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
        letter = letter_for(
            record,
            error_class=error_class,
            reason=reason,
            at=now,
            run_id=run_id,
            payload_type=payload_type,
        )
        await batch.send(
            self.catalog.dead_letter.name,
            run_id.encode() if run_id else record.key,
            self.codec.encode(letter),
            record.partition,
        )
        batch.tally.add(("dead_letters", error_class))

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
