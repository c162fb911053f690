"""Budgets: before every model call, what it may cost; after it, what it did cost.

A run's caps (``max_steps``, ``max_tokens``, ``max_cost_usd``, ``deadline``) come from its
workflow (else ``policies.yaml`` ``budgets.default``), tightened by the task, or loosened by
it up to ``budgets.limits`` when the policies allow that.

Before each attempt of a model step (``llm``, ``agent``) the coordinator estimates the call:
prompt tokens ~ the JSON text of the messages (and tool definitions) at 4 characters a token,
completion tokens = the step's ``max_tokens``, else the route's ``max_output_tokens``, else
1024, priced from the model catalog. If the run's spend so far, plus the estimates of its
other calls in flight, plus this estimate, would pass ``max_tokens`` or ``max_cost_usd``, the
policy's ``on_breach`` applies:

- ``stop``: the run ends ``budget_exceeded`` and the call is never made;
- ``downgrade``: the step moves to the cheaper route ``budgets.downgrade`` names for its
  route (and on down that chain) that fits; if none fits, the run stops;
- ``approve``: the step waits for ``budgets.approvers``; approved, it runs (and is not
  checked against the run's caps again); rejected or timed out, the run ends ``rejected``.

So a run never starts a call its caps cannot pay for, by estimate: it overshoots a cap only
by what calls cost beyond their estimates, never by more than one call's estimate when the
estimate bounds the call (a completion never exceeds ``max_tokens``). An approved call is
the exception, by design.

Then the tenant's ceiling (``_ledger``): the estimate is reserved in the tenant's ledger
account (its own when ``policies.yaml`` lists it, else the one every unlisted tenant shares) and
the step waits for the verdict, which every coordinator computes the same way. When the
call's result arrives, its actual usage is added to the run and settled in the ledger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from processors import ModelCatalog
from streams.coordinator._approvals import BUDGET_GATE, ask_budget_approval
from streams.coordinator._state import Reservation, StepPhase
from topics import (
    Budget,
    RetryTier,
    RunStatus,
    SpendKind,
    SpendRecorded,
    StepKind,
    StepRequested,
    Usage,
)

if TYPE_CHECKING:
    from streams._policies import Policies
    from streams.coordinator._transition import Transition
    from streams.workflow import Workflow

__all__ = [
    "BUDGET_GATE",
    "DEFAULT_OUTPUT_TOKENS",
    "MODEL_KINDS",
    "admit",
    "budget_for",
    "estimate",
    "settle",
]

#: Step kinds whose attempts call a model (and are estimated, capped and settled).
MODEL_KINDS = frozenset({StepKind.llm, StepKind.agent})
#: Completion tokens assumed when neither the step nor the route caps them.
DEFAULT_OUTPUT_TOKENS = 1024
#: How often a step waiting for its ledger verdict looks again (in case a nudge was lost).
VERDICT_POLL = timedelta(seconds=2)


@dataclass(frozen=True)
class _Breach:
    cap: str
    text: str


def estimate(request: StepRequested, models: ModelCatalog | None) -> Usage:
    """What one model call may cost: tokens and money, from its request and the catalog."""
    params = request.params if isinstance(request.params, dict) else {}
    route = params.get("route")
    spec = None
    if models is not None and isinstance(route, str):
        spec = models.routes.get(route)
    messages = params.get("messages")
    prompt_chars = sum(len(orjson.dumps(m)) for m in messages) if isinstance(messages, list) else 0
    if params.get("tools"):
        prompt_chars += len(orjson.dumps(params["tools"]))
    if params.get("output_schema"):
        prompt_chars += len(orjson.dumps(params["output_schema"]))
    input_tokens = math.ceil(prompt_chars / 4)
    max_tokens = params.get("max_tokens")
    output_tokens = (
        max_tokens
        if isinstance(max_tokens, int) and max_tokens > 0
        else (spec.max_output_tokens if spec is not None else None) or DEFAULT_OUTPUT_TOKENS
    )
    cost = spec.cost(input_tokens, output_tokens) if spec is not None else Decimal(0)
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        route=route if isinstance(route, str) else None,
    )


def admit(
    t: Transition,
    name: str,
    request: StepRequested,
    rebuild: Any,
    wait: tuple[RetryTier, float] | None,
) -> tuple[StepRequested, Usage] | None:
    """Whether one attempt of a model step may go: the request to send, and its estimate.

    ``None`` when it may not go now: the run stopped, or the step waits (for an approval or
    the ledger's verdict; a retry's ``wait`` is kept for when it goes). ``rebuild()``
    renders the request again after a downgrade.
    """
    step = t.steps[name]
    reservation_id = f"{t.old.run_id}/{name}/{request.attempt}"
    held = step.reservation
    if held is not None and held.reservation_id == reservation_id:
        return _verdict(t, name, request, held)
    guess = estimate(request, t.context.models)
    breach = _breach(t, name, guess)
    if breach is not None and BUDGET_GATE not in step.cleared:
        budgets = t.context.policies.budgets
        if budgets.on_breach == "downgrade":
            found = _downgrade(t, name, request, rebuild, breach)
            if found is None:
                return None
            request, guess = found
        elif budgets.on_breach == "approve":
            t.set_step(name, phase=StepPhase.pending)
            ask_budget_approval(t, name, f"over budget: {breach.text}")
            return None
        else:
            _stop(t, name, breach.text)
            return None
    account = t.context.policies.account(t.old.tenant)
    if account is None:
        return request, guess
    t.set_step(
        name,
        phase=StepPhase.pending,
        reservation=Reservation(
            reservation_id=reservation_id,
            estimate=guess,
            at=t.now,
            check_at=t.now + VERDICT_POLL,
            tier=wait[0].name if wait else None,
            wait_s=wait[1] if wait else None,
        ),
    )
    t.emit.append(
        SpendRecorded(
            tenant=account,
            reservation_id=reservation_id,
            kind=SpendKind.reserve,
            amount_usd=guess.cost_usd,
            run_id=t.old.run_id,
            step=name,
            at=t.now,
        )
    )
    t.note(
        "spend_reserved",
        name,
        request.attempt,
        {"reservation_id": reservation_id, "estimate_usd": str(guess.cost_usd)},
    )
    return None


def _verdict(
    t: Transition, name: str, request: StepRequested, held: Reservation
) -> tuple[StepRequested, Usage] | None:
    ledger = t.context.ledger
    verdict = ledger.verdict(held.reservation_id) if ledger is not None else None
    if verdict is None:
        if held.check_at <= t.now:
            t.set_step(name, reservation=held.model_copy(update={"check_at": t.now + VERDICT_POLL}))
        return None
    if verdict:
        return request, held.estimate
    ceiling = t.context.policies.ceiling(t.old.tenant)
    assert ceiling is not None and ceiling.max_cost_usd is not None, "reserved under a ceiling"
    assert ledger is not None, "a verdict comes from the ledger"
    spent = ledger.spent(t.old.tenant, t.now)
    limit = ledger.ceiling_usd(t.old.tenant)
    source = ledger.cap_source(t.old.tenant)
    shared = t.context.policies.account(t.old.tenant) != t.old.tenant
    whose = " (the ceiling every tenant not listed shares)" if shared else ""
    set_by = f", set at run time by {source}" if source else ""
    t.set_step(name, reservation=None)
    _stop(
        t,
        name,
        f"tenant {t.old.tenant}{whose}: ceiling ${_usd(limit or Decimal(0))} per "
        f"{_span(ceiling.window)}{set_by} reached (${_usd(spent)} spent in the window; "
        f"{name} needs ~${_usd(held.estimate.cost_usd)})",
    )
    return None


def settle(t: Transition, name: str, attempt: int, usage: Usage | None) -> None:
    """Record what one attempt of a model step cost in its tenant's ledger."""
    account = t.context.policies.account(t.old.tenant)
    if account is None:
        return
    reservation_id = f"{t.old.run_id}/{name}/{attempt}"
    held = t.steps[name].reservation
    at = held.at if held is not None and held.reservation_id == reservation_id else t.now
    t.emit.append(
        SpendRecorded(
            tenant=account,
            reservation_id=reservation_id,
            kind=SpendKind.settle,
            amount_usd=usage.cost_usd if usage is not None else Decimal(0),
            run_id=t.old.run_id,
            step=name,
            at=at,
        )
    )


def _breach(t: Transition, name: str, guess: Usage) -> _Breach | None:
    budget: Budget = t.old.budget
    if budget.max_tokens is None and budget.max_cost_usd is None:
        return None
    spent: Usage = t.get("usage")
    tokens = spent.input_tokens + spent.output_tokens
    cost = spent.cost_usd
    for other, step in t.steps.items():
        if other != name and step.phase == StepPhase.dispatched and step.estimate is not None:
            tokens += step.estimate.input_tokens + step.estimate.output_tokens
            cost += step.estimate.cost_usd
    need_tokens = guess.input_tokens + guess.output_tokens
    if budget.max_tokens is not None and tokens + need_tokens > budget.max_tokens:
        return _Breach(
            "max_tokens",
            f"max_tokens: {tokens} used or in flight, {name} may use ~{need_tokens} more "
            f"(cap {budget.max_tokens})",
        )
    if budget.max_cost_usd is not None and cost + guess.cost_usd > budget.max_cost_usd:
        return _Breach(
            "max_cost_usd",
            f"max_cost_usd: ${_usd(cost)} spent or in flight, {name} may cost "
            f"~${_usd(guess.cost_usd)} more on {guess.route} (cap ${_usd(budget.max_cost_usd)})",
        )
    return None


def _downgrade(
    t: Transition, name: str, request: StepRequested, rebuild: Any, breach: _Breach
) -> tuple[StepRequested, Usage] | None:
    chain = t.context.policies.budgets.downgrade
    step = t.steps[name]
    route = step.current_route
    tried = [route]
    while route in chain and chain[route] not in tried:
        cheaper = chain[route]
        tried.append(cheaper)
        routes = list(t.steps[name].routes)
        routes[step.route_index] = cheaper
        t.set_step(name, routes=routes)
        request = rebuild()
        guess = estimate(request, t.context.models)
        if _breach(t, name, guess) is None:
            t.note(
                "budget_downgraded",
                name,
                request.attempt,
                {"from": tried[0], "to": cheaper, "estimate_usd": str(guess.cost_usd)},
            )
            return request, guess
        route = cheaper
    _stop(t, name, f"{breach.text}; no cheaper route fits (tried {', '.join(map(str, tried))})")
    return None


def _stop(t: Transition, name: str, why: str) -> None:
    t.note("budget_exceeded", name, detail={"reason": why})
    t.finish(RunStatus.budget_exceeded, why)


def budget_for(workflow: Workflow, asked: Budget | None, policies: Policies) -> Budget:
    """A run's caps: the workflow's (else the policy default), then the task's.

    Without ``budgets.limits`` a task may only tighten its caps; with them, it may set any
    cap up to the limit.
    """
    spec = workflow.spec.budget
    default = policies.budgets.default
    limits = policies.budgets.limits

    def first(*values: Any) -> Any:
        return next((v for v in values if v is not None), None)

    base = Budget(
        max_steps=first(spec.max_steps, default.max_steps),
        max_tokens=first(spec.max_tokens, default.max_tokens),
        max_cost_usd=first(spec.max_cost_usd, default.max_cost_usd),
        max_seconds=first(spec.deadline, default.deadline),
    )
    if limits is not None:
        base = Budget(
            max_steps=_tighter(base.max_steps, limits.max_steps),
            max_tokens=_tighter(base.max_tokens, limits.max_tokens),
            max_cost_usd=_tighter(base.max_cost_usd, limits.max_cost_usd),
            max_seconds=_tighter(base.max_seconds, limits.deadline),
        )
    if asked is None:
        return base
    if limits is None:
        return Budget(
            max_steps=_tighter(base.max_steps, asked.max_steps),
            max_tokens=_tighter(base.max_tokens, asked.max_tokens),
            max_cost_usd=_tighter(base.max_cost_usd, asked.max_cost_usd),
            max_seconds=_tighter(base.max_seconds, asked.max_seconds),
        )
    return Budget(
        max_steps=_within(base.max_steps, asked.max_steps, limits.max_steps),
        max_tokens=_within(base.max_tokens, asked.max_tokens, limits.max_tokens),
        max_cost_usd=_within(base.max_cost_usd, asked.max_cost_usd, limits.max_cost_usd),
        max_seconds=_within(base.max_seconds, asked.max_seconds, limits.deadline),
    )


def _tighter(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else min(a, b)


def _within(base: Any, asked: Any, limit: Any) -> Any:
    return base if asked is None else _tighter(asked, limit)


def _usd(value: Decimal) -> str:
    """Dollars as people write them: at least cents, no trailing zeros past them."""
    text = f"{value.normalize():f}"
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
