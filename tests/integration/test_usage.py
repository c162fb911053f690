"""Usage reporting on the real broker: ``baton usage`` and ``baton runs show`` after real runs.

The model provider is a real HTTP server on loopback that records every call and reports
usage (tokens that depend on the prompt). The totals ``baton usage`` prints must be what the
provider reported, priced by the catalog, and what the response cache saved.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams._client import BatonClient
from streams._usage import read_usage
from tests.fakes.openai_server import ChatAnswer, FakeOpenAIServer, RecordedRequest
from tests.integration.workers import (
    Cluster,
    WorkerProcess,
    Workers,
    api_access,
    has,
    ops,
    poll_run_events,
)
from topics import RunResult, RunStatus, TaskSubmitted

#: US dollars per million (input, output) tokens, by the model the provider is asked for.
PRICES = {"test-fast": (Decimal(1), Decimal(4)), "test-strong": (Decimal(10), Decimal(30))}

ONE = """
workflow: one
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  answer: {kind: llm, model: fast, prompt: "One [{{ input.tag }}]", max_tokens: 40}
"""

TWO = """
workflow: two
version: 1
input: {type: object, required: [tag], properties: {tag: {type: string}}}
steps:
  draft: {kind: llm, model: strong, prompt: "Draft [{{ input.tag }}]", max_tokens: 40}
  check: {kind: llm, after: [draft], model: fast, prompt: "Check [{{ input.tag }}-check]",
          max_tokens: 40}
"""


def tag_of(request: RecordedRequest) -> str:
    found = re.search(r"\[([\w-]+)\]", request.body["messages"][-1]["content"])
    return found.group(1) if found else "?"


def tokens_for(tag: str) -> tuple[int, int]:
    """Prompt and completion tokens the provider reports for a tag."""
    weight = sum(tag.encode()) % 50 + 1
    return 10 * weight + 3, weight


def cost_of(request: RecordedRequest) -> Decimal:
    prompt, completion = tokens_for(tag_of(request))
    per_input, per_output = PRICES[request.body["model"]]
    return (prompt * per_input + completion * per_output) / Decimal(1_000_000)


@pytest.fixture
def provider(fake_openai: FakeOpenAIServer) -> FakeOpenAIServer:
    fake_openai.reply(lambda r: ChatAnswer(f"[{tag_of(r)}] ok", *tokens_for(tag_of(r))))
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
            f"    input_usd_per_mtok: {PRICES[f'test-{route}'][0]}\n"
            f"    output_usd_per_mtok: {PRICES[f'test-{route}'][1]}\n"
            for route in ("fast", "strong")
        )
    )
    cluster = Cluster(
        kafka_bootstrap,
        topic_prefix,
        tmp_path / "home",
        models_file=models,
        extra_env=api_access(tmp_path / "access"),
    )
    cluster.deploy(one=ONE, two=TWO)
    return cluster


@pytest.fixture
def worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    started = Workers(cluster)
    yield started.start("w1")
    started.stop_all()


async def run_all(cluster: Cluster, tasks: list[TaskSubmitted]) -> dict[str, RunResult]:
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send(tasks)
        results = await client.wait([t.task_id for t in tasks], timeout_s=90)
    assert set(results) == {t.task_id for t in tasks}
    assert {r.status for r in results.values()} == {RunStatus.completed}
    # Usage is summed from the run events: another topic than the results, read in its own time.
    for task in tasks:
        await poll_run_events(cluster, task.task_id, has("run_completed"))
    return results


def usage_json(cluster: Cluster, by: str) -> dict[str, Any]:
    shown = cluster.baton("usage", "--window", "1h", "--by", by, "--json")
    assert shown.returncode == 0, shown.stderr
    report: dict[str, Any] = json.loads(shown.stdout)
    return report


def groups(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {line["group"]: line for line in report["groups"]}


def expected(group: str, requests: list[RecordedRequest], **more: Any) -> dict[str, Any]:
    """A usage line for these provider calls, as ``baton usage --json`` prints it."""
    cost = sum((cost_of(r) for r in requests), Decimal(0))
    line = {
        "group": group,
        "steps": len(requests),
        "cached": 0,
        "input_tokens": sum(tokens_for(tag_of(r))[0] for r in requests),
        "output_tokens": sum(tokens_for(tag_of(r))[1] for r in requests),
        "cost_usd": f"{cost.normalize():f}",
        "saved_usd": "0",
    }
    line.update(more)
    return line


async def test_usage_totals_are_what_the_provider_reported_and_the_cache_saved(
    cluster: Cluster, worker: WorkerProcess, provider: FakeOpenAIServer
) -> None:
    def task(run_id: str, workflow: str, tag: str, tenant: str) -> TaskSubmitted:
        return TaskSubmitted(task_id=run_id, workflow=workflow, input={"tag": tag}, tenant=tenant)

    await run_all(cluster, [task("r1", "one", "alpha", "acme"), task("r2", "two", "beta", "acme")])
    between = datetime.now(UTC)
    results = await run_all(
        cluster, [task("r3", "one", "gamma", "globex"), task("r4", "one", "alpha", "globex")]
    )

    calls = {tag_of(r): r for r in provider.requests}
    assert sorted(calls) == ["alpha", "beta", "beta-check", "gamma"], "r4 was a cache hit"
    alpha, beta, check, gamma = (calls[t] for t in ("alpha", "beta", "beta-check", "gamma"))
    saved = f"{cost_of(alpha).normalize():f}"
    assert results["r4"].usage.saved_usd == cost_of(alpha)

    by_tenant = usage_json(cluster, "tenant")
    assert groups(by_tenant) == {
        "acme": expected("acme", [alpha, beta, check]),
        "globex": expected("globex", [gamma], steps=2, cached=1, saved_usd=saved),
    }
    everything = list(provider.requests)
    total = expected("total", everything, steps=5, cached=1, saved_usd=saved)
    assert by_tenant["total"] == total

    by_route = groups(usage_json(cluster, "route"))
    assert by_route["strong"] == expected("strong", [beta])
    fast = expected("fast", [alpha, check, gamma], steps=4, cached=1, saved_usd=saved)
    assert by_route["fast"] == fast

    by_workflow = groups(usage_json(cluster, "workflow"))
    assert by_workflow == {
        "one": expected("one", [alpha, gamma], steps=3, cached=1, saved_usd=saved),
        "two": expected("two", [beta, check]),
    }

    # The window starts where it says: the first two runs are before it.
    later = await read_usage(
        cluster.bootstrap, cluster.catalog, between, datetime.now(UTC), "tenant"
    )
    assert [line.group for line in later.lines] == ["globex"]
    assert later.total.cost_usd == cost_of(gamma) and later.total.saved_usd == cost_of(alpha)

    table = cluster.baton("usage", "--window", "1h", "--by", "route")
    assert table.returncode == 0, table.stderr
    assert "usage by route" in table.stdout and "total" in table.stdout


async def test_runs_show_gives_tokens_cost_route_and_the_cache_per_step(
    cluster: Cluster, worker: WorkerProcess, provider: FakeOpenAIServer
) -> None:
    await run_all(cluster, [TaskSubmitted(task_id="shown", workflow="two", input={"tag": "d"})])
    await run_all(cluster, [TaskSubmitted(task_id="again", workflow="two", input={"tag": "d"})])
    calls = {tag_of(r): r for r in provider.requests}
    assert sorted(calls) == ["d", "d-check"], "the second run was answered from the cache"
    (draft_in, draft_out), (check_in, check_out) = tokens_for("d"), tokens_for("d-check")
    draft, check = cost_of(calls["d"]), cost_of(calls["d-check"])

    shown = show(cluster, worker, "shown")
    assert "│ draft │ succeeded │ 1 │" in shown
    assert f"│ {draft_in} │ {draft_out} │ {usd(draft)} │ strong │ │" in shown
    assert "│ check │ succeeded │ 1 │" in shown
    assert f"│ {check_in} │ {check_out} │ {usd(check)} │ fast │ │" in shown
    tokens = f"{draft_in + check_in} │ {draft_out + check_out}"
    assert f"│ total │ │ 2 │ │ {tokens} │ {usd(draft + check)} │ │ │" in shown

    again = show(cluster, worker, "again")
    assert f"│ 0 │ 0 │ $0 │ strong │ hit, saved {usd(draft)} │" in again
    assert f"│ 0 │ 0 │ $0 │ fast │ hit, saved {usd(check)} │" in again
    assert f"│ total │ │ 2 │ │ 0 │ 0 │ $0 │ │ 2 hits, saved {usd(draft + check)} │" in again


def show(cluster: Cluster, worker: WorkerProcess, run_id: str) -> str:
    """``baton runs show`` with its lines' runs of spaces squeezed (a wide terminal)."""
    # The API shows a run as its coordinator saw it commit, maybe a moment after the result.
    deadline = time.monotonic() + 30
    view = f"{worker.api}/v1/runs/{run_id}"
    while httpx.get(view, headers=ops()).json().get("status") != "completed":
        assert time.monotonic() < deadline, f"{run_id} not completed at {worker.api}"
        time.sleep(0.2)
    shown = cluster.baton("runs", "show", run_id, BATON_API_URL=worker.api, COLUMNS="200")
    assert shown.returncode == 0, shown.stderr
    return "\n".join(" ".join(line.split()) for line in shown.stdout.splitlines())


def usd(amount: Decimal) -> str:
    return f"${amount.normalize():f}"
