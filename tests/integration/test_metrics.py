"""``GET /metrics`` on two workers sharing a workload: their counters add up to what was sent.

Two workers split the partitions; a test sends runs (some that fail their validation, so leave
a dead letter) and records that are not tasks, then scrapes both workers during the workload
and after it, parses each scrape with ``prometheus_client``'s own parser, and checks the sums
against the runs' results and the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from streams._client import BatonClient
from tests.integration.workers import (
    Cluster,
    WorkerProcess,
    Workers,
    api_access,
    ops,
    poll_decoded,
)
from topics import DeadLetter, RunResult, RunStatus, TaskSubmitted

MODELS = """
routes:
  fast:
    provider: scripted
    model: scripted-fast
    input_usd_per_mtok: 0.15
    output_usd_per_mtok: 0.60
    script:
      - reply: "an answer to {{ prompt }}, at some length so that it is billed"
"""

WORKFLOW = """
workflow: metered
version: 1
steps:
  ask: {kind: llm, model: fast, prompt: "question {{ input.n }} about {{ input.text }}"}
  check: {kind: validate, after: [ask], value: "{{ input.text }}",
          schema: {type: string, pattern: "^ok"}}
output: "{{ steps.ask.output }}"
"""

RUNS = 40
#: Every fifth run's text fails the check: the run fails and leaves a dead letter.
FAILING = {n for n in range(RUNS) if n % 5 == 0}
PARTITIONS = 4
#: Not a task: an unknown schema id, dead-lettered by whichever coordinator owns the partition.
JUNK = b"\x00\x00\x00\xff\xfenot an event"

Families = dict[str, Metric]


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(MODELS)
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        partitions=PARTITIONS,
        models_file=models,
        extra_env={**api_access(tmp_path / "access"), "BATON_CACHE_TTL": "0"},
    )
    cluster.deploy(metered=WORKFLOW)
    return cluster


async def scrape(worker: WorkerProcess) -> Families:
    async with httpx.AsyncClient(timeout=15) as http:
        answer = await http.get(f"{worker.api}/metrics", headers=ops())
    assert answer.status_code == 200, answer.text
    return {f.name: f for f in text_string_to_metric_families(answer.text)}


def total(
    scrapes: Iterable[Families], family: str, sample: str | None = None, **labels: str
) -> float:
    """The sum, over workers, of a family's samples with these labels.

    The samples are the family's own (``<name>_total`` for a counter), or those named
    ``sample`` (a histogram's ``_count``, say).
    """
    found = [families[family] for families in scrapes if family in families]
    return sum(
        s.value
        for metric in found
        for s in metric.samples
        if s.name == (sample or (f"{family}_total" if metric.type == "counter" else family))
        and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def wait_split(workers: list[WorkerProcess], timeout: float = 90.0) -> None:
    """Until the workers serve every partition, as many each."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            owned = [(await http.get(f"{w.api}/healthz")).json()["partitions"] for w in workers]
            even = all(len(ps) == PARTITIONS // len(workers) for ps in owned)
            if even and sorted(p for ps in owned for p in ps) == list(range(PARTITIONS)):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"partitions not split over the workers: {owned}")
            await asyncio.sleep(0.3)


async def test_two_workers_metrics_add_up_to_the_runs_sent(
    cluster: Cluster, workers: Workers
) -> None:
    both = [workers.start("m1"), workers.start("m2")]
    await wait_split(both)
    async with httpx.AsyncClient(timeout=15) as http:
        refused = await http.get(f"{both[0].api}/metrics")
    assert refused.status_code == 401

    tasks = [
        TaskSubmitted(
            task_id=f"metered-{n}",
            workflow="metered",
            input={"n": n, "text": "no good" if n in FAILING else "ok fine"},
            tenant="acme" if n % 2 else "default",
        )
        for n in range(RUNS)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            await producer.send_and_wait(
                cluster.catalog.tasks.name, JUNK, key=b"junk", partition=partition
            )
    finally:
        await producer.stop()
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        # During the workload: what has committed so far, never more than was sent.
        during = [await scrape(w) for w in both]
        assert total(during, "baton_runs_finished") <= total(during, "baton_runs_started") <= RUNS
        results: dict[str, RunResult] = await client.wait([t.task_id for t in tasks], timeout_s=180)
    assert len(results) == RUNS
    assert {r.run_id for r in results.values() if r.status == RunStatus.failed} == {
        f"metered-{n}" for n in FAILING
    }
    letters = await poll_decoded(
        cluster,
        cluster.catalog.dead_letter.name,
        DeadLetter,
        lambda found: len(found) >= len(FAILING) + PARTITIONS,
        what="a dead letter per failed run and per junk record",
        timeout=90,
    )
    assert len(letters) == len(FAILING) + PARTITIONS

    # Counters move when a batch commits: the last commits may be a moment behind the results.
    deadline = time.monotonic() + 60
    while True:
        scrapes = [await scrape(w) for w in both]
        if (
            total(scrapes, "baton_runs_finished") == RUNS
            and total(scrapes, "baton_dead_letters") == len(letters)
            and total(scrapes, "baton_step_duration_seconds", "baton_step_duration_seconds_count")
            == 2 * RUNS
        ) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)

    # Both workers did part of the work, and each counts only its own.
    for families in scrapes:
        assert 0 < total([families], "baton_runs_started") < RUNS
        assert (
            total(
                [families], "baton_commit_duration_seconds", "baton_commit_duration_seconds_count"
            )
            > 0
        )
        assert total([families], "baton_partitions_owned") == PARTITIONS / 2
    # Runs.
    assert total(scrapes, "baton_runs_started", workflow="metered") == RUNS
    finished = {
        status: total(scrapes, "baton_runs_finished", workflow="metered", status=status)
        for status in ("completed", "failed")
    }
    assert finished == {"completed": RUNS - len(FAILING), "failed": len(FAILING)}
    assert total(scrapes, "baton_runs_in_flight") == 0
    # Steps: one attempt of each step of each run; the failed ones fail their validation.
    assert total(scrapes, "baton_step_attempts", kind="llm") == RUNS
    assert total(scrapes, "baton_step_attempts", kind="validate") == RUNS
    assert total(scrapes, "baton_step_failures") == len(FAILING)
    assert total(scrapes, "baton_step_failures", error_class="ValidationFailed") == len(FAILING)
    for kind in ("llm", "validate"):
        ran = total(
            scrapes, "baton_step_duration_seconds", "baton_step_duration_seconds_count", kind=kind
        )
        assert ran == RUNS, kind
    # Tokens and cost, by tenant, as the runs' results account them.
    for tenant in ("acme", "default"):
        mine = [
            r
            for r in results.values()
            if r.run_id in {t.task_id for t in tasks if t.tenant == tenant}
        ]
        for kind, field in (("input", "input_tokens"), ("output", "output_tokens")):
            counted = total(scrapes, "baton_model_tokens", route="fast", tenant=tenant, type=kind)
            assert counted == sum(getattr(r.usage, field) for r in mine) > 0, (tenant, kind)
        cost = total(scrapes, "baton_model_cost_usd", route="fast", tenant=tenant)
        assert cost == pytest.approx(float(sum(r.usage.cost_usd for r in mine)), rel=1e-9)
        assert cost > 0
    # Dead letters: what the dead-letter topic holds.
    assert total(scrapes, "baton_dead_letters", error_class="ValidationFailed") == len(FAILING)
    assert total(scrapes, "baton_dead_letters", error_class="DecodeError") == PARTITIONS
    # The gauges read when scraped are there, with their labels.
    lag = [s for families in scrapes for s in families["baton_consumer_lag_records"].samples]
    assert {s.labels["consumer"] for s in lag} >= {"coordinator", "processors"}
    assert all(s.value >= 0 for s in lag)
    waiting = [s for families in scrapes for s in families["baton_retries_waiting"].samples]
    assert {s.labels["tier"] for s in waiting} == {t.name for t in cluster.catalog.retry_tiers}
    assert all(name.startswith("baton_") for families in scrapes for name in families)


async def test_a_processors_only_worker_serves_its_own_metrics(
    cluster: Cluster, workers: Workers
) -> None:
    """The worker that runs the steps (``--no-coordinator``) counts them at its /metrics."""
    coordinator = workers.start("c1", "--processors", "none")
    steps = workers.start("p1", "--no-coordinator", ready=False)
    steps.wait_ready()  # its /healthz answers
    async with httpx.AsyncClient(timeout=15) as http:
        assert (await http.get(f"{steps.api}/metrics")).status_code == 401
        health = (await http.get(f"{steps.api}/healthz")).json()
    assert health["ok"] is True
    assert cluster.catalog.steps("llm").name in health["processing"]
    runs = 6
    tasks = [
        TaskSubmitted(task_id=f"split-{n}", workflow="metered", input={"n": n, "text": "ok"})
        for n in range(runs)
    ]
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        results = await client.wait([t.task_id for t in tasks], timeout_s=120)
    assert {r.status for r in results.values()} == {RunStatus.completed}
    # The processors' counters are the step worker's; the coordinator ran none.
    deadline = time.monotonic() + 30
    while True:
        here = await scrape(steps)
        ran = total([here], "baton_step_duration_seconds", "baton_step_duration_seconds_count")
        if ran == 2 * runs or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert ran == 2 * runs
    assert (
        total(
            [here], "baton_step_duration_seconds", "baton_step_duration_seconds_count", kind="llm"
        )
        == runs
    )
    assert (
        total(
            [await scrape(coordinator)],
            "baton_step_duration_seconds",
            "baton_step_duration_seconds_count",
        )
        == 0
    )
    assert total([await scrape(coordinator)], "baton_runs_finished") == runs
