"""A small Kafka client for submitting tasks and collecting results (CLI, demo, tests, bench).

Results are read with ``read_committed``: with ``exactly_once`` a result becomes visible when
the coordinator's transaction commits, and a result from an aborted transaction never shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from aiokafka import TopicPartition

from streams._kafka import kafka_consumer, kafka_producer
from topics import (
    BATCH_BYTES,
    Codec,
    ControlCommand,
    DecodeError,
    Event,
    RunResult,
    TaskSubmitted,
    TopicCatalog,
    client_source,
    partition_for,
)

__all__ = ["BatonClient"]


class BatonClient:
    """Submits tasks and waits for their results.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Encodes and decodes events.
    """

    def __init__(self, bootstrap: str, catalog: TopicCatalog, codec: Codec | None = None) -> None:
        self.catalog = catalog
        self.codec = codec or Codec()
        self._producer = kafka_producer(
            client_source(),
            self.codec,
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=BATCH_BYTES,
        )
        self._results = kafka_consumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            isolation_level="read_committed",
        )
        self._partitions = [
            TopicPartition(catalog.results.name, p) for p in range(catalog.results.partitions)
        ]

    async def __aenter__(self) -> BatonClient:
        await self._producer.start()
        await self._results.start()
        self._results.assign(self._partitions)
        # Results from now on: anything already on the topic belongs to earlier runs.
        await self._results.seek_to_end(*self._partitions)
        for tp in self._partitions:
            await self._results.position(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._results.stop()
        await self._producer.stop()

    async def send(self, events: Iterable[Event]) -> int:
        """Publish tasks or control commands, each to its run's partition."""
        count = 0
        for event in events:
            if isinstance(event, TaskSubmitted):
                topic, run_id = self.catalog.tasks, event.task_id
            elif isinstance(event, ControlCommand) and event.scope is not None:
                # Keyed by its scope, which compaction keeps: every worker reads them all.
                topic, run_id = self.catalog.control, event.scope
            elif isinstance(event, ControlCommand) and event.run_id:
                topic, run_id = self.catalog.control, event.run_id
            else:
                raise TypeError(f"cannot submit a {type(event).__name__}")
            await self._producer.send(
                topic.name,
                self.codec.encode(event),
                key=run_id.encode(),
                partition=partition_for(run_id, topic.partitions),
            )
            count += 1
        await self._producer.flush()
        return count

    async def wait(
        self,
        run_ids: Iterable[str],
        timeout_s: float,
        on_result: Callable[[RunResult], None] | None = None,
        stop_after: int | None = None,
    ) -> dict[str, RunResult]:
        """Collect the results of these runs, until all arrived or the timeout.

        Args:
            run_ids: The runs.
            timeout_s: Seconds to wait at most.
            on_result: Called with each result as it arrives.
            stop_after: Return as soon as this many results arrived.

        Returns:
            The results that arrived, by run id (the first result of each run).
        """
        wanted = set(run_ids)
        found: dict[str, RunResult] = {}
        deadline = time.monotonic() + timeout_s
        enough = len(wanted) if stop_after is None else stop_after
        while len(found) < enough and time.monotonic() < deadline:
            batches = await self._results.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    try:
                        result = self.codec.decode(record.value, RunResult)
                    except DecodeError:
                        continue
                    if result.run_id in wanted and result.run_id not in found:
                        found[result.run_id] = result
                        if on_result is not None:
                            on_result(result)
        return found
