"""Avro binary encoding of baton's events, compiled once per schema.

fastavro is baton's Avro implementation: it parses and resolves schemas and reads every
record. Writing, it walks a generic schema for every record and converts logical types in
Python (a decimal costs several microseconds), and it needs the event as a dict first
(``model_dump``). The coordinator writes a dozen small events per run, so this module compiles
each schema once into a chain of small functions that read the event's attributes directly.

It writes exactly what fastavro writes, byte for byte: a unit test checks every event type
(every field set, and only the required ones) against ``fastavro.schemaless_writer``. A
schema shape it does not know (a union other than ``["null", X]``, say) is not compiled, and
fastavro writes that event type instead.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

__all__ = ["Unsupported", "Writer", "compile_writer"]

#: Appends one value's encoding to the buffer.
Writer = Callable[[Any, bytearray], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_DOUBLE = struct.Struct("<d").pack
_SMALL = [bytes(((n << 1) ^ (n >> 63),)) if n < 64 else b"" for n in range(64)]


class Unsupported(Exception):
    """A schema shape this module does not compile (fastavro writes it)."""


def _long(value: int) -> bytes:
    if 0 <= value < 64:
        return _SMALL[value]
    zigzag = (value << 1) ^ (value >> 63)
    out = bytearray()
    while zigzag & ~0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def compile_writer(schema: Any) -> Writer:
    """A writer for values of ``schema`` (a parsed JSON schema, as the ``.avsc`` files hold).

    Raises:
        Unsupported: The schema has a shape this module does not compile.
    """
    return _compile(schema, {})


def _compile(schema: Any, names: dict[str, Writer]) -> Writer:
    if isinstance(schema, str):
        if schema in names:
            return names[schema]
        if f"baton.events.{schema}" in names:
            return names[f"baton.events.{schema}"]
        return _primitive(schema)
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
        symbols = {symbol: _long(i) for i, symbol in enumerate(schema["symbols"])}

        def enum(value: Any, out: bytearray) -> None:
            out += symbols[value]

        return enum
    if kind == "array":
        return _array(_compile(schema["items"], names))
    if kind == "map":
        return _map(_compile(schema["values"], names))
    if isinstance(kind, str | list | dict) and not logical:
        return _compile(kind, names)
    raise Unsupported(f"schema {schema!r}")


def _primitive(kind: str) -> Writer:
    if kind == "string":
        return _string
    if kind == "long" or kind == "int":
        return _integer
    if kind == "boolean":
        return _boolean
    if kind == "double":
        return _double
    if kind == "bytes":
        return _bytes
    if kind == "null":
        return _null
    raise Unsupported(f"type {kind!r}")


def _string(value: str, out: bytearray) -> None:
    data = value.encode()
    out += _long(len(data))
    out += data


def _integer(value: int, out: bytearray) -> None:
    out += _long(value)


def _boolean(value: bool, out: bytearray) -> None:
    out += b"\x01" if value else b"\x00"


def _double(value: float, out: bytearray) -> None:
    out += _DOUBLE(value)


def _bytes(value: bytes, out: bytearray) -> None:
    out += _long(len(value))
    out += value


def _null(value: None, out: bytearray) -> None:
    if value is not None:
        raise ValueError(f"{value!r} is not null")


def _json(value: Any, out: bytearray) -> None:
    data = orjson.dumps(value)
    out += _long(len(data))
    out += data


def _eight(zigzag: int) -> bytes:
    """A zigzagged long of 50 to 56 bits (every timestamp from 1978 to 3111) as its varint.

    Spreads the 56 bits into eight 7-bit groups in three doublings and sets the
    continuation bit of the first seven: what ``_long``'s loop writes, a byte at a time.
    """
    x = (zigzag & 0x000000000FFFFFFF) | ((zigzag & 0x00FFFFFFF0000000) << 4)
    x = (x & 0x00003FFF00003FFF) | ((x & 0x0FFFC0000FFFC000) << 2)
    x = (x & 0x007F007F007F007F) | ((x & 0x3F803F803F803F80) << 1)
    return (x | 0x0080808080808080).to_bytes(8, "little")


def _timestamp(value: datetime, out: bytearray) -> None:
    delta = value - (_EPOCH if value.tzinfo is not None else _EPOCH_NAIVE)
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    zigzag = (micros << 1) ^ (micros >> 63)
    out += _eight(zigzag) if 1 << 49 <= zigzag < 1 << 56 else _long(micros)


def _decimal(scale: int) -> Writer:
    cache: dict[Decimal, bytes] = {}

    def write(value: Decimal, out: bytearray) -> None:
        encoded = cache.get(value)
        if encoded is None:
            encoded = _decimal_bytes(value, scale)
            if len(cache) > 4096:
                cache.clear()
            cache[value] = encoded
        out += encoded

    return write


def _decimal_bytes(value: Decimal, scale: int) -> bytes:
    """Avro's decimal: the unscaled value, two's complement, as few bytes as fastavro uses."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or -exponent > scale:
        raise ValueError("Scale provided in schema does not match the decimal")
    unscaled: int = 0
    for digit in digits:
        unscaled = unscaled * 10 + digit
    unscaled *= 10 ** (exponent + scale)
    size = (unscaled.bit_length() + 1 + 7) // 8
    data = (-unscaled if sign else unscaled).to_bytes(size, "big", signed=True)
    return _long(len(data)) + data


def _union(branches: list[Any], names: dict[str, Writer]) -> Writer:
    if len(branches) != 2 or branches[0] != "null":
        raise Unsupported(f"union {branches!r}")
    inner = _compile(branches[1], names)

    def union(value: Any, out: bytearray) -> None:
        if value is None:
            out += b"\x00"
        else:
            out += b"\x02"
            inner(value, out)

    return union


def _record(schema: dict[str, Any], names: dict[str, Writer]) -> Writer:
    fields: list[tuple[str, Writer]] = []

    def record(value: Any, out: bytearray) -> None:
        for name, write in fields:
            write(getattr(value, name), out)

    namespace = schema.get("namespace", "baton.events")
    names[f"{namespace}.{schema['name']}"] = record  # a later field may name it
    names[schema["name"]] = record
    fields.extend((field["name"], _compile(field["type"], names)) for field in schema["fields"])
    return record


def _array(item: Writer) -> Writer:
    def array(value: list[Any], out: bytearray) -> None:
        if value:
            out += _long(len(value))
            for element in value:
                item(element, out)
        out += b"\x00"

    return array


def _map(item: Writer) -> Writer:
    def mapping(value: dict[str, Any], out: bytearray) -> None:
        if value:
            out += _long(len(value))
            for key, element in value.items():
                _string(key, out)
                item(element, out)
        out += b"\x00"

    return mapping
