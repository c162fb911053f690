"""What runs used and cost over a window, from the run events (``baton usage``).

Every step attempt that reported usage is on ``baton.run-events`` exactly once, as the
coordinator accounted it: ``step_succeeded``, ``step_failed`` (a failed call is billed all
the same) or ``result_ignored`` (a late result: too late to use, not too late to pay for).
Each carries the tenant, the workflow and the step's ``Usage`` (tokens, cost, route, cached,
saved). Summing those events over a window gives what the runs of each tenant, workflow or
route used, the same totals the runs themselves report.

Reading starts at the window's start on every partition (``offsets_for_times``) and stops at
the end offsets found when it began, reading committed events only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from aiokafka.errors import KafkaError

from streams._deadletters import consumer, partitions_of, ranges_since, scan
from topics import Codec, ConfigurationError, DecodeError, RetryableError, RunEvent, TopicCatalog

__all__ = [
    "GROUPINGS",
    "NO_ROUTE",
    "Grouping",
    "UsageLine",
    "UsageReport",
    "group_of",
    "read_usage",
    "summarize",
]

#: What usage can be grouped by.
Grouping = Literal["tenant", "workflow", "route"]
GROUPINGS: tuple[Grouping, ...] = ("tenant", "workflow", "route")

#: The group of usage that names no route (a step that reported usage without one).
NO_ROUTE = "(none)"


@dataclass
class UsageLine:
    """What one group used.

    Attributes:
        group: The tenant, workflow or route (``total`` for the sum of every group).
        steps: Step attempts that reported usage (model calls, answered or from the cache).
        cached: Of those, how many the response cache answered.
        input_tokens: Prompt tokens billed.
        output_tokens: Completion tokens billed.
        cost_usd: Money spent, exactly.
        saved_usd: Money the response cache saved.
    """

    group: str
    steps: int = 0
    cached: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    saved_usd: Decimal = Decimal(0)

    def add(self, event: RunEvent) -> None:
        """Count one event's usage (an event without usage counts nothing)."""
        usage = event.usage
        if usage is None:
            return
        self.steps += 1
        self.cached += usage.cached
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cost_usd += usage.cost_usd
        self.saved_usd += usage.saved_usd

    def as_json(self) -> dict[str, str | int]:
        """The line as JSON (money as exact decimal strings)."""
        return {
            "group": self.group,
            "steps": self.steps,
            "cached": self.cached,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": _money(self.cost_usd),
            "saved_usd": _money(self.saved_usd),
        }


@dataclass(frozen=True)
class UsageReport:
    """Usage over a window, by group.

    Attributes:
        since: The window's start.
        until: Its end (when reading began).
        by: What the lines group by.
        lines: One line per group, the most expensive first.
        total: Every group together.
        skipped: Records on the topic that were not run events.
    """

    since: datetime
    until: datetime
    by: Grouping
    lines: list[UsageLine] = field(default_factory=list)
    total: UsageLine = field(default_factory=lambda: UsageLine("total"))
    skipped: int = 0

    def as_json(self) -> dict[str, object]:
        """The report as JSON."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "by": self.by,
            "groups": [line.as_json() for line in self.lines],
            "total": self.total.as_json(),
        }


def _money(value: Decimal) -> str:
    return f"{value.normalize():f}" if value else "0"


def group_of(event: RunEvent, by: Grouping) -> str:
    """The group an event's usage counts in."""
    if by == "tenant":
        return event.tenant
    if by == "workflow":
        return event.workflow
    route = event.usage.route if event.usage is not None else None
    return route or NO_ROUTE


def summarize(
    events: Iterable[RunEvent],
    by: Grouping,
    since: datetime,
    until: datetime,
    skipped: int = 0,
) -> UsageReport:
    """Sum the usage of the events that happened in ``[since, until)``, by group."""
    lines: dict[str, UsageLine] = {}
    total = UsageLine("total")
    for event in events:
        if event.usage is None or not since <= event.at < until:
            continue
        group = group_of(event, by)
        lines.setdefault(group, UsageLine(group)).add(event)
        total.add(event)
    ordered = sorted(lines.values(), key=lambda line: (-line.cost_usd, -line.steps, line.group))
    return UsageReport(since, until, by, ordered, total, skipped)


async def read_usage(
    bootstrap: str,
    catalog: TopicCatalog,
    since: datetime,
    until: datetime,
    by: Grouping,
    codec: Codec | None = None,
) -> UsageReport:
    """Read the run events of ``[since, until)`` and sum their usage by group.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        since: The window's start (with a time zone).
        until: Its end, normally now: events written after reading began are not read.
        by: What to group by.
        codec: Decodes the events.

    Raises:
        ConfigurationError: The run-events topic does not exist, or a time has no zone.
        RetryableError: The cluster cannot be reached or stops answering.
    """
    if since.utcoffset() is None or until.utcoffset() is None:
        raise ConfigurationError("the window's times must carry a time zone")
    codec = codec or Codec()
    events: list[RunEvent] = []
    skipped = 0
    try:
        async with consumer(bootstrap) as client:
            tps = await partitions_of(client, catalog.run_events)
            ranges = await ranges_since(client, tps, since)
            async for record in scan(client, ranges):
                try:
                    found = codec.run_events(record.value)
                except DecodeError:
                    skipped += 1
                    continue
                events.extend(event for event in found if event.usage is not None)
    except KafkaError as exc:
        raise RetryableError(f"reading {catalog.run_events.name} failed: {exc}") from exc
    return summarize(events, by, since, until, skipped)
