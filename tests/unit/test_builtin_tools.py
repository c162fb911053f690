"""The python tools baton ships, loaded through their real entry points."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from processors import ToolFailed, load_tools

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_the_example_registry_loads_and_its_clock_tells_the_time() -> None:
    registry = load_tools(EXAMPLES / "tools.yaml")
    clock = registry.function("clock")

    answer = clock({"timezone": "Asia/Tokyo"})

    utc = datetime.fromisoformat(str(answer["utc"]))
    assert abs(utc - datetime.now(UTC)) < timedelta(seconds=5)
    assert str(answer["local"]).endswith("+09:00")


def test_an_unknown_timezone_is_a_tool_failure_naming_it() -> None:
    clock = load_tools(EXAMPLES / "tools.yaml").function("clock")
    with pytest.raises(ToolFailed, match="Mars/Olympus"):
        clock({"timezone": "Mars/Olympus"})
