"""Where a model call's streamed text goes: the step attempt's text stream, if it has one.

The worker that runs a step attempt opens a ``TextStream`` for it (the ``stream`` topic,
``streams._chunks``) and makes it current around the attempt with ``streaming_to``; the
model client hands it every provider call it makes for the attempt (``call``), each call's
text as it arrives, and whether the call finished (``finish``). A context variable rather
than an argument: the ``Processor`` protocol stays ``run(request)``, only the model client
looks, and a processor run without a worker around it (tests, the CLI) streams nowhere.

What is streamed is a preview, never the result: the step's result goes the usual way, and
a stream that loses a piece changes nothing the run decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

from processors._provider import TextCallback

__all__ = ["TextStream", "current_stream", "streaming_to"]


class TextStream(Protocol):
    """The streamed text of one step attempt, call by call."""

    def call(self) -> TextCallback:
        """A model call of the attempt begins; its text goes to what this returns.

        A second call of the same attempt (an in-process retry) starts the text over.
        """
        ...

    async def finish(self) -> None:
        """The call begun last answered in full: its text is complete."""
        ...


_CURRENT: ContextVar[TextStream | None] = ContextVar("baton_text_stream", default=None)


def current_stream() -> TextStream | None:
    """The text stream of the attempt running in this task, if it has one."""
    return _CURRENT.get()


@contextmanager
def streaming_to(stream: TextStream | None) -> Iterator[None]:
    """Make ``stream`` the current attempt's text stream inside the block."""
    token = _CURRENT.set(stream)
    try:
        yield
    finally:
        _CURRENT.reset(token)
