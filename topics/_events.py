"""The events baton exchanges over Kafka.

Each event is a frozen, closed pydantic model mirrored by an Avro schema in
``topics/schemas/`` (a unit test checks that the two agree field by field). Free-form JSON
(task input, step output) travels as an Avro string with ``logicalType: json``; money is an
Avro decimal; times are ``timestamp-millis``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    model_validator,
)

from topics._ids import check_kind, check_task_id, check_tenant

__all__ = [
    "ApprovalDecision",
    "ApprovalRequested",
    "ApprovalVerdict",
    "AnchoredRun",
    "AttemptRecord",
    "AuditAnchor",
    "BUILTIN_KINDS",
    "Budget",
    "CacheEntry",
    "CachedToolCall",
    "ControlAction",
    "ControlCommand",
    "DeadLetter",
    "Event",
    "MONEY_SCALE",
    "Money",
    "Record",
    "JournalEntry",
    "RunEvent",
    "RunEventBatch",
    "RunJournal",
    "RunResult",
    "RunStatus",
    "SpendKind",
    "SpendRecorded",
    "StepError",
    "StepKind",
    "StepOutcome",
    "StepRequested",
    "StepResult",
    "StepStatus",
    "StepSummary",
    "StreamChunk",
    "TaskSubmitted",
    "TimerFired",
    "Timestamp",
    "Usage",
    "WorkflowDefinition",
]

MONEY_SCALE = 12
_MONEY_QUANTUM = Decimal(1).scaleb(-MONEY_SCALE)
_MONEY_LIMIT = Decimal(10) ** (24 - MONEY_SCALE)


def _to_money(value: Decimal) -> Decimal:
    quantized = value.quantize(_MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)
    if abs(quantized) >= _MONEY_LIMIT:
        raise ValueError(f"{value} is out of range for money")
    return quantized


#: US dollars, exact, rounded half-even to 12 decimal places. Avro: bytes/decimal(24, 12).
Money = Annotated[Decimal, AfterValidator(_to_money)]

#: A point in time with its time zone. Avro: long/timestamp-micros.
Timestamp = AwareDatetime


class Record(BaseModel):
    """A frozen, closed record: the base of every event and of the records inside them."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class Event(Record):
    """A top-level event: the value of one Kafka record."""


class StepKind(StrEnum):
    """What a step does; each kind has its own request topic and processor.

    ``custom`` is not a kind of its own: it marks a request for a kind a package registered
    (entry-point group ``baton.processors``), whose name travels in ``custom_kind``.
    """

    llm = "llm"
    tool = "tool"
    retrieve = "retrieve"
    validate = "validate"
    transform = "transform"
    agent = "agent"
    custom = "custom"  # added last: Avro enums only grow at the end


#: The kinds baton has processors for itself, each with its request topic.
BUILTIN_KINDS: tuple[StepKind, ...] = tuple(k for k in StepKind if k is not StepKind.custom)


class StepStatus(StrEnum):
    """How one attempt at a step ended."""

    ok = "ok"
    failed = "failed"


class StepOutcome(StrEnum):
    """How a step ended within its run."""

    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"
    pending = "pending"


class RunStatus(StrEnum):
    """How a run ended."""

    completed = "completed"
    failed = "failed"
    rejected = "rejected"
    budget_exceeded = "budget_exceeded"
    cancelled = "cancelled"


class ApprovalVerdict(StrEnum):
    """A reviewer's answer to an approval request.

    ``approve`` and ``reject`` say yes or no to what the request shows; ``edit`` approves
    the gated tool call with other arguments (the decision's ``payload``); ``respond``
    answers instead of the step: the ``payload`` becomes its output and it does not run.
    """

    approve = "approve"
    reject = "reject"
    edit = "edit"
    respond = "respond"


class ControlAction(StrEnum):
    """An operator command.

    ``cancel`` and ``redrive`` act on one run. ``pause`` and ``resume`` act on a tenant or a
    workflow (new steps of its runs wait until resumed); ``caps`` changes a tenant's
    ceiling at run time.
    """

    cancel = "cancel"
    redrive = "redrive"
    pause = "pause"
    resume = "resume"
    caps = "caps"


class Usage(Record):
    """Tokens and money one step (or a whole run) used."""

    input_tokens: int = Field(default=0, ge=0, description="Prompt tokens billed.")
    output_tokens: int = Field(default=0, ge=0, description="Completion tokens billed.")
    cost_usd: Money = Field(default=Decimal(0), description="Cost in US dollars.")
    route: str | None = Field(default=None, description="Model route name from the catalog.")
    provider: str | None = Field(default=None, description="Provider that served the call.")
    model: str | None = Field(default=None, description="Provider's model id.")
    cached: bool = Field(default=False, description="Served from the response cache.")
    saved_usd: Money = Field(default=Decimal(0), description="Cost the cache saved.")


class StepError(Record):
    """Why an attempt failed, classified."""

    error_class: str = Field(description="Error class name, e.g. ProviderTimeout.")
    message: str = Field(description="Human-readable message (never contains secrets).")
    retryable: bool = Field(description="Whether trying again may succeed.")
    retry_after_s: float | None = Field(
        default=None, description="Seconds the far side asked us to wait, if it said."
    )


class Budget(Record):
    """Caps on one run; ``None`` means no cap."""

    max_steps: int | None = Field(default=None, ge=1, description="Step attempts dispatched.")
    max_tokens: int | None = Field(default=None, ge=1, description="Input + output tokens.")
    max_cost_usd: Money | None = Field(default=None, ge=0, description="Money spent.")
    max_seconds: float | None = Field(default=None, gt=0, description="Wall time of the run.")


class TaskSubmitted(Event):
    """A request to run a workflow. Key: the task id, which is also the run id."""

    task_id: Annotated[str, AfterValidator(check_task_id)] = Field(description="Task id = run id.")
    workflow: str = Field(min_length=1, description="Workflow name.")
    workflow_version: str | None = Field(
        default=None,
        description="Content hash (or a unique prefix) to pin; null runs the latest deployed.",
    )
    input: JsonValue = Field(description="Workflow input, checked against its input schema.")
    tenant: Annotated[str, AfterValidator(check_tenant)] = Field(
        default="default", description="Who pays for the run."
    )
    budget: Budget | None = Field(
        default=None, description="Caps tighter than the workflow's defaults."
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Free-form metadata copied to the result."
    )
    submitted_at: Timestamp | None = Field(default=None, description="When it was submitted.")


class StepRequested(Event):
    """A request for a processor to run one attempt of one step. Key: run id."""

    run_id: str = Field(description="The run.")
    step: str = Field(description="Step name within the workflow.")
    kind: StepKind = Field(description="Which processor runs it.")
    attempt: int = Field(ge=1, description="Attempt number, 1 for the first dispatch.")
    idempotency_key: str = Field(
        description="Stable across attempts of this step: outside calls send it, so a "
        "repeated call has one effect."
    )
    workflow: str = Field(description="Workflow name.")
    workflow_version: str = Field(description="Content hash of the workflow version.")
    tenant: str = Field(default="default", description="Tenant of the run.")
    params: JsonValue = Field(description="The step's parameters, templates rendered.")
    context: JsonValue = Field(
        default=None, description="Run context the processor computes over (input, outputs)."
    )
    dispatched_at: Timestamp = Field(description="When the coordinator dispatched it.")
    deadline_at: Timestamp = Field(
        description="When the coordinator gives up waiting and dispatches the next attempt."
    )
    not_before: Timestamp | None = Field(
        default=None, description="Delayed retries: do not run before this time."
    )
    retry_tier: str | None = Field(
        default=None, description="Delayed retries: the retry tier it waits in (5s, 1m, ...)."
    )
    custom_kind: Annotated[str, AfterValidator(check_kind)] | None = Field(
        default=None,
        description="The name of a kind a package registered, when kind is custom.",
    )

    @model_validator(mode="after")
    def _custom_kind_named(self) -> StepRequested:
        if (self.kind is StepKind.custom) != (self.custom_kind is not None):
            raise ValueError("custom_kind is given exactly when kind is custom")
        return self

    @property
    def kind_name(self) -> str:
        """The step's kind: a built-in kind's value, or the custom kind's name."""
        return self.kind.value if self.custom_kind is None else self.custom_kind


class StepResult(Event):
    """How one attempt at one step ended. Key: run id."""

    run_id: str = Field(description="The run.")
    step: str = Field(description="Step name within the workflow.")
    attempt: int = Field(ge=1, description="The attempt this answers.")
    status: StepStatus = Field(description="ok or failed.")
    output: JsonValue = Field(default=None, description="The step's output when ok.")
    error: StepError | None = Field(default=None, description="Why it failed.")
    usage: Usage | None = Field(default=None, description="Tokens and money used.")
    started_at: Timestamp = Field(description="When the processor started the attempt.")
    finished_at: Timestamp = Field(description="When the processor finished it.")
    worker: str = Field(default="", description="Which worker ran it.")


class StepSummary(Record):
    """One step's line in a run result."""

    step: str = Field(description="Step name.")
    kind: str = Field(description="Step kind (llm, tool, ..., approval).")
    outcome: StepOutcome = Field(description="How the step ended.")
    attempts: int = Field(default=0, ge=0, description="Attempts dispatched.")
    duration_ms: float | None = Field(default=None, description="Latency of the last attempt.")
    usage: Usage = Field(default_factory=Usage, description="Tokens and money, all attempts.")


class RunResult(Event):
    """The one result of a run. Key: run id."""

    run_id: str = Field(description="The run (= task id).")
    workflow: str = Field(description="Workflow name.")
    workflow_version: str = Field(
        default="", description="Content hash of the version the run pinned."
    )
    tenant: str = Field(default="default", description="Tenant of the run.")
    status: RunStatus = Field(description="How the run ended.")
    output: JsonValue = Field(default=None, description="The workflow's output when completed.")
    reason: str | None = Field(default=None, description="Why it did not complete.")
    steps: list[StepSummary] = Field(default_factory=list, description="Every step's outcome.")
    usage: Usage = Field(default_factory=Usage, description="Tokens and money of the whole run.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels of the task.")
    started_at: Timestamp = Field(description="When the run started.")
    finished_at: Timestamp = Field(description="When it ended.")


class RunEvent(Event):
    """One state transition of a run, for audit, UIs and ops. Key: run id."""

    run_id: str = Field(description="The run.")
    seq: int = Field(ge=0, description="Position in the run's event sequence, from 0.")
    type: str = Field(description="What happened: run_started, step_dispatched, ...")
    at: Timestamp = Field(description="When it happened.")
    workflow: str = Field(default="", description="Workflow name.")
    tenant: str = Field(default="default", description="Tenant of the run.")
    step: str | None = Field(default=None, description="The step concerned, if any.")
    attempt: int | None = Field(default=None, description="The attempt concerned, if any.")
    duration_ms: float | None = Field(default=None, description="Latency, for step endings.")
    usage: Usage | None = Field(default=None, description="What this transition spent.")
    total_cost_usd: Money = Field(default=Decimal(0), description="Run cost so far.")
    total_tokens: int = Field(default=0, ge=0, description="Run tokens so far.")
    detail: JsonValue = Field(default=None, description="Type-specific detail.")
    prev_hash: str = Field(
        default="",
        description="The audit chain's link: the hash of the run's previous event, or for its "
        "first event the task's digest (topics._audit); empty when written before the chain.",
    )


class RunEventBatch(Event):
    """The run events of one coordinator commit on one partition, in order. Key: null.

    One record carries every event the commit produced, for all the partition's runs it
    touched: a record per commit, not per event, keeps the audit trail's cost per run small.
    Events of one run appear in ``seq`` order across records.
    """

    events: list[RunEvent] = Field(description="The events, in the order they happened.")


class JournalEntry(Record):
    """One run's state as one coordinator commit left it."""

    run_id: str = Field(description="The run.")
    record: bytes = Field(description="The run's stored state, as the run-state topic keeps it.")


class RunJournal(Event):
    """The run states one coordinator commit changed on one partition. Key: null.

    The coordinator's write-ahead journal: every commit appends one record (or a few, when
    large) with the new state of each run it changed, in the same transaction as the events
    it emitted. The compacted ``run-state`` topic receives each run's state only now and then
    (a flush), after which the journal before it is deleted; a worker taking a partition over
    reads the run-state snapshots, then the journal since the last flush.
    """

    entries: list[JournalEntry] = Field(description="The runs' new states.")


class AnchoredRun(Record):
    """One run's audit chain head, as an anchor records it."""

    run_id: str = Field(description="The run.")
    seq: int = Field(ge=-1, description="The seq of its last event (-1: none yet).")
    head: str = Field(description="The hash of its last event (topics._audit.event_hash).")


class AuditAnchor(Event):
    """The audit chain heads of one partition's runs, published now and then. Key: null.

    Written in the same commit as each flush of the partition's runs to ``run-state``, for
    every run changed since the previous flush, so that removing a whole run's events (or
    its last ones) from ``run-events`` shows: the anchor names the run and its head.
    """

    partition: int = Field(ge=0, description="The partition whose runs these are.")
    anchored_at: Timestamp = Field(description="When the anchor was made.")
    part: int = Field(default=0, ge=0, description="Which of the anchor's records this is.")
    parts: int = Field(default=1, ge=1, description="How many records the anchor has.")
    runs: list[AnchoredRun] = Field(description="The runs' heads, by run id.")
    key_id: str = Field(default="", description="The key that signed it; empty: unsigned.")
    signature: str = Field(default="", description="HMAC-SHA256 (hex) of the anchor's form.")


class AttemptRecord(Record):
    """One failed attempt, kept in a dead letter's history."""

    attempt: int = Field(ge=0, description="Attempt number.")
    at: Timestamp = Field(description="When it failed.")
    error_class: str = Field(description="Error class name.")
    message: str = Field(description="Error message.")


class DeadLetter(Event):
    """Something baton could not process, kept whole for ops. Key: run id, or null."""

    dead_letter_id: str = Field(description="Unique id of this dead letter.")
    origin_topic: str = Field(description="Topic the failed event came from.")
    origin_partition: int | None = Field(default=None, description="Its partition.")
    origin_offset: int | None = Field(default=None, description="Its offset.")
    key: bytes | None = Field(default=None, description="The original record key.")
    payload: bytes = Field(description="The original record value, byte for byte.")
    payload_type: str | None = Field(
        default=None, description="Event type of the payload; null when it did not decode."
    )
    error_class: str = Field(description="Error class name.")
    error: str = Field(description="Why it failed.")
    run_id: str | None = Field(default=None, description="The run, when known.")
    workflow: str | None = Field(default=None, description="The workflow, when known.")
    step: str | None = Field(default=None, description="The step, when known.")
    attempts: list[AttemptRecord] = Field(
        default_factory=list, description="Every failed attempt, oldest first."
    )
    cost_usd: Money = Field(default=Decimal(0), description="Money the run spent so far.")
    at: Timestamp = Field(description="When it was dead-lettered.")


class ApprovalRequested(Event):
    """A run is parked until people decide. Key: run id."""

    approval_id: str = Field(description="Unique id of this request.")
    run_id: str = Field(description="The run.")
    step: str = Field(description="The step that asked (or the step a policy stopped).")
    workflow: str = Field(description="Workflow name.")
    tenant: str = Field(default="default", description="Tenant of the run.")
    reason: str = Field(description="Why approval is needed.")
    approvers: list[str] = Field(description="Who may decide: user:<id> or group:<name>.")
    quorum: int = Field(default=1, ge=1, description="Distinct approvals needed.")
    level: int = Field(default=0, ge=0, description="Escalation level, 0 for the first ask.")
    deadline: Timestamp = Field(description="When it escalates or ends if undecided.")
    context: JsonValue = Field(default=None, description="Input and outputs so far.")
    cost_usd: Money = Field(default=Decimal(0), description="Run cost so far.")
    requested_at: Timestamp = Field(description="When it was asked.")
    request_digest: str = Field(
        default="",
        description="sha256 (hex) of the fields above and below: what a decision on it must name.",
    )
    action: JsonValue = Field(
        default=None,
        description="The tool call the request gates, as it will be made: {tool, args, "
        "args_schema}; what an edit changes. Null when it gates no tool call.",
    )
    output_schema: JsonValue = Field(
        default=None,
        description="The JSON Schema a respond's output must fit; null when any JSON does.",
    )
    response: str | None = Field(
        default=None,
        description="JSON text of the output a reviewer gave instead of the step, when this "
        "request asks the others to approve it; null otherwise.",
    )


class ApprovalDecision(Event):
    """A reviewer's signed decision. Key: run id."""

    approval_id: str = Field(description="The request decided.")
    run_id: str = Field(description="The run.")
    request_digest: str = Field(
        default="", description="The request_digest of the request decided (what was shown)."
    )
    verdict: ApprovalVerdict = Field(description="approve, reject, edit or respond.")
    approver: str = Field(description="Identity of the reviewer: user:<id>.")
    reason: str | None = Field(default=None, description="Why, in the reviewer's words.")
    decided_at: Timestamp = Field(description="When it was decided.")
    key_id: str = Field(default="default", description="Which signing key signed it.")
    signature: str = Field(
        description="v2: or v3: and the HMAC-SHA256 over the fields (v3: and payload), hex."
    )
    payload: str | None = Field(
        default=None,
        description="JSON text, exactly as signed: an edit's new arguments (an object), or "
        "a respond's output. Null for approve and reject.",
    )


class WorkflowDefinition(Event):
    """A deployed workflow version. Key: name@content hash."""

    name: str = Field(description="Workflow name.")
    version: int = Field(ge=1, description="The author's version number.")
    content_hash: str = Field(description="sha256 of the canonical spec: what a run pins.")
    source: str = Field(description="The YAML as deployed.")
    deployed_at: Timestamp = Field(description="When it was deployed.")
    deployed_by: str = Field(default="", description="Who deployed it.")


class ControlCommand(Event):
    """An operator command. Key: run id for run commands, else its scope (``control_key``)."""

    command_id: str = Field(description="Unique id of the command.")
    action: ControlAction = Field(description="What to do.")
    run_id: str | None = Field(default=None, description="The run, for run commands.")
    step: str | None = Field(default=None, description="The step, for redrive.")
    reason: str | None = Field(default=None, description="Why.")
    issued_by: str = Field(default="", description="Who issued it.")
    issued_at: Timestamp = Field(description="When.")
    tenant: Annotated[str, AfterValidator(check_tenant)] | None = Field(
        default=None, description="The tenant, for pause, resume and caps of a tenant."
    )
    workflow: str | None = Field(
        default=None, description="The workflow, for pause and resume of a workflow."
    )
    max_cost_usd: Money | None = Field(
        default=None,
        ge=0,
        description="caps: the tenant's new ceiling over its window; null returns to "
        "the one policies.yaml sets.",
    )

    @model_validator(mode="after")
    def _names_its_scope(self) -> ControlCommand:
        if self.action in (ControlAction.pause, ControlAction.resume):
            if (self.tenant is None) == (self.workflow is None):
                raise ValueError(f"{self.action.value} names a tenant or a workflow (one)")
        elif self.action == ControlAction.caps:
            if self.tenant is None or self.workflow is not None:
                raise ValueError("caps names a tenant (and no workflow)")
        return self

    @property
    def scope(self) -> str | None:
        """The record key of a scope command; ``None`` for a run command (keyed by run id).

        ``tenant/<t>`` or ``workflow/<w>`` for pause and resume, ``caps/<t>`` for caps: a
        ``/`` is in no task id, so a scope never shares its key (and compaction) with a run.

        Compaction keeps the last command per key, so the topic keeps every tenant's and
        workflow's pause state and every tenant's caps for as long as they are in force.
        """
        if self.action == ControlAction.caps:
            return f"caps/{self.tenant}"
        if self.action in (ControlAction.pause, ControlAction.resume):
            return (
                f"tenant/{self.tenant}" if self.tenant is not None else f"workflow/{self.workflow}"
            )
        return None


class TimerFired(Event):
    """A wake-up the coordinator sends itself when a run's deadline is due. Key: run id."""

    run_id: str = Field(description="The run to look at.")
    fired_at: Timestamp = Field(description="When the timer fired.")


class SpendKind(StrEnum):
    """What a spend-ledger entry does."""

    reserve = "reserve"
    settle = "settle"
    #: An operator set the tenant's ceiling to ``amount_usd`` (``baton control caps``).
    cap = "cap"
    #: An operator returned the tenant to the ceiling policies.yaml sets.
    uncap = "uncap"


class SpendRecorded(Event):
    """One entry of a tenant's spend ledger. Key: the tenant.

    Before a model step of a tenant with a ceiling runs, its coordinator ``reserve``s the
    step's estimated cost; every coordinator reads the ledger in order and admits the
    reservation if the tenant's spend in the window, plus it, stays within the ceiling. The
    step's result (or a late one) ``settle``s it to what the call really cost. A ``cap``
    (or ``uncap``) entry changes the tenant's ceiling from its place in the ledger on, for
    every coordinator alike; its ``reservation_id`` is ``caps/<command id>``, its run and
    step are empty.
    """

    tenant: str = Field(min_length=1, description="Who pays.")
    reservation_id: str = Field(description="``<run>/<step>/<attempt>``: one model call.")
    kind: SpendKind = Field(
        description="reserve (an estimate), settle (the actual cost), cap or uncap (ceiling)."
    )
    amount_usd: Money = Field(
        ge=0, description="Estimated (reserve) or actual (settle) cost; cap: the new ceiling."
    )
    run_id: str = Field(description="The run the call belongs to.")
    step: str = Field(description="The step the call belongs to.")
    at: Timestamp = Field(description="When the reservation was made; windows count it then.")


class CachedToolCall(Record):
    """A tool call a model asked for, kept with its answer in the response cache."""

    id: str = Field(description="The call's id.")
    name: str = Field(description="The tool's name, as the model asked for it.")
    arguments: JsonValue = Field(description="The arguments (a JSON object).")
    arguments_error: str | None = Field(
        default=None, description="Why the call cannot be made as asked; null when it can."
    )


class CacheEntry(Event):
    """A model's answer kept by the response cache. Key: the cache key.

    The key is a sha256 over the call (route, provider and model, messages, parameters,
    output schema, tools); a call with the same key is answered with this entry instead of
    the model while the entry is younger than the cache's TTL.
    """

    key: str = Field(min_length=1, description="The cache key (sha256 hex), as the record key.")
    route: str = Field(description="The route the call went to.")
    provider: str = Field(description="The provider that answered.")
    model: str = Field(description="The provider's model id.")
    text: str = Field(description="The answer as the model wrote it.")
    tool_calls: list[CachedToolCall] = Field(
        default_factory=list, description="The tool calls the model asked for, in its order."
    )
    input_tokens: int = Field(ge=0, description="Prompt tokens the original call was billed.")
    output_tokens: int = Field(ge=0, description="Completion tokens it was billed.")
    cost_usd: Money = Field(
        default=Decimal(0), description="What the original call cost: what each hit saves."
    )
    created_at: Timestamp = Field(description="When the model answered; the TTL counts from it.")
    origin: str | None = Field(
        default=None,
        description="The step attempt whose call this is (`<idempotency key>@<attempt>`): "
        "when that same attempt runs again (its result lost with a worker), the hit is its "
        "own answer, charged as the call it was, not a saving.",
    )


class StreamChunk(Event):
    """A piece of a model call's text as it streams, for UIs. Key: run id.

    A preview, never the result: the step's result goes through ``step-results`` as
    always, and a chunk lost or repeated changes nothing a run decides. A UI keeps one text
    per ``(step, turn)``: it appends each chunk's text in ``seq`` order, and starts that
    text over at a chunk with ``restarted`` (a new attempt, or an in-process retry of a
    call that was cut, whose earlier text it replaces).
    """

    run_id: str = Field(description="The run.")
    step: str = Field(description="The step whose model call this is.")
    turn: int = Field(
        default=0, ge=0, description="An agent step's turn (tool-call rounds before it); 0 else."
    )
    attempt: int = Field(ge=1, description="The step attempt.")
    seq: int = Field(ge=0, description="The chunk's place in its attempt, from 0.")
    text: str = Field(description="Text that follows the previous chunk's (may be empty).")
    final: bool = Field(
        default=False, description="The call answered in full: the text is complete."
    )
    restarted: bool = Field(
        default=False,
        description="The text starts over here: drop what earlier chunks of this step and "
        "turn said.",
    )
    supersedes_attempt: int | None = Field(
        default=None,
        description="When restarted: the attempt whose text this replaces (the one before, "
        "or this attempt itself after an in-process retry).",
    )
    at: Timestamp = Field(description="When the chunk was written.")
