"""Approvals: people decide, and the coordinator holds the run until they have.

An ``approval`` step, or a policy that gates a step, opens an approval request: the run emits
``ApprovalRequested`` and waits. Its id ``<run>/<step>/<n>`` numbers the run's requests, so
no id is used twice in a run's life (validation re-runs and re-drives rebuild steps, not the
run's counter), and its ``request_digest`` fixes what reviewers were shown.

A decision counts only if it is signed (the ``v2`` form) with a known key, names the open
request by id and digest, was made while that request was open (not before it was asked, not
after its deadline) and arrives before the deadline, comes from an allowed approver who may
act for the run's tenant, and is that approver's first. Anything else is refused and
recorded (``approval_refused``, with the reason). One rejection ends the run ``rejected``;
``quorum`` distinct approvals let it go on. When the deadline passes, the request escalates
to the next level of its path; at the end of the path the step's ``on_timeout`` decides
(reject, by default).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from pydantic import JsonValue

from processors import TemplateRenderError, compile_template, render_value
from streams.coordinator._state import ApprovalState, RunState, StepPhase, Vote
from streams.coordinator._transition import Transition
from streams.workflow import ApprovalStep, EscalationLevel
from topics import (
    ApprovalDecision,
    ApprovalRequested,
    ApprovalVerdict,
    RunStatus,
    request_digest,
    verify_decision,
)

__all__ = [
    "approval_request",
    "ask_budget_approval",
    "check_approval_deadlines",
    "gate",
    "on_decision",
    "open_approval_step",
]

#: The gate ``budgets.on_breach: approve`` opens (policies.yaml names cannot start with @).
BUDGET_GATE = "@budget"


@dataclass(frozen=True)
class _Rule:
    """What an approval step and an approval policy have in common."""

    approvers: list[str]
    quorum: int
    timeout: float
    escalate_to: list[EscalationLevel]
    on_timeout: str
    reason: str
    show: JsonValue
    policy: str | None

    def level(self, index: int) -> tuple[list[str], int, float]:
        if index == 0:
            return self.approvers, self.quorum, self.timeout
        step = self.escalate_to[index - 1]
        return step.approvers, step.quorum, step.timeout or self.timeout

    @property
    def levels(self) -> int:
        return 1 + len(self.escalate_to)


def _rule_of(t: Transition, name: str, policy: str | None) -> _Rule:
    if policy is None:
        spec = t.wf.step(name)
        assert isinstance(spec, ApprovalStep)
        return _Rule(
            spec.approvers,
            spec.quorum,
            t.wf.timeout(name),
            spec.escalate_to,
            spec.on_timeout,
            spec.reason,
            spec.show,
            None,
        )
    if policy == BUDGET_GATE:
        budgets = t.context.policies.budgets
        return _Rule(
            budgets.approvers,
            1,
            budgets.approval_timeout,
            [],
            "reject",
            "",
            None,
            BUDGET_GATE,
        )
    found = next(p for p in t.context.policies.approvals if p.name == policy)
    return _Rule(
        found.approvers,
        found.quorum,
        found.timeout,
        found.escalate_to,
        found.on_timeout,
        found.reason,
        None,
        found.name,
    )


def open_approval_step(t: Transition, name: str) -> None:
    """Start an approval step: ask, and wait."""
    _ask(t, name, _rule_of(t, name, None), level=0)


def ask_budget_approval(t: Transition, name: str, why: str) -> None:
    """Ask ``budgets.approvers`` whether a step may go over the run's budget."""
    rule = _rule_of(t, name, BUDGET_GATE)
    _ask(t, name, replace(rule, reason=why), level=0)


def gate(t: Transition, name: str, facts: dict[str, Any]) -> bool:
    """Whether a step must wait for a policy's approval (asking for it if not asked yet).

    ``facts`` describes the step for the policies' conditions (name, kind, tool, route).
    """
    step = t.steps[name]
    if step.approval is not None:
        return True  # asked already: still waiting
    context = t.template_context(name)
    for policy in t.context.policies.approvals:
        if policy.name in step.cleared:
            continue
        try:
            matches = policy.matches(t.old.workflow, facts, context)
        except TemplateRenderError as exc:
            t.fail_step(name, "TemplateRenderError", f"policy {policy.name}: {exc}")
            return True
        if matches:
            _ask(t, name, _rule_of(t, name, policy.name), level=0)
            return True
    return False


def _ask(t: Transition, name: str, rule: _Rule, *, level: int) -> None:
    step = t.steps[name]
    approvers, quorum, timeout = rule.level(level)
    context = t.template_context(name)
    try:
        reason = rule.reason
        if rule.policy != BUDGET_GATE and reason:
            reason = str(compile_template(reason).render(context))
        shown = (
            render_value(rule.show, context)
            if rule.show is not None
            else {k: context[k] for k in ("input", "steps", "call") if k in context}
        )
    except TemplateRenderError as exc:
        t.fail_step(name, "TemplateRenderError", f"steps.{name}: {exc}")
        return
    if not reason:
        reason = f"policy {rule.policy}" if rule.policy else f"approval step {name}"
    # Runs from before the run-wide counter count on from the steps' own counters.
    asked = max([t.get("approvals_asked"), *(s.approvals_asked for s in t.steps.values())])
    approval = ApprovalState(
        approval_id=f"{t.old.run_id}/{name}/{asked + 1}",
        level=level,
        approvers=approvers,
        quorum=quorum,
        deadline=t.now + timedelta(seconds=timeout),
        reason=reason,
        context=shown,
        requested_at=t.now,
        policy=rule.policy,
        cost_usd=t.get("usage").cost_usd,
    )
    request = _request(t.old, name, approval)
    approval = approval.model_copy(update={"request_digest": request.request_digest})
    changes: dict[str, Any] = {"approval": approval, "approvals_asked": step.approvals_asked + 1}
    if rule.policy is None:
        changes.update(phase=StepPhase.dispatched, deadline_at=None, dispatched_at=t.now)
    t.set_step(name, **changes)
    t.set(approvals_asked=asked + 1)
    t.emit.append(request)
    t.note(
        "approval_escalated" if level else "approval_requested",
        name,
        detail={
            "approval_id": approval.approval_id,
            "level": level,
            "approvers": list(approvers),
            "quorum": quorum,
            "deadline": approval.deadline.isoformat(),
            "policy": rule.policy,
            "reason": reason,
            "request_digest": request.request_digest,
        },
    )


def _request(state: RunState, name: str, approval: ApprovalState) -> ApprovalRequested:
    """The ``ApprovalRequested`` an open request is, its digest computed when not stored."""
    request = ApprovalRequested(
        approval_id=approval.approval_id,
        run_id=state.run_id,
        step=name,
        workflow=state.workflow,
        tenant=state.tenant,
        reason=approval.reason,
        approvers=approval.approvers,
        quorum=approval.quorum,
        level=approval.level,
        deadline=approval.deadline,
        context=approval.context,
        cost_usd=approval.cost_usd,
        requested_at=approval.requested_at,
    )
    digest = approval.request_digest or request_digest(request)
    return request.model_copy(update={"request_digest": digest})


def approval_request(state: RunState, name: str) -> ApprovalRequested | None:
    """A step's open request exactly as it was emitted (what reviewers see and decide)."""
    step = state.steps.get(name)
    if step is None or step.approval is None or state.finished:
        return None
    return _request(state, name, step.approval)


def _refuse(t: Transition, decision: ApprovalDecision, why: str, step: str | None) -> None:
    t.note(
        "approval_refused",
        step,
        detail={
            "approval_id": decision.approval_id,
            "approver": decision.approver,
            "verdict": str(decision.verdict),
            "reason": why,
        },
    )


def on_decision(t: Transition, decision: ApprovalDecision) -> None:
    """Weigh one decision: refuse it (recorded), or count it."""
    access = t.context.access
    problem = verify_decision(decision, access.keys)
    if problem is not None:
        _refuse(t, decision, f"bad signature: {problem}", None)
        return
    found = next(
        (
            name
            for name, step in t.steps.items()
            if step.approval is not None and step.approval.approval_id == decision.approval_id
        ),
        None,
    )
    if not t.running:
        _refuse(t, decision, "the run has ended", found)
        return
    if found is None:
        why = "no such approval request is open (decided, escalated or unknown)"
        _refuse(t, decision, why, None)
        return
    approval = t.steps[found].approval
    assert approval is not None
    misplaced = _out_of_place(t, found, approval, decision)
    if misplaced is not None:
        _refuse(t, decision, misplaced, found)
        return
    if not access.allows(approval.approvers, decision.approver):
        _refuse(t, decision, f"{decision.approver} may not decide this request", found)
        return
    if not access.acts_for(decision.approver, t.old.tenant):
        _refuse(t, decision, f"{decision.approver} may not act for tenant {t.old.tenant!r}", found)
        return
    if any(vote.approver == decision.approver for vote in approval.votes):
        _refuse(t, decision, f"{decision.approver} has decided this request already", found)
        return
    votes = [
        *approval.votes,
        Vote(
            approver=decision.approver,
            verdict=decision.verdict,
            reason=decision.reason,
            at=decision.decided_at,
        ),
    ]
    t.set_step(found, approval=approval.model_copy(update={"votes": votes}))
    t.note(
        "approval_decided",
        found,
        detail={
            "approval_id": approval.approval_id,
            "approver": decision.approver,
            "verdict": str(decision.verdict),
            "reason": decision.reason,
        },
    )
    if decision.verdict == ApprovalVerdict.reject:
        why = f": {decision.reason}" if decision.reason else ""
        _resolve(t, found, approved=False, why=f"{found} rejected by {decision.approver}{why}")
    elif sum(v.verdict == ApprovalVerdict.approve for v in votes) >= approval.quorum:
        _resolve(t, found, approved=True, why="approved")


def _out_of_place(
    t: Transition, name: str, approval: ApprovalState, decision: ApprovalDecision
) -> str | None:
    """Why a decision does not answer the open request as it stands now, if it does not."""
    digest = _request(t.old, name, approval).request_digest
    if decision.request_digest != digest:
        return "it names another request: its request_digest is not the open request's"
    if decision.decided_at < approval.requested_at:
        return (
            f"decided at {decision.decided_at.isoformat()}, before the request was opened "
            f"at {approval.requested_at.isoformat()}"
        )
    if decision.decided_at > approval.deadline:
        return (
            f"decided at {decision.decided_at.isoformat()}, after the request's deadline "
            f"{approval.deadline.isoformat()}"
        )
    if t.now >= approval.deadline:
        return f"arrived after the request's deadline {approval.deadline.isoformat()}"
    return None


def _resolve(t: Transition, name: str, *, approved: bool, why: str) -> None:
    step = t.steps[name]
    approval = step.approval
    assert approval is not None
    if not approved:
        t.set_step(name, approval=None)
        t.finish(RunStatus.rejected, why)
        return
    if approval.policy is not None:
        t.set_step(name, approval=None, cleared=[*step.cleared, approval.policy])
        return  # the gate is open: the caller advances, and the step starts
    output: JsonValue = {
        "verdict": "approve",
        "approvers": [v.approver for v in approval.votes],
        "reasons": [v.reason for v in approval.votes if v.reason],
    }
    t.set_step(name, approval=None)
    ms = (t.now - approval.requested_at).total_seconds() * 1000
    t.succeed(name, step.attempt, output, None, ms)


def check_approval_deadlines(t: Transition) -> None:
    """Escalate requests past their deadline; at the end of the path, apply on_timeout."""
    for name in list(t.steps):
        if not t.running:
            return
        approval = t.steps[name].approval
        if approval is None or approval.deadline > t.now:
            continue
        rule = _rule_of(t, name, approval.policy)
        if approval.level + 1 < rule.levels:
            _ask(t, name, rule, level=approval.level + 1)
            continue
        t.note(
            "approval_timed_out",
            name,
            detail={"approval_id": approval.approval_id, "on_timeout": rule.on_timeout},
        )
        if rule.on_timeout == "approve":
            _resolve(t, name, approved=True, why="approved on timeout")
        elif rule.on_timeout == "fail":
            t.set_step(name, approval=None)
            t.fail_step(name, "ApprovalTimeout", f"no decision by {approval.deadline.isoformat()}")
        else:
            why = f"{name}: no decision at level {approval.level} in time"
            _resolve(t, name, approved=False, why=why)
