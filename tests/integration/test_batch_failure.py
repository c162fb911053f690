"""A batch that fails while it is open is undone alone: the pass, and the other partitions, go on.

Found in CI (``test_zombie.py``): a zombie's producer, fenced while the worker was frozen,
refused a send in the middle of a pass (``IllegalOperation: Can't send messages while not in
transaction``). The exception ended the whole pass: the records fetched after it, on that
partition and on every other one, were never handled, while the consumer's position had
moved past them, so the next commit of those partitions skipped them. Here the send of one
record fails once, in a worker whose producers are healthy, and every run must still finish.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import IllegalOperation

from tests.integration.inprocess import in_process_worker, publish_steady, steady_cluster
from tests.integration.workers import poll_decoded
from topics import RunResult, RunStatus

WORKFLOW = """
workflow: steady
version: 1
steps:
  ask: {kind: llm, model: quick, prompt: "question {{ input.n }}"}
  shape: {kind: transform, after: [ask], output: "{{ steps.ask.output }}"}
output: {n: "{{ input.n }}", answer: "{{ steps.shape.output }}"}
"""

RUNS = 60


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
async def test_a_send_refused_mid_pass_loses_no_record_of_any_partition(
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exactly_once: bool,
) -> None:
    cluster = steady_cluster(kafka_bootstrap, topic_prefix, tmp_path, WORKFLOW)
    catalog = cluster.catalog
    # Every task is waiting before the worker starts, so its first fetches bring records of
    # several partitions at once, and the failure falls in the middle of one.
    await publish_steady(cluster, RUNS)

    async with in_process_worker(cluster, exactly_once=exactly_once) as runtime:
        handler = runtime.loop.handler
        handle = handler.record
        refused: list[tuple[int, int]] = []

        async def refuse_one_send(batch: Any, record: Any) -> None:
            if not refused and record.topic == catalog.tasks.name and record.offset >= 3:
                refused.append((record.partition, record.offset))
                raise IllegalOperation("Can't send messages while not in transaction")
            await handle(batch, record)

        monkeypatch.setattr(handler, "record", refuse_one_send)
        results = await poll_decoded(
            cluster,
            catalog.results.name,
            RunResult,
            lambda found: len({r.run_id for r in found}) == RUNS,
            what=f"a result for each of the {RUNS} runs",
            timeout=90,
        )
    assert refused, "the failure was never injected"
    by_run: dict[str, set[tuple[RunStatus, str]]] = {}
    for result in results:
        by_run.setdefault(result.run_id, set()).add((result.status, str(result.output)))
    assert all(len(outcomes) == 1 for outcomes in by_run.values()), by_run
    assert {status for outcomes in by_run.values() for status, _ in outcomes} == {
        RunStatus.completed
    }
    if exactly_once:
        assert len(results) == RUNS
