"""The operators' control endpoints: pause and resume tenants and workflows, change caps.

- ``GET /v1/control``: the pauses and caps in force, as this worker sees them (its control
  follower's book): the tenants the caller acts for, and every paused workflow.
- ``POST /v1/control/tenants/{tenant}/pause`` and ``.../resume``: body ``{"reason": ...}``
  (optional).
- ``POST /v1/control/workflows/{workflow}/pause`` and ``.../resume``: the same, for a
  workflow (every tenant's runs of it).
- ``PUT /v1/control/tenants/{tenant}/caps``: body ``{"max_cost_usd": "2.50", "reason": ...}``;
  ``null`` returns the tenant to its ceiling in policies.yaml.

Each command is published to the control topic under its scope and answered ``202`` with
its id; every worker applies it within moments (``GET /v1/control`` shows when this one
has). Control is an operator's act: the caller must be in the ``operators`` group
(``CONTROL_GROUP``) of the access file and act for the tenant; a workflow's pause reaches
every tenant, so it needs a principal that acts for every tenant (``tenants: "*"``).

Errors, JSON ``{"error": ...}``: 401 (no or a bad token), 403 (not an operator, or not for
that tenant), 404 (no such action), 400/413/422 (the body, naming the field), 409 (resuming
what is not paused, pausing what is paused, caps of a tenant without a ceiling of its own
in policies.yaml), 503 (the command could not be published).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import faust
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams._access import ALL_TENANTS, Identity
from topics import (
    ControlAction,
    ControlCommand,
    check_tenant,
    describe_validation_error,
    partition_for,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from streams.coordinator import CoordinatorRuntime

__all__ = ["CONTROL_GROUP", "install_control_api"]

#: The access-file group whose principals may pause, resume and change caps.
CONTROL_GROUP = "operators"

_MAX_REASON = 2000


class _CommandBody(BaseModel):
    """The body of a pause or resume."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: str | None = Field(default=None, max_length=_MAX_REASON)


class _CapsBody(BaseModel):
    """The body of a caps change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_cost_usd: Decimal | None = Field(ge=0, allow_inf_nan=False)
    reason: str | None = Field(default=None, max_length=_MAX_REASON)


def install_control_api(
    app: faust.App,
    runtime: CoordinatorRuntime,
    identify: Callable[[Any], Awaitable[Identity]],
) -> None:
    """Add the control endpoints to the worker's app (``identify``: the API's callers)."""
    from streams._api import _json_object, _Refused, _View

    def operator(identity: Identity, *, tenant: str | None) -> None:
        if CONTROL_GROUP not in identity.groups:
            raise _Refused(
                403,
                f"{identity.principal} may not pause, resume or change caps: "
                f"that is for the {CONTROL_GROUP!r} group",
            )
        if tenant is None and ALL_TENANTS not in identity.tenants:
            raise _Refused(
                403,
                f"{identity.principal} may not pause or resume a workflow: it reaches every "
                'tenant, and it does not act for every tenant (tenants: "*")',
            )
        if tenant is not None and not identity.acts_for(tenant):
            raise _Refused(403, f"{identity.principal} may not act for tenant {tenant!r}")

    def tenant_name(value: str) -> str:
        try:
            return check_tenant(value)
        except ValueError as exc:
            raise _Refused(422, f"tenant: {exc}") from None

    def body_of(raw: bytes, model: type[BaseModel], empty_ok: bool) -> Any:
        fields = (
            {} if empty_ok and not raw.strip() else _json_object(raw, "body must be a JSON object")
        )
        try:
            return model.model_validate(fields)
        except ValidationError as exc:
            raise _Refused(422, describe_validation_error(exc)) from None

    def check_state(action: ControlAction, key: str, what: str) -> None:
        paused = key in runtime.control.pauses
        if action == ControlAction.pause and paused:
            raise _Refused(409, f"{what} is paused already")
        if action == ControlAction.resume and not paused:
            raise _Refused(409, f"{what} is not paused")

    async def publish(identity: Identity, **fields: Any) -> dict[str, Any]:
        try:
            command = ControlCommand(
                command_id=str(uuid.uuid4()),
                issued_by=identity.principal,
                issued_at=datetime.now(UTC),
                **fields,
            )
        except ValidationError as exc:
            raise _Refused(422, describe_validation_error(exc)) from None
        scope = command.scope
        assert scope is not None, "a control endpoint makes scope commands"
        topic = runtime.catalog.control
        try:
            await runtime.plain.send_and_wait(
                topic.name,
                runtime.codec.encode(command),
                key=scope.encode(),
                partition=partition_for(scope, topic.partitions),
            )
        except KafkaError as exc:
            raise _Refused(503, f"could not publish the command ({exc}); try again") from None
        return {"command_id": command.command_id, "action": command.action.value, "scope": scope}

    def action_of(value: str) -> ControlAction:
        if value not in (ControlAction.pause.value, ControlAction.resume.value):
            raise _Refused(404, f"no control action {value!r} (pause or resume)")
        return ControlAction(value)

    @app.page("/v1/control")
    class Control(_View):
        """The pauses and caps in force, as this worker sees them."""

        async def get(self, request: Any) -> Any:
            identity = await identify(request)
            view = runtime.control.view()
            view["paused"]["tenants"] = {
                t: v for t, v in view["paused"]["tenants"].items() if identity.acts_for(t)
            }
            view["caps"] = {t: v for t, v in view["caps"].items() if identity.acts_for(t)}
            return self.json(view)

    # Registered before the pause/resume page, whose pattern would match it too.
    @app.page("/v1/control/tenants/{tenant}/caps")
    class TenantCaps(_View):
        """Change a tenant's ceiling at run time."""

        async def put(self, request: Any, tenant: str) -> Any:
            identity = await identify(request)
            name = tenant_name(tenant)
            operator(identity, tenant=name)
            body: _CapsBody = body_of(await request.read(), _CapsBody, empty_ok=False)
            policies = runtime.policies
            if policies.account(name) != name:
                raise _Refused(
                    409,
                    f"tenant {name!r} has no ceiling of its own in policies.yaml (tenants:): "
                    "caps at run time change a ceiling policies.yaml sets",
                )
            accepted = await publish(
                identity,
                action=ControlAction.caps,
                tenant=name,
                max_cost_usd=body.max_cost_usd,
                reason=body.reason,
            )
            return self.json(accepted, status=202)

    @app.page("/v1/control/tenants/{tenant}/{action}")
    class TenantCommand(_View):
        """Pause or resume a tenant."""

        async def post(self, request: Any, tenant: str, action: str) -> Any:
            identity = await identify(request)
            what = action_of(action)
            name = tenant_name(tenant)
            operator(identity, tenant=name)
            body: _CommandBody = body_of(await request.read(), _CommandBody, empty_ok=True)
            check_state(what, f"tenant/{name}", f"tenant {name!r}")
            accepted = await publish(identity, action=what, tenant=name, reason=body.reason)
            return self.json(accepted, status=202)

    @app.page("/v1/control/workflows/{workflow}/{action}")
    class WorkflowCommand(_View):
        """Pause or resume a workflow."""

        async def post(self, request: Any, workflow: str, action: str) -> Any:
            identity = await identify(request)
            what = action_of(action)
            operator(identity, tenant=None)
            body: _CommandBody = body_of(await request.read(), _CommandBody, empty_ok=True)
            check_state(what, f"workflow/{workflow}", f"workflow {workflow!r}")
            accepted = await publish(identity, action=what, workflow=workflow, reason=body.reason)
            return self.json(accepted, status=202)
