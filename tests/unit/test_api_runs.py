"""``GET /v1/runs``: every coordinator's runs, merged, filtered, paged and scoped to tenants.

Runs come from run states held by runtimes that are not started, as in
``test_api_approvals``; a second runtime plays the other coordinator. A run's events
(``/v1/runs/{id}/events``) are read from Kafka, so tests/integration covers their reading;
here, who may ask and what a bad request gets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from streams._access import Identity
from streams._runs import MAX_LIMIT, QueryError, RunLister, RunQuery, decode_cursor, merge_pages
from streams.cli._runs import event_line
from streams.coordinator import RunState
from streams.coordinator._store import PartitionStore, pack, summary
from tests.unit.test_api_approvals import (
    PARTITIONS,
    access,
    auth,
    hold,
    runtime,
    serving,
    waiting,
    worker_call,
)
from topics import RunStatus, Usage, partition_for

#: Later than the runs ``waiting`` makes (test_decide's T0).
T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def run(
    run_id: str,
    *,
    minute: int,
    tenant: str = "default",
    workflow: str = "payouts",
    status: RunStatus | None = RunStatus.completed,
) -> RunState:
    started = T0 + timedelta(minutes=minute)
    return RunState(
        run_id=run_id,
        workflow=workflow,
        tenant=tenant,
        status=status,
        started_at=started,
        finished_at=started + timedelta(seconds=3) if status else None,
        usage=Usage(input_tokens=10, output_tokens=5, cost_usd="0.0042"),
    )


async def test_runs_are_listed_newest_first_from_every_coordinator_a_page_at_a_time(
    tmp_path: Path,
) -> None:
    reviewers = access(tmp_path)
    here, there = runtime(reviewers, owns={0, 1}), runtime(reviewers, owns={2, 3})
    made = [run(f"run-{i:02d}", minute=i) for i in range(9)]
    for state in made:
        hold(here if partition_for(state.run_id, PARTITIONS) in here.ready else there, state)
    newest_first = [s.run_id for s in reversed(made)]
    async with serving(there) as _, serving(here) as client:
        here.assignor.owners = {0: here.url, 1: here.url, 2: there.url, 3: there.url}
        listed = (await client.get("/v1/runs", headers=auth("alice"))).json()
        assert [r["run_id"] for r in listed["runs"]] == newest_first
        assert listed["cursor"] is None and listed["partial"] == []
        first = listed["runs"][0]
        assert first == {
            "run_id": "run-08",
            "workflow": "payouts",
            "tenant": "default",
            "status": "completed",
            "started_at": "2026-11-01T09:08:00+00:00",
            "finished_at": "2026-11-01T09:08:03+00:00",
            "tokens": 15,
            "cost_usd": "0.004200000000",
            "reason": None,
            "waiting_for": [],
            "labels": {},
        }
        seen: list[str] = []
        cursor = None
        while True:
            params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/v1/runs", params=params, headers=auth("alice"))).json()
            assert len(page["runs"]) <= 2
            seen += [r["run_id"] for r in page["runs"]]
            cursor = page["cursor"]
            if cursor is None:
                break
        assert seen == newest_first
        # Asked by another worker: its own runs only, and whether it has more.
        local = await client.get(
            "/v1/runs?limit=2", headers=worker_call("GET", "/v1/runs?limit=2", "user:alice")
        )
        mine = [s.run_id for s in reversed(made) if partition_for(s.run_id, PARTITIONS) in {0, 1}]
        assert [r["run_id"] for r in local.json()["runs"]] == mine[:2]
        assert local.json()["more"] is (len(mine) > 2)
        # A coordinator that does not answer is named; the list does not wait for it.
        gone = "http://127.0.0.1:9"
        here.assignor.owners = {0: here.url, 1: here.url, 2: gone, 3: gone}
        partial = (await client.get("/v1/runs", headers=auth("alice"))).json()
    assert [p["worker"] for p in partial["partial"]] == [gone]
    assert [r["run_id"] for r in partial["runs"]] == mine


async def test_filters_and_tenants(tmp_path: Path) -> None:
    owner = runtime(access(tmp_path))
    hold(owner, run("paid-1", minute=1))
    hold(owner, run("paid-2", minute=2, status=RunStatus.failed))
    hold(owner, run("acme-1", minute=3, tenant="acme"))
    hold(owner, run("globex-1", minute=4, tenant="globex", workflow="refund"))
    parked = waiting("parked-1").state
    assert parked is not None
    hold(owner, parked)
    async with serving(owner) as client:

        async def ids(user: str, **params: str) -> list[str]:
            answer = await client.get("/v1/runs", params=params, headers=auth(user))
            assert answer.status_code == 200, answer.text
            return [r["run_id"] for r in answer.json()["runs"]]

        assert await ids("alice") == ["parked-1", "paid-2", "paid-1"]
        assert await ids("dana") == ["acme-1"]
        assert await ids("olga") == ["globex-1", "acme-1"]
        assert await ids("olga", tenant="acme") == ["acme-1"]
        assert await ids("root", workflow="refund") == ["globex-1"]
        assert await ids("root", status="failed") == ["paid-2"]
        assert await ids("root", q="PAID") == ["paid-2", "paid-1"]
        assert await ids("root", since="2026-11-01T09:03:00+00:00") == [
            "parked-1",
            "globex-1",
            "acme-1",
        ]
        running = (await client.get("/v1/runs?status=running", headers=auth("alice"))).json()
        assert [(r["run_id"], r["waiting_for"]) for r in running["runs"]] == [
            ("parked-1", ["parked-1/approve/1"])
        ]
        for query, status, error in [
            ("tenant=acme", 403, "user:alice may not act for tenant 'acme'"),
            ("limit=0", 422, f"limit: '0' is not a number from 1 to {MAX_LIMIT}"),
            (f"limit={MAX_LIMIT + 1}", 422, "limit: "),
            ("status=stuck", 422, "status: 'stuck' is not one of running, completed"),
            ("since=yesterday", 422, "since: 'yesterday' is not an ISO-8601 time"),
            ("cursor=***", 422, "cursor: '***' is not a cursor"),
            ("colour=red", 422, "colour: not a filter"),
        ]:
            answer = await client.get(f"/v1/runs?{query}", headers=auth("alice"))
            assert answer.status_code == status, answer.text
            assert answer.json()["error"].startswith(error), answer.text
        for path in ("/v1/runs", "/v1/runs/paid-1/events", "/v1/runs/paid-1/stream"):
            anonymous = await client.get(path)
            assert anonymous.status_code == 401 and "paid" not in anonymous.text
        events = [
            ("/v1/runs/acme-1/events", "alice", 403, "user:alice may not see run 'acme-1'"),
            ("/v1/runs/nope/events", "alice", 404, "no run 'nope'"),
            ("/v1/runs/paid-1/events?cursor=x", "alice", 422, "cursor: 'x' is not"),
            ("/v1/runs/paid-1/events?limit=0", "alice", 422, "limit: '0' is not"),
            ("/v1/runs/acme-1/stream", "alice", 403, "user:alice may not see run 'acme-1'"),
            ("/v1/runs/nope/stream", "alice", 404, "no run 'nope'"),
        ]
        for path, user, status, error in events:
            answer = await client.get(path, headers=auth(user))
            assert answer.status_code == status, answer.text
            assert answer.json()["error"].startswith(error), answer.text


def test_a_finished_run_read_by_a_takeover_is_decoded_once_per_version() -> None:
    store = PartitionStore(0, retention_s=86_400)
    state = run("old-1", minute=1)
    assert store.load("old-1", pack(3, summary(state)), written_at=0, journal=False)
    lister = RunLister()
    everyone = Identity("root", frozenset(), frozenset({"*"}))
    first, more = lister.page([store], RunQuery(), everyone)
    assert [r["run_id"] for r in first] == ["old-1"] and not more
    made = lister._made["old-1"]
    again, _ = lister.page([store], RunQuery(), everyone)
    assert again == first and lister._made["old-1"] is made


def test_queries_and_cursors() -> None:
    query = RunQuery.parse({"status": "running", "since": "2026-11-01T09:00:00", "limit": "7"})
    assert query.since == T0 and query.limit == 7
    assert RunQuery.parse(query.params()) == query
    with pytest.raises(QueryError, match="cursor"):
        decode_cursor("bm9wZQ")  # "nope": no run id in it
    pages = [
        ([{"run_id": "a", "started_at": "2026-11-01T09:01:00+00:00"}], False),
        ([{"run_id": "b", "started_at": "2026-11-01T09:02:00+00:00"}], True),
    ]
    runs, cursor = merge_pages(pages, 1)
    assert [r["run_id"] for r in runs] == ["b"]
    assert cursor is not None
    assert decode_cursor(cursor) == (int((T0 + timedelta(minutes=2)).timestamp() * 1e6), "b")
    assert merge_pages([([], False)], 5) == ([], None)


def test_an_event_type_the_cli_does_not_know_is_shown_with_all_its_fields() -> None:
    line = event_line(
        {
            "run_id": "r1",
            "seq": 4,
            "type": "run.paused",
            "at": "2026-12-01T09:00:01.250000+00:00",
            "step": "approve",
            "attempt": None,
            "usage": None,
            "total_cost_usd": "0.42",
            "total_tokens": 270,
            "detail": {"waiting_for": "approval", "approval_id": "r1/approve/1"},
            "reason": "a person decides",
        }
    )
    assert line.startswith("09:00:01.250  #4   [bold]run.paused[/]  approve")
    assert "(run: 270 tokens, $0.42)" in line
    assert '{"waiting_for":"approval","approval_id":"r1/approve/1"}' in line
    assert '{"reason":"a person decides"}' in line
