"""State stays bounded: finished runs leave memory and the changelog after the retention.

20,000 runs on one worker, in four waves of 5,000, with a retention of 15 s. After the first
wave and after the last, once their runs are past the retention, the worker's resident
memory and what a takeover reads are measured: they must not grow with the runs made. Inside
the window a task with a finished run's id starts nothing; after it, the same id starts a
new run, as the README says.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams._client import BatonClient
from tests.integration.workers import (
    Cluster,
    WorkerProcess,
    Workers,
    has,
    poll_run_events,
    results_by_run,
)
from topics import RunStatus, TaskSubmitted

RETENTION_S = 15
WAVE = 5_000

WORKFLOW = """
workflow: tiny
version: 1
steps:
  echo: {kind: transform, output: {n: "{{ input.n }}"}}
"""


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        extra_env={
            "BATON_RUN_RETENTION": f"{RETENTION_S}s",
            "BATON_FLUSH_INTERVAL": "1",
        },
    )
    cluster.deploy(tiny=WORKFLOW)
    return cluster


def health(worker: WorkerProcess) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{worker.api}/healthz", timeout=5).json()
    return answer


async def until_forgotten(worker: WorkerProcess, timeout: float = 90) -> None:
    """Until the worker remembers no finished run (every one is past the retention)."""
    deadline = time.monotonic() + timeout
    while health(worker)["runs"]["finished"] > 0:
        assert time.monotonic() < deadline, f"still remembered: {health(worker)['runs']}"
        await asyncio.sleep(0.5)


async def wave(client: BatonClient, label: str) -> None:
    ids = [f"{label}-{i}" for i in range(WAVE)]
    await client.send(TaskSubmitted(task_id=i, workflow="tiny", input={"n": i}) for i in ids)
    results = await client.wait(ids, timeout_s=240)
    assert len(results) == WAVE
    assert {r.status for r in results.values()} == {RunStatus.completed}


async def until_the_broker_forgot(cluster: Cluster, timeout: float = 180) -> None:
    """Until the broker has deleted the run-state records past the retention.

    ``run-state`` is ``compact,delete`` with the run retention, so the broker deletes them; it
    does so in its own time (whole segments, on a periodic check), so this waits for it.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(cluster.catalog.run_state.name, p) for p in range(4)]
        deadline = time.monotonic() + timeout
        while True:
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            left = sum(ends[tp] - starts[tp] for tp in tps)
            if left == 0:
                return
            assert time.monotonic() < deadline, f"{left} run-state records still on the broker"
            await asyncio.sleep(1)
    finally:
        await consumer.stop()


def resident(worker: WorkerProcess) -> int:
    assert worker.process is not None
    return int(psutil.Process(worker.process.pid).memory_info().rss)


def restarted(workers: Workers) -> tuple[WorkerProcess, dict[str, float]]:
    """Stop the worker and start it again: what its takeover read, in records and seconds."""
    workers.started[-1].stop()
    worker = workers.start("w1")
    deadline = time.monotonic() + 60
    while True:
        restored = health(worker).get("restored", {})
        if len(restored) == 4:  # every partition taken over
            break
        assert time.monotonic() < deadline, f"not restored: {restored}"
        time.sleep(0.2)
    return worker, {
        "records": sum(p["snapshots"] + p["journal"] for p in restored.values()),
        "seconds": sum(p["seconds"] for p in restored.values()),
    }


async def test_memory_and_takeovers_stay_flat_once_runs_are_past_the_retention(
    cluster: Cluster, workers: Workers
) -> None:
    worker = workers.start("w1")
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await wave(client, "a")
        # The coordinator's own writes come in batches, a journal and an event record per
        # commit for many runs, and /healthz counts them.
        written = health(worker)["written"]
        journal = written.get(f"{cluster.catalog.run_journal.name}:records", 0)
        events = written.get(f"{cluster.catalog.run_events.name}:records", 0)
        assert 0 < journal < WAVE and 0 < events < WAVE, written
        # Inside the window: a second task with a finished run's id starts nothing.
        await client.send([TaskSubmitted(task_id="a-0", workflow="tiny", input={"n": "again"})])
        await poll_run_events(cluster, "a-0", has("task_duplicate"))
        assert (await results_by_run(cluster))["a-0"] == 1

        await until_forgotten(worker)
        first_memory = resident(worker)
        await until_the_broker_forgot(cluster)
        worker, first_read = restarted(workers)

        for label in ("b", "c", "d"):
            await wave(client, label)
        await until_forgotten(worker)
        last_memory = resident(worker)
        await until_the_broker_forgot(cluster)
        worker, last_read = restarted(workers)

        # After the window: the same id starts a new run.
        await client.send([TaskSubmitted(task_id="a-0", workflow="tiny", input={"n": "new"})])
        fresh = (await client.wait(["a-0"], timeout_s=60))["a-0"]
        assert fresh.status == RunStatus.completed and fresh.output == {"n": "new"}
    assert (await results_by_run(cluster))["a-0"] == 2

    # 15,000 more runs, all past the retention: what is kept and read does not grow with them.
    assert last_memory <= first_memory * 1.1 + 16 * 2**20, (first_memory, last_memory)
    assert last_read["records"] <= first_read["records"] + 500, (first_read, last_read)
    assert last_read["seconds"] <= first_read["seconds"] * 2 + 2, (first_read, last_read)
