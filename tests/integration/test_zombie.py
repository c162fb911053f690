"""A worker frozen past its session timeout wakes up as a zombie: it is fenced, then serves again.

Two regressions, both found by the fault suite (``test_chaos.py``).

Found by the fault suite (``test_chaos.py``): a coordinator woken from SIGSTOP rejoined the group
and was given back a partition it had owned before the freeze. It kept that partition as it
was: its transactional producers, fenced by the member that took over meanwhile, failed every
transaction from then on, and the failure of that partition's batch ended each whole pass, so
the records fetched for its other partitions were skipped and never handled (a task lost, step
results lost, runs stuck).

Under at-least-once nothing fences a zombie's plain producer. Woken, it fired the timers that
fell due while it was frozen, in a batch that consumed no input (so no offset commit asked the
group whether it still belonged), flushed, and deleted the run journal up to its own write:
past the entries of the worker that owned its partitions meanwhile. Runs that worker started
were in that journal only, so when the partitions came back to the zombie, no one knew them.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from streams._client import BatonClient
from tests.integration.workers import (
    Cluster,
    WorkerProcess,
    Workers,
    all_results,
    api_access,
    run_events,
)
from topics import RunStatus, TaskSubmitted, partition_for

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
    cluster = _cluster(kafka_bootstrap, topic_prefix, tmp_path, MODELS)
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


SLOW_MODELS = """
routes:
  slow:
    provider: scripted
    model: scripted-slow
    latency_ms: 1500
    script:
      - reply: "an answer to {{ prompt }}"
  parked:
    provider: scripted
    model: scripted-parked
    latency_ms: 15000
    script:
      - reply: "an answer to {{ prompt }}"
"""

# ``before`` runs are in flight on the zombie when it freezes; their step's deadline passes
# while it is frozen, so it wakes to due timers. ``during`` runs, started by the interim
# owner, are still waiting for their model when the zombie takes their partitions back.
BEFORE = """
workflow: before
version: 1
steps:
  ask: {kind: llm, model: slow, prompt: "before {{ input.n }}", timeout: 3s,
        retry: {attempts: 8, backoff: {initial: 5s, max: 5s}}}
output: {n: "{{ input.n }}", answer: "{{ steps.ask.output }}"}
"""
DURING = """
workflow: during
version: 1
steps:
  ask: {kind: llm, model: parked, prompt: "during {{ input.n }}", timeout: 40s}
output: {n: "{{ input.n }}", answer: "{{ steps.ask.output }}"}
"""


async def test_an_at_least_once_zombie_deletes_none_of_its_interim_owners_journal(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    cluster = _cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path,
        SLOW_MODELS,
        BATON_PROCESSING_GUARANTEE="at_least_once",
    )
    cluster.deploy(before=BEFORE, during=DURING)
    workers = Workers(cluster)
    try:
        # w1 never flushes while it holds w2's partitions: their runs are in its journal only.
        w1 = workers.start("w1", BATON_FLUSH_INTERVAL="600")
        await _until_owned(cluster, {"w1": w1}, lambda owned: owned["w1"] == 4)
        w2 = workers.start("w2", BATON_FLUSH_INTERVAL="2")
        await _until_owned(cluster, {"w1": w1, "w2": w2}, lambda owned: min(owned.values()) > 0)
        theirs = set(await _partitions(w2))
        async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
            before = [
                TaskSubmitted(task_id=f"b-{n}", workflow="before", input={"n": n})
                for n in range(16)
            ]
            await client.send(before)
            on_w2 = [t.task_id for t in before if partition_for(t.task_id, 4) in theirs]
            assert on_w2, theirs
            await _until_dispatched(cluster, on_w2)
            w2.pause()
            await _until_owned(cluster, {"w1": w1}, lambda owned: owned["w1"] == 4)
            during = [
                TaskSubmitted(task_id=f"d-{n}", workflow="during", input={"n": n})
                for n in range(16)
            ]
            await client.send(during)
            await _until_dispatched(cluster, [t.task_id for t in during])
            w2.resume()
            await _until_owned(cluster, {"w1": w1, "w2": w2}, lambda owned: min(owned.values()) > 0)
            assert set(await _partitions(w2)) & theirs, "the zombie got none of its partitions back"
            wanted = [t.task_id for t in before + during]
            results = await client.wait(wanted, timeout_s=90)
        missing = sorted(set(wanted) - results.keys())
        assert not missing, f"{len(missing)} runs without a result, e.g. {missing[:4]}"
        for run_id, result in results.items():
            assert result.status == RunStatus.completed, (run_id, result.reason)
        assert "taking every partition over afresh" in w2.log_path.read_text(errors="replace")
    finally:
        workers.stop_all()


def _cluster(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, models: str, **env: str
) -> Cluster:
    """Workers with these models, a 6 s session timeout (a frozen one is out soon) and the API."""
    models_file = tmp_path / "models.yaml"
    models_file.write_text(models)
    return Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models_file,
        extra_env={"BATON_SESSION_TIMEOUT": "6", **api_access(tmp_path / "access"), **env},
    )


async def _partitions(worker: WorkerProcess) -> list[int]:
    async with httpx.AsyncClient(timeout=3) as http:
        return list((await http.get(f"{worker.api}/healthz")).json()["partitions"])


async def _until_dispatched(cluster: Cluster, run_ids: list[str], timeout: float = 30) -> None:
    """Until each of these runs has dispatched its first step (it is in flight)."""
    deadline = time.monotonic() + timeout
    waiting = set(run_ids)
    while time.monotonic() < deadline:
        events = await run_events(cluster)
        waiting -= {e.run_id for e in events if e.type == "step_dispatched"}
        if not waiting:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"runs not in flight within {timeout}s: {sorted(waiting)[:5]}")


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
