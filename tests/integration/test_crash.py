"""Workers die (SIGKILL) mid-batch and come back: every run still completes exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest

from streams._client import BatonClient
from tests.integration.workers import (
    Cluster,
    Workers,
    all_results,
    api_access,
    ops,
    wait_until_drained,
)
from topics import RunResult, RunStatus, TaskSubmitted

SLOW_MODELS = """
routes:
  slow:
    provider: scripted
    model: scripted-slow
    latency_ms: 300
    script:
      - reply: "an answer to {{ prompt }}"
"""

WORKFLOW = """
workflow: crashy
version: 1
steps:
  ask: {kind: llm, model: slow, prompt: "question {{ input.n }}", timeout: 4s}
  shape: {kind: transform, after: [ask],
          output: {n: "{{ input.n }}", text: "{{ steps.ask.output }}"}}
  again: {kind: llm, after: [shape], model: slow, prompt: "follow up {{ steps.shape.output.n }}",
          timeout: 4s}
  check: {kind: validate, after: [again], value: "{{ steps.again.output }}",
          schema: {type: string, minLength: 5}}
output: {n: "{{ input.n }}", answer: "{{ steps.again.output }}"}
"""

RUNS = 300


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(SLOW_MODELS)
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        # Few steps at a time, so the batch is still running when the worker dies.
        extra_env={"BATON_PROCESSOR_CONCURRENCY": "24", **api_access(tmp_path / "access")},
    )
    assert cluster.baton("topics", "create").returncode == 0
    workflow = tmp_path / "crashy.yaml"
    workflow.write_text(WORKFLOW)
    deployed = cluster.baton("workflows", "deploy", str(workflow))
    assert deployed.returncode == 0, deployed.stderr
    return cluster


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
async def test_sigkill_mid_batch_loses_nothing_and_doubles_nothing(
    cluster: Cluster, workers: Workers, guarantee: str
) -> None:
    env = {"BATON_PROCESSING_GUARANTEE": guarantee}
    worker = workers.start("w1", **env)
    tasks = [
        TaskSubmitted(task_id=f"crash-{i}", workflow="crashy", input={"n": i}) for i in range(RUNS)
    ]
    ids = [t.task_id for t in tasks]
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        before = await client.wait(ids, timeout_s=60, stop_after=RUNS // 4)
        assert RUNS // 4 <= len(before) < RUNS, "the batch should be running when we kill"
        worker.kill()
        workers.start("w1", **env)  # same worker id: same local store, as after a reboot
        rest = await client.wait([i for i in ids if i not in before], timeout_s=120)
    results: dict[str, RunResult] = {**before, **rest}
    missing = [i for i in ids if i not in results]
    assert not missing, f"{len(missing)} runs never finished: " + await _describe(
        workers, missing[:3]
    )
    for i in range(RUNS):
        result = results[f"crash-{i}"]
        assert result.status == RunStatus.completed, result.reason
        assert result.output == {"n": i, "answer": f"an answer to follow up {i}"}
    await wait_until_drained(cluster)
    published = await all_results(cluster)
    assert {r.run_id for r in published} == set(ids)
    if guarantee == "exactly_once":
        counts = Counter(r.run_id for r in published)
        duplicates = {run: n for run, n in counts.items() if n != 1}
        assert not duplicates, f"runs with more than one result: {duplicates}"
    else:
        # At-least-once may publish a result again after a crash; never a different one.
        for result in published:
            assert result.output == results[result.run_id].output


async def _describe(workers: Workers, run_ids: list[str]) -> str:
    """What the worker knows of some runs, for a useful failure message."""
    worker = workers.started[-1]
    lines = []
    async with httpx.AsyncClient(headers=ops()) as http:
        for run_id in run_ids:
            response = await http.get(f"{worker.api}/v1/runs/{run_id}")
            lines.append(f"{run_id}: {response.status_code} {response.text[:1500]}")
    return "\n".join(lines) + "\n--- worker log ---\n" + worker.log_tail(40)
