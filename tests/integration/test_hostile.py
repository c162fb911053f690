"""Hostile records stop nothing: each is dead-lettered whole, with the reason, and work goes on.

Every topic baton consumes gets the same five hostile records, written in front of records a
healthy run needs on the same partition: bytes that are not an event, a schema id nobody
registered, JSON nested 100,000 deep, JSON (or an event's JSON field) nested 300 deep, and a
record over the 1,000,000-byte limit. The healthy run must complete, every hostile record
must be on the dead-letter topic with its bytes (the oversized one cut, and said so) and a
reason, and the worker must stay up.
"""

from __future__ import annotations

import asyncio
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import MessageSizeTooLargeError

from streams._client import BatonClient
from tests.integration.workers import Cluster, Workers, poll_decoded
from topics import (
    MAX_RECORD_BYTES,
    Codec,
    DeadLetter,
    RunStatus,
    StepResult,
    StepStatus,
    TaskSubmitted,
    Topic,
    partition_for,
)

CODEC = Codec()
LARGE_TOPIC_LIMIT = 4_000_000
RUN = "healthy-1"
TENANT = "acme"

MODELS = """
routes:
  paid:
    provider: scripted
    model: paid-model
    input_usd_per_mtok: 1
    output_usd_per_mtok: 2
    script: [{reply: "fine"}]
"""

POLICIES = f"""
tenants:
  {TENANT}: {{max_cost_usd: 100, window: 1d}}
"""

WORKFLOW = """
workflow: sturdy
version: 1
steps:
  ask: {kind: llm, model: paid, prompt: "hello {{ input.n }}"}
  shape: {kind: transform, after: [ask], output: {n: "{{ input.n }}", a: "{{ steps.ask.output }}"}}
"""


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def deep(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@dataclass(frozen=True)
class Hostile:
    """A hostile record: what it is, its bytes, and a word its dead letter's reason holds."""

    kind: str
    value: bytes
    reason: str


def hostile_records(topic: Topic) -> list[Hostile]:
    """The five hostile records, shaped for ``topic`` where the shape matters."""
    # run-state holds stored runs, not events: a schema id means nothing there.
    unknown = "schema id 9999" if topic.value_types else "not a stored run"
    records = [
        Hostile("undecodable", b"\xff\xfe not an event", ""),
        Hostile("unknown schema", b"\x00" + struct.pack(">I", 9999) + b"\x02", unknown),
        Hostile("JSON 100k deep", nested(100_000), ""),
        Hostile("oversized", b"\x00" * (MAX_RECORD_BYTES + 100_000), "over the limit"),
    ]
    if topic.accepts_json:
        task = b'{"task_id": "deep-task", "workflow": "sturdy", "input": ' + nested(300) + b"}"
        records.append(Hostile("JSON 300 deep", task, "limit of 64"))
    elif topic.value_types == (StepResult,):
        now = datetime.now(UTC)
        result = StepResult.model_construct(
            run_id=RUN,
            step="ask",
            attempt=1,
            status=StepStatus.ok,
            output=deep(200),  # within orjson's encoder (254), past the reader's limit (64)
            error=None,
            usage=None,
            started_at=now,
            finished_at=now,
            worker="x",
        )
        records.append(Hostile("JSON field 200 deep", CODEC.encode(result), "limit of 64"))
    else:
        records.append(Hostile("JSON 300 deep", nested(300), ""))
    return records


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    return Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={"BATON_POLICIES_FILE": str(policies)},
    )


async def _allow_large_records(cluster: Cluster, topics: list[Topic]) -> None:
    """Let the test's topics hold a record over baton's limit, as a misconfigured one may.

    AlterConfigs replaces a topic's whole configuration, so each keeps its own settings.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    t.name,
                    {**t.configs(), "max.message.bytes": str(LARGE_TOPIC_LIMIT)},
                )
                for t in topics
            ]
        )
    finally:
        await admin.close()


async def _send(producer: AIOKafkaProducer, topic: str, value: bytes, partition: int) -> int:
    """Write one record; the larger limit reaches the partition a moment after it is set."""
    deadline = time.monotonic() + 30
    while True:
        try:
            meta = await producer.send_and_wait(topic, value, key=b"hostile", partition=partition)
            return int(meta.offset)
        except MessageSizeTooLargeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_hostile_records_on_every_consumed_topic_are_dead_lettered_and_work_goes_on(
    cluster: Cluster, workers: Workers
) -> None:
    assert cluster.baton("topics", "create").returncode == 0
    catalog = cluster.catalog
    home = partition_for(RUN, catalog.partitions)
    # Each consumed topic, and the partition the healthy run's records go through on it.
    targets: list[tuple[Topic, int]] = [
        (catalog.tasks, home),
        (catalog.step_results, home),
        (catalog.approvals_decided, home),
        (catalog.control, home),
        (catalog.steps("llm"), home),
        (catalog.steps("transform"), home),
        (catalog.retry(catalog.retry_tiers[0].name), home),
        (catalog.spend, partition_for(TENANT, catalog.spend.partitions)),
        (catalog.llm_cache, 0),
        (catalog.workflows, 0),
        (catalog.run_state, home),
        (catalog.run_journal, home),
    ]
    await _allow_large_records(cluster, [t for t, _ in targets])
    placed: dict[tuple[str, int], Hostile] = {}
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, max_request_size=LARGE_TOPIC_LIMIT
    )
    await producer.start()
    try:
        for topic, partition in targets:
            for hostile in hostile_records(topic):
                offset = await _send(producer, topic.name, hostile.value, partition)
                placed[(topic.name, offset)] = hostile
    finally:
        await producer.stop()
    # The worker starts on top of them: its restore, workflow feed, cache and spend ledger
    # read theirs at start; the workflow is deployed behind the feed's hostile records.
    workers.start("w1")
    cluster.deploy(sturdy=WORKFLOW)
    async with BatonClient(cluster.bootstrap, catalog) as client:
        await client.send(
            [TaskSubmitted(task_id=RUN, workflow="sturdy", tenant=TENANT, input={"n": 7})]
        )
        result = (await client.wait([RUN], timeout_s=90))[RUN]
    assert result.status == RunStatus.completed, result.reason
    assert result.output == {"n": 7, "a": "fine"}

    letters = await poll_decoded(
        cluster,
        catalog.dead_letter.name,
        DeadLetter,
        lambda found: set(placed) <= {(d.origin_topic, d.origin_offset) for d in found},
        what="a dead letter for every hostile record",
        timeout=90,
    )
    by_place = {(d.origin_topic, d.origin_offset): d for d in letters}
    for (topic, offset), hostile in placed.items():
        letter = by_place[(topic, offset)]
        where = f"{hostile.kind} on {topic}@{offset}"
        assert letter.key == b"hostile", where
        assert letter.error and hostile.reason in letter.error, (where, letter.error)
        if hostile.kind == "oversized":
            assert letter.payload == hostile.value[: len(letter.payload)], where
            assert "payload cut" in letter.error, where
        else:
            assert letter.payload == hostile.value, where
    worker = workers.started[0]
    assert worker.process is not None and worker.process.poll() is None
