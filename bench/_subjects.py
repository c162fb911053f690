"""What is measured: baton (one worker, one guarantee), the raw pipe B1 and bare Faust B2.

A subject owns its topic prefix and its process, warms up, and runs one repetition at a
time: closed loop (submit N runs at once, time to the last result) or, for baton, open loop
(submit on a fixed schedule). ``Bench`` is what they share: the broker, a scratch directory,
the partition count and every process alive, whose CPU each repetition reads.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench._kafka import create_plain_topics, fresh_prefix, prepare_catalog_topics
from bench._processes import (
    Broker,
    CpuMeter,
    FaustPipeProcess,
    ManagedProcess,
    RawPipeProcess,
    WorkerProcess,
)
from bench._rawpipe import PipeTopics
from bench._report import Repetition
from bench._schedule import OpenLoopSchedule, drive
from bench._workload import (
    EVENTS_PER_RUN,
    PAYLOAD_BYTES,
    STEPS,
    WORKFLOW_NAME,
    bench_workflows,
    payload,
    task,
)
from streams._client import BatonClient
from streams._workflows import deploy_workflows
from streams.workflow import parse_workflow
from topics import Codec, RunResult, RunStatus, StepKind, TaskSubmitted, TopicCatalog, partition_for

__all__ = [
    "BENCH_ROLE",
    "BROKER_ROLE",
    "BatonSubject",
    "Bench",
    "FaustPipeSubject",
    "OpenLoopRun",
    "RawPipeSubject",
    "Subject",
    "repetition",
]

BENCH_ROLE = "bench (load generator)"
BROKER_ROLE = "broker"


@dataclass
class Bench:
    """What every subject of one suite run shares."""

    broker: Broker
    scratch: Path
    partitions: int
    models_file: Path
    processes: dict[str, ManagedProcess] = field(default_factory=dict)

    def meter(self) -> CpuMeter:
        """A CPU meter over the broker, this process and every process alive now."""
        pids: dict[str, int | None] = {BROKER_ROLE: self.broker.pid, BENCH_ROLE: os.getpid()}
        pids.update({role: p.pid for role, p in self.processes.items()})
        return CpuMeter(pids)


class Subject:
    """One thing measured, with its own prefix and process."""

    key: str
    role: str
    #: Measured repetitions per round: more for subjects whose repetition is short.
    passes: int = 1
    #: What the report calls it (``Measurement.subject``).
    kind: str = "baton"
    #: Whether its runs move events through Kafka (the peer's do not).
    counts_events: bool = True
    guarantee: str = "at_least_once"
    prefix: str = ""
    warmup_runs: int = 0

    async def setup(self) -> None:
        """Create its topics and start its process, until ready."""
        raise NotImplementedError

    def report_notes(self) -> list[str]:
        """What the report should say about it."""
        return []

    async def warmup(self, runs: int, label: str = "w") -> None:
        """Run ``runs`` closed-loop runs that are not measured."""
        await self.closed_loop(runs, label)

    async def closed_loop(self, runs: int, label: str) -> Repetition:
        """Submit ``runs`` at once; time from the first submission to the last result."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Stop its process and clients."""
        raise NotImplementedError


class BatonSubject(Subject):
    """baton: one ``baton worker`` with one processing guarantee."""

    def __init__(
        self,
        bench: Bench,
        guarantee: str,
        phase: str,
        settings: dict[str, str] | None = None,
    ) -> None:
        short = "alo" if guarantee == "at_least_once" else "eos"
        self.bench = bench
        self.guarantee = guarantee
        self.key = f"{phase}/{guarantee}"
        self.role = f"worker {short} ({phase})"
        self.prefix = fresh_prefix(f"{phase}-{short}")
        self.catalog = TopicCatalog(prefix=self.prefix, partitions=bench.partitions)
        self.workflows = [parse_workflow(text, "bench workflow") for text in bench_workflows()]
        self.text = payload(PAYLOAD_BYTES)
        self.settings = settings
        self.worker: WorkerProcess | None = None
        self.client: BatonClient | None = None
        self.warmup_runs = 0

    async def setup(self) -> None:
        bootstrap = self.bench.broker.bootstrap
        await prepare_catalog_topics(bootstrap, self.catalog)
        await deploy_workflows(bootstrap, self.catalog, Codec(), self.workflows)
        home = self.bench.scratch / self.prefix
        self.worker = WorkerProcess(
            bootstrap=bootstrap,
            catalog=self.catalog,
            home=home,
            models_file=self.bench.models_file,
            guarantee=self.guarantee,
            worker_id=self.prefix,
            settings=self.settings,
        )
        self.worker.start()
        self.bench.processes[self.role] = self.worker
        kinds = sorted({kind for _, kind in STEPS})
        await self.worker.wait_ready([self.catalog.steps(StepKind(k)).name for k in kinds])
        self.client = BatonClient(bootstrap, self.catalog)
        await self.client.__aenter__()

    async def warmup(self, runs: int, label: str = "w") -> None:
        self.warmup_runs += runs
        repetition = await self.closed_loop(runs, label)
        if repetition.completed_runs < runs:
            raise RuntimeError(
                f"{self.key}: only {repetition.completed_runs} of {runs} warm-up runs "
                f"completed ({repetition.unfinished}; {repetition.first_problem})"
            )

    def run_ids(self, label: str, count: int) -> list[str]:
        """Run ids of one repetition: ``<prefix>-<label>-<i>``."""
        return [f"{self.prefix}-{label}-{i:06d}" for i in range(count)]

    def tasks(self, run_ids: list[str], workflow: str = WORKFLOW_NAME) -> list[TaskSubmitted]:
        """One task per run id."""
        return [task(run_id, self.text, workflow) for run_id in run_ids]

    async def closed_loop(
        self, runs: int, label: str, workflow: str = WORKFLOW_NAME, events_per_run: int = 0
    ) -> Repetition:
        assert self.client is not None and self.worker is not None
        client = self.client
        run_ids = self.run_ids(label, runs)
        tasks = self.tasks(run_ids, workflow)
        last = [0.0]

        def arrived(_: RunResult) -> None:
            last[0] = time.monotonic()

        meter = self.bench.meter()
        meter.start()
        started = time.monotonic()
        sending = asyncio.create_task(client.send(tasks))
        results = await client.wait(run_ids, timeout_s=max(120.0, runs / 5), on_result=arrived)
        cpu = meter.stop()
        await sending
        self.worker.check_alive()
        elapsed = (last[0] or time.monotonic()) - started
        return repetition(runs, results, elapsed, cpu, events_per_run or EVENTS_PER_RUN)

    async def open_loop(
        self, schedule: OpenLoopSchedule, label: str, workflow: str = WORKFLOW_NAME
    ) -> OpenLoopRun:
        """Submit on ``schedule`` while collecting results; nothing waits on a completion."""
        assert self.client is not None and self.worker is not None
        client = self.client
        run_ids = self.run_ids(label, schedule.count)
        tasks = self.tasks(run_ids, workflow)
        index = {run_id: i for i, run_id in enumerate(run_ids)}
        finished: dict[int, float] = {}
        sends: list[asyncio.Task[int]] = []

        def arrived(result: RunResult) -> None:
            finished[index[result.run_id]] = time.monotonic()

        def submit(i: int) -> None:
            sends.append(asyncio.create_task(client.send([tasks[i]])))

        meter = self.bench.meter()
        before = await self.worker.written()
        meter.start()
        waiting = asyncio.create_task(
            client.wait(run_ids, timeout_s=schedule.duration_s + 120.0, on_result=arrived)
        )
        start, lateness = await drive(schedule, submit, time.monotonic, asyncio.sleep)
        await asyncio.gather(*sends)
        results = await waiting
        cpu = meter.stop()
        self.worker.check_alive()
        # The batches of the last runs commit within the commit interval of their results.
        await asyncio.sleep(0.5)
        after = await self.worker.written()
        elapsed = (max(finished.values()) if finished else time.monotonic()) - start
        return OpenLoopRun(
            run_ids=run_ids,
            start=start,
            finished=finished,
            lateness_s=lateness,
            repetition=repetition(schedule.count, results, elapsed, cpu),
            written={k: after.get(k, 0) - before.get(k, 0) for k in after},
        )

    async def teardown(self) -> None:
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
            self.bench.processes.pop(self.role, None)


@dataclass
class OpenLoopRun:
    """One open-loop repetition: which runs, when they were due and when they finished."""

    run_ids: list[str]
    start: float
    finished: dict[int, float]
    lateness_s: list[float]
    repetition: Repetition
    #: What the coordinator wrote to its own topics meanwhile (``/healthz`` ``written``).
    written: dict[str, int] = field(default_factory=dict)


def repetition(
    runs: int,
    results: dict[str, RunResult],
    elapsed: float,
    cpu: dict[str, float],
    events_per_run: int = EVENTS_PER_RUN,
) -> Repetition:
    """A closed- or open-loop repetition from the results that arrived in ``elapsed`` s."""
    completed = sum(1 for r in results.values() if r.status == RunStatus.completed)
    unfinished = Counter(
        r.status.value for r in results.values() if r.status != RunStatus.completed
    )
    if len(results) < runs:
        unfinished["no result"] = runs - len(results)
    problem = next(
        (
            f"{r.status.value}: {r.reason}"
            for r in results.values()
            if r.status != RunStatus.completed
        ),
        None,
    )
    elapsed = max(elapsed, 1e-9)
    return Repetition(
        unfinished=dict(unfinished),
        first_problem=problem,
        elapsed_s=round(elapsed, 4),
        runs=runs,
        completed_runs=completed,
        events=completed * events_per_run,
        runs_per_s=completed / elapsed,
        events_per_s=completed * events_per_run / elapsed,
        cpu_percent=cpu,
    )


class _PipeSubject(Subject):
    """A baseline pipe: records through the same 11 hops as a run, by a process of its own."""

    def __init__(self, bench: Bench, key: str, role: str, short: str) -> None:
        self.bench = bench
        self.key = key
        self.role = role
        self.kind = key.removeprefix("closed/")
        self.prefix = fresh_prefix(short)
        self.topics = PipeTopics(self.prefix)
        self.value = payload(PAYLOAD_BYTES).encode()
        self.process: RawPipeProcess | FaustPipeProcess | None = None
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.warmup_runs = 0

    def make_process(self, bootstrap: str, home: Path) -> RawPipeProcess | FaustPipeProcess:
        """The process that moves the records."""
        raise NotImplementedError

    async def setup(self) -> None:
        bootstrap = self.bench.broker.bootstrap
        await create_plain_topics(bootstrap, self.topics.all, self.bench.partitions)
        self.process = self.make_process(bootstrap, self.bench.scratch / self.prefix)
        self.process.start()
        self.bench.processes[self.role] = self.process
        await self.process.wait_ready()
        # The same producer settings as BatonClient, so submission costs the same.
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
        )
        await self.consumer.start()
        tps = [TopicPartition(self.topics.exit, p) for p in range(self.bench.partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)

    async def warmup(self, runs: int, label: str = "w") -> None:
        self.warmup_runs += runs
        repetition = await self.closed_loop(runs, label)
        if repetition.completed_runs < runs:
            raise RuntimeError(f"{self.role}: only {repetition.completed_runs} of {runs} came out")

    async def closed_loop(self, runs: int, label: str) -> Repetition:
        assert self.producer is not None and self.consumer is not None
        assert self.process is not None
        producer, consumer = self.producer, self.consumer
        keys = [f"{self.prefix}-{label}-{i:06d}" for i in range(runs)]
        wanted = {k.encode() for k in keys}
        partitions = self.bench.partitions

        async def send() -> None:
            for key in keys:
                await producer.send(
                    self.topics.entry,
                    self.value,
                    key=key.encode(),
                    partition=partition_for(key, partitions),
                )
            await producer.flush()

        meter = self.bench.meter()
        meter.start()
        started = time.monotonic()
        sending = asyncio.create_task(send())
        seen: set[bytes] = set()
        last = started
        deadline = started + max(120.0, runs / 5)
        while len(seen) < len(wanted) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    if record.key in wanted and record.key not in seen:
                        seen.add(record.key)
                        last = time.monotonic()
        cpu = meter.stop()
        await sending
        self.process.check_alive()
        elapsed = max(last - started, 1e-9)
        return Repetition(
            elapsed_s=round(elapsed, 4),
            runs=runs,
            completed_runs=len(seen),
            events=len(seen) * EVENTS_PER_RUN,
            runs_per_s=len(seen) / elapsed,
            events_per_s=len(seen) * EVENTS_PER_RUN / elapsed,
            cpu_percent=cpu,
        )

    async def teardown(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
        if self.process is not None:
            await asyncio.to_thread(self.process.stop)
            self.bench.processes.pop(self.role, None)


class RawPipeSubject(_PipeSubject):
    """B1: the raw aiokafka pipe, moving each record through the same 11 hops."""

    # One pass moves the same runs as a baton repetition in a tenth of the time, so a
    # scheduling hiccup weighs ten times more; three passes per round steady its median.
    passes = 3

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench, "closed/raw_pipe", "raw pipe", "b1")

    def make_process(self, bootstrap: str, home: Path) -> RawPipeProcess | FaustPipeProcess:
        return RawPipeProcess(
            bootstrap=bootstrap, prefix=self.prefix, hops=EVENTS_PER_RUN, home=home
        )


class FaustPipeSubject(_PipeSubject):
    """B2: the same hops through two plain Faust agents (``bench._faustpipe``)."""

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench, "closed/faust_pipe", "faust pipe", "b2")

    def make_process(self, bootstrap: str, home: Path) -> RawPipeProcess | FaustPipeProcess:
        return FaustPipeProcess(
            bootstrap=bootstrap,
            prefix=self.prefix,
            hops=EVENTS_PER_RUN,
            partitions=self.bench.partitions,
            home=home,
        )
