"""``baton worker``: run a coordinator and processors until stopped."""

from __future__ import annotations

import asyncio

import click

from streams.app import PROCESSOR_KINDS, build_worker
from streams.cli._main import console, settings
from streams.localkafka import resolve_bootstrap
from topics import ConfigurationError, StepKind, create_topics


def _kinds(value: str | None) -> list[StepKind] | None:
    if value is None:
        return None
    if value.strip() == "none":
        return []
    kinds = []
    known = ", ".join(k.value for k in PROCESSOR_KINDS)
    for name in value.split(","):
        try:
            kind = StepKind(name.strip())
        except ValueError:
            raise ConfigurationError(
                f"--processors: unknown step kind {name!r} ({known})"
            ) from None
        if kind not in PROCESSOR_KINDS:
            raise ConfigurationError(f"--processors: no processor for {kind.value} yet ({known})")
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
        roles.append("processors: " + ", ".join(k.value for k in (kinds or PROCESSOR_KINDS)))
    console.print(f"worker [bold]{config.worker_id}[/] on {bootstrap}: " + "; ".join(roles))
    built.run()
