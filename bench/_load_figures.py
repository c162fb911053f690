"""T5, T6, T8, T10, T11 and T12 as figures. Pure: measurements in, ``Figure`` rows out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench._report import AbsoluteFigure, Figure, InflightLevel, Measurement
from bench._stats import ratio, spread
from bench._verdicts import failed, incomplete, measured, own_cpu

__all__ = ["highest_kept", "t5", "t6", "t8", "t10", "t11", "t12"]


def highest_kept(levels: Sequence[InflightLevel]) -> InflightLevel | None:
    """The highest level that kept the ideal rate, if any did."""
    kept = [level for level in levels if level.keeps_ideal]
    return max(kept, key=lambda level: level.in_flight) if kept else None


def t5(measurement: Measurement | None) -> list[Figure]:
    """T5: the most runs kept in flight at >= 90% of the ideal rate, and memory per run."""
    name = "in-flight runs at >= 90% of the ideal rate (800 ms model, long tail), one worker"
    definition = (
        "One worker (exactly_once, processor concurrency raised to the top level), "
        "bench-linear5-tail (two llm steps on a scripted model: median 800 ms, log-normal "
        "sigma 0.5). N runs kept in flight (a new run submitted per result), N ramped; per "
        "level, after a settling time, a window counts completed runs: rate = completed / "
        "window; ideal = N / mean over those runs of the sum of their steps' processor times "
        "(zero orchestration cost). The figure is the highest N whose rate is >= 90% of its "
        "ideal (0 when none is); the ramp stops at the first level that misses."
    )
    memory_name = "worker resident memory per in-flight run, at that level"
    memory_definition = (
        "psutil RSS of the worker, median of the samples (every 0.5 s) in the level's "
        "window, minus the median before the ramp (nothing in flight), over N; KiB."
    )
    settings = measurement.inflight_settings if measurement is not None else None
    if measurement is None or not measurement.inflight or settings is None:
        note = "not run" if measurement is None else "no level was measured"
        return [
            failed("T5", name, "in flight", definition, note),
            failed("T5", memory_name, "memory per run", memory_definition, note),
        ]
    levels = measurement.inflight
    kept = highest_kept(levels)
    absolute = [
        AbsoluteFigure(
            label=f"{level.in_flight} in flight, of {level.ideal_rate_per_s:.1f} runs/s ideal",
            unit="%",
            value=spread([100 * level.fraction]),
        )
        for level in levels
    ]
    absolute.extend(own_cpu(measurement, "worker CPU"))
    why = settings.stopped
    if kept is None:
        note = f"no level kept {settings.threshold:.0%} of its ideal rate; {why}"
    else:
        note = f"{kept.fraction:.0%} of the ideal at {kept.in_flight}; {why}"
    note += f"; BATON_PROCESSOR_CONCURRENCY={settings.processor_concurrency}"
    rows = [
        measured(
            "T5",
            name,
            "in flight",
            "runs",
            spread([float(kept.in_flight if kept else 0)]),
            definition,
            absolute,
            [measurement.key],
            note=note,
        )
    ]
    at = kept or min(levels, key=lambda level: level.in_flight)
    memory_note = (
        f"at {at.in_flight} in flight"
        if kept
        else f"at {at.in_flight} in flight, the lowest level (none kept the ideal rate)"
    )
    rows.append(
        measured(
            "T5",
            memory_name,
            "memory per run",
            "KiB",
            spread([at.rss_per_run_kib]),
            memory_definition,
            [
                AbsoluteFigure(
                    label="worker RSS before the ramp",
                    unit="MiB",
                    value=spread([settings.rss_baseline_bytes / 2**20]),
                ),
                AbsoluteFigure(
                    label=f"worker RSS at {at.in_flight} in flight",
                    unit="MiB",
                    value=spread([at.rss_bytes / 2**20]),
                ),
            ],
            [measurement.key],
            note=memory_note,
        )
    )
    return rows


def t6(measurement: Measurement | None, guarantee: str) -> Figure:
    """T6: orchestration time over step time with a 500 ms model, p50 per run."""
    name = "orchestration time / step time, 500 ms model (p50 over runs)"
    definition = (
        "bench-linear5-fixed500 (two llm steps of exactly 500 ms) open loop at a low fixed "
        "rate. Per run: (wall time - sum of its step times) / sum of its step times; wall "
        "time = run result appended - task appended (broker LogAppendTime), a step's time = "
        "its result's finished_at - started_at (processor clock). p50 over the runs of each "
        "repetition; median of the repetitions; in percent."
    )
    variant = f"{guarantee} p50"
    problem = incomplete(measurement)
    if problem or measurement is None:
        return failed("T6", name, variant, definition, f"baton {guarantee}: {problem}")
    latencies = {latency.name: latency for latency in measurement.latencies}
    share = latencies.get("orchestration_share")
    if share is None or not share.per_repetition:
        return failed("T6", name, variant, definition, "no complete run was read back")
    absolute = [
        AbsoluteFigure(
            label="orchestration share p99",
            unit="%",
            value=spread([p.p99 for p in share.per_repetition]),
        )
    ]
    time_ = latencies.get("orchestration_time")
    if time_ is not None:
        for attribute in ("p50", "p99"):
            absolute.append(
                AbsoluteFigure(
                    label=f"orchestration time {attribute}",
                    unit="ms",
                    value=spread([getattr(p, attribute) for p in time_.per_repetition]),
                )
            )
    if measurement.runs_per_s is not None:
        absolute.append(
            AbsoluteFigure(label="completed runs/s", unit="runs/s", value=measurement.runs_per_s)
        )
    return measured(
        "T6",
        name,
        variant,
        "%",
        spread([p.p50 for p in share.per_repetition]),
        definition,
        absolute,
        [measurement.key],
    )


def t8(measurement: Measurement | None) -> list[Figure]:
    """T8: a worker holding N runs is killed; time to resume, runs lost, duplicate results."""
    names = {
        "resume": "kill -9 a worker holding N runs: restart -> an old run's next step dispatched",
        "lost runs": "runs without a result after the restart",
        "duplicate results": "runs with more than one result (read_committed)",
    }
    definition = (
        "A worker running the coordinator and only the transform and validate processors "
        "takes N runs of bench-linear5-hold; each parks at `draft` (llm) with its request on "
        "steps.llm. Once every request is there, SIGKILL; restart at once with the same "
        "command, worker id, port and home, and an llm-only processor worker beside it. "
        "resume = restart -> the first step request of an old run appended (broker clock): "
        "the restarted coordinator restored it, took its draft result and dispatched its next "
        "step. Then `results` is read whole with read_committed: a run with no result is lost, "
        "one with two or more is duplicated."
    )
    crash = measurement.crash if measurement is not None else None
    if measurement is None or crash is None:
        note = "not run" if measurement is None else "no outcome recorded"
        return [failed("T8", names[v], v, definition, note) for v in names]
    held = f"N = {crash.runs} runs held ({crash.held_at_kill} without a result at the kill)"
    timings = [
        AbsoluteFigure(label=label, unit="s", value=spread([value]))
        for label, value in (
            ("restart -> /healthz ready", crash.ready_s),
            ("restart -> first old run's step result (llm processor)", crash.first_step_result_s),
            ("restart -> first old run's result", crash.first_result_s),
            ("restart -> last old run's result", crash.all_results_s),
            ("first submission -> all N held", crash.submit_to_held_s),
        )
        if value is not None
    ]
    timings.extend(own_cpu(measurement, "restarted worker CPU"))
    rows = []
    if crash.resume_s is None:
        rows.append(
            failed(
                "T8",
                names["resume"],
                "resume",
                definition,
                f"{held}; no old run's step result was appended after the restart",
            )
        )
    else:
        rows.append(
            measured(
                "T8",
                names["resume"],
                "resume",
                "s",
                spread([crash.resume_s]),
                definition,
                timings,
                [measurement.key],
                note=held,
            )
        )
    for variant, count in (("lost runs", crash.lost), ("duplicate results", crash.duplicates)):
        note = f"of {crash.runs}; {crash.result_records} result records"
        if crash.unfinished:
            note += "; ended without completing: " + ", ".join(
                f"{n} {status}" for status, n in crash.unfinished.items()
            )
        rows.append(
            measured(
                "T8",
                names[variant],
                variant,
                "runs",
                spread([float(count)]),
                definition,
                [],
                [measurement.key],
                note=note,
            )
        )
    return rows


def t10(measurement: Measurement | None, guarantee: str) -> Figure:
    """T10: step overhead at the end of a 200-step run over its start."""
    name = "step overhead of the last steps / the first, one 200-step run"
    definition = (
        "bench-linear200 (llm and transform steps in turn, zero-latency model), one run at a "
        "time. Overhead into step k = k's request appended - (k-1)'s result appended "
        "(broker LogAppendTime, 1 ms). Per run: median of the last 10 transitions (into "
        "steps 191-200) / median of the first 10 (into steps 2-11); median of the runs."
    )
    problem = incomplete(measurement)
    if problem or measurement is None:
        return failed("T10", name, guarantee, definition, f"baton {guarantee}: {problem}")
    ratios = [run.ratio for run in measurement.long_runs if run.ratio is not None]
    if not ratios:
        return failed("T10", name, guarantee, definition, "no run gave both ends")
    runs = measurement.long_runs
    absolute = []
    for label, values in (
        ("first 10, median overhead", [r.first_ms for r in runs]),
        ("last 10, median overhead", [r.last_ms for r in runs]),
    ):
        present = [v for v in values if v is not None]
        if present:
            absolute.append(AbsoluteFigure(label=label, unit="ms", value=spread(present)))
    gaps = [r.gap_ratio for r in runs if r.gap_ratio is not None]
    if gaps:
        absolute.append(
            AbsoluteFigure(
                label="same ratio of step gaps (processor clock)", unit="ratio", value=spread(gaps)
            )
        )
    absolute.append(
        AbsoluteFigure(label="run time", unit="s", value=spread([r.elapsed_s for r in runs]))
    )
    return measured(
        "T10",
        name,
        guarantee,
        "ratio",
        spread(ratios),
        definition,
        absolute,
        [measurement.key],
        note="the overheads are a few ms at 1 ms resolution: a ratio of small numbers",
    )


def t11(scale: Mapping[str, Measurement]) -> list[Figure]:
    """T11: runs/s of one group of 1, 2, 3 workers; 2 and 3 over 1."""
    name = "runs/s of one consumer group of worker processes, closed loop"
    definition = (
        "One prefix, 1 then 2 then 3 `baton worker` processes (exactly_once) in its groups, "
        "each with its own worker id and port; after each worker joins and the group "
        "settles, N runs of bench-linear5 at once, runs/s = completed / (last result - "
        "first submission). CPU of every process beside it."
    )
    by_size = {m.workers: m for m in scale.values() if m.workers is not None}
    rows = []
    for size in (1, 2, 3):
        variant = f"{size} worker" + ("s" if size > 1 else "")
        measurement = by_size.get(size)
        problem = incomplete(measurement)
        if problem or measurement is None or measurement.runs_per_s is None:
            rows.append(failed("T11", name, variant, definition, f"{size} worker(s): {problem}"))
            continue
        absolute = [
            AbsoluteFigure(label=f"{share.role} CPU", unit="% of a core", value=share.percent)
            for share in measurement.cpu
        ]
        rows.append(
            measured(
                "T11",
                name,
                variant,
                "runs/s",
                measurement.runs_per_s,
                definition,
                absolute,
                [measurement.key],
            )
        )
    one = by_size.get(1)
    for size in (2, 3):
        variant = f"{size} / 1 workers"
        ratio_name = f"runs/s with {size} workers / with 1"
        ratio_definition = (
            f"Median runs/s of the group of {size} over the group of 1, same run; "
            "on a machine whose cores the broker and the load generator share, it flattens."
        )
        other = by_size.get(size)
        if incomplete(one) or incomplete(other) or one is None or other is None:
            rows.append(failed("T11", ratio_name, variant, ratio_definition, "a group size failed"))
            continue
        assert one.runs_per_s is not None and other.runs_per_s is not None
        rows.append(
            measured(
                "T11",
                ratio_name,
                variant,
                "ratio",
                ratio(other.runs_per_s, one.runs_per_s),
                ratio_definition,
                [],
                [one.key, other.key],
            )
        )
    return rows


def t12(measurement: Measurement | None, guarantee: str) -> list[Figure]:
    """T12: records and bytes written per completed 5-step run, every run-keyed topic."""
    definition = (
        "The open-loop runs (T3's) read back after the worker stopped: every record on every "
        "topic of the catalog keyed by one of these run ids (tasks, step requests, step "
        "results, results, run events, the run-state changelog, retries, timers, ...), "
        "counted and its value bytes summed, over the number of runs."
    )
    variants = {
        f"{guarantee} records": ("records written per completed 5-step run", "records"),
        f"{guarantee} KiB": ("value bytes written per completed 5-step run", "KiB"),
    }
    problem = incomplete(measurement)
    if problem or measurement is None or not measurement.records_per_run:
        note = f"baton {guarantee} open loop: {problem or 'nothing read back'}"
        return [failed("T12", n, v, definition, note) for v, (n, _) in variants.items()]
    records = measurement.records_per_run
    sizes = measurement.bytes_per_run
    rows = []
    for variant, (name, unit) in variants.items():
        if unit == "records":
            value = records.get("total", 0.0)
            beside = [
                AbsoluteFigure(label=role, unit="records", value=spread([count]))
                for role, count in records.items()
                if role != "total"
            ]
        else:
            value = sizes.get("total", 0.0) / 1024
            beside = [
                AbsoluteFigure(label=role, unit="KiB", value=spread([size / 1024]))
                for role, size in sizes.items()
                if role != "total"
            ]
        rows.append(
            measured(
                "T12", name, variant, unit, spread([value]), definition, beside, [measurement.key]
            )
        )
    return rows
