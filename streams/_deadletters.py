"""Reading the dead-letter topic: every dead letter once, filtered.

Writers of ``baton.dead-letter`` are at least once, so one dead letter (one
``dead_letter_id``) may be on the topic more than once; readers see each id once, the latest
copy. A record on the topic that is not a ``DeadLetter`` is skipped and counted, never fatal.

The log-reading helpers here (``consumer``, ``scan``) are shared with ``streams._replay``:
both read a bounded range of offsets per partition with a groupless ``read_committed``
consumer, so nothing is committed and aborted transactions are never seen.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams._kafka import kafka_consumer
from topics import (
    MAX_RECORD_BYTES,
    Codec,
    ConfigurationError,
    DeadLetter,
    DecodeError,
    RetryableError,
    Topic,
    TopicCatalog,
)

__all__ = [
    "DeadLetterFilter",
    "DeadLetterScan",
    "consumer",
    "is_exhausted_step",
    "letter_for",
    "too_large",
    "latest_by_id",
    "partitions_of",
    "ranges_since",
    "read_dead_letters",
    "scan",
]

#: Seconds a read may go without receiving anything before it is given up as stuck.
STALL_TIMEOUT_S = 30.0


#: The most of a record's bytes a dead letter keeps: the letter must fit in a record too.
MAX_LETTER_PAYLOAD = MAX_RECORD_BYTES - 64 * 1024


def too_large(record: Any) -> str | None:
    """Why a consumed record is refused unread (over ``MAX_RECORD_BYTES``), or ``None``."""
    size = len(record.value) if record.value is not None else 0
    if size > MAX_RECORD_BYTES:
        return f"the record is {size} bytes, over the limit of {MAX_RECORD_BYTES}"
    return None


def letter_for(
    record: Any,
    *,
    error_class: str,
    reason: str,
    at: datetime,
    run_id: str | None = None,
    payload_type: str | None = None,
) -> DeadLetter:
    """The dead letter of a consumed Kafka record that cannot be handled: its bytes, whole.

    Its id is the record's place (``topic/partition/offset``), so a record dead-lettered
    again (at-least-once writers, a takeover reading it again) keeps one id.
    """
    offset = getattr(record, "offset", None)
    payload = record.value or b""
    if len(payload) > MAX_LETTER_PAYLOAD:
        # The letter must fit in a record itself; what is kept says so.
        reason = f"{reason} (payload cut to its first {MAX_LETTER_PAYLOAD} of {len(payload)} bytes)"
        payload = payload[:MAX_LETTER_PAYLOAD]
    return DeadLetter(
        dead_letter_id=f"{record.topic}/{record.partition}/{offset if offset is not None else '-'}",
        origin_topic=record.topic,
        origin_partition=record.partition,
        origin_offset=offset,
        key=record.key,
        payload=payload,
        payload_type=payload_type,
        error_class=error_class,
        error=reason,
        run_id=run_id,
        at=at,
    )


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to keep; ``None`` means "any" for every field.

    Attributes:
        workflow: The workflow of the run.
        step: The step that failed.
        error_class: The error class (case-insensitive), e.g. ``DecodeError``.
        run_id: The run.
        origin_topic: The full name of the topic the failed record came from.
        since: Dead-lettered at or after this time (aware).
        until: Dead-lettered before this time (aware).
    """

    workflow: str | None = None
    step: str | None = None
    error_class: str | None = None
    run_id: str | None = None
    origin_topic: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name, value in (("since", self.since), ("until", self.until)):
            if value is not None and value.utcoffset() is None:
                raise ConfigurationError(f"{name} must carry a time zone, not {value.isoformat()}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ConfigurationError(
                f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})"
            )

    def matches(self, letter: DeadLetter) -> bool:
        """Whether a dead letter passes every filter that is set."""
        if self.workflow is not None and letter.workflow != self.workflow:
            return False
        if self.step is not None and letter.step != self.step:
            return False
        if (
            self.error_class is not None
            and letter.error_class.casefold() != self.error_class.casefold()
        ):
            return False
        if self.run_id is not None and letter.run_id != self.run_id:
            return False
        if self.origin_topic is not None and letter.origin_topic != self.origin_topic:
            return False
        if self.since is not None and letter.at < self.since:
            return False
        return self.until is None or letter.at < self.until


@dataclass(frozen=True, slots=True)
class DeadLetterScan:
    """What one read of the dead-letter topic found.

    Attributes:
        letters: The dead letters that pass the filter, each id once (its latest copy),
            oldest first.
        records: Records read from the topic.
        skipped: Records that are not dead letters (did not decode as one).
        duplicates: Copies dropped because a later copy of the same id was kept.
    """

    letters: tuple[DeadLetter, ...]
    records: int
    skipped: int
    duplicates: int


def is_exhausted_step(letter: DeadLetter) -> bool:
    """Whether a letter is a step the coordinator gave up on (its run failed), not a record.

    The coordinator's exhausted-step letters name the run and the step; letters for records
    that could not be processed never name a step.
    """
    return letter.run_id is not None and letter.step is not None


def latest_by_id(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """Each dead letter id once: the copy with the latest ``at`` (on a tie, the later one).

    Returns:
        The kept letters, oldest first (then by id).
    """
    kept: dict[str, DeadLetter] = {}
    for letter in letters:
        earlier = kept.get(letter.dead_letter_id)
        if earlier is None or letter.at >= earlier.at:
            kept[letter.dead_letter_id] = letter
    return sorted(kept.values(), key=lambda letter: (letter.at, letter.dead_letter_id))


@asynccontextmanager
async def consumer(bootstrap: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A started groupless ``read_committed`` consumer that commits nothing.

    Raises:
        RetryableError: The cluster cannot be reached.
    """
    client = kafka_consumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    try:
        await client.start()
    except KafkaError as exc:
        await client.stop()
        raise RetryableError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        yield client
    finally:
        await client.stop()


async def partitions_of(client: AIOKafkaConsumer, topic: Topic) -> list[TopicPartition]:
    """Every partition of a catalog topic, once the cluster is known to have the topic.

    Raises:
        ConfigurationError: The topic does not exist.
    """
    if topic.name not in await client.topics():
        raise ConfigurationError(
            f"topic {topic.name!r} does not exist on the cluster "
            "(is BATON_TOPIC_PREFIX right? `baton topics create` creates the topics)"
        )
    return [TopicPartition(topic.name, p) for p in range(topic.partitions)]


async def ranges_since(
    client: AIOKafkaConsumer, tps: list[TopicPartition], since: datetime
) -> dict[TopicPartition, tuple[int, int]]:
    """For ``scan``: each partition from its first record at or after ``since`` to its end now.

    Partitions with nothing that recent are left out.
    """
    starts = await client.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
    ends = await client.end_offsets(tps)
    return {
        tp: (found.offset, ends[tp])
        for tp, found in starts.items()
        if found is not None and found.offset < ends[tp]
    }


async def scan(
    client: AIOKafkaConsumer,
    ranges: dict[TopicPartition, tuple[int, int]],
    *,
    until_ms: int | None = None,
) -> AsyncIterator[Any]:
    """Yield the records of each partition from its start offset up to (not with) its end.

    A partition also stops at its first record whose timestamp is ``until_ms`` or later.
    Records come in offset order within a partition; partitions interleave.

    Args:
        client: A consumer from ``consumer``.
        ranges: ``(start, end)`` offsets per partition; ``end`` is exclusive.
        until_ms: Stop each partition at the first record at or after this time (epoch ms).

    Raises:
        RetryableError: Nothing arrived for ``STALL_TIMEOUT_S`` while records were missing.
    """
    client.assign(list(ranges))
    pending: dict[TopicPartition, int] = {}
    for tp, (start, end) in ranges.items():
        if start < end:
            client.seek(tp, start)
            pending[tp] = end
    deadline = time.monotonic() + STALL_TIMEOUT_S
    while pending:
        batches = await client.getmany(*pending, timeout_ms=200)
        if any(batches.values()):
            deadline = time.monotonic() + STALL_TIMEOUT_S
        for tp, records in batches.items():
            for record in records:
                if tp not in pending:
                    break
                if record.offset >= pending[tp] or (
                    until_ms is not None and record.timestamp >= until_ms
                ):
                    del pending[tp]
                    break
                yield record
        # Transaction markers take offsets too: a partition may end without a last record.
        for tp in list(pending):
            if await client.position(tp) >= pending[tp]:
                del pending[tp]
        if pending and time.monotonic() > deadline:
            left = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in pending)
            raise RetryableError(f"reading stalled for {STALL_TIMEOUT_S:g}s on {left}")


async def read_dead_letters(
    bootstrap: str,
    catalog: TopicCatalog,
    where: DeadLetterFilter | None = None,
    codec: Codec | None = None,
) -> DeadLetterScan:
    """Read every dead letter on the topic now, each id once, and keep those that match.

    Raises:
        ConfigurationError: The dead-letter topic does not exist.
        RetryableError: The cluster cannot be reached or stops answering.
    """
    codec = codec or Codec()
    where = where or DeadLetterFilter()
    found: list[DeadLetter] = []
    records = skipped = 0
    async with consumer(bootstrap) as client:
        tps = await partitions_of(client, catalog.dead_letter)
        starts = await client.beginning_offsets(tps)
        ends = await client.end_offsets(tps)
        async for record in scan(client, {tp: (starts[tp], ends[tp]) for tp in tps}):
            records += 1
            try:
                found.append(codec.decode(record.value, DeadLetter))
            except DecodeError:
                skipped += 1
    unique = latest_by_id(found)
    return DeadLetterScan(
        letters=tuple(letter for letter in unique if where.matches(letter)),
        records=records,
        skipped=skipped,
        duplicates=len(found) - len(unique),
    )
