"""Replays: dead letters back to where they failed, and a time range of a topic again.

A dead letter is replayed according to what it is:

- **an exhausted step** (the coordinator gave up on a step and failed its run; the letter
  names the run and the step): a ``redrive`` ``ControlCommand`` goes to the control topic,
  and the coordinator reopens the run at that step. A redrive of a run that is not failed
  (already redriven, say) is ignored by the coordinator, so replaying twice is harmless.
- **a record that could not be processed** (undecodable bytes, an event for an unknown run):
  its original bytes go back, with the original key, to the topic and partition they came
  from. Only topics of the current catalog are accepted.

``replay_range`` re-publishes every record of a catalog topic in a time range, each to its
own partition with its own key. The consumers downstream decide what a repeat means: the
coordinator treats a task for a run that exists as a duplicate, so replaying tasks starts
nothing new. ``rerun=True`` (tasks only) instead submits a copy of each task as a new run.

Planning (``plan_letter_replays``, ``rerun_task``) is pure; the ``async`` functions do the
Kafka I/O.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from streams._deadletters import (
    consumer,
    is_exhausted_step,
    partitions_of,
    ranges_since,
    scan,
)
from streams._kafka import kafka_producer
from topics import (
    Codec,
    ConfigurationError,
    ControlAction,
    ControlCommand,
    DeadLetter,
    DecodeError,
    RetryableError,
    TaskSubmitted,
    Topic,
    TopicCatalog,
    client_source,
    partition_for,
)

__all__ = [
    "LetterReplay",
    "RangeReplay",
    "Redrive",
    "ReplayProgress",
    "Republish",
    "Skip",
    "plan_letter_replays",
    "replay_letters",
    "replay_range",
    "rerun_task",
]


@dataclass(frozen=True, slots=True)
class Redrive:
    """Ask the coordinator to reopen a failed run at the step that was exhausted.

    Attributes:
        dead_letter_id: The letter replayed.
        command: The command for the control topic.
    """

    dead_letter_id: str
    command: ControlCommand

    def describe(self, done: bool = True) -> str:
        """What replaying does (``done``) or would do."""
        return "redrive requested" if done else "would request a redrive"


@dataclass(frozen=True, slots=True)
class Republish:
    """Put a record's original bytes back on the topic and partition it came from.

    Attributes:
        dead_letter_id: The letter replayed.
        topic: The full topic name.
        partition: The partition.
        key: The original key.
        value: The original value.
    """

    dead_letter_id: str
    topic: str
    partition: int
    key: bytes | None
    value: bytes

    def describe(self, done: bool = True) -> str:
        """What replaying does (``done``) or would do."""
        where = f"{self.topic}[{self.partition}]"
        return f"re-published to {where}" if done else f"would re-publish to {where}"


@dataclass(frozen=True, slots=True)
class Skip:
    """A letter that needs nothing sent (another letter of the same replay covers it).

    Attributes:
        dead_letter_id: The letter.
        reason: Why nothing is sent.
    """

    dead_letter_id: str
    reason: str

    def describe(self, done: bool = True) -> str:
        """Why nothing is sent."""
        return f"skipped: {self.reason}"


LetterReplay = Redrive | Republish | Skip


def _republish(letter: DeadLetter, catalog: TopicCatalog) -> Republish:
    try:
        topic = catalog.by_name(letter.origin_topic)
    except ConfigurationError:
        raise ConfigurationError(
            f"dead letter {letter.dead_letter_id}: its origin topic {letter.origin_topic!r} is "
            f"not a baton topic under prefix {catalog.prefix!r} (set BATON_TOPIC_PREFIX to the "
            "prefix it came from)"
        ) from None
    if topic in (catalog.run_state, catalog.dead_letter):
        raise ConfigurationError(
            f"dead letter {letter.dead_letter_id}: refusing to write to {topic.name}, which is "
            "not an input topic"
        )
    partition = letter.origin_partition
    if partition is None:
        partition = _key_partition(letter.key, topic)
        if partition is None:
            raise ConfigurationError(
                f"dead letter {letter.dead_letter_id}: neither its origin partition nor a "
                "UTF-8 key is known, so there is no partition to put it back on"
            )
    if not 0 <= partition < topic.partitions:
        raise ConfigurationError(
            f"dead letter {letter.dead_letter_id}: partition {partition} does not exist on "
            f"{topic.name} ({topic.partitions} partitions)"
        )
    return Republish(letter.dead_letter_id, topic.name, partition, letter.key, letter.payload)


def _key_partition(key: bytes | None, topic: Topic) -> int | None:
    if not key or not topic.copartitioned:
        return None
    try:
        return partition_for(key.decode("utf-8"), topic.partitions)
    except UnicodeDecodeError:
        return None


def plan_letter_replays(
    letters: Iterable[DeadLetter], catalog: TopicCatalog, *, user: str, now: datetime
) -> list[LetterReplay]:
    """What replaying each dead letter means, checked before anything is sent.

    Several exhausted-step letters of one run and step (the run was redriven and failed
    again) need one redrive: the later ones are skipped.

    Raises:
        ConfigurationError: One or more letters cannot be replayed; every reason is listed,
            and nothing should be sent.
    """
    plans: list[LetterReplay] = []
    problems: list[str] = []
    redriven: dict[tuple[str, str], str] = {}
    for letter in letters:
        if is_exhausted_step(letter):
            assert letter.run_id is not None and letter.step is not None
            target = (letter.run_id, letter.step)
            if target in redriven:
                plans.append(
                    Skip(letter.dead_letter_id, f"redrive already asked for by {redriven[target]}")
                )
                continue
            redriven[target] = letter.dead_letter_id
            command = ControlCommand(
                command_id=str(uuid.uuid4()),
                action=ControlAction.redrive,
                run_id=letter.run_id,
                step=letter.step,
                reason=f"dead letter {letter.dead_letter_id} replayed by {user or 'an operator'}",
                issued_by=user,
                issued_at=now,
            )
            plans.append(Redrive(letter.dead_letter_id, command))
            continue
        try:
            plans.append(_republish(letter, catalog))
        except ConfigurationError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigurationError("cannot replay: " + "; ".join(problems))
    return plans


class _Sender:
    """An idempotent producer whose every delivery is confirmed, a bounded number at a time.

    ``flush`` alone would wait for deliveries without reporting the ones that failed.
    """

    _IN_FLIGHT = 1000

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._pending: list[asyncio.Future[Any]] = []

    @classmethod
    async def start(cls, bootstrap: str, codec: Codec) -> _Sender:
        producer = kafka_producer(
            client_source("replay"),
            codec,
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise RetryableError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
        return cls(producer)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self._pending.append(
            await self._producer.send(
                topic, value, key=key, partition=partition, headers=headers or None
            )
        )
        if len(self._pending) >= self._IN_FLIGHT:
            await self.confirm()

    async def confirm(self) -> None:
        """Wait until everything sent so far is delivered; raise if any of it was not."""
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)

    async def stop(self) -> None:
        await self._producer.stop()


async def replay_letters(
    bootstrap: str,
    catalog: TopicCatalog,
    letters: Iterable[DeadLetter],
    *,
    user: str,
    dry_run: bool = False,
    codec: Codec | None = None,
    now: datetime | None = None,
) -> list[LetterReplay]:
    """Replay dead letters: redrive exhausted steps, put other records back where they were.

    Every letter is checked first; if one cannot be replayed, nothing is sent.

    Returns:
        What was done (or, with ``dry_run``, would be done) per letter, in order.

    Raises:
        ConfigurationError: A letter cannot be replayed (says which and why).
        RetryableError: The cluster cannot be reached.
    """
    plans = plan_letter_replays(letters, catalog, user=user, now=now or datetime.now(UTC))
    if dry_run or not plans:
        return plans
    codec = codec or Codec()
    sender = await _Sender.start(bootstrap, codec)
    try:
        for plan in plans:
            if isinstance(plan, Redrive):
                run_id = plan.command.run_id
                assert run_id is not None
                control = catalog.control
                await sender.send(
                    control.name,
                    codec.encode(plan.command),
                    run_id.encode(),
                    partition_for(run_id, control.partitions),
                )
            elif isinstance(plan, Republish):
                await sender.send(plan.topic, plan.value, plan.key, plan.partition)
        await sender.confirm()
    except KafkaError as exc:
        raise RetryableError(f"replay interrupted: {exc}") from exc
    finally:
        await sender.stop()
    return plans


def rerun_task(task: TaskSubmitted, tag: str, now: datetime) -> TaskSubmitted:
    """A copy of a task as a new run: id ``<old>.rerun-<tag>``, label ``rerun_of: <old>``.

    Raises:
        ConfigurationError: The new id is too long for a task id.
    """
    values = task.model_dump()
    values.update(
        task_id=f"{task.task_id}.rerun-{tag}",
        labels={**task.labels, "rerun_of": task.task_id},
        submitted_at=now,
    )
    try:
        return TaskSubmitted.model_validate(values)
    except ValidationError as exc:
        raise ConfigurationError(f"cannot rerun task {task.task_id!r}: {exc}") from None


class ReplayProgress(Protocol):
    """Told how far a range replay is (the CLI draws a progress bar with it)."""

    def started(self, total: int) -> None:
        """The replay reads at most ``total`` records."""

    def advanced(self, count: int) -> None:
        """``count`` more records were read."""


@dataclass(frozen=True)
class RangeReplay:
    """What a range replay did (or, with ``dry_run``, would do).

    Attributes:
        topic: The topic replayed.
        since: Start of the range (inclusive).
        until: End of the range (exclusive).
        replayed: Records re-published (with ``rerun``: tasks resubmitted as new runs),
            per partition of the topic they were read from.
        new_runs: With ``rerun``: the run ids of the copies, in order, each once.
        skipped: With ``rerun``: records that are not a valid task, or whose copy's id
            would be too long; nothing was sent for them.
        repeats: With ``rerun``: records of a task already rerun by this replay (the task
            was on the topic twice); its copy was sent once.
        rerun_tag: With ``rerun``: the suffix of the new run ids (``<old>.rerun-<tag>``).
        dry_run: Nothing was sent.
    """

    topic: str
    since: datetime
    until: datetime
    replayed: dict[int, int] = field(default_factory=dict)
    new_runs: tuple[str, ...] = ()
    skipped: int = 0
    repeats: int = 0
    rerun_tag: str | None = None
    dry_run: bool = False

    @property
    def total(self) -> int:
        """Records replayed over every partition."""
        return sum(self.replayed.values())


def _replayable(catalog: TopicCatalog, topic_name: str, rerun: bool) -> Topic:
    topic = catalog.by_name(topic_name)
    if topic == catalog.run_state:
        raise ConfigurationError(
            f"{topic.name} is the coordinator's changelog: replaying old states would roll "
            "runs back"
        )
    if topic == catalog.dead_letter:
        raise ConfigurationError(
            f"{topic.name} holds dead letters: replay them with `baton dlq replay`"
        )
    if rerun and topic != catalog.tasks:
        raise ConfigurationError(f"--rerun is for {catalog.tasks.name} only, not {topic.name}")
    return topic


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def replay_range(
    bootstrap: str,
    catalog: TopicCatalog,
    topic_name: str,
    since: datetime,
    until: datetime,
    rerun: bool = False,
    *,
    dry_run: bool = False,
    progress: ReplayProgress | None = None,
    rerun_tag: str | None = None,
    codec: Codec | None = None,
    now: datetime | None = None,
) -> RangeReplay:
    """Re-publish every record of a catalog topic with a timestamp in ``[since, until)``.

    Each partition is read from the first offset at or after ``since`` up to the first
    record at or after ``until``, or its end offset when the replay began (so the replay
    never reads its own writes). Each record goes back to its own partition with its own key,
    value and headers.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        topic_name: The full name of the topic to replay.
        since: Start of the range (aware, inclusive).
        until: End of the range (aware, exclusive).
        rerun: Tasks topic only: submit each task as a new run (``rerun_task``) instead.
        dry_run: Read and count, send nothing.
        progress: Told the number of records to read, then each record read.
        rerun_tag: The suffix of new run ids; default: 8 random hex digits.
        codec: Decodes tasks (Avro or JSON) and encodes their copies.
        now: The copies' ``submitted_at``; default: the current time.

    Raises:
        ConfigurationError: Not a catalog topic, not a topic to replay, ``rerun`` on a topic
            other than tasks, or a range that is empty or has naive times.
        RetryableError: The cluster cannot be reached or stops answering.
    """
    topic = _replayable(catalog, topic_name, rerun)
    for name, moment in (("since", since), ("until", until)):
        if moment.utcoffset() is None:
            raise ConfigurationError(f"{name} must carry a time zone, not {moment.isoformat()}")
    if since >= until:
        raise ConfigurationError(
            f"the range is empty: {since.isoformat()} is not before {until.isoformat()}"
        )
    codec = codec or Codec()
    now = now or datetime.now(UTC)
    tag = rerun_tag or uuid.uuid4().hex[:8]
    replayed: dict[int, int] = {}
    new_runs: dict[str, None] = {}
    skipped = repeats = 0
    sender = None if dry_run else await _Sender.start(bootstrap, codec)
    try:
        async with consumer(bootstrap) as client:
            tps = await partitions_of(client, topic)
            ranges = await ranges_since(client, tps, since)
            if progress is not None:
                progress.started(sum(end - start for start, end in ranges.values()))
            async for record in scan(client, ranges, until_ms=_epoch_ms(until)):
                if progress is not None:
                    progress.advanced(1)
                if rerun:
                    try:
                        task = codec.decode_for(catalog.tasks, record.value, record.key)
                        if not isinstance(task, TaskSubmitted):
                            raise DecodeError(f"a {type(task).__name__}, not a task")
                        copy = rerun_task(task, tag, now)
                    except (DecodeError, ConfigurationError):
                        skipped += 1
                        continue
                    if copy.task_id in new_runs:
                        repeats += 1
                        continue
                    new_runs[copy.task_id] = None
                    if sender is not None:
                        await sender.send(
                            catalog.tasks.name,
                            codec.encode(copy),
                            copy.task_id.encode(),
                            partition_for(copy.task_id, catalog.tasks.partitions),
                        )
                elif sender is not None:
                    await sender.send(
                        topic.name, record.value, record.key, record.partition, list(record.headers)
                    )
                replayed[record.partition] = replayed.get(record.partition, 0) + 1
        if sender is not None:
            await sender.confirm()
    except KafkaError as exc:
        raise RetryableError(f"replay of {topic.name} interrupted: {exc}") from exc
    finally:
        if sender is not None:
            await sender.stop()
    return RangeReplay(
        topic=topic.name,
        since=since,
        until=until,
        replayed=dict(sorted(replayed.items())),
        new_runs=tuple(new_runs),
        skipped=skipped,
        repeats=repeats,
        rerun_tag=tag if rerun else None,
        dry_run=dry_run,
    )
