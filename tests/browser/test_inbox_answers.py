"""Edit and respond in the inbox, in headless Chromium, against a real worker on the real broker.

The workflow, policy and tool are the docs' (docs/approvals.md, "The four answers"): a refund
call that waits for a lead. One reviewer changes its arguments in the card and the loopback
tool server sees the changed call; another answers instead of it and the tool is never called.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import yaml
from playwright.async_api import Browser, expect

from tests.browser.test_inbox import SEEN_MS, card, inbox, sign_in
from tests.fakes.tool_server import FakeToolServer, Json
from tests.integration.approvals import (
    approvals_cluster,
    events_of,
    new_run,
    result_of,
    serving_worker,
    submit,
)
from tests.integration.test_approval_answers import calls_for, doc_blocks
from tests.integration.workers import Cluster, WorkerProcess
from topics import RunStatus


@pytest.fixture(scope="module")
def tool_server() -> Iterator[FakeToolServer]:
    with FakeToolServer() as server:
        server.route("POST", "/refunds", lambda request: Json({"refund_id": "rf-1"}))
        yield server


@pytest.fixture(scope="module")
def cluster(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tool_server: FakeToolServer
) -> Cluster:
    blocks = doc_blocks()
    home = tmp_path_factory.mktemp("inbox-answers")
    tools = yaml.safe_load(blocks["tools.yaml"])
    tools["tools"]["payments.refund"]["base_url"] = tool_server.url
    (home / "tools.yaml").write_text(yaml.safe_dump(tools))
    return approvals_cluster(
        kafka_bootstrap,
        f"t{uuid.uuid4().hex[:8]}",
        home,
        policies=blocks["policies.yaml"],
        workflows={"refund-payment": blocks["workflows/refund-payment.yaml"]},
        BATON_TOOLS_FILE=str(home / "tools.yaml"),
    )


@pytest.fixture(scope="module")
def worker(cluster: Cluster) -> Iterator[WorkerProcess]:
    with serving_worker(cluster) as started:
        yield started


async def test_a_reviewer_edits_the_call_in_the_inbox_and_that_call_is_made(
    cluster: Cluster, worker: WorkerProcess, browser: Browser, tool_server: FakeToolServer
) -> None:
    alice = await inbox(browser, worker)
    await sign_in(alice, "alice")
    run_id = new_run("inbox-edit")
    order = f"o-{run_id}"
    await submit(cluster, run_id, "refund-payment", order=order, amount=120)
    item = card(alice, f"{run_id}/pay/1")
    await expect(item).to_be_visible(timeout=SEEN_MS)
    await expect(item.get_by_test_id("approval-reason")).to_have_text(
        f"refund of 120 USD for {order}"
    )

    await item.get_by_text("Edit the call").click()
    await expect(item.get_by_test_id("approval-tool")).to_have_text("payments.refund")
    args = item.get_by_label("Arguments (JSON)")
    await expect(args).to_have_value(f'{{\n  "order": "{order}",\n  "amount": 120\n}}')
    # Not JSON: the page says so and sends nothing.
    await args.fill("{amount: 90")
    await item.get_by_role("button", name="Approve with these arguments").click()
    await expect(item.get_by_test_id("item-error")).to_contain_text("The arguments are not JSON")
    # JSON the tool's schema refuses: the server's words, naming the field.
    await args.fill(f'{{"order": "{order}", "amount": "ninety"}}')
    await item.get_by_role("button", name="Approve with these arguments").click()
    await expect(item.get_by_test_id("item-error")).to_contain_text(
        "Not sent, the server says: payload: args.amount: 'ninety' is not of type 'integer'",
        timeout=SEEN_MS,
    )
    await expect(item).to_be_visible()
    # The draft survives the page's polls (every two seconds) until it is sent.
    await alice.wait_for_timeout(2500)
    await expect(args).to_have_value(f'{{"order": "{order}", "amount": "ninety"}}')

    await args.fill(f'{{"order": "{order}", "amount": 90}}')
    await item.get_by_label("Your reason").fill("90 agreed")
    await item.get_by_role("button", name="Approve with these arguments").click()
    await expect(item).to_have_count(0, timeout=SEEN_MS)
    await expect(alice.get_by_test_id("notice")).to_have_text(
        f"Approved with your arguments refund-payment · pay (run {run_id}) as user:alice."
    )
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed, result.reason
    assert [c.body for c in calls_for(tool_server, order)] == [{"order": order, "amount": 90}]
    (edited,) = await events_of(cluster, run_id, "approval_edited")
    assert edited.detail["reason"] == "90 agreed"  # type: ignore[index,call-overload]


async def test_a_reviewer_answers_instead_of_the_call_in_the_inbox(
    cluster: Cluster, worker: WorkerProcess, browser: Browser, tool_server: FakeToolServer
) -> None:
    bob = await inbox(browser, worker)
    await sign_in(bob, "bob")
    run_id = new_run("inbox-respond")
    order = f"o-{run_id}"
    await submit(cluster, run_id, "refund-payment", order=order, amount=40)
    item = card(bob, f"{run_id}/pay/1")
    await expect(item).to_be_visible(timeout=SEEN_MS)

    await item.get_by_text("Answer instead of the step").click()
    await item.get_by_label("The step's output (JSON)").fill('{"refund_id": "manual-7"}')
    await item.get_by_role("button", name="Respond").click()
    await expect(item).to_have_count(0, timeout=SEEN_MS)
    await expect(bob.get_by_test_id("notice")).to_have_text(
        f"Answered refund-payment · pay (run {run_id}) as user:bob."
    )
    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed and "manual-7" in str(result.output)
    assert calls_for(tool_server, order) == []
    await expect(bob.get_by_test_id("error")).to_be_hidden()
