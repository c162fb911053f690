"""``baton schemas register|check``: baton's event schemas in a Schema Registry."""

from __future__ import annotations

import click
from rich.markup import escape

from streams._config import Settings
from streams.cli._main import console, settings
from topics import ConfigurationError
from topics._confluent import RegistryClient, check_schemas, register_schemas


@click.group("schemas")
def schemas_group() -> None:
    """Register and check baton's schemas in the registry BATON_SCHEMA_REGISTRY_URL names."""


def _client() -> tuple[RegistryClient, Settings]:
    config = settings()
    if config.schema_registry_url is None:
        raise ConfigurationError(
            "BATON_SCHEMA_REGISTRY_URL is not set: baton uses its static schema ids "
            "(topics/schemas/registry.json) and no registry"
        )
    return RegistryClient(config.schema_registry_url), config


@schemas_group.command("check")
def check() -> None:
    """Whether every subject can take baton's schema; registers nothing. Exit 1 if not."""
    client, config = _client()
    with client:
        checks = check_schemas(client, config.catalog())
    console.print(f"subjects in {client.name}", highlight=False)
    for item in checks:
        if item.problem:
            state = f"[red]incompatible[/]: {escape(item.problem)}"
        elif item.registered_id is None:
            state = "[yellow]not registered[/]"
        elif item.same:
            state = f"[green]current[/] (id {item.registered_id})"
        else:
            state = f"[green]compatible[/] (id {item.registered_id}; baton's is a new version)"
        # one line per subject, never wrapped into a table's cells: ops grep it
        console.print(
            f"{item.subject}  {item.event.__name__}  {state}", soft_wrap=True, highlight=False
        )
    if any(item.problem for item in checks):
        raise SystemExit(1)


@schemas_group.command("register")
def register() -> None:
    """Register baton's newest schemas (nothing, if any subject cannot take them)."""
    client, config = _client()
    with client:
        ids = register_schemas(client, config.catalog())
    for event, schema_id in sorted(ids.items(), key=lambda item: item[1]):
        console.print(f"[green]registered[/]  {event.__name__}: id {schema_id}")
