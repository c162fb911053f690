"""Run state: what the coordinator remembers about one run, stored in the ``runs`` table.

Stored as JSON (pydantic), one record per run, keyed by run id. New fields get defaults, so a
worker of a newer release reads state written by an older one.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from topics import AttemptRecord, Budget, RunStatus, StepError, Timestamp, Usage

__all__ = ["RunState", "StepPhase", "StepState"]


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
        dispatches: Step attempts dispatched so far (for ``max_steps``).
        usage: Tokens and money of the whole run.
        output: The run's output, once completed.
        started_at: When the run started.
        finished_at: When it ended.
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
    dispatches: int = 0
    usage: Usage = Field(default_factory=Usage)
    output: JsonValue = None
    started_at: Timestamp
    finished_at: Timestamp | None = None

    @property
    def finished(self) -> bool:
        """Whether the run has ended."""
        return self.status is not None

    def next_wake(self) -> datetime | None:
        """The earliest time something is due: a step deadline or the run's wall-time cap."""
        if self.finished:
            return None
        due = [s.deadline_at for s in self.steps.values() if s.phase == StepPhase.dispatched]
        if self.budget.max_seconds is not None:
            due.append(self.started_at + timedelta(seconds=self.budget.max_seconds))
        present = [d for d in due if d is not None]
        return min(present) if present else None

    def to_bytes(self) -> bytes:
        """The stored form."""
        return self.model_dump_json(exclude_defaults=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> RunState:
        """Read the stored form."""
        return cls.model_validate_json(data)
