"""Tracing without a broker: configuration, trace context in headers and run state, spans."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from streams._config import load_settings
from streams._tracing import PendingSpan, Tracing, context_of, headers_for, otlp_endpoint
from streams.coordinator import Context, decide
from streams.coordinator._state import RunTrace
from streams.workflow import parse_workflow
from topics import (
    ConfigurationError,
    StepKind,
    StepRequested,
    StepResult,
    StepStatus,
    TaskSubmitted,
    Usage,
)

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

WORKFLOW = parse_workflow(
    """
workflow: one
version: 1
steps:
  a: {kind: llm, model: fast, prompt: "Say hi"}
""",
    "one.yaml",
)


@dataclass
class Record:
    """What the services read of an aiokafka record."""

    topic: str = "baton.steps.llm"
    partition: int = 2
    offset: int = 41
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)


def traced(exporter: InMemorySpanExporter, **kwargs: bool) -> Tracing:
    return Tracing(exporter, worker="w1", **kwargs)


def finished(tracing: Tracing, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert tracing.flush()
    return list(exporter.get_finished_spans())


# -- configuration ---------------------------------------------------------------------------


def test_tracing_is_off_unless_asked_for() -> None:
    assert load_settings({}).tracing == "off"
    assert load_settings({"BATON_TRACING": "otlp"}).tracing == "otlp"
    assert load_settings({}).tracing_content is False


def test_a_bad_tracing_switch_fails_naming_it() -> None:
    with pytest.raises(ConfigurationError, match=r"tracing \(environment variable BATON_TRACING\)"):
        load_settings({"BATON_TRACING": "jaeger"})


def test_the_otlp_endpoint_follows_the_opentelemetry_variables() -> None:
    assert otlp_endpoint({}) == "http://localhost:4318/v1/traces"
    assert otlp_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == (
        "http://c:4318/v1/traces"
    )
    # The signal's own variable is the whole URL, and wins.
    assert (
        otlp_endpoint(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t.example/otlp/traces",
            }
        )
        == "https://t.example/otlp/traces"
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://collector:4317"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
    ],
)
def test_a_bad_otlp_endpoint_fails_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        otlp_endpoint({variable: value})


# -- trace context ---------------------------------------------------------------------------


def test_a_traceparent_header_round_trips() -> None:
    headers = headers_for(0x1234, 0xABCD, sampled=True)
    assert headers == [("traceparent", b"00-00000000000000000000000000001234-000000000000abcd-01")]
    found = context_of(headers)
    assert found is not None
    assert (found.trace_id, found.span_id, found.trace_flags.sampled) == (0x1234, 0xABCD, True)


@pytest.mark.parametrize(
    "headers",
    [
        (),
        (("other", b"x"),),
        (("traceparent", b"not a traceparent"),),
        (("traceparent", b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),),
    ],
)
def test_no_valid_traceparent_is_no_context(headers: tuple[tuple[str, bytes], ...]) -> None:
    assert context_of(headers) is None


def test_a_run_continues_its_callers_trace_or_starts_one() -> None:
    tracing = traced(InMemorySpanExporter())
    joined = tracing.run_trace((("traceparent", CALLER.encode()),))
    assert joined.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert joined.parent_id == "00f067aa0ba902b7"
    assert joined.sampled and len(joined.span_id) == 16
    unsampled = tracing.run_trace((("traceparent", CALLER[:-2].encode() + b"00"),))
    assert not unsampled.sampled
    alone = tracing.run_trace(())
    assert alone.parent_id is None and len(alone.trace_id) == 32
    assert alone.trace_id != tracing.run_trace(()).trace_id


def test_a_run_keeps_its_trace_in_its_state_and_an_untraced_one_stores_nothing_new() -> None:
    task = TaskSubmitted(task_id="r1", workflow="one", input={})
    run = RunTrace(trace_id="ab" * 16, span_id="cd" * 8, parent_id="ef" * 8)
    started = decide(None, task, Context(now=T0, workflow=WORKFLOW, trace=run)).state
    assert started is not None and started.trace == run
    assert type(started).from_bytes(started.to_bytes()).trace == run
    untraced = decide(None, task, Context(now=T0, workflow=WORKFLOW)).state
    assert untraced is not None and untraced.trace is None
    assert b"trace" not in untraced.to_bytes()


# -- spans -------------------------------------------------------------------------------------


def test_pending_spans_are_emitted_under_their_chosen_ids() -> None:
    exporter = InMemorySpanExporter()
    tracing = traced(exporter)
    start = 1_700_000_000_000_000_000
    tracing.emit(
        [
            PendingSpan("run", SpanKind.INTERNAL, 7, 70, None, True, start, start + 9, {"a": 1}),
            PendingSpan("send", SpanKind.PRODUCER, 7, 71, 70, True, start + 1, 0, {}, "boom"),
            PendingSpan("dropped", SpanKind.INTERNAL, 8, 80, 81, False, start, start + 1, {}),
        ]
    )
    spans = {s.name: s for s in finished(tracing, exporter)}
    assert set(spans) == {"run", "send"}, "a span of an unsampled trace is not recorded"
    run, send = spans["run"], spans["send"]
    assert (run.context.trace_id, run.context.span_id, run.parent) == (7, 70, None)
    assert (run.start_time, run.end_time) == (start, start + 9)
    assert send.parent is not None and send.parent.span_id == 70
    assert send.context.span_id == 71 and send.kind is SpanKind.PRODUCER
    assert send.end_time is not None and send.end_time > start + 1, "ended at emission"
    assert send.status.description == "boom"
    assert send.resource.attributes["service.instance.id"] == "w1"


def request(kind: StepKind, params: dict[str, object]) -> StepRequested:
    return StepRequested(
        run_id="r1",
        step="a",
        kind=kind,
        attempt=1,
        idempotency_key="r1/a",
        workflow="one",
        workflow_version="v",
        params=params,  # type: ignore[arg-type]  # JSON
        dispatched_at=T0,
        deadline_at=T0 + timedelta(minutes=1),
    )


def result(output: object, usage: Usage | None = None) -> StepResult:
    return StepResult(
        run_id="r1",
        step="a",
        attempt=1,
        status=StepStatus.ok,
        output=output,  # type: ignore[arg-type]  # JSON
        usage=usage,
        started_at=T0,
        finished_at=T0 + timedelta(milliseconds=250),
        worker="w1",
    )


CHAT = {"route": "fast", "messages": [{"role": "user", "content": "a secret prompt"}]}
USAGE = Usage(input_tokens=12, output_tokens=30, route="fast", provider="openai", model="gpt-x")


@pytest.mark.parametrize("capture", [False, True])
def test_a_model_call_is_a_chat_span_with_its_content_only_when_asked(capture: bool) -> None:
    exporter = InMemorySpanExporter()
    tracing = traced(exporter, capture_content=capture)
    parent = context_of(headers_for(5, 50, sampled=True))
    assert parent is not None
    step = tracing.step(
        parent, Record(), request(StepKind.llm, CHAT), result("an answer", USAGE), 0, "res", 2
    )
    sent = context_of(step.headers)
    step.end()
    spans = {s.name: s for s in finished(tracing, exporter)}
    assert set(spans) == {"process baton.steps.llm", "chat gpt-x", "send res"}
    process, chat, send = spans["process baton.steps.llm"], spans["chat gpt-x"], spans["send res"]
    assert process.parent is not None and process.parent.span_id == 50
    assert chat.parent is not None and chat.parent.span_id == process.context.span_id
    assert send.parent is not None and send.parent.span_id == process.context.span_id
    assert sent is not None and sent.span_id == send.context.span_id
    attributes = dict(chat.attributes or {})
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "gpt-x"
    assert attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["gen_ai.usage.output_tokens"] == 30
    assert chat.kind is SpanKind.CLIENT
    assert chat.end_time is not None and chat.start_time is not None
    assert chat.end_time - chat.start_time == 250_000_000
    everything = " ".join(str(v) for s in spans.values() for v in (s.attributes or {}).values())
    assert ("a secret prompt" in everything) is capture
    assert ("an answer" in everything) is capture
