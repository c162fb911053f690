"""The suite: which measurements a selection needs, in what order they run, and the report.

Order of a full run:

1. T7, the codec micro-benchmark, before anything else runs on the machine.
2. A local broker (unless ``BATON_BOOTSTRAP``), then the closed-loop subjects together:
   the raw pipe (B1), bare Faust (B2), LangGraph durable and in memory (P1, in this
   process) and one baton worker per guarantee, each on a fresh topic prefix. All warm
   up, then repetitions run round-robin (rotated each round), so slow drifts in the
   machine's load touch every subject alike.
3. The open-loop subjects: a fresh worker per guarantee. T3 (and T12): loaded at
   ``load_fraction`` of the runs/s its guarantee reached in step 2, repetitions
   round-robin; then T6 (a 500 ms model at a low fixed rate) and T10 (one 200-step run
   at a time) on the same workers. Their topics are read back afterwards, once.
4. T5 (``bench._inflight``): one worker, runs kept in flight on an 800 ms model, ramped.
5. T8 (``bench._crash``): a worker holding N runs is killed with SIGKILL and restarted.
6. T11 (``bench._scaling``): 1, 2, then 3 workers in one group, closed loop.
7. T9 (``bench._cost``): two workers, always-strong and routed + cached, on a labelled
   mixed workload served by a loopback model server; question sets round-robin.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench._codec import measure_codec
from bench._cost import CostPlan, measure_cost
from bench._crash import CrashPlan, measure_crash
from bench._figures import all_figures, busy_machine_notes
from bench._inflight import InflightPlan, measure_inflight
from bench._latency import run_latencies
from bench._overhead import t6_measurement, t10_measurement
from bench._peer import PeerSubject, missing_dependency
from bench._plan import MEASURED, Plan, plan
from bench._processes import broker, machine
from bench._questions import MixSpec
from bench._readback import Readback, read_back
from bench._report import (
    Latency,
    Measurement,
    OpenLoopSettings,
    Repetition,
    Report,
    SuiteSettings,
    WorkloadInfo,
)
from bench._scaling import ScalingPlan, measure_scaling
from bench._schedule import OpenLoopSchedule, latencies_from_schedule
from bench._stats import cpu_shares, histogram, percentiles, spread
from bench._subjects import (
    BatonSubject,
    Bench,
    FaustPipeSubject,
    OpenLoopRun,
    RawPipeSubject,
    Subject,
)
from bench._workload import (
    EVENTS_DEFINITION,
    EVENTS_PER_RUN,
    FIXED_WORKFLOW,
    LONG_STEPS,
    LONG_WORKFLOW,
    PAYLOAD_BYTES,
    ROUTE,
    STEPS,
    WORKFLOW_NAME,
    long_steps,
    write_files,
)

__all__ = ["T5_LEVELS", "T5_QUICK_LEVELS", "T6_RATE", "Options", "run_suite"]

#: T5's in-flight levels, full and quick; the ramp stops at the first that misses.
T5_LEVELS = (50, 100, 250, 500, 1000, 2000, 4000)
T5_QUICK_LEVELS = (25, 50, 100)
#: T6's open-loop rate (runs/s): a light load, a few runs in flight.
T6_RATE = 5.0

_LATENCY_DEFINITIONS = {
    "step_overhead": "next step's request appended - this step's result appended "
    "(broker LogAppendTime)",
    "step_gap": "next step's started_at - this step's finished_at (processor clock)",
    "dispatch": "first step request appended - task appended (broker LogAppendTime)",
    "completion": "run result appended - last step result appended (broker LogAppendTime)",
    "run": "run_completed.at - run_started.at (run events, coordinator clock)",
    "end_to_end": "result read by the client - the submission's scheduled time "
    "(client monotonic clock; includes the client's own fetch wait)",
}
_RESOLUTION = {
    "step_overhead": "broker clock, 1 ms (each difference within +-1 ms)",
    "dispatch": "broker clock, 1 ms (each difference within +-1 ms)",
    "completion": "broker clock, 1 ms (each difference within +-1 ms)",
    "step_gap": "processor wall clock, 1 µs",
    "run": "coordinator wall clock, 1 µs",
    "end_to_end": "client monotonic clock, < 1 µs",
}


@dataclass(frozen=True)
class Options:
    """How to run the suite.

    Attributes:
        quick: Small sizes, one repetition: a smoke run.
        out: Directory the report and plot go to.
        only: Figures to measure (ids from ``MEASURED``); empty means all.
        partitions: Partition count of every topic.
        repetitions: Measured repetitions per subject (None: 1 quick, 3 full).
        runs: Runs per closed-loop repetition (None: 200 quick, 2000 full).
        open_seconds: Seconds of load per open-loop repetition (None: 5 quick, 20 full).
        warmup_runs: Closed-loop runs before measuring (None: 30 quick, 300 full).
        load_fraction: Open-loop rate as a fraction of the closed-loop maximum.
        tasks: T9 tasks per question set (None: 100 quick, 200 full).
        t5_levels: T5's in-flight levels (None: 25, 50, 100 quick; 50 ... 4000 full).
        t8_runs: T8's runs held by the killed worker (None: 300 quick, 3000 full).
        plot: Write the PNG plot.
        command: The command line, recorded in the report.
    """

    quick: bool = False
    out: Path = Path(__file__).resolve().parent / "out"
    only: frozenset[str] = frozenset()
    partitions: int = 4
    repetitions: int | None = None
    runs: int | None = None
    open_seconds: float | None = None
    warmup_runs: int | None = None
    load_fraction: float = 0.3
    tasks: int | None = None
    t5_levels: tuple[int, ...] | None = None
    t8_runs: int | None = None
    plot: bool = True
    command: str = "python -m bench"

    def settings(self) -> SuiteSettings:
        """The sizes in effect."""
        return SuiteSettings(
            mode="quick" if self.quick else "full",
            only=sorted(self.selected),
            partitions=self.partitions,
            repetitions=self.repetitions or (1 if self.quick else 3),
            warmup_runs=self.warmup_runs
            if self.warmup_runs is not None
            else (30 if self.quick else 300),
            closed_loop_runs=self.runs or (200 if self.quick else 2000),
            open_loop_seconds=self.open_seconds or (5.0 if self.quick else 20.0),
            load_fraction=self.load_fraction,
            payload_bytes=PAYLOAD_BYTES,
            cost_tasks=self.tasks or (100 if self.quick else 200),
            t5_levels=list(self.t5_levels or (T5_QUICK_LEVELS if self.quick else T5_LEVELS)),
            t5_settle_s=4.0 if self.quick else 8.0,
            t5_window_s=6.0 if self.quick else 15.0,
            t6_rate_per_s=T6_RATE,
            t8_runs=self.t8_runs or (300 if self.quick else 3000),
            t10_steps=LONG_STEPS,
            t11_workers=[1, 2, 3],
            t11_runs=max(50, (self.runs or (200 if self.quick else 2000)) // 4),
        )

    @property
    def selected(self) -> frozenset[str]:
        """The figures to measure."""
        return self.only or frozenset(MEASURED)


@dataclass
class _Progress:
    say: Callable[[str], None]
    measurements: dict[str, Measurement] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: bool = False


def run_suite(options: Options, say: Callable[[str], None] = print) -> Report:
    """Run the selected measurements and build the report (not yet written)."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = options.settings()
    chosen = plan(options.selected)
    progress = _Progress(say)
    started = datetime.now(UTC)
    changes = _git_changes()
    tree = _tree_fingerprint()
    broker_info = None
    if chosen.codec:
        say("T7: codec micro-benchmark")
        iterations = 500 if options.quick else 5000
        progress.measurements["micro/codec"] = measure_codec(settings.repetitions, iterations)
    if chosen.needs_kafka:
        with tempfile.TemporaryDirectory(prefix="baton-bench-") as scratch_dir:
            scratch = Path(scratch_dir)
            say(
                "starting the broker"
                if "BATON_BOOTSTRAP" not in os.environ
                else "using BATON_BOOTSTRAP"
            )
            with broker(scratch) as kafka:
                broker_info = kafka.info()
                _, models_file = write_files(scratch / "workload")
                bench = Bench(
                    broker=kafka,
                    scratch=scratch,
                    partitions=settings.partitions,
                    models_file=models_file,
                )
                asyncio.run(_kafka_phases(bench, chosen, settings, progress))
                if progress.failed:
                    kept = _keep_logs(scratch, options.out / f"logs-{started:%Y%m%dT%H%M%SZ}")
                    progress.notes.append(f"the logs of this run's processes are in {kept}")
    figures = all_figures(progress.measurements, options.selected)
    if _tree_fingerprint() != tree:
        progress.notes.append(
            "the working tree changed while the suite ran (someone edited files): the "
            "processes started later may have run different code; git_changes is from the start"
        )
    progress.notes.extend(busy_machine_notes(progress.measurements))
    return Report(
        started_at=started,
        finished_at=datetime.now(UTC),
        command=options.command,
        baton_version=_version(),
        git_commit=_git("rev-parse", "HEAD"),
        git_dirty=bool(changes) if changes is not None else None,
        git_changes=changes or [],
        machine=machine(),
        broker=broker_info,
        settings=settings,
        workload=WorkloadInfo(
            workflow=WORKFLOW_NAME,
            steps=[name for name, _ in STEPS],
            kinds=[kind for _, kind in STEPS],
            model=f"route {ROUTE!r}: scripted provider, 0 ms latency, ~1 KB answer",
            payload_bytes=PAYLOAD_BYTES,
            events_per_run=EVENTS_PER_RUN,
            events_definition=EVENTS_DEFINITION,
        ),
        figures=figures,
        measurements=progress.measurements,
        notes=progress.notes,
    )


async def _kafka_phases(
    bench: Bench, chosen: Plan, settings: SuiteSettings, progress: _Progress
) -> None:
    # A phase that fails is reported as such (its figures say "failed"); the next still runs.
    if chosen.closed_phase:
        subjects: list[Subject] = []
        if chosen.raw_pipe:
            subjects.append(RawPipeSubject(bench))
        if chosen.faust_pipe:
            subjects.append(FaustPipeSubject(bench))
        if chosen.peer:
            missing = missing_dependency()
            if missing is None:
                subjects.extend(PeerSubject(bench, durable) for durable in (True, False))
            else:
                progress.say(missing)
                progress.notes.append(missing)
        subjects.extend(BatonSubject(bench, g, "closed") for g in chosen.closed)
        try:
            await _closed_phase(subjects, settings, progress)
        except Exception as exc:
            _phase_failed("closed loop", exc, progress)
    if chosen.open:
        try:
            await _open_phase(bench, chosen, settings, progress)
        except Exception as exc:
            _phase_failed("open loop", exc, progress)
    if chosen.inflight:
        try:
            inflight = InflightPlan(
                levels=tuple(settings.t5_levels),
                settle_s=settings.t5_settle_s,
                window_s=settings.t5_window_s,
                warmup_runs=max(10, settings.warmup_runs // 2),
            )
            measurement = await measure_inflight(bench, inflight, progress.say)
            progress.measurements[measurement.key] = measurement
        except Exception as exc:
            _phase_failed("T5", exc, progress)
    if chosen.crash:
        try:
            measurement = await measure_crash(bench, CrashPlan(runs=settings.t8_runs), progress.say)
            progress.measurements[measurement.key] = measurement
        except Exception as exc:
            _phase_failed("T8", exc, progress)
    if chosen.scaling:
        try:
            scaling = ScalingPlan(
                workers=tuple(settings.t11_workers),
                runs=settings.t11_runs,
                repetitions=settings.repetitions,
                warmup_runs=max(10, settings.warmup_runs // 3),
            )
            progress.measurements.update(await measure_scaling(bench, scaling, progress.say))
        except Exception as exc:
            _phase_failed("T11", exc, progress)
    if chosen.cost:
        try:
            cost = CostPlan(
                spec=MixSpec(tasks=settings.cost_tasks, min_gap=min(40, settings.cost_tasks // 3)),
                repetitions=settings.repetitions,
                warmup_tasks=min(50, settings.cost_tasks),
            )
            progress.measurements.update(await measure_cost(bench, cost, progress.say))
        except Exception as exc:
            _phase_failed("T9", exc, progress)


def _phase_failed(phase: str, exc: Exception, progress: _Progress) -> None:
    message = f"{phase} phase failed: {type(exc).__name__}: {exc}"
    progress.say(message)
    progress.notes.append(message)
    progress.failed = True


def _keep_logs(scratch: Path, into: Path) -> Path:
    """Copy every process log of the scratch directory (it is deleted at the end)."""
    into.mkdir(parents=True, exist_ok=True)
    for log in scratch.rglob("*.log"):
        shutil.copy2(log, into / f"{log.parent.name}-{log.name}")
    return into


async def _closed_phase(
    subjects: Sequence[Subject], settings: SuiteSettings, progress: _Progress
) -> None:
    say = progress.say
    reps: dict[str, list[Repetition]] = {s.key: [] for s in subjects}
    try:
        say(f"closed loop: starting {', '.join(s.key for s in subjects)}")
        await asyncio.gather(*(s.setup() for s in subjects))
        for subject in subjects:
            # A subject with several passes per round is quick: warm it up with as many
            # full passes (the broker's JIT warms up to its rate only then).
            if subject.passes > 1:
                runs = max(settings.warmup_runs, settings.closed_loop_runs)
                say(f"  warm-up {subject.key}: {subject.passes} x {runs} runs")
                for pass_ in range(subject.passes):
                    await subject.warmup(runs, f"w{pass_}")
            else:
                say(f"  warm-up {subject.key}: {settings.warmup_runs} runs")
                await subject.warmup(settings.warmup_runs)
        for round_ in range(settings.repetitions):
            shift = round_ % len(subjects)
            for subject in [*subjects[shift:], *subjects[:shift]]:
                for pass_ in range(subject.passes):
                    label = f"r{round_}p{pass_}"
                    rep = await subject.closed_loop(settings.closed_loop_runs, label)
                    reps[subject.key].append(rep)
                    rate = f"{rep.events_per_s:,.0f} events/s, " if subject.counts_events else ""
                    say(
                        f"  round {round_ + 1}/{settings.repetitions} {subject.key}: "
                        f"{rate}{rep.runs_per_s:,.1f} runs/s "
                        f"({rep.completed_runs}/{rep.runs} in {rep.elapsed_s:.2f} s)"
                    )
    finally:
        for subject in subjects:
            with contextlib.suppress(Exception):
                await subject.teardown()
    for subject in subjects:
        progress.measurements[subject.key] = _closed_measurement(subject, reps[subject.key])


def _closed_measurement(subject: Subject, reps: list[Repetition]) -> Measurement:
    return Measurement(
        key=subject.key,
        kind="closed_loop",
        subject=subject.kind,
        guarantee=subject.guarantee,
        process_role=subject.role,
        topic_prefix=subject.prefix or None,
        warmup_runs=subject.warmup_runs,
        repetitions=reps,
        runs_per_s=spread([r.runs_per_s for r in reps]) if reps else None,
        events_per_s=spread([r.events_per_s for r in reps])
        if reps and subject.counts_events
        else None,
        cpu=cpu_shares(reps),
        notes=subject.report_notes(),
    )


async def _open_phase(
    bench: Bench, chosen: Plan, settings: SuiteSettings, progress: _Progress
) -> None:
    say = progress.say
    subjects = [BatonSubject(bench, g, "open") for g in chosen.open]
    runs: dict[str, list[OpenLoopRun]] = {s.key: [] for s in subjects}
    t6_runs: dict[str, list[OpenLoopRun]] = {s.key: [] for s in subjects}
    t10_runs: dict[str, list[tuple[str, Repetition]]] = {s.key: [] for s in subjects}
    schedules: dict[str, OpenLoopSchedule] = {}
    maxima: dict[str, tuple[float, str]] = {}
    t6_schedule = OpenLoopSchedule.for_duration(settings.t6_rate_per_s, settings.open_loop_seconds)
    try:
        say(f"open loop: starting {', '.join(s.key for s in subjects)}")
        await asyncio.gather(*(s.setup() for s in subjects))
        for subject in subjects:
            warmup = max(10, settings.warmup_runs // 2)
            say(f"  warm-up {subject.key}: {warmup} runs")
            await subject.warmup(warmup)
        if chosen.latency:
            latency = subjects
            for subject in latency:
                maxima[subject.key] = await _max_rate(subject, settings, progress)
                rate = settings.load_fraction * maxima[subject.key][0]
                schedules[subject.key] = OpenLoopSchedule.for_duration(
                    rate, settings.open_loop_seconds
                )
            for round_ in range(settings.repetitions):
                for subject in _rotated(latency, round_):
                    schedule = schedules[subject.key]
                    run = await subject.open_loop(schedule, f"r{round_}")
                    runs[subject.key].append(run)
                    rep = run.repetition
                    say(
                        f"  round {round_ + 1}/{settings.repetitions} {subject.key}: "
                        f"{schedule.count} runs at {schedule.rate_per_s:.1f}/s, "
                        f"{rep.completed_runs} completed"
                    )
        t6 = [s for s in subjects if s.guarantee in chosen.orchestration]
        for round_ in range(settings.repetitions if t6 else 0):
            for subject in _rotated(t6, round_):
                run = await subject.open_loop(t6_schedule, f"t6r{round_}", FIXED_WORKFLOW)
                t6_runs[subject.key].append(run)
                say(
                    f"  T6 round {round_ + 1}/{settings.repetitions} {subject.key}: "
                    f"{t6_schedule.count} runs of a 500 ms model at {T6_RATE:g}/s, "
                    f"{run.repetition.completed_runs} completed"
                )
        t10 = [s for s in subjects if s.guarantee in chosen.long_run]
        for round_ in range(settings.repetitions if t10 else 0):
            for subject in _rotated(t10, round_):
                label = f"t10r{round_}"
                rep = await subject.closed_loop(
                    1, label, LONG_WORKFLOW, events_per_run=1 + 2 * LONG_STEPS
                )
                t10_runs[subject.key].append((subject.run_ids(label, 1)[0], rep))
                say(
                    f"  T10 round {round_ + 1}/{settings.repetitions} {subject.key}: one "
                    f"{LONG_STEPS}-step run in {rep.elapsed_s:.1f} s"
                )
    finally:
        for subject in subjects:
            with contextlib.suppress(Exception):
                await subject.teardown()
    long_order = [name for name, _ in long_steps()]
    for subject in subjects:
        every_run = [
            run_id for run in (*runs[subject.key], *t6_runs[subject.key]) for run_id in run.run_ids
        ]
        every_run += [run_id for run_id, _ in t10_runs[subject.key]]
        if not every_run:
            continue
        say(f"  reading back {subject.key}")
        back = await read_back(bench.broker.bootstrap, subject.catalog, every_run)
        catalog = subject.catalog
        roles = {
            catalog.run_journal.name: "run journal",
            catalog.run_events.name: "run events",
            catalog.run_state.name: "run state",
            catalog.audit_anchors.name: "audit anchors",
        }
        for run in (*runs[subject.key], *t6_runs[subject.key]):
            for topic, role in roles.items():
                back.add_shared(
                    role,
                    run.written.get(f"{topic}:records", 0),
                    run.written.get(f"{topic}:bytes", 0),
                    run.run_ids,
                )
        if runs[subject.key]:
            progress.measurements[subject.key] = _open_measurement(
                subject,
                runs[subject.key],
                schedules[subject.key],
                maxima[subject.key],
                settings,
                back,
            )
        if t6_runs[subject.key]:
            key = f"t6/{subject.guarantee}"
            progress.measurements[key] = t6_measurement(
                key,
                subject.guarantee,
                subject.role,
                subject.prefix,
                [name for name, _ in STEPS],
                [(run.run_ids, run.repetition) for run in t6_runs[subject.key]],
                back,
                settings.t6_rate_per_s,
            )
        if t10_runs[subject.key]:
            key = f"t10/{subject.guarantee}"
            progress.measurements[key] = t10_measurement(
                key,
                subject.guarantee,
                subject.role,
                subject.prefix,
                long_order,
                t10_runs[subject.key],
                back,
            )


def _rotated(subjects: Sequence[BatonSubject], round_: int) -> list[BatonSubject]:
    """The subjects in the order of this round: rotated by one each round."""
    if not subjects:
        return []
    shift = round_ % len(subjects)
    return [*subjects[shift:], *subjects[:shift]]


async def _max_rate(
    subject: BatonSubject, settings: SuiteSettings, progress: _Progress
) -> tuple[float, str]:
    """The closed-loop runs/s of this guarantee: from this run's T4, else a probe."""
    closed = progress.measurements.get(f"closed/{subject.guarantee}")
    if closed is not None and closed.runs_per_s is not None:
        return closed.runs_per_s.median, f"median runs/s of closed/{subject.guarantee}"
    runs = max(50, settings.closed_loop_runs // 2)
    progress.say(f"  probing {subject.key}'s maximum: {runs} runs closed loop")
    probe = await subject.closed_loop(runs, "probe")
    return probe.runs_per_s, f"a {runs}-run closed-loop probe on this worker"


def _open_measurement(
    subject: BatonSubject,
    runs: list[OpenLoopRun],
    schedule: OpenLoopSchedule,
    maximum: tuple[float, str],
    settings: SuiteSettings,
    back: Readback,
) -> Measurement:
    every_run = [run_id for run in runs for run_id in run.run_ids]
    order = [name for name, _ in STEPS]
    per_name: dict[str, list[list[float]]] = {}
    incomplete = retried = 0
    for run in runs:
        found = run_latencies(order, run.run_ids, back.requests, back.results, back.runs)
        incomplete += found.incomplete_runs
        retried += found.retried_steps
        samples = found.by_name()
        client = latencies_from_schedule(schedule, run.start, run.finished)
        samples["end_to_end"] = [seconds * 1000 for seconds in client.values()]
        for name, values in samples.items():
            per_name.setdefault(name, []).append(values)
    latencies = []
    for name, per_rep in per_name.items():
        pooled = [v for values in per_rep for v in values]
        if not pooled or not all(per_rep):
            continue
        latencies.append(
            Latency(
                name=name,
                definition=_LATENCY_DEFINITIONS[name],
                per_repetition=[percentiles(values) for values in per_rep],
                pooled=percentiles(pooled),
                histogram=histogram(pooled),
                resolution=_RESOLUTION[name],
            )
        )
    lateness = [s * 1000 for run in runs for s in run.lateness_s]
    records, sizes = back.per_run(every_run)
    notes = []
    if incomplete:
        notes.append(f"{incomplete} run(s) were missing a record when read back")
    if retried:
        notes.append(f"{retried} step attempt(s) after the first (retries or redeliveries)")
    reps = [run.repetition for run in runs]
    return Measurement(
        key=subject.key,
        kind="open_loop",
        subject="baton",
        guarantee=subject.guarantee,
        process_role=subject.role,
        topic_prefix=subject.prefix,
        warmup_runs=subject.warmup_runs,
        repetitions=reps,
        runs_per_s=spread([r.runs_per_s for r in reps]),
        events_per_s=spread([r.events_per_s for r in reps]),
        cpu=cpu_shares(reps),
        latencies=latencies,
        open_loop=OpenLoopSettings(
            rate_per_s=schedule.rate_per_s,
            max_rate_per_s=maximum[0],
            max_rate_source=maximum[1],
            load_fraction=settings.load_fraction,
            duration_s=settings.open_loop_seconds,
            send_lateness_ms=percentiles(lateness) if lateness else None,
        ),
        records_per_run=records,
        bytes_per_run=sizes,
        notes=notes,
    )


def _version() -> str:
    try:
        return metadata.version("baton")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_changes() -> list[str] | None:
    status = _git("status", "--porcelain")
    return None if status is None else status.splitlines()


def _tree_fingerprint() -> str | None:
    """A hash of the working tree's differences from the commit (tracked files)."""
    diff = _git("diff", "HEAD")
    status = _git("status", "--porcelain")
    if diff is None or status is None:
        return None
    return hashlib.sha256(f"{status}\n{diff}".encode()).hexdigest()
