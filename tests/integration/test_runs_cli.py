"""``baton runs list`` and ``baton runs watch`` as people run them, against two real workers.

The runs of one cluster spread over two coordinators; every command asks one worker's API,
which asks the other (or, for a run's events, the run's owner). Principals see their own
tenants' runs only: alice the ``default`` tenant's, ana ``acme``'s.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.approvals import (
    TOKENS,
    Reviewers,
    approvals_cluster,
    auth,
    new_run,
    result_of,
    submit,
    until,
)
from tests.integration.workers import BATON, Cluster, WorkerProcess, Workers
from topics import partition_for

#: Wide enough that rich never wraps a table row or an event line.
WIDE = {"COLUMNS": "250"}


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    home = tmp_path_factory.mktemp("runs-cli")
    return approvals_cluster(kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}", home)


@pytest.fixture(scope="module")
def pool(cluster: Cluster) -> Iterator[Workers]:
    """The module's two workers (a test may restart them)."""
    workers = Workers(cluster)
    _wait_shared(workers.start("w1"), workers.start("w2"), cluster.partitions)
    yield workers
    workers.stop_all()


@pytest.fixture
def two(pool: Workers) -> tuple[WorkerProcess, WorkerProcess]:
    """The two workers running now."""
    first, second = pool.started[-2:]
    return first, second


def _wait_shared(first: WorkerProcess, second: WorkerProcess, partitions: int) -> None:
    """Until the two coordinators serve every partition between them, each some."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        owned = [
            set(httpx.get(f"{w.api}/healthz", timeout=5).json()["partitions"])
            for w in (first, second)
        ]
        if all(owned) and owned[0] | owned[1] == set(range(partitions)):
            return
        time.sleep(0.3)
    raise AssertionError(f"the partitions are not shared:\n{first.log_tail()}\n{second.log_tail()}")


def runs(
    cluster: Cluster, worker: WorkerProcess, user: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """``baton runs ...`` as ``user``, against ``worker``'s API."""
    return cluster.baton(
        "runs", *args, BATON_API_URL=worker.api, BATON_TOKEN=TOKENS[user], COLUMNS="250"
    )


def listed(cluster: Cluster, worker: WorkerProcess, user: str, *args: str) -> list[dict[str, Any]]:
    done = runs(cluster, worker, user, "list", "--all", "--json", *args)
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


async def test_runs_list_filters_pages_and_shows_each_principal_its_tenants_runs(
    cluster: Cluster, two: tuple[WorkerProcess, WorkerProcess]
) -> None:
    first, second = two
    batch = uuid.uuid4().hex[:6]
    paid = [f"pay-{batch}-{i}" for i in range(7)]
    acme = [f"acme-{batch}-{i}" for i in range(3)]
    parked = f"park-{batch}"
    for run_id in paid:
        await submit(cluster, run_id, "payouts", amount=10)
    for run_id in acme:
        await submit(cluster, run_id, "payouts", tenant="acme", amount=20)
    await submit(cluster, parked, "refund", amount=30)
    for run_id in paid + acme:
        assert (await result_of(cluster, run_id, timeout=60)).status.value == "completed"
    request = await Reviewers(first.api).open_for("alice", parked, timeout=60)

    # alice (tenant default) sees her runs from both workers, and never acme's.
    mine = listed(cluster, first, "alice", "--search", batch)
    assert {r["run_id"] for r in mine} == {*paid, parked}
    assert {r["tenant"] for r in mine} == {"default"}
    assert [r["started_at"] for r in mine] == sorted((r["started_at"] for r in mine), reverse=True)
    theirs = listed(cluster, second, "ana", "--search", batch)
    assert {r["run_id"] for r in theirs} == set(acme)

    # Filters: the run waiting for a person, and what it waits for.
    waiting = listed(cluster, second, "alice", "--search", batch, "--status", "running")
    assert [(r["run_id"], r["waiting_for"]) for r in waiting] == [
        (parked, [request["approval_id"]])
    ]
    done = listed(cluster, first, "alice", "-q", batch, "--status", "completed", "-w", "payouts")
    assert {r["run_id"] for r in done} == set(paid)
    assert listed(cluster, first, "alice", "-q", batch, "--since", "1h") == mine
    assert listed(cluster, first, "alice", "-q", batch, "--since", "2099-01-01T00:00:00Z") == []

    # Pages of 3 from either worker: each run once, in order, the last page without a cursor.
    for worker in two:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            args = ["list", "--json", "-q", batch, "--limit", "3"]
            page_run = runs(
                cluster, worker, "alice", *args, *(["--cursor", cursor] if cursor else [])
            )
            assert page_run.returncode == 0, page_run.stderr
            page = json.loads(page_run.stdout)
            assert len(page["runs"]) <= 3 and page["partial"] == []
            seen += [r["run_id"] for r in page["runs"]]
            cursor = page["cursor"]
            if cursor is None:
                break
        assert seen == [r["run_id"] for r in mine]

    # The table, as people read it.
    table = runs(cluster, first, "alice", "list", "-q", batch, "--limit", "4")
    assert table.returncode == 0, table.stderr
    assert sum(run_id in table.stdout for run_id in [*paid, parked]) == 4
    assert "more: baton runs list ... --cursor " in table.stdout
    assert not any(run_id in table.stdout for run_id in acme)

    # Another tenant's runs, a bad filter, no token: refused, and said so.
    refused = runs(cluster, first, "alice", "list", "--tenant", "acme")
    assert refused.returncode == 2 and "not allowed" in refused.stderr, refused.stderr
    async with httpx.AsyncClient(base_url=second.api, timeout=15) as http:
        for query, status, said in [
            ("limit=201", 422, "limit: '201' is not a number from 1 to 200"),
            ("status=stuck", 422, "status: 'stuck' is not one of running, completed"),
            ("cursor=%21%21", 422, "cursor: '!!' is not a cursor"),
            ("colour=red", 422, "colour: not a filter"),
            ("tenant=acme", 403, "user:alice may not act for tenant 'acme'"),
        ]:
            answer = await http.get(f"/v1/runs?{query}", headers=auth("alice"))
            assert answer.status_code == status, answer.text
            assert answer.json()["error"].startswith(said), answer.text
        for headers in ({}, {"Authorization": "Bearer nope"}):
            anonymous = await http.get("/v1/runs", headers=headers)
            assert anonymous.status_code == 401 and batch not in anonymous.text
            events = await http.get(f"/v1/runs/{paid[0]}/events", headers=headers)
            assert events.status_code == 401 and batch not in events.text
        # A run's timeline is its tenant's too, from whichever worker is asked.
        for worker in two:
            other = await http.get(f"{worker.api}/v1/runs/{acme[0]}/events", headers=auth("alice"))
            assert other.status_code == 403, other.text
            unknown = await http.get(
                f"{worker.api}/v1/runs/nope-{batch}/events", headers=auth("alice")
            )
            assert unknown.status_code == 404, unknown.text

    # A worker that does not answer leaves the list incomplete, and named; it does not hang it.
    second.pause()
    try:
        started = time.monotonic()
        partial = runs(cluster, first, "alice", "list", "-q", batch)
        took = time.monotonic() - started
        assert partial.returncode == 0, partial.stderr
        assert f"incomplete: worker {second.api}" in partial.stderr
        assert took < 30, took
        async with httpx.AsyncClient(timeout=15) as http:
            page = (await http.get(f"{first.api}/v1/runs?q={batch}", headers=auth("alice"))).json()
        assert [p["worker"] for p in page["partial"]] == [second.api]
        owned_by_first = set(httpx.get(f"{first.api}/healthz", timeout=5).json()["partitions"])
        assert {r["run_id"] for r in page["runs"]} == {
            r["run_id"] for r in mine if _partition(cluster, r["run_id"]) in owned_by_first
        }
    finally:
        second.resume()


def _partition(cluster: Cluster, run_id: str) -> int:
    return partition_for(run_id, cluster.partitions)


class Watch:
    """``baton runs watch`` running, its output read line by line as it comes."""

    def __init__(self, cluster: Cluster, worker: WorkerProcess, user: str, *args: str) -> None:
        env = cluster.env(BATON_API_URL=worker.api, BATON_TOKEN=TOKENS[user], COLUMNS="250")
        self.process = subprocess.Popen(
            [str(BATON), "runs", "watch", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    async def shows(self, text: str, timeout: float = 60.0) -> str:
        async def found() -> str | None:
            return next((line for line in list(self.lines) if text in line), None)

        line: str = await until(found, f"watch shows {text!r}; it showed {self.lines}", timeout)
        return line

    def ends(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


async def test_runs_watch_follows_a_run_through_its_approval_until_it_ends(
    cluster: Cluster, two: tuple[WorkerProcess, WorkerProcess]
) -> None:
    first, second = two
    _wait_shared(first, second, cluster.partitions)
    run_id = new_run("watched")
    # Watched before its task is sent: the watch waits for the run to start.
    watch = Watch(cluster, second, "alice", run_id)
    try:
        await submit(cluster, run_id, "refund", amount=75)
        await watch.shows("run_started")
        asked = await watch.shows("approval_requested")
        assert "approve" in asked
        assert "ended" not in "\n".join(watch.lines)
        request = await Reviewers(first.api).open_for("alice", run_id, timeout=60)
        decided = await Reviewers(first.api).decide("alice", request["approval_id"], "approve")
        assert decided.status_code == 202, decided.text
        assert watch.ends(timeout=60) == 0, (
            watch.process.stderr.read() if watch.process.stderr else ""
        )
    finally:
        watch.stop()
    out = "\n".join(watch.lines)
    order = ["run_started", "step_succeeded  draft", "approval_requested", "approval_decided"]
    order += ["step_succeeded  send", "run_completed", f"{run_id} ended completed"]
    positions = [out.find(text) for text in order]
    assert -1 not in positions and positions == sorted(positions), out

    # A run that has ended: its whole timeline at once, as JSON lines, each event once.
    replayed = runs(cluster, first, "alice", "watch", run_id, "--json", "--timeout", "60")
    assert replayed.returncode == 0, replayed.stderr
    events = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_completed"
    assert {e["run_id"] for e in events} == {run_id}

    # Another tenant's principal is refused; a run nobody has is not found.
    refused = runs(cluster, second, "ana", "watch", run_id)
    assert refused.returncode == 2 and "not allowed" in refused.stderr, refused.stderr


async def test_a_run_that_ended_before_a_takeover_is_listed_and_its_whole_timeline_watched(
    cluster: Cluster, pool: Workers
) -> None:
    first, second = pool.started[-2:]
    run_id = new_run("before")
    await submit(cluster, run_id, "payouts", amount=3)
    assert (await result_of(cluster, run_id, timeout=60)).status.value == "completed"
    # Both workers restart: what they know of the run now is its summary from run-state.
    first.stop()
    second.stop()
    first, second = pool.start("w1"), pool.start("w2")
    _wait_shared(first, second, cluster.partitions)

    (listed_run,) = listed(cluster, second, "alice", "-q", run_id)
    assert listed_run["status"] == "completed" and listed_run["finished_at"] is not None
    watched = runs(cluster, first, "alice", "watch", run_id, "--json", "--timeout", "60")
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events][0] == "run_started"
    assert [e["type"] for e in events][-1] == "run_completed"
    assert [e["step"] for e in events if e["type"] == "step_succeeded"] == ["draft", "pay"]
