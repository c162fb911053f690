"""The runs view in headless Chromium, against real workers on the real broker.

A reviewer finds a run that waits for a decision, opens its timeline, jumps from the parked
approval to the inbox, decides it there, and goes back to watch the run end; from an
inbox card they open the card's run. A principal of another tenant finds none of it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from playwright.async_api import Browser, Locator, Page, Route, expect

from tests.integration.approvals import (
    TOKENS,
    Reviewers,
    approvals_cluster,
    new_run,
    result_of,
    serving_worker,
    submit,
)
from tests.integration.workers import Cluster, WorkerProcess
from topics import RunStatus

#: How long the page may take to show what the workers know (it polls every two seconds).
SEEN_MS = 30_000


@pytest.fixture(scope="module")
def cluster(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Cluster:
    home = tmp_path_factory.mktemp("runs-view")
    return approvals_cluster(kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}", home)


@pytest.fixture(scope="module")
def worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    with serving_worker(cluster) as started:
        yield started


async def signed_in(
    browser: Browser, worker: WorkerProcess, user: str, errors: list[str] | None = None
) -> Page:
    """A fresh tab signed in as ``user``; its script errors go to ``errors``."""
    context = await browser.new_context(locale="en-US", timezone_id="UTC")
    page = await context.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{worker.api}/")
    await page.get_by_label("Reviewer token").fill(TOKENS[user])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("reviewer")).to_have_text(
        f"Signed in as user:{user}", timeout=SEEN_MS
    )
    return page


async def search(page: Page, text: str) -> None:
    await page.get_by_test_id("nav-runs").click()
    await expect(page.get_by_test_id("runs")).to_be_visible()
    await page.get_by_label("Search").fill(text)
    await page.get_by_role("button", name="Search").click()


def timeline_type(page: Page, event_type: str) -> Locator:
    return page.locator(f'[data-testid="event"][data-type="{event_type}"]')


async def test_a_reviewer_finds_a_parked_run_follows_its_timeline_and_decides_it(
    cluster: Cluster, worker: WorkerProcess, browser: Browser
) -> None:
    batch = uuid.uuid4().hex[:6]
    parked, done, other = f"park-{batch}", f"paid-{batch}", f"acme-{batch}"
    await submit(cluster, done, "payouts", amount=5)
    await submit(cluster, other, "refund", tenant="acme", amount=9)
    await submit(cluster, parked, "refund", amount=42)
    request = await Reviewers(worker.api).open_for("alice", parked, timeout=60)
    assert (await result_of(cluster, done, timeout=60)).status == RunStatus.completed
    approval_id = request["approval_id"]

    errors: list[str] = []
    alice = await signed_in(browser, worker, "alice", errors)
    await search(alice, batch)
    rows = alice.get_by_test_id("run-row")
    await expect(rows).to_have_count(2, timeout=SEEN_MS)  # acme's run is not hers
    row = alice.locator(f'[data-testid="run-row"][data-run-id="{parked}"]')
    await expect(row.get_by_test_id("run-row-status")).to_have_text("running")
    await expect(row.get_by_test_id("run-row-waiting")).to_have_text(f"decision {approval_id}")
    # Filters narrow it: only the completed one.
    await alice.get_by_label("Status").select_option("completed")
    await alice.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(1, timeout=SEEN_MS)
    await expect(rows.get_by_test_id("run-link")).to_have_text(done)
    await alice.get_by_label("Status").select_option("")
    await alice.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(2, timeout=SEEN_MS)

    # The run's timeline: what happened so far, and what it waits for.
    await row.get_by_role("link", name=parked).click()
    await expect(alice.get_by_test_id("run-id")).to_have_text(parked)
    await expect(alice.get_by_test_id("run-status")).to_have_text("running")
    await expect(alice.get_by_test_id("timeline-state")).to_have_text("(live)", timeout=SEEN_MS)
    for event_type in ("run_started", "step_succeeded", "approval_requested"):
        await expect(timeline_type(alice, event_type).first).to_be_visible(timeout=SEEN_MS)
    asked = timeline_type(alice, "approval_requested")
    await expect(asked.get_by_test_id("event-what")).to_contain_text("approve")
    await expect(asked.get_by_test_id("event-fields")).to_contain_text(approval_id)
    waiting = alice.get_by_test_id("run-approval")
    await expect(waiting).to_contain_text(f"approve: refund of 42 USD · {approval_id}")

    # Jump to the request in the inbox and decide it there.
    await waiting.get_by_role("link", name="Decide in the inbox").click()
    await expect(alice.get_by_test_id("inbox")).to_be_visible()
    card = alice.locator(f'[data-testid="approval"][data-approval-id="{approval_id}"]')
    await expect(card).to_have_class("approval focused", timeout=SEEN_MS)
    await expect(card.get_by_label("Your reason")).to_be_focused()
    await card.get_by_label("Your reason").fill("checked from the runs view")
    await card.get_by_role("button", name="Approve").click()
    await expect(card).to_have_count(0, timeout=SEEN_MS)

    # Back to the run: it goes on and ends, and its timeline says so.
    await alice.go_back()
    await expect(alice.get_by_test_id("run-id")).to_have_text(parked)
    await expect(alice.get_by_test_id("timeline-state")).to_have_text(
        "(ended completed)", timeout=SEEN_MS
    )
    await expect(alice.get_by_test_id("run-status")).to_have_text("completed")
    decided = timeline_type(alice, "approval_decided")
    await expect(decided.get_by_test_id("event-fields")).to_contain_text("user:alice")
    await expect(timeline_type(alice, "run_completed")).to_have_count(1)
    await expect(alice.get_by_test_id("run-waiting")).to_be_hidden()
    events = alice.get_by_test_id("event")
    count = await events.count()
    seqs = [await events.nth(i).locator('[data-field="seq"]').text_content() for i in range(count)]
    assert seqs == [f"#{i}" for i in range(count)]
    assert (await result_of(cluster, parked)).status == RunStatus.completed
    assert errors == []


async def test_an_inbox_card_opens_its_run_and_another_tenant_sees_none_of_it(
    cluster: Cluster, worker: WorkerProcess, browser: Browser
) -> None:
    run_id = new_run("card")
    await submit(cluster, run_id, "refund", amount=17)
    request = await Reviewers(worker.api).open_for("alice", run_id, timeout=60)
    alice = await signed_in(browser, worker, "alice")
    card = alice.locator(f'[data-testid="approval"][data-approval-id="{request["approval_id"]}"]')
    await card.get_by_test_id("approval-run-link").click()
    await expect(alice.get_by_test_id("run-id")).to_have_text(run_id)
    await expect(timeline_type(alice, "approval_requested")).to_have_count(1, timeout=SEEN_MS)

    ana = await signed_in(browser, worker, "ana")  # acme's only
    await search(ana, run_id)
    await expect(ana.get_by_test_id("runs-empty")).to_be_visible(timeout=SEEN_MS)
    await expect(ana.get_by_test_id("run-row")).to_have_count(0)
    await ana.goto(f"{worker.api}/#/runs/{run_id}")
    await expect(ana.get_by_test_id("error")).to_contain_text(
        f"user:ana may not see run '{run_id}'", timeout=SEEN_MS
    )
    await expect(ana.get_by_test_id("timeline").get_by_test_id("event")).to_have_count(0)


async def test_an_event_type_the_page_does_not_know_is_shown_with_its_fields(
    cluster: Cluster, worker: WorkerProcess, browser: Browser
) -> None:
    run_id = new_run("unknown-type")
    await submit(cluster, run_id, "payouts", amount=4)
    await result_of(cluster, run_id, timeout=60)
    alice = await signed_in(browser, worker, "alice")

    async def with_a_new_type(route: Route) -> None:
        # The worker's real answer, with one event of a type added after this page was made.
        answer = await route.fetch()
        page = await answer.json()
        page["seq"] += 1
        if not page["events"] or page["events"][0]["seq"] != 0:
            await route.fulfill(response=answer, json=page)
            return
        page["events"].insert(
            1,
            {
                **page["events"][0],
                "seq": 1,
                "type": "run.paused",
                "step": "draft",
                "detail": {"waiting_for": "retry", "tier": "5s"},
                "resume_at": "2026-12-02T10:00:05Z",
            },
        )
        for event in page["events"][2:]:
            event["seq"] += 1
        await route.fulfill(response=answer, json=page)

    await alice.route(f"**/v1/runs/{run_id}/events*", with_a_new_type)
    await alice.goto(f"{worker.api}/#/runs/{run_id}")
    await expect(alice.get_by_test_id("timeline-state")).to_have_text(
        "(ended completed)", timeout=SEEN_MS
    )
    paused = timeline_type(alice, "run.paused")
    await expect(paused.get_by_test_id("event-type")).to_have_text("run.paused")
    await expect(paused.get_by_test_id("event-what")).to_contain_text("draft")
    await expect(paused.get_by_test_id("event-fields")).to_have_text(
        '{"detail":{"waiting_for":"retry","tier":"5s"},"resume_at":"2026-12-02T10:00:05Z"}'
    )
    await expect(timeline_type(alice, "run_completed")).to_have_count(1)
