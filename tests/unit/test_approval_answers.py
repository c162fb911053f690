"""Edit and respond in decide(): the gated call changes, or the step is answered instead.

Each is checked like the original, counts as its reviewer's approval, and with a quorum left
reopens the request under a new id (and so a new digest) showing the proposal.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import orjson

from processors import load_tools
from streams._policies import Policies
from streams.coordinator._approvals import answer_problem
from tests.unit.test_approvals import ACCESS, KEY, ApprovalRun, decision
from tests.unit.test_decide import T0, Run, ok, task, wf
from topics import (
    ApprovalDecision,
    ApprovalRequested,
    ApprovalVerdict,
    RunStatus,
    StepRequested,
    decision_message,
    request_digest,
    sign_decision,
)

PAYING = wf(
    """
workflow: paying
version: 1
steps:
  pay:
    kind: tool
    tool: payments.refund
    args: {order: "{{ input.order }}", amount: "{{ input.amount }}"}
  note: {kind: transform, after: [pay], output: "done: {{ steps.pay.output }}"}
"""
)


def gate(quorum: int) -> Policies:
    return Policies.model_validate(
        {
            "approvals": [
                {
                    "name": "refunds",
                    "tools": ["payments.*"],
                    "approvers": ["group:leads"],
                    "quorum": quorum,
                    "reason": "refund of {{ input.amount }}",
                }
            ]
        }
    )


def paying(quorum: int = 1) -> ApprovalRun:
    run = ApprovalRun(PAYING, gate(quorum))
    run.send(task(input={"order": "o-1", "amount": 120}))
    return run


def edit(run: ApprovalRun, approval_id: str, approver: str, args: object) -> None:
    run.send(_answer(run, approval_id, approver, "edit", orjson.dumps(args).decode()))


def _answer(
    run: ApprovalRun, approval_id: str, approver: str, verdict: str, payload: str
) -> ApprovalDecision:
    """A signed edit or respond on the request with this id, as the run shows it."""
    return sign_decision(
        approval_id=approval_id,
        run_id="r1",
        request_digest=decision(approval_id, approver, run=run).request_digest,
        verdict=verdict,
        approver=approver,
        reason="because",
        key_id="k1",
        key=KEY,
        decided_at=T0,
        payload=payload,
    )


def dispatched(run: ApprovalRun, step: str) -> list[StepRequested]:
    return [e for e in run.emitted if isinstance(e, StepRequested) and e.step == step]


def test_a_request_in_front_of_a_tool_call_shows_the_call() -> None:
    run = paying()
    (asked,) = run.asked()
    assert asked.action == {
        "tool": "payments.refund",
        "args": {"order": "o-1", "amount": 120},
        "args_schema": None,  # this coordinator has no tools.yaml
    }
    assert asked.output_schema is None and asked.response is None
    assert asked.request_digest == request_digest(asked)


def test_an_edit_makes_the_call_with_the_new_arguments_under_a_new_key() -> None:
    run = paying()
    (asked,) = run.asked()
    edit(run, asked.approval_id, "user:alice", {"order": "o-1", "amount": 90})
    (pay,) = dispatched(run, "pay")
    assert pay.params == {"tool": "payments.refund", "args": {"order": "o-1", "amount": 90}}
    digest = hashlib.sha256(orjson.dumps({"amount": 90, "order": "o-1"})).hexdigest()
    assert pay.idempotency_key == f"r1/pay/edit-{digest[:16]}"
    (edited,) = run.events("approval_edited")
    assert edited.detail["after"] == {"args_digest": digest, "idempotency_key": pay.idempotency_key}  # type: ignore[index,call-overload]
    assert edited.detail["before"]["idempotency_key"] == "r1/pay"  # type: ignore[index,call-overload]
    assert run.events("step_dispatched")[0].detail["idempotency_key"] == pay.idempotency_key  # type: ignore[index,call-overload]
    run.send(ok(pay, {"refund_id": "rf-1"}))
    assert run.state is not None  # the step keeps what it was called with
    assert run.state.steps["pay"].edited_args == {"order": "o-1", "amount": 90}


def test_a_respond_answers_instead_of_the_step() -> None:
    run = paying()
    (asked,) = run.asked()
    run.send(_answer(run, asked.approval_id, "user:bob", "respond", '{"refund_id": "manual-7"}'))
    assert dispatched(run, "pay") == []
    assert run.state is not None and run.state.steps["pay"].output == {"refund_id": "manual-7"}
    (responded,) = run.events("approval_responded")
    assert responded.detail["approver"] == "user:bob"  # type: ignore[index,call-overload]
    run.send(ok(run.request("note"), "done"))
    assert run.results()[0].status == RunStatus.completed


def test_with_a_quorum_left_an_edit_reopens_the_request_and_old_answers_do_not_count() -> None:
    run = paying(quorum=2)
    first = run.asked()[0]
    run.send(decision(first.approval_id, "user:olga", run=run))  # another tenant: refused
    edit(run, first.approval_id, "user:alice", {"order": "o-1", "amount": 90})
    second = run.asked()[-1]
    assert second.approval_id == "r1/pay/2" and second.request_digest != first.request_digest
    assert second.action["args"] == {"order": "o-1", "amount": 90}  # type: ignore[index,call-overload]
    assert second.deadline == first.deadline and second.level == 0
    assert run.state is not None
    votes = run.state.steps["pay"].approval.votes  # type: ignore[union-attr]
    assert [(v.approver, v.verdict) for v in votes] == [("user:alice", ApprovalVerdict.edit)]
    assert dispatched(run, "pay") == []
    # bob's approval of what was shown first names a closed request: refused.
    run.send(decision(first.approval_id, "user:bob", run=run))
    assert run.refusals()[-1] == "no such approval request is open (decided, escalated or unknown)"
    # alice has answered already; bob approves what is proposed now.
    run.send(decision(second.approval_id, "user:alice", run=run))
    assert run.refusals()[-1] == "user:alice has decided this request already"
    run.send(decision(second.approval_id, "user:bob", run=run))
    (pay,) = dispatched(run, "pay")
    assert pay.params["args"] == {"order": "o-1", "amount": 90}  # type: ignore[index,call-overload]


def test_with_a_quorum_left_a_respond_is_shown_and_approved_by_the_others() -> None:
    run = paying(quorum=2)
    first = run.asked()[0]
    run.send(_answer(run, first.approval_id, "user:alice", "respond", '"by hand"'))
    second = run.asked()[-1]
    assert second.response == '"by hand"' and second.approval_id == "r1/pay/2"
    run.send(decision(second.approval_id, "user:bob", run=run))
    assert dispatched(run, "pay") == []
    assert run.state is not None and run.state.steps["pay"].output == "by hand"


def test_answers_that_do_not_fit_are_refused_and_recorded() -> None:
    run = paying()
    approval_id = run.asked()[0].approval_id
    edit(run, approval_id, "user:mallory", {"amount": 1})  # not an approver: the same rules
    assert run.refusals()[-1] == "user:mallory may not decide this request"
    edit(run, approval_id, "user:alice", {"order": "o-1", "amount": 120})
    assert run.refusals()[-1] == "payload: args: the arguments are the ones shown (approve instead)"
    run.send(_answer(run, approval_id, "user:alice", "edit", "[1, 2]"))
    assert run.refusals()[-1] == "payload: args: the arguments must be a JSON object"
    run.send(_answer(run, approval_id, "user:alice", "respond", "{not json"))
    assert run.refusals()[-1].startswith("payload: not JSON")
    # A v2 signature over "edit" (it cannot cover the payload) never counts.
    forged = _answer(run, approval_id, "user:alice", "edit", '{"amount": 1}')
    message = decision_message(
        approval_id,
        "r1",
        forged.request_digest,
        "edit",
        "user:alice",
        "because",
        T0,
        "k1",
    )
    v2 = "v2:" + hmac.new(KEY, message, hashlib.sha256).hexdigest()
    run.send(forged.model_copy(update={"signature": v2}))
    assert run.refusals()[-1].startswith("bad signature: a v2 signature covers no payload")
    assert dispatched(run, "pay") == [] and run.state is not None
    assert run.state.steps["pay"].approval is not None  # still open, nothing changed


def test_an_approval_step_can_be_answered_but_not_edited() -> None:
    flow = wf(
        """
workflow: asked
version: 1
steps:
  approve: {kind: approval, approvers: [group:leads], reason: "ok?"}
  after: {kind: transform, after: [approve], output: "{{ steps.approve.output }}"}
"""
    )
    run = ApprovalRun(flow)
    run.send(task())
    (asked,) = run.asked()
    assert asked.action is None
    edit(run, asked.approval_id, "user:alice", {"x": 1})
    assert run.refusals()[-1] == (
        "r1/approve/1 gates no tool call, so there is nothing to edit "
        "(approve, reject or respond instead)"
    )
    run.send(_answer(run, asked.approval_id, "user:alice", "respond", '{"plan": "B"}'))
    assert run.state is not None and run.state.steps["approve"].output == {"plan": "B"}
    assert run.request("after").step == "after"


def test_a_respond_must_fit_the_steps_output_schema() -> None:
    flow = wf(
        """
workflow: drafted
version: 1
steps:
  draft:
    kind: llm
    model: fast
    prompt: "draft"
    output_schema: {type: object, required: [text], properties: {text: {type: string}}}
"""
    )
    policies = Policies.model_validate(
        {"approvals": [{"name": "drafts", "kinds": ["llm"], "approvers": ["group:leads"]}]}
    )
    run = ApprovalRun(flow, policies)
    run.send(task())
    (asked,) = run.asked()
    assert asked.output_schema == {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
    }
    run.send(_answer(run, asked.approval_id, "user:alice", "respond", '{"text": 5}'))
    assert run.refusals()[-1] == "payload: output.text: 5 is not of type 'string'"
    run.send(_answer(run, asked.approval_id, "user:alice", "respond", '{"text": "hi"}'))
    assert run.results()[0].status == RunStatus.completed
    assert run.results()[0].output == {"text": "hi"}


def test_the_docs_example_loads_and_its_policy_gates_its_tool_call() -> None:
    import yaml

    from processors import ToolRegistry, ToolsConfig
    from streams.coordinator import Context, decide
    from tests.integration.test_approval_answers import doc_blocks

    blocks = doc_blocks()
    tools = ToolRegistry(ToolsConfig.model_validate(yaml.safe_load(blocks["tools.yaml"])))
    policies = Policies.model_validate(yaml.safe_load(blocks["policies.yaml"]))
    flow = wf(blocks["workflows/refund-payment.yaml"])
    context = Context(now=T0, workflow=flow, policies=policies, tools=tools)
    started = decide(None, task(input={"order": "o-1", "amount": 120}), context)
    (asked,) = [e for e in started.emit if isinstance(e, ApprovalRequested)]
    assert asked.reason == "refund of 120 USD for o-1"
    assert isinstance(asked.action, dict) and asked.action["args"] == {
        "order": "o-1",
        "amount": 120,
    }
    schema = asked.action["args_schema"]
    assert isinstance(schema, dict) and schema["required"] == ["order", "amount"]
    problem = answer_problem(asked, ApprovalVerdict.edit, '{"order": "o-1", "amount": "ninety"}')
    assert problem == "payload: args.amount: 'ninety' is not of type 'integer'"


def _agent_run(tmp_path: Path) -> Run:
    from tests.unit.test_agents import AGENT, TOOLS, calls

    (tmp_path / "tools.yaml").write_text(TOOLS)
    policies = Policies.model_validate(
        {"approvals": [{"name": "payments", "tools": ["refund"], "approvers": ["group:leads"]}]}
    )
    run = Run(AGENT, tools=load_tools(tmp_path / "tools.yaml"), policies=policies, access=ACCESS)
    run.send(task())
    run.send(
        ok(
            run.request("help"),
            calls(("c1", "refund", {"id": "A-1"}), ("c2", "order_status", {"id": "A-1"})),
        )
    )
    run.send(ok(run.request("help:2"), {"status": "shipped"}))
    return run


def _asked(run: Run) -> ApprovalRequested:
    return next(e for e in run.emitted if isinstance(e, ApprovalRequested))


def _signed(asked: ApprovalRequested, verdict: str, payload: str) -> ApprovalDecision:
    return sign_decision(
        approval_id=asked.approval_id,
        run_id="r1",
        request_digest=asked.request_digest,
        verdict=verdict,
        approver="user:alice",
        reason=None,
        key_id="k1",
        key=KEY,
        decided_at=T0,
        payload=payload,
    )


def test_an_edit_of_an_agents_tool_call_is_the_call_made_and_what_policies_see(
    tmp_path: Path,
) -> None:
    run = _agent_run(tmp_path)
    asked = _asked(run)
    assert asked.step == "help:1" and isinstance(asked.action, dict)
    assert asked.action["args"] == {"id": "A-1"} and asked.action["args_schema"] is not None
    run.send(_signed(asked, "edit", '{"id": 5}'))  # breaks the tool's schema
    assert run.types()[-1] == "approval_refused"
    run.send(_signed(asked, "edit", '{"id": "A-2"}'))
    call = run.request("help:1")
    assert call.params == {"tool": "refund", "args": {"id": "A-2"}}
    assert call.idempotency_key.startswith("r1/help/turn-1/call-0/edit-")
    run.send(ok(call, {"refunded": "A-2"}))
    turn = run.request("help")
    assert turn.attempt == 2  # both calls answered: the model's next turn
    assert '{"refunded":"A-2"}' in str(turn.params)


def test_a_respond_to_an_agents_tool_call_answers_the_model_without_a_call(
    tmp_path: Path,
) -> None:
    run = _agent_run(tmp_path)
    run.send(_signed(_asked(run), "respond", '"refund queued by hand"'))
    assert [r for r in run.emitted if isinstance(r, StepRequested) and r.step == "help:1"] == []
    turn = run.request("help")
    assert turn.attempt == 2 and "refund queued by hand" in str(turn.params)
