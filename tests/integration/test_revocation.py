"""A revocation does not wait forever for a commit that does not end.

Seen once by the fault suite, in a rolling restart: a worker logged "Revoking previously
assigned partitions" and never rejoined; the group waited for it (up to its rebalance
timeout, five minutes) and every partition stood still meanwhile. Here one batch's commit
hangs until its worker has rejoined the group, and a second worker joins: the revocation
must give up on that commit after ``REVOKE_SETTLE_S``, the rebalance complete, and every run
end with exactly one committed result (the next owner fences what was still in flight).

Found by this test: the partition whose commit hung moved to the new worker, its producers
were stopped with the commit still awaiting its transaction's end, which a stopped producer
never reports, so the commit hung for good, and with it the worker's stop (and any later
batch of that partition, had it come back). A partition that leaves now abandons its commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from streams.coordinator import _loop
from tests.integration.inprocess import in_process_worker, publish_steady, steady_cluster
from tests.integration.workers import WorkerProcess, poll_decoded
from topics import RunResult, RunStatus

RUNS = 40


@pytest.mark.timeout(150)  # a worker whose stop waits for the abandoned commit hangs
async def test_a_commit_that_does_not_end_does_not_keep_a_worker_out_of_the_group(
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = steady_cluster(kafka_bootstrap, topic_prefix, tmp_path)
    catalog = cluster.catalog
    monkeypatch.setattr(_loop, "REVOKE_SETTLE_S", 2.0)
    caplog.set_level(logging.WARNING, logger=_loop.__name__)

    second = WorkerProcess(cluster, "w2")
    async with in_process_worker(cluster, exactly_once=True) as runtime:
        loop = runtime.loop
        await _until(lambda: len(loop.ready) == catalog.partitions, "the worker owns everything")

        commit_one = loop._commit_one
        assigned = loop.on_partitions_assigned
        rejoined = asyncio.Event()
        hung: list[int] = []

        # The last partition: the assignor keeps the lower half with the member that owns
        # everything and hands the upper half to the newcomer, so it moves while it hangs.
        moving = catalog.partitions - 1

        async def hang_once(batch: Any) -> bool:
            if not hung and batch.partition == moving:
                hung.append(batch.partition)
                await rejoined.wait()  # the commit ends only once its worker is back
            return await commit_one(batch)

        async def noting_assigned(partitions: Any) -> None:
            if hung:
                rejoined.set()
            await assigned(partitions)

        monkeypatch.setattr(loop, "_commit_one", hang_once)
        monkeypatch.setattr(loop, "on_partitions_assigned", noting_assigned)
        await publish_steady(cluster, RUNS)
        await _until(lambda: bool(hung), "a commit to hang")

        second.start()  # a rebalance while that commit hangs
        try:
            results = await poll_decoded(
                cluster,
                catalog.results.name,
                RunResult,
                lambda found: len({r.run_id for r in found}) == RUNS,
                what=f"a result for each of the {RUNS} runs after the rebalance",
                timeout=90,
            )
        finally:
            await asyncio.to_thread(second.stop)
        moved = moving not in loop.ready
        # Leaving the block stops the worker: it must not wait for the abandoned commit.

    assert rejoined.is_set(), "the hung worker never rejoined"
    assert moved, "the partition whose commit hung stayed with its worker"
    messages = [r.getMessage() for r in caplog.records]
    assert any("still committing" in m for m in messages)
    assert any(f"partition {moving} left with a commit in flight" in m for m in messages)
    assert len(results) == RUNS, "a run has more than one committed result"
    assert {r.status for r in results} == {RunStatus.completed}


async def _until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        await asyncio.sleep(0.05)
