"""``baton audit verify``: check runs' hash chains and the anchors over them (docs/audit.md).

Exit status 0 when every chain holds and the anchors agree, 1 when something does not
(each problem named: the run, the event's seq and type, where it was read, the expected
and found hash), 2 for a usage or configuration error.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime
from typing import Any

import click
from rich.markup import escape

from streams._access import load_access
from streams._audit import AuditFindings, AuditSelection, verify_runs
from streams.cli._dlq import TIME
from streams.cli._main import console, settings
from streams.coordinator._batch import ANCHOR_KEY_ID
from streams.localkafka import resolve_bootstrap
from topics import ConfigurationError

__all__ = ["audit_group"]


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit trail of runs."""


@audit_group.command("verify")
@click.argument("run_ids", nargs=-1)
@click.option("--from", "since", type=TIME, help="Runs with an event at or after this time.")
@click.option("--to", "until", type=TIME, help="... and before this time (default: now).")
@click.option("--all", "every", is_flag=True, help="Every run on the topic.")
@click.option("--topic", help="Read run events from this topic (a copy) instead of run-events.")
@click.option("--anchors-topic", help="Read anchors from this topic instead of audit-anchors.")
@click.option("--no-anchors", is_flag=True, help="Check the chains only.")
@click.option("--require-signed", is_flag=True, help="An unsigned anchor is a problem.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(
    run_ids: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    every: bool,
    topic: str | None,
    anchors_topic: str | None,
    no_anchors: bool,
    require_signed: bool,
    as_json: bool,
) -> None:
    """Check that the events of runs are as written: none altered, removed or reordered.

    Give run ids, a time window (--from/--to), or --all. With the worker key in the access
    file (BATON_ACCESS_FILE), signed anchors' signatures are checked too.
    """
    if not run_ids and since is None and until is None and not every:
        raise ConfigurationError("name runs, give --from/--to, or --all")
    if run_ids and (since is not None or until is not None or every):
        raise ConfigurationError("give run ids, or a window (--from/--to), or --all: not both")
    config = settings()
    access = load_access(config.access_file, os.environ) if config.access_file else None
    keys = {ANCHOR_KEY_ID: access.worker_key} if access and access.worker_key else None
    if require_signed and keys is None:
        raise ConfigurationError(
            "--require-signed: the access file names no worker_key to check signatures with"
        )
    selection = AuditSelection(frozenset(run_ids), since, until)
    findings = asyncio.run(
        verify_runs(
            resolve_bootstrap(config),
            config.catalog(),
            selection,
            events_topic=topic,
            anchors_topic=anchors_topic,
            use_anchors=not no_anchors,
            keys=keys,
            require_signed=require_signed,
        )
    )
    if as_json:
        click.echo(json.dumps(_as_json(findings), indent=2))
    else:
        _print(findings, checked_signatures=keys is not None)
    sys.exit(0 if findings.ok else 1)


def _print(findings: AuditFindings, *, checked_signatures: bool) -> None:
    if not findings.reports:
        console.print("[yellow]no runs matched[/]")
    for run_id, report in findings.reports.items():
        if report.broken is not None:
            console.print(
                f"[bold red]BROKEN[/] run {escape(run_id)}: {escape(str(report.broken))}",
                highlight=False,
            )
        elif report.events == 0:
            console.print(f"[yellow]no events[/] run {escape(run_id)}", highlight=False)
        elif not report.hashes:
            console.print(
                f"[yellow]unchained[/] run {escape(run_id)}: {report.events} events carry no "
                "chain link (written before the chain, or a scope's control events)",
                highlight=False,
            )
        else:
            extra = f", {report.duplicates} exact duplicates skipped" if report.duplicates else ""
            if report.unchained:
                extra += f", {report.unchained} written before the chain"
            console.print(
                f"[green]ok[/] run {escape(run_id)}: {report.events} events, "
                f"head {report.head}{extra}",
                highlight=False,
            )
    for problem in findings.anchor_problems:
        console.print(f"[bold red]ANCHOR[/] {escape(problem)}", highlight=False)
    signed = findings.anchors - findings.unsigned
    console.print(
        f"{findings.anchors} anchors read ({signed} signed"
        + (", signatures checked" if checked_signatures and signed else "")
        + ")",
        highlight=False,
    )
    if findings.skipped:
        console.print(f"[yellow]{findings.skipped} records were not run events[/]")


def _as_json(findings: AuditFindings) -> dict[str, Any]:
    runs = {}
    for run_id, report in findings.reports.items():
        broken = report.broken
        runs[run_id] = {
            "ok": report.ok,
            "events": report.events,
            "duplicates": report.duplicates,
            "unchained": report.unchained,
            "head": report.head,
            "last_seq": report.last_seq,
            "first_link": report.first_link,
            "broken": None
            if broken is None
            else {
                "seq": broken.seq,
                "type": broken.type,
                "where": broken.where,
                "problem": broken.problem,
                "expected": broken.expected,
                "found": broken.found,
            },
        }
    return {
        "ok": findings.ok,
        "runs": runs,
        "anchors": findings.anchors,
        "unsigned_anchors": findings.unsigned,
        "anchor_problems": findings.anchor_problems,
        "skipped": findings.skipped,
    }
