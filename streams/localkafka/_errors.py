"""The one error of the local broker launcher."""

from __future__ import annotations

from topics import BatonError

__all__ = ["KafkaStartError"]


class KafkaStartError(BatonError):
    """The local Kafka broker could not be fetched, formatted or started.

    Args:
        message: What failed, in one line.
        log_tail: The last lines of the broker's (or tool's) output; appended to the message
            because it almost always holds the reason.
    """

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        full = f"{message}\n--- last lines of the log ---\n{log_tail}" if log_tail else message
        super().__init__(full)
        self.log_tail = log_tail
