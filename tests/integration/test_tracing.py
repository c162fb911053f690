"""OpenTelemetry traces on the real broker: one trace per run, parented across every Kafka hop.

The first test runs a coordinator and the processors in the test's process with an in-memory
span exporter, sends runs of a workflow with an llm step and a tool step (one of them with a
caller's ``traceparent`` header) and checks each run's spans: one trace per run, every span's
parent a span of that trace (processor spans under the coordinator's sends, and so on), the
GenAI attributes with the tokens the run's result records, and the caller's trace joined.

The second runs a real ``baton worker`` with ``BATON_TRACING=otlp`` exporting to an OTLP/HTTP
receiver on loopback (a plain HTTP server in the test that decodes the protobuf body) and
checks that the spans arrived with their attributes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streams._tracing import Tracing
from tests.integration.inprocess import in_process_worker
from tests.integration.workers import CODEC, Cluster, Workers, poll_decoded
from topics import RunResult, RunStatus, StepKind, TaskSubmitted, partition_for

MODELS = """
routes:
  fast:
    provider: scripted
    model: scripted-fast
    input_usd_per_mtok: 0.15
    output_usd_per_mtok: 0.60
    script:
      - reply: "an answer to {{ prompt }}, long enough to be billed some tokens"
"""

TOOLS = """
tools:
  clock:
    kind: python
    description: The current time.
    entry_point: clock
"""

WORKFLOW = """
workflow: traced
version: 1
steps:
  ask: {kind: llm, model: fast, prompt: "question {{ input.n }}: what time is it?"}
  now: {kind: tool, tool: clock, args: {timezone: UTC}, after: [ask]}
output: {answer: "{{ steps.ask.output }}", at: "{{ steps.now.output.utc }}"}
"""

RUNS = 5
#: The caller whose trace the last run joins (W3C ids, sampled).
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    tools = tmp_path / "tools.yaml"
    tools.write_text(TOOLS)
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={"BATON_TOOLS_FILE": str(tools), "BATON_CACHE_TTL": "0"},
    )
    cluster.deploy(traced=WORKFLOW)
    return cluster


async def submit(cluster: Cluster, runs: dict[str, str | None]) -> None:
    """Publish a task per run, with a ``traceparent`` header where one is given."""
    catalog = cluster.catalog
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        for n, (run_id, traceparent) in enumerate(runs.items()):
            task = TaskSubmitted(task_id=run_id, workflow="traced", input={"n": n})
            await producer.send_and_wait(
                catalog.tasks.name,
                CODEC.encode(task),
                key=run_id.encode(),
                partition=partition_for(run_id, catalog.partitions),
                headers=[("traceparent", traceparent.encode())] if traceparent else None,
            )
    finally:
        await producer.stop()


async def results_of(cluster: Cluster, run_ids: list[str]) -> dict[str, RunResult]:
    found = await poll_decoded(
        cluster,
        cluster.catalog.results.name,
        RunResult,
        lambda results: {r.run_id for r in results} >= set(run_ids),
        what=f"a result for each of {run_ids}",
        timeout=90,
    )
    return {r.run_id: r for r in found}


def run_of(span: ReadableSpan) -> str | None:
    attributes = span.attributes or {}
    run = attributes.get("baton.run.id") or attributes.get("gen_ai.conversation.id")
    return str(run) if run is not None else None


async def spans_until_runs_end(
    tracing: Tracing, exporter: InMemorySpanExporter, run_ids: list[str], timeout: float = 30
) -> dict[str, list[ReadableSpan]]:
    """Each run's spans, once every run's ``invoke_workflow`` span has been exported.

    The run span is emitted once the batch that wrote the result has committed, a moment
    after the result is readable; the spans after it (none for a run that ended) too.
    """
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.to_thread(tracing.flush)
        by_run: dict[str, list[ReadableSpan]] = defaultdict(list)
        for span in exporter.get_finished_spans():
            run = run_of(span)
            if run is not None:
                by_run[run].append(span)
        ended = {
            run
            for run, spans in by_run.items()
            if any(s.name.startswith("invoke_workflow ") for s in spans)
        }
        if ended >= set(run_ids):
            return by_run
        if time.monotonic() > deadline:
            raise AssertionError(f"no run span within {timeout}s for {set(run_ids) - ended}")
        await asyncio.sleep(0.2)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in spans if s.name == name]
    assert len(named) == 1, f"{name}: {[s.name for s in spans]}"
    return named[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_per_run_parented_across_the_kafka_hops(cluster: Cluster) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, worker="traced", prefix=cluster.prefix)
    runs: dict[str, str | None] = {f"traced-{n}": None for n in range(RUNS - 1)}
    runs["traced-joined"] = CALLER
    catalog = cluster.catalog
    steps_llm = catalog.steps(StepKind.llm).name
    steps_tool = catalog.steps(StepKind.tool).name
    step_results = catalog.step_results.name
    async with in_process_worker(cluster, tracing):
        await submit(cluster, runs)
        results = await results_of(cluster, list(runs))
        by_run = await spans_until_runs_end(tracing, exporter, list(runs))

    traces = set()
    for run_id, result in results.items():
        assert result.status == RunStatus.completed, result.reason
        spans = by_run[run_id]
        trace_ids = {s.context.trace_id for s in spans}
        assert len(trace_ids) == 1, f"{run_id}: spans in {len(trace_ids)} traces"
        traces |= trace_ids
        run_span = one(spans, "invoke_workflow traced")
        ids = {s.context.span_id: s for s in spans}
        assert len(ids) == len(spans), f"{run_id}: a span id twice"

        # Every span descends from the run's span through spans of the trace.
        for span in spans:
            seen = span
            while seen is not run_span:
                parent = parent_id(seen)
                assert parent in ids, f"{run_id}: {seen.name}'s parent is not in the run's trace"
                seen = ids[parent]

        # The run: its real start and end, the run id, the tokens its result records.
        run_attrs = attrs(run_span)
        assert run_attrs["gen_ai.operation.name"] == "invoke_workflow"
        assert run_attrs["gen_ai.conversation.id"] == run_id
        assert run_attrs["baton.run.status"] == "completed"
        assert run_attrs["gen_ai.usage.input_tokens"] == result.usage.input_tokens > 0
        assert run_attrs["gen_ai.usage.output_tokens"] == result.usage.output_tokens > 0
        assert run_span.start_time is not None and run_span.end_time is not None
        assert abs(run_span.start_time - result.started_at.timestamp() * 1e9) < 2e6
        assert abs(run_span.end_time - result.finished_at.timestamp() * 1e9) < 2e6

        # The hops: coordinator send -> processor process -> GenAI span and result send ->
        # coordinator process -> next send.
        by_name: dict[str, list[ReadableSpan]] = defaultdict(list)
        for span in spans:
            by_name[span.name].append(span)
        send_llm = one(spans, f"send {steps_llm}")
        taken = [
            s for s in by_name[f"process {steps_llm}"] if parent_id(s) == send_llm.context.span_id
        ]
        assert len(taken) == 1, "the llm request's processing is not a child of its send"
        chat = one(spans, "chat scripted-fast")
        assert parent_id(chat) == taken[0].context.span_id
        ask = next(s for s in result.steps if s.step == "ask")
        chat_attrs = attrs(chat)
        assert chat_attrs["gen_ai.operation.name"] == "chat"
        assert chat_attrs["gen_ai.provider.name"] == "scripted"
        assert chat_attrs["gen_ai.request.model"] == "scripted-fast"
        assert chat_attrs["gen_ai.conversation.id"] == run_id
        assert chat_attrs["gen_ai.usage.input_tokens"] == ask.usage.input_tokens
        assert chat_attrs["gen_ai.usage.output_tokens"] == ask.usage.output_tokens
        result_sends = [
            s for s in by_name[f"send {step_results}"] if parent_id(s) == taken[0].context.span_id
        ]
        assert len(result_sends) == 1
        settled = [
            s
            for s in by_name[f"process {step_results}"]
            if parent_id(s) == result_sends[0].context.span_id
        ]
        assert len(settled) == 1, "the coordinator's processing is not a child of the result's send"
        send_tool = one(spans, f"send {steps_tool}")
        assert parent_id(send_tool) == settled[0].context.span_id
        tool = one(spans, "execute_tool clock")
        assert attrs(tool)["gen_ai.tool.name"] == "clock"
        assert attrs(tool)["gen_ai.operation.name"] == "execute_tool"
        tool_taken = ids[parent_id(tool)]
        assert tool_taken.name == f"process {steps_tool}"
        assert parent_id(tool_taken) == send_tool.context.span_id
        one(spans, f"send {catalog.results.name}")

        # The messaging conventions, on a coordinator's and a processor's process span.
        for process in (settled[0], taken[0]):
            messaging = attrs(process)
            assert messaging["messaging.system"] == "kafka"
            assert messaging["messaging.operation.type"] == "process"
            assert messaging["messaging.destination.partition.id"] == str(
                partition_for(run_id, catalog.partitions)
            )
            assert isinstance(messaging["messaging.kafka.offset"], int)
        assert attrs(send_llm)["messaging.destination.name"] == steps_llm

        # No prompt or completion unless asked for.
        for span in spans:
            assert not {k for k in attrs(span) if k.startswith("gen_ai.input")}
            assert not {k for k in attrs(span) if k.startswith("gen_ai.output")}
            assert "gen_ai.tool.call.arguments" not in attrs(span)

    assert len(traces) == RUNS, "runs share a trace"
    joined = one(by_run["traced-joined"], "invoke_workflow traced")
    assert f"{joined.context.trace_id:032x}" == CALLER_TRACE
    assert joined.parent is not None and f"{joined.parent.span_id:016x}" == CALLER_SPAN
    for run_id in runs:
        if run_id != "traced-joined":
            alone = one(by_run[run_id], "invoke_workflow traced")
            assert alone.parent is None, f"{run_id}: a run without a caller has a parent"


class _Receiver(BaseHTTPRequestHandler):
    """POST /v1/traces: decode the protobuf export request, keep it, answer 200."""

    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if (
            self.path != "/v1/traces"
            or self.headers.get("Content-Type") != "application/x-protobuf"
        ):
            self.send_response(404)
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server.received.append(request)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def received_spans(server: ThreadingHTTPServer) -> list[tuple[str, Any, dict[str, Any]]]:
    """(service name, span, attributes) of every span the receiver decoded."""
    found = []
    for request in list(server.received):
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    values = {}
                    for a in span.attributes:
                        kind = a.value.WhichOneof("value")
                        values[a.key] = getattr(a.value, kind) if kind else None
                    found.append((resource.get("service.name", ""), span, values))
    return found


async def test_a_worker_exports_over_otlp_http(
    cluster: Cluster, workers: Workers, receiver: ThreadingHTTPServer
) -> None:
    port = receiver.server_address[1]
    workers.start(
        "otlp",
        BATON_TRACING="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_SERVICE_NAME="baton-under-test",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    runs: dict[str, str | None] = {"otlp-0": None, "otlp-1": CALLER}
    await submit(cluster, runs)
    results = await results_of(cluster, list(runs))

    deadline = time.monotonic() + 30
    while True:
        spans = received_spans(receiver)
        run_spans = {
            values.get("gen_ai.conversation.id"): span
            for _, span, values in spans
            if span.name == "invoke_workflow traced"
        }
        if set(run_spans) >= set(runs):
            break
        assert time.monotonic() < deadline, f"run spans received: {sorted(map(str, run_spans))}"
        await asyncio.sleep(0.2)

    assert {service for service, _, _ in spans} == {"baton-under-test"}
    chats = [values for _, span, values in spans if span.name == "chat scripted-fast"]
    for run_id, result in results.items():
        ask = next(s for s in result.steps if s.step == "ask")
        chat = next(c for c in chats if c["gen_ai.conversation.id"] == run_id)
        assert chat["gen_ai.provider.name"] == "scripted"
        assert chat["gen_ai.usage.input_tokens"] == ask.usage.input_tokens > 0
        assert chat["gen_ai.usage.output_tokens"] == ask.usage.output_tokens > 0
        trace_ids = {
            span.trace_id
            for _, span, values in spans
            if run_id in (values.get("baton.run.id"), values.get("gen_ai.conversation.id"))
        }
        assert trace_ids == {run_spans[run_id].trace_id}
    assert run_spans["otlp-1"].trace_id.hex() == CALLER_TRACE
    assert run_spans["otlp-1"].parent_span_id.hex() == CALLER_SPAN
    tools = [values for _, span, values in spans if span.name == "execute_tool clock"]
    assert {t["gen_ai.conversation.id"] for t in tools} >= set(runs)
    kafka = [values for _, span, values in spans if span.name.startswith("send ")]
    assert kafka and all(v["messaging.system"] == "kafka" for v in kafka)
