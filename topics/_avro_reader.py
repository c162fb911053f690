"""Avro binary decoding of baton's events, compiled once per schema.

The counterpart of ``_avro_writer``: for a record written with the newest schema of its
type (nearly every record), a chain of small functions compiled from that schema reads the
body into the dict pydantic validates, JSON fields parsed within the JSON limits. A record
written with an older schema version needs Avro's schema resolution, which fastavro does.
A unit test checks that both read the same values from every event type.

Every way bytes can be wrong (truncated, a bad varint, a branch or symbol out of range,
bad UTF-8) raises an exception here, which the codec turns into a ``DecodeError``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from topics._avro_writer import Unsupported
from topics._json import loads_json

__all__ = ["Reader", "compile_reader"]

#: Reads one value at a position: the value and the position after it.
Reader = Callable[[bytes, int], tuple[Any, int]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d").unpack_from


class BadRecord(ValueError):
    """Bytes that are not a value of the schema."""


def compile_reader(schema: Any) -> Reader:
    """A reader for values of ``schema`` (a parsed JSON schema, as the ``.avsc`` files hold).

    Raises:
        Unsupported: The schema has a shape this module does not compile.
    """
    return _compile(schema, {})


def _long(data: bytes, pos: int) -> tuple[int, int]:
    byte = data[pos]
    pos += 1
    if byte < 0x80:
        return (byte >> 1) ^ -(byte & 1), pos
    value = byte & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7
        if shift > 63:
            raise BadRecord("a varint longer than 10 bytes")


def _sized(data: bytes, pos: int) -> tuple[bytes, int]:
    byte = data[pos]
    if byte < 0x80 and not byte & 1:  # a length under 64: one byte (most of them)
        size, pos = byte >> 1, pos + 1
    else:
        size, pos = _long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise BadRecord(f"a length of {size} past the end of the record")
    return data[pos:end], end


def _string(data: bytes, pos: int) -> tuple[str, int]:
    byte = data[pos]
    if byte < 0x80 and not byte & 1:
        size, pos = byte >> 1, pos + 1
    else:
        size, pos = _long(data, pos)
    end = pos + size
    if size < 0 or end > len(data):
        raise BadRecord(f"a length of {size} past the end of the record")
    return data[pos:end].decode(), end


def _boolean(data: bytes, pos: int) -> tuple[bool, int]:
    byte = data[pos]
    if byte > 1:
        raise BadRecord(f"a boolean byte {byte}")
    return byte == 1, pos + 1


def _double(data: bytes, pos: int) -> tuple[float, int]:
    if pos + 8 > len(data):
        raise BadRecord("a double past the end of the record")
    return _DOUBLE(data, pos)[0], pos + 8


def _null(data: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _eight(data: bytes, pos: int) -> tuple[int, int]:
    """A long in exactly eight varint bytes (as every timestamp from 1978 to 3111), or any."""
    raw = int.from_bytes(data[pos : pos + 8], "little")
    if raw & 0x8080808080808080 != 0x0080808080808080:  # not 7 continued bytes and a last
        return _long(data, pos)
    # Drop the continuation bits and close the 7-bit groups up, in three halvings.
    x = raw & 0x7F7F7F7F7F7F7F7F
    x = (x & 0x007F007F007F007F) | ((x >> 1) & 0x3F803F803F803F80)
    x = (x & 0x00003FFF00003FFF) | ((x >> 2) & 0x0FFFC0000FFFC000)
    x = (x & 0x000000000FFFFFFF) | ((x >> 4) & 0x00FFFFFFF0000000)
    return (x >> 1) ^ -(x & 1), pos + 8


def _timestamp(data: bytes, pos: int) -> tuple[datetime, int]:
    micros, pos = _eight(data, pos)
    return _EPOCH + timedelta(0, 0, micros), pos


def _json(data: bytes, pos: int) -> tuple[Any, int]:
    raw, pos = _sized(data, pos)
    return loads_json(raw, what="a JSON field"), pos


def _decimal(scale: int) -> Reader:
    cache: dict[bytes, Decimal] = {}

    def read(data: bytes, pos: int) -> tuple[Decimal, int]:
        raw, pos = _sized(data, pos)
        value = cache.get(raw)
        if value is None:
            value = Decimal(int.from_bytes(raw, "big", signed=True)).scaleb(-scale)
            if len(cache) > 4096:
                cache.clear()
            cache[raw] = value
        return value, pos

    return read


def _compile(schema: Any, names: dict[str, Reader]) -> Reader:
    if isinstance(schema, str):
        found = names.get(schema) or names.get(f"baton.events.{schema}")
        if found is not None:
            return found
        primitives: dict[str, Reader] = {
            "string": _string,
            "long": _long,
            "int": _long,
            "boolean": _boolean,
            "double": _double,
            "bytes": _sized,
            "null": _null,
        }
        if schema not in primitives:
            raise Unsupported(f"type {schema!r}")
        return primitives[schema]
    if isinstance(schema, list):
        return _union(schema, names)
    kind = schema.get("type")
    logical = schema.get("logicalType")
    if logical == "timestamp-micros" and kind == "long":
        return _timestamp
    if logical == "decimal" and kind == "bytes":
        return _decimal(int(schema.get("scale", 0)))
    if logical == "json" and kind == "string":
        return _json
    if kind == "record":
        return _record(schema, names)
    if kind == "enum":
        return _enum(list(schema["symbols"]))
    if kind == "array":
        return _array(_compile(schema["items"], names))
    if kind == "map":
        return _map(_compile(schema["values"], names))
    if isinstance(kind, str | list | dict) and not logical:
        return _compile(kind, names)
    raise Unsupported(f"schema {schema!r}")


def _union(branches: list[Any], names: dict[str, Reader]) -> Reader:
    if len(branches) != 2 or branches[0] != "null":
        raise Unsupported(f"union {branches!r}")
    inner = _compile(branches[1], names)

    def union(data: bytes, pos: int) -> tuple[Any, int]:
        branch = data[pos]
        if branch == 0:
            return None, pos + 1
        if branch == 2:
            return inner(data, pos + 1)
        raise BadRecord(f"union branch byte {branch}")

    return union


def _enum(symbols: list[str]) -> Reader:
    def enum(data: bytes, pos: int) -> tuple[str, int]:
        index, pos = _long(data, pos)
        if not 0 <= index < len(symbols):
            raise BadRecord(f"enum index {index} of {len(symbols)} symbols")
        return symbols[index], pos

    return enum


def _record(schema: dict[str, Any], names: dict[str, Reader]) -> Reader:
    fields: list[tuple[str, Reader]] = []

    def record(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        value: dict[str, Any] = {}
        for name, read in fields:
            value[name], pos = read(data, pos)
        return value, pos

    namespace = schema.get("namespace", "baton.events")
    names[f"{namespace}.{schema['name']}"] = record  # a later field may name it
    names[schema["name"]] = record
    fields.extend((field["name"], _compile(field["type"], names)) for field in schema["fields"])
    return record


def _array(item: Reader) -> Reader:
    def array(data: bytes, pos: int) -> tuple[list[Any], int]:
        values: list[Any] = []
        while True:
            count, pos = _long(data, pos)
            if count == 0:
                return values, pos
            if count < 0:  # a block with its size in bytes
                count = -count
                _, pos = _long(data, pos)
            for _ in range(count):
                value, pos = item(data, pos)
                values.append(value)

    return array


def _map(item: Reader) -> Reader:
    def mapping(data: bytes, pos: int) -> tuple[dict[str, Any], int]:
        values: dict[str, Any] = {}
        while True:
            count, pos = _long(data, pos)
            if count == 0:
                return values, pos
            if count < 0:
                count = -count
                _, pos = _long(data, pos)
            for _ in range(count):
                key, pos = _string(data, pos)
                values[key], pos = item(data, pos)

    return mapping
