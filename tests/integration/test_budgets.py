"""Budgets on the real broker: run caps, downgrade, approval on breach, tenant ceilings, cascade.

The model provider is a real HTTP server on loopback speaking the OpenAI wire format; it
counts every call and reports usage, which the processors turn into cost.
"""

from __future__ import annotations

import asyncio
import re
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streams._client import BatonClient
from tests.fakes.openai_server import ChatAnswer, Delay, FakeOpenAIServer, RecordedRequest
from tests.integration.approvals import publish, signed
from tests.integration.workers import Cluster, Workers, has, poll_run_events, run_events
from topics import (
    Budget,
    RunEvent,
    RunResult,
    RunStatus,
    TaskSubmitted,
    partition_for,
)

# Per million tokens: a 55-token call costs $0.0055 on strong and $0.00055 on fast.
PRICES = {"strong": 100, "fast": 10}
SIGNING_KEY = "budgets-integration-key-0123456789"

THREE_CALLS = """
workflow: three-calls
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  one: {kind: llm, model: strong, prompt: "One [{{ input.tag }}]", max_tokens: 40}
  two: {kind: llm, after: [one], model: strong, prompt: "Two {{ steps.one.output }}",
        max_tokens: 40}
  three: {kind: llm, after: [two], model: strong, prompt: "Three {{ steps.two.output }}",
          max_tokens: 40}
output: "{{ steps.three.output }}"
"""

ONE_CALL = """
workflow: one-call
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  answer: {kind: llm, model: fast, prompt: "Answer [{{ input.tag }}]", max_tokens: 40}
"""

CASCADE = """
workflow: cascade
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  extract:
    kind: llm
    model: fast
    cascade: [strong]
    prompt: "Extract [{{ input.tag }}] as JSON"
    max_tokens: 40
    output_schema: {type: object, required: [total], properties: {total: {type: number}}}
"""


def tag_of(request: RecordedRequest) -> str:
    found = re.search(r"\[([\w-]+)\]", request.body["messages"][-1]["content"])
    return found.group(1) if found else "?"


def answer(request: RecordedRequest) -> Any:
    """Echo the run's tag; 25 prompt + 30 completion tokens (more prompt than estimated)."""
    tag = tag_of(request)
    if tag.startswith("slow"):
        return Delay(30)
    if tag.startswith("cascade"):
        weak = request.body["model"] == "test-fast"
        return ChatAnswer("I think about 12" if weak else '{"total": 12}', 25, 30)
    return ChatAnswer(f"[{tag}] fine", prompt_tokens=25, completion_tokens=30)


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
        "routes:\n"
        + "".join(
            f"  {route}:\n    provider: openai\n    model: test-{route}\n"
            f"    base_url: {provider.base_url}\n"
            f"    input_usd_per_mtok: {price}\n    output_usd_per_mtok: {price}\n"
            for route, price in PRICES.items()
        )
    )
    cluster = Cluster(kafka_bootstrap, topic_prefix, tmp_path / "home", models_file=models)
    cluster.deploy(three=THREE_CALLS, one=ONE_CALL, cascade=CASCADE)
    return cluster


def policies(cluster: Cluster, text: str) -> str:
    path = cluster.home / "policies.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


async def submit_and_wait(
    cluster: Cluster, tasks: list[TaskSubmitted], timeout: float = 90
) -> dict[str, RunResult]:
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        results = await client.wait([t.task_id for t in tasks], timeout_s=timeout)
    assert set(results) == {t.task_id for t in tasks}, "every run ends with a result"
    return results


def calls(provider: FakeOpenAIServer, tag: str) -> list[RecordedRequest]:
    return [r for r in provider.requests if tag_of(r) == tag]


def estimates(events: list[RunEvent]) -> list[dict[str, Any]]:
    return [
        e.detail["estimate"]
        for e in events
        if e.type == "step_dispatched" and isinstance(e.detail, dict) and "estimate" in e.detail
    ]


async def test_a_run_stops_at_each_cap_and_never_overshoots_by_more_than_one_estimate(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    workers.start("w1")
    caps = {
        "steps": Budget(max_steps=2),
        "tokens": Budget(max_tokens=120),
        "cost": Budget(max_cost_usd=Decimal("0.012")),
        "slow-wall": Budget(max_seconds=2),
    }
    tasks = [
        TaskSubmitted(task_id=f"cap-{tag}", workflow="three-calls", input={"tag": tag}, budget=b)
        for tag, b in caps.items()
    ]
    started = time.monotonic()
    results = await submit_and_wait(cluster, tasks)
    for tag, budget in caps.items():
        result = results[f"cap-{tag}"]
        assert result.status == RunStatus.budget_exceeded, (tag, result.reason)
        events = await poll_run_events(cluster, f"cap-{tag}", has("run_budget_exceeded"))
        assert [e for e in events if e.type == "budget_exceeded"] or tag == "slow-wall"
        made = calls(provider, tag)
        assert len(made) < 3, f"{tag}: the call past the cap was never made"
        biggest = max((int(e["input_tokens"]) + int(e["output_tokens"])) for e in estimates(events))
        biggest_usd = max(Decimal(e["cost_usd"]) for e in estimates(events))
        spent_tokens = result.usage.input_tokens + result.usage.output_tokens
        if budget.max_tokens is not None:
            assert spent_tokens <= budget.max_tokens + biggest
        if budget.max_cost_usd is not None:
            assert result.usage.cost_usd <= budget.max_cost_usd + biggest_usd
    assert results["cap-steps"].reason == "max_steps: 2 step attempts used; three not started"
    assert results["cap-tokens"].reason.startswith("max_tokens: ")  # type: ignore[union-attr]
    assert results["cap-cost"].reason.startswith("max_cost_usd: ")  # type: ignore[union-attr]
    assert results["cap-slow-wall"].reason == "deadline: the run took over 2s"
    assert len(calls(provider, "steps")) == 2
    assert len(calls(provider, "slow-wall")) == 1
    assert time.monotonic() - started < 30  # the slow call (30 s) was not waited out


async def test_downgrade_on_breach_runs_the_steps_on_the_cheaper_route(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    rules = "budgets:\n  on_breach: downgrade\n  downgrade: {strong: fast}\n"
    workers.start("w1", BATON_POLICIES_FILE=policies(cluster, rules))
    budget = Budget(max_cost_usd=Decimal("0.004"))  # one strong call (~$0.005) does not fit
    results = await submit_and_wait(
        cluster,
        [
            TaskSubmitted(
                task_id="cheap", workflow="three-calls", input={"tag": "dg"}, budget=budget
            )
        ],
    )
    result = results["cheap"]
    assert result.status == RunStatus.completed, result.reason
    assert [r.body["model"] for r in calls(provider, "dg")] == ["test-fast"] * 3
    events = await poll_run_events(cluster, "cheap", has("run_completed"))
    moved = [e.detail for e in events if e.type == "budget_downgraded"]
    assert [(d["from"], d["to"]) for d in moved] == [("strong", "fast")] * 3  # type: ignore[index,call-overload]
    assert result.usage.cost_usd <= budget.max_cost_usd  # type: ignore[operator]


async def test_approval_on_breach_waits_for_finance_then_runs(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    rules = policies(cluster, "budgets:\n  on_breach: approve\n  approvers: [group:finance]\n")
    access = cluster.home / "access.yaml"
    access.write_text(
        "reviewers:\n  fin: {token_env: BATON_TOKEN_FIN, groups: [finance]}\n"
        "signing_keys:\n  k1: {env: BATON_APPROVAL_KEY}\nsign_with: k1\n"
    )
    workers.start(
        "w1",
        BATON_POLICIES_FILE=rules,
        BATON_ACCESS_FILE=str(access),
        BATON_TOKEN_FIN="fin-token",
        BATON_APPROVAL_KEY=SIGNING_KEY,
    )
    # The call's estimate (40 output tokens alone are $0.0004 on fast) is over this cap.
    budget = Budget(max_cost_usd=Decimal("0.0002"))
    task = TaskSubmitted(task_id="pricey", workflow="one-call", input={"tag": "ap"}, budget=budget)
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([task])
        asked = await _until(lambda: _event(cluster, "pricey", "approval_requested"))
        assert not calls(provider, "ap"), "nothing is spent before the approval"
        assert isinstance(asked.detail, dict)
        assert str(asked.detail["reason"]).startswith("over budget: max_cost_usd")
        await publish(
            cluster,
            signed(
                str(asked.detail["approval_id"]),  # type: ignore[index]
                "user:fin",
                key=SIGNING_KEY,
                digest=str(asked.detail["request_digest"]),  # type: ignore[index]
            ),
        )
        result = (await client.wait(["pricey"], timeout_s=60))["pricey"]
    assert result.status == RunStatus.completed, result.reason
    assert len(calls(provider, "ap")) == 1


async def test_two_workers_share_a_tenant_ceiling_within_the_documented_bound(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    # Each call is estimated at ~$0.0006 and costs $0.00055: about 8 fit under $0.005.
    ceiling = Decimal("0.005")
    rules = f"tenants:\n  acme: {{max_cost_usd: {ceiling}, window: 1h}}\n"
    path = policies(cluster, rules)
    first = workers.start("w1", BATON_POLICIES_FILE=path)
    second = workers.start("w2", BATON_POLICIES_FILE=path)
    runs = [f"acme-{i}" for i in range(24)]
    catalog = cluster.catalog
    assert len({partition_for(r, catalog.partitions) for r in runs}) == catalog.partitions
    tasks = [
        TaskSubmitted(task_id=run, workflow="one-call", input={"tag": run}, tenant="acme")
        for run in runs
    ] + [
        TaskSubmitted(
            task_id=f"globex-{i}", workflow="one-call", input={"tag": f"g{i}"}, tenant="globex"
        )
        for i in range(4)
    ]
    await _until(lambda: _split(first.log_path, second.log_path, catalog.partitions))
    results = await submit_and_wait(cluster, tasks)
    acme = [results[r] for r in runs]
    completed = [r for r in acme if r.status == RunStatus.completed]
    stopped = [r for r in acme if r.status == RunStatus.budget_exceeded]
    assert len(completed) + len(stopped) == len(runs)
    assert completed and stopped, "some runs fit under the ceiling, the rest were stopped"
    assert all(
        r.reason and r.reason.startswith("tenant acme: ceiling $0.005 per 1h") for r in stopped
    )
    assert all(results[f"globex-{i}"].status == RunStatus.completed for i in range(4))
    made = sum(len(calls(provider, r)) for r in runs)
    assert made == len(completed), "a refused run never called the model"
    # The documented bound: spend <= ceiling + what admitted calls cost beyond their estimates.
    spent = sum((r.usage.cost_usd for r in acme), start=Decimal(0))
    excess = Decimal(0)
    for result in completed:
        events = await poll_run_events(cluster, result.run_id, has("run_completed"))
        (guess,) = estimates(events)
        excess += max(Decimal(0), result.usage.cost_usd - Decimal(guess["cost_usd"]))
    assert spent <= ceiling + excess
    # And the ceiling was used, not refused wholesale: one more call would not have fitted.
    assert spent + Decimal("0.0006") > ceiling - excess
    # Both coordinators admitted and refused runs of the tenant: they shared the ceiling.
    ours = [_partitions(first.log_path), _partitions(second.log_path)]
    assert not ours[0] & ours[1]
    for owned in ours:
        mine = [r for r in acme if partition_for(r.run_id, catalog.partitions) in owned]
        assert mine, "each worker coordinated some of the tenant's runs"


async def test_the_cascade_moves_to_the_strong_route_when_the_answer_fails_its_schema(
    cluster: Cluster, workers: Workers, provider: FakeOpenAIServer
) -> None:
    workers.start("w1")
    results = await submit_and_wait(
        cluster, [TaskSubmitted(task_id="casc", workflow="cascade", input={"tag": "cascade-1"})]
    )
    result = results["casc"]
    assert result.status == RunStatus.completed, result.reason
    assert result.output == {"total": 12}
    assert [r.body["model"] for r in calls(provider, "cascade-1")] == ["test-fast", "test-strong"]
    events = await poll_run_events(cluster, "casc", has("run_completed"))
    (moved,) = [e for e in events if e.type == "step_cascaded"]
    assert isinstance(moved.detail, dict) and moved.detail["to"] == "strong"
    # Both calls are paid for: the failed weak answer was billed too.
    assert result.usage.input_tokens == 50 and result.usage.output_tokens == 60


# -- helpers ---------------------------------------------------------------------------------


def _split(one: Path, two: Path, partitions: int) -> bool:
    """Whether the two workers have settled on sharing the partitions."""
    a, b = _partitions(one), _partitions(two)
    return bool(a and b and not a & b and len(a | b) == partitions)


def _partitions(log: Path) -> set[int]:
    """The coordinator partitions a worker last said it owns."""
    found = re.findall(r"coordinator partitions: \[([\d, ]*)\]", log.read_text(errors="replace"))
    return {int(p) for p in found[-1].split(",") if p.strip()} if found else set()


async def _event(cluster: Cluster, run_id: str, type_: str) -> RunEvent | None:
    return next((e for e in await run_events(cluster, run_id) if e.type == type_), None)


async def _until(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"not true within {timeout}s")
