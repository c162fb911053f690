"""A SIGTERM lets the steps in flight finish: every run completes, no step runs twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from streams._client import BatonClient
from tests.fakes.tool_server import Delay, FakeToolServer, Json
from tests.integration.workers import Cluster, Workers, results_by_run
from topics import RunStatus, TaskSubmitted

RUNS = 100

WORKFLOW = """
workflow: patient
version: 1
steps:
  call: {kind: tool, tool: slow, args: {n: "{{ input.n }}"}, timeout: 60s}
"""


@pytest.fixture
def cluster(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, tool_server: FakeToolServer
) -> Cluster:
    tool_server.route("POST", "/slow", Delay(3.0, Json({"done": True})))
    tools = tmp_path / "tools.yaml"
    tools.write_text(
        f"""
tools:
  slow:
    kind: http
    description: Takes its time.
    base_url: {tool_server.url}
    method: POST
    path: /slow
    body: {{n: "{{{{ args.n }}}}"}}
    timeout_s: 30
    retries: 0
"""
    )
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        extra_env={"BATON_TOOLS_FILE": str(tools), "BATON_STOP_GRACE": "20"},
    )
    cluster.deploy(patient=WORKFLOW)
    return cluster


async def test_sigterm_with_100_steps_in_flight_loses_nothing_and_runs_none_twice(
    cluster: Cluster, workers: Workers, tool_server: FakeToolServer
) -> None:
    worker = workers.start("w1")
    ids = [f"patient-{i}" for i in range(RUNS)]
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(TaskSubmitted(task_id=i, workflow="patient", input={"n": i}) for i in ids)
        await tool_server.wait_for_requests_async(RUNS, timeout=60)  # every step in flight
        worker.stop()  # SIGTERM, and wait for the process to end
        assert worker.process is not None and worker.process.returncode == 0, worker.log_tail()
        workers.start("w1")  # what was committed is taken up again
        results = await client.wait(ids, timeout_s=120)
    assert {r.status for r in results.values()} == {RunStatus.completed}
    assert set(results) == set(ids)
    keys = Counter(r.headers["idempotency-key"] for r in tool_server.requests)
    assert len(keys) == RUNS and set(keys.values()) == {1}, keys.most_common(3)
    counts = await results_by_run(cluster)
    assert all(counts[i] == 1 for i in ids)
