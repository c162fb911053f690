"""Which measurements a selection of figures needs. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from bench._figures import NOT_MEASURED

__all__ = ["GUARANTEES", "MEASURED", "Plan", "parse_only", "plan"]

#: The figures this suite measures.
MEASURED = ("B1", "T1", "T2", "T3", "T4", "T7", "T9")

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


@dataclass(frozen=True)
class Plan:
    """The subjects a selection of figures needs.

    Attributes:
        codec: The codec micro-benchmark (T7).
        raw_pipe: The raw pipe, closed loop (B1, T1).
        closed: Guarantees to run a closed-loop baton worker for (T1, T2, T4).
        open: Guarantees to run an open-loop baton worker for (T3).
        cost: The labelled mixed workload, always-strong against routed + cached (T9).
    """

    codec: bool
    raw_pipe: bool
    closed: tuple[str, ...]
    open: tuple[str, ...]
    cost: bool = False

    @property
    def needs_kafka(self) -> bool:
        """Whether any measurement needs the broker."""
        return self.raw_pipe or bool(self.closed) or bool(self.open) or self.cost


def plan(selected: frozenset[str]) -> Plan:
    """Which subjects to run for these figures."""
    closed = set()
    if "T1" in selected:
        closed.add("at_least_once")
    if selected & {"T2", "T4"}:
        closed.update(GUARANTEES)
    return Plan(
        codec="T7" in selected,
        raw_pipe=bool(selected & {"B1", "T1"}),
        closed=tuple(g for g in GUARANTEES if g in closed),
        open=GUARANTEES if "T3" in selected else (),
        cost="T9" in selected,
    )
