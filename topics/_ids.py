"""The characters ids may hold, so that ids built from them stay unambiguous.

A task id is also the run id, and baton builds other ids from it with ``/`` between the
parts: approval ids (``<run>/<step>/<n>``), idempotency keys, spend reservations. A task id
is therefore 1 to 200 characters from ``A-Z a-z 0-9 . _ : -``, starting with a letter or a
digit: no ``/``, no whitespace, no newline, nothing a reader could split differently.
Tenant names follow the same rule (at most 64 characters); ``*`` is never a tenant, since
access and policy files use it to mean "every tenant".

A step kind a package adds (``custom_kind`` on the wire) names a topic
(``<prefix>.steps.<kind>``) and a metric label, so it is lower-case words of ``a-z 0-9 _``
joined by dots (``sentiment``, ``acme.score``), at most 64 characters, and never a kind baton
has built in (``llm``, ..., ``approval``) nor ``custom`` itself.
"""

from __future__ import annotations

import re

from pydantic_core import PydanticCustomError

__all__ = [
    "ID_CHARACTERS",
    "KIND_PATTERN",
    "MAX_KIND",
    "MAX_TASK_ID",
    "MAX_TENANT",
    "RESERVED_KINDS",
    "check_kind",
    "check_task_id",
    "check_tenant",
]

#: What ids are made of, as people read it.
ID_CHARACTERS = "A-Z a-z 0-9 . _ : -"
MAX_TASK_ID = 200
MAX_TENANT = 64
MAX_KIND = 64

#: What a custom step kind's name looks like (JSON Schema / ``re`` syntax).
KIND_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"

#: Names a custom kind cannot take: baton's own kinds, and the wire's marker for "custom".
RESERVED_KINDS = frozenset(
    {"llm", "tool", "retrieve", "validate", "transform", "agent", "approval", "custom"}
)

_KIND = re.compile(KIND_PATTERN)

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def _check(value: str, what: str, most: int) -> str:
    if not value:
        raise PydanticCustomError("empty_id", f"a {what} cannot be empty")
    if len(value) > most:
        raise PydanticCustomError(
            "long_id", f"a {what} has at most {most} characters, not {len(value)}"
        )
    if not value[0].isascii() or not value[0].isalnum():
        raise PydanticCustomError(
            "id_start",
            f"{{value}} is not a valid {what}: it must start with a letter or a digit",
            {"value": repr(value)},
        )
    if _ID.fullmatch(value) is None:
        bad = next(c for c in value if not re.fullmatch(r"[A-Za-z0-9._:-]", c))
        raise PydanticCustomError(
            "id_characters",
            f"{{value}} is not a valid {what}: {{bad}} is not allowed (use {ID_CHARACTERS})",
            {"value": repr(value), "bad": repr(bad)},
        )
    return value


def check_task_id(value: str) -> str:
    """``value`` if it is a valid task id.

    Raises:
        PydanticCustomError: Naming the character that is not allowed (as a field error).
    """
    return _check(value, "task id", MAX_TASK_ID)


def check_tenant(value: str) -> str:
    """``value`` if it is a valid tenant name.

    Raises:
        PydanticCustomError: Naming the character that is not allowed (as a field error).
    """
    return _check(value, "tenant name", MAX_TENANT)


def check_kind(value: str) -> str:
    """``value`` if it is a valid name for a custom step kind.

    Raises:
        PydanticCustomError: Saying what is wrong with the name (as a field error).
    """
    if len(value) > MAX_KIND:
        raise PydanticCustomError(
            "long_kind", f"a step kind has at most {MAX_KIND} characters, not {len(value)}"
        )
    if _KIND.fullmatch(value) is None:
        raise PydanticCustomError(
            "kind_characters",
            "{value} is not a step kind name: use lower-case words of a-z 0-9 _ joined by "
            "dots, each starting with a letter (sentiment, acme.score)",
            {"value": repr(value)},
        )
    if value in RESERVED_KINDS:
        raise PydanticCustomError(
            "reserved_kind",
            "{value} is a kind baton has built in, not a custom kind",
            {"value": repr(value)},
        )
    return value
