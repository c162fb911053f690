"""Agents, tools and retrieval on the real broker.

The model is a loopback server speaking Anthropic's Messages format that scripts tool calls
(``tool_use``); the tools and the search endpoint are a loopback server that records every
request it gets. Every tool call is its own durable step: these tests watch what reaches the
tool server, and what the run events say.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams._client import BatonClient
from tests.fakes.anthropic_server import FakeAnthropicServer, MessageAnswer, ToolUse
from tests.fakes.openai_server import FakeOpenAIServer, RecordedRequest
from tests.fakes.tool_server import Delay, FakeToolServer, Json
from tests.integration.approvals import publish, signed
from tests.integration.workers import Cluster, Workers, has, poll_run_events
from topics import (
    RunEvent,
    RunResult,
    RunStatus,
    TaskSubmitted,
)

SIGNING_KEY = "agents-integration-key-0123456789"

AGENT = """
workflow: support
version: 1
input: {type: object, required: [text], properties: {text: {type: string}}}
steps:
  help:
    kind: agent
    model: claude
    system: You answer questions about orders.
    prompt: "{{ input.text }}"
    tools: [order_status, refund]
    max_turns: 3
    tool_timeout: 4s
"""

NARROW = """
workflow: narrow
version: 1
input: {type: object, required: [text], properties: {text: {type: string}}}
steps:
  help:
    kind: agent
    model: claude
    prompt: "{{ input.text }}"
    tools: [order_status]
    max_turns: 2
"""

RETRIEVAL = """
workflow: grounded
version: 1
input: {type: object, required: [text], properties: {text: {type: string}}}
steps:
  local: {kind: retrieve, source: policies, query: "{{ input.text }}", top_k: 1}
  web: {kind: retrieve, source: search, query: "{{ input.text }}", top_k: 2}
  answer:
    kind: llm
    after: [local, web]
    model: gpt
    prompt: |
      Question: {{ input.text }}
      Policy: {{ steps.local.output }}
      Articles: {{ steps.web.output }}
"""


def _conversation(request: RecordedRequest) -> tuple[str, int, list[str]]:
    """The task's text, the turns made so far, and the tool results sent back."""
    messages = request.body["messages"]
    first = messages[0]["content"]
    text = first if isinstance(first, str) else first[0]["text"]
    turns = sum(1 for m in messages if m["role"] == "assistant")
    results = [
        block["content"] if isinstance(block["content"], str) else orjson.dumps(block).decode()
        for m in messages
        if m["role"] == "user" and isinstance(m["content"], list)
        for block in m["content"]
        if block.get("type") == "tool_result"
    ]
    return text, turns, results


def model(request: RecordedRequest) -> MessageAnswer:
    """The scripted model: the task's text says what it asks for in its first turn."""
    text, turns, results = _conversation(request)
    if text.startswith("loop"):
        return MessageAnswer(tool_uses=(ToolUse("order_status", {"id": "A-1"}),))
    if turns == 0 and text.startswith("two orders"):
        return MessageAnswer(
            tool_uses=(
                ToolUse("order_status", {"id": "A-1"}),
                ToolUse("order_status", {"id": "A-2"}),
            )
        )
    if turns == 0 and text.startswith("misbehave"):
        return MessageAnswer(
            tool_uses=(
                ToolUse("shell", {"cmd": "cat /etc/passwd"}),
                ToolUse("order_status", {"id": 5}),
                ToolUse("order_status", {"id": "../../admin/users"}),
                # encoded dot segments: a server that decodes %2F would climb with them
                ToolUse("order_status", {"id": "%2e%2e%2f%2e%2e%2fadmin"}),
                ToolUse("refund", {"id": "A-1"}),
            )
        )
    if turns == 0 and text.startswith("refund"):
        return MessageAnswer(tool_uses=(ToolUse("refund", {"id": "A-1"}),))
    if turns == 0 and text.startswith("slow"):
        return MessageAnswer(tool_uses=(ToolUse("order_status", {"id": "S-1"}),))
    return MessageAnswer(text="answer: " + " | ".join(results))


@pytest.fixture
def provider(fake_anthropic: FakeAnthropicServer) -> FakeAnthropicServer:
    fake_anthropic.reply(model)
    return fake_anthropic


@pytest.fixture
def tools(tool_server: FakeToolServer) -> FakeToolServer:
    tool_server.route("GET", "/orders/A-1", Json({"order": "A-1", "where": "on the van"}))
    tool_server.route("GET", "/orders/A-2", Json({"order": "A-2", "where": "at the depot"}))
    tool_server.route("GET", "/orders/S-1", Json({"order": "S-1", "where": "delivered"}))
    tool_server.route("POST", "/refunds", Json({"refund": "R-1", "status": "done"}))
    tool_server.route(
        "GET",
        "/search",
        Json({"hits": [{"article_id": "kb-7", "snippet": "Returns take 5 days.", "score": 2.5}]}),
    )
    return tool_server


@pytest.fixture
def cluster(
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    provider: FakeAnthropicServer,
    fake_openai: FakeOpenAIServer,
    tools: FakeToolServer,
) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(
        "routes:\n"
        f"  claude: {{provider: anthropic, model: claude-test, base_url: {provider.base_url}}}\n"
        f"  gpt: {{provider: openai, model: gpt-test, base_url: {fake_openai.base_url}}}\n"
    )
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "refunds.md").write_text(
        "# Refunds\n\nRefunds of damaged parcels are paid within 14 days of the claim.\n"
    )
    (docs / "shipping.md").write_text("# Shipping\n\nParcels leave the depot every morning.\n")
    (tmp_path / "tools.yaml").write_text(
        f"""
tools:
  order_status:
    kind: http
    description: Where an order is.
    base_url: {tools.url}
    method: GET
    path: "/orders/{{{{ args.id }}}}"
    timeout_s: 30
    retries: 0
    args_schema: {{type: object, required: [id], properties: {{id: {{type: string}}}}}}
  refund:
    kind: http
    description: Refund an order.
    base_url: {tools.url}
    method: POST
    path: /refunds
    body: {{order: "{{{{ args.id }}}}"}}
    args_schema: {{type: object, required: [id], properties: {{id: {{type: string}}}}}}
sources:
  policies: {{kind: local, path: docs, glob: "*.md"}}
  search:
    kind: http
    base_url: {tools.url}
    method: GET
    path: /search
    query: {{q: "{{{{ query }}}}", size: "{{{{ top_k }}}}"}}
    results: {{items: hits, id: article_id, text: snippet, score: score}}
"""
    )
    (tmp_path / "policies.yaml").write_text(
        "approvals:\n  - {name: payments, tools: [refund], approvers: [group:finance]}\n"
    )
    (tmp_path / "access.yaml").write_text(
        "reviewers:\n  fin: {token_env: BATON_TOKEN_FIN, groups: [finance]}\n"
        "signing_keys:\n  k1: {env: BATON_APPROVAL_KEY}\nsign_with: k1\n"
    )
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={
            "BATON_TOOLS_FILE": str(tmp_path / "tools.yaml"),
            "BATON_POLICIES_FILE": str(tmp_path / "policies.yaml"),
            "BATON_ACCESS_FILE": str(tmp_path / "access.yaml"),
            "BATON_TOKEN_FIN": "fin-token",
            "BATON_APPROVAL_KEY": SIGNING_KEY,
        },
    )
    cluster.deploy(support=AGENT, narrow=NARROW, grounded=RETRIEVAL)
    return cluster


async def submit(cluster: Cluster, run_id: str, workflow: str, text: str) -> None:
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([TaskSubmitted(task_id=run_id, workflow=workflow, input={"text": text})])


async def result_of(cluster: Cluster, run_id: str, timeout: float = 90) -> RunResult:
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        results = await client.wait([run_id], timeout_s=timeout)
    assert run_id in results, f"run {run_id} ended with a result"
    return results[run_id]


def events_of(events: list[RunEvent], type_: str) -> list[RunEvent]:
    return [e for e in events if e.type == type_]


async def until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"not true within {timeout}s")


async def test_an_agent_calls_two_tools_in_parallel_once_each_and_uses_the_answers(
    cluster: Cluster, workers: Workers, provider: FakeAnthropicServer, tools: FakeToolServer
) -> None:
    workers.start("w1")
    await submit(cluster, "par", "support", "two orders: where are A-1 and A-2?")
    result = await result_of(cluster, "par")

    assert result.status == RunStatus.completed, result.reason
    assert "on the van" in str(result.output) and "at the depot" in str(result.output)
    seen = {r.path: r.header("idempotency-key") for r in tools.requests}
    assert seen == {
        "/orders/A-1": "par/help/turn-1/call-0",
        "/orders/A-2": "par/help/turn-1/call-1",
    }, "each call reached the tool server once, with its own key"
    assert len(tools.requests) == 2
    events = await poll_run_events(cluster, "par", has("run_completed"))
    dispatched = {e.step: e.seq for e in events_of(events, "step_dispatched")}
    finished = {e.step: e.seq for e in events_of(events, "step_succeeded")}
    assert dispatched["help:2"] < finished["help:1"], "the calls were in flight together"
    assert [s.step for s in result.steps] == ["help", "help:1", "help:2"]
    assert len(provider.requests) == 2, "two model turns"


async def test_a_crashed_tool_worker_is_replaced_and_the_call_keeps_its_key(
    cluster: Cluster, workers: Workers, tools: FakeToolServer
) -> None:
    tools.enqueue("GET", "/orders/S-1", Delay(60))  # the first call hangs: its worker dies
    workers.start("w1", "--processors", "agent,llm,retrieve,transform,validate")
    doomed = workers.start("w2", "--no-coordinator", "--processors", "tool", ready=False)
    await submit(cluster, "crash", "support", "slow: where is S-1?")
    await until(lambda: tools.requests, timeout=60)
    doomed.kill()
    workers.start("w3", "--no-coordinator", "--processors", "tool", ready=False)
    result = await result_of(cluster, "crash")

    assert result.status == RunStatus.completed, result.reason
    assert "delivered" in str(result.output)
    keys = {r.header("idempotency-key") for r in tools.requests}
    assert len(tools.requests) >= 2 and keys == {"crash/help/turn-1/call-0"}
    events = await poll_run_events(cluster, "crash", has("run_completed"))
    assert events_of(events, "step_timed_out")[0].step == "help:1"


async def test_what_a_model_asks_outside_the_configuration_is_never_called(
    cluster: Cluster, workers: Workers, provider: FakeAnthropicServer, tools: FakeToolServer
) -> None:
    workers.start("w1")
    await submit(cluster, "evil", "narrow", "misbehave please")
    result = await result_of(cluster, "evil")

    assert result.status == RunStatus.completed, result.reason
    assert tools.requests == [], "no request left baton for any of the five calls"
    fed_back = _conversation(provider.requests[-1])[2]
    assert len(fed_back) == 5, "every call was answered, with its error"
    assert "there is no tool 'shell'" in fed_back[0]
    assert "arguments" in fed_back[1]
    assert "ToolRequestRefused" in fed_back[2] and "ToolRequestRefused" in fed_back[3]
    assert "'refund'" in fed_back[4]
    events = await poll_run_events(cluster, "evil", has("run_completed"))
    assert len(events_of(events, "tool_call_refused")) == 3  # shell, bad id type, refund


async def test_max_turns_stops_a_model_that_keeps_calling_tools(
    cluster: Cluster, workers: Workers, provider: FakeAnthropicServer, tools: FakeToolServer
) -> None:
    workers.start("w1")
    await submit(cluster, "loop", "narrow", "loop forever")
    result = await result_of(cluster, "loop")

    assert result.status == RunStatus.failed
    assert "MaxTurnsExceeded" in (result.reason or "") and "max_turns=2" in (result.reason or "")
    assert len(provider.requests) == 2
    assert len(tools.requests) == 1, "the second turn's call was not made"


async def test_a_tool_matching_an_approval_policy_waits_for_finance(
    cluster: Cluster, workers: Workers, tools: FakeToolServer
) -> None:
    workers.start("w1")
    await submit(cluster, "pay", "support", "refund order A-1")
    events = await poll_run_events(cluster, "pay", has("approval_requested"))
    asked = events_of(events, "approval_requested")[0]
    assert asked.step == "help:1"
    assert not [r for r in tools.requests if r.path == "/refunds"], "nothing paid before approval"
    assert isinstance(asked.detail, dict)
    digest = str(asked.detail["request_digest"])  # type: ignore[index]
    approval_id = str(asked.detail["approval_id"])  # type: ignore[index]
    await publish(cluster, signed(approval_id, "user:fin", key=SIGNING_KEY, digest=digest))
    result = await result_of(cluster, "pay")

    assert result.status == RunStatus.completed, result.reason
    [refund] = [r for r in tools.requests if r.path == "/refunds"]
    assert refund.header("idempotency-key") == "pay/help/turn-1/call-0"
    assert "R-1" in str(result.output)


async def test_local_and_http_retrieval_feed_an_llm_prompt(
    cluster: Cluster, workers: Workers, fake_openai: FakeOpenAIServer, tools: FakeToolServer
) -> None:
    workers.start("w1")
    await submit(cluster, "rag", "grounded", "refund for a damaged parcel")
    result = await result_of(cluster, "rag")

    assert result.status == RunStatus.completed, result.reason
    [call] = fake_openai.requests
    prompt = call.body["messages"][-1]["content"]
    assert "paid within 14 days" in prompt, "the best local passage is in the prompt"
    assert "Parcels leave the depot" not in prompt, "top_k: 1 kept only the best"
    assert "Returns take 5 days." in prompt, "the search endpoint's answer is in the prompt"
    [search] = [r for r in tools.requests if r.path == "/search"]
    assert search.query["q"] == ["refund for a damaged parcel"]
