"""``baton worker``: run a coordinator and processors until stopped."""

from __future__ import annotations

import asyncio

import click

from streams.app import build_worker, processor_kinds
from streams.cli._main import console, settings
from streams.localkafka import resolve_bootstrap
from topics import ConfigurationError, create_topics


def _kinds(value: str | None) -> list[str] | None:
    """The kinds ``--processors`` names: built-in ones and custom kinds installed here."""
    if value is None:
        return None
    if value.strip() == "none":
        return []
    kinds = []
    runnable = processor_kinds()
    known = ", ".join(runnable)
    for name in value.split(","):
        kind = name.strip()
        if kind not in runnable:
            raise ConfigurationError(f"--processors: unknown step kind {kind!r} ({known})")
        kinds.append(kind)
    return kinds


@click.command("worker")
@click.option(
    "--processors",
    metavar="KINDS",
    default=None,
    help="Step kinds to process, comma-separated (llm,validate), or 'none'. Default: all.",
)
@click.option("--no-coordinator", is_flag=True, help="Run processors only.")
@click.option(
    "--loglevel",
    type=click.Choice(["crit", "error", "warn", "info", "debug"]),
    default="info",
    show_default=True,
)
def worker(processors: str | None, no_coordinator: bool, loglevel: str) -> None:
    """Run a worker: the coordinator and step processors, until stopped (Ctrl-C)."""
    config = settings()
    bootstrap = resolve_bootstrap(config)
    kinds = _kinds(processors)
    if no_coordinator and kinds == []:
        raise ConfigurationError("nothing to run: --no-coordinator with --processors none")
    asyncio.run(
        create_topics(bootstrap, config.catalog(), replication_factor=config.replication_factor)
    )
    built = build_worker(config, bootstrap, coordinator=not no_coordinator, kinds=kinds)
    built.loglevel = loglevel
    roles = []
    if built.runtime is not None:
        roles.append(f"coordinator ({config.processing_guarantee}, API on {config.api})")
    if kinds != []:
        roles.append("processors: " + ", ".join(kinds or processor_kinds()))
    console.print(f"worker [bold]{config.worker_id}[/] on {bootstrap}: " + "; ".join(roles))
    built.run()
