"""T9, measured: a labelled mixed workload through baton, always-strong against routed + cached.

Two arms, each one ``baton worker`` on a fresh topic prefix with its own models file, both
calling the bench's loopback model server (``bench._chatserver``) under their own path:

- ``cost/strong``, the baseline: ``bench-cost-strong`` (every question to ``strong``), the
  response cache off (``BATON_CACHE_TTL=0``);
- ``cost/routed``: ``bench-cost-routed`` (label routing, ``cascade: [strong]``), the
  response cache at baton's default TTL.

Both start together and warm up on a prefix of question set 0; then each round runs the
next question set through both arms (rotated each round), so the arms of a round answer
the same questions and their costs can be paired. A set's tasks are submitted open loop at
a fixed rate (a repeat's first occurrence has been answered by the time it comes), and
the results collected; each run is judged against its labelled answer and its
``usage.cost_usd`` summed. The server's ledger gives the provider's side of the bill.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from bench._chatserver import ChatServer, Ledger
from bench._costload import (
    BASELINE_WORKFLOW,
    PRICES,
    ROUTED_WORKFLOW,
    baseline_workflow_yaml,
    cost_models_yaml,
    routed_workflow_yaml,
)
from bench._kafka import fresh_prefix
from bench._processes import WorkerProcess
from bench._questions import LabelledTask, MixSpec, question_sets, tally
from bench._report import CostRepetition, CostSettings, Measurement, Repetition
from bench._schedule import OpenLoopSchedule, drive
from bench._stats import cpu_shares, spread
from bench._subjects import Bench
from streams._client import BatonClient
from streams._config import Settings
from streams._workflows import deploy_workflows
from streams.workflow import parse_workflow
from topics import Codec, RunResult, StepKind, TaskSubmitted, TopicCatalog, create_topics

__all__ = ["ARMS", "CostPlan", "measure_cost"]

#: The arms, baseline first.
ARMS = ("strong", "routed")

#: baton's processing guarantee for both arms: its default.
GUARANTEE = "exactly_once"

#: Records a stage consumes on a run's path when its one step takes one attempt.
_EVENTS_PER_RUN = 3


@dataclass(frozen=True)
class CostPlan:
    """How T9 runs.

    Attributes:
        spec: The shape of each question set.
        repetitions: Measured question sets per arm.
        warmup_tasks: Tasks of set 0 each arm runs first, not measured.
        rate_per_s: Tasks submitted per second.
        seed: Seed of the question sets.
    """

    spec: MixSpec
    repetitions: int
    warmup_tasks: int
    rate_per_s: float = 50.0
    seed: int = 9


def cache_state(arm: str) -> str:
    """What the arm's worker does with the response cache, as the report says it."""
    field = Settings.model_fields.get("cache_ttl")
    if field is None:
        return "not available: this baton has no response cache (no cache_ttl setting)"
    if arm == "strong":
        return "off (BATON_CACHE_TTL=0)"
    return f"on (cache_ttl {field.default:g} s, baton's default)"


class CostArm:
    """One arm: a worker, its workflow and its routes on the model server."""

    def __init__(self, bench: Bench, arm: str, server: ChatServer) -> None:
        self.bench = bench
        self.arm = arm
        self.server = server
        self.key = f"cost/{arm}"
        self.role = f"worker T9 {arm}"
        self.prefix = fresh_prefix(f"t9-{arm}")
        self.catalog = TopicCatalog(prefix=self.prefix, partitions=bench.partitions)
        text = baseline_workflow_yaml() if arm == "strong" else routed_workflow_yaml()
        self.workflow = parse_workflow(text, f"T9 {arm} workflow")
        self.worker: WorkerProcess | None = None
        self.client: BatonClient | None = None
        self.warmup_runs = 0

    async def setup(self) -> None:
        """Create its topics, deploy its workflow, start its worker until ready."""
        bootstrap = self.bench.broker.bootstrap
        home = self.bench.scratch / self.prefix
        home.mkdir(parents=True, exist_ok=True)
        models = home / "models.yaml"
        models.write_text(cost_models_yaml(self.server.base_url(self.arm)), encoding="utf-8")
        await create_topics(bootstrap, self.catalog)
        await deploy_workflows(bootstrap, self.catalog, Codec(), [self.workflow])
        self.worker = WorkerProcess(
            bootstrap=bootstrap,
            catalog=self.catalog,
            home=home,
            models_file=models,
            guarantee=GUARANTEE,
            worker_id=self.prefix,
            settings={"BATON_CACHE_TTL": "0"} if self.arm == "strong" else None,
        )
        self.worker.start()
        self.bench.processes[self.role] = self.worker
        await self.worker.wait_ready([self.catalog.steps(StepKind.llm).name])
        self.client = BatonClient(bootstrap, self.catalog)
        await self.client.__aenter__()

    async def run(
        self, tasks: list[LabelledTask], label: str, question_set: int, rate_per_s: float
    ) -> tuple[CostRepetition, Repetition]:
        """Submit ``tasks`` open loop at ``rate_per_s``; judge and cost the runs."""
        assert self.client is not None and self.worker is not None
        client = self.client
        run_ids = [f"{self.prefix}-{label}-{i:04d}" for i in range(len(tasks))]
        events = [
            TaskSubmitted(
                task_id=run_id,
                workflow=self.workflow.name,
                input=task.input,
                submitted_at=datetime.now(UTC),
            )
            for run_id, task in zip(run_ids, tasks, strict=True)
        ]
        schedule = OpenLoopSchedule(rate_per_s, len(tasks))
        sends: list[asyncio.Task[int]] = []
        last = [0.0]

        def arrived(_: RunResult) -> None:
            last[0] = time.monotonic()

        def submit(i: int) -> None:
            sends.append(asyncio.create_task(client.send([events[i]])))

        before = self.server.ledger(self.arm)
        meter = self.bench.meter()
        meter.start()
        waiting = asyncio.create_task(
            client.wait(run_ids, timeout_s=schedule.duration_s + 90.0, on_result=arrived)
        )
        start, _ = await drive(schedule, submit, time.monotonic, asyncio.sleep)
        await asyncio.gather(*sends)
        results = await waiting
        cpu = meter.stop()
        self.worker.check_alive()
        spent = self.server.ledger(self.arm).since(before)
        judged = tally(tasks, run_ids, results)
        elapsed = max((last[0] or time.monotonic()) - start, 1e-9)
        cost = CostRepetition(
            question_set=question_set,
            tasks=judged.tasks,
            repeats=sum(task.repeat_of is not None for task in tasks),
            results=judged.results,
            completed=judged.completed,
            correct=judged.correct,
            quality=judged.quality,
            cost_usd=float(judged.cost_usd),
            saved_usd=float(judged.saved_usd),
            cached_runs=judged.cached_runs,
            cached_repeats=judged.cached_repeats,
            multi_attempt_runs=judged.multi_attempt_runs,
            model_calls=dict(spent.calls),
            malformed_answers=dict(spent.malformed),
            provider_billed_usd=float(_billed(spent)),
            first_wrong=judged.first_wrong,
        )
        repetition = Repetition(
            elapsed_s=round(elapsed, 4),
            runs=judged.tasks,
            completed_runs=judged.completed,
            events=judged.completed * _EVENTS_PER_RUN,
            runs_per_s=judged.completed / elapsed,
            events_per_s=judged.completed * _EVENTS_PER_RUN / elapsed,
            cpu_percent=cpu,
            unfinished=judged.unfinished,
            first_problem=judged.first_unfinished,
        )
        return cost, repetition

    async def teardown(self) -> None:
        """Stop its client and worker."""
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
            self.bench.processes.pop(self.role, None)


def _billed(ledger: Ledger) -> Decimal:
    by_model = {price.model: price for price in PRICES.values()}
    return sum(
        (
            by_model[model].cost(ledger.input_tokens[model], ledger.output_tokens[model])
            for model in ledger.calls
            if model in by_model
        ),
        Decimal(0),
    )


async def measure_cost(
    bench: Bench, plan: CostPlan, say: Callable[[str], None]
) -> dict[str, Measurement]:
    """Run both arms (see the module docstring); their measurements by key."""
    sets = question_sets(plan.spec, plan.seed, plan.repetitions + 1)
    server = ChatServer()
    await server.start()
    arms = [CostArm(bench, arm, server) for arm in ARMS]
    runs: dict[str, list[tuple[CostRepetition, Repetition]]] = {a.key: [] for a in arms}
    try:
        say(f"T9: starting {', '.join(a.key for a in arms)} (model server on :{server.port})")
        await asyncio.gather(*(a.setup() for a in arms))
        warmup = sets[0][: plan.warmup_tasks]
        for arm in arms:
            say(f"  warm-up {arm.key}: {len(warmup)} tasks")
            await arm.run(warmup, "w", 0, plan.rate_per_s)
            arm.warmup_runs += len(warmup)
        for round_ in range(plan.repetitions):
            shift = round_ % len(arms)
            for arm in [*arms[shift:], *arms[:shift]]:
                cost, rep = await arm.run(
                    sets[round_ + 1], f"r{round_}", round_ + 1, plan.rate_per_s
                )
                runs[arm.key].append((cost, rep))
                say(
                    f"  round {round_ + 1}/{plan.repetitions} {arm.key}: "
                    f"${cost.cost_usd:.4f}, {cost.correct}/{cost.tasks} correct, "
                    f"{cost.cached_runs} from the cache, {rep.completed_runs} completed "
                    f"in {rep.elapsed_s:.1f} s"
                )
    finally:
        for arm in arms:
            with contextlib.suppress(Exception):
                await arm.teardown()
        await server.stop()
    return {arm.key: _measurement(arm, runs[arm.key], plan) for arm in arms if runs[arm.key]}


def _measurement(
    arm: CostArm, runs: list[tuple[CostRepetition, Repetition]], plan: CostPlan
) -> Measurement:
    costs = [cost for cost, _ in runs]
    reps = [rep for _, rep in runs]
    spec = plan.spec
    notes = []
    billed = sum(c.provider_billed_usd for c in costs)
    accounted = sum(c.cost_usd for c in costs)
    if abs(billed - accounted) > 1e-9:
        notes.append(
            f"the model server billed ${billed:.6f} but the runs account for ${accounted:.6f} "
            "(calls whose results no run counted: redeliveries, late results)"
        )
    stray = sum(c.cached_runs - c.cached_repeats for c in costs)
    if stray:
        notes.append(f"{stray} run(s) that are not repeats were answered from the cache")
    return Measurement(
        key=arm.key,
        kind="cost",
        subject="baton",
        guarantee=GUARANTEE,
        process_role=arm.role,
        topic_prefix=arm.prefix,
        warmup_runs=arm.warmup_runs,
        repetitions=reps,
        runs_per_s=spread([r.runs_per_s for r in reps]),
        events_per_s=spread([r.events_per_s for r in reps]),
        cpu=cpu_shares(reps),
        cost=costs,
        cost_settings=CostSettings(
            workflow=BASELINE_WORKFLOW if arm.arm == "strong" else ROUTED_WORKFLOW,
            tasks=spec.tasks,
            repeats=spec.repeats,
            distinct=spec.distinct,
            hard=spec.hard,
            mislabelled=spec.mislabelled,
            min_gap=spec.min_gap,
            seed=plan.seed,
            rate_per_s=plan.rate_per_s,
            guarantee=GUARANTEE,
            routes={
                name: f"{p.model}: ${p.input_usd_per_mtok}/${p.output_usd_per_mtok} per Mtok"
                for name, p in PRICES.items()
            },
            cache=cache_state(arm.arm),
        ),
        notes=notes,
    )
