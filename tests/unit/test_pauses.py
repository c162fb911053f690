"""``run_paused`` and ``run_resumed``: a run that waits only for people or retry tiers says so.

A run pauses when nothing of it is under way and it waits for an approval or for a delayed
retry to leave its tier; it resumes when something of it runs again (a decision let it go on,
the retry's time came, its result arrived). A paused run that ends just ends.
"""

from __future__ import annotations

from datetime import timedelta

from tests.unit.test_approvals import ApprovalRun, decision, started
from tests.unit.test_decide import LINEAR, T0, Run, failed, ok, task, wf
from topics import RunEvent, RunStatus, TimerFired

PARALLEL = wf(
    """
workflow: parallel
version: 1
steps:
  flaky: {kind: llm, model: fast, prompt: "x", retry: {attempts: 3}}
  slow: {kind: llm, model: fast, prompt: "y"}
"""
)


def events(run: Run, type_: str) -> list[RunEvent]:
    return [e for e in run.emitted if isinstance(e, RunEvent) and e.type == type_]


def test_a_run_at_an_approval_pauses_and_resumes_when_the_decision_lets_it_go_on() -> None:
    run = started()
    (paused,) = events(run, "run_paused")
    assert paused.detail == {
        "waiting_for": [
            {
                "reason": "approval",
                "step": "approve",
                "approval_id": "r1/approve/1",
                "until": (T0 + timedelta(hours=1)).isoformat(),
            }
        ]
    }
    assert run.state is not None and run.state.paused_at == T0

    later = T0 + timedelta(minutes=5)
    run.send(decision("r1/approve/1", "user:alice", run=run, decided_at=later), at=later)
    assert events(run, "run_resumed") == []  # quorum 2: still waiting
    run.send(decision("r1/approve/1", "user:bob", run=run, decided_at=later), at=later)
    (resumed,) = events(run, "run_resumed")
    assert run.types()[0] == "approval_decided" and run.types()[-1] == "run_resumed"
    assert "step_dispatched" in run.types()
    assert resumed.duration_ms == 5 * 60 * 1000
    assert resumed.detail == {"paused_at": T0.isoformat()}
    assert resumed.seq > paused.seq
    assert run.state.paused_at is None


def test_a_paused_run_that_is_rejected_ends_without_resuming() -> None:
    run = started()
    run.send(decision("r1/approve/1", "user:alice", "reject", run=run))
    (result,) = run.results()
    assert result.status == RunStatus.rejected
    assert events(run, "run_resumed") == []
    assert run.state is not None and run.state.paused_at is None


def test_a_run_waiting_in_a_retry_tier_pauses_then_resumes_when_the_retry_is_due() -> None:
    run = Run(LINEAR)
    run.send(task())
    first = run.request("a")
    run.send(failed(first, "ProviderUnavailable", "503", retryable=True))
    retry = run.request("a")
    assert retry.retry_tier == "5s" and retry.not_before is not None
    (paused,) = events(run, "run_paused")
    assert paused.detail == {
        "waiting_for": [
            {
                "reason": "retry",
                "step": "a",
                "retry_tier": "5s",
                "until": retry.not_before.isoformat(),
            }
        ]
    }
    # The run is woken when the retry leaves its tier (before that attempt's deadline).
    assert run.state is not None and run.state.next_wake() == retry.not_before

    early = retry.not_before - timedelta(seconds=1)
    assert run.send(TimerFired(run_id="r1", fired_at=early), at=early).state is None
    due = retry.not_before
    run.send(TimerFired(run_id="r1", fired_at=due), at=due)
    assert run.types() == ["run_resumed"]
    (resumed,) = events(run, "run_resumed")
    assert resumed.duration_ms == (due - T0).total_seconds() * 1000
    assert run.state.paused_at is None and run.state.next_wake() == retry.deadline_at

    # Its result changes nothing more about pausing; the run goes on and completes.
    run.send(ok(retry, "x", at=due))
    assert "run_paused" not in run.types() and "run_resumed" not in run.types()


def test_a_run_with_a_step_under_way_does_not_pause_while_another_waits_in_a_tier() -> None:
    run = Run(PARALLEL)
    run.send(task())
    run.send(failed(run.request("flaky"), "ProviderUnavailable", "503", retryable=True))
    assert run.request("flaky").retry_tier is not None
    assert events(run, "run_paused") == []  # `slow` is running
    # `slow` ends while `flaky` still waits: now the run only waits.
    run.send(ok(run.request("slow"), "y"))
    assert run.types()[-1] == "run_paused"
    (paused,) = events(run, "run_paused")
    assert [w["step"] for w in paused.detail["waiting_for"]] == ["flaky"]  # type: ignore[index, call-overload]


def test_a_retry_result_that_arrives_twice_resumes_once() -> None:
    run = Run(LINEAR)
    run.send(task())
    run.send(failed(run.request("a"), "ProviderUnavailable", "503", retryable=True))
    retry = run.request("a")
    result = ok(retry, "x")
    run.send(result)
    run.send(result)
    assert len(events(run, "run_paused")) == 1 and len(events(run, "run_resumed")) == 1
    assert run.types() == ["result_ignored"]


def test_a_run_that_never_waits_has_no_pause_events() -> None:
    run = ApprovalRun(LINEAR)
    run.send(task())
    run.send(ok(run.request("a"), "x"))
    run.send(ok(run.request("b"), {"said": "x"}))
    run.send(ok(run.request("c"), "y"))
    (result,) = run.results()
    assert result.status == RunStatus.completed
    assert not events(run, "run_paused") and not events(run, "run_resumed")
    assert run.state is not None and "paused_at" not in run.state.to_bytes().decode()


ONE_STEP = wf(
    """
workflow: one
version: 1
steps:
  ask: {kind: llm, model: fast, prompt: "x", retry: {attempts: 2}}
"""
)


def test_a_retry_whose_result_comes_before_its_wake_up_resumes_the_run_first() -> None:
    run = Run(ONE_STEP)
    run.send(task())
    run.send(failed(run.request("ask"), "ProviderUnavailable", "503", retryable=True))
    retry = run.request("ask")
    assert retry.not_before is not None
    after = retry.not_before + timedelta(seconds=1)
    run.send(ok(retry, "x", at=after), at=after)
    assert run.types() == ["run_resumed", "step_succeeded", "run_completed"]
    (resumed,) = events(run, "run_resumed")
    assert resumed.at == after
