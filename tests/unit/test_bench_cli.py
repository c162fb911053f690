"""``baton bench``: finds the suite in a source checkout, or says why it cannot run."""

from __future__ import annotations

import importlib.util
from importlib.machinery import ModuleSpec

import pytest
from click.testing import CliRunner

from streams.cli import _bench
from topics import ConfigurationError


def test_help_comes_from_the_suite() -> None:
    pytest.importorskip("psutil")  # the suite's own dependency (the bench extra)
    result = CliRunner().invoke(_bench.bench, ["--help"])
    assert result.exit_code == 0
    assert result.output.startswith("usage: baton bench")
    assert "--quick" in result.output and "--only" in result.output


def test_a_bad_selection_is_a_clean_error() -> None:
    pytest.importorskip("psutil")
    result = CliRunner().invoke(_bench.bench, ["--only", "T13"])
    assert result.exit_code == 1
    assert "not measured yet: T13" in result.output


def test_outside_a_source_checkout_it_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(_bench, "_checkout", lambda: None)
    with pytest.raises(ConfigurationError, match="runs from a source checkout"):
        _bench._load_suite()


def test_missing_dependencies_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def find_spec(name: str) -> ModuleSpec | None:
        return None if name == "psutil" else ModuleSpec(name, None)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ConfigurationError, match=r"needs psutil: pip install -e '\.\[bench\]'"):
        _bench._load_suite()
