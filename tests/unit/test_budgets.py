"""Budgets in decide(): estimates, caps, downgrade, approval on breach, tenant ledger, routing."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from processors import ModelCatalog
from streams._access import Access
from streams._policies import BudgetPolicy, Caps, Policies, TenantCeiling
from streams.coordinator._budgets import DEFAULT_OUTPUT_TOKENS, estimate
from streams.coordinator._ledger import SpendLedger
from tests.unit.test_decide import T0, Run, failed, ok, task, wf
from topics import (
    ApprovalRequested,
    Budget,
    RunEvent,
    RunStatus,
    SpendKind,
    SpendRecorded,
    StepRequested,
    TimerFired,
    Usage,
    sign_decision,
)

# Prices chosen so estimates are easy to reason about: per million tokens.
MODELS = ModelCatalog.model_validate(
    {
        "routes": {
            name: {
                "provider": "scripted",
                "model": name,
                "input_usd_per_mtok": price,
                "output_usd_per_mtok": price,
                "script": [{"reply": "ok"}],
            }
            for name, price in (("strong", "100"), ("medium", "10"), ("fast", "1"))
        }
    }
)

TWO_CALLS = wf(
    """
workflow: w
version: 1
steps:
  first: {kind: llm, model: strong, prompt: "Summarise {{ input.text }}", max_tokens: 100}
  second: {kind: llm, after: [first], model: strong, prompt: "Again: {{ steps.first.output }}",
           max_tokens: 100}
"""
)

KEY = b"budget-signing-key-0123456789abcdef"
ACCESS = Access(groups={"fin": frozenset({"finance"})}, keys={"k1": KEY})


def run_with(workflow: Any = TWO_CALLS, **context: Any) -> Run:
    context.setdefault("models", MODELS)
    return Run(workflow, **context)


def cost(tokens: int, price: str = "100") -> Decimal:
    return Decimal(tokens) * Decimal(price) / Decimal(1_000_000)


def usage(input_tokens: int, output_tokens: int, route: str = "strong") -> Usage:
    price = {"strong": "100", "medium": "10", "fast": "1"}[route]
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost(input_tokens + output_tokens, price),
        route=route,
    )


def route_of(request: StepRequested) -> Any:
    assert isinstance(request.params, dict)
    return request.params["route"]


def detail(event: RunEvent) -> dict[str, Any]:
    assert isinstance(event.detail, dict)
    return event.detail


def events(run: Run, type_: str) -> list[RunEvent]:
    return [e for e in run.emitted if isinstance(e, RunEvent) and e.type == type_]


# -- the estimate ----------------------------------------------------------------------------


def test_the_estimate_counts_the_prompt_caps_the_completion_and_prices_both() -> None:
    run = run_with()
    run.send(task(input={"text": "x" * 400}))
    request = run.request("first")
    guess = estimate(request, MODELS)
    assert isinstance(request.params, dict)
    messages: Any = request.params["messages"]
    assert guess.input_tokens >= sum(len(m["content"]) for m in messages) // 4
    assert guess.output_tokens == 100  # the step's max_tokens
    assert guess.cost_usd == cost(guess.input_tokens + 100)
    (dispatched,) = events(run, "step_dispatched")
    assert detail(dispatched)["estimate"]["cost_usd"] == str(guess.cost_usd)


def test_without_a_cap_the_completion_is_assumed_long_and_unknown_routes_cost_nothing() -> None:
    workflow = wf("workflow: w\nversion: 1\nsteps:\n  a: {kind: llm, model: other, prompt: hi}\n")
    run = run_with(workflow)
    run.send(task())
    guess = estimate(run.request("a"), MODELS)
    assert guess.output_tokens == DEFAULT_OUTPUT_TOKENS and guess.cost_usd == 0


# -- run caps --------------------------------------------------------------------------------


def test_a_cost_cap_stops_the_run_before_the_call_that_would_pass_it() -> None:
    run = run_with()
    run.send(task(budget=Budget(max_cost_usd=Decimal("0.02"))))
    first = run.request("first")
    assert estimate(first, MODELS).cost_usd < Decimal("0.02")
    run.send(ok(first, "short", usage=usage(40, 100)))  # $0.014 spent
    (result,) = run.results()
    assert result.status == RunStatus.budget_exceeded
    assert result.reason is not None and result.reason.startswith("max_cost_usd: $0.014 spent")
    assert "second may cost ~$0.0" in result.reason and "(cap $0.02)" in result.reason
    assert [r.step for r in run.emitted if isinstance(r, StepRequested)] == ["first"]
    assert result.usage.cost_usd == Decimal("0.014")  # the first call was settled
    assert events(run, "budget_exceeded")[0].step == "second"


def test_a_token_cap_counts_calls_in_flight() -> None:
    parallel = wf(
        """
workflow: w
version: 1
steps:
  a: {kind: llm, model: fast, prompt: "one", max_tokens: 200}
  b: {kind: llm, model: fast, prompt: "two", max_tokens: 200}
"""
    )
    run = run_with(parallel)
    run.send(task(budget=Budget(max_tokens=300)))
    # Each call may use ~210 tokens: the second does not fit beside the first in flight.
    assert [r.step for r in run.requests()] == ["a"]
    (result,) = run.results()
    assert result.status == RunStatus.budget_exceeded
    assert result.reason is not None and result.reason.startswith("max_tokens: 2")


def test_a_run_never_spends_more_than_one_estimate_past_its_cap() -> None:
    loop = wf(
        """
workflow: w
version: 1
steps:
  s1: {kind: llm, model: fast, prompt: "p", max_tokens: 50}
  s2: {kind: llm, after: [s1], model: fast, prompt: "p", max_tokens: 50}
  s3: {kind: llm, after: [s2], model: fast, prompt: "p", max_tokens: 50}
  s4: {kind: llm, after: [s3], model: fast, prompt: "p", max_tokens: 50}
  s5: {kind: llm, after: [s4], model: fast, prompt: "p", max_tokens: 50}
"""
    )
    rng = random.Random(7)
    for cap in (60, 100, 150, 200, 250):
        run = run_with(loop)
        run.send(task(budget=Budget(max_tokens=cap)))
        biggest = 0
        while not run.results():
            request = run.requests()[0]
            guess = estimate(request, MODELS)
            biggest = max(biggest, guess.input_tokens + guess.output_tokens)
            used = rng.randint(1, guess.input_tokens + guess.output_tokens)
            run.send(ok(request, "x", usage=usage(used, 0, "fast")))
        (result,) = run.results()
        spent = result.usage.input_tokens + result.usage.output_tokens
        assert spent <= cap  # the estimates were upper bounds here: no overshoot at all
        assert spent <= cap + biggest


def test_downgrade_moves_the_step_to_a_cheaper_route_that_fits() -> None:
    policies = Policies(
        budgets=BudgetPolicy(
            on_breach="downgrade", downgrade={"strong": "medium", "medium": "fast"}
        )
    )
    run = run_with(policies=policies)
    run.send(task(budget=Budget(max_cost_usd=Decimal("0.0005"))))  # only fast fits
    (request,) = run.requests()
    assert route_of(request) == "fast"
    (moved,) = events(run, "budget_downgraded")
    assert detail(moved)["from"] == "strong" and detail(moved)["to"] == "fast"
    assert run.state is not None and run.state.steps["first"].route == "fast"


def test_downgrade_stops_the_run_when_no_cheaper_route_fits() -> None:
    policies = Policies(budgets=BudgetPolicy(on_breach="downgrade", downgrade={"strong": "fast"}))
    run = run_with(policies=policies)
    run.send(task(budget=Budget(max_cost_usd=Decimal("0.00001"))))
    (result,) = run.results()
    assert result.status == RunStatus.budget_exceeded
    assert result.reason is not None
    assert result.reason.endswith("no cheaper route fits (tried strong, fast)")
    assert not run.requests()


def approve(run: Run, approval_id: str, verdict: str = "approve") -> None:
    asked = [e for e in run.emitted if isinstance(e, ApprovalRequested)]
    run.send(
        sign_decision(
            approval_id=approval_id,
            run_id="r1",
            request_digest=next(a.request_digest for a in asked if a.approval_id == approval_id),
            verdict=verdict,
            approver="user:fin",
            reason=None,
            key_id="k1",
            key=KEY,
            decided_at=T0,
        )
    )


def test_approve_on_breach_asks_and_runs_the_step_once_approved() -> None:
    policies = Policies(budgets=BudgetPolicy(on_breach="approve", approvers=["group:finance"]))
    run = run_with(policies=policies, access=ACCESS)
    run.send(task(budget=Budget(max_cost_usd=Decimal("0.001"))))
    (asked,) = [e for e in run.emitted if isinstance(e, ApprovalRequested)]
    assert asked.approvers == ["group:finance"] and asked.step == "first"
    assert asked.reason.startswith("over budget: max_cost_usd: $0.00 spent")
    assert not run.requests() and not run.results()
    approve(run, asked.approval_id)
    (request,) = run.requests()
    assert request.step == "first" and route_of(request) == "strong"


def test_approve_on_breach_rejected_ends_the_run_rejected() -> None:
    policies = Policies(budgets=BudgetPolicy(on_breach="approve", approvers=["group:finance"]))
    run = run_with(policies=policies, access=ACCESS)
    run.send(task(budget=Budget(max_cost_usd=Decimal("0.001"))))
    (asked,) = [e for e in run.emitted if isinstance(e, ApprovalRequested)]
    approve(run, asked.approval_id, "reject")
    (result,) = run.results()
    assert result.status == RunStatus.rejected and not run.requests()


# -- budgets from policy -----------------------------------------------------------------------


def test_a_task_may_loosen_its_budget_up_to_the_policy_limits() -> None:
    capped = wf(
        "workflow: w\nversion: 1\nbudget: {max_steps: 5, max_cost_usd: 1}\n"
        "steps:\n  a: {kind: transform, output: 1}\n"
    )
    policies = Policies(
        budgets=BudgetPolicy(limits=Caps(max_steps=20, max_cost_usd=Decimal(3), deadline=600))
    )
    run = run_with(capped, policies=policies)
    run.send(task(budget=Budget(max_steps=50, max_cost_usd=Decimal(2))))
    assert run.state is not None
    assert run.state.budget == Budget(max_steps=20, max_cost_usd=Decimal(2), max_seconds=600)


def test_the_policy_default_applies_to_workflows_without_a_budget() -> None:
    bare = wf("workflow: w\nversion: 1\nsteps:\n  a: {kind: transform, output: 1}\n")
    policies = Policies(budgets=BudgetPolicy(default=Caps(max_cost_usd=Decimal("0.5"))))
    run = run_with(bare, policies=policies)
    run.send(task())
    assert run.state is not None and run.state.budget.max_cost_usd == Decimal("0.5")


# -- tenant ceilings -----------------------------------------------------------------------------

CEILING = Policies(tenants={"acme": TenantCeiling(max_cost_usd=Decimal("0.05"), window=3600)})


def spend(run: Run) -> list[SpendRecorded]:
    return [e for e in run.emitted if isinstance(e, SpendRecorded)]


def test_a_model_step_under_a_ceiling_reserves_then_waits_for_the_verdict() -> None:
    ledger = SpendLedger(CEILING)
    run = run_with(policies=CEILING, ledger=ledger)
    run.send(task(tenant="acme"))
    (reserved,) = spend(run)
    assert reserved.kind == SpendKind.reserve and reserved.reservation_id == "r1/first/1"
    assert reserved.tenant == "acme" and reserved.amount_usd > 0
    assert not run.requests()
    assert run.state is not None and run.state.next_wake() == T0 + timedelta(seconds=2)
    later = T0 + timedelta(seconds=2)
    run.send(TimerFired(run_id="r1", fired_at=later), at=later)  # no verdict yet
    assert not run.requests()
    assert run.state.next_wake() == T0 + timedelta(seconds=4)  # looks again later, no busy loop
    assert ledger.apply(reserved) is True
    run.send(TimerFired(run_id="r1", fired_at=T0))
    (request,) = run.requests()
    assert request.step == "first" and request.attempt == 1
    run.send(ok(request, "done", usage=usage(30, 20)))
    (settled,) = [e for e in spend(run) if e.kind == SpendKind.settle]
    assert settled.reservation_id == "r1/first/1"
    assert settled.amount_usd == cost(50) and settled.at == reserved.at


def test_a_refused_reservation_ends_the_run_budget_exceeded() -> None:
    ledger = SpendLedger(CEILING)
    earlier = SpendRecorded(
        tenant="acme",
        reservation_id="other/x/1",
        kind=SpendKind.reserve,
        amount_usd=Decimal("0.049"),
        run_id="other",
        step="x",
        at=T0,
    )
    assert ledger.apply(earlier) is True
    run = run_with(policies=CEILING, ledger=ledger)
    run.send(task(tenant="acme"))
    (reserved,) = spend(run)
    assert ledger.apply(reserved) is False
    run.send(TimerFired(run_id="r1", fired_at=T0))
    (result,) = run.results()
    assert result.status == RunStatus.budget_exceeded
    assert result.reason is not None
    assert result.reason.startswith("tenant acme: ceiling $0.05 per 1h reached ($0.049 spent")
    assert not run.requests()


def test_other_tenants_are_not_held_up_by_a_ceiling() -> None:
    run = run_with(policies=CEILING, ledger=SpendLedger(CEILING))
    run.send(task(tenant="globex"))
    assert [r.step for r in run.requests()] == ["first"] and not spend(run)


def test_a_retry_waits_in_its_tier_after_the_verdict() -> None:
    retried = wf(
        "workflow: w\nversion: 1\nsteps:\n"
        "  a: {kind: llm, model: fast, prompt: p, retry: {attempts: 3}}\n"
    )
    ledger = SpendLedger(CEILING)
    run = run_with(retried, policies=CEILING, ledger=ledger)
    run.send(task(tenant="acme"))
    ledger.apply(spend(run)[-1])
    run.send(TimerFired(run_id="r1", fired_at=T0))
    run.send(failed(run.request("a"), "ProviderTimeout", "slow", retryable=True))
    reserve = spend(run)[-1]
    assert reserve.kind == SpendKind.reserve and reserve.reservation_id == "r1/a/2"
    ledger.apply(reserve)
    run.send(TimerFired(run_id="r1", fired_at=T0))
    (again,) = run.requests()
    assert again.attempt == 2 and again.retry_tier == "5s" and again.not_before is not None


def test_a_late_result_is_paid_for_and_settled() -> None:
    ledger = SpendLedger(CEILING)
    run = run_with(policies=CEILING, ledger=ledger)
    run.send(task(tenant="acme"))
    ledger.apply(spend(run)[-1])
    run.send(TimerFired(run_id="r1", fired_at=T0))
    first = run.request("first")
    run.send(ok(first, "a", usage=usage(10, 10)))
    run.send(ok(first, "a again", usage=usage(10, 10)))  # delivered twice: billed twice
    assert run.state is not None and run.state.usage.cost_usd == cost(40)
    (ignored,) = events(run, "result_ignored")
    assert ignored.usage is not None and ignored.usage.cost_usd == cost(20)
    assert [e.kind for e in spend(run)].count(SpendKind.settle) == 2


SHARED = Policies.model_validate(
    {"tenants": {"acme": {"max_cost_usd": "0.05"}, "*": {"max_cost_usd": "0.05"}}}
)


def test_tenants_not_listed_share_one_ceiling_and_one_ledger_key() -> None:
    ledger = SpendLedger(SHARED)
    first = run_with(policies=SHARED, ledger=ledger)
    first.send(task(tenant="new-co-1"))
    (reserved,) = spend(first)
    assert reserved.tenant == "*"  # keyed by the account: one partition, one order
    assert ledger.apply(reserved.model_copy(update={"amount_usd": Decimal("0.049")})) is True
    second = run_with(policies=SHARED, ledger=ledger)
    second.send(task("r2", tenant="new-co-2"))  # a fresh name buys no fresh ceiling
    (again,) = spend(second)
    assert ledger.apply(again) is False
    second.send(TimerFired(run_id="r2", fired_at=T0))
    (result,) = second.results()
    assert result.status == RunStatus.budget_exceeded and result.reason is not None
    assert result.reason.startswith(
        "tenant new-co-2 (the ceiling every tenant not listed shares): ceiling $0.05 per 1d"
    )
    # A tenant listed by name keeps its own ceiling.
    assert ledger.apply(entry("a/s/1", "reserve", "0.04")) is True
    # Entries an older release keyed by the unlisted tenant's own name count in the pool.
    assert ledger.apply(entry("o/s/1", "reserve", "0.01", tenant="old-name")) is False
    assert ledger.spent("whoever", T0) == Decimal("0.049")


def test_the_older_default_entry_is_the_shared_one_when_there_is_no_star() -> None:
    legacy = Policies.model_validate({"tenants": {"default": {"max_cost_usd": "1"}}})
    assert legacy.account("new-co") == legacy.account("default") == "default"
    both = Policies.model_validate(
        {"tenants": {"default": {"max_cost_usd": "1"}, "*": {"max_cost_usd": "2"}}}
    )
    assert both.account("default") == "default" and both.account("new-co") == "*"
    plain = Policies.model_validate({"tenants": {"acme": {"workflows": ["refund*"]}}})
    assert plain.account("acme") is None and plain.ceiling("acme") is None  # no ceiling given
    assert plain.account("new-co") is None


def test_which_workflows_a_tenant_may_run() -> None:
    policies = Policies.model_validate(
        {"tenants": {"acme": {"workflows": ["refund*", "triage"]}, "*": {"workflows": []}}}
    )
    assert policies.may_run("acme", "refund-big") and policies.may_run("acme", "triage")
    assert not policies.may_run("acme", "payroll")
    assert not policies.may_run("new-co", "triage")  # `workflows: []`: unknown tenants refused
    assert Policies().may_run("anyone", "anything")


# -- the ledger ------------------------------------------------------------------------------


def entry(rid: str, kind: str, amount: str, at: Any = T0, tenant: str = "acme") -> SpendRecorded:
    return SpendRecorded(
        tenant=tenant,
        reservation_id=rid,
        kind=kind,
        amount_usd=Decimal(amount),
        run_id=rid.split("/")[0],
        step="s",
        at=at,
    )


def test_the_ledger_admits_within_the_ceiling_and_settles_to_actual_cost() -> None:
    ledger = SpendLedger(CEILING)
    assert ledger.apply(entry("a/s/1", "reserve", "0.03")) is True
    assert ledger.apply(entry("b/s/1", "reserve", "0.03")) is False  # 0.06 > 0.05
    assert ledger.apply(entry("a/s/1", "settle", "0.01")) is None
    assert ledger.apply(entry("c/s/1", "reserve", "0.03")) is True  # 0.04 <= 0.05
    assert ledger.apply(entry("c/s/1", "reserve", "0.03")) is None  # a duplicate counts once
    assert ledger.apply(entry("b/s/1", "settle", "0.02")) is None  # refused: never ran
    assert ledger.spent("acme", T0) == Decimal("0.04")
    assert ledger.verdict("b/s/1") is False and ledger.verdict("zzz") is None


def test_spend_leaves_the_window() -> None:
    ledger = SpendLedger(CEILING)
    assert ledger.apply(entry("a/s/1", "reserve", "0.05")) is True
    later = T0 + timedelta(minutes=59)
    assert ledger.apply(entry("b/s/1", "reserve", "0.01", at=later)) is False
    after = T0 + timedelta(hours=1, seconds=1)
    assert ledger.apply(entry("c/s/1", "reserve", "0.04", at=after)) is True
    assert ledger.spent("acme", after) == Decimal("0.04")


@pytest.mark.parametrize("seed", range(20))
def test_overshoot_is_bounded_by_what_calls_cost_beyond_their_estimates(seed: int) -> None:
    """Two coordinators reserve concurrently; the log orders them; spend stays bounded."""
    rng = random.Random(seed)
    log: list[SpendRecorded] = []
    in_flight: list[tuple[str, Decimal]] = []
    for n in range(200):
        if in_flight and rng.random() < 0.5:
            rid, guess = in_flight.pop(rng.randrange(len(in_flight)))
            actual = guess * Decimal(rng.choice(["0.2", "0.9", "1", "1.3"]))
            log.append(entry(rid, "settle", str(actual)))
        else:
            guess = Decimal(rng.randint(1, 900)) / Decimal(100_000)
            rid = f"w{rng.randint(1, 2)}-{n}/s/1"
            log.append(entry(rid, "reserve", str(guess)))
            in_flight.append((rid, guess))
    replicas = [SpendLedger(CEILING), SpendLedger(CEILING)]
    verdicts = [[r.apply(e) for e in log] for r in replicas]
    assert verdicts[0] == verdicts[1]  # every coordinator reaches the same verdicts
    admitted = {e.reservation_id for e, v in zip(log, verdicts[0], strict=True) if v}
    final: dict[str, Decimal] = {}
    estimates: dict[str, Decimal] = {}
    for e in log:
        if e.reservation_id in admitted:
            final[e.reservation_id] = e.amount_usd
            estimates.setdefault(e.reservation_id, e.amount_usd)
    excess = sum((max(Decimal(0), final[r] - estimates[r]) for r in admitted), start=Decimal(0))
    assert sum(final.values(), start=Decimal(0)) <= Decimal("0.05") + excess


# -- routing and the cascade ---------------------------------------------------------------------

ROUTED = wf(
    """
workflow: w
version: 1
steps:
  answer:
    kind: llm
    model: medium
    routes:
      - {when: "input.text | length > 20", model: strong}
      - {when: "input.text | length < 5", model: fast}
    cascade: [medium, strong]
    prompt: "{{ input.text }}"
    output_schema: {type: object}
"""
)


@pytest.mark.parametrize(
    ("text", "route"), [("hi", "fast"), ("a moderate one", "medium"), ("x" * 30, "strong")]
)
def test_routing_rules_pick_the_route_first_match_wins(text: str, route: str) -> None:
    run = run_with(ROUTED)
    run.send(task(input={"text": text}))
    assert route_of(run.request("answer")) == route


def test_the_cascade_moves_up_when_the_answer_misses_its_schema() -> None:
    run = run_with(ROUTED)
    run.send(task(input={"text": "hi"}))
    bad = "OutputSchemaViolation"
    run.send(failed(run.request("answer"), bad, "not JSON", retryable=False))
    assert route_of(run.request("answer")) == "medium"
    run.send(failed(run.request("answer"), bad, "not JSON", retryable=False))
    assert route_of(run.request("answer")) == "strong"
    moves = [(detail(e)["from"], detail(e)["to"]) for e in events(run, "step_cascaded")]
    assert moves == [("fast", "medium"), ("medium", "strong")]
    run.send(failed(run.request("answer"), bad, "not JSON", retryable=False))
    (result,) = run.results()
    assert result.status == RunStatus.failed  # the top of the cascade failed too


def test_a_validate_rerun_escalates_the_cascade() -> None:
    checked = wf(
        """
workflow: w
version: 1
steps:
  draft: {kind: llm, model: fast, cascade: [strong], prompt: "Write"}
  check: {kind: validate, after: [draft], value: "{{ steps.draft.output }}",
          schema: {type: string, minLength: 5}, on_fail: {retry_step: draft, max: 2}}
"""
    )
    run = run_with(checked)
    run.send(task())
    run.send(ok(run.request("draft"), "no"))
    run.send(failed(run.request("check"), "ValidationFailed", "too short", retryable=False))
    again = run.request("draft")
    assert route_of(again) == "strong"
    assert detail(events(run, "step_cascaded")[0])["because"] == "check"
