"""``baton workflows validate|deploy|list|schema``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from processors import ModelCatalog, is_template, load_model_catalog
from processors import installed_kinds as kinds
from streams._config import Settings
from streams._workflows import deploy_workflows, read_workflows
from streams.cli._main import console, settings
from streams.localkafka import resolve_bootstrap
from streams.workflow import (
    LlmStep,
    Workflow,
    WorkflowError,
    check_kinds,
    editor_schema,
    load_workflow,
)
from topics import ConfigurationError

__all__ = ["check_routes", "workflows_group"]


@click.group("workflows")
def workflows_group() -> None:
    """Check, deploy and list workflows."""


def check_routes(workflow: Workflow, models: ModelCatalog, origin: str) -> None:
    """Every fixed ``model:`` route must exist in the model catalog.

    Raises:
        WorkflowError: Names every step whose route is unknown.
    """
    problems = []
    known = ", ".join(sorted(models.routes)) or "none"
    for name, step in workflow.spec.steps.items():
        if not isinstance(step, LlmStep):
            continue
        fixed = (
            [("model", step.model)]
            + [(f"fallback[{i}]", route) for i, route in enumerate(step.fallback)]
            + [(f"routes[{i}].model", rule.model) for i, rule in enumerate(step.routes)]
            + [(f"cascade[{i}]", route) for i, route in enumerate(step.cascade)]
        )
        for field, route in fixed:
            if not is_template(route) and route not in models.routes:
                problems.append(f"steps.{name}.{field}: unknown route {route!r} ({known})")
    if problems:
        raise WorkflowError(origin, problems)


def _load_all(files: tuple[Path, ...], config: Settings) -> list[Workflow]:
    if not files:
        raise ConfigurationError("give at least one workflow file")
    models = load_model_catalog(config.models_file) if config.models_file else None
    installed = kinds()
    loaded, problems = [], []
    for path in files:
        try:
            workflow = load_workflow(path)
            check_kinds(workflow, installed, str(path))
            if models is not None:
                check_routes(workflow, models, str(path))
            loaded.append(workflow)
        except WorkflowError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigurationError("\n".join(problems))
    return loaded


@workflows_group.command("validate")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check workflow files: custom kinds and their params, routes (with BATON_MODELS_FILE)."""
    for workflow in _load_all(files, settings()):
        console.print(
            f"[green]ok[/]  {escape(workflow.name)} v{workflow.spec.version} "
            f"({len(workflow.order)} steps, version {workflow.short_hash})"
        )


@workflows_group.command("deploy")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
def deploy(files: tuple[Path, ...]) -> None:
    """Check, then deploy workflow files; each becomes the latest version of its name."""
    config = settings()
    workflows = _load_all(files, config)
    bootstrap = resolve_bootstrap(config)
    for definition in asyncio.run(
        deploy_workflows(bootstrap, config.catalog(), config.codec(), workflows)
    ):
        console.print(
            f"[green]deployed[/]  {escape(definition.name)} v{definition.version} "
            f"as {definition.content_hash[:12]}"
        )


@workflows_group.command("list")
def list_() -> None:
    """Every deployed version, newest first; the latest of each name is marked."""
    config = settings()
    book = asyncio.run(read_workflows(resolve_bootstrap(config), config.catalog(), config.codec()))
    table = Table(title="deployed workflows", title_justify="left")
    for column in ("workflow", "version", "content hash", "deployed", "by", ""):
        table.add_column(column, no_wrap=column == "workflow")
    for definition, latest in book.deployed():
        table.add_row(
            definition.name,
            str(definition.version),
            definition.content_hash[:12],
            definition.deployed_at.strftime("%Y-%m-%d %H:%M:%S"),
            definition.deployed_by,
            "[green]latest[/]" if latest else "",
        )
    console.print(table)


@workflows_group.command("schema")
@click.option(
    "--installed-kinds",
    is_flag=True,
    help="Spell out the params of the custom step kinds installed here.",
)
def schema(installed_kinds: bool) -> None:
    """Print the JSON Schema of workflow files (for editors)."""
    click.echo(json.dumps(editor_schema(kinds() if installed_kinds else None), indent=2))
