"""Following the control topic's scope commands into every worker's ``ControlBook``.

See ``_control`` for what the book holds and how runs are held and released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition

from streams._deadletters import too_large
from streams._kafka import kafka_consumer
from streams.coordinator._control import ControlBook
from topics import Codec, ControlCommand, DecodeError, TopicCatalog

__all__ = ["ControlFollower"]

log = logging.getLogger(__name__)


class ControlFollower:
    """Reads the whole control topic into a book, and says when a pause is lifted.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Decodes the commands.
        book: The book to apply them to.
        released: Called with the scope key of a pause a resume lifted.
        poison: Called with a record that does not decode and the reason.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        catalog: TopicCatalog,
        codec: Codec,
        book: ControlBook,
        released: Callable[[str], None],
        poison: Callable[[Any, str], Awaitable[None]],
    ) -> None:
        self.catalog = catalog
        self.codec = codec
        self.book = book
        self._released = released
        self._poison = poison
        self._bootstrap = bootstrap
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the topic to its end (what is in force), then follow it."""
        self._reader = kafka_consumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
        )
        await self._reader.start()
        topic = self.catalog.control
        tps = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
        self._reader.assign(tps)
        await self._reader.seek_to_beginning(*tps)
        ends = await self._reader.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            await self._read_once(200)
            for tp in list(pending):
                if await self._reader.position(tp) >= ends[tp]:
                    pending.discard(tp)
        self._task = asyncio.create_task(self._follow(), name="control-follower")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._reader.stop()

    async def _follow(self) -> None:
        while True:
            try:
                await self._read_once(500)
            except asyncio.CancelledError:
                raise
            except Exception:  # the follower must outlive a bad pass; the next one goes on
                log.exception("control follower pass failed; going on")
                await asyncio.sleep(0.5)

    async def _read_once(self, timeout_ms: int) -> None:
        batch = await self._reader.getmany(timeout_ms=timeout_ms, max_records=2000)
        for records in batch.values():
            for record in records:
                await self._take(record)

    async def _take(self, record: Any) -> None:
        if record.value is None:
            return  # a tombstone: compaction's, nothing to apply
        key = record.key.decode("utf-8", "replace") if record.key else ""
        if "/" not in key:
            return  # a run command (keyed by run id): its coordinator's, not ours
        problem = too_large(record)
        if problem is not None:
            await self._poison(record, problem)
            return
        try:
            command = self.codec.decode(record.value, ControlCommand)
        except DecodeError as exc:
            await self._poison(record, exc.reason)
            return
        scope = command.scope
        if scope is None:
            return
        log.info("control: %s %s by %r", command.action.value, scope, command.issued_by)
        if self.book.apply(command):
            self._released(scope)
