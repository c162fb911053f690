"""The characters ids may hold, so that ids built from them stay unambiguous.

A task id is also the run id, and baton builds other ids from it with ``/`` between the
parts: approval ids (``<run>/<step>/<n>``), idempotency keys, spend reservations. A task id
is therefore 1 to 200 characters from ``A-Z a-z 0-9 . _ : -``, starting with a letter or a
digit: no ``/``, no whitespace, no newline, nothing a reader could split differently.
Tenant names follow the same rule (at most 64 characters); ``*`` is never a tenant, since
access and policy files use it to mean "every tenant".
"""

from __future__ import annotations

import re

from pydantic_core import PydanticCustomError

__all__ = ["ID_CHARACTERS", "MAX_TASK_ID", "MAX_TENANT", "check_task_id", "check_tenant"]

#: What ids are made of, as people read it.
ID_CHARACTERS = "A-Z a-z 0-9 . _ : -"
MAX_TASK_ID = 200
MAX_TENANT = 64

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
