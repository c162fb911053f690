"""When each run owned by this worker next needs attention (a step deadline, the run's cap).

The coordinator notes every run's next wake-up here after each decision; its loop pops the
due ones (a bounded number per pass) and lets ``decide`` look at each, inside the open batch
of the run's partition, so the transition commits like any other. Nothing goes through a
topic. The index is memory only: after a rebalance it is rebuilt from the stored runs'
headers, so it needs no changelog of its own.

A run that is due but that ``decide`` leaves as it is (nothing to do yet, say a workflow
version not deployed here) is looked at again after a growing pause (1 s, 2 s, ... 60 s),
never in a tight loop: a hundred thousand runs past their deadlines cost a hundred thousand
decisions once, not every few seconds.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime

__all__ = ["WakeIndex"]

_FIRST_PAUSE_S = 1.0
_LONGEST_PAUSE_S = 60.0


class WakeIndex:
    """A min-heap of (due time, run id) with one live entry per run."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._idle: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, run_id: str, when: datetime | float | None) -> None:
        """Record a run's next wake-up (``None``: nothing due, e.g. the run ended)."""
        if when is None:
            self._due.pop(run_id, None)
            self._idle.pop(run_id, None)
            return
        due = when if isinstance(when, float | int) else when.timestamp()
        if self._due.get(run_id) == due:
            return
        self._due[run_id] = due
        heapq.heappush(self._heap, (due, run_id))

    def next_due(self) -> float | None:
        """The earliest due time (epoch seconds), or ``None``."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float, limit: int) -> list[str]:
        """Up to ``limit`` runs due at ``now``, earliest first (they leave the index)."""
        due: list[str] = []
        while len(due) < limit:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _, run_id = heapq.heappop(self._heap)
            del self._due[run_id]
            due.append(run_id)
        return due

    def unchanged(self, run_id: str, when: datetime | None, now: float) -> None:
        """A due run that ``decide`` left as it was: look again later, after a pause.

        Args:
            run_id: The run.
            when: Its next wake-up by its state.
            now: The time it was looked at.
        """
        if when is None:
            self.schedule(run_id, None)
            return
        misses = self._idle.get(run_id, 0)
        pause = min(_FIRST_PAUSE_S * 2**misses, _LONGEST_PAUSE_S)
        self._idle[run_id] = misses + 1
        self.schedule(run_id, max(when.timestamp(), now + pause))

    def moved(self, run_id: str) -> None:
        """The run's state changed: its pauses start again from the shortest."""
        self._idle.pop(run_id, None)

    def retain(self, keep: Callable[[str], bool]) -> None:
        """Forget every run ``keep`` says no to (its partition moved to another worker)."""
        self._due = {run_id: due for run_id, due in self._due.items() if keep(run_id)}
        self._idle = {run_id: n for run_id, n in self._idle.items() if keep(run_id)}
        self._heap = [(due, run_id) for run_id, due in self._due.items()]
        heapq.heapify(self._heap)

    def clear(self) -> None:
        """Forget everything."""
        self._due.clear()
        self._heap.clear()
        self._idle.clear()

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
