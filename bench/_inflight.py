"""T5: how many runs one worker keeps in flight on a slow model at >= 90% of the ideal rate.

One ``baton worker`` (exactly-once, baton's default) with ``BATON_PROCESSOR_CONCURRENCY``
raised to the highest level (when that is above baton's default, 256 steps of a kind at
once), so the processors' own cap never binds. The workflow is
``bench-linear5-tail``: the five-step chain whose two ``llm`` steps use the scripted route
``tail800`` (median 800 ms, log-normal sigma 0.5: mean ~906 ms, p99 ~2.6 s per call).

The ramp: N runs are kept in flight (a new run is submitted for every result, so N runs
always have no result yet), N rising through the levels. At each level the load settles
for ``settle_s`` seconds, then a window of ``window_s`` seconds counts the runs completed
in it. The ideal rate is N over the mean run time at zero orchestration cost: the mean,
over those runs, of the sum of their steps' processor times (each step's
``finished_at - started_at``, from the run result's step summaries). A level keeps the
ideal when its rate is at least ``threshold`` of it. The ramp stops after the first level
that does not, so it is bounded in time: at most ``levels x (settle_s + window_s)``.

Memory: the worker's resident set (psutil) sampled twice a second in each window; per run
is (the window's median - the median before the ramp, nothing in flight) / N.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench._processes import rss_bytes
from bench._report import InflightLevel, InflightSettings, Measurement, Repetition
from bench._stats import percentile, spread
from bench._subjects import BatonSubject, Bench
from bench._workload import (
    ROUTE_LATENCIES,
    TAIL_ROUTE,
    TAIL_WORKFLOW,
    task,
)
from streams._client import BatonClient
from topics import RunResult, RunStatus, TaskSubmitted

__all__ = [
    "THRESHOLD",
    "Arrival",
    "InflightPlan",
    "highest_kept",
    "level_outcome",
    "measure_inflight",
]

#: Share of the ideal rate a level must keep (BENCH.md: 90%).
THRESHOLD = 0.9

#: baton's default BATON_PROCESSOR_CONCURRENCY: raised when a level needs more.
DEFAULT_CONCURRENCY = 256

#: llm steps per run of the workflow (draft, review): what the model's latency multiplies.
_LLM_STEPS = 2


@dataclass(frozen=True)
class InflightPlan:
    """How T5 runs.

    Attributes:
        levels: In-flight levels, lowest first.
        settle_s: Seconds at a level before its window opens.
        window_s: Seconds a level's window lasts.
        warmup_runs: Zero-latency runs before the ramp (not measured).
        threshold: Share of the ideal rate a level must keep.
    """

    levels: tuple[int, ...]
    settle_s: float
    window_s: float
    warmup_runs: int = 30
    threshold: float = THRESHOLD


@dataclass(frozen=True)
class Arrival:
    """A run's result as the load saw it: when it was submitted and when it came back."""

    result: RunResult
    submitted: float
    arrived: float


def _steps_ms(result: RunResult) -> float | None:
    """The sum of a run's step times (processor clock), or ``None`` when one is unknown."""
    durations = [step.duration_ms for step in result.steps]
    if not durations or any(d is None for d in durations):
        return None
    return sum(d for d in durations if d is not None)


def level_outcome(
    in_flight: int,
    arrivals: Sequence[Arrival],
    window: tuple[float, float],
    settle_s: float,
    rss_samples: Sequence[float],
    rss_baseline: float,
    threshold: float,
    cpu: dict[str, float] | None = None,
) -> InflightLevel:
    """What one level did: its rate against the ideal, and its memory per run in flight."""
    start, end = window
    inside = [a for a in arrivals if start <= a.arrived < end]
    completed = [a for a in inside if a.result.status == RunStatus.completed]
    unfinished: dict[str, int] = {}
    for a in inside:
        if a.result.status != RunStatus.completed:
            unfinished[a.result.status.value] = unfinished.get(a.result.status.value, 0) + 1
    seconds = max(end - start, 1e-9)
    rate = len(completed) / seconds
    spans = [s for s in (_steps_ms(a.result) for a in completed) if s is not None]
    mean_steps = sum(spans) / len(spans) if spans else 0.0
    runs = [(a.arrived - a.submitted) * 1000 for a in completed]
    ideal = in_flight / (mean_steps / 1000) if mean_steps > 0 else 0.0
    fraction = rate / ideal if ideal > 0 else 0.0
    rss = percentile(rss_samples, 50) if rss_samples else rss_baseline
    return InflightLevel(
        in_flight=in_flight,
        settle_s=settle_s,
        window_s=round(seconds, 3),
        completed=len(completed),
        rate_per_s=rate,
        mean_steps_ms=mean_steps,
        mean_run_ms=sum(runs) / len(runs) if runs else 0.0,
        ideal_rate_per_s=ideal,
        fraction=fraction,
        keeps_ideal=fraction >= threshold,
        rss_bytes=rss,
        rss_per_run_kib=(rss - rss_baseline) / in_flight / 1024,
        cpu_percent=cpu or {},
        unfinished=unfinished,
    )


def highest_kept(levels: Sequence[InflightLevel]) -> InflightLevel | None:
    """The highest level that kept the ideal rate, if any did."""
    kept = [level for level in levels if level.keeps_ideal]
    return max(kept, key=lambda level: level.in_flight) if kept else None


@dataclass
class _KeptInFlight:
    """Keeps ``target`` runs of a workflow in flight: a new submission for every result."""

    client: BatonClient
    prefix: str
    text: str
    workflow: str
    target: int = 0
    arrivals: list[Arrival] = field(default_factory=list)
    outstanding: dict[str, float] = field(default_factory=dict)
    pending: list[TaskSubmitted] = field(default_factory=list)
    submitted: int = 0
    running: bool = True

    def _submit(self, count: int) -> None:
        now = time.monotonic()
        for _ in range(count):
            run_id = f"{self.prefix}-t5-{self.submitted:07d}"
            self.submitted += 1
            self.outstanding[run_id] = now
            self.pending.append(task(run_id, self.text, self.workflow))

    def raise_to(self, target: int) -> None:
        """Keep ``target`` runs in flight from now on."""
        self.target = target
        self._submit(max(0, target - len(self.outstanding)))

    def _arrived(self, result: RunResult) -> None:
        submitted = self.outstanding.pop(result.run_id, None)
        if submitted is None:
            return
        self.arrivals.append(Arrival(result, submitted, time.monotonic()))
        if self.running:
            self._submit(max(0, self.target - len(self.outstanding)))

    async def send_loop(self) -> None:
        """Send what was submitted, in batches, until stopped."""
        while self.running or self.pending:
            if self.pending:
                batch, self.pending = self.pending, []
                await self.client.send(batch)
            else:
                await asyncio.sleep(0.005)

    async def receive_loop(self) -> None:
        """Collect results until stopped."""
        while self.running:
            if not self.outstanding:
                await asyncio.sleep(0.05)
                continue
            await self.client.wait(list(self.outstanding), timeout_s=0.25, on_result=self._arrived)


async def _sample_rss(pid: int | None, seconds: float, every: float = 0.5) -> list[float]:
    samples = []
    deadline = time.monotonic() + seconds
    while True:
        value = rss_bytes(pid)
        if value is not None:
            samples.append(value)
        left = deadline - time.monotonic()
        if left <= 0:
            return samples
        await asyncio.sleep(min(every, left))


async def measure_inflight(
    bench: Bench, plan: InflightPlan, say: Callable[[str], None]
) -> Measurement:
    """Run the ramp on a fresh worker; one measurement, ``inflight/exactly_once``."""
    concurrency = max(DEFAULT_CONCURRENCY, *plan.levels)
    subject = BatonSubject(
        bench,
        "exactly_once",
        "inflight",
        settings={"BATON_PROCESSOR_CONCURRENCY": str(concurrency)},
    )
    latency = ROUTE_LATENCIES[TAIL_ROUTE]
    levels: list[InflightLevel] = []
    stopped = "every level kept the ideal rate"
    try:
        say(f"T5: starting {subject.key} (processor concurrency {concurrency})")
        await subject.setup()
        say(f"  warm-up {subject.key}: {plan.warmup_runs} zero-latency runs")
        await subject.warmup(plan.warmup_runs)
        assert subject.client is not None and subject.worker is not None
        pid = subject.worker.pid
        await asyncio.sleep(1.0)
        baseline = percentile(await _sample_rss(pid, 2.0), 50)
        load = _KeptInFlight(subject.client, subject.prefix, subject.text, TAIL_WORKFLOW)
        tasks = [asyncio.create_task(load.send_loop()), asyncio.create_task(load.receive_loop())]
        try:
            for level in plan.levels:
                load.raise_to(level)
                await asyncio.sleep(plan.settle_s)
                meter = bench.meter()
                meter.start()
                opened = time.monotonic()
                samples = await _sample_rss(pid, plan.window_s)
                closed = time.monotonic()
                cpu = meter.stop()
                subject.worker.check_alive()
                outcome = level_outcome(
                    level,
                    load.arrivals,
                    (opened, closed),
                    plan.settle_s,
                    samples,
                    baseline,
                    plan.threshold,
                    cpu,
                )
                levels.append(outcome)
                say(
                    f"  {level} in flight: {outcome.rate_per_s:.1f} runs/s of an ideal "
                    f"{outcome.ideal_rate_per_s:.1f} ({outcome.fraction:.0%}), "
                    f"{outcome.rss_per_run_kib:.1f} KiB per run in flight"
                )
                if not outcome.keeps_ideal:
                    stopped = (
                        f"stopped after {level} in flight: {outcome.fraction:.0%} of the ideal "
                        f"rate, under {plan.threshold:.0%}"
                    )
                    break
        finally:
            load.running = False
            for running in tasks:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running
    finally:
        with contextlib.suppress(Exception):
            await subject.teardown()
    reps = [
        Repetition(
            elapsed_s=level.window_s,
            runs=level.completed,
            completed_runs=level.completed,
            events=0,
            runs_per_s=level.rate_per_s,
            events_per_s=0.0,
            cpu_percent=level.cpu_percent,
        )
        for level in levels
    ]
    return Measurement(
        key=subject.key,
        kind="inflight",
        subject="baton",
        guarantee=subject.guarantee,
        process_role=subject.role,
        topic_prefix=subject.prefix,
        warmup_runs=subject.warmup_runs,
        repetitions=reps,
        runs_per_s=spread([r.runs_per_s for r in reps]) if reps else None,
        inflight=levels,
        inflight_settings=InflightSettings(
            levels=list(plan.levels),
            threshold=plan.threshold,
            settle_s=plan.settle_s,
            window_s=plan.window_s,
            workflow=TAIL_WORKFLOW,
            route=TAIL_ROUTE,
            latency_median_ms=latency.latency_ms,
            latency_sigma=latency.sigma,
            model_mean_step_ms=latency.mean_ms,
            processor_concurrency=concurrency,
            rss_baseline_bytes=baseline,
            stopped=stopped,
        ),
        notes=[
            f"BATON_PROCESSOR_CONCURRENCY={concurrency} (baton's default is 256); "
            f"model mean per run {_LLM_STEPS * latency.mean_ms:.0f} ms "
            f"({_LLM_STEPS} llm steps); {stopped}"
        ],
    )
