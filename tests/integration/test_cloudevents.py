"""Every record a worker writes is a CloudEvent in binary mode, read by the CloudEvents SDK.

A worker process runs tasks an upstream producer published; then every topic of the catalog is
read back with its headers, and each record baton wrote is parsed by the CloudEvents SDK's Kafka
binding (a client no one here wrote): its type names the schema of its value, its source is the
worker (the deployed workflows: the CLI), its id is the hash of its value, its partition key is
its record key.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from hashlib import blake2b
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

from tests.integration.inprocess import publish_steady, steady_cluster
from tests.integration.workers import CODEC, Cluster, Workers, poll_decoded
from topics import RunResult, StepKind

pytestmark = pytest.mark.integration

RUNS = 20


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    return steady_cluster(kafka_bootstrap, topic_prefix, tmp_path)


async def _every_record(cluster: Cluster) -> list[ConsumerRecord]:
    """Every committed record of every topic of the catalog, with its headers."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cluster.bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        existing = await consumer.topics()
        tps = [
            TopicPartition(topic.name, p)
            for topic in cluster.catalog
            if topic.name in existing
            for p in range(topic.partitions)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[ConsumerRecord] = []
        deadline = time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "could not read the topics to their ends"
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
        return found
    finally:
        await consumer.stop()


async def test_every_record_a_worker_writes_is_a_cloudevent(
    cluster: Cluster, workers: Workers
) -> None:
    started = datetime.now(UTC)
    workers.start("ce-worker")
    await publish_steady(cluster, RUNS)
    await poll_decoded(
        cluster,
        cluster.catalog.results.name,
        RunResult,
        lambda found: len({r.run_id for r in found}) == RUNS,
        what=f"a result for each of the {RUNS} runs",
        timeout=90,
    )
    workers.stop_all()  # its last run-state flush is written too
    catalog = cluster.catalog
    records = await _every_record(cluster)
    written = [r for r in records if r.topic != catalog.tasks.name and r.value is not None]
    by_topic: dict[str, int] = {}
    for record in written:
        headers = dict(record.headers)
        assert "ce_specversion" in headers, (record.topic, record.headers)
        event = from_binary(KafkaMessage(headers, record.key, record.value), JSONFormat())
        assert event.get_specversion() == "1.0"
        assert event.get_type() == CODEC.type_name(record.value)
        expected_source = (
            f"/baton/cli/{socket.gethostname()}"
            if record.topic == catalog.workflows.name
            else "/baton/workers/ce-worker"
        )
        assert event.get_source() == expected_source, record.topic
        assert event.get_id() == blake2b(record.value, digest_size=16).hexdigest()
        time_ = event.get_time()
        assert time_ is not None
        assert started - timedelta(seconds=1) <= time_ <= datetime.now(UTC), record.topic
        assert event.get_datacontenttype() == "application/avro"
        if record.key is not None:
            assert event.get_extension("partitionkey") == record.key.decode()
            assert headers["ce_partitionkey"] == record.key
        by_topic[record.topic] = by_topic.get(record.topic, 0) + 1
    # the run's whole path: the step requests, their results, the run's events, its journal,
    # the results downstream reads
    assert {
        catalog.steps(StepKind.llm).name,
        catalog.step_results.name,
        catalog.run_events.name,
        catalog.run_journal.name,
        catalog.results.name,
        catalog.workflows.name,
    } <= set(by_topic), by_topic
    assert by_topic[catalog.results.name] == RUNS
    # the tasks came from an upstream producer that sends no CloudEvents headers: left alone
    tasks = [r for r in records if r.topic == catalog.tasks.name]
    assert len(tasks) == RUNS and all(not r.headers for r in tasks)
