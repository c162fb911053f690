"""Approvals in decide(): requests, signed decisions, quorum, refusals, escalation, policy gates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from streams._access import Access
from streams._policies import Policies
from streams.coordinator import Context, decide
from tests.unit.test_decide import T0, Run, ok, task, wf
from topics import (
    ApprovalDecision,
    ApprovalRequested,
    RunEvent,
    RunStatus,
    StepOutcome,
    StepRequested,
    TimerFired,
    sign_decision,
)

KEY = b"0123456789abcdef-secret"
ACCESS = Access(
    groups={
        "alice": frozenset({"leads"}),
        "bob": frozenset({"leads"}),
        "carol": frozenset({"managers"}),
        "mallory": frozenset(),
    },
    keys={"k1": KEY},
)

APPROVAL = wf(
    """
workflow: refunds
version: 1
steps:
  draft: {kind: transform, output: "refund {{ input.amount }}"}
  approve: {kind: approval, after: [draft], approvers: [group:leads], quorum: 2, timeout: 1h,
            escalate_to: [group:managers], reason: "refund of {{ input.amount }} USD"}
  send: {kind: transform, after: [approve], output: "sent: {{ steps.draft.output }}"}
"""
)


class ApprovalRun(Run):
    def __init__(self, workflow: Any, policies: Policies | None = None) -> None:
        super().__init__(workflow)
        self.policies = policies or Policies()

    def send(self, event: Any, *, at: Any = None) -> Any:  # type: ignore[override]
        context = Context(
            now=at or self.now, workflow=self.workflow, policies=self.policies, access=ACCESS
        )
        decision = decide(self.state, event, context)
        if decision.state is not None:
            self.state = decision.state
        self.emitted.extend(decision.emit)
        self.last = decision
        return decision

    def asked(self) -> list[ApprovalRequested]:
        return [e for e in self.emitted if isinstance(e, ApprovalRequested)]

    def events(self, type_: str) -> list[RunEvent]:
        return [e for e in self.emitted if isinstance(e, RunEvent) and e.type == type_]


def decision(
    approval_id: str, approver: str, verdict: str = "approve", *, key: bytes = KEY, **more: Any
) -> ApprovalDecision:
    return sign_decision(
        approval_id=approval_id,
        run_id="r1",
        verdict=verdict,
        approver=approver,
        reason=more.get("reason"),
        key_id=more.get("key_id", "k1"),
        key=key,
        decided_at=T0,
    )


def started() -> ApprovalRun:
    run = ApprovalRun(APPROVAL)
    run.send(task(input={"amount": 120}))
    run.send(ok(run.request("draft"), "refund 120"))
    return run


def test_an_approval_step_asks_and_parks_the_run() -> None:
    run = started()
    (asked,) = run.asked()
    assert asked.approval_id == "r1/approve/1" and asked.step == "approve"
    assert asked.approvers == ["group:leads"] and asked.quorum == 2 and asked.level == 0
    assert asked.reason == "refund of 120 USD"
    assert asked.deadline == T0 + timedelta(hours=1)
    assert asked.context == {
        "input": {"amount": 120},
        "steps": {"draft": {"output": "refund 120", "status": "succeeded"}},
    }
    assert [e.type for e in run.last.emit if isinstance(e, RunEvent)][-1] == "approval_requested"
    assert not [e for e in run.last.emit if isinstance(e, StepRequested)]
    assert run.state is not None and run.state.next_wake() == T0 + timedelta(hours=1)


def test_a_quorum_of_two_needs_two_distinct_approvers() -> None:
    run = started()
    run.send(decision("r1/approve/1", "user:alice", reason="fine"))
    assert not run.results()
    run.send(decision("r1/approve/1", "user:alice"))  # the same approver again
    assert run.events("approval_refused")[-1].detail["reason"] == (  # type: ignore[index]
        "user:alice has decided this request already"
    )
    assert not run.results()
    run.send(decision("r1/approve/1", "user:bob"))
    run.send(ok(run.request("send"), "sent: refund 120"))
    (result,) = run.results()
    assert result.status == RunStatus.completed
    assert [e.detail["approver"] for e in run.events("approval_decided")] == [  # type: ignore[index]
        "user:alice",
        "user:bob",
    ]
    assert run.state is not None
    assert run.state.steps["approve"].output == {
        "verdict": "approve",
        "approvers": ["user:alice", "user:bob"],
        "reasons": ["fine"],
    }


def test_one_rejection_ends_the_run_rejected() -> None:
    run = started()
    run.send(decision("r1/approve/1", "user:alice", "reject", reason="too generous"))
    (result,) = run.results()
    assert result.status == RunStatus.rejected
    assert result.reason == "approve rejected by user:alice: too generous"
    assert {s.step: s.outcome for s in result.steps}["send"] == StepOutcome.cancelled


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (lambda: decision("r1/approve/1", "user:mallory"), "user:mallory may not decide"),
        (lambda: decision("r1/approve/1", "user:carol"), "user:carol may not decide"),
        (lambda: decision("r1/approve/1", "user:alice", key=b"x" * 20), "bad signature: the sign"),
        (lambda: decision("r1/approve/1", "user:alice", key_id="k9"), "bad signature: unknown"),
        (lambda: decision("r1/approve/9", "user:alice"), "no such approval request is open"),
        (
            lambda: decision("r1/approve/1", "user:alice").model_copy(update={"verdict": "reject"}),
            "bad signature: the signature does not match",
        ),
    ],
)
def test_bad_decisions_are_refused_and_recorded(bad: Any, why: str) -> None:
    run = started()
    run.send(bad())
    (refused,) = run.events("approval_refused")
    assert why in refused.detail["reason"]  # type: ignore[index]
    assert not run.results()
    assert run.state is not None and run.state.steps["approve"].approval is not None


def test_a_replayed_decision_after_the_run_went_on_changes_nothing() -> None:
    run = started()
    first = decision("r1/approve/1", "user:alice")
    run.send(first)
    run.send(decision("r1/approve/1", "user:bob"))
    dispatched = len([e for e in run.emitted if isinstance(e, StepRequested)])
    run.send(first)
    assert (
        "no such approval request is open"
        in run.events("approval_refused")[-1].detail[  # type: ignore[index]
            "reason"
        ]
    )
    assert len([e for e in run.emitted if isinstance(e, StepRequested)]) == dispatched


def test_a_deadline_escalates_then_the_end_of_the_path_rejects() -> None:
    run = started()
    later = T0 + timedelta(hours=1, seconds=1)
    run.send(TimerFired(run_id="r1", fired_at=later), at=later)
    first, second = run.asked()
    assert second.approval_id == "r1/approve/2" and second.level == 1
    assert second.approvers == ["group:managers"] and second.quorum == 1
    assert second.deadline == later + timedelta(hours=1)
    assert run.events("approval_escalated")
    # The first level's request is closed: its approvers cannot decide any more.
    run.send(decision(first.approval_id, "user:alice"))
    assert (
        "no such approval request is open"
        in run.events("approval_refused")[-1].detail[  # type: ignore[index]
            "reason"
        ]
    )
    end = later + timedelta(hours=1, seconds=1)
    run.send(TimerFired(run_id="r1", fired_at=end), at=end)
    (result,) = run.results()
    assert result.status == RunStatus.rejected
    assert result.reason == "approve: no decision at level 1 in time"
    assert run.events("approval_timed_out")


def test_the_escalated_level_decides() -> None:
    run = started()
    later = T0 + timedelta(hours=2)
    run.send(TimerFired(run_id="r1", fired_at=later), at=later)
    run.send(decision("r1/approve/2", "user:carol"))
    assert [e.step for e in run.emitted if isinstance(e, StepRequested)][-1] == "send"


@pytest.mark.parametrize(("on_timeout", "status"), [("approve", None), ("fail", RunStatus.failed)])
def test_on_timeout_at_the_end_of_the_path(on_timeout: str, status: RunStatus | None) -> None:
    flow = wf(
        "workflow: w\nversion: 1\nsteps:\n"
        "  approve: {kind: approval, approvers: [user:alice], timeout: 10m,"
        f" on_timeout: {on_timeout}}}\n"
        "  after: {kind: transform, after: [approve], output: done}\n"
    )
    run = ApprovalRun(flow)
    run.send(task())
    end = T0 + timedelta(minutes=11)
    run.send(TimerFired(run_id="r1", fired_at=end), at=end)
    if status is None:
        assert run.request("after").step == "after"
    else:
        (result,) = run.results()
        assert result.status == status


POLICY = Policies.model_validate(
    {
        "approvals": [
            {
                "name": "big-refunds",
                "when": "input.amount > 500",
                "kinds": ["transform"],
                "steps": ["pay*"],
                "approvers": ["group:managers"],
                "reason": "refund of {{ input.amount }}",
            }
        ]
    }
)

NO_APPROVAL_STEP = wf(
    """
workflow: plain
version: 1
steps:
  draft: {kind: transform, output: "draft"}
  pay: {kind: transform, after: [draft], output: "paid {{ input.amount }}"}
"""
)


def test_a_policy_gates_a_step_in_a_workflow_without_an_approval_step() -> None:
    run = ApprovalRun(NO_APPROVAL_STEP, POLICY)
    run.send(task(input={"amount": 900}))
    run.send(ok(run.request("draft"), "draft"))
    (asked,) = run.asked()
    assert asked.step == "pay" and asked.approvers == ["group:managers"]
    assert asked.reason == "refund of 900"
    assert run.events("approval_requested")[0].detail["policy"] == "big-refunds"  # type: ignore[index]
    assert [e.step for e in run.emitted if isinstance(e, StepRequested)] == ["draft"]
    run.send(decision(asked.approval_id, "user:carol"))
    pay = run.request("pay")
    assert pay.attempt == 1
    run.send(ok(pay, "paid 900"))
    assert run.results()[0].status == RunStatus.completed


def test_a_policy_that_does_not_match_asks_nothing_and_a_rejection_ends_the_run() -> None:
    small = ApprovalRun(NO_APPROVAL_STEP, POLICY)
    small.send(task(input={"amount": 20}))
    small.send(ok(small.request("draft"), "draft"))
    assert small.request("pay") and not small.asked()
    big = ApprovalRun(NO_APPROVAL_STEP, POLICY)
    big.send(task(input={"amount": 900}))
    big.send(ok(big.request("draft"), "draft"))
    big.send(decision(big.asked()[0].approval_id, "user:carol", "reject", reason="no"))
    assert big.results()[0].status == RunStatus.rejected


def test_a_decision_for_an_unknown_run_is_dead_lettered() -> None:
    refused = decide(None, decision("r1/x/1", "user:alice"), Context(now=T0, workflow=None))
    assert refused.dead_letter == "approval decision for unknown run 'r1'"
