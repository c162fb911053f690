"""What runs beside the workers during a fault suite: the results reader and the reviewer.

Both run on the test's event loop and keep going through every fault: the reader follows
``baton.results`` with ``read_committed`` (what a downstream system sees, and when), the
reviewer approves every open request through the HTTP API of whichever worker answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.integration.chaos._workload import REVIEWER_TOKEN
from topics import Codec, DecodeError, RunResult, TopicCatalog

__all__ = ["Reviewer", "ResultLog", "Seen"]


@dataclass(frozen=True)
class Seen:
    """A committed result, and when the reader saw it (``time.time()``)."""

    result: RunResult
    partition: int
    at: float


class ResultLog:
    """Every committed result on the results topic, in the order the reader saw them."""

    def __init__(self, bootstrap: str, catalog: TopicCatalog) -> None:
        self.seen: list[Seen] = []
        self.first: dict[str, Seen] = {}
        self._catalog = catalog
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
        )
        self._codec = Codec()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start following the topic from its beginning."""
        await self._consumer.start()
        topic = self._catalog.results
        self._consumer.assign([TopicPartition(topic.name, p) for p in range(topic.partitions)])
        self._task = asyncio.create_task(self._follow(), name="chaos-results")

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def wait_for(self, run_ids: set[str], timeout: float) -> set[str]:
        """Until each of these runs has a result, or the timeout; the runs still without one."""
        deadline = time.monotonic() + timeout
        while missing := run_ids - self.first.keys():
            if time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.5)
        return set()

    async def _follow(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.time()
            for tp, records in batches.items():
                for record in records:
                    try:
                        result = self._codec.decode(record.value, RunResult)
                    except DecodeError:
                        continue
                    seen = Seen(result, tp.partition, now)
                    self.seen.append(seen)
                    self.first.setdefault(result.run_id, seen)


class Reviewer:
    """A scripted reviewer (``rita``, group ``leads``) approving every request it sees.

    It lists open requests on one worker's API and decides each through it, going on to the
    next worker whenever one does not answer. A decision whose answer was lost is sent again
    if the request is still open 15 s later; the coordinator counts one vote per approver.

    Args:
        apis: The API base URLs of the workers that may answer now.
    """

    def __init__(self, apis: Callable[[], list[str]]) -> None:
        self.decided = 0
        self.errors = 0
        self._apis = apis
        self._sent: dict[str, float] = {}
        self._turn = 0
        self._running = asyncio.Event()
        self._running.set()
        self._task: asyncio.Task[None] | None = None
        self._http = httpx.AsyncClient(
            timeout=5, headers={"Authorization": f"Bearer {REVIEWER_TOKEN}"}
        )

    def start(self) -> None:
        """Start reviewing."""
        self._task = asyncio.create_task(self._review(), name="chaos-reviewer")

    async def stop(self) -> None:
        """Stop reviewing."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()

    def pause(self) -> None:
        """Decide nothing until ``resume`` (requests stay parked)."""
        self._running.clear()

    def resume(self) -> None:
        """Decide again."""
        self._running.set()

    async def pending(self) -> int | None:
        """How many requests are open, as one worker lists them; ``None`` if none answers."""
        listed = await self._list()
        return None if listed is None else len(listed[1])

    async def _review(self) -> None:
        while True:
            await self._running.wait()
            listed = await self._list()
            if listed is not None:
                api, items = listed
                for item in items:
                    if not self._running.is_set():
                        break
                    approval_id = str(item["approval_id"])
                    if time.monotonic() - self._sent.get(approval_id, -1e9) < 15:
                        continue
                    await self._decide(api, approval_id)
            await asyncio.sleep(0.3)

    async def _list(self) -> tuple[str, list[dict[str, object]]] | None:
        apis = self._apis()
        for _ in range(len(apis)):
            self._turn += 1
            api = apis[self._turn % len(apis)]
            try:
                response = await self._http.get(f"{api}/v1/approvals")
            except httpx.HTTPError:
                self.errors += 1
                continue
            if response.status_code == 200:
                return api, list(response.json()["approvals"])
            self.errors += 1
        return None

    async def _decide(self, api: str, approval_id: str) -> None:
        try:
            response = await self._http.post(
                f"{api}/v1/approvals/{approval_id}/decision", json={"verdict": "approve"}
            )
        except httpx.HTTPError:
            # Sent or not: if it still shows in 15 s, it is sent again.
            self._sent[approval_id] = time.monotonic()
            self.errors += 1
            return
        if response.status_code in (200, 202, 409):
            self._sent[approval_id] = time.monotonic()
            self.decided += response.status_code != 409
        else:
            self.errors += 1
