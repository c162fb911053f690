"""Open-loop load: submissions on a fixed schedule that completions never hold back.

A closed-loop generator waits for the system before it sends more, so when the system
stalls, it stops sending and the stall hides in fewer samples ("coordinated omission"). Here
submission ``i`` is due at ``start + i / rate`` whatever happened before; a late generator
sends what is overdue at once, and every latency is measured from the *scheduled* time.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

__all__ = ["OpenLoopSchedule", "drive", "latencies_from_schedule"]


@dataclass(frozen=True)
class OpenLoopSchedule:
    """``count`` submissions at a fixed ``rate_per_s``, the first at offset 0.

    Raises:
        ValueError: A rate that is not positive or a count below one.
    """

    rate_per_s: float
    count: int

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise ValueError(f"rate must be positive, not {self.rate_per_s}")
        if self.count < 1:
            raise ValueError(f"count must be at least 1, not {self.count}")

    @classmethod
    def for_duration(cls, rate_per_s: float, duration_s: float) -> OpenLoopSchedule:
        """As many submissions as ``duration_s`` seconds at ``rate_per_s`` hold (at least 1)."""
        return cls(rate_per_s, max(1, round(rate_per_s * duration_s)))

    @property
    def duration_s(self) -> float:
        """Seconds from the first submission to the last."""
        return (self.count - 1) / self.rate_per_s

    def offset(self, index: int) -> float:
        """Seconds after the start at which submission ``index`` is due."""
        if not 0 <= index < self.count:
            raise IndexError(f"submission {index} is outside 0..{self.count - 1}")
        return index / self.rate_per_s

    def due_by(self, elapsed_s: float) -> int:
        """How many submissions are due ``elapsed_s`` seconds after the start."""
        if elapsed_s < 0:
            return 0
        # A float product like 0.3 * 10 can land a hair under 3; round before flooring.
        return min(self.count, math.floor(round(elapsed_s * self.rate_per_s, 9)) + 1)


async def drive(
    schedule: OpenLoopSchedule,
    submit: Callable[[int], object],
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[object]],
) -> tuple[float, list[float]]:
    """Call ``submit(i)`` for every submission when it is due.

    ``submit`` must hand its work off (e.g. start a task) rather than wait for it: its
    return value is ignored, and the schedule never waits on a completion.

    Args:
        schedule: When each submission is due.
        submit: Starts submission ``i``.
        clock: Seconds, monotonic.
        sleep: Waits a number of seconds.

    Returns:
        The start time (on ``clock``) and how late, in seconds, each submission left.
    """
    start = clock()
    lateness: list[float] = []
    index = 0
    while index < schedule.count:
        due = schedule.due_by(clock() - start)
        while index < due:
            submit(index)
            lateness.append(max(0.0, clock() - (start + schedule.offset(index))))
            index += 1
        if index < schedule.count:
            wait = start + schedule.offset(index) - clock()
            await sleep(max(0.0, wait))
    return start, lateness


def latencies_from_schedule(
    schedule: OpenLoopSchedule, start: float, finished: Mapping[int, float]
) -> dict[int, float]:
    """Seconds from each submission's scheduled time to when it finished."""
    return {i: done - (start + schedule.offset(i)) for i, done in finished.items()}
