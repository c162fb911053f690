"""The faults the suite injects, the fleet of workers they hit, and the schedule.

Each fault is a coroutine that hurts the fleet or the brokers and waits (polling, with a
deadline) until the fleet is whole again: every worker it stopped is back and serving, and
every partition has an owner. It returns what it did, for the report. Blocking work (starting
a worker or a broker, waiting for an API) runs in threads, so the results reader and the
reviewer keep going on the event loop meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.localkafka import LocalKafkaCluster, live_brokers
from tests.integration.chaos._live import Reviewer
from tests.integration.workers import Cluster, WorkerProcess, Workers

__all__ = ["FAULT_KINDS", "Fault", "Fleet", "inject", "schedule", "within"]

T = TypeVar("T")

#: The longest one fault may take, its recovery included (a rolling restart of four workers
#: is the longest: about 40 s measured).
FAULT_DEADLINE_S = 240.0


async def within(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """Await ``awaitable``, or fail with a message naming what it waited for.

    Every wait of the suite goes through a deadline: a hang is a failure that says where.
    """
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise AssertionError(f"still waiting after {seconds:g}s for {what}") from None


#: Every kind of fault, in the order one round of the schedule injects them.
FAULT_KINDS = (
    "worker_kill9",
    "broker_kill9",
    "worker_zombie",
    "worker_sigterm",
    "rebalance_parked",
    "worker_kill9",
    "rolling_restart",
)


@dataclass
class Fault:
    """One injected fault: what, where, when (``time.time()``), and what was seen."""

    kind: str
    target: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class Fleet:
    """The workers of a suite run, started and restarted under stable ids (static membership).

    Args:
        cluster: Their settings.
        kafka: The three-node cluster they use.
        env: Environment every worker gets.
    """

    def __init__(self, cluster: Cluster, kafka: LocalKafkaCluster, **env: str) -> None:
        self.cluster = cluster
        self.kafka = kafka
        self.workers = Workers(cluster)
        self.current: dict[str, WorkerProcess] = {}
        self.paused: set[str] = set()
        self._env = env

    async def start(self, worker_id: str) -> WorkerProcess:
        """Start (or restart) a worker and wait until its API answers."""
        worker = await asyncio.to_thread(self.workers.start, worker_id, ready=False, **self._env)
        self.current[worker_id] = worker
        await asyncio.to_thread(worker.wait_ready, 120.0)
        return worker

    def apis(self) -> list[str]:
        """The APIs of the workers that run and are not frozen."""
        return [
            w.api
            for wid, w in self.current.items()
            if wid not in self.paused and w.process is not None and w.process.poll() is None
        ]

    async def owners(self) -> dict[str, list[int]]:
        """The partitions each live worker's coordinator serves, by its ``/healthz``."""
        found: dict[str, list[int]] = {}
        async with httpx.AsyncClient(timeout=3) as http:
            for wid, worker in self.current.items():
                if wid in self.paused:
                    continue
                try:
                    health = (await http.get(f"{worker.api}/healthz")).json()
                except (httpx.HTTPError, ValueError):
                    continue
                found[wid] = sorted(int(p) for p in health.get("partitions", []))
        return found

    async def until_whole(self, timeout: float = 120.0, *, without: str | None = None) -> float:
        """Until every partition is served by exactly one live worker (not ``without``).

        Returns:
            Seconds it took.
        """
        began = time.monotonic()
        wanted = list(range(self.cluster.partitions))
        while True:
            owners = await self.owners()
            served = sorted(p for wid, ps in owners.items() if wid != without for p in ps)
            if served == wanted and (without is None or without not in owners):
                return time.monotonic() - began
            if time.monotonic() - began > timeout:
                raise AssertionError(f"partitions not served within {timeout:g}s: {owners}")
            await asyncio.sleep(0.3)

    async def retries_waiting(self) -> int:
        """Requests on the retry tiers that the retry relay has not sent on yet."""
        catalog = self.cluster.catalog
        topics = [catalog.retry(tier.name) for tier in catalog.retry_tiers]
        tps = [TopicPartition(t.name, p) for t in topics for p in range(t.partitions)]
        admin = AIOKafkaAdminClient(bootstrap_servers=self.cluster.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.cluster.bootstrap, group_id=None)
        try:
            await within(admin.start(), 30, "an admin client to start (retry tiers)")
            await within(consumer.start(), 30, "a consumer to start (retry tiers)")
            ends = await within(consumer.end_offsets(tps), 30, "the retry tiers' end offsets")
            committed = await within(
                admin.list_consumer_group_offsets(f"{self.cluster.prefix}-retry-relay"),
                30,
                "the retry relay's committed offsets",
            )
            return sum(ends[tp] - (committed[tp].offset if tp in committed else 0) for tp in tps)
        finally:
            await consumer.stop()
            await admin.close()

    def stop_all(self) -> None:
        """Stop every worker (a frozen one is thawed first)."""
        self.workers.stop_all()


FaultAction = Callable[[Fleet, Reviewer, Fault], Awaitable[None]]


async def _worker_kill9(fleet: Fleet, reviewer: Reviewer, fault: Fault) -> None:
    worker = fleet.current[fault.target]
    await asyncio.to_thread(worker.kill)
    fault.details["exit"] = "SIGKILL"
    await fleet.start(fault.target)
    fault.details["whole_after_s"] = round(await fleet.until_whole(), 2)


async def _worker_sigterm(fleet: Fleet, reviewer: Reviewer, fault: Fault) -> None:
    worker = fleet.current[fault.target]
    began = time.monotonic()
    await asyncio.to_thread(worker.stop)
    assert worker.process is not None
    fault.details["exit_status"] = worker.process.returncode
    fault.details["stop_s"] = round(time.monotonic() - began, 2)
    await fleet.start(fault.target)
    fault.details["whole_after_s"] = round(await fleet.until_whole(), 2)


async def _worker_zombie(fleet: Fleet, reviewer: Reviewer, fault: Fault) -> None:
    """SIGSTOP past the session timeout; the others take over; SIGCONT the zombie."""
    worker = fleet.current[fault.target]
    worker.pause()
    fleet.paused.add(fault.target)
    fault.details["taken_over_after_s"] = round(await fleet.until_whole(without=fault.target), 2)
    await asyncio.sleep(2)  # the others work on while it is frozen
    fault.details["frozen_s"] = round(time.time() - fault.started_at, 2)
    worker.resume()
    fleet.paused.discard(fault.target)
    fault.details["whole_after_s"] = round(await fleet.until_whole(), 2)


async def _broker_kill9(fleet: Fleet, reviewer: Reviewer, fault: Fault) -> None:
    node = fleet.kafka.nodes[int(fault.target.removeprefix("broker-")) - 1]
    others = next(n for n in fleet.kafka.nodes if n is not node)
    node.kill()
    began = time.monotonic()
    while node.node_id in await asyncio.to_thread(live_brokers, others.bootstrap):
        if time.monotonic() - began > 60:
            raise AssertionError(f"broker {node.node_id} is still listed 60 s after its kill")
        await asyncio.sleep(0.5)
    fault.details["fenced_after_s"] = round(time.monotonic() - began, 2)
    await asyncio.sleep(3)  # two brokers serve on their own for a while
    await asyncio.to_thread(node.start)
    fault.details["down_s"] = round(time.monotonic() - began, 2)
    fault.details["whole_after_s"] = round(await fleet.until_whole(), 2)


async def _rolling_restart(fleet: Fleet, reviewer: Reviewer, fault: Fault) -> None:
    steps = []
    for worker_id in sorted(fleet.current):
        began = time.monotonic()
        await asyncio.to_thread(fleet.current[worker_id].stop)
        await fleet.start(worker_id)
        await fleet.until_whole()
        steps.append({"worker": worker_id, "s": round(time.monotonic() - began, 2)})
    fault.details["restarts"] = steps


async def _rebalance_parked(fleet: Fleet, reviewer: Reviewer, fault: Fault) -> None:
    """A worker joins (``+w4``) or leaves (``-w4``) while approvals are parked and retries wait."""
    joins, worker_id = fault.target[0] == "+", fault.target[1:]
    reviewer.pause()
    try:
        began = time.monotonic()
        while True:
            parked = await reviewer.pending() or 0
            waiting = await fleet.retries_waiting()
            if parked >= 5 and waiting >= 1:
                break
            if time.monotonic() - began > 60:
                raise AssertionError(f"only {parked} approvals parked, {waiting} retries waiting")
            await asyncio.sleep(0.3)
        fault.details.update(approvals_parked=parked, retries_waiting=waiting)
        fault.details["owners_before"] = await fleet.owners()
        if joins:
            await fleet.start(worker_id)
        else:
            await asyncio.to_thread(fleet.current.pop(worker_id).stop)
        fault.details["whole_after_s"] = round(await fleet.until_whole(), 2)
        fault.details["owners_after"] = await fleet.owners()
    finally:
        reviewer.resume()


ACTIONS: dict[str, FaultAction] = {
    "worker_kill9": _worker_kill9,
    "worker_sigterm": _worker_sigterm,
    "worker_zombie": _worker_zombie,
    "broker_kill9": _broker_kill9,
    "rolling_restart": _rolling_restart,
    "rebalance_parked": _rebalance_parked,
}


def schedule(count: int, workers: int) -> list[Fault]:
    """``count`` faults: rounds of ``FAULT_KINDS``, targets turning through workers and brokers.

    The ``rebalance_parked`` fault of the first round adds a worker (``+w<workers + 1>``), of
    the next round takes it away again (``-w<workers + 1>``), and so on.
    """
    faults: list[Fault] = []
    fleet = [f"w{i}" for i in range(1, workers + 1)]
    extra = f"w{workers + 1}"
    turn = brokers = 0
    for i in range(count):
        kind = FAULT_KINDS[i % len(FAULT_KINDS)]
        if kind == "rebalance_parked":
            target = f"-{extra}" if extra in fleet else f"+{extra}"
            fleet = [w for w in fleet if w != extra] if extra in fleet else [*fleet, extra]
        elif kind == "broker_kill9":
            brokers += 1
            target = f"broker-{(brokers % 3) + 1}"
        elif kind == "rolling_restart":
            target = "all"
        else:
            turn += 1
            target = fleet[turn % len(fleet)]
        faults.append(Fault(kind, target))
    return faults


async def inject(fault: Fault, fleet: Fleet, reviewer: Reviewer) -> Fault:
    """Inject ``fault`` and wait until the fleet is whole again."""
    fault.started_at = time.time()
    try:
        await within(
            ACTIONS[fault.kind](fleet, reviewer, fault),
            FAULT_DEADLINE_S,
            f"fault {fault.kind} on {fault.target} to end and the fleet to be whole "
            f"(so far: {fault.details})",
        )
    finally:
        fault.ended_at = time.time()
    return fault
