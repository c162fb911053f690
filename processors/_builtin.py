"""Python tools baton itself ships, registered under the ``baton.tools`` entry-point group."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import JsonValue

from processors._errors import ToolFailed

__all__ = ["clock"]


def clock(args: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """The current time: models do not know it, and often need it ("is the warranty over?").

    Args:
        args: ``{"timezone": "Europe/Paris"}`` (an IANA name; default UTC).

    Raises:
        ToolFailed: The timezone is unknown.
    """
    name = args.get("timezone") or "UTC"
    try:
        zone = ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolFailed(
            f"unknown timezone {name!r} (use an IANA name, e.g. Europe/Paris)"
        ) from None
    now = datetime.now(UTC)
    local = now.astimezone(zone)
    return {"utc": now.isoformat(), "local": local.isoformat(), "timezone": str(name)}
