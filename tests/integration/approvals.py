"""What the approval tests share: reviewers and their tokens, workflows, and API helpers.

``approvals_cluster`` sets up a cluster whose workers know the reviewers (an access file with
bearer tokens and a signing key), an approval policy and the workflows below; ``Reviewers``
calls the HTTP API as they would; ``signed`` and ``publish`` play any other system that
answers approval requests on the topic itself.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from streams._client import BatonClient
from tests.integration.workers import (
    Cluster,
    WorkerProcess,
    Workers,
    all_results,
    has,
    poll_run_events,
)
from topics import (
    ApprovalDecision,
    Codec,
    RunEvent,
    RunResult,
    TaskSubmitted,
    partition_for,
    sign_decision,
)

KEY = "integration-signing-key-0123456789"
WORKER_KEY = "integration-approvals-worker-key-8c41d2"
TOKENS = {
    "alice": "alice-token-1",
    "bob": "bob-token-2",
    "carol": "carol-token-3",
    "mallory": "mallory-token-4",
    "ana": "ana-token-5",
    "ben": "ben-token-6",
}

#: alice, bob, carol and mallory act for the tenant ``default``; ana for ``acme`` only, ben
#: for ``bravo`` only (both leads).
ACCESS = """
reviewers:
  alice: {token_env: BATON_TOKEN_ALICE, groups: [leads]}
  bob: {token_env: BATON_TOKEN_BOB, groups: [leads]}
  carol: {token_env: BATON_TOKEN_CAROL, groups: [managers]}
  mallory: {token_env: BATON_TOKEN_MALLORY}
principals:
  ana: {token_env: BATON_TOKEN_ANA, groups: [leads], tenants: [acme]}
  ben: {token_env: BATON_TOKEN_BEN, groups: [leads], tenants: [bravo]}
signing_keys:
  k1: {env: BATON_APPROVAL_KEY}
sign_with: k1
worker_key: {env: BATON_WORKER_KEY}
"""

POLICIES = """
approvals:
  - name: big-payouts
    workflows: [payouts]
    steps: [pay]
    when: "input.amount > 500"
    approvers: [group:managers]
    timeout: 1h
    reason: "payout of {{ input.amount }} USD"
"""

WORKFLOWS = {
    "refund": """
workflow: refund
version: 1
steps:
  draft: {kind: transform, output: "refund {{ input.amount }}"}
  approve: {kind: approval, after: [draft], approvers: [group:leads], timeout: 1h,
            reason: "refund of {{ input.amount }} USD"}
  send: {kind: transform, after: [approve], output: "sent: {{ steps.draft.output }}"}
output: "{{ steps.send.output }}"
""",
    "refund-two": """
workflow: refund-two
version: 1
steps:
  draft: {kind: transform, output: "refund {{ input.amount }}"}
  approve: {kind: approval, after: [draft], approvers: [group:leads], quorum: 2, timeout: 1h,
            reason: "big refund of {{ input.amount }} USD"}
  send: {kind: transform, after: [approve], output: "sent: {{ steps.draft.output }}"}
output: "{{ steps.send.output }}"
""",
    "refund-hurried": """
workflow: refund-hurried
version: 1
steps:
  draft: {kind: transform, output: "refund {{ input.amount }}"}
  approve: {kind: approval, after: [draft], approvers: [group:leads], timeout: 2s,
            escalate_to: [{approvers: [group:managers], timeout: 2s}],
            reason: "urgent refund of {{ input.amount }} USD"}
  send: {kind: transform, after: [approve], output: "sent: {{ steps.draft.output }}"}
output: "{{ steps.send.output }}"
""",
    # A reviewer who writes "recheck" sends the approval back (a validation re-run).
    "payout-checked": """
workflow: payout-checked
version: 1
steps:
  approve: {kind: approval, approvers: [group:leads], timeout: 1h,
            reason: "pay {{ input.to }} {{ input.amount }} USD"}
  check: {kind: validate, after: [approve],
          value: "{{ steps.approve.output.reasons | join(' ') }}",
          rules: [{check: "'recheck' not in value", message: "a reviewer asked for a re-check"}],
          on_fail: {retry_step: approve, max: 2}}
  pay: {kind: transform, after: [check], output: "paid {{ input.to }} {{ input.amount }}"}
output: "{{ steps.pay.output }}"
""",
    # Two approvals in 3 seconds, or the step fails (and can be re-driven).
    "refund-lapsing": """
workflow: refund-lapsing
version: 1
steps:
  approve: {kind: approval, approvers: [group:leads], quorum: 2, timeout: 3s,
            on_timeout: fail, reason: "refund of {{ input.amount }} USD"}
  send: {kind: transform, after: [approve], output: "sent {{ input.amount }}"}
output: "{{ steps.send.output }}"
""",
    "refund-brief": """
workflow: refund-brief
version: 1
steps:
  approve: {kind: approval, approvers: [group:leads], timeout: 4s,
            reason: "refund of {{ input.amount }} USD"}
  send: {kind: transform, after: [approve], output: "sent {{ input.amount }}"}
output: "{{ steps.send.output }}"
""",
    "payouts": """
workflow: payouts
version: 1
steps:
  draft: {kind: transform, output: "payout {{ input.amount }}"}
  pay: {kind: transform, after: [draft], output: "paid {{ input.amount }}"}
output: "{{ steps.pay.output }}"
""",
}


class Webhook:
    """A loopback HTTP server that records what the workers POST to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        lock = threading.Lock()
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    posts.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/approvals"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def about(self, run_id: str) -> list[dict[str, Any]]:
        return [p for p in list(self.posts) if p.get("run_id") == run_id]

    async def posted(self, run_id: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """What was posted about a run, once there are ``count`` posts.

        The coordinator posts after its batch commits, on its own time: a run may have gone
        on, even ended, before a post about it arrives.
        """

        async def enough() -> list[dict[str, Any]] | None:
            found = self.about(run_id)
            return found if len(found) >= count else None

        found: list[dict[str, Any]] = await until(enough, f"{count} posts about {run_id}", timeout)
        return found


def approvals_cluster(
    bootstrap: str,
    prefix: str,
    home: Path,
    *,
    policies: str = POLICIES,
    workflows: dict[str, str] | None = None,
    **env: str,
) -> Cluster:
    """A cluster whose workers know the reviewers, the policies and the workflows (above)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "access.yaml").write_text(ACCESS)
    (home / "policies.yaml").write_text(policies)
    cluster = Cluster(
        bootstrap,
        prefix,
        home / "state",
        extra_env={
            "BATON_ACCESS_FILE": str(home / "access.yaml"),
            "BATON_POLICIES_FILE": str(home / "policies.yaml"),
            "BATON_APPROVAL_KEY": KEY,
            "BATON_WORKER_KEY": WORKER_KEY,
            **{f"BATON_TOKEN_{user.upper()}": token for user, token in TOKENS.items()},
            **env,
        },
    )
    created = cluster.baton("topics", "create")
    assert created.returncode == 0, created.stderr
    paths = []
    for name, text in (WORKFLOWS if workflows is None else workflows).items():
        paths.append(home / f"{name}.yaml")
        paths[-1].write_text(text)
    deployed = cluster.baton("workflows", "deploy", *map(str, paths))
    assert deployed.returncode == 0, deployed.stderr
    return cluster


def wait_serving(worker: WorkerProcess, partitions: int, timeout: float = 60.0) -> None:
    """Until the worker's coordinator has restored and serves the partitions."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(f"{worker.api}/healthz", timeout=5).json()
        if len(health["partitions"]) == partitions:
            return
        time.sleep(0.2)
    raise AssertionError(f"not serving {partitions} partitions:\n{worker.log_tail()}")


@contextmanager
def serving_worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    """One worker (``w1``) of the cluster, serving every partition; stopped afterwards."""
    workers = Workers(cluster)
    started = workers.start("w1")
    try:
        wait_serving(started, cluster.partitions)
        yield started
    finally:
        workers.stop_all()


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


async def until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; that is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.2)


class Reviewers:
    """The HTTP API as reviewers use it."""

    def __init__(self, api: str) -> None:
        self.api = api

    async def call(
        self, method: str, path: str, user: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = {**kwargs.pop("headers", {}), **(auth(user) if user else {})}
        async with httpx.AsyncClient(base_url=self.api, timeout=15) as http:
            return await http.request(method, path, headers=headers, **kwargs)

    async def pending(self, user: str) -> dict[str, Any]:
        response = await self.call("GET", "/v1/approvals", user)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def open_for(self, user: str, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The request of a run, once the user sees it in their list."""

        async def found() -> dict[str, Any] | None:
            items = (await self.pending(user))["approvals"]
            return next((i for i in items if i["run_id"] == run_id), None)

        return dict(await until(found, f"{user} sees a request of {run_id}", timeout))

    async def decide(
        self, user: str, approval_id: str, verdict: str, reason: str | None = None, **more: Any
    ) -> httpx.Response:
        body: dict[str, Any] = {"verdict": verdict, **more}
        if reason is not None:
            body["reason"] = reason
        return await self.call("POST", f"/v1/approvals/{approval_id}/decision", user, json=body)


async def submit(
    cluster: Cluster, run_id: str, workflow: str, *, tenant: str = "default", **input: Any
) -> None:
    task = TaskSubmitted(task_id=run_id, workflow=workflow, input=input, tenant=tenant)
    async with BatonClient(cluster.bootstrap, cluster.catalog) as client:
        await client.send([task])


async def result_of(cluster: Cluster, run_id: str, timeout: float = 30.0) -> RunResult:
    async def found() -> RunResult | None:
        return next((r for r in await all_results(cluster) if r.run_id == run_id), None)

    result: RunResult = await until(found, f"a result for {run_id}", timeout)
    return result


async def events_of(
    cluster: Cluster, run_id: str, type_: str, *, once: str | None = None
) -> list[RunEvent]:
    """The run's events of one type, read once an event of type ``once`` is there.

    ``once`` is ``type_`` unless said: to check that there is none, name an event that says the
    moment has come (``run_completed``, say), else the wait ends in an AssertionError.
    """
    events = await poll_run_events(cluster, run_id, has(once or type_))
    return [e for e in events if e.type == type_]


async def publish(cluster: Cluster, *decisions: ApprovalDecision) -> None:
    """Publish decisions to the topic directly, as any other system could."""
    codec = Codec()
    topic = cluster.catalog.approvals_decided
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    await producer.start()
    try:
        for decision in decisions:
            await producer.send_and_wait(
                topic.name,
                codec.encode(decision),
                key=decision.run_id.encode(),
                partition=partition_for(decision.run_id, topic.partitions),
            )
    finally:
        await producer.stop()


def signed(
    approval_id: str,
    approver: str,
    verdict: str = "approve",
    key: str = KEY,
    *,
    digest: str,
    **more: Any,
) -> ApprovalDecision:
    """A decision signed as any system holding a key would: for the request with ``digest``."""
    return sign_decision(
        approval_id=approval_id,
        run_id=approval_id.split("/")[0],
        request_digest=digest,
        verdict=verdict,
        approver=approver,
        reason=more.get("reason"),
        key_id=more.get("key_id", "k1"),
        key=key.encode(),
        decided_at=more.get("decided_at"),
        payload=more.get("payload"),
    )


def new_run(name: str) -> str:
    """A fresh run id that says what the run is for."""
    return f"{name}-{uuid.uuid4().hex[:8]}"
