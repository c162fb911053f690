"""A partition's runs in memory: stored form, versions, summaries, retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from streams.coordinator._state import ApprovalState, RunState, StepPhase, StepState
from streams.coordinator._store import PartitionStore, pack, summary_record, unpack
from topics import RunStatus, Usage

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def running(run_id: str = "r1", **steps: StepState) -> RunState:
    return RunState(
        run_id=run_id,
        workflow="w",
        input={"text": "x" * 500},
        started_at=T0,
        steps=steps or {"a": StepState(phase=StepPhase.dispatched, attempt=1, deadline_at=T0)},
    )


def ended(state: RunState, status: RunStatus, at: datetime = T0) -> RunState:
    return state.model_copy(
        update={"status": status, "finished_at": at, "output": "y" * 500, "seq": 4}
    )


def test_the_stored_form_carries_version_wake_up_and_flags_before_the_json() -> None:
    state = running(
        a=StepState(phase=StepPhase.dispatched, attempt=1, deadline_at=T0 + timedelta(seconds=9))
    )
    stored = unpack(pack(7, state))
    assert stored.version == 7 and not stored.finished and not stored.approval
    assert stored.wake_s == (T0 + timedelta(seconds=9)).timestamp()
    assert stored.state() == state
    waiting = running(
        a=StepState(
            approval=ApprovalState(
                approval_id="r1/a/1", approvers=["group:x"], deadline=T0, requested_at=T0
            )
        )
    )
    assert unpack(pack(1, waiting)).approval


def test_a_record_an_older_release_wrote_reads_as_version_zero() -> None:
    state = ended(running(), RunStatus.completed)
    stored = unpack(state.to_bytes())
    assert stored.version == 0 and stored.finished and stored.wake_s == T0.timestamp()
    with pytest.raises(ValueError, match="not a stored run's format byte"):
        unpack(b"\x07nonsense")


def test_a_finished_run_keeps_a_summary_unless_it_failed() -> None:
    done = ended(running(), RunStatus.completed)
    kept, record = summary_record(3, done, done.to_bytes())
    assert kept.status == RunStatus.completed and kept.seq == 4
    assert kept.input is None and kept.output is None and kept.steps == {}
    assert len(record) < len(done.to_bytes()) / 2
    failed = ended(running(), RunStatus.failed)
    kept, _ = summary_record(3, failed, failed.to_bytes())
    assert kept == failed  # everything, so it can be re-driven


def test_a_takeover_keeps_the_newest_version_of_each_run_in_any_order() -> None:
    store = PartitionStore(0, retention_s=60)
    newer = running(a=StepState(phase=StepPhase.succeeded, attempt=1, output="done"))
    assert store.load("r1", pack(5, newer), written_at=0, journal=True)
    assert not store.load("r1", pack(4, running()), written_at=0, journal=False)
    assert store.get("r1") == newer and store.version("r1") == 5
    # what came from the journal is written by the next flush, before the journal goes
    assert set(store.dirty) == {"r1"}


def test_finished_runs_leave_memory_after_the_retention_only() -> None:
    store = PartitionStore(0, retention_s=60)
    now = T0.timestamp()
    for i in range(10):
        state = ended(running(f"r{i}"), RunStatus.completed, T0 + timedelta(seconds=i))
        kept, record = summary_record(1, state, state.to_bytes())
        store.install(f"r{i}", 1, kept, record)
    store.install("live", 1, running("live"), pack(1, running("live")))
    assert store.finished == 10 and store.in_flight == 1
    assert store.expire(now + 59) == 0
    assert store.expire(now + 64.5) == 5
    assert store.get("r3") is None and store.get("r7") is not None
    assert store.expire(now + 3600) == 5 and store.finished == 0
    assert store.get("live") is not None


def test_a_finished_run_out_of_the_recent_ones_reads_as_its_summary() -> None:
    store = PartitionStore(0, retention_s=60)
    for i in range(300):
        state = ended(running(f"r{i}"), RunStatus.completed)
        kept, record = summary_record(1, state, state.to_bytes())
        store.install(f"r{i}", 1, kept, record)
    old = store.get("r0")
    assert old is not None and old.status == RunStatus.completed and old.seq == 4
    assert old.usage == Usage(cost_usd=Decimal(0))


def test_a_flush_takes_the_changed_runs_and_long_runs_are_written_again() -> None:
    store = PartitionStore(0, retention_s=100)
    store.install("r1", 1, running(), pack(1, running()))
    assert set(store.flushed(now=1000)) == {"r1"} and store.dirty == {}
    store.refresh(now=1040)
    assert store.dirty == {}
    store.refresh(now=1051)  # half the retention since its snapshot
    assert set(store.dirty) == {"r1"}
