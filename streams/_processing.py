"""The processors' service: step requests in, each run as its own task, step results out.

One consumer (group ``<prefix>-processors``, ``read_committed``) reads the ``steps.<kind>``
topics of the kinds this worker runs, in batches. Each request starts in the background (up
to ``concurrency`` steps of one kind at once; a full kind holds the fetching back) and its
``StepResult`` goes to ``step-results`` when it finishes. Offsets are committed every
``commit_interval`` without waiting for the steps: a worker that dies with steps in flight
loses nothing, because the coordinator dispatches each again when its deadline passes. A
request whose deadline has already passed is not run: the coordinator has dispatched its
next attempt (or will, once it is back).

A record that is not a step request goes to the dead-letter topic, and the service goes on.
A result too large for a record is replaced by a failed result saying so. With claim checks
on (``claims``), a request's blob references are resolved before its processor sees it, and
a result's output over the threshold is stored and sent as a reference (``processors._claims``).

An llm or agent attempt whose route streams writes its text to the ``stream`` topic as it
arrives (``streams._chunks``), a preview outside the exactly-once result; its last chunk is
delivered before the result is sent.

Stopping (SIGTERM) is graceful: fetching stops, the steps in flight have ``stop_grace``
seconds to finish and report, the offsets are committed; a step still running after that
is cancelled and handed back (a retryable ``WorkerStopping`` failure), so its coordinator
tries it again at once instead of waiting out its timeout.

No Faust here: a plain aiokafka loop costs a fraction of Faust's per-event stream machinery
(see docs/decisions/0003).

With tracing on, a request whose record carries a ``traceparent`` header is traced: a
``process`` span, its ``chat``/``execute_tool`` span, and the ``send`` of its result, whose
context goes on the result's record (``streams._tracing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition

from processors import STEP_TRACE, Claims, Processor, StepOutput, execute, streaming_to
from streams._chunks import STREAMED_KINDS, AttemptStream
from streams._deadletters import letter_for, too_large
from streams._kafka import kafka_consumer, kafka_producer
from streams._metrics import Metrics, consumer_lag
from topics import (
    BATCH_BYTES,
    MAX_RECORD_BYTES,
    BatonError,
    Codec,
    DecodeError,
    RetryableError,
    StepError,
    StepKind,
    StepRequested,
    StepResult,
    StepStatus,
    TopicCatalog,
    partition_for,
    worker_source,
)

if TYPE_CHECKING:
    from streams._tracing import Headers, Tracing

__all__ = ["ProcessorService"]

log = logging.getLogger(__name__)

# Clocks on different machines disagree a little; a request is stale only clearly after.
_STALE_GRACE = timedelta(seconds=1)
#: ``StepError.error_class`` of a step handed back by a stopping worker.
WORKER_STOPPING = "WorkerStopping"
#: Kinds that compute only (templates, schemas, rules): run in the loop, without a task.
_INLINE = frozenset({StepKind.transform, StepKind.validate})
#: ``StepError.error_class`` of a step whose result does not fit in a record.
OUTPUT_TOO_LARGE = "StepOutputTooLarge"


class ProcessorService:
    """Runs the step processors of one worker.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Decodes requests, encodes results.
        processors: What runs each kind.
        worker: This worker's name, recorded in every result.
        instance_id: Static group membership: restarted under the same id, the worker takes
            its partitions back at once.
        concurrency: Steps of one kind running at once.
        commit_interval: Seconds between offset commits.
        stop_grace: Seconds the steps in flight get to finish when the worker stops.
        session_timeout: Seconds before a silent worker's partitions move.
        metrics: The worker's metrics (step durations, dead letters, lag).
        clock: The time.
        tracing: Traces the requests that carry a trace (``None``: tracing is off).
        claims: Claim checks for large payloads (``None``: off).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        catalog: TopicCatalog,
        codec: Codec,
        processors: Mapping[str, Processor],
        worker: str,
        instance_id: str | None,
        concurrency: int,
        commit_interval: float = 0.5,
        stop_grace: float = 10.0,
        session_timeout: float = 15.0,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tracing: Tracing | None = None,
        claims: Claims | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.claims = claims
        self.tracing = tracing
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.lag_of("processors", self._lag)
        self.catalog = catalog
        self.codec = codec
        self.processors = dict(processors)
        self.worker = worker
        self.instance_id = instance_id
        self.commit_interval = commit_interval
        self.stop_grace = stop_grace
        self.session_timeout = session_timeout
        self.clock = clock
        self._kinds = {catalog.steps(kind).name: kind for kind in self.processors}
        self._slots = {kind: asyncio.Semaphore(concurrency) for kind in self.processors}
        self.in_flight: dict[asyncio.Task[None], StepRequested] = {}
        self.completed = 0
        self.skipped_stale = 0
        self._offsets: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def topics(self) -> list[str]:
        """The step topics this service reads from partitions it was assigned."""
        if self._task is None:
            return []
        return sorted({tp.topic for tp in self._consumer.assignment()})

    async def _lag(self) -> list[tuple[str, int, int]]:
        if self._task is None:
            return []
        return await consumer_lag(self._consumer, committed=True)

    async def start(self) -> None:
        """Join the group and start taking requests."""
        self._producer = kafka_producer(
            worker_source(self.worker),
            self.codec,
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=BATCH_BYTES,
        )
        await self._producer.start()
        self._consumer = kafka_consumer(
            *self._kinds,
            bootstrap_servers=self.bootstrap,
            group_id=f"{self.catalog.prefix}-processors",
            group_instance_id=self.instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(max(1.0, self.session_timeout / 6) * 1000),
            max_poll_records=500,
            fetch_max_wait_ms=50,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._consume(), name="processors")

    async def stop(self) -> None:
        """Stop taking requests, let the steps in flight finish (or hand them back), leave."""
        self._stopping = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.in_flight:
            log.info("waiting up to %.0fs for %d steps", self.stop_grace, len(self.in_flight))
            _, pending = await asyncio.wait(list(self.in_flight), timeout=self.stop_grace)
            for task in pending:
                request = self.in_flight.get(task)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                if request is not None:
                    await self._hand_back(request)
        await self._producer.flush()
        await self._commit()
        await self._consumer.stop()
        await self._producer.stop()

    # -- the loop ----------------------------------------------------------------------------

    async def _consume(self) -> None:
        committed = time.monotonic()
        while self._taking():
            try:
                batch = await self._consumer.getmany(timeout_ms=100, max_records=500)
                for tp, records in batch.items():
                    for record in records:
                        if not self._taking():
                            break  # read again by whoever consumes next
                        await self._take(record)
                        self._offsets[tp] = record.offset + 1
                if time.monotonic() - committed >= self.commit_interval:
                    committed = time.monotonic()
                    await self._commit()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must never die: the coordinator would wait forever
                log.exception("processors' pass failed; going on")
                await asyncio.sleep(0.5)

    def _taking(self) -> bool:
        return not self._stopping

    async def _take(self, record: Any) -> None:
        oversized = too_large(record)
        if oversized is not None:
            await self._dead_letter(record, oversized, "RecordTooLarge")
            return
        try:
            request = self.codec.decode(record.value, StepRequested)
        except DecodeError as exc:
            await self._dead_letter(record, exc.reason)
            return
        kind = self._kinds.get(record.topic)
        if kind is None or request.kind_name != kind:
            await self._dead_letter(record, f"a {request.kind_name} request on {record.topic}")
            return
        if self.clock() > request.deadline_at + _STALE_GRACE:
            self.skipped_stale += 1
            log.info(
                "not running %s/%s attempt %d: its deadline passed",
                request.run_id,
                request.step,
                request.attempt,
            )
            return
        if kind in _INLINE:
            # No outside call, and bounded by the template budget: run now, no task to
            # schedule (most steps of most workflows are these).
            await self._run(self.processors[kind], request, None, record)
            return
        slots = self._slots[kind]
        await slots.acquire()
        task = asyncio.create_task(self._run(self.processors[kind], request, slots, record))
        self.in_flight[task] = request
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.pop(task, None)

    async def _run(
        self,
        processor: Processor,
        request: StepRequested,
        slots: asyncio.Semaphore | None,
        record: Any,
    ) -> None:
        started = time.time_ns() if self.tracing is not None else 0
        # Tools that pass the trace on (MCP) read it here; set only while tracing is on.
        traced = self.tracing is not None
        trace = STEP_TRACE.set(_trace_fields(record.headers)) if traced else None
        stream = None
        if request.kind in STREAMED_KINDS:
            stream = AttemptStream(self._producer, self.catalog, self.codec, request, self.clock)
        try:
            if self.claims is not None:
                processor = _Resolving(processor, self.claims)
            with streaming_to(stream):
                result = await execute(processor, request, worker=self.worker, now=self.clock)
            if stream is not None:
                await stream.close()  # the text is in the log before the result
            self.metrics.step_ran(
                request.kind_name,
                result.usage.route if result.usage is not None else None,
                (result.finished_at - result.started_at).total_seconds(),
            )
            if self.tracing is None:
                await self._report(result)
            else:
                await self._report_traced(record, request, result, started)
            self.completed += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # the task must never die silently; the deadline recovers the step
            log.exception("could not report %s/%s", request.run_id, request.step)
        finally:
            if trace is not None:
                STEP_TRACE.reset(trace)
            if slots is not None:
                slots.release()

    async def _report_traced(
        self, record: Any, request: StepRequested, result: StepResult, started: int
    ) -> None:
        """Report a result, traced when the request's record carried a trace."""
        assert self.tracing is not None
        parent = self.tracing.carried(record.headers)
        if parent is None:
            await self._report(result)
            return
        topic = self.catalog.step_results
        spans = self.tracing.step(
            parent,
            record,
            request,
            result,
            started,
            topic.name,
            partition_for(result.run_id, topic.partitions),
        )
        try:
            await self._report(result, spans.headers)
        finally:
            spans.end()

    async def _report(self, result: StepResult, headers: Headers | None = None) -> None:
        if self.claims is not None and result.output is not None:
            result = await self._claimed(result, self.claims)
        value = self.codec.encode(result)
        if len(value) > MAX_RECORD_BYTES:
            result = _failed(
                result,
                OUTPUT_TOO_LARGE,
                f"the step's result is {len(value)} bytes, over the record limit of "
                f"{MAX_RECORD_BYTES}",
                retryable=False,
            )
            value = self.codec.encode(result)
        topic = self.catalog.step_results
        await self._producer.send(
            topic.name,
            value,
            key=result.run_id.encode(),
            partition=partition_for(result.run_id, topic.partitions),
            headers=headers,
        )

    async def _claimed(self, result: StepResult, claims: Claims) -> StepResult:
        """The result with its large output stored, a reference in its place."""
        try:
            output = await claims.claim(result.run_id, result.output)
            claimed = result.model_copy(update={"output": output})
            if len(self.codec.encode(claimed)) > claims.threshold:
                output = await claims.claim_whole(result.run_id, result.output)
                claimed = result.model_copy(update={"output": output})
        except BatonError as exc:
            return _failed(
                result,
                type(exc).__name__,
                f"the step's output could not be stored: {exc}",
                retryable=isinstance(exc, RetryableError),
            )
        return claimed

    async def _hand_back(self, request: StepRequested) -> None:
        now = self.clock()
        result = StepResult(
            run_id=request.run_id,
            step=request.step,
            attempt=request.attempt,
            status=StepStatus.failed,
            error=StepError(
                error_class=WORKER_STOPPING,
                message=f"worker {self.worker} stopped before the step finished",
                retryable=True,
                retry_after_s=0.0,
            ),
            started_at=now,
            finished_at=now,
            worker=self.worker,
        )
        with contextlib.suppress(Exception):
            await self._report(result)

    async def _commit(self) -> None:
        if not self._offsets:
            return
        offsets, self._offsets = self._offsets, {}
        try:
            await self._consumer.commit(offsets)
        except Exception as exc:  # a rebalance or a broker hiccup: the deadlines cover it
            log.warning("processors' offset commit failed: %s", exc)

    async def _dead_letter(
        self, record: Any, reason: str, error_class: str = "DecodeError"
    ) -> None:
        log.warning("dead-lettering %s@%d: %s", record.topic, record.offset, reason)
        letter = letter_for(record, error_class=error_class, reason=reason, at=self.clock())
        delivery = await self._producer.send(
            self.catalog.dead_letter.name,
            self.codec.encode(letter),
            key=record.key,
            partition=record.partition % self.catalog.partitions,
        )

        def delivered(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.metrics.dead_lettered(error_class)

        delivery.add_done_callback(delivered)


def _failed(result: StepResult, error_class: str, message: str, *, retryable: bool) -> StepResult:
    return StepResult(
        run_id=result.run_id,
        step=result.step,
        attempt=result.attempt,
        status=StepStatus.failed,
        error=StepError(error_class=error_class, message=message, retryable=retryable),
        usage=result.usage,
        started_at=result.started_at,
        finished_at=result.finished_at,
        worker=result.worker,
    )


class _Resolving:
    """A processor that sees a request's payloads instead of their blob references.

    A reference that cannot be read fails the attempt like any other error of the step:
    ``BlobMissing`` and ``BlobCorrupt`` are permanent, ``BlobStoreUnavailable`` retryable.
    """

    def __init__(self, inner: Processor, claims: Claims) -> None:
        self.kind = inner.kind
        self._inner = inner
        self._claims = claims

    async def run(self, request: StepRequested) -> StepOutput:
        params = await self._claims.resolve(request.params, request.run_id)
        context = await self._claims.resolve(request.context, request.run_id)
        if params is not request.params or context is not request.context:
            request = request.model_copy(update={"params": params, "context": context})
        return await self._inner.run(request)


def _trace_fields(headers: Any) -> dict[str, str]:
    """The W3C trace context headers of a record, as text."""
    return {
        k: v.decode("latin-1")
        for k, v in headers or ()
        if k in ("traceparent", "tracestate") and isinstance(v, bytes) and v
    }
