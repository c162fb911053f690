"""Operators' scope commands: paused tenants and workflows, tenants' caps at run time.

``pause``, ``resume`` and ``caps`` commands name a tenant or a workflow, not a run, so no one
coordinator owns them: they are keyed by their scope on the compacted ``baton.control``
topic (``ControlCommand.scope``), which keeps the last command of every scope, and every
worker reads all of it (``ControlFollower``, ``_control_feed``) into a ``ControlBook``: this
module, the pure part.

A worker reads the topic to its end before its coordinator takes any partition, so a
restart or a partition moving to another worker never forgets a pause: the topic is the
durable state, and every worker folds it the same way.

``decide`` asks the book whether a run is held (``hold_for``). A held run dispatches
nothing new: a step in flight finishes, then the run waits with a ``run_paused`` event that
names the hold. When a resume is read, the follower wakes the held runs this worker owns,
oldest pause first; each goes on with ``run_resumed``. A run the wake misses (a batch that
did not commit, a partition moving meanwhile) looks again at its ``hold_check_at``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from pydantic import JsonValue

from topics import ControlAction, ControlCommand

__all__ = ["HOLD_RECHECK", "ControlBook", "Hold", "usd"]

#: How often a held run looks at the book again by itself (a missed wake costs this much).
HOLD_RECHECK = timedelta(seconds=30)


def usd(amount: Decimal | None) -> str | None:
    """An amount as operators write it (``2.5``, not ``2.500000000000``)."""
    if amount is None:
        return None
    return format(amount.normalize(), "f")


@dataclass(frozen=True)
class Hold:
    """A pause in force over a run.

    Attributes:
        key: The pause's scope (``tenant/<t>`` or ``workflow/<w>``).
        command: The ``pause`` command.
    """

    key: str
    command: ControlCommand

    def detail(self) -> dict[str, JsonValue]:
        """What a ``run_paused`` event says about it."""
        scope, _, name = self.key.partition("/")
        return {
            "reason": f"{scope}_paused",
            scope: name,
            "command_id": self.command.command_id,
            "issued_by": self.command.issued_by,
            "why": self.command.reason,
            "since": self.command.issued_at.isoformat(),
        }


@dataclass
class ControlBook:
    """The scope commands in force, from the control topic applied in log order.

    Attributes:
        pauses: The ``pause`` in force, by scope key.
        resumes: The last ``resume`` of each scope not paused now (named by ``run_resumed``).
        caps: Tenants' ceilings set at run time, by tenant (``caps`` with a value).
    """

    pauses: dict[str, ControlCommand] = field(default_factory=dict)
    resumes: dict[str, ControlCommand] = field(default_factory=dict)
    caps: dict[str, ControlCommand] = field(default_factory=dict)

    def apply(self, command: ControlCommand) -> bool:
        """Apply one scope command; whether it lifted a pause (held runs may go on)."""
        key = command.scope
        if key is None:
            return False
        if command.action == ControlAction.pause:
            self.pauses[key] = command
            self.resumes.pop(key, None)
            return False
        if command.action == ControlAction.resume:
            self.resumes[key] = command
            return self.pauses.pop(key, None) is not None
        assert command.tenant is not None, "a caps command names its tenant"
        if command.max_cost_usd is None:
            self.caps.pop(command.tenant, None)
        else:
            self.caps[command.tenant] = command
        return False

    def hold_for(self, tenant: str, workflow: str) -> Hold | None:
        """The pause that holds a run of this tenant and workflow (the tenant's first)."""
        for key in (f"tenant/{tenant}", f"workflow/{workflow}"):
            command = self.pauses.get(key)
            if command is not None:
                return Hold(key, command)
        return None

    def resume_of(self, key: str) -> ControlCommand | None:
        """The resume that lifted a pause, while that scope is not paused again."""
        return self.resumes.get(key)

    def cap(self, tenant: str) -> Decimal | None:
        """A tenant's ceiling set at run time, or ``None`` (policies.yaml's holds)."""
        command = self.caps.get(tenant)
        return command.max_cost_usd if command is not None else None

    def view(self) -> dict[str, Any]:
        """What is in force, for the API and the CLI."""

        def item(command: ControlCommand) -> dict[str, Any]:
            return {
                "command_id": command.command_id,
                "issued_by": command.issued_by,
                "issued_at": command.issued_at.isoformat(),
                "reason": command.reason,
            }

        return {
            "paused": {
                "tenants": {
                    key.removeprefix("tenant/"): item(c)
                    for key, c in sorted(self.pauses.items())
                    if key.startswith("tenant/")
                },
                "workflows": {
                    key.removeprefix("workflow/"): item(c)
                    for key, c in sorted(self.pauses.items())
                    if key.startswith("workflow/")
                },
            },
            "caps": {
                tenant: {**item(c), "max_cost_usd": usd(c.max_cost_usd)}
                for tenant, c in sorted(self.caps.items())
            },
        }
