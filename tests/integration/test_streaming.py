"""Token streaming on the real broker: provider -> ``stream`` topic -> ``GET /v1/runs/{id}/stream``.

The model is a real HTTP server on loopback that streams a chat completion slowly (chunked
SSE, a few characters an event). A client reads the run's stream from the worker's API as
Server-Sent Events while the run is going, and the run's one result carries the whole text.
A first attempt cut mid-stream is followed by a second whose first chunk says it supersedes
the first attempt's text.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from processors._sse import SseDecoder
from streams._client import BatonClient
from tests.fakes.openai_server import FakeOpenAIServer, Streamed
from tests.integration.workers import Cluster, Workers, api_access, ops, results_by_run
from topics import RunResult, RunStatus, TaskSubmitted, partition_for

TEXT = "Dear customer, your refund of $42 is on its way; expect it within five days."

LIVE = """
workflow: live
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  answer: {kind: llm, model: live, prompt: "Answer [{{ input.tag }}]", max_tokens: 60}
output: "{{ steps.answer.output }}"
"""


@pytest.fixture
def cluster(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, fake_openai: FakeOpenAIServer
) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(
        "routes:\n  live:\n    provider: openai\n    model: test-live\n"
        f"    base_url: {fake_openai.base_url}\n    stream: true\n    retries: 0\n"
    )
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env=api_access(tmp_path / "access"),
    )
    cluster.deploy(live=LIVE)
    return cluster


async def _read_stream(
    api: str, run_id: str, timeout: float = 60.0
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    """The run's chunks (each with the run's status when it arrived), and its ``end`` event."""
    deadline = time.monotonic() + timeout
    chunks: list[dict[str, Any]] = []
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=api, headers=ops(), timeout=timeout) as http:
        while True:  # the run exists at its owner shortly after the task is submitted
            assert time.monotonic() < deadline, "the run never appeared"
            if (await http.get(f"/v1/runs/{run_id}")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        async with http.stream("GET", f"/v1/runs/{run_id}/stream") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            decoder = SseDecoder()
            async for data in response.aiter_bytes():
                for event in decoder.feed(data):
                    if event.event == "end":
                        return chunks, orjson.loads(event.data), ids
                    assert event.event == "chunk"
                    state = (await http.get(f"/v1/runs/{run_id}")).json()
                    chunks.append({**orjson.loads(event.data), "run_status": state["status"]})
                    ids.append(event.id or "")
    raise AssertionError("the stream ended without an end event")


async def _run(
    cluster: Cluster, api: str, tag: str, task_id: str | None = None
) -> tuple[Any, RunResult]:
    task = TaskSubmitted(task_id=task_id or f"live-{tag}", workflow="live", input={"tag": tag})
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([task])
        read = asyncio.create_task(_read_stream(api, task.task_id))
        results = await client.wait([task.task_id], timeout_s=90)
        streamed = await asyncio.wait_for(read, 60)
    return streamed, results[task.task_id]


async def test_the_text_streams_to_the_client_before_the_one_result(
    cluster: Cluster, workers: Workers, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.reply(Streamed(TEXT, piece=4, delay=0.1))
    worker = workers.start("w1")

    (chunks, end, ids), result = await _run(cluster, worker.api, "slow")

    assert result.status == RunStatus.completed and result.output == TEXT
    assert "".join(c["text"] for c in chunks) == TEXT
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert {(c["step"], c["attempt"]) for c in chunks} == {("answer", 1)}
    assert 1 < len(chunks) <= -(-len(TEXT) // 4) + 1  # pieces coalesced, never split
    assert chunks[-1]["final"] and not any(c["final"] for c in chunks[:-1])
    assert chunks[0]["run_status"] == "running"  # the text came while the run was going
    assert not any(c["restarted"] for c in chunks)
    assert end == {"run_id": "live-slow", "status": "completed"}
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    assert (await results_by_run(cluster))["live-slow"] == 1
    assert fake_openai.requests[0].body["stream"] is True

    # Resuming after the third chunk gives the rest, then the end.
    async with httpx.AsyncClient(base_url=worker.api, headers=ops(), timeout=30) as http:
        headers = {"Last-Event-ID": ids[2]}
        async with http.stream("GET", "/v1/runs/live-slow/stream", headers=headers) as response:
            body = b"".join([part async for part in response.aiter_bytes()])
    events = SseDecoder().feed(body)
    assert [e.event for e in events] == ["chunk"] * (len(chunks) - 3) + ["end"]
    assert (
        "".join(orjson.loads(e.data)["text"] for e in events[:-1])
        == TEXT[len("".join(c["text"] for c in chunks[:3])) :]
    )


async def test_a_retried_attempt_supersedes_the_cut_attempts_text(
    cluster: Cluster, workers: Workers, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.enqueue(Streamed(TEXT, piece=4, delay=0.05, cut_after=6))
    fake_openai.reply(Streamed(TEXT, piece=4, delay=0.02))
    worker = workers.start("w1")

    (chunks, end, _), result = await _run(cluster, worker.api, "cut")

    assert result.status == RunStatus.completed and result.output == TEXT
    assert end["status"] == "completed"
    by_attempt = Counter(c["attempt"] for c in chunks)
    assert set(by_attempt) == {1, 2}
    first = [c for c in chunks if c["attempt"] == 1]
    second = [c for c in chunks if c["attempt"] == 2]
    assert chunks == first + second  # attempt 1's chunks, then attempt 2's
    assert TEXT.startswith("".join(c["text"] for c in first))
    assert "".join(c["text"] for c in first) != TEXT and not any(c["final"] for c in first)
    assert second[0]["seq"] == 0
    assert second[0]["restarted"] is True and second[0]["supersedes_attempt"] == 1
    assert "".join(c["text"] for c in second) == TEXT and second[-1]["final"]
    assert (await results_by_run(cluster))["live-cut"] == 1


async def test_a_worker_that_does_not_own_the_run_relays_its_stream(
    cluster: Cluster, workers: Workers, fake_openai: FakeOpenAIServer
) -> None:
    fake_openai.reply(Streamed(TEXT, piece=6, delay=0.05))
    first, second = workers.start("w1"), workers.start("w2")
    deadline = time.monotonic() + 90
    while True:
        owned = [
            set(httpx.get(f"{w.api}/healthz", timeout=5).json()["partitions"])
            for w in (first, second)
        ]
        if all(owned) and owned[0] | owned[1] == set(range(cluster.partitions)):
            break
        assert time.monotonic() < deadline, "the partitions were never shared"
        await asyncio.sleep(0.3)
    run_id = next(
        f"live-relay-{n}"
        for n in range(1000)
        if partition_for(f"live-relay-{n}", cluster.partitions) in owned[1]
    )

    (chunks, end, _), result = await _run(cluster, first.api, "relay", run_id)

    assert result.output == TEXT and end == {"run_id": run_id, "status": "completed"}
    assert "".join(c["text"] for c in chunks) == TEXT and chunks[-1]["final"]
