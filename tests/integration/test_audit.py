"""``baton audit verify`` against a real worker's run events, untouched and tampered with.

Runs complete on a real ``baton worker`` (exactly-once, anchors signed with the worker key).
Their run-events records are then re-published with aiokafka to copy topics, each with one
change: an event removed, two reordered, one altered, a whole run removed. ``baton audit
verify --topic <copy>`` must find each, naming the event; the untouched topic verifies; the
whole run's removal is found only through the anchors. A worker killed mid-batch leaves
every chain whole (exactly-once: the head is restored with the run, as ``seq`` is).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams._client import BatonClient
from tests.integration.inprocess import publish_steady, steady_cluster
from tests.integration.workers import (
    CODEC,
    Cluster,
    Workers,
    api_access,
    poll_decoded,
    read_topic,
)
from topics import (
    AuditAnchor,
    RunEvent,
    RunEventBatch,
    RunResult,
    TaskSubmitted,
    event_hash,
)

RUNS = 4
#: One record's run events: each event with its Avro body as written.
Items = list[tuple[RunEvent, bytes]]


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    home = tmp_path_factory.mktemp("audit")
    cluster = steady_cluster(kafka_bootstrap, f"a{uuid.uuid4().hex[:8]}", home)
    cluster.extra_env.update(api_access(home / "access"), BATON_FLUSH_INTERVAL="1")
    return cluster


@pytest.fixture(scope="module")
def recorded(cluster: Cluster) -> list[Items]:
    """The run-events records of ``RUNS`` completed runs, every run's last event anchored."""
    workers = Workers(cluster)
    workers.start("w1")
    try:
        return asyncio.run(_record(cluster))
    finally:
        workers.stop_all()


async def _record(cluster: Cluster) -> list[Items]:
    await publish_steady(cluster, RUNS)
    await poll_decoded(
        cluster,
        cluster.catalog.results.name,
        RunResult,
        lambda found: len({r.run_id for r in found}) == RUNS,
        what="every run's result",
    )
    records = [
        CODEC.run_event_bodies(v)
        for v in await read_topic(
            cluster.bootstrap, cluster.catalog.run_events.name, cluster.partitions
        )
    ]
    heads = {e.run_id: (e.seq, event_hash(b)) for items in records for e, b in items}
    await poll_decoded(
        cluster,
        cluster.catalog.audit_anchors.name,
        AuditAnchor,
        lambda found: set(heads.items())
        <= {(r.run_id, (r.seq, r.head)) for a in found for r in a.runs},
        what="anchors naming every run's last event",
    )
    return records


async def copy(cluster: Cluster, records: list[Items], change: Callable[[Items], Items]) -> str:
    """A copy of the run-events topic, each record changed by ``change``; its name."""
    name = f"{cluster.prefix}.copy-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, cluster.partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        for items in records:
            kept = change(items)
            if kept:
                value = CODEC.batch(RunEventBatch, [body for _, body in kept])
                await producer.send_and_wait(name, value, partition=0)
    finally:
        await producer.stop()
    return name


def verify(cluster: Cluster, *args: str) -> tuple[int, str]:
    done = cluster.baton("audit", "verify", *args, COLUMNS="400")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout


def the_event(records: list[Items], run_id: str, seq: int) -> RunEvent:
    return next(e for items in records for e, _ in items if e.run_id == run_id and e.seq == seq)


async def test_an_untouched_trail_verifies_by_run_by_window_and_whole(
    cluster: Cluster, recorded: list[Items]
) -> None:
    code, out = verify(cluster, "steady-0", "steady-1")
    assert code == 0, out
    last = max(e.seq for items in recorded for e, _ in items if e.run_id == "steady-0")
    assert f"ok run steady-0: {last + 1} events, head " in out
    code, out = verify(cluster, "--all", "--require-signed", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert set(report["runs"]) == {f"steady-{n}" for n in range(RUNS)}
    assert report["anchors"] > 0 and report["unsigned_anchors"] == 0
    code, out = verify(cluster, "--from", "1h")
    assert code == 0, out


async def test_a_removed_event_is_named(cluster: Cluster, recorded: list[Items]) -> None:
    topic = await copy(
        cluster,
        recorded,
        lambda items: [(e, b) for e, b in items if (e.run_id, e.seq) != ("steady-1", 1)],
    )
    code, out = verify(cluster, "steady-1", "--topic", topic)
    assert code == 1
    assert "BROKEN run steady-1: event seq 2" in out and "seq 1 missing before it" in out
    code, out = verify(cluster, "steady-0", "--topic", topic)
    assert code == 0, out


async def test_two_reordered_events_are_named(cluster: Cluster, recorded: list[Items]) -> None:
    second = the_event(recorded, "steady-2", 2)
    bodies = {(e.run_id, e.seq): (e, b) for items in recorded for e, b in items}
    swapped = {("steady-2", 1): ("steady-2", 2), ("steady-2", 2): ("steady-2", 1)}

    def swap(items: Items) -> Items:
        return [bodies[swapped.get((e.run_id, e.seq), (e.run_id, e.seq))] for e, _ in items]

    topic = await copy(cluster, recorded, swap)
    code, out = verify(cluster, "steady-2", "--topic", topic)
    assert code == 1
    assert f"event seq 2 ({second.type}" in out and "out of order" in out, out


async def test_an_altered_event_is_named(cluster: Cluster, recorded: list[Items]) -> None:
    target = the_event(recorded, "steady-3", 1)
    forged = target.model_copy(update={"detail": {"kind": "llm", "route": "forged"}})

    def alter(items: Items) -> Items:
        return [
            (e, CODEC.encode_item(forged)) if (e.run_id, e.seq) == ("steady-3", 1) else (e, b)
            for e, b in items
        ]

    topic = await copy(cluster, recorded, alter)
    code, out = verify(cluster, "steady-3", "--topic", topic)
    assert code == 1
    assert f"BROKEN run steady-3: event seq 1 ({target.type}" in out and "altered" in out, out


async def test_a_whole_run_removed_is_found_through_the_anchors(
    cluster: Cluster, recorded: list[Items]
) -> None:
    topic = await copy(
        cluster, recorded, lambda items: [(e, b) for e, b in items if e.run_id != "steady-0"]
    )
    code, out = verify(cluster, "--all", "--topic", topic, "--no-anchors")
    assert code == 0, out  # every chain left is whole: only the anchors know of steady-0
    code, out = verify(cluster, "--all", "--topic", topic)
    assert code == 1
    assert "ANCHOR run steady-0: anchored at seq" in out and "no chained events" in out, out


SLOW_MODELS = """
routes:
  slow:
    provider: scripted
    model: scripted-slow
    latency_ms: 200
    script:
      - reply: "an answer to {{ prompt }}"
"""

TWO_CALLS = """
workflow: twice
version: 1
steps:
  ask: {kind: llm, model: slow, prompt: "question {{ input.n }}", timeout: 4s}
  again: {kind: llm, after: [ask], model: slow, prompt: "again {{ input.n }}", timeout: 4s}
output: "{{ steps.again.output }}"
"""


async def test_chains_go_on_unbroken_across_a_worker_killed_mid_batch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The head is restored with the run (as seq is): a takeover's events link on to it."""
    models = tmp_path / "models.yaml"
    models.write_text(SLOW_MODELS)
    crashy = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={"BATON_PROCESSOR_CONCURRENCY": "16", **api_access(tmp_path / "access")},
    )
    crashy.deploy(twice=TWO_CALLS)
    workers = Workers(crashy)
    try:
        await _crash(crashy, workers)
    finally:
        workers.stop_all()
    done = crashy.baton("audit", "verify", "--all", "--require-signed", "--json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    report = json.loads(done.stdout)
    assert len(report["runs"]) == CRASH_RUNS
    assert all(r["first_link"] and r["events"] >= 6 for r in report["runs"].values())


CRASH_RUNS = 120


async def _crash(crashy: Cluster, workers: Workers) -> None:
    """Runs of ``twice``, their worker killed mid-batch and started again; all complete."""
    worker = workers.start("w1")
    tasks = [
        TaskSubmitted(task_id=f"k-{i}", workflow="twice", input={"n": i}) for i in range(CRASH_RUNS)
    ]
    ids = [t.task_id for t in tasks]
    async with BatonClient(crashy.bootstrap, crashy.catalog) as client:
        await client.send(tasks)
        before = await client.wait(ids, timeout_s=60, stop_after=len(ids) // 4)
        assert len(before) < len(ids), "runs should be in flight when the worker dies"
        worker.kill()
        workers.start("w1")
        rest = await client.wait([i for i in ids if i not in before], timeout_s=120)
    assert len(before) + len(rest) == len(ids)
