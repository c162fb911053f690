"""When each run owned by this worker next needs attention (a step deadline, the run's cap).

The coordinator notes every run's next wake-up here after each decision; a timer pops the due
ones and sends each run a ``TimerFired``. The index is memory only: after a rebalance it is
rebuilt from the run-state table, so it never needs its own changelog.
"""

from __future__ import annotations

import heapq
from datetime import datetime

__all__ = ["WakeIndex"]


class WakeIndex:
    """A min-heap of (due time, run id) with one live entry per run.

    Args:
        refire_s: After popping a run, pop it again this much later unless a decision moved
            its wake-up first (covers a wake-up message that got lost).
    """

    def __init__(self, refire_s: float = 5.0) -> None:
        self._refire_s = refire_s
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, run_id: str, when: datetime | None) -> None:
        """Record a run's next wake-up (``None``: nothing due, e.g. the run ended)."""
        if when is None:
            self._due.pop(run_id, None)
            return
        due = when.timestamp()
        if self._due.get(run_id) == due:
            return
        self._due[run_id] = due
        heapq.heappush(self._heap, (due, run_id))

    def next_due(self) -> float | None:
        """The earliest due time (epoch seconds), or ``None``."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[str]:
        """Runs due at ``now``; each is re-armed ``refire_s`` later."""
        due = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _, run_id = heapq.heappop(self._heap)
            due.append(run_id)
        for run_id in due:
            self._due[run_id] = now + self._refire_s
            heapq.heappush(self._heap, (now + self._refire_s, run_id))
        return due

    def retain(self, keep: set[str]) -> None:
        """Forget every run not in ``keep`` (partitions moved to another worker)."""
        self._due = {run_id: due for run_id, due in self._due.items() if run_id in keep}
        self._heap = [(due, run_id) for run_id, due in self._due.items()]
        heapq.heapify(self._heap)

    def clear(self) -> None:
        """Forget everything."""
        self._due.clear()
        self._heap.clear()

    def _drop_stale(self) -> None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
