"""How baton builds its Kafka consumers: one place for the settings every consumer needs.

``metadata_max_age_ms``: aiokafka 0.14 does not refresh its metadata when a ListOffsets
request (the position reset of a partition with no committed offset, or a seek to an end)
is answered ``NOT_LEADER_FOR_PARTITION`` or cannot reach the node it thinks leads; it retries
the same node until the periodic refresh, five minutes by default, and fetches nothing from
that node meanwhile. After a broker restart and the leader moving back, every partition the
node leads then stalls for minutes (the Java client fixed the same bug in KAFKA-9535). A
refresh every few seconds bounds the stall at the cost of one small Metadata request per
consumer per period. docs/decisions/0006-consumer-metadata-age.md.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

__all__ = ["METADATA_MAX_AGE_MS", "kafka_consumer"]

METADATA_MAX_AGE_MS = 5_000


def kafka_consumer(*topics: str, **config: Any) -> AIOKafkaConsumer:
    """An ``AIOKafkaConsumer`` with baton's settings; ``config`` as aiokafka takes it."""
    config.setdefault("metadata_max_age_ms", METADATA_MAX_AGE_MS)
    return AIOKafkaConsumer(*topics, **config)
