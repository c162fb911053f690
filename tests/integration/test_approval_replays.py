"""Approvals that cannot be forged, replayed or stretched, and an API scoped to tenants.

On a real broker with a real worker: a decision the API signed is taken off the topic and
published again, re-cut or replayed after its request was re-opened (a validation re-run, a
re-drive); a decision older than its request, and one that reaches the coordinator after the
deadline before the timer fired. Each is refused and recorded as ``approval_refused``; the
requests they aimed at stay as they were. Then the HTTP API: 401 without a token, 403 across
tenants, on every endpoint.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from streams._client import BatonClient
from tests.integration.approvals import (
    Reviewers,
    approvals_cluster,
    events_of,
    new_run,
    publish,
    result_of,
    serving_worker,
    signed,
    submit,
    until,
)
from tests.integration.workers import Cluster, WorkerProcess, decoded
from topics import (
    ApprovalDecision,
    ControlAction,
    ControlCommand,
    DeadLetter,
    RunStatus,
)


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    return approvals_cluster(
        kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("replays")
    )


@pytest.fixture(scope="module")
def worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    with serving_worker(cluster) as started:
        yield started


@pytest.fixture
def reviewers(worker: WorkerProcess) -> Reviewers:
    return Reviewers(worker.api)


async def signed_on_topic(cluster: Cluster, approval_id: str, approver: str) -> ApprovalDecision:
    """The decision the API signed and published for a reviewer, as it is on the topic."""

    async def found() -> ApprovalDecision | None:
        topic = cluster.catalog.approvals_decided.name
        for decision in await decoded(cluster, topic, ApprovalDecision):
            assert isinstance(decision, ApprovalDecision)
            if decision.approval_id == approval_id and decision.approver == approver:
                return decision
        return None

    decision: ApprovalDecision = await until(found, f"{approver}'s decision on the topic")
    return decision


async def refusals(cluster: Cluster, run_id: str, count: int) -> list[str]:
    """The reasons of a run's first ``count`` refused decisions, once there are that many."""

    async def enough() -> list[str]:
        found = await events_of(cluster, run_id, "approval_refused")
        return [str(e.detail["reason"]) for e in found] if len(found) >= count else []  # type: ignore[index]

    reasons: list[str] = await until(enough, f"{count} refusals on {run_id}")
    return reasons


async def votes(reviewers: Reviewers, user: str, approval_id: str) -> list[str]:
    item = (await reviewers.call("GET", f"/v1/approvals/{approval_id}", user)).json()
    return [str(v["approver"]) for v in item["votes"]]


async def test_a_re_cut_signature_is_refused(cluster: Cluster, reviewers: Reviewers) -> None:
    # A task id with a newline, the start of the attack, does not even become a run.
    raw = b'{"task_id": "victim/approve/1\\nvictim", "workflow": "refund", "input": {}}'
    await publish_raw(cluster, raw)

    async def lettered() -> list[Any]:
        letters = await decoded(cluster, cluster.catalog.dead_letter.name, DeadLetter)
        return [d for d in letters if getattr(d, "payload", None) == raw]

    (letter,) = await until(lettered, "the task with a newline in its id is dead-lettered")
    assert "task_id: 'victim/approve/1\\nvictim' is not a valid task id" in letter.error

    victim, own = new_run("victim"), new_run("own")
    await submit(cluster, victim, "refund-two", amount=5000)
    await submit(cluster, own, "refund-two", amount=5)
    target = (await reviewers.open_for("alice", victim))["approval_id"]
    mine = (await reviewers.open_for("bob", own))["approval_id"]
    assert (await reviewers.decide("bob", mine, "approve", "fine")).status_code == 202
    decision = await signed_on_topic(cluster, mine, "user:bob")
    # Bob's signature, with its fields pointed at the victim's request and voter.
    recut = decision.model_copy(
        update={
            "approval_id": target,
            "run_id": victim,
            "approver": "user:alice",
            "reason": f"{mine}\nfine",
        }
    )
    await publish(cluster, recut)
    assert await refusals(cluster, victim, 1) == ["bad signature: the signature does not match"]
    assert await votes(reviewers, "bob", target) == []


async def publish_raw(cluster: Cluster, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(cluster.catalog.tasks.name, value, key=b"junk", partition=0)
    finally:
        await producer.stop()


async def test_a_decision_replayed_after_a_validation_rerun_is_refused(
    cluster: Cluster, reviewers: Reviewers
) -> None:
    run_id = new_run("rechecked")
    await submit(cluster, run_id, "payout-checked", to="bob", amount=10)
    first = await reviewers.open_for("alice", run_id)
    assert first["approval_id"] == f"{run_id}/approve/1"
    assert (await reviewers.decide("alice", first["approval_id"], "approve", "recheck")).is_success
    # The check sends the approval back: a new request, with a new id.
    second = await reviewers.open_for("alice", run_id)
    assert second["approval_id"] == f"{run_id}/approve/2"
    assert second["request_digest"] != first["request_digest"]
    (rerun,) = await events_of(cluster, run_id, "validation_rerun")
    assert rerun.step == "approve"
    # Alice's decision on the first request, published again as it was signed.
    replayed = await signed_on_topic(cluster, first["approval_id"], "user:alice")
    await publish(cluster, replayed)
    assert await refusals(cluster, run_id, 1) == [
        "no such approval request is open (decided, escalated or unknown)"
    ]
    assert await votes(reviewers, "bob", second["approval_id"]) == []
    assert (await reviewers.decide("bob", second["approval_id"], "approve")).status_code == 202
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed and result.output == "paid bob 10"


async def test_a_decision_replayed_after_a_redrive_is_refused(
    cluster: Cluster, reviewers: Reviewers
) -> None:
    run_id = new_run("redriven")
    await submit(cluster, run_id, "refund-lapsing", amount=70)
    first = await reviewers.open_for("alice", run_id)
    assert (await reviewers.decide("alice", first["approval_id"], "approve")).status_code == 202
    failed = await result_of(cluster, run_id, timeout=30)  # one vote of two in 3 s: fails
    assert failed.status == RunStatus.failed and "ApprovalTimeout" in (failed.reason or "")
    redrive = ControlCommand(
        command_id=str(uuid.uuid4()),
        action=ControlAction.redrive,
        run_id=run_id,
        step="approve",
        reason="asked again",
        issued_at=datetime.now(UTC),
    )
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([redrive])
    again = await reviewers.open_for("bob", run_id)
    assert again["approval_id"] == f"{run_id}/approve/2"
    replayed = await signed_on_topic(cluster, first["approval_id"], "user:alice")
    await publish(cluster, replayed)
    assert await refusals(cluster, run_id, 1) == [
        "no such approval request is open (decided, escalated or unknown)"
    ]
    assert await votes(reviewers, "bob", again["approval_id"]) == []


async def test_a_decision_older_than_its_request_is_refused(
    cluster: Cluster, reviewers: Reviewers
) -> None:
    run_id = new_run("older")
    await submit(cluster, run_id, "refund", amount=40)
    item = await reviewers.open_for("alice", run_id)
    asked = datetime.fromisoformat(item["requested_at"])
    before = asked - timedelta(minutes=5)
    decision = signed(
        item["approval_id"], "user:alice", digest=item["request_digest"], decided_at=before
    )
    await publish(cluster, decision)
    assert await refusals(cluster, run_id, 1) == [
        f"decided at {before.isoformat()}, before the request was opened at {asked.isoformat()}"
    ]
    assert await votes(reviewers, "bob", item["approval_id"]) == []


async def test_a_decision_arriving_after_the_deadline_is_refused(
    cluster: Cluster, worker: WorkerProcess, reviewers: Reviewers
) -> None:
    run_id = new_run("late")
    await submit(cluster, run_id, "refund-brief", amount=60)
    item = await reviewers.open_for("alice", run_id)
    deadline = datetime.fromisoformat(item["deadline"])
    # Decided in time, but the coordinator only gets to it after the deadline: it stands still
    # (SIGSTOP) from before the decision is published until after the deadline, so the decision
    # is the first thing it reads when it goes on, before its timer can fire.
    worker.pause()
    try:
        decided = datetime.now(UTC)
        assert decided < deadline, "the request's 4 s ran out before the test could decide"
        on_time = signed(
            item["approval_id"], "user:alice", digest=item["request_digest"], decided_at=decided
        )
        await publish(cluster, on_time)
        while datetime.now(UTC) < deadline + timedelta(seconds=1):
            await asyncio.sleep(0.1)
    finally:
        worker.resume()
    reasons = await refusals(cluster, run_id, 1)
    # The coordinator fires due deadlines inside its own loop, so after the pause it may look
    # at the run's deadline before it has fetched the decision: then the request is closed
    # first. Either way the late decision is refused and recorded, and never counts (the
    # unit tests pin the deadline check itself, with the clock in hand).
    assert reasons in (
        [f"arrived after the request's deadline {deadline.isoformat()}"],
        ["the run has ended"],
    )
    # The deadline does what it does at the end of the path: the run is rejected.
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.rejected
    assert result.reason == "approve: no decision at level 0 in time"
    assert not await events_of(cluster, run_id, "approval_decided", once="run_rejected")


# -- the API, scoped to tenants ------------------------------------------------------------------


async def test_every_endpoint_needs_a_token_and_keeps_to_the_callers_tenants(
    cluster: Cluster, worker: WorkerProcess, reviewers: Reviewers
) -> None:
    task = {"workflow": "refund", "input": {"amount": 300}}
    # ana acts for acme only: her task, naming no tenant, is acme's.
    posted = await reviewers.call("POST", "/v1/tasks", "ana", json=task)
    assert posted.status_code == 202, posted.text
    acme_run = posted.json()["run_id"]
    bravo_run = new_run("bravo")
    await submit(cluster, bravo_run, "refund", tenant="bravo", amount=400)
    ana_item = await reviewers.open_for("ana", acme_run)
    assert ana_item["tenant"] == "acme"
    ben_item = await reviewers.open_for("ben", bravo_run)
    approval = ana_item["approval_id"]
    paths = [
        ("POST", "/v1/tasks", task),
        ("GET", f"/v1/runs/{acme_run}", None),
        ("GET", "/v1/approvals", None),
        ("GET", f"/v1/approvals/{approval}", None),
        ("POST", f"/v1/approvals/{approval}/decision", {"verdict": "approve"}),
    ]
    async with httpx.AsyncClient(base_url=worker.api, timeout=15) as http:
        for method, path, body in paths:
            for headers in ({}, {"Authorization": "Bearer nobody-holds-this"}):
                answer = await http.request(method, path, json=body, headers=headers)
                assert answer.status_code == 401, (method, path, answer.text)
                assert acme_run not in answer.text
    # ben (bravo, a lead like ana) sees nothing of acme's, and may not act for it.
    assert acme_run not in {i["run_id"] for i in (await reviewers.pending("ben"))["approvals"]}
    assert bravo_run not in {i["run_id"] for i in (await reviewers.pending("ana"))["approvals"]}
    forbidden = [
        await reviewers.call("GET", f"/v1/runs/{acme_run}", "ben"),
        await reviewers.call("GET", f"/v1/approvals/{approval}", "ben"),
        await reviewers.decide("ben", approval, "approve"),
        await reviewers.call("POST", "/v1/tasks", "ben", json={**task, "tenant": "acme"}),
        await reviewers.call("GET", f"/v1/runs/{bravo_run}", "ana"),
    ]
    assert [answer.status_code for answer in forbidden] == [403] * 5
    assert forbidden[1].json()["error"] == "user:ben may not act for tenant 'acme'"
    assert forbidden[3].json()["error"] == "user:ben may not act for tenant 'acme'"
    # Each decides their own tenant's request.
    assert (await reviewers.decide("ana", approval, "approve")).status_code == 202
    assert (await reviewers.decide("ben", ben_item["approval_id"], "approve")).status_code == 202
    assert (await result_of(cluster, acme_run)).status == RunStatus.completed
    assert (await result_of(cluster, bravo_run)).status == RunStatus.completed
    assert not await events_of(cluster, acme_run, "approval_refused", once="run_completed")
