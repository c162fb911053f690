"""Latencies of runs, from the timestamps baton and the broker record.

Pure: it takes what was read back from the topics (already decoded to small tuples) and
returns the samples, so the arithmetic is unit-tested without Kafka.

The names, each in milliseconds:

- ``step_overhead`` (T3): for consecutive steps *a* -> *b* of one run, the broker append
  time of *b*'s request minus the broker append time of *a*'s result. It covers: the result
  fetched by the coordinator, ``decide``, the request sent and acknowledged. Broker clock,
  millisecond resolution (each difference is within +-1 ms of the truth).
- ``step_gap``: *b*'s ``started_at`` minus *a*'s ``finished_at``, both stamped by the
  processor (microseconds): everything between two steps as the work sees it, including the
  transaction commit (exactly-once) and the processor fetching the request.
- ``dispatch``: the first request's append time minus the task's.
- ``completion``: the run result's append time minus the last step result's.
- ``run``: ``run_completed`` minus ``run_started``, from the run events (coordinator clock).

For T6, ``orchestration_shares``: per run, (wall time - the sum of its steps' times) / that
sum, the wall time from the task's append to the result's (broker clock), each step's time
its processor's ``finished_at - started_at``. For T10, ``transitions``: the overhead and the
gap into each step of one long linear run, by position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "OrchestrationShares",
    "RequestStamp",
    "ResultStamp",
    "RunLatencies",
    "RunStamp",
    "Transitions",
    "orchestration_shares",
    "run_latencies",
    "transitions",
]


@dataclass(frozen=True, slots=True)
class RequestStamp:
    """A step request as read back: which step, which attempt, when it was appended."""

    run_id: str
    step: str
    attempt: int
    appended_ms: int


@dataclass(frozen=True, slots=True)
class ResultStamp:
    """A step result as read back."""

    run_id: str
    step: str
    attempt: int
    appended_ms: int
    started_at: datetime
    finished_at: datetime


@dataclass(frozen=True, slots=True)
class RunStamp:
    """A run's ends: task and result append times, and its run events' times."""

    run_id: str
    task_appended_ms: int | None = None
    result_appended_ms: int | None = None
    run_started_at: datetime | None = None
    run_completed_at: datetime | None = None


@dataclass
class RunLatencies:
    """Samples per latency name (ms), and what could not be measured."""

    step_overhead: list[float] = field(default_factory=list)
    step_gap: list[float] = field(default_factory=list)
    dispatch: list[float] = field(default_factory=list)
    completion: list[float] = field(default_factory=list)
    run: list[float] = field(default_factory=list)
    runs: int = 0
    incomplete_runs: int = 0
    retried_steps: int = 0

    def by_name(self) -> dict[str, list[float]]:
        """Every latency by name."""
        return {
            "step_overhead": self.step_overhead,
            "step_gap": self.step_gap,
            "dispatch": self.dispatch,
            "completion": self.completion,
            "run": self.run,
        }


def run_latencies(
    order: Sequence[str],
    run_ids: Iterable[str],
    requests: Iterable[RequestStamp],
    results: Iterable[ResultStamp],
    runs: Iterable[RunStamp],
) -> RunLatencies:
    """The latencies of the given runs of a linear workflow whose steps run in ``order``.

    Only first attempts are used; a run missing a record is counted incomplete, its other
    transitions still measured. Steps dispatched more than once are counted in
    ``retried_steps`` (with a zero-latency model there should be none).
    """
    wanted = set(run_ids)
    first_request: dict[tuple[str, str], int] = {}
    first_result: dict[tuple[str, str], ResultStamp] = {}
    for request in requests:
        if request.run_id not in wanted:
            continue
        if request.attempt == 1:
            first_request[(request.run_id, request.step)] = request.appended_ms
    out = RunLatencies(runs=len(wanted))
    for result in results:
        if result.run_id not in wanted:
            continue
        if result.attempt == 1:
            first_result.setdefault((result.run_id, result.step), result)
        else:
            out.retried_steps += 1
    ends = {r.run_id: r for r in runs if r.run_id in wanted}
    for run_id in sorted(wanted):
        complete = True
        for before, after in zip(order, order[1:], strict=False):
            done = first_result.get((run_id, before))
            asked = first_request.get((run_id, after))
            started = first_result.get((run_id, after))
            if done is None or asked is None or started is None:
                complete = False
            if done is not None and asked is not None:
                out.step_overhead.append(float(asked - done.appended_ms))
            if done is not None and started is not None:
                gap = started.started_at - done.finished_at
                out.step_gap.append(gap.total_seconds() * 1000)
        stamp = ends.get(run_id)
        first = first_request.get((run_id, order[0]))
        last = first_result.get((run_id, order[-1]))
        if stamp is None or first is None or last is None:
            complete = False
        if stamp is not None:
            if stamp.task_appended_ms is not None and first is not None:
                out.dispatch.append(float(first - stamp.task_appended_ms))
            if stamp.result_appended_ms is not None and last is not None:
                out.completion.append(float(stamp.result_appended_ms - last.appended_ms))
            if stamp.run_started_at is not None and stamp.run_completed_at is not None:
                span = stamp.run_completed_at - stamp.run_started_at
                out.run.append(span.total_seconds() * 1000)
            else:
                complete = False
        if not complete:
            out.incomplete_runs += 1
    return out


@dataclass
class OrchestrationShares:
    """T6's samples: per complete run, orchestration time over step time (a fraction)."""

    shares: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    steps_ms: list[float] = field(default_factory=list)
    incomplete_runs: int = 0


def orchestration_shares(
    order: Sequence[str],
    run_ids: Iterable[str],
    results: Iterable[ResultStamp],
    runs: Iterable[RunStamp],
) -> OrchestrationShares:
    """(run wall time - sum of step times) / sum of step times, per run.

    The wall time runs from the task's append to the run result's append (broker clock,
    1 ms); a step's time is its first attempt's ``finished_at - started_at`` (processor
    clock). A run missing its task, its result or a step's first result is counted
    incomplete and left out.
    """
    wanted = set(run_ids)
    spans: dict[tuple[str, str], float] = {}
    for result in results:
        if result.run_id in wanted and result.attempt == 1:
            key = (result.run_id, result.step)
            if key not in spans:
                spans[key] = (result.finished_at - result.started_at).total_seconds() * 1000
    out = OrchestrationShares()
    ends = {r.run_id: r for r in runs if r.run_id in wanted}
    for run_id in sorted(wanted):
        stamp = ends.get(run_id)
        steps = [spans.get((run_id, step)) for step in order]
        if (
            stamp is None
            or stamp.task_appended_ms is None
            or stamp.result_appended_ms is None
            or any(s is None for s in steps)
        ):
            out.incomplete_runs += 1
            continue
        total = sum(s for s in steps if s is not None)
        wall = float(stamp.result_appended_ms - stamp.task_appended_ms)
        if total <= 0:
            out.incomplete_runs += 1
            continue
        out.wall_ms.append(wall)
        out.steps_ms.append(total)
        out.shares.append((wall - total) / total)
    return out


@dataclass
class Transitions:
    """The transitions into each step of one linear run, by position (``None``: missing).

    ``overhead_ms[i]`` is step ``i + 1``'s request appended minus step ``i``'s result
    appended (broker clock, 1 ms); ``gap_ms[i]`` is step ``i + 1``'s ``started_at`` minus
    step ``i``'s ``finished_at`` (processor clock, 1 µs).
    """

    overhead_ms: list[float | None]
    gap_ms: list[float | None]


def transitions(
    order: Sequence[str],
    run_id: str,
    requests: Iterable[RequestStamp],
    results: Iterable[ResultStamp],
) -> Transitions:
    """The transitions of one run of a linear workflow, first attempts only."""
    asked: dict[str, int] = {}
    done: dict[str, ResultStamp] = {}
    for request in requests:
        if request.run_id == run_id and request.attempt == 1:
            asked.setdefault(request.step, request.appended_ms)
    for result in results:
        if result.run_id == run_id and result.attempt == 1:
            done.setdefault(result.step, result)
    overhead: list[float | None] = []
    gap: list[float | None] = []
    for before, after in zip(order, order[1:], strict=False):
        finished = done.get(before)
        requested = asked.get(after)
        started = done.get(after)
        overhead.append(
            float(requested - finished.appended_ms)
            if finished is not None and requested is not None
            else None
        )
        gap.append(
            (started.started_at - finished.finished_at).total_seconds() * 1000
            if finished is not None and started is not None
            else None
        )
    return Transitions(overhead, gap)
