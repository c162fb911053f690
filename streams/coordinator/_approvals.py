"""Approvals: people decide, and the coordinator holds the run until they have.

An ``approval`` step, or a policy that gates a step, opens an approval request: the run emits
``ApprovalRequested`` and waits. A decision counts only if it is signed with a known key, is
for the request that is open, comes from an allowed approver, and is that approver's first.
Anything else is refused and recorded (``approval_refused``). One rejection ends the run
``rejected``; ``quorum`` distinct approvals let it go on. When the deadline passes, the
request escalates to the next level of its path; at the end of the path the step's
``on_timeout`` decides (reject, by default).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from pydantic import JsonValue

from processors import TemplateRenderError, compile_template, render_value
from streams.coordinator._state import ApprovalState, StepPhase, Vote
from streams.coordinator._transition import Transition
from streams.workflow import ApprovalStep, EscalationLevel
from topics import (
    ApprovalDecision,
    ApprovalRequested,
    ApprovalVerdict,
    RunStatus,
    verify_decision,
)

__all__ = [
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
    number = step.approvals_asked + 1
    approval = ApprovalState(
        approval_id=f"{t.old.run_id}/{name}/{number}",
        level=level,
        approvers=approvers,
        quorum=quorum,
        deadline=t.now + timedelta(seconds=timeout),
        reason=reason,
        context=shown,
        requested_at=t.now,
        policy=rule.policy,
    )
    changes: dict[str, Any] = {"approval": approval, "approvals_asked": number}
    if rule.policy is None:
        changes.update(phase=StepPhase.dispatched, deadline_at=None, dispatched_at=t.now)
    t.set_step(name, **changes)
    t.emit.append(
        ApprovalRequested(
            approval_id=approval.approval_id,
            run_id=t.old.run_id,
            step=name,
            workflow=t.old.workflow,
            tenant=t.old.tenant,
            reason=reason,
            approvers=approvers,
            quorum=quorum,
            level=level,
            deadline=approval.deadline,
            context=shown,
            cost_usd=t.get("usage").cost_usd,
            requested_at=t.now,
        )
    )
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
        },
    )


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
    problem = verify_decision(decision, t.context.access.keys)
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
    if not t.context.access.allows(approval.approvers, decision.approver):
        _refuse(t, decision, f"{decision.approver} may not decide this request", found)
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
