"""The retry relay: sends delayed step requests on when they are due.

The coordinator schedules a delayed retry by writing the step's next request to
``baton.retry.<tier>`` with ``not_before`` set. Every request in a tier waits about as long
(the tier's delay, plus jitter), so the head of each partition is always the next one due: the
relay holds each partition's head until then (pausing the partition meanwhile), then
re-publishes it, unchanged, to the step's topic on the same partition, and commits.

At-least-once: a crash between re-publishing and committing sends a request twice; the
coordinator ignores the second result of an attempt. Bytes that are not a step request go to
the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition

from streams._deadletters import letter_for, too_large
from streams._kafka import kafka_consumer, kafka_producer
from streams._metrics import Metrics, consumer_lag
from topics import Codec, DecodeError, StepRequested, TopicCatalog, client_source

__all__ = ["RetryRelay"]

log = logging.getLogger(__name__)


class RetryRelay(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Consumes the retry tiers and re-emits each request when it is due.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics (the tiers come from it).
        instance_id: Static group membership: a relay restarted under the same id takes its
            partitions back at once (otherwise delayed retries would wait out a session).
        session_timeout: Seconds before a silent relay's partitions move.
        metrics: The worker's metrics (the relay adds the retries it holds, and its lag).
        clock: The time, in seconds since the epoch.
        source: The ``ce_source`` of the dead letters it writes (relayed requests keep
            their own).
        codec: The worker's codec (Schema Registry mode needs the one registered at start).
    """

    def __init__(
        self,
        bootstrap: str,
        catalog: TopicCatalog,
        *,
        instance_id: str | None = None,
        session_timeout: float = 15.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        source: str | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.source = source or client_source("workers")
        self.instance_id = instance_id
        self.session_timeout = session_timeout
        self.catalog = catalog
        self.codec = codec or Codec()
        self.clock = clock
        self.released = 0
        self._tiers = {catalog.retry(t.name).name: t for t in catalog.retry_tiers}
        self._pending: dict[TopicPartition, deque[tuple[float, Any, StepRequested]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.metrics = metrics if metrics is not None else Metrics()
        self.metrics.gauge(
            "baton_retries_waiting",
            "Delayed retries this worker's retry relay holds until they are due, by tier "
            "(those not read yet are its consumer lag).",
            ("tier",),
            self._waiting,
        )
        self.metrics.lag_of("retry-relay", self._lag)

    def _waiting(self) -> list[tuple[tuple[str, ...], float]]:
        held = dict.fromkeys((t.name for t in self._tiers.values()), 0.0)
        for tp, queue in list(self._pending.items()):
            held[self._tiers[tp.topic].name] += len(queue)
        return [((tier,), count) for tier, count in held.items()]

    async def _lag(self) -> list[tuple[str, int, int]]:
        if not hasattr(self, "_consumer"):
            return []
        return await consumer_lag(self._consumer, committed=True)

    async def start(self) -> None:
        """Join the relay's consumer group and start relaying."""
        self._producer = kafka_producer(
            self.source,
            self.codec,
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
        )
        await self._producer.start()
        self._consumer = kafka_consumer(
            bootstrap_servers=self.bootstrap,
            group_id=f"{self.catalog.prefix}-retry-relay",
            group_instance_id=self.instance_id,
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(max(1.0, self.session_timeout / 6) * 1000),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=500,
        )
        self._consumer.subscribe(topics=list(self._tiers), listener=self)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="retry-relay")

    async def stop(self) -> None:
        """Stop relaying (what is held is released again by whoever consumes next)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # (A worker that failed to start stops services that never started.)
        if hasattr(self, "_consumer"):
            await self._consumer.stop()
        if hasattr(self, "_producer"):
            await self._producer.stop()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Forget what was held for partitions that move elsewhere."""
        for tp in revoked:
            self._pending.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Nothing to do: held requests are read again from the committed offsets."""

    async def _run(self) -> None:
        while True:
            try:
                await self._cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retry relay cycle failed; continuing")
                await asyncio.sleep(1)

    async def _cycle(self) -> None:
        heads = [queue[0][0] for queue in self._pending.values() if queue]
        wait = min(heads) - self.clock() if heads else 1.0
        batch = await self._consumer.getmany(timeout_ms=int(max(0.0, min(wait, 1.0)) * 1000))
        for tp, records in batch.items():
            queue = self._pending.setdefault(tp, deque())
            for record in records:
                await self._hold(tp, queue, record)
            if queue:
                self._consumer.pause(tp)
        now = self.clock()
        done: dict[TopicPartition, int] = {}
        for tp, queue in self._pending.items():
            while queue and queue[0][0] <= now:
                _, record, request = queue.popleft()
                topic = self.catalog.steps(request.kind_name)
                # Its headers too: a traced request keeps its trace through the tier.
                await self._producer.send(
                    topic.name,
                    record.value,
                    key=record.key,
                    partition=record.partition,
                    headers=record.headers or None,
                )
                done[tp] = record.offset + 1
                self.released += 1
            if not queue:
                self._consumer.resume(tp)
        if done:
            await self._producer.flush()
            await self._consumer.commit(done)

    async def _hold(self, tp: TopicPartition, queue: deque[Any], record: Any) -> None:
        try:
            problem = too_large(record)
            if problem is not None:
                raise DecodeError(problem, record.value)
            request = self.codec.decode(record.value, StepRequested)
        except DecodeError as exc:
            await self._dead_letter(record, exc.reason)
            if not queue:
                await self._consumer.commit({tp: record.offset + 1})
            return
        if request.custom_kind is not None and request.custom_kind not in self.catalog.custom_kinds:
            # A coordinator with the kind sent it; this worker has no topic to release it to.
            await self._dead_letter(
                record,
                f"step kind {request.custom_kind!r} is not installed on this worker",
                "UnknownStepKind",
            )
            if not queue:
                await self._consumer.commit({tp: record.offset + 1})
            return
        due = (
            request.not_before.timestamp()
            if request.not_before is not None
            else record.timestamp / 1000 + self._tiers[record.topic].delay_s
        )
        queue.append((due, record, request))

    async def _dead_letter(
        self, record: Any, reason: str, error_class: str = "DecodeError"
    ) -> None:
        log.warning("dead-lettering %s@%d: %s", record.topic, record.offset, reason)
        letter = letter_for(record, error_class=error_class, reason=reason, at=datetime.now(UTC))
        await self._producer.send_and_wait(
            self.catalog.dead_letter.name,
            self.codec.encode(letter),
            key=record.key,
            partition=record.partition,
        )
        self.metrics.dead_lettered(letter.error_class)
