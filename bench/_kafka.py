"""Kafka plumbing for the bench: fresh prefixes, topics, and reading topics back whole.

The topics a run's events travel on (tasks, step requests, step results, results) are set
to ``message.timestamp.type=LogAppendTime`` for the bench, so each record's timestamp is the
moment the broker appended (acknowledged) it, on the broker's one clock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench._workload import STEPS, long_steps
from topics import StepKind, Topic, TopicCatalog, create_topics

__all__ = [
    "LOG_APPEND_TIME",
    "STEP_KINDS",
    "Stamped",
    "create_plain_topics",
    "fresh_prefix",
    "is_loopback",
    "path_topics",
    "prepare_catalog_topics",
    "read_topic",
    "wait_for_keys",
]

#: Kafka's record timestamp type set by the broker when it appends the record.
LOG_APPEND_TIME = 1

#: The step kinds of the suite's workflows (their request topics are on a run's path).
STEP_KINDS = tuple(sorted({kind for _, kind in (*STEPS, *long_steps())}))


@dataclass(frozen=True, slots=True)
class Stamped:
    """One record read back: its broker timestamp (ms), key and value."""

    timestamp_ms: int
    timestamp_type: int
    partition: int
    key: bytes | None
    value: bytes


def is_loopback(bootstrap: str) -> bool:
    """Whether every ``host:port`` in a bootstrap list names a loopback address."""
    hosts = []
    for address in bootstrap.split(","):
        address = address.strip()
        if not address:
            continue
        host = address.rsplit(":", 1)[0] if ":" in address else address
        hosts.append(host.strip("[]"))
    if not hosts:
        return False
    for host in hosts:
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return True


def fresh_prefix(label: str) -> str:
    """A topic prefix no earlier measurement used: ``bench-<label>-<8 hex>``."""
    return f"bench-{label}-{uuid.uuid4().hex[:8]}"


def path_topics(catalog: TopicCatalog) -> list[Topic]:
    """The topics a run's path goes through: tasks, the step kinds used, results."""
    return [
        catalog.tasks,
        *(catalog.steps(StepKind(kind)) for kind in STEP_KINDS),
        catalog.step_results,
        catalog.results,
    ]


async def prepare_catalog_topics(bootstrap: str, catalog: TopicCatalog) -> None:
    """Create baton's topics, then give the path topics broker (append) timestamps.

    ``AlterConfigs`` replaces a topic's whole config set, so each topic's own configs are
    sent again with the timestamp type added.
    """
    await create_topics(bootstrap, catalog)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topic.name,
                    {**topic.configs(), "message.timestamp.type": "LogAppendTime"},
                )
                for topic in path_topics(catalog)
            ]
        )
    finally:
        await admin.close()


async def create_plain_topics(
    bootstrap: str, names: list[str], partitions: int, configs: dict[str, str] | None = None
) -> None:
    """Create topics outside baton's catalog (the raw pipe's) and wait for their leaders."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=dict(configs or {})) for name in names]
        )
        deadline = time.monotonic() + 30
        while True:
            described = await admin.describe_topics(names)
            if all(
                t["error_code"] == 0
                and len(t["partitions"]) == partitions
                and all(p["leader"] >= 0 for p in t["partitions"])
                for t in described
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {names} have no leaders after 30 s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


async def read_topic(
    bootstrap: str, topic: str, partitions: int, *, timeout_s: float = 120.0
) -> list[Stamped]:
    """Every committed record on a topic now, in partition then offset order.

    Raises:
        TimeoutError: The topic could not be read to its end in ``timeout_s``.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[Stamped] = []
        deadline = time.monotonic() + timeout_s
        # Under read_committed the end offset is the last stable offset; a transaction
        # marker at the end is skipped by the position, so position >= end means done.
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s} s")
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                found.extend(
                    Stamped(r.timestamp, r.timestamp_type, tp.partition, r.key, r.value)
                    for r in records
                    if r.value is not None
                )
        found.sort(key=lambda s: s.partition)
        return found
    finally:
        await consumer.stop()


async def wait_for_keys(
    bootstrap: str, topic: str, partitions: int, keys: set[bytes], *, timeout_s: float
) -> int:
    """Follow a topic from its beginning until a record with every one of ``keys`` is on it.

    Records are counted as the broker serves them under ``read_committed``; values are not
    decoded.

    Returns:
        How many of ``keys`` were seen (all of them, unless the timeout came first).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: set[bytes] = set()
        deadline = time.monotonic() + timeout_s
        while len(seen) < len(keys) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batch.values():
                seen.update(r.key for r in records if r.key in keys)
        return len(seen)
    finally:
        await consumer.stop()
