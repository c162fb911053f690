"""Avro schemas derived from the event models.

The models are the source of truth; ``avro_schema(Model)`` is the schema they imply. The
committed ``.avsc`` files (see ``_registry``) must equal it, which a unit test checks, so the
wire contract can never drift from the code silently.

Mapping: ``str`` -> string, ``int`` -> long, ``float`` -> double, ``bool`` -> boolean,
``bytes`` -> bytes, ``Money`` -> bytes/decimal(24, 12), ``Timestamp`` -> long/timestamp-micros,
``JsonValue`` -> string/json (JSON text), ``StrEnum`` -> enum, ``X | None`` -> ["null", X],
``list[X]`` -> array, ``dict[str, X]`` -> map, a ``Record`` -> a named record.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import types
import typing
from typing import Any

import fastavro.read
import fastavro.write
import orjson
from pydantic import AwareDatetime, JsonValue
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from topics._events import MONEY_SCALE, Record
from topics._json import loads_json

__all__ = ["NAMESPACE", "JSON_LOGICAL_TYPE", "avro_schema", "full_name"]

NAMESPACE = "baton.events"
JSON_LOGICAL_TYPE = "json"


def _write_json(value: Any, schema: Any) -> str:
    return orjson.dumps(value).decode()


def _read_json(text: str, writer_schema: Any, reader_schema: Any) -> Any:
    # JSON inside an event is checked against the depth and size limits where it enters.
    return loads_json(text, what="a JSON field")


# fastavro applies these to every string field with logicalType "json", at any depth; other
# Avro readers see plain JSON text.
fastavro.write.LOGICAL_WRITERS["string-" + JSON_LOGICAL_TYPE] = _write_json
fastavro.read.LOGICAL_READERS["string-" + JSON_LOGICAL_TYPE] = _read_json

_PRIMITIVES: dict[type, str] = {
    str: "string",
    int: "long",
    float: "double",
    bool: "boolean",
    bytes: "bytes",
}


def full_name(model: type[Record] | type[enum.Enum]) -> str:
    """The Avro full name of a model or enum: ``baton.events.<ClassName>``."""
    return f"{NAMESPACE}.{model.__name__}"


def avro_schema(model: type[Record]) -> dict[str, Any]:
    """The Avro schema a model implies, with every named type defined at first use."""
    return _record_schema(model, defined=set())


def _record_schema(model: type[Record], defined: set[str]) -> dict[str, Any]:
    defined.add(full_name(model))
    fields = []
    for name, info in model.model_fields.items():
        field: dict[str, Any] = {"name": name, "type": _type(info.annotation, info, defined)}
        if info.description:
            field["doc"] = info.description
        default = _default(info)
        if default is not _NO_DEFAULT:
            field["default"] = default
        fields.append(field)
    schema: dict[str, Any] = {
        "type": "record",
        "name": model.__name__,
        "namespace": NAMESPACE,
        "fields": fields,
    }
    doc = (model.__doc__ or "").strip().splitlines()
    if doc:
        schema["doc"] = doc[0]
    return schema


_NO_DEFAULT = object()


def _is_json(annotation: object) -> bool:
    return annotation is JsonValue


def _default(info: FieldInfo) -> Any:
    if _is_json(info.annotation) and info.default is None:
        return "null"  # JSON text of null: the field's Avro type is a string
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]  # no-argument factories only
    elif info.default is PydanticUndefined:
        return _NO_DEFAULT
    else:
        value = info.default
    return _json_default(value)


def _json_default(value: Any) -> Any:
    """An Avro default in its JSON form (bytes and decimals default as strings)."""
    if isinstance(value, Record):
        return {k: _json_default(v) for k, v in value.model_dump().items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, decimal.Decimal):
        if value != 0:
            raise TypeError("only a zero default is supported for money fields")
        return "\u0000"  # decimal(bytes) default: zero as one two's-complement byte
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: _json_default(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_default(v) for v in value]
    return value


def _type(annotation: Any, info: FieldInfo | None, defined: set[str]) -> Any:
    if _is_json(annotation):
        return {"type": "string", "logicalType": JSON_LOGICAL_TYPE}
    if annotation is AwareDatetime or annotation is dt.datetime:
        return {"type": "long", "logicalType": "timestamp-micros"}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) != len(typing.get_args(annotation)) - 1 or len(members) != 1:
            raise TypeError(f"only `X | None` unions map to Avro, not {annotation}")
        return ["null", _type(members[0], info, defined)]
    if origin is list:
        (item,) = typing.get_args(annotation)
        return {"type": "array", "items": _type(item, None, defined)}
    if origin is dict:
        key, value = typing.get_args(annotation)
        if key is not str:
            raise TypeError(f"Avro maps need str keys, not {key}")
        return {"type": "map", "values": _type(value, None, defined)}
    if origin is typing.Annotated:
        return _type(typing.get_args(annotation)[0], info, defined)
    if isinstance(annotation, type):
        if issubclass(annotation, Record):
            if full_name(annotation) in defined:
                return full_name(annotation)
            return _record_schema(annotation, defined)
        if issubclass(annotation, enum.Enum):
            if full_name(annotation) in defined:
                return full_name(annotation)
            defined.add(full_name(annotation))
            return {
                "type": "enum",
                "name": annotation.__name__,
                "namespace": NAMESPACE,
                "symbols": [member.value for member in annotation],
            }
        if issubclass(annotation, bool):
            return "boolean"
        if annotation in _PRIMITIVES:
            return _PRIMITIVES[annotation]
        if issubclass(annotation, decimal.Decimal):
            return {
                "type": "bytes",
                "logicalType": "decimal",
                "precision": 24,
                "scale": MONEY_SCALE,
            }
    raise TypeError(f"no Avro mapping for {annotation!r}")
