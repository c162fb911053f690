"""The codec: events to bytes in the Confluent wire format, and back.

A record value is one magic byte (0), the schema id (4 bytes, big-endian) and the Avro binary
body, so any Confluent-compatible consumer that knows baton's schema ids can read it. On
topics that accept JSON (``baton.tasks``) a value that starts with ``{`` is read as JSON.

Decoding never crashes deep in fastavro: every way bytes can be wrong ends in a
``DecodeError`` that says why and keeps the bytes, ready for the dead-letter topic.
"""

from __future__ import annotations

import contextlib
import io
import struct
from decimal import Decimal
from typing import Any, TypeVar, overload

import fastavro
import orjson
from pydantic import JsonValue, ValidationError

from topics._avro import JSON_LOGICAL_TYPE, full_name
from topics._avro_reader import Reader, compile_reader
from topics._avro_writer import (
    Unsupported,
    Writer,
    _long,  # the zig-zag varint, one copy for the package
    compile_writer,
)
from topics._catalog import Topic
from topics._confluent import RegistryClient, RegistryUnavailable, schema_name
from topics._errors import DecodeError
from topics._events import Event, RunEvent, RunEventBatch, RunJournal, TaskSubmitted
from topics._json import JsonLimitExceeded, loads_json
from topics._registry import EVENT_TYPES, SchemaRegistry

__all__ = ["BATCH_BYTES", "MAX_RECORD_BYTES", "Codec", "describe_validation_error"]

#: The largest record value baton writes, and reads: the broker's default limit is 1,048,588
#: bytes for a whole batch (key and headers included). A record over it is dead-lettered.
MAX_RECORD_BYTES = 1_000_000

#: The record batch size baton's producers fill per partition (``max_batch_size``). aiokafka
#: keeps one open batch per partition and makes ``send`` wait for a full one to be sent
#: before it starts the next, so its default (16 KiB, a dozen 1 KB events) turns a burst of
#: sends into a wait for each round trip; a larger batch lets a burst go out at once.
BATCH_BYTES = 512 * 1024

E = TypeVar("E", bound=Event)

_MAGIC = 0
_HEADER = struct.Struct(">bI")


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each invalid field: ``input.refund_usd: Input should be a number``."""
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(value)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


class Codec:
    """Encodes and decodes baton events.

    Args:
        registry: The released schemas (defaults to the ones shipped in ``topics/schemas``).
        remote: Schema Registry mode: the registry, and the id it gave each event type
            (``topics._confluent.register_schemas``). Events are written with those ids and
            any other id is read by asking the registry for its schema, once; the static
            ids of ``registry`` are not read at all (they would collide with the registry's).
    """

    def __init__(
        self,
        registry: SchemaRegistry | None = None,
        *,
        remote: tuple[RegistryClient, dict[type[Event], int]] | None = None,
    ) -> None:
        self._registry = registry or SchemaRegistry.load()
        self._remote = remote[0] if remote is not None else None
        self._writers: dict[type[Event], tuple[bytes, Any]] = {}
        #: The newest schema of every type, parsed: an item of a batch has no id of its own
        #: (``RunEvent`` in Schema Registry mode has none at all).
        self._bodies: dict[type[Event], Any] = {}
        # Top-level JSON fields per type: kept out of pydantic's dump and validation (their
        # values are JSON by construction, parsed by orjson within the limits, see decode).
        self._json_fields: dict[type[Event], frozenset[str]] = {
            t: frozenset(n for n, f in t.model_fields.items() if _is_json(f.annotation))
            for t in EVENT_TYPES
        }
        self._readers: dict[int, tuple[type[Event], Any, Any]] = {}
        self._older: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        #: The item schemas of ``RunEventBatch`` versions, by id (``run_event_bodies``).
        self._items: dict[int, Any] = {}
        #: Compiled readers (``_avro_reader``) for the newest schema of each type.
        self._compiled_readers: dict[int, Reader] = {}
        types_by_name = {full_name(t): t for t in EVENT_TYPES}
        #: Compiled writers (``_avro_writer``), where the schema compiles: fastavro otherwise.
        self._compiled: dict[type[Event], Writer] = {}
        for event_type in EVENT_TYPES:
            latest = self._registry.latest(full_name(event_type))
            written_id = latest.id if remote is None else remote[1].get(event_type)
            self._bodies[event_type] = latest.parsed
            if written_id is not None:
                self._writers[event_type] = (_HEADER.pack(_MAGIC, written_id), latest.parsed)
            with contextlib.suppress(Unsupported):
                self._compiled[event_type] = compile_writer(latest.schema)
        self._types_by_name = types_by_name
        if remote is not None:
            for event_type, schema_id in remote[1].items():
                latest = self._registry.latest(full_name(event_type))
                self._readers[schema_id] = (event_type, latest.parsed, None)
                with contextlib.suppress(Unsupported):
                    self._compiled_readers[schema_id] = compile_reader(latest.schema)
            return
        for entry in self._registry.entries:
            known = types_by_name.get(entry.name)
            if known is None:
                continue
            latest = self._registry.latest(entry.name)
            reader = None if latest.id == entry.id else latest.parsed
            self._readers[entry.id] = (known, entry.parsed, reader)
            if reader is not None:
                self._older[entry.id] = (latest.schema, entry.schema)
            else:
                with contextlib.suppress(Unsupported):
                    self._compiled_readers[entry.id] = compile_reader(entry.schema)

    def schema_id(self, event_type: type[Event]) -> int:
        """The id this codec writes events of a type with."""
        header, _ = self._writers[event_type]
        return int(_HEADER.unpack(header)[1])

    def type_name(self, data: bytes) -> str | None:
        """The Avro full name of the event a value holds, by its schema id (``None``: unknown)."""
        if len(data) < _HEADER.size or data[0] != _MAGIC:
            return None
        reader = self._readers.get(_HEADER.unpack_from(data)[1])
        return full_name(reader[0]) if reader is not None else None

    def encode(self, event: Event) -> bytes:
        """The wire bytes of an event."""
        header, schema = self._writers[type(event)]
        write = self._compiled.get(type(event))
        if write is not None:
            out = bytearray(header)
            write(event, out)
            return bytes(out)
        buffer = io.BytesIO()
        buffer.write(header)
        fastavro.schemaless_writer(buffer, schema, self._dumped(event))
        return buffer.getvalue()

    def encode_item(self, event: Event) -> bytes:
        """An event's Avro body alone, to be framed into a batch by ``batch``."""
        schema = self._bodies[type(event)]
        write = self._compiled.get(type(event))
        if write is not None:
            out = bytearray()
            write(event, out)
            return bytes(out)
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, self._dumped(event))
        return buffer.getvalue()

    def _dumped(self, event: Event) -> dict[str, Any]:
        json_fields = self._json_fields[type(event)]
        if not json_fields:
            return event.model_dump()
        dumped = event.model_dump(exclude=json_fields)  # type: ignore[arg-type]  # a set
        for name in json_fields:
            dumped[name] = getattr(event, name)
        return dumped

    def batch(
        self, batch_type: type[RunEventBatch] | type[RunJournal], items: list[bytes]
    ) -> bytes:
        """The wire bytes of a batch event from its items' Avro bodies.

        ``RunEventBatch`` and ``RunJournal`` are one array field each; an Avro array is a
        count, the items' bodies, and a zero. Items encoded one by one (``encode_item``,
        ``journal_entry``) are framed without decoding or validating anything again.
        """
        header, _ = self._writers[batch_type]
        if not items:
            return header + b"\x00"
        return b"".join((header, _long(len(items)), *items, b"\x00"))

    @staticmethod
    def journal_entry(run_id: str, record: bytes) -> bytes:
        """The Avro body of one ``JournalEntry`` (a run id and a stored record)."""
        name = run_id.encode()
        return b"".join((_long(len(name)), name, _long(len(record)), record))

    @overload
    def decode(self, data: bytes | None, expected: type[E]) -> E: ...

    @overload
    def decode(self, data: bytes | None, expected: tuple[type[Event], ...]) -> Event: ...

    def decode(self, data: bytes | None, expected: type[Event] | tuple[type[Event], ...]) -> Event:
        """Decode Avro wire bytes into one of the expected event types.

        Raises:
            DecodeError: The bytes are not a valid event of an expected type; says why.
        """
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if not data:
            raise DecodeError("empty record value", data)
        if len(data) < _HEADER.size or data[0] != _MAGIC:
            raise DecodeError(
                f"not baton Avro: starts with byte 0x{data[0]:02x}, expected magic byte 0", data
            )
        _, schema_id = _HEADER.unpack_from(data)
        reader = self._readers.get(schema_id)
        if reader is None:
            reader = self._fetched_reader(schema_id, data)
        event_type, writer_schema, reader_schema = reader
        if event_type not in allowed:
            names = ", ".join(t.__name__ for t in allowed)
            raise DecodeError(
                f"schema id {schema_id} is a {event_type.__name__}; expected {names}", data
            )
        compiled = self._compiled_readers.get(schema_id)
        try:
            if compiled is not None:  # written with the newest schema: no resolution
                record, end = compiled(data if isinstance(data, bytes) else bytes(data), 5)
            else:
                buffer = io.BytesIO(data)
                buffer.seek(_HEADER.size)
                record = fastavro.schemaless_reader(buffer, writer_schema, reader_schema)
                end = buffer.tell()
        except Exception as exc:  # truncated or garbled bodies raise many different types
            raise DecodeError(
                f"{event_type.__name__} body does not match schema id {schema_id}: "
                f"{type(exc).__name__}: {exc}",
                data,
            ) from exc
        if end != len(data):
            raise DecodeError(
                f"{len(data) - end} unexpected bytes after the "
                f"{event_type.__name__} body (schema id {schema_id})",
                data,
            )
        if schema_id in self._older:
            reader_raw, writer_raw = self._older[schema_id]
            record = _with_defaults_converted(record, reader_raw, writer_raw, {}, {})
        json_fields = self._json_fields[event_type]
        if not json_fields:
            return _validate(event_type, record, data)
        # A JSON field was parsed by orjson, within the limits: it is a JSON value already,
        # so pydantic validates the rest (walking a large JSON value twice is most of the
        # cost of decoding a request), and the JSON values are set as they are.
        fields: dict[str, Any] = record  # a fresh dict: the JSON values move out of it
        values = {}
        for name in json_fields:
            if name in fields:
                values[name] = fields[name]
                fields[name] = None
        event = _validate(event_type, fields, data)
        event.__dict__.update(values)
        return event

    def _fetched_reader(self, schema_id: int, data: bytes) -> tuple[type[Event], Any, Any]:
        """The reader of an id the registry gave someone else (Schema Registry mode).

        Asked once per id (the client caches), then kept: an upstream producer's own
        registration of ``TaskSubmitted``, or an older baton's version of an event, is read by
        Avro resolution against baton's newest schema, as a static older id would be.

        Raises:
            DecodeError: Not in Schema Registry mode, an id the registry does not have, a
                schema that is not one of baton's events, or the registry is unreachable
                (after the client's bounded retries: the record is dead-lettered with its
                bytes, to be replayed once the registry is back).
        """
        if self._remote is None:
            raise DecodeError(f"unknown schema id {schema_id}", data)
        try:
            writer = self._remote.schema(schema_id)
        except RegistryUnavailable as exc:
            raise DecodeError(f"schema id {schema_id}: {exc}", data) from None
        if writer is None:
            raise DecodeError(f"unknown schema id {schema_id} (not in the schema registry)", data)
        name = schema_name(writer)
        event_type = self._types_by_name.get(name or "")
        if event_type is None:
            raise DecodeError(f"schema id {schema_id} is {name}, not a baton event", data)
        latest = self._registry.latest(full_name(event_type))
        try:
            writer_parsed = fastavro.parse_schema(writer)
            if writer == latest.schema:
                reader: tuple[type[Event], Any, Any] = (event_type, writer_parsed, None)
            else:
                reader = (event_type, writer_parsed, latest.parsed)
                self._older[schema_id] = (latest.schema, writer)
        except Exception as exc:  # fastavro's schema errors have several types
            raise DecodeError(
                f"schema id {schema_id} ({name}) is not a usable Avro schema: {exc}", data
            ) from None
        self._readers[schema_id] = reader
        return reader

    def run_events(self, data: bytes | None) -> list[RunEvent]:
        """The run events in a ``run-events`` record: a batch, or one event (older releases).

        Raises:
            DecodeError: The value is neither.
        """
        event = self.decode(data, (RunEventBatch, RunEvent))
        return event.events if isinstance(event, RunEventBatch) else [event]  # type: ignore[list-item]

    def run_event_bodies(self, data: bytes | None) -> list[tuple[RunEvent, bytes]]:
        """The run events in a ``run-events`` record, each with its Avro body as written.

        The audit chain hashes each event's body byte for byte (``topics._audit``): the
        bodies are cut out of the record, never encoded again (an event an older schema
        wrote would encode to other bytes under the newest one).

        Raises:
            DecodeError: The value is neither a batch nor one event.
        """
        events = self.run_events(data)
        assert data is not None, "run_events refuses an empty value"
        schema_id = _HEADER.unpack_from(data)[1]
        if self._readers[schema_id][0] is RunEvent:
            return [(events[0], bytes(data[_HEADER.size :]))]
        items = self._batch_items(schema_id)
        buffer = io.BytesIO(data)
        buffer.seek(_HEADER.size)
        bodies: list[bytes] = []
        while count := _read_long(buffer):
            if count < 0:  # a block with its size in bytes
                count = -count
                _read_long(buffer)
            for _ in range(count):
                start = buffer.tell()
                fastavro.schemaless_reader(buffer, items, None)
                bodies.append(bytes(data[start : buffer.tell()]))
        return list(zip(events, bodies, strict=True))

    def _batch_items(self, schema_id: int) -> Any:
        """The item schema (parsed) of the ``RunEventBatch`` schema a record was written with."""
        cached = self._items.get(schema_id)
        if cached is not None:
            return cached
        entry = self._registry.by_id(schema_id) if self._remote is None else None
        if entry is not None:
            writer = entry.schema
        elif schema_id in self._older:
            writer = self._older[schema_id][1]
        else:
            writer = self._registry.latest(full_name(RunEventBatch)).schema
        items = fastavro.parse_schema(writer["fields"][0]["type"]["items"])
        self._items[schema_id] = items
        return items

    def decode_for(self, topic: Topic, data: bytes | None, key: bytes | None = None) -> Event:
        """Decode a record value from a catalog topic (JSON too, where the topic accepts it).

        Raises:
            DecodeError: The value is not a valid event for this topic; says why.
        """
        if topic.accepts_json and data and data.lstrip()[:1] == b"{":
            return self.decode_task_json(data, key)
        return self.decode(data, topic.value_types)

    def decode_task_json(self, data: bytes, key: bytes | None = None) -> TaskSubmitted:
        """Read a JSON task; a missing ``task_id`` is taken from the record key.

        Raises:
            DecodeError: Not JSON, not an object, or not a valid task; says why.
        """
        try:
            value = loads_json(data, what="a JSON task")
        except JsonLimitExceeded as exc:
            raise DecodeError(str(exc), data) from exc
        except ValueError as exc:  # orjson's errors, bad UTF-8 included
            raise DecodeError(f"invalid JSON: {exc}", data) from exc
        if not isinstance(value, dict):
            raise DecodeError("a JSON task must be an object", data)
        if "task_id" not in value and key:
            try:
                value["task_id"] = key.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("task_id missing and the record key is not UTF-8", data) from None
        return _validate(TaskSubmitted, value, data)


def _is_json(annotation: object) -> bool:
    return annotation is JsonValue


def _validate(event_type: type[E], value: Any, data: bytes) -> E:
    try:
        return event_type.model_validate(value)
    except ValidationError as exc:
        raise DecodeError(
            f"invalid {event_type.__name__}: {describe_validation_error(exc)}", data
        ) from None


def _named(schema: Any, names: dict[str, Any]) -> Any:
    """Resolve a reference to a named type, recording named types as they are defined."""
    if isinstance(schema, str):
        return names.get(schema, names.get(f"baton.events.{schema}", schema))
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum"):
        namespace = schema.get("namespace", "baton.events")
        names[f"{namespace}.{schema['name']}"] = schema
    return schema


def _with_defaults_converted(
    value: Any, reader: Any, writer: Any, reader_names: dict[str, Any], writer_names: dict[str, Any]
) -> Any:
    """Fix the defaults Avro resolution filled in for fields the writer did not have.

    fastavro fills a missing field with its default as written in the schema (JSON text, a
    decimal's bytes as a string) without its logical-type conversion; this applies it.
    """
    reader = _named(reader, reader_names)
    writer = _named(writer, writer_names)
    if value is None:
        return None
    if isinstance(reader, list):
        reader = next(b for b in reader if b != "null")
        writer = next(b for b in writer if b != "null") if isinstance(writer, list) else writer
        return _with_defaults_converted(value, reader, writer, reader_names, writer_names)
    if not isinstance(reader, dict):
        return value
    kind = reader.get("type")
    if kind == "record":
        writer_fields = {f["name"]: f["type"] for f in writer.get("fields", [])}
        for field in reader["fields"]:
            name = field["name"]
            if name in writer_fields:
                value[name] = _with_defaults_converted(
                    value[name], field["type"], writer_fields[name], reader_names, writer_names
                )
            else:
                value[name] = _convert_default(value[name], field["type"], reader_names)
    elif kind == "array":
        return [
            _with_defaults_converted(
                v, reader["items"], writer["items"], reader_names, writer_names
            )
            for v in value
        ]
    elif kind == "map":
        return {
            k: _with_defaults_converted(
                v, reader["values"], writer["values"], reader_names, writer_names
            )
            for k, v in value.items()
        }
    return value


def _convert_default(raw: Any, schema: Any, names: dict[str, Any]) -> Any:
    schema = _named(schema, names)
    if raw is None:
        return None
    if isinstance(schema, list):
        return _convert_default(raw, next(b for b in schema if b != "null"), names)
    if not isinstance(schema, dict):
        return raw
    logical = schema.get("logicalType")
    if logical == JSON_LOGICAL_TYPE:
        return orjson.loads(raw)
    if logical == "decimal":
        return Decimal(int.from_bytes(raw.encode("latin-1"), "big", signed=True)).scaleb(
            -int(schema.get("scale", 0))
        )
    if schema.get("type") == "record":
        return {
            f["name"]: _convert_default(raw.get(f["name"]), f["type"], names)
            for f in schema["fields"]
        }
    return raw


def _read_long(buffer: io.BytesIO) -> int:
    """One zig-zag varint (an Avro ``long``) read from a buffer."""
    shift = value = 0
    while True:
        byte = buffer.read(1)
        if not byte:
            raise DecodeError("a truncated Avro long", buffer.getvalue())
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (value >> 1) ^ -(value & 1)
        shift += 7
