"""B2 (bare Faust) and P1 (LangGraph) as figures, beside B1 and baton's T4. Pure."""

from __future__ import annotations

from collections.abc import Mapping

from bench._report import AbsoluteFigure, Figure, Measurement, Spread
from bench._stats import ratio, spread
from bench._verdicts import BASELINE_NOTE, events, failed, incomplete, measured, own_cpu

__all__ = ["P1_STEPS", "b2", "ms_per_step", "p1"]

#: Steps per run of the workload (and nodes per invocation of P1's graph).
P1_STEPS = 5


def _cpu_per_event_us(measurement: Measurement) -> Spread | None:
    """CPU time of the process under test per event, µs, from the medians."""
    share = next((c for c in measurement.cpu if c.role == measurement.process_role), None)
    if share is None or measurement.events_per_s is None or measurement.events_per_s.median <= 0:
        return None
    return spread([share.percent.median / 100 / measurement.events_per_s.median * 1e6])


def b2(faust: Measurement | None, raw: Measurement | None) -> list[Figure]:
    """B2: bare Faust's events/s, and its ratio to the raw pipe's (B1)."""
    name = "bare Faust: the raw pipe's 11 hops as two plain Faust agents, no tables"
    definition = (
        "Events per second through two Faust agents (faust-streaming, configured as baton's "
        "processors app: at-least-once, commit every 0.5 s) moving N records of 1 KB "
        "through the same 11 hops over the same partitions as B1, routed by a hop-count "
        "header, never decoded; closed loop, first submission to last record out."
    )
    ratio_name = "bare Faust events/s / raw pipe (B1) events/s"
    ratio_definition = (
        "Median events/s of B2 over the median of B1, measured in the same run; the range is "
        "the widest the two ranges allow. 1 - this is the share of the raw pipe's rate that "
        "Faust's own per-event work costs."
    )
    problem = incomplete(faust)
    if problem or faust is None or faust.events_per_s is None:
        note = f"faust pipe: {problem}"
        return [
            failed("B2", name, "", definition, note),
            failed("B2", ratio_name, "/ B1", ratio_definition, note),
        ]
    absolute = [*own_cpu(faust, "faust pipe CPU")]
    per_event = _cpu_per_event_us(faust)
    if per_event is not None:
        absolute.append(
            AbsoluteFigure(label="faust pipe CPU per event", unit="µs", value=per_event)
        )
    rows = [
        measured(
            "B2",
            name,
            "",
            "events/s",
            faust.events_per_s,
            definition,
            absolute,
            [faust.key],
            note=BASELINE_NOTE,
        )
    ]
    problem = incomplete(raw)
    if problem or raw is None or raw.events_per_s is None:
        rows.append(failed("B2", ratio_name, "/ B1", ratio_definition, f"raw pipe: {problem}"))
        return rows
    beside = [events("bare Faust", faust), events("B1 raw pipe", raw)]
    raw_per_event = _cpu_per_event_us(raw)
    if per_event is not None and raw_per_event is not None:
        beside.append(AbsoluteFigure(label="faust pipe CPU per event", unit="µs", value=per_event))
        beside.append(
            AbsoluteFigure(label="raw pipe CPU per event", unit="µs", value=raw_per_event)
        )
    rows.append(
        measured(
            "B2",
            ratio_name,
            "/ B1",
            "ratio",
            ratio(faust.events_per_s, raw.events_per_s),
            ratio_definition,
            beside,
            [faust.key, raw.key],
        )
    )
    return rows


def ms_per_step(runs_per_s: Spread) -> Spread:
    """Wall milliseconds per step at a rate of 5-step runs: 1000 / (runs/s x 5)."""
    values = [1000 / (r * P1_STEPS) for r in runs_per_s.samples if r > 0]
    if not values:
        values = [1000 / (runs_per_s.median * P1_STEPS)] if runs_per_s.median > 0 else [0.0]
    return spread(values)


def p1(
    durable: Measurement | None,
    memory: Measurement | None,
    baton: Mapping[str, Measurement | None],
) -> list[Figure]:
    """P1: LangGraph durable and in memory, runs/s and ms per step, beside baton's T4."""
    rows: list[Figure] = []
    lines = (
        (
            "durable",
            durable,
            "LangGraph + SqliteSaver (WAL, synchronous=FULL), durability='sync'",
        ),
        ("in memory", memory, "LangGraph, no checkpointer (no durability)"),
    )
    definition = (
        "The same 5-step chain as a LangGraph graph in the bench process (no network hop), "
        "the model a plain function returning the fixed 1 KB answer; closed loop: N "
        "invocations one after the other, each with its own thread_id, runs/s = N / (last "
        "return - first call). ms per step = 1000 / (runs/s x 5): for these sequential "
        "invocations it is also each step's latency. Beside it, baton's T4 (N runs at once, "
        "one worker) in the same unit: there it is throughput, not latency."
    )
    t4 = {g: m for g, m in baton.items() if m is not None and incomplete(m) is None}
    for variant, measurement, label in lines:
        name = f"peer: {label}"
        problem = incomplete(measurement)
        if problem or measurement is None or measurement.runs_per_s is None:
            rows.append(failed("P1", name, variant, definition, f"{variant}: {problem}"))
            continue
        absolute = [
            AbsoluteFigure(
                label="ms per step", unit="ms", value=ms_per_step(measurement.runs_per_s)
            ),
            *own_cpu(measurement, "bench process CPU (LangGraph)"),
        ]
        for guarantee, run in t4.items():
            assert run.runs_per_s is not None
            absolute.append(
                AbsoluteFigure(label=f"baton T4 {guarantee}", unit="runs/s", value=run.runs_per_s)
            )
            absolute.append(
                AbsoluteFigure(
                    label=f"baton T4 {guarantee}, ms per step",
                    unit="ms",
                    value=ms_per_step(run.runs_per_s),
                )
            )
        rows.append(
            measured(
                "P1",
                name,
                variant,
                "runs/s",
                measurement.runs_per_s,
                definition,
                absolute,
                [measurement.key],
            )
        )
    eos = baton.get("exactly_once")
    for variant, measurement, _ in lines:
        ratio_variant = f"baton exactly_once / {variant}"
        name = f"baton T4 exactly_once runs/s / P1 {variant} runs/s"
        ratio_definition = (
            "Median runs/s of one baton worker (exactly_once, closed loop, T4) over P1's "
            f"{variant} runs/s, measured in the same run, interleaved; BENCH.md's goal beyond "
            "the targets: >= 10x P1 durable and >= P1 in memory."
        )
        for who, part in (("baton exactly_once", eos), (f"P1 {variant}", measurement)):
            problem = incomplete(part)
            if problem:
                rows.append(
                    failed("P1", name, ratio_variant, ratio_definition, f"{who}: {problem}")
                )
                break
        else:
            assert eos is not None and measurement is not None
            assert eos.runs_per_s is not None and measurement.runs_per_s is not None
            rows.append(
                measured(
                    "P1",
                    name,
                    ratio_variant,
                    "ratio",
                    ratio(eos.runs_per_s, measurement.runs_per_s),
                    ratio_definition,
                    [
                        AbsoluteFigure(
                            label="baton exactly_once", unit="runs/s", value=eos.runs_per_s
                        ),
                        AbsoluteFigure(
                            label=f"P1 {variant}", unit="runs/s", value=measurement.runs_per_s
                        ),
                    ],
                    [eos.key, measurement.key],
                )
            )
    return rows
