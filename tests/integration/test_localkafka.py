"""The local broker launcher against real JVMs: one node, a failed start, three nodes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from streams._kafka import kafka_consumer
from streams.localkafka import KafkaStartError, LocalKafka, LocalKafkaCluster, live_brokers

DEADLINE = 60.0


async def create_topic(
    bootstrap: str,
    name: str,
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: dict[str, str] | None = None,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication_factor, topic_configs=configs or {})]
        )
    finally:
        await admin.close()
    errors = [(topic, code) for topic, code, *_ in response.topic_errors if code != 0]
    assert errors == [], errors


async def partition_state(bootstrap: str, topic: str) -> dict[str, Any]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    (partition,) = described["partitions"]
    return dict(partition)


async def consume(
    bootstrap: str, topic: str, count: int, *, isolation_level: str = "read_uncommitted"
) -> list[bytes]:
    """Read ``topic`` from the start until ``count`` records arrived or the deadline passed."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    values: list[bytes] = []
    deadline = time.monotonic() + DEADLINE
    try:
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                values.extend(record.value for record in records)
    finally:
        await consumer.stop()
    return values


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


# --- one node ----------------------------------------------------------------------------------


def test_broker_answers_metadata(kafka_bootstrap: str) -> None:
    assert len(live_brokers(kafka_bootstrap)) >= 1


async def test_produce_consume_round_trip(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.round-trip"
    await create_topic(kafka_bootstrap, topic)
    sent = [f"record-{i}".encode() for i in range(20)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in sent:
            await producer.send(topic, value, key=b"one-key")
        await producer.flush()
    finally:
        await producer.stop()

    assert await consume(kafka_bootstrap, topic, len(sent)) == sent


async def test_transactions_commit_and_abort(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.txn"
    await create_topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}.producer"
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()

        await producer.begin_transaction()
        await producer.send(topic, b"committed-1")
        await producer.send(topic, b"committed-2")
        await producer.commit_transaction()
    finally:
        await producer.stop()

    committed = await consume(kafka_bootstrap, topic, 2, isolation_level="read_committed")
    assert committed == [b"committed-1", b"committed-2"]
    # The aborted record did reach the log: read_committed filtered it, not a lost write.
    everything = await consume(kafka_bootstrap, topic, 3)
    assert everything == [b"aborted", b"committed-1", b"committed-2"]


# --- failed starts -----------------------------------------------------------------------------


def test_start_on_a_taken_port_fails_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        kafka = LocalKafka(tmp_path, broker_port=squatter.getsockname()[1])
        with pytest.raises(KafkaStartError) as failure:
            kafka.start()

    assert "exited while starting" in str(failure.value)
    assert "Address already in use" in failure.value.log_tail
    assert failure.value.log_tail in str(failure.value)
    assert not kafka.running


def test_unformattable_config_fails_with_the_tool_output(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path, overrides={"log.retention.ms": "forever"})
    with pytest.raises(KafkaStartError, match="formatting the storage") as failure:
        kafka.start()

    assert "forever" in failure.value.log_tail
    assert not kafka.running
    assert not kafka.node.formatted


# --- three nodes -------------------------------------------------------------------------------


async def test_three_nodes_survive_losing_the_leader(
    kafka_cluster3: LocalKafkaCluster, topic_prefix: str
) -> None:
    cluster = kafka_cluster3
    bootstrap = cluster.bootstrap
    topic = f"{topic_prefix}.replicated"
    await create_topic(bootstrap, topic, replication_factor=3, configs={"min.insync.replicas": "2"})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"before")
        leader = producer.client.cluster.leader_for_partition(TopicPartition(topic, 0))
        victim = cluster.nodes[leader - 1]

        victim.kill()
        assert not victim.running
        await asyncio.wait_for(producer.send_and_wait(topic, b"after"), DEADLINE)
        survivors = tuple(n.node_id for n in cluster.nodes if n is not victim)
        assert await asyncio.to_thread(live_brokers, bootstrap) == survivors

        await asyncio.to_thread(victim.start)

        async def all_three_serve() -> bool:
            return await asyncio.to_thread(live_brokers, bootstrap) == (1, 2, 3)

        async def back_in_sync() -> bool:
            state = await partition_state(bootstrap, topic)
            return len(state["isr"]) == 3

        await eventually(all_three_serve, "the restarted node to rejoin")
        await eventually(back_in_sync, "the restarted node to rejoin the ISR")
        await producer.send_and_wait(topic, b"rejoined")
    finally:
        await producer.stop()

    assert await consume(bootstrap, topic, 3) == [b"before", b"after", b"rejoined"]


async def test_a_consumer_finds_the_new_leader_when_it_resets_a_position(
    kafka_cluster3: LocalKafkaCluster, topic_prefix: str
) -> None:
    """A position reset sent to a node that no longer leads reaches the new leader in seconds.

    aiokafka retries a refused ListOffsets at the node it last knew as leader until its next
    metadata refresh; with the default five-minute age the partition (and every partition
    that node leads) is not fetched meanwhile. The soak found it after a broker restart.
    """
    cluster = kafka_cluster3
    bootstrap = cluster.bootstrap
    topic = f"{topic_prefix}.leader-moves"
    tp = TopicPartition(topic, 0)
    await create_topic(bootstrap, topic, replication_factor=3, configs={"min.insync.replicas": "2"})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in (b"one", b"two", b"three"):
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()

    consumer = kafka_consumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        assert await read(consumer, 3) == [b"one", b"two", b"three"]
        consumer.pause(tp)
        old = (await partition_state(bootstrap, topic))["leader"]
        assert consumer._client.cluster.leader_for_partition(tp) == old

        # The leader dies and comes back as a follower: the consumer, paused, still has it
        # as the leader.
        victim = cluster.nodes[old - 1]
        victim.kill()

        async def leader_and_isr() -> tuple[int, int]:
            try:
                state = await partition_state(bootstrap, topic)
            except KafkaError:  # the admin client asked the dead node
                return -1, 0
            return state["leader"], len(state["isr"])

        async def moved() -> bool:
            return (await leader_and_isr())[0] not in (old, -1)

        async def back_in_sync() -> bool:
            return (await leader_and_isr())[1] == 3

        await eventually(moved, "a new leader")
        await asyncio.to_thread(victim.start)
        await eventually(back_in_sync, "the old leader to rejoin the ISR")
        assert (await partition_state(bootstrap, topic))["leader"] != old

        try:
            await asyncio.wait_for(consumer.seek_to_beginning(tp), 30.0)
        except TimeoutError:
            pytest.fail("the position reset was still sent to the old leader after 30 s")
        consumer.resume(tp)
        assert await read(consumer, 3) == [b"one", b"two", b"three"]
    finally:
        await consumer.stop()


async def read(consumer: AIOKafkaConsumer, count: int, *, within: float = DEADLINE) -> list[bytes]:
    """The next ``count`` values ``consumer`` reads, or fewer if ``within`` seconds passed."""
    values: list[bytes] = []
    deadline = time.monotonic() + within
    while len(values) < count and time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=200)
        for records in batches.values():
            values.extend(record.value for record in records)
    return values
