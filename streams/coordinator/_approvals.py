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

Reviewers have four answers. Besides ``approve`` and ``reject``, an ``edit`` approves the
gated tool call with other arguments (checked against the tool's ``args_schema``; the call
is then made with them, under an idempotency key of their own) and a ``respond`` answers
instead of the step: its output (checked against the step's output schema) becomes the
step's, and the step never runs. Both count as that reviewer's approval of what they
propose. When the quorum wants more, the request closes and a new one opens (a new id, so
a new digest; same level and deadline) showing the proposal, with that approval counted:
approvals of what was shown before do not count for what is proposed now.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
from pydantic import JsonValue

from processors import TemplateRenderError, UnknownTool, compile_template, render_value
from processors._schema import schema_problems  # the check the tool processor makes
from streams.coordinator._state import ApprovalState, RunState, StepPhase, Vote
from streams.coordinator._transition import Transition, args_digest
from streams.workflow import AgentStep, ApprovalStep, EscalationLevel, LlmStep, ToolStep
from topics import (
    ApprovalDecision,
    ApprovalRequested,
    ApprovalVerdict,
    RunStatus,
    request_digest,
    verify_decision,
)

__all__ = [
    "MAX_PAYLOAD_CHARS",
    "answer_problem",
    "approval_request",
    "ask_budget_approval",
    "check_approval_deadlines",
    "gate",
    "on_decision",
    "open_approval_step",
]

#: The gate ``budgets.on_breach: approve`` opens (policies.yaml names cannot start with @).
BUDGET_GATE = "@budget"
#: The longest payload (JSON text) an edit or a respond may carry.
MAX_PAYLOAD_CHARS = 200_000
#: The answers that say yes to something (what is shown, or what the reviewer proposes).
_YES = frozenset({ApprovalVerdict.approve, ApprovalVerdict.edit, ApprovalVerdict.respond})


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


def _action(t: Transition, name: str, context: dict[str, Any]) -> JsonValue:
    """The tool call a gate stands in front of, as it will be made; ``None`` for others.

    Raises:
        TemplateRenderError: The tool step's arguments do not render.
    """
    step = t.steps[name]
    args: JsonValue
    if step.call is not None:
        tool, args = step.call.tool, step.call.arguments
    elif isinstance(spec := t.wf.step(name), ToolStep):
        tool, args = spec.tool, render_value(spec.args, context)
    else:
        return None
    if step.edited_args is not None:
        args = step.edited_args
    schema: JsonValue = None
    if t.context.tools is not None:
        try:
            schema = dict(t.context.tools.tool(tool).args_schema)
        except UnknownTool:
            schema = None  # the processor that makes the call says so
    return {"tool": tool, "args": args, "args_schema": schema}


def _output_schema(t: Transition, name: str) -> JsonValue:
    if t.steps[name].call is not None:
        return None
    spec = t.wf.step(name)
    return spec.output_schema if isinstance(spec, LlmStep | AgentStep) else None


def _ask(
    t: Transition,
    name: str,
    rule: _Rule,
    *,
    level: int,
    deadline: datetime | None = None,
    response: str | None = None,
    votes: tuple[Vote, ...] = (),
) -> None:
    """Open a request for a step: a first ask, an escalation, or a re-ask after a proposal.

    A re-ask (``votes`` given) keeps its level and deadline and starts with the proposer's
    approval.
    """
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
        action = _action(t, name, context) if rule.policy is not None else None
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
        deadline=deadline or t.now + timedelta(seconds=timeout),
        reason=reason,
        context=shown,
        requested_at=t.now,
        policy=rule.policy,
        cost_usd=t.get("usage").cost_usd,
        action=action,
        output_schema=_output_schema(t, name),
        response=response,
        votes=list(votes),
    )
    request = _request(t.old, name, approval)
    approval = approval.model_copy(update={"request_digest": request.request_digest})
    changes: dict[str, Any] = {"approval": approval, "approvals_asked": step.approvals_asked + 1}
    if rule.policy is None:
        changes.update(phase=StepPhase.dispatched, deadline_at=None, dispatched_at=t.now)
    t.set_step(name, **changes)
    t.set(approvals_asked=asked + 1)
    t.emit.append(request)
    reasked = {"reopened_after": str(votes[-1].verdict)} if votes else {}
    t.note(
        "approval_escalated" if level and not votes else "approval_requested",
        name,
        detail={
            **reasked,
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
        action=approval.action,
        output_schema=approval.output_schema,
        response=approval.response,
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
    request = _request(t.old, found, approval)
    problem = answer_problem(request, decision.verdict, decision.payload)
    if problem is not None:
        _refuse(t, decision, problem, found)
        return
    vote = Vote(
        approver=decision.approver,
        verdict=decision.verdict,
        reason=decision.reason,
        at=decision.decided_at,
    )
    votes = [*approval.votes, vote]
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
    elif decision.verdict == ApprovalVerdict.approve:
        if sum(v.verdict in _YES for v in votes) >= approval.quorum:
            _resolve(t, found, approved=True, why="approved")
    else:
        assert decision.payload is not None  # answer_problem checked it
        _propose(t, found, request, vote, orjson.loads(decision.payload))


def answer_problem(
    request: ApprovalRequested, verdict: ApprovalVerdict, payload: str | None
) -> str | None:
    """Why an answer does not fit the request it answers, naming the field; ``None`` if it fits.

    An edit's payload is the call's new arguments: a JSON object that fits the tool's
    ``args_schema`` and differs from the arguments shown. A respond's payload is the step's
    output: any JSON that fits the step's output schema. Approve and reject carry none. The
    API answers with this at once (422); the coordinator refuses with it.
    """
    if verdict in (ApprovalVerdict.approve, ApprovalVerdict.reject):
        return None if payload is None else f"payload: {verdict.value} carries no payload"
    if payload is None:
        return f"payload: {verdict.value} needs a payload (JSON text)"
    if len(payload) > MAX_PAYLOAD_CHARS:
        return f"payload: over {MAX_PAYLOAD_CHARS} characters"
    try:
        value: JsonValue = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return f"payload: not JSON ({exc})"
    if verdict == ApprovalVerdict.respond:
        schema = request.output_schema
        if isinstance(schema, dict):
            problems = schema_problems(schema, value, "output")
            if problems:
                return "payload: " + "; ".join(problems)
        return None
    action = request.action
    if not isinstance(action, dict):
        return (
            f"{request.approval_id} gates no tool call, so there is nothing to edit "
            "(approve, reject or respond instead)"
        )
    if not isinstance(value, dict):
        return "payload: args: the arguments must be a JSON object"
    if value == action.get("args"):
        return "payload: args: the arguments are the ones shown (approve instead)"
    schema = action.get("args_schema")
    if isinstance(schema, dict):
        problems = schema_problems(schema, value, "args")
        if problems:
            return "payload: " + "; ".join(problems)
    return None


def _propose(
    t: Transition, name: str, request: ApprovalRequested, vote: Vote, value: JsonValue
) -> None:
    """An edit or a respond: apply it when it alone makes the quorum, else ask the others."""
    approval = t.steps[name].approval
    assert approval is not None
    response: str | None = None
    if vote.verdict == ApprovalVerdict.edit:
        assert isinstance(value, dict)
        before_key = t.idempotency_key(name)
        before = request.action.get("args") if isinstance(request.action, dict) else None
        t.set_step(name, edited_args=value)
        t.note(
            "approval_edited",
            name,
            detail={
                "approval_id": approval.approval_id,
                "approver": vote.approver,
                "reason": vote.reason,
                "request_digest": request.request_digest,
                "before": {"args_digest": args_digest(before), "idempotency_key": before_key},
                "after": {
                    "args_digest": args_digest(value),
                    "idempotency_key": t.idempotency_key(name),
                },
                "args": value,
            },
        )
    else:
        response = orjson.dumps(value).decode()
        t.note(
            "approval_responded",
            name,
            detail={
                "approval_id": approval.approval_id,
                "approver": vote.approver,
                "reason": vote.reason,
                "request_digest": request.request_digest,
                "output_digest": args_digest(value),
            },
        )
    if approval.quorum <= 1:
        _resolve(t, name, approved=True, why="approved", response=response)
        return
    rule = _rule_of(t, name, approval.policy)
    t.set_step(name, approval=None)  # closed: its id and digest no longer count
    _ask(
        t,
        name,
        rule,
        level=approval.level,
        deadline=approval.deadline,
        response=response,
        votes=(vote,),
    )


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


def _resolve(
    t: Transition, name: str, *, approved: bool, why: str, response: str | None = None
) -> None:
    step = t.steps[name]
    approval = step.approval
    assert approval is not None
    if not approved:
        t.set_step(name, approval=None)
        t.finish(RunStatus.rejected, why)
        return
    answer = response if response is not None else approval.response
    if answer is not None:
        _answer(t, name, orjson.loads(answer))
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


def _answer(t: Transition, name: str, output: JsonValue) -> None:
    """The step succeeds with a reviewer's output, and never runs."""
    step = t.steps[name]
    approval = step.approval
    assert approval is not None
    t.set_step(name, approval=None, edited_args=None)
    ms = (t.now - approval.requested_at).total_seconds() * 1000
    t.succeed(name, step.attempt, output, None, ms)
    if step.call is not None:
        from streams.coordinator._agents import call_finished

        call_finished(t, name)


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
            _ask(t, name, rule, level=approval.level + 1, response=approval.response)
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
