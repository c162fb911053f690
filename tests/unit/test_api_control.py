"""The control endpoints, against a real Faust web app and a runtime that is not started.

Who may pause, resume and change caps (operators, for their tenants; a workflow's pause for
operators of every tenant), the precise errors, and the command each publishes. No Kafka: the
runtime's producer records what it would publish (``tests.unit.test_api_approvals``); the
integration tests publish for real.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from streams._access import Access, load_access
from streams._control_api import CONTROL_GROUP
from streams._policies import Policies
from streams.coordinator import CoordinatorRuntime
from tests.unit.test_api_approvals import Producer, runtime, serving
from tests.unit.test_control import command
from topics import Codec, ControlAction, ControlCommand, partition_for

TOKENS = {"oscar": "oscar-token", "otto": "otto-token", "rita": "rita-token"}
ACCESS = """
principals:
  oscar: {token_env: T_OSCAR, groups: [operators], tenants: "*"}
  otto: {token_env: T_OTTO, groups: [operators], tenants: [acme]}
  rita: {token_env: T_RITA, groups: [leads], tenants: "*"}
"""
POLICIES = Policies.model_validate(
    {"tenants": {"acme": {"max_cost_usd": 5}, "globex": {"workflows": ["*"]}}}
)


def access(tmp_path: Path) -> Access:
    path = tmp_path / "access.yaml"
    path.write_text(ACCESS)
    return load_access(path, {f"T_{u.upper()}": t for u, t in TOKENS.items()})


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"}


@pytest.fixture
def owner(tmp_path: Path) -> CoordinatorRuntime:
    return runtime(access(tmp_path), policies=POLICIES)


def published(owner: CoordinatorRuntime) -> list[tuple[str, str, ControlCommand]]:
    producer = owner.plain
    assert isinstance(producer, Producer)
    sent = []
    for topic, value, key, partition in producer.sent:
        command = Codec().decode(value, ControlCommand)
        assert partition == partition_for(key.decode(), owner.catalog.control.partitions)
        sent.append((topic, key.decode(), command))
    return sent


async def test_an_operator_pauses_and_resumes_a_tenant(owner: CoordinatorRuntime) -> None:
    async with serving(owner) as client:
        paused = await client.post(
            "/v1/control/tenants/acme/pause", json={"reason": "incident 42"}, headers=auth("otto")
        )
        assert paused.status_code == 202, paused.text
        ((topic, key, sent),) = published(owner)
        assert topic == owner.catalog.control.name and key == "tenant/acme"
        assert sent.action == ControlAction.pause and sent.tenant == "acme"
        assert sent.issued_by == "user:otto" and sent.reason == "incident 42"
        assert paused.json() == {
            "command_id": sent.command_id,
            "action": "pause",
            "scope": "tenant/acme",
        }

        # Until this worker's follower has read the pause, a resume has nothing to resume.
        early = await client.post("/v1/control/tenants/acme/resume", headers=auth("otto"))
        assert early.status_code == 409
        assert early.json() == {"error": "tenant 'acme' is not paused"}
        owner.control.apply(sent)
        again = await client.post("/v1/control/tenants/acme/pause", headers=auth("otto"))
        assert again.status_code == 409
        assert again.json() == {"error": "tenant 'acme' is paused already"}

        shown = await client.get("/v1/control", headers=auth("otto"))
        assert shown.status_code == 200
        assert shown.json()["paused"]["tenants"]["acme"]["reason"] == "incident 42"
        resumed = await client.post("/v1/control/tenants/acme/resume", headers=auth("otto"))
        assert resumed.status_code == 202, resumed.text
        assert [c.action for _, _, c in published(owner)] == ["pause", "resume"]


async def test_control_is_for_operators_of_the_tenant(owner: CoordinatorRuntime) -> None:
    async with serving(owner) as client:
        nobody = await client.post("/v1/control/tenants/acme/pause")
        assert nobody.status_code == 401
        lead = await client.post("/v1/control/tenants/acme/pause", headers=auth("rita"))
        assert lead.status_code == 403
        assert lead.json() == {
            "error": "user:rita may not pause, resume or change caps: "
            "that is for the 'operators' group"
        }
        other = await client.post("/v1/control/tenants/globex/pause", headers=auth("otto"))
        assert other.status_code == 403
        assert other.json() == {"error": "user:otto may not act for tenant 'globex'"}
        workflow = await client.post("/v1/control/workflows/triage/pause", headers=auth("otto"))
        assert workflow.status_code == 403
        assert "it reaches every tenant" in workflow.json()["error"]
        assert published(owner) == []

        # What a limited operator sees of the pauses in force: its own tenants only.
        owner.control.apply(command("pause", tenant="globex"))
        owner.control.apply(command("pause", workflow="triage"))
        shown = (await client.get("/v1/control", headers=auth("otto"))).json()
        assert shown["paused"] == {
            "tenants": {},
            "workflows": {"triage": shown["paused"]["workflows"]["triage"]},
        }


async def test_a_workflow_pause_needs_an_operator_of_every_tenant(
    owner: CoordinatorRuntime,
) -> None:
    async with serving(owner) as client:
        paused = await client.post("/v1/control/workflows/triage/pause", headers=auth("oscar"))
        assert paused.status_code == 202, paused.text
        ((_, key, sent),) = published(owner)
        assert key == "workflow/triage" and sent.workflow == "triage" and sent.tenant is None


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/v1/control/tenants/acme/stop", None, 404, "no control action 'stop'"),
        ("POST", "/v1/control/tenants/bad%20name/pause", None, 422, "tenant: "),
        ("POST", "/v1/control/tenants/acme/pause", b"[1]", 400, "body must be a JSON object"),
        ("POST", "/v1/control/tenants/acme/pause", b'{"why": 1}', 422, "why: Extra inputs"),
        ("PUT", "/v1/control/tenants/acme/caps", b"{}", 422, "max_cost_usd: Field required"),
        ("PUT", "/v1/control/tenants/acme/caps", b'{"max_cost_usd": -1}', 422, "max_cost_usd"),
        ("PUT", "/v1/control/tenants/acme/caps", b'{"max_cost_usd": "x"}', 422, "max_cost_usd"),
        ("PUT", "/v1/control/tenants/globex/caps", b'{"max_cost_usd": 1}', 409, "no ceiling"),
        ("PUT", "/v1/control/tenants/initech/caps", b'{"max_cost_usd": 1}', 409, "no ceiling"),
        ("GET", "/v1/control/tenants/acme/caps", None, 405, "Method Not Allowed"),
    ],
)
async def test_control_errors_are_precise(
    owner: CoordinatorRuntime, method: str, path: str, body: bytes | None, status: int, error: str
) -> None:
    async with serving(owner) as client:
        answer = await client.request(method, path, content=body, headers=auth("oscar"))
        assert answer.status_code == status, answer.text
        assert error in answer.json()["error"]
        assert published(owner) == []


async def test_caps_change_a_tenants_ceiling_or_return_it_to_the_policies(
    owner: CoordinatorRuntime,
) -> None:
    async with serving(owner) as client:
        changed = await client.put(
            "/v1/control/tenants/acme/caps",
            json={"max_cost_usd": "12.5", "reason": "quarter end"},
            headers=auth("otto"),
        )
        assert changed.status_code == 202, changed.text
        reset = await client.put(
            "/v1/control/tenants/acme/caps", json={"max_cost_usd": None}, headers=auth("otto")
        )
        assert reset.status_code == 202, reset.text
        (_, key, first), (_, _, second) = published(owner)
        assert key == "caps/acme" and first.action == ControlAction.caps
        assert first.max_cost_usd == Decimal("12.5") and first.reason == "quarter end"
        assert second.max_cost_usd is None


async def test_a_command_that_cannot_be_published_says_so(owner: CoordinatorRuntime) -> None:
    producer = owner.plain
    assert isinstance(producer, Producer)
    producer.failing = True
    async with serving(owner) as client:
        answer = await client.post("/v1/control/tenants/acme/pause", headers=auth("oscar"))
        assert answer.status_code == 503
        assert "could not publish the command" in answer.json()["error"]


def test_the_documented_operators_access_file_gives_control_to_whom_it_says(
    tmp_path: Path,
) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = docs.split("## Pausing tenants and workflows", 1)[1]
    block = section.split("```yaml\n# access.yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "access.yaml"
    path.write_text(block)
    loaded = load_access(path, {"BATON_TOKEN_ONCALL": "t1", "BATON_TOKEN_ACME_OPS": "t2"})
    oncall, acme = loaded.authenticate("t1"), loaded.authenticate("t2")
    assert oncall is not None and acme is not None
    assert CONTROL_GROUP in oncall.groups and CONTROL_GROUP in acme.groups
    assert oncall.acts_for("globex") and not acme.acts_for("globex")
