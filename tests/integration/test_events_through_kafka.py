"""Every event type goes through the real broker and comes back equal; the admin is sound."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.samples import full_events, minimal_events
from topics import (
    Codec,
    ConfigurationError,
    Event,
    TaskSubmitted,
    Topic,
    TopicCatalog,
    create_topics,
    describe_topics,
)

CODEC = Codec()


def _topic_for(catalog: TopicCatalog, event: Event) -> Topic:
    return next(t for t in catalog if type(event) in t.value_types)


def _key(event: Event) -> bytes | None:
    for field in ("run_id", "task_id", "name", "command_id", "key"):
        value = getattr(event, field, None)
        if value:
            return str(value).encode()
    return None


async def _consume(bootstrap: str, topics: list[str], count: int, timeout_s: float = 30.0):
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def _until_visible(admin: AIOKafkaAdminClient, names: list[str]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        described = await admin.describe_topics(names)
        if all(t["error_code"] == 0 and t["partitions"] for t in described):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"topics {names} never became visible")


async def test_every_event_type_through_the_broker(kafka_bootstrap: str, topic_prefix: str) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=3)
    await create_topics(kafka_bootstrap, catalog)
    sent = full_events() + minimal_events()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for event in sent:
            await producer.send_and_wait(
                _topic_for(catalog, event).name, CODEC.encode(event), key=_key(event)
            )
        json_task = b'{"workflow": "support-triage", "input": {"text": "hello"}}'
        await producer.send_and_wait(catalog.tasks.name, json_task, key=b"json-task-1")
    finally:
        await producer.stop()

    records = await _consume(kafka_bootstrap, [t.name for t in catalog], len(sent) + 1)
    received: dict[str, list[Event]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        topic = catalog.by_name(record.topic)
        received[record.topic].append(CODEC.decode_for(topic, record.value, record.key))

    expected: dict[str, list[Event]] = defaultdict(list)
    for event in sent:
        expected[_topic_for(catalog, event).name].append(event)
    json_decoded = [
        e for e in received[catalog.tasks.name] if e not in expected[catalog.tasks.name]
    ]
    assert json_decoded == [
        TaskSubmitted(task_id="json-task-1", workflow="support-triage", input={"text": "hello"})
    ]
    received[catalog.tasks.name].remove(json_decoded[0])
    for name, events in expected.items():
        assert sorted(received[name], key=repr) == sorted(events, key=repr), name


async def test_create_topics_is_idempotent(kafka_bootstrap: str, topic_prefix: str) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=2)
    created, existing = await create_topics(kafka_bootstrap, catalog)
    assert sorted(created) == sorted(t.name for t in catalog) and existing == []
    created, existing = await create_topics(kafka_bootstrap, catalog)
    assert created == [] and len(existing) == len(list(catalog))
    states = await describe_topics(kafka_bootstrap, catalog)
    assert all(s.problem is None for s in states)
    by_name = {s.topic.name: s for s in states}
    assert by_name[catalog.workflows.name].configs["cleanup.policy"] == "compact"
    assert by_name[catalog.llm_cache.name].configs == catalog.llm_cache.configs()
    assert by_name[catalog.tasks.name].partitions == 2


async def test_create_names_the_partition_count_to_use(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    await create_topics(kafka_bootstrap, TopicCatalog(prefix=topic_prefix, partitions=3))
    with pytest.raises(ConfigurationError) as caught:
        await create_topics(kafka_bootstrap, TopicCatalog(prefix=topic_prefix, partitions=5))
    assert str(caught.value).startswith(
        "the existing topics have 3 partitions but BATON_PARTITIONS is 5: set BATON_PARTITIONS=3"
    )


async def test_create_refuses_disagreeing_copartitioned_topics(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=4)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(catalog.results.name, 2, 1), NewTopic(catalog.step_results.name, 3, 1)]
        )
        # The cluster as an operator would find it: both topics visible with their leaders.
        await _until_visible(admin, [catalog.results.name, catalog.step_results.name])
    finally:
        await admin.close()
    with pytest.raises(ConfigurationError) as caught:
        await create_topics(kafka_bootstrap, catalog)
    message = str(caught.value)
    assert "disagree on their partition count" in message
    assert f"2 partitions: {catalog.results.name}" in message
    assert f"3 partitions: {catalog.step_results.name}" in message
    # Nothing was created: the cluster is left as it was.
    states = await describe_topics(kafka_bootstrap, catalog)
    assert [s.topic.name for s in states if s.exists] == sorted(
        [catalog.step_results.name, catalog.results.name],
        key=[t.name for t in catalog].index,
    )
