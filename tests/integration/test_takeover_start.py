"""A takeover whose producers never finish starting gives up on them and starts anew.

Seen once by the fault suite (three workers joining a fresh three-broker cluster): aiokafka's
producer start retries ``InitProducerId`` against the transaction coordinator it found first
for as long as a connection error repeats, so one worker stood "restoring" forever. A start
that hangs here must end at the deadline, its producers be stopped and dropped, and the retry
build new ones: kept, unstarted, the retry would have used them as they were, and the
partition's runs would never move.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from streams.coordinator import _loop
from tests.integration.inprocess import in_process_worker, publish_steady, steady_cluster
from tests.integration.workers import poll_decoded
from topics import RunResult, RunStatus, partition_for

RUNS = 20


async def test_a_producer_start_that_never_ends_is_dropped_and_the_takeover_retried(
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = steady_cluster(kafka_bootstrap, topic_prefix, tmp_path)
    catalog = cluster.catalog
    await publish_steady(cluster, RUNS)

    # The first transactional start of partition 0's coordinator producers never returns,
    # as a start retrying InitProducerId at an unreachable coordinator does not.
    start = AIOKafkaProducer.start
    hung: list[AIOKafkaProducer] = []
    stopped: list[AIOKafkaProducer] = []
    started: list[AIOKafkaProducer] = []
    first_id = f"{catalog.prefix}-coordinator-0-a"

    async def start_or_hang(self: AIOKafkaProducer) -> None:
        txn = self._txn_manager
        transactional_id = txn.transactional_id if txn is not None else None
        if transactional_id == first_id and not hung:
            hung.append(self)
            await asyncio.Event().wait()
        await start(self)
        if transactional_id == first_id:
            started.append(self)

    stop = AIOKafkaProducer.stop

    async def recording_stop(self: AIOKafkaProducer) -> None:
        stopped.append(self)
        await stop(self)

    monkeypatch.setattr(AIOKafkaProducer, "start", start_or_hang)
    monkeypatch.setattr(AIOKafkaProducer, "stop", recording_stop)
    monkeypatch.setattr(_loop, "PRODUCER_START_S", 2.0)

    async with in_process_worker(cluster, exactly_once=True):
        results = await poll_decoded(
            cluster,
            catalog.results.name,
            RunResult,
            lambda found: len({r.run_id for r in found}) == RUNS,
            what=f"a result for each of the {RUNS} runs, partition 0's after a retried start",
            timeout=90,
        )

    assert hung, "no start was held"
    assert hung[0] in stopped, "the producer whose start hung was not stopped"
    assert started and all(p is not hung[0] for p in started), "the hung producer was reused"
    assert len(results) == RUNS and {r.status for r in results} == {RunStatus.completed}
    assert any(partition_for(r.run_id, catalog.partitions) == 0 for r in results)
