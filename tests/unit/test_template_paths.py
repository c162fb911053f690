"""A template that is one variable path is read from the context directly, as Jinja would."""

from __future__ import annotations

from typing import Any

import pytest

from processors import TemplateRenderError, compile_template
from processors._templates import _compiled, _json_value, _path_of

CONTEXT: dict[str, Any] = {
    "input": {"text": "hi", "n": 3, "list": [10, {"x": "y"}], "items": "a key named items"},
    "steps": {"draft": {"output": {"text": "d", "k": [1]}}, "keys": {"output": 5}},
    "run": {"id": "r1"},
}

SOURCES = [
    "{{ input.text }}",
    "{{ input['text'] }}",
    "{{ steps.draft.output }}",
    "{{ steps['draft'].output.k[0] }}",
    "{{ input.list[1].x }}",
    "{{ input.list[5] }}",  # past the end
    "{{ input.nope }}",  # missing
    "{{ input.items }}",  # a dict's method wins over its key, as in Jinja
    "{{ input['items'] }}",  # ... but not in a subscript
    "{{ steps.keys.output }}",
    "{{ run.id.upper }}",  # an attribute of a string
    "  {{ input.n }}  ",
]


def jinja(source: str) -> Any:
    expression, _ = _compiled(source)
    return _json_value(expression(**CONTEXT))


@pytest.mark.parametrize("source", SOURCES)
def test_a_path_renders_exactly_as_jinja_renders_it(source: str) -> None:
    assert _path_of(source) is not None
    try:
        expected: Any = jinja(source)
    except Exception as exc:  # whatever Jinja raises, the template says the same
        with pytest.raises(TemplateRenderError):
            compile_template(source).render(CONTEXT)
        assert type(exc).__name__
        return
    assert compile_template(source).render(CONTEXT) == expected


@pytest.mark.parametrize(
    "source",
    [
        "{{ input.n + 1 }}",
        "{{ input.text | upper }}",
        "{{ input[input.text] }}",
        "{{ input.list[-1] }}",
        "a {{ x }}",
    ],
)
def test_anything_else_is_not_a_path(source: str) -> None:
    assert _path_of(source) is None
