"""JSON Schema checks shared by the llm and validate processors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from pydantic import JsonValue

from topics import ConfigurationError

__all__ = ["check_schema", "json_path", "schema_problems"]


def check_schema(schema: Mapping[str, JsonValue]) -> None:
    """Check that ``schema`` is a valid JSON Schema of the draft it declares.

    Raises:
        ConfigurationError: It is not.
    """
    _validator(_key(schema))


def schema_problems(schema: Mapping[str, JsonValue], value: Any, root: str) -> list[str]:
    """Every way ``value`` breaks ``schema``, each naming its path (``value.text: ...``).

    The schema's ``$schema`` picks the draft (2020-12 when it names none); ``format`` is
    checked for the formats jsonschema knows.

    Raises:
        ConfigurationError: The schema itself is not a valid JSON Schema.
    """
    validator = _validator(_key(schema))
    errors = sorted(validator.iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{json_path(root, e.absolute_path)}: {e.message}" for e in errors]


def _key(schema: Mapping[str, JsonValue]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)


@lru_cache(maxsize=1024)
def _validator(schema_json: bytes) -> Validator:
    schema = orjson.loads(schema_json)
    cls = validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        where = json_path("schema", exc.absolute_path)
        raise ConfigurationError(f"not a valid JSON Schema: {where}: {exc.message}") from None
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def json_path(root: str, path: Iterable[str | int]) -> str:
    """``value``, ``value.text``, ``value.items[0]``: a path as people write it."""
    text = root
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
