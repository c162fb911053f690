"""``baton submit`` and ``baton runs list|show|watch|cancel``.

``runs list``, ``show`` and ``watch`` ask a worker's HTTP API as the principal whose token
they are given (``--token`` or ``BATON_TOKEN``): a principal sees its own tenants' runs only.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams._client import BatonClient
from streams.cli._dlq import TIME
from streams.cli._http import TOKEN_HELP, call_api
from streams.cli._main import console, err_console, settings
from streams.cli._usage import usd
from streams.localkafka import resolve_bootstrap
from topics import (
    ConfigurationError,
    ControlAction,
    ControlCommand,
    PermanentError,
    RetryableError,
    RunResult,
    RunStatus,
    TaskSubmitted,
    Usage,
    describe_validation_error,
)

__all__ = ["event_line", "print_result", "runs_group", "steps_table", "submit"]


def _tasks_from(
    file: Path | None, workflow: str | None, raw_input: str | None, task_id: str | None
) -> list[TaskSubmitted]:
    now = datetime.now(UTC).isoformat()
    items: list[dict[str, Any]] = []
    if file is not None:
        text = (
            file.read_text(encoding="utf-8")
            if str(file) != "-"
            else click.get_text_stream("stdin").read()
        )
        stripped = text.strip()
        try:
            if stripped.startswith("["):
                items = json.loads(stripped)
            elif "\n" in stripped:
                items = [json.loads(line) for line in stripped.splitlines() if line.strip()]
            else:
                items = [json.loads(stripped)]
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{file}: not JSON or JSON Lines: {exc}") from None
    if raw_input is not None:
        if workflow is None:
            raise ConfigurationError("--input needs --workflow")
        try:
            items.append({"workflow": workflow, "input": json.loads(raw_input)})
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"--input is not JSON: {exc}") from None
    if not items:
        raise ConfigurationError("give a task file, or --workflow with --input")
    tasks = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigurationError(f"task {index + 1}: must be a JSON object")
        if workflow is not None:
            item.setdefault("workflow", workflow)
        item.setdefault("task_id", task_id if task_id and len(items) == 1 else str(uuid.uuid4()))
        item.setdefault("submitted_at", now)
        try:
            tasks.append(TaskSubmitted.model_validate(item))
        except ValidationError as exc:
            raise ConfigurationError(
                f"task {index + 1}: {describe_validation_error(exc)}"
            ) from None
    return tasks


@click.command("submit")
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--workflow", "-w", help="Workflow to run (default for tasks that name none).")
@click.option("--input", "raw_input", metavar="JSON", help="The input of one task, as JSON.")
@click.option("--id", "task_id", help="Task id (= run id) for a single task; default: random.")
@click.option("--wait", is_flag=True, help="Wait for the results and print them.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait with --wait.")
def submit(
    file: Path | None,
    workflow: str | None,
    raw_input: str | None,
    task_id: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Submit tasks: a JSON file (one task, a list, or JSON Lines), or --workflow --input."""
    config = settings()
    tasks = _tasks_from(file, workflow, raw_input, task_id)
    results = asyncio.run(_submit(config, resolve_bootstrap(config), tasks, wait, timeout))
    if not wait:
        for task in tasks:
            console.print(f"submitted {escape(task.task_id)} ({escape(task.workflow)})")
        return
    for task in tasks:
        result = results.get(task.task_id)
        if result is None:
            console.print(f"[yellow]no result yet[/] for {escape(task.task_id)}")
        else:
            print_result(result)
    missing = len(tasks) - len(results)
    if missing:
        raise RetryableError(f"{missing} of {len(tasks)} results did not arrive in {timeout:g}s")


async def _submit(
    config: Any, bootstrap: str, tasks: list[TaskSubmitted], wait: bool, timeout: float
) -> dict[str, RunResult]:
    async with BatonClient(bootstrap, config.catalog(), codec=config.codec()) as client:
        await client.send(tasks)
        if not wait:
            return {}
        with Progress(
            TextColumn("runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=len(tasks) < 2,
        ) as progress:
            bar = progress.add_task("runs", total=len(tasks))
            return await client.wait(
                [t.task_id for t in tasks], timeout, lambda _: progress.advance(bar)
            )


_STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "rejected": "red",
    "budget_exceeded": "yellow",
    "cancelled": "yellow",
    "running": "cyan",
}


def print_result(result: RunResult) -> None:
    """Print one run result: status, output, and a line per step."""
    style = _STATUS_STYLE.get(result.status.value, "white")
    took = (result.finished_at - result.started_at).total_seconds() * 1000
    console.print(
        f"[bold]{escape(result.run_id)}[/]  [{style}]{result.status.value}[/]  "
        f"{escape(result.workflow)}  {took:.0f} ms  "
        f"{result.usage.input_tokens + result.usage.output_tokens} tokens  "
        f"${result.usage.cost_usd.normalize():f}"
    )
    if result.reason:
        console.print(f"  reason: {escape(result.reason)}")
    for step in result.steps:
        duration = f"{step.duration_ms:.0f} ms" if step.duration_ms is not None else "-"
        tokens = step.usage.input_tokens + step.usage.output_tokens
        route = f" via {step.usage.route}" if step.usage.route else ""
        cached = _cached_note(step.usage) if step.usage.cached else ""
        console.print(
            f"  {escape(step.step):<16} {step.outcome.value:<10} attempts {step.attempts}  "
            f"{duration:>8}  {tokens:>5} tokens  {usd(step.usage.cost_usd)}"
            f"{escape(route)}{cached}"
        )
    if result.output is not None:
        console.print(f"  output: {escape(json.dumps(result.output, ensure_ascii=False))}")


@click.group("runs")
def runs_group() -> None:
    """Inspect runs."""


@runs_group.command("list")
@click.option(
    "--status",
    type=click.Choice(["running", *(status.value for status in RunStatus)]),
    help="Only runs with this status.",
)
@click.option("--workflow", "-w", help="Only runs of this workflow.")
@click.option("--tenant", help="Only runs of this tenant (one you act for).")
@click.option("--since", type=TIME, help="Only runs started at or after (ISO-8601 or 2h).")
@click.option("--search", "-q", "text", help="Part of the run id or workflow name.")
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True)
@click.option("--cursor", help="Where the page starts (the cursor the last page printed).")
@click.option("--all", "every", is_flag=True, help="Every page, not only the first.")
@click.option("--token", envvar="BATON_TOKEN", help=TOKEN_HELP)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the raw JSON (a page, or --all's runs)."
)
def list_runs(
    status: str | None,
    workflow: str | None,
    tenant: str | None,
    since: datetime | None,
    text: str | None,
    limit: int,
    cursor: str | None,
    every: bool,
    token: str | None,
    as_json: bool,
) -> None:
    """List runs, newest first: in flight, and finished within the run retention."""
    params = {
        "status": status,
        "workflow": workflow,
        "tenant": tenant,
        "since": since.isoformat() if since else None,
        "q": text,
        "limit": str(limit),
    }
    query = {name: value for name, value in params.items() if value}
    runs: list[dict[str, Any]] = []
    while True:
        page = call_api("GET", "/v1/runs?" + urlencode(query | _cursor(cursor)), token)
        runs.extend(page["runs"])
        for part in page.get("partial", []):
            err_console.print(f"[yellow]incomplete:[/] {escape(_missing(part))}", highlight=False)
        cursor = page.get("cursor")
        if not every or not cursor:
            break
    if as_json:
        click.echo(json.dumps(runs if every else page, indent=2))
        return
    console.print(runs_table(runs))
    if cursor:
        console.print(f"more: baton runs list ... --cursor {cursor}", highlight=False)


def _cursor(cursor: str | None) -> dict[str, str]:
    return {"cursor": cursor} if cursor else {}


def _missing(part: dict[str, Any]) -> str:
    if part.get("worker"):
        return f"worker {part['worker']} {part.get('error', '')}"
    partitions = ", ".join(str(p) for p in part.get("partitions", []))
    return f"partitions {partitions}: {part.get('error', '')}"


def runs_table(runs: list[dict[str, Any]]) -> Table:
    """Listed runs: status, workflow, tenant, when, how long, tokens, cost, what they wait for."""
    table = Table(title_justify="left")
    for column in ("run", "status", "workflow", "tenant", "started"):
        table.add_column(column)
    for column in ("took", "tokens", "cost"):
        table.add_column(column, justify="right")
    table.add_column("waiting for")
    for run in runs:
        started = datetime.fromisoformat(run["started_at"])
        finished = datetime.fromisoformat(run["finished_at"]) if run["finished_at"] else None
        took = f"{(finished - started).total_seconds():.1f} s" if finished else "-"
        style = _STATUS_STYLE.get(run["status"], "white")
        table.add_row(
            escape(run["run_id"]),
            f"[{style}]{run['status']}[/]",
            escape(run["workflow"]),
            escape(run["tenant"]),
            started.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            took,
            str(run["tokens"]),
            usd(run["cost_usd"]),
            escape(", ".join(run["waiting_for"])),
        )
    return table


@runs_group.command("watch")
@click.argument("run_id")
@click.option("--token", envvar="BATON_TOKEN", help=TOKEN_HELP)
@click.option("--timeout", type=float, help="Give up after this many seconds (default: never).")
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between polls."
)
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
def watch(
    run_id: str, token: str | None, timeout: float | None, interval: float, as_json: bool
) -> None:
    """Follow a run's events as they happen, until it ends (a finished run: its timeline)."""
    path = f"/v1/runs/{quote(run_id, safe='')}/events"
    deadline = time.monotonic() + timeout if timeout is not None else None
    cursor: str | None = None
    seen: set[int] = set()
    ended_at: float | None = None
    while True:
        page = _events_page(path, cursor, token, deadline)
        for event in page["events"]:
            if event["seq"] in seen:
                continue  # delivered twice (at-least-once): shown once
            seen.add(event["seq"])
            if as_json:
                click.echo(json.dumps(event))
            else:
                console.print(event_line(event), highlight=False)
        cursor = page["cursor"]
        if page["status"] != "running":
            # Its last events become readable a moment after its state says it ended.
            ended_at = ended_at or time.monotonic()
            lapsed = time.monotonic() - ended_at > _LAST_EVENTS_S
            if set(range(page["seq"])) <= seen or (lapsed and not page["more"]):
                break
        if deadline is not None and time.monotonic() > deadline:
            raise RetryableError(f"run {run_id!r} is still {page['status']} after {timeout:g}s")
        if not page["more"]:
            time.sleep(interval)
    if not as_json:
        style = _STATUS_STYLE.get(page["status"], "white")
        console.print(f"[bold]{escape(run_id)}[/] ended [{style}]{page['status']}[/]")


#: How long a watch waits for the last events of a run that has ended.
_LAST_EVENTS_S = 5.0
#: How long a watch waits for a run it is asked about to start.
_START_S = 15.0
#: How long a watch waits for an API that cannot answer before it gives up.
_UNAVAILABLE_S = 60.0


def _events_page(
    path: str, cursor: str | None, token: str | None, deadline: float | None
) -> dict[str, Any]:
    """A page of a run's events.

    A run not started yet is waited for (``_START_S``), and so is a worker that cannot
    answer for a while (a takeover, a restart: ``_UNAVAILABLE_S``), or until ``deadline``.
    """
    started = time.monotonic()
    query = "?" + urlencode(_cursor(cursor)) if cursor else ""
    while True:
        try:
            page: dict[str, Any] = call_api("GET", path + query, token)
            return page
        except PermanentError as exc:
            waited = time.monotonic() - started
            if not str(exc).startswith("not found:") or cursor is not None or waited > _START_S:
                raise
        except RetryableError:
            if time.monotonic() - started > _UNAVAILABLE_S:
                raise
        if deadline is not None and time.monotonic() > deadline:
            raise RetryableError("the run's events did not come in time")
        time.sleep(0.5)


_SHOWN = {"run_id", "seq", "type", "at", "workflow", "tenant", "step", "attempt", "detail"}
_SHOWN |= {"duration_ms", "usage", "total_cost_usd", "total_tokens"}


def event_line(event: dict[str, Any]) -> str:
    """One run event for people (rich markup): time, number, type, step, cost, the rest.

    Types it does not know are shown the same way: every field of theirs is printed.
    """
    at = datetime.fromisoformat(event["at"]).astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
    parts = [f"{at}  #{event['seq']:<3} [bold]{escape(event['type'])}[/]"]
    if event.get("step"):
        parts.append(escape(event["step"]))
    if event.get("attempt") is not None:
        parts.append(f"attempt {event['attempt']}")
    if event.get("duration_ms") is not None:
        parts.append(f"{event['duration_ms']:.0f} ms")
    usage = event.get("usage") or {}
    tokens = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
    if tokens or Decimal(str(usage.get("cost_usd", 0))):
        parts.append(f"{tokens} tokens {usd(usage.get('cost_usd', 0))}")
    if usage.get("route"):
        parts.append(f"via {escape(usage['route'])}")
    parts.append(
        f"(run: {event.get('total_tokens', 0)} tokens, {usd(event.get('total_cost_usd', 0))})"
    )
    detail = event.get("detail")
    if detail not in (None, {}, []):
        parts.append(escape(_brief(detail)))
    rest = {k: v for k, v in event.items() if k not in _SHOWN and v is not None}
    if rest:
        parts.append(escape(_brief(rest)))
    return "  ".join(parts)


def _brief(value: Any, limit: int = 240) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@runs_group.command("show")
@click.argument("run_id")
@click.option("--token", envvar="BATON_TOKEN", help=TOKEN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def show(run_id: str, token: str | None, as_json: bool) -> None:
    """Show a run: status, steps with attempts, timing, tokens and cost, output."""
    try:
        view = call_api("GET", f"/v1/runs/{quote(run_id, safe='')}", token)
    except PermanentError as exc:
        if str(exc).startswith("not found:"):
            raise ConfigurationError(f"no run {run_id!r}") from None
        raise
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    style = _STATUS_STYLE.get(view["status"], "white")
    console.print(
        f"[bold]{escape(view['run_id'])}[/]  [{style}]{view['status']}[/]  "
        f"{escape(view['workflow'])} ({view['workflow_version'][:12]})  tenant {view['tenant']}"
    )
    if view.get("reason"):
        console.print(f"reason: {escape(view['reason'])}")
    console.print(steps_table(view))
    if view.get("output") is not None:
        console.print("output: " + escape(json.dumps(view["output"], ensure_ascii=False)))


def steps_table(view: dict[str, Any]) -> Table:
    """A run's steps as ``GET /v1/runs/{id}`` returns them: timing, tokens, cost, route, cache.

    The last row is the run's total (its own usage: every attempt of every step).
    """
    table = Table(title_justify="left")
    table.add_column("step")
    table.add_column("phase")
    for column in ("attempts", "duration", "tokens in", "tokens out", "cost"):
        table.add_column(column, justify="right")
    table.add_column("route")
    table.add_column("cache")
    for step in view["steps"]:
        usage = step.get("usage") or {}
        duration = step.get("duration_ms")
        table.add_row(
            escape(step["step"]),
            step["phase"],
            str(step.get("attempt", 0)),
            f"{duration:.0f} ms" if duration is not None else "-",
            str(usage.get("input_tokens", 0)),
            str(usage.get("output_tokens", 0)),
            usd(usage.get("cost_usd", 0)),
            escape(step.get("route") or usage.get("route") or ""),
            _cache_cell(usage),
        )
    total = view.get("usage") or {}
    hits = sum(1 for step in view["steps"] if (step.get("usage") or {}).get("cached"))
    saved = Decimal(str(total.get("saved_usd", 0)))
    table.add_section()
    table.add_row(
        "total",
        "",
        str(view.get("dispatches", "")),
        "",
        str(total.get("input_tokens", 0)),
        str(total.get("output_tokens", 0)),
        usd(total.get("cost_usd", 0)),
        "",
        f"{hits} {'hit' if hits == 1 else 'hits'}, saved {usd(saved)}" if hits or saved else "",
        style="bold",
    )
    return table


def _recovered(cost: Decimal, saved: Decimal) -> bool:
    """Whether a cached step's answer was its own paid call, recovered (docs/cost.md)."""
    return bool(cost) and not saved


def _cached_note(usage: Usage) -> str:
    """A cached step's note: what it saved, or that it was its own call recovered."""
    if _recovered(usage.cost_usd, usage.saved_usd):
        return " (recovered from the cache)"
    return f" (cached, saved {usd(usage.saved_usd)})"


def _cache_cell(usage: dict[str, Any]) -> str:
    saved = Decimal(str(usage.get("saved_usd", 0)))
    if usage.get("cached"):
        if _recovered(Decimal(str(usage.get("cost_usd", 0))), saved):
            return "recovered"
        return f"hit, saved {usd(saved)}"
    return f"saved {usd(saved)}" if saved else ""


@runs_group.command("cancel")
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--reason", default=None, help="Why (recorded in the result and run events).")
def cancel(run_ids: tuple[str, ...], reason: str | None) -> None:
    """Cancel runs: each ends with a `cancelled` result (a run that ended already is left)."""
    config = settings()
    commands = [
        ControlCommand(
            command_id=str(uuid.uuid4()),
            action=ControlAction.cancel,
            run_id=run_id,
            reason=reason,
            issued_by=_who(),
            issued_at=datetime.now(UTC),
        )
        for run_id in run_ids
    ]
    asyncio.run(_send(config, resolve_bootstrap(config), commands))
    for run_id in run_ids:
        console.print(f"cancel requested for {escape(run_id)}")


async def _send(config: Any, bootstrap: str, commands: list[ControlCommand]) -> None:
    async with BatonClient(bootstrap, config.catalog(), codec=config.codec()) as client:
        await client.send(commands)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
