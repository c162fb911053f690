"""Signed decisions: the v2 and v3 forms, the request digest, the worked example in the docs."""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from topics import (
    DECISION_FORM_V3,
    ApprovalDecision,
    ApprovalRequested,
    ApprovalVerdict,
    decision_message,
    request_digest,
    sign_decision,
    verify_decision,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "approvals.md"
KEY = b"example-key-do-not-use-7c2a9e41b8d35f06"
KEYS = {"k1": KEY}

#: The worked example of docs/approvals.md.
REQUEST = ApprovalRequested(
    approval_id="r-1042/approve/1",
    run_id="r-1042",
    step="approve",
    workflow="refund",
    tenant="acme",
    reason="refund of 120 USD",
    approvers=["group:leads"],
    quorum=1,
    level=0,
    deadline=datetime(2025, 1, 1, 13, 0, tzinfo=UTC),
    context={"input": {"amount": 120}},
    cost_usd=Decimal("0.42"),
    requested_at=datetime(2025, 1, 1, 12, 0, tzinfo=UTC),
)
DIGEST = "8e1c1dc544d0c65804e3e1c5e0479126c8fbbe39ea87a9a6231e01b4180d923a"
SIGNATURE = "v2:6077680ce3ff99774380c60def9cc7a03f6cd0082dac36e16aa9ca8223d2ab74"
DECIDED_AT = datetime(2025, 1, 1, 12, 5, tzinfo=UTC)


def example(**changes: Any) -> ApprovalDecision:
    fields: dict[str, Any] = {
        "approval_id": REQUEST.approval_id,
        "run_id": REQUEST.run_id,
        "request_digest": DIGEST,
        "verdict": "approve",
        "approver": "user:alice",
        "reason": "within policy",
        "key_id": "k1",
        "key": KEY,
        "decided_at": DECIDED_AT,
    }
    fields.update(changes)
    return sign_decision(**fields)


def _documented(name: str) -> str:
    """A value the docs' worked example states on a line ``<name>: <value>``."""
    found = re.search(rf"^{re.escape(name)}: (\S+)$", DOCS.read_text(), re.MULTILINE)
    assert found is not None, f"docs/approvals.md states no {name}"
    return found.group(1)


def test_the_worked_example_in_the_docs_holds() -> None:
    assert request_digest(REQUEST) == DIGEST == _documented("request_digest")
    decision = example()
    assert decision.signature == SIGNATURE == _documented("signature")
    message = decision_message(
        REQUEST.approval_id,
        REQUEST.run_id,
        DIGEST,
        "approve",
        "user:alice",
        "within policy",
        DECIDED_AT,
        "k1",
    )
    documented = "".join(
        line.split("|")[0].strip().replace(" ", "")
        for line in DOCS.read_text().split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    )
    assert message.hex() == documented
    assert _documented("key") == KEY.decode()
    assert verify_decision(decision, KEYS) is None


def test_the_message_is_length_prefixed_fields() -> None:
    message = decision_message("a/b/1", "a", "d", "reject", "user:x", None, DECIDED_AT, "k")
    fields = []
    while message:
        size = int.from_bytes(message[:4], "big")
        fields.append(message[4 : 4 + size].decode())
        message = message[4 + size :]
    assert fields == [
        "baton.approval-decision.v2",
        "a/b/1",
        "a",
        "d",
        "reject",
        "user:x",
        "",
        "2025-01-01T12:05:00.000000+00:00",
        "k",
    ]


def _v1_message(decision: ApprovalDecision) -> bytes:
    """The older, newline-joined form, which no longer verifies."""
    moment = decision.decided_at.astimezone(UTC).isoformat(timespec="microseconds")
    fields = [
        decision.approval_id,
        decision.run_id,
        str(decision.verdict),
        decision.approver,
        decision.reason or "",
        moment,
    ]
    return "\n".join(fields).encode()


def test_a_re_cut_signature_does_not_verify() -> None:
    # Mallory's run id embeds the victim's approval; she decides her own request ...
    run = "victim/approve/1\nvictim\napprove\nuser:alice\nq"
    mine = example(
        approval_id=f"{run}/approve/1", run_id=run, approver="user:mallory", reason="fine"
    )
    # ... and republishes its signature with the fields cut at other newlines: alice approving
    # the victim's run. In the older form both are the same bytes, so the signature carried.
    rest = f"q/approve/1\n{run}\napprove\nuser:mallory\nfine"
    recut = mine.model_copy(
        update={
            "approval_id": "victim/approve/1",
            "run_id": "victim",
            "approver": "user:alice",
            "reason": rest,
        }
    )
    assert _v1_message(mine) == _v1_message(recut)
    assert decision_message(
        mine.approval_id, mine.run_id, DIGEST, "approve", mine.approver, "fine", DECIDED_AT, "k1"
    ) != decision_message(
        "victim/approve/1", "victim", DIGEST, "approve", "user:alice", rest, DECIDED_AT, "k1"
    )
    assert verify_decision(mine, KEYS) is None
    assert verify_decision(recut, KEYS) == "the signature does not match"


def test_an_unversioned_signature_no_longer_verifies() -> None:
    decision = example()
    old = hmac.new(KEY, _v1_message(decision), hashlib.sha256).hexdigest()
    for signature in (old, "v1:" + old, SIGNATURE.upper(), ""):
        answer = verify_decision(decision.model_copy(update={"signature": signature}), KEYS)
        assert answer is not None, signature
    assert verify_decision(decision.model_copy(update={"signature": old}), KEYS) == (
        "not a v2 or v3 signature (no other form is accepted)"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"approval_id": "r-1042/approve/2"},
        {"run_id": "r-1043"},
        {"request_digest": "0" * 64},
        {"verdict": ApprovalVerdict.reject},
        {"approver": "user:bob"},
        {"reason": "within policy!"},
        {"reason": None},
        {"decided_at": DECIDED_AT + timedelta(microseconds=1)},
        {"key_id": "k2"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_the_signature_covers_every_field(change: dict[str, Any]) -> None:
    altered = example().model_copy(update=change)
    assert verify_decision(altered, {**KEYS, "k2": KEY}) == "the signature does not match"


@pytest.mark.parametrize(
    "change",
    [
        {"approval_id": "r-1042/approve/2"},
        {"run_id": "r-1043"},
        {"step": "pay"},
        {"workflow": "refund2"},
        {"tenant": "globex"},
        {"reason": "refund of 1200 USD"},
        {"approvers": ["group:leads", "user:mallory"]},
        {"quorum": 2},
        {"level": 1},
        {"deadline": REQUEST.deadline + timedelta(seconds=1)},
        {"context": {"input": {"amount": 1200}}},
        {"cost_usd": Decimal("0.43")},
        {"requested_at": REQUEST.requested_at + timedelta(microseconds=1)},
    ],
    ids=lambda change: next(iter(change)),
)
def test_the_digest_covers_everything_the_request_shows(change: dict[str, Any]) -> None:
    assert request_digest(REQUEST.model_copy(update=change)) != DIGEST


def test_the_digest_ignores_key_order_and_the_digest_field() -> None:
    reordered = REQUEST.model_copy(update={"context": {"input": {"amount": 120}}})
    assert request_digest(reordered.model_copy(update={"request_digest": "x"})) == DIGEST
    big = REQUEST.model_copy(update={"context": {"n": 10**30, "text": "ünïcode\n"}})
    assert len(request_digest(big)) == 64  # numbers past 64 bits and any text digest fine


# -- the v3 form: edit and respond carry a payload, signed as the exact text --------------------


def test_edit_and_respond_are_signed_in_v3_over_the_payload_as_sent() -> None:
    payload = '{"amount": 90,  "note":"ünï"}'  # odd spacing: signed as it is, never re-cut
    decision = example(verdict="edit", payload=payload)
    assert decision.signature.startswith("v3:")
    assert decision.payload == payload
    assert verify_decision(decision, KEYS) is None
    message = decision_message(
        decision.approval_id,
        decision.run_id,
        DIGEST,
        "edit",
        "user:alice",
        "within policy",
        DECIDED_AT,
        "k1",
        payload,
        form=DECISION_FORM_V3,
    )
    assert message.startswith(b"\x00\x00\x00\x1abaton.approval-decision.v3")
    assert message.endswith(len(payload.encode()).to_bytes(4, "big") + payload.encode())
    assert decision.signature == "v3:" + hmac.new(KEY, message, hashlib.sha256).hexdigest()
    respond = example(verdict="respond", payload='{"refund_id": "manual-1"}')
    assert respond.signature.startswith("v3:") and verify_decision(respond, KEYS) is None


def test_approve_and_reject_keep_the_v2_signature() -> None:
    assert example().signature == SIGNATURE
    assert example(verdict="reject").signature.startswith("v2:")


@pytest.mark.parametrize(
    "change",
    [
        {"payload": '{"amount": 91}'},
        {"payload": '{"amount":90}'},  # the same JSON, other bytes: another decision
        {"payload": None},
        {"verdict": ApprovalVerdict.respond},
        {"reason": "other"},
        {"request_digest": "0" * 64},
    ],
    ids=lambda change: f"{next(iter(change))}={next(iter(change.values()))}",
)
def test_the_v3_signature_covers_every_field_and_the_payload(change: dict[str, Any]) -> None:
    decision = example(verdict="edit", payload='{"amount": 90}')
    altered = decision.model_copy(update=change)
    assert verify_decision(altered, KEYS) == "the signature does not match"


def test_a_v2_signature_never_covers_a_payload_or_the_new_verdicts() -> None:
    approved = example()
    with_payload = approved.model_copy(update={"payload": '{"amount": 1}'})
    assert verify_decision(with_payload, KEYS) == (
        "a v2 signature covers no payload and no approve verdict: sign it in the v3 form"
    )
    # A v2 message over the verdict "edit" (no payload in it) is refused before any key.
    forged = sign_decision(
        approval_id=approved.approval_id,
        run_id=approved.run_id,
        request_digest=DIGEST,
        verdict="edit",
        approver="user:alice",
        reason=None,
        key_id="k1",
        key=KEY,
        decided_at=DECIDED_AT,
        payload="{}",
    )
    v2_message = decision_message(
        forged.approval_id, forged.run_id, DIGEST, "edit", "user:alice", None, DECIDED_AT, "k1"
    )
    v2 = "v2:" + hmac.new(KEY, v2_message, hashlib.sha256).hexdigest()
    answer = verify_decision(forged.model_copy(update={"signature": v2, "payload": None}), KEYS)
    assert answer is not None and answer.startswith("a v2 signature covers")
    with pytest.raises(ValueError, match="v2 form signs no payload"):
        decision_message("a", "r", DIGEST, "edit", "user:a", None, DECIDED_AT, "k1", "{}")


def test_a_v3_signature_of_approve_verifies_and_no_empty_payload_is_confused() -> None:
    moment = DECIDED_AT
    plain = decision_message(
        "a", "r", DIGEST, "approve", "user:a", None, moment, "k1", form=DECISION_FORM_V3
    )
    assert plain.endswith(b"k1\x00\x00\x00\x00")  # the tenth field, empty
    signature = "v3:" + hmac.new(KEY, plain, hashlib.sha256).hexdigest()
    decision = ApprovalDecision(
        approval_id="a",
        run_id="r",
        request_digest=DIGEST,
        verdict=ApprovalVerdict.approve,
        approver="user:a",
        decided_at=moment,
        key_id="k1",
        signature=signature,
    )
    assert verify_decision(decision, KEYS) is None


def test_the_digest_covers_the_action_and_is_unchanged_without_one() -> None:
    assert request_digest(REQUEST) == DIGEST  # no action, no schema, no response: as before
    action = {"tool": "payments.refund", "args": {"amount": 120}, "args_schema": None}
    gated = REQUEST.model_copy(update={"action": action})
    edited = REQUEST.model_copy(update={"action": {**action, "args": {"amount": 90}}})
    responded = REQUEST.model_copy(update={"response": '{"ok": true}'})
    schema = REQUEST.model_copy(update={"output_schema": {"type": "object"}})
    digests = {request_digest(r) for r in (REQUEST, gated, edited, responded, schema)}
    assert len(digests) == 5


def test_a_decision_written_with_the_previous_schema_decodes_and_verifies() -> None:
    from topics import Codec, SchemaRegistry

    registry = SchemaRegistry.load()
    newest = {
        registry.latest(f"baton.events.{name}").id
        for name in ("ApprovalDecision", "ApprovalRequested")
    }
    # A codec of the release before edit and respond writes with the previous versions.
    before = Codec(SchemaRegistry([e for e in registry.entries if e.id not in newest]))
    data = before.encode(example())
    assert struct.unpack(">bI", data[:5])[1] not in newest
    read = Codec(registry).decode(data, ApprovalDecision)
    assert read.payload is None and read.verdict == ApprovalVerdict.approve
    assert read.signature == SIGNATURE and verify_decision(read, KEYS) is None
    shown = REQUEST.model_copy(update={"request_digest": DIGEST})
    request = Codec(registry).decode(before.encode(shown), ApprovalRequested)
    assert request.action is None and request.response is None
    assert request_digest(request) == DIGEST == request.request_digest
