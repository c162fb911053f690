"""The suite's plumbing: the workload's variants, what is read back per run, and the T6/T10
arithmetic over read-back stamps. No broker."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench._kafka import STEP_KINDS, path_topics
from bench._latency import RequestStamp, ResultStamp, RunStamp, orchestration_shares, transitions
from bench._readback import Readback, _other_run_topics, run_events_of
from bench._workload import (
    FIXED_ROUTE,
    FIXED_WORKFLOW,
    HOLD_WORKFLOW,
    LONG_STEPS,
    LONG_WORKFLOW,
    ROUTE_LATENCIES,
    TAIL_ROUTE,
    TAIL_WORKFLOW,
    WORKFLOW_NAME,
    bench_workflows,
    long_steps,
    models_yaml,
    task,
)
from processors import load_model_catalog
from streams.workflow import parse_workflow
from topics import Codec, RunEvent, TopicCatalog

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


# -- the workload's variants ------------------------------------------------------------------


def test_every_workflow_of_the_suite_parses_and_has_its_route() -> None:
    workflows = {w.name: w for w in (parse_workflow(y, "bench") for y in bench_workflows())}
    assert set(workflows) == {
        WORKFLOW_NAME,
        TAIL_WORKFLOW,
        FIXED_WORKFLOW,
        HOLD_WORKFLOW,
        LONG_WORKFLOW,
    }
    five = [list(workflows[name].order) for name in (WORKFLOW_NAME, TAIL_WORKFLOW, HOLD_WORKFLOW)]
    assert five[0] == five[1] == five[2] == ["draft", "shape", "review", "package", "check"]
    assert "model: tail800" in bench_workflows()[1]
    assert "model: fixed500" in bench_workflows()[2]
    assert "timeout: 30m" in bench_workflows()[3]
    assert list(workflows[LONG_WORKFLOW].order) == [name for name, _ in long_steps()]


def test_the_long_run_alternates_llm_and_transform_in_one_line() -> None:
    steps = long_steps()
    assert len(steps) == LONG_STEPS == 200
    assert steps[:3] == [("s001", "llm"), ("s002", "transform"), ("s003", "llm")]
    assert steps[-1] == ("s200", "transform")
    assert long_steps(4) == [
        ("s001", "llm"),
        ("s002", "transform"),
        ("s003", "llm"),
        ("s004", "transform"),
    ]


def test_the_catalog_has_every_route_and_no_route_is_cached(tmp_path: Path) -> None:
    from processors import cacheable

    path = tmp_path / "models.yaml"
    path.write_text(models_yaml())
    catalog = load_model_catalog(path)
    assert set(catalog.routes) == {"zero", TAIL_ROUTE, FIXED_ROUTE}
    tail, fixed = catalog.route(TAIL_ROUTE), catalog.route(FIXED_ROUTE)
    assert (tail.latency_ms, tail.latency_sigma) == (800, 0.5)
    assert (fixed.latency_ms, fixed.latency_sigma) == (500, 0)
    assert catalog.route("zero").latency_ms == 0
    # Free scripted routes are never answered from the response cache: every call waits.
    assert not any(cacheable(route, temperature=0.0) for route in catalog.routes.values())


def test_route_latency_mean_of_the_log_normal() -> None:
    assert ROUTE_LATENCIES[FIXED_ROUTE].mean_ms == 500
    assert ROUTE_LATENCIES[TAIL_ROUTE].mean_ms == pytest.approx(800 * 1.1331484531)


def test_a_task_names_its_workflow() -> None:
    assert task("r1", "x").workflow == WORKFLOW_NAME
    assert task("r1", "x", TAIL_WORKFLOW).workflow == TAIL_WORKFLOW


def test_path_topics_cover_every_kind_of_the_suite() -> None:
    catalog = TopicCatalog(prefix="p", partitions=2)
    assert STEP_KINDS == ("llm", "transform", "validate")
    names = [t.name for t in path_topics(catalog)]
    assert names == [
        "p.tasks",
        "p.steps.llm",
        "p.steps.transform",
        "p.steps.validate",
        "p.step-results",
        "p.results",
    ]


# -- what is read back per run ----------------------------------------------------------------


def test_run_events_are_decoded_in_one_place() -> None:
    codec = Codec()
    event = RunEvent(run_id="r1", seq=0, type="run_started", at=T0)
    assert run_events_of(codec.encode(event), codec) == [event]


def test_every_other_run_keyed_topic_is_counted_too() -> None:
    catalog = TopicCatalog(prefix="p", partitions=2)
    roles = dict(_other_run_topics(catalog))
    assert {"timers", "control", "dead-letter", "retry.5s", "approvals.requested"} <= set(roles)
    assert not {"tasks", "step-results", "results", "run-events", "run-state"} & set(roles)
    assert not any(role.startswith("steps.") for role in roles)
    # Topics keyed by something else (tenant, cache key, workflow) cannot be split per run.
    assert not {"spend", "llm-cache", "workflows"} & set(roles)


def test_per_run_averages_over_the_runs_asked_for() -> None:
    back = Readback(
        records=Counter({("a", "tasks"): 1, ("a", "run state"): 6, ("b", "tasks"): 1}),
        bytes=Counter({("a", "tasks"): 1000, ("a", "run state"): 6000, ("b", "tasks"): 3000}),
        run_ids=frozenset({"a", "b"}),
    )
    records, sizes = back.per_run()
    assert records == {"tasks": 1.0, "run state": 3.0, "total": 4.0}
    assert sizes == {"tasks": 2000.0, "run state": 3000.0, "total": 5000.0}
    records, sizes = back.per_run(["a", "not read back"])
    assert records["total"] == 7.0 and sizes["total"] == 7000.0
    assert back.runs_counted == 2


# -- T6 and T10 over read-back stamps -----------------------------------------------------------


def _result(run: str, step: str, appended: int, started_ms: float, took_ms: float) -> ResultStamp:
    started = T0 + timedelta(milliseconds=started_ms)
    return ResultStamp(run, step, 1, appended, started, started + timedelta(milliseconds=took_ms))


def test_orchestration_share_is_the_time_between_steps_over_the_steps() -> None:
    order = ["a", "b"]
    results = [
        _result("r1", "a", 520, 10, 500),
        _result("r1", "b", 1040, 530, 500),
        _result("r2", "a", 9999, 0, 500),  # r2 has no result: incomplete
        ResultStamp("r1", "a", 2, 5000, T0, T0 + timedelta(seconds=9)),  # a later attempt
    ]
    runs = [RunStamp("r1", task_appended_ms=0, result_appended_ms=1100), RunStamp("r2", 0)]
    found = orchestration_shares(order, ["r1", "r2"], results, runs)
    assert found.wall_ms == [1100.0]
    assert found.steps_ms == pytest.approx([1000.0])
    assert found.shares == pytest.approx([0.1])
    assert found.incomplete_runs == 1


def test_transitions_by_position_keep_gaps_where_a_record_is_missing() -> None:
    order = ["s1", "s2", "s3", "s4"]
    requests = [
        RequestStamp("r", "s1", 1, 0),
        RequestStamp("r", "s2", 1, 12),
        RequestStamp("r", "s4", 1, 40),
        RequestStamp("r", "s2", 2, 99),  # a later attempt is not the transition
        RequestStamp("other", "s2", 1, 1),
    ]
    results = [
        _result("r", "s1", 10, 1, 5),
        _result("r", "s2", 20, 13, 5),
        _result("r", "s3", 30, 21, 5),
        _result("r", "s4", 45, 41, 3),
    ]
    found = transitions(order, "r", requests, results)
    assert found.overhead_ms == [2.0, None, 10.0]  # s3's request is missing
    assert found.gap_ms == pytest.approx([7.0, 3.0, 15.0])
