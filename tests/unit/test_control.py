"""Operators' pauses: a held run starts nothing new, says why it waits, and goes on when resumed.

``decide`` is given a ``ControlBook`` (what the control topic holds); these drive it with
the book changed between events, as the control follower changes it.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from streams._policies import Policies
from streams.coordinator._control import HOLD_RECHECK, ControlBook
from streams.coordinator._ledger import SpendLedger
from tests.unit.test_decide import LINEAR, T0, Run, failed, names, ok, task
from topics import (
    ControlAction,
    ControlCommand,
    RunEvent,
    RunStatus,
    SpendKind,
    SpendRecorded,
    StepRequested,
    TimerFired,
)


def command(action: str, **scope: Any) -> ControlCommand:
    return ControlCommand(
        command_id=f"{action}-{sorted(scope.items())}",
        action=ControlAction(action),
        issued_by="ops",
        reason="maintenance",
        issued_at=T0,
        **scope,
    )


def events(run: Run, type_: str) -> list[RunEvent]:
    return [e for e in run.emitted if isinstance(e, RunEvent) and e.type == type_]


def requests(run: Run) -> list[StepRequested]:
    return [e for e in run.emitted if isinstance(e, StepRequested)]


def test_a_new_run_of_a_paused_tenant_starts_and_waits_then_resumes() -> None:
    book = ControlBook()
    book.apply(command("pause", tenant="acme"))
    run = Run(LINEAR, control=book)
    run.send(task(tenant="acme"))
    assert run.types() == ["run_started", "run_paused"]
    assert requests(run) == []
    (paused,) = events(run, "run_paused")
    assert paused.detail == {
        "waiting_for": [
            {
                "reason": "tenant_paused",
                "tenant": "acme",
                "command_id": "pause-[('tenant', 'acme')]",
                "issued_by": "ops",
                "why": "maintenance",
                "since": T0.isoformat(),
            }
        ]
    }
    assert run.state is not None and run.state.held_by == "tenant/acme"
    assert run.state.next_wake() == T0 + HOLD_RECHECK

    # Still paused when it looks again by itself: no new event, the next look later.
    run.send(TimerFired(run_id="r1", fired_at=T0), at=T0 + HOLD_RECHECK)
    assert run.types() == [] and requests(run) == []
    assert run.state.next_wake() == T0 + 2 * HOLD_RECHECK

    assert book.apply(command("resume", tenant="acme")) is True
    later = T0 + timedelta(minutes=2)
    run.send(TimerFired(run_id="r1", fired_at=later), at=later)
    assert run.types() == ["run_resumed", "step_dispatched"]
    (resumed,) = events(run, "run_resumed")
    assert resumed.detail == {
        "paused_at": T0.isoformat(),
        "held_by": "tenant/acme",
        "command_id": "resume-[('tenant', 'acme')]",
        "issued_by": "ops",
        "why": "maintenance",
    }
    assert resumed.duration_ms == 2 * 60 * 1000
    assert names(requests(run)) == ["a"]
    assert run.state.held_by is None and run.state.hold_check_at is None


def test_a_run_in_flight_finishes_its_step_then_waits() -> None:
    book = ControlBook()
    run = Run(LINEAR, control=book)
    run.send(task(tenant="acme"))
    a = run.request("a")
    book.apply(command("pause", tenant="acme"))
    run.send(ok(a, "hello"))
    assert run.types() == ["step_succeeded", "run_paused"]
    assert names(requests(run)) == ["a"]  # b and c wait
    book.apply(command("resume", tenant="acme"))
    run.send(TimerFired(run_id="r1", fired_at=T0))
    assert run.types() == ["run_resumed", "step_dispatched"]
    run.send(ok(run.request("b"), {"said": "hello"}))
    run.send(ok(run.request("c"), "again"))
    (result,) = run.results()
    assert result.status == RunStatus.completed


def test_a_retry_while_held_waits_and_goes_when_resumed() -> None:
    book = ControlBook()
    run = Run(LINEAR, control=book)
    run.send(task(tenant="acme"))
    a = run.request("a")
    book.apply(command("pause", workflow="linear"))
    run.send(failed(a, "ProviderUnavailable", "503", retryable=True))
    assert run.types() == ["step_failed", "run_paused"]
    assert len(requests(run)) == 1
    assert run.state is not None and run.state.steps["a"].phase == "pending"
    book.apply(command("resume", workflow="linear"))
    run.send(TimerFired(run_id="r1", fired_at=T0))
    assert run.types() == ["run_resumed", "step_dispatched"]
    assert [r.attempt for r in requests(run)] == [1, 2]


def test_a_pause_holds_only_its_own_tenant_or_workflow() -> None:
    book = ControlBook()
    book.apply(command("pause", tenant="acme"))
    book.apply(command("pause", workflow="other"))
    run = Run(LINEAR, control=book)
    run.send(task(tenant="globex"))
    assert names(requests(run)) == ["a"]
    assert events(run, "run_paused") == []


def test_a_held_run_past_its_wall_time_still_ends() -> None:
    book = ControlBook()
    book.apply(command("pause", tenant="acme"))
    run = Run(LINEAR, control=book)
    run.send(task(tenant="acme", budget={"max_seconds": 10}))
    late = T0 + timedelta(seconds=11)
    run.send(TimerFired(run_id="r1", fired_at=late), at=late)
    (result,) = run.results()
    assert result.status == RunStatus.budget_exceeded
    assert run.state is not None and run.state.held_by is None


def test_the_book_keeps_the_last_command_of_each_scope() -> None:
    book = ControlBook()
    assert book.apply(command("resume", tenant="acme")) is False  # nothing was paused
    book.apply(command("pause", tenant="acme"))
    assert book.hold_for("acme", "w") is not None
    assert book.resume_of("tenant/acme") is None
    book.apply(command("caps", tenant="acme", max_cost_usd=Decimal("2.5")))
    assert book.cap("acme") == Decimal("2.5")
    assert book.view()["caps"]["acme"]["max_cost_usd"] == "2.5"
    book.apply(command("caps", tenant="acme"))
    assert book.cap("acme") is None
    assert book.view()["paused"]["tenants"]["acme"]["issued_by"] == "ops"


@pytest.mark.parametrize(
    ("action", "scope"),
    [
        ("pause", {}),
        ("pause", {"tenant": "a", "workflow": "w"}),
        ("resume", {}),
        ("caps", {"workflow": "w"}),
        ("caps", {}),
    ],
)
def test_a_scope_command_names_exactly_its_scope(action: str, scope: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        command(action, **scope)


def test_scope_keys_never_share_a_key_with_a_run() -> None:
    assert command("pause", tenant="acme").scope == "tenant/acme"
    assert command("resume", workflow="w").scope == "workflow/w"
    assert command("caps", tenant="acme").scope == "caps/acme"
    assert ControlCommand(command_id="c", action="cancel", run_id="a:b", issued_at=T0).scope is None


def spend(kind: str, amount: str, n: int, *, at_s: float = 0) -> SpendRecorded:
    return SpendRecorded(
        tenant="acme",
        reservation_id=f"r{n}/s/1" if kind in ("reserve", "settle") else f"caps/c{n}",
        kind=SpendKind(kind),
        amount_usd=Decimal(amount),
        run_id=f"r{n}" if kind in ("reserve", "settle") else "",
        step="s" if kind in ("reserve", "settle") else "",
        at=T0 + timedelta(seconds=at_s),
    )


def test_a_cap_entry_changes_the_ceiling_from_its_place_in_the_ledger_on() -> None:
    policies = Policies.model_validate({"tenants": {"acme": {"max_cost_usd": 1, "window": "1h"}}})
    ledger = SpendLedger(policies)
    assert ledger.apply(spend("reserve", "0.6", 1, at_s=1)) is True
    assert ledger.apply(spend("reserve", "0.6", 2, at_s=2)) is False  # 1.2 > 1
    assert ledger.apply(spend("cap", "2", 3, at_s=3)) is None
    assert ledger.ceiling_usd("acme") == Decimal(2)
    assert ledger.cap_source("acme") == "caps/c3"
    assert ledger.apply(spend("reserve", "0.6", 4, at_s=4)) is True  # 1.2 <= 2
    # An older command's entry, written late, does not undo the newer one.
    assert ledger.apply(spend("uncap", "0", 5, at_s=2.5)) is None
    assert ledger.ceiling_usd("acme") == Decimal(2)
    assert ledger.apply(spend("uncap", "0", 6, at_s=5)) is None
    assert ledger.ceiling_usd("acme") == Decimal(1) and ledger.cap_source("acme") is None
    assert ledger.apply(spend("reserve", "0.1", 7, at_s=6)) is False


def test_a_ledger_started_after_the_entry_takes_the_cap_from_the_control_topic() -> None:
    policies = Policies.model_validate({"tenants": {"acme": {"max_cost_usd": 1}}})
    ledger = SpendLedger(policies)
    ledger.seed("acme", T0, Decimal("0.5"), "caps/c0")
    assert ledger.apply(spend("reserve", "0.6", 1, at_s=1)) is False
    assert ledger.apply(spend("cap", "3", 2, at_s=2)) is None
    assert ledger.apply(spend("reserve", "0.6", 3, at_s=3)) is True


def test_a_reservation_made_before_a_pause_is_given_back_and_made_afresh_on_resume() -> None:
    policies = Policies.model_validate({"tenants": {"acme": {"max_cost_usd": 10}}})
    ledger = SpendLedger(policies)
    book = ControlBook()
    run = Run(LINEAR, control=book, policies=policies, ledger=ledger)
    run.send(task(tenant="acme"))
    (reserved,) = [e for e in run.emitted if isinstance(e, SpendRecorded)]
    assert reserved.kind == SpendKind.reserve and reserved.reservation_id == "r1/a/1"
    book.apply(command("pause", tenant="acme"))
    assert ledger.apply(reserved) is True  # the verdict wakes the run: it is held now
    run.send(TimerFired(run_id="r1", fired_at=T0))
    assert run.types() == ["run_paused"]
    (given_back,) = [e for e in run.last.emit if isinstance(e, SpendRecorded)]
    assert given_back.kind == SpendKind.settle and given_back.amount_usd == 0
    assert given_back.reservation_id == "r1/a/1" and given_back.at == reserved.at
    assert run.state is not None and run.state.steps["a"].reservation is None
    assert requests(run) == []

    book.apply(command("resume", tenant="acme"))
    run.send(TimerFired(run_id="r1", fired_at=T0))
    assert run.types() == ["run_resumed", "spend_reserved"]
    (afresh,) = [e for e in run.last.emit if isinstance(e, SpendRecorded)]
    assert afresh.kind == SpendKind.reserve and afresh.reservation_id == "r1/a/2"
