r"""The audit chain: each run's events hash-chained, and the anchors that pin the chains' heads.

**The chain.** Every ``RunEvent`` carries ``prev_hash``: the hash of the run's previous
event, and for the run's first event the digest of its task. An event's hash is

    blake2b(b"baton.run-event.v1\x00" + body, digest_size=32), in lowercase hex,

where ``body`` is the event's Avro binary body exactly as written on ``run-events`` (an
item of a ``RunEventBatch``: no magic byte, no schema id), ``prev_hash`` included. So
changing any field of an event, its link included, changes its hash and breaks the link
its successor recorded; removing an event breaks its successor's link; and ``seq`` (which
the hash covers) puts them in order.

**The first link.** A run started by a task links to the task's digest
(``task_digest``): ``blake2b(b"baton.task.v1\x00" + json, digest_size=32)`` of the task
as the coordinator read it, as compact JSON with sorted keys (``model_dump(mode="json")``
written by orjson). A run that has no task (cancelled before its task came) or that began
before the chain existed links to ``run_genesis(run_id)``:
``blake2b(b"baton.run.v1\x00" + run id, digest_size=32)``.

**Anchors.** ``AuditAnchor`` records list runs' heads (the seq and hash of their last
event); ``anchor_message`` is the unambiguous form a signed anchor's HMAC-SHA256 covers.

``verify_chain`` and ``check_anchors`` are the verifier's logic, with no I/O: the CLI
(``baton audit verify``) reads the topics and hands them the events in topic order.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from topics._events import AnchoredRun, AuditAnchor, RunEvent, TaskSubmitted

__all__ = [
    "ANCHOR_FORM",
    "ChainBreak",
    "ChainLink",
    "ChainReport",
    "anchor_message",
    "anchor_runs",
    "check_anchors",
    "event_hash",
    "run_genesis",
    "sign_anchor",
    "task_digest",
    "verify_anchor",
    "verify_chain",
]

_EVENT_FORM = b"baton.run-event.v1\x00"
_TASK_FORM = b"baton.task.v1\x00"
_RUN_FORM = b"baton.run.v1\x00"
#: The name of a signed anchor's form, the first field of the signed message.
ANCHOR_FORM = "baton.audit-anchor.v1"
_LENGTH = struct.Struct(">I")


def event_hash(body: bytes) -> str:
    """The hash of one run event, from its Avro body as written (see the module docstring)."""
    return hashlib.blake2b(_EVENT_FORM + body, digest_size=32).hexdigest()


def task_digest(task: TaskSubmitted) -> str:
    """The digest a run's first event links to: of the task as the coordinator read it."""
    text = orjson.dumps(task.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(_TASK_FORM + text, digest_size=32).hexdigest()


def run_genesis(run_id: str) -> str:
    """The first link of a run with no task, or one that began before the chain existed."""
    return hashlib.blake2b(_RUN_FORM + run_id.encode(), digest_size=32).hexdigest()


# -- anchors -----------------------------------------------------------------------------------


def anchor_message(anchor: AuditAnchor) -> bytes:
    """The bytes an anchor's signature covers.

    Length-prefixed UTF-8 fields (a 4-byte big-endian length before each), so no choice of
    values makes two anchors sign the same bytes: the form's name, the partition,
    ``anchored_at`` (ISO 8601 in UTC with microseconds), part, parts, key id, then per run
    its id, seq and head.
    """
    fields = [
        ANCHOR_FORM,
        str(anchor.partition),
        anchor.anchored_at.astimezone(UTC).isoformat(timespec="microseconds"),
        str(anchor.part),
        str(anchor.parts),
        anchor.key_id,
    ]
    for run in anchor.runs:
        fields += [run.run_id, str(run.seq), run.head]
    out = bytearray()
    for text in fields:
        data = text.encode()
        out += _LENGTH.pack(len(data))
        out += data
    return bytes(out)


def sign_anchor(anchor: AuditAnchor, key_id: str, key: bytes) -> AuditAnchor:
    """The anchor signed with a key (HMAC-SHA256 over ``anchor_message``)."""
    unsigned = anchor.model_copy(update={"key_id": key_id, "signature": ""})
    signature = hmac.new(key, anchor_message(unsigned), hashlib.sha256).hexdigest()
    return unsigned.model_copy(update={"signature": signature})


def verify_anchor(anchor: AuditAnchor, keys: Mapping[str, bytes]) -> str | None:
    """``None`` when a signed anchor's signature is valid, else why it is not."""
    if not anchor.signature:
        return "the anchor is not signed"
    key = keys.get(anchor.key_id)
    if key is None:
        return f"unknown key {anchor.key_id!r}"
    expected = hmac.new(key, anchor_message(anchor), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, anchor.signature):
        return "the signature does not match"
    return None


def anchor_runs(
    partition: int, at: datetime, heads: Sequence[AnchoredRun], per_record: int
) -> list[AuditAnchor]:
    """An anchor over these heads, cut into records of at most ``per_record`` runs."""
    chunks = [list(heads[i : i + per_record]) for i in range(0, len(heads), per_record)] or [[]]
    return [
        AuditAnchor.model_construct(
            partition=partition,
            anchored_at=at,
            part=n,
            parts=len(chunks),
            runs=chunk,
            key_id="",
            signature="",
        )
        for n, chunk in enumerate(chunks)
    ]


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainLink:
    """One run event as read from the topic.

    Attributes:
        event: The event.
        hash: Its hash (``event_hash`` of its body as written).
        where: Where it was read (``partition 3 offset 17 item 2``), for the report.
    """

    event: RunEvent
    hash: str
    where: str = ""


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place a run's chain does not hold.

    Attributes:
        seq: The seq of the event named.
        type: Its type.
        where: Where it was read.
        problem: What is wrong, in words (``altered``, ``missing``, ...).
        expected: The hash (or seq) the chain expected there.
        found: What was found.
    """

    seq: int
    type: str
    where: str
    problem: str
    expected: str
    found: str

    def __str__(self) -> str:
        return (
            f"event seq {self.seq} ({self.type}, {self.where or 'unknown place'}): "
            f"{self.problem}; expected {self.expected}, found {self.found}"
        )


@dataclass
class ChainReport:
    """What verifying one run's chain found.

    Attributes:
        run_id: The run.
        events: Distinct events read.
        duplicates: Exact repeats skipped (same seq, same hash: a producer's retry).
        unchained: Events written before the chain existed (no ``prev_hash``).
        head: The hash of the last event (empty: no chained event).
        last_seq: The seq of the last event (-1: none).
        first_link: What the first chained event links to (the task digest, normally).
        broken: The first break, or ``None``.
        hashes: Every chained event's hash, by seq.
    """

    run_id: str
    events: int = 0
    duplicates: int = 0
    unchained: int = 0
    head: str = ""
    last_seq: int = -1
    first_link: str = ""
    broken: ChainBreak | None = None
    hashes: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether the chain holds."""
        return self.broken is None


def verify_chain(run_id: str, links: Iterable[ChainLink]) -> ChainReport:
    """Check one run's events, in the order the topic holds them, against the chain.

    Each chained event must be the one after the previous (its seq one more, its
    ``prev_hash`` the previous event's hash); the first must be seq 0 (linking to its
    task), or the first chained event of a run that began before the chain (linking to
    ``run_genesis``, after its unchained events). An exact repeat (same seq and hash) is
    skipped; another event with a seq already seen is a break. Stops at the first break.
    """
    report = ChainReport(run_id)
    todo = list(links)
    seen: dict[int, str] = report.hashes
    previous: ChainLink | None = None
    for n, link in enumerate(todo):
        event = link.event
        known = seen.get(event.seq)
        if known == link.hash:
            report.duplicates += 1
            continue
        if known is not None:
            report.broken = ChainBreak(
                event.seq,
                event.type,
                link.where,
                "a second, different event with the same seq (rewritten, or re-run after a "
                "crash under at_least_once)",
                known,
                link.hash,
            )
            return report
        if not event.prev_hash:
            if seen:
                report.broken = _break(link, "no chain link after chained events", "a hash", '""')
                return report
            report.unchained += 1
            report.events += 1
            report.last_seq = event.seq
            continue
        broken = _link_problem(report, previous, link, todo[n + 1 :], run_id)
        if broken is not None:
            report.broken = broken
            return report
        if not seen:
            report.first_link = event.prev_hash
        seen[event.seq] = link.hash
        report.events += 1
        report.head = link.hash
        report.last_seq = event.seq
        previous = link
    return report


def _link_problem(
    report: ChainReport,
    previous: ChainLink | None,
    link: ChainLink,
    later: list[ChainLink],
    run_id: str,
) -> ChainBreak | None:
    """Why ``link`` does not follow what was verified so far, or ``None``."""
    event = link.event
    if not report.hashes:
        if event.seq == 0:
            return None  # links to its task: checked against the task, when given
        if event.prev_hash == run_genesis(run_id) and report.last_seq == event.seq - 1:
            return None  # the run began before the chain: its first chained event
        if report.unchained:
            return _break(link, "does not start the chain", run_genesis(run_id), event.prev_hash)
        return _break(link, _missing(0, event.seq, later), "seq 0", f"seq {event.seq}")
    expected = report.last_seq + 1
    if event.seq != expected:
        if any(other.event.seq == expected for other in later):
            problem = f"out of order: seq {expected} comes after it"
        else:
            problem = _missing(expected, event.seq, later)
        return _break(link, problem, f"seq {expected}", f"seq {event.seq}")
    if event.prev_hash != report.head:
        nxt = next((other for other in later if other.event.seq == event.seq + 1), None)
        if previous is None or (nxt is not None and nxt.event.prev_hash != link.hash):
            return _break(
                link,
                "altered: its link to the previous event was rewritten",
                report.head,
                event.prev_hash,
            )
        # Its link is what was written and the previous event is not: that one changed.
        return _break(
            previous,
            f"altered: the next event (seq {event.seq}) recorded another hash for it",
            event.prev_hash,
            report.head,
        )
    return None


def _missing(first: int, seq: int, later: list[ChainLink]) -> str:
    gone = f"seq {first}" if seq - first == 1 else f"seqs {first}-{seq - 1}"
    return f"{gone} missing before it"


def _break(link: ChainLink, problem: str, expected: str, found: str) -> ChainBreak:
    return ChainBreak(link.event.seq, link.event.type, link.where, problem, expected, found)


def check_anchors(reports: Mapping[str, ChainReport], anchors: Iterable[AuditAnchor]) -> list[str]:
    """What the anchors say is missing or different: one line per problem.

    Every run an anchor names must have events, up to the anchored seq, whose hash at that
    seq is the anchored head. A run missing from ``reports`` altogether is reported too (its
    events were removed, or it was not asked for: the caller passes only the runs it read).
    """
    problems = []
    for anchor in anchors:
        for run in anchor.runs:
            if run.seq < 0:
                continue
            report = reports.get(run.run_id)
            if report is None or not report.hashes:
                problems.append(
                    f"run {run.run_id}: anchored at seq {run.seq} (head {run.head}, partition "
                    f"{anchor.partition}, {anchor.anchored_at.isoformat()}) but no chained "
                    "events of it were found"
                )
                continue
            found = report.hashes.get(run.seq)
            if found is None:
                problems.append(
                    f"run {run.run_id}: anchored at seq {run.seq} (head {run.head}) but its "
                    f"events end at seq {report.last_seq}"
                    + (" before the chain broke" if report.broken else "")
                )
            elif found != run.head:
                problems.append(
                    f"run {run.run_id}: event seq {run.seq} was altered: the anchor of "
                    f"{anchor.anchored_at.isoformat()} has head {run.head}, the event hashes "
                    f"to {found}"
                )
    return problems
