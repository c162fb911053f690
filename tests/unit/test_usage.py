"""Usage reporting without a broker: sums by group, the report's JSON, the CLI's tables.

The reading side (``offsets_for_times`` over the run events) is tested on the real broker in
tests/integration/test_usage.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from click.testing import CliRunner
from rich.console import Console

from streams._usage import summarize
from streams.cli import main
from streams.cli._runs import steps_table
from streams.cli._usage import usd
from topics import RunEvent, Usage

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def _event(
    tenant: str,
    workflow: str,
    usage: Usage | None,
    at: datetime = T0,
    type_: str = "step_succeeded",
) -> RunEvent:
    return RunEvent(
        run_id=f"{tenant}-{workflow}",
        seq=0,
        type=type_,
        at=at,
        workflow=workflow,
        tenant=tenant,
        step="s",
        attempt=1,
        usage=usage,
    )


def _usage(route: str, cost: str, tokens: tuple[int, int] = (100, 10), **more: Any) -> Usage:
    return Usage(
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        cost_usd=Decimal(cost),
        route=route,
        provider="openai",
        model=f"m-{route}",
        **more,
    )


HIT = Usage(route="fast", provider="openai", model="m-fast", cached=True, saved_usd=Decimal("0.3"))
EVENTS = [
    _event("acme", "triage", _usage("strong", "1.25", (1000, 200))),
    _event("acme", "triage", _usage("fast", "0.3")),
    _event("acme", "triage", HIT),
    _event("acme", "summary", _usage("fast", "0.3"), type_="step_failed"),
    _event("globex", "triage", _usage("fast", "0.3"), type_="result_ignored"),
    _event("globex", "triage", None, type_="step_dispatched"),
    _event("globex", "triage", _usage("strong", "9"), at=T0 - timedelta(hours=2)),
    _event("globex", "triage", _usage("strong", "9"), at=T0 + timedelta(hours=2)),
]
SINCE, UNTIL = T0 - timedelta(hours=1), T0 + timedelta(hours=1)


def test_usage_sums_by_tenant_inside_the_window_only() -> None:
    report = summarize(EVENTS, "tenant", SINCE, UNTIL)

    assert [line.group for line in report.lines] == ["acme", "globex"]
    acme, globex = report.lines
    assert (acme.steps, acme.cached) == (4, 1)
    assert (acme.input_tokens, acme.output_tokens) == (1200, 220)
    assert acme.cost_usd == Decimal("1.85") and acme.saved_usd == Decimal("0.3")
    assert (globex.steps, globex.cost_usd) == (1, Decimal("0.3"))
    assert report.total.steps == 5 and report.total.cost_usd == Decimal("2.15")
    assert report.total.input_tokens == 1300 and report.total.saved_usd == Decimal("0.3")


def test_usage_sums_by_workflow_and_by_route() -> None:
    by_workflow = summarize(EVENTS, "workflow", SINCE, UNTIL)
    by_route = summarize(EVENTS, "route", SINCE, UNTIL)

    assert {line.group: line.cost_usd for line in by_workflow.lines} == {
        "triage": Decimal("1.85"),
        "summary": Decimal("0.3"),
    }
    assert [(line.group, line.steps, line.cached) for line in by_route.lines] == [
        ("strong", 1, 0),
        ("fast", 4, 1),
    ]
    assert by_route.total == by_workflow.total


def test_a_step_without_a_route_is_grouped_under_none() -> None:
    report = summarize([_event("a", "w", Usage(input_tokens=5))], "route", SINCE, UNTIL)
    assert [line.group for line in report.lines] == ["(none)"]


def test_the_report_as_json_keeps_money_exact() -> None:
    report = summarize(EVENTS, "tenant", SINCE, UNTIL).as_json()

    assert report["by"] == "tenant" and report["since"] == SINCE.isoformat()
    assert report["total"] == {
        "group": "total",
        "steps": 5,
        "cached": 1,
        "input_tokens": 1300,
        "output_tokens": 230,
        "cost_usd": "2.15",
        "saved_usd": "0.3",
    }
    empty = summarize([], "route", SINCE, UNTIL).as_json()
    assert empty["groups"] == [] and empty["total"]["cost_usd"] == "0"  # type: ignore[index]


def test_money_is_shown_exactly() -> None:
    assert usd(Decimal("0.000144000000")) == "$0.000144"
    assert usd("0E-12") == "$0"
    assert usd("12.50") == "$12.5"
    assert usd(0) == "$0"


def test_runs_show_lists_tokens_cost_route_and_cache_per_step_with_totals() -> None:
    view: dict[str, Any] = {
        "dispatches": 3,
        "usage": {
            "input_tokens": 1000,
            "output_tokens": 200,
            "cost_usd": "0.0024",
            "saved_usd": "0.0011",
            "cached": True,
        },
        "steps": [
            {
                "step": "classify",
                "phase": "succeeded",
                "attempt": 2,
                "duration_ms": 812.4,
                "route": "strong",
                "usage": {
                    "input_tokens": 1000,
                    "output_tokens": 200,
                    "cost_usd": "0.002400000000",
                    "route": "strong",
                },
            },
            {
                "step": "draft",
                "phase": "succeeded",
                "attempt": 1,
                "duration_ms": 3.0,
                "route": None,
                "usage": {
                    "cost_usd": "0E-12",
                    "route": "fast",
                    "cached": True,
                    "saved_usd": "0.001100000000",
                },
            },
            {"step": "shape", "phase": "pending", "attempt": 0, "usage": {}},
        ],
    }
    console = Console(record=True, width=160)
    console.print(steps_table(view))
    lines = [" ".join(line.split()) for line in console.export_text().splitlines()]

    assert any(
        line.startswith("│ classify │ succeeded │ 2 │ 812 ms │ 1000 │ 200 │ $0.0024 │ strong")
        for line in lines
    )
    assert any(
        "draft │ succeeded │ 1 │ 3 ms │ 0 │ 0 │ $0 │ fast │ hit, saved $0.0011" in line
        for line in lines
    )
    assert any("shape │ pending │ 0 │ - │ 0 │ 0 │ $0 │" in line for line in lines)
    assert any(
        "total │ │ 3 │ │ 1000 │ 200 │ $0.0024 │ │ 1 hit, saved $0.0011" in line for line in lines
    )


def test_a_step_that_recovered_its_own_call_from_the_cache_is_not_shown_as_a_saving() -> None:
    usage = {"input_tokens": 10, "output_tokens": 2, "cost_usd": "0.01", "cached": True}
    view = {"steps": [{"step": "draft", "phase": "succeeded", "attempt": 1, "usage": usage}]}
    console = Console(record=True, width=160)
    console.print(steps_table(view))
    lines = [" ".join(line.split()) for line in console.export_text().splitlines()]

    assert any("draft │ succeeded │ 1 │ - │ 10 │ 2 │ $0.01 │ │ recovered" in line for line in lines)


def test_usage_refuses_a_bad_window_before_reading_anything() -> None:
    result = CliRunner().invoke(main, ["usage", "--window", "yesterday"])
    assert result.exit_code == 2
    assert "--window" in result.output and "not a duration" in result.output
