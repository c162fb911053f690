"""The root ``baton`` group and the plumbing every command shares."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from streams._config import Settings, load_settings
from topics import BatonError

console = Console()
err_console = Console(stderr=True)


class _Group(click.Group):
    """A click group that turns baton's own errors into a clean message and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatonError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="baton")
def main() -> None:
    """baton: Kafka-native orchestration for AI workflows."""


def settings() -> Settings:
    """The validated settings for this command (environment and ``BATON_CONFIG`` file)."""
    return load_settings()


def _register() -> None:
    # Imported here so that each group module can import ``main`` helpers from this one.
    from streams.cli import (
        _approvals,
        _audit,
        _bench,
        _control,
        _demo,
        _dlq,
        _kafka,
        _runs,
        _schemas,
        _topics,
        _usage,
        _worker,
        _workflows,
    )

    main.add_command(_kafka.kafka)
    main.add_command(_topics.topics_group)
    main.add_command(_schemas.schemas_group)
    main.add_command(_worker.worker)
    main.add_command(_workflows.workflows_group)
    main.add_command(_runs.submit)
    main.add_command(_runs.runs_group)
    main.add_command(_usage.usage)
    main.add_command(_demo.demo)
    main.add_command(_dlq.dlq_group)
    main.add_command(_dlq.replay_command)
    main.add_command(_bench.bench)
    main.add_command(_approvals.approvals_group)
    main.add_command(_control.control_group)
    main.add_command(_audit.audit_group)


_register()
