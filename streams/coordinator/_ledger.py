"""Tenant ceilings: a spend ledger every coordinator replays in the same order.

A tenant with a ceiling (``policies.yaml`` ``tenants:``) may spend at most ``max_cost_usd``
in any rolling ``window``. Before one of its model steps runs, the step's coordinator writes a
``reserve`` entry (the step's estimated cost) to ``baton.spend``, keyed by tenant, in the
same transaction as the rest of the transition, and parks the step. Every coordinator reads
the whole ledger and applies the entries in log order, one tenant per partition, so all of
them reach the same verdict on every reservation without talking to each other:

    admitted  <=>  spend in the window before it + its estimate <= the ceiling

The step's coordinator then runs the step (admitted) or ends the run ``budget_exceeded``.
When the step's result arrives, a ``settle`` entry replaces the estimate with what the call
cost. An attempt whose result never comes keeps its estimate.

So the tenant's spend in any window exceeds its ceiling by at most what admitted calls cost
beyond their estimates: ``sum(max(0, actual - estimate))``. That is zero when the estimate
is an upper bound (``max_tokens`` caps the completion; the prompt estimate is ~4 characters a
token), and otherwise small next to the ceiling. It does not depend on how many workers
there are or how fast they see each other's spend: a reservation is judged against every
reservation before it in the log, whichever worker wrote it.

Tenants not listed by name in ``policies.yaml`` share one account, the ``"*"`` entry's
(``Policies.account``): their entries are keyed by the account, so they are ordered on one
partition like any tenant's, and a new tenant name never starts a fresh ceiling.

An operator may change a tenant's ceiling at run time (``baton control caps``): the
coordinator that reads the command writes a ``cap`` entry (``uncap`` to return to
policies.yaml's) to the tenant's ledger partition, so every coordinator judges the
reservations after it, and none before it, against the new ceiling. A worker that starts
after the entry left its window takes the ceiling from the control topic instead (``seed``);
an entry older than the ceiling in force changes nothing.

This module is the pure part (tested without Kafka); ``_runtime`` feeds it the topic.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from streams._policies import Policies
from topics import SpendKind, SpendRecorded

__all__ = ["SpendLedger"]


@dataclass
class _Tenant:
    """One tenant's entries in the window: amounts by reservation, oldest first."""

    amounts: dict[str, Decimal] = field(default_factory=dict)
    times: dict[str, datetime] = field(default_factory=dict)
    order: deque[str] = field(default_factory=deque)
    total: Decimal = Decimal(0)

    def forget_before(self, start: datetime) -> None:
        while self.order and self.times[self.order[0]] <= start:
            gone = self.order.popleft()
            self.total -= self.amounts.pop(gone)
            del self.times[gone]

    def put(self, reservation: str, at: datetime, amount: Decimal) -> None:
        old = self.amounts.get(reservation)
        if old is None:
            self.order.append(reservation)
            self.times[reservation] = at
            old = Decimal(0)
        self.amounts[reservation] = amount
        self.total += amount - old


class SpendLedger:
    """The verdicts on reservations, from the ledger entries applied in order.

    Args:
        policies: The tenants' ceilings (every coordinator must have the same).
    """

    #: Verdicts are kept this long after the reservation (a parked step reads its verdict
    #: within seconds; a worker taking a run over, within its session timeout).
    KEEP_VERDICTS = timedelta(hours=1)

    def __init__(self, policies: Policies) -> None:
        self.policies = policies
        self._tenants: dict[str, _Tenant] = {}
        self._verdicts: dict[str, bool] = {}
        self._verdict_times: deque[tuple[datetime, str]] = deque()
        #: Ceilings set at run time, by account: when set, and the amount (``None``: back
        #: to policies.yaml's).
        self._caps: dict[str, tuple[datetime, Decimal | None, str]] = {}
        #: Entries applied so far.
        self.applied = 0

    def seed(self, account: str, at: datetime, amount: Decimal | None, by: str) -> None:
        """A ceiling set at run time before the ledger's window (from the control topic)."""
        self._set_cap(account, at, amount, by)

    def _set_cap(self, account: str, at: datetime, amount: Decimal | None, by: str) -> None:
        current = self._caps.get(account)
        if current is None or current[0] < at:
            self._caps[account] = (at, amount, by)

    def ceiling_usd(self, tenant: str) -> Decimal | None:
        """A tenant's ceiling now: set at run time, else policies.yaml's (``None``: none)."""
        account = self.policies.account(tenant)
        if account is None:
            return None
        cap = self._caps.get(account)
        if cap is not None and cap[1] is not None:
            return cap[1]
        ceiling = self.policies.tenants[account]
        return ceiling.max_cost_usd

    def cap_source(self, tenant: str) -> str | None:
        """Who set a tenant's ceiling at run time (``caps/<command id>``), or ``None``."""
        account = self.policies.account(tenant)
        cap = self._caps.get(account) if account is not None else None
        return cap[2] if cap is not None and cap[1] is not None else None

    def apply(self, entry: SpendRecorded) -> bool | None:
        """Apply one entry; for a new reservation, the verdict on it (else ``None``)."""
        self.applied += 1
        account = self.policies.account(entry.tenant)
        ceiling = self.policies.ceiling(entry.tenant)
        if entry.kind in (SpendKind.cap, SpendKind.uncap):
            if account is not None:
                amount = entry.amount_usd if entry.kind == SpendKind.cap else None
                self._set_cap(account, entry.at, amount, entry.reservation_id)
            return None
        if entry.kind == SpendKind.settle:
            if account is not None and self._verdicts.get(entry.reservation_id) is not False:
                tenant = self._tenants.setdefault(account, _Tenant())
                at = tenant.times.get(entry.reservation_id, entry.at)
                tenant.put(entry.reservation_id, at, entry.amount_usd)
            return None
        if entry.reservation_id in self._verdicts:
            return None  # written twice (at least once): the first one counts
        admitted = True
        limit = self.ceiling_usd(entry.tenant)
        if account is not None and ceiling is not None and limit is not None:
            tenant = self._tenants.setdefault(account, _Tenant())
            tenant.forget_before(entry.at - timedelta(seconds=ceiling.window))
            admitted = tenant.total + entry.amount_usd <= limit
            if admitted:
                tenant.put(entry.reservation_id, entry.at, entry.amount_usd)
        self._remember(entry.reservation_id, entry.at, admitted)
        return admitted

    def verdict(self, reservation_id: str) -> bool | None:
        """Whether a reservation was admitted; ``None`` while it has not been read yet."""
        return self._verdicts.get(reservation_id)

    def spent(self, tenant: str, now: datetime) -> Decimal:
        """A tenant's spend (settled, or reserved and not settled yet) in its window.

        For a tenant not listed by name: the spend of every such tenant (one account).
        """
        account = self.policies.account(tenant)
        state = self._tenants.get(account) if account is not None else None
        ceiling = self.policies.ceiling(tenant)
        if state is None:
            return Decimal(0)
        if ceiling is not None:
            state.forget_before(now - timedelta(seconds=ceiling.window))
        return state.total

    def _remember(self, reservation_id: str, at: datetime, admitted: bool) -> None:
        self._verdicts[reservation_id] = admitted
        self._verdict_times.append((at, reservation_id))
        while self._verdict_times and self._verdict_times[0][0] < at - self.KEEP_VERDICTS:
            _, old = self._verdict_times.popleft()
            self._verdicts.pop(old, None)
