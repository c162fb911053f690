"""A run being changed by one event: a copy-on-write view over its state.

``decide`` creates one ``Transition`` per event; the policy modules (``_failures``, ...)
move it forward; ``decision()`` turns it into the new state and the events to emit. The
state it was made from is never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import JsonValue

from processors import TemplateRenderError, compile_expression, render_value
from streams.coordinator._params import request_params
from streams.coordinator._state import RunState, StepPhase, StepState
from streams.workflow import StepSpec, Workflow
from topics import (
    Budget,
    Event,
    RetryTier,
    RunEvent,
    RunResult,
    RunStatus,
    StepError,
    StepKind,
    StepOutcome,
    StepRequested,
    StepSummary,
    Usage,
)

if TYPE_CHECKING:
    from streams.coordinator._decide import Context, Decision

__all__ = ["Transition", "add_usage"]

_OUTCOMES = {
    StepPhase.succeeded: StepOutcome.succeeded,
    StepPhase.failed: StepOutcome.failed,
    StepPhase.skipped: StepOutcome.skipped,
}


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


@dataclass
class Transition:
    """One run, changed by one event."""

    old: RunState
    workflow: Workflow | None
    context: Context
    steps: dict[str, StepState] = field(init=False)
    changes: dict[str, Any] = field(init=False, default_factory=dict)
    emit: list[Event] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.steps = dict(self.old.steps)

    @property
    def now(self) -> datetime:
        """The time of the event."""
        return self.context.now

    # -- state access ------------------------------------------------------------------------

    def get(self, name: str) -> Any:
        """A run field as changed so far."""
        return self.changes[name] if name in self.changes else getattr(self.old, name)

    def set(self, **changes: Any) -> None:
        """Change run fields."""
        self.changes.update(changes)

    def set_step(self, name: str, **changes: Any) -> None:
        """Change fields of one step."""
        self.steps[name] = self.steps[name].model_copy(update=changes)
        self.changes["steps"] = self.steps

    def replace_step(self, name: str, state: StepState) -> None:
        """Replace one step's state."""
        self.steps[name] = state
        self.changes["steps"] = self.steps

    @property
    def wf(self) -> Workflow:
        """The run's workflow (every run that has steps has one)."""
        assert self.workflow is not None, "a running run always has its workflow"
        return self.workflow

    @property
    def running(self) -> bool:
        """Whether the run has not ended (so far in this transition)."""
        return self.get("status") is None

    def decision(self) -> Decision:
        """The new state and the events, or nothing when nothing changed."""
        from streams.coordinator._decide import Decision

        if not self.changes and not self.emit:
            return Decision()
        return Decision(state=self.old.model_copy(update=self.changes), emit=tuple(self.emit))

    # -- run events ------------------------------------------------------------------------

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
        """Record a run event."""
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

    # -- the template context ----------------------------------------------------------------

    def template_context(self, upstream_of: str | None = None) -> dict[str, Any]:
        """What templates see: input, steps (all, or those before a step), run."""
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

    # -- moving forward --------------------------------------------------------------------

    def advance(self) -> None:
        """Skip or dispatch every step that is ready; complete the run when all are done."""
        progressed = True
        while progressed and self.running:
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
        if self.running and all(s.phase.done for s in self.steps.values()):
            self._complete()

    def _condition(self, name: str, spec: StepSpec) -> bool | None:
        """Whether the step runs; ``None`` when the condition failed (the run has failed)."""
        if spec.when is None or isinstance(spec.when, bool):
            return spec.when is not False
        try:
            return compile_expression(spec.when).holds(self.template_context(name))
        except TemplateRenderError as exc:
            self.fail_step(name, "TemplateRenderError", f"steps.{name}.when: {exc}")
            return None

    def request(
        self,
        name: str,
        attempt: int,
        *,
        not_before: datetime | None = None,
        tier: RetryTier | None = None,
    ) -> StepRequested:
        """The request for one attempt of a step, as dispatched (templates rendered).

        Raises:
            TemplateRenderError: A template of the step does not render.
        """
        spec = self.wf.step(name)
        step = self.steps[name]
        params, step_context = request_params(spec, step, self.template_context(name))
        start = not_before or self.now
        key = f"{self.old.run_id}/{name}" + (f"/rerun-{step.reruns}" if step.reruns else "")
        return StepRequested(
            run_id=self.old.run_id,
            step=name,
            kind=StepKind(spec.kind),
            attempt=attempt,
            idempotency_key=key,
            workflow=self.old.workflow,
            workflow_version=self.old.workflow_version,
            tenant=self.old.tenant,
            params=params,
            context=step_context,
            dispatched_at=self.now,
            deadline_at=start + timedelta(seconds=self.wf.timeout(name)),
            not_before=not_before,
            retry_tier=tier.name if tier else None,
        )

    def dispatch(self, name: str, wait: tuple[RetryTier, float] | None = None) -> None:
        """Send the next attempt of a step, now or after waiting in a retry tier."""
        budget: Budget = self.old.budget
        dispatches: int = self.get("dispatches")
        if budget.max_steps is not None and dispatches >= budget.max_steps:
            self.finish(
                RunStatus.budget_exceeded,
                f"max_steps: {budget.max_steps} step attempts used; {name} not started",
            )
            return
        step = self.steps[name]
        if not step.routes:
            try:
                self.set_step(name, routes=self._routes(name))
            except TemplateRenderError as exc:
                self.fail_step(name, "TemplateRenderError", f"steps.{name}: {exc}")
                return
            step = self.steps[name]
        tier, seconds = wait if wait is not None else (None, 0.0)
        not_before = self.now + timedelta(seconds=seconds) if tier is not None else None
        attempt = step.attempt + 1
        try:
            request = self.request(name, attempt, not_before=not_before, tier=tier)
        except TemplateRenderError as exc:
            self.fail_step(name, "TemplateRenderError", f"steps.{name}: {exc}")
            return
        self.emit.append(request)
        self.set_step(
            name,
            phase=StepPhase.dispatched,
            attempt=attempt,
            tries=step.tries + 1,
            dispatched_at=self.now,
            deadline_at=request.deadline_at,
            route=step.current_route,
        )
        self.set(dispatches=dispatches + 1)
        detail: dict[str, JsonValue] = {"kind": self.wf.step(name).kind}
        if step.current_route is not None:
            detail["route"] = step.current_route
        if tier is not None:
            detail["retry_tier"] = tier.name
            detail["not_before"] = request.not_before.isoformat() if request.not_before else None
        self.note("step_dispatched", name, attempt, detail)

    def _routes(self, name: str) -> list[str]:
        """An llm step's route and fallbacks, rendered once (empty for other kinds)."""
        from streams.workflow import LlmStep

        spec = self.wf.step(name)
        if not isinstance(spec, LlmStep):
            return []
        context = self.template_context(name)
        chain: list[str] = []
        for index, source in enumerate([spec.model, *spec.fallback]):
            route = render_value(source, context)
            where = "model" if index == 0 else f"fallback[{index - 1}]"
            if not isinstance(route, str) or not route:
                raise TemplateRenderError(f"{where}: yields {route!r}, not a route name")
            if route not in chain:
                chain.append(route)
        return chain

    def succeed(
        self, name: str, attempt: int, output: JsonValue, usage: Usage | None, ms: float
    ) -> None:
        """Settle a successful attempt."""
        step = self.steps[name]
        self.set(usage=add_usage(self.get("usage"), usage))
        self.set_step(
            name,
            phase=StepPhase.succeeded,
            output=output,
            error=None,
            deadline_at=None,
            usage=add_usage(step.usage, usage),
            duration_ms=ms,
        )
        self.note("step_succeeded", name, attempt, duration_ms=ms, usage=usage)

    def fail_step(self, name: str, error_class: str, message: str) -> None:
        """The step failed for good: it ends the run."""
        step = self.steps[name]
        if step.error is None or step.error.error_class != error_class:
            self.set_step(
                name, error=StepError(error_class=error_class, message=message, retryable=False)
            )
        self.set_step(name, phase=StepPhase.failed, deadline_at=None)
        attempts = self.steps[name].attempt
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        self.finish(RunStatus.failed, f"step {name} failed{tried}: {error_class}: {message}")

    def _complete(self) -> None:
        spec_output = self.wf.spec.output
        context = self.template_context()
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
        """End the run and publish its one result."""
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


def text_of(value: JsonValue) -> str:
    """A value as message text (JSON when it is not a string)."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _when_text(spec: StepSpec) -> str:
    return str(spec.when).lower() if isinstance(spec.when, bool) else str(spec.when)
