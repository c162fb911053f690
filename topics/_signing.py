"""Signed approval decisions: HMAC-SHA256 over an unambiguous, versioned form (``v2``).

Any system may answer an approval request by publishing an ``ApprovalDecision`` to
``baton.approvals.decided``, as long as it holds a signing key the coordinators know. The
coordinator counts a decision only if its signature matches; a forged, altered or re-cut
event changes nothing.

A decision binds to the request it answers twice over: by the request's ``approval_id`` and
by its ``request_digest``, the sha256 of the request as the reviewer was shown it
(``request_digest``). Both are inside the signed message.

The signed message (``decision_message``) is a sequence of length-prefixed fields: each is
its UTF-8 bytes preceded by their length as a 4-byte unsigned big-endian integer, so no
choice of field values can make two different decisions sign the same bytes. The fields, in
order: the form's name ``baton.approval-decision.v2``, approval_id, run_id, request_digest,
verdict, approver, reason (empty when none), decided_at (ISO 8601 in UTC with microseconds,
``2025-01-01T12:00:00.000000+00:00``), key_id. The signature is ``v2:`` followed by the
lowercase hex HMAC-SHA256 of that message. Nothing else verifies: signatures of the older,
newline-joined form are refused. docs/approvals.md has a worked example.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from topics._events import ApprovalDecision, ApprovalRequested, ApprovalVerdict

__all__ = [
    "DECISION_FORM",
    "REQUEST_FORM",
    "SIGNATURE_PREFIX",
    "decision_message",
    "request_digest",
    "sign_decision",
    "verify_decision",
]

#: The name of the signed form, the first field of every signed message.
DECISION_FORM = "baton.approval-decision.v2"
#: The name of the request digest's form, a member of the digested object.
REQUEST_FORM = "baton.approval-request.v2"
#: What every signature of the current form starts with.
SIGNATURE_PREFIX = "v2:"

_LENGTH = struct.Struct(">I")


def _moment(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def request_digest(request: ApprovalRequested) -> str:
    """The sha256 (hex) of what a request shows its reviewers.

    The digested bytes are the JSON object of the request's fields (all but
    ``request_digest``) plus ``"form": "baton.approval-request.v2"``, with keys sorted,
    no whitespace, non-ASCII characters as they are (UTF-8), times as in the signed message
    and ``cost_usd`` as a decimal string with 12 places.
    """
    shown = {
        "form": REQUEST_FORM,
        "approval_id": request.approval_id,
        "run_id": request.run_id,
        "step": request.step,
        "workflow": request.workflow,
        "tenant": request.tenant,
        "reason": request.reason,
        "approvers": list(request.approvers),
        "quorum": request.quorum,
        "level": request.level,
        "deadline": _moment(request.deadline),
        "context": request.context,
        "cost_usd": f"{Decimal(request.cost_usd):.12f}",
        "requested_at": _moment(request.requested_at),
    }
    text = json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def decision_message(
    approval_id: str,
    run_id: str,
    request_digest: str,
    verdict: ApprovalVerdict | str,
    approver: str,
    reason: str | None,
    decided_at: datetime,
    key_id: str,
) -> bytes:
    """The bytes a decision's signature covers (the ``v2`` form)."""
    fields = [
        DECISION_FORM,
        approval_id,
        run_id,
        request_digest,
        str(ApprovalVerdict(verdict)),
        approver,
        reason or "",
        _moment(decided_at),
        key_id,
    ]
    out = bytearray()
    for field in fields:
        data = field.encode()
        out += _LENGTH.pack(len(data))
        out += data
    return bytes(out)


def _signature(key: bytes, message: bytes) -> str:
    return SIGNATURE_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_decision(
    *,
    approval_id: str,
    run_id: str,
    request_digest: str,
    verdict: ApprovalVerdict | str,
    approver: str,
    reason: str | None,
    key_id: str,
    key: bytes,
    decided_at: datetime | None = None,
) -> ApprovalDecision:
    """A decision on one request (named by its id and digest), signed with a key."""
    moment = decided_at or datetime.now(UTC)
    message = decision_message(
        approval_id, run_id, request_digest, verdict, approver, reason, moment, key_id
    )
    return ApprovalDecision(
        approval_id=approval_id,
        run_id=run_id,
        request_digest=request_digest,
        verdict=ApprovalVerdict(verdict),
        approver=approver,
        reason=reason,
        decided_at=moment,
        key_id=key_id,
        signature=_signature(key, message),
    )


def verify_decision(decision: ApprovalDecision, keys: Mapping[str, bytes]) -> str | None:
    """``None`` when the signature is valid, else why it is not."""
    if not decision.signature.startswith(SIGNATURE_PREFIX):
        return f"not a {SIGNATURE_PREFIX[:-1]} signature (no other form is accepted)"
    key = keys.get(decision.key_id)
    if key is None:
        return f"unknown signing key {decision.key_id!r}"
    message = decision_message(
        decision.approval_id,
        decision.run_id,
        decision.request_digest,
        decision.verdict,
        decision.approver,
        decision.reason,
        decision.decided_at,
        decision.key_id,
    )
    if not hmac.compare_digest(_signature(key, message), decision.signature):
        return "the signature does not match"
    return None
