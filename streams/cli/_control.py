"""``baton control``: pause and resume a tenant or a workflow, change a tenant's caps.

Each command is a ``ControlCommand`` on the control topic, keyed by its scope; every worker
reads it (docs/operations.md, "Pausing tenants and workflows"). ``show`` reads the topic
the way a worker does and prints what is in force.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import click
from pydantic import ValidationError
from rich.markup import escape

from streams._client import BatonClient
from streams.cli._main import console, settings
from streams.coordinator._control import ControlBook
from streams.coordinator._control_feed import ControlFollower
from streams.localkafka import resolve_bootstrap
from topics import ConfigurationError, ControlAction, ControlCommand, describe_validation_error

__all__ = ["control_group"]


@click.group("control")
def control_group() -> None:
    """Pause and resume tenants and workflows; change tenants' caps at run time."""


def _scope_options(f: Any) -> Any:
    f = click.option("--reason", default=None, help="Why (recorded in the runs' events).")(f)
    f = click.option("--workflow", default=None, help="The workflow (by name).")(f)
    f = click.option("--tenant", default=None, help="The tenant.")(f)
    return f


@control_group.command("pause")
@_scope_options
def pause(tenant: str | None, workflow: str | None, reason: str | None) -> None:
    """Pause a tenant or a workflow: its runs finish the step in flight, then wait."""
    _issue(ControlAction.pause, tenant=tenant, workflow=workflow, reason=reason)


@control_group.command("resume")
@_scope_options
def resume(tenant: str | None, workflow: str | None, reason: str | None) -> None:
    """Resume a tenant or a workflow: its waiting runs go on, the longest held first."""
    _issue(ControlAction.resume, tenant=tenant, workflow=workflow, reason=reason)


@control_group.command("caps")
@click.option("--tenant", required=True, help="The tenant (a name policies.yaml lists, or *).")
@click.option("--max-cost-usd", default=None, help="Its new ceiling over its window, in USD.")
@click.option("--reset", is_flag=True, help="Return to the ceiling policies.yaml sets.")
@click.option("--reason", default=None, help="Why (recorded with the change).")
def caps(tenant: str, max_cost_usd: str | None, reset: bool, reason: str | None) -> None:
    """Change a tenant's ceiling at run time: the next reservation is judged against it."""
    if reset == (max_cost_usd is not None):
        raise click.UsageError("give --max-cost-usd or --reset (one)")
    amount: Decimal | None = None
    if max_cost_usd is not None:
        try:
            amount = Decimal(max_cost_usd)
        except InvalidOperation:
            raise click.BadParameter(
                f"{max_cost_usd!r} is not a number", param_hint="--max-cost-usd"
            ) from None
    _issue(ControlAction.caps, tenant=tenant, max_cost_usd=amount, reason=reason)


@control_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show(as_json: bool) -> None:
    """What is in force: paused tenants and workflows, caps set at run time."""
    view = asyncio.run(_read())
    if as_json:
        console.print_json(json.dumps(view))
        return
    paused = view["paused"]
    if not paused["tenants"] and not paused["workflows"] and not view["caps"]:
        console.print("nothing is paused and no caps are set at run time")
    for scope in ("tenants", "workflows"):
        for name, item in paused[scope].items():
            console.print(
                f"paused {scope[:-1]} {escape(name)} since {item['issued_at']} "
                f"by {escape(item['issued_by'] or '?')}"
                + (f": {escape(item['reason'])}" if item["reason"] else "")
            )
    for name, item in view["caps"].items():
        console.print(
            f"caps {escape(name)}: max_cost_usd {item['max_cost_usd']} "
            f"(since {item['issued_at']}, by {escape(item['issued_by'] or '?')})"
        )


def command_for(action: ControlAction, **fields: Any) -> ControlCommand:
    """A scope command, or a ``ConfigurationError`` saying what is wrong with it."""
    try:
        return ControlCommand(
            command_id=str(uuid.uuid4()),
            action=action,
            issued_at=datetime.now(UTC),
            **fields,
        )
    except ValidationError as exc:
        problem = describe_validation_error(exc).replace("(value): Value error, ", "")
        raise ConfigurationError(f"control {action.value}: {problem}") from None


def _issue(action: ControlAction, **fields: Any) -> None:
    command = command_for(action, issued_by=_who(), **fields)
    config = settings()

    async def send() -> None:
        async with BatonClient(
            resolve_bootstrap(config), config.catalog(), codec=config.codec()
        ) as client:
            await client.send([command])

    asyncio.run(send())
    console.print(f"{action.value} {escape(command.scope or '')} sent ({command.command_id})")


async def _read() -> dict[str, Any]:
    config = settings()
    book = ControlBook()

    async def skip(record: Any, reason: str) -> None:
        console.print(f"[yellow]skipped a record that does not decode:[/] {escape(reason)}")

    follower = ControlFollower(
        bootstrap=resolve_bootstrap(config),
        catalog=config.catalog(),
        codec=config.codec(),
        book=book,
        released=lambda _: None,
        poison=skip,
    )
    await follower.start()
    await follower.stop()
    return book.view()


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
