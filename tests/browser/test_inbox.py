"""The approval inbox in headless Chromium, against a real worker on the real broker.

A run drafts a refund with a model (a loopback OpenAI-compatible server that reports usage,
so the run has a cost), then parks at an approval step. Reviewers sign in to the inbox at
``/`` with their bearer tokens, see the request with its context, cost and deadline, and
decide; the page updates by itself, and the run goes on (or ends ``rejected``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from tests.fakes.openai_server import ChatAnswer, FakeOpenAIServer
from tests.integration.approvals import (
    TOKENS,
    Reviewers,
    approvals_cluster,
    events_of,
    new_run,
    result_of,
    serving_worker,
    submit,
)
from tests.integration.workers import Cluster, WorkerProcess
from topics import RunStatus

#: How long the page may take to show what the worker knows (it polls every two seconds).
SEEN_MS = 30_000

#: Per million tokens; 120 prompt and 150 completion tokens make the draft cost $0.42.
MODELS = """
routes:
  strong:
    provider: openai
    model: test-strong
    base_url: {base_url}
    input_usd_per_mtok: 1000
    output_usd_per_mtok: 2000
"""
DRAFT = "Dear customer, your refund is on its way."

WORKFLOW = """
workflow: refund-drafted
version: 1
steps:
  draft: {kind: llm, model: strong, prompt: "Draft a refund of {{ input.amount }} USD",
          max_tokens: 200}
  approve: {kind: approval, after: [draft], approvers: [group:leads], timeout: 1h,
            reason: "refund of {{ input.amount }} USD for {{ input.customer }}"}
  send: {kind: transform, after: [approve], output: "sent: {{ steps.draft.output }}"}
output: "{{ steps.send.output }}"
"""


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        server.reply(ChatAnswer(DRAFT, prompt_tokens=120, completion_tokens=150))
        yield server


@pytest.fixture(scope="module")
def cluster(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAIServer
) -> Cluster:
    home = tmp_path_factory.mktemp("inbox")
    cluster = approvals_cluster(kafka_bootstrap, f"t{uuid.uuid4().hex[:8]}", home)
    cluster.models_file = home / "models.yaml"
    cluster.models_file.write_text(MODELS.format(base_url=provider.base_url))
    workflow = home / "refund-drafted.yaml"
    workflow.write_text(WORKFLOW)
    deployed = cluster.baton("workflows", "deploy", str(workflow))
    assert deployed.returncode == 0, deployed.stderr
    return cluster


@pytest.fixture(scope="module")
def worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    with serving_worker(cluster) as started:
        yield started


async def inbox(browser: Browser, worker: WorkerProcess) -> Page:
    """A fresh tab (its own sessionStorage) on the inbox, in a fixed locale and time zone."""
    context = await browser.new_context(locale="en-US", timezone_id="UTC")
    page = await context.new_page()
    await page.goto(f"{worker.api}/")
    return page


async def sign_in(page: Page, user: str) -> None:
    await expect(page.get_by_test_id("login")).to_be_visible()
    await expect(page.get_by_test_id("session")).to_be_hidden()
    await page.get_by_label("Reviewer token").fill(TOKENS[user])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("reviewer")).to_have_text(
        f"Signed in as user:{user}", timeout=SEEN_MS
    )
    await expect(page.get_by_test_id("login")).to_be_hidden()


def card(page: Page, approval_id: str) -> Locator:
    return page.locator(f'[data-testid="approval"][data-approval-id="{approval_id}"]')


def left_pattern() -> re.Pattern[str]:
    """What an hour's deadline, a little after it was set, shows as time left."""
    return re.compile(r"^\((1h|59m \d+s|5\dm \d+s) left\)$")


async def test_a_reviewer_approves_in_the_inbox_and_the_run_completes(
    cluster: Cluster, worker: WorkerProcess, browser: Browser
) -> None:
    alice = await inbox(browser, worker)
    await sign_in(alice, "alice")
    bob = await inbox(browser, worker)
    await sign_in(bob, "bob")
    # Set on the open pages: a reload would lose it.
    for page in (alice, bob):
        await page.evaluate("window.notReloaded = true")

    run_id = new_run("inbox-approve")
    approval_id = f"{run_id}/approve/1"
    await submit(cluster, run_id, "refund-drafted", amount=250, customer="Ada")

    # The request appears by itself, with what a reviewer needs to decide.
    item = card(alice, approval_id)
    await expect(item).to_be_visible(timeout=SEEN_MS)
    expected = await Reviewers(worker.api).open_for("alice", run_id)
    assert Decimal(str(expected["cost_usd"])) == Decimal("0.42")
    await expect(item.get_by_test_id("approval-workflow")).to_have_text("refund-drafted")
    await expect(item.get_by_test_id("approval-step")).to_have_text("approve")
    await expect(item.get_by_test_id("approval-reason")).to_have_text("refund of 250 USD for Ada")
    await expect(item.get_by_test_id("approval-run")).to_have_text(run_id)
    await expect(item.get_by_test_id("approval-cost")).to_have_text("$0.42")
    deadline = datetime.fromisoformat(expected["deadline"])
    shown = item.get_by_test_id("approval-deadline")
    await expect(shown).to_have_attribute("datetime", expected["deadline"])
    await expect(shown).to_contain_text(f"{deadline.month}/{deadline.day}/{deadline.year}")
    await expect(item.get_by_test_id("approval-left")).to_have_text(left_pattern())
    await expect(item.get_by_test_id("approval-votes")).to_have_text("0 of 1 approvals")
    await expect(item.get_by_test_id("approval-approvers")).to_have_text("group:leads")
    await item.get_by_text("Context").click()
    context = item.get_by_test_id("approval-context-json")
    await expect(context).to_be_visible()
    await expect(context).to_contain_text('"amount": 250')
    await expect(context).to_contain_text(f'"output": "{DRAFT}"')
    await expect(card(bob, approval_id)).to_be_visible(timeout=SEEN_MS)

    await item.get_by_label("Your reason").fill("within the refund policy")
    await item.get_by_role("button", name="Approve").click()
    await expect(item).to_have_count(0, timeout=SEEN_MS)
    await expect(alice.get_by_test_id("notice")).to_have_text(
        f"Approved refund-drafted · approve (run {run_id}) as user:alice."
    )

    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed and result.output == f"sent: {DRAFT}"
    (decided,) = await events_of(cluster, run_id, "approval_decided", once="run_completed")
    assert decided.detail == {
        "approval_id": approval_id,
        "approver": "user:alice",
        "verdict": "approve",
        "reason": "within the refund policy",
    }
    # Bob's open page drops the request too, once the worker no longer lists it.
    await expect(card(bob, approval_id)).to_have_count(0, timeout=SEEN_MS)
    for page in (alice, bob):
        assert await page.evaluate("window.notReloaded === true")
        await expect(page.get_by_test_id("error")).to_be_hidden()


async def test_a_rejection_needs_a_reason_and_ends_the_run(
    cluster: Cluster, worker: WorkerProcess, browser: Browser
) -> None:
    bob = await inbox(browser, worker)
    await sign_in(bob, "bob")
    run_id = new_run("inbox-reject")
    approval_id = f"{run_id}/approve/1"
    await submit(cluster, run_id, "refund-drafted", amount=9000, customer="Bo")
    item = card(bob, approval_id)
    await expect(item).to_be_visible(timeout=SEEN_MS)

    await item.get_by_role("button", name="Reject").click()
    await expect(item.get_by_test_id("item-error")).to_have_text("Give a reason to reject.")
    await expect(item.get_by_label("Your reason")).to_be_focused()
    await expect(item).to_be_visible()

    await item.get_by_label("Your reason").fill("over the limit")
    await item.get_by_role("button", name="Reject").click()
    await expect(item).to_have_count(0, timeout=SEEN_MS)
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.rejected
    assert result.reason == "approve rejected by user:bob: over the limit"


async def test_a_token_nobody_holds_is_turned_away(worker: WorkerProcess, browser: Browser) -> None:
    page = await inbox(browser, worker)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("error")).to_have_text("Enter your reviewer token.")
    await page.get_by_label("Reviewer token").fill("nobody-has-this")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("error")).to_contain_text(
        "Your token was not accepted (the bearer token is not valid)", timeout=SEEN_MS
    )
    await expect(page.get_by_test_id("login")).to_be_visible()
    await expect(page.get_by_test_id("inbox")).to_be_hidden()
    await expect(page.get_by_test_id("session")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('baton.token')") is None


async def test_a_reviewer_of_one_tenant_sees_and_decides_that_tenants_requests_only(
    cluster: Cluster, worker: WorkerProcess, browser: Browser
) -> None:
    ana = await inbox(browser, worker)
    await sign_in(ana, "ana")  # a lead who acts for acme only
    await expect(ana.get_by_test_id("tenants")).to_have_text("for acme")
    ben = await inbox(browser, worker)
    await sign_in(ben, "ben")  # a lead who acts for bravo only
    acme_run, bravo_run = new_run("inbox-acme"), new_run("inbox-bravo")
    acme_id, bravo_id = f"{acme_run}/approve/1", f"{bravo_run}/approve/1"
    # Bravo's request is open first, so every list that shows acme's could have shown it.
    await submit(cluster, bravo_run, "refund-drafted", tenant="bravo", amount=70, customer="Bo")
    await Reviewers(worker.api).open_for("ben", bravo_run)
    await submit(cluster, acme_run, "refund-drafted", tenant="acme", amount=80, customer="Ann")

    mine = card(ana, acme_id)
    await expect(mine).to_be_visible(timeout=SEEN_MS)
    await expect(mine.get_by_test_id("approval-tenant")).to_have_text("acme")
    await expect(mine.get_by_test_id("approval-reason")).to_have_text("refund of 80 USD for Ann")
    await expect(card(ana, bravo_id)).to_have_count(0)
    await expect(ana.get_by_test_id("approval")).to_have_count(1)
    await expect(card(ben, bravo_id)).to_be_visible(timeout=SEEN_MS)
    await expect(card(ben, acme_id)).to_have_count(0)

    await mine.get_by_label("Your reason").fill("fine for acme")
    await mine.get_by_role("button", name="Approve").click()
    await expect(mine).to_have_count(0, timeout=SEEN_MS)
    await expect(ana.get_by_test_id("notice")).to_have_text(
        f"Approved refund-drafted · approve (run {acme_run}) as user:ana."
    )
    result = await result_of(cluster, acme_run)
    assert result.status == RunStatus.completed
    (decided,) = await events_of(cluster, acme_run, "approval_decided")
    assert decided.detail["approver"] == "user:ana"  # type: ignore[index]
    # Bravo's request is still open, and still only ben's to decide.
    await expect(card(ben, bravo_id)).to_be_visible()
    await expect(card(ana, bravo_id)).to_have_count(0)
    await expect(ana.get_by_test_id("error")).to_be_hidden()
    # Its events up to its request: nothing decided it (ben's page still offers it).
    assert not await events_of(cluster, bravo_run, "approval_decided", once="approval_requested")
