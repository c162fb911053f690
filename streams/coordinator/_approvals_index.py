"""The open approval requests of the runs this worker owns, for the HTTP API and the inbox.

Rebuilt from run states: after every commit for the runs it changed, after a takeover for
the restored runs that have a request open (their stored header says so, so no other run is
decoded), and emptied for a partition that moves away.
"""

from __future__ import annotations

from streams.coordinator._approvals import approval_request
from streams.coordinator._state import RunState
from topics import ApprovalRequested, partition_for

__all__ = ["ApprovalsIndex"]


class ApprovalsIndex:
    """Open approval requests by approval id, each exactly as it was emitted.

    Args:
        partitions: The partition count (to forget a partition's runs).
    """

    def __init__(self, partitions: int) -> None:
        self._partitions = partitions
        self.requests: dict[str, ApprovalRequested] = {}
        self._by_run: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.requests)

    def get(self, approval_id: str) -> ApprovalRequested | None:
        """An open request."""
        return self.requests.get(approval_id)

    def update(self, run_id: str, state: RunState) -> None:
        """Index what one run has open now (nothing, once it ended)."""
        for approval_id in self._by_run.pop(run_id, set()):
            self.requests.pop(approval_id, None)
        if state.finished:
            return
        ids = set()
        for name, step in state.steps.items():
            if step.approval is None:
                continue
            request = approval_request(state, name)
            if request is not None:
                self.requests[request.approval_id] = request
                ids.add(request.approval_id)
        if ids:
            self._by_run[run_id] = ids

    def forget_partition(self, partition: int) -> None:
        """Drop the requests of one partition's runs."""
        for run_id in [r for r in self._by_run if partition_for(r, self._partitions) == partition]:
            for approval_id in self._by_run.pop(run_id):
                self.requests.pop(approval_id, None)
