"""Failure policy in decide(): delayed retries, fallbacks, dead letters, redrive."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from streams.coordinator import Context, backoff, decide
from streams.workflow import BackoffSpec
from tests.unit.test_decide import T0, Run, failed, ok, task, wf
from topics import (
    Codec,
    ControlAction,
    ControlCommand,
    DeadLetter,
    RetryTier,
    RunStatus,
    StepError,
    StepRequested,
    StepResult,
    StepStatus,
    TopicCatalog,
    Usage,
)

TIERS = (RetryTier("5s", 5), RetryTier("1m", 60), RetryTier("10m", 600))
CODEC = Codec()
CATALOG = TopicCatalog(prefix="t", partitions=4)

ROUTED = wf(
    """
workflow: routed
version: 1
steps:
  ask: {kind: llm, model: fast, fallback: [backup, last], prompt: "Q {{ input.text }}",
        retry: {attempts: 2, backoff: {initial: 5s, multiplier: 4, jitter: 0}}}
  after: {kind: transform, after: [ask], output: "{{ steps.ask.output }}"}
"""
)


class FailureRun(Run):
    """A Run whose context can dead-letter (catalog and codec)."""

    def send(self, event, *, at=None):  # type: ignore[no-untyped-def, override]
        before = self.state.model_dump() if self.state else None
        context = Context(
            now=at or self.now, workflow=self.workflow, tiers=TIERS, catalog=CATALOG, codec=CODEC
        )
        decision = decide(self.state, event, context)
        if self.state is not None:
            assert self.state.model_dump() == before
        if decision.state is not None:
            self.state = decision.state
        self.emitted.extend(decision.emit)
        self.last = decision
        return decision


def error(
    request: StepRequested,
    cls: str,
    *,
    retryable: bool,
    retry_after: float | None = None,
    cost: str = "0",
) -> StepResult:
    return StepResult(
        run_id=request.run_id,
        step=request.step,
        attempt=request.attempt,
        status=StepStatus.failed,
        error=StepError(
            error_class=cls, message=f"{cls}!", retryable=retryable, retry_after_s=retry_after
        ),
        usage=Usage(cost_usd=Decimal(cost)),
        started_at=T0,
        finished_at=T0,
    )


# -- backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "retry_after", "tier"),
    [
        (1, None, "5s"),
        (2, None, "1m"),
        (3, None, "10m"),
        (4, None, "10m"),
        (9, None, "10m"),
        (1, 30.0, "1m"),
        (1, 3600.0, "10m"),
    ],
)
def test_backoff_rounds_up_to_a_tier(failures: int, retry_after: float | None, tier: str) -> None:
    policy = BackoffSpec(initial=5, multiplier=4, max=600, jitter=0.1)
    chosen, wait = backoff(policy, failures, retry_after, TIERS, "seed")
    assert chosen.name == tier
    assert chosen.delay_s <= wait <= chosen.delay_s * 1.1


def test_backoff_jitter_is_spread_and_deterministic() -> None:
    policy = BackoffSpec(initial=5, jitter=0.5)
    waits = [backoff(policy, 1, None, TIERS, f"run-{i}/s/1")[1] for i in range(200)]
    assert waits == [backoff(policy, 1, None, TIERS, f"run-{i}/s/1")[1] for i in range(200)]
    assert min(waits) >= 5 and max(waits) <= 7.5
    assert max(waits) - min(waits) > 2, "spread over the jitter range"


# -- retries and fallbacks -------------------------------------------------------------------


def test_retryable_errors_wait_in_a_tier_then_the_route_falls_back() -> None:
    run = FailureRun(ROUTED)
    run.send(task(input={"text": "hi"}))
    first = run.request("ask")
    assert first.params["route"] == "fast" and first.retry_tier is None  # type: ignore[index]
    run.send(error(first, "ProviderUnavailable", retryable=True))
    second = run.request("ask")
    assert second.attempt == 2 and second.retry_tier == "5s"
    assert second.not_before == T0 + timedelta(seconds=5)
    assert second.params["route"] == "fast"  # type: ignore[index]
    # attempts: 2 per route: the second failure moves to the fallback, at once.
    decision = run.send(error(second, "ProviderTimeout", retryable=True))
    # (The retry ran: the run, paused while it waited in its tier, goes on.)
    assert run.types(decision) == ["step_failed", "step_fallback", "step_dispatched", "run_resumed"]
    third = run.request("ask")
    assert third.params["route"] == "backup" and third.retry_tier is None  # type: ignore[index]
    assert third.idempotency_key == first.idempotency_key
    run.send(ok(third, "answer"))
    run.send(ok(run.request("after"), "answer"))
    (result,) = run.results()
    assert result.status == RunStatus.completed
    assert result.steps[0].attempts == 3 and result.steps[0].usage.route is None


def test_a_retry_after_longer_than_the_backoff_picks_a_longer_tier() -> None:
    run = FailureRun(ROUTED)
    run.send(task(input={"text": "hi"}))
    run.send(error(run.request("ask"), "ProviderRateLimited", retryable=True, retry_after=45))
    assert run.request("ask").retry_tier == "1m"


@pytest.mark.parametrize("cls", ["ProviderRejected", "OutputSchemaViolation", "CircuitOpen"])
def test_permanent_route_errors_and_open_circuits_fall_back_at_once(cls: str) -> None:
    run = FailureRun(ROUTED)
    run.send(task(input={"text": "hi"}))
    run.send(error(run.request("ask"), cls, retryable=cls == "CircuitOpen", retry_after=30))
    second = run.request("ask")
    assert second.params["route"] == "backup" and second.retry_tier is None  # type: ignore[index]


def test_retry_on_limits_what_is_retried() -> None:
    only_timeouts = wf(
        "workflow: w\nversion: 1\nsteps:\n"
        "  ask: {kind: llm, model: fast, prompt: hi, retry: {attempts: 5, errors: [timeout]}}\n"
    )
    run = FailureRun(only_timeouts)
    run.send(task())
    run.send(error(run.request("ask"), "ProviderUnavailable", retryable=True))
    (result,) = run.results()
    assert result.status == RunStatus.failed
    named = wf(
        "workflow: w\nversion: 1\nsteps:\n"
        "  ask: {kind: llm, model: fast, prompt: hi, retry: {errors: [ProviderRejected]}}\n"
    )
    run = FailureRun(named)
    run.send(task())
    run.send(error(run.request("ask"), "ProviderRejected", retryable=False))
    assert run.request("ask").attempt == 2 and not run.results()


# -- exhaustion and dead letters ----------------------------------------------------------------


def test_an_exhausted_step_leaves_a_dead_letter_and_fails_the_run() -> None:
    run = FailureRun(ROUTED)
    run.send(task(input={"text": "hi"}))
    # fast twice (retryable, then out of attempts), backup once (permanent), then last: an
    # open circuit with no route left waits for a retry, and fails for good the second time.
    sequence = ("ProviderUnavailable",) * 2 + ("ProviderRejected",) + ("CircuitOpen",) * 2
    for cls in sequence:
        run.send(error(run.request("ask"), cls, retryable=cls != "ProviderRejected", cost="0.01"))
    (letter,) = [e for e in run.emitted if isinstance(e, DeadLetter)]
    (result,) = run.results()
    assert result.status == RunStatus.failed
    assert result.reason == "step ask failed after 5 attempts: CircuitOpen: CircuitOpen!"
    assert letter.dead_letter_id == "r1/ask/5"
    assert letter.origin_topic == "t.steps.llm" and letter.key == b"r1"
    assert letter.run_id == "r1" and letter.step == "ask" and letter.workflow == "routed"
    assert letter.error_class == "CircuitOpen"
    assert [a.error_class for a in letter.attempts] == list(sequence)
    assert [a.attempt for a in letter.attempts] == [1, 2, 3, 4, 5]
    assert letter.cost_usd == Decimal("0.05")
    request = CODEC.decode(letter.payload, StepRequested)
    assert request.attempt == 5 and request.params["route"] == "last"  # type: ignore[index]
    assert letter.payload_type == "StepRequested"


def test_validation_failures_never_fall_back() -> None:
    checked = wf(
        "workflow: w\nversion: 1\nsteps:\n"
        "  ask: {kind: llm, model: fast, fallback: [backup], prompt: hi}\n"
        "  check: {kind: validate, after: [ask], value: '{{ steps.ask.output }}',"
        " schema: {type: string, minLength: 50}}\n"
    )
    run = FailureRun(checked)
    run.send(task())
    run.send(ok(run.request("ask"), "short"))
    run.send(failed(run.request("check"), "ValidationFailed", "too short", retryable=False))
    (result,) = run.results()
    assert result.status == RunStatus.failed
    assert [e.step for e in run.emitted if isinstance(e, DeadLetter)] == ["check"]


# -- redrive --------------------------------------------------------------------------------


def redrive(step: str) -> ControlCommand:
    return ControlCommand(
        command_id="c",
        action=ControlAction.redrive,
        run_id="r1",
        step=step,
        issued_at=T0,
        reason="fixed the provider",
    )


def test_a_redriven_run_resumes_at_the_failed_step_and_completes() -> None:
    run = FailureRun(ROUTED)
    run.send(task(input={"text": "hi"}))
    for _ in range(4):
        run.send(error(run.request("ask"), "ProviderRejected", retryable=False))
    assert [r.status for r in run.results()] == [RunStatus.failed]
    decision = run.send(redrive("ask"), at=T0 + timedelta(hours=1))
    assert run.types(decision) == ["run_redriven", "step_dispatched"]
    again = run.request("ask")
    assert again.attempt == 4 and again.params["route"] == "fast"  # type: ignore[index]
    run.send(ok(again, "finally"))
    run.send(ok(run.request("after"), "finally"))
    assert [r.status for r in run.results()] == [RunStatus.failed, RunStatus.completed]
    assert run.results()[-1].output == "finally"


def test_redrive_of_a_run_that_did_not_fail_changes_nothing() -> None:
    run = FailureRun(ROUTED)
    run.send(task(input={"text": "hi"}))
    assert run.types(run.send(redrive("ask"))) == ["control_ignored"]
    run.send(ok(run.request("ask"), "x"))
    run.send(ok(run.request("after"), "x"))
    assert run.types(run.send(redrive("ask"))) == ["control_ignored"]
    assert len(run.results()) == 1
    unknown = decide(None, redrive("ask"), Context(now=T0, workflow=ROUTED))
    assert unknown.dead_letter == "redrive of unknown run 'r1'"
