"""Operating baton: cancelling runs, splitting roles across workers, a real provider's wire."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streams._client import BatonClient
from tests.fakes import ChatAnswer, FakeOpenAIServer
from tests.integration.workers import (
    Cluster,
    Workers,
    has,
    poll_decoded,
    poll_run_events,
    results_by_run,
    run_events,
)
from topics import (
    Codec,
    RunStatus,
    StepKind,
    StepOutcome,
    StepRequested,
    StepResult,
    TaskSubmitted,
    partition_for,
)

SLOW = """
routes:
  slow:
    provider: scripted
    model: scripted-slow
    latency_ms: 300
    script:
      - reply: "slowly: {{ prompt }}"
  # Slow enough that a cancel sent while it runs surely lands while it runs.
  glacial:
    provider: scripted
    model: scripted-glacial
    latency_ms: 8000
    script:
      - reply: "at last: {{ prompt }}"
"""

TWO_STEPS = """
workflow: two-steps
version: 1
steps:
  first: {kind: llm, model: slow, prompt: "first {{ input.n }}"}
  second: {kind: llm, model: slow, after: [first], prompt: "second {{ steps.first.output }}"}
"""

LONG_FIRST = """
workflow: long-first
version: 1
steps:
  first: {kind: llm, model: glacial, prompt: "first {{ input.n }}"}
  second: {kind: llm, model: slow, after: [first], prompt: "second {{ steps.first.output }}"}
"""


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(SLOW)
    cluster = Cluster(kafka_bootstrap, topic_prefix, tmp_path / "home", models_file=models)
    assert cluster.baton("topics", "create").returncode == 0
    for name, text in (("two-steps", TWO_STEPS), ("long-first", LONG_FIRST)):
        workflow = tmp_path / f"{name}.yaml"
        workflow.write_text(text)
        assert cluster.baton("workflows", "deploy", str(workflow)).returncode == 0
    return cluster


async def test_a_run_in_flight_is_cancelled_and_its_late_results_change_nothing(
    cluster: Cluster, workers: Workers
) -> None:
    workers.start("w1")
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(
            [TaskSubmitted(task_id="to-cancel", workflow="long-first", input={"n": 1})]
        )
        await _until(lambda: _dispatched(cluster, "to-cancel", "first"))
        cancelled = cluster.baton("runs", "cancel", "to-cancel", "--reason", "customer withdrew")
        assert cancelled.returncode == 0, cancelled.stderr
        result = (await client.wait(["to-cancel"], timeout_s=30))["to-cancel"]
    assert result.status == RunStatus.cancelled
    assert result.reason == "customer withdrew"
    assert {s.step: s.outcome for s in result.steps} == {
        "first": StepOutcome.cancelled,
        "second": StepOutcome.cancelled,
    }
    # The first step's result still arrives (the call was under way) and changes nothing.
    events = await poll_run_events(cluster, "to-cancel", has("result_ignored"))
    types = [e.type for e in events]
    assert "step_dispatched" in types and types.count("step_dispatched") == 1
    assert (await results_by_run(cluster))["to-cancel"] == 1


async def test_coordinators_and_processors_on_separate_workers(
    cluster: Cluster, workers: Workers
) -> None:
    workers.start("coordinator", "--processors", "none")
    processors = workers.start(
        "processors", "--no-coordinator", "--processors", "llm,transform,validate", ready=False
    )
    await _until(
        lambda: processors.log_path.exists() and "Ready" in processors.log_path.read_text()
    )
    ids = [f"split-{i}" for i in range(10)]
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(
            [
                TaskSubmitted(task_id=run_id, workflow="two-steps", input={"n": i})
                for i, run_id in enumerate(ids)
            ]
        )
        results = await client.wait(ids, timeout_s=60)
    assert {r.status for r in results.values()} == {RunStatus.completed}
    assert results["split-3"].output == "slowly: second slowly: first 3"


async def test_an_openai_compatible_route_through_a_worker(
    cluster: Cluster, workers: Workers, fake_openai: FakeOpenAIServer, tmp_path: Path
) -> None:
    fake_openai.reply(
        lambda request: ChatAnswer(
            '{"category": "refund", "risk": "low"}'
            if "Classify" in request.body["messages"][-1]["content"]
            else "We will refund you.",
            prompt_tokens=40,
            completion_tokens=8,
        )
    )
    models = tmp_path / "openai-models.yaml"
    models.write_text(
        "routes:\n"
        + "".join(
            f"  {route}:\n    provider: openai\n    model: test-{route}\n"
            f"    base_url: {fake_openai.base_url}\n    api_key_env: BATON_TEST_KEY\n"
            "    input_usd_per_mtok: 1\n    output_usd_per_mtok: 4\n"
            for route in ("fast", "strong")
        )
    )
    workers.start("w1", BATON_MODELS_FILE=str(models), BATON_TEST_KEY="sk-test-123")
    example = Path(__file__).resolve().parents[2] / "examples" / "support-triage.yaml"
    deployed = cluster.baton("workflows", "deploy", str(example), BATON_MODELS_FILE=str(models))
    assert deployed.returncode == 0, deployed.stderr
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(
            [
                TaskSubmitted(
                    task_id="real-wire",
                    workflow="support-triage",
                    input={"ticket_id": "9", "text": "My parcel arrived broken"},
                )
            ]
        )
        result = (await client.wait(["real-wire"], timeout_s=60))["real-wire"]
    assert result.status == RunStatus.completed, result.reason
    assert result.output == {"ticket_id": "9", "category": "refund", "text": "We will refund you."}
    requests = fake_openai.requests
    assert [r.body["model"] for r in requests] == ["test-fast", "test-fast"]
    assert all(r.header("authorization") == "Bearer sk-test-123" for r in requests)
    classify = requests[0].body
    assert classify["response_format"]["type"] == "json_schema"
    assert classify["messages"][0] == {
        "role": "system",
        "content": "You triage customer support tickets.",
    }
    assert result.usage.input_tokens == 80 and result.usage.output_tokens == 16
    assert str(result.usage.cost_usd.normalize()) == "0.000144"  # 80 x $1/M + 16 x $4/M


async def _dispatched(cluster: Cluster, run_id: str, step: str) -> bool:
    return any(
        e.type == "step_dispatched" and e.step == step for e in await run_events(cluster, run_id)
    )


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check() if callable(check) else check
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not true within {timeout}s")


async def test_a_run_keeps_the_version_it_started_on(
    cluster: Cluster, workers: Workers, tmp_path: Path
) -> None:
    workers.start("w1")
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([TaskSubmitted(task_id="pinned", workflow="long-first", input={"n": 7})])
        await _until(lambda: _dispatched(cluster, "pinned", "first"))
        newer = tmp_path / "long-first-v2.yaml"
        newer.write_text(
            LONG_FIRST.replace("version: 1", "version: 2").replace("second {{", "v2 {{")
        )
        assert cluster.baton("workflows", "deploy", str(newer)).returncode == 0
        await client.send([TaskSubmitted(task_id="newer", workflow="long-first", input={"n": 8})])
        results = await client.wait(["pinned", "newer"], timeout_s=60)
    assert results["pinned"].output == "slowly: second at last: first 7"
    assert results["newer"].output == "slowly: v2 at last: first 8"
    assert results["pinned"].workflow_version != results["newer"].workflow_version


async def test_a_processor_does_not_start_a_request_whose_deadline_passed(
    cluster: Cluster, workers: Workers
) -> None:
    workers.start("w1")
    now = datetime.now(UTC)

    def request(run_id: str, deadline: datetime) -> StepRequested:
        return StepRequested(
            run_id=run_id,
            step="t",
            kind=StepKind.transform,
            attempt=1,
            idempotency_key=f"{run_id}/t",
            workflow="w",
            workflow_version="h",
            params={"output": "{{ run.id }}"},
            context={"input": {}, "steps": {}, "run": {"id": run_id}},
            dispatched_at=now,
            deadline_at=deadline,
        )

    codec = Codec()
    topic = cluster.catalog.steps("transform")
    partition = partition_for("stale", topic.partitions)
    fresh_id = next(
        f"fresh-{i}"
        for i in range(1000)
        if partition_for(f"fresh-{i}", topic.partitions) == partition
    )
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        for run_id, deadline in (
            ("stale", now - timedelta(minutes=1)),
            (fresh_id, now + timedelta(minutes=1)),
        ):
            await client._producer.send_and_wait(
                topic.name,
                codec.encode(request(run_id, deadline)),
                key=run_id.encode(),
                partition=partition,
            )

    # Same partition, so the processor met the stale request first: once the fresh one's
    # result is there, the stale one was skipped.
    results = await poll_decoded(
        cluster,
        cluster.catalog.step_results.name,
        StepResult,
        lambda found: any(r.run_id == fresh_id for r in found),
        what=f"the step result of {fresh_id}",
    )
    assert [r.run_id for r in results] == [fresh_id]
