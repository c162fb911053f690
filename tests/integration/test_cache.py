"""The response cache on the real broker: shared by workers through its compacted topic.

The model provider is a real HTTP server on loopback speaking the OpenAI wire format; it
counts every call and reports usage, which the processors turn into cost. A repeated call is
served from the cache by a worker that never saw the first one (it read the topic when it
started): no provider call, ``cached`` usage and the first call's cost as ``saved_usd``. An
entry older than the TTL is not served.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from streams._cache import KafkaResponseCache
from streams._client import BatonClient
from tests.fakes.openai_server import ChatAnswer, FakeOpenAIServer, RecordedRequest
from tests.integration.workers import CODEC, Cluster, Workers, has, poll_run_events, read_topic
from topics import CacheEntry, RunResult, RunStatus, TaskSubmitted, TopicCatalog, create_topics

# Per million tokens: 25 prompt + 30 completion tokens cost $0.00055.
PRICE = 10
CALL_COST = Decimal("0.00055")

ONE_CALL = """
workflow: one-call
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  answer: {kind: llm, model: fast, prompt: "Answer [{{ input.tag }}]", max_tokens: 40}
output: "{{ steps.answer.output }}"
"""

PROCESSORS_ONLY = ("--no-coordinator", "--processors", "llm")


def tag_of(request: RecordedRequest) -> str:
    found = re.search(r"\[([\w-]+)\]", request.body["messages"][-1]["content"])
    return found.group(1) if found else "?"


@pytest.fixture
def provider(fake_openai: FakeOpenAIServer) -> FakeOpenAIServer:
    fake_openai.reply(lambda r: ChatAnswer(f"[{tag_of(r)}] fine", 25, 30))
    return fake_openai


@pytest.fixture
def cluster(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, provider: FakeOpenAIServer
) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(
        "routes:\n  fast:\n    provider: openai\n    model: test-fast\n"
        f"    base_url: {provider.base_url}\n"
        f"    input_usd_per_mtok: {PRICE}\n    output_usd_per_mtok: {PRICE}\n"
    )
    cluster = Cluster(kafka_bootstrap, topic_prefix, tmp_path / "home", models_file=models)
    cluster.deploy(**{"one-call": ONE_CALL})
    return cluster


async def run(cluster: Cluster, run_id: str, tag: str) -> RunResult:
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([TaskSubmitted(task_id=run_id, workflow="one-call", input={"tag": tag})])
        results = await client.wait([run_id], timeout_s=90)
    assert run_id in results, f"{run_id} has no result"
    result = results[run_id]
    assert result.status == RunStatus.completed, result.reason
    return result


async def cache_entries(cluster: Cluster) -> list[CacheEntry]:
    catalog = cluster.catalog
    values = await read_topic(cluster.bootstrap, catalog.llm_cache.name, catalog.partitions)
    return [CODEC.decode(value, CacheEntry) for value in values]


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


async def test_a_repeated_request_is_served_from_the_cache_by_another_worker(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    workers.start("coordinator", "--processors", "none")
    first_worker = workers.start("models", *PROCESSORS_ONLY, ready=False)

    first = await run(cluster, "first", "same")

    assert len(provider.requests) == 1
    (answered,) = first.steps
    assert answered.usage.cost_usd == CALL_COST and not answered.usage.cached
    (entry,) = await until(lambda: cache_entries(cluster), "the answer is on the cache topic")
    assert (entry.route, entry.provider, entry.model) == ("fast", "openai", "test-fast")
    assert (entry.text, entry.cost_usd) == ("[same] fine", CALL_COST)

    # A new process: its cache is what it read from the topic when it started.
    first_worker.stop()
    workers.start("models", *PROCESSORS_ONLY, ready=False)
    second = await run(cluster, "second", "same")

    assert len(provider.requests) == 1, "the repeated request made no provider call"
    assert second.output == first.output == "[same] fine"
    (served,) = second.steps
    assert served.usage.cached
    assert served.usage.saved_usd == CALL_COST
    assert served.usage.cost_usd == 0
    assert served.usage.input_tokens == served.usage.output_tokens == 0
    assert (served.usage.route, served.usage.provider, served.usage.model) == (
        "fast",
        "openai",
        "test-fast",
    )
    assert second.usage.cost_usd == 0 and second.usage.saved_usd == CALL_COST
    events = await poll_run_events(cluster, "second", has("run_completed"))
    (succeeded,) = [e for e in events if e.type == "step_succeeded"]
    assert succeeded.usage is not None and succeeded.usage.cached

    other = await run(cluster, "other", "different")
    assert len(provider.requests) == 2 and not other.steps[0].usage.cached


async def test_an_entry_older_than_the_ttl_is_not_served(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    workers.start("coordinator", "--processors", "none")
    models_worker = workers.start("models", *PROCESSORS_ONLY, ready=False)
    await run(cluster, "first", "aging")
    (entry,) = await until(lambda: cache_entries(cluster), "the answer is on the cache topic")

    # The same key again, answered two days ago: the latest record under a key is the entry.
    aged = entry.model_copy(update={"created_at": datetime.now(UTC) - timedelta(days=2)})
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            cluster.catalog.llm_cache.name, CODEC.encode(aged), key=aged.key.encode()
        )
    finally:
        await producer.stop()
    models_worker.stop()
    workers.start("models", *PROCESSORS_ONLY, ready=False)

    again = await run(cluster, "again", "aging")

    assert len(provider.requests) == 2, "the expired entry was not served"
    (answered,) = again.steps
    assert not answered.usage.cached and answered.usage.cost_usd == CALL_COST


async def test_a_worker_with_the_cache_turned_off_calls_the_model_every_time(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    workers.start("w1", BATON_CACHE_TTL="0")

    results = [await run(cluster, f"run-{i}", "uncached") for i in range(2)]

    assert len(provider.requests) == 2
    assert not any(r.steps[0].usage.cached for r in results)
    assert await cache_entries(cluster) == []


# -- the topic-backed store, in process --------------------------------------------------------


def _entry(key: str, created_at: datetime, text: str = "an answer") -> CacheEntry:
    return CacheEntry(
        key=key,
        route="fast",
        provider="openai",
        model="test-fast",
        text=text,
        input_tokens=25,
        output_tokens=30,
        cost_usd=CALL_COST,
        created_at=created_at,
    )


async def test_stores_share_entries_and_follow_the_topic(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    catalog = TopicCatalog(prefix=topic_prefix, partitions=3)
    await create_topics(kafka_bootstrap, catalog, replication_factor=1)
    stores: list[KafkaResponseCache] = []

    async def started() -> KafkaResponseCache:
        store = KafkaResponseCache(kafka_bootstrap, catalog, CODEC, ttl_s=3600)
        await store.start()
        stores.append(store)
        return store

    try:
        writer, follower = await started(), await started()
        now = datetime.now(UTC)
        entries = [_entry(f"key-{i}", now, f"answer {i}") for i in range(20)]
        for entry in entries:
            await writer.put(entry)
        assert await writer.get("key-3") == entries[3], "kept at once where it was written"

        async def followed() -> bool:
            return all([await follower.get(e.key) == e for e in entries])

        await until(followed, "a running store sees what another one wrote")

        late = await started()
        assert [await late.get(e.key) for e in entries] == entries, "loaded when it started"

        await writer.put(_entry("key-3", now - timedelta(hours=2)))
        assert await writer.get("key-3") is None

        async def expired_everywhere() -> bool:
            return await follower.get("key-3") is None and await late.get("key-3") is None

        await until(expired_everywhere, "an expired entry replaces the fresh one")
        fresh = await started()
        assert await fresh.get("key-3") is None and await fresh.get("key-4") == entries[4]
        assert len(fresh.entries) == 19 and fresh.skipped == 0
    finally:
        for store in stores:
            await store.stop()
