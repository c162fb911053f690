"""The HTTP API, against a real Faust web app and a coordinator runtime that is not started
(its runs and open requests come from run states made by decide()).

Every endpoint authenticates and is scoped to the tenants the caller acts for; workers call
each other with their own signed credential, never the caller's token. No Kafka: the
runtime's producer is a stand-in that records what would be published.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import faust
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka.errors import KafkaConnectionError

from streams._access import Access, load_access
from streams._api import install_api
from streams._peers import call_headers
from streams._policies import Policies
from streams._workflows import WorkflowBook, WorkflowFeed
from streams.coordinator import CoordinatorRuntime, RunState
from tests.unit.test_approvals import APPROVAL, KEY, ApprovalRun
from tests.unit.test_decide import T0, ok, task
from topics import (
    ApprovalDecision,
    Codec,
    TaskSubmitted,
    TopicCatalog,
    partition_for,
    sign_decision,
    verify_decision,
)

PARTITIONS = 4
TOKENS = {
    "alice": "alice-token",
    "bob": "bob-token",
    "carol": "carol-token",
    "mallory": "m-token",
    "dana": "dana-token",
    "olga": "olga-token",
    "root": "root-token",
}
WORKER_KEY = "api-unit-test-worker-key-7d1e0c93b2"
ACCESS_FILE = """
reviewers:
  alice: {token_env: T_ALICE, groups: [leads]}
  bob: {token_env: T_BOB, groups: [leads]}
  carol: {token_env: T_CAROL, groups: [managers]}
  mallory: {token_env: T_MALLORY}
principals:
  dana: {token_env: T_DANA, groups: [leads], tenants: [acme]}
  olga: {token_env: T_OLGA, groups: [leads], tenants: [acme, globex]}
  root: {token_env: T_ROOT, tenants: "*"}
signing_keys:
  k1: {env: T_KEY}
"""


def access(tmp_path: Path, *, sign: bool = True, workers: bool = True) -> Access:
    path = tmp_path / "access.yaml"
    text = ACCESS_FILE + ("sign_with: k1\n" if sign else "")
    path.write_text(text + ("worker_key: {env: T_WORKER}\n" if workers else ""))
    environ = {f"T_{user.upper()}": token for user, token in TOKENS.items()}
    environ["T_KEY"] = KEY.decode()
    environ["T_WORKER"] = WORKER_KEY
    return load_access(path, environ)


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


def worker_call(
    method: str, path: str, caller: str, *, key: str = WORKER_KEY, at: float | None = None
) -> dict[str, str]:
    """The headers another worker sends when it asks on a caller's behalf."""
    moment = int(time.time() if at is None else at)
    return call_headers(
        key.encode(), method=method, path=path, caller=caller, sender="http://peer", at=moment
    )


@dataclass
class Producer:
    """Stands in for the runtime's Kafka producer: records what it would publish."""

    failing: bool = False
    sent: list[tuple[str, bytes, bytes, int]] = field(default_factory=list)

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes, partition: int) -> None:
        if self.failing:
            raise KafkaConnectionError("the broker is gone")
        self.sent.append((topic, value, key, partition))

    def decisions(self) -> list[ApprovalDecision]:
        return [Codec().decode(value, ApprovalDecision) for _, value, _, _ in self.sent]


def runtime(
    reviewers: Access, *, owns: set[int] | None = None, policies: Policies | None = None
) -> CoordinatorRuntime:
    catalog = TopicCatalog(prefix="t", partitions=PARTITIONS)
    codec = Codec()
    made = CoordinatorRuntime(
        bootstrap="127.0.0.1:1",
        catalog=catalog,
        feed=WorkflowFeed("127.0.0.1:1", catalog, codec, WorkflowBook()),
        url="http://127.0.0.1:1",
        worker_id="w",
        exactly_once=True,
        access=reviewers,
        policies=policies,
    )
    made.plain = Producer()  # type: ignore[assignment]  # records what it would publish
    made.ready.update(set(range(PARTITIONS)) if owns is None else owns)
    return made


def hold(owner: CoordinatorRuntime, state: RunState) -> None:
    """Give a run's state to the runtime, as its restore or a batch would."""
    owner.hold(state)


def waiting(run_id: str = "r1", amount: int = 120, tenant: str = "default") -> ApprovalRun:
    """A run parked at its approval step (group:leads, quorum 2)."""
    run = ApprovalRun(APPROVAL)
    run.send(task(run_id, input={"amount": amount}, tenant=tenant))
    run.send(ok(run.request("draft"), f"refund {amount}"))
    return run


def vote(run: ApprovalRun, approval_id: str, user: str) -> None:
    assert run.state is not None
    run.send(
        sign_decision(
            approval_id=approval_id,
            run_id=run.state.run_id,
            request_digest=run.digest(approval_id),
            verdict="approve",
            approver=f"user:{user}",
            reason="fine",
            key_id="k1",
            key=KEY,
            decided_at=T0,
        )
    )


@asynccontextmanager
async def serving(owner: CoordinatorRuntime) -> AsyncIterator[httpx.AsyncClient]:
    """The runtime's API on a loopback port; the client talks to it."""
    app = faust.App(
        f"api-{uuid.uuid4().hex[:8]}",
        broker="kafka://127.0.0.1:1",
        autodiscover=False,
        web_tables_enabled=False,
    )
    async with httpx.AsyncClient() as peers:
        install_api(app, owner, peers)
        app.web.init_server()
        server = TestServer(app.web.web_app, host="127.0.0.1")
        await server.start_server()
        try:
            owner.url = str(server.make_url("")).rstrip("/")
            owner.assignor.owners = {
                p: owner.url for p in range(PARTITIONS) if p in owner.ready
            } | owner.assignor.owners
            async with httpx.AsyncClient(base_url=owner.url, timeout=10) as client:
                yield client
        finally:
            await server.close()


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/tasks"),
        ("GET", "/v1/runs/r1"),
        ("GET", "/v1/approvals"),
        ("GET", "/v1/approvals/r1/approve/1"),
        ("POST", "/v1/approvals/r1/approve/1/decision"),
    ],
)
@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "authentication needed"),
        ({"Authorization": "Basic YWxpY2U6eA=="}, "authentication needed"),
        ({"Authorization": "Bearer"}, "authentication needed"),
        ({"Authorization": "Bearer nobody-has-this"}, "the bearer token is not valid"),
    ],
)
async def test_every_endpoint_needs_a_known_bearer_token(
    tmp_path: Path, method: str, path: str, headers: dict[str, str], error: str
) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting().state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        body = {"verdict": "approve"} if "decision" in path else {"workflow": "w", "input": {}}
        response = await client.request(
            method, path, headers=headers, json=body if method == "POST" else None
        )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="baton"')
    assert error in response.json()["error"]
    assert not owner.plain.sent


# -- listing -----------------------------------------------------------------------------------


async def test_the_list_holds_what_the_caller_may_decide_sorted_by_deadline(
    tmp_path: Path,
) -> None:
    owner = runtime(access(tmp_path))
    later = waiting("r-later")
    sooner = waiting("r-sooner")
    assert later.state is not None and sooner.state is not None
    step = sooner.state.steps["approve"]
    assert step.approval is not None
    early = step.approval.model_copy(
        update={"deadline": step.approval.deadline - timedelta(minutes=30)}
    )
    sooner.state = sooner.state.model_copy(
        update={
            "steps": {**sooner.state.steps, "approve": step.model_copy(update={"approval": early})}
        }
    )
    hold(owner, later.state)
    hold(owner, sooner.state)
    async with serving(owner) as client:
        alice = (await client.get("/v1/approvals", headers=auth("alice"))).json()
        carol = (await client.get("/v1/approvals", headers=auth("carol"))).json()
        mallory = (await client.get("/v1/approvals", headers=auth("mallory"))).json()
    assert [a["approval_id"] for a in alice["approvals"]] == [
        "r-sooner/approve/1",
        "r-later/approve/1",
    ]
    assert alice["reviewer"] == "user:alice" and alice["partial"] == []
    assert alice["tenants"] == ["default"]
    first = alice["approvals"][0]
    assert set(first) == {
        "approval_id",
        "run_id",
        "step",
        "workflow",
        "tenant",
        "reason",
        "approvers",
        "quorum",
        "level",
        "deadline",
        "context",
        "cost_usd",
        "requested_at",
        "request_digest",
        "action",
        "output_schema",
        "response",
        "votes",
    }
    assert first["action"] is None and first["response"] is None  # an approval step's
    assert first["run_id"] == "r-sooner" and first["step"] == "approve"
    assert first["reason"] == "refund of 120 USD" and first["quorum"] == 2
    assert first["approvers"] == ["group:leads"] and first["votes"] == []
    assert first["context"]["input"] == {"amount": 120}
    assert carol["approvals"] == [] and mallory["approvals"] == []


async def test_a_request_the_caller_has_voted_on_leaves_their_list_but_not_the_others(
    tmp_path: Path,
) -> None:
    owner = runtime(access(tmp_path))
    run = waiting()
    vote(run, "r1/approve/1", "alice")
    hold(owner, run.state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        alice = (await client.get("/v1/approvals", headers=auth("alice"))).json()
        bob = (await client.get("/v1/approvals", headers=auth("bob"))).json()
        one = (await client.get("/v1/approvals/r1/approve/1", headers=auth("alice"))).json()
    assert alice["approvals"] == []
    (item,) = bob["approvals"]
    assert [(v["approver"], v["verdict"], v["reason"]) for v in item["votes"]] == [
        ("user:alice", "approve", "fine")
    ]
    assert one["votes"] == item["votes"]


async def test_the_list_merges_every_coordinator_and_names_one_that_does_not_answer(
    tmp_path: Path,
) -> None:
    reviewers = access(tmp_path)
    here = runtime(reviewers, owns={0, 1})
    there = runtime(reviewers, owns={2, 3})
    ids = {run_id: partition_for(run_id, PARTITIONS) for run_id in (f"r{i}" for i in range(12))}
    for run_id, partition in ids.items():
        hold(here if partition in here.ready else there, waiting(run_id).state)  # type: ignore[arg-type]
    async with serving(there) as _, serving(here) as client:
        here.assignor.owners = {0: here.url, 1: here.url, 2: there.url, 3: there.url}
        merged = (await client.get("/v1/approvals", headers=auth("bob"))).json()
        assert sorted(a["run_id"] for a in merged["approvals"]) == sorted(ids)
        assert merged["partial"] == []
        # Asked by another worker (signed with the worker key, for bob): its own requests.
        signed = worker_call("GET", "/v1/approvals", "user:bob")
        local = await client.get("/v1/approvals", headers=signed)
        assert {a["run_id"] for a in local.json()["approvals"]} == {
            r for r, p in ids.items() if p in (0, 1)
        }
        # A caller's own "forwarded" header changes nothing.
        claimed = await client.get(
            "/v1/approvals", headers={**auth("bob"), "X-Baton-Forwarded": "test"}
        )
        assert len(claimed.json()["approvals"]) == len(ids)
        # A coordinator that does not answer is skipped, and named.
        gone = "http://127.0.0.1:9"
        await there.loop._release(3)  # as a rebalance would
        here.assignor.owners = {0: here.url, 1: here.url, 2: there.url, 3: gone}
        partial = (await client.get("/v1/approvals", headers=auth("bob"))).json()
    assert [p["worker"] for p in partial["partial"]] == [gone]
    assert "did not answer" in partial["partial"][0]["error"]
    assert {a["run_id"] for a in partial["approvals"]} == {
        r for r, p in ids.items() if p in (0, 1, 2)
    }


async def test_partitions_nobody_serves_make_the_list_partial(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path), owns={0, 1, 2})
    async with serving(owner) as client:
        answer = (await client.get("/v1/approvals", headers=auth("alice"))).json()
    assert answer["partial"] == [
        {
            "partitions": [3],
            "error": "no coordinator serves these partitions right now "
            "(they are being taken over); their requests are missing",
        }
    ]


# -- one request ---------------------------------------------------------------------------------


async def test_one_request_by_id_plain_or_percent_encoded(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting().state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        plain = await client.get("/v1/approvals/r1/approve/1", headers=auth("bob"))
        encoded = await client.get("/v1/approvals/r1%2Fapprove%2F1", headers=auth("bob"))
        unknown = await client.get("/v1/approvals/r1/approve/7", headers=auth("bob"))
        nonsense = await client.get("/v1/approvals/nonsense", headers=auth("bob"))
        forbidden = await client.get("/v1/approvals/r1/approve/1", headers=auth("carol"))
    assert plain.status_code == encoded.status_code == 200
    assert plain.json()["approval_id"] == encoded.json()["approval_id"] == "r1/approve/1"
    assert unknown.status_code == 404 and "no open approval request" in unknown.json()["error"]
    assert nonsense.status_code == 404 and "not an approval id" in nonsense.json()["error"]
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == (
        "user:carol may not decide 'r1/approve/1': its approvers are group:leads"
    )


# -- deciding ----------------------------------------------------------------------------------


async def test_a_decision_is_signed_with_the_workers_key_and_published_on_the_runs_partition(
    tmp_path: Path,
) -> None:
    reviewers = access(tmp_path)
    owner = runtime(reviewers)
    hold(owner, waiting().state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        response = await client.post(
            "/v1/approvals/r1%2Fapprove%2F1/decision",
            headers=auth("bob"),
            json={"verdict": "approve", "reason": "  within policy  "},
        )
    assert response.status_code == 202
    assert response.json() == {
        "approval_id": "r1/approve/1",
        "verdict": "approve",
        "approver": "user:bob",
    }
    ((topic, _, key, partition),) = owner.plain.sent
    assert topic == "t.approvals.decided" and key == b"r1"
    assert partition == partition_for("r1", PARTITIONS)
    (decision,) = owner.plain.decisions()
    assert decision.approver == "user:bob" and decision.reason == "within policy"
    assert decision.key_id == "k1" and verify_decision(decision, reviewers.keys) is None
    assert decision.signature.startswith("v2:")
    assert decision.request_digest == owner.approvals["r1/approve/1"].request_digest or (
        decision.request_digest == waiting().digest("r1/approve/1")
    )


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "body is not JSON"),
        (b'["approve"]', 400, "body must be a JSON object"),
        (b"{}", 422, "verdict: Field required"),
        (
            b'{"verdict": "maybe"}',
            422,
            "verdict: Input should be 'approve', 'reject', 'edit' or 'respond'",
        ),
        (b'{"verdict": "edit"}', 422, "args: edit needs args"),
        (b'{"verdict": "edit", "args": null}', 422, "args: edit needs args"),
        (b'{"verdict": "edit", "args": [1]}', 422, "args: Input should be a valid dictionary"),
        (b'{"verdict": "respond"}', 422, "output: respond needs output"),
        (b'{"verdict": "approve", "args": {}}', 422, "args: only edit takes args"),
        (b'{"verdict": "edit", "output": 1, "args": {}}', 422, "output: only respond takes"),
        (b'{"verdict": "edit", "args": {"a": 1}}', 422, "r1/approve/1 gates no tool call"),
        (b'{"verdict": "approve", "by": "x"}', 422, "by: Extra inputs are not permitted"),
        (b'{"verdict": "approve", "reason": 5}', 422, "reason: Input should be a valid string"),
        (b'{"verdict": "reject"}', 422, "reason: a rejection needs a reason"),
        (b'{"verdict": "reject", "reason": "  "}', 422, "reason: a rejection needs a reason"),
        (
            b'{"verdict": "approve", "reason": "' + b"x" * 2001 + b'"}',
            422,
            "reason: String should have at most 2000 characters",
        ),
    ],
)
async def test_bad_bodies_get_400_or_422_naming_the_field(
    tmp_path: Path, body: bytes, status: int, error: str
) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting().state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        response = await client.post(
            "/v1/approvals/r1/approve/1/decision", headers=auth("bob"), content=body
        )
    assert response.status_code == status
    assert error in response.json()["error"]
    assert not owner.plain.sent


async def test_refusals_404_403_and_409(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    run = waiting()
    vote(run, "r1/approve/1", "alice")
    hold(owner, run.state)  # type: ignore[arg-type]
    approve = {"verdict": "approve"}
    async with serving(owner) as client:
        unknown = await client.post(
            "/v1/approvals/r1/approve/2/decision", headers=auth("bob"), json=approve
        )
        unknown_run = await client.post(
            "/v1/approvals/nope/approve/1/decision", headers=auth("bob"), json=approve
        )
        mallory = await client.post(
            "/v1/approvals/r1/approve/1/decision", headers=auth("mallory"), json=approve
        )
        again = await client.post(
            "/v1/approvals/r1/approve/1/decision", headers=auth("alice"), json=approve
        )
    assert unknown.status_code == unknown_run.status_code == 404
    assert mallory.status_code == 403 and "user:mallory may not decide" in mallory.json()["error"]
    assert again.status_code == 409
    assert again.json()["error"] == "user:alice has decided 'r1/approve/1' already"
    assert not owner.plain.sent


async def test_a_second_decision_before_the_coordinator_counted_the_first_is_a_409(
    tmp_path: Path,
) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting().state)  # type: ignore[arg-type]
    path = "/v1/approvals/r1/approve/1/decision"
    async with serving(owner) as client:
        first = await client.post(path, headers=auth("bob"), json={"verdict": "approve"})
        second = await client.post(
            path, headers=auth("bob"), json={"verdict": "reject", "reason": "second thoughts"}
        )
        other = await client.post(path, headers=auth("alice"), json={"verdict": "approve"})
        listed = (await client.get("/v1/approvals", headers=auth("bob"))).json()
    assert (first.status_code, second.status_code, other.status_code) == (202, 409, 202)
    assert [d.approver for d in owner.plain.decisions()] == ["user:bob", "user:alice"]
    assert listed["approvals"] == []


async def test_a_worker_without_a_signing_key_answers_503(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path, sign=False))
    hold(owner, waiting().state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        response = await client.post(
            "/v1/approvals/r1/approve/1/decision", headers=auth("bob"), json={"verdict": "approve"}
        )
    assert response.status_code == 503
    assert response.json() == {
        "error": "this worker has no signing key (`sign_with` in the access file)"
    }


async def test_a_broker_that_does_not_take_the_decision_is_a_503(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    owner.plain = Producer(failing=True)
    hold(owner, waiting().state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        response = await client.post(
            "/v1/approvals/r1/approve/1/decision", headers=auth("bob"), json={"verdict": "approve"}
        )
        again = await client.post(
            "/v1/approvals/r1/approve/1/decision", headers=auth("bob"), json={"verdict": "approve"}
        )
    assert response.status_code == 503 and "could not publish" in response.json()["error"]
    assert again.status_code == 503  # nothing was sent, so trying again is no "409"


async def test_requests_for_another_coordinators_run_are_forwarded_to_it(tmp_path: Path) -> None:
    reviewers = access(tmp_path)
    partition = partition_for("r1", PARTITIONS)
    here = runtime(reviewers, owns=set(range(PARTITIONS)) - {partition})
    there = runtime(reviewers, owns={partition})
    hold(there, waiting().state)  # type: ignore[arg-type]
    async with serving(there) as _, serving(here) as client:
        here.assignor.owners[partition] = there.url
        one = await client.get("/v1/approvals/r1/approve/1", headers=auth("bob"))
        refused = await client.get("/v1/approvals/r1/approve/1", headers=auth("carol"))
        unauthenticated = await client.get("/v1/approvals/r1/approve/1")
        decided = await client.post(
            "/v1/approvals/r1/approve/1/decision", headers=auth("bob"), json={"verdict": "approve"}
        )
        # The owner gone quiet: 502, naming it.
        there_url = there.url
        here.assignor.owners[partition] = "http://127.0.0.1:9"
        gone = await client.get("/v1/approvals/r1/approve/1", headers=auth("bob"))
        # Nobody owns it (taken over right now): 503.
        del here.assignor.owners[partition]
        moving = await client.get("/v1/approvals/r1/approve/1", headers=auth("bob"))
    assert one.status_code == 200 and one.json()["approval_id"] == "r1/approve/1"
    assert refused.status_code == 403
    assert unauthenticated.status_code == 401  # answered here: the token is checked first
    assert decided.status_code == 202
    assert not here.plain.sent and [d.approver for d in there.plain.decisions()] == ["user:bob"]
    assert gone.status_code == 502 and "did not answer" in gone.json()["error"]
    assert there_url not in gone.json()["error"]
    assert moving.status_code == 503 and "being taken over" in moving.json()["error"]


async def test_wrong_methods_and_paths_under_v1_answer_json(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    async with serving(owner) as client:
        delete = await client.delete("/v1/approvals", headers=auth("bob"))
        missing = await client.get("/v1/nothing-here")
    assert delete.status_code == 405 and "GET" in delete.headers["Allow"]
    assert delete.json()["error"] == "DELETE /v1/approvals: Method Not Allowed"
    assert missing.status_code == 404 and missing.json()["error"].endswith("Not Found")


# -- the inbox -----------------------------------------------------------------------------------


async def test_the_inbox_page_and_its_files_are_served_with_a_strict_policy(
    tmp_path: Path,
) -> None:
    owner = runtime(access(tmp_path))
    async with serving(owner) as client:
        page = await client.get("/")
        script = await client.get("/static/app.js")
        style = await client.get("/static/app.css")
        missing = await client.get("/static/secrets.txt")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'data-testid="login-form"' in page.text and "/static/app.js" in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert "innerHTML" not in script.text and "/v1/approvals" in script.text
    assert style.headers["Content-Type"].startswith("text/css")
    assert missing.status_code == 404


# -- tenants -------------------------------------------------------------------------------------

TENANT_POLICIES = Policies.model_validate(
    {
        "tenants": {
            "acme": {"workflows": ["refund*"]},
            "globex": {},
            "default": {},
            "*": {"workflows": []},  # tenants not listed run nothing
        }
    }
)


async def test_tasks_are_submitted_for_a_tenant_the_caller_acts_for(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path), policies=TENANT_POLICIES)

    async def submit(user: str, **fields: object) -> httpx.Response:
        body = {"workflow": "refunds", "input": {"amount": 5}, **fields}
        return await client.post("/v1/tasks", headers=auth(user), json=body)

    async with serving(owner) as client:
        dana = await submit("dana", task_id="t-dana")
        alice = await submit("alice", task_id="t-alice")
        root = await submit("root", task_id="t-root", tenant="globex")
        other_tenant = await submit("dana", tenant="globex")
        ambiguous = await submit("olga")
        not_allowed = await submit("dana", workflow="payroll")
        unknown_tenant = await submit("root", tenant="initech")
        bad_id = await submit("dana", task_id="r1/approve/1")
        bad_tenant = await submit("root", tenant="*")
    assert (dana.status_code, alice.status_code, root.status_code) == (202, 202, 202)
    assert dana.json() == {"run_id": "t-dana", "status_url": "/v1/runs/t-dana"}
    tasks = [Codec().decode(value, TaskSubmitted) for _, value, _, _ in owner.plain.sent]
    assert [(t.task_id, t.tenant) for t in tasks] == [
        ("t-dana", "acme"),  # named no tenant: the caller's only one
        ("t-alice", "default"),
        ("t-root", "globex"),
    ]
    assert other_tenant.status_code == 403
    assert other_tenant.json()["error"] == "user:dana may not act for tenant 'globex'"
    assert ambiguous.status_code == 422
    assert ambiguous.json()["error"] == "tenant: name the tenant; user:olga acts for acme, globex"
    assert not_allowed.status_code == 403
    assert not_allowed.json()["error"] == "tenant 'acme' may not run workflow 'payroll'"
    assert unknown_tenant.status_code == 403
    assert unknown_tenant.json()["error"] == "tenant 'initech' may not run workflow 'refunds'"
    assert bad_id.status_code == 422 and bad_id.json()["error"].startswith(
        "task_id: 'r1/approve/1' is not a valid task id: '/' is not allowed"
    )
    assert bad_tenant.status_code == 422
    assert "tenant: '*' is not a valid tenant name" in bad_tenant.json()["error"]


async def test_a_run_is_shown_only_to_callers_acting_for_its_tenant(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting("r-acme", tenant="acme").state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        dana = await client.get("/v1/runs/r-acme", headers=auth("dana"))
        root = await client.get("/v1/runs/r-acme", headers=auth("root"))
        alice = await client.get("/v1/runs/r-acme", headers=auth("alice"))
        missing = await client.get("/v1/runs/nope", headers=auth("dana"))
    assert dana.status_code == root.status_code == 200
    assert dana.json()["run_id"] == "r-acme" and dana.json()["tenant"] == "acme"
    assert alice.status_code == 403
    assert alice.json() == {"error": "user:alice may not see run 'r-acme': it is tenant 'acme''s"}
    assert missing.status_code == 404 and missing.json() == {"error": "no run 'nope'"}


async def test_another_tenants_approvals_are_neither_listed_nor_decidable(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting("r-acme", tenant="acme").state)  # type: ignore[arg-type]
    hold(owner, waiting("r-default").state)  # type: ignore[arg-type]
    one, decide = "/v1/approvals/r-acme/approve/1", "/v1/approvals/r-acme/approve/1/decision"
    async with serving(owner) as client:
        dana = (await client.get("/v1/approvals", headers=auth("dana"))).json()
        alice = (await client.get("/v1/approvals", headers=auth("alice"))).json()
        alice_one = await client.get(one, headers=auth("alice"))
        alice_decides = await client.post(
            decide, headers=auth("alice"), json={"verdict": "approve"}
        )
        dana_decides = await client.post(decide, headers=auth("dana"), json={"verdict": "approve"})
    assert [a["run_id"] for a in dana["approvals"]] == ["r-acme"]
    assert dana["tenants"] == ["acme"] and dana["reviewer"] == "user:dana"
    assert [a["run_id"] for a in alice["approvals"]] == ["r-default"]
    assert alice_one.status_code == alice_decides.status_code == 403
    assert alice_one.json()["error"] == "user:alice may not act for tenant 'acme'"
    assert dana_decides.status_code == 202
    assert [(d.approver, d.run_id) for d in owner.plain.decisions()] == [("user:dana", "r-acme")]


async def test_a_decision_on_a_request_other_than_the_one_seen_is_a_409(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting().state)  # type: ignore[arg-type]
    path = "/v1/approvals/r1/approve/1/decision"
    async with serving(owner) as client:
        seen = (await client.get("/v1/approvals/r1/approve/1", headers=auth("bob"))).json()
        other = {"verdict": "approve", "request_digest": "0" * 64}
        stale = await client.post(path, headers=auth("bob"), json=other)
        same = {"verdict": "approve", "request_digest": seen["request_digest"]}
        fresh = await client.post(path, headers=auth("bob"), json=same)
    assert stale.status_code == 409
    assert stale.json()["error"].startswith("request_digest: 'r1/approve/1' is not the request")
    assert fresh.status_code == 202
    (decision,) = owner.plain.decisions()
    assert decision.request_digest == seen["request_digest"]


# -- workers calling workers ---------------------------------------------------------------------


@asynccontextmanager
async def rogue() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A group member that answers every call and keeps what it was sent."""
    seen: list[dict[str, str]] = []

    async def keep(request: web.Request) -> web.Response:
        seen.append({**request.headers, "path": request.raw_path})
        return web.json_response({"approvals": [], "partitions": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", keep)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), seen
    finally:
        await server.close()


async def test_workers_forward_with_their_own_credential_never_the_callers_token(
    tmp_path: Path,
) -> None:
    partition = partition_for("r1", PARTITIONS)
    here = runtime(access(tmp_path), owns=set(range(PARTITIONS)) - {partition})
    async with rogue() as (url, seen), serving(here) as client:
        here.assignor.owners[partition] = url
        await client.get("/v1/approvals", headers=auth("alice"))
        await client.get("/v1/runs/r1", headers=auth("alice"))
        await client.get("/v1/approvals/r1/approve/1", headers=auth("alice"))
        await client.post(
            "/v1/approvals/r1/approve/1/decision",
            headers=auth("alice"),
            json={"verdict": "approve"},
        )
    assert [s["path"] for s in seen] == [
        "/v1/approvals",
        "/v1/runs/r1",
        "/v1/approvals/r1%2Fapprove%2F1",
        "/v1/approvals/r1%2Fapprove%2F1/decision",
    ]
    for headers in seen:
        assert "Authorization" not in headers
        assert TOKENS["alice"] not in str(headers)
        assert headers["X-Baton-On-Behalf-Of"] == "user:alice"
        assert headers["X-Baton-Worker-Signature"].startswith("t=")


async def test_a_worker_call_is_trusted_only_when_its_signature_holds(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting().state)  # type: ignore[arg-type]
    path = "/v1/approvals/r1%2Fapprove%2F1"
    async with serving(owner) as client:
        good = await client.get(path, headers=worker_call("GET", path, "user:bob"))
        tenant_checked = await client.get(path, headers=worker_call("GET", path, "user:dana"))
        other_path = await client.get(path, headers=worker_call("GET", "/v1/approvals", "user:bob"))
        wrong_key = await client.get(
            path, headers=worker_call("GET", path, "user:bob", key="x" * 40)
        )
        stale = await client.get(
            path, headers=worker_call("GET", path, "user:bob", at=time.time() - 120)
        )
        swapped = {**worker_call("GET", path, "user:mallory"), "X-Baton-On-Behalf-Of": "user:bob"}
        impersonated = await client.get(path, headers=swapped)
        stranger = await client.get(path, headers=worker_call("GET", path, "user:nobody"))
    assert good.status_code == 200 and good.json()["approval_id"] == "r1/approve/1"
    assert tenant_checked.status_code == 403  # the caller's own tenants still apply
    for refused in (other_path, wrong_key, impersonated):
        assert refused.status_code == 401
        assert refused.json()["error"] == "the worker call's signature does not match"
    assert stale.status_code == 401 and "more than 30s away" in stale.json()["error"]
    assert stranger.status_code == 401
    assert (
        stranger.json()["error"] == "a worker call for user:nobody, whom this worker does not know"
    )


async def test_without_a_worker_key_nothing_is_forwarded(tmp_path: Path) -> None:
    partition = partition_for("r1", PARTITIONS)
    here = runtime(access(tmp_path, workers=False), owns=set(range(PARTITIONS)) - {partition})
    async with rogue() as (url, seen), serving(here) as client:
        here.assignor.owners[partition] = url
        listed = (await client.get("/v1/approvals", headers=auth("alice"))).json()
        run = await client.get("/v1/runs/r1", headers=auth("alice"))
        signed = await client.get(
            "/v1/approvals", headers=worker_call("GET", "/v1/approvals", "user:alice")
        )
    assert not seen
    assert listed["partial"][0] == {
        "worker": url,
        "error": "this worker cannot ask the other workers: no `worker_key` in the access file",
    }
    assert run.status_code == 503 and "no `worker_key`" in run.json()["error"]
    assert signed.status_code == 401
    assert signed.json()["error"] == (
        "this worker takes no calls from other workers (no `worker_key`)"
    )


async def test_healthz_and_the_inbox_files_are_open_and_hold_no_run_data(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, waiting("r-acme", tenant="acme").state)  # type: ignore[arg-type]
    async with serving(owner) as client:
        health = await client.get("/healthz")
        page = await client.get("/")
    assert health.status_code == page.status_code == 200
    assert set(health.json()) == {
        "ok",
        "events_processed",
        "partitions",
        "processing",
        "runs",
        "restored",
        "written",
    }
    assert "r-acme" not in health.text and "acme" not in health.text
