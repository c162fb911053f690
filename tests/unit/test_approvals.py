"""Approvals in decide(): requests, signed decisions, quorum, refusals, escalation, policy gates.

And what makes a decision unforgeable and unrepeatable: ids never reused in a run's life
(validation re-runs, re-drives), the request digest, the request's open window, the tenant.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from streams._access import Access
from streams._policies import Policies
from streams.coordinator import VALIDATION_FAILED, Context, RunState, decide
from tests.unit.test_decide import T0, Run, failed, ok, task, wf
from topics import (
    ApprovalDecision,
    ApprovalRequested,
    ControlAction,
    ControlCommand,
    RunEvent,
    RunStatus,
    StepOutcome,
    StepRequested,
    TimerFired,
    request_digest,
    sign_decision,
)

KEY = b"approvals-unit-test-signing-key-0123456789"
ACCESS = Access(
    groups={
        "alice": frozenset({"leads"}),
        "bob": frozenset({"leads"}),
        "carol": frozenset({"managers"}),
        "mallory": frozenset(),
        "olga": frozenset({"leads"}),
    },
    tenants={"olga": frozenset({"other"})},
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

    def refusals(self) -> list[str]:
        return [str(e.detail["reason"]) for e in self.events("approval_refused")]  # type: ignore[index]

    def digest(self, approval_id: str) -> str:
        return next(a.request_digest for a in self.asked() if a.approval_id == approval_id)


def decision(
    approval_id: str,
    approver: str,
    verdict: str = "approve",
    *,
    key: bytes = KEY,
    digest: str | None = None,
    run: ApprovalRun | None = None,
    decided_at: datetime = T0,
    **more: Any,
) -> ApprovalDecision:
    """A signed decision; its request digest is the request's (from ``run``) unless given."""
    if digest is None:
        found = [a for a in run.asked() if a.approval_id == approval_id] if run else []
        digest = found[0].request_digest if found else "0" * 64
    return sign_decision(
        approval_id=approval_id,
        run_id="r1",
        request_digest=digest,
        verdict=verdict,
        approver=approver,
        reason=more.get("reason"),
        key_id=more.get("key_id", "k1"),
        key=key,
        decided_at=decided_at,
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
    noted = [e.type for e in run.last.emit if isinstance(e, RunEvent)]
    assert noted[-2:] == ["approval_requested", "run_paused"]
    assert not [e for e in run.last.emit if isinstance(e, StepRequested)]
    assert run.state is not None and run.state.next_wake() == T0 + timedelta(hours=1)


def test_a_quorum_of_two_needs_two_distinct_approvers() -> None:
    run = started()
    run.send(decision("r1/approve/1", "user:alice", reason="fine", run=run))
    assert not run.results()
    run.send(decision("r1/approve/1", "user:alice", run=run))  # the same approver again
    assert run.events("approval_refused")[-1].detail["reason"] == (  # type: ignore[index]
        "user:alice has decided this request already"
    )
    assert not run.results()
    run.send(decision("r1/approve/1", "user:bob", run=run))
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
    run.send(decision("r1/approve/1", "user:alice", "reject", reason="too generous", run=run))
    (result,) = run.results()
    assert result.status == RunStatus.rejected
    assert result.reason == "approve rejected by user:alice: too generous"
    assert {s.step: s.outcome for s in result.steps}["send"] == StepOutcome.cancelled


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (
            lambda r: decision("r1/approve/1", "user:mallory", run=r),
            "user:mallory may not decide this request",
        ),
        (
            lambda r: decision("r1/approve/1", "user:carol", run=r),
            "user:carol may not decide this request",
        ),
        (
            lambda r: decision("r1/approve/1", "user:alice", key=b"x" * 40, run=r),
            "bad signature: the signature does not match",
        ),
        (
            lambda r: decision("r1/approve/1", "user:alice", key_id="k9", run=r),
            "bad signature: unknown signing key 'k9'",
        ),
        (
            lambda r: decision("r1/approve/9", "user:alice"),
            "no such approval request is open (decided, escalated or unknown)",
        ),
        (
            lambda r: decision("r1/approve/1", "user:alice", run=r).model_copy(
                update={"verdict": "reject"}
            ),
            "bad signature: the signature does not match",
        ),
        (
            lambda r: decision("r1/approve/1", "user:alice", run=r).model_copy(
                update={"signature": decision("r1/approve/1", "user:alice", run=r).signature[3:]}
            ),
            "bad signature: not a v2 or v3 signature (no other form is accepted)",
        ),
        (
            lambda r: decision("r1/approve/1", "user:alice", digest="1" * 64),
            "it names another request: its request_digest is not the open request's",
        ),
        (
            lambda r: decision("r1/approve/1", "user:olga", run=r),
            "user:olga may not act for tenant 'default'",
        ),
        (
            lambda r: decision(
                "r1/approve/1", "user:alice", run=r, decided_at=T0 - timedelta(seconds=1)
            ),
            "decided at 2026-11-21T11:59:59+00:00, before the request was opened at "
            "2026-11-21T12:00:00+00:00",
        ),
        (
            lambda r: decision(
                "r1/approve/1", "user:alice", run=r, decided_at=T0 + timedelta(hours=1, seconds=1)
            ),
            "decided at 2026-11-21T13:00:01+00:00, after the request's deadline "
            "2026-11-21T13:00:00+00:00",
        ),
    ],
)
def test_bad_decisions_are_refused_and_recorded(bad: Any, why: str) -> None:
    run = started()
    run.send(bad(run))
    (refused,) = run.events("approval_refused")
    assert refused.detail["reason"] == why  # type: ignore[index]
    assert not run.results()
    assert run.state is not None and run.state.steps["approve"].approval is not None


def test_a_replayed_decision_after_the_run_went_on_changes_nothing() -> None:
    run = started()
    first = decision("r1/approve/1", "user:alice", run=run)
    run.send(first)
    run.send(decision("r1/approve/1", "user:bob", run=run))
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
    run.send(decision(first.approval_id, "user:alice", run=run, decided_at=later))
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
    run.send(decision("r1/approve/2", "user:carol", run=run, decided_at=later), at=later)
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
    run.send(decision(asked.approval_id, "user:carol", run=run))
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
    big.send(decision(big.asked()[0].approval_id, "user:carol", "reject", reason="no", run=big))
    assert big.results()[0].status == RunStatus.rejected


def test_a_decision_for_an_unknown_run_is_dead_lettered() -> None:
    refused = decide(None, decision("r1/x/1", "user:alice"), Context(now=T0, workflow=None))
    assert refused.dead_letter == "approval decision for unknown run 'r1'"


# -- ids, digests and the open window ----------------------------------------------------------


def test_a_request_carries_the_digest_of_what_it_shows() -> None:
    run = started()
    (asked,) = run.asked()
    assert asked.request_digest == request_digest(asked)
    assert len(asked.request_digest) == 64
    (noted,) = run.events("approval_requested")
    assert noted.detail["request_digest"] == asked.request_digest  # type: ignore[index]
    assert run.state is not None and run.state.approvals_asked == 1


def test_a_late_decision_is_refused_even_before_the_timer_fires() -> None:
    run = started()
    deadline = T0 + timedelta(hours=1)
    in_time = decision("r1/approve/1", "user:alice", run=run, decided_at=deadline)
    run.send(in_time, at=deadline + timedelta(seconds=1))  # no timer has fired yet
    assert run.refusals() == ["arrived after the request's deadline 2026-11-21T13:00:00+00:00"]
    assert run.state is not None and run.state.steps["approve"].approval is not None
    assert run.state.steps["approve"].approval.votes == []
    # The timer then escalates as usual.
    late = deadline + timedelta(seconds=2)
    run.send(TimerFired(run_id="r1", fired_at=late), at=late)
    assert [a.approval_id for a in run.asked()] == ["r1/approve/1", "r1/approve/2"]


RECHECKED = wf(
    """
workflow: payouts
version: 1
steps:
  approve: {kind: approval, approvers: [group:leads], timeout: 1h,
            reason: "pay {{ input.to }} {{ input.amount }} USD"}
  check: {kind: validate, after: [approve], value: "{{ steps.approve.output.reasons | join(' ') }}",
          rules: [{check: "'recheck' not in value", message: "a reviewer asked for a re-check"}],
          on_fail: {retry_step: approve, max: 2}}
  pay: {kind: transform, after: [check], output: "paid {{ input.to }}"}
"""
)


def test_a_decision_replayed_after_a_validation_rerun_is_refused() -> None:
    run = ApprovalRun(RECHECKED)
    run.send(task(input={"to": "bob", "amount": 10}))
    first = decision("r1/approve/1", "user:alice", reason="recheck", run=run)
    run.send(first)
    run.send(failed(run.request("check"), VALIDATION_FAILED, "a reviewer asked", retryable=False))
    assert [a.approval_id for a in run.asked()] == ["r1/approve/1", "r1/approve/2"]
    assert run.state is not None and run.state.steps["approve"].approvals_asked == 1
    run.send(first)  # the first request's decision, replayed as it was signed
    assert run.refusals() == ["no such approval request is open (decided, escalated or unknown)"]
    assert run.state.steps["approve"].approval is not None
    assert run.state.steps["approve"].approval.votes == []
    # Re-pointed at the new request, its signature no longer matches.
    moved = first.model_copy(update={"approval_id": "r1/approve/2"})
    run.send(moved)
    assert run.refusals()[-1] == "bad signature: the signature does not match"
    run.send(decision("r1/approve/2", "user:bob", run=run))
    assert run.request("check").attempt == 2


def test_a_decision_replayed_after_a_redrive_is_refused() -> None:
    flow = wf(
        "workflow: w\nversion: 1\nsteps:\n"
        "  approve: {kind: approval, approvers: [group:leads], quorum: 2, timeout: 10m,"
        " on_timeout: fail}\n"
        "  after: {kind: transform, after: [approve], output: done}\n"
    )
    run = ApprovalRun(flow)
    run.send(task())
    alice = decision("r1/approve/1", "user:alice", run=run)
    run.send(alice)
    end = T0 + timedelta(minutes=11)
    run.send(TimerFired(run_id="r1", fired_at=end), at=end)
    assert run.results()[-1].status == RunStatus.failed
    redrive = ControlCommand(
        command_id="c1", action=ControlAction.redrive, run_id="r1", step="approve", issued_at=end
    )
    run.send(redrive, at=end)
    assert [a.approval_id for a in run.asked()] == ["r1/approve/1", "r1/approve/2"]
    run.send(alice, at=end)
    assert run.refusals() == ["no such approval request is open (decided, escalated or unknown)"]
    assert run.state is not None and run.state.steps["approve"].approval is not None
    assert run.state.steps["approve"].approval.votes == []


def test_runs_from_before_the_run_wide_counter_count_on_from_their_steps() -> None:
    run = started()
    assert run.state is not None
    approve = run.state.steps["approve"]
    assert approve.approval is not None
    # As an older release stored it: no run-wide counter, no stored digest, three asks.
    older = approve.model_copy(
        update={
            "approvals_asked": 3,
            "approval": approve.approval.model_copy(update={"request_digest": ""}),
        }
    )
    run.state = RunState.model_validate(
        {**run.state.model_dump(), "approvals_asked": 0, "steps": {**run.state.steps}}
    ).model_copy(update={"steps": {**run.state.steps, "approve": older}})
    run.send(decision("r1/approve/1", "user:alice", run=run))  # the digest, computed: counted
    assert run.events("approval_decided")
    later = T0 + timedelta(hours=1, seconds=1)
    run.send(TimerFired(run_id="r1", fired_at=later), at=later)
    assert run.asked()[-1].approval_id == "r1/approve/4"
