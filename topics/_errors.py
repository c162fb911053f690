"""baton's exception tree, rooted in one class.

Every error baton raises on purpose is a ``BatonError``. Its branch says what to do about it::

    BatonError
     ├── RetryableError            try again: timeouts, connection errors, 408/409/429/5xx
     │    └── (carries retry_after: seconds the far side asked us to wait, or None)
     ├── PermanentError            trying again cannot help: other 4xx, schema violations
     │    └── DecodeError          bytes that are not a valid baton event (why, and the bytes)
     └── ConfigurationError        a developer or operator mistake: bad config, bad workflow

Control-flow signals (a run needs approval, a budget is spent) are not errors and are not
part of this tree.
"""

from __future__ import annotations

__all__ = [
    "BatonError",
    "ConfigurationError",
    "DecodeError",
    "PermanentError",
    "RetryableError",
]


class BatonError(Exception):
    """The root of every error baton raises on purpose."""

    retryable: bool = False


class RetryableError(BatonError):
    """A failure that may succeed if tried again later.

    Args:
        message: What failed.
        retry_after: Seconds the far side asked us to wait (``Retry-After``), or ``None``.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(BatonError):
    """A failure that trying again cannot fix."""


class ConfigurationError(BatonError):
    """Bad configuration or a bad workflow: a mistake to fix, never retried."""


class DecodeError(PermanentError):
    """Bytes that could not be decoded or validated as the expected event.

    Args:
        reason: Why the bytes were refused, in one line.
        data: The bytes, kept so they can go to the dead-letter topic unchanged.
    """

    def __init__(self, reason: str, data: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.data = data
