"""The coordinator: the only place that decides what a run does next.

``decide`` is the pure core; the Faust agent around it (``streams.app``) only decodes, loads
state, calls ``decide``, saves state and emits.
"""

from streams.coordinator._assignor import CopartitionedAssignor
from streams.coordinator._decide import (
    VALIDATION_FAILED,
    Context,
    Decision,
    Inbound,
    add_usage,
    decide,
)
from streams.coordinator._runtime import CoordinatorRuntime
from streams.coordinator._state import RunState, StepPhase, StepState

__all__ = [
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
    "decide",
]
