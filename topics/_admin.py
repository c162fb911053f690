"""Creating and inspecting the catalog's topics on a cluster.

``create_topics`` is idempotent: it creates what is missing and leaves what exists. It
refuses to touch a cluster whose co-partitioned topics disagree on their partition count,
because then one run's events would land on different partitions and no single
coordinator would see them all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from topics._catalog import Topic, TopicCatalog
from topics._errors import ConfigurationError, RetryableError

__all__ = ["TopicState", "create_topics", "describe_topics", "partition_counts"]

_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36
_LEADER_NOT_AVAILABLE = 5


@dataclass(frozen=True)
class TopicState:
    """A catalog topic as the cluster has it.

    Attributes:
        topic: The catalog entry.
        partitions: Partitions on the cluster, or ``None`` when the topic does not exist.
        replication_factor: Replicas of partition 0, or ``None``.
        configs: Topic-level configs the catalog sets, as the cluster reports them.
    """

    topic: Topic
    partitions: int | None
    replication_factor: int | None
    configs: dict[str, str]

    @property
    def exists(self) -> bool:
        """Whether the topic exists on the cluster."""
        return self.partitions is not None

    @property
    def problem(self) -> str | None:
        """What is wrong with it, or ``None``."""
        if self.partitions is None:
            return "missing"
        if self.partitions != self.topic.partitions:
            return f"has {self.partitions} partitions, the catalog says {self.topic.partitions}"
        return None


async def _admin(bootstrap: str) -> AIOKafkaAdminClient:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        await client.start()
    except Exception as exc:
        await client.close()
        raise RetryableError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    return client


async def _metadata(
    client: AIOKafkaAdminClient, names: list[str], timeout_s: float = 15.0
) -> dict[str, dict[str, Any]]:
    """Metadata of the topics that exist; waits out topics created a moment ago."""
    deadline = time.monotonic() + timeout_s
    while True:
        found, settling = {}, []
        for item in await client.describe_topics(names):
            code = item["error_code"]
            if code == 0 and all(p["error_code"] == 0 for p in item["partitions"]):
                found[item["topic"]] = item
            elif code != _UNKNOWN_TOPIC:
                settling.append(item["topic"])
        if not settling:
            return found
        if time.monotonic() > deadline:
            raise RetryableError(f"no metadata for topics after {timeout_s}s: {settling}")
        await asyncio.sleep(0.1)


async def partition_counts(bootstrap: str, names: list[str]) -> dict[str, int]:
    """How many partitions each of these topics has, for those that exist (any topic)."""
    client = await _admin(bootstrap)
    try:
        found = await _metadata(client, names)
    finally:
        await client.close()
    return {name: len(meta["partitions"]) for name, meta in found.items()}


async def describe_topics(bootstrap: str, catalog: TopicCatalog) -> list[TopicState]:
    """The state of every catalog topic on the cluster."""
    client = await _admin(bootstrap)
    try:
        topics = list(catalog)
        found = await _metadata(client, [t.name for t in topics])
        configs = await _configs(client, [t for t in topics if t.name in found])
    finally:
        await client.close()
    states = []
    for topic in topics:
        meta = found.get(topic.name)
        if meta is None:
            states.append(TopicState(topic, None, None, {}))
            continue
        partitions = sorted(meta["partitions"], key=lambda p: p["partition"])
        replicas = len(partitions[0]["replicas"]) if partitions else None
        states.append(TopicState(topic, len(partitions), replicas, configs.get(topic.name, {})))
    return states


async def _configs(client: AIOKafkaAdminClient, topics: list[Topic]) -> dict[str, dict[str, str]]:
    if not topics:
        return {}
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, t.name, {k: None for k in t.configs()})
        for t in topics
    ]
    result: dict[str, dict[str, str]] = {}
    for response in await client.describe_configs(resources):
        for resource in response.resources:
            _, _, _, name, entries = resource[:5]
            result[name] = {entry[0]: entry[1] for entry in entries}
    return result


def _refuse_disagreements(catalog: TopicCatalog, found: dict[str, dict[str, Any]]) -> None:
    by_count: dict[int, list[str]] = {}
    for topic in catalog:
        meta = found.get(topic.name)
        if meta is not None and topic.copartitioned:
            by_count.setdefault(len(meta["partitions"]), []).append(topic.name)
    if set(by_count) <= {catalog.partitions}:
        return
    if len(by_count) == 1:
        (count,) = by_count
        raise ConfigurationError(
            f"the existing topics have {count} partitions but BATON_PARTITIONS is "
            f"{catalog.partitions}: set BATON_PARTITIONS={count} (the partition count of "
            "co-partitioned topics cannot change once they exist)"
        )
    groups = "; ".join(
        f"{count} partitions: {', '.join(names)}" for count, names in sorted(by_count.items())
    )
    raise ConfigurationError(
        f"co-partitioned topics disagree on their partition count ({groups}). Refusing to "
        "continue: one run's events would land on different partitions. Recreate the topics "
        f"that do not have {catalog.partitions}."
    )


async def create_topics(
    bootstrap: str,
    catalog: TopicCatalog,
    replication_factor: int | None = None,
    timeout_s: float = 30.0,
) -> tuple[list[str], list[str]]:
    """Create every missing catalog topic and wait until each has a leader.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics to create.
        replication_factor: Replicas per topic; ``None`` means ``min(3, brokers)``.
        timeout_s: How long to wait for the new topics to have leaders.

    Returns:
        The names created and the names that already existed.

    Raises:
        ConfigurationError: Existing co-partitioned topics disagree on partition count.
    """
    client = await _admin(bootstrap)
    try:
        names = [t.name for t in catalog]
        found = await _metadata(client, names)
        _refuse_disagreements(catalog, found)
        if replication_factor is None:
            brokers = len((await client.describe_cluster())["brokers"])
            replication_factor = min(3, brokers)
        missing = [t for t in catalog if t.name not in found]
        if missing:
            response = await client.create_topics(
                [
                    NewTopic(t.name, t.partitions, replication_factor, topic_configs=t.configs())
                    for t in missing
                ]
            )
            for name, code, *rest in response.topic_errors:
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    message = rest[0] if rest else ""
                    raise ConfigurationError(
                        f"creating {name} failed: error code {code} {message}".rstrip()
                    )
            await _wait_for_leaders(client, [t.name for t in missing], timeout_s)
            # A topic created by someone else a moment ago can look missing above (the
            # broker's metadata lags the controller); check again now that all exist.
            _refuse_disagreements(catalog, await _metadata(client, names))
        return [t.name for t in missing], [n for n in names if n in found]
    finally:
        await client.close()


async def _wait_for_leaders(
    client: AIOKafkaAdminClient, names: list[str], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        pending = []
        for item in await client.describe_topics(names):
            ready = item["error_code"] == 0 and all(
                p["error_code"] == 0 and p["leader"] >= 0 for p in item["partitions"]
            )
            if not ready:
                pending.append(item["topic"])
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RetryableError(f"topics still without a leader after {timeout_s}s: {pending}")
        await asyncio.sleep(0.1)
