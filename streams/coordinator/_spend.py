"""Following the tenants' spend ledger (``baton.spend``) for the coordinators' verdicts.

Every coordinator reads the whole topic in log order into its ``SpendLedger`` (the pure
part, ``_ledger``). When an entry gives a verdict on a reservation of a run this worker
owns, the run is woken so ``decide`` acts on it at once. Entries that do not decode go to
the dead-letter topic; the follower goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition

from streams._deadletters import too_large
from streams._kafka import kafka_consumer
from streams.coordinator._ledger import SpendLedger
from topics import Codec, DecodeError, SpendRecorded, TopicCatalog

__all__ = ["SpendFollower"]

log = logging.getLogger(__name__)


class SpendFollower:
    """Applies ``baton.spend`` to a ledger and wakes the runs whose reservation got a verdict.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Decodes the entries.
        ledger: The ledger to apply them to.
        window_s: The longest ceiling window: the follower starts that far back.
        wake: Called with the run id of a verdict (the runtime decides if it owns it).
        poison: Called with a record that does not decode and the reason.
        clock: The time.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        catalog: TopicCatalog,
        codec: Codec,
        ledger: SpendLedger,
        window_s: float,
        wake: Callable[[str], None],
        poison: Callable[[Any, str], Awaitable[None]],
        clock: Callable[[], datetime],
    ) -> None:
        self.catalog = catalog
        self.codec = codec
        self.ledger = ledger
        self.window_s = window_s
        self._wake = wake
        self._poison = poison
        self._clock = clock
        self._bootstrap = bootstrap
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Seek to the start of the window and start following."""
        self._reader = kafka_consumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=20,
        )
        await self._reader.start()
        topic = self.catalog.spend.name
        tps = [TopicPartition(topic, p) for p in range(self.catalog.spend.partitions)]
        self._reader.assign(tps)
        since = int((self._clock().timestamp() - self.window_s - 600) * 1000)
        starts = await self._reader.offsets_for_times({tp: since for tp in tps})
        for tp in tps:
            found = starts.get(tp)
            if found is None:
                await self._reader.seek_to_end(tp)
            else:
                self._reader.seek(tp, found.offset)
        self._task = asyncio.create_task(self._follow(), name="spend-ledger")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._reader.stop()

    async def _follow(self) -> None:
        while True:
            batch = await self._reader.getmany(timeout_ms=500, max_records=2000)
            for records in batch.values():
                for record in records:
                    problem = too_large(record)
                    if problem is not None:
                        await self._poison(record, problem)
                        continue
                    try:
                        entry = self.codec.decode(record.value, SpendRecorded)
                    except DecodeError as exc:
                        await self._poison(record, exc.reason)
                        continue
                    if self.ledger.apply(entry) is not None:
                        self._wake(entry.run_id)
