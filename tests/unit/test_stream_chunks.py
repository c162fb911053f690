"""How an attempt's streamed text becomes ``StreamChunk`` records: coalesced, numbered, marked.

The producer here is a recorder of what would be sent (the broker is not what is under
test: tests/integration/test_streaming.py runs the same path on the real one).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from streams._chunks import AttemptStream, turn_of
from tests.fakes.steps import step_request
from topics import Codec, StepKind, StreamChunk, TopicCatalog, partition_for

CODEC = Codec()
CATALOG = TopicCatalog(prefix="t", partitions=6)


class _Sent:
    """Records each record a producer was asked to send; deliveries complete at once."""

    def __init__(self) -> None:
        self.records: list[tuple[str, StreamChunk, bytes, int]] = []

    async def send(self, topic: str, value: bytes, *, key: bytes, partition: int) -> Any:
        self.records.append((topic, CODEC.decode(value, StreamChunk), key, partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    @property
    def chunks(self) -> list[StreamChunk]:
        return [chunk for _, chunk, _, _ in self.records]


def _stream(sent: _Sent, attempt: int = 1, **kwargs: Any) -> AttemptStream:
    request = step_request(StepKind.llm, {"route": "r", "messages": []}, attempt=attempt)
    return AttemptStream(sent, CATALOG, CODEC, request, lambda: datetime.now(UTC), **kwargs)


async def test_fast_pieces_are_coalesced_and_the_last_chunk_is_final() -> None:
    sent = _Sent()
    stream = _stream(sent, flush_s=10.0, flush_chars=20)
    on_text = stream.call()
    for _ in range(50):
        await on_text("abcd")
    await stream.finish()
    await stream.close()

    chunks = sent.chunks
    assert "".join(c.text for c in chunks) == "abcd" * 50
    # 5 pieces a chunk, none split; the final mark follows, empty, as nothing was left.
    assert [len(c.text) for c in chunks] == [20] * 10 + [0]
    assert [c.seq for c in chunks] == list(range(11))
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])
    topic, _, key, partition = sent.records[0]
    assert topic == CATALOG.stream.name and key == chunks[0].run_id.encode()
    assert partition == partition_for(chunks[0].run_id, CATALOG.stream.partitions)


async def test_a_slow_piece_goes_out_after_the_flush_interval() -> None:
    sent = _Sent()
    stream = _stream(sent, flush_s=0.02)
    await stream.call()("Hel")
    deadline = asyncio.get_running_loop().time() + 5
    while not sent.records:
        assert asyncio.get_running_loop().time() < deadline, "the piece never went out"
        await asyncio.sleep(0.005)
    assert sent.chunks[0].text == "Hel" and not sent.chunks[0].final


async def test_a_new_attempt_and_an_in_process_retry_say_what_they_supersede() -> None:
    sent = _Sent()
    stream = _stream(sent, attempt=3, flush_s=10.0, flush_chars=1)
    first = stream.call()
    await first("Your")
    await first(" ref")  # cut here: the call is tried again in-process
    second = stream.call()
    await second("Your refund")
    await stream.finish()

    marks = [(c.seq, c.restarted, c.supersedes_attempt, c.final) for c in sent.chunks]
    assert marks == [
        (0, True, 2, False),  # attempt 3 replaces attempt 2's text
        (1, False, None, False),
        (2, True, 3, False),  # the retry replaces this attempt's own text
        (3, False, None, True),
    ]


def test_an_agent_turn_is_counted_by_its_tool_call_rounds() -> None:
    call = {"id": "c1", "name": "t", "arguments": {}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "t", "content": "{}"},
    ]
    agent = step_request(StepKind.agent, {"route": "r", "messages": messages})
    assert turn_of(agent) == 1
    assert turn_of(step_request(StepKind.llm, {"route": "r", "messages": messages})) == 0
