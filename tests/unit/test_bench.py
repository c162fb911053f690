"""The benchmark suite's pure parts: statistics, the open-loop schedule, latencies from
recorded stamps, figures and verdicts, the report schema. No broker, no subprocess."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench._figures import (
    NOT_MEASURED,
    all_figures,
    busy_machine_notes,
    t1,
    t3,
    t4,
    verdict,
)
from bench._kafka import is_loopback
from bench._latency import RequestStamp, ResultStamp, RunStamp, run_latencies
from bench._plan import MEASURED, parse_only, plan
from bench._rawpipe import PipeTopics, next_topic
from bench._report import (
    OTHER_ROLE,
    SCHEMA_VERSION,
    BrokerInfo,
    CpuShare,
    Latency,
    Machine,
    Measurement,
    OpenLoopSettings,
    Repetition,
    Report,
    Spread,
    SuiteSettings,
    Target,
    WorkloadInfo,
    write_report,
)
from bench._schedule import OpenLoopSchedule, drive, latencies_from_schedule
from bench._stats import (
    DEFAULT_EDGES_MS,
    histogram,
    log_edges,
    percentile,
    percentiles,
    ratio,
    spread,
)
from bench._summary import format_spread
from bench._workload import (
    EVENTS_PER_RUN,
    PAYLOAD_BYTES,
    STEPS,
    models_yaml,
    payload,
    workflow_yaml,
)

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


# -- percentiles, spreads, ratios -----------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, 1.0), (25, 1.75), (50, 2.5), (75, 3.25), (100, 4.0), (99, 3.97)],
)
def test_percentile_interpolates_linearly_between_closest_ranks(q: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 0) == percentile([7.0], 99.9) == 7.0


def test_percentile_refuses_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 101)


def test_percentiles_of_1_to_1000() -> None:
    values = [float(v) for v in range(1, 1001)]
    p = percentiles(values)
    assert (p.count, p.min, p.max) == (1000, 1.0, 1000.0)
    assert p.p50 == pytest.approx(500.5)
    assert p.p90 == pytest.approx(900.1)
    assert p.p99 == pytest.approx(990.01)
    assert p.p999 == pytest.approx(999.001)
    assert p.mean == pytest.approx(500.5)


def test_spread_is_median_min_max_of_the_repetitions() -> None:
    s = spread([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.max, s.samples) == (2.0, 1.0, 3.0, [3.0, 1.0, 2.0])
    assert spread([1.0, 2.0]).median == 1.5


def test_ratio_divides_medians_and_spans_the_widest_range() -> None:
    baton = spread([400.0, 500.0, 600.0])
    raw = spread([900.0, 1000.0, 1200.0])
    r = ratio(baton, raw)
    assert r.median == pytest.approx(0.5)
    assert r.min == pytest.approx(400 / 1200)
    assert r.max == pytest.approx(600 / 900)
    with pytest.raises(ValueError, match="non-positive"):
        ratio(baton, spread([0.0, 1.0]))


# -- histograms ------------------------------------------------------------------------------


def test_log_edges_are_even_on_a_log_scale() -> None:
    assert log_edges(1, 100, 2) == pytest.approx([1, 3.16228, 10, 31.6228, 100])
    assert DEFAULT_EDGES_MS[0] == 0.1
    assert DEFAULT_EDGES_MS[-1] == pytest.approx(100_000)
    assert len(DEFAULT_EDGES_MS) == 61
    with pytest.raises(ValueError):
        log_edges(0, 10, 1)


def test_histogram_buckets_are_closed_left_open_right() -> None:
    h = histogram([0.5, 1.0, 1.5, 2.0, 2.999, 3.0, 7.0], edges=[1.0, 2.0, 3.0])
    assert h.counts == [2, 2]
    assert (h.below, h.above) == (1, 2)
    assert sum(h.counts) + h.below + h.above == 7


def test_histogram_on_default_edges_keeps_every_sample() -> None:
    values = [0.05, 0.1, 0.99, 1.0, 3.3, 250.0, 99_999.0, 200_000.0]
    h = histogram(values)
    assert sum(h.counts) + h.below + h.above == len(values)
    assert (h.below, h.above) == (1, 1)
    first = DEFAULT_EDGES_MS.index(1.0)
    assert h.counts[first] == 1  # 1.0 opens its bucket; 0.99 is in the one before
    assert h.counts[first - 1] == 1


def test_histogram_refuses_bad_edges() -> None:
    with pytest.raises(ValueError):
        histogram([1.0], edges=[1.0])
    with pytest.raises(ValueError):
        histogram([1.0], edges=[2.0, 1.0])


# -- the open-loop schedule ------------------------------------------------------------------


def test_schedule_offsets_and_due_counts() -> None:
    schedule = OpenLoopSchedule(rate_per_s=10.0, count=5)
    assert [schedule.offset(i) for i in range(5)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    assert schedule.duration_s == pytest.approx(0.4)
    assert schedule.due_by(-0.01) == 0
    assert schedule.due_by(0.0) == 1
    assert schedule.due_by(0.0999) == 1
    assert schedule.due_by(0.3) == 4  # 0.3 * 10 is 2.9999999999999996 in floats
    assert schedule.due_by(99.0) == 5
    with pytest.raises(IndexError):
        schedule.offset(5)


def test_schedule_for_a_duration_and_bad_arguments() -> None:
    assert OpenLoopSchedule.for_duration(7.5, 20.0).count == 150
    assert OpenLoopSchedule.for_duration(0.01, 1.0).count == 1
    with pytest.raises(ValueError):
        OpenLoopSchedule(0.0, 1)
    with pytest.raises(ValueError):
        OpenLoopSchedule(1.0, 0)


class FakeClock:
    """Time that moves only when slept through or spent."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_drive_submits_on_schedule_without_waiting_for_anything() -> None:
    clock = FakeClock()
    sent: list[tuple[int, float]] = []
    schedule = OpenLoopSchedule(rate_per_s=4.0, count=8)
    start, lateness = await drive(
        schedule, lambda i: sent.append((i, clock.now)), clock, clock.sleep
    )
    assert start == 100.0
    assert [i for i, _ in sent] == list(range(8))
    assert [t for _, t in sent] == pytest.approx([100 + i / 4 for i in range(8)])
    assert lateness == pytest.approx([0.0] * 8)


async def test_drive_sends_overdue_submissions_at_once_and_records_their_lateness() -> None:
    clock = FakeClock()
    sent: list[tuple[int, float]] = []

    def slow_submit(i: int) -> None:
        sent.append((i, clock.now))
        if i == 2:
            clock.now += 0.55  # the generator stalls once (a GC pause, a busy core)

    schedule = OpenLoopSchedule(rate_per_s=10.0, count=10)
    start, lateness = await drive(schedule, slow_submit, clock, clock.sleep)
    # Nothing is skipped and later submissions keep the original schedule: 3..7 were due
    # during the stall and leave at once, 8 and 9 leave on time again.
    assert [i for i, _ in sent] == list(range(10))
    times = dict(sent)
    assert times[3] == times[7] == pytest.approx(start + 0.75)
    assert times[8] == pytest.approx(start + 0.8)
    assert lateness[3] == pytest.approx(0.45)
    assert lateness[7] == pytest.approx(0.05)
    assert lateness[8] == pytest.approx(0.0)
    assert all(s >= 0 for s in clock.sleeps)


def test_latencies_are_measured_from_the_scheduled_time() -> None:
    schedule = OpenLoopSchedule(rate_per_s=2.0, count=3)
    got = latencies_from_schedule(schedule, 10.0, {0: 10.2, 2: 11.5})
    assert got == pytest.approx({0: 0.2, 2: 0.5})


# -- latencies from recorded stamps ----------------------------------------------------------


def _stamps(
    run_id: str, order: list[str], *, base_ms: int, skip_request: str | None = None
) -> tuple[list[RequestStamp], list[ResultStamp], RunStamp]:
    """A run whose steps each take 1 ms and whose transitions each take 3 ms."""
    requests, results = [], []
    t = base_ms + 2  # task at base_ms, first request 2 ms later
    for step in order:
        if step != skip_request:
            requests.append(RequestStamp(run_id, step, 1, t))
        started = T0 + timedelta(milliseconds=t + 0.25)
        finished = started + timedelta(milliseconds=1)
        results.append(ResultStamp(run_id, step, 1, t + 1, started, finished))
        t += 1 + 3
    run = RunStamp(
        run_id,
        task_appended_ms=base_ms,
        result_appended_ms=t - 3 + 4,
        run_started_at=T0,
        run_completed_at=T0 + timedelta(milliseconds=21.5),
    )
    return requests, results, run


def test_run_latencies_per_transition() -> None:
    order = ["a", "b", "c"]
    r1, s1, run1 = _stamps("r1", order, base_ms=1000)
    r2, s2, run2 = _stamps("r2", order, base_ms=2000)
    found = run_latencies(order, ["r1", "r2"], r1 + r2, s1 + s2, [run1, run2])
    assert found.step_overhead == [3.0, 3.0, 3.0, 3.0]
    assert found.step_gap == pytest.approx([3.0, 3.0, 3.0, 3.0])
    assert found.dispatch == [2.0, 2.0]
    assert found.completion == [4.0, 4.0]
    assert found.run == pytest.approx([21.5, 21.5])
    assert (found.runs, found.incomplete_runs, found.retried_steps) == (2, 0, 0)


def test_run_latencies_ignore_other_runs_and_later_attempts_and_count_gaps() -> None:
    order = ["a", "b"]
    requests, results, run = _stamps("r1", order, base_ms=0, skip_request="b")
    other_requests, other_results, other_run = _stamps("other", order, base_ms=0)
    retry = ResultStamp("r1", "a", 2, 99_999, T0, T0)
    found = run_latencies(
        order,
        ["r1"],
        requests + other_requests,
        [*results, retry, *other_results],
        [run, other_run],
    )
    assert found.step_overhead == []  # b's request is missing
    assert found.step_gap == pytest.approx([3.0])  # b's result still shows when it started
    assert (found.runs, found.incomplete_runs, found.retried_steps) == (1, 1, 1)


# -- plan and selection ------------------------------------------------------------------------


def test_parse_only() -> None:
    assert parse_only(None) == frozenset()
    assert parse_only(" t4, b1 ,") == {"T4", "B1"}
    assert parse_only("t10,T12, p1") == {"T10", "T12", "P1"}
    with pytest.raises(ValueError, match="not measured yet: T13"):
        parse_only("T4,T13")
    with pytest.raises(ValueError, match="choose from B1"):
        parse_only("X9")


def test_plan_runs_only_what_the_figures_need() -> None:
    assert plan(frozenset({"T7"})).needs_kafka is False
    t1_only = plan(frozenset({"T1"}))
    assert (t1_only.raw_pipe, t1_only.closed, t1_only.open) == (True, ("at_least_once",), ())
    t3_only = plan(frozenset({"T3"}))
    assert (t3_only.raw_pipe, t3_only.closed) == (False, ())
    assert t3_only.open == ("at_least_once", "exactly_once")
    everything = plan(frozenset(MEASURED))
    assert everything.codec and everything.raw_pipe
    assert everything.closed == ("at_least_once", "exactly_once")


# -- figures and verdicts ----------------------------------------------------------------------


def test_verdicts_in_both_directions() -> None:
    higher = Target(better="higher", goal=0.5, stretch=0.7)
    lower = Target(better="lower", goal=5.0, stretch=3.0)
    assert verdict(spread([0.7]), higher) == "meets_stretch"
    assert verdict(spread([0.5]), higher) == "meets"
    assert verdict(spread([0.49]), higher) == "misses"
    assert verdict(spread([3.0]), lower) == "meets_stretch"
    assert verdict(spread([4.0]), lower) == "meets"
    assert verdict(spread([5.1]), lower) == "misses"
    assert verdict(spread([1.0]), None) == "no_target"


def _closed(
    key: str, events: list[float], *, complete: bool = True, role: str = "w"
) -> Measurement:
    reps = [
        Repetition(
            elapsed_s=1.0,
            runs=100,
            completed_runs=100 if complete else 90,
            events=1100,
            runs_per_s=e / EVENTS_PER_RUN,
            events_per_s=e,
            cpu_percent={role: 80.0, OTHER_ROLE: 40.0},
        )
        for e in events
    ]
    return Measurement(
        key=key,
        kind="closed_loop",
        subject="baton",
        guarantee="at_least_once",
        process_role=role,
        repetitions=reps,
        runs_per_s=spread([e / EVENTS_PER_RUN for e in events]),
        events_per_s=spread(events),
        cpu=[
            CpuShare(role=role, percent=spread([80.0] * len(events))),
            CpuShare(role=OTHER_ROLE, percent=spread([40.0] * len(events))),
        ],
    )


def test_t1_is_the_ratio_with_absolute_figures_beside_it() -> None:
    figure = t1(_closed("closed/at_least_once", [500, 550, 600]), _closed("b1", [1000, 1100]))
    assert figure.status == "measured"
    assert figure.value is not None
    assert figure.value.median == pytest.approx(550 / 1050)
    assert figure.verdict == "meets"
    assert [a.unit for a in figure.absolute] == ["events/s", "events/s"]
    assert figure.sources == ["closed/at_least_once", "b1"]


def test_a_figure_whose_runs_did_not_all_complete_fails_instead_of_guessing() -> None:
    incomplete = _closed("closed/at_least_once", [500], complete=False)
    figure = t1(incomplete, _closed("b1", [1000]))
    assert (figure.status, figure.verdict, figure.value) == ("failed", "failed", None)
    assert figure.note is not None and "90 of 100" in figure.note
    assert t4(None, "exactly_once").note == "baton exactly_once: not run"


def test_t4_reports_the_cpu_of_the_process_under_test() -> None:
    figure = t4(_closed("closed/at_least_once", [5500.0], role="worker alo"), "at_least_once")
    assert figure.value is not None and figure.value.median == pytest.approx(500)
    assert figure.verdict == "meets"
    assert [a.label for a in figure.absolute] == ["events/s", "worker CPU"]


def test_t3_takes_p50_and_p99_per_repetition() -> None:
    def lat(name: str, p50s: list[float]) -> Latency:
        reps = [percentiles([v, v, v, 10 * v]) for v in p50s]
        pooled = percentiles([v for v in p50s])
        return Latency(
            name=name,
            definition="d",
            per_repetition=reps,
            pooled=pooled,
            histogram=histogram(p50s),
            resolution="r",
        )

    measurement = _closed("open/at_least_once", [1000, 1000, 1000]).model_copy(
        update={
            "kind": "open_loop",
            "latencies": [lat("step_overhead", [2.0, 3.0, 4.0]), lat("step_gap", [5.0, 6, 7])],
            "open_loop": OpenLoopSettings(
                rate_per_s=30.0,
                max_rate_per_s=100.0,
                max_rate_source="test",
                load_fraction=0.3,
                duration_s=20.0,
            ),
        }
    )
    p50, p99 = t3(measurement, "at_least_once")
    assert (p50.variant, p99.variant) == ("at_least_once p50", "at_least_once p99")
    assert p50.value is not None and p50.value.samples == [2.0, 3.0, 4.0]
    assert p50.verdict == "meets_stretch"
    assert p99.value is not None and p99.value.median == pytest.approx(3.0 + 0.97 * 27)
    assert p99.verdict == "misses"
    assert [a.label for a in p50.absolute] == ["load (30% of 100)", "step gap p50"]


def test_every_benchmark_id_is_listed_measured_or_not() -> None:
    figures = all_figures({}, frozenset(MEASURED))
    ids = {f.id for f in figures}
    assert ids == {"B0", "B1", "B2", "P1", *(f"T{i}" for i in range(1, 14))}
    assert set(NOT_MEASURED) | set(MEASURED) == ids
    for figure in figures:
        if figure.id in NOT_MEASURED:
            assert (figure.status, figure.value) == ("not_measured", None)
        else:  # nothing was run: every measured figure says so rather than showing a number
            assert (figure.status, figure.value) == ("failed", None)


def test_busy_machine_notes_name_the_measurement() -> None:
    notes = busy_machine_notes({"closed/x": _closed("closed/x", [1.0])}, limit=25)
    assert len(notes) == 1 and notes[0].startswith("closed/x: ")
    assert busy_machine_notes({"closed/x": _closed("closed/x", [1.0])}, limit=50) == []


# -- the report --------------------------------------------------------------------------------


def _report() -> Report:
    measurements = {
        "closed/at_least_once": _closed("closed/at_least_once", [500, 550, 600]),
        "closed/raw_pipe": _closed("closed/raw_pipe", [1000, 1100, 1200]),
    }
    return Report(
        started_at=T0,
        finished_at=T0 + timedelta(minutes=5),
        command="python -m bench --only T1",
        baton_version="0.1.0",
        git_commit="0" * 40,
        git_dirty=False,
        machine=Machine(
            cores_logical=2,
            cores_physical=1,
            cpu_model="test",
            memory_gb=4.0,
            platform="linux",
            python="3.11",
        ),
        broker=BrokerInfo(bootstrap="127.0.0.1:9092", loopback=True, started_by_bench=True),
        settings=SuiteSettings(
            mode="full",
            only=["T1"],
            partitions=4,
            repetitions=3,
            warmup_runs=300,
            closed_loop_runs=2000,
            open_loop_seconds=20.0,
            load_fraction=0.3,
            payload_bytes=1024,
        ),
        workload=WorkloadInfo(
            workflow="w",
            steps=[s for s, _ in STEPS],
            kinds=[k for _, k in STEPS],
            model="m",
            payload_bytes=1024,
            events_per_run=EVENTS_PER_RUN,
            events_definition="d",
        ),
        figures=all_figures(measurements, frozenset({"T1"})),
        measurements=measurements,
    )


def test_report_round_trips_through_json_and_is_written_twice(tmp_path: Path) -> None:
    report = _report()
    dated, latest = write_report(report, tmp_path / "out")
    assert dated.name == "report-20261121T120000Z.json"
    assert dated.read_text() == latest.read_text()
    again = Report.model_validate_json(latest.read_text())
    assert again == report
    data = json.loads(latest.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert {"machine", "broker", "settings", "workload", "figures", "measurements"} <= set(data)
    t1_row = next(f for f in data["figures"] if f["id"] == "T1")
    assert set(t1_row["value"]) == {"median", "min", "max", "samples"}
    assert report.figure("T1") is not None and report.figure("T1", "nope") is None


def test_report_is_closed_and_frozen() -> None:
    data = json.loads(_report().model_dump_json())
    data["surprise"] = 1
    with pytest.raises(ValidationError):
        Report.model_validate(data)
    data.pop("surprise")
    data["schema_version"] = "baton-bench/0"
    with pytest.raises(ValidationError):
        Report.model_validate(data)
    with pytest.raises(ValidationError):
        _report().command = "x"  # type: ignore[misc]  # frozen: assignment is the point


def test_format_spread() -> None:
    assert format_spread(Spread(median=2312.4, min=2300, max=2400), "events/s") == (
        "2,312 events/s [2,300–2,400]"
    )
    assert format_spread(Spread(median=0.456, min=0.456, max=0.456), "ratio") == "0.46"
    assert format_spread(Spread(median=12.5, min=9.25, max=31.0), "ms") == ("12.5 ms [9.25–31.0]")


# -- workload, raw pipe, loopback --------------------------------------------------------------


def test_workload_is_five_steps_in_a_line_with_1_kb_payloads() -> None:
    from streams.workflow import parse_workflow

    workflow = parse_workflow(workflow_yaml(), "bench")
    assert list(workflow.order) == [name for name, _ in STEPS]
    assert EVENTS_PER_RUN == 11
    text = payload(PAYLOAD_BYTES)
    assert len(text.encode()) == PAYLOAD_BYTES and "{" not in text


def test_models_yaml_is_a_valid_catalog(tmp_path: Path) -> None:
    from processors import load_model_catalog

    path = tmp_path / "models.yaml"
    path.write_text(models_yaml(latency_ms=800, latency_sigma=0.6))
    route = load_model_catalog(path).route("zero")
    assert (route.provider, route.latency_ms, route.latency_sigma) == ("scripted", 800, 0.6)
    assert isinstance(route.script[0].reply, str) and len(route.script[0].reply) == 1024


def test_raw_pipe_makes_the_same_hops_as_a_run() -> None:
    topics = PipeTopics("p")
    path = [next_topic(topics, hop, EVENTS_PER_RUN) for hop in range(1, EVENTS_PER_RUN + 1)]
    assert path.count(topics.requests) == 5
    assert path.count(topics.results) == 5
    assert path[-1] == topics.exit and path.count(topics.exit) == 1
    assert path[:2] == [topics.requests, topics.results]


@pytest.mark.parametrize(
    ("bootstrap", "loopback"),
    [
        ("127.0.0.1:9092", True),
        ("localhost:9092,[::1]:9093", True),
        ("127.0.0.1:9092,10.0.0.7:9092", False),
        ("kafka:9092", False),
        ("", False),
    ],
)
def test_is_loopback(bootstrap: str, loopback: bool) -> None:
    assert is_loopback(bootstrap) is loopback
