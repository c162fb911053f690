"""``run_paused`` / ``run_resumed`` in ``baton.run-events``, end to end on the real broker.

A run parked at an approval step says it paused (and for which request) as soon as it parks,
and says it resumed once a reviewer's decision through the API lets it go on. A run whose
model call failed waits in a retry tier: it says it paused (tier and due time) and resumed
when the retry left the tier, before the retried call's result.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.fakes import ChatAnswer, ErrorStatus, FakeOpenAIServer, RecordedRequest
from tests.integration.approvals import (
    Reviewers,
    approvals_cluster,
    result_of,
    submit,
)
from tests.integration.workers import Cluster, Workers, has, poll_run_events
from topics import RunEvent, RunStatus

FLAKY = """
workflow: flaky-ask
version: 1
steps:
  ask: {kind: llm, model: primary, prompt: "question {{ input.n }}",
        retry: {attempts: 3, backoff: {initial: 1s, jitter: 0}}}
output: "{{ steps.ask.output }}"
"""


@pytest.fixture
def provider() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def cluster(kafka_bootstrap: str, tmp_path: Path, provider: FakeOpenAIServer) -> Iterator[Cluster]:
    models = tmp_path / "models.yaml"
    models.write_text(
        "routes:\n  primary:\n    provider: openai\n    model: m-primary\n"
        f"    base_url: {provider.base_url}\n    timeout_s: 2\n    retries: 0\n"
    )
    cluster = approvals_cluster(
        kafka_bootstrap,
        f"t{uuid.uuid4().hex[:8]}",
        tmp_path / "approvals",
        BATON_MODELS_FILE=str(models),
        BATON_RETRY_TIERS="2s,4s",
        BATON_CACHE_TTL="0",
    )
    flaky = tmp_path / "flaky-ask.yaml"
    flaky.write_text(FLAKY)
    deployed = cluster.baton("workflows", "deploy", str(flaky))
    assert deployed.returncode == 0, deployed.stderr
    yield cluster


def types(events: list[RunEvent]) -> list[str]:
    return [e.type for e in events]


def one(events: list[RunEvent], type_: str) -> RunEvent:
    (found,) = [e for e in events if e.type == type_]
    return found


async def test_a_run_pauses_at_an_approval_and_resumes_when_a_reviewer_approves(
    cluster: Cluster, workers: Workers
) -> None:
    worker = workers.start("p1")
    reviewers = Reviewers(worker.api)
    await submit(cluster, "paused-approval", "refund", amount=120)
    events = await poll_run_events(cluster, "paused-approval", has("run_paused"), timeout=90)
    paused = one(events, "run_paused")
    asked = one(events, "approval_requested")
    assert types(events)[-2:] == ["approval_requested", "run_paused"]
    assert isinstance(asked.detail, dict) and isinstance(paused.detail, dict)
    (wait,) = paused.detail["waiting_for"]  # type: ignore[misc]
    assert wait == {
        "reason": "approval",
        "step": "approve",
        "approval_id": asked.detail["approval_id"],
        "until": wait["until"],  # type: ignore[index]
    }
    assert "run_resumed" not in types(events)

    request = await reviewers.open_for("alice", "paused-approval", timeout=60)
    decided = await reviewers.decide("alice", request["approval_id"], "approve", "fine")
    assert decided.status_code == 202, decided.text
    result = await result_of(cluster, "paused-approval", timeout=60)
    assert result.status == RunStatus.completed

    events = await poll_run_events(cluster, "paused-approval", has("run_completed"))
    order = types(events)
    resumed = one(events, "run_resumed")
    assert order.index("run_paused") < order.index("approval_decided") < order.index("run_resumed")
    assert order.index("run_resumed") < order.index("run_completed")
    assert resumed.duration_ms is not None and resumed.duration_ms > 0
    assert resumed.detail == {"paused_at": paused.at.isoformat()}


async def test_a_run_pauses_in_a_retry_tier_and_resumes_when_the_retry_leaves_it(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    lock = threading.Lock()
    calls: Counter[str] = Counter()

    def answer(request: RecordedRequest) -> object:
        with lock:
            calls["all"] += 1
            first = calls["all"] == 1
        return ErrorStatus(503) if first else ChatAnswer("an answer")

    provider.reply(answer)
    workers.start("p1")
    await submit(cluster, "paused-retry", "flaky-ask", n=1)
    result = await result_of(cluster, "paused-retry", timeout=90)
    assert result.status == RunStatus.completed, result.reason

    events = await poll_run_events(cluster, "paused-retry", has("run_completed"))
    order = types(events)
    assert order == [
        "run_started",
        "step_dispatched",
        "step_failed",
        "step_dispatched",
        "run_paused",
        "run_resumed",
        "step_succeeded",
        "run_completed",
    ], order
    paused, resumed = one(events, "run_paused"), one(events, "run_resumed")
    retry = [e for e in events if e.type == "step_dispatched"][1]
    assert isinstance(retry.detail, dict) and isinstance(paused.detail, dict)
    (wait,) = paused.detail["waiting_for"]  # type: ignore[misc]
    assert wait == {
        "reason": "retry",
        "step": "ask",
        "retry_tier": "2s",
        "until": retry.detail["not_before"],
    }
    # It resumed when the retry was due, not before; and before the retried call answered.
    due = datetime.fromisoformat(str(wait["until"]))  # type: ignore[index]
    assert resumed.at >= due
    assert resumed.duration_ms == pytest.approx((resumed.at - paused.at).total_seconds() * 1000)
    assert calls["all"] == 2
