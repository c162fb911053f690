"""One partition's runs in memory, and the stored form that makes them durable.

A coordinator keeps, per partition it owns:

- **runs in flight**, decoded (or still as the bytes a takeover read, until first touched);
- **finished runs**, as small stored records until the run retention has passed: a
  *summary* (who, what, how it ended, its event count and usage) for runs that completed,
  were rejected, cancelled or stopped by a budget; the *whole state* for failed runs, so
  ops can re-drive them. A few recently finished runs also stay decoded, for the API.

Nothing else: a run past the retention is forgotten, by this worker and by the broker
(``run-state`` is ``compact,delete`` with the same retention), so memory and a takeover's
read are bounded by the runs in flight plus the runs finished within the retention.

**Stored form.** Every record of ``run-state`` and every entry of ``run-journal`` is one run
as ``pack`` writes it: a header (format, the run's version, its next wake-up, flags) and the
state's JSON. The version grows by one each time a commit changes the run, so a takeover
that reads snapshots and journal entries in any order keeps the newest of each run, and the
wake-up index and the approvals index are rebuilt from headers without decoding every run.
Records older releases wrote (plain JSON) read as version 0.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from streams.coordinator._state import RunState
from topics import RunStatus

__all__ = [
    "FinishedRun",
    "PartitionStore",
    "StoredRun",
    "pack",
    "summary",
    "summary_record",
    "unpack",
]

_FORMAT = 1
_HEADER = struct.Struct(">BQqB")
_FINISHED = 1
_APPROVAL = 2
_NO_WAKE = -1
#: Finished runs kept decoded per partition (for the API), besides their stored records.
RECENT_FINISHED = 256
_MAX_SUMMARY_REASON = 500


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A stored record, read.

    Attributes:
        version: How many commits have changed the run (0: written by an older release).
        wake_s: Its next wake-up (epoch seconds), or ``None``; for a finished run, when it
            ended.
        finished: Whether the run has ended.
        approval: Whether it has an approval request open.
        body: The state's JSON.
    """

    version: int
    wake_s: float | None
    finished: bool
    approval: bool
    body: bytes

    def state(self) -> RunState:
        """The run state (a summary, for most finished runs)."""
        return RunState.from_bytes(self.body)


def pack(version: int, state: RunState, body: bytes | None = None) -> bytes:
    """The stored record of a run at a version (``body``: its JSON, when already made)."""
    wake = state.finished_at if state.finished else state.next_wake()
    flags = _FINISHED if state.finished else 0
    if not state.finished and any(s.approval is not None for s in state.steps.values()):
        flags |= _APPROVAL
    wake_us = int(wake.timestamp() * 1_000_000) if wake is not None else _NO_WAKE
    return _HEADER.pack(_FORMAT, version, wake_us, flags) + (body or state.to_bytes())


def unpack(record: bytes) -> StoredRun:
    """Read a stored record.

    Raises:
        ValueError: It is not one (pydantic and orjson errors are ``ValueError`` too).
    """
    if record[:1] == b"{":  # a release before stored headers: the plain JSON state
        state = RunState.from_bytes(record)
        wake = state.finished_at if state.finished else state.next_wake()
        approval = any(s.approval is not None for s in state.steps.values())
        return StoredRun(
            0, wake.timestamp() if wake else None, state.finished, approval, bytes(record)
        )
    if len(record) < _HEADER.size or record[0] != _FORMAT:
        raise ValueError(f"it starts with {record[:1]!r}, not a stored run's format byte")
    _, version, wake_us, flags = _HEADER.unpack_from(record)
    return StoredRun(
        version,
        wake_us / 1_000_000 if wake_us != _NO_WAKE else None,
        bool(flags & _FINISHED),
        bool(flags & _APPROVAL),
        bytes(record[_HEADER.size :]),
    )


def summary(state: RunState) -> RunState:
    """What is kept of a finished run: everything for a failed run, else its outline.

    A failed run keeps its steps and outputs, so ``baton dlq replay`` can re-drive it; any
    other finished run keeps who ran what, how it ended, its event count and its usage.
    """
    if state.status == RunStatus.failed:
        return state
    reason = state.reason
    if reason is not None and len(reason) > _MAX_SUMMARY_REASON:
        reason = reason[: _MAX_SUMMARY_REASON - 3] + "..."
    return RunState(
        run_id=state.run_id,
        workflow=state.workflow,
        workflow_version=state.workflow_version,
        tenant=state.tenant,
        labels=state.labels,
        budget=state.budget,
        status=state.status,
        reason=reason,
        seq=state.seq,
        audit_head=state.audit_head,
        dispatches=state.dispatches,
        usage=state.usage,
        started_at=state.started_at,
        finished_at=state.finished_at,
    )


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """A finished run as the store keeps it: when it ended, and its stored record."""

    finished_at: float
    record: bytes


class PartitionStore:
    """The runs of one partition: in flight, recently finished, finished within retention.

    Args:
        partition: The partition number.
        retention_s: Seconds a finished run is remembered.
    """

    def __init__(self, partition: int, retention_s: float) -> None:
        self.partition = partition
        self.retention_s = retention_s
        self._active: dict[str, RunState | StoredRun] = {}
        self._finished: dict[str, FinishedRun] = {}
        self._recent: OrderedDict[str, RunState] = OrderedDict()
        self._versions: dict[str, int] = {}
        # When each run in flight was last written to ``run-state`` (epoch seconds).
        self._snapshot_at: dict[str, float] = {}
        #: Stored records changed since the last flush to ``run-state``, by run.
        self.dirty: dict[str, bytes] = {}
        #: The audit chain heads (seq of the last event, its hash) of the runs changed since
        #: the last flush: the flush's anchor lists them (rebuilt from the journal on takeover).
        self.heads: dict[str, tuple[int, str]] = {}
        # The size of each run in flight's stored record, and of every finished one's.
        self._active_bytes: dict[str, int] = {}
        self._finished_bytes = 0

    # -- reading -------------------------------------------------------------------------------

    def get(self, run_id: str) -> RunState | None:
        """A run's committed state (a finished run's summary, unless recently finished)."""
        active = self._active.get(run_id)
        if active is not None:
            if isinstance(active, StoredRun):
                active = active.state()
                self._active[run_id] = active
            return active
        recent = self._recent.get(run_id)
        if recent is not None:
            return recent
        finished = self._finished.get(run_id)
        if finished is not None:
            return unpack(finished.record).state()
        return None

    def version(self, run_id: str) -> int:
        """How many commits have changed the run (0 for a run the store does not know)."""
        return self._versions.get(run_id, 0)

    def active(self) -> list[tuple[str, RunState | StoredRun]]:
        """The runs in flight, decoded or as read."""
        return list(self._active.items())

    def remembered(self) -> list[tuple[str, RunState | StoredRun]]:
        """Every run the store knows: in flight, and finished within the retention.

        Recently finished runs come decoded; the others as stored (decode with ``state``),
        so a caller that lists many can keep what it made of each version.
        """
        finished = [
            (run_id, self._recent.get(run_id) or unpack(kept.record))
            for run_id, kept in self._finished.items()
        ]
        return [*self._active.items(), *finished]

    def __len__(self) -> int:
        return len(self._active) + len(self._finished)

    @property
    def in_flight(self) -> int:
        """Runs in flight."""
        return len(self._active)

    @property
    def finished(self) -> int:
        """Finished runs remembered."""
        return len(self._finished)

    @property
    def stored_bytes(self) -> int:
        """The size of the stored records of every run held (in flight and finished)."""
        return self._finished_bytes + sum(self._active_bytes.values())

    def _set_finished(self, run_id: str, finished: FinishedRun | None) -> None:
        old = self._finished.pop(run_id, None)
        if old is not None:
            self._finished_bytes -= len(old.record)
        if finished is not None:
            self._finished[run_id] = finished
            self._finished_bytes += len(finished.record)

    # -- writing -------------------------------------------------------------------------------

    def install(self, run_id: str, version: int, state: RunState, record: bytes) -> None:
        """Make a committed change the run's state.

        Args:
            run_id: The run.
            version: Its new version.
            state: Its whole new state (a finished run stays decoded among the recent ones).
            record: Its stored form (for a finished run, of what is kept: see ``summary``).
        """
        self._versions[run_id] = version
        self.dirty[run_id] = record
        if state.audit_head and state.seq:
            self.heads[run_id] = (state.seq - 1, state.audit_head)
        if state.finished:
            self._active.pop(run_id, None)
            self._active_bytes.pop(run_id, None)
            self._set_finished(run_id, FinishedRun(_epoch(state.finished_at), record))
            self._recent[run_id] = state
            self._recent.move_to_end(run_id)
            while len(self._recent) > RECENT_FINISHED:
                self._recent.popitem(last=False)
        else:
            self._set_finished(run_id, None)
            self._recent.pop(run_id, None)
            self._active[run_id] = state
            self._active_bytes[run_id] = len(record)

    def load(self, run_id: str, record: bytes, *, written_at: float, journal: bool) -> bool:
        """Take a record a takeover read, unless the store has a newer version of the run.

        Args:
            run_id: The run.
            record: Its stored form.
            written_at: When the record was written (its Kafka timestamp, epoch seconds).
            journal: It comes from the journal, not from ``run-state``: the next flush must
                write it, before the journal it came from is deleted.

        Returns:
            Whether it was taken (``False``: the store has this version or a newer one).

        Raises:
            ValueError: It is not a stored run.
        """
        stored = unpack(record)
        if run_id in self._versions and stored.version <= self._versions[run_id]:
            return False
        self._versions[run_id] = stored.version
        if journal:
            self.dirty[run_id] = record
            chain = orjson.loads(stored.body)
            if chain.get("audit_head") and chain.get("seq"):
                self.heads[run_id] = (chain["seq"] - 1, chain["audit_head"])
        if stored.finished:
            self._active.pop(run_id, None)
            self._active_bytes.pop(run_id, None)
            self._snapshot_at.pop(run_id, None)
            ended = stored.wake_s if stored.wake_s is not None else datetime.now(UTC).timestamp()
            self._set_finished(run_id, FinishedRun(ended, record))
        else:
            self._set_finished(run_id, None)
            self._active[run_id] = stored
            self._active_bytes[run_id] = len(record)
            if not journal:
                self._snapshot_at[run_id] = written_at
        return True

    def expire(self, now: float) -> int:
        """Forget finished runs past the retention; how many were forgotten.

        Finished runs are kept in the order they ended (a takeover sorts what it read), so
        this looks only at the oldest ones, not at every run remembered.
        """
        horizon = now - self.retention_s
        gone = 0
        while self._finished:
            run_id, finished = next(iter(self._finished.items()))
            if finished.finished_at >= horizon:
                break
            self._set_finished(run_id, None)
            self._versions.pop(run_id, None)
            self._recent.pop(run_id, None)
            self.dirty.pop(run_id, None)
            self.heads.pop(run_id, None)
            gone += 1
        return gone

    def settle(self) -> None:
        """After a takeover: order the finished runs by when they ended."""
        self._finished = dict(sorted(self._finished.items(), key=lambda item: item[1].finished_at))

    def refresh(self, now: float) -> None:
        """Mark runs in flight whose snapshot is half the retention old to be written again.

        ``run-state`` deletes records older than the retention, so a run in flight longer
        than that has its snapshot refreshed before it would be deleted.
        """
        horizon = now - self.retention_s / 2
        for run_id, at in list(self._snapshot_at.items()):
            if at < horizon and run_id not in self.dirty:
                self.dirty[run_id] = self._record_of(run_id)

    def flushed(self, now: float) -> dict[str, bytes]:
        """Take the records changed since the last flush (they are now in ``run-state``)."""
        records, self.dirty = self.dirty, {}
        self.heads = {}
        for run_id in records:
            if run_id in self._active:
                self._snapshot_at[run_id] = now
            else:
                self._snapshot_at.pop(run_id, None)
        return records

    def _record_of(self, run_id: str) -> bytes:
        active = self._active[run_id]
        if isinstance(active, StoredRun):
            return pack(self._versions.get(run_id, 0), active.state(), active.body)
        return pack(self._versions.get(run_id, 0), active)


def summary_record(version: int, state: RunState, body: bytes) -> tuple[RunState, bytes]:
    """What the store keeps of a run after a commit: the state and its stored record.

    Args:
        version: The run's new version.
        state: Its new state.
        body: The state's JSON (reused unless only a summary is kept).
    """
    kept = summary(state) if state.finished else state
    return kept, pack(version, kept, body if kept is state else None)


def _epoch(moment: datetime | None) -> float:
    return (moment or datetime.now(UTC)).timestamp()
