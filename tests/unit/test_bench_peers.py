"""B2 and P1: bare Faust's and LangGraph's figures from synthetic measurements, the Faust
pipe's routing and the LangGraph twin of the workload. No broker."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench._baseline_figures import b2, ms_per_step, p1
from bench._faustpipe import hop_of
from bench._peer import GRAPH_STEPS, build_graph, missing_dependency, model, nodes
from bench._rawpipe import HOP_HEADER
from bench._report import CpuShare, Measurement, Repetition
from bench._stats import spread
from bench._workload import PAYLOAD_BYTES, payload


def _closed(
    key: str, role: str, *, events: list[float], runs: list[float], cpu: float
) -> Measurement:
    reps = [
        Repetition(
            elapsed_s=1.0,
            runs=100,
            completed_runs=100,
            events=1100,
            runs_per_s=r,
            events_per_s=e,
            cpu_percent={role: cpu},
        )
        for e, r in zip(events, runs, strict=True)
    ]
    return Measurement(
        key=key,
        kind="closed_loop",
        subject=key.removeprefix("closed/"),
        process_role=role,
        repetitions=reps,
        runs_per_s=spread(runs),
        events_per_s=spread(events) if any(events) else None,
        cpu=[CpuShare(role=role, percent=spread([cpu] * len(reps)))],
    )


def test_b2_gives_events_per_second_and_the_share_of_b1() -> None:
    faust = _closed("closed/faust_pipe", "faust pipe", events=[1500, 1600], runs=[136, 145], cpu=40)
    raw = _closed("closed/raw_pipe", "raw pipe", events=[5000, 6000], runs=[450, 545], cpu=25)
    own, share = b2(faust, raw)
    assert own.value is not None and own.value.median == 1550 and own.verdict == "no_target"
    assert share.variant == "/ B1" and share.unit == "ratio"
    assert share.value is not None and share.value.median == pytest.approx(1550 / 5500)
    per_event = {a.label: a.value.median for a in share.absolute}
    assert per_event["faust pipe CPU per event"] == pytest.approx(0.40 / 1550 * 1e6)
    assert per_event["raw pipe CPU per event"] == pytest.approx(0.25 / 5500 * 1e6)
    failed_own, failed_share = b2(None, raw)
    assert (failed_own.status, failed_share.status) == ("failed", "failed")
    assert b2(faust, None)[1].status == "failed"


def test_ms_per_step_is_one_run_spread_over_its_five_steps() -> None:
    assert ms_per_step(spread([100.0, 50.0])).samples == [2.0, 4.0]


def test_p1_sits_beside_baton_and_gives_the_goals_beyond_the_targets() -> None:
    durable = _closed("closed/langgraph_sqlite", "bench", events=[0], runs=[70], cpu=30)
    memory = _closed("closed/langgraph_memory", "bench", events=[0], runs=[470], cpu=90)
    eos = _closed("closed/exactly_once", "worker", events=[7700], runs=[700], cpu=95)
    rows = p1(durable, memory, {"exactly_once": eos, "at_least_once": None})
    assert [r.variant for r in rows] == [
        "durable",
        "in memory",
        "baton exactly_once / durable",
        "baton exactly_once / in memory",
    ]
    assert rows[0].value is not None and rows[0].value.median == 70
    beside = {a.label: a.value.median for a in rows[0].absolute}
    assert beside["ms per step"] == pytest.approx(1000 / 350)
    assert beside["baton T4 exactly_once"] == 700
    assert rows[2].value is not None and rows[2].value.median == pytest.approx(10.0)
    assert (rows[2].verdict, rows[3].verdict) == ("meets", "meets")
    without = p1(durable, memory, {"exactly_once": None})
    assert [r.status for r in without] == ["measured", "measured", "failed", "failed"]


def test_the_faust_pipe_reads_the_hop_from_faust_or_kafka_headers() -> None:
    assert hop_of({HOP_HEADER: b"3"}) == 3
    assert hop_of([("other", b"1"), (HOP_HEADER, b"7")]) == 7
    assert hop_of(None) == hop_of({}) == 0


def test_the_peer_graph_is_the_workload_and_checkpoints_to_sqlite(tmp_path: Path) -> None:
    if missing_dependency() is not None:
        pytest.skip(missing_dependency())
    from langgraph.checkpoint.sqlite import SqliteSaver

    assert list(nodes()) == list(GRAPH_STEPS)
    assert model("anything") == payload(PAYLOAD_BYTES, seed=3)
    connection = sqlite3.connect(tmp_path / "c.sqlite", check_same_thread=False)
    saver = SqliteSaver(connection)
    saver.setup()
    graph = build_graph(saver)
    config = {"configurable": {"thread_id": "t1"}}
    out = graph.invoke({"text": "hello"}, config, durability="sync")
    assert out["check"] == model("") and out["shape"]["stage"] == "shaped"
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(list(saver.list(config))) >= len(GRAPH_STEPS)  # a checkpoint per step
    connection.close()
    assert build_graph(None).invoke({"text": "x"})["check"] == model("")
