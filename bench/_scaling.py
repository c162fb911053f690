"""T11: runs/s with 1, 2, then 3 worker processes in one consumer group, closed loop.

Every worker is a ``baton worker`` on the same topic prefix (so one coordinator group and
one processors group), with its own ``BATON_WORKER_ID`` and ``BATON_WEB_PORT``, exactly-once
(baton's default). The group grows one worker at a time: after each start the bench waits
until the group has settled (``/healthz`` of every worker: each owns at least one
partition, together they own each partition once, together their processors read every
step topic, twice in a row), then warms up and runs the repetitions of ``bench-linear5``
(N runs submitted at once; runs/s = completed / (last result - first submission)).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from bench._kafka import fresh_prefix, prepare_catalog_topics
from bench._processes import WorkerProcess, health
from bench._report import Measurement, Repetition
from bench._stats import cpu_shares, spread
from bench._subjects import Bench, repetition
from bench._workload import PAYLOAD_BYTES, STEPS, bench_workflows, payload, task
from streams._client import BatonClient
from streams._workflows import deploy_workflows
from streams.workflow import parse_workflow
from topics import Codec, RunResult, StepKind, TopicCatalog

__all__ = ["GUARANTEE", "ScalingPlan", "group_settled", "measure_scaling"]

GUARANTEE = "exactly_once"


@dataclass(frozen=True)
class ScalingPlan:
    """How T11 runs.

    Attributes:
        workers: Group sizes, in the order they are reached (a worker is added each time).
        runs: Runs per closed-loop repetition.
        repetitions: Repetitions per group size.
        warmup_runs: Runs after each size is reached, not measured.
    """

    workers: tuple[int, ...]
    runs: int
    repetitions: int
    warmup_runs: int


def group_settled(
    answers: Sequence[dict[str, object] | None], partitions: int, step_topics: set[str]
) -> bool:
    """Whether every worker answered and the group's work is spread over all of them.

    Each worker owns at least one partition (when there are enough), the workers together
    own each partition exactly once, and their processors together read every step topic.
    """
    if not answers or any(a is None for a in answers):
        return False
    owned: list[int] = []
    reading: set[str] = set()
    for answer in answers:
        assert answer is not None
        mine = answer.get("partitions", [])
        topics = answer.get("processing", [])
        if not isinstance(mine, list) or not isinstance(topics, list):
            return False
        if not mine and len(answers) <= partitions:
            return False
        owned.extend(int(p) for p in mine)
        reading.update(str(t) for t in topics)
    return sorted(owned) == list(range(partitions)) and step_topics <= reading


class _Group:
    """The workers of one prefix and a client."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.prefix = fresh_prefix("t11-eos")
        self.catalog = TopicCatalog(prefix=self.prefix, partitions=bench.partitions)
        self.workers: list[WorkerProcess] = []
        self.client: BatonClient | None = None
        self.text = payload(PAYLOAD_BYTES)
        self.step_topics = {
            self.catalog.steps(StepKind(kind)).name for kind in sorted({k for _, k in STEPS})
        }

    async def setup(self) -> None:
        bootstrap = self.bench.broker.bootstrap
        await prepare_catalog_topics(bootstrap, self.catalog)
        workflows = [parse_workflow(text, "bench") for text in bench_workflows()]
        await deploy_workflows(bootstrap, self.catalog, Codec(), workflows)
        self.client = BatonClient(bootstrap, self.catalog)
        await self.client.__aenter__()

    def role(self, index: int) -> str:
        return f"worker T11 #{index + 1}"

    async def add_worker(self, timeout_s: float = 120.0) -> float:
        """Start one more worker; wait until the group settles. Returns the seconds it took."""
        index = len(self.workers)
        worker = WorkerProcess(
            bootstrap=self.bench.broker.bootstrap,
            catalog=self.catalog,
            home=self.bench.scratch / self.prefix,
            models_file=self.bench.models_file,
            guarantee=GUARANTEE,
            worker_id=f"{self.prefix}-w{index + 1}",
        )
        started = time.monotonic()
        worker.start()
        self.workers.append(worker)
        self.bench.processes[self.role(index)] = worker
        deadline = started + timeout_s
        settled_once = False
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                for each in self.workers:
                    each.check_alive()
                answers = [await health(http, w.health_url) for w in self.workers]
                if group_settled(answers, self.catalog.partitions, self.step_topics):
                    if settled_once:
                        return time.monotonic() - started
                    settled_once = True
                else:
                    settled_once = False
                await asyncio.sleep(0.5)
        raise RuntimeError(
            f"the group of {len(self.workers)} did not settle in {timeout_s:.0f} s:\n"
            + worker.log_tail()
        )

    async def closed_loop(self, runs: int, label: str) -> Repetition:
        assert self.client is not None
        client = self.client
        run_ids = [f"{self.prefix}-{len(self.workers)}w-{label}-{i:06d}" for i in range(runs)]
        tasks = [task(run_id, self.text) for run_id in run_ids]
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
        for worker in self.workers:
            worker.check_alive()
        return repetition(runs, results, (last[0] or time.monotonic()) - started, cpu)

    async def teardown(self) -> None:
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.workers))
        for index in range(len(self.workers)):
            self.bench.processes.pop(self.role(index), None)


async def measure_scaling(
    bench: Bench, plan: ScalingPlan, say: Callable[[str], None]
) -> dict[str, Measurement]:
    """Grow one group through ``plan.workers``; one measurement per size, ``scale/<n>``."""
    group = _Group(bench)
    found: dict[str, Measurement] = {}
    try:
        say(f"T11: one group on {group.prefix}")
        await group.setup()
        for size in plan.workers:
            settle = 0.0
            while len(group.workers) < size:
                settle = await group.add_worker()
            say(f"  {size} worker(s) settled after {settle:.1f} s; warm-up {plan.warmup_runs} runs")
            await group.closed_loop(plan.warmup_runs, "w")
            reps = []
            for round_ in range(plan.repetitions):
                rep = await group.closed_loop(plan.runs, f"r{round_}")
                reps.append(rep)
                say(
                    f"  {size} worker(s), round {round_ + 1}/{plan.repetitions}: "
                    f"{rep.runs_per_s:,.1f} runs/s ({rep.completed_runs}/{rep.runs} in "
                    f"{rep.elapsed_s:.2f} s)"
                )
            key = f"scale/{size}"
            found[key] = Measurement(
                key=key,
                kind="closed_loop",
                subject="baton",
                guarantee=GUARANTEE,
                process_role=group.role(0),
                topic_prefix=group.prefix,
                warmup_runs=plan.warmup_runs,
                repetitions=reps,
                runs_per_s=spread([r.runs_per_s for r in reps]),
                events_per_s=spread([r.events_per_s for r in reps]),
                cpu=cpu_shares(reps),
                workers=size,
                notes=[f"the group settled {settle:.1f} s after its last worker started"],
            )
    finally:
        with contextlib.suppress(Exception):
            await group.teardown()
    return found
