"""Step requests as the coordinator sends them, for processor tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from topics import StepKind, StepRequested

#: When every request built here was dispatched.
DISPATCHED_AT = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)


def step_request(
    kind: StepKind,
    params: Any,
    context: Any = None,
    *,
    step: str = "s",
    attempt: int = 1,
    deadline: timedelta = timedelta(days=3650),
    **overrides: Any,
) -> StepRequested:
    """A ``StepRequested`` with sensible defaults; ``deadline`` is counted from dispatch."""
    fields: dict[str, Any] = {
        "run_id": "run-1",
        "step": step,
        "kind": kind,
        "attempt": attempt,
        "idempotency_key": f"run-1/{step}",
        "workflow": "wf",
        "workflow_version": "abc123",
        "tenant": "acme",
        "params": params,
        "context": context,
        "dispatched_at": DISPATCHED_AT,
        "deadline_at": DISPATCHED_AT + deadline,
    }
    fields.update(overrides)
    return StepRequested(**fields)
