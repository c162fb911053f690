"""The compiled Avro writer writes exactly what fastavro writes, for every event type."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.samples import full_events, minimal_events
from topics import Codec, DecodeError, Event, RunEvent, Usage
from topics._avro_writer import _decimal_bytes
from topics._registry import EVENT_TYPES

CODEC = Codec()


def fastavro_bytes(event: Event) -> bytes:
    header, schema = CODEC._writers[type(event)]
    buffer = io.BytesIO()
    buffer.write(header)
    fastavro.schemaless_writer(buffer, schema, CODEC._dumped(event))
    return buffer.getvalue()


def test_every_event_type_has_a_compiled_writer() -> None:
    assert set(CODEC._compiled) == set(EVENT_TYPES)


@pytest.mark.parametrize("event", full_events() + minimal_events(), ids=lambda e: type(e).__name__)
def test_the_compiled_writer_writes_fastavros_bytes(event: Event) -> None:
    assert CODEC.encode(event) == fastavro_bytes(event)
    assert CODEC.decode(CODEC.encode(event), type(event)) == event


@pytest.mark.parametrize(
    "amount",
    [
        "0",
        "0.000000000001",
        "-0.000000000001",
        "1",
        "-1",
        "127.5",
        "-128",
        "255",
        "0.1",
        "123456789012.000000000001",
        "-999999999999.999999999999",
        "0E-12",
        "1E+3",
    ],
)
def test_money_is_written_as_fastavro_writes_decimals(amount: str) -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=7)
    event = RunEvent(
        run_id="r",
        seq=1,
        type="t",
        at=at,
        usage=Usage(cost_usd=Decimal(amount), saved_usd=Decimal(amount)),
        total_cost_usd=Decimal(amount),
    )
    assert CODEC.encode(event) == fastavro_bytes(event)


def test_a_decimal_finer_than_the_scale_is_refused_as_fastavro_refuses_it() -> None:
    with pytest.raises(ValueError, match="Scale"):
        _decimal_bytes(Decimal("0.0000000000001"), 12)


@pytest.mark.parametrize("event", full_events() + minimal_events(), ids=lambda e: type(e).__name__)
def test_the_compiled_reader_reads_what_fastavro_reads(event: Event) -> None:
    data = CODEC.encode(event)
    header, schema = CODEC._writers[type(event)]
    buffer = io.BytesIO(data)
    buffer.seek(len(header))
    expected = fastavro.schemaless_reader(buffer, schema, None)
    schema_id = int.from_bytes(data[1:5], "big")
    compiled, end = CODEC._compiled_readers[schema_id](data, len(header))
    assert end == len(data) and compiled == expected


#: Instants on both sides of the eight-byte window (1978 to 3111) the codec reads and writes
#: without its byte loop, its edges included.
_WINDOW_EDGES = [
    datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=m)
    for m in ((1 << 48) - 1, 1 << 48, (1 << 55) - 1, 1 << 55, -(1 << 48), -(1 << 48) - 1)
]
_INSTANTS = st.one_of(st.datetimes(timezones=st.just(UTC)), st.sampled_from(_WINDOW_EDGES))


@given(at=_INSTANTS)
def test_any_instant_is_written_as_fastavro_writes_it_and_read_back(at: datetime) -> None:
    event = RunEvent(run_id="r", seq=1, type="t", at=at)
    data = CODEC.encode(event)
    assert data == fastavro_bytes(event)
    assert CODEC.decode(data, RunEvent).at == at


@pytest.mark.parametrize("cut", [1, 3, 7, 20])
def test_a_truncated_record_is_a_decode_error_not_a_crash(cut: int) -> None:
    event = next(e for e in full_events() if isinstance(e, RunEvent))
    data = CODEC.encode(event)
    with pytest.raises(DecodeError):
        CODEC.decode(data[:-cut], RunEvent)
