"""An MCP tool in a workflow, on the real broker.

The worker spawns the test MCP server (built with the official SDK, ``tests/mcp_server.py``)
over stdio from its tools.yaml, lists its tools, and ``tool`` steps call them like any tool:
the run completes with the tool's answer, and each call carried the step's idempotency key
and, tracing being on, the run's W3C trace context in its ``_meta``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streams._client import BatonClient
from tests.integration.workers import CODEC, Cluster, Workers
from topics import RunStatus, TaskSubmitted, partition_for

SERVER = Path(__file__).resolve().parents[1] / "mcp_server.py"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"

WORKFLOW = """
workflow: sums
version: 1
input: {type: object, required: [a, b], properties: {a: {type: integer}, b: {type: integer}}}
steps:
  add: {kind: tool, tool: calc.add, args: {a: "{{ input.a }}", b: "{{ input.b }}"}}
  who: {kind: tool, tool: calc.whoami, after: [add]}
output:
  sum: "{{ steps.add.output.sum }}"
  key: "{{ steps.who.output.meta['io.baton/idempotency-key'] }}"
  traceparent: "{{ steps.who.output.meta.traceparent }}"
  protocol: "{{ steps.who.output.protocol }}"
"""


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export (the spans are not what is tested)."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        pass


@pytest.fixture
def collector() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, collector: int) -> Cluster:
    (tmp_path / "tools.yaml").write_text(
        f"""
mcp_servers:
  calc:
    command: {sys.executable}
    args: [{SERVER}, stdio]
    protocol: "2026-07-28"
    timeout_s: 30
"""
    )
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        extra_env={
            "BATON_TOOLS_FILE": str(tmp_path / "tools.yaml"),
            "BATON_TRACING": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    cluster.deploy(sums=WORKFLOW)
    return cluster


async def test_a_tool_step_calls_an_mcp_tool_and_the_run_completes_with_its_answer(
    cluster: Cluster, workers: Workers
) -> None:
    workers.start("w1")
    catalog = cluster.catalog
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        task = TaskSubmitted(task_id="mcp-1", workflow="sums", input={"a": 2, "b": 40})
        await producer.send_and_wait(
            catalog.tasks.name,
            CODEC.encode(task),
            key=b"mcp-1",
            partition=partition_for("mcp-1", catalog.partitions),
            headers=[("traceparent", CALLER.encode())],
        )
    finally:
        await producer.stop()
    async with BatonClient(cluster.bootstrap, catalog) as client:
        results = await client.wait(["mcp-1"], timeout_s=90)
    assert "mcp-1" in results, "the run ended with a result"
    result = results["mcp-1"]
    assert result.status == RunStatus.completed, result.reason
    assert isinstance(result.output, dict)
    traceparent = str(result.output.pop("traceparent"))
    assert result.output == {"sum": 42, "key": "mcp-1/who", "protocol": "2026-07-28"}
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "01"), "the caller's trace"
    assert len(span_id) == 16 and span_id != "0" * 16
