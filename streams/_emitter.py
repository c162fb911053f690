"""Publishing events from the processor agents, on their run's partition."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import faust

from topics import Codec, DeadLetter, Event, StepResult, TaskSubmitted, TopicCatalog, partition_for

__all__ = ["Emitter", "run_id_of"]


def run_id_of(event: Event) -> str | None:
    """The run an event belongs to (its key), or ``None``."""
    if isinstance(event, TaskSubmitted):
        return event.task_id
    run_id = getattr(event, "run_id", None)
    return run_id if isinstance(run_id, str) and run_id else None


class Emitter:
    """Sends step results and dead letters through a Faust app's producer.

    Args:
        app: The app whose producer sends.
        catalog: The topics.
        codec: Encodes the events.
    """

    def __init__(self, app: faust.App, catalog: TopicCatalog, codec: Codec) -> None:
        self._app = app
        self._catalog = catalog
        self._codec = codec

    async def send(self, result: StepResult) -> Awaitable[Any]:
        """Queue a step result for its run's partition; returns the delivery future."""
        topic = self._catalog.step_results
        return await self._send(
            topic.name,
            result.run_id.encode(),
            self._codec.encode(result),
            partition_for(result.run_id, topic.partitions),
        )

    async def dead_letter(
        self, message: Any, *, error_class: str, reason: str, now: datetime
    ) -> DeadLetter:
        """Send a consumed record that cannot be processed to the dead-letter topic, whole."""
        letter = DeadLetter(
            dead_letter_id=f"{message.topic}/{message.partition}/{message.offset}",
            origin_topic=message.topic,
            origin_partition=message.partition,
            origin_offset=message.offset,
            key=message.key,
            payload=message.value or b"",
            error_class=error_class,
            error=reason,
            at=now,
        )
        await self._send(
            self._catalog.dead_letter.name,
            message.key,
            self._codec.encode(letter),
            message.partition % self._catalog.partitions,
        )
        return letter

    async def _send(
        self, topic: str, key: bytes | None, value: bytes, partition: int
    ) -> Awaitable[Any]:
        future: Awaitable[Any] = await self._app.producer.send(
            topic, key, value, partition, None, None
        )
        return future
