"""``baton approvals list|show|approve|reject|edit|respond``: decide requests from a terminal.

The commands talk to a worker's HTTP API (``BATON_API_URL``, default the local worker) as the
reviewer whose bearer token is given by ``--token`` or ``BATON_TOKEN``. ``edit`` approves the
gated tool call with other arguments, ``respond`` answers instead of the step; both take JSON
(``-`` reads it from standard input).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import click
from rich.markup import escape
from rich.table import Table

from streams.cli._http import call_api
from streams.cli._main import console, err_console

__all__ = ["approvals_group"]

_TOKEN_HELP = "Your reviewer token (default: the BATON_TOKEN environment variable)."


def _call(method: str, path: str, token: str | None, body: dict[str, Any] | None = None) -> Any:
    """One API call; an error answer becomes a one-line error naming what went wrong."""
    return call_api(method, path, token, body, what="reviewer token")


def _money(value: Any) -> str:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    return f"${amount.normalize():f}" if amount < Decimal("0.01") else f"${amount:.2f}"


def _left(deadline: str) -> str:
    """Time until a deadline, in its two largest units (``2h 5m``)."""
    seconds = int((datetime.fromisoformat(deadline) - datetime.now(UTC)).total_seconds())
    if seconds <= 0:
        return "due now"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


_YES = ("approve", "edit", "respond")  # each counts as its reviewer's approval


def _votes(item: dict[str, Any]) -> str:
    approvals = [v["approver"] for v in item["votes"] if v["verdict"] in _YES]
    named = f": {', '.join(approvals)}" if approvals else ""
    return f"{len(approvals)}/{item['quorum']}{named}"


def _warn_partial(answer: dict[str, Any]) -> None:
    for part in answer.get("partial", []):
        where = part.get("worker") or f"partitions {part.get('partitions')}"
        err_console.print(
            f"[yellow]incomplete:[/] {escape(str(where))}: {escape(str(part.get('error')))}",
            highlight=False,
        )


@click.group("approvals")
def approvals_group() -> None:
    """See and decide approval requests (as a reviewer: --token or BATON_TOKEN)."""


@approvals_group.command("list")
@click.option("--token", envvar="BATON_TOKEN", help=_TOKEN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def list_approvals(token: str | None, as_json: bool) -> None:
    """The open requests you may decide (and have not yet), soonest deadline first."""
    answer = _call("GET", "/v1/approvals", token)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    _warn_partial(answer)
    items = answer["approvals"]
    if not items:
        console.print(f"nothing waits for {escape(answer['reviewer'])}")
        return
    table = Table(title=f"waiting for {escape(answer['reviewer'])}", title_justify="left")
    for column in ("approval id", "workflow", "step", "reason", "cost", "level", "votes", "left"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(
            escape(item["approval_id"]),
            escape(item["workflow"]),
            escape(item["step"]),
            escape(item["reason"]),
            _money(item["cost_usd"]),
            str(item["level"]),
            escape(_votes(item)),
            _left(item["deadline"]),
        )
    console.print(table)


@approvals_group.command("show")
@click.argument("approval_id")
@click.option("--token", envvar="BATON_TOKEN", help=_TOKEN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def show(approval_id: str, token: str | None, as_json: bool) -> None:
    """One open request: why, who may decide, the votes so far and the context."""
    item = _call("GET", f"/v1/approvals/{quote(approval_id, safe='')}", token)
    if as_json:
        click.echo(json.dumps(item, indent=2))
        return
    console.print(f"[bold]{escape(item['approval_id'])}[/]  {escape(item['reason'])}")
    rows = [
        ("workflow", item["workflow"]),
        ("run", item["run_id"]),
        ("step", item["step"]),
        ("tenant", item["tenant"]),
        ("cost so far", _money(item["cost_usd"])),
        ("deadline", f"{item['deadline']} ({_left(item['deadline'])})"),
        ("level", str(item["level"])),
        ("approvers", ", ".join(item["approvers"])),
        ("votes", _votes(item)),
    ]
    for name, value in rows:
        console.print(f"  {name:<12} {escape(value)}", highlight=False)
    for vote in item["votes"]:
        why = f": {vote['reason']}" if vote.get("reason") else ""
        console.print(f"    {escape(vote['approver'])} {vote['verdict']}{escape(why)}")
    action = item.get("action")
    if isinstance(action, dict):
        console.print(f"the call (edit its args): {escape(str(action.get('tool')))}")
        console.print(escape(json.dumps(action.get("args"), indent=2, ensure_ascii=False)))
    if item.get("response") is not None:
        console.print("proposed output (approve to answer the step with it):")
        console.print(escape(item["response"]))
    console.print("context:")
    console.print(escape(json.dumps(item["context"], indent=2, ensure_ascii=False)))


def _decide(
    approval_id: str, verdict: str, reason: str | None, token: str | None, **more: Any
) -> None:
    body: dict[str, Any] = {"verdict": verdict, **more}
    if reason:
        body["reason"] = reason
    answer = _call("POST", f"/v1/approvals/{quote(approval_id, safe='')}/decision", token, body)
    done = {"approve": "approved", "reject": "rejected", "edit": "edited", "respond": "answered"}
    console.print(
        f"{done[verdict]} {escape(answer['approval_id'])} as {escape(answer['approver'])} "
        "(signed and sent; the run's coordinator records it)"
    )


def _json_option(text: str, option: str) -> Any:
    """The JSON an option gives (``-``: read from standard input).

    Raises:
        click.BadParameter: It is not JSON (the message says where it broke).
    """
    if text == "-":
        text = click.get_text_stream("stdin").read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None


@approvals_group.command("approve")
@click.argument("approval_id")
@click.option("--reason", help="Why (recorded with your vote).")
@click.option("--token", envvar="BATON_TOKEN", help=_TOKEN_HELP)
def approve(approval_id: str, reason: str | None, token: str | None) -> None:
    """Approve a request (one vote towards its quorum)."""
    _decide(approval_id, "approve", reason, token)


@approvals_group.command("reject")
@click.argument("approval_id")
@click.option("--reason", required=True, help="Why (recorded; the run ends `rejected`).")
@click.option("--token", envvar="BATON_TOKEN", help=_TOKEN_HELP)
def reject(approval_id: str, reason: str, token: str | None) -> None:
    """Reject a request: the run ends `rejected`."""
    _decide(approval_id, "reject", reason, token)


@approvals_group.command("edit")
@click.argument("approval_id")
@click.option(
    "--args",
    "args_json",
    required=True,
    help="The tool call's new arguments, a JSON object (- reads it from stdin).",
)
@click.option("--reason", help="Why (recorded with your vote).")
@click.option("--token", envvar="BATON_TOKEN", help=_TOKEN_HELP)
def edit(approval_id: str, args_json: str, reason: str | None, token: str | None) -> None:
    """Approve the gated tool call with other arguments (checked against the tool's schema)."""
    args = _json_option(args_json, "--args")
    if not isinstance(args, dict):
        raise click.BadParameter("the arguments must be a JSON object", param_hint="--args")
    _decide(approval_id, "edit", reason, token, args=args)


@approvals_group.command("respond")
@click.argument("approval_id")
@click.option(
    "--output",
    "output_json",
    required=True,
    help="The step's output instead of running it, JSON (- reads it from stdin).",
)
@click.option("--reason", help="Why (recorded with your vote).")
@click.option("--token", envvar="BATON_TOKEN", help=_TOKEN_HELP)
def respond(approval_id: str, output_json: str, reason: str | None, token: str | None) -> None:
    """Answer instead of the step: the output becomes the step's, and the step does not run."""
    _decide(approval_id, "respond", reason, token, output=_json_option(output_json, "--output"))
