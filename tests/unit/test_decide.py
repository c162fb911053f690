"""decide(): the coordinator's pure core, table-driven, no Kafka."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from streams.coordinator import Context, Decision, RunState, StepPhase, decide
from streams.workflow import Workflow, parse_workflow
from topics import (
    Budget,
    ControlCommand,
    Event,
    RunEvent,
    RunResult,
    RunStatus,
    StepError,
    StepOutcome,
    StepRequested,
    StepResult,
    StepStatus,
    TaskSubmitted,
    TimerFired,
    Usage,
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def wf(text: str) -> Workflow:
    return parse_workflow(text, "test.yaml")


LINEAR = wf(
    """
workflow: linear
version: 1
input: {type: object, required: [text], properties: {text: {type: string}, n: {type: number}}}
steps:
  a: {kind: llm, model: fast, prompt: "Say {{ input.text }}"}
  b: {kind: transform, after: [a], output: {said: "{{ steps.a.output }}"}}
  c: {kind: llm, after: [b], model: fast, prompt: "Again {{ steps.b.output.said }}", timeout: 30s,
      retry: {attempts: 2}}
output: {first: "{{ steps.a.output }}", last: "{{ steps.c.output }}"}
"""
)

DIAMOND = wf(
    """
workflow: diamond
version: 1
steps:
  start: {kind: transform, output: 1}
  left: {kind: transform, after: [start], output: L}
  right: {kind: transform, after: [start], output: R}
  join: {kind: transform, after: [left, right],
         output: "{{ steps.left.output ~ steps.right.output }}"}
"""
)

BRANCHES = wf(
    """
workflow: branches
version: 1
steps:
  classify: {kind: llm, model: fast, prompt: x}
  refund: {kind: llm, after: [classify], when: "steps.classify.output.category == 'refund'",
           model: "{{ 'strong' if steps.classify.output.risk == 'high' else 'fast' }}", prompt: r}
  answer: {kind: llm, after: [classify], when: "steps.classify.output.category != 'refund'",
           model: fast, prompt: a}
  never: {kind: transform, after: [classify], when: false, output: 0}
  reply: {kind: transform, after: [refund, answer, never],
          output: "{{ steps.refund.output if steps.refund.output else steps.answer.output }}"}
"""
)

VALIDATED = wf(
    """
workflow: validated
version: 1
steps:
  draft: {kind: llm, model: fast, prompt: "Write"}
  polish: {kind: transform, after: [draft], output: "{{ steps.draft.output }}"}
  check: {kind: validate, after: [polish], value: "{{ steps.polish.output }}",
          schema: {type: string, minLength: 5}, on_fail: {retry_step: draft, max: 2}}
"""
)


def task(run_id: str = "r1", **changes: Any) -> TaskSubmitted:
    fields: dict[str, Any] = {"task_id": run_id, "workflow": "w", "input": {"text": "hi"}}
    fields.update(changes)
    return TaskSubmitted(**fields)


def ok(
    request: StepRequested, output: Any, *, at: datetime = T0, usage: Usage | None = None
) -> StepResult:
    return StepResult(
        run_id=request.run_id,
        step=request.step,
        attempt=request.attempt,
        status=StepStatus.ok,
        output=output,
        usage=usage,
        started_at=at,
        finished_at=at + timedelta(milliseconds=40),
    )


def failed(
    request: StepRequested, error_class: str, message: str, *, retryable: bool
) -> StepResult:
    return StepResult(
        run_id=request.run_id,
        step=request.step,
        attempt=request.attempt,
        status=StepStatus.failed,
        error=StepError(error_class=error_class, message=message, retryable=retryable),
        started_at=T0,
        finished_at=T0,
    )


class Run:
    """Drives one run through decide(), keeping its state and everything emitted."""

    def __init__(self, workflow: Workflow | None, now: datetime = T0, **context: Any) -> None:
        self.workflow = workflow
        self.now = now
        self.context = context
        self.state: RunState | None = None
        self.emitted: list[Event] = []
        self.last: Decision = Decision()

    def send(self, event: Any, *, at: datetime | None = None) -> Decision:
        before = self.state.model_dump() if self.state else None
        decision = decide(
            self.state, event, Context(now=at or self.now, workflow=self.workflow, **self.context)
        )
        if self.state is not None:
            assert self.state.model_dump() == before, "decide modified the state it was given"
        if decision.state is not None:
            self.state = decision.state
        self.emitted.extend(decision.emit)
        self.last = decision
        return decision

    def requests(self, decision: Decision | None = None) -> list[StepRequested]:
        emitted = (decision or self.last).emit
        return [e for e in emitted if isinstance(e, StepRequested)]

    def request(self, step: str) -> StepRequested:
        return [e for e in self.emitted if isinstance(e, StepRequested) and e.step == step][-1]

    def types(self, decision: Decision | None = None) -> list[str]:
        return [e.type for e in (decision or self.last).emit if isinstance(e, RunEvent)]

    def results(self) -> list[RunResult]:
        return [e for e in self.emitted if isinstance(e, RunResult)]


def names(requests: Sequence[StepRequested]) -> list[str]:
    return [r.step for r in requests]


# -- sequencing ------------------------------------------------------------------------------


def test_a_linear_run_dispatches_in_order_and_completes_once() -> None:
    run = Run(LINEAR)
    run.send(task(input={"text": "hello"}))
    assert names(run.requests()) == ["a"]
    a = run.request("a")
    assert a.attempt == 1 and a.idempotency_key == "r1/a" and a.kind == "llm"
    assert a.params == {
        "route": "fast",
        "messages": [{"role": "user", "content": "Say hello"}],
        "temperature": 0.0,
        "max_tokens": None,
        "output_schema": None,
        "cache": True,
    }
    assert a.deadline_at == T0 + timedelta(seconds=120)
    assert run.types() == ["run_started", "step_dispatched"]

    run.send(
        ok(a, "HELLO", usage=Usage(input_tokens=10, output_tokens=2, cost_usd=Decimal("0.01")))
    )
    b = run.request("b")
    assert b.params == {"output": {"said": "{{ steps.a.output }}"}}
    assert b.context["steps"] == {"a": {"output": "HELLO", "status": "succeeded"}}  # type: ignore[index]
    run.send(ok(b, {"said": "HELLO"}))
    c = run.request("c")
    assert c.params["messages"] == [{"role": "user", "content": "Again HELLO"}]  # type: ignore[index]
    assert c.deadline_at == T0 + timedelta(seconds=30)
    run.send(ok(c, "DONE", usage=Usage(input_tokens=5, output_tokens=1, cost_usd=Decimal("0.002"))))

    (result,) = run.results()
    assert result.status == RunStatus.completed
    assert result.output == {"first": "HELLO", "last": "DONE"}
    assert [s.step for s in result.steps] == ["a", "b", "c"]
    assert all(s.outcome == StepOutcome.succeeded for s in result.steps)
    assert result.usage.input_tokens == 15 and result.usage.cost_usd == Decimal("0.012")
    assert run.types()[-1] == "run_completed"
    seqs = [e.seq for e in run.emitted if isinstance(e, RunEvent)]
    assert seqs == list(range(len(seqs)))
    assert run.state is not None and run.state.status == RunStatus.completed


def test_parallel_branches_run_together_and_join() -> None:
    run = Run(DIAMOND)
    run.send(task())
    run.send(ok(run.request("start"), 1))
    assert names(run.requests()) == ["left", "right"]
    run.send(ok(run.request("right"), "R"))
    assert run.requests() == []  # join waits for left
    run.send(ok(run.request("left"), "L"))
    assert names(run.requests()) == ["join"]
    # The request carries the outputs its templates read (left and right), not every
    # step before it.
    assert run.request("join").context["steps"].keys() == {"left", "right"}  # type: ignore[union-attr]
    run.send(ok(run.request("join"), "LR"))
    assert run.results()[0].output == "LR"  # one sink: its output is the run's output


@pytest.mark.parametrize(
    ("classified", "dispatched", "route"),
    [
        ({"category": "refund", "risk": "high"}, "refund", "strong"),
        ({"category": "refund", "risk": "low"}, "refund", "fast"),
        ({"category": "bug", "risk": "low"}, "answer", "fast"),
    ],
)
def test_when_picks_the_branch_and_skips_are_recorded(
    classified: dict[str, str], dispatched: str, route: str
) -> None:
    run = Run(BRANCHES)
    run.send(task())
    decision = run.send(ok(run.request("classify"), classified))
    assert names(run.requests()) == [dispatched]
    assert run.request(dispatched).params["route"] == route  # type: ignore[index]
    skipped = {
        e.step for e in decision.emit if isinstance(e, RunEvent) and e.type == "step_skipped"
    }
    assert skipped == {"refund", "answer", "never"} - {dispatched}
    never = next(e for e in decision.emit if isinstance(e, RunEvent) and e.step == "never")
    assert never.detail == {"when": "false"}
    run.send(ok(run.request(dispatched), f"{dispatched} text"))
    run.send(ok(run.request("reply"), f"{dispatched} text"))
    (result,) = run.results()
    outcomes = {s.step: s.outcome for s in result.steps}
    assert outcomes[dispatched] == StepOutcome.succeeded
    assert outcomes["never"] == StepOutcome.skipped
    assert result.status == RunStatus.completed


# -- duplicates and late events ----------------------------------------------------------------


def test_a_duplicate_task_starts_nothing() -> None:
    run = Run(LINEAR)
    run.send(task())
    decision = run.send(task(input={"text": "other"}))
    assert run.requests(decision) == []
    assert run.types(decision) == ["task_duplicate"]
    assert len([e for e in run.emitted if isinstance(e, StepRequested)]) == 1


def test_a_second_result_for_a_settled_attempt_changes_nothing() -> None:
    run = Run(LINEAR)
    run.send(task())
    a = run.request("a")
    run.send(ok(a, "first"))
    decision = run.send(ok(a, "second"))
    assert run.types(decision) == ["result_ignored"]
    assert run.requests(decision) == []
    assert run.state is not None and run.state.steps["a"].output == "first"
    ignored = decision.emit[0]
    assert isinstance(ignored, RunEvent)
    assert ignored.detail == {"reason": "a result for this attempt was already settled"}


PAID = Usage(input_tokens=10, output_tokens=2, cost_usd=Decimal("0.01"), route="fast")
#: The same call's answer, served from the cache to the same attempt run again.
RECOVERED = PAID.model_copy(update={"cached": True})


def test_a_cached_repeat_of_a_settled_attempt_is_not_charged_twice() -> None:
    # At-least-once: the worker published the result, cached the answer and died before its
    # offsets were committed; the attempt ran again and was answered from its own entry.
    run = Run(LINEAR)
    run.send(task())
    a = run.request("a")
    run.send(ok(a, "first", usage=PAID))
    decision = run.send(ok(a, "first", usage=RECOVERED))
    assert run.types(decision) == ["result_ignored"]
    assert run.state is not None
    assert run.state.usage.input_tokens == 10 and run.state.usage.cost_usd == Decimal("0.01")
    assert run.state.steps["a"].usage.cost_usd == Decimal("0.01")


def test_a_late_paid_repeat_of_a_settled_attempt_is_charged() -> None:
    # A second real call (the attempt ran again and missed the cache) was paid for too.
    run = Run(LINEAR)
    run.send(task())
    a = run.request("a")
    run.send(ok(a, "first", usage=PAID))
    run.send(ok(a, "first", usage=PAID))
    assert run.state is not None
    assert run.state.usage.input_tokens == 20 and run.state.usage.cost_usd == Decimal("0.02")


def test_a_recovered_answer_settles_the_attempt_at_the_price_of_its_call() -> None:
    # The first result never counted (its worker was fenced): the recovered one is charged.
    run = Run(LINEAR)
    run.send(task())
    a = run.request("a")
    run.send(ok(a, "first", usage=RECOVERED))
    assert run.state is not None
    assert run.state.usage.input_tokens == 10 and run.state.usage.cost_usd == Decimal("0.01")


def test_a_result_for_a_finished_run_is_ignored_and_a_result_for_no_run_is_dead_lettered() -> None:
    run = Run(DIAMOND)
    run.send(task())
    start = run.request("start")
    run.send(ControlCommand(command_id="c", action="cancel", run_id="r1", issued_at=T0))
    decision = run.send(ok(start, 1))
    assert run.types(decision) == ["result_ignored"]
    orphan = decide(None, ok(start, 1), Context(now=T0, workflow=DIAMOND))
    assert orphan.state is None and orphan.emit == ()
    assert orphan.dead_letter == "step result for unknown run 'r1'"


# -- deadlines -------------------------------------------------------------------------------


def test_a_step_whose_result_never_comes_is_dispatched_again_then_fails() -> None:
    run = Run(LINEAR)
    run.send(task())
    run.send(ok(run.request("a"), "x"))
    run.send(ok(run.request("b"), {"said": "x"}))
    first = run.request("c")
    assert run.state is not None and run.state.next_wake() == T0 + timedelta(seconds=30)

    early = run.send(TimerFired(run_id="r1", fired_at=T0), at=T0 + timedelta(seconds=29))
    assert early == Decision()

    late = T0 + timedelta(seconds=31)
    decision = run.send(TimerFired(run_id="r1", fired_at=late), at=late)
    # The next attempt waits in a retry tier, and nothing else of the run runs: it pauses.
    assert run.types(decision) == ["step_timed_out", "step_dispatched", "run_paused"]
    second = run.request("c")
    assert second.attempt == 2 and second.idempotency_key == first.idempotency_key
    # A timeout is retried after a backoff: 5 s, the shortest retry tier, plus up to 10%.
    assert second.retry_tier == "5s" and second.not_before is not None
    assert late + timedelta(seconds=5) <= second.not_before <= late + timedelta(seconds=5.5)
    assert second.deadline_at == second.not_before + timedelta(seconds=30)

    # The first attempt's result arrives late: it is not the attempt in flight.
    stale = run.send(ok(first, "late"))
    assert run.types(stale) == ["result_ignored"]

    later = second.deadline_at + timedelta(seconds=1)
    run.send(TimerFired(run_id="r1", fired_at=later), at=later)
    (result,) = run.results()
    assert result.status == RunStatus.failed
    assert result.reason == "step c failed after 2 attempts: StepTimeout: no result within 30s"


def test_the_run_deadline_is_a_budget() -> None:
    run = Run(LINEAR)
    run.send(task(budget=Budget(max_seconds=60)))
    assert run.state is not None and run.state.next_wake() == T0 + timedelta(seconds=60)
    at = T0 + timedelta(seconds=61)
    run.send(TimerFired(run_id="r1", fired_at=at), at=at)
    (result,) = run.results()
    assert result.status == RunStatus.budget_exceeded
    assert result.reason == "deadline: the run took over 60s"
    assert {s.step: s.outcome for s in result.steps} == {
        "a": StepOutcome.cancelled,
        "b": StepOutcome.cancelled,
        "c": StepOutcome.cancelled,
    }


def test_max_steps_stops_the_run() -> None:
    run = Run(LINEAR)
    run.send(task(budget=Budget(max_steps=2)))
    run.send(ok(run.request("a"), "x"))
    run.send(ok(run.request("b"), {"said": "x"}))
    (result,) = run.results()
    assert result.status == RunStatus.budget_exceeded
    assert result.reason == "max_steps: 2 step attempts used; c not started"


def test_a_task_may_tighten_the_budget_but_not_loosen_it() -> None:
    capped = wf(
        "workflow: w\nversion: 1\nbudget: {max_steps: 5, deadline: 10m}\n"
        "steps:\n  a: {kind: transform, output: 1}\n"
    )
    run = Run(capped)
    run.send(task(budget=Budget(max_steps=50, max_seconds=30)))
    assert run.state is not None
    assert run.state.budget == Budget(max_steps=5, max_seconds=30)


# -- failures --------------------------------------------------------------------------------


def test_a_retryable_failure_is_tried_again_and_a_permanent_one_fails_the_run() -> None:
    run = Run(LINEAR)
    run.send(task())
    a1 = run.request("a")
    decision = run.send(failed(a1, "ProviderUnavailable", "503", retryable=True))
    assert run.types(decision) == ["step_failed", "step_dispatched", "run_paused"]
    a2 = run.request("a")
    assert a2.attempt == 2
    run.send(failed(a2, "ProviderRejected", "400 bad request", retryable=False))
    (result,) = run.results()
    assert result.status == RunStatus.failed
    assert result.reason == "step a failed after 2 attempts: ProviderRejected: 400 bad request"


def test_validation_failure_feeds_the_errors_back_then_gives_up() -> None:
    run = Run(VALIDATED)
    run.send(task())
    run.send(ok(run.request("draft"), "hey"))
    run.send(ok(run.request("polish"), "hey"))
    check = run.request("check")
    decision = run.send(
        failed(check, "ValidationFailed", "value: 'hey' is too short", retryable=False)
    )
    assert run.types(decision) == ["step_failed", "validation_rerun", "step_dispatched"]
    redraft = run.request("draft")
    assert redraft.attempt == 2 and redraft.idempotency_key == "r1/draft/rerun-1"
    assert redraft.params["messages"][-2:] == [  # type: ignore[index]
        {"role": "assistant", "content": "hey"},
        {
            "role": "user",
            "content": "Your previous answer did not pass validation:\n"
            "- value: 'hey' is too short\nAnswer again, fixing these problems.",
        },
    ]
    assert run.state is not None
    assert run.state.steps["polish"].phase == StepPhase.pending
    assert run.state.steps["check"].phase == StepPhase.pending

    for _ in range(2):
        run.send(ok(run.request("draft"), "hm"))
        run.send(ok(run.request("polish"), "hm"))
        run.send(failed(run.request("check"), "ValidationFailed", "too short", retryable=False))
    (result,) = run.results()
    assert result.status == RunStatus.failed
    assert result.reason == "step check failed after 3 attempts: ValidationFailed: too short"
    assert run.state.steps["draft"].reruns == 2


def test_validation_passes_after_a_rerun() -> None:
    run = Run(VALIDATED)
    run.send(task())
    run.send(ok(run.request("draft"), "hey"))
    run.send(ok(run.request("polish"), "hey"))
    run.send(failed(run.request("check"), "ValidationFailed", "too short", retryable=False))
    run.send(ok(run.request("draft"), "hello there"))
    run.send(ok(run.request("polish"), "hello there"))
    run.send(ok(run.request("check"), "hello there"))
    (result,) = run.results()
    assert result.status == RunStatus.completed and result.output == "hello there"


def test_a_template_that_fails_at_dispatch_fails_the_run_naming_the_step() -> None:
    run = Run(LINEAR)
    run.send(task(input={"n": 1, "text": "x"}))
    run.send(ok(run.request("a"), "x"))
    run.send(ok(run.request("b"), "not an object"))  # c reads steps.b.output.said
    (result,) = run.results()
    assert result.status == RunStatus.failed
    assert result.reason is not None
    assert result.reason.startswith("step c failed: TemplateRenderError: steps.c: template")
    assert "has no attribute 'said'" in result.reason


# -- rejection -------------------------------------------------------------------------------


def test_input_that_breaks_the_schema_is_rejected_naming_the_field() -> None:
    run = Run(LINEAR)
    run.send(task(input={"n": "three"}))
    (result,) = run.results()
    assert result.status == RunStatus.rejected
    assert (
        result.reason
        == "input: 'text' is a required property; input.n: 'three' is not of type 'number'"
    )
    assert run.requests() == []
    assert run.types() == ["run_rejected"]
    # The rejected run is remembered: the same task again starts nothing.
    assert run.types(run.send(task())) == ["task_duplicate"]


def test_an_unknown_workflow_is_rejected() -> None:
    run = Run(None)
    run.send(task(workflow="nope", workflow_version="abc"))
    (result,) = run.results()
    assert result.status == RunStatus.rejected
    assert result.reason == "workflow nope@abc is not deployed"


# -- cancellation ----------------------------------------------------------------------------


def test_cancel_ends_the_run_and_later_cancels_change_nothing() -> None:
    run = Run(DIAMOND)
    run.send(task(labels={"k": "v"}))
    cancel = ControlCommand(
        command_id="c1", action="cancel", run_id="r1", reason="customer withdrew", issued_at=T0
    )
    run.send(cancel)
    (result,) = run.results()
    assert result.status == RunStatus.cancelled and result.reason == "customer withdrew"
    assert result.labels == {"k": "v"}
    assert run.types(run.send(cancel)) == ["control_ignored"]
    assert len(run.results()) == 1


def test_a_cancel_before_the_task_means_the_task_never_starts() -> None:
    run = Run(DIAMOND)
    run.send(ControlCommand(command_id="c1", action="cancel", run_id="r1", issued_at=T0))
    assert [r.status for r in run.results()] == [RunStatus.cancelled]
    decision = run.send(task())
    assert run.requests(decision) == [] and run.types(decision) == ["task_duplicate"]


def test_timers_for_unknown_or_finished_runs_do_nothing() -> None:
    assert decide(None, TimerFired(run_id="x", fired_at=T0), Context(T0, LINEAR)) == Decision()
    run = Run(DIAMOND)
    run.send(task())
    run.send(ControlCommand(command_id="c1", action="cancel", run_id="r1", issued_at=T0))
    assert run.send(TimerFired(run_id="r1", fired_at=T0)) == Decision()


def test_state_round_trips_through_its_stored_form() -> None:
    run = Run(BRANCHES)
    run.send(task())
    run.send(ok(run.request("classify"), {"category": "refund", "risk": "high"}))
    assert run.state is not None
    assert RunState.from_bytes(run.state.to_bytes()) == run.state
