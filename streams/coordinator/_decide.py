"""``decide``: the coordinator's pure core.

``decide(state, event, context) -> Decision`` takes a run's state and one event of that run
(a task, a step result, a timer, a control command) and returns the new state and the events
to emit. It does no I/O and reads no clock (``context.now`` is the time), so it is tested
table-driven without Kafka, and it never modifies the state it is given.

It must stay correct when an event arrives twice or late: a second task with a known run id
starts nothing, a result for an attempt that is not the one in flight changes nothing, a timer
with nothing due changes nothing, a cancel of an ended run changes nothing. Each of these
leaves a run event so the audit trail shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import JsonValue

from processors import TemplateRenderError, compile_expression, compile_template, render_value
from streams.coordinator._state import RunState, StepPhase, StepState
from streams.workflow import LlmStep, StepSpec, TransformStep, ValidateStep, Workflow
from topics import (
    Budget,
    ControlAction,
    ControlCommand,
    Event,
    RunEvent,
    RunResult,
    RunStatus,
    StepError,
    StepKind,
    StepOutcome,
    StepRequested,
    StepResult,
    StepStatus,
    StepSummary,
    TaskSubmitted,
    TimerFired,
    Usage,
)

__all__ = ["VALIDATION_FAILED", "Context", "Decision", "Inbound", "add_usage", "decide"]

#: The error class a validate processor reports when the value breaks the schema or a rule.
VALIDATION_FAILED = "ValidationFailed"

Inbound = TaskSubmitted | StepResult | TimerFired | ControlCommand


@dataclass(frozen=True)
class Context:
    """What ``decide`` knows besides the state and the event.

    Attributes:
        now: The current time.
        workflow: The run's workflow version (for a task: the version it asks for, or the
            latest deployed), or ``None`` when it is not deployed.
    """

    now: datetime
    workflow: Workflow | None


@dataclass(frozen=True)
class Decision:
    """What to do about one event.

    Attributes:
        state: The run's new state, or ``None`` when nothing changed.
        emit: Events to publish, in order.
        dead_letter: When set, the input event cannot be processed at all; the reason. The
            shell sends its bytes to the dead-letter topic.
    """

    state: RunState | None = None
    emit: tuple[Event, ...] = ()
    dead_letter: str | None = None


def decide(state: RunState | None, event: Inbound, context: Context) -> Decision:
    """Decide what one event does to one run."""
    if isinstance(event, TaskSubmitted):
        return _on_task(state, event, context)
    if isinstance(event, StepResult):
        return _on_result(state, event, context)
    if isinstance(event, TimerFired):
        return _on_timer(state, context)
    return _on_control(state, event, context)


def add_usage(total: Usage, more: Usage | None) -> Usage:
    """The sum of two usages (the route of the newer one is kept)."""
    if more is None:
        return total
    return Usage(
        input_tokens=total.input_tokens + more.input_tokens,
        output_tokens=total.output_tokens + more.output_tokens,
        cost_usd=total.cost_usd + more.cost_usd,
        route=more.route or total.route,
        provider=more.provider or total.provider,
        model=more.model or total.model,
        cached=more.cached,
        saved_usd=total.saved_usd + more.saved_usd,
    )


# -- events ---------------------------------------------------------------------------------


def _on_task(state: RunState | None, task: TaskSubmitted, context: Context) -> Decision:
    now = context.now
    if state is not None:
        run = _Run(state, context.workflow, now)
        run.note(
            "task_duplicate", detail={"reason": "a run with this id exists; not started again"}
        )
        return run.decision()
    workflow = context.workflow
    if workflow is None:
        wanted = task.workflow + (f"@{task.workflow_version}" if task.workflow_version else "")
        return _reject(task, now, f"workflow {wanted} is not deployed")
    problems = sorted(
        workflow.input_validator.iter_errors(task.input), key=lambda e: list(e.absolute_path)
    )
    if problems:
        reason = "; ".join(f"{_json_path('input', e.absolute_path)}: {e.message}" for e in problems)
        return _reject(task, now, reason, workflow)
    state = RunState(
        run_id=task.task_id,
        workflow=workflow.name,
        workflow_version=workflow.content_hash,
        tenant=task.tenant,
        labels=task.labels,
        input=task.input,
        budget=_tighten(workflow, task.budget),
        steps={name: StepState() for name in workflow.order},
        started_at=now,
    )
    run = _Run(state, workflow, now)
    run.note("run_started", detail={"workflow_version": workflow.content_hash})
    run.advance()
    return run.decision()


def _on_result(state: RunState | None, result: StepResult, context: Context) -> Decision:
    if state is None:
        return Decision(dead_letter=f"step result for unknown run {result.run_id!r}")
    if result.step not in state.steps:
        return Decision(dead_letter=f"step result for unknown step {result.step!r}")
    run = _Run(state, context.workflow, context.now)
    step = state.steps[result.step]
    if state.finished:
        run.note("result_ignored", result.step, result.attempt, {"reason": "the run has ended"})
        return run.decision()
    if step.phase != StepPhase.dispatched or step.attempt != result.attempt:
        reason = (
            "a result for this attempt was already settled"
            if result.attempt == step.attempt
            else f"attempt {result.attempt} is not the one in flight ({step.attempt})"
        )
        run.note("result_ignored", result.step, result.attempt, {"reason": reason})
        return run.decision()
    if run.workflow is None:
        return Decision(dead_letter=f"workflow version {state.workflow_version} is not deployed")
    if result.status == StepStatus.ok:
        run.succeed(result)
    else:
        run.fail(result)
    run.advance()
    return run.decision()


def _on_timer(state: RunState | None, context: Context) -> Decision:
    if state is None or state.finished or context.workflow is None:
        return Decision()
    run = _Run(state, context.workflow, context.now)
    run.check_deadlines()
    return run.decision()


def _on_control(state: RunState | None, command: ControlCommand, context: Context) -> Decision:
    now = context.now
    reason = command.reason or f"cancelled by {command.issued_by or 'an operator'}"
    assert command.action == ControlAction.cancel  # the only action so far
    if state is None:
        # Cancelled before its task arrived: remember it, so the task never starts.
        state = RunState(run_id=command.run_id or "", workflow="", started_at=now)
        run = _Run(state, None, now)
        run.finish(RunStatus.cancelled, reason)
        return run.decision()
    run = _Run(state, context.workflow, now)
    if state.finished:
        run.note("control_ignored", detail={"reason": "the run has ended", "action": "cancel"})
    else:
        run.finish(RunStatus.cancelled, reason)
    return run.decision()


def _reject(
    task: TaskSubmitted, now: datetime, reason: str, workflow: Workflow | None = None
) -> Decision:
    state = RunState(
        run_id=task.task_id,
        workflow=task.workflow,
        workflow_version=workflow.content_hash if workflow else "",
        tenant=task.tenant,
        labels=task.labels,
        input=task.input,
        started_at=now,
    )
    run = _Run(state, workflow, now)
    run.finish(RunStatus.rejected, reason)
    return run.decision()


def _tighten(workflow: Workflow, asked: Budget | None) -> Budget:
    """The workflow's budget, tightened (never loosened) by the task's."""
    spec = workflow.spec.budget
    base = Budget(
        max_steps=spec.max_steps,
        max_tokens=spec.max_tokens,
        max_cost_usd=spec.max_cost_usd,
        max_seconds=spec.deadline,
    )
    if asked is None:
        return base

    def tighter(a: Any, b: Any) -> Any:
        return b if a is None else a if b is None else min(a, b)

    return Budget(
        max_steps=tighter(base.max_steps, asked.max_steps),
        max_tokens=tighter(base.max_tokens, asked.max_tokens),
        max_cost_usd=tighter(base.max_cost_usd, asked.max_cost_usd),
        max_seconds=tighter(base.max_seconds, asked.max_seconds),
    )


def _json_path(root: str, path: Any) -> str:
    text = root
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


_OUTCOMES = {
    StepPhase.succeeded: StepOutcome.succeeded,
    StepPhase.failed: StepOutcome.failed,
    StepPhase.skipped: StepOutcome.skipped,
}


# -- the working copy of one run ------------------------------------------------------------


@dataclass
class _Run:
    """A run being changed by one event: a copy-on-write view over the old state."""

    old: RunState
    workflow: Workflow | None
    now: datetime
    steps: dict[str, StepState] = field(init=False)
    changes: dict[str, Any] = field(init=False, default_factory=dict)
    emit: list[Event] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.steps = dict(self.old.steps)

    # state access

    def get(self, name: str) -> Any:
        return self.changes[name] if name in self.changes else getattr(self.old, name)

    def set(self, **changes: Any) -> None:
        self.changes.update(changes)

    def set_step(self, name: str, **changes: Any) -> None:
        self.steps[name] = self.steps[name].model_copy(update=changes)
        self.changes["steps"] = self.steps

    @property
    def wf(self) -> Workflow:
        assert self.workflow is not None, "a running run always has its workflow"
        return self.workflow

    def decision(self) -> Decision:
        if not self.changes and not self.emit:
            return Decision()
        return Decision(state=self.old.model_copy(update=self.changes), emit=tuple(self.emit))

    # run events

    def note(
        self,
        type_: str,
        step: str | None = None,
        attempt: int | None = None,
        detail: JsonValue = None,
        *,
        duration_ms: float | None = None,
        usage: Usage | None = None,
    ) -> None:
        seq = self.get("seq")
        total: Usage = self.get("usage")
        self.emit.append(
            RunEvent(
                run_id=self.old.run_id,
                seq=seq,
                type=type_,
                at=self.now,
                workflow=self.old.workflow,
                tenant=self.old.tenant,
                step=step,
                attempt=attempt,
                duration_ms=duration_ms,
                usage=usage,
                total_cost_usd=total.cost_usd,
                total_tokens=total.input_tokens + total.output_tokens,
                detail=detail,
            )
        )
        self.set(seq=seq + 1)

    # the template context

    def context(self, upstream_of: str | None = None) -> dict[str, Any]:
        names = self.wf.upstream[upstream_of] if upstream_of else self.steps.keys()
        return {
            "input": self.old.input,
            "steps": {
                name: {"output": self.steps[name].output, "status": self.steps[name].phase.value}
                for name in names
            },
            "run": {
                "id": self.old.run_id,
                "tenant": self.old.tenant,
                "workflow": self.old.workflow,
                "labels": self.old.labels,
            },
        }

    # moving forward

    def advance(self) -> None:
        """Skip or dispatch every step that is ready; complete the run when all are done."""
        progressed = True
        while progressed and self.get("status") is None:
            progressed = False
            for name in self.wf.order:
                if self.get("status") is not None:
                    return
                if self.steps[name].phase != StepPhase.pending:
                    continue
                spec = self.wf.step(name)
                if not all(self.steps[dep].phase.done for dep in spec.after):
                    continue
                runs = self._condition(name, spec)
                if runs is None:
                    return
                if runs:
                    self.dispatch(name)
                else:
                    self.set_step(name, phase=StepPhase.skipped)
                    self.note("step_skipped", name, detail={"when": _when_text(spec)})
                    progressed = True
        if self.get("status") is None and all(s.phase.done for s in self.steps.values()):
            self._complete()

    def _condition(self, name: str, spec: StepSpec) -> bool | None:
        """Whether the step runs; ``None`` when the condition failed (the run has failed)."""
        if spec.when is None or isinstance(spec.when, bool):
            return spec.when is not False
        try:
            return compile_expression(spec.when).holds(self.context(name))
        except TemplateRenderError as exc:
            self._fail_step(name, "TemplateRenderError", f"steps.{name}.when: {exc}")
            return None

    def dispatch(self, name: str) -> None:
        """Send the next attempt of a step."""
        budget: Budget = self.old.budget
        dispatches: int = self.get("dispatches")
        if budget.max_steps is not None and dispatches >= budget.max_steps:
            self.finish(
                RunStatus.budget_exceeded,
                f"max_steps: {budget.max_steps} step attempts used; {name} not started",
            )
            return
        spec = self.wf.step(name)
        step = self.steps[name]
        try:
            params, step_context, route = self._params(name, spec, step)
        except TemplateRenderError as exc:
            self._fail_step(name, "TemplateRenderError", f"steps.{name}: {exc}")
            return
        attempt = step.attempt + 1
        deadline = self.now + timedelta(seconds=self.wf.timeout(name))
        idempotency_key = f"{self.old.run_id}/{name}"
        if step.reruns:
            idempotency_key += f"/rerun-{step.reruns}"
        self.emit.append(
            StepRequested(
                run_id=self.old.run_id,
                step=name,
                kind=StepKind(spec.kind),
                attempt=attempt,
                idempotency_key=idempotency_key,
                workflow=self.old.workflow,
                workflow_version=self.old.workflow_version,
                tenant=self.old.tenant,
                params=params,
                context=step_context,
                dispatched_at=self.now,
                deadline_at=deadline,
            )
        )
        self.set_step(
            name,
            phase=StepPhase.dispatched,
            attempt=attempt,
            tries=step.tries + 1,
            dispatched_at=self.now,
            deadline_at=deadline,
            route=route,
        )
        self.set(dispatches=dispatches + 1)
        detail: dict[str, JsonValue] = {"kind": spec.kind}
        if route is not None:
            detail["route"] = route
        self.note("step_dispatched", name, attempt, detail)

    def _params(
        self, name: str, spec: StepSpec, step: StepState
    ) -> tuple[JsonValue, JsonValue, str | None]:
        if isinstance(spec, LlmStep):
            context = self.context(name)
            route = compile_template(spec.model).render(context)
            if not isinstance(route, str) or not route:
                raise TemplateRenderError(f"model: yields {route!r}, not a route name")
            messages: list[JsonValue] = []
            if spec.messages is not None:
                for message in spec.messages:
                    content = compile_template(message.content).render(context)
                    messages.append({"role": message.role, "content": _text(content)})
            else:
                if spec.system is not None:
                    system = compile_template(spec.system).render(context)
                    messages.append({"role": "system", "content": _text(system)})
                prompt = compile_template(spec.prompt or "").render(context)
                messages.append({"role": "user", "content": _text(prompt)})
            if step.feedback:
                if step.output is not None:
                    messages.append({"role": "assistant", "content": _text(step.output)})
                problems = "\n".join(f"- {item}" for item in step.feedback[-1].split("; "))
                messages.append(
                    {
                        "role": "user",
                        "content": "Your previous answer did not pass validation:\n"
                        f"{problems}\nAnswer again, fixing these problems.",
                    }
                )
            params: dict[str, JsonValue] = {
                "route": route,
                "messages": messages,
                "temperature": spec.temperature,
                "max_tokens": spec.max_tokens,
                "output_schema": spec.output_schema,
            }
            return params, None, route
        if isinstance(spec, TransformStep):
            return {"output": spec.output}, self.context(name), None
        assert isinstance(spec, ValidateStep)
        validate: dict[str, JsonValue] = {
            "value": spec.value,
            "schema": spec.schema_,
            "rules": [{"check": r.check, "message": r.message} for r in spec.rules],
        }
        return validate, self.context(name), None

    def succeed(self, result: StepResult) -> None:
        step = self.steps[result.step]
        duration_ms = (result.finished_at - result.started_at).total_seconds() * 1000
        self.set(usage=add_usage(self.get("usage"), result.usage))
        self.set_step(
            result.step,
            phase=StepPhase.succeeded,
            output=result.output,
            error=None,
            deadline_at=None,
            usage=add_usage(step.usage, result.usage),
            duration_ms=duration_ms,
        )
        self.note(
            "step_succeeded",
            result.step,
            result.attempt,
            duration_ms=duration_ms,
            usage=result.usage,
        )

    def fail(self, result: StepResult) -> None:
        name = result.step
        step = self.steps[name]
        spec = self.wf.step(name)
        error = result.error or StepError(
            error_class="UnknownError", message="failed without an error", retryable=False
        )
        duration_ms = (result.finished_at - result.started_at).total_seconds() * 1000
        self.set(usage=add_usage(self.get("usage"), result.usage))
        self.set_step(
            name,
            error=error,
            deadline_at=None,
            usage=add_usage(step.usage, result.usage),
            duration_ms=duration_ms,
        )
        detail: dict[str, JsonValue] = {"error_class": error.error_class, "message": error.message}
        self.note(
            "step_failed", name, result.attempt, detail, duration_ms=duration_ms, usage=result.usage
        )
        if (
            isinstance(spec, ValidateStep)
            and error.error_class == VALIDATION_FAILED
            and spec.on_fail is not None
            and self.steps[spec.on_fail.retry_step].reruns < spec.on_fail.max
        ):
            self._rerun(spec.on_fail.retry_step, name, error.message)
        elif error.retryable and step.tries < spec.retry.attempts:
            self.dispatch(name)
        else:
            self._fail_step(name, error.error_class, error.message, attempts=step.tries)

    def _rerun(self, target: str, validator: str, message: str) -> None:
        """Send ``target`` back with the validation errors, and everything after it."""
        old_target = self.steps[target]
        for name in {target} | self.wf.downstream(target):
            old = self.steps[name]
            self.steps[name] = StepState(
                attempt=old.attempt,
                reruns=old.reruns,
                usage=old.usage,
                output=old.output if name == target else None,
            )
        self.set_step(
            target,
            reruns=old_target.reruns + 1,
            feedback=[*old_target.feedback, message],
        )
        self.note(
            "validation_rerun",
            target,
            detail={"validator": validator, "errors": message, "rerun": old_target.reruns + 1},
        )

    def _fail_step(
        self, name: str, error_class: str, message: str, *, attempts: int | None = None
    ) -> None:
        known = self.steps[name].error
        if known is None or known.error_class != error_class:
            self.set_step(
                name, error=StepError(error_class=error_class, message=message, retryable=False)
            )
        self.set_step(name, phase=StepPhase.failed, deadline_at=None)
        tried = f" after {attempts} attempts" if attempts and attempts > 1 else ""
        self.finish(RunStatus.failed, f"step {name} failed{tried}: {error_class}: {message}")

    def check_deadlines(self) -> None:
        budget: Budget = self.old.budget
        if budget.max_seconds is not None:
            if self.now >= self.old.started_at + timedelta(seconds=budget.max_seconds):
                self.finish(
                    RunStatus.budget_exceeded,
                    f"deadline: the run took over {budget.max_seconds:g}s",
                )
                return
        for name in self.wf.order:
            step = self.steps[name]
            if self.get("status") is not None:
                return
            if step.phase != StepPhase.dispatched or step.deadline_at is None:
                continue
            if step.deadline_at > self.now:
                continue
            timeout = self.wf.timeout(name)
            self.note(
                "step_timed_out", name, step.attempt, {"timeout_s": timeout, "tries": step.tries}
            )
            if step.tries < self.wf.step(name).retry.attempts:
                self.dispatch(name)
            else:
                self.set_step(
                    name,
                    error=StepError(
                        error_class="StepTimeout",
                        message=f"no result within {timeout:g}s",
                        retryable=True,
                    ),
                )
                self._fail_step(
                    name, "StepTimeout", f"no result within {timeout:g}s", attempts=step.tries
                )

    def _complete(self) -> None:
        spec_output = self.wf.spec.output
        context = self.context()
        try:
            if spec_output is None:
                sinks = self.wf.sinks
                output: JsonValue = (
                    context["steps"][sinks[0]]["output"]
                    if len(sinks) == 1
                    else {name: context["steps"][name]["output"] for name in sinks}
                )
            else:
                output = render_value(spec_output, context)
        except TemplateRenderError as exc:
            self.finish(RunStatus.failed, f"output: {exc}")
            return
        self.finish(RunStatus.completed, output=output)

    def finish(
        self, status: RunStatus, reason: str | None = None, *, output: JsonValue = None
    ) -> None:
        self.set(status=status, reason=reason, output=output, finished_at=self.now)
        self.note(f"run_{status.value}", detail={"reason": reason} if reason else None)
        ended = status != RunStatus.completed
        summaries = []
        if self.workflow is not None:
            for name in self.wf.order:
                step = self.steps.get(name)
                if step is None:  # rejected before the run had steps
                    continue
                outcome = _OUTCOMES.get(step.phase)
                if outcome is None:
                    outcome = StepOutcome.cancelled if ended else StepOutcome.pending
                summaries.append(
                    StepSummary(
                        step=name,
                        kind=self.wf.step(name).kind,
                        outcome=outcome,
                        attempts=step.attempt,
                        duration_ms=step.duration_ms,
                        usage=step.usage,
                    )
                )
        total: Usage = self.get("usage")
        self.emit.append(
            RunResult(
                run_id=self.old.run_id,
                workflow=self.old.workflow,
                workflow_version=self.old.workflow_version,
                tenant=self.old.tenant,
                status=status,
                output=output,
                reason=reason,
                steps=summaries,
                usage=Usage(
                    input_tokens=total.input_tokens,
                    output_tokens=total.output_tokens,
                    cost_usd=total.cost_usd,
                    saved_usd=total.saved_usd,
                ),
                labels=self.old.labels,
                started_at=self.old.started_at,
                finished_at=self.now,
            )
        )


def _text(value: JsonValue) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _when_text(spec: StepSpec) -> str:
    return str(spec.when).lower() if isinstance(spec.when, bool) else str(spec.when)
