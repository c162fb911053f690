"""Who owns which runs: a co-partitioning, sticky partition assignor for the coordinators.

Every coordinator consumes the same topics, all with the same partition count. Partition
number ``p`` of every one of them goes to one member, so that member sees every event of the
runs on ``p``. Members keep the partitions they had when they can (their state is already
loaded), and the partitions of departed members are spread over the least loaded.

Each member tells the others where its HTTP API is; the assignment hands every member the
whole map, so any worker can forward ``GET /v1/runs/{id}`` to the run's owner.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

__all__ = ["CopartitionedAssignor", "plan"]

log = logging.getLogger(__name__)


def plan(
    partitions: int, owned: Mapping[str, Iterable[int]], members: Iterable[str]
) -> dict[str, list[int]]:
    """Partition numbers per member: keep what members own, balance the rest.

    Args:
        partitions: How many partitions each co-partitioned topic has.
        owned: What each member says it owns now.
        members: Every member (in any order; the result does not depend on it).
    """
    names = sorted(members)
    if not names:
        return {}
    plan_: dict[str, list[int]] = {name: [] for name in names}
    taken: set[int] = set()
    for name in names:
        for partition in sorted(set(owned.get(name, ()))):
            if 0 <= partition < partitions and partition not in taken:
                plan_[name].append(partition)
                taken.add(partition)
    most = -(-partitions // len(names))  # no member above ceil(partitions / members)
    fewest = partitions // len(names)
    spare: list[int] = sorted(set(range(partitions)) - taken)
    for name in names:
        while len(plan_[name]) > most:
            spare.append(plan_[name].pop())
    # Members with the fewest partitions first, so the result is balanced.
    for partition in sorted(spare):
        name = min(names, key=lambda n: (len(plan_[n]), n))
        plan_[name].append(partition)
    # Even out: nobody more than one partition above anybody else.
    while True:
        big = max(names, key=lambda n: (len(plan_[n]), n))
        small = min(names, key=lambda n: (len(plan_[n]), n))
        if len(plan_[big]) - len(plan_[small]) <= 1 or len(plan_[big]) <= fewest:
            break
        plan_[small].append(plan_[big].pop())
    return {name: sorted(parts) for name, parts in plan_.items()}


class CopartitionedAssignor(AbstractPartitionAssignor):  # type: ignore[misc]  # untyped base
    """The coordinators' assignor (one instance per consumer).

    aiokafka declares the assignor methods as classmethods; this one keeps per-consumer state
    (its address, what it owns), so they are instance methods, which aiokafka calls alike.

    Args:
        url: This member's HTTP API address.
        partitions: The co-partitioned topics' partition count.
    """

    version = 1

    def __init__(self, url: str, partitions: int) -> None:
        self.url = url
        self.partitions = partitions
        self.owned: set[int] = set()
        self.owners: dict[int, str] = {}

    @property
    def name(self) -> str:
        return "baton-copartitioned"

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        user_data = orjson.dumps({"url": self.url, "owned": sorted(self.owned)})
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(
        self, cluster: Any, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        info = {member: _read(meta.user_data) for member, meta in members.items()}
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in topics}
        wrong = {t: n for t, n in counts.items() if n != self.partitions}
        if wrong:
            log.error("co-partitioned topics without %d partitions: %s", self.partitions, wrong)
        planned = plan(self.partitions, {m: i.get("owned", []) for m, i in info.items()}, members)
        owners = {p: info[m].get("url", "") for m, parts in planned.items() for p in parts}
        user_data = orjson.dumps({"owners": {str(p): url for p, url in owners.items()}})
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version,
                [(topic, parts) for topic in topics if parts],
                user_data,
            )
            for member, parts in planned.items()
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        data = _read(assignment.user_data)
        self.owners = {int(p): url for p, url in data.get("owners", {}).items()}
        self.owned = {tp.partition for tp in assignment.partitions()}


def _read(user_data: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(user_data) if user_data else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
