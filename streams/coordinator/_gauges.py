"""What a coordinator shows when its worker's metrics are scraped.

Gauges read at scrape time from the runtime's services (the partitions' stores, the open
approvals, the loop's consumer), so the loop pays nothing for them between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from streams._metrics import GaugeSource, Metrics, consumer_lag
from streams.coordinator._store import PartitionStore

if TYPE_CHECKING:
    from streams.coordinator._runtime import CoordinatorRuntime

__all__ = ["measure"]


def _one(value: Callable[[], float]) -> GaugeSource:
    return lambda: [((), value())]


def measure(runtime: CoordinatorRuntime, metrics: Metrics) -> None:
    """Add the runtime's gauges (runs held, their size, approvals, lag) to the metrics."""
    loop = runtime.loop

    def stores() -> list[PartitionStore]:
        return [s for p, s in list(loop.stores.items()) if p in loop.ready]

    def oldest_approval_age() -> float:
        requests = list(runtime.index.requests.values())
        if not requests:
            return 0.0
        oldest = min(r.requested_at for r in requests)
        return max(0.0, (runtime.clock() - oldest).total_seconds())

    async def lag() -> list[tuple[str, int, int]]:
        return await consumer_lag(loop.consumer, runtime.exactly_once)

    metrics.gauge(
        "baton_runs_in_flight",
        "Runs in flight on the partitions this worker owns.",
        (),
        _one(lambda: sum(s.in_flight for s in stores())),
    )
    metrics.gauge(
        "baton_runs_finished_held",
        "Finished runs this worker remembers (within the run retention).",
        (),
        _one(lambda: sum(s.finished for s in stores())),
    )
    metrics.gauge(
        "baton_run_state_bytes",
        "Size of the stored records of the runs this worker holds (what a takeover reads).",
        (),
        _one(lambda: sum(s.stored_bytes for s in stores())),
    )
    metrics.gauge(
        "baton_partitions_owned",
        "Partitions whose runs this worker's coordinator owns and serves.",
        (),
        _one(lambda: len(loop.ready)),
    )
    metrics.gauge(
        "baton_approvals_open",
        "Approval requests open on the runs this worker owns.",
        (),
        _one(lambda: len(runtime.index.requests)),
    )
    metrics.gauge(
        "baton_approvals_oldest_age_seconds",
        "Seconds the oldest open approval request has waited (0 with none open).",
        (),
        _one(oldest_approval_age),
    )
    metrics.lag_of("coordinator", lag)
