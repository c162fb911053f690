"""OpenTelemetry traces: one trace per run, across every Kafka hop (docs/decisions/0005).

Off unless ``BATON_TRACING=otlp`` (or a test hands the services a ``Tracing``). Off, no
span, header or id is made anywhere: the services hold ``tracing=None`` and pay one branch
per record, and this module (and the SDK) is not even imported.

On, a W3C ``traceparent`` header travels on every record of a traced run: task ->
coordinator -> step request (through a retry tier too) -> processor -> step result ->
coordinator -> result (and approval requests). The spans follow the GenAI and the messaging
semantic conventions::

    invoke_workflow {workflow}    the run, from its start to its end
      process {topic}             the coordinator handling one of its records (CONSUMER)
        send {topic}              an output; its context is the record's traceparent (PRODUCER)
          process {topic}         a processor taking the request (CONSUMER)
            chat {model}          an llm or agent step's model call (CLIENT)
            execute_tool {tool}   a tool step
            send {topic}          the step's result (PRODUCER)
              process {topic}     the coordinator taking the result, and so on

A run outlives coordinator batches, workers and takeovers, so its span cannot be held open:
its ``RunTrace`` (the trace, the run span's id, the caller's span) is chosen when the run
starts and kept in its state, every hop parents to it, and the ``invoke_workflow`` span is
emitted when the run ends, under that id, with the run's start time. The coordinator's spans
are emitted once their batch has committed, as its metrics are counted: an aborted batch
leaves no span, and its inputs, read again, are traced by the batch that commits them. A
processor's spans end as its attempt is reported (at-least-once, like the attempts).

Prompts, completions, tool arguments and tool results go into spans only with
``capture_content``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from streams.coordinator._state import RunState, RunTrace
from topics import ConfigurationError, RunStatus, StepKind, StepRequested, StepResult, StepStatus

if TYPE_CHECKING:
    from streams._config import Settings

__all__ = ["Headers", "PendingSpan", "StepTrace", "Tracing", "otlp_endpoint", "tracing_from"]

#: Kafka record headers as aiokafka gives and takes them.
Headers = Sequence[tuple[str, bytes]]
Attributes = dict[str, AttributeValue]

_PROPAGATOR = TraceContextTextMapPropagator()
_FIELDS = frozenset(_PROPAGATOR.fields)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
#: Run endings that are errors of the run (a rejection or a cancellation is an outcome).
_FAILED = frozenset({RunStatus.failed, RunStatus.budget_exceeded})
_MODEL_KINDS = frozenset({StepKind.llm, StepKind.agent})
#: The OTLP/HTTP default when neither endpoint variable is set.
_DEFAULT_ENDPOINT = "http://localhost:4318"


def context_of(headers: Headers | None) -> SpanContext | None:
    """The span context a record's ``traceparent`` header names, if it names a valid one."""
    if not headers:
        return None
    carrier = {k: v.decode("latin-1") for k, v in headers if k in _FIELDS and v}
    if "traceparent" not in carrier:
        return None
    found = trace.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return found if found.is_valid else None


def headers_for(trace_id: int, span_id: int, sampled: bool) -> list[tuple[str, bytes]]:
    """The ``traceparent`` header of a record sent under a span."""
    span = NonRecordingSpan(SpanContext(trace_id, span_id, True, _flags(sampled)))
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span, Context()))
    return [(k, v.encode()) for k, v in carrier.items()]


@dataclass(slots=True)
class PendingSpan:
    """A coordinator span, recorded with its batch and emitted once the batch commits.

    Attributes:
        name: The span's name.
        kind: Consumer, producer or internal.
        trace_id: Its trace.
        span_id: Its id, chosen when it was recorded (a record's header may carry it).
        parent_id: Its parent span, or ``None`` for the root of the trace.
        sampled: Whether its trace is recorded.
        start_ns: When it started (epoch nanoseconds).
        end_ns: When it ended; 0 for "when the batch committed" (a send is seen then).
        attributes: Its attributes.
        error: The error's description, when it ended in error.
    """

    name: str
    kind: SpanKind
    trace_id: int
    span_id: int
    parent_id: int | None
    sampled: bool
    start_ns: int
    end_ns: int
    attributes: Attributes
    error: str | None = None


class _ChosenIds(IdGenerator):
    """Random ids, except for a span whose ids were chosen before it is started.

    The SDK names a span when it starts it; a coordinator span's id is chosen earlier (a
    run's span when the run starts, a send's when its record gets the header), so ``emit``
    tells the generator which ids the span it starts next has. Spans start on the event
    loop's thread only.
    """

    def __init__(self) -> None:
        self._trace_id: int | None = None
        self._span_id: int | None = None

    def choose(self, trace_id: int | None, span_id: int | None) -> None:
        self._trace_id, self._span_id = trace_id, span_id

    def generate_span_id(self) -> int:
        chosen, self._span_id = self._span_id, None
        return chosen if chosen is not None else random_span_id()

    def generate_trace_id(self) -> int:
        chosen, self._trace_id = self._trace_id, None
        return chosen if chosen is not None else random.getrandbits(128) or 1

    def is_trace_id_random(self) -> bool:
        return True


def random_span_id() -> int:
    """A new span id (never the invalid 0)."""
    return random.getrandbits(64) or 1


class StepTrace:
    """A processor's spans for one attempt: its ``process`` span, the GenAI span, the send.

    ``headers`` go on the step's result record; ``end`` once it is sent.
    """

    def __init__(self, spans: list[Span], headers: list[tuple[str, bytes]]) -> None:
        self._spans = spans
        self.headers = headers

    def end(self) -> None:
        """End the spans still open (the send, then the process span), innermost first."""
        for span in reversed(self._spans):
            span.end()


class Tracing:
    """A worker's tracer: its own provider, exporting in the background.

    Args:
        exporter: Where finished spans go (OTLP/HTTP, or a test's in-memory exporter).
        service: ``service.name`` of every span.
        worker: ``service.instance.id``: this worker's name.
        capture_content: Put prompts, completions and tool arguments and results in spans.
        prefix: The topic prefix (it names the consumer groups).
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        service: str = "baton",
        worker: str | None = None,
        capture_content: bool = False,
        prefix: str = "baton",
    ) -> None:
        attributes: Attributes = {"service.name": service}
        if worker:
            attributes["service.instance.id"] = worker
        self._ids = _ChosenIds()
        # The worker's own provider (never the global one): several workers in one process,
        # as in tests, keep apart. Every run is traced, unless its caller's trace is not.
        self.provider = TracerProvider(
            sampler=ParentBased(ALWAYS_ON),
            resource=Resource.create(attributes),
            id_generator=self._ids,
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("baton")
        self.capture_content = capture_content
        self.coordinator_group = f"{prefix}-coordinator"
        self.processor_group = f"{prefix}-processors"

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Export what has ended; whether it was exported in time."""
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what has ended and stop the exporter."""
        self.provider.shutdown()

    @staticmethod
    def carried(headers: Headers | None) -> SpanContext | None:
        """The span context a record's ``traceparent`` header names (``context_of``)."""
        return context_of(headers)

    # -- the coordinator -------------------------------------------------------------------

    def run_trace(self, headers: Headers | None) -> RunTrace:
        """The trace of a run a task starts: its caller's, when it carried one, else new."""
        span_id = f"{random_span_id():016x}"
        caller = context_of(headers)
        if caller is None:
            return RunTrace(trace_id=f"{random.getrandbits(128) or 1:032x}", span_id=span_id)
        return RunTrace(
            trace_id=f"{caller.trace_id:032x}",
            span_id=span_id,
            parent_id=f"{caller.span_id:016x}",
            sampled=caller.trace_flags.sampled,
        )

    def handled(
        self,
        spans: list[PendingSpan],
        run: RunTrace,
        run_id: str,
        record: Any | None,
        outputs: Iterable[tuple[str, bytes | None, bytes, int]],
        started_ns: int,
    ) -> list[list[tuple[str, bytes]]]:
        """Record the spans of one event of a run; the headers of its outputs, in order.

        Args:
            spans: The batch's pending spans (emitted once it commits).
            run: The run's trace.
            run_id: The run.
            record: The record handled (``None``: a wake-up, whose sends the run parents).
            outputs: What the event sends: topic, key, value, partition.
            started_ns: When its handling started.
        """
        trace_id = int(run.trace_id, 16)
        parent = int(run.span_id, 16)
        if record is not None:
            process = random_span_id()
            sender = context_of(record.headers)
            # The sender's span when it is a hop of this run; the run's span for the task
            # itself (its header names the caller, the run span's own parent) and for
            # records without a header.
            if sender is not None and sender.trace_id == trace_id:
                caller = int(run.parent_id, 16) if run.parent_id else None
                if sender.span_id != caller:
                    parent = sender.span_id
            spans.append(
                PendingSpan(
                    f"process {record.topic}",
                    SpanKind.CONSUMER,
                    trace_id,
                    process,
                    parent,
                    run.sampled,
                    started_ns,
                    time.time_ns(),
                    {
                        **_messaging("process", record.topic, record.partition, run_id),
                        "messaging.kafka.offset": record.offset,
                        "messaging.consumer.group.name": self.coordinator_group,
                    },
                )
            )
            parent = process
        headers = []
        now = time.time_ns()
        for topic, _, _, partition in outputs:
            send = random_span_id()
            spans.append(
                PendingSpan(
                    f"send {topic}",
                    SpanKind.PRODUCER,
                    trace_id,
                    send,
                    parent,
                    run.sampled,
                    now,
                    0,
                    _messaging("send", topic, partition, run_id),
                )
            )
            headers.append(headers_for(trace_id, send, run.sampled))
        return headers

    def ended(self, spans: list[PendingSpan], state: RunState) -> None:
        """Record a run's ``invoke_workflow`` span: the run has ended."""
        run = state.trace
        if run is None:
            return
        usage = state.usage
        attributes: Attributes = {
            "gen_ai.operation.name": "invoke_workflow",
            "gen_ai.conversation.id": state.run_id,
            "gen_ai.usage.input_tokens": usage.input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "baton.workflow.name": state.workflow,
            "baton.workflow.version": state.workflow_version,
            "baton.tenant": state.tenant,
            "baton.run.status": state.status.value if state.status else "",
            "baton.run.cost_usd": float(usage.cost_usd),
            "baton.run.steps": state.dispatches,
        }
        error = None
        if state.status in _FAILED:
            status = state.status.value if state.status else "failed"
            error = state.reason or status
            attributes["error.type"] = status
        started = _ns(state.started_at)
        spans.append(
            PendingSpan(
                f"invoke_workflow {state.workflow}",
                SpanKind.INTERNAL,
                int(run.trace_id, 16),
                int(run.span_id, 16),
                int(run.parent_id, 16) if run.parent_id else None,
                run.sampled,
                started,
                max(started, _ns(state.finished_at) if state.finished_at else time.time_ns()),
                attributes,
                error,
            )
        )

    def emit(self, spans: Iterable[PendingSpan]) -> None:
        """Start and end pending spans under their chosen ids (a batch has committed)."""
        committed = time.time_ns()
        for pending in spans:
            if pending.parent_id is None:
                parent = Context()
            else:
                span_context = SpanContext(
                    pending.trace_id, pending.parent_id, True, _flags(pending.sampled)
                )
                parent = trace.set_span_in_context(NonRecordingSpan(span_context), Context())
            self._ids.choose(pending.trace_id, pending.span_id)
            span = self.tracer.start_span(
                pending.name,
                context=parent,
                kind=pending.kind,
                attributes=pending.attributes,
                start_time=pending.start_ns,
            )
            self._ids.choose(None, None)  # a disabled SDK starts nothing, and takes none
            if pending.error is not None:
                span.set_status(Status(StatusCode.ERROR, pending.error))
            span.end(end_time=pending.end_ns or max(committed, pending.start_ns))

    # -- the processors --------------------------------------------------------------------

    def step(
        self,
        parent: SpanContext,
        record: Any,
        request: StepRequested,
        result: StepResult,
        started_ns: int,
        results_topic: str,
        results_partition: int,
    ) -> StepTrace:
        """Spans for an attempt a processor ran, ready for its result to be sent.

        Args:
            parent: The context the request's record carried (the coordinator's send).
            record: The request's record.
            request: The request.
            result: How the attempt ended.
            started_ns: When the processor took the request.
            results_topic: Where the result goes.
            results_partition: Its partition there.
        """
        context = trace.set_span_in_context(NonRecordingSpan(parent), Context())
        process = self.tracer.start_span(
            f"process {record.topic}",
            context=context,
            kind=SpanKind.CONSUMER,
            attributes={
                **_messaging("process", record.topic, record.partition, request.run_id),
                "messaging.kafka.offset": record.offset,
                "messaging.consumer.group.name": self.processor_group,
                "baton.step": request.step,
                "baton.step.kind": request.kind_name,
                "baton.step.attempt": request.attempt,
            },
            start_time=started_ns,
        )
        if result.status is StepStatus.failed and result.error is not None:
            process.set_attribute("error.type", result.error.error_class)
            process.set_status(Status(StatusCode.ERROR, result.error.message))
        inner = trace.set_span_in_context(process, Context())
        if request.kind in _MODEL_KINDS:
            self._operation(inner, *self._chat(request, result))
        elif request.kind is StepKind.tool:
            self._operation(inner, *self._tool(request, result))
        send = self.tracer.start_span(
            f"send {results_topic}",
            context=inner,
            kind=SpanKind.PRODUCER,
            attributes=_messaging("send", results_topic, results_partition, request.run_id),
        )
        sent = send.get_span_context()
        headers = headers_for(sent.trace_id, sent.span_id, sent.trace_flags.sampled)
        return StepTrace([process, send], headers)

    def _operation(
        self,
        context: Context,
        name: str,
        kind: SpanKind,
        attributes: Attributes,
        result: StepResult,
    ) -> None:
        span = self.tracer.start_span(
            name,
            context=context,
            kind=kind,
            attributes=attributes,
            start_time=_ns(result.started_at),
        )
        if result.status is StepStatus.failed and result.error is not None:
            span.set_attribute("error.type", result.error.error_class)
            span.set_status(Status(StatusCode.ERROR, result.error.message))
        span.end(end_time=max(_ns(result.finished_at), _ns(result.started_at)))

    def _chat(
        self, request: StepRequested, result: StepResult
    ) -> tuple[str, SpanKind, Attributes, StepResult]:
        params = request.params if isinstance(request.params, Mapping) else {}
        route = str(params.get("route") or "")
        usage = result.usage
        model = (usage.model if usage is not None else None) or route
        attributes: Attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.conversation.id": request.run_id,
            "baton.route": route,
            "baton.step": request.step,
        }
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
            attributes["baton.cache.hit"] = usage.cached
            if usage.provider:
                attributes["gen_ai.provider.name"] = usage.provider
        if request.kind is StepKind.agent:
            attributes["gen_ai.agent.name"] = request.step
        for name, key in (("temperature", "temperature"), ("max_tokens", "max_tokens")):
            value = params.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[f"gen_ai.request.{key}"] = value
        if self.capture_content:
            attributes["gen_ai.input.messages"] = _json(params.get("messages"))
            if result.status is StepStatus.ok:
                attributes["gen_ai.output.messages"] = _json(
                    [{"role": "assistant", "content": result.output}]
                )
        return f"chat {model}", SpanKind.CLIENT, attributes, result

    def _tool(
        self, request: StepRequested, result: StepResult
    ) -> tuple[str, SpanKind, Attributes, StepResult]:
        params = request.params if isinstance(request.params, Mapping) else {}
        tool = str(params.get("tool") or "")
        attributes: Attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": request.idempotency_key,
            "gen_ai.conversation.id": request.run_id,
            "baton.step": request.step,
        }
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = _json(params.get("args"))
            if result.status is StepStatus.ok:
                attributes["gen_ai.tool.call.result"] = _json(result.output)
        return f"execute_tool {tool}", SpanKind.INTERNAL, attributes, result


def _messaging(operation: str, topic: str, partition: int, run_id: str) -> Attributes:
    return {
        "messaging.system": "kafka",
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition),
        "messaging.kafka.destination.partition": partition,
        "messaging.kafka.message.key": run_id,
        "baton.run.id": run_id,
    }


def _flags(sampled: bool) -> TraceFlags:
    return _SAMPLED if sampled else _NOT_SAMPLED


def _ns(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000) * 1000


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


# -- configuration ---------------------------------------------------------------------------


def otlp_endpoint(environ: Mapping[str, str]) -> str:
    """Where OTLP/HTTP traces go, as the OpenTelemetry variables say.

    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as it is; ``OTEL_EXPORTER_OTLP_ENDPOINT``
    is a base, to which ``/v1/traces`` is added; neither means ``http://localhost:4318``.

    Raises:
        ConfigurationError: The URL is not http(s) with a host; names the variable.
    """
    name = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    value = environ.get(name, "").strip()
    base = not value
    if base:
        name = "OTEL_EXPORTER_OTLP_ENDPOINT"
        value = environ.get(name, "").strip() or _DEFAULT_ENDPOINT
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"invalid configuration: {name} ({value!r}): tracing=otlp needs an http:// or "
            "https:// URL with a host"
        )
    return value.rstrip("/") + "/v1/traces" if base else value


def tracing_from(settings: Settings, environ: Mapping[str, str]) -> Tracing | None:
    """The worker's tracing as configured: ``None`` when off, else OTLP/HTTP export.

    Raises:
        ConfigurationError: An OTLP variable is invalid, or the exporter is not installed.
    """
    if settings.tracing == "off":
        return None
    endpoint = otlp_endpoint(environ)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:  # the SDK without its exporter
        raise ConfigurationError(
            "invalid configuration: tracing (otlp): the OTLP/HTTP exporter is not installed; "
            "pip install 'baton[tracing]'"
        ) from None
    return Tracing(
        OTLPSpanExporter(endpoint=endpoint),
        service=environ.get("OTEL_SERVICE_NAME", "").strip() or "baton",
        worker=settings.worker_id,
        capture_content=settings.tracing_content,
        prefix=settings.topic_prefix,
    )
