"""A run being changed by one event: a copy-on-write view over its state.

``decide`` creates one ``Transition`` per event; the policy modules (``_failures``, ...)
move it forward; ``decision()`` turns it into the new state and the events to emit. The
state it was made from is never modified.

Each run event is chained as it is noted (``topics._audit``): it links to the run's
``audit_head``, is encoded once (the shell writes those very bytes) and its hash becomes
the new head, kept in the state beside ``seq``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import JsonValue

from processors import TemplateRenderError, compile_expression, is_template, render_value
from streams.coordinator._control import HOLD_RECHECK, Hold
from streams.coordinator._params import request_params
from streams.coordinator._state import RunState, StepPhase, StepState
from streams.workflow import (
    DEFAULT_TIMEOUTS,
    AgentStep,
    CustomStep,
    LlmStep,
    StepSpec,
    TransformStep,
    ValidateStep,
    Workflow,
)
from topics import (
    BUILTIN_KINDS,
    Budget,
    Event,
    PermanentError,
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
    event_hash,
    run_genesis,
)

if TYPE_CHECKING:
    from streams.coordinator._decide import Context, Decision

__all__ = ["Transition", "add_usage", "args_digest"]

#: A built-in kind's wire value by name; any other kind travels as ``custom`` + its name.
_BUILTIN_KINDS = {kind.value: kind for kind in BUILTIN_KINDS}

_OUTCOMES = {
    StepPhase.succeeded: StepOutcome.succeeded,
    StepPhase.failed: StepOutcome.failed,
    StepPhase.skipped: StepOutcome.skipped,
}


def add_usage(total: Usage, more: Usage | None) -> Usage:
    """The sum of two usages (the route of the newer one is kept).

    Both are valid already (token counts are not negative, money is quantized), and so is
    their sum: it is built without validating again, on every step of every run.
    """
    if more is None:
        return total
    return Usage.model_construct(
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
    bodies: list[bytes] = field(init=False, default_factory=list)

    hold: Hold | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.steps = dict(self.old.steps)
        control = self.context.control
        if control is not None and not self.old.finished:
            self.hold = control.hold_for(self.old.tenant, self.old.workflow)
        paused_at = self.old.paused_at
        if (
            paused_at is not None
            and not self.old.finished
            and not _waits(self.steps, self.now, self.hold)
        ):
            # A delayed retry's time came before this event: the run went on then, whatever
            # this event does to it (even end it).
            self._resume(paused_at)

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

    def spec(self, name: str) -> StepSpec:
        """A step's definition; for a tool call an agent asked for, a ``tool`` step's.

        A call gets its agent's ``tool_retry`` and ``tool_timeout``; its arguments are not in
        the definition (they are the model's, in ``StepState.call``, and are never rendered).
        """
        call = self.steps[name].call if name in self.steps else None
        if call is None:
            return self.wf.step(name)
        return self.wf.tool_call_step(call.agent, call.tool)

    def timeout(self, name: str) -> float:
        """Seconds an attempt of a step may take."""
        if self.steps[name].call is None:
            return self.wf.timeout(name)
        spec = self.spec(name)
        return spec.timeout if spec.timeout is not None else DEFAULT_TIMEOUTS["tool"]

    @property
    def running(self) -> bool:
        """Whether the run has not ended (so far in this transition)."""
        return self.get("status") is None

    def decision(self) -> Decision:
        """The new state and the events, or nothing when nothing changed."""
        from streams.coordinator._decide import Decision

        if (
            "steps" in self.changes
            or self.get("paused_at") is not None
            or self.hold is not None
            or self.old.held_by is not None
        ):
            self._pause_or_resume()
        if not self.changes and not self.emit:
            return Decision()
        return Decision(
            state=self.old.model_copy(update=self.changes),
            emit=tuple(self.emit),
            bodies=tuple(self.bodies),
        )

    def _pause_or_resume(self) -> None:
        """Note when the run came to wait, or goes on.

        ``run_paused`` when it came to wait for people or retry tiers only, ``run_resumed``
        when something of it runs again; a paused run that ends just ends.
        """
        paused_at: datetime | None = self.get("paused_at")
        if not self.running:
            if paused_at is not None:
                self.set(paused_at=None)
            if self.get("held_by") is not None:
                self.set(held_by=None, hold_check_at=None)
            return
        waits = _waits(self.steps, self.now, self.hold)
        held_now = bool(waits) and self.hold is not None
        if waits and (paused_at is None or (held_now and self.get("held_by") is None)):
            # A run already waiting (for people, say) that a pause now holds too says so.
            self.note("run_paused", detail={"waiting_for": waits})
            self.set(paused_at=paused_at or self.now)
        elif not waits and paused_at is not None:
            self._resume(paused_at)
        if held_now:
            assert self.hold is not None
            check: datetime | None = self.get("hold_check_at")
            if self.get("held_by") != self.hold.key or check is None or check <= self.now:
                self.set(held_by=self.hold.key, hold_check_at=self.now + HOLD_RECHECK)
        elif self.get("held_by") is not None:
            self.set(held_by=None, hold_check_at=None)

    def _resume(self, paused_at: datetime) -> None:
        detail: dict[str, JsonValue] = {"paused_at": paused_at.isoformat()}
        held_by: str | None = self.get("held_by")
        control = self.context.control
        resume = control.resume_of(held_by) if control is not None and held_by else None
        if held_by is not None:
            detail["held_by"] = held_by
        if resume is not None:
            detail["command_id"] = resume.command_id
            detail["issued_by"] = resume.issued_by
            detail["why"] = resume.reason
        self.note(
            "run_resumed",
            duration_ms=(self.now - paused_at).total_seconds() * 1000,
            detail=detail,
        )
        self.set(paused_at=None)
        if held_by is not None:  # a field never set is not stored
            self.set(held_by=None, hold_check_at=None)

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
        """Record a run event, chained to the run's previous one (with a codec)."""
        seq = self.get("seq")
        total: Usage = self.get("usage")
        codec = self.context.codec
        head = ""
        if codec is not None:
            head = self.get("audit_head") or run_genesis(self.old.run_id)
        event = RunEvent(
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
            prev_hash=head,
        )
        self.emit.append(event)
        if codec is None:
            self.set(seq=seq + 1)
            return
        body = codec.encode_item(event)
        self.bodies.append(body)
        self.set(seq=seq + 1, audit_head=event_hash(body))

    # -- the template context ----------------------------------------------------------------

    def template_context(self, upstream_of: str | None = None) -> dict[str, Any]:
        """What templates see: input, steps (all, or those before a step), run.

        For a tool call an agent asked for: what its agent sees, and ``call`` (the tool, its
        arguments, the agent and the turn), so policies can test the arguments.
        """
        step = self.steps[upstream_of] if upstream_of else None
        call = step.call if step is not None else None
        if step is not None and call is not None:
            context = self.template_context(call.agent)
            context["call"] = {
                "tool": call.tool,
                "arguments": call.arguments if step.edited_args is None else step.edited_args,
                "agent": call.agent,
                "turn": call.turn,
            }
            return context
        names = self.wf.upstream[upstream_of] if upstream_of else self.wf.order
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

    # -- moving forward: see _flow.advance --------------------------------------------------

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
        spec = self.spec(name)
        step = self.steps[name]
        reads = (
            self.wf.context_reads(name)
            if step.call is None and isinstance(spec, TransformStep | ValidateStep)
            else None
        )
        params, step_context = request_params(
            spec, step, self.template_context(name), self.context.tools, reads
        )
        start = not_before or self.now
        key = self.idempotency_key(name)
        if step.edited_args is not None and isinstance(params, dict):
            params = {**params, "args": step.edited_args}
        builtin = _BUILTIN_KINDS.get(spec.kind)
        # Built from the run's valid state and rendered templates (JSON by construction):
        # not validated again. The processor that reads it validates what it received.
        return StepRequested.model_construct(
            run_id=self.old.run_id,
            step=name,
            kind=StepKind.custom if builtin is None else builtin,
            custom_kind=spec.kind if builtin is None else None,
            attempt=attempt,
            idempotency_key=key,
            workflow=self.old.workflow,
            workflow_version=self.old.workflow_version,
            tenant=self.old.tenant,
            params=params,
            context=step_context,
            dispatched_at=self.now,
            deadline_at=start + timedelta(seconds=self.timeout(name)),
            not_before=not_before,
            retry_tier=tier.name if tier else None,
        )

    def idempotency_key(self, name: str) -> str:
        """The key every attempt of a step carries: one per step execution and its arguments.

        A reviewer's edit gives the call a key of its own (``/edit-`` and 16 hex digits of
        the arguments' digest), so the call made with the edited arguments is never taken
        for the one that was shown.
        """
        step = self.steps[name]
        if step.call is not None:
            key = step.call.key
        else:
            key = f"{self.old.run_id}/{name}" + (f"/rerun-{step.reruns}" if step.reruns else "")
        if step.edited_args is not None:
            key += f"/edit-{args_digest(step.edited_args)[:16]}"
        return key

    def dispatch(self, name: str, wait: tuple[RetryTier, float] | None = None) -> None:
        """Send the next attempt of a step, now or after waiting in a retry tier.

        A model step's attempt first passes its budget checks (``_budgets.admit``), which
        may stop the run or park the step until an approval or a ledger verdict.
        """
        from streams.coordinator._budgets import MODEL_KINDS, admit

        if self.hold is not None:
            self.hold_step(name)
            return
        spec = self.spec(name)
        catalog = self.context.catalog
        if isinstance(spec, CustomStep) and catalog is not None:
            if spec.kind not in catalog.custom_kinds:
                installed = ", ".join(sorted(catalog.custom_kinds)) or "none"
                self.fail_step(
                    name,
                    "UnknownStepKind",
                    f"steps.{name}: step kind {spec.kind!r} is not installed on this "
                    f"coordinator (custom kinds installed: {installed})",
                )
                return
        budget: Budget = self.old.budget
        dispatches: int = self.get("dispatches")
        if budget.max_steps is not None and dispatches >= budget.max_steps:
            self.note("budget_exceeded", name, detail={"cap": "max_steps"})
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
        held = step.reservation
        if wait is None and held is not None and held.tier is not None:
            tier = next((t for t in self.context.tiers if t.name == held.tier), None)
            if tier is not None:
                wait = (tier, held.wait_s or tier.delay_s)
        tier, seconds = wait if wait is not None else (None, 0.0)
        not_before = self.now + timedelta(seconds=seconds) if tier is not None else None
        attempt = step.attempt + 1

        def rebuild() -> StepRequested:
            return self.request(name, attempt, not_before=not_before, tier=tier)

        try:
            request = rebuild()
            estimate: Usage | None = None
            if request.kind in MODEL_KINDS:
                admitted = admit(self, name, request, rebuild, wait)
                if admitted is None:
                    return
                request, estimate = admitted
        except TemplateRenderError as exc:
            self.fail_step(name, "TemplateRenderError", f"steps.{name}: {exc}")
            return
        except PermanentError as exc:  # an agent's tool the registry lacks
            self.fail_step(name, type(exc).__name__, f"steps.{name}: {exc}")
            return
        step = self.steps[name]
        self.emit.append(request)
        # Set only when it waits, or waited before: a field never set is not stored.
        waits: dict[str, Any] = {}
        if tier is not None:
            waits = {"not_before": request.not_before, "retry_tier": tier.name}
        elif step.not_before is not None:
            waits = {"not_before": None, "retry_tier": None}
        self.set_step(
            name,
            phase=StepPhase.dispatched,
            attempt=attempt,
            tries=step.tries + 1,
            dispatched_at=self.now,
            deadline_at=request.deadline_at,
            route=step.current_route,
            estimate=estimate,
            **waits,
        )
        self.set(dispatches=dispatches + 1)
        detail: dict[str, JsonValue] = {"kind": self.spec(name).kind}
        if step.call is not None:
            detail["tool"] = step.call.tool
        if step.call is not None or step.edited_args is not None:
            detail["idempotency_key"] = request.idempotency_key
        if step.current_route is not None:
            detail["route"] = step.current_route
        if estimate is not None:
            detail["estimate"] = {
                "input_tokens": estimate.input_tokens,
                "output_tokens": estimate.output_tokens,
                "cost_usd": str(estimate.cost_usd),
            }
        if tier is not None:
            detail["retry_tier"] = tier.name
            detail["not_before"] = request.not_before.isoformat() if request.not_before else None
        self.note("step_dispatched", name, attempt, detail)

    def hold_step(self, name: str) -> None:
        """Keep a step from starting while an operator's pause holds the run.

        The step waits, pending, and goes when the run is resumed (a retry then goes at
        once, without its backoff). A model call's reservation is given back to the ledger
        (settled at nothing): its verdict may be forgotten by the time the run resumes, so
        the next attempt, numbered past it, reserves afresh.
        """
        from streams.coordinator._budgets import settle

        step = self.steps[name]
        if step.reservation is not None:
            attempt = step.attempt + 1
            settle(self, name, attempt, None)
            self.set_step(name, reservation=None, attempt=attempt)
        if step.phase != StepPhase.pending:
            self.set_step(
                name, phase=StepPhase.pending, deadline_at=None, not_before=None, retry_tier=None
            )

    def _routes(self, name: str) -> list[str]:
        """A model step's route and fallbacks, rendered when it is first dispatched.

        The route is the cascade's at the step's ``cascade_level`` when it has moved up,
        else the first routing rule's whose ``when`` holds, else ``model``.
        """
        spec = self.spec(name)
        if not isinstance(spec, LlmStep | AgentStep):
            return []
        level = self.steps[name].cascade_level
        cascading = bool(level) and isinstance(spec, LlmStep) and bool(spec.cascade)
        if not spec.routes and not is_template(spec.model) and not cascading:
            # Nothing to render (the usual case): the route and its fallbacks as written.
            plain = [spec.model, *spec.fallback]
            if not any(is_template(route) for route in plain):
                return list(dict.fromkeys(plain))
        context = self.template_context(name)
        if level and isinstance(spec, LlmStep) and spec.cascade:
            first, where = spec.cascade[min(level, len(spec.cascade)) - 1], "cascade"
        else:
            first, where = spec.model, "model"
            for index, rule in enumerate(spec.routes):
                try:
                    holds = compile_expression(rule.when).holds(context)
                except TemplateRenderError as exc:
                    raise TemplateRenderError(f"routes[{index}].when: {exc}") from None
                if holds:
                    first, where = rule.model, f"routes[{index}].model"
                    break
        chain: list[str] = []
        for index, source in enumerate([first, *spec.fallback]):
            route = render_value(source, context)
            at = where if index == 0 else f"fallback[{index - 1}]"
            if not isinstance(route, str) or not route:
                raise TemplateRenderError(f"{at}: yields {route!r}, not a route name")
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
            estimate=None,
            reservation=None,
        )
        self.note("step_succeeded", name, attempt, duration_ms=ms, usage=usage)

    def fail_step(self, name: str, error_class: str, message: str) -> None:
        """The step failed for good: it ends the run.

        Except a tool call an agent asked for: its error goes back to the model instead.
        """
        step = self.steps[name]
        if step.error is None or step.error.error_class != error_class:
            self.set_step(
                name, error=StepError(error_class=error_class, message=message, retryable=False)
            )
        self.set_step(name, phase=StepPhase.failed, deadline_at=None)
        if step.call is not None:
            from streams.coordinator._agents import call_finished

            self.note("tool_call_failed", name, step.attempt, {"error_class": error_class})
            call_finished(self, name)
            return
        attempts = self.steps[name].attempt
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        self.finish(RunStatus.failed, f"step {name} failed{tried}: {error_class}: {message}")

    def finish(
        self, status: RunStatus, reason: str | None = None, *, output: JsonValue = None
    ) -> None:
        """End the run and publish its one result."""
        self.set(status=status, reason=reason, output=output, finished_at=self.now)
        self.note(f"run_{status.value}", detail={"reason": reason} if reason else None)
        ended = status != RunStatus.completed
        summaries = []
        if self.workflow is not None:
            # The workflow's steps, then the tool calls agents made, in the order asked.
            for name, step in self.steps.items():
                outcome = _OUTCOMES.get(step.phase)
                if outcome is None:
                    outcome = StepOutcome.cancelled if ended else StepOutcome.pending
                summaries.append(
                    StepSummary(
                        step=name,
                        kind=self.spec(name).kind,
                        outcome=outcome,
                        attempts=step.attempt,
                        duration_ms=step.duration_ms,
                        usage=step.usage,
                    )
                )
        total: Usage = self.get("usage")
        self.emit.append(
            RunResult.model_construct(
                run_id=self.old.run_id,
                workflow=self.old.workflow,
                workflow_version=self.old.workflow_version,
                tenant=self.old.tenant,
                status=status,
                output=output,
                reason=reason,
                steps=summaries,
                usage=Usage.model_construct(
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


def _waits(steps: dict[str, StepState], now: datetime, hold: Hold | None) -> list[JsonValue]:
    """What a run waits for, when it waits only for people, retry tiers and pauses; else empty.

    Empty too when anything of the run is under way: an attempt running (or its result on
    the way), or a model call's reservation awaiting the spend ledger's verdict. A run an
    operator's pause holds waits for it once nothing of it is under way.
    """
    waits: list[JsonValue] = []
    for name, step in steps.items():
        if step.approval is not None:
            waits.append(
                {
                    "reason": "approval",
                    "step": name,
                    "approval_id": step.approval.approval_id,
                    "until": step.approval.deadline.isoformat(),
                }
            )
        elif step.phase == StepPhase.dispatched:
            if step.not_before is not None and step.not_before > now:
                waits.append(
                    {
                        "reason": "retry",
                        "step": name,
                        "retry_tier": step.retry_tier,
                        "until": step.not_before.isoformat(),
                    }
                )
            elif not step.waiting_on:
                return []
        elif step.phase == StepPhase.pending and step.reservation is not None and hold is None:
            return []  # held, the verdict can wait: the call is not made before the resume
    if hold is not None:
        waits.append(hold.detail())
    return waits


def args_digest(args: JsonValue) -> str:
    """The sha256 (hex) of a tool call's arguments as JSON with sorted keys."""
    return hashlib.sha256(orjson.dumps(args, option=orjson.OPT_SORT_KEYS)).hexdigest()


def text_of(value: JsonValue) -> str:
    """A value as message text (JSON when it is not a string)."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()
