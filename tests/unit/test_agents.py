"""Agent steps in decide(): tool calls become durable steps, results feed the next turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from processors import ToolRegistry, load_tools
from streams._access import Access
from streams._policies import Policies
from streams.coordinator import RunState
from streams.workflow import parse_workflow
from tests.unit.test_decide import Run, failed, ok, task
from topics import ApprovalRequested, RunEvent, RunStatus, StepKind

AGENT = parse_workflow(
    """
workflow: w
version: 1
steps:
  help:
    kind: agent
    model: fast
    system: You help with orders.
    prompt: "{{ input.text }}"
    tools: [order_status, refund]
    max_turns: 3
    tool_retry: {attempts: 2}
"""
)

TOOLS = """
tools:
  order_status:
    kind: http
    description: Where an order is.
    base_url: https://orders.example.com
    path: "/orders/{{ args.id }}"
    args_schema: {type: object, required: [id], properties: {id: {type: string}}}
  refund:
    kind: http
    description: Refund an order.
    base_url: https://payments.example.com
    method: POST
    path: /refunds
    body: {order: "{{ args.id }}"}
    args_schema: {type: object, required: [id], properties: {id: {type: string}}}
"""


@pytest.fixture
def registry(tmp_path: Path) -> ToolRegistry:
    path = tmp_path / "tools.yaml"
    path.write_text(TOOLS)
    return load_tools(path)


def calls(*items: tuple[str, str, dict[str, Any]], error: str | None = None) -> dict[str, Any]:
    """An agent turn's output asking for tools: (call id, tool, arguments)."""
    return {
        "type": "tool_calls",
        "assistant": {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": i, "name": n, "arguments": a} for i, n, a in items],
        },
        "calls": [
            {"id": i, "name": n, "arguments": a, "arguments_error": error} for i, n, a in items
        ],
    }


def state(run: Run) -> RunState:
    assert run.state is not None
    return run.state


def test_tool_calls_run_in_parallel_as_steps_and_their_results_feed_the_next_turn(
    registry: ToolRegistry,
) -> None:
    run = Run(AGENT, tools=registry)
    run.send(task(input={"text": "where is A-1 and A-2?"}))
    turn1 = run.request("help")
    assert turn1.kind == StepKind.agent
    assert [t["name"] for t in turn1.params["tools"]] == ["order_status", "refund"]  # type: ignore[index]

    run.send(
        ok(
            turn1,
            calls(("c1", "order_status", {"id": "A-1"}), ("c2", "order_status", {"id": "A-2"})),
        )
    )
    both = run.requests()
    assert [(r.step, r.kind) for r in both] == [
        ("help:1", StepKind.tool),
        ("help:2", StepKind.tool),
    ]
    assert [r.params for r in both] == [
        {"tool": "order_status", "args": {"id": "A-1"}},
        {"tool": "order_status", "args": {"id": "A-2"}},
    ]
    assert [r.idempotency_key for r in both] == ["r1/help/turn-1/call-0", "r1/help/turn-1/call-1"]
    assert "agent_turn" in run.types(run.last)

    # The second answers first; the turn waits for both, then sends them back in call order.
    assert not run.requests(run.send(ok(both[1], {"where": "depot"})))
    run.send(ok(both[0], {"where": "van"}))
    turn2 = run.requests()
    assert [r.step for r in turn2] == ["help"]
    messages = turn2[0].params["messages"]  # type: ignore[index]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert [m["tool_call_id"] for m in messages[3:]] == ["c1", "c2"]
    assert messages[3]["content"] == '{"where":"van"}'

    run.send(ok(turn2[0], {"type": "final", "content": "A-1 is on the van, A-2 at the depot"}))
    [result] = run.results()
    assert result.status == RunStatus.completed
    assert result.output == "A-1 is on the van, A-2 at the depot"
    assert [(s.step, s.kind, s.outcome) for s in result.steps] == [
        ("help", "agent", "succeeded"),
        ("help:1", "tool", "succeeded"),
        ("help:2", "tool", "succeeded"),
    ]


def test_a_redispatched_call_keeps_its_idempotency_key(registry: ToolRegistry) -> None:
    run = Run(AGENT, tools=registry)
    run.send(task())
    run.send(ok(run.request("help"), calls(("c1", "refund", {"id": "A-1"}))))
    first = run.request("help:1")
    run.send(failed(first, "ToolUnavailable", "503", retryable=True))
    again = run.request("help:1")
    assert again.attempt == first.attempt + 1
    assert again.idempotency_key == first.idempotency_key == "r1/help/turn-1/call-0"


def test_unknown_tools_and_bad_arguments_go_back_to_the_model_without_a_call(
    registry: ToolRegistry,
) -> None:
    run = Run(AGENT, tools=registry)
    run.send(task())
    turn = run.request("help")
    asked = calls(("c1", "delete_everything", {"url": "https://evil.example/x"}))
    asked["calls"][0]["arguments_error"] = "there is no tool 'delete_everything'"
    run.send(ok(turn, asked))
    sent = run.requests()
    assert [r.kind for r in sent] == [StepKind.agent], "nothing but the next turn is dispatched"
    tool_message = sent[0].params["messages"][-1]  # type: ignore[index]
    assert tool_message["is_error"] is True
    assert "delete_everything" in tool_message["content"]
    assert "tool_call_refused" in run.types()


def test_a_tool_outside_the_allowed_list_is_refused_even_if_the_model_claims_it(
    registry: ToolRegistry,
) -> None:
    narrow = parse_workflow(
        AGENT.source.replace("tools: [order_status, refund]", "tools: [order_status]")
    )
    run = Run(narrow, tools=registry)
    run.send(task())
    run.send(ok(run.request("help"), calls(("c1", "refund", {"id": "A-1"}))))
    assert [r.kind for r in run.requests()] == [StepKind.agent]
    refused = [
        e for e in run.last.emit if isinstance(e, RunEvent) and e.type == "tool_call_refused"
    ]
    assert refused and "not one of this agent's tools" in str(refused[0].detail)


def test_max_turns_ends_the_step(registry: ToolRegistry) -> None:
    run = Run(AGENT, tools=registry)
    run.send(task())
    for turn in range(3):
        run.send(ok(run.request("help"), calls((f"c{turn}", "order_status", {"id": "A"}))))
        if turn < 2:
            run.send(ok(run.request(f"help:{turn + 1}"), {"where": "van"}))
    [result] = run.results()
    assert result.status == RunStatus.failed
    assert "MaxTurnsExceeded" in (result.reason or "")
    assert "max_turns=3" in (result.reason or "")


def test_a_tool_call_that_fails_for_good_answers_the_model_with_its_error(
    registry: ToolRegistry,
) -> None:
    run = Run(AGENT, tools=registry)
    run.send(task())
    run.send(ok(run.request("help"), calls(("c1", "order_status", {"id": "A-9"}))))
    run.send(failed(run.request("help:1"), "ToolRejected", "404 no such order", retryable=False))
    [nxt] = run.requests()
    assert nxt.step == "help"
    last = nxt.params["messages"][-1]  # type: ignore[index]
    assert last["is_error"] and "404 no such order" in last["content"]
    assert state(run).status is None, "the run goes on"


def test_a_late_copy_of_a_settled_turn_makes_no_second_set_of_calls(
    registry: ToolRegistry,
) -> None:
    run = Run(AGENT, tools=registry)
    run.send(task())
    turn = run.request("help")
    run.send(ok(turn, calls(("c1", "order_status", {"id": "A"}))))
    run.send(ok(turn, calls(("c1", "order_status", {"id": "A"}))))
    assert not run.requests()
    assert run.types() == ["result_ignored"]


def test_a_policy_on_tool_names_gates_the_call_until_approved(registry: ToolRegistry) -> None:
    policies = Policies.model_validate(
        {"approvals": [{"name": "payments", "tools": ["refund"], "approvers": ["group:finance"]}]}
    )
    run = Run(AGENT, tools=registry, policies=policies, access=Access())
    run.send(task())
    run.send(
        ok(
            run.request("help"),
            calls(("c1", "refund", {"id": "A-1"}), ("c2", "order_status", {"id": "A-1"})),
        )
    )
    assert [r.step for r in run.requests()] == ["help:2"], "only the ungated call starts"
    [asked] = [e for e in run.last.emit if isinstance(e, ApprovalRequested)]
    assert asked.step == "help:1"
    assert asked.context["call"] == {  # type: ignore[index]
        "tool": "refund",
        "arguments": {"id": "A-1"},
        "agent": "help",
        "turn": 1,
    }


def test_an_agent_without_a_registry_fails_naming_the_setting() -> None:
    run = Run(AGENT)
    run.send(task())
    [result] = run.results()
    assert result.status == RunStatus.failed
    assert "BATON_TOOLS_FILE" in (result.reason or "")


def test_tool_and_retrieve_steps_render_their_templates() -> None:
    flow = parse_workflow(
        """
workflow: w
version: 1
steps:
  find: {kind: retrieve, source: docs, query: "about {{ input.text }}", top_k: 2}
  act: {kind: tool, after: [find], tool: order_status, args: {id: "{{ input.text }}", n: 3}}
"""
    )
    run = Run(flow)
    run.send(task(input={"text": "A-7"}))
    find = run.request("find")
    assert (find.kind, find.params) == (
        StepKind.retrieve,
        {"source": "docs", "query": "about A-7", "top_k": 2},
    )
    run.send(ok(find, [{"text": "..."}]))
    act = run.request("act")
    assert (act.kind, act.params) == (
        StepKind.tool,
        {"tool": "order_status", "args": {"id": "A-7", "n": 3}},
    )
    assert act.idempotency_key == "r1/act"
