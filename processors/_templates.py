"""Templates and conditions: one sandboxed engine for everything a workflow computes.

Workflows never run Python. Prompts, arguments, routes, ``when:`` conditions and outputs are
Jinja2 templates and expressions evaluated in Jinja2's ``ImmutableSandboxedEnvironment``:
no attribute starting with ``_``, no mutation of the context, no unbounded ranges, and no
string or number blown up past a fixed size.

A template that is exactly one expression (``"{{ steps.draft.output }}"``) yields the value
itself (a dict stays a dict); any other template yields text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from topics import ConfigurationError, PermanentError

__all__ = [
    "Expression",
    "Template",
    "TemplateError",
    "TemplateRenderError",
    "compile_expression",
    "compile_template",
    "is_template",
    "references",
    "render_value",
    "step_reads",
]

_MAX_SOURCE = 20_000
_MAX_RESULT = 1_000_000
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)


class TemplateError(ConfigurationError):
    """A template or expression that does not compile (found when a workflow is loaded)."""


class TemplateRenderError(PermanentError):
    """A template that failed while rendering: a missing value, a type error, a limit."""


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with size limits on the operators that can multiply memory."""

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise SecurityError("exponent too large")
        if operator == "*" and isinstance(left, str | list | tuple) and isinstance(right, int):
            if len(left) * right > _MAX_RESULT:
                raise SecurityError("result too large")
        if operator == "*" and isinstance(right, str | list | tuple) and isinstance(left, int):
            if len(right) * left > _MAX_RESULT:
                raise SecurityError("result too large")
        return super().call_binop(context, operator, left, right)


def _tojson(value: Any) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; prompts want the JSON as it is.
    return orjson.dumps(value, default=str).decode()


_ENV = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_ENV.intercepted_binops = frozenset({"*", "**"})
_ENV.filters["tojson"] = _tojson
_ENV.policies["json.dumps_function"] = _tojson


def is_template(text: str) -> bool:
    """Whether a string holds template syntax (otherwise it is used as it is)."""
    return "{{" in text or "{%" in text


def _to_json_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _to_json_value(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json_value(v, where) for v in value]
    if isinstance(value, StrictUndefined):
        raise TemplateRenderError(f"{where}: {value._undefined_message}")
    raise TemplateRenderError(f"{where}: the value is a {type(value).__name__}, not JSON")


@dataclass(frozen=True)
class Template:
    """A compiled template.

    Attributes:
        source: The template text.
    """

    source: str

    def render(self, context: Mapping[str, Any]) -> Any:
        """Render with a context; one-expression templates yield the value itself.

        Raises:
            TemplateRenderError: A value is missing, an operation fails, or a limit is hit.
        """
        try:
            if self._expression is not None:
                return _to_json_value(self._expression(**context), self.source)
            text = self._template.render(**context)
        except TemplateRenderError:
            raise
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateRenderError(f"template {self.source!r}: {exc}") from exc
        if len(text) > _MAX_RESULT:
            raise TemplateRenderError(f"template {self.source!r} rendered over {_MAX_RESULT} chars")
        return text

    @property
    def _expression(self) -> Any:
        return _compiled(self.source)[0]

    @property
    def _template(self) -> Any:
        return _compiled(self.source)[1]


@dataclass(frozen=True)
class Expression:
    """A compiled condition or expression, e.g. ``input.refund_usd > 100``.

    Attributes:
        source: The expression text.
    """

    source: str

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """The expression's value.

        Raises:
            TemplateRenderError: A value is missing or an operation fails.
        """
        try:
            return _compiled_expression(self.source)(**context)
        except (UndefinedError, SecurityError, TypeError, ValueError, ArithmeticError) as exc:
            raise TemplateRenderError(f"expression {self.source!r}: {exc}") from exc

    def holds(self, context: Mapping[str, Any]) -> bool:
        """Whether the expression is true in a context."""
        value = self.evaluate(context)
        if isinstance(value, StrictUndefined):
            raise TemplateRenderError(f"expression {self.source!r}: {value._undefined_message}")
        return bool(value)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> tuple[Any, Any]:
    match = _SINGLE_EXPRESSION.match(source)
    if match:
        return _ENV.compile_expression(match.group("expr"), undefined_to_none=False), None
    return None, _ENV.from_string(source)


@lru_cache(maxsize=4096)
def _compiled_expression(source: str) -> Any:
    return _ENV.compile_expression(source, undefined_to_none=False)


def _check_source(source: str, what: str) -> None:
    if len(source) > _MAX_SOURCE:
        raise TemplateError(f"{what} is longer than {_MAX_SOURCE} characters")


def compile_template(source: str) -> Template:
    """Compile a template, failing early on syntax errors.

    Raises:
        TemplateError: The template does not compile.
    """
    _check_source(source, "template")
    try:
        _compiled(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template {source!r}: {exc.message} (line {exc.lineno})") from exc
    return Template(source)


def compile_expression(source: str) -> Expression:
    """Compile an expression, failing early on syntax errors.

    Raises:
        TemplateError: The expression does not compile.
    """
    _check_source(source, "expression")
    try:
        _compiled_expression(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"expression {source!r}: {exc.message}") from exc
    return Expression(source)


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template string inside a JSON value (dicts and lists are walked)."""
    if isinstance(value, str):
        return compile_template(value).render(context) if is_template(value) else value
    if isinstance(value, Mapping):
        return {k: render_value(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    return value


def references(source: str, *, expression: bool = False) -> tuple[set[str], set[str]]:
    """The variables a template or expression reads.

    Returns:
        The top-level names it reads (``input``, ``steps``, ...) and the step names it reads
        through ``steps.<name>`` or ``steps['<name>']``.

    Raises:
        TemplateError: The source does not compile.
    """
    try:
        if expression:
            tree = _ENV.parse("{{ " + source + " }}")
        else:
            tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{source!r}: {exc.message}") from exc
    assigned = {node.name for node in tree.find_all(nodes.Name) if node.ctx in ("store", "param")}
    names = {
        node.name
        for node in tree.find_all(nodes.Name)
        if node.ctx == "load" and node.name not in assigned
    }
    steps = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        target = node.node
        if isinstance(target, nodes.Name) and target.name == "steps" and target.ctx == "load":
            if isinstance(node, nodes.Getattr):
                steps.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                steps.add(node.arg.value)
    return names, steps


def step_reads(source: str, *, expression: bool = False) -> frozenset[str] | None:
    """The steps a template reads, when it names each one (``steps.a``, ``steps['a']``).

    Returns:
        Their names, or ``None`` when it reads ``steps`` in another way (a loop over it, an
        index computed at run time, the whole mapping): then it may read any of them.

    Raises:
        TemplateError: The source does not compile.
    """
    try:
        tree = _ENV.parse("{{ " + source + " }}" if expression else source)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{source!r}: {exc.message}") from exc
    loads = sum(
        1 for node in tree.find_all(nodes.Name) if node.name == "steps" and node.ctx == "load"
    )
    named: set[str] = set()
    accesses = 0
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "steps"):
            continue
        if isinstance(node, nodes.Getattr):
            named.add(node.attr)
            accesses += 1
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            named.add(node.arg.value)
            accesses += 1
    return frozenset(named) if accesses == loads else None
