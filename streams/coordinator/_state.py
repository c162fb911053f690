"""Run state: what the coordinator remembers about one run, stored in the ``runs`` table.

Stored as JSON (pydantic), one record per run, keyed by run id. New fields get defaults, so a
worker of a newer release reads state written by an older one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from topics import (
    ApprovalVerdict,
    AttemptRecord,
    Budget,
    Money,
    RunStatus,
    StepError,
    Timestamp,
    Usage,
)

__all__ = [
    "AgentCall",
    "ApprovalState",
    "Reservation",
    "RunState",
    "RunTrace",
    "StepPhase",
    "StepState",
    "Vote",
]


class StepPhase(StrEnum):
    """Where a step is in its life."""

    pending = "pending"
    dispatched = "dispatched"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"

    @property
    def done(self) -> bool:
        """Whether steps after this one may start (it succeeded or was skipped)."""
        return self in (StepPhase.succeeded, StepPhase.skipped)


class Vote(BaseModel):
    """One accepted decision."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    approver: str
    verdict: ApprovalVerdict
    reason: str | None = None
    at: Timestamp


class ApprovalState(BaseModel):
    """An approval request that is open.

    Attributes:
        approval_id: The request's id (``<run>/<step>/<n>``, ``n`` counting the run's requests:
            never the same twice in a run's life, each escalation gets a new one).
        level: 0 for the first ask, then one more per escalation.
        approvers: Who may decide at this level.
        quorum: Distinct approvals needed.
        deadline: When it escalates, or ends as the step's ``on_timeout`` says.
        reason: Why approval is needed.
        context: What reviewers see.
        requested_at: When it was asked.
        policy: The policy that asked (a gate in front of a step), or ``None`` for an
            approval step.
        cost_usd: The run's cost when it was asked (what reviewers are shown).
        request_digest: The digest of the request as emitted (``topics.request_digest``);
            empty for a request opened by an older release (then computed when needed).
        votes: The approvals accepted so far.
        action: The tool call the request gates, as it will be made (``tool``, ``args``,
            ``args_schema``); ``None`` when it gates none (an approval step, a model step).
        output_schema: What a ``respond`` output must fit; ``None`` when any JSON does.
        response: JSON text of an output a reviewer gave instead of the step, when this
            request asks the others to approve it.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    approval_id: str
    level: int = 0
    approvers: list[str]
    quorum: int = 1
    deadline: Timestamp
    reason: str = ""
    context: JsonValue = None
    requested_at: Timestamp
    policy: str | None = None
    cost_usd: Money = Decimal(0)
    request_digest: str = ""
    votes: list[Vote] = Field(default_factory=list)
    action: JsonValue = None
    output_schema: JsonValue = None
    response: str | None = None


class Reservation(BaseModel):
    """A model call's estimated cost, reserved in the tenant's ledger, awaiting its verdict.

    Attributes:
        reservation_id: ``<run>/<step>/<attempt>``.
        estimate: The call's estimated usage (what was reserved).
        at: When it was reserved.
        check_at: When the step looks for the verdict again if not told.
        tier: The retry tier the attempt waits in once admitted (a retry).
        wait_s: How long it waits there.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    reservation_id: str
    estimate: Usage
    at: Timestamp
    check_at: Timestamp
    tier: str | None = None
    wait_s: float | None = None


class AgentCall(BaseModel):
    """What makes a step a tool call an agent's model asked for.

    Attributes:
        agent: The agent step whose turn asked for it.
        turn: The turn (1 for the first model call).
        index: The call's place among the turn's calls.
        call_id: The model's id for the call; its result answers it.
        tool: The tool asked for.
        arguments: The arguments the model gave (sent as they are: never rendered).
        key: The idempotency key every attempt carries.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    agent: str
    turn: int
    index: int
    call_id: str
    tool: str
    arguments: dict[str, JsonValue] = Field(default_factory=dict)
    key: str


class RunTrace(BaseModel):
    """Where a run's spans go when tracing is on (docs/decisions/0005).

    Chosen when the run starts and kept with it, so every later hop, on any worker and
    after any takeover, parents its spans to the same run span.

    Attributes:
        trace_id: The trace (32 hex digits): the caller's, when the task carried a
            ``traceparent`` header, else a new one.
        span_id: The run's ``invoke_workflow`` span (16 hex digits), emitted when the run
            ends, with the run's start time.
        parent_id: The caller's span the run continues, or ``None`` (a trace of its own).
        sampled: Whether the trace is recorded (the caller's flag, else yes).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    trace_id: str
    span_id: str
    parent_id: str | None = None
    sampled: bool = True


class StepState(BaseModel):
    """One step of one run.

    Attributes:
        phase: Where the step is.
        attempt: The last attempt number dispatched (unique across the step's whole life).
        tries: Attempts in the current execution (reset when validation re-runs the step).
        reruns: Times validation sent the step back with feedback.
        dispatched_at: When the last attempt was dispatched.
        deadline_at: When the last attempt times out.
        output: The output, once succeeded.
        error: The last error.
        usage: Tokens and money of every attempt.
        duration_ms: How long the last finished attempt took in its processor.
        route: The model route the last attempt used (llm steps).
        routes: An llm step's route and its fallbacks, rendered at its first dispatch.
        route_index: Which of ``routes`` attempts go to now.
        history: Every failed attempt, oldest first.
        feedback: Validation errors to feed back to the next execution.
        approval: The approval request open for this step (an approval step, or a policy
            gate in front of it).
        approvals_asked: Approval requests made for this step since its state was last
            rebuilt (ids are numbered by ``RunState.approvals_asked``, which is never reset).
        cleared: Policies whose approval this step has.
        estimate: The estimated usage of the model call in flight (for the run's caps).
        reservation: The tenant-ledger reservation of the model call about to be made.
        cascade_level: How far up its ``cascade`` an llm step has moved (0: not at all).
        call: Set on a tool call an agent asked for (a step the workflow does not name).
        turn: Model turns an agent step has finished.
        conversation: An agent's messages after its prompt: the model's tool calls and
            their results, turn by turn.
        waiting_on: The tool calls (step names) the agent's current turn waits for.
        calls_made: Tool calls the agent step has asked for in its whole life (names them).
        not_before: A delayed retry: the attempt in flight waits in ``retry_tier`` until then.
        retry_tier: The retry tier the attempt in flight waits in (a delayed retry).
        edited_args: The arguments a reviewer's ``edit`` gave this tool call: every attempt
            is made with them (and an idempotency key of their own) instead of the rendered
            ones, or the model's.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    phase: StepPhase = StepPhase.pending
    attempt: int = 0
    tries: int = 0
    reruns: int = 0
    dispatched_at: Timestamp | None = None
    deadline_at: Timestamp | None = None
    output: JsonValue = None
    error: StepError | None = None
    usage: Usage = Field(default_factory=Usage)
    duration_ms: float | None = None
    route: str | None = None
    routes: list[str] = Field(default_factory=list)
    route_index: int = 0
    history: list[AttemptRecord] = Field(default_factory=list)
    feedback: list[str] = Field(default_factory=list)
    approval: ApprovalState | None = None
    approvals_asked: int = 0
    cleared: list[str] = Field(default_factory=list)
    estimate: Usage | None = None
    reservation: Reservation | None = None
    cascade_level: int = 0
    call: AgentCall | None = None
    turn: int = 0
    conversation: list[JsonValue] = Field(default_factory=list)
    waiting_on: list[str] = Field(default_factory=list)
    calls_made: int = 0
    not_before: Timestamp | None = None
    retry_tier: str | None = None
    edited_args: dict[str, JsonValue] | None = None

    @property
    def current_route(self) -> str | None:
        """The route the next attempt goes to (llm steps)."""
        return self.routes[self.route_index] if self.routes else None


class RunState(BaseModel):
    """One run.

    Attributes:
        run_id: The run (= task id).
        workflow: Workflow name.
        workflow_version: Content hash of the pinned workflow version.
        tenant: Who pays.
        labels: Labels of the task, copied to the result.
        input: The task's input.
        budget: The caps in force (workflow defaults, tightened by the task).
        status: ``None`` while running, then how it ended.
        reason: Why it did not complete.
        steps: Every step's state, in workflow order.
        seq: Sequence number of the next run event.
        audit_head: The audit chain's head: the hash of the run's last event, or before its
            first the task's digest (``topics._audit``); the next event links to it. Empty
            for a run that began before the chain (its next event links to
            ``run_genesis``).
        dispatches: Step attempts dispatched so far (for ``max_steps``).
        approvals_asked: Approval requests opened so far, in the run's whole life (numbers
            their ids; it survives validation re-runs and re-drives, which rebuild steps).
        usage: Tokens and money of the whole run.
        output: The run's output, once completed.
        started_at: When the run started.
        finished_at: When it ended.
        paused_at: When the run last paused (``run_paused``): nothing of it runs, it waits
            for people, retry tiers or an operator's pause only; ``None`` while it runs.
        held_by: The operator's pause it waits on (``tenant/<t>``, ``workflow/<w>``), or
            ``None``.
        hold_check_at: While held: when it looks at the pauses in force again by itself
            (a resume wakes it at once; this covers a wake that was missed).
        trace: Where its spans go; ``None`` when it started with tracing off (it is then
            not traced).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: str
    workflow: str
    workflow_version: str = ""
    tenant: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    input: JsonValue = None
    budget: Budget = Field(default_factory=Budget)
    status: RunStatus | None = None
    reason: str | None = None
    steps: dict[str, StepState] = Field(default_factory=dict)
    seq: int = 0
    audit_head: str = ""
    dispatches: int = 0
    approvals_asked: int = 0
    usage: Usage = Field(default_factory=Usage)
    output: JsonValue = None
    started_at: Timestamp
    finished_at: Timestamp | None = None
    paused_at: Timestamp | None = None
    held_by: str | None = None
    hold_check_at: Timestamp | None = None
    trace: RunTrace | None = None

    @property
    def finished(self) -> bool:
        """Whether the run has ended."""
        return self.status is not None

    def next_wake(self) -> datetime | None:
        """The earliest time something is due: a step deadline or the run's wall-time cap.

        A paused run is also due when a delayed retry leaves its tier (it resumes then), and
        a held one when it looks at the pauses again.
        """
        if self.finished:
            return None
        due = [s.deadline_at for s in self.steps.values() if s.phase == StepPhase.dispatched]
        if self.paused_at is not None:
            due += [s.not_before for s in self.steps.values() if s.phase == StepPhase.dispatched]
        for step in self.steps.values():
            if step.approval is not None:
                due.append(step.approval.deadline)
            held = self.held_by is not None
            if step.reservation is not None and step.phase == StepPhase.pending and not held:
                due.append(step.reservation.check_at)
        if self.hold_check_at is not None:
            due.append(self.hold_check_at)
        if self.budget.max_seconds is not None:
            due.append(self.started_at + timedelta(seconds=self.budget.max_seconds))
        present = [d for d in due if d is not None]
        return min(present) if present else None

    def to_bytes(self) -> bytes:
        """The stored form: the fields that were ever set (the others have their defaults).

        ``exclude_unset`` rather than ``exclude_defaults``: as compact in practice, without
        comparing every field with its default on every transition of every run.
        """
        return self.model_dump_json(exclude_unset=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RunState:
        """Read the stored form."""
        return cls.model_validate_json(data)
