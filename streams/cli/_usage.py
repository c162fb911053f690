"""``baton usage``: tokens, cost and cache savings over a window, by tenant, workflow or route."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import click
from rich.markup import escape
from rich.table import Table

from streams._usage import GROUPINGS, Grouping, UsageLine, read_usage
from streams.cli._main import console, settings
from streams.localkafka import resolve_bootstrap
from streams.workflow import parse_duration
from topics import ConfigurationError

__all__ = ["usage", "usd"]


def usd(value: Decimal | str | float | int) -> str:
    """Money for people: ``$0.0024``, exact (no float rounding), ``$0`` for nothing."""
    amount = Decimal(str(value))
    return f"${amount.normalize():f}" if amount else "$0"


@click.command("usage")
@click.option(
    "--window",
    default="24h",
    show_default=True,
    help="How far back to look: seconds, or 30m, 24h, 7d (at most the run events' 30 days).",
)
@click.option(
    "--by",
    "by",
    type=click.Choice(GROUPINGS),
    default="tenant",
    show_default=True,
    help="What to group by.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (money as exact strings).")
def usage(window: str, by: Grouping, as_json: bool) -> None:
    """Tokens, cost and cache savings of the model steps of every run, over a window.

    Sums the usage the run events recorded (what the runs themselves were charged), by
    tenant, workflow or model route. A cached step used no tokens and cost nothing; what it
    would have cost is in `saved`.
    """
    try:
        seconds = parse_duration(window)
    except ValueError as exc:
        raise ConfigurationError(f"--window: {exc}") from None
    config = settings()
    until = datetime.now(UTC)
    since = until - timedelta(seconds=seconds)
    report = asyncio.run(read_usage(resolve_bootstrap(config), config.catalog(), since, until, by))
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
        return
    table = Table(
        title=f"usage by {by}, {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC",
        title_justify="left",
    )
    table.add_column(by)
    for column in ("steps", "cached", "tokens in", "tokens out", "cost", "saved"):
        table.add_column(column, justify="right")
    for line in report.lines:
        table.add_row(*_cells(line))
    table.add_section()
    table.add_row(*_cells(report.total), style="bold")
    console.print(table)
    if report.skipped:
        console.print(f"[yellow]{report.skipped} records were not run events and were skipped[/]")


def _cells(line: UsageLine) -> list[str]:
    return [
        escape(line.group),
        str(line.steps),
        str(line.cached),
        f"{line.input_tokens:,}",
        f"{line.output_tokens:,}",
        usd(line.cost_usd),
        usd(line.saved_usd),
    ]
