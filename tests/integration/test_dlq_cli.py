"""`baton dlq` and `baton replay` on the real broker, run as the operator runs them.

The first tests publish dead letters themselves to a prefix no worker reads, so what the
commands send stays where it lands. The rest share one real worker (module fixture): its
tasks, results and dead letters are real, and so is what the coordinator makes of a replay.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams._client import BatonClient
from tests.integration.workers import (
    Cluster,
    Workers,
    all_results,
    has,
    poll_run_events,
    results_by_run,
    wait_until_drained,
)
from topics import (
    AttemptRecord,
    Codec,
    ControlAction,
    ControlCommand,
    DeadLetter,
    RunResult,
    RunStatus,
    StepKind,
    StepRequested,
    TaskSubmitted,
    create_topics,
    partition_for,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "support-triage.yaml"
MODELS = ROOT / "examples" / "models.yaml"
CODEC = Codec()
T = TypeVar("T")

# A step on a route the worker's model catalog lacks: it fails for good (UnknownRoute) until
# the worker restarts with the route added, which is "ops fixed the cause".
FLAKY = """
workflow: flaky
version: 1
steps:
  answer: {kind: llm, model: backup, prompt: "Answer ticket {{ input.n }}"}
output: "{{ steps.answer.output }}"
"""
BACKUP_ROUTE = """
  backup:
    provider: scripted
    model: scripted-backup
    script:
      - reply: "backup answer: {{ prompt }}"
"""


# -- helpers ------------------------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def listed(cluster: Cluster, *filters: str) -> list[dict[str, Any]]:
    """`baton dlq list --json` with these filters."""
    letters: list[dict[str, Any]] = json.loads(ok(cluster.baton("dlq", "list", "--json", *filters)))
    return letters


async def publish(
    cluster: Cluster, topic: str, records: list[tuple[bytes | None, bytes, int]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, partition in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


async def records_on(cluster: Cluster, topic: str) -> list[tuple[int, bytes | None, bytes]]:
    """(partition, key, value) of every committed record on a topic now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cluster.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(cluster.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[tuple[int, bytes | None, bytes]] = []
        deadline = time.monotonic() + 30
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for tp, batch in (await consumer.getmany(timeout_ms=200)).items():
                found.extend((tp.partition, r.key, r.value) for r in batch if r.value is not None)
        return found
    finally:
        await consumer.stop()


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 60.0
) -> T:
    """Poll ``check`` until it returns something, or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.3)


def step_letter(
    cluster: Cluster, run_id: str, step: str, attempt: int, *, workflow: str, at: datetime
) -> DeadLetter:
    """What the coordinator writes when a step is exhausted and its run fails."""
    request = StepRequested(
        run_id=run_id,
        step=step,
        kind=StepKind.llm,
        attempt=attempt,
        idempotency_key=f"{run_id}/{step}",
        workflow=workflow,
        workflow_version="0" * 64,
        params={"route": "fast", "messages": [{"role": "user", "content": "hi"}]},
        dispatched_at=at,
        deadline_at=at + timedelta(seconds=30),
    )
    topic = cluster.catalog.steps("llm")
    return DeadLetter(
        dead_letter_id=f"{run_id}/{step}/{attempt}",
        origin_topic=topic.name,
        origin_partition=partition_for(run_id, topic.partitions),
        key=run_id.encode(),
        payload=CODEC.encode(request),
        payload_type="StepRequested",
        error_class="ProviderTimeout",
        error="no answer within 30s",
        run_id=run_id,
        workflow=workflow,
        step=step,
        attempts=[
            AttemptRecord(attempt=n, at=at, error_class="ProviderTimeout", message="timed out")
            for n in range(1, attempt + 1)
        ],
        cost_usd=Decimal("0.0042"),
        at=at,
    )


def record_letter(
    cluster: Cluster, partition: int, offset: int, key: bytes, payload: bytes, *, at: datetime
) -> DeadLetter:
    """What a worker writes for bytes it could not decode on the tasks topic."""
    topic = cluster.catalog.tasks.name
    return DeadLetter(
        dead_letter_id=f"{topic}/{partition}/{offset}",
        origin_topic=topic,
        origin_partition=partition,
        origin_offset=offset,
        key=key,
        payload=payload,
        error_class="DecodeError",
        error="not baton Avro: starts with byte 0xff, expected magic byte 0",
        at=at,
    )


async def put_letters(cluster: Cluster, letters: list[DeadLetter]) -> None:
    await publish(
        cluster,
        cluster.catalog.dead_letter.name,
        [
            (x.key, CODEC.encode(x), partition_for(x.dead_letter_id, cluster.partitions))
            for x in letters
        ],
    )


# -- without a worker ---------------------------------------------------------------------------


@pytest.fixture
async def quiet(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Fresh topics that no worker reads."""
    cluster = Cluster(kafka_bootstrap, topic_prefix, tmp_path / "home")
    await create_topics(kafka_bootstrap, cluster.catalog)
    yield cluster


GARBAGE = b"\xff\xfe not a task \x00\x01"


async def test_list_and_show_each_dead_letter_once_with_filters(quiet: Cluster) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(hours=3)
    exhausted = step_letter(quiet, "run-1", "classify", 3, workflow="support-triage", at=now)
    older = step_letter(quiet, "run-2", "draft", 2, workflow="billing", at=old)
    raw = record_letter(quiet, 2, 17, b"junk", GARBAGE, at=now)
    await put_letters(quiet, [exhausted, older, raw])
    # The same dead letter again (an at-least-once writer), and a record that is none.
    await put_letters(quiet, [raw])
    await publish(quiet, quiet.catalog.dead_letter.name, [(None, b"not a dead letter", 0)])

    everything = listed(quiet)
    # Each id once, oldest first (then by id).
    assert [x["dead_letter_id"] for x in everything] == [
        "run-2/draft/2",
        "run-1/classify/3",
        raw.dead_letter_id,
    ]
    by_id = {x["dead_letter_id"]: x for x in everything}
    assert by_id["run-1/classify/3"]["kind"] == "exhausted_step"
    assert by_id["run-1/classify/3"]["attempts"][-1]["error_class"] == "ProviderTimeout"
    assert by_id[raw.dead_letter_id]["kind"] == "record"
    assert by_id[raw.dead_letter_id]["key"] == "junk"

    # Each filter is its own `baton` process; they run side by side to keep the test short.
    expected = {
        ("--workflow", "support-triage"): {"run-1/classify/3"},
        ("--step", "draft"): {"run-2/draft/2"},
        ("--error", "decodeerror"): {raw.dead_letter_id},
        ("--run", "run-1"): {"run-1/classify/3"},
        ("--topic", "tasks"): {raw.dead_letter_id},
        ("--topic", "steps.llm"): {"run-1/classify/3", "run-2/draft/2"},
        ("--since", "1h"): {"run-1/classify/3", raw.dead_letter_id},
        ("--until", "1h"): {"run-2/draft/2"},
    }
    found = await asyncio.gather(*(asyncio.to_thread(listed, quiet, *f) for f in expected))
    got = {f: {x["dead_letter_id"] for x in xs} for f, xs in zip(expected, found, strict=True)}
    assert got == expected

    table = ok(quiet.baton("dlq", "list", COLUMNS="200"))
    assert "run-1/classify/3" in table and raw.dead_letter_id in table
    assert "3 dead letters" in table
    assert "1 record is not a dead letter (skipped)" in table

    shown = ok(quiet.baton("dlq", "show", "run-1/classify/3", COLUMNS="200"))
    assert f"origin     {exhausted.origin_topic}[{exhausted.origin_partition}]" in shown
    assert "redrive: the run is reopened at step classify" in shown
    assert "payload (StepRequested" in shown and '"idempotency_key": "run-1/classify"' in shown
    assert shown.count("ProviderTimeout") >= 4  # the error and each of three attempts
    assert "$0.0042" in shown

    shown = ok(quiet.baton("dlq", "show", raw.dead_letter_id, COLUMNS="200"))
    assert f"origin     {quiet.catalog.tasks.name}[2] @ offset 17" in shown
    assert f"payload (raw, {len(GARBAGE)} bytes)" in shown
    assert "00000000  ff fe 20 6e 6f 74" in shown

    missing = quiet.baton("dlq", "show", "no/such/letter")
    assert missing.returncode == 2 and "no dead letter 'no/such/letter'" in flat(missing.stderr)


async def test_replaying_a_record_puts_its_bytes_back_on_its_partition_with_its_key(
    quiet: Cluster,
) -> None:
    now = datetime.now(UTC)
    tasks = quiet.catalog.tasks.name
    raw = record_letter(quiet, 2, 17, b"junk", GARBAGE, at=now)
    foreign = record_letter(quiet, 1, 4, b"x", b"elsewhere", at=now).model_copy(
        update={"dead_letter_id": "prod.tasks/1/4", "origin_topic": "prod.tasks"}
    )
    await put_letters(quiet, [raw, foreign])

    refused = quiet.baton("dlq", "replay", raw.dead_letter_id, "prod.tasks/1/4")
    assert refused.returncode == 2
    assert f"'prod.tasks' is not a baton topic under prefix '{quiet.prefix}'" in flat(
        refused.stderr
    )
    dry = ok(quiet.baton("dlq", "replay", raw.dead_letter_id, "--dry-run"))
    assert f"would re-publish to {tasks}[2]" in dry
    assert await records_on(quiet, tasks) == []  # neither the refusal nor the dry run sent

    done = ok(quiet.baton("dlq", "replay", raw.dead_letter_id))
    assert f"{raw.dead_letter_id}  re-published to {tasks}[2]" in done
    assert await records_on(quiet, tasks) == [(2, b"junk", GARBAGE)]


async def test_replaying_an_exhausted_step_asks_the_coordinator_to_redrive_it(
    quiet: Cluster,
) -> None:
    now = datetime.now(UTC)
    letters = [
        step_letter(quiet, "run-7", "draft", 2, workflow="support-triage", at=now),
        step_letter(quiet, "run-8", "draft", 3, workflow="support-triage", at=now),
        step_letter(quiet, "run-8", "draft", 6, workflow="support-triage", at=now),
        step_letter(quiet, "run-9", "draft", 3, workflow="billing", at=now),
    ]
    await put_letters(quiet, letters)
    control = quiet.catalog.control

    done = ok(quiet.baton("dlq", "replay", "run-7/draft/2"))
    assert "run-7/draft/2  redrive requested (run run-7, step draft)" in done
    ((partition, key, value),) = await records_on(quiet, control.name)
    command = CODEC.decode(value, ControlCommand)
    assert (partition, key) == (partition_for("run-7", control.partitions), b"run-7")
    assert command.action == ControlAction.redrive
    assert (command.run_id, command.step) == ("run-7", "draft")
    assert command.reason is not None and "dead letter run-7/draft/2 replayed by" in command.reason

    # --all with a filter: one redrive per run and step, however many letters it has.
    done = ok(quiet.baton("dlq", "replay", "--all", "--workflow", "support-triage"))
    assert "run-8/draft/6  skipped: redrive already asked for by run-8/draft/3" in done
    commands = [
        CODEC.decode(v, ControlCommand) for _, _, v in await records_on(quiet, control.name)
    ]
    assert sorted((c.run_id or "", c.step or "") for c in commands) == [
        ("run-7", "draft"),
        ("run-7", "draft"),
        ("run-8", "draft"),
    ]


# -- with a real worker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, Workers]]:
    """One worker for the module's tests, with support-triage and flaky deployed."""
    home = tmp_path_factory.mktemp("dlq")
    cluster = Cluster(
        kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}", home / "home", models_file=MODELS
    )
    ok(cluster.baton("topics", "create"))
    fixed = home / "models-fixed.yaml"
    fixed.write_text(MODELS.read_text() + BACKUP_ROUTE)
    flaky = home / "flaky.yaml"
    flaky.write_text(FLAKY)
    ok(cluster.baton("workflows", "deploy", str(EXAMPLE)))
    # Deployed against the fixed catalog; the worker starts without the route.
    ok(cluster.baton("workflows", "deploy", str(flaky), BATON_MODELS_FILE=str(fixed)))
    workers = Workers(cluster)
    workers.start("w1")
    yield cluster, workers
    workers.stop_all()


def tickets(prefix: str, count: int) -> list[TaskSubmitted]:
    texts = ["My order arrived broken", "Where can I change my address?", "The app crashes"]
    return [
        TaskSubmitted(
            task_id=f"{prefix}-{i}",
            workflow="support-triage",
            input={"ticket_id": str(i), "text": texts[i % len(texts)]},
        )
        for i in range(count)
    ]


async def run_to_completion(cluster: Cluster, tasks: list[TaskSubmitted]) -> dict[str, RunResult]:
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        results = await client.wait([t.task_id for t in tasks], timeout_s=90)
    assert set(results) == {t.task_id for t in tasks}
    assert {r.status for r in results.values()} == {RunStatus.completed}
    return results


async def test_replaying_tasks_whose_runs_exist_starts_nothing_new(
    served: tuple[Cluster, Workers],
) -> None:
    cluster, _ = served
    before = datetime.now(UTC)
    tasks = tickets("again", 8)
    await run_to_completion(cluster, tasks)
    await wait_until_drained(cluster)

    out = ok(
        cluster.baton("replay", "--topic", cluster.catalog.tasks.name, "--from", before.isoformat())
    )
    assert f"replayed 8 records of {cluster.catalog.tasks.name}" in out
    await wait_until_drained(cluster)  # the coordinator has read every replayed task

    # The replayed tasks' task_duplicate events come from later batches than the results: poll
    # for them, then check that the replay published no result.
    for task in tasks:
        events = await poll_run_events(cluster, task.task_id, has("task_duplicate"))
        kinds = [e.type for e in events]
        assert kinds.count("task_duplicate") == 1, kinds
    counts = await results_by_run(cluster)
    assert {t.task_id: counts[t.task_id] for t in tasks} == {t.task_id: 1 for t in tasks}


async def test_rerun_starts_new_runs_labelled_with_the_old_ones(
    served: tuple[Cluster, Workers],
) -> None:
    cluster, _ = served
    before = datetime.now(UTC)
    tasks = tickets("rerun", 5)
    originals = await run_to_completion(cluster, tasks)
    await wait_until_drained(cluster)

    out = ok(cluster.baton("replay", "--topic", "tasks", "--from", before.isoformat(), "--rerun"))
    assert "submitted 5 new runs" in out

    async def reruns() -> dict[str, RunResult] | None:
        found = {
            r.labels["rerun_of"]: r
            for r in await all_results(cluster)
            if r.labels.get("rerun_of") in originals
        }
        return found if len(found) == len(tasks) else None

    copies = await eventually(reruns, "a result for the rerun of every task")
    for old, copy in copies.items():
        assert copy.run_id.startswith(f"{old}.rerun-") and copy.run_id in out
        assert copy.status == RunStatus.completed
        assert copy.output == originals[old].output
    await wait_until_drained(cluster)
    counts = await results_by_run(cluster)
    assert {t.task_id: counts[t.task_id] for t in tasks} == {t.task_id: 1 for t in tasks}


async def test_bytes_the_worker_dead_lettered_are_listed_and_replayed_to_where_they_were(
    served: tuple[Cluster, Workers],
) -> None:
    cluster, _ = served
    tasks = cluster.catalog.tasks
    key = f"junk-{uuid.uuid4().hex[:6]}".encode()
    await publish(cluster, tasks.name, [(key, GARBAGE, 1)])

    async def letters_for_key() -> list[dict[str, Any]] | None:
        found = [x for x in listed(cluster, "--topic", "tasks") if x["key"] == key.decode()]
        return found or None

    (first,) = await eventually(letters_for_key, "the worker's dead letter for the bytes")
    assert first["error_class"] == "DecodeError" and first["origin_partition"] == 1
    ok(cluster.baton("dlq", "replay", first["dead_letter_id"]))

    async def second_letter() -> list[dict[str, Any]] | None:
        found = await letters_for_key()
        return found if found and len(found) == 2 else None

    # Still not a task, so the worker dead-letters it again: same bytes, a later offset.
    letters = await eventually(second_letter, "the replayed bytes dead-lettered again")
    again = next(x for x in letters if x["dead_letter_id"] != first["dead_letter_id"])
    assert again["origin_partition"] == 1 and again["origin_offset"] > first["origin_offset"]
    shown = json.loads(ok(cluster.baton("dlq", "show", again["dead_letter_id"], "--json")))
    assert bytes.fromhex(shown["payload_hex"]) == GARBAGE


async def test_an_exhausted_step_redriven_after_the_fix_completes_its_run(
    served: tuple[Cluster, Workers],
) -> None:
    cluster, workers = served
    run_id = f"flaky-{uuid.uuid4().hex[:6]}"
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([TaskSubmitted(task_id=run_id, workflow="flaky", input={"n": 1})])
        failed = (await client.wait([run_id], timeout_s=60))[run_id]
    assert failed.status == RunStatus.failed and "UnknownRoute" in (failed.reason or "")

    async def letter() -> dict[str, Any] | None:
        found = listed(cluster, "--run", run_id)
        return found[0] if found else None

    found = await eventually(letter, "the exhausted step's dead letter")
    assert found["dead_letter_id"] == f"{run_id}/answer/1"
    assert (found["kind"], found["workflow"], found["step"]) == (
        "exhausted_step",
        "flaky",
        "answer",
    )
    assert [a["error_class"] for a in found["attempts"]] == ["UnknownRoute"]

    # Ops fix the cause: the worker comes back with the route in its catalog.
    (worker,) = [w for w in workers.started if w.process is not None and w.process.poll() is None]
    worker.stop()
    workers.start("w1", BATON_MODELS_FILE=str(cluster.home.parent / "models-fixed.yaml"))

    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        out = ok(cluster.baton("dlq", "replay", found["dead_letter_id"]))
        assert "redrive requested" in out
        completed = (await client.wait([run_id], timeout_s=60))[run_id]
    assert completed.status == RunStatus.completed
    assert completed.output == "backup answer: Answer ticket 1"
    await wait_until_drained(cluster)
    assert (await results_by_run(cluster))[run_id] == 2  # failed, then completed
    events = await poll_run_events(cluster, run_id, has("run_redriven", "run_completed"))
    kinds = [e.type for e in events]
    assert kinds.index("run_failed") < kinds.index("run_redriven") < kinds.index("run_completed")
