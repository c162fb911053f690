"""Deployed workflows: published to the compacted ``workflows`` topic, read by every worker.

``baton workflows deploy`` publishes a ``WorkflowDefinition`` keyed ``name@content-hash``.
Every worker reads the whole topic into a ``WorkflowBook``, so any worker can run any version,
and a run keeps the version it started on even after a newer one is deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams._deadletters import too_large
from streams._kafka import kafka_consumer, kafka_producer
from streams.workflow import Workflow, WorkflowError, parse_workflow
from topics import (
    Codec,
    DecodeError,
    RetryableError,
    TopicCatalog,
    WorkflowDefinition,
    client_source,
)

__all__ = ["WorkflowBook", "WorkflowFeed", "deploy_workflows", "read_workflows"]

log = logging.getLogger(__name__)


class WorkflowBook:
    """Every deployed workflow version, by content hash, and the latest version per name."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Workflow] = {}
        self._latest: dict[str, str] = {}
        self._deployed: dict[str, WorkflowDefinition] = {}

    def add(self, definition: WorkflowDefinition) -> Workflow:
        """Add a deployed version; it becomes the latest of its name.

        Raises:
            WorkflowError: The definition does not parse, or its content hash is wrong.
        """
        origin = f"{definition.name}@{definition.content_hash[:12]}"
        workflow = self._by_hash.get(definition.content_hash) or parse_workflow(
            definition.source, origin
        )
        if workflow.content_hash != definition.content_hash or workflow.name != definition.name:
            raise WorkflowError(origin, ["the definition's name or content hash does not match"])
        self._by_hash[workflow.content_hash] = workflow
        self._latest[workflow.name] = workflow.content_hash
        self._deployed[workflow.content_hash] = definition
        return workflow

    def by_hash(self, content_hash: str) -> Workflow | None:
        """The version with this content hash."""
        return self._by_hash.get(content_hash)

    def resolve(self, name: str, version: str | None = None) -> Workflow | None:
        """The version a task asks for: latest, a content-hash prefix, or ``v<N>``."""
        if version is None:
            latest = self._latest.get(name)
            return self._by_hash.get(latest) if latest else None
        candidates = [w for w in self._by_hash.values() if w.name == name]
        if version.startswith("v") and version[1:].isdigit():
            numbered = [w for w in candidates if w.spec.version == int(version[1:])]
            return self._newest(numbered)
        matching = [w for w in candidates if w.content_hash.startswith(version)]
        return matching[0] if len(matching) == 1 else None

    def _newest(self, workflows: list[Workflow]) -> Workflow | None:
        if not workflows:
            return None
        return max(workflows, key=lambda w: self._deployed[w.content_hash].deployed_at)

    def deployed(self) -> list[tuple[WorkflowDefinition, bool]]:
        """Every deployed version with whether it is the latest of its name, newest first."""
        rows = [
            (definition, self._latest.get(definition.name) == content_hash)
            for content_hash, definition in self._deployed.items()
        ]
        return sorted(rows, key=lambda row: (row[0].name, row[0].deployed_at), reverse=True)


class WorkflowFeed:
    """Keeps a ``WorkflowBook`` current by reading the workflows topic from the beginning.

    Args:
        bootstrap: Kafka bootstrap servers.
        catalog: The topics.
        codec: Decodes the definitions.
        book: The book to fill.
    """

    def __init__(
        self, bootstrap: str, catalog: TopicCatalog, codec: Codec, book: WorkflowBook
    ) -> None:
        self.book = book
        self._topic = TopicPartition(catalog.workflows.name, 0)
        self._codec = codec
        self._bootstrap = bootstrap
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        #: Called with each record that is not a valid definition, and why.
        self.on_poison: Callable[[Any, str], Awaitable[None]] | None = None
        self._position = 0
        self._advanced = asyncio.Event()
        self._started = asyncio.Event()

    async def start(self) -> None:
        """Start reading in the background."""
        self._consumer = kafka_consumer(
            bootstrap_servers=self._bootstrap, enable_auto_commit=False, group_id=None
        )
        await self._consumer.start()
        self._consumer.assign([self._topic])
        await self._consumer.seek_to_beginning(self._topic)
        self._task = asyncio.create_task(self._run(), name="workflow-feed")
        self._started.set()

    async def stop(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(self._topic, timeout_ms=500)
            for record in batches.get(self._topic, []):
                problem = too_large(record) or self._apply(record.value, record.offset)
                if problem is not None and self.on_poison is not None:
                    await self.on_poison(record, problem)
            self._position = await self._consumer.position(self._topic)
            self._advanced.set()

    def _apply(self, value: bytes | None, offset: int) -> str | None:
        """Add one definition; returns why it was refused, if it was."""
        if value is None:
            return None
        try:
            definition = self._codec.decode(value, WorkflowDefinition)
            self.book.add(definition)
        except (DecodeError, WorkflowError) as exc:
            log.error("skipping the workflow definition at offset %d: %s", offset, exc)
            return str(exc)
        return None

    async def catch_up(self, timeout_s: float = 10.0) -> None:
        """Wait until every definition published before now has been read.

        Raises:
            RetryableError: The topic could not be read up to its end in time.
        """
        deadline = time.monotonic() + timeout_s
        try:
            await asyncio.wait_for(self._started.wait(), timeout_s)
        except TimeoutError:
            raise RetryableError("the workflow feed has not started") from None
        assert self._consumer is not None
        end = (await self._consumer.end_offsets([self._topic]))[self._topic]
        while self._position < end:
            self._advanced.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RetryableError(f"workflow definitions not read up to offset {end}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)


async def read_workflows(bootstrap: str, catalog: TopicCatalog, codec: Codec) -> WorkflowBook:
    """Read every deployed workflow once (for ``baton workflows list``)."""
    book = WorkflowBook()
    feed = WorkflowFeed(bootstrap, catalog, codec, book)
    await feed.start()
    try:
        await feed.catch_up()
    finally:
        await feed.stop()
    return book


async def deploy_workflows(
    bootstrap: str, catalog: TopicCatalog, codec: Codec, workflows: list[Workflow]
) -> list[WorkflowDefinition]:
    """Publish workflow versions; every worker picks them up.

    Deploying the same content again is harmless: the key (``name@hash``) is the same, and
    that version becomes the latest again.
    """
    producer = kafka_producer(
        client_source("cli"),
        codec,
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    deployed = []
    try:
        for workflow in workflows:
            definition = WorkflowDefinition(
                name=workflow.name,
                version=workflow.spec.version,
                content_hash=workflow.content_hash,
                source=workflow.source,
                deployed_at=datetime.now(UTC),
                deployed_by=_who(),
            )
            await producer.send_and_wait(
                catalog.workflows.name,
                codec.encode(definition),
                key=f"{workflow.name}@{workflow.content_hash}".encode(),
                partition=0,
            )
            deployed.append(definition)
    finally:
        await producer.stop()
    return deployed


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
