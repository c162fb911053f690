"""A step kind from a package (examples/baton-sentiment) in real workers on the real broker.

The kind calls its scoring service, which is not up yet when the runs start: the first
attempt fails with a connection error, which the kind classifies as retryable. The service
is started once that failure is in the run events, so a retry the coordinator dispatches
from a delayed-retry tier succeeds (the first one, unless the machine is so slow that it
came within the tier's 4 s: then the next). A run whose budget allows one step attempt
stops at the retry instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from baton_sentiment.service import SentimentService

from streams._client import BatonClient
from streams._relay import RetryRelay
from tests.integration.workers import (
    CODEC,
    Cluster,
    Workers,
    free_port,
    has,
    poll_decoded,
    poll_run_events,
    read_topic,
)
from topics import (
    Budget,
    DeadLetter,
    RunEvent,
    RunStatus,
    StepKind,
    StepRequested,
    TaskSubmitted,
    TopicCatalog,
    create_topics,
    partition_for,
)

WORKFLOW = """
workflow: moods
version: 1
steps:
  mood:
    kind: sentiment
    params: {text: "{{ input.message }}", threshold: 0.25}
    retry: {attempts: 4, backoff: {initial: 4s, multiplier: 1, jitter: 0}}
  reply:
    kind: transform
    after: [mood]
    output: {mood: "{{ steps.mood.output.label }}", score: "{{ steps.mood.output.score }}"}
"""


@pytest.fixture
def service_port() -> int:
    return free_port()


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, service_port: int) -> Cluster:
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        extra_env={
            "BATON_RETRY_TIERS": "4s",
            "BATON_SENTIMENT_URL": f"http://127.0.0.1:{service_port}",
        },
    )
    cluster.deploy(moods=WORKFLOW)
    return cluster


@pytest.fixture
def service(service_port: int) -> Iterator[list[SentimentService]]:
    """Where the test puts the scoring service once it starts it (its port stays closed)."""
    started: list[SentimentService] = []
    yield started
    for one in started:
        one.close()


def _detail(event: RunEvent, key: str) -> object:
    return event.detail.get(key) if isinstance(event.detail, dict) else None


def _failed_attempt(events: list[RunEvent]) -> bool:
    return any(e.type == "step_failed" and e.step == "mood" and e.attempt == 1 for e in events)


async def test_a_custom_kind_is_retried_by_its_policy_and_stopped_by_a_budget(
    cluster: Cluster, workers: Workers, service: list[SentimentService], service_port: int
) -> None:
    # The coordinator and built-in processors on one worker, the custom kind on another.
    workers.start("w1", "--processors", "transform")
    workers.start("w2", "--no-coordinator", "--processors", "sentiment")
    message = {"message": "Thanks, the refund came fast and support was helpful"}
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(
            [
                TaskSubmitted(task_id="mood-ok", workflow="moods", input=message),
                TaskSubmitted(
                    task_id="mood-capped",
                    workflow="moods",
                    input=message,
                    budget=Budget(max_steps=1),
                ),
            ]
        )
        await poll_run_events(cluster, "mood-ok", _failed_attempt)
        service.append(SentimentService(port=service_port).start())
        results = await client.wait(["mood-ok", "mood-capped"], timeout_s=90)

    done, capped = results["mood-ok"], results["mood-capped"]
    assert done.status is RunStatus.completed, done.reason
    assert done.output == {"mood": "positive", "score": 0.5}
    mood, reply = done.steps
    assert (mood.step, mood.kind, reply.step, reply.kind) == (
        "mood",
        "sentiment",
        "reply",
        "transform",
    )
    assert capped.status is RunStatus.budget_exceeded
    assert capped.reason == "max_steps: 1 step attempts used; mood not started"

    # The retry is in the run events: each failed attempt, classified, then the next one
    # dispatched through the retry tier, until the one that succeeded.
    events = await poll_run_events(cluster, "mood-ok", has("run_completed"))
    failures = [e for e in events if e.type == "step_failed" and e.step == "mood"]
    assert failures and len(failures) == mood.attempts - 1
    assert {_detail(e, "error_class") for e in failures} == {"SentimentUnavailable"}
    dispatched = [e for e in events if e.type == "step_dispatched" and e.step == "mood"]
    assert [e.attempt for e in dispatched] == list(range(1, mood.attempts + 1))
    assert [_detail(e, "kind") for e in dispatched] == ["sentiment"] * mood.attempts
    assert [_detail(e, "retry_tier") for e in dispatched] == [None] + ["4s"] * len(failures)
    capped_events = await poll_run_events(cluster, "mood-capped", has("run_budget_exceeded"))
    assert [e.type for e in capped_events if e.step == "mood"] == [
        "step_dispatched",
        "step_failed",
        "budget_exceeded",
    ]

    # Every attempt went through the kind's own topic, named and validated on the wire.
    topic = cluster.catalog.steps("sentiment")
    requests = [
        CODEC.decode(v, StepRequested)
        for v in await read_topic(cluster.bootstrap, topic.name, cluster.partitions)
    ]
    mine = sorted((r.run_id, r.attempt) for r in requests)
    assert mine == [("mood-capped", 1)] + [("mood-ok", n) for n in range(1, mood.attempts + 1)]
    assert {(r.kind, r.custom_kind) for r in requests} == {(StepKind.custom, "sentiment")}


async def test_the_retry_relay_releases_installed_kinds_and_dead_letters_others(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    # What a relay on a worker without acme.other sees when a coordinator that has it sends
    # one of its retries: it cannot release the request to a topic it has not got.
    catalog = TopicCatalog(prefix=topic_prefix, partitions=2, custom_kinds=("sentiment",))
    await create_topics(kafka_bootstrap, catalog)
    relay = RetryRelay(kafka_bootstrap, catalog, session_timeout=10)
    now = datetime.now(UTC)
    tier = catalog.retry_tiers[0]
    requests = [
        StepRequested(
            run_id=run_id,
            step="mood",
            kind=StepKind.custom,
            custom_kind=kind,
            attempt=2,
            idempotency_key=f"{run_id}/mood",
            workflow="moods",
            workflow_version="v",
            params={"text": "hi"},
            dispatched_at=now,
            deadline_at=now + timedelta(minutes=1),
            not_before=now,
            retry_tier=tier.name,
        )
        for run_id, kind in (("known", "sentiment"), ("unknown", "acme.other"))
    ]
    await relay.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for request in requests:
                retry = catalog.retry(tier.name)
                await producer.send(
                    retry.name,
                    CODEC.encode(request),
                    key=request.run_id.encode(),
                    partition=partition_for(request.run_id, retry.partitions),
                )
            await producer.flush()
        finally:
            await producer.stop()
        cluster = Cluster(kafka_bootstrap, topic_prefix, Path("."), partitions=2)
        released = await poll_decoded(
            cluster, catalog.steps("sentiment").name, StepRequested, lambda found: bool(found)
        )
        letters = await poll_decoded(
            cluster, catalog.dead_letter.name, DeadLetter, lambda found: bool(found)
        )
    finally:
        await relay.stop()
    assert [(r.run_id, r.custom_kind) for r in released] == [("known", "sentiment")]
    (letter,) = letters
    assert (letter.key, letter.error_class) == (b"unknown", "UnknownStepKind")
    assert letter.error == "step kind 'acme.other' is not installed on this worker"
