"""``baton dlq list|show|replay`` and ``baton replay``: dead letters, and topic ranges again.

Times (``--since``, ``--until``, ``--from``) are ISO-8601 (``2025-05-01T12:00:00Z``; a time
without a zone is UTC) or a duration ago (``90s``, ``30m``, ``2h``, ``1d``, ``1w``). Times
are shown in UTC.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams._deadletters import DeadLetterFilter, is_exhausted_step, read_dead_letters
from streams._replay import Redrive, replay_letters, replay_range
from streams.cli._main import console, settings
from streams.localkafka import resolve_bootstrap
from topics import (
    EVENT_TYPES,
    Codec,
    ConfigurationError,
    DeadLetter,
    DecodeError,
    TaskSubmitted,
    TopicCatalog,
)

__all__ = [
    "TimeParam",
    "decode_payload",
    "dlq_group",
    "letter_json",
    "parse_time",
    "preview",
    "replay_command",
]

F = TypeVar("F", bound=Callable[..., Any])

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_EVENT_TYPES = {event_type.__name__: event_type for event_type in EVENT_TYPES}
#: Ranges longer than this many records get a progress bar.
_PROGRESS_FROM = 500


def parse_time(text: str, now: datetime) -> datetime:
    """A point in time from ISO-8601 (naive means UTC), ``now``, or a duration ago (``2h``).

    Raises:
        ConfigurationError: Neither form; the message shows both.
    """
    stripped = text.strip()
    if stripped.lower() == "now":
        return now
    relative = _DURATION.match(stripped)
    if relative:
        amount, unit = float(relative[1]), relative[2].lower()
        return now - timedelta(seconds=amount * _UNIT_S[unit])
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        raise ConfigurationError(
            f"{text!r} is not a time: give ISO-8601 (2025-05-01T12:00:00Z) "
            "or a duration ago (30m, 2h, 1d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class TimeParam(click.ParamType):
    """A click parameter read with ``parse_time`` against the current time."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Parse the option's value."""
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(str(value), datetime.now(UTC))
        except ConfigurationError as exc:
            self.fail(str(exc), param, ctx)


TIME = TimeParam()


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _money(amount: Decimal) -> str:
    return f"${amount.normalize():f}"


def _shorten(text: str, width: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _text_of(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _mostly_printable(text: str) -> bool:
    if not text:
        return True
    printable = sum(1 for c in text if c.isprintable() or c in "\n\t")
    return printable / len(text) >= 0.9


def preview(data: bytes, limit: int = 256) -> str:
    """Bytes that did not decode, for a person: escaped text if they are text, else hex.

    At most ``limit`` characters of text or ``limit`` bytes of hex are shown.
    """
    if not data:
        return "(empty)"
    text = _text_of(data)
    if text is not None and _mostly_printable(text):
        shown = "".join(
            c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in text[:limit]
        )
        more = f"\n… {len(text) - limit} more characters" if len(text) > limit else ""
        return shown + more
    lines = []
    for start in range(0, min(len(data), limit), 16):
        chunk = data[start : start + 16]
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{start:08x}  {chunk.hex(' '):<47}  |{ascii_}|")
    if len(data) > limit:
        lines.append(f"… {len(data) - limit} more bytes")
    return "\n".join(lines)


def decode_payload(letter: DeadLetter, codec: Codec) -> dict[str, Any] | None:
    """The payload as JSON when ``payload_type`` names an event and the bytes are one."""
    event_type = _EVENT_TYPES.get(letter.payload_type or "")
    if event_type is None or not letter.payload:
        return None
    try:
        return codec.decode(letter.payload, event_type).model_dump(mode="json")
    except DecodeError:
        pass
    if event_type is TaskSubmitted:  # tasks may be JSON
        try:
            return codec.decode_task_json(letter.payload, letter.key).model_dump(mode="json")
        except DecodeError:
            return None
    return None


def letter_json(letter: DeadLetter, codec: Codec | None = None) -> dict[str, Any]:
    """A dead letter as JSON; with a codec, the payload too (hex, and decoded if it can be)."""
    data: dict[str, Any] = {
        "dead_letter_id": letter.dead_letter_id,
        "kind": "exhausted_step" if is_exhausted_step(letter) else "record",
        "at": letter.at.isoformat(),
        "run_id": letter.run_id,
        "workflow": letter.workflow,
        "step": letter.step,
        "error_class": letter.error_class,
        "error": letter.error,
        "origin_topic": letter.origin_topic,
        "origin_partition": letter.origin_partition,
        "origin_offset": letter.origin_offset,
        "key": _text_of(letter.key),
        "key_hex": letter.key.hex() if letter.key is not None else None,
        "payload_type": letter.payload_type,
        "payload_size": len(letter.payload),
        "attempts": [
            {
                "attempt": a.attempt,
                "at": a.at.isoformat(),
                "error_class": a.error_class,
                "message": a.message,
            }
            for a in letter.attempts
        ],
        "cost_usd": f"{letter.cost_usd.normalize():f}",
    }
    if codec is not None:
        data["payload_hex"] = letter.payload.hex()
        data["payload_decoded"] = decode_payload(letter, codec)
    return data


def _topic_name(catalog: TopicCatalog, name: str) -> str:
    """A topic's full name; a catalog topic may be named without the prefix (``tasks``)."""
    names = {topic.name for topic in catalog}
    if name not in names and f"{catalog.prefix}.{name}" in names:
        return f"{catalog.prefix}.{name}"
    return name


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _filter_options(command: F) -> F:
    options = [
        click.option("--workflow", help="Only this workflow's dead letters."),
        click.option("--step", help="Only this step's."),
        click.option("--error", "error_class", metavar="CLASS", help="Only this error class."),
        click.option("--run", "run_id", help="Only this run's."),
        click.option(
            "--topic", help="Only records from this topic (full name, or without the prefix)."
        ),
        click.option("--since", type=TIME, help="Dead-lettered at or after (ISO-8601 or 2h)."),
        click.option("--until", type=TIME, help="Dead-lettered before (ISO-8601 or 30m)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _where(
    catalog: TopicCatalog,
    workflow: str | None,
    step: str | None,
    error_class: str | None,
    run_id: str | None,
    topic: str | None,
    since: datetime | None,
    until: datetime | None,
) -> DeadLetterFilter:
    return DeadLetterFilter(
        workflow=workflow,
        step=step,
        error_class=error_class,
        run_id=run_id,
        origin_topic=_topic_name(catalog, topic) if topic else None,
        since=since,
        until=until,
    )


@click.group("dlq")
def dlq_group() -> None:
    """Inspect and replay dead letters: what baton could not process, kept whole."""


@dlq_group.command("list")
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array) instead.")
def list_letters(
    workflow: str | None,
    step: str | None,
    error_class: str | None,
    run_id: str | None,
    topic: str | None,
    since: datetime | None,
    until: datetime | None,
    as_json: bool,
) -> None:
    """List dead letters (each once, oldest first), filtered."""
    config = settings()
    catalog = config.catalog()
    where = _where(catalog, workflow, step, error_class, run_id, topic, since, until)
    found = asyncio.run(read_dead_letters(resolve_bootstrap(config), catalog, where))
    if as_json:
        click.echo(json.dumps([letter_json(letter) for letter in found.letters], indent=2))
        return
    if found.letters:
        table = Table(title=f"dead letters on {catalog.dead_letter.name}", title_justify="left")
        table.add_column("id", no_wrap=True)
        for column in ("at", "run", "workflow", "step", "error class", "message"):
            table.add_column(column)
        table.add_column("attempts", justify="right")
        table.add_column("cost", justify="right")
        for letter in found.letters:
            table.add_row(
                escape(letter.dead_letter_id),
                _when(letter.at),
                escape(letter.run_id or "-"),
                escape(letter.workflow or "-"),
                escape(letter.step or "-"),
                escape(letter.error_class),
                escape(_shorten(letter.error, 60)),
                str(len(letter.attempts)),
                _money(letter.cost_usd),
            )
        console.print(table)
    noun = "dead letter" if len(found.letters) == 1 else "dead letters"
    console.print(f"{len(found.letters)} {noun}", highlight=False)
    if found.skipped:
        what = "record is" if found.skipped == 1 else "records are"
        console.print(f"[yellow]{found.skipped} {what} not a dead letter (skipped)[/]")


@dlq_group.command("show")
@click.argument("dead_letter_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead (payload in hex).")
def show(dead_letter_id: str, as_json: bool) -> None:
    """Show one dead letter whole: origin, key, error, every attempt, cost, the payload."""
    config = settings()
    catalog = config.catalog()
    codec = config.codec()
    found = asyncio.run(read_dead_letters(resolve_bootstrap(config), catalog, codec=codec))
    letter = next((x for x in found.letters if x.dead_letter_id == dead_letter_id), None)
    if letter is None:
        raise ConfigurationError(
            f"no dead letter {dead_letter_id!r} on {catalog.dead_letter.name} "
            "(`baton dlq list` shows them)"
        )
    if as_json:
        click.echo(json.dumps(letter_json(letter, codec), indent=2))
        return
    _print_letter(letter, codec)


def _print_letter(letter: DeadLetter, codec: Codec) -> None:
    def line(label: str, value: str) -> None:
        console.print(f"  [dim]{label:<10}[/] {value}", highlight=False)

    console.print(f"[bold]dead letter {escape(letter.dead_letter_id)}[/]")
    line("at", _when(letter.at))
    line("error", f"[red]{escape(letter.error_class)}[/]: {escape(letter.error)}")
    origin = letter.origin_topic
    if letter.origin_partition is not None:
        origin += f"[{letter.origin_partition}]"
    if letter.origin_offset is not None:
        origin += f" @ offset {letter.origin_offset}"
    line("origin", escape(origin))
    key_text = _text_of(letter.key)
    if letter.key is None:
        key = "(none)"
    elif key_text is not None and key_text.isprintable():
        key = key_text
    else:
        key = "0x" + letter.key.hex()
    line("key", escape(key))
    line("run", escape(letter.run_id or "-"))
    line("workflow", escape(letter.workflow or "-"))
    line("step", escape(letter.step or "-"))
    line("cost", _money(letter.cost_usd))
    if is_exhausted_step(letter):
        replay = f"redrive: the run is reopened at step {letter.step}"
    else:
        replay = f"the payload goes back to {origin.split(' @')[0]} with its key"
    line("replay", escape(replay))
    if letter.attempts:
        table = Table(title="attempts", title_justify="left")
        for column in ("attempt", "at", "error class", "message"):
            table.add_column(column)
        for attempt in letter.attempts:
            table.add_row(
                str(attempt.attempt),
                _when(attempt.at),
                escape(attempt.error_class),
                escape(attempt.message),
            )
        console.print(table)
    else:
        console.print("[dim]no attempt history[/]")
    decoded = decode_payload(letter, codec)
    size = f"{len(letter.payload)} bytes"
    if decoded is not None:
        console.print(f"[bold]payload[/] ({letter.payload_type}, {size}):")
        console.print(escape(json.dumps(decoded, indent=2, ensure_ascii=False)), highlight=False)
    else:
        kind = f"{letter.payload_type} that did not decode" if letter.payload_type else "raw"
        console.print(f"[bold]payload[/] ({kind}, {size}):")
        console.print(escape(preview(letter.payload)), highlight=False)


@dlq_group.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Every dead letter the filters match.")
@_filter_options
@click.option("--dry-run", is_flag=True, help="Say what would be done; send nothing.")
def replay_dead_letters(
    ids: tuple[str, ...],
    replay_all: bool,
    workflow: str | None,
    step: str | None,
    error_class: str | None,
    run_id: str | None,
    topic: str | None,
    since: datetime | None,
    until: datetime | None,
    dry_run: bool,
) -> None:
    """Replay dead letters by ID, or --all that match the filters.

    An exhausted step is redriven: its failed run is reopened at that step. Any other record
    goes back, byte for byte and with its key, to the topic and partition it came from. If
    any letter cannot be replayed, nothing is sent.
    """
    filters = (workflow, step, error_class, run_id, topic, since, until)
    if ids and replay_all:
        raise ConfigurationError("give dead letter ids or --all, not both")
    if not ids and not replay_all:
        raise ConfigurationError("give dead letter ids, or --all (with filters) to replay")
    if ids and any(value is not None for value in filters):
        raise ConfigurationError("filters go with --all; ids name the letters themselves")
    config = settings()
    catalog = config.catalog()
    bootstrap = resolve_bootstrap(config)
    where = _where(catalog, workflow, step, error_class, run_id, topic, since, until)
    found = asyncio.run(read_dead_letters(bootstrap, catalog, where))
    if ids:
        by_id = {letter.dead_letter_id: letter for letter in found.letters}
        missing = [i for i in ids if i not in by_id]
        if missing:
            noun = "dead letter" if len(missing) == 1 else "dead letters"
            raise ConfigurationError(
                f"no {noun} {', '.join(map(repr, missing))} on {catalog.dead_letter.name}"
            )
        letters = [by_id[i] for i in dict.fromkeys(ids)]
    else:
        letters = list(found.letters)
    if not letters:
        console.print("no dead letters match: nothing to replay")
        return
    plans = asyncio.run(replay_letters(bootstrap, catalog, letters, user=_user(), dry_run=dry_run))
    for plan in plans:
        what = plan.describe(done=not dry_run)
        if isinstance(plan, Redrive):
            what += f" (run {plan.command.run_id}, step {plan.command.step})"
        console.print(f"{escape(plan.dead_letter_id)}  {escape(what)}", highlight=False)
    noun = "dead letter" if len(plans) == 1 else "dead letters"
    if dry_run:
        console.print(f"dry run: {len(plans)} {noun}, nothing sent")
    else:
        console.print(f"{len(plans)} {noun} replayed")


class _ProgressBar:
    """Feeds a range replay's progress to a rich bar, shown for long ranges only."""

    def __init__(self, progress: Progress, label: str) -> None:
        self._progress = progress
        self._label = label
        self._task: Any = None

    def started(self, total: int) -> None:
        self._task = self._progress.add_task(
            self._label, total=total, visible=total >= _PROGRESS_FROM
        )

    def advanced(self, count: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, count)


@click.command("replay")
@click.option("--topic", required=True, help="The topic: full name, or without the prefix (tasks).")
@click.option(
    "--from", "since", required=True, type=TIME, help="Start, inclusive (ISO-8601 or 2h)."
)
@click.option("--until", type=TIME, help="End, exclusive (ISO-8601 or 30m); default: now.")
@click.option("--rerun", is_flag=True, help="Tasks only: run each task again as a new run.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send nothing.")
def replay_command(
    topic: str, since: datetime, until: datetime | None, rerun: bool, dry_run: bool
) -> None:
    """Re-publish a time range of a topic, each record to its own partition with its key.

    Consumers treat repeats as repeats: a task whose run exists starts nothing new. With
    --rerun, each task in the range is submitted again as a new run, `<id>.rerun-<tag>`,
    labelled `rerun_of: <id>`.
    """
    config = settings()
    catalog = config.catalog()
    name = _topic_name(catalog, topic)
    end = until or datetime.now(UTC)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        done = asyncio.run(
            replay_range(
                resolve_bootstrap(config),
                catalog,
                name,
                since,
                end,
                rerun,
                dry_run=dry_run,
                progress=_ProgressBar(progress, f"replaying {name}"),
            )
        )
    span = f"{_when(done.since)} to {_when(done.until)}"
    if not done.replayed and not done.skipped:
        console.print(f"nothing to replay: no records on {done.topic} from {span}")
        return
    verb = "would replay" if dry_run else "replayed"
    noun = "record" if done.total == 1 else "records"
    console.print(f"{verb} {done.total} {noun} of {done.topic} from {span}", highlight=False)
    if done.replayed:
        table = Table(title_justify="left")
        table.add_column("partition", justify="right")
        table.add_column("records", justify="right")
        for partition, count in done.replayed.items():
            table.add_row(str(partition), str(count))
        console.print(table)
    if rerun:
        verb = "would submit" if dry_run else "submitted"
        console.print(
            f"{verb} {len(done.new_runs)} new runs (ids end in .rerun-{done.rerun_tag}, "
            "labelled rerun_of)",
            highlight=False,
        )
        for run_id in done.new_runs[:20]:
            console.print(f"  {escape(run_id)}", highlight=False)
        if len(done.new_runs) > 20:
            console.print(f"  … and {len(done.new_runs) - 20} more")
        if done.repeats:
            console.print(
                f"{done.repeats} repeated records of a task already rerun here (sent once)"
            )
        if done.skipped:
            console.print(f"[yellow]{done.skipped} records skipped: not a valid task[/]")
