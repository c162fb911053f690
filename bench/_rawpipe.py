"""B1, the raw pipe: the least an aiokafka consume->produce loop can do per event.

One process, one consumer group, one batched loop: ``getmany`` up to 1000 records, send each
on to its next topic (same key, same partition), wait until every send is acknowledged, then
commit the input offsets (at-least-once, like baton's coordinator in that mode). No decoding,
no state, no model. A header counts the hops: a record entering on ``<prefix>.pipe-in`` makes
``hops`` consume->produce hops, alternating between ``pipe-requests`` and ``pipe-results``
like a run's step requests and step results, and leaves on ``pipe-out`` like a run result.

Run as ``python -m bench._rawpipe --bootstrap ... --prefix ... --hops 11``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

__all__ = ["HOP_HEADER", "PipeTopics", "next_topic", "run_pipe"]

HOP_HEADER = "hop"


@dataclass(frozen=True)
class PipeTopics:
    """The raw pipe's topics under one prefix (not baton topics: the baseline's own)."""

    prefix: str

    @property
    def entry(self) -> str:
        """Where records enter (like ``tasks``)."""
        return f"{self.prefix}.pipe-in"

    @property
    def requests(self) -> str:
        """Odd hops land here (like ``steps.*``)."""
        return f"{self.prefix}.pipe-requests"

    @property
    def results(self) -> str:
        """Even hops land here (like ``step-results``)."""
        return f"{self.prefix}.pipe-results"

    @property
    def exit(self) -> str:
        """Where records leave after the last hop (like ``results``)."""
        return f"{self.prefix}.pipe-out"

    @property
    def all(self) -> list[str]:
        """Every topic of the pipe."""
        return [self.entry, self.requests, self.results, self.exit]


def next_topic(topics: PipeTopics, hop: int, hops: int) -> str:
    """Where a record goes after its ``hop``-th consumption (1-based) of ``hops``."""
    if hop >= hops:
        return topics.exit
    return topics.requests if hop % 2 == 1 else topics.results


def _hop_of(headers: Any) -> int:
    for name, value in headers or ():
        if name == HOP_HEADER:
            return int(value)
    return 0


async def run_pipe(
    bootstrap: str, topics: PipeTopics, hops: int, ready_file: Path | None = None
) -> None:
    """Move records hop by hop until cancelled."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2
    )
    consumer = AIOKafkaConsumer(
        topics.entry,
        topics.requests,
        topics.results,
        bootstrap_servers=bootstrap,
        group_id=f"{topics.prefix}-pipe",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1000,
    )
    await producer.start()
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=100)
        if ready_file is not None:
            ready_file.write_text("ready\n")
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=1000)
            if not batch:
                continue
            deliveries = []
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batch.items():
                for record in records:
                    hop = _hop_of(record.headers) + 1
                    deliveries.append(
                        await producer.send(
                            next_topic(topics, hop, hops),
                            record.value,
                            key=record.key,
                            partition=tp.partition,
                            headers=[(HOP_HEADER, str(hop).encode())],
                        )
                    )
                offsets[tp] = records[-1].offset + 1
            await asyncio.gather(*deliveries)
            await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    """Parse the arguments and run the pipe until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench._rawpipe")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--hops", type=int, required=True)
    parser.add_argument("--ready-file", type=Path, default=None)
    args = parser.parse_args()

    async def serve() -> None:
        task = asyncio.create_task(
            run_pipe(args.bootstrap, PipeTopics(args.prefix), args.hops, args.ready_file)
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
