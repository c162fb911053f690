"""Edit and respond end to end: a reviewer changes the tool call that is made, or answers for it.

The workflow, its policy and its tool are the YAML blocks of docs/approvals.md ("The four
answers"), deployed as they are written (the tool's base URL pointed at a loopback tool
server that records every call). The worker is real, on the real broker; reviewers answer
through the HTTP API and the CLI.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from streams.cli._approvals import approvals_group
from streams.cli._main import _Group
from tests.fakes.tool_server import FakeToolServer, Json, RecordedRequest
from tests.integration.approvals import (
    TOKENS,
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
from tests.integration.workers import Cluster, WorkerProcess
from topics import RunStatus

DOCS = Path(__file__).resolve().parents[2] / "docs" / "approvals.md"


def doc_blocks() -> dict[str, str]:
    """The YAML blocks of the docs' "four answers" section, by the file their first line names."""
    text = DOCS.read_text()
    section = text[text.index("## The four answers") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```yaml\n# (\S+)\n(.*?)```", section, re.DOTALL)
    return {name: body for name, body in blocks}


@pytest.fixture(scope="module")
def tool_server() -> Iterator[FakeToolServer]:
    with FakeToolServer() as server:
        server.route(
            "POST",
            "/refunds",
            lambda request: Json({"refund_id": f"rf-{request.body['order']}", **request.body}),
        )
        yield server


@pytest.fixture(scope="module")
def cluster(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, tool_server: FakeToolServer
) -> Cluster:
    blocks = doc_blocks()
    assert set(blocks) == {"tools.yaml", "policies.yaml", "workflows/refund-payment.yaml"}
    home = tmp_path_factory.mktemp("answers")
    tools = yaml.safe_load(blocks["tools.yaml"])
    assert tools["tools"]["payments.refund"]["base_url"] == "https://payments.example.com/api"
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


@pytest.fixture
def reviewers(worker: WorkerProcess) -> Reviewers:
    return Reviewers(worker.api)


def calls_for(server: FakeToolServer, order: str) -> list[RecordedRequest]:
    return [r for r in list(server.requests) if (r.body or {}).get("order") == order]


def cli(worker: WorkerProcess, *args: str, user: str) -> tuple[int, str]:
    root = _Group(name="baton", commands={"approvals": approvals_group})
    env = {"BATON_API_URL": worker.api, "BATON_TOKEN": TOKENS[user], "COLUMNS": "250"}
    result = CliRunner().invoke(root, ["approvals", *args], env=env, catch_exceptions=False)
    return result.exit_code, " ".join(result.output.split())


async def test_an_edit_decision_changes_the_tool_call_that_is_made(
    cluster: Cluster, reviewers: Reviewers, tool_server: FakeToolServer
) -> None:
    run_id = new_run("edit")
    order = f"o-{run_id}"
    await submit(cluster, run_id, "refund-payment", order=order, amount=120)
    item = await reviewers.open_for("alice", run_id)
    assert item["approval_id"] == f"{run_id}/pay/1"
    assert item["reason"] == f"refund of 120 USD for {order}"
    assert item["action"]["tool"] == "payments.refund"
    assert item["action"]["args"] == {"order": order, "amount": 120}
    assert item["action"]["args_schema"]["required"] == ["order", "amount"]
    assert calls_for(tool_server, order) == []  # nothing is called while it waits

    # Bad edits are refused at once, naming the field; nothing is sent.
    path = f"/v1/approvals/{item['approval_id']}/decision"
    for args, error in [
        ({"order": order, "amount": "ninety"}, "payload: args.amount: 'ninety' is not of type"),
        ({"order": order, "amount": 5000}, "args.amount: 5000 is greater than the maximum"),
        ({"order": order}, "args: 'amount' is a required property"),
        ({"order": order, "amount": 120}, "the arguments are the ones shown"),
    ]:
        bad = await reviewers.call("POST", path, "alice", json={"verdict": "edit", "args": args})
        assert bad.status_code == 422, bad.text
        assert error in bad.json()["error"]
    # The coordinator refuses the same bad edit from any other signer (and records it).
    await publish(
        cluster,
        signed(
            item["approval_id"],
            "user:bob",
            "edit",
            digest=item["request_digest"],
            payload='{"order": "x", "amount": "ninety"}',
        ),
    )
    refused = await events_of(cluster, run_id, "approval_refused")
    assert "args.amount: 'ninety' is not of type 'integer'" in refused[0].detail["reason"]  # type: ignore[index,call-overload]

    edited = await reviewers.decide(
        "alice",
        item["approval_id"],
        "edit",
        "90 agreed with the customer",
        args={"order": order, "amount": 90},
        request_digest=item["request_digest"],
    )
    assert edited.status_code == 202, edited.text
    assert edited.json()["verdict"] == "edit"

    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed, result.reason
    calls = calls_for(tool_server, order)
    assert len(calls) == 1 and calls[0].body == {"order": order, "amount": 90}
    key = calls[0].header("idempotency-key")
    assert key is not None and re.fullmatch(rf"{re.escape(run_id)}/pay/edit-[0-9a-f]{{16}}", key)
    assert f"rf-{order}" in str(result.output) and "90" in str(result.output)

    (event,) = await events_of(cluster, run_id, "approval_edited")
    detail = event.detail
    assert isinstance(detail, dict)
    assert detail["approver"] == "user:alice" and detail["reason"] == "90 agreed with the customer"
    assert detail["request_digest"] == item["request_digest"]
    assert detail["args"] == {"order": order, "amount": 90}
    before, after = detail["before"], detail["after"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert before["idempotency_key"] == f"{run_id}/pay" and after["idempotency_key"] == key
    assert before["args_digest"] != after["args_digest"]
    (decided,) = await events_of(cluster, run_id, "approval_decided")
    assert decided.detail["verdict"] == "edit"  # type: ignore[index,call-overload]
    (dispatched,) = [
        e for e in await events_of(cluster, run_id, "step_dispatched") if e.step == "pay"
    ]
    assert dispatched.detail["idempotency_key"] == key  # type: ignore[index,call-overload]


async def test_a_respond_decision_becomes_the_steps_output(
    cluster: Cluster, reviewers: Reviewers, tool_server: FakeToolServer
) -> None:
    run_id = new_run("respond")
    order = f"o-{run_id}"
    await submit(cluster, run_id, "refund-payment", order=order, amount=300)
    item = await reviewers.open_for("bob", run_id)
    answered = await reviewers.decide(
        "bob",
        item["approval_id"],
        "respond",
        "refunded by phone",
        output={"refund_id": "manual-7"},
    )
    assert answered.status_code == 202, answered.text

    result = await result_of(cluster, run_id)
    assert result.status == RunStatus.completed, result.reason
    assert str(result.output).startswith("refunded: ") and "manual-7" in str(result.output)
    events = await events_of(cluster, run_id, "approval_responded", once="run_completed")
    assert len(events) == 1 and events[0].detail["approver"] == "user:bob"  # type: ignore[index,call-overload]
    dispatched = await events_of(cluster, run_id, "step_dispatched", once="run_completed")
    assert [e.step for e in dispatched] == ["note"]  # pay never ran ...
    assert calls_for(tool_server, order) == []  # ... and the tool was never called


async def test_the_cli_edits_and_responds(
    cluster: Cluster, reviewers: Reviewers, worker: WorkerProcess, tool_server: FakeToolServer
) -> None:
    edited_run, answered_run = new_run("cli-edit"), new_run("cli-respond")
    await submit(cluster, edited_run, "refund-payment", order=f"o-{edited_run}", amount=50)
    await submit(cluster, answered_run, "refund-payment", order=f"o-{answered_run}", amount=60)
    edit_id = (await reviewers.open_for("alice", edited_run))["approval_id"]
    respond_id = (await reviewers.open_for("alice", answered_run))["approval_id"]

    code, shown = cli(worker, "show", edit_id, user="alice")
    assert code == 0 and "the call (edit its args): payments.refund" in shown
    assert '"amount": 50' in shown

    code, said = cli(worker, "edit", edit_id, "--args", "[1]", user="alice")
    assert code != 0 and "the arguments must be a JSON object" in said
    code, said = cli(worker, "edit", edit_id, "--args", '{"amount": "x"}', user="alice")
    assert code == 2 and "422" in said and "args.amount" in said
    args = f'{{"order": "o-{edited_run}", "amount": 45}}'
    code, said = cli(worker, "edit", edit_id, "--args", args, "--reason", "less", user="alice")
    assert code == 0 and f"edited {edit_id} as user:alice" in said
    code, said = cli(worker, "respond", respond_id, "--output", '"done by hand"', user="alice")
    assert code == 0 and f"answered {respond_id} as user:alice" in said

    assert (await result_of(cluster, edited_run)).status == RunStatus.completed
    answered = await result_of(cluster, answered_run)
    assert answered.status == RunStatus.completed and answered.output == "refunded: done by hand"
    calls = await until(
        lambda: _async(calls_for(tool_server, f"o-{edited_run}")), "the edited call"
    )
    assert [c.body["amount"] for c in calls] == [45]
    assert calls_for(tool_server, f"o-{answered_run}") == []


async def _async(value: object) -> object:
    return value
