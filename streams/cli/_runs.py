"""``baton submit`` and ``baton runs show``."""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams._client import BatonClient
from streams.cli._http import TOKEN_HELP, call_api
from streams.cli._main import console, settings
from streams.cli._usage import usd
from streams.localkafka import resolve_bootstrap
from topics import (
    ConfigurationError,
    ControlAction,
    ControlCommand,
    PermanentError,
    RetryableError,
    RunResult,
    TaskSubmitted,
    describe_validation_error,
)

__all__ = ["print_result", "runs_group", "steps_table", "submit"]


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
    async with BatonClient(bootstrap, config.catalog()) as client:
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
        cached = f" (cached, saved {usd(step.usage.saved_usd)})" if step.usage.cached else ""
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


def _cache_cell(usage: dict[str, Any]) -> str:
    saved = Decimal(str(usage.get("saved_usd", 0)))
    if usage.get("cached"):
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
    async with BatonClient(bootstrap, config.catalog()) as client:
        await client.send(commands)


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
