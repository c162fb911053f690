"""CloudEvents headers (Kafka binding, binary mode): built by baton, read by the CloudEvents SDK."""

from __future__ import annotations

from datetime import UTC, datetime
from hashlib import blake2b

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

from topics import CloudEvents, Codec, StepResult, TaskSubmitted, worker_source
from topics._cloudevents import CONTENT_TYPE

CODEC = Codec()
NOW = datetime(2026, 12, 3, 14, 5, 9, 123000, tzinfo=UTC).timestamp()


def _events() -> CloudEvents:
    return CloudEvents(worker_source("w1"), CODEC.type_name, clock=lambda: NOW)


def _task() -> bytes:
    return CODEC.encode(TaskSubmitted(task_id="run-1", workflow="refunds", input={"n": 1}))


def test_a_record_baton_writes_is_a_cloudevent_the_sdk_reads() -> None:
    value = _task()
    headers = _events().headers(b"run-1", value, [("traceparent", b"00-abc")])
    assert headers is not None
    event = from_binary(KafkaMessage(dict(headers), b"run-1", value), JSONFormat())
    assert event.get_specversion() == "1.0"
    assert event.get_type() == "baton.events.TaskSubmitted"
    assert event.get_source() == "/baton/workers/w1"
    assert event.get_id() == blake2b(value, digest_size=16).hexdigest()
    assert event.get_time() == datetime(2026, 12, 3, 14, 5, 9, 123000, tzinfo=UTC)
    assert event.get_datacontenttype() == CONTENT_TYPE
    assert event.get_extension("partitionkey") == "run-1"
    assert ("traceparent", b"00-abc") in headers


def test_the_same_event_has_the_same_id_and_another_event_another() -> None:
    events = _events()
    value = _task()
    first, again = events.headers(None, value, None), events.headers(None, value, None)
    other = events.headers(
        None, CODEC.encode(TaskSubmitted(task_id="run-2", workflow="refunds", input={})), None
    )
    assert first is not None and again is not None and other is not None
    assert dict(first)["ce_id"] == dict(again)["ce_id"] != dict(other)["ce_id"]
    assert "ce_partitionkey" not in dict(first)  # no key, no partition key


def test_the_type_is_the_one_of_the_schema_id_in_the_value() -> None:
    result = StepResult.model_validate(
        {
            "run_id": "run-1",
            "step": "ask",
            "attempt": 1,
            "status": "ok",
            "output": "yes",
            "worker": "w1",
            "started_at": datetime(2026, 12, 3, tzinfo=UTC),
            "finished_at": datetime(2026, 12, 3, tzinfo=UTC),
        }
    )
    headers = _events().headers(b"run-1", CODEC.encode(result), None)
    assert headers is not None and dict(headers)["ce_type"] == b"baton.events.StepResult"


def test_a_record_that_already_is_a_cloudevent_keeps_its_headers() -> None:
    events = _events()
    value = _task()
    relayed = events.headers(b"run-1", value, None)
    assert relayed is not None
    later = CloudEvents(worker_source("w2"), CODEC.type_name, clock=lambda: NOW + 60)
    # as a consumer hands them over (a tuple), and as aiokafka's producer takes them (a list)
    assert later.headers(b"run-1", value, tuple(relayed)) == relayed


def test_tombstones_json_and_unknown_ids_get_no_headers() -> None:
    events = _events()
    assert events.headers(b"run-1", None, None) is None
    assert events.headers(b"run-1", b'{"task_id": "run-1"}', None) is None
    unknown = b"\x00\x00\x00\xff\xff" + _task()[5:]
    assert events.headers(b"run-1", unknown, [("x", b"1")]) == [("x", b"1")]


def test_milliseconds_are_exact_within_a_second() -> None:
    ticks = iter([NOW, NOW + 0.876, NOW + 1.002])
    events = CloudEvents(worker_source("w1"), CODEC.type_name, clock=lambda: next(ticks))
    times = []
    for _ in range(3):
        headers = events.headers(None, _task(), None)
        assert headers is not None
        times.append(dict(headers)["ce_time"])
    assert times == [
        b"2026-12-03T14:05:09.123Z",
        b"2026-12-03T14:05:09.999Z",
        b"2026-12-03T14:05:10.125Z",
    ]
