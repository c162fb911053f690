"""Fuzzing the event decoders: whatever bytes a topic holds, decoding gives an event or a
``DecodeError`` (with the bytes kept), never another exception.

Random bytes, random JSON (for the tasks topic, which takes JSON), valid events cut or
flipped at random places, and events whose JSON fields nest far past the limit, for every
topic baton consumes.
"""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.samples import full_events, minimal_events
from topics import Codec, DecodeError, Event, Topic, TopicCatalog

CODEC = Codec()
CATALOG = TopicCatalog(prefix="fuzz", partitions=4)
TOPICS = [t for t in CATALOG if t.value_types]
SAMPLES = [CODEC.encode(e) for e in full_events() + minimal_events()]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)


def decodes_or_refuses(topic: Topic, data: bytes) -> None:
    try:
        event = CODEC.decode_for(topic, data, b"key")
    except DecodeError as exc:
        assert exc.data == data and exc.reason
        return
    assert isinstance(event, Event) and isinstance(event, topic.value_types)


@FUZZ
@given(st.sampled_from(TOPICS), st.binary(max_size=2000))
def test_random_bytes_on_any_topic(topic: Topic, data: bytes) -> None:
    decodes_or_refuses(topic, data)


@FUZZ
@given(st.sampled_from(TOPICS), st.sampled_from(SAMPLES), st.data())
def test_an_event_cut_or_altered_anywhere(topic: Topic, sample: bytes, data: st.DataObject) -> None:
    raw = bytearray(sample)
    position = data.draw(st.integers(0, len(raw) - 1))
    if data.draw(st.booleans()):
        raw = raw[: position + 1]
    else:
        raw[position] = data.draw(st.integers(0, 255))
    decodes_or_refuses(topic, bytes(raw))


@FUZZ
@given(json_values, st.integers(0, 5000))
def test_random_and_deep_json_on_the_tasks_topic(value: object, depth: int) -> None:
    decodes_or_refuses(CATALOG.tasks, orjson.dumps(value))
    deep = b'{"task_id": "t1", "workflow": "w", "input": ' + b"[" * depth + b"]" * depth + b"}"
    decodes_or_refuses(CATALOG.tasks, deep)
    if depth > 64:
        try:
            CODEC.decode_for(CATALOG.tasks, deep)
        except DecodeError as exc:
            assert "limit of 64" in exc.reason
        else:
            raise AssertionError("JSON nested past the limit was accepted")
