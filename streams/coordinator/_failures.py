"""What a failed attempt leads to: a delayed retry, a fallback route, or a dead letter.

After an attempt fails (its processor reported an error, or its deadline passed):

1. a validate step whose ``on_fail`` still allows it sends an earlier step back with the
   errors fed back (an llm step with a ``cascade`` moves one route up it, to a stronger
   model); an llm step whose own answer missed its output schema moves up its cascade too;
2. an error the step's ``retry.errors`` covers, with attempts left on the current route, is
   retried after a backoff, waiting in a retry tier (``baton.retry.<tier>``);
3. otherwise an ``llm`` step with fallback routes left moves to the next one at once; an
   open circuit moves to the next route first, and without one waits out the breaker;
4. otherwise the step is exhausted: a dead letter with the last request and every failed
   attempt goes to ``baton.dead-letter``, and the run fails. ``baton dlq replay`` redrives it.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from processors import TemplateRenderError
from streams.coordinator._approvals import check_approval_deadlines
from streams.coordinator._flow import advance
from streams.coordinator._state import StepPhase, StepState
from streams.coordinator._transition import Transition
from streams.workflow import BackoffSpec, LlmStep, RetrySpec, ValidateStep
from topics import AttemptRecord, DeadLetter, RetryTier, RunStatus, StepError, partition_for

__all__ = [
    "CIRCUIT_OPEN",
    "STEP_TIMEOUT",
    "VALIDATION_FAILED",
    "after_failure",
    "backoff",
    "check_deadlines",
    "redrive",
]

#: The error class a validate processor reports when the value breaks the schema or a rule.
VALIDATION_FAILED = "ValidationFailed"
#: The error class of an attempt whose result did not arrive before its deadline.
STEP_TIMEOUT = "StepTimeout"
#: The error class a processor reports when the provider's circuit breaker is open.
CIRCUIT_OPEN = "CircuitOpen"
#: The error class of a model answer that is not JSON or misses the step's output schema.
OUTPUT_SCHEMA_VIOLATION = "OutputSchemaViolation"

# Failures of the step itself, not of the route: another model would fail the same way.
# Failures of the step itself, not of the model: another route would fail the same way.
_NO_FALLBACK = frozenset(
    {
        "TemplateRenderError",
        "TemplateLimitExceeded",
        "JsonLimitExceeded",
        "InvalidParams",
        "InternalError",
        VALIDATION_FAILED,
    }
)


def backoff(
    policy: BackoffSpec,
    failures: int,
    retry_after: float | None,
    tiers: tuple[RetryTier, ...],
    seed: str,
) -> tuple[RetryTier, float]:
    """The tier and the wait (seconds) before the retry after ``failures`` failed tries.

    The backoff ``initial * multiplier^(failures-1)`` (at most ``max``, at least the
    provider's ``Retry-After``) is rounded up to a tier, capped at the longest, and spread
    by up to ``jitter`` of the tier's delay, the same for the same ``seed``.
    """
    wanted = min(policy.max, policy.initial * policy.multiplier ** max(0, failures - 1))
    if retry_after is not None:
        wanted = max(wanted, retry_after)
    tier = next((t for t in tiers if t.delay_s >= wanted), tiers[-1])
    fraction = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") / 2**64
    return tier, tier.delay_s * (1 + policy.jitter * fraction)


def _covered(policy: RetrySpec, error: StepError) -> bool:
    for kind in policy.errors:
        if kind == "retryable" and error.retryable:
            return True
        if kind == "timeout" and error.error_class == STEP_TIMEOUT:
            return True
        if kind == error.error_class:
            return True
    return False


def after_failure(t: Transition, name: str, error: StepError) -> None:
    """Decide what follows one failed attempt of a step."""
    step = t.steps[name]
    spec = t.spec(name)
    history = [
        *step.history,
        AttemptRecord(
            attempt=step.attempt, at=t.now, error_class=error.error_class, message=error.message
        ),
    ]
    t.set_step(name, error=error, deadline_at=None, history=history)
    if (
        isinstance(spec, ValidateStep)
        and error.error_class == VALIDATION_FAILED
        and spec.on_fail is not None
        and t.steps[spec.on_fail.retry_step].reruns < spec.on_fail.max
    ):
        _rerun(t, spec.on_fail.retry_step, name, error.message)
        return
    if (
        isinstance(spec, LlmStep)
        and error.error_class == OUTPUT_SCHEMA_VIOLATION
        and step.cascade_level < len(spec.cascade)
    ):
        try:
            _cascade(t, name, f"{error.error_class}: {error.message}")
        except TemplateRenderError as exc:
            t.fail_step(name, "TemplateRenderError", f"steps.{name}: {exc}")
            return
        t.dispatch(name)
        return
    can_fall_back = (
        isinstance(spec, LlmStep)
        and step.route_index + 1 < len(step.routes)
        and error.error_class not in _NO_FALLBACK
    )
    if error.error_class == CIRCUIT_OPEN and can_fall_back:
        _fall_back(t, name, error)
        return
    if _covered(spec.retry, error) and step.tries < spec.retry.attempts:
        wait = backoff(
            spec.retry.backoff,
            step.tries,
            error.retry_after_s,
            t.context.tiers,
            f"{t.old.run_id}/{name}/{step.attempt}",
        )
        t.dispatch(name, wait)
        return
    if can_fall_back:
        _fall_back(t, name, error)
        return
    _exhausted(t, name, error)


def _fall_back(t: Transition, name: str, error: StepError) -> None:
    step = t.steps[name]
    new_route = step.routes[step.route_index + 1]
    t.set_step(name, route_index=step.route_index + 1, tries=0)
    t.note(
        "step_fallback",
        name,
        step.attempt,
        {"from": step.current_route, "to": new_route, "error_class": error.error_class},
    )
    t.dispatch(name)


def _exhausted(t: Transition, name: str, error: StepError) -> None:
    step = t.steps[name]
    catalog = t.context.catalog
    codec = t.context.codec
    if catalog is not None and codec is not None and step.call is None:
        # (A tool call an agent asked for answers the model with its error instead.)
        try:
            payload = codec.encode(t.request(name, step.attempt))
        except Exception:  # the request itself cannot be rebuilt (a template): keep the rest
            payload = b""
        kind = t.spec(name).kind
        topic = catalog.steps(kind)
        t.emit.append(
            DeadLetter(
                dead_letter_id=f"{t.old.run_id}/{name}/{step.attempt}",
                origin_topic=topic.name,
                origin_partition=partition_for(t.old.run_id, topic.partitions),
                key=t.old.run_id.encode(),
                payload=payload,
                payload_type="StepRequested" if payload else None,
                error_class=error.error_class,
                error=error.message,
                run_id=t.old.run_id,
                workflow=t.old.workflow,
                step=name,
                attempts=step.history,
                cost_usd=t.get("usage").cost_usd,
                at=t.now,
            )
        )
    t.fail_step(name, error.error_class, error.message)


def _rerun(t: Transition, target: str, validator: str, message: str) -> None:
    """Send ``target`` back with the validation errors, and everything after it."""
    old_target = t.steps[target]
    for name in {target} | t.wf.downstream(target):
        old = t.steps[name]
        t.replace_step(
            name,
            StepState(
                attempt=old.attempt,
                reruns=old.reruns,
                usage=old.usage,
                history=old.history,
                routes=old.routes,
                cascade_level=old.cascade_level,
                calls_made=old.calls_made,
                output=old.output if name == target else None,
            ),
        )
    t.set_step(target, reruns=old_target.reruns + 1, feedback=[*old_target.feedback, message])
    t.note(
        "validation_rerun",
        target,
        detail={"validator": validator, "errors": message, "rerun": old_target.reruns + 1},
    )
    spec = t.wf.step(target)
    if isinstance(spec, LlmStep) and old_target.cascade_level < len(spec.cascade):
        _cascade(t, target, validator)
    advance(t)


def _cascade(t: Transition, name: str, why: str) -> None:
    """Move an llm step one route up its cascade (a stronger model) for its next attempt."""
    step = t.steps[name]
    t.set_step(name, cascade_level=step.cascade_level + 1, routes=[], route_index=0, tries=0)
    t.set_step(name, routes=t._routes(name))
    t.note(
        "step_cascaded",
        name,
        step.attempt,
        {"from": step.current_route, "to": t.steps[name].current_route, "because": why},
    )


def check_deadlines(t: Transition) -> None:
    """Fail attempts whose results are overdue; end a run past its wall-time cap."""
    cap = t.old.budget.max_seconds
    if cap is not None and t.now >= t.old.started_at + timedelta(seconds=cap):
        t.finish(RunStatus.budget_exceeded, f"deadline: the run took over {cap:g}s")
        return
    check_approval_deadlines(t)
    for name in list(t.steps):
        if not t.running:
            return
        step = t.steps[name]
        if step.phase != StepPhase.dispatched or step.deadline_at is None:
            continue
        if step.deadline_at > t.now:
            continue
        timeout = t.timeout(name)
        t.note("step_timed_out", name, step.attempt, {"timeout_s": timeout, "tries": step.tries})
        after_failure(
            t,
            name,
            StepError(
                error_class=STEP_TIMEOUT, message=f"no result within {timeout:g}s", retryable=True
            ),
        )


def redrive(t: Transition, name: str, reason: str) -> bool:
    """Reopen a failed run at a step (after ops fixed the cause); ``False`` if not possible."""
    if t.get("status") != RunStatus.failed or name not in t.steps:
        return False
    if t.steps[name].phase != StepPhase.failed:
        return False
    for other, step in list(t.steps.items()):
        if not step.phase.done and step.call is None:
            t.replace_step(
                other,
                StepState(
                    attempt=step.attempt,
                    reruns=step.reruns,
                    usage=step.usage,
                    history=step.history,
                    feedback=step.feedback,
                    output=step.output,
                    calls_made=step.calls_made,
                ),
            )
    t.set(status=None, reason=None, finished_at=None, output=None)
    t.note("run_redriven", name, detail={"reason": reason})
    advance(t)
    return True
