"""Targets and verdicts, and the small pieces every figure is built from. Pure."""

from __future__ import annotations

from bench._report import AbsoluteFigure, Figure, Measurement, Spread, Target, Verdict

__all__ = [
    "BASELINE_NOTE",
    "TARGETS",
    "events",
    "failed",
    "incomplete",
    "measured",
    "own_cpu",
    "runs_of",
    "verdict",
]

#: Goals from BENCH.md, by (id, variant).
TARGETS: dict[tuple[str, str], Target] = {
    ("T1", ""): Target(better="higher", goal=0.5, stretch=0.7),
    ("T2", ""): Target(better="higher", goal=0.8, stretch=0.9),
    ("T3", "at_least_once p50"): Target(better="lower", goal=5.0, stretch=3.0),
    ("T3", "at_least_once p99"): Target(better="lower", goal=25.0),
    ("T3", "exactly_once p99"): Target(better="lower", goal=120.0),
    ("T4", "at_least_once"): Target(better="higher", goal=500.0, stretch=1000.0),
    ("T4", "exactly_once"): Target(better="higher", goal=500.0, stretch=1000.0),
    ("T7", ""): Target(better="lower", goal=20.0),
    ("T9", ""): Target(better="lower", goal=0.6),
    # P1's rows: BENCH.md's goal beyond the targets (T4 >= 10x P1 durable, >= P1 in memory).
    ("P1", "baton exactly_once / durable"): Target(better="higher", goal=10.0),
    ("P1", "baton exactly_once / in memory"): Target(better="higher", goal=1.0),
    ("T5", "in flight"): Target(better="higher", goal=2000.0),
    ("T5", "memory per run"): Target(better="lower", goal=50.0),
    ("T6", "at_least_once p50"): Target(better="lower", goal=1.0),
    ("T6", "exactly_once p50"): Target(better="lower", goal=1.0),
    ("T8", "resume"): Target(better="lower", goal=10.0),
    ("T8", "lost runs"): Target(better="lower", goal=0.0),
    ("T8", "duplicate results"): Target(better="lower", goal=0.0),
    ("T10", "at_least_once"): Target(better="lower", goal=1.1),
    ("T10", "exactly_once"): Target(better="lower", goal=1.1),
    ("T11", "2 / 1 workers"): Target(better="higher", goal=1.6),
    ("T12", "at_least_once records"): Target(better="lower", goal=15.0),
    ("T12", "at_least_once KiB"): Target(better="lower", goal=10.0),
    ("T12", "exactly_once records"): Target(better="lower", goal=15.0),
    ("T12", "exactly_once KiB"): Target(better="lower", goal=10.0),
}

BASELINE_NOTE = "a baseline: it has no target; the ratios that use it do"


def verdict(value: Spread, target: Target | None) -> Verdict:
    """How the median compares with the target (and its stretch goal)."""
    if target is None:
        return "no_target"
    median = value.median
    if target.better == "higher":
        if target.stretch is not None and median >= target.stretch:
            return "meets_stretch"
        return "meets" if median >= target.goal else "misses"
    if target.stretch is not None and median <= target.stretch:
        return "meets_stretch"
    return "meets" if median <= target.goal else "misses"


def incomplete(measurement: Measurement | None) -> str | None:
    """Why a measurement cannot give a figure, or ``None`` when it can."""
    if measurement is None:
        return "not run"
    if not measurement.repetitions and not measurement.micro_us:
        return "no repetitions"
    short = [r for r in measurement.repetitions if r.completed_runs < r.runs]
    if short:
        worst = min(short, key=lambda r: r.completed_runs / r.runs)
        why = ", ".join(f"{count} {how}" for how, count in worst.unfinished.items())
        return (
            f"{len(short)} repetition(s) did not complete every run "
            f"(worst: {worst.completed_runs} of {worst.runs}"
            + (f"; {why}" if why else "")
            + (f"; e.g. {worst.first_problem}" if worst.first_problem else "")
            + ")"
        )
    return None


def failed(id_: str, name: str, variant: str, definition: str, note: str) -> Figure:
    return Figure(
        id=id_,
        name=name,
        variant=variant,
        status="failed",
        target=TARGETS.get((id_, variant)),
        verdict="failed",
        definition=definition,
        note=note,
    )


def measured(
    id_: str,
    name: str,
    variant: str,
    unit: str,
    value: Spread,
    definition: str,
    absolute: list[AbsoluteFigure],
    sources: list[str],
    note: str | None = None,
) -> Figure:
    target = TARGETS.get((id_, variant))
    return Figure(
        id=id_,
        name=name,
        variant=variant,
        status="measured",
        unit=unit,
        value=value,
        target=target,
        verdict=verdict(value, target),
        absolute=absolute,
        definition=definition,
        note=note,
        sources=sources,
    )


def events(label: str, measurement: Measurement) -> AbsoluteFigure:
    assert measurement.events_per_s is not None
    return AbsoluteFigure(label=label, unit="events/s", value=measurement.events_per_s)


def own_cpu(measurement: Measurement, label: str) -> list[AbsoluteFigure]:
    """The CPU of the process under test, when it was read."""
    share = next((c for c in measurement.cpu if c.role == measurement.process_role), None)
    if share is None:
        return []
    return [AbsoluteFigure(label=label, unit="% of a core", value=share.percent)]


def runs_of(measurement: Measurement) -> Spread:
    assert measurement.runs_per_s is not None
    return measurement.runs_per_s
