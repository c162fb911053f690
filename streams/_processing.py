"""The processor agents: one per step kind, each running many steps at once.

A processor agent reads ``StepRequested`` from its ``steps.<kind>`` topic, starts the step in
the background (up to ``processor_concurrency`` at once) and moves on; each step's
``StepResult`` goes to ``step-results`` when it finishes. The agent does not wait for steps
before its offsets are committed: if the worker dies with steps in flight, the coordinator
dispatches them again when their deadlines pass. A request whose deadline has already passed
is not run: the coordinator has dispatched its next attempt (or will, once it is back).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import faust

from processors import Processor, execute
from streams._emitter import Emitter
from topics import Codec, DecodeError, StepKind, StepRequested, TopicCatalog

__all__ = ["ProcessorAgents"]

log = logging.getLogger(__name__)

# Clocks on different machines disagree a little; a request is stale only clearly after.
_STALE_GRACE = timedelta(seconds=1)


class ProcessorAgents:
    """Installs one agent per step kind on the processors app.

    Args:
        app: The processors app.
        catalog: The topics.
        codec: Decodes requests, encodes results.
        emitter: Sends results.
        processors: What runs each kind.
        worker: This worker's name, recorded in every result.
        concurrency: Steps of one kind running at once.
        clock: The time.
    """

    def __init__(
        self,
        app: faust.App,
        catalog: TopicCatalog,
        codec: Codec,
        emitter: Emitter,
        processors: Mapping[StepKind, Processor],
        *,
        worker: str,
        concurrency: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.catalog = catalog
        self.codec = codec
        self.emitter = emitter
        self.worker = worker
        self.clock = clock
        self.concurrency = concurrency
        self.in_flight: set[asyncio.Task[None]] = set()
        self.completed = 0
        self.skipped_stale = 0
        for kind, processor in processors.items():
            topic = app.topic(
                catalog.steps(kind).name,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            )
            app.agent(topic, name=f"steps-{kind.value}")(self._agent_for(processor))

    def _agent_for(self, processor: Processor) -> Callable[[Any], Any]:
        slots = asyncio.Semaphore(self.concurrency)

        async def consume(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                try:
                    request = self.codec.decode(message.value, StepRequested)
                except DecodeError as exc:
                    log.warning("dead-lettering %s@%d: %s", message.topic, message.offset, exc)
                    await self.emitter.dead_letter(
                        message, error_class="DecodeError", reason=exc.reason, now=self.clock()
                    )
                    continue
                if self.clock() > request.deadline_at + _STALE_GRACE:
                    self.skipped_stale += 1
                    log.info(
                        "not running %s/%s attempt %d: its deadline passed",
                        request.run_id,
                        request.step,
                        request.attempt,
                    )
                    continue
                await slots.acquire()
                task = asyncio.create_task(self._run(processor, request, slots))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)

        return consume

    async def _run(
        self, processor: Processor, request: StepRequested, slots: asyncio.Semaphore
    ) -> None:
        try:
            result = await execute(processor, request, worker=self.worker, now=self.clock)
            await self.emitter.send(result)
            self.completed += 1
        except Exception:  # the task must never die silently; the deadline recovers the step
            log.exception("could not report %s/%s", request.run_id, request.step)
        finally:
            slots.release()
