"""The codec: round trips, the wire format, JSON tasks, and every way bytes can be wrong."""

from __future__ import annotations

import io
import json
import struct
from decimal import Decimal

import fastavro
import pytest

from tests.samples import T0, full_events, minimal_events
from topics import (
    EVENT_TYPES,
    Codec,
    DecodeError,
    Event,
    RunResult,
    StepResult,
    TaskSubmitted,
    TopicCatalog,
    Usage,
)

CODEC = Codec()
CATALOG = TopicCatalog()


@pytest.mark.parametrize("event", full_events() + minimal_events(), ids=lambda e: type(e).__name__)
def test_every_event_round_trips(event: Event) -> None:
    data = CODEC.encode(event)
    assert CODEC.decode(data, type(event)) == event


def test_samples_cover_every_event_type() -> None:
    assert {type(e) for e in full_events()} == set(EVENT_TYPES)
    assert {type(e) for e in minimal_events()} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", full_events(), ids=lambda e: type(e).__name__)
def test_wire_format_is_confluent_framed_avro(event: Event) -> None:
    data = CODEC.encode(event)
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0
    assert schema_id == CODEC.schema_id(type(event))
    # Any Avro reader holding the schema can read the body; JSON fields are plain JSON text.
    entry = CODEC._registry.by_id(schema_id)  # noqa: SLF001
    assert entry is not None
    plain = json.loads(json.dumps(entry.schema).replace('"logicalType": "json"', '"x": "y"'))
    record = fastavro.schemaless_reader(io.BytesIO(data[5:]), fastavro.parse_schema(plain), None)
    assert isinstance(record, dict)
    if "input" in record:
        assert json.loads(record["input"]) == event.model_dump()["input"]


def test_schema_ids_differ_per_event_type() -> None:
    ids = [CODEC.schema_id(t) for t in EVENT_TYPES]
    assert len(set(ids)) == len(ids)


def test_money_is_exact_and_rounded_to_twelve_places() -> None:
    usage = Usage(cost_usd=Decimal("0.0000000375"))
    assert usage.cost_usd == Decimal("0.000000037500")
    tiny = Usage(cost_usd=Decimal("1.00000000000049"))
    assert tiny.cost_usd == Decimal("1.000000000000")
    assert CODEC.decode(CODEC.encode(RunResultWith(usage)), RunResult).usage == usage
    with pytest.raises(ValueError, match="out of range"):
        Usage(cost_usd=Decimal("1e13"))


def RunResultWith(usage: Usage) -> RunResult:  # noqa: N802 - reads like a constructor
    return RunResult(
        run_id="r", workflow="w", status="completed", usage=usage, started_at=T0, finished_at=T0
    )


def test_timestamps_must_carry_a_time_zone() -> None:
    with pytest.raises(ValueError, match="timezone"):
        StepResult.model_validate(
            {
                "run_id": "r",
                "step": "s",
                "attempt": 1,
                "status": "ok",
                "started_at": "2026-01-01T00:00:00",
                "finished_at": "2026-01-01T00:00:00",
            }
        )


# -- undecodable input: a typed error that says why, with the bytes kept ----------------------


def _good() -> bytes:
    return CODEC.encode(full_events()[0])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty record value"),
        (None, "empty record value"),
        (b"\x07garbage", "expected magic byte 0"),
        (b"\x00\x00\x00", "expected magic byte 0"),
        (b"\x00\x00\x00\x03\xe7rest", "unknown schema id 999"),
        (_good()[:20], "body does not match schema id 1"),
        (_good() + b"\x00\x01", "2 unexpected bytes after the TaskSubmitted body"),
        (CODEC.encode(minimal_events()[2]), "schema id 3 is a StepResult; expected TaskSubmitted"),
    ],
)
def test_bad_bytes_raise_a_decode_error_that_says_why(data: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(data, TaskSubmitted)
    assert reason in caught.value.reason
    assert caught.value.data == data


def test_garbled_body_is_a_decode_error_not_a_crash() -> None:
    good = bytearray(_good())
    for position in range(5, len(good)):
        garbled = bytes(good[:position]) + b"\xff" * 3 + bytes(good[position + 3 :])
        try:
            CODEC.decode(garbled, TaskSubmitted)
        except DecodeError as error:
            assert error.data == garbled
            assert error.reason


def test_valid_avro_that_breaks_the_model_names_the_field() -> None:
    entry = CODEC._registry.latest("baton.events.TaskSubmitted")  # noqa: SLF001
    record = full_events()[0].model_dump()
    record["task_id"] = ""
    buffer = io.BytesIO()
    buffer.write(struct.pack(">bI", 0, entry.id))
    fastavro.schemaless_writer(buffer, entry.parsed, record)
    with pytest.raises(
        DecodeError, match="invalid TaskSubmitted: task_id: a task id cannot be empty"
    ):
        CODEC.decode(buffer.getvalue(), TaskSubmitted)


# -- JSON on baton.tasks ------------------------------------------------------------------


def test_json_task_is_accepted_on_the_tasks_topic() -> None:
    data = json.dumps(
        {
            "task_id": "t-1",
            "workflow": "support-triage",
            "input": {"text": "hi", "refund_usd": 20},
            "budget": {"max_cost_usd": 0.25},
            "submitted_at": "2026-11-21T09:30:15Z",
        }
    ).encode()
    task = CODEC.decode_for(CATALOG.tasks, data, key=b"t-1")
    assert isinstance(task, TaskSubmitted)
    assert task.input == {"text": "hi", "refund_usd": 20}
    assert task.budget is not None and task.budget.max_cost_usd == Decimal("0.25")


def test_json_task_takes_its_id_from_the_key() -> None:
    task = CODEC.decode_for(CATALOG.tasks, b'{"workflow": "w", "input": {}}', key=b"from-key")
    assert isinstance(task, TaskSubmitted) and task.task_id == "from-key"


def test_avro_task_is_accepted_on_the_tasks_topic_too() -> None:
    task = full_events()[0]
    assert CODEC.decode_for(CATALOG.tasks, CODEC.encode(task)) == task


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"workflow": "w"}', "input: Field required"),
        (b'{"task_id": "t", "workflow": "w", "input": 1, "colour": "red"}', "colour: Extra"),
        (b'{"task_id": "t", "workflow": "w", "input": 1, "budget": {"max_steps": 0}}', "max_steps"),
    ],
)
def test_bad_json_tasks_name_the_problem(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        CODEC.decode_for(CATALOG.tasks, data)
    assert reason in caught.value.reason
    assert caught.value.data == data


def test_json_is_refused_on_topics_that_only_take_avro() -> None:
    with pytest.raises(DecodeError, match="magic byte"):
        CODEC.decode_for(CATALOG.step_results, b'{"run_id": "r"}')
