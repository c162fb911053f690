"""T8: kill -9 a worker holding N runs, restart it, time the resumption, count the results.

How the worker comes to hold N runs: it runs the coordinator and only the ``transform``
and ``validate`` processors (``baton worker --processors transform,validate``). N runs of
``bench-linear5-hold`` (the five-step chain with a 30-minute ``draft`` timeout, so nothing
is dispatched twice while the runs wait) are submitted; each starts and parks at its first
step, ``draft`` (llm), whose request waits on ``steps.llm`` with no processor to take it.
When every run's request is on the topic, the coordinator holds N runs in flight in its
state (and its changelog), and the worker is killed with SIGKILL.

It is restarted at once with the same command, worker id, web port and home (as after a
reboot), and an ``llm`` processor is started beside it (``baton worker --no-coordinator
--processors llm``, its own worker id). (The restarted worker cannot take the llm
processor itself: restarted under the same id with other ``--processors``, its static
group membership keeps the old assignment and it never reads ``steps.llm``.) The clock
starts at the restart:

- ``ready``: ``/healthz`` shows every partition owned and every step topic read;
- ``resume`` (the figure): the first step request of an old run appended after the
  restart (broker LogAppendTime): the restarted coordinator has restored that run, taken
  its ``draft`` result and dispatched its next step;
- ``first step result``: the first old run's ``draft`` result appended (the llm processor);
- ``first result`` / ``all results``: the client reads the first / last old run's result.

Then ``results`` is read back whole with ``read_committed``: a run with no result is lost,
a run with more than one result record is a duplicate. The worker runs exactly-once
(baton's default), under which a duplicate result is a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bench._kafka import Stamped, fresh_prefix, prepare_catalog_topics, read_topic, wait_for_keys
from bench._processes import WorkerProcess
from bench._report import CrashOutcome, Measurement, Repetition
from bench._stats import cpu_shares, spread
from bench._subjects import Bench
from bench._workload import (
    EVENTS_PER_RUN,
    HOLD_WORKFLOW,
    PAYLOAD_BYTES,
    bench_workflows,
    payload,
    task,
)
from streams._client import BatonClient
from streams._workflows import deploy_workflows
from streams.workflow import parse_workflow
from topics import BUILTIN_KINDS, Codec, RunResult, RunStatus, StepKind, TopicCatalog

__all__ = ["CrashPlan", "count_by_key", "first_appended_after", "measure_crash"]

#: The processors the worker runs while it collects the runs: none for the held step.
HELD_STEP = "draft"
HOLDING_PROCESSORS = ("transform", "validate")
LLM_ROLE = "llm processor T8"


@dataclass(frozen=True)
class CrashPlan:
    """How T8 runs.

    Attributes:
        runs: Runs the killed worker holds.
        guarantee: The worker's processing guarantee.
        wait_s: Seconds to wait after the restart for every result (None: max(120, runs/10)).
    """

    runs: int
    guarantee: str = "exactly_once"
    wait_s: float | None = None

    @property
    def result_wait_s(self) -> float:
        """How long the bench waits for the results after the restart."""
        return self.wait_s if self.wait_s is not None else max(120.0, self.runs / 10)


def count_by_key(records: Iterable[Stamped], keys: set[bytes]) -> Counter[bytes]:
    """Records per key, for the keys asked about."""
    return Counter(r.key for r in records if r.key is not None and r.key in keys)


def first_appended_after(records: Iterable[Stamped], keys: set[bytes], since_ms: int) -> int | None:
    """The earliest broker timestamp at or after ``since_ms`` of a record with one of ``keys``."""
    stamps = [r.timestamp_ms for r in records if r.key in keys and r.timestamp_ms >= since_ms]
    return min(stamps) if stamps else None


def crash_outcome(
    *,
    runs: int,
    guarantee: str,
    held_at_kill: int,
    submit_to_held_s: float,
    ready_s: float | None,
    resume_s: float | None,
    first_step_result_s: float | None,
    first_result_s: float | None,
    all_results_s: float | None,
    per_run: Counter[bytes],
    results: dict[str, RunResult],
) -> CrashOutcome:
    """T8's outcome from the timings and the result records per run."""
    unfinished = Counter(
        r.status.value for r in results.values() if r.status != RunStatus.completed
    )
    problem = next(
        (
            f"{r.status.value}: {r.reason}"
            for r in results.values()
            if r.status != RunStatus.completed
        ),
        None,
    )
    with_result = len(per_run)
    return CrashOutcome(
        runs=runs,
        guarantee=guarantee,
        held_at_kill=held_at_kill,
        held_by=(
            f"each run parked at `{HELD_STEP}` (llm), its request on steps.llm; the worker "
            f"ran the coordinator and only the {', '.join(HOLDING_PROCESSORS)} processors; "
            "an llm-only processor worker started beside its restart"
        ),
        submit_to_held_s=round(submit_to_held_s, 3),
        ready_s=_rounded(ready_s),
        resume_s=_rounded(resume_s),
        first_step_result_s=_rounded(first_step_result_s),
        first_result_s=_rounded(first_result_s),
        all_results_s=_rounded(all_results_s),
        results=with_result,
        lost=runs - with_result,
        duplicates=sum(1 for count in per_run.values() if count > 1),
        result_records=sum(per_run.values()),
        unfinished=dict(unfinished),
        first_problem=problem,
    )


def _since(stamp_ms: int | None, start_ms: int) -> float | None:
    return (stamp_ms - start_ms) / 1000 if stamp_ms is not None else None


def _rounded(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


async def _time_ready(
    worker: WorkerProcess, topics: list[str], since: float, wait_s: float
) -> float | None:
    with contextlib.suppress(RuntimeError):
        await worker.wait_ready(topics, timeout_s=wait_s, poll_s=0.1)
        return time.monotonic() - since
    return None


async def measure_crash(bench: Bench, plan: CrashPlan, say: Callable[[str], None]) -> Measurement:
    """Collect N runs on a worker, kill it, restart it; one measurement, ``crash/<guarantee>``."""
    bootstrap = bench.broker.bootstrap
    short = "alo" if plan.guarantee == "at_least_once" else "eos"
    prefix = fresh_prefix(f"t8-{short}")
    catalog = TopicCatalog(prefix=prefix, partitions=bench.partitions)
    home = bench.scratch / prefix
    key = f"crash/{plan.guarantee}"
    role = "worker T8"
    await prepare_catalog_topics(bootstrap, catalog)
    await deploy_workflows(
        bootstrap, catalog, Codec(), [parse_workflow(text, "bench") for text in bench_workflows()]
    )

    def worker(name: str, processors: str, web_port: int | None = None) -> WorkerProcess:
        return WorkerProcess(
            bootstrap=bootstrap,
            catalog=catalog,
            home=home,
            models_file=bench.models_file,
            guarantee=plan.guarantee,
            worker_id=name,
            processors=processors,
            web_port=web_port,
            coordinator=name == prefix,
        )

    holding = ",".join(HOLDING_PROCESSORS)
    held = worker(prefix, holding)
    restarted: WorkerProcess | None = None
    llm: WorkerProcess | None = None
    run_ids = [f"{prefix}-{i:07d}" for i in range(plan.runs)]
    keys = {run_id.encode() for run_id in run_ids}
    text = payload(PAYLOAD_BYTES)
    arrived: list[float] = []
    held_topics = [catalog.steps(StepKind(k)).name for k in HOLDING_PROCESSORS]
    say(f"T8: starting {key}, holding {plan.runs} runs at `{HELD_STEP}`")
    held.start()
    bench.processes[role] = held
    try:
        await held.wait_ready(held_topics)
        async with BatonClient(bootstrap, catalog) as client:
            started = time.monotonic()
            for chunk in range(0, plan.runs, 1000):
                batch = run_ids[chunk : chunk + 1000]
                await client.send(task(run_id, text, HOLD_WORKFLOW) for run_id in batch)
            seen = await wait_for_keys(
                bootstrap,
                catalog.steps(StepKind.llm).name,
                catalog.partitions,
                keys,
                timeout_s=max(120.0, plan.runs / 20),
            )
            submit_to_held = time.monotonic() - started
            held.check_alive()
            if seen < plan.runs:
                raise RuntimeError(
                    f"only {seen} of {plan.runs} runs reached `{HELD_STEP}` in "
                    f"{submit_to_held:.0f} s:\n{held.log_tail()}"
                )
            early = await client.wait(run_ids, timeout_s=0.5)
            say(f"  {plan.runs} runs held after {submit_to_held:.1f} s; kill -9")
            held.kill()
            bench.processes.pop(role, None)
            restarted = worker(prefix, holding, web_port=held.web_port)
            llm = worker(f"{prefix}-llm", "llm")
            restart_wall_ms = int(time.time() * 1000)
            restart = time.monotonic()
            restarted.start()
            llm.start()
            bench.processes[role] = restarted
            bench.processes[LLM_ROLE] = llm
            meter = bench.meter()
            meter.start()
            ready = asyncio.create_task(
                _time_ready(restarted, held_topics, restart, plan.result_wait_s)
            )
            results = await client.wait(
                [r for r in run_ids if r not in early],
                timeout_s=plan.result_wait_s,
                on_result=lambda _: arrived.append(time.monotonic()),
            )
            cpu = meter.stop()
            ready_s = await ready
            results.update(early)
    finally:
        for process in (held, restarted, llm):
            if process is not None:
                await asyncio.to_thread(process.stop)
        bench.processes.pop(role, None)
        bench.processes.pop(LLM_ROLE, None)
    say(f"  reading back {key}")
    requests: list[Stamped] = []
    for kind in BUILTIN_KINDS:
        requests += await read_topic(bootstrap, catalog.steps(kind).name, catalog.partitions)
    resumed_ms = first_appended_after(requests, keys, restart_wall_ms)
    step_results = await read_topic(bootstrap, catalog.step_results.name, catalog.partitions)
    first_done_ms = first_appended_after(step_results, keys, restart_wall_ms)
    per_run = count_by_key(
        await read_topic(bootstrap, catalog.results.name, catalog.partitions), keys
    )
    all_in = len(results) == plan.runs
    outcome = crash_outcome(
        runs=plan.runs,
        guarantee=plan.guarantee,
        held_at_kill=plan.runs - len(early),
        submit_to_held_s=submit_to_held,
        ready_s=ready_s,
        resume_s=_since(resumed_ms, restart_wall_ms),
        first_step_result_s=_since(first_done_ms, restart_wall_ms),
        first_result_s=arrived[0] - restart if arrived else None,
        all_results_s=arrived[-1] - restart if arrived and all_in else None,
        per_run=per_run,
        results=results,
    )
    completed = sum(1 for r in results.values() if r.status == RunStatus.completed)
    elapsed = (arrived[-1] - restart) if arrived else plan.result_wait_s
    rep = Repetition(
        elapsed_s=round(elapsed, 3),
        runs=plan.runs,
        completed_runs=completed,
        events=completed * EVENTS_PER_RUN,
        runs_per_s=completed / max(elapsed, 1e-9),
        events_per_s=completed * EVENTS_PER_RUN / max(elapsed, 1e-9),
        cpu_percent=cpu,
        unfinished=outcome.unfinished | ({"no result": outcome.lost} if outcome.lost else {}),
        first_problem=outcome.first_problem,
    )
    say(
        f"  ready {outcome.ready_s} s, resumed {outcome.resume_s} s, all results "
        f"{outcome.all_results_s} s after the restart; {outcome.lost} lost, "
        f"{outcome.duplicates} duplicated"
    )
    return Measurement(
        key=key,
        kind="crash",
        subject="baton",
        guarantee=plan.guarantee,
        process_role=role,
        topic_prefix=prefix,
        repetitions=[rep],
        runs_per_s=spread([rep.runs_per_s]),
        cpu=cpu_shares([rep]),
        crash=outcome,
        notes=[
            f"N = {plan.runs} runs held at the kill (BENCH.md asks for 100k; see "
            "docs/benchmarks.md for what fits on this machine); recovery CPU is from the "
            "restart to the last result"
        ],
    )
