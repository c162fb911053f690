"""A worker frozen past its session timeout wakes up as a zombie: it is fenced, then serves again.

Found by the fault suite (``test_chaos.py``): a coordinator woken from SIGSTOP rejoined the group
and was given back a partition it had owned before the freeze. It kept that partition as it
was: its transactional producers, fenced by the member that took over meanwhile, failed every
transaction from then on, and the failure of that partition's batch ended each whole pass, so
the records fetched for its other partitions were skipped and never handled (a task lost, step
results lost, runs stuck).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from streams._client import BatonClient
from tests.integration.workers import Cluster, WorkerProcess, Workers, all_results, api_access
from topics import RunStatus, TaskSubmitted

MODELS = """
routes:
  quick:
    provider: scripted
    model: scripted-quick
    latency_ms: 50
    script:
      - reply: "an answer to {{ prompt }}"
"""

WORKFLOW = """
workflow: sleepy
version: 1
steps:
  ask: {kind: llm, model: quick, prompt: "question {{ input.n }}", timeout: 5s}
  shape: {kind: transform, after: [ask], output: "{{ steps.ask.output }}"}
output: {n: "{{ input.n }}", answer: "{{ steps.shape.output }}"}
"""


async def test_a_zombie_coordinator_is_fenced_then_takes_its_partitions_over_afresh(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={"BATON_SESSION_TIMEOUT": "6", **api_access(tmp_path / "access")},
    )
    cluster.deploy(sleepy=WORKFLOW)
    workers = Workers(cluster)
    try:
        w1, w2 = workers.start("w1"), workers.start("w2")
        await _until_owned(cluster, {"w1": w1, "w2": w2}, lambda owned: min(owned.values()) > 0)
        async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
            await _runs(client, range(0, 40))
            w2.pause()
            await _until_owned(cluster, {"w1": w1}, lambda owned: owned["w1"] == 4)
            # The runs of w2's partitions move on without it.
            await _runs(client, range(40, 80))
            w2.resume()
            await _until_owned(cluster, {"w1": w1, "w2": w2}, lambda owned: min(owned.values()) > 0)
            await _runs(client, range(80, 200))
        counts = Counter(r.run_id for r in await all_results(cluster))
        assert {run: n for run, n in counts.items() if n != 1} == {}
        assert len(counts) == 200
        log = w2.log_path.read_text(errors="replace")
        assert "coordinator pass failed" not in log
        assert "taking every partition over afresh" in log
    finally:
        workers.stop_all()


async def _runs(client: BatonClient, ns: range) -> None:
    tasks = [TaskSubmitted(task_id=f"z-{n}", workflow="sleepy", input={"n": n}) for n in ns]
    await client.send(tasks)
    results = await client.wait([t.task_id for t in tasks], timeout_s=90)
    missing = sorted({t.task_id for t in tasks} - results.keys())
    assert not missing, f"{len(missing)} runs without a result, e.g. {missing[:3]}"
    for n in ns:
        result = results[f"z-{n}"]
        assert result.status == RunStatus.completed, result.reason
        assert result.output == {"n": n, "answer": f"an answer to question {n}"}


async def _until_owned(
    cluster: Cluster,
    workers: dict[str, WorkerProcess],
    done: Callable[[dict[str, int]], bool],
    timeout: float = 60,
) -> None:
    """Until the partitions the workers serve split without overlap and ``done`` holds."""
    deadline = time.monotonic() + timeout
    owned: dict[str, list[int]] = {}
    while time.monotonic() < deadline:
        async with httpx.AsyncClient(timeout=3) as http:
            try:
                owned = {
                    name: (await http.get(f"{w.api}/healthz")).json()["partitions"]
                    for name, w in workers.items()
                }
            except httpx.HTTPError:
                owned = {}
        every = sorted(p for ps in owned.values() for p in ps)
        if every == list(range(cluster.partitions)) and done(
            {name: len(ps) for name, ps in owned.items()}
        ):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"partitions not split as expected within {timeout}s: {owned}")
