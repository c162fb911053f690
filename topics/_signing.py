"""Signed approval decisions: HMAC-SHA256 over a canonical form of the decision.

Any system may answer an approval request, by publishing an ``ApprovalDecision`` to
``baton.approvals.decided``, as long as it holds a signing key the coordinators know. The
coordinator accepts a decision only if its signature matches; a forged or altered event
changes nothing. The signed message is the decision's fields joined by newlines, in this
order: approval_id, run_id, verdict, approver, reason (empty when none), decided_at (ISO 8601,
UTC, with microseconds).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime

from topics._events import ApprovalDecision, ApprovalVerdict

__all__ = ["decision_message", "sign_decision", "verify_decision"]


def decision_message(
    approval_id: str,
    run_id: str,
    verdict: ApprovalVerdict | str,
    approver: str,
    reason: str | None,
    decided_at: datetime,
) -> bytes:
    """The bytes a decision's signature covers."""
    moment = decided_at.astimezone(UTC).isoformat(timespec="microseconds")
    fields = [approval_id, run_id, str(ApprovalVerdict(verdict)), approver, reason or "", moment]
    return "\n".join(fields).encode()


def sign_decision(
    *,
    approval_id: str,
    run_id: str,
    verdict: ApprovalVerdict | str,
    approver: str,
    reason: str | None,
    key_id: str,
    key: bytes,
    decided_at: datetime | None = None,
) -> ApprovalDecision:
    """A decision, signed with a key."""
    moment = decided_at or datetime.now(UTC)
    message = decision_message(approval_id, run_id, verdict, approver, reason, moment)
    return ApprovalDecision(
        approval_id=approval_id,
        run_id=run_id,
        verdict=ApprovalVerdict(verdict),
        approver=approver,
        reason=reason,
        decided_at=moment,
        key_id=key_id,
        signature=hmac.new(key, message, hashlib.sha256).hexdigest(),
    )


def verify_decision(decision: ApprovalDecision, keys: Mapping[str, bytes]) -> str | None:
    """``None`` when the signature is valid, else why it is not."""
    key = keys.get(decision.key_id)
    if key is None:
        return f"unknown signing key {decision.key_id!r}"
    message = decision_message(
        decision.approval_id,
        decision.run_id,
        decision.verdict,
        decision.approver,
        decision.reason,
        decision.decided_at,
    )
    expected = hmac.new(key, message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, decision.signature):
        return "the signature does not match"
    return None
