"""``decide``: the coordinator's pure core.

``decide(state, event, context) -> Decision`` takes a run's state and one event of that run
(a task, a step result, a timer, a control command) and returns the new state and the events
to emit. It does no I/O and reads no clock (``context.now`` is the time), so it is tested
table-driven without Kafka, and it never modifies the state it is given.

It must stay correct when an event arrives twice or late: a second task with a known run id
starts nothing, a result for an attempt that is not the one in flight changes nothing, a timer
with nothing due changes nothing, a cancel of an ended run changes nothing. Each of these
leaves a run event so the audit trail shows it.

The policies live beside it: ``_transition`` (sequencing, dispatch, results), ``_failures``
(retries, fallbacks, dead letters, redrive), ``_params`` (what a request carries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from processors import ModelCatalog, ToolRegistry
from streams._access import Access
from streams._policies import Policies
from streams.coordinator._agents import call_finished, on_turn
from streams.coordinator._approvals import on_decision
from streams.coordinator._budgets import MODEL_KINDS, budget_for, settle
from streams.coordinator._control import ControlBook
from streams.coordinator._failures import after_failure, check_deadlines, redrive
from streams.coordinator._flow import advance
from streams.coordinator._ledger import SpendLedger
from streams.coordinator._state import RunState, RunTrace, StepPhase, StepState
from streams.coordinator._transition import Transition, add_usage
from streams.workflow import Workflow
from topics import (
    DEFAULT_RETRY_TIERS,
    ApprovalDecision,
    Codec,
    ControlAction,
    ControlCommand,
    RetryTier,
    RunStatus,
    StepError,
    StepResult,
    StepStatus,
    TaskSubmitted,
    TimerFired,
    TopicCatalog,
    task_digest,
)

__all__ = ["Context", "Decision", "Inbound", "decide", "too_large"]

_PENDING = StepState()

Inbound = TaskSubmitted | StepResult | TimerFired | ControlCommand | ApprovalDecision


@dataclass(frozen=True)
class Context:
    """What ``decide`` knows besides the state and the event.

    Attributes:
        now: The current time.
        workflow: The run's workflow version (for a task: the version it asks for, or the
            latest deployed), or ``None`` when it is not deployed.
        tiers: The delayed-retry tiers, shortest first.
        catalog: The topics (named in dead letters; its custom kinds are those a step may
            be dispatched to); ``None`` leaves dead letters out and checks no kind.
        codec: Encodes the request a dead letter keeps, and the run events (whose bytes the
            audit chain hashes, ``Transition.note``); ``None`` leaves dead letters and the
            audit chain out.
        policies: The organisation's policies (approval gates, ...).
        access: Reviewers' groups and the keys decisions are signed with.
        models: The model catalog (prices, output caps) budget estimates use; ``None``
            estimates tokens only.
        ledger: The tenants' spend ledger (verdicts on reservations); ``None`` when no
            tenant has a ceiling.
        tools: The tool registry (it describes an agent's tools to its model); ``None``
            when the coordinator has no ``tools.yaml``.
        trace: The trace a run this event starts is traced in; ``None`` with tracing off.
        control: The operators' pauses in force; ``None`` holds nothing.
    """

    now: datetime
    workflow: Workflow | None
    tiers: tuple[RetryTier, ...] = DEFAULT_RETRY_TIERS
    catalog: TopicCatalog | None = None
    codec: Codec | None = None
    policies: Policies = field(default_factory=Policies)
    access: Access = field(default_factory=Access)
    models: ModelCatalog | None = None
    ledger: SpendLedger | None = None
    tools: ToolRegistry | None = None
    trace: RunTrace | None = None
    control: ControlBook | None = None


@dataclass(frozen=True)
class Decision:
    """What to do about one event.

    Attributes:
        state: The run's new state, or ``None`` when nothing changed.
        emit: Events to publish, in order.
        dead_letter: When set, the input event cannot be processed at all; the reason. The
            shell sends its bytes to the dead-letter topic.
        bodies: The Avro bodies of the ``RunEvent``s of ``emit``, in order, as chained
            (empty when the context has no codec).
    """

    state: RunState | None = None
    emit: tuple[Any, ...] = ()
    dead_letter: str | None = None
    bodies: tuple[bytes, ...] = ()


def decide(state: RunState | None, event: Inbound, context: Context) -> Decision:
    """Decide what one event does to one run."""
    if isinstance(event, TaskSubmitted):
        return _on_task(state, event, context)
    if isinstance(event, StepResult):
        return _on_result(state, event, context)
    if isinstance(event, TimerFired):
        return _on_timer(state, context)
    if isinstance(event, ApprovalDecision):
        return _on_decision(state, event, context)
    return _on_control(state, event, context)


def _on_decision(state: RunState | None, decision: ApprovalDecision, context: Context) -> Decision:
    if state is None:
        return Decision(dead_letter=f"approval decision for unknown run {decision.run_id!r}")
    t = Transition(state, context.workflow, context)
    on_decision(t, decision)
    if t.running and t.workflow is not None:
        advance(t)
    return t.decision()


def _on_task(state: RunState | None, task: TaskSubmitted, context: Context) -> Decision:
    if state is not None:
        t = Transition(state, context.workflow, context)
        t.note("task_duplicate", detail={"reason": "a run with this id exists; not started again"})
        return t.decision()
    workflow = context.workflow
    if not context.policies.may_run(task.tenant, task.workflow):
        return _reject(
            task, context, f"tenant {task.tenant!r} may not run workflow {task.workflow!r}"
        )
    if workflow is None:
        wanted = task.workflow + (f"@{task.workflow_version}" if task.workflow_version else "")
        return _reject(task, context, f"workflow {wanted} is not deployed")
    problems = sorted(
        workflow.input_validator.iter_errors(task.input), key=lambda e: list(e.absolute_path)
    )
    if problems:
        reason = "; ".join(f"{_json_path('input', e.absolute_path)}: {e.message}" for e in problems)
        return _reject(task, context, reason, workflow)
    # Every value comes validated (the task, the workflow, the budget): the run's first
    # state is built without walking its input again.
    state = RunState.model_construct(
        run_id=task.task_id,
        workflow=workflow.name,
        workflow_version=workflow.content_hash,
        tenant=task.tenant,
        labels=task.labels,
        input=task.input,
        budget=budget_for(workflow, task.budget, context.policies),
        # StepState is frozen: every pending step can share one.
        steps=dict.fromkeys(workflow.order, _PENDING),
        started_at=context.now,
        audit_head=task_digest(task),
    )
    if context.trace is not None:
        state = state.model_copy(update={"trace": context.trace})
    t = Transition(state, workflow, context)
    t.note("run_started", detail={"workflow_version": workflow.content_hash})
    advance(t)
    return t.decision()


def _on_result(state: RunState | None, result: StepResult, context: Context) -> Decision:
    if state is None:
        return Decision(dead_letter=f"step result for unknown run {result.run_id!r}")
    if state.finished:
        # A finished run may be kept as a summary, without its steps.
        return _late(state, result, context, "the run has ended")
    if result.step not in state.steps:
        return Decision(dead_letter=f"step result for unknown step {result.step!r}")
    step = state.steps[result.step]
    if _settled(step, result):
        return _late(state, result, context, "a result for this attempt was already settled")
    if step.attempt != result.attempt:
        reason = f"attempt {result.attempt} is not the one in flight ({step.attempt})"
        return _late(state, result, context, reason)
    t = Transition(state, context.workflow, context)
    if t.workflow is None:
        return Decision(dead_letter=f"workflow version {state.workflow_version} is not deployed")
    kind = t.spec(result.step).kind
    if kind in MODEL_KINDS:
        settle(t, result.step, result.attempt, result.usage)
        t.set_step(result.step, estimate=None, reservation=None)
    duration_ms = (result.finished_at - result.started_at).total_seconds() * 1000
    if result.status == StepStatus.ok and kind == "agent":
        on_turn(t, result.step, result.attempt, result.output, result.usage, duration_ms)
    elif result.status == StepStatus.ok:
        t.succeed(result.step, result.attempt, result.output, result.usage, duration_ms)
        if step.call is not None:
            call_finished(t, result.step)
    else:
        error = result.error or StepError(
            error_class="UnknownError", message="failed without an error", retryable=False
        )
        t.set(usage=add_usage(t.get("usage"), result.usage))
        t.set_step(result.step, usage=add_usage(step.usage, result.usage), duration_ms=duration_ms)
        t.note(
            "step_failed",
            result.step,
            result.attempt,
            {"error_class": error.error_class, "message": error.message},
            duration_ms=duration_ms,
            usage=result.usage,
        )
        after_failure(t, result.step, error)
    if t.running:
        advance(t)
    return t.decision()


def _settled(step: StepState | None, result: StepResult) -> bool:
    """Whether ``result``'s attempt was already settled: this is a repeat of its result."""
    return (
        step is not None
        and step.attempt == result.attempt
        and (step.phase != StepPhase.dispatched or bool(step.waiting_on))
    )


def _late(state: RunState, result: StepResult, context: Context, reason: str) -> Decision:
    """A result too late to use (or a second one): recorded, and its money accounted for.

    Money a result reports is charged, with one exception: a cached answer for an attempt
    already settled. That is the attempt's own call, run again after its worker cached the
    answer and died before its offsets were committed (at-least-once); the call was charged
    when the first result settled.
    """
    t = Transition(state, context.workflow, context)
    usage = result.usage
    step = state.steps.get(result.step)
    paid = usage is not None and bool(usage.cost_usd or usage.input_tokens)
    if usage is not None and paid and not (usage.cached and _settled(step, result)):
        t.set(usage=add_usage(t.get("usage"), usage))
        if step is not None:
            t.set_step(result.step, usage=add_usage(step.usage, usage))
        if t.workflow is not None and _is_model_step(t, result.step):
            settle(t, result.step, result.attempt, usage)
    t.note("result_ignored", result.step, result.attempt, {"reason": reason}, usage=usage)
    return t.decision()


def _is_model_step(t: Transition, name: str) -> bool:
    if name in t.steps:
        return t.spec(name).kind in MODEL_KINDS
    return name in t.wf.order and t.wf.step(name).kind in MODEL_KINDS


def _on_timer(state: RunState | None, context: Context) -> Decision:
    if state is None or state.finished or context.workflow is None:
        return Decision()
    t = Transition(state, context.workflow, context)
    check_deadlines(t)
    if t.running:
        advance(t)
    return t.decision()


def _on_control(state: RunState | None, command: ControlCommand, context: Context) -> Decision:
    if command.action == ControlAction.redrive:
        return _on_redrive(state, command, context)
    reason = command.reason or f"cancelled by {command.issued_by or 'an operator'}"
    if state is None:
        # Cancelled before its task arrived: remember it, so the task never starts.
        state = RunState(run_id=command.run_id or "", workflow="", started_at=context.now)
        t = Transition(state, None, context)
        t.finish(RunStatus.cancelled, reason)
        return t.decision()
    t = Transition(state, context.workflow, context)
    if state.finished:
        t.note("control_ignored", detail={"reason": "the run has ended", "action": "cancel"})
    else:
        t.finish(RunStatus.cancelled, reason)
    return t.decision()


def _on_redrive(state: RunState | None, command: ControlCommand, context: Context) -> Decision:
    if state is None:
        return Decision(dead_letter=f"redrive of unknown run {command.run_id!r}")
    t = Transition(state, context.workflow, context)
    reason = command.reason or f"redriven by {command.issued_by or 'an operator'}"
    if context.workflow is None or command.step is None or not redrive(t, command.step, reason):
        t.note(
            "control_ignored",
            command.step,
            detail={
                "action": "redrive",
                "reason": f"the run is {state.status.value if state.status else 'running'}"
                + (f" and {command.step} has not failed" if command.step else ""),
            },
        )
    return t.decision()


def too_large(state: RunState | None, event: Inbound, context: Context, limit: int) -> Decision:
    """What to do when an event's outcome would write a record over ``limit`` bytes.

    The run ends ``failed`` from the state before the event, saying why; a task whose run
    would not even start within the limit is ``rejected`` (its input is not kept). Either
    way the result carries no output, so it is small. A finished run stays as it was.
    """
    what = f"a record of the run would pass the size limit ({limit} bytes)"
    if state is None:
        if not isinstance(event, TaskSubmitted):
            return Decision(dead_letter=f"{type(event).__name__}: {what}")
        task = event.model_copy(update={"input": None})
        return _reject(task, context, f"the task is too large: {what}", digest=task_digest(event))
    if state.finished:
        return Decision()
    t = Transition(state, context.workflow, context)
    t.note("run_too_large", detail={"limit_bytes": limit, "event": type(event).__name__})
    t.finish(RunStatus.failed, f"{type(event).__name__} not applied: {what}")
    return t.decision()


def _reject(
    task: TaskSubmitted,
    context: Context,
    reason: str,
    workflow: Workflow | None = None,
    *,
    digest: str | None = None,
) -> Decision:
    """A run that ends before it starts (``digest``: of the task as received, if not this)."""
    state = RunState(
        run_id=task.task_id,
        workflow=task.workflow,
        workflow_version=workflow.content_hash if workflow else "",
        tenant=task.tenant,
        labels=task.labels,
        input=task.input,
        started_at=context.now,
        audit_head=digest or task_digest(task),
    )
    if context.trace is not None:
        state = state.model_copy(update={"trace": context.trace})
    t = Transition(state, workflow, context)
    t.finish(RunStatus.rejected, reason)
    return t.decision()


def _json_path(root: str, path: Any) -> str:
    text = root
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
