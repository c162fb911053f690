"""An agent on an ``openai-responses`` route, on the real broker.

The model is a loopback server speaking the OpenAI Responses wire format: its first turn asks
for a tool (a ``function_call`` item), its second answers with what the tool returned. The
tool is a loopback HTTP server. The run completes, the call reaches the tool once, the
second turn carries the call and its output as input items, and the run's cost prices the
cached input tokens at the route's cached price.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from streams._client import BatonClient
from tests.fakes.openai_server import RecordedRequest
from tests.fakes.responses_server import FakeResponsesServer, FunctionCall, ResponseAnswer
from tests.fakes.tool_server import FakeToolServer, Json
from tests.integration.workers import Cluster, Workers
from topics import RunStatus, TaskSubmitted

AGENT = """
workflow: orders
version: 1
input: {type: object, required: [text], properties: {text: {type: string}}}
steps:
  help:
    kind: agent
    model: reasoner
    system: You answer questions about orders.
    prompt: "{{ input.text }}"
    tools: [order_status]
    max_turns: 3
"""


def model(request: RecordedRequest) -> ResponseAnswer:
    """Ask for the order's status first; then answer with the tool's output."""
    items = request.body["input"]
    outputs = [i["output"] for i in items if i.get("type") == "function_call_output"]
    if not outputs:
        return ResponseAnswer(
            text=None,
            calls=(FunctionCall("order_status", {"id": "A-1"}, call_id="call_status"),),
            input_tokens=1_000,
            output_tokens=200,
            reasoning_tokens=150,
        )
    return ResponseAnswer(
        "answer: " + " | ".join(outputs),
        input_tokens=1_200,
        output_tokens=100,
        cached_tokens=1_000,
        reasoning_tokens=40,
    )


@pytest.fixture
def cluster(
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    fake_responses: FakeResponsesServer,
    tool_server: FakeToolServer,
) -> Cluster:
    fake_responses.reply(model)
    tool_server.route("GET", "/orders/A-1", Json({"order": "A-1", "where": "on the van"}))
    models = tmp_path / "models.yaml"
    models.write_text(
        "routes:\n"
        "  reasoner:\n"
        "    provider: openai-responses\n"
        "    model: o-test\n"
        f"    base_url: {fake_responses.base_url}\n"
        "    accepts_temperature: false\n"
        "    input_usd_per_mtok: 2\n"
        "    cached_input_usd_per_mtok: 0.5\n"
        "    output_usd_per_mtok: 8\n"
    )
    (tmp_path / "tools.yaml").write_text(
        f"""
tools:
  order_status:
    kind: http
    description: Where an order is.
    base_url: {tool_server.url}
    method: GET
    path: "/orders/{{{{ args.id }}}}"
    args_schema: {{type: object, required: [id], properties: {{id: {{type: string}}}}}}
"""
    )
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={"BATON_TOOLS_FILE": str(tmp_path / "tools.yaml")},
    )
    cluster.deploy(orders=AGENT)
    return cluster


async def test_an_agent_on_a_responses_route_calls_a_tool_and_completes(
    cluster: Cluster,
    workers: Workers,
    fake_responses: FakeResponsesServer,
    tool_server: FakeToolServer,
) -> None:
    workers.start("w1")
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(
            [TaskSubmitted(task_id="resp", workflow="orders", input={"text": "Where is A-1?"})]
        )
        results = await client.wait(["resp"], timeout_s=90)

    result = results["resp"]
    assert result.status == RunStatus.completed, result.reason
    assert "on the van" in str(result.output)
    [call] = tool_server.requests
    assert call.path == "/orders/A-1"
    first, second = fake_responses.requests
    assert first.body["instructions"] == "You answer questions about orders."
    assert first.body["store"] is False and "temperature" not in first.body
    assert [t["name"] for t in first.body["tools"]] == ["order_status"]
    kinds = [(i["type"], i.get("call_id")) for i in second.body["input"]]
    assert kinds == [
        ("message", None),
        ("function_call", "call_status"),
        ("function_call_output", "call_status"),
    ]
    # turn 1: 1000 in at $2, 200 out at $8; turn 2: 200 in at $2, 1000 cached at $0.50,
    # 100 out at $8 (per million tokens)
    assert result.usage.input_tokens == 2_200
    assert result.usage.output_tokens == 300
    assert result.usage.cost_usd == Decimal("0.0053")
