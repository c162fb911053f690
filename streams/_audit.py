"""Checking runs' audit chains against the topics (``baton audit verify``; docs/audit.md).

Reads ``run-events`` (or a copy of it) from its start to its end as found when reading
began, committed records only; cuts each event's Avro body out of its record, hashes it
and checks each selected run's chain with ``topics.verify_chain``. Then reads the anchors
(``audit-anchors``, or a copy) and checks that every run they name, among those selected,
has its events up to the anchored seq with the anchored hash (``topics.check_anchors``),
and that signed anchors carry a valid signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams._deadletters import consumer, scan
from topics import (
    AuditAnchor,
    ChainLink,
    ChainReport,
    Codec,
    ConfigurationError,
    DecodeError,
    RetryableError,
    TopicCatalog,
    check_anchors,
    event_hash,
    partition_counts,
    verify_anchor,
    verify_chain,
)

__all__ = ["AuditFindings", "AuditSelection", "verify_runs"]


@dataclass(frozen=True)
class AuditSelection:
    """Which runs to verify: named ones, those with an event in a time window, or all.

    Attributes:
        run_ids: These runs (empty: chosen by the window, or all).
        since: Runs with an event at or after this time (with ``until``; ``None``: no bound).
        until: ... and before this time.
    """

    run_ids: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def wants(self, run_id: str, at: datetime | None = None) -> bool:
        """Whether a run is selected (``at``: the time of one of its events, if known)."""
        if self.run_ids:
            return run_id in self.run_ids
        if at is None:
            return self.since is None and self.until is None
        return (self.since is None or at >= self.since) and (self.until is None or at < self.until)

    @property
    def everything(self) -> bool:
        """Every run on the topic (no names, no window)."""
        return not self.run_ids and self.since is None and self.until is None


@dataclass
class AuditFindings:
    """What verifying found.

    Attributes:
        reports: Each selected run's chain, by run id.
        anchors: Anchor records read.
        anchor_problems: Runs the anchors name whose events are missing or differ, and bad
            signatures: one line each.
        unsigned: Anchors without a signature.
        skipped: Records that were not run events (left out).
    """

    reports: dict[str, ChainReport] = field(default_factory=dict)
    anchors: int = 0
    anchor_problems: list[str] = field(default_factory=list)
    unsigned: int = 0
    skipped: int = 0

    @property
    def ok(self) -> bool:
        """Whether every chain holds and the anchors agree."""
        return all(r.ok for r in self.reports.values()) and not self.anchor_problems


async def verify_runs(
    bootstrap: str,
    catalog: TopicCatalog,
    selection: AuditSelection,
    *,
    events_topic: str | None = None,
    anchors_topic: str | None = None,
    use_anchors: bool = True,
    keys: Mapping[str, bytes] | None = None,
    require_signed: bool = False,
    codec: Codec | None = None,
) -> AuditFindings:
    """Verify the selected runs' chains, and the anchors over them.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        selection: Which runs.
        events_topic: Read the run events from this topic instead of ``run-events``.
        anchors_topic: Read the anchors from this topic instead of ``audit-anchors``.
        use_anchors: Whether to check the anchors at all.
        keys: Keys that signed anchors, by key id (signatures are checked when given).
        require_signed: An unsigned anchor is a problem.
        codec: Decodes the records.

    Raises:
        ConfigurationError: A topic does not exist.
        RetryableError: The cluster cannot be reached or stops answering.
    """
    codec = codec or Codec()
    findings = AuditFindings()
    links: dict[str, list[ChainLink]] = {}
    chosen: set[str] = set()
    events_name = events_topic or catalog.run_events.name
    anchors_name = anchors_topic or catalog.audit_anchors.name
    try:
        counts = await partition_counts(bootstrap, [events_name, anchors_name])
    except KafkaError as exc:
        raise RetryableError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    if events_name not in counts:
        raise ConfigurationError(
            f"topic {events_name!r} does not exist on the cluster (is BATON_TOPIC_PREFIX right?)"
        )
    try:
        async with consumer(bootstrap) as client:
            async for record in _read(client, events_name, counts[events_name]):
                try:
                    items = codec.run_event_bodies(record.value)
                except DecodeError:
                    findings.skipped += 1
                    continue
                for n, (event, body) in enumerate(items):
                    if not (selection.run_ids and event.run_id not in selection.run_ids):
                        where = f"partition {record.partition} offset {record.offset} item {n}"
                        links.setdefault(event.run_id, []).append(
                            ChainLink(event, event_hash(body), where)
                        )
                    if selection.wants(event.run_id, event.at):
                        chosen.add(event.run_id)
            anchors: list[AuditAnchor] = []
            if use_anchors and anchors_name in counts:  # none on an older deployment
                anchors = await _anchors(client, anchors_name, counts[anchors_name], codec)
    except KafkaError as exc:
        raise RetryableError(f"reading the audit trail failed: {exc}") from exc
    named = [_only(a, selection) for a in anchors]
    wanted = set(selection.run_ids) or chosen
    if not selection.everything:
        # A run an anchor of the window names is verified too, wherever its events are.
        wanted |= {run.run_id for anchor in named for run in anchor.runs}
    for run_id in sorted(wanted):
        findings.reports[run_id] = verify_chain(run_id, links.get(run_id, []))
    findings.anchors = len(anchors)
    findings.anchor_problems = check_anchors(findings.reports, [a for a in named if a.runs])
    for anchor in anchors:
        if not anchor.signature:
            findings.unsigned += 1
            if require_signed:
                findings.anchor_problems.append(_anchor_name(anchor) + ": not signed")
        elif keys is not None:
            problem = verify_anchor(anchor, keys)
            if problem is not None:
                findings.anchor_problems.append(f"{_anchor_name(anchor)}: {problem}")
    return findings


def _only(anchor: AuditAnchor, selection: AuditSelection) -> AuditAnchor:
    """The anchor's runs that this verification covers.

    Named runs: those. A window: every run of an anchor made in it (a run whose events were
    all removed is still named by them), none of the others. Everything: every run.
    """
    if selection.run_ids:
        runs = [r for r in anchor.runs if r.run_id in selection.run_ids]
        return anchor.model_copy(update={"runs": runs})
    if selection.everything or selection.wants("", anchor.anchored_at):
        return anchor
    return anchor.model_copy(update={"runs": []})


def _anchor_name(anchor: AuditAnchor) -> str:
    return (
        f"anchor of partition {anchor.partition} at {anchor.anchored_at.isoformat()} "
        f"(part {anchor.part + 1} of {anchor.parts})"
    )


async def _anchors(
    client: AIOKafkaConsumer, name: str, partitions: int, codec: Codec
) -> list[AuditAnchor]:
    """Every anchor on a topic (records that are not anchors are left out)."""
    found = []
    async for record in _read(client, name, partitions):
        try:
            found.append(codec.decode(record.value, AuditAnchor))
        except DecodeError:
            continue
    return found


async def _read(client: AIOKafkaConsumer, name: str, partitions: int) -> Any:
    """Every committed record of a topic, from its start to its end as found now."""
    tps = [TopicPartition(name, p) for p in range(partitions)]
    starts = await client.beginning_offsets(tps)
    ends = await client.end_offsets(tps)
    ranges = {tp: (starts[tp], ends[tp]) for tp in tps if ends[tp] > starts[tp]}
    async for record in scan(client, ranges):
        yield record
