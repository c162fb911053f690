"""The sandboxed template engine."""

from __future__ import annotations

import pytest

from processors import (
    TemplateError,
    TemplateRenderError,
    compile_expression,
    compile_template,
    references,
    render_value,
)

CONTEXT = {
    "input": {"text": "My order <arrived> broken", "refund_usd": 150, "tags": ["a", "b"]},
    "steps": {"classify": {"output": {"category": "refund", "risk": "high"}}},
    "run": {"id": "r-1", "tenant": "acme"},
}


def test_one_expression_yields_the_value_itself() -> None:
    assert compile_template("{{ steps.classify.output }}").render(CONTEXT) == {
        "category": "refund",
        "risk": "high",
    }
    assert compile_template("{{ input.refund_usd * 2 }}").render(CONTEXT) == 300
    assert compile_template("  {{ input.tags }} ").render(CONTEXT) == ["a", "b"]


def test_anything_else_yields_text() -> None:
    assert compile_template("Ticket: {{ input.text }}").render(CONTEXT) == (
        "Ticket: My order <arrived> broken"
    )
    assert compile_template("{{ run.id }}/{{ run.tenant }}").render(CONTEXT) == "r-1/acme"
    assert (
        compile_template("{{ input | tojson }}").render(CONTEXT).startswith('{"text":"My order <')
    )


def test_routes_and_conditions() -> None:
    route = compile_template("{{ 'strong' if steps.classify.output.risk == 'high' else 'fast' }}")
    assert route.render(CONTEXT) == "strong"
    assert compile_expression("input.refund_usd > 100").holds(CONTEXT) is True
    assert compile_expression("'x' in input.tags").holds(CONTEXT) is False


def test_render_value_walks_json() -> None:
    value = {"a": "{{ input.refund_usd }}", "b": ["n={{ input.refund_usd }}", 3], "c": "plain"}
    assert render_value(value, CONTEXT) == {"a": 150, "b": ["n=150", 3], "c": "plain"}


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ input.missing }}", "no attribute 'missing'"),
        ("x {{ steps.classify.output.nope.deeper }}", "no attribute 'nope'"),
        ("{{ input.__class__ }}", "unsafe"),
        ("{{ input.text.__class__.__mro__ }}", "unsafe"),
        ("{{ 'a' * 10000000 }}", "too large"),
        ("{{ 2 ** 100000 }}", "exponent too large"),
        ("{{ input.tags.append('c') }}", "unsafe"),
        ("{{ range(10000000) | list }}", "(?i)range too big"),
    ],
)
def test_the_sandbox_refuses(source: str, reason: str) -> None:
    with pytest.raises(TemplateRenderError, match=reason):
        compile_template(source).render(CONTEXT)
    assert CONTEXT["input"]["tags"] == ["a", "b"]  # type: ignore[index]


def test_syntax_errors_are_found_at_compile_time() -> None:
    with pytest.raises(TemplateError, match="unexpected end of template"):
        compile_template("{{ input.text ")
    with pytest.raises(TemplateError):
        compile_expression("input.refund_usd >")


def test_references() -> None:
    names, steps = references(
        "{{ steps.classify.output.x }} {{ steps['policy'].output }}"
        "{% for item in input.tags %}{{ item }}{% endfor %}"
    )
    assert names == {"steps", "input"}
    assert steps == {"classify", "policy"}
    names, steps = references("value > 1 and steps.check.output.ok", expression=True)
    assert names == {"value", "steps"} and steps == {"check"}
