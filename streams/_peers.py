"""Workers calling each other's API, on behalf of the caller, with their own credential.

A worker that does not own a run forwards a request about it to the worker that does (and
asks every other worker for its open approvals). The forwarded request never carries the
caller's bearer token: the addresses come from consumer-group metadata, which any member of
the group can write, so a token sent there could be collected. Instead the worker signs the
call with the key every worker shares (``worker_key`` in the access file) and names the
caller; the receiving worker trusts the name only because the signature verifies, and looks
the caller up in its own access file (groups, tenants).

The signature covers, as length-prefixed fields (4-byte big-endian length, then UTF-8 bytes,
as in decisions): ``baton.worker-call.v1``, the method, the path with its query exactly as
sent, the caller (``user:<name>``), the sender's address, the time (Unix seconds) and the
sha256 (hex) of the body. A call is accepted for ``MAX_SKEW_S`` seconds either side of its
time; within that window a party that saw a call can only repeat that same call.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping

__all__ = [
    "BEHALF_HEADER",
    "FORWARDED_HEADER",
    "MAX_SKEW_S",
    "SIGNATURE_HEADER",
    "CallRefused",
    "call_headers",
    "verify_call",
]

FORWARDED_HEADER = "X-Baton-Forwarded"
BEHALF_HEADER = "X-Baton-On-Behalf-Of"
SIGNATURE_HEADER = "X-Baton-Worker-Signature"
#: How far a call's time may be from the receiver's clock, either way.
MAX_SKEW_S = 30

_FORM = "baton.worker-call.v1"
_LENGTH = struct.Struct(">I")


class CallRefused(Exception):
    """A worker call whose signature does not hold; the message says why."""


def _signature(
    key: bytes, method: str, path: str, caller: str, sender: str, at: int, body: bytes
) -> str:
    out = bytearray()
    fields = [_FORM, method.upper(), path, caller, sender, str(at)]
    for field in [*fields, hashlib.sha256(body).hexdigest()]:
        data = field.encode()
        out += _LENGTH.pack(len(data)) + data
    return hmac.new(key, bytes(out), hashlib.sha256).hexdigest()


def call_headers(
    key: bytes, *, method: str, path: str, caller: str, sender: str, at: int, body: bytes = b""
) -> dict[str, str]:
    """The headers of a call another worker will trust as made by ``caller``."""
    signature = _signature(key, method, path, caller, sender, at, body)
    return {
        FORWARDED_HEADER: sender,
        BEHALF_HEADER: caller,
        SIGNATURE_HEADER: f"t={at},v1={signature}",
    }


def verify_call(
    key: bytes | None,
    *,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
) -> str:
    """The caller a worker call was made for.

    Raises:
        CallRefused: No worker key here, a header missing or malformed, the time outside the
            window, or a signature that does not match.
    """
    if key is None:
        raise CallRefused("this worker takes no calls from other workers (no `worker_key`)")
    caller = headers.get(BEHALF_HEADER, "")
    sender = headers.get(FORWARDED_HEADER, "")
    parts = dict(p.partition("=")[::2] for p in headers.get(SIGNATURE_HEADER, "").split(","))
    if not caller or not sender or not parts.get("t", "").isdigit() or "v1" not in parts:
        raise CallRefused("a worker call needs its caller, sender and signature headers")
    at = int(parts["t"])
    if abs(now - at) > MAX_SKEW_S:
        raise CallRefused(f"the worker call's time is more than {MAX_SKEW_S}s away")
    expected = _signature(key, method, path, caller, sender, at, body)
    if not hmac.compare_digest(expected, parts["v1"]):
        raise CallRefused("the worker call's signature does not match")
    return caller
