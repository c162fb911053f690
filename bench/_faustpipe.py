"""B2, bare Faust: the raw pipe's chain as plain Faust agents, configured as baton's app.

Two agents in one Faust app, like baton's coordinator and processors without anything they
do: ``coordinator`` reads ``pipe-in`` and ``pipe-results`` and sends each record on to
``pipe-requests`` (or, after the last hop, ``pipe-out``); ``processor`` reads
``pipe-requests`` and sends each record to ``pipe-results``. The hop-count header is all
that is read (``bench._rawpipe.next_topic`` routes, as in B1); keys and values are raw
bytes, never decoded; no tables. Same key, same partition on every hop.

The app is configured as ``streams.app.build_worker`` configures baton's processors app
(at-least-once, ``broker_commit_interval`` 0.5 s, ``broker_max_poll_records`` 500,
``stream_wait_empty`` off, memory store, static membership, no web server), so the figure
is what Faust itself costs per event on this machine.

Run as ``python -m bench._faustpipe --bootstrap ... --prefix ... --hops 11 --ready-file F``.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from bench._rawpipe import HOP_HEADER, PipeTopics, next_topic

__all__ = ["build_app", "hop_of", "main"]

#: baton's default ``commit_interval`` and ``session_timeout`` (streams._config.Settings).
COMMIT_INTERVAL_S = 0.5
SESSION_TIMEOUT_S = 15.0


def hop_of(headers: Any) -> int:
    """The hop count a Faust event carries (0 when it has none)."""
    if not headers:
        return 0
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if name == HOP_HEADER:
            return int(value)
    return 0


def build_app(bootstrap: str, topics: PipeTopics, hops: int, partitions: int, datadir: Path) -> Any:
    """The Faust app with its two agents (and a task that says when it is ready)."""
    import faust

    app = faust.App(
        f"{topics.prefix}-faustpipe",
        broker=[f"kafka://{a.strip()}" for a in bootstrap.split(",") if a.strip()],
        datadir=str(datadir),
        processing_guarantee="at_least_once",
        topic_partitions=partitions,
        topic_replication_factor=1,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        broker_commit_interval=COMMIT_INTERVAL_S,
        broker_max_poll_records=500,
        consumer_group_instance_id=f"{topics.prefix}-faustpipe",
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=max(1.0, SESSION_TIMEOUT_S / 6),
        store="memory://",
        autodiscover=False,
        web_enabled=False,
    )

    def channel(*names: str) -> Any:
        return app.topic(
            *names,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )

    outputs = {name: channel(name) for name in (topics.requests, topics.results, topics.exit)}

    async def forward(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            hop = hop_of(event.headers) + 1
            await outputs[next_topic(topics, hop, hops)].send(
                key=message.key,
                value=message.value,
                partition=message.partition,
                headers={HOP_HEADER: str(hop).encode()},
            )

    app.agent(channel(topics.entry, topics.results), name="coordinator")(forward)
    app.agent(channel(topics.requests), name="processor")(forward)
    return app


def _ready_when_assigned(app: Any, topics: PipeTopics, partitions: int, ready: Path) -> None:
    inputs = {topics.entry, topics.requests, topics.results}

    @app.task  # type: ignore[untyped-decorator]  # faust ships no types
    async def announce() -> None:
        while True:
            assigned = app.consumer.assignment() if app.consumer else set()
            if len([tp for tp in assigned if tp.topic in inputs]) == 3 * partitions and not (
                app.rebalancing
            ):
                ready.write_text("ready\n")
                return
            await asyncio.sleep(0.1)


def main() -> None:
    """Parse the arguments and run the Faust worker until SIGTERM or SIGINT."""
    import faust

    parser = argparse.ArgumentParser(prog="python -m bench._faustpipe")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--hops", type=int, required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--datadir", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    topics = PipeTopics(args.prefix)
    app = build_app(args.bootstrap, topics, args.hops, args.partitions, args.datadir)
    _ready_when_assigned(app, topics, args.partitions, args.ready_file)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
