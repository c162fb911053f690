"""The fault suite: a mixed workload on three brokers and three workers while faults hit them.

Runs of four workflows (an llm step and a tool call; an llm step that fails once and waits in
a retry tier; an approval a scripted reviewer decides through the API; a budget stop) are
submitted at a steady rate, and faults are injected on a schedule while they run: workers
killed (SIGKILL), stopped (SIGTERM), frozen past their session timeout and woken as zombies,
restarted one by one, joined or left by a worker while approvals are parked and retries wait;
a broker killed and started again. Every fault starts with runs in flight, and the next waits
until the fleet is whole again.

Then: every run has a result, exactly one committed result under exactly-once (identical ones
under at-least-once), each the fault-free result, and no tool call had more than one effect.
The figures are printed (a table) and written as JSON (``BATON_CHAOS_REPORT``, a directory).

Bounded by default (1,000 runs in about 3 minutes, each kind of fault once or more; about 5
minutes in all): ``make test`` and CI run it under exactly-once, ``make chaos`` under both
guarantees (``-m "not chaos"`` leaves it out of a quick local run). A soak:
``make chaos BATON_CHAOS_RUNS=5000 BATON_CHAOS_MINUTES=16`` (``BATON_CHAOS_FAULTS`` faults;
``BATON_CHAOS_GUARANTEES=exactly_once,at_least_once``, the default of ``make chaos``).
Every wait has a deadline: a hang fails, naming what it waited for.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streams._client import BatonClient
from streams.localkafka import LocalKafkaCluster
from tests.integration.chaos._faults import FAULT_KINDS, Fault, Fleet, inject, schedule, within
from tests.integration.chaos._live import ResultLog, Reviewer
from tests.integration.chaos._report import Submitted, figures, table
from tests.integration.chaos._workload import (
    OPS_TOKEN,
    WORKFLOWS,
    Outcome,
    Servers,
    access_env,
    expected,
    kind_of,
    task,
)
from tests.integration.workers import Cluster, all_results, run_events, wait_until_drained
from topics import RunStatus

RUNS = int(os.environ.get("BATON_CHAOS_RUNS", "1000"))
MINUTES = float(os.environ.get("BATON_CHAOS_MINUTES", "3"))
FAULTS = int(os.environ.get("BATON_CHAOS_FAULTS", "0")) or max(
    len(FAULT_KINDS), round(MINUTES * 60 / 40)
)
GUARANTEES = os.environ.get("BATON_CHAOS_GUARANTEES", "exactly_once").split(",")
WORKERS = 3
PARTITIONS = 6
#: Runs submitted and finished before the first fault: the fault-free results.
CALM = 40

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.timeout(int(MINUTES * 60 * 3 + 900)),
]


@pytest.fixture
def servers() -> Iterator[Servers]:
    """Model and tool servers of one suite run: the tool's books count this run alone.

    Shared by the module, a second guarantee's run counted its logical calls (``act-<n>``,
    the same names under a new prefix, hence new keys) on top of the first run's: every call
    showed two effects under two keys, and at-least-once failed for it.
    """
    started = Servers.start()
    yield started
    started.stop()


@pytest.fixture
def cluster(
    kafka_cluster3: LocalKafkaCluster, servers: Servers, tmp_path: Path, guarantee: str
) -> Cluster:
    env = {
        **servers.write_config(tmp_path / "config"),
        **access_env(tmp_path / "config"),
        "BATON_PROCESSING_GUARANTEE": guarantee,
        # A frozen worker is declared dead after 6 s (the least allowed), not 15.
        "BATON_SESSION_TIMEOUT": "6",
        "BATON_STOP_GRACE": "5",
    }
    cluster = Cluster(
        kafka_cluster3.bootstrap,
        f"t{uuid.uuid4().hex[:8]}",
        tmp_path / "home",
        partitions=PARTITIONS,
        extra_env=env,
    )
    cluster.deploy(**WORKFLOWS)
    return cluster


@pytest.mark.parametrize("guarantee", GUARANTEES)
async def test_faults_mid_batch_lose_nothing_double_nothing_change_nothing(
    cluster: Cluster,
    kafka_cluster3: LocalKafkaCluster,
    servers: Servers,
    guarantee: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert not servers.ledger.requests_per_key, "the tool server has counted another run's calls"
    fleet = Fleet(cluster, kafka_cluster3)
    results = ResultLog(cluster.bootstrap, cluster.catalog)
    reviewer = Reviewer(fleet.apis)
    submitted: list[Submitted] = []
    planned = schedule(FAULTS, WORKERS)
    try:
        # One by one: three workers joining at once on a fresh cluster once left one of them
        # restoring forever (its transactional producers never started; see operations.md).
        for i in range(1, WORKERS + 1):
            await within(fleet.start(f"w{i}"), 150, f"worker w{i} to start")
            await fleet.until_whole()
        await within(results.start(), 60, "the results reader to start")
        reviewer.start()
        async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
            # The fault-free batch: what each kind of run ends with when nothing goes wrong.
            await _submit(client, cluster.prefix, range(CALM), submitted)
            missing = await results.wait_for({s.run_id for s in submitted}, timeout=120)
            assert not missing, f"fault-free runs without a result: {sorted(missing)[:5]}"
            budget_reason = _budget_reason(results, submitted)
            for run in submitted:
                got = Outcome.of(results.first[run.run_id].result)
                assert got == expected(run.n, budget_reason), run.run_id
            began = time.time()
            injected = await _run_with_faults(
                client, cluster.prefix, fleet, reviewer, planned, submitted
            )
        missing = await results.wait_for({s.run_id for s in submitted}, timeout=300)
        ended = max(s.at for s in results.seen)
        lost = ""
        if missing:
            lost = await within(_describe(cluster, fleet, sorted(missing)[:3]), 60, "run details")
        await wait_until_drained(cluster, timeout=120)
        committed = await within(all_results(cluster), 120, "every committed result to be read")
    finally:
        await within(reviewer.stop(), 30, "the reviewer to stop")
        await within(results.stop(), 30, "the results reader to stop")
        await within(asyncio.to_thread(fleet.stop_all), 300, "every worker to stop")

    report = figures(
        guarantee=guarantee,
        partitions=PARTITIONS,
        submitted=submitted,
        seen=results.seen,
        committed=committed,
        expected={s.run_id: expected(s.n, budget_reason) for s in submitted},
        faults=injected,
        ledger=servers.ledger,
        started_at=began,
        ended_at=ended,
    )
    out = Path(os.environ.get("BATON_CHAOS_REPORT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"chaos-{guarantee}.json").write_text(report.as_json())
    with capsys.disabled():
        print(f"\n\nchaos, {guarantee} (JSON: {out / f'chaos-{guarantee}.json'}):\n")
        print(table(report) + "\n")

    v = report.values
    assert not missing and v["runs_lost"] == 0, f"runs without a result: {v['lost']}\n{lost}"
    assert v["runs_submitted"] >= RUNS
    assert v["runs_differing_from_fault_free"] == 0, f"results that differ: {v['differing']}"
    if guarantee == "exactly_once":
        assert v["duplicate_committed_results"] == 0, "runs with more than one committed result"
    assert v["tool_effects_per_call_max"] <= 1 and v["tool_effects_per_key_max"] <= 1
    assert v["tool_requests_without_key"] == 0
    assert set(v["faults_by_kind"]) == set(FAULT_KINDS), v["faults_by_kind"]
    assert all(f["in_flight_at_start"] > 0 for f in v["faults"]), "a fault hit an idle fleet"


async def _run_with_faults(
    client: BatonClient,
    prefix: str,
    fleet: Fleet,
    reviewer: Reviewer,
    planned: list[Fault],
    submitted: list[Submitted],
) -> list[Fault]:
    """Submit the rest of the runs at a steady rate; inject each fault when its share is in.

    Fault ``i`` starts once ``(i + 0.5) / len(planned)`` of the runs are submitted, and
    submission holds before the next fault's share until it has ended, so every fault
    starts with runs in flight whatever it costs.
    """
    remaining = list(range(CALM, RUNS))
    share = [CALM + int((i + 0.5) * len(remaining) / len(planned)) for i in range(len(planned))]
    rate = len(remaining) / (MINUTES * 60)
    # After a fault, submissions run on for 3 s before the next may start: runs in flight.
    lead = max(5, round(3 * rate))
    injected: list[Fault] = []
    running: asyncio.Task[Fault] | None = None
    credit, since_fault, tick = 0.0, lead, time.monotonic()
    while remaining or running is not None or len(injected) < len(planned):
        if running is not None and running.done():
            injected.append(running.result())
            running, since_fault = None, 0
        nxt = len(injected) + (running is not None)
        due = nxt < len(planned) and len(submitted) >= share[nxt]
        if running is None and due and since_fault >= lead:
            running = asyncio.create_task(inject(planned[nxt], fleet, reviewer))
        now = time.monotonic()
        if remaining and not (running is not None and due):
            credit += rate * (now - tick)
            if credit >= 1:
                batch, remaining = remaining[: int(credit)], remaining[int(credit) :]
                credit -= len(batch)
                since_fault += len(batch)
                await _submit(client, prefix, batch, submitted)
        tick = now
        await asyncio.sleep(0.25)
    return injected


async def _describe(cluster: Cluster, fleet: Fleet, run_ids: list[str]) -> str:
    """What the workers and the run events say of some runs, for a useful failure message."""
    lines = []
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {OPS_TOKEN}"}) as http:
        for run_id in run_ids:
            for api in fleet.apis()[:1]:
                response = await http.get(f"{api}/v1/runs/{run_id}")
                lines.append(f"{run_id}: {response.status_code} {response.text[:2000]}")
            for event in await run_events(cluster, run_id):
                lines.append(
                    f"  {event.seq} {event.at} {event.type} {event.step} {event.attempt} "
                    f"{str(event.detail)[:200]}"
                )
    return "\n".join(lines)


async def _submit(
    client: BatonClient, prefix: str, ns: range | list[int], submitted: list[Submitted]
) -> None:
    tasks = [task(prefix, n) for n in ns]
    await within(client.send(tasks), 60, f"{len(tasks)} tasks to be sent")
    now = time.time()
    submitted.extend(Submitted(t.task_id, n, now) for t, n in zip(tasks, ns, strict=True))


def _budget_reason(results: ResultLog, submitted: list[Submitted]) -> str:
    """The reason the fault-free budget runs stopped with (one and the same for all)."""
    reasons = {
        results.first[s.run_id].result.reason
        for s in submitted
        if kind_of(s.n) == "budget"
        and results.first[s.run_id].result.status == RunStatus.budget_exceeded
    }
    assert len(reasons) == 1, f"budget runs stopped for {reasons or 'no reason'}"
    reason = reasons.pop()
    assert reason is not None
    return reason
