"""Workflows end to end on the real broker: real workers, real topics, results counted."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import httpx
import pytest

from streams._client import BatonClient
from tests.integration.workers import (
    Cluster,
    Workers,
    api_access,
    has,
    ops,
    poll_decoded,
    poll_run_events,
    results_by_run,
    wait_until_drained,
)
from topics import DeadLetter, RunResult, RunStatus, StepOutcome, TaskSubmitted

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "support-triage.yaml"
MODELS = ROOT / "examples" / "models.yaml"


@pytest.fixture
def cluster(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Cluster:
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=MODELS,
        extra_env=api_access(tmp_path / "access"),
    )
    created = cluster.baton("topics", "create")
    assert created.returncode == 0, created.stderr
    return cluster


def deploy(cluster: Cluster, path: Path) -> None:
    result = cluster.baton("workflows", "deploy", str(path))
    assert result.returncode == 0, result.stderr


# (ticket text, category the scripted classifier gives, draft step, route of the draft)
TICKETS = [
    ("My order arrived broken", "refund", "draft_refund", "fast"),
    ("The app crashes with an error on login", "bug", "draft_answer", "fast"),
    ("Where can I change my address?", "question", "draft_answer", "fast"),
    ("Broken again. My lawyer will call you about a refund", "refund", "draft_refund", "strong"),
]


async def test_500_tasks_each_get_exactly_one_result_on_the_right_branch(
    cluster: Cluster, workers: Workers
) -> None:
    workers.start("w1")
    deploy(cluster, EXAMPLE)
    cases = list(itertools.islice(itertools.cycle(TICKETS), 500))
    tasks = [
        TaskSubmitted(
            task_id=f"ticket-{i}",
            workflow="support-triage",
            input={"ticket_id": str(i), "text": text},
        )
        for i, (text, *_) in enumerate(cases)
    ]
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        results = await client.wait([t.task_id for t in tasks], timeout_s=180)
    assert len(results) == 500
    for i, (_, category, draft, route) in enumerate(cases):
        result = results[f"ticket-{i}"]
        assert result.status == RunStatus.completed, result.reason
        assert result.output == {
            "ticket_id": str(i),
            "category": category,
            "text": result.output["text"],  # type: ignore[index,call-overload]
        }
        steps = {s.step: s for s in result.steps}
        other = "draft_answer" if draft == "draft_refund" else "draft_refund"
        assert steps[draft].outcome == StepOutcome.succeeded
        assert steps[draft].usage.route == route
        assert steps[other].outcome == StepOutcome.skipped
        assert steps["check"].outcome == StepOutcome.succeeded
    await wait_until_drained(cluster)
    counts = await results_by_run(cluster)
    assert set(counts) == set(results) and set(counts.values()) == {1}


PARALLEL = """
workflow: parallel
version: 1
steps:
  start: {kind: transform, output: "{{ input.n }}"}
  left: {kind: transform, after: [start], output: "{{ steps.start.output * 2 }}"}
  right: {kind: transform, after: [start], output: "{{ steps.start.output * 3 }}"}
  never: {kind: transform, after: [start], when: false, output: 0}
  join: {kind: transform, after: [left, right, never],
         output: {sum: "{{ steps.left.output + steps.right.output }}",
                  never: "{{ steps.never.status }}"}}
"""


async def test_parallel_branches_join_and_a_false_when_is_skipped_and_recorded(
    cluster: Cluster, workers: Workers, tmp_path: Path
) -> None:
    workers.start("w1")
    path = tmp_path / "parallel.yaml"
    path.write_text(PARALLEL)
    deploy(cluster, path)
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([TaskSubmitted(task_id="p-1", workflow="parallel", input={"n": 5})])
        result = (await client.wait(["p-1"], timeout_s=60))["p-1"]
    assert result.status == RunStatus.completed
    assert result.output == {"sum": 25, "never": "skipped"}
    assert {s.step: s.outcome for s in result.steps}["never"] == StepOutcome.skipped
    events = await poll_run_events(cluster, "p-1", has("run_completed"))
    kinds = [(e.type, e.step) for e in events]
    assert ("step_skipped", "never") in kinds
    # Both branches were dispatched before either finished: they ran in parallel.
    first_done = min(kinds.index(("step_succeeded", s)) for s in ("left", "right"))
    assert kinds.index(("step_dispatched", "left")) < first_done
    assert kinds.index(("step_dispatched", "right")) < first_done
    assert [e.seq for e in events] == list(range(len(events)))


async def test_bad_input_is_rejected_naming_the_field_and_bad_bytes_are_dead_lettered(
    cluster: Cluster, workers: Workers
) -> None:
    workers.start("w1")
    deploy(cluster, EXAMPLE)
    garbage = [b"\x00\x00\x00\x00\x7fnot avro at all", b"{this is not json", b"\xff\xfe"]
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        for value in garbage:
            await client._producer.send_and_wait(cluster.catalog.tasks.name, value, key=b"junk")
        await client.send(
            [
                TaskSubmitted(
                    task_id="bad-input",
                    workflow="support-triage",
                    input={"ticket_id": 7, "refund_usd": "lots"},
                ),
                TaskSubmitted(task_id="no-such", workflow="nope", input={}),
                TaskSubmitted(
                    task_id="fine",
                    workflow="support-triage",
                    input={"ticket_id": "8", "text": "Where is my parcel?"},
                ),
            ]
        )
        results = await client.wait(["bad-input", "no-such", "fine"], timeout_s=60)
    assert results["fine"].status == RunStatus.completed
    rejected = results["bad-input"]
    assert rejected.status == RunStatus.rejected
    assert rejected.reason == (
        "input: 'text' is a required property; "
        "input.refund_usd: 'lots' is not of type 'number'; "
        "input.ticket_id: 7 is not of type 'string'"
    )
    assert results["no-such"].status == RunStatus.rejected
    assert results["no-such"].reason == "workflow nope is not deployed"
    # Written on the partition of key `junk`, by another batch than the results: poll.
    letters = await poll_decoded(
        cluster,
        cluster.catalog.dead_letter.name,
        DeadLetter,
        lambda found: set(garbage) <= {letter.payload for letter in found},
        what="a dead letter for each undecodable record",
    )
    assert sorted(letter.payload for letter in letters) == sorted(garbage)
    for letter in letters:
        assert letter.origin_topic == cluster.catalog.tasks.name
        assert letter.error_class == "DecodeError"
        assert letter.key == b"junk"
    reasons = {letter.error for letter in letters}
    assert any("unknown schema id 127" in r for r in reasons)
    assert any(r.startswith("invalid JSON") for r in reasons)


async def test_the_http_api_accepts_tasks_and_serves_runs_from_any_worker(
    cluster: Cluster, workers: Workers
) -> None:
    first = workers.start("w1")
    second = workers.start("w2")
    deploy(cluster, EXAMPLE)
    run_ids = []
    async with httpx.AsyncClient(headers=ops()) as http:
        for i in range(8):
            response = await http.post(
                f"{first.api}/v1/tasks",
                json={
                    "task_id": f"api-{i}",
                    "workflow": "support-triage",
                    "input": {"ticket_id": str(i), "text": "My order arrived broken"},
                },
            )
            assert response.status_code == 202, response.text
            assert response.json() == {"run_id": f"api-{i}", "status_url": f"/v1/runs/api-{i}"}
            run_ids.append(f"api-{i}")
        for run_id in run_ids:
            # The worker that does not own the run asks the owner with the workers' key.
            for worker in (first, second):
                view = await _poll_run(http, worker.api, run_id)
                assert view["run_id"] == run_id and view["status"] == "completed"
                assert [s["step"] for s in view["steps"]][0] == "classify"
        missing = await http.get(f"{first.api}/v1/runs/nope")
        assert missing.status_code == 404 and missing.json() == {"error": "no run 'nope'"}
        for body, status, error in [
            (b"{not json", 400, "body is not JSON"),
            (b"[1, 2]", 400, "body must be a JSON object"),
            (b'{"workflow": "w"}', 422, "input: Field required"),
            (b'{"workflow": "w", "input": {}, "colour": 1}', 422, "colour: Extra inputs"),
            (b'{"task_id": "a\\nb", "workflow": "w", "input": {}}', 422, "task_id: 'a\\nb' is"),
        ]:
            response = await http.post(f"{first.api}/v1/tasks", content=body)
            assert response.status_code == status, response.text
            assert response.json()["error"].startswith(error)
    # Without a token (or with a wrong one) nothing is answered, on any worker.
    async with httpx.AsyncClient() as anonymous:
        for worker in (first, second):
            for headers in ({}, {"Authorization": "Bearer nope"}):
                read = await anonymous.get(f"{worker.api}/v1/runs/api-0", headers=headers)
                task = {"workflow": "support-triage", "input": {"ticket_id": "x", "text": "x"}}
                sent = await anonymous.post(f"{worker.api}/v1/tasks", json=task, headers=headers)
                assert read.status_code == sent.status_code == 401
                assert "api-0" not in read.text
    # A run's view is the coordinator's, updated as its batch commits: the result may not be
    # readable yet.
    results = await poll_decoded(
        cluster,
        cluster.catalog.results.name,
        RunResult,
        lambda found: set(run_ids) <= {r.run_id for r in found},
        what="a result for every run",
    )
    assert sorted(r.run_id for r in results) == sorted(run_ids)  # one each, and no other


async def _poll_run(http: httpx.AsyncClient, api: str, run_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await http.get(f"{api}/v1/runs/{run_id}")
        if response.status_code == 200 and response.json()["status"] == "completed":
            return response.json()  # type: ignore[no-any-return]
        await asyncio.sleep(0.2)
    raise AssertionError(
        f"{run_id} not completed via {api}: {response.status_code} {response.text}"
    )
