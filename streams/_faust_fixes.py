"""Workarounds for faust-streaming behaviour that breaks baton's guarantees.

baton runs only its processor agents on Faust (the coordinator has its own runtime, see
docs/decisions/0001-coordinator-runtime.md). Applied once, when a worker is built.
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer

__all__ = ["apply"]

_applied = False


def _keep_fetching(self: Any, tp: Any) -> None:
    """Under buffer pressure, keep the partition: the full queue blocks the fetcher instead.

    Faust drops a partition from fetching when its stream buffer is under pressure and
    relies on a one-shot "pressure dropped" callback to add it back. After a restart with a
    backlog that callback can be lost, and the partition is never fetched again: its runs
    stall silently. Blocking on the full queue (which Faust already does for queues that are
    completely full) gives the same backpressure without the bookkeeping.
    """


def apply() -> None:
    """Apply every workaround (idempotent)."""
    global _applied
    if _applied:
        return
    Consumer.on_buffer_full = _keep_fetching  # type: ignore[method-assign]
    _applied = True
