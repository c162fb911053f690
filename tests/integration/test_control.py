"""Operators' control on the real broker: pause and resume tenants and workflows, caps.

Real ``baton worker`` processes, the ``baton control`` CLI and the HTTP API; the model is a
real HTTP server on loopback speaking the OpenAI wire format, which records every call, so a
test sees that nothing of a paused tenant reaches it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams._client import BatonClient
from tests.fakes.openai_server import ChatAnswer, Delay, FakeOpenAIServer, RecordedRequest
from tests.integration.workers import (
    Cluster,
    Workers,
    has,
    poll_run_events,
    results_by_run,
    run_events,
)
from topics import RunEvent, RunResult, RunStatus, TaskSubmitted

TWO_ASKS = """
workflow: two-asks
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  first: {kind: llm, model: fast, prompt: "first [{{ input.tag }}]", max_tokens: 40}
  second: {kind: llm, after: [first], model: fast, prompt: "second [{{ input.tag }}]",
           max_tokens: 40}
output: "{{ steps.second.output }}"
"""

ONE_ASK = """
workflow: one-ask
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  only: {kind: llm, model: fast, prompt: "only [{{ input.tag }}]", max_tokens: 40}
"""

OPERATOR_TOKEN = "control-integration-operator-7f3a"
ACCESS = 'principals:\n  oscar: {token_env: BATON_TOKEN_OSCAR, groups: [operators], tenants: "*"}\n'


def call_of(request: RecordedRequest) -> str:
    """``first [tag]``: which prompt of which run a call is."""
    text = request.body["messages"][-1]["content"]
    found = re.search(r"(\w+) \[([\w-]+)\]", text)
    return f"{found.group(1)} [{found.group(2)}]" if found else text


def answer(request: RecordedRequest) -> Any:
    """The run's tag back; a run tagged ``slow-*`` waits 6 s for its first answer."""
    call = call_of(request)
    if call.startswith("first [slow"):
        return Delay(6, ChatAnswer(f"{call} done", 20, 10))
    return ChatAnswer(f"{call} done", 20, 10)


@pytest.fixture
def provider(fake_openai: FakeOpenAIServer) -> FakeOpenAIServer:
    fake_openai.reply(answer)
    return fake_openai


@pytest.fixture
def cluster(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, provider: FakeOpenAIServer
) -> Cluster:
    models = tmp_path / "models.yaml"
    models.write_text(
        "routes:\n  fast:\n    provider: openai\n    model: test-fast\n"
        f"    base_url: {provider.base_url}\n"
        "    input_usd_per_mtok: 100\n    output_usd_per_mtok: 100\n"
    )
    access = tmp_path / "access.yaml"
    access.write_text(ACCESS)
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env={
            "BATON_ACCESS_FILE": str(access),
            "BATON_TOKEN_OSCAR": OPERATOR_TOKEN,
            "BATON_CACHE_TTL": "0",
        },
    )
    cluster.deploy(two=TWO_ASKS, one=ONE_ASK)
    return cluster


def task(run_id: str, tenant: str, workflow: str = "two-asks") -> TaskSubmitted:
    return TaskSubmitted(task_id=run_id, workflow=workflow, input={"tag": run_id}, tenant=tenant)


async def submit(cluster: Cluster, *tasks: TaskSubmitted) -> None:
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)


async def results(cluster: Cluster, run_ids: set[str], timeout: float = 120) -> list[RunResult]:
    """The results of these runs, once each has one (read from the results topic)."""
    from tests.integration.workers import all_results

    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in await all_results(cluster) if r.run_id in run_ids]
        if {r.run_id for r in found} == run_ids:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no results for {run_ids - {r.run_id for r in found}}")
        await asyncio.sleep(0.3)


def paused_by(events: list[RunEvent]) -> list[Any]:
    """The pauses a run's ``run_paused`` events name."""
    reasons = []
    for event in events:
        if event.type == "run_paused":
            assert isinstance(event.detail, dict)
            waits = event.detail["waiting_for"]
            assert isinstance(waits, list)
            reasons += [w for w in waits if isinstance(w, dict)]
    return reasons


def operator() -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


async def wait_for_view(api: str, until: Any, timeout: float = 30) -> dict[str, Any]:
    """``GET /v1/control`` until ``until`` holds of what the worker has in force."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=api, headers=operator(), timeout=5) as client:
        while True:
            view = (await client.get("/v1/control")).json()
            if until(view):
                return dict(view)
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker's control view never held: {view}")
            await asyncio.sleep(0.1)


async def test_a_paused_tenant_waits_across_a_restart_and_resume_releases_every_run_once(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    paused = cluster.baton("control", "pause", "--tenant", "acme", "--reason", "maintenance")
    assert paused.returncode == 0, paused.stderr
    assert "pause tenant/acme sent" in paused.stdout
    await submit(cluster, task("acme-1", "acme"), task("acme-2", "acme"), task("gx-1", "globex"))
    worker = workers.start("w1")

    # Another tenant's run goes on; acme's start, say why they wait, and call nothing.
    (done,) = await results(cluster, {"gx-1"})
    assert done.status == RunStatus.completed, done.reason
    for run_id in ("acme-1", "acme-2"):
        events = await poll_run_events(cluster, run_id, has("run_paused"))
        assert [e.type for e in events] == ["run_started", "run_paused"]
        (hold,) = paused_by(events)
        assert hold["reason"] == "tenant_paused" and hold["tenant"] == "acme"
        assert hold["why"] == "maintenance"
    shown = cluster.baton("control", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["paused"]["tenants"]["acme"]["reason"] == "maintenance"

    # A restart keeps the pause: a run submitted meanwhile waits too.
    worker.stop()
    await submit(cluster, task("acme-3", "acme"))
    worker = workers.start("w1")
    events = await poll_run_events(cluster, "acme-3", has("run_paused"))
    assert paused_by(events)[0]["reason"] == "tenant_paused"
    assert sorted(call_of(r) for r in provider.requests) == ["first [gx-1]", "second [gx-1]"]

    resumed = cluster.baton("control", "resume", "--tenant", "acme")
    assert resumed.returncode == 0, resumed.stderr
    finished = await results(cluster, {"acme-1", "acme-2", "acme-3"})
    assert {r.status for r in finished} == {RunStatus.completed}
    counts = await results_by_run(cluster)
    assert {r: counts[r] for r in ("acme-1", "acme-2", "acme-3", "gx-1")} == dict.fromkeys(
        ("acme-1", "acme-2", "acme-3", "gx-1"), 1
    )
    calls = Counter(call_of(r) for r in provider.requests)
    assert calls == Counter(
        f"{prompt} [{run}]"
        for run in ("acme-1", "acme-2", "acme-3", "gx-1")
        for prompt in ("first", "second")
    )
    for run_id in ("acme-1", "acme-2", "acme-3"):
        events = await poll_run_events(cluster, run_id, has("run_completed"))
        order = [e.type for e in events]
        assert (
            order.index("run_paused") < order.index("run_resumed") < order.index("step_dispatched")
        )
        (back,) = [e for e in events if e.type == "run_resumed"]
        assert isinstance(back.detail, dict) and back.detail["held_by"] == "tenant/acme"


async def test_a_workflow_pause_lets_the_step_in_flight_finish_and_holds_only_that_workflow(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    worker = workers.start("w1")
    await submit(cluster, task("slow-1", "acme"))
    await provider.wait_for_requests_async(1, timeout=60)  # its first call is under way

    async with httpx.AsyncClient(base_url=worker.api, headers=operator(), timeout=10) as api:
        paused = await api.post(
            "/v1/control/workflows/two-asks/pause", json={"reason": "bad prompt"}
        )
        assert paused.status_code == 202, paused.text
        await wait_for_view(worker.api, lambda v: "two-asks" in v["paused"]["workflows"])
        await submit(cluster, task("fresh-1", "acme"), task("other-1", "acme", "one-ask"))

        # The call in flight finished; its run then waited, as did a new one of the workflow.
        events = await poll_run_events(cluster, "slow-1", has("step_succeeded", "run_paused"))
        assert [e.type for e in events][-2:] == ["step_succeeded", "run_paused"]
        assert paused_by(events)[0]["reason"] == "workflow_paused"
        events = await poll_run_events(cluster, "fresh-1", has("run_paused"))
        assert paused_by(events)[0] == {
            "reason": "workflow_paused",
            "workflow": "two-asks",
            "command_id": paused.json()["command_id"],
            "issued_by": "user:oscar",
            "why": "bad prompt",
            "since": paused_by(events)[0]["since"],
        }
        (other,) = await results(cluster, {"other-1"})
        assert other.status == RunStatus.completed, other.reason
        assert sorted(call_of(r) for r in provider.requests) == ["first [slow-1]", "only [other-1]"]

        again = await api.post("/v1/control/workflows/two-asks/pause")
        assert again.status_code == 409
        resumed = await api.post("/v1/control/workflows/two-asks/resume")
        assert resumed.status_code == 202, resumed.text

    finished = await results(cluster, {"slow-1", "fresh-1"})
    assert {r.status for r in finished} == {RunStatus.completed}
    assert Counter(call_of(r) for r in provider.requests) == Counter(
        [
            "first [slow-1]",
            "second [slow-1]",
            "only [other-1]",
            "first [fresh-1]",
            "second [fresh-1]",
        ]
    )


async def test_a_cap_changed_at_run_time_judges_the_next_reservation(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    # One call is estimated at ~$0.0045 (40 completion tokens at $100/Mtok): over $0.001.
    rules = cluster.home / "policies.yaml"
    rules.write_text("tenants:\n  acme: {max_cost_usd: 0.001, window: 1h}\n")
    workers.start("w1", BATON_POLICIES_FILE=str(rules))
    await submit(cluster, task("capped-1", "acme", "one-ask"))
    (refused,) = await results(cluster, {"capped-1"})
    assert refused.status == RunStatus.budget_exceeded
    assert refused.reason is not None and "ceiling $0.001 per 1h reached" in refused.reason

    raised = cluster.baton(
        "control", "caps", "--tenant", "acme", "--max-cost-usd", "1", "--reason", "launch"
    )
    assert raised.returncode == 0, raised.stderr
    audit = await poll_run_events(cluster, "caps/acme", has("tenant_caps_changed"))
    (changed,) = audit
    assert changed.tenant == "acme"
    assert isinstance(changed.detail, dict)
    assert changed.detail["max_cost_usd"] == "1"
    assert changed.detail["policies_max_cost_usd"] == "0.001"
    assert changed.detail["why"] == "launch"

    await submit(cluster, task("capped-2", "acme", "one-ask"))
    (admitted,) = await results(cluster, {"capped-2"})
    assert admitted.status == RunStatus.completed, admitted.reason

    lowered = cluster.baton("control", "caps", "--tenant", "acme", "--max-cost-usd", "0.002")
    assert lowered.returncode == 0, lowered.stderr
    await poll_run_events(
        cluster,
        "caps/acme",
        lambda found: len([e for e in found if e.type == "tenant_caps_changed"]) == 2,
    )
    await submit(cluster, task("capped-3", "acme", "one-ask"))
    (stopped,) = await results(cluster, {"capped-3"})
    assert stopped.status == RunStatus.budget_exceeded
    assert stopped.reason is not None and "set at run time by caps/" in stopped.reason
    assert "ceiling $0.002" in stopped.reason
    assert [call_of(r) for r in provider.requests] == ["only [capped-2]"]
    assert Decimal(admitted.usage.cost_usd) > 0
    assert [e.type for e in await run_events(cluster, "capped-3")][-1] == "run_budget_exceeded"
