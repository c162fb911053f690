"""From measurements to the figures of BENCH.md: values, targets, verdicts. Pure.

Every function takes the measurements a figure needs and returns ``Figure`` rows. When a
measurement is missing or incomplete the figure says so (``failed`` with a note) instead of
showing a number it could not honestly compute.
"""

from __future__ import annotations

from collections.abc import Mapping

from bench._baseline_figures import b2, p1
from bench._load_figures import t5, t6, t8, t10, t11, t12
from bench._report import OTHER_ROLE, AbsoluteFigure, Figure, Measurement
from bench._stats import ratio, spread
from bench._verdicts import (
    BASELINE_NOTE,
    TARGETS,
    events,
    failed,
    incomplete,
    measured,
    own_cpu,
    runs_of,
    verdict,
)

__all__ = [
    "NOT_MEASURED",
    "TARGETS",
    "all_figures",
    "b1",
    "b2",
    "busy_machine_notes",
    "not_measured",
    "p1",
    "t1",
    "t2",
    "t3",
    "t4",
    "t5",
    "t6",
    "t7",
    "t8",
    "t9",
    "t10",
    "t11",
    "t12",
    "verdict",
]

#: What is not measured yet, and why.
NOT_MEASURED: dict[str, tuple[str, str]] = {
    "B0": (
        "broker ceiling (Kafka's producer/consumer perf tools, 1 KB records)",
        "not built yet: needs the perf-test tools run against the same broker and partitions",
    ),
    "T13": (
        "worker resident memory after 20k and after 200k finished runs past retention",
        "not built yet: needs runs past BATON_RUN_RETENTION, hours at this machine's rates",
    ),
}


def b1(raw: Measurement | None) -> Figure:
    """B1: the raw pipe's events per second."""
    name = "raw pipe: aiokafka consume->produce, batched, no state, no model"
    definition = (
        "Events (records consumed by a hop) per second through the raw pipe, closed loop: "
        "N records of 1 KB submitted at once, each making the same 11 hops as a run, timed "
        "from the first submission to the last record out."
    )
    problem = incomplete(raw)
    if problem or raw is None or raw.events_per_s is None:
        return failed("B1", name, "", definition, f"raw pipe: {problem}")
    return measured(
        "B1",
        name,
        "",
        "events/s",
        raw.events_per_s,
        definition,
        [
            AbsoluteFigure(label="runs/s", unit="runs/s", value=runs_of(raw)),
            *own_cpu(raw, "raw pipe CPU"),
        ],
        [raw.key],
        note=BASELINE_NOTE,
    )


def t1(baton: Measurement | None, raw: Measurement | None) -> Figure:
    """T1: baton's events/s (at-least-once) over the raw pipe's."""
    name = "baton events/s / raw pipe (B1) events/s, at-least-once"
    definition = (
        "Median events/s of baton (one worker, at_least_once, closed loop) over the median "
        "events/s of B1 measured in the same run, interleaved repetition by repetition; "
        "the range is the widest the two ranges allow (min/max, max/min)."
    )
    for label, measurement in (("baton at_least_once", baton), ("B1", raw)):
        problem = incomplete(measurement)
        if problem:
            return failed("T1", name, "", definition, f"{label}: {problem}")
    assert baton is not None and raw is not None
    assert baton.events_per_s is not None and raw.events_per_s is not None
    return measured(
        "T1",
        name,
        "",
        "ratio",
        ratio(baton.events_per_s, raw.events_per_s),
        definition,
        [events("baton at_least_once", baton), events("B1 raw pipe", raw)],
        [baton.key, raw.key],
    )


def t2(eos: Measurement | None, alo: Measurement | None) -> Figure:
    """T2: exactly-once throughput over at-least-once throughput."""
    name = "exactly-once events/s / at-least-once events/s"
    definition = (
        "Median events/s of baton with processing_guarantee=exactly_once over the same with "
        "at_least_once, one worker each, closed loop, interleaved in the same run."
    )
    for label, measurement in (("baton exactly_once", eos), ("baton at_least_once", alo)):
        problem = incomplete(measurement)
        if problem:
            return failed("T2", name, "", definition, f"{label}: {problem}")
    assert eos is not None and alo is not None
    assert eos.events_per_s is not None and alo.events_per_s is not None
    return measured(
        "T2",
        name,
        "",
        "ratio",
        ratio(eos.events_per_s, alo.events_per_s),
        definition,
        [events("exactly_once", eos), events("at_least_once", alo)],
        [eos.key, alo.key],
    )


def t4(measurement: Measurement | None, guarantee: str) -> Figure:
    """T4: completed runs per second of one worker process."""
    name = "completed 5-step runs/s per worker process"
    definition = (
        "One `baton worker` (coordinator and processors in one process) with this guarantee; "
        "closed loop: N runs submitted at once, runs/s = completed runs / (last result seen "
        "by the client - first submission)."
    )
    problem = incomplete(measurement)
    if problem or measurement is None or measurement.runs_per_s is None:
        return failed("T4", name, guarantee, definition, f"baton {guarantee}: {problem}")
    absolute = [events("events/s", measurement), *own_cpu(measurement, "worker CPU")]
    return measured(
        "T4",
        name,
        guarantee,
        "runs/s",
        measurement.runs_per_s,
        definition,
        absolute,
        [measurement.key],
    )


def t3(measurement: Measurement | None, guarantee: str) -> list[Figure]:
    """T3: orchestration overhead per step at a fraction of the maximum load (p50, p99)."""
    name = "orchestration overhead per step (result appended -> next request appended)"
    definition = (
        "Open loop at a fixed rate (load_fraction of this guarantee's closed-loop runs/s). "
        "Per run and consecutive steps a->b: broker append time of b's StepRequested minus "
        "broker append time of a's StepResult (LogAppendTime on the bench's path topics; "
        "ms resolution). Percentile per repetition; median of repetitions with min and max."
    )
    problem = incomplete(measurement)
    variants = [f"{guarantee} p50", f"{guarantee} p99"]
    if problem or measurement is None:
        note = f"baton {guarantee} open loop: {problem}"
        return [failed("T3", name, v, definition, note) for v in variants]
    latencies = {latency.name: latency for latency in measurement.latencies}
    overhead = latencies.get("step_overhead")
    if overhead is None or not overhead.per_repetition:
        note = "no step transitions were read back"
        return [failed("T3", name, v, definition, note) for v in variants]
    load = measurement.open_loop
    figures = []
    for variant, attribute in zip(variants, ("p50", "p99"), strict=True):
        value = spread([getattr(p, attribute) for p in overhead.per_repetition])
        absolute = []
        if load is not None:
            absolute.append(
                AbsoluteFigure(
                    label=f"load ({load.load_fraction:.0%} of {load.max_rate_per_s:.0f})",
                    unit="runs/s",
                    value=spread([load.rate_per_s]),
                )
            )
        for other, label in (("step_gap", "step gap"), ("end_to_end", "run end to end")):
            if other in latencies and latencies[other].per_repetition:
                absolute.append(
                    AbsoluteFigure(
                        label=f"{label} {attribute}",
                        unit="ms",
                        value=spread(
                            [getattr(p, attribute) for p in latencies[other].per_repetition]
                        ),
                    )
                )
        figures.append(
            measured("T3", name, variant, "ms", value, definition, absolute, [measurement.key])
        )
    return figures


def t7(measurement: Measurement | None) -> Figure:
    """T7: encode + decode + validate one ~1 KB event."""
    name = "encode + decode + validate one ~1 KB event (topics.Codec)"
    definition = (
        "Codec().encode(event) then Codec().decode(bytes, StepResult) (Avro + pydantic "
        "validation) in a loop in one process, no broker; microseconds per round trip. "
        "The event is a StepResult with a 1 KB text output and usage."
    )
    if measurement is None or "round_trip" not in measurement.micro_us:
        return failed("T7", name, "", definition, "not run")
    micro = measurement.micro_us
    absolute = [
        AbsoluteFigure(label=label, unit="µs", value=micro[key])
        for key, label in (("encode", "encode"), ("decode", "decode + validate"))
        if key in micro
    ]
    return measured(
        "T7", name, "", "µs", micro["round_trip"], definition, absolute, [measurement.key]
    )


def t9(strong: Measurement | None, routed: Measurement | None) -> Figure:
    """T9: the routed, cached arm's cost over the always-strong arm's, at equal quality."""
    name = "cost with routing + cache / always-strong cost, labelled mixed workload"
    definition = (
        "Per round, one question set (labelled easy/hard, a share of exact repeats) runs "
        "through two baton workers: always the strong route with the response cache off, "
        "and label routing (hard -> strong, else fast) with cascade: [strong] on an answer "
        "that misses the output schema, the cache on. Cost: the sum of the runs' "
        "usage.cost_usd. Both arms of a round answer the same questions, so each round "
        "gives one ratio; median of the rounds with min and max. Judged quality: share of "
        "runs whose output's answer equals the labelled one. The target holds only when the "
        "routed arm's quality is not below the strong arm's."
    )
    for label, measurement in (("always-strong arm", strong), ("routed arm", routed)):
        problem = _cost_incomplete(measurement)
        if problem:
            return failed("T9", name, "", definition, f"{label}: {problem}")
    assert strong is not None and routed is not None
    pairs = list(zip(strong.cost, routed.cost, strict=False))
    if any(s.cost_usd <= 0 for s, _ in pairs):
        return failed("T9", name, "", definition, "the always-strong arm cost nothing")
    value = spread([r.cost_usd / s.cost_usd for s, r in pairs])
    routing_only = spread([(r.cost_usd + r.saved_usd) / s.cost_usd for s, r in pairs])
    quality_strong = _pooled_quality(strong)
    quality_routed = _pooled_quality(routed)
    tasks = strong.cost[0].tasks
    per_k = 1000 / tasks
    absolute = [
        AbsoluteFigure(
            label="always-strong cost",
            unit="$/1k tasks",
            value=spread([s.cost_usd * per_k for s in strong.cost]),
        ),
        AbsoluteFigure(
            label="routed + cached cost",
            unit="$/1k tasks",
            value=spread([r.cost_usd * per_k for r in routed.cost]),
        ),
        AbsoluteFigure(
            label="judged quality, always-strong",
            unit="%",
            value=spread([100 * s.quality for s in strong.cost]),
        ),
        AbsoluteFigure(
            label="judged quality, routed + cached",
            unit="%",
            value=spread([100 * r.quality for r in routed.cost]),
        ),
        AbsoluteFigure(
            label="routing alone (cache's savings added back)", unit="ratio", value=routing_only
        ),
        AbsoluteFigure(
            label=f"repeats answered from the cache (of {routed.cost[0].repeats})",
            unit="runs",
            value=spread([float(r.cached_repeats) for r in routed.cost]),
        ),
        AbsoluteFigure(
            label="fast answers that missed the schema, asked again of strong",
            unit="runs",
            value=spread([float(sum(r.malformed_answers.values())) for r in routed.cost]),
        ),
    ]
    figure = measured(
        "T9", name, "", "ratio", value, definition, absolute, [strong.key, routed.key]
    )
    settings = routed.cost_settings
    cache = f"cache {settings.cache}" if settings is not None else "cache state unknown"
    if quality_routed < quality_strong:
        return figure.model_copy(
            update={
                "verdict": "misses",
                "note": (
                    f"judged quality is not equal: routed {quality_routed:.1%} vs "
                    f"always-strong {quality_strong:.1%}, so the cost target does not hold "
                    f"whatever the ratio; {cache}"
                ),
            }
        )
    return figure.model_copy(
        update={
            "note": f"equal judged quality ({quality_routed:.1%} vs {quality_strong:.1%}); {cache}"
        }
    )


def _pooled_quality(measurement: Measurement) -> float:
    tasks = sum(c.tasks for c in measurement.cost)
    return sum(c.correct for c in measurement.cost) / tasks if tasks else 0.0


def _cost_incomplete(measurement: Measurement | None) -> str | None:
    """Why a T9 arm cannot give a figure: not run, or runs whose cost never came back."""
    if measurement is None:
        return "not run"
    if not measurement.cost:
        return "no repetitions"
    lost = [c for c in measurement.cost if c.results < c.tasks]
    if lost:
        worst = min(lost, key=lambda c: c.results)
        return (
            f"{len(lost)} repetition(s) are missing run results, so their cost is unknown "
            f"(worst: {worst.results} of {worst.tasks}; e.g. {worst.first_wrong})"
        )
    return None


def busy_machine_notes(measurements: Mapping[str, Measurement], limit: float = 25.0) -> list[str]:
    """A note for every measurement during which other work used over ``limit``% of a core."""
    notes = []
    for key, measurement in measurements.items():
        other = next((c for c in measurement.cpu if c.role == OTHER_ROLE), None)
        if other is not None and other.percent.median > limit:
            notes.append(
                f"{key}: processes the bench did not start used a median "
                f"{other.percent.median:.0f}% of a core (max {other.percent.max:.0f}%) while "
                "it was measured; its figures are noisier than usual"
            )
    return notes


def not_measured(id_: str) -> Figure:
    """A figure of BENCH.md that this suite does not measure yet."""
    name, why = NOT_MEASURED[id_]
    return Figure(
        id=id_,
        name=name,
        status="not_measured",
        verdict="not_measured",
        definition="see BENCH.md",
        note=why,
    )


def all_figures(measurements: Mapping[str, Measurement], selected: frozenset[str]) -> list[Figure]:
    """Every figure of BENCH.md, in order: the selected ones measured, the rest listed."""
    get = measurements.get
    rows: list[Figure] = [not_measured("B0")]
    if selected & {"B1", "T1", "B2"}:
        rows.append(b1(get("closed/raw_pipe")))
    if "B2" in selected:
        rows.extend(b2(get("closed/faust_pipe"), get("closed/raw_pipe")))
    if "P1" in selected:
        rows.extend(
            p1(
                get("closed/langgraph_sqlite"),
                get("closed/langgraph_memory"),
                {g: get(f"closed/{g}") for g in ("at_least_once", "exactly_once")},
            )
        )
    if "T1" in selected:
        rows.append(t1(get("closed/at_least_once"), get("closed/raw_pipe")))
    if "T2" in selected:
        rows.append(t2(get("closed/exactly_once"), get("closed/at_least_once")))
    if "T3" in selected:
        rows.extend(t3(get("open/at_least_once"), "at_least_once"))
        rows.extend(t3(get("open/exactly_once"), "exactly_once"))
    if "T4" in selected:
        rows.append(t4(get("closed/at_least_once"), "at_least_once"))
        rows.append(t4(get("closed/exactly_once"), "exactly_once"))
    if "T5" in selected:
        rows.extend(t5(get("inflight/exactly_once")))
    if "T6" in selected:
        rows.append(t6(get("t6/at_least_once"), "at_least_once"))
        rows.append(t6(get("t6/exactly_once"), "exactly_once"))
    if "T7" in selected:
        rows.append(t7(get("micro/codec")))
    if "T8" in selected:
        rows.extend(t8(get("crash/exactly_once")))
    if "T9" in selected:
        rows.append(t9(get("cost/strong"), get("cost/routed")))
    if "T10" in selected:
        rows.append(t10(get("t10/at_least_once"), "at_least_once"))
        rows.append(t10(get("t10/exactly_once"), "exactly_once"))
    if "T11" in selected:
        rows.extend(t11({key: m for key, m in measurements.items() if key.startswith("scale/")}))
    if "T12" in selected:
        rows.extend(t12(get("open/at_least_once"), "at_least_once"))
        rows.extend(t12(get("open/exactly_once"), "exactly_once"))
    rows.append(not_measured("T13"))
    return rows
