"""Bounded JSON: every JSON value that enters baton passes these limits where it enters.

A task's input, a model's or a tool's answer and an API body are data from outside. JSON
nested thousands deep breaks Python's recursion (stdlib ``json``), and a value nested a few
hundred deep passes parsing, then breaks the next encoder (orjson stops at 254 levels) or
validator far from where it came in. So a value is checked once, at the door, against two
limits that name themselves in the error:

- ``MAX_JSON_DEPTH`` (64): containers (objects and arrays) nested inside each other;
- ``MAX_JSON_BYTES`` (1 MiB): the size of the JSON text.

Both are far above what a workflow needs and far below what breaks anything downstream.
"""

from __future__ import annotations

from typing import Any

import orjson

from topics._errors import PermanentError

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "JsonLimitExceeded", "check_json", "loads_json"]

#: Containers nested inside each other, at most.
MAX_JSON_DEPTH = 64
#: Bytes of JSON text, at most.
MAX_JSON_BYTES = 1 << 20


class JsonLimitExceeded(PermanentError):
    """JSON deeper or larger than baton accepts; the message names the limit."""


def loads_json(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str = "JSON",
    max_depth: int = MAX_JSON_DEPTH,
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Parse JSON text within the limits.

    Args:
        data: The text.
        what: What the text is, for the error (``task input``, ``tool answer``, ...).
        max_depth: Deepest nesting of containers allowed.
        max_bytes: Longest text allowed.

    Raises:
        JsonLimitExceeded: The text is over a limit.
        orjson.JSONDecodeError: It is not JSON (a ``ValueError``).
    """
    size = len(data.encode() if isinstance(data, str) else data)
    if size > max_bytes:
        raise JsonLimitExceeded(f"{what} is {size} bytes, over the limit of {max_bytes}")
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc) or "recursion" in str(exc):
            # orjson gives up at 1024 levels, long before Python's stack would.
            raise JsonLimitExceeded(
                f"{what} nests deeper than the limit of {max_depth} levels"
            ) from None
        raise
    check_json(value, what=what, max_depth=max_depth)
    return value


def check_json(value: Any, *, what: str = "JSON", max_depth: int = MAX_JSON_DEPTH) -> None:
    """Check the nesting of a value already parsed (by pydantic, httpx, YAML, ...).

    Iterative, so a value nested past Python's recursion limit is refused, not crashed on.

    Raises:
        JsonLimitExceeded: It nests deeper than ``max_depth``.
    """
    if not isinstance(value, dict | list):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise JsonLimitExceeded(f"{what} nests deeper than the limit of {max_depth} levels")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
