"""``baton topics create|describe``: the catalog's topics on the cluster."""

from __future__ import annotations

import asyncio

import click
from rich.table import Table

from streams.cli._main import console, settings
from streams.localkafka import resolve_bootstrap
from topics import ConfigurationError, create_topics, describe_topics


@click.group("topics")
def topics_group() -> None:
    """Create and inspect baton's topics."""


@topics_group.command("create")
@click.option(
    "--replication-factor",
    type=click.IntRange(1, 7),
    default=None,
    help="Replicas per topic (default: BATON_REPLICATION_FACTOR, else min(3, brokers)).",
)
def create(replication_factor: int | None) -> None:
    """Create every missing topic; existing ones are left as they are."""
    config = settings()
    bootstrap = resolve_bootstrap(config)
    created, existing = asyncio.run(
        create_topics(
            bootstrap,
            config.catalog(),
            replication_factor=replication_factor or config.replication_factor,
        )
    )
    for name in created:
        console.print(f"[green]created[/]  {name}")
    if existing:
        console.print(f"[dim]{len(existing)} topics already existed[/]")
    console.print(f"{len(created) + len(existing)} topics ready on {bootstrap}")


@topics_group.command("describe")
def describe() -> None:
    """Show every catalog topic: partitions, replicas, cleanup, retention, problems."""
    config = settings()
    bootstrap = resolve_bootstrap(config)
    states = asyncio.run(describe_topics(bootstrap, config.catalog()))
    table = Table(title=f"baton topics on {bootstrap}", title_justify="left")
    table.add_column("topic", no_wrap=True)
    for column in ("partitions", "replicas", "cleanup", "retention", "key", "status"):
        table.add_column(column)
    problems = 0
    for state in states:
        topic = state.topic
        problem = state.problem
        problems += problem is not None
        retention = state.configs.get("retention.ms") or _retention(topic.retention_ms)
        table.add_row(
            topic.name,
            "-" if state.partitions is None else str(state.partitions),
            "-" if state.replication_factor is None else str(state.replication_factor),
            state.configs.get("cleanup.policy", topic.cleanup_policy),
            _retention(int(retention)) if retention and retention.lstrip("-").isdigit() else "-",
            topic.key,
            f"[red]{problem}[/]" if problem else "[green]ok[/]",
        )
    console.print(table)
    if problems:
        raise ConfigurationError(f"{problems} topics need attention: run `baton topics create`")


def _retention(ms: int | str | None) -> str:
    if ms is None:
        return "broker default"
    value = int(ms)
    if value < 0:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if value >= size and value % size == 0:
            return f"{value // size}{unit}"
    return f"{value}ms"
