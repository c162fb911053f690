"""Bounded YAML: every YAML document baton reads passes size, nesting and alias limits."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import load_model_catalog, load_tools
from streams._access import load_access
from streams._config import load_settings
from streams._policies import load_policies
from streams.workflow import WorkflowError, load_workflow, parse_workflow
from topics import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    ConfigurationError,
    YamlLimitExceeded,
    load_yaml,
)


def billion_laughs(levels: int = 9) -> str:
    """The classic: nine levels of nine aliases each, 9**9 'lol's once expanded."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    names = "abcdefghijklmnop"
    for previous, name in zip(names, names[1:levels], strict=False):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(YamlLimitExceeded, match=rf"^w\.yaml: .*YAML node limit \({MAX_YAML_NODES}"):
        load_yaml(billion_laughs(), origin="w.yaml")
    assert time.monotonic() - started < 1.0


def test_aliases_within_the_limit_load_as_safe_load_does() -> None:
    text = billion_laughs(levels=4)  # 9**4 = 6561 'lol's
    assert load_yaml(text) == yaml.safe_load(text)
    merged = "base: &base {a: 1, b: 2}\nother: {<<: *base, b: 3}\n"
    assert load_yaml(merged) == {"base": {"a": 1, "b": 2}, "other": {"a": 1, "b": 3}}


@pytest.mark.parametrize("text", ["&a [*a]", "a: &x {b: [1, *x]}", "&m {k: *m}"])
def test_an_alias_that_contains_itself_is_refused(text: str) -> None:
    with pytest.raises(YamlLimitExceeded, match="an alias refers to a node that contains it"):
        load_yaml(text, origin="cycle.yaml")


def test_deep_nesting_is_refused_before_it_breaks_the_composer() -> None:
    deep = "[" * 10_000 + "]" * 10_000  # PyYAML's recursive composer would hit RecursionError
    with pytest.raises(YamlLimitExceeded, match=rf"YAML depth limit \({MAX_YAML_DEPTH} levels\)"):
        load_yaml(deep)
    ok = "[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH
    assert load_yaml(ok) == yaml.safe_load(ok)


def test_a_large_document_is_refused_before_it_is_parsed() -> None:
    text = "x: '" + "y" * MAX_YAML_BYTES + "'\n"
    with pytest.raises(YamlLimitExceeded, match=rf"over the YAML size limit \({MAX_YAML_BYTES}"):
        load_yaml(text, origin="big.yaml")


def test_yaml_errors_stay_yaml_errors() -> None:
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: [1, 2")
    with pytest.raises(yaml.YAMLError):
        load_yaml("a: *nowhere")


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(_JSONISH)
def test_documents_within_the_limits_load_like_safe_load(value: Any) -> None:
    text = yaml.safe_dump(value)
    assert load_yaml(text) == yaml.safe_load(text)


# -- every loader uses it --------------------------------------------------------------------


def _settings(path: Path) -> object:
    return load_settings({"BATON_CONFIG": str(path)})


LOADERS: list[tuple[str, Callable[[Path], object]]] = [
    ("workflow", load_workflow),
    ("models", load_model_catalog),
    ("tools", load_tools),
    ("policies", load_policies),
    ("access", lambda path: load_access(path, {})),
    ("settings", _settings),
]


@pytest.mark.parametrize(("name", "load"), LOADERS, ids=[name for name, _ in LOADERS])
def test_every_yaml_file_baton_reads_refuses_a_billion_laughs(
    tmp_path: Path, name: str, load: Callable[[Path], object]
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(billion_laughs())
    started = time.monotonic()
    with pytest.raises(ConfigurationError) as caught:
        load(path)
    assert time.monotonic() - started < 1.0
    assert str(path) in str(caught.value)
    assert f"YAML node limit ({MAX_YAML_NODES} nodes" in str(caught.value)


def test_a_deployed_definition_is_refused_the_same_way() -> None:
    with pytest.raises(WorkflowError, match=r"^support@abc: expands to more than the YAML node"):
        parse_workflow(billion_laughs(), "support@abc")
