"""The suite's figures: what was submitted, what came back, what each fault cost.

Recovery after a fault, two ways:

- ``gap_s``: the last result anyone saw before the fault began to the first after it (the
  figure downstream notices: did results stop?);
- ``stall_s``: within the fault's window (its start to 30 s after its end, or the next
  fault), the longest time one partition went without a result while a run on it was
  waiting for nothing but the workers (approval runs, which wait for the reviewer, are left
  out). That is how long the runs of the partition the fault hit waited.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.integration.chaos._faults import Fault
from tests.integration.chaos._live import Seen
from tests.integration.chaos._workload import Outcome, ToolLedger, kind_of
from topics import RunResult, partition_for

__all__ = ["Figures", "figures", "table"]

_AFTER_FAULT_S = 30.0


@dataclass(frozen=True)
class Submitted:
    """A run the suite submitted."""

    run_id: str
    n: int
    at: float


@dataclass
class Figures:
    """Everything the report says, as JSON-ready values (``as_json``)."""

    values: dict[str, Any]

    def as_json(self) -> str:
        """The figures as indented JSON."""
        return json.dumps(self.values, indent=2, sort_keys=False)


def figures(
    *,
    guarantee: str,
    partitions: int,
    submitted: Sequence[Submitted],
    seen: Sequence[Seen],
    committed: Sequence[RunResult],
    expected: dict[str, Outcome],
    faults: Sequence[Fault],
    ledger: ToolLedger,
    started_at: float,
    ended_at: float,
) -> Figures:
    """Compute the report.

    Args:
        guarantee: The workers' processing guarantee.
        partitions: Partitions of the run-keyed topics.
        submitted: Every run submitted, with when.
        seen: Results as the live reader saw them (time of sight).
        committed: Every committed result on the topic at the end (read once, from the
            beginning, ``read_committed``).
        expected: The fault-free outcome of each run.
        faults: The faults injected.
        ledger: The tool server's books.
        started_at: When the first task was submitted.
        ended_at: When the last result was seen.
    """
    ids = {s.run_id for s in submitted}
    counts = Counter(r.run_id for r in committed if r.run_id in ids)
    differing = sorted(
        {r.run_id for r in committed if r.run_id in ids and Outcome.of(r) != expected[r.run_id]}
    )
    first_differing = set(differing[:5])
    statuses = Counter(r.status.value for r in _first_each(committed) if r.run_id in ids)
    first_seen = {s.result.run_id: s.at for s in seen}
    latencies = sorted(first_seen[s.run_id] - s.at for s in submitted if s.run_id in first_seen)
    faults_out = []
    for i, fault in enumerate(faults):
        following = faults[i + 1].started_at if i + 1 < len(faults) else float("inf")
        window_end = min(fault.ended_at + _AFTER_FAULT_S, following)
        faults_out.append(
            {
                "kind": fault.kind,
                "target": fault.target,
                "started": _iso(fault.started_at),
                "ended": _iso(fault.ended_at),
                "at_s": round(fault.started_at - started_at, 1),
                "took_s": round(fault.ended_at - fault.started_at, 2),
                "gap_s": _gap(seen, fault.started_at),
                "stall_s": _stall(submitted, seen, partitions, fault.started_at, window_end),
                "in_flight_at_start": sum(
                    1
                    for s in submitted
                    if s.at < fault.started_at and first_seen.get(s.run_id, 1e18) > fault.started_at
                ),
                **fault.details,
            }
        )
    values: dict[str, Any] = {
        "guarantee": guarantee,
        "runs_submitted": len(submitted),
        "runs_with_result": len(counts),
        "results_by_status": dict(sorted(statuses.items())),
        "runs_lost": len(ids - counts.keys()),
        "lost": sorted(ids - counts.keys())[:20],
        "committed_results": sum(counts.values()),
        "duplicate_committed_results": sum(n - 1 for n in counts.values()),
        "runs_with_duplicates": sum(1 for n in counts.values() if n > 1),
        "runs_differing_from_fault_free": len(differing),
        "differing": differing[:20],
        # What the first few differing results carried, beside what they should have.
        "differing_results": [
            {
                "run_id": r.run_id,
                "status": r.status.value,
                "reason": r.reason,
                "output": r.output,
                "expected": {
                    "status": expected[r.run_id].status.value,
                    "reason": expected[r.run_id].reason,
                    "output": expected[r.run_id].output,
                },
            }
            for r in committed
            if r.run_id in first_differing and Outcome.of(r) != expected[r.run_id]
        ],
        "tool_requests_per_key_max": max(ledger.requests_per_key.values(), default=0),
        "tool_effects_per_key_max": max(ledger.effects_per_key.values(), default=0),
        "tool_effects_per_call_max": max(ledger.effects_per_call.values(), default=0),
        "tool_calls_with_an_effect": len(ledger.effects_per_call),
        "tool_requests_without_key": ledger.unkeyed,
        "tool_requests_repeated": sum(n - 1 for n in ledger.requests_per_key.values()),
        "result_latency_s": {
            "p50": _quantile(latencies, 0.5),
            "p99": _quantile(latencies, 0.99),
            "max": round(latencies[-1], 2) if latencies else None,
        },
        "duration_s": round(ended_at - started_at, 1),
        "faults_injected": len(faults),
        "faults_by_kind": dict(Counter(f.kind for f in faults)),
        "faults": faults_out,
    }
    return Figures(values)


def table(figures: Figures) -> str:
    """The report as plain-text tables: the totals, then one line per fault."""
    v = figures.values
    totals = [
        ("guarantee", v["guarantee"]),
        ("runs submitted", v["runs_submitted"]),
        ("runs with a result", v["runs_with_result"]),
        ("  by status", ", ".join(f"{k} {n}" for k, n in v["results_by_status"].items())),
        ("runs lost (no result)", v["runs_lost"]),
        ("duplicate committed results", v["duplicate_committed_results"]),
        ("runs differing from the fault-free result", v["runs_differing_from_fault_free"]),
        ("tool requests per key (max)", v["tool_requests_per_key_max"]),
        ("tool effects per key (max)", v["tool_effects_per_key_max"]),
        ("tool effects per call (max)", v["tool_effects_per_call_max"]),
        (
            "result latency p50 / p99 / max (s)",
            " / ".join(str(v["result_latency_s"][q]) for q in ("p50", "p99", "max")),
        ),
        ("duration (s)", v["duration_s"]),
        ("faults injected", v["faults_injected"]),
    ]
    width = max(len(k) for k, _ in totals)
    lines = [f"| {k.ljust(width)} | {val} |" for k, val in totals]
    lines += [
        "",
        "| # | fault | target | at (s) | took (s) | in flight | gap (s) | stall (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, f in enumerate(v["faults"], 1):
        lines.append(
            f"| {i} | {f['kind']} | {f['target']} | {f['at_s']} | {f['took_s']} | "
            f"{f['in_flight_at_start']} | {f['gap_s']} | {f['stall_s']} |"
        )
    return "\n".join(lines)


def _first_each(results: Sequence[RunResult]) -> list[RunResult]:
    first: dict[str, RunResult] = {}
    for result in results:
        first.setdefault(result.run_id, result)
    return list(first.values())


def _gap(seen: Sequence[Seen], at: float) -> float | None:
    before = [s.at for s in seen if s.at < at]
    after = [s.at for s in seen if s.at >= at]
    if not before or not after:
        return None
    return round(min(after) - max(before), 2)


def _stall(
    submitted: Sequence[Submitted],
    seen: Sequence[Seen],
    partitions: int,
    start: float,
    end: float,
) -> float | None:
    first_seen: dict[str, float] = {}
    times: dict[int, list[float]] = {p: [] for p in range(partitions)}
    for s in seen:
        first_seen.setdefault(s.result.run_id, s.at)
        times[s.partition].append(s.at)
    waiting: dict[int, list[tuple[float, float]]] = {p: [] for p in range(partitions)}
    for run in submitted:
        if kind_of(run.n) != "approval":
            done = first_seen.get(run.run_id, float("inf"))
            waiting[partition_for(run.run_id, partitions)].append((run.at, done))
    worst = 0.0
    for p in range(partitions):
        marks = sorted(times[p])
        for a, b in zip([float("-inf"), *marks], [*marks, float("inf")], strict=True):
            lo, hi = max(a, start), min(b, end)
            if hi <= lo:
                continue
            # Silent from lo to hi; a stall if a run was waiting all through it.
            if any(sub <= lo and done >= hi for sub, done in waiting[p]):
                worst = max(worst, hi - lo)
    return round(worst, 2)


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
