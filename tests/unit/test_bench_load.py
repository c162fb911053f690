"""T5, T6, T8, T10, T11, T12 and the plan: figures from synthetic measurements. No broker."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from bench._crash import CrashPlan, count_by_key, crash_outcome, first_appended_after
from bench._figures import all_figures
from bench._inflight import Arrival, level_outcome
from bench._kafka import Stamped
from bench._latency import RequestStamp, ResultStamp, RunStamp
from bench._load_figures import highest_kept, t5, t6, t8, t10, t11, t12
from bench._overhead import edge_medians, long_run_repetition, t6_measurement
from bench._plan import GUARANTEES, MEASURED, parse_levels, plan
from bench._readback import Readback
from bench._report import (
    CpuShare,
    CrashOutcome,
    InflightLevel,
    InflightSettings,
    Measurement,
    Repetition,
)
from bench._scaling import group_settled
from bench._stats import spread
from topics import RunResult, RunStatus, StepOutcome, StepSummary

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def _rep(runs: int = 10, completed: int | None = None, runs_per_s: float = 5.0) -> Repetition:
    done = runs if completed is None else completed
    return Repetition(
        elapsed_s=2.0,
        runs=runs,
        completed_runs=done,
        events=done * 11,
        runs_per_s=runs_per_s,
        events_per_s=runs_per_s * 11,
        cpu_percent={"w": 50.0},
    )


# -- the plan ---------------------------------------------------------------------------------


def test_every_new_figure_can_be_chosen_alone() -> None:
    assert {"B2", "P1", "T5", "T6", "T8", "T10", "T11", "T12"} <= set(MEASURED)
    assert plan(frozenset({"T5"})).inflight and not plan(frozenset({"T5"})).open
    assert plan(frozenset({"T8"})).crash and plan(frozenset({"T8"})).needs_kafka
    assert plan(frozenset({"T11"})).scaling and not plan(frozenset({"T11"})).closed


def test_b2_brings_b1_for_its_ratio_and_p1_brings_baton_for_its() -> None:
    b2 = plan(frozenset({"B2"}))
    assert (b2.faust_pipe, b2.raw_pipe, b2.closed, b2.peer) == (True, True, (), False)
    p1 = plan(frozenset({"P1"}))
    assert (p1.peer, p1.closed, p1.raw_pipe, p1.closed_phase) == (
        True,
        ("exactly_once",),
        False,
        True,
    )


def test_the_open_loop_workers_serve_t3_t6_t10_and_t12() -> None:
    t6 = plan(frozenset({"T6"}))
    assert (t6.open, t6.orchestration, t6.latency, t6.long_run) == (
        GUARANTEES,
        GUARANTEES,
        False,
        (),
    )
    t10 = plan(frozenset({"T10"}))
    assert (t10.open, t10.long_run, t10.latency) == (GUARANTEES, GUARANTEES, False)
    t12 = plan(frozenset({"T12"}))  # T12 is read from T3's open-loop runs
    assert (t12.open, t12.latency) == (GUARANTEES, True)
    assert plan(frozenset({"T7"})).open == ()


def test_parse_levels() -> None:
    assert parse_levels(None) is None and parse_levels("") is None
    assert parse_levels("25, 50,100") == (25, 50, 100)
    for bad in ("50,25", "0,10", "10,10", "a,b"):
        with pytest.raises(ValueError):
            parse_levels(bad)


# -- T5 -----------------------------------------------------------------------------------------


def _run_result(run_id: str, steps_ms: list[float | None], status: RunStatus) -> RunResult:
    return RunResult(
        run_id=run_id,
        workflow="w",
        status=status,
        steps=[
            StepSummary(step=f"s{i}", kind="llm", outcome=StepOutcome.succeeded, duration_ms=ms)
            for i, ms in enumerate(steps_ms)
        ],
        started_at=T0,
        finished_at=T0,
    )


def test_a_level_compares_its_rate_with_in_flight_over_the_zero_cost_run_time() -> None:
    # 10 runs in flight, each 2 s of steps: the ideal is 5 runs/s. 9 complete in 2 s: 4.5/s.
    arrivals = [
        Arrival(_run_result(f"r{i}", [1500.0, 500.0], RunStatus.completed), 100.0, 101.0 + i / 5)
        for i in range(9)
    ]
    arrivals.append(Arrival(_run_result("late", [100.0], RunStatus.completed), 100.0, 200.0))
    arrivals.append(Arrival(_run_result("bad", [1.0], RunStatus.failed), 100.0, 101.5))
    level = level_outcome(
        10, arrivals, (101.0, 103.0), 4.0, [110e6, 120e6, 130e6], 100e6, 0.9, {"w": 80.0}
    )
    assert (level.completed, level.rate_per_s) == (9, pytest.approx(4.5))
    assert level.mean_steps_ms == pytest.approx(2000)
    assert level.ideal_rate_per_s == pytest.approx(5.0)
    assert level.fraction == pytest.approx(0.9) and level.keeps_ideal
    assert level.rss_per_run_kib == pytest.approx(20e6 / 10 / 1024)
    assert level.unfinished == {"failed": 1}
    assert level.mean_run_ms == pytest.approx(sum(1000 + i * 200 for i in range(9)) / 9)


def _level(in_flight: int, fraction: float, rss_per_run: float = 10.0) -> InflightLevel:
    return InflightLevel(
        in_flight=in_flight,
        settle_s=8,
        window_s=15,
        completed=100,
        rate_per_s=fraction * in_flight / 1.8,
        mean_steps_ms=1800,
        mean_run_ms=2000,
        ideal_rate_per_s=in_flight / 1.8,
        fraction=fraction,
        keeps_ideal=fraction >= 0.9,
        rss_bytes=200e6,
        rss_per_run_kib=rss_per_run,
    )


def _inflight(levels: list[InflightLevel]) -> Measurement:
    return Measurement(
        key="inflight/exactly_once",
        kind="inflight",
        subject="baton",
        guarantee="exactly_once",
        process_role="w",
        repetitions=[_rep(100) for _ in levels],
        inflight=levels,
        inflight_settings=InflightSettings(
            levels=[50, 100, 250],
            threshold=0.9,
            settle_s=8,
            window_s=15,
            workflow="bench-linear5-tail",
            route="tail800",
            latency_median_ms=800,
            latency_sigma=0.5,
            model_mean_step_ms=906,
            processor_concurrency=4000,
            rss_baseline_bytes=100e6,
            stopped="stopped after 250",
        ),
    )


def test_t5_is_the_highest_level_kept_and_its_memory_per_run() -> None:
    levels = [_level(50, 0.97, 30.0), _level(100, 0.93, 20.0), _level(250, 0.6, 12.0)]
    assert highest_kept(levels) == levels[1]
    count, memory = t5(_inflight(levels))
    assert (count.value is not None, memory.value is not None) == (True, True)
    assert count.value is not None and count.value.median == 100
    assert count.verdict == "misses"  # the target is 2,000 in flight
    assert memory.value is not None and memory.value.median == 20.0
    assert memory.verdict == "meets"  # <= 50 KiB
    assert [a.label.split(",")[0] for a in count.absolute[:3]] == [
        "50 in flight",
        "100 in flight",
        "250 in flight",
    ]


def test_t5_with_no_level_kept_says_so_and_shows_the_lowest_levels_memory() -> None:
    count, memory = t5(_inflight([_level(50, 0.6, 70.0)]))
    assert count.value is not None and count.value.median == 0
    assert count.note is not None and "no level kept 90%" in count.note
    assert memory.value is not None and memory.value.median == 70.0
    assert memory.note is not None and "none kept" in memory.note
    assert [f.status for f in t5(None)] == ["failed", "failed"]


# -- T6 -----------------------------------------------------------------------------------------


def test_t6_is_the_p50_share_of_orchestration_over_step_time_in_percent() -> None:
    def result(run: str, step: str, start_ms: float) -> ResultStamp:
        started = T0 + timedelta(milliseconds=start_ms)
        return ResultStamp(run, step, 1, 0, started, started + timedelta(milliseconds=500))

    order = ["a", "b"]
    # Three runs with 1,000 ms of steps; walls of 1,010, 1,050 and 1,200 ms: 1%, 5%, 20%.
    results, runs = [], []
    for run, wall in (("r1", 1010), ("r2", 1050), ("r3", 1200)):
        results += [result(run, "a", 0), result(run, "b", 600)]
        runs.append(RunStamp(run, task_appended_ms=0, result_appended_ms=wall))
    back = Readback(results=results, runs=runs, run_ids=frozenset({"r1", "r2", "r3"}))
    measurement = t6_measurement(
        "t6/exactly_once", "exactly_once", "w", "p", order, [(["r1", "r2", "r3"], _rep(3))], back, 5
    )
    figure = t6(measurement, "exactly_once")
    assert figure.variant == "exactly_once p50" and figure.unit == "%"
    assert figure.value is not None and figure.value.median == pytest.approx(5.0)
    assert figure.verdict == "misses"
    labels = [a.label for a in figure.absolute]
    assert labels[:3] == [
        "orchestration share p99",
        "orchestration time p50",
        "orchestration time p99",
    ]
    assert t6(None, "at_least_once").status == "failed"


# -- T8 -----------------------------------------------------------------------------------------


def _stamped(key: str, at_ms: int) -> Stamped:
    return Stamped(at_ms, 1, 0, key.encode(), b"v")


def test_crash_outcome_counts_lost_and_duplicated_results() -> None:
    keys = {b"r1", b"r2", b"r3"}
    records = [_stamped("r1", 5), _stamped("r2", 6), _stamped("r2", 7), _stamped("x", 1)]
    per_run = count_by_key(records, keys)
    assert per_run == Counter({b"r1": 1, b"r2": 2})
    assert first_appended_after(records, keys, 6) == 6
    assert first_appended_after(records, keys, 8) is None
    outcome = crash_outcome(
        runs=3,
        guarantee="exactly_once",
        held_at_kill=3,
        submit_to_held_s=1.0,
        ready_s=4.0,
        resume_s=5.0,
        first_step_result_s=4.5,
        first_result_s=6.0,
        all_results_s=None,
        per_run=per_run,
        results={},
    )
    assert (outcome.results, outcome.lost, outcome.duplicates, outcome.result_records) == (
        2,
        1,
        1,
        3,
    )
    assert CrashPlan(runs=100).result_wait_s == 120 and CrashPlan(runs=10_000).result_wait_s == 1000


def _crash(outcome: CrashOutcome) -> Measurement:
    return Measurement(
        key="crash/exactly_once",
        kind="crash",
        subject="baton",
        guarantee="exactly_once",
        process_role="worker T8",
        repetitions=[_rep(outcome.runs)],
        cpu=[CpuShare(role="worker T8", percent=spread([90.0]))],
        crash=outcome,
    )


def _outcome(**change: object) -> CrashOutcome:
    base = CrashOutcome(
        runs=300,
        guarantee="exactly_once",
        held_at_kill=300,
        held_by="draft",
        submit_to_held_s=2.0,
        ready_s=8.2,
        resume_s=7.9,
        first_step_result_s=7.8,
        first_result_s=16.0,
        all_results_s=18.5,
        results=300,
        lost=0,
        duplicates=0,
        result_records=300,
    )
    return base.model_copy(update=change)


def test_t8_rows_resume_lost_and_duplicates() -> None:
    resume, lost, duplicates = t8(_crash(_outcome()))
    assert [f.variant for f in (resume, lost, duplicates)] == [
        "resume",
        "lost runs",
        "duplicate results",
    ]
    assert resume.value is not None and resume.value.median == 7.9 and resume.verdict == "meets"
    assert "restart -> /healthz ready" in [a.label for a in resume.absolute]
    assert (lost.verdict, duplicates.verdict) == ("meets", "meets")
    resume, lost, duplicates = t8(_crash(_outcome(resume_s=None, lost=4, duplicates=1)))
    assert resume.status == "failed" and resume.note is not None and "N = 300" in resume.note
    assert (lost.verdict, duplicates.verdict) == ("misses", "misses")
    assert [f.status for f in t8(None)] == ["failed"] * 3


# -- T10 ----------------------------------------------------------------------------------------


def test_edge_medians_skip_missing_values() -> None:
    values: list[float | None] = [2.0, None, 4.0, 3.0, 9.0, 8.0, None, 10.0]
    assert edge_medians(values, 3) == (3.0, 9.0, 3.0)
    assert edge_medians([None, None], 1) == (None, None, None)
    assert edge_medians([0.0, 5.0], 1) == (0.0, 5.0, None)  # no ratio over zero


def test_t10_compares_the_last_transitions_with_the_first() -> None:
    order = [f"s{i}" for i in range(1, 31)]
    requests, results = [], []
    t = 0
    for index, step in enumerate(order):
        requests.append(RequestStamp("r", step, 1, t))
        started = T0 + timedelta(milliseconds=t)
        results.append(ResultStamp("r", step, 1, t + 1, started, started))
        t += 1 + (2 if index < 15 else 3)  # the overhead into later steps grows from 2 to 3 ms
    back = Readback(requests=requests, results=results, run_ids=frozenset({"r"}))
    run = long_run_repetition(order, "r", back, _rep(1), window=10)
    assert len(run.overhead_ms) == 29
    assert (run.first_ms, run.last_ms, run.ratio) == (2.0, 3.0, 1.5)
    measurement = Measurement(
        key="t10/exactly_once",
        kind="long_run",
        subject="baton",
        repetitions=[_rep(1)],
        long_runs=[run, run.model_copy(update={"ratio": 1.1})],
    )
    figure = t10(measurement, "exactly_once")
    assert figure.value is not None and figure.value.median == pytest.approx(1.3)
    assert figure.verdict == "misses"
    assert t10(None, "exactly_once").status == "failed"


# -- T11 ----------------------------------------------------------------------------------------


def _scale(workers: int, runs_per_s: list[float]) -> Measurement:
    return Measurement(
        key=f"scale/{workers}",
        kind="closed_loop",
        subject="baton",
        repetitions=[_rep(100, runs_per_s=r) for r in runs_per_s],
        runs_per_s=spread(runs_per_s),
        cpu=[CpuShare(role=f"worker T11 #{i + 1}", percent=spread([60.0])) for i in range(workers)],
        workers=workers,
    )


def test_t11_gives_each_group_size_and_the_ratios_to_one_worker() -> None:
    scale = {
        f"scale/{n}": _scale(n, rates) for n, rates in ((1, [50, 60]), (2, [90, 100]), (3, [99]))
    }
    rows = t11(scale)
    assert [r.variant for r in rows] == [
        "1 worker",
        "2 workers",
        "3 workers",
        "2 / 1 workers",
        "3 / 1 workers",
    ]
    two = rows[3]
    assert two.value is not None and two.value.median == pytest.approx(95 / 55)
    assert two.verdict == "meets"  # >= 1.6
    assert rows[4].verdict == "no_target"
    assert [a.label for a in rows[1].absolute] == ["worker T11 #1 CPU", "worker T11 #2 CPU"]
    missing = t11({"scale/1": _scale(1, [50])})
    assert [r.status for r in missing] == ["measured", "failed", "failed", "failed", "failed"]


def test_a_group_is_settled_when_its_partitions_are_spread_once_over_every_worker() -> None:
    steps = {"p.steps.llm", "p.steps.transform"}

    def answer(partitions: list[int], topics: list[str]) -> dict[str, object]:
        return {"partitions": partitions, "processing": topics}

    assert group_settled(
        [answer([0, 1], ["p.steps.llm"]), answer([2, 3], ["p.steps.transform"])], 4, steps
    )
    assert not group_settled([answer([0, 1], list(steps)), None], 4, steps)
    assert not group_settled([answer([0, 1, 2, 3], list(steps)), answer([], [])], 4, steps)
    assert not group_settled([answer([0, 1], list(steps)), answer([1, 2, 3], [])], 4, steps)
    assert not group_settled([answer([0, 1, 2, 3], ["p.steps.llm"])], 4, steps)


# -- T12 ----------------------------------------------------------------------------------------


def test_t12_reports_records_and_kib_per_run_with_the_topics_beside_them() -> None:
    measurement = Measurement(
        key="open/exactly_once",
        kind="open_loop",
        subject="baton",
        repetitions=[_rep(10)],
        records_per_run={"tasks": 1.0, "run state": 6.0, "total": 7.0},
        bytes_per_run={"tasks": 1024.0, "run state": 9216.0, "total": 10240.0},
    )
    records, kib = t12(measurement, "exactly_once")
    assert records.value is not None and records.value.median == 7.0
    assert records.verdict == "meets"
    assert kib.value is not None and kib.value.median == 10.0 and kib.verdict == "meets"
    assert [a.label for a in kib.absolute] == ["tasks", "run state"]
    assert [f.status for f in t12(None, "exactly_once")] == ["failed", "failed"]


def test_all_figures_lists_the_new_rows_in_order() -> None:
    ids = [f.id for f in all_figures({}, frozenset(MEASURED))]
    first = {i: ids.index(i) for i in set(ids)}
    assert sorted(first, key=first.__getitem__) == [
        "B0",
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
        "T13",
    ]
