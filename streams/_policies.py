"""Organisation-wide policies: rules the coordinator applies to every workflow.

The policies file (``BATON_POLICIES_FILE``, YAML) holds rules no workflow can opt out of::

    approvals:
      - name: big-refunds
        when: "input.refund_usd > 500"          # an expression over input, run, step
        kinds: [llm, tool]                       # optional: only steps of these kinds
        steps: ["draft*"]                        # optional: step name patterns
        workflows: ["support-*"]                 # optional: workflow name patterns
        tools: ["payments.*"]                    # optional: tool name patterns (tool steps)
        approvers: [group:finance]
        quorum: 1
        timeout: 4h
        escalate_to: [group:cfo]
        on_timeout: reject
        reason: "refund of {{ input.refund_usd }} USD"

    budgets:
      default: {max_cost_usd: 0.50, deadline: 10m}   # for workflows that set no budget
      limits: {max_cost_usd: 5}                      # the most a task may ask for
      on_breach: downgrade                           # stop | downgrade | approve
      downgrade: {strong: fast}                      # each route's cheaper replacement
      approvers: [group:finance]                     # for on_breach: approve
      approval_timeout: 1h

    tenants:                                         # ceilings (rolling windows), workflows
      acme: {max_cost_usd: 200, window: 1d, workflows: ["support-*"]}
      "*": {max_cost_usd: 20, window: 1d}            # every other tenant, one shared ceiling

Before a step starts, every approval policy that matches it gates it: the run asks the
policy's approvers and waits; approved, the step starts; rejected (or timed out at the end of
the escalation path, by default), the run ends ``rejected``. Budgets: see
``streams.coordinator._budgets``; ceilings: ``streams.coordinator._ledger``.

Tenants: a tenant listed by name has its own entry; every tenant not listed gets the ``"*"``
entry (``default`` is its older spelling, used when there is no ``"*"``), and all of them
share that entry's one ceiling: naming a new tenant never buys a fresh ceiling. An entry's
``workflows`` (name patterns, default every workflow) are what the API lets its principals
run; ``workflows: []`` under ``"*"`` turns unknown tenants away.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors import TemplateError, compile_expression, compile_template
from streams.workflow import Duration, EscalationLevel, Principal
from streams.workflow._spec import _levels
from topics import ConfigurationError, describe_validation_error, load_yaml

__all__ = [
    "OTHER_TENANTS",
    "ApprovalPolicy",
    "BudgetPolicy",
    "Caps",
    "Policies",
    "TenantCeiling",
    "TenantPolicy",
    "load_policies",
]

#: The ``tenants`` entry for every tenant not listed by name.
OTHER_TENANTS = "*"
#: The older spelling of ``"*"`` (used when there is no ``"*"`` entry).
_LEGACY_OTHERS = "default"


class ApprovalPolicy(BaseModel):
    """A rule that gates matching steps behind an approval."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    when: str | None = Field(default=None, description="Expression over input, run, step.")
    kinds: list[str] = Field(default_factory=list)
    steps: list[str] = Field(default_factory=list, description="Step name patterns.")
    workflows: list[str] = Field(default_factory=list, description="Workflow name patterns.")
    tools: list[str] = Field(default_factory=list, description="Tool name patterns.")
    approvers: list[Principal] = Field(min_length=1)
    quorum: int = Field(default=1, ge=1, le=20)
    timeout: Duration = Field(default=86400.0)
    escalate_to: list[EscalationLevel] = Field(default_factory=list)
    on_timeout: Literal["reject", "approve", "fail"] = "reject"
    reason: str = ""

    def matches(self, workflow: str, step: dict[str, Any], context: dict[str, Any]) -> bool:
        """Whether the policy gates a step (``step``: name, kind, tool, ...).

        Raises:
            TemplateRenderError: The condition does not evaluate.
        """
        if self.kinds and step["kind"] not in self.kinds:
            return False
        if self.steps and not _any(step["name"], self.steps):
            return False
        if self.workflows and not _any(workflow, self.workflows):
            return False
        if self.tools and not (step.get("tool") and _any(str(step["tool"]), self.tools)):
            return False
        if self.when is None:
            return True
        return compile_expression(self.when).holds({**context, "step": step})


def _any(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class Caps(BaseModel):
    """Budget caps; a missing cap is no cap."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_steps: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: Decimal | None = Field(default=None, ge=0)
    deadline: Duration | None = None


class BudgetPolicy(BaseModel):
    """How budgets are set and what happens when a model step would break one.

    Attributes:
        default: Caps for workflows that set none.
        limits: The most a task may ask for; without it, a task may only tighten its
            workflow's budget.
        on_breach: ``stop`` the run (``budget_exceeded``), ``downgrade`` the step to a
            cheaper route that fits (then stop if none does), or ask for ``approve``-al.
        downgrade: Each route's cheaper replacement, tried in turn (``strong: fast``).
        approvers: Who may approve going over budget (``on_breach: approve``).
        approval_timeout: How long they have.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: Caps = Field(default_factory=Caps)
    limits: Caps | None = None
    on_breach: Literal["stop", "downgrade", "approve"] = "stop"
    downgrade: dict[str, str] = Field(default_factory=dict)
    approvers: list[Principal] = Field(default_factory=list)
    approval_timeout: Duration = Field(default=3600.0)


class TenantPolicy(BaseModel):
    """What applies to one tenant (or, under ``"*"``, to every tenant not listed).

    Attributes:
        max_cost_usd: Its spending ceiling over ``window``; ``None``: no ceiling.
        window: The rolling window (at most 30 days: ``baton.spend`` keeps 35).
        workflows: Name patterns of the workflows its tasks may run through the API
            (default: every workflow; ``[]``: none).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_cost_usd: Decimal | None = Field(default=None, ge=0)
    window: Duration = Field(
        default=86400.0,
        le=30 * 86400,
        description="The rolling window (at most 30 days: baton.spend keeps 35).",
    )
    workflows: list[str] = Field(default_factory=lambda: ["*"])


#: The older name of ``TenantPolicy``.
TenantCeiling = TenantPolicy


class Policies(BaseModel):
    """Every policy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approvals: list[ApprovalPolicy] = Field(default_factory=list)
    budgets: BudgetPolicy = Field(default_factory=BudgetPolicy)
    tenants: dict[str, TenantPolicy] = Field(
        default_factory=dict, description='By tenant; "*" applies to every other tenant.'
    )

    def _entry(self, tenant: str) -> str | None:
        for name in (tenant, OTHER_TENANTS, _LEGACY_OTHERS):
            if name in self.tenants:
                return name
        return None

    def account(self, tenant: str) -> str | None:
        """The ledger account a tenant's spend counts against (``None``: no ceiling).

        A tenant listed by name has its own; every other tenant shares the ``"*"`` entry's.
        """
        entry = self._entry(tenant)
        if entry is None or self.tenants[entry].max_cost_usd is None:
            return None
        return entry

    def ceiling(self, tenant: str) -> TenantPolicy | None:
        """The entry whose ceiling a tenant's spend counts against, if it has one."""
        account = self.account(tenant)
        return None if account is None else self.tenants[account]

    def may_run(self, tenant: str, workflow: str) -> bool:
        """Whether a tenant's tasks may run a workflow (its entry's ``workflows``)."""
        entry = self._entry(tenant)
        return entry is None or _any(workflow, self.tenants[entry].workflows)

    def check_routes(self, routes: Collection[str], origin: Path | None) -> None:
        """Fail if ``budgets.downgrade`` names a route the model catalog does not have.

        Raises:
            ConfigurationError: Names the file, the field and the route.
        """
        if not routes:
            return  # no catalog here: the processors' workers check their own
        for source, target in self.budgets.downgrade.items():
            for route in (source, target):
                if route not in routes:
                    raise ConfigurationError(
                        f"{origin or 'policies'}: budgets.downgrade.{source}: unknown route "
                        f"{route!r} (known: {', '.join(sorted(routes))})"
                    )


def load_policies(path: Path | None) -> Policies:
    """Read and check the policies file (``None``: no policies).

    Raises:
        ConfigurationError: Unreadable, invalid, or a template that does not compile; names
            the file and the field.
    """
    if path is None:
        return Policies()
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"), origin=str(path)) or {}
    except OSError as exc:
        raise ConfigurationError(f"cannot read policies file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"policies file {path} is not valid YAML: {exc}") from exc
    if isinstance(raw, dict):
        for rule in raw.get("approvals", []) or []:
            if isinstance(rule, dict) and "escalate_to" in rule:
                rule["escalate_to"] = _levels(rule["escalate_to"])
    try:
        policies = Policies.model_validate(raw)
    except ValidationError as exc:
        raise ConfigurationError(f"{path}: {describe_validation_error(exc)}") from None
    budgets = policies.budgets
    if budgets.on_breach == "approve" and not budgets.approvers:
        raise ConfigurationError(f"{path}: budgets.approvers: on_breach: approve needs approvers")
    names = [p.name for p in policies.approvals]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{path}: approvals: policy names must be unique: {names}")
    for index, policy in enumerate(policies.approvals):
        try:
            if policy.when is not None:
                compile_expression(policy.when)
            compile_template(policy.reason)
        except TemplateError as exc:
            raise ConfigurationError(f"{path}: approvals[{index}]: {exc}") from None
    return policies
