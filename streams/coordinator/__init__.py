"""The coordinator: the only place that decides what a run does next.

``decide`` is the pure core; the Faust agent around it (``streams.app``) only decodes, loads
state, calls ``decide``, saves state and emits.
"""

from streams.coordinator._assignor import CopartitionedAssignor
from streams.coordinator._decide import Context, Decision, Inbound, decide
from streams.coordinator._failures import (
    CIRCUIT_OPEN,
    STEP_TIMEOUT,
    VALIDATION_FAILED,
    backoff,
)
from streams.coordinator._runtime import CoordinatorRuntime
from streams.coordinator._state import RunState, StepPhase, StepState
from streams.coordinator._transition import add_usage

__all__ = [
    "CIRCUIT_OPEN",
    "STEP_TIMEOUT",
    "VALIDATION_FAILED",
    "Context",
    "CoordinatorRuntime",
    "CopartitionedAssignor",
    "Decision",
    "Inbound",
    "RunState",
    "StepPhase",
    "StepState",
    "add_usage",
    "backoff",
    "decide",
]
