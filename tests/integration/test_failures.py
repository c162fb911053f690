"""Failures end in a retry that works, a fallback, or a dead letter: never in a lost run.

The model providers are real HTTP servers on loopback speaking the OpenAI wire format, told to
answer with faults: 429 with Retry-After, 500s, answers slower than the route's timeout,
malformed bodies and connection resets.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams._client import BatonClient
from tests.fakes import (
    ChatAnswer,
    Delay,
    Disconnect,
    ErrorStatus,
    FakeOpenAIServer,
    Malformed,
    RecordedRequest,
)
from tests.integration.workers import (
    Cluster,
    Workers,
    all_results,
    has,
    poll_decoded,
    poll_run_events,
    results_by_run,
)
from topics import (
    Codec,
    DeadLetter,
    RunStatus,
    StepOutcome,
    StepRequested,
    TaskSubmitted,
)

# Two in-process tries per attempt (retries: 1), three attempts per route: at most six calls
# per run and route. Short tiers keep the delayed retries quick.
ENV = {"BATON_RETRY_TIERS": "1s,2s", "BATON_SESSION_TIMEOUT": "10"}


def models(
    primary: FakeOpenAIServer, backup: FakeOpenAIServer | None = None, *, breaker: int = 3
) -> str:
    def route(name: str, server: FakeOpenAIServer) -> str:
        return (
            f"  {name}:\n    provider: openai\n    model: m-{name}\n"
            f"    base_url: {server.base_url}\n    timeout_s: 0.5\n    retries: 1\n"
            f"    breaker_failures: {breaker}\n    breaker_cooldown_s: 2\n"
        )

    return "routes:\n" + route("primary", primary) + (route("backup", backup) if backup else "")


WORKFLOW = """
workflow: faulty
version: 1
steps:
  ask: {kind: llm, model: primary, prompt: "question {{ input.n }}",
        retry: {attempts: 3, backoff: {initial: 1s, multiplier: 2, jitter: 0.2}}}
  shape: {kind: transform, after: [ask],
          output: {n: "{{ input.n }}", answer: "{{ steps.ask.output }}"}}
"""

WITH_FALLBACK = """
workflow: faulty
version: 1
steps:
  ask: {kind: llm, model: primary, fallback: [backup], prompt: "question {{ input.n }}",
        retry: {attempts: 2, backoff: {initial: 1s, jitter: 0}}}
  shape: {kind: transform, after: [ask],
          output: {n: "{{ input.n }}", answer: "{{ steps.ask.output }}"}}
"""


@pytest.fixture
def primary() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def backup() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def make_cluster(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, catalog: str, workflow: str
) -> Cluster:
    path = tmp_path / "models.yaml"
    path.write_text(catalog)
    cluster = Cluster(
        kafka_bootstrap, topic_prefix, tmp_path / "home", models_file=path, extra_env=ENV
    )
    assert cluster.baton("topics", "create").returncode == 0
    definition = tmp_path / "faulty.yaml"
    definition.write_text(workflow)
    deployed = cluster.baton("workflows", "deploy", str(definition))
    assert deployed.returncode == 0, deployed.stderr
    return cluster


def question_of(request: RecordedRequest) -> str:
    return str(request.body["messages"][-1]["content"])  # type: ignore[index]


async def test_transient_faults_every_run_completes_within_the_calls_the_policy_allows(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, primary: FakeOpenAIServer
) -> None:
    faults = [
        ErrorStatus(429, retry_after="0.2"),
        ErrorStatus(500),
        Delay(2.0, then=ChatAnswer("too late")),  # past the route's 0.5 s timeout
        Malformed(),
        Disconnect(reset=True),
        ErrorStatus(503),
    ]
    lock = threading.Lock()
    seen: Counter[str] = Counter()

    def answer(request: RecordedRequest) -> object:
        question = question_of(request)
        with lock:
            seen[question] += 1
            calls = seen[question]
        n = int(question.split()[-1])
        # Run n fails its first (n % 5) calls, each with a different fault.
        if calls <= n % 5:
            return faults[(n + calls) % len(faults)]
        return ChatAnswer(f"answer {n}")

    primary.reply(answer)
    # The breaker is tested below; here it must not step in.
    catalog = models(primary, breaker=1000)
    cluster = make_cluster(kafka_bootstrap, topic_prefix, tmp_path, catalog, WORKFLOW)
    workers = Workers(cluster)
    try:
        workers.start("w1")
        ids = [f"transient-{n}" for n in range(15)]
        async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
            await client.send(
                [
                    TaskSubmitted(task_id=i, workflow="faulty", input={"n": n})
                    for n, i in enumerate(ids)
                ]
            )
            results = await client.wait(ids, timeout_s=120)
    finally:
        workers.stop_all()
    assert len(results) == len(ids)
    for n, run_id in enumerate(ids):
        assert results[run_id].status == RunStatus.completed, results[run_id].reason
        assert results[run_id].output == {"n": n, "answer": f"answer {n}"}
        # What reached the server: the faults the run was given, then the one that worked.
        calls = sum(question_of(r) == f"question {n}" for r in primary.requests)
        assert calls == n % 5 + 1, f"run {n}: {calls} calls"
        assert calls <= 6, "2 tries per attempt x 3 attempts"
    # Runs that needed more than one attempt went through a retry tier.
    events = await poll_run_events(cluster, "transient-4", has("run_completed"))
    asks = [e for e in events if e.type == "step_dispatched" and e.step == "ask"]
    tiers = [e.detail.get("retry_tier") for e in asks]  # type: ignore[union-attr]
    assert tiers[0] is None and set(tiers[1:]) <= {"1s", "2s"} and len(tiers) == 3


async def test_a_failing_primary_falls_back_and_its_circuit_opens_then_closes(
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    primary: FakeOpenAIServer,
    backup: FakeOpenAIServer,
) -> None:
    primary.reply(ErrorStatus(503))
    backup.reply(lambda request: ChatAnswer(f"backup says {question_of(request)}"))
    cluster = make_cluster(
        kafka_bootstrap, topic_prefix, tmp_path, models(primary, backup), WITH_FALLBACK
    )
    workers = Workers(cluster)
    try:
        workers.start("w1")
        async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
            # While the primary is down, runs complete on the backup.
            first = [f"down-{n}" for n in range(6)]
            await client.send(
                [
                    TaskSubmitted(task_id=i, workflow="faulty", input={"n": n})
                    for n, i in enumerate(first)
                ]
            )
            results = await client.wait(first, timeout_s=90)
            assert {r.status for r in results.values()} == {RunStatus.completed}
            assert all(str(r.output["answer"]).startswith("backup says") for r in results.values())  # type: ignore[index]
            # The circuit opened: the primary saw 3 failures in a row, then nothing more.
            events = [
                e
                for run_id in first
                for e in await poll_run_events(cluster, run_id, has("run_completed"))
            ]
            fallbacks = [e.detail for e in events if e.type == "step_fallback"]
            assert len(fallbacks) == len(first)
            assert {"CircuitOpen"} <= {f["error_class"] for f in fallbacks}  # type: ignore[index]
            calls_while_open = primary.call_count
            # Without a breaker: 2 tries x 2 attempts for each of 6 runs, 24 calls.
            assert calls_while_open <= 12, "the breaker spared the primary"

            # The primary recovers; after the 2 s cooldown a probe succeeds and traffic
            # returns. One run at a time: while a probe is under way, others are refused.
            primary.reply(lambda request: ChatAnswer(f"primary says {question_of(request)}"))
            await asyncio.sleep(2.5)  # the breaker's configured cooldown, not a guess
            recovered = {}
            for n in range(3):
                await client.send(
                    [TaskSubmitted(task_id=f"up-{n}", workflow="faulty", input={"n": n})]
                )
                recovered.update(await client.wait([f"up-{n}"], timeout_s=60))
    finally:
        workers.stop_all()
    assert {r.status for r in recovered.values()} == {RunStatus.completed}
    answers = [str(r.output["answer"]) for r in recovered.values()]  # type: ignore[index]
    assert all(a.startswith("primary says") for a in answers), answers
    assert primary.call_count > calls_while_open


async def test_exhausted_retries_leave_a_dead_letter_and_a_replay_completes_the_run(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, primary: FakeOpenAIServer
) -> None:
    primary.reply(ErrorStatus(500, message="the model is on fire"))
    cluster = make_cluster(kafka_bootstrap, topic_prefix, tmp_path, models(primary), WORKFLOW)
    workers = Workers(cluster)
    try:
        workers.start("w1")
        async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
            await client.send([TaskSubmitted(task_id="doomed", workflow="faulty", input={"n": 1})])
            failed = (await client.wait(["doomed"], timeout_s=90))["doomed"]
            assert failed.status == RunStatus.failed
            assert failed.reason is not None and "after 3 attempts" in failed.reason
            assert {s.step: s.outcome for s in failed.steps}["ask"] == StepOutcome.failed
            # Written with the result, but on the dead letter's partition: poll.
            letters = await poll_decoded(
                cluster,
                cluster.catalog.dead_letter.name,
                DeadLetter,
                lambda found: any(d.run_id == "doomed" for d in found),
                what="the dead letter of the run's exhausted step",
            )
            (letter,) = [d for d in letters if d.run_id == "doomed"]
            assert letter.step == "ask" and letter.workflow == "faulty"
            assert letter.origin_topic == cluster.catalog.steps("llm").name
            assert letter.error_class in {"ProviderUnavailable", "CircuitOpen"}
            assert len(letter.attempts) == 3 and [a.attempt for a in letter.attempts] == [1, 2, 3]
            request = Codec().decode(letter.payload, StepRequested)
            assert request.run_id == "doomed" and request.attempt == 3
            calls_before = primary.call_count

            # The fault is fixed; ops replay the dead letter; the run completes, once.
            primary.reply(ChatAnswer("better now"))
            await asyncio.sleep(2.5)  # let the breaker's cooldown pass
            replayed = cluster.baton("dlq", "replay", letter.dead_letter_id)
            assert replayed.returncode == 0, replayed.stderr
            done = (await client.wait(["doomed"], timeout_s=60))["doomed"]
    finally:
        workers.stop_all()
    assert done.status == RunStatus.completed
    assert done.output == {"n": 1, "answer": "better now"}
    assert primary.call_count > calls_before
    statuses = Counter(r.status for r in await all_results(cluster) if r.run_id == "doomed")
    assert statuses == Counter({RunStatus.failed: 1, RunStatus.completed: 1})
    assert (await results_by_run(cluster))["doomed"] == 2


async def test_poison_on_every_topic_baton_consumes_is_dead_lettered_and_work_goes_on(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, primary: FakeOpenAIServer
) -> None:
    primary.reply(ChatAnswer("fine"))
    cluster = make_cluster(kafka_bootstrap, topic_prefix, tmp_path, models(primary), WORKFLOW)
    catalog = cluster.catalog
    poisoned = [
        catalog.tasks,
        catalog.step_results,
        catalog.control,
        catalog.steps("llm"),
        catalog.steps("transform"),
        catalog.steps("validate"),
        *(catalog.retry(t.name) for t in catalog.retry_tiers),
        catalog.workflows,
        catalog.run_state,
    ]
    garbage = {topic.name: f"poison for {topic.name}".encode() for topic in poisoned}
    async with BatonClient(cluster.bootstrap, catalog) as client:
        # Before the worker starts: the workflow feed and the state restore read at start.
        for topic in poisoned:
            await client._producer.send_and_wait(
                topic.name, garbage[topic.name], key=b"poison-key", partition=0
            )
        workers = Workers(cluster)
        try:
            workers.start("w1")
            await client.send([TaskSubmitted(task_id="healthy", workflow="faulty", input={"n": 1})])
            result = (await client.wait(["healthy"], timeout_s=60))["healthy"]
            assert result.status == RunStatus.completed

            letters = await poll_decoded(
                cluster,
                catalog.dead_letter.name,
                DeadLetter,
                lambda found: {d.origin_topic for d in found} >= set(garbage),
                what="a dead letter from every poisoned topic",
            )
        finally:
            workers.stop_all()
    by_topic = {d.origin_topic: d for d in letters}
    for name, value in garbage.items():
        letter = by_topic[name]
        assert letter.payload == value and letter.key == b"poison-key", name
        assert letter.origin_partition == 0 and letter.error_class == "DecodeError", name
        assert letter.error, name
