"""Fakes of the outside world for tests: real servers on loopback, scriptable faults."""

from tests.fakes.openai_server import (
    Answer,
    ChatAnswer,
    Delay,
    Disconnect,
    ErrorStatus,
    FakeOpenAIServer,
    Malformed,
    RecordedRequest,
    Responder,
    fake_openai,
)

__all__ = [
    "Answer",
    "ChatAnswer",
    "Delay",
    "Disconnect",
    "ErrorStatus",
    "FakeOpenAIServer",
    "Malformed",
    "RecordedRequest",
    "Responder",
    "fake_openai",
]
