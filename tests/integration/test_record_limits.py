"""A run whose state would pass the record size limit fails cleanly; its partition goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams._client import BatonClient
from tests.integration.workers import Cluster, Workers, has, poll_run_events
from topics import MAX_RECORD_BYTES, RunStatus, TaskSubmitted, partition_for

# Each step copies the 300 KB input: after the third, the run's state passes 1,000,000 bytes.
WORKFLOW = """
workflow: heavy
version: 1
steps:
  a: {kind: transform, output: "{{ input.text }}"}
  b: {kind: transform, after: [a], output: "{{ input.text }}"}
  c: {kind: transform, after: [b], output: "{{ input.text }}"}
"""


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    cluster = Cluster(kafka_bootstrap, topic_prefix, tmp_path / "home")
    cluster.deploy(heavy=WORKFLOW)
    return cluster


async def test_a_run_whose_state_would_pass_the_record_limit_fails_and_its_neighbours_complete(
    cluster: Cluster, workers: Workers
) -> None:
    workers.start("w1")
    partitions = cluster.catalog.partitions
    big = "big-1"
    # Small runs on the same partition, before and after it.
    small = [
        f"small-{i}"
        for i in range(200)
        if partition_for(f"small-{i}", partitions) == partition_for(big, partitions)
    ][:6]
    tasks = [TaskSubmitted(task_id=s, workflow="heavy", input={"text": "tiny"}) for s in small[:3]]
    tasks.append(TaskSubmitted(task_id=big, workflow="heavy", input={"text": "x" * 300_000}))
    tasks += [TaskSubmitted(task_id=s, workflow="heavy", input={"text": "tiny"}) for s in small[3:]]
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        results = await client.wait([t.task_id for t in tasks], timeout_s=120)
    failed = results[big]
    assert failed.status == RunStatus.failed
    assert failed.reason == (
        f"StepResult not applied: a record of the run would pass the size limit "
        f"({MAX_RECORD_BYTES} bytes)"
    )
    assert failed.output is None
    for name in small:
        assert results[name].status == RunStatus.completed and results[name].output == "tiny"
    events = await poll_run_events(cluster, big, has("run_too_large", "run_failed"))
    assert [e.detail for e in events if e.type == "run_too_large"] == [
        {"limit_bytes": MAX_RECORD_BYTES, "event": "StepResult"}
    ]
