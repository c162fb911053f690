"""Which measurements a selection of figures needs. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from bench._figures import NOT_MEASURED

__all__ = ["GUARANTEES", "MEASURED", "Plan", "parse_levels", "parse_only", "plan"]

#: The figures this suite measures.
MEASURED = (
    "B1",
    "B2",
    "P1",
    "T1",
    "T2",
    "T3",
    "T4",
    "T5",
    "T6",
    "T7",
    "T8",
    "T9",
    "T10",
    "T11",
    "T12",
)

#: baton's processing guarantees, in the order they are measured.
GUARANTEES = ("at_least_once", "exactly_once")


def parse_only(text: str | None) -> frozenset[str]:
    """``"T4,b1"`` -> ``{"T4", "B1"}``; empty or ``None`` means all.

    Raises:
        ValueError: An id this suite does not measure (the message says which it does).
    """
    if not text:
        return frozenset()
    ids = {part.strip().upper() for part in text.split(",") if part.strip()}
    unknown = sorted(ids - set(MEASURED))
    if unknown:
        later = [i for i in unknown if i in NOT_MEASURED]
        hint = f"; not measured yet: {', '.join(later)}" if later else ""
        raise ValueError(
            f"unknown figure(s) {', '.join(unknown)}: choose from {', '.join(MEASURED)}{hint}"
        )
    return frozenset(ids)


def parse_levels(text: str | None) -> tuple[int, ...] | None:
    """``"25,50,100"`` -> ``(25, 50, 100)``; empty or ``None`` means the default.

    Raises:
        ValueError: Not positive integers in increasing order.
    """
    if not text:
        return None
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a list of integers") from None
    if not levels or levels[0] < 1 or list(levels) != sorted(set(levels)):
        raise ValueError(f"{text!r}: levels must be positive and increasing")
    return levels


@dataclass(frozen=True)
class Plan:
    """The subjects a selection of figures needs.

    Attributes:
        codec: The codec micro-benchmark (T7).
        raw_pipe: The raw pipe, closed loop (B1, T1, B2's ratio).
        closed: Guarantees to run a closed-loop baton worker for (T1, T2, T4; P1 beside).
        open: Guarantees to run an open-loop baton worker for (T3, T6, T10, T12).
        cost: The labelled mixed workload, always-strong against routed + cached (T9).
        faust_pipe: The bare Faust pipe, closed loop (B2).
        peer: LangGraph, durable and in memory, closed loop (P1).
        latency: Open-loop repetitions at a fraction of the maximum (T3, T12).
        orchestration: Guarantees to measure orchestration ÷ step time for (T6).
        long_run: Guarantees to run the 200-step run on (T10).
        inflight: The in-flight ramp with a slow model (T5).
        crash: kill -9 a worker holding runs, restart it (T8).
        scaling: 1, 2, 3 workers in one group (T11).
    """

    codec: bool
    raw_pipe: bool
    closed: tuple[str, ...]
    open: tuple[str, ...]
    cost: bool = False
    faust_pipe: bool = False
    peer: bool = False
    latency: bool = False
    orchestration: tuple[str, ...] = ()
    long_run: tuple[str, ...] = ()
    inflight: bool = False
    crash: bool = False
    scaling: bool = False

    @property
    def needs_kafka(self) -> bool:
        """Whether any measurement needs the broker."""
        return (
            self.raw_pipe
            or self.faust_pipe
            or bool(self.closed)
            or bool(self.open)
            or self.cost
            or self.inflight
            or self.crash
            or self.scaling
        )

    @property
    def closed_phase(self) -> bool:
        """Whether the closed-loop phase runs (B1, B2, P1, T1, T2, T4)."""
        return self.raw_pipe or self.faust_pipe or self.peer or bool(self.closed)


def plan(selected: frozenset[str]) -> Plan:
    """Which subjects to run for these figures."""
    closed = set()
    if "T1" in selected:
        closed.add("at_least_once")
    if selected & {"T2", "T4"}:
        closed.update(GUARANTEES)
    if "P1" in selected:
        closed.add("exactly_once")  # P1 is reported beside baton's T4
    latency = bool(selected & {"T3", "T12"})
    orchestration = GUARANTEES if "T6" in selected else ()
    long_run = GUARANTEES if "T10" in selected else ()
    opened = set(orchestration) | set(long_run) | (set(GUARANTEES) if latency else set())
    return Plan(
        codec="T7" in selected,
        raw_pipe=bool(selected & {"B1", "T1", "B2"}),
        closed=tuple(g for g in GUARANTEES if g in closed),
        open=tuple(g for g in GUARANTEES if g in opened),
        cost="T9" in selected,
        faust_pipe="B2" in selected,
        peer="P1" in selected,
        latency=latency,
        orchestration=orchestration,
        long_run=long_run,
        inflight="T5" in selected,
        crash="T8" in selected,
        scaling="T11" in selected,
    )
