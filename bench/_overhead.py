"""T6 and T10 from what the runs left on the topics. Pure: read-back stamps in, measurements out.

- T6 (``t6_measurement``): runs of ``bench-linear5-fixed500`` (a 500 ms model, no tail)
  submitted open loop at a low fixed rate; per run, (wall time - sum of step times) / sum
  of step times (``bench._latency.orchestration_shares``).
- T10 (``t10_measurement``): one run of ``bench-linear200`` at a time; the overhead into
  each step by position (``bench._latency.transitions``), the median of the last
  ``window`` transitions over the median of the first ``window``.
"""

from __future__ import annotations

from collections.abc import Sequence

from bench._latency import orchestration_shares, transitions
from bench._readback import Readback
from bench._report import Latency, LongRunRepetition, Measurement, Repetition
from bench._stats import cpu_shares, histogram, log_edges, percentile, percentiles, spread

__all__ = [
    "SHARE_EDGES_PERCENT",
    "T10_WINDOW",
    "edge_medians",
    "long_run_repetition",
    "t6_measurement",
    "t10_measurement",
]

#: Transitions compared at each end of the long run.
T10_WINDOW = 10

#: Buckets for orchestration shares, in percent: 0.01% to 10,000%, ten per decade.
SHARE_EDGES_PERCENT = log_edges(0.01, 10_000.0, 10)


def edge_medians(
    values: Sequence[float | None], window: int
) -> tuple[float | None, float | None, float | None]:
    """Median of the first and of the last ``window`` values present, and last / first.

    Missing values (``None``) are skipped; an end with none present gives ``None``, and so
    does a ratio over a zero median.
    """
    head = [v for v in values[:window] if v is not None]
    tail = [v for v in values[-window:] if v is not None]
    first = percentile(head, 50) if head else None
    last = percentile(tail, 50) if tail else None
    ratio = last / first if first and last is not None else None
    return first, last, ratio


def long_run_repetition(
    order: Sequence[str],
    run_id: str,
    back: Readback,
    repetition: Repetition,
    window: int = T10_WINDOW,
) -> LongRunRepetition:
    """One long run's transitions by position, and how the last ones compare with the first."""
    found = transitions(order, run_id, back.requests, back.results)
    first, last, ratio = edge_medians(found.overhead_ms, window)
    gap_first, gap_last, gap_ratio = edge_medians(found.gap_ms, window)
    return LongRunRepetition(
        steps=len(order),
        completed=repetition.completed_runs == repetition.runs,
        elapsed_s=repetition.elapsed_s,
        overhead_ms=found.overhead_ms,
        gap_ms=[round(g, 3) if g is not None else None for g in found.gap_ms],
        window=window,
        first_ms=first,
        last_ms=last,
        ratio=ratio,
        gap_first_ms=gap_first,
        gap_last_ms=gap_last,
        gap_ratio=gap_ratio,
    )


def t10_measurement(
    key: str,
    guarantee: str,
    role: str,
    prefix: str,
    order: Sequence[str],
    runs: Sequence[tuple[str, Repetition]],
    back: Readback,
) -> Measurement:
    """T10's measurement: every long run, one per repetition."""
    reps = [rep for _, rep in runs]
    long_runs = [long_run_repetition(order, run_id, back, rep) for run_id, rep in runs]
    notes = []
    missing = sum(v is None for run in long_runs for v in run.overhead_ms)
    if missing:
        notes.append(f"{missing} transition(s) were missing a record when read back")
    records, sizes = back.per_run([run_id for run_id, _ in runs])
    return Measurement(
        key=key,
        kind="long_run",
        subject="baton",
        guarantee=guarantee,
        process_role=role,
        topic_prefix=prefix,
        repetitions=reps,
        runs_per_s=spread([r.runs_per_s for r in reps]) if reps else None,
        cpu=cpu_shares(reps),
        long_runs=long_runs,
        records_per_run=records,
        bytes_per_run=sizes,
        notes=notes,
    )


def t6_measurement(
    key: str,
    guarantee: str,
    role: str,
    prefix: str,
    order: Sequence[str],
    runs: Sequence[tuple[list[str], Repetition]],
    back: Readback,
    rate_per_s: float,
) -> Measurement:
    """T6's measurement: per repetition, the orchestration share of each complete run."""
    per_rep: list[list[float]] = []
    overheads: list[list[float]] = []
    incomplete = 0
    for run_ids, _ in runs:
        found = orchestration_shares(order, run_ids, back.results, back.runs)
        incomplete += found.incomplete_runs
        per_rep.append([share * 100 for share in found.shares])
        overheads.append([w - s for w, s in zip(found.wall_ms, found.steps_ms, strict=True)])
    latencies = []
    resolution = "wall time: broker clock, 1 ms; step times: processor clock, 1 µs"
    for name, unit, definition, samples, edges in (
        (
            "orchestration_share",
            "%",
            "(run wall time - sum of step times) / sum of step times, per run; wall time "
            "from the task's append to the run result's append (broker LogAppendTime), "
            "step time = the step result's finished_at - started_at",
            per_rep,
            SHARE_EDGES_PERCENT,
        ),
        (
            "orchestration_time",
            "ms",
            "run wall time - sum of step times, per run (the same clocks)",
            overheads,
            None,
        ),
    ):
        pooled = [v for values in samples for v in values]
        if not pooled or not all(samples):
            continue
        latencies.append(
            Latency(
                name=name,
                definition=definition,
                unit=unit,
                per_repetition=[percentiles(values) for values in samples],
                pooled=percentiles(pooled),
                histogram=histogram(pooled, edges) if edges else histogram(pooled),
                resolution=resolution,
            )
        )
    reps = [rep for _, rep in runs]
    notes = [f"open loop at {rate_per_s:g} runs/s (a light load: a few runs in flight)"]
    if incomplete:
        notes.append(f"{incomplete} run(s) were missing a record when read back")
    return Measurement(
        key=key,
        kind="open_loop",
        subject="baton",
        guarantee=guarantee,
        process_role=role,
        topic_prefix=prefix,
        repetitions=reps,
        runs_per_s=spread([r.runs_per_s for r in reps]) if reps else None,
        events_per_s=spread([r.events_per_s for r in reps]) if reps else None,
        cpu=cpu_shares(reps),
        latencies=latencies,
        notes=notes,
    )
