"""Approvals end to end: real workers, a real broker, reviewers with tokens, signed decisions.

Runs park at approval steps (or at a policy's gate); reviewers decide through the HTTP API,
the CLI, or by publishing ApprovalDecisions to the topic themselves. Every refusal is checked
twice: the API's precise status, and the coordinator's audited ``approval_refused``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from streams.cli._approvals import approvals_group
from streams.cli._main import _Group
from tests.integration.approvals import (
    TOKENS,
    Reviewers,
    Webhook,
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
from tests.integration.workers import Cluster, WorkerProcess, Workers, decoded
from topics import ApprovalDecision, ApprovalVerdict, DeadLetter, RunEvent, RunStatus, partition_for


@dataclass
class Outcome:
    exit_code: int
    output: str  # stdout and stderr, whitespace collapsed (rich wraps long lines)


def cli(
    worker: WorkerProcess, *args: str, user: str | None = None, token: str | None = None
) -> Outcome:
    """``baton approvals ...`` in this process, against the worker's API."""
    root = _Group(name="baton", commands={"approvals": approvals_group})
    env = {
        "BATON_API_URL": worker.api,
        "BATON_TOKEN": token or (TOKENS[user] if user else ""),
        "COLUMNS": "250",
    }
    result = CliRunner().invoke(root, ["approvals", *args], env=env, catch_exceptions=False)
    return Outcome(result.exit_code, " ".join(result.output.split()))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def cluster(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, webhook: Webhook
) -> Cluster:
    return approvals_cluster(
        kafka_bootstrap,
        f"t{uuid.uuid4().hex[:8]}",
        tmp_path_factory.mktemp("approvals"),
        BATON_APPROVAL_WEBHOOK=webhook.url,
    )


@pytest.fixture(scope="module")
def worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    with serving_worker(cluster) as started:
        yield started


@pytest.fixture
def reviewers(worker: WorkerProcess) -> Reviewers:
    return Reviewers(worker.api)


# -- deciding ----------------------------------------------------------------------------------


async def test_an_approval_through_the_api_lets_the_run_complete(
    cluster: Cluster, reviewers: Reviewers, webhook: Webhook
) -> None:
    run_id = new_run("approve")
    await submit(cluster, run_id, "refund", amount=120)
    item = await reviewers.open_for("alice", run_id)
    assert item["approval_id"] == f"{run_id}/approve/1"
    assert (item["workflow"], item["step"], item["level"], item["quorum"]) == (
        "refund",
        "approve",
        0,
        1,
    )
    assert item["reason"] == "refund of 120 USD" and item["approvers"] == ["group:leads"]
    assert item["votes"] == [] and item["tenant"] == "default"
    assert item["context"] == {
        "input": {"amount": 120},
        "steps": {"draft": {"output": "refund 120", "status": "succeeded"}},
    }
    datetime.fromisoformat(item["deadline"])  # a timestamp, an hour away
    assert (await reviewers.pending("carol"))["approvals"] == []  # managers are not asked

    decided = await reviewers.decide("alice", item["approval_id"], "approve", "within policy")
    assert decided.status_code == 202
    assert decided.json() == {
        "approval_id": item["approval_id"],
        "verdict": "approve",
        "approver": "user:alice",
    }
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed and result.output == "sent: refund 120"
    (accepted,) = await events_of(cluster, run_id, "approval_decided", once="run_completed")
    assert accepted.detail == {
        "approval_id": item["approval_id"],
        "approver": "user:alice",
        "verdict": "approve",
        "reason": "within policy",
    }
    run = (await reviewers.call("GET", f"/v1/runs/{run_id}", "alice")).json()
    approve = next(s for s in run["steps"] if s["step"] == "approve")
    assert approve["output"] == {
        "verdict": "approve",
        "approvers": ["user:alice"],
        "reasons": ["within policy"],
    }
    gone = await reviewers.call("GET", f"/v1/approvals/{item['approval_id']}", "bob")
    assert gone.status_code == 404
    (posted,) = await webhook.posted(run_id, 1)
    assert posted["event"] == "approval_requested"
    assert {k: posted[k] for k in ("approval_id", "step", "level", "approvers", "reason")} == {
        "approval_id": item["approval_id"],
        "step": "approve",
        "level": 0,
        "approvers": ["group:leads"],
        "reason": "refund of 120 USD",
    }


async def test_a_rejection_ends_the_run_rejected(cluster: Cluster, reviewers: Reviewers) -> None:
    run_id = new_run("reject")
    await submit(cluster, run_id, "refund", amount=5000)
    item = await reviewers.open_for("bob", run_id)
    decided = await reviewers.decide("bob", item["approval_id"], "reject", "far too generous")
    assert decided.status_code == 202 and decided.json()["verdict"] == "reject"
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.rejected
    assert result.reason == "approve rejected by user:bob: far too generous"
    assert {s.step: s.outcome.value for s in result.steps}["send"] == "cancelled"


async def test_a_quorum_of_two_needs_two_distinct_approvers_through_the_cli(
    cluster: Cluster, worker: WorkerProcess, reviewers: Reviewers
) -> None:
    run_id = new_run("quorum")
    await submit(cluster, run_id, "refund-two", amount=800)
    item = await reviewers.open_for("alice", run_id)
    approval_id = item["approval_id"]

    listed = cli(worker, "list", user="alice")
    assert listed.exit_code == 0, listed.output
    assert approval_id in listed.output and "big refund of 800 USD" in listed.output
    shown = cli(worker, "show", approval_id, user="alice")
    assert shown.exit_code == 0 and '"amount": 800' in shown.output and "0/2" in shown.output

    first = cli(worker, "approve", approval_id, "--reason", "ok by me", user="alice")
    assert first.exit_code == 0, first.output
    assert f"approved {approval_id} as user:alice" in first.output
    again = cli(worker, "approve", approval_id, user="alice")
    assert again.exit_code == 2 and "already decided" in again.output

    async def counted() -> bool:
        mine = await reviewers.pending("bob")
        votes = [i["votes"] for i in mine["approvals"] if i["approval_id"] == approval_id]
        return bool(votes) and [v["approver"] for v in votes[0]] == ["user:alice"]

    await until(counted, "alice's vote is counted")
    assert approval_id not in [
        i["approval_id"] for i in (await reviewers.pending("alice"))["approvals"]
    ]
    assert (await reviewers.decide("alice", approval_id, "approve")).status_code == 409
    run = (await reviewers.call("GET", f"/v1/runs/{run_id}", "bob")).json()
    assert run["status"] == "running"  # one approval of two

    second = cli(worker, "approve", approval_id, user="bob")
    assert second.exit_code == 0, second.output
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed
    decided = await events_of(cluster, run_id, "approval_decided", once="run_completed")
    assert [e.detail["approver"] for e in decided] == ["user:alice", "user:bob"]  # type: ignore[index]
    nothing = cli(worker, "list", user="bob")
    assert approval_id not in nothing.output


async def test_the_cli_says_clearly_what_went_wrong(
    cluster: Cluster, worker: WorkerProcess, reviewers: Reviewers
) -> None:
    run_id = new_run("cli-errors")
    await submit(cluster, run_id, "refund", amount=10)
    approval_id = (await reviewers.open_for("alice", run_id))["approval_id"]
    cases = {
        ("list",): (None, "no reviewer token"),
        ("show", approval_id): ("carol", "not allowed: user:carol may not decide"),
        ("show", f"{run_id}/approve/9"): ("alice", "not found: no open approval request"),
        ("reject", approval_id): ("alice", "Missing option '--reason'"),
    }
    for args, (user, message) in cases.items():
        outcome = cli(worker, *args, user=user)
        assert outcome.exit_code == 2 and message in outcome.output, (args, outcome.output)
    wrong = cli(worker, "list", token="nobody-has-this")
    assert wrong.exit_code == 2 and "not signed in: the bearer token is not valid" in wrong.output
    rejected = cli(worker, "reject", approval_id, "--reason", "not today", user="alice")
    assert rejected.exit_code == 0 and f"rejected {approval_id}" in rejected.output
    assert (await result_of(cluster, run_id)).status == RunStatus.rejected


# -- deadlines ---------------------------------------------------------------------------------


async def test_a_deadline_escalates_and_the_next_level_decides(
    cluster: Cluster, reviewers: Reviewers, webhook: Webhook
) -> None:
    run_id = new_run("escalate")
    await submit(cluster, run_id, "refund-hurried", amount=300)
    first = await reviewers.open_for("alice", run_id)
    assert first["approval_id"] == f"{run_id}/approve/1" and first["level"] == 0
    escalated = await reviewers.open_for("carol", run_id, timeout=20)
    assert escalated["approval_id"] == f"{run_id}/approve/2"
    assert escalated["level"] == 1 and escalated["approvers"] == ["group:managers"]
    # The first level's request is closed, and its approvers may not decide the next one.
    late = await reviewers.decide("alice", first["approval_id"], "approve")
    assert late.status_code == 404
    over = await reviewers.decide("alice", escalated["approval_id"], "approve")
    assert over.status_code == 403
    assert (await reviewers.decide("carol", escalated["approval_id"], "approve")).status_code == 202
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed
    escalations = await events_of(cluster, run_id, "approval_escalated", once="run_completed")
    assert [e.detail["level"] for e in escalations] == [1]  # type: ignore[index]
    # The webhook heard of the request and of its escalation.
    posted = await webhook.posted(run_id, 2)
    assert [(p["approval_id"], p["level"], p["approvers"]) for p in posted] == [
        (first["approval_id"], 0, ["group:leads"]),
        (escalated["approval_id"], 1, ["group:managers"]),
    ]
    assert all(p["event"] == "approval_requested" for p in posted)


async def test_no_decision_at_the_end_of_the_escalation_path_rejects(
    cluster: Cluster, reviewers: Reviewers, webhook: Webhook
) -> None:
    run_id = new_run("timeout")
    await submit(cluster, run_id, "refund-hurried", amount=300)
    result = await result_of(cluster, run_id, timeout=40)
    assert result.status == RunStatus.rejected
    assert result.reason == "approve: no decision at level 1 in time"
    (timed_out,) = await events_of(cluster, run_id, "approval_timed_out", once="run_rejected")
    assert timed_out.detail == {"approval_id": f"{run_id}/approve/2", "on_timeout": "reject"}
    assert [p["level"] for p in await webhook.posted(run_id, 2)] == [0, 1]


# -- refusals ----------------------------------------------------------------------------------


async def test_decisions_that_do_not_count_are_refused_and_audited(
    cluster: Cluster, reviewers: Reviewers
) -> None:
    run_id = new_run("refused")
    await submit(cluster, run_id, "refund-two", amount=900)
    item = await reviewers.open_for("alice", run_id)
    approval_id, digest = item["approval_id"], item["request_digest"]
    later = datetime.now(UTC) + timedelta(seconds=1)

    def sign(approval: str, approver: str, **more: Any) -> ApprovalDecision:
        return signed(approval, approver, digest=digest, **more)

    unsigned = sign(approval_id, "user:bob").model_copy(update={"signature": ""})
    await publish(
        cluster,
        sign(approval_id, "user:mallory"),  # not an approver
        sign(approval_id, "user:alice", reason="first"),  # counts
        sign(approval_id, "user:alice", decided_at=later),  # the same approver again
        unsigned,
        sign(approval_id, "user:bob", key="a-key-nobody-trusts-at-all-0123456789"),
        sign(approval_id, "user:bob", key_id="k9"),
        sign(f"{run_id}/approve/7", "user:bob"),  # no such request
        sign(approval_id, "user:bob").model_copy(  # altered after signing
            update={"verdict": ApprovalVerdict.reject}
        ),
        signed(approval_id, "user:bob", digest="0" * 64),  # for a request that is not this one
        sign(approval_id, "user:ana"),  # a lead, but of another tenant
    )

    async def refused() -> list[RunEvent]:
        found = await events_of(cluster, run_id, "approval_refused")
        return found if len(found) == 9 else []

    reasons = [e.detail["reason"] for e in await until(refused, "nine refusals")]  # type: ignore[index]
    assert reasons == [
        "user:mallory may not decide this request",
        "user:alice has decided this request already",
        "bad signature: not a v2 or v3 signature (no other form is accepted)",
        "bad signature: the signature does not match",
        "bad signature: unknown signing key 'k9'",
        "no such approval request is open (decided, escalated or unknown)",
        "bad signature: the signature does not match",
        "it names another request: its request_digest is not the open request's",
        "user:ana may not act for tenant 'default'",
    ]

    # Nothing changed but alice's one vote: the run waits for a second approver. (The API shows
    # a batch once it has committed, which may be a moment after its events are readable.)
    async def alice_counted() -> bool:
        item = (await reviewers.call("GET", f"/v1/approvals/{approval_id}", "bob")).json()
        return [v["approver"] for v in item["votes"]] == ["user:alice"]

    await until(alice_counted, "alice's vote, and only hers, is counted")
    assert (await reviewers.call("GET", f"/v1/runs/{run_id}", "bob")).json()["status"] == "running"
    assert (await reviewers.decide("bob", approval_id, "approve")).status_code == 202
    assert (await result_of(cluster, run_id)).status == RunStatus.completed


async def test_a_decision_for_a_run_that_does_not_exist_is_dead_lettered(
    cluster: Cluster, reviewers: Reviewers
) -> None:
    run_id = new_run("never-started")
    await publish(cluster, signed(f"{run_id}/approve/1", "user:alice", digest="0" * 64))

    async def lettered() -> list[Any]:
        letters = await decoded(cluster, cluster.catalog.dead_letter.name, DeadLetter)
        return [d for d in letters if getattr(d, "run_id", None) == run_id]

    (letter,) = await until(lettered, "a dead letter for the decision")
    assert letter.error == f"approval decision for unknown run {run_id!r}"
    assert letter.payload_type == "ApprovalDecision"


# -- policies ----------------------------------------------------------------------------------


async def test_a_policy_threshold_gates_a_step_of_a_workflow_without_an_approval_step(
    cluster: Cluster, reviewers: Reviewers
) -> None:
    small, big = new_run("payout-small"), new_run("payout-big")
    await submit(cluster, small, "payouts", amount=20)
    await submit(cluster, big, "payouts", amount=900)
    item = await reviewers.open_for("carol", big)
    assert item["step"] == "pay" and item["reason"] == "payout of 900 USD"
    assert item["approvers"] == ["group:managers"]
    (asked,) = await events_of(cluster, big, "approval_requested")
    assert asked.detail["policy"] == "big-payouts"  # type: ignore[index]
    assert (await result_of(cluster, small)).status == RunStatus.completed
    assert not await events_of(cluster, small, "approval_requested", once="run_completed")
    assert (await reviewers.decide("carol", item["approval_id"], "approve")).status_code == 202
    result = await result_of(cluster, big)
    assert result.status == RunStatus.completed and result.output == "paid 900"


# -- the HTTP API's answers ------------------------------------------------------------------------


async def test_the_api_answers_each_mistake_precisely(
    cluster: Cluster, reviewers: Reviewers
) -> None:
    run_id = new_run("errors")
    await submit(cluster, run_id, "refund-two", amount=700)
    approval_id = (await reviewers.open_for("alice", run_id))["approval_id"]
    decision = f"/v1/approvals/{approval_id}/decision"

    for path in ("/v1/approvals", f"/v1/approvals/{approval_id}", f"/v1/runs/{run_id}"):
        missing = await reviewers.call("GET", path)
        assert missing.status_code == 401
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="baton"'
        assert "authentication needed" in missing.json()["error"]
        unknown = await reviewers.call("GET", path, headers={"Authorization": "Bearer nope"})
        assert unknown.status_code == 401 and "invalid_token" in unknown.headers["WWW-Authenticate"]
    posted = await reviewers.call("POST", decision, json={"verdict": "approve"})
    assert posted.status_code == 401
    task = await reviewers.call("POST", "/v1/tasks", json={"workflow": "refund", "input": {}})
    assert task.status_code == 401

    expected: list[tuple[dict[str, Any], int, str]] = [
        ({"content": b"{nope"}, 400, "body is not JSON"),
        ({"json": ["approve"]}, 400, "body must be a JSON object"),
        (
            {"json": {"verdict": "yes"}},
            422,
            "verdict: Input should be 'approve', 'reject', 'edit' or 'respond'",
        ),
        ({"json": {"verdict": "reject"}}, 422, "reason: a rejection needs a reason"),
        ({"json": {"verdict": "approve", "when": "now"}}, 422, "when: Extra inputs"),
    ]
    for kwargs, status, message in expected:
        answer = await reviewers.call("POST", decision, "alice", **kwargs)
        assert answer.status_code == status and message in answer.json()["error"], answer.text

    unknown_request = await reviewers.decide("alice", f"{run_id}/approve/5", "approve")
    assert unknown_request.status_code == 404
    unknown_run = await reviewers.call("GET", "/v1/approvals/no-such-run/approve/1", "alice")
    assert unknown_run.status_code == 404
    assert (
        await reviewers.call("GET", f"/v1/approvals/{approval_id}", "mallory")
    ).status_code == 403
    forbidden = await reviewers.decide("mallory", approval_id, "approve")
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == (
        f"user:mallory may not decide {approval_id!r}: its approvers are group:leads"
    )
    assert (await reviewers.decide("alice", approval_id, "approve")).status_code == 202
    twice = await reviewers.decide("alice", approval_id, "reject", "changed my mind")
    assert twice.status_code == 409
    assert twice.json()["error"] == f"user:alice has decided {approval_id!r} already"
    wrong_method = await reviewers.call("DELETE", "/v1/approvals", "alice")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    # Nothing the API refused reached the coordinator (before alice's vote, which it counted).
    assert not await events_of(cluster, run_id, "approval_refused", once="approval_decided")
    page = await reviewers.call("GET", "/")
    assert page.status_code == 200 and "baton" in page.text
    assert page.headers["Content-Type"].startswith("text/html")


# -- more than one coordinator -----------------------------------------------------------------


@pytest.fixture
def pair(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> Iterator[tuple[Cluster, Workers]]:
    cluster = approvals_cluster(kafka_bootstrap, topic_prefix, tmp_path, BATON_SESSION_TIMEOUT="6")
    workers = Workers(cluster)
    yield cluster, workers
    workers.stop_all()


async def test_every_coordinator_lists_every_request_and_forwards_decisions(
    pair: tuple[Cluster, Workers],
) -> None:
    cluster, workers = pair
    one = workers.start("w1")
    two = workers.start("w2")

    async def balanced() -> bool:
        async with httpx.AsyncClient(timeout=5) as http:
            mine = [(await http.get(f"{w.api}/healthz")).json()["partitions"] for w in (one, two)]
        return all(mine) and sum(len(p) for p in mine) == cluster.partitions

    await until(balanced, "both coordinators serve partitions", timeout=60)
    async with httpx.AsyncClient(timeout=5) as http:
        owned_by_two = set((await http.get(f"{two.api}/healthz")).json()["partitions"])
    run_ids = [new_run("pair") for _ in range(8)]
    for run_id in run_ids:
        await submit(cluster, run_id, "refund", amount=50)
    via_one, via_two = Reviewers(one.api), Reviewers(two.api)

    async def everything(reviewers: Reviewers) -> dict[str, Any] | None:
        answer = await reviewers.pending("bob")
        listed = {i["run_id"] for i in answer["approvals"]}
        return answer if listed >= set(run_ids) else None

    for reviewers in (via_one, via_two):
        answer = await until(lambda r=reviewers: everything(r), f"all requests at {reviewers.api}")
        assert answer["partial"] == []
    remote = next(r for r in run_ids if partition_for(r, cluster.partitions) in owned_by_two)
    local = next(r for r in run_ids if partition_for(r, cluster.partitions) not in owned_by_two)
    # Asked of the worker that does not own the run: forwarded to the one that does.
    shown = await via_one.call("GET", f"/v1/approvals/{remote}/approve/1", "bob")
    assert shown.status_code == 200 and shown.json()["run_id"] == remote
    assert (await via_one.decide("bob", f"{remote}/approve/1", "approve")).status_code == 202
    assert (await result_of(cluster, remote)).status == RunStatus.completed

    # A coordinator that does not answer is skipped and named; the rest is still listed.
    two.kill()
    answer = await via_one.pending("bob")
    assert [p.get("worker") for p in answer["partial"]] == [f"http://127.0.0.1:{two.web_port}"]
    assert local in {i["run_id"] for i in answer["approvals"]}
    # Once its partitions have moved, the list is whole again.
    waiting = set(run_ids) - {remote}

    async def whole() -> bool:
        answer = await via_one.pending("bob")
        return answer["partial"] == [] and {i["run_id"] for i in answer["approvals"]} == waiting

    await until(whole, "the survivor lists every open request", timeout=60)
