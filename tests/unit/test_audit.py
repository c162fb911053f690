"""The audit chain: how the coordinator links run events, and how a chain is verified.

Chains here are made by real ``decide`` decisions (which chain each event as it is noted)
through the coordinator's shell (``Handler._encode``, which makes the records' bytes), then
cut out of a real ``RunEventBatch`` record, as ``baton audit verify`` reads them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from streams.coordinator import Context, RunState, decide
from streams.coordinator._batch import ANCHOR_KEY_ID, Batch
from streams.coordinator._handling import Handler
from streams.coordinator._store import PartitionStore, summary_record
from streams.workflow import parse_workflow
from topics import (
    AnchoredRun,
    AuditAnchor,
    ChainLink,
    Codec,
    ControlAction,
    ControlCommand,
    RunEvent,
    RunEventBatch,
    StepResult,
    StepStatus,
    TaskSubmitted,
    TopicCatalog,
    anchor_runs,
    check_anchors,
    event_hash,
    run_genesis,
    sign_anchor,
    task_digest,
    verify_anchor,
    verify_chain,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CODEC = Codec()
CATALOG = TopicCatalog(prefix="audit", partitions=4)
CHAIN = parse_workflow(
    """
workflow: chain
version: 1
steps:
  a: {kind: transform, output: 1}
  b: {kind: transform, after: [a], output: 2}
  c: {kind: transform, after: [b], output: 3}
""",
    "chain.yaml",
)
KEY = b"an-anchor-signing-key-of-32-bytes-or-more!"


def handler() -> Handler:
    """The coordinator's shell, with only what encoding a decision needs."""
    return Handler(
        catalog=CATALOG,
        codec=CODEC,
        feed=SimpleNamespace(book=None),  # type: ignore[arg-type]  # not read by _encode
        wakeups=None,  # type: ignore[arg-type]
        policies=None,  # type: ignore[arg-type]
        access=None,  # type: ignore[arg-type]
        models=None,
        ledger=None,
        tools=None,
        clock=lambda: T0,
    )


def run(run_id: str = "r1") -> tuple[RunState, list[bytes], TaskSubmitted]:
    """A whole run of CHAIN through decide and the shell: its last state, its event bodies."""
    shell = handler()
    task = TaskSubmitted(task_id=run_id, workflow="chain", input={"n": 1})
    bodies: list[bytes] = []
    state: RunState | None = None
    now = T0
    for name in (None, "a", "b", "c"):
        if name is None:
            event: Any = task
        else:
            assert state is not None
            event = StepResult(
                run_id=run_id,
                step=name,
                attempt=state.steps[name].attempt,
                status=StepStatus.ok,
                output=1,
                started_at=now,
                finished_at=now,
            )
        effects = shell._encode(decide(state, event, Context(now=now, workflow=CHAIN, codec=CODEC)))
        assert effects is not None and effects.state is not None
        state = effects.state
        bodies += effects.events
        now += timedelta(seconds=1)
    assert state is not None and state.status is not None
    return state, bodies, task


def links(bodies: list[bytes]) -> list[ChainLink]:
    """The events as ``baton audit verify`` reads them: out of a real batch record."""
    record = CODEC.batch(RunEventBatch, bodies)
    return [
        ChainLink(event, event_hash(body), f"item {n}")
        for n, (event, body) in enumerate(CODEC.run_event_bodies(record))
    ]


def test_without_a_codec_decide_leaves_the_chain_out() -> None:
    task = TaskSubmitted(task_id="r1", workflow="chain", input={})
    decision = decide(None, task, Context(now=T0, workflow=CHAIN))
    assert decision.bodies == ()
    assert {e.prev_hash for e in decision.emit if isinstance(e, RunEvent)} == {""}


def test_each_event_links_to_the_one_before_and_the_first_to_the_task() -> None:
    state, bodies, task = run()
    events = [link.event for link in links(bodies)]
    assert [e.seq for e in events] == list(range(len(events))) and len(events) >= 6
    assert events[0].type == "run_started" and events[0].prev_hash == task_digest(task)
    for before, after in zip(bodies, events[1:], strict=False):
        assert after.prev_hash == event_hash(before)
    # The head the state keeps (and a takeover goes on from) is the last event's hash.
    assert state.audit_head == event_hash(bodies[-1])
    assert RunState.from_bytes(state.to_bytes()).audit_head == state.audit_head


def test_the_head_is_kept_in_a_finished_runs_summary_and_rebuilt_from_the_journal() -> None:
    state, bodies, _ = run()
    kept, record = summary_record(7, state, state.to_bytes())
    assert kept.audit_head == state.audit_head and kept.seq == state.seq
    store = PartitionStore(0, 3600)
    store.load("r1", record, written_at=0, journal=True)
    assert store.heads == {"r1": (state.seq - 1, event_hash(bodies[-1]))}


def test_a_digest_and_a_hash_change_with_any_byte() -> None:
    task = TaskSubmitted(task_id="r1", workflow="chain", input={"n": 1})
    assert task_digest(task) == task_digest(task.model_copy())
    assert task_digest(task) != task_digest(task.model_copy(update={"input": {"n": 2}}))
    assert event_hash(b"x") != event_hash(b"y") and len(event_hash(b"")) == 64
    assert run_genesis("r1") != run_genesis("r2") != task_digest(task)


def test_an_untouched_chain_verifies() -> None:
    state, bodies, task = run()
    report = verify_chain("r1", links(bodies))
    assert report.ok, report.broken
    assert report.events == len(bodies) and report.head == state.audit_head
    assert report.last_seq == state.seq - 1 and report.first_link == task_digest(task)


def test_a_removed_event_is_named_with_the_hashes() -> None:
    _, bodies, _ = run()
    chain = links(bodies)
    broken = verify_chain("r1", chain[:2] + chain[3:]).broken
    assert broken is not None
    assert (broken.seq, broken.type) == (3, chain[3].event.type)
    assert "seq 2 missing" in broken.problem and broken.where == "item 3"
    missing_first = verify_chain("r1", chain[1:]).broken
    assert missing_first is not None and "seq 0 missing" in missing_first.problem


def test_two_swapped_events_are_named() -> None:
    _, bodies, _ = run()
    chain = links(bodies)
    broken = verify_chain("r1", [*chain[:2], chain[3], chain[2], *chain[4:]]).broken
    assert broken is not None and broken.seq == 3 and "out of order" in broken.problem


def test_an_altered_event_is_named_itself() -> None:
    _, bodies, _ = run()
    chain = links(bodies)
    forged = chain[2].event.model_copy(update={"step": "z"})
    altered = [*chain[:2], ChainLink(forged, event_hash(CODEC.encode_item(forged))), *chain[3:]]
    broken = verify_chain("r1", altered).broken
    assert broken is not None
    assert (broken.seq, broken.type) == (2, forged.type) and "altered" in broken.problem
    assert broken.expected == chain[3].event.prev_hash == chain[2].hash
    assert broken.found == altered[2].hash


def test_an_altered_link_is_named_at_its_own_event() -> None:
    _, bodies, _ = run()
    chain = links(bodies)
    forged = chain[2].event.model_copy(update={"prev_hash": "00" * 32})
    altered = [*chain[:2], ChainLink(forged, event_hash(CODEC.encode_item(forged))), *chain[3:]]
    broken = verify_chain("r1", altered).broken
    assert broken is not None and broken.seq == 2 and "link" in broken.problem
    assert broken.expected == chain[1].hash and broken.found == "00" * 32


def test_exact_duplicates_are_tolerated_but_a_different_event_with_a_seen_seq_is_not() -> None:
    _, bodies, _ = run()
    chain = links(bodies)
    report = verify_chain("r1", [*chain[:3], chain[2], chain[1], *chain[3:]])
    assert report.ok and report.duplicates == 2 and report.events == len(chain)
    other = chain[2].event.model_copy(update={"at": T0 + timedelta(hours=1)})
    forked = [*chain[:3], ChainLink(other, event_hash(CODEC.encode_item(other))), *chain[3:]]
    broken = verify_chain("r1", forked).broken
    assert broken is not None and broken.seq == 2 and "same seq" in broken.problem


def test_a_run_that_began_before_the_chain_verifies_from_its_first_chained_event() -> None:
    old = RunState(run_id="r9", workflow="chain", started_at=T0, seq=2)
    legacy = [
        RunEvent(run_id="r9", seq=n, type="step_dispatched", at=T0, step="a") for n in range(2)
    ]
    shell = handler()
    stopped = decide(
        old,
        ControlCommand(
            command_id="c1",
            action=ControlAction.cancel,
            run_id="r9",
            issued_at=T0,
            issued_by="ops",
        ),
        Context(now=T0, workflow=CHAIN, codec=CODEC),
    )
    effects = shell._encode(stopped)
    assert effects is not None and effects.events
    chain = [ChainLink(e, event_hash(CODEC.encode_item(e))) for e in legacy] + links(effects.events)
    assert chain[2].event.prev_hash == run_genesis("r9")
    report = verify_chain("r9", chain)
    assert report.ok and report.unchained == 2
    # Unchained events are not protected (docs/audit.md), but the chain must start right after.
    assert not verify_chain("r9", [chain[0], *chain[2:]]).ok


def test_anchors_find_a_removed_run_and_an_altered_last_event() -> None:
    state, bodies, _ = run()
    anchor = anchor_runs(
        1,
        T0,
        [
            AnchoredRun(run_id="r1", seq=state.seq - 1, head=state.audit_head),
            AnchoredRun(run_id="gone", seq=4, head="ab" * 32),
        ],
        per_record=10,
    )
    chain = links(bodies)
    reports = {"r1": verify_chain("r1", chain)}
    problems = check_anchors(reports, anchor)
    assert len(problems) == 1 and "run gone: anchored at seq 4" in problems[0]
    # Altering the last event leaves no successor to notice: the anchor does.
    forged = chain[-1].event.model_copy(update={"detail": {"forged": True}})
    last = ChainLink(forged, event_hash(CODEC.encode_item(forged)))
    reports = {"r1": verify_chain("r1", [*chain[:-1], last])}
    assert reports["r1"].ok
    problems = check_anchors(reports, anchor[:1])
    assert any(f"event seq {state.seq - 1} was altered" in p for p in problems)
    # Events cut off after the anchored seq.
    reports = {"r1": verify_chain("r1", chain[:-2])}
    assert any("events end at seq" in p for p in check_anchors(reports, anchor))


def test_anchors_are_cut_into_records_and_signed_over_every_field() -> None:
    heads = [AnchoredRun(run_id=f"r{n}", seq=n, head=f"{n:064x}") for n in range(5)]
    parts = anchor_runs(2, T0, heads, per_record=2)
    assert [(a.part, a.parts, len(a.runs)) for a in parts] == [(0, 3, 2), (1, 3, 2), (2, 3, 1)]
    signed = sign_anchor(parts[0], "worker", KEY)
    assert verify_anchor(signed, {"worker": KEY}) is None
    assert verify_anchor(parts[0], {"worker": KEY}) == "the anchor is not signed"
    moved = signed.model_copy(update={"runs": [signed.runs[0].model_copy(update={"seq": 9})]})
    assert verify_anchor(moved, {"worker": KEY}) == "the signature does not match"
    assert verify_anchor(signed, {"other": KEY}) == "unknown key 'worker'"
    decoded = CODEC.decode(CODEC.encode(signed), AuditAnchor)
    assert verify_anchor(decoded, {"worker": KEY}) is None


@pytest.mark.parametrize("key", [None, KEY])
def test_a_flush_anchors_the_heads_of_the_runs_it_flushes(key: bytes | None) -> None:
    state, _, _ = run()
    store = PartitionStore(0, 3600)
    batch = Batch(store, CATALOG, CODEC)
    batch.flush = True
    batch.anchor_key = key
    batch.put("r1", state, state.to_bytes())
    prepared = batch.prepare()
    (value,) = prepared.anchors
    anchor = CODEC.decode(value, AuditAnchor)
    assert anchor.partition == 0
    assert [(r.run_id, r.seq, r.head) for r in anchor.runs] == [
        ("r1", state.seq - 1, state.audit_head)
    ]
    if key is None:
        assert anchor.signature == ""
    else:
        assert anchor.key_id == ANCHOR_KEY_ID
        assert verify_anchor(anchor, {ANCHOR_KEY_ID: key}) is None
    batch.flush = False
    assert batch.prepare().anchors == []  # only flushes anchor


def test_a_batch_of_an_older_release_reads_with_its_bodies() -> None:
    event = RunEvent(run_id="r1", seq=0, type="run_started", at=T0)
    bodies = CODEC.run_event_bodies(CODEC.encode(event))
    assert [(e.run_id, e.prev_hash) for e, _ in bodies] == [("r1", "")]
