"""How baton builds its Kafka clients: the settings every consumer needs, and CloudEvents.

Every producer is an ``EventProducer``: it puts CloudEvents headers on every record baton
writes (``topics._cloudevents``).

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

from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from topics import CloudEvents, Codec

__all__ = ["METADATA_MAX_AGE_MS", "EventProducer", "kafka_consumer", "kafka_producer"]

METADATA_MAX_AGE_MS = 5_000


def kafka_consumer(*topics: str, **config: Any) -> AIOKafkaConsumer:
    """An ``AIOKafkaConsumer`` with baton's settings; ``config`` as aiokafka takes it."""
    config.setdefault("metadata_max_age_ms", METADATA_MAX_AGE_MS)
    return AIOKafkaConsumer(*topics, **config)


class EventProducer(AIOKafkaProducer):  # type: ignore[misc]  # aiokafka is untyped
    """An ``AIOKafkaProducer`` whose records carry CloudEvents headers (``send_and_wait`` too).

    Args:
        events: Builds the headers of this producer's source.
        **config: As aiokafka takes it.
    """

    def __init__(self, events: CloudEvents, **config: Any) -> None:
        super().__init__(**config)
        self.events = events

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> Any:
        """Queue a record, its CloudEvents headers added; the delivery future, as aiokafka's."""
        headers = self.events.headers(key, value, headers)
        return await super().send(topic, value, key, partition, timestamp_ms, headers)


def kafka_producer(source: str, codec: Codec, **config: Any) -> EventProducer:
    """A producer writing as ``source`` (its ``ce_source``); ``codec`` names the event types."""
    return EventProducer(CloudEvents(source, codec.type_name), **config)
