"""The report: one JSON document per run of the suite, its schema as frozen pydantic models.

``Report`` holds what the machine was, how the suite was run, every *measurement* (the raw
repetitions, CPU shares, latency distributions) and the *figures* derived from them (the
T/B ids of ``BENCH.md``), each with its target and verdict. A figure that was not measured
says so and why; it never carries a made-up value.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "OTHER_ROLE",
    "SCHEMA_VERSION",
    "AbsoluteFigure",
    "BrokerInfo",
    "CostRepetition",
    "CostSettings",
    "CpuShare",
    "CrashOutcome",
    "Figure",
    "Histogram",
    "InflightLevel",
    "InflightSettings",
    "Latency",
    "LongRunRepetition",
    "Machine",
    "Measurement",
    "OpenLoopSettings",
    "Percentiles",
    "Report",
    "Repetition",
    "SuiteSettings",
    "Spread",
    "Target",
    "Verdict",
    "WorkloadInfo",
    "write_report",
]

#: The CPU role of everything on the machine that the bench did not start.
OTHER_ROLE = "rest of machine"

SCHEMA_VERSION: Literal["baton-bench/1"] = "baton-bench/1"

Verdict = Literal["meets_stretch", "meets", "misses", "no_target", "not_measured", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Spread(_Model):
    """Repeated measurements of one quantity: their median, min and max."""

    median: float
    min: float
    max: float
    samples: list[float] = Field(
        default_factory=list, description="Each repetition's value; empty for derived ratios."
    )


class Percentiles(_Model):
    """A latency sample summarised (linear interpolation between closest ranks)."""

    count: int = Field(ge=1)
    min: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float
    mean: float


class Histogram(_Model):
    """Counts per bucket ``[edges[i], edges[i+1])``; ``below``/``above`` fell outside."""

    edges: list[float]
    counts: list[int]
    below: int = 0
    above: int = 0


class Target(_Model):
    """A goal from BENCH.md; ``better`` says which direction is good."""

    better: Literal["higher", "lower"]
    goal: float
    stretch: float | None = None


class AbsoluteFigure(_Model):
    """An absolute figure printed beside a ratio."""

    label: str
    unit: str
    value: Spread


class Figure(_Model):
    """One figure of BENCH.md (``T1``...), or a baseline (``B1``...)."""

    id: str
    name: str
    variant: str = Field(default="", description="e.g. the guarantee or the percentile.")
    status: Literal["measured", "not_measured", "failed"]
    unit: str = ""
    value: Spread | None = None
    target: Target | None = None
    verdict: Verdict
    absolute: list[AbsoluteFigure] = Field(default_factory=list)
    definition: str = Field(description="What exactly was measured, and how.")
    note: str | None = Field(default=None, description="Why not measured, or what failed.")
    sources: list[str] = Field(default_factory=list, description="Keys of `measurements`.")


class CpuShare(_Model):
    """CPU one process (or the rest of the machine) used while measurements ran.

    ``percent`` is of one core (100 = one core busy), over each repetition's wall time.
    """

    role: str
    pid: int | None = None
    percent: Spread


class Repetition(_Model):
    """One repetition of a closed- or open-loop measurement."""

    elapsed_s: float
    runs: int
    completed_runs: int
    events: int
    runs_per_s: float
    events_per_s: float
    cpu_percent: dict[str, float] = Field(default_factory=dict, description="By role.")
    unfinished: dict[str, int] = Field(
        default_factory=dict,
        description="Runs that did not complete, by how they ended (`no result` in time).",
    )
    first_problem: str | None = Field(
        default=None, description="The reason given by one run that did not complete."
    )


class Latency(_Model):
    """One latency of an open-loop measurement, per repetition and pooled."""

    name: str
    definition: str
    unit: str = "ms"
    per_repetition: list[Percentiles]
    pooled: Percentiles
    histogram: Histogram
    resolution: str = Field(description="The clock(s) and their resolution.")


class OpenLoopSettings(_Model):
    """How an open-loop measurement loaded the system."""

    rate_per_s: float = Field(description="Runs submitted per second, on a fixed schedule.")
    max_rate_per_s: float = Field(description="The measured maximum it is a fraction of.")
    max_rate_source: str
    load_fraction: float
    duration_s: float
    send_lateness_ms: Percentiles | None = Field(
        default=None,
        description="How late each submission left against its schedule (the generator's "
        "own lag; latencies are measured from the scheduled time regardless).",
    )


class CostRepetition(_Model):
    """One repetition of one arm of T9: a question set run through baton, judged and costed.

    Money is in US dollars, summed exactly from the runs' usage and rounded to a float here.
    """

    question_set: int = Field(description="Which set (0 is the warm-up's).")
    tasks: int
    repeats: int = Field(description="Tasks that repeat an earlier one of the set exactly.")
    results: int = Field(description="Runs that ended, whatever their status.")
    completed: int
    correct: int = Field(description="Runs whose output's answer is the labelled one.")
    quality: float = Field(description="correct / tasks.")
    cost_usd: float = Field(description="Sum of the runs' usage.cost_usd.")
    saved_usd: float = Field(description="Sum of the runs' usage.saved_usd (cache hits).")
    cached_runs: int = Field(description="Runs answered (at least partly) from the cache.")
    cached_repeats: int = Field(description="Of those, exact repeats.")
    multi_attempt_runs: int = Field(
        description="Runs whose step took more than one attempt (cascade, retry)."
    )
    model_calls: dict[str, int] = Field(
        default_factory=dict, description="Calls the model server answered, by model id."
    )
    malformed_answers: dict[str, int] = Field(
        default_factory=dict,
        description="Answers that were not the JSON asked for, by model id (server's count).",
    )
    provider_billed_usd: float = Field(
        description="The server's side of the bill: the tokens it reported, at the prices."
    )
    first_wrong: str | None = Field(default=None, description="One run the judge refused.")


class CostSettings(_Model):
    """How T9 was run: the workload's shape, the routes, the cache, the load."""

    workflow: str
    tasks: int = Field(description="Tasks per question set, repeats included.")
    repeats: int
    distinct: int
    hard: int = Field(description="Hard questions among the distinct ones.")
    mislabelled: int = Field(description="Hard questions labelled easy.")
    min_gap: int = Field(description="A repeat comes at least this many tasks after its first.")
    seed: int
    rate_per_s: float = Field(description="Tasks submitted per second, on a fixed schedule.")
    guarantee: str
    routes: dict[str, str] = Field(description="Route name -> model id and prices.")
    cache: str = Field(description="Whether the worker's response cache was on, and its TTL.")


class InflightLevel(_Model):
    """One level of T5's ramp: N runs kept in flight, a new run submitted per result."""

    in_flight: int = Field(description="Runs kept in flight (submitted, no result yet).")
    settle_s: float = Field(description="Seconds at this level before the window opened.")
    window_s: float = Field(description="Seconds the window lasted.")
    completed: int = Field(description="Runs that completed inside the window.")
    rate_per_s: float = Field(description="completed / window_s.")
    mean_steps_ms: float = Field(
        description="Mean, over those runs, of the sum of their steps' processor times "
        "(StepSummary.duration_ms): the run time at zero orchestration cost."
    )
    mean_run_ms: float = Field(
        description="Mean, over those runs, of submission to result read by the client."
    )
    ideal_rate_per_s: float = Field(description="in_flight / mean_steps_ms.")
    fraction: float = Field(description="rate_per_s / ideal_rate_per_s.")
    keeps_ideal: bool = Field(description="fraction >= the threshold.")
    rss_bytes: float = Field(description="Median resident memory of the worker in the window.")
    rss_per_run_kib: float = Field(
        description="(rss_bytes - the baseline before the ramp) / in_flight, in KiB."
    )
    cpu_percent: dict[str, float] = Field(default_factory=dict, description="By role.")
    unfinished: dict[str, int] = Field(
        default_factory=dict, description="Runs that ended in the window without completing."
    )


class InflightSettings(_Model):
    """How T5's ramp was run."""

    levels: list[int] = Field(description="In-flight levels planned, lowest first.")
    threshold: float = Field(description="Share of the ideal rate a level must keep.")
    settle_s: float
    window_s: float
    workflow: str
    route: str
    latency_median_ms: float
    latency_sigma: float
    model_mean_step_ms: float = Field(
        description="The model's mean latency per llm step, median * exp(sigma^2 / 2)."
    )
    processor_concurrency: int = Field(description="BATON_PROCESSOR_CONCURRENCY of the worker.")
    rss_baseline_bytes: float = Field(
        description="Median resident memory of the worker after warm-up, nothing in flight."
    )
    stopped: str = Field(description="Why the ramp ended.")


class CrashOutcome(_Model):
    """T8: what a kill -9 of a worker holding N runs did, and how its restart recovered.

    Times are seconds; ``None`` when the moment never came before the bench gave up.
    """

    runs: int = Field(description="Runs submitted.")
    guarantee: str
    held_at_kill: int = Field(description="Runs with no result when the worker was killed.")
    held_by: str = Field(description="What held the runs (which step, which processors ran).")
    submit_to_held_s: float = Field(
        description="First submission -> every run's held step request on its topic."
    )
    ready_s: float | None = Field(
        description="Restart -> /healthz shows every partition owned and every step topic read."
    )
    resume_s: float | None = Field(
        description="Restart -> the first step request of an old run appended by the restarted "
        "coordinator (broker clock)."
    )
    first_step_result_s: float | None = Field(
        default=None,
        description="Restart -> the first step result of an old run appended (broker clock).",
    )
    first_result_s: float | None = Field(
        description="Restart -> the first old run's result read by the client."
    )
    all_results_s: float | None = Field(
        description="Restart -> the last old run's result read by the client."
    )
    results: int = Field(description="Runs with at least one result on `results`.")
    lost: int = Field(description="Runs with no result when the bench stopped waiting.")
    duplicates: int = Field(description="Runs with more than one result record.")
    result_records: int = Field(description="Result records of these runs (read_committed).")
    unfinished: dict[str, int] = Field(
        default_factory=dict, description="Runs that ended without completing, by status."
    )
    first_problem: str | None = None


class LongRunRepetition(_Model):
    """T10: one run of the long linear workflow, its transitions by position."""

    steps: int
    completed: bool
    elapsed_s: float
    overhead_ms: list[float | None] = Field(
        description="Into steps 2..N: request appended - previous result appended (broker)."
    )
    gap_ms: list[float | None] = Field(
        description="Into steps 2..N: started_at - previous finished_at (processor clock)."
    )
    window: int = Field(description="Transitions compared at each end.")
    first_ms: float | None = Field(description="Median overhead of the first `window`.")
    last_ms: float | None = Field(description="Median overhead of the last `window`.")
    ratio: float | None = Field(description="last_ms / first_ms.")
    gap_first_ms: float | None = None
    gap_last_ms: float | None = None
    gap_ratio: float | None = None


class Measurement(_Model):
    """What one subject (baton with a guarantee, the raw pipe, the codec, a T9 arm) did."""

    key: str
    kind: Literal["closed_loop", "open_loop", "micro", "cost", "inflight", "crash", "long_run"]
    subject: str
    guarantee: str | None = None
    process_role: str | None = Field(
        default=None, description="The role, in `cpu`, of the process under test."
    )
    topic_prefix: str | None = None
    warmup_runs: int = 0
    repetitions: list[Repetition] = Field(default_factory=list)
    runs_per_s: Spread | None = None
    events_per_s: Spread | None = None
    cpu: list[CpuShare] = Field(default_factory=list)
    latencies: list[Latency] = Field(default_factory=list)
    open_loop: OpenLoopSettings | None = None
    micro_us: dict[str, Spread] = Field(
        default_factory=dict, description="Micro-benchmarks: microseconds per operation."
    )
    records_per_run: dict[str, float] = Field(
        default_factory=dict, description="Records written per run, by topic role."
    )
    bytes_per_run: dict[str, float] = Field(
        default_factory=dict, description="Value bytes written per run, by topic role."
    )
    cost: list[CostRepetition] = Field(
        default_factory=list, description="T9: each repetition's cost and judged quality."
    )
    cost_settings: CostSettings | None = None
    workers: int | None = Field(default=None, description="T11: worker processes in the group.")
    inflight: list[InflightLevel] = Field(default_factory=list, description="T5: the ramp.")
    inflight_settings: InflightSettings | None = None
    crash: CrashOutcome | None = None
    long_runs: list[LongRunRepetition] = Field(default_factory=list, description="T10.")
    notes: list[str] = Field(default_factory=list)


class Machine(_Model):
    """Where the suite ran."""

    cores_logical: int
    cores_physical: int | None
    cpu_model: str
    memory_gb: float
    platform: str
    python: str


class BrokerInfo(_Model):
    """The Kafka the suite ran against."""

    bootstrap: str
    loopback: bool = Field(description="Every bootstrap host is a loopback address.")
    started_by_bench: bool
    pid: int | None = None
    kafka_version: str | None = None


class SuiteSettings(_Model):
    """How the suite was run."""

    mode: Literal["quick", "full"]
    only: list[str]
    partitions: int
    repetitions: int
    warmup_runs: int
    closed_loop_runs: int
    open_loop_seconds: float
    load_fraction: float
    payload_bytes: int
    cost_tasks: int = Field(default=0, description="T9: tasks per question set.")
    t5_levels: list[int] = Field(default_factory=list, description="T5: in-flight levels.")
    t5_settle_s: float = 0.0
    t5_window_s: float = 0.0
    t6_rate_per_s: float = Field(default=0.0, description="T6: runs submitted per second.")
    t8_runs: int = Field(default=0, description="T8: runs held when the worker is killed.")
    t10_steps: int = Field(default=0, description="T10: steps of the long run.")
    t11_workers: list[int] = Field(default_factory=list, description="T11: group sizes.")
    t11_runs: int = Field(default=0, description="T11: runs per closed-loop repetition.")


class WorkloadInfo(_Model):
    """The workflow every baton measurement runs."""

    workflow: str
    steps: list[str]
    kinds: list[str]
    model: str
    payload_bytes: int
    events_per_run: int
    events_definition: str


class Report(_Model):
    """One run of the suite."""

    schema_version: Literal["baton-bench/1"] = SCHEMA_VERSION
    started_at: datetime
    finished_at: datetime
    command: str
    baton_version: str
    git_commit: str | None
    git_dirty: bool | None
    git_changes: list[str] = Field(
        default_factory=list,
        description="`git status --porcelain` lines: what the measured tree had beyond the commit.",
    )
    machine: Machine
    broker: BrokerInfo | None
    settings: SuiteSettings
    workload: WorkloadInfo
    figures: list[Figure]
    measurements: dict[str, Measurement]
    notes: list[str] = Field(default_factory=list)

    def figure(self, id_: str, variant: str = "") -> Figure | None:
        """The figure with this id and variant, if the report has it."""
        return next((f for f in self.figures if f.id == id_ and f.variant == variant), None)


def write_report(report: Report, out: Path) -> tuple[Path, Path]:
    """Write ``report-<timestamp>.json`` and ``latest.json`` into ``out``.

    Returns:
        The two paths written.
    """
    out.mkdir(parents=True, exist_ok=True)
    stamp = report.started_at.strftime("%Y%m%dT%H%M%SZ")
    text = report.model_dump_json(indent=2) + "\n"
    dated = out / f"report-{stamp}.json"
    latest = out / "latest.json"
    dated.write_text(text, encoding="utf-8")
    latest.write_text(text, encoding="utf-8")
    return dated, latest
