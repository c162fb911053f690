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

The ``v3`` form (``baton.approval-decision.v3``, signature ``v3:...``) is the same nine
fields under its own name, then a tenth: the decision's ``payload``, the JSON text of an
``edit``'s new arguments or a ``respond``'s output, exactly as the decision carries it (the
empty string when there is none; a payload is never empty, since the empty string is not
JSON). The signature covers those bytes as sent, so nobody has to reproduce a canonical JSON
form to sign or verify. ``edit`` and ``respond`` are signed only in ``v3``; ``approve`` and
``reject`` in either (``sign_decision`` keeps ``v2`` for them, so their signatures do not
change), and a ``v2`` signature never verifies a decision that carries a payload.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import JsonValue

from topics._events import ApprovalDecision, ApprovalRequested, ApprovalVerdict

__all__ = [
    "DECISION_FORM",
    "DECISION_FORM_V3",
    "REQUEST_FORM",
    "SIGNATURE_PREFIX",
    "SIGNATURE_PREFIX_V3",
    "decision_message",
    "request_digest",
    "sign_decision",
    "verify_decision",
]

#: The name of the signed form, the first field of every signed message.
DECISION_FORM = "baton.approval-decision.v2"
#: The name of the request digest's form, a member of the digested object.
REQUEST_FORM = "baton.approval-request.v2"
#: What every signature of the v2 form starts with.
SIGNATURE_PREFIX = "v2:"
#: The name of the form that also signs a payload (edit, respond).
DECISION_FORM_V3 = "baton.approval-decision.v3"
#: What every signature of the v3 form starts with.
SIGNATURE_PREFIX_V3 = "v3:"
#: The verdicts the v2 form may sign: those without a payload.
_V2_VERDICTS = frozenset({ApprovalVerdict.approve, ApprovalVerdict.reject})

_LENGTH = struct.Struct(">I")


def _moment(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def request_digest(request: ApprovalRequested) -> str:
    """The sha256 (hex) of what a request shows its reviewers.

    The digested bytes are the JSON object of the request's fields (all but
    ``request_digest``) plus ``"form": "baton.approval-request.v2"``, with keys sorted,
    no whitespace, non-ASCII characters as they are (UTF-8), times as in the signed message
    and ``cost_usd`` as a decimal string with 12 places. ``action``, ``output_schema`` and
    ``response`` are members only when set, so a request that has none digests as it did
    before they existed.
    """
    shown: dict[str, JsonValue] = {
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
    for name in ("action", "output_schema", "response"):
        value = getattr(request, name)
        if value is not None:
            shown[name] = value
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
    payload: str | None = None,
    *,
    form: str = DECISION_FORM,
) -> bytes:
    """The bytes a decision's signature covers (the ``v2`` form, or ``v3`` with the payload).

    Raises:
        ValueError: A payload for the ``v2`` form, which cannot sign one.
    """
    if form == DECISION_FORM and payload is not None:
        raise ValueError("the v2 form signs no payload: use v3")
    fields = [
        form,
        approval_id,
        run_id,
        request_digest,
        str(ApprovalVerdict(verdict)),
        approver,
        reason or "",
        _moment(decided_at),
        key_id,
    ]
    if form == DECISION_FORM_V3:
        fields.append(payload or "")
    out = bytearray()
    for field in fields:
        data = field.encode()
        out += _LENGTH.pack(len(data))
        out += data
    return bytes(out)


def _signature(key: bytes, message: bytes, prefix: str = SIGNATURE_PREFIX) -> str:
    return prefix + hmac.new(key, message, hashlib.sha256).hexdigest()


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
    payload: str | None = None,
) -> ApprovalDecision:
    """A decision on one request (named by its id and digest), signed with a key.

    ``approve`` and ``reject`` without a payload are signed in the ``v2`` form, everything
    else in ``v3``.
    """
    moment = decided_at or datetime.now(UTC)
    v2 = ApprovalVerdict(verdict) in _V2_VERDICTS and payload is None
    form, prefix = (
        (DECISION_FORM, SIGNATURE_PREFIX) if v2 else (DECISION_FORM_V3, SIGNATURE_PREFIX_V3)
    )
    message = decision_message(
        approval_id,
        run_id,
        request_digest,
        verdict,
        approver,
        reason,
        moment,
        key_id,
        payload,
        form=form,
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
        signature=_signature(key, message, prefix),
        payload=payload,
    )


def verify_decision(decision: ApprovalDecision, keys: Mapping[str, bytes]) -> str | None:
    """``None`` when the signature is valid, else why it is not."""
    if decision.signature.startswith(SIGNATURE_PREFIX_V3):
        form, prefix = DECISION_FORM_V3, SIGNATURE_PREFIX_V3
    elif decision.signature.startswith(SIGNATURE_PREFIX):
        form, prefix = DECISION_FORM, SIGNATURE_PREFIX
        if decision.verdict not in _V2_VERDICTS or decision.payload is not None:
            return (
                f"a v2 signature covers no payload and no {decision.verdict.value} verdict: "
                "sign it in the v3 form"
            )
    else:
        return "not a v2 or v3 signature (no other form is accepted)"
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
        decision.payload,
        form=form,
    )
    if not hmac.compare_digest(_signature(key, message, prefix), decision.signature):
        return "the signature does not match"
    return None
