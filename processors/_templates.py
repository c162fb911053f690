"""Templates and conditions: one sandboxed engine for everything a workflow computes.

Workflows never run Python. Prompts, arguments, routes, ``when:`` conditions and outputs are
Jinja2 templates and expressions evaluated in a bounded Jinja2 sandbox (``processors._sandbox``):
no attribute starting with ``_``, no mutation of the context, and every value a template
builds, and the time a render takes, under a limit named in the error when it is hit.

A template that is exactly one expression (``"{{ steps.draft.output }}"``) yields the value
itself (a dict stays a dict); any other template yields text. What a template yields is JSON
within ``topics.MAX_JSON_DEPTH`` and ``topics.MAX_JSON_BYTES``, or the render fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2 import TemplateError as JinjaError

from processors._errors import TemplateError, TemplateLimitExceeded, TemplateRenderError
from processors._sandbox import BoundedEnvironment, template_budget
from topics import MAX_JSON_BYTES, MAX_JSON_DEPTH

__all__ = [
    "TEMPLATE_GLOBALS",
    "Expression",
    "Template",
    "TemplateError",
    "TemplateLimitExceeded",
    "TemplateRenderError",
    "compile_expression",
    "compile_template",
    "is_template",
    "references",
    "render_value",
    "step_reads",
    "template_budget",
]

_MAX_SOURCE = 20_000
_SHOWN = 120
_SINGLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}).)*)\}\}\s*$", re.DOTALL)
# What a template can do wrong at run time, besides going over a limit: a missing value, an
# unsafe attribute (jinja2's errors), a type or value error, and Python giving up on nesting.
_RENDER_ERRORS = (
    JinjaError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    AttributeError,
    RecursionError,
    MemoryError,
)
# What compiling can raise besides a syntax error: nesting deeper than Jinja's parser or
# Python's compiler go (``((((...))))``, 21 nested loops).
_COMPILE_ERRORS = (RecursionError, SyntaxError, MemoryError)

_ENV = BoundedEnvironment()

#: The names every template may read besides its context: the sandbox's globals and ``loop``.
TEMPLATE_GLOBALS = frozenset({"loop", *_ENV.globals})


def is_template(text: str) -> bool:
    """Whether a string holds template syntax (otherwise it is used as it is)."""
    return "{{" in text or "{%" in text


def _shown(source: str) -> str:
    return repr(source if len(source) <= _SHOWN else source[: _SHOWN - 3] + "...")


def _json_value(value: Any, depth: int = 1) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, StrictUndefined):
        raise TemplateRenderError(value._undefined_message)
    if not isinstance(value, Mapping | list | tuple):
        raise TemplateRenderError(f"the value is a {type(value).__name__}, not JSON")
    if depth > MAX_JSON_DEPTH:
        raise TemplateLimitExceeded(
            f"the value nests deeper than the limit of {MAX_JSON_DEPTH} levels"
        )
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, depth + 1) for k, v in value.items()}
    return [_json_value(v, depth + 1) for v in value]


def _check_output(value: Any, what: str) -> None:
    """A rendered value is JSON within ``MAX_JSON_BYTES`` (its depth is checked on the way)."""
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:  # an integer past 64 bits, ...
        raise TemplateRenderError(f"{what} is not JSON: {exc}") from None
    if size > MAX_JSON_BYTES:
        raise TemplateLimitExceeded(
            f"{what} is {size} bytes of JSON, over the limit of {MAX_JSON_BYTES}"
        )


@dataclass(frozen=True)
class Template:
    """A compiled template.

    Attributes:
        source: The template text.
    """

    source: str

    def render(self, context: Mapping[str, Any]) -> Any:
        """Render with a context; one-expression templates yield the value itself.

        Renders within the sandbox's limits (``processors._sandbox``): a template that builds
        too much or runs too long is cut off while it renders.

        Raises:
            TemplateRenderError: A value is missing or an operation fails.
            TemplateLimitExceeded: A limit is hit (the message names it).
        """
        with _failures(f"template {_shown(self.source)}"), template_budget():
            path = _path_of(self.source)
            if path is not None:
                found = _follow(context, path)
                if found is not _MISSING:
                    value = _json_value(found)
                    _check_output(value, "the output")
                    return value
            expression, template = _compiled(self.source)
            if expression is not None:
                value = _json_value(expression(**context))
            else:
                value = _ENV.render_text(template, context)
            _check_output(value, "the output")
            return value


@dataclass(frozen=True)
class Expression:
    """A compiled condition or expression, e.g. ``input.refund_usd > 100``.

    Attributes:
        source: The expression text.
    """

    source: str

    def evaluate(self, context: Mapping[str, Any]) -> Any:
        """The expression's value, evaluated within the sandbox's limits.

        Raises:
            TemplateRenderError: A value is missing or an operation fails.
            TemplateLimitExceeded: A limit is hit (the message names it).
        """
        with _failures(f"expression {_shown(self.source)}"), template_budget():
            return _compiled_expression(self.source)(**context)

    def holds(self, context: Mapping[str, Any]) -> bool:
        """Whether the expression is true in a context."""
        value = self.evaluate(context)
        if isinstance(value, StrictUndefined):
            raise TemplateRenderError(
                f"expression {_shown(self.source)}: {value._undefined_message}"
            )
        return bool(value)


@contextmanager
def _failures(where: str) -> Iterator[None]:
    """Every failure while rendering as a ``TemplateRenderError`` that says where."""
    try:
        yield
    except TemplateRenderError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    except _RENDER_ERRORS as exc:
        raise TemplateRenderError(f"{where}: {exc}") from exc


_MISSING = object()
_Path = tuple[tuple[bool, str | int], ...]


@lru_cache(maxsize=4096)
def _path_of(source: str) -> _Path | None:
    """A template that is one variable path (``{{ steps.draft.output }}``), as its steps.

    Each step is (an attribute, the key): ``.name`` is an attribute, ``['name']`` or ``[0]`` a
    subscript. ``None`` for any other template. Most prompts and outputs are such paths: they
    are looked up in the (JSON) context directly, and anything the lookup cannot settle
    exactly as Jinja would is left to Jinja (see ``_follow``).
    """
    match = _SINGLE_EXPRESSION.match(source)
    if not match:
        return None
    try:
        body = _ENV.parse("{{" + match.group("expr") + "}}").body
    except TemplateSyntaxError:
        return None
    if len(body) != 1 or not isinstance(body[0], nodes.Output) or len(body[0].nodes) != 1:
        return None
    node = body[0].nodes[0]
    steps: list[tuple[bool, str | int]] = []
    while isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            steps.append((True, node.attr))
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str | int):
            if isinstance(node.arg.value, bool):
                return None
            steps.append((False, node.arg.value))
        else:
            return None
        node = node.node
    if not isinstance(node, nodes.Name) or node.ctx != "load":
        return None
    steps.append((False, node.name))
    return tuple(reversed(steps))


def _follow(context: Mapping[str, Any], path: _Path) -> Any:
    """The value at ``path``, or ``_MISSING`` when only Jinja can say what it is.

    Jinja reads ``a.b`` as the attribute ``b`` of ``a`` first and as its key second (so a
    dict's own methods win over its keys: ``steps.items`` is a method), and ``a['b']`` the
    other way round; a missing key is an error worded by the sandbox. Every such case goes
    to Jinja; a key that is there, in a dict or a list, is simply read.
    """
    value: Any = context
    for attribute, key in path:
        if isinstance(value, dict) and isinstance(key, str):
            if (attribute and hasattr(dict, key)) or key not in value:
                return _MISSING
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and not attribute:
            if not -len(value) <= key < len(value):
                return _MISSING
            value = value[key]
        else:
            return _MISSING
    return value


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
        raise TemplateError(
            f"template {_shown(source)}: {exc.message} (line {exc.lineno})"
        ) from exc
    except _COMPILE_ERRORS as exc:
        raise TemplateError(f"template {_shown(source)}: {_too_nested(exc)}") from None
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
        raise TemplateError(f"expression {_shown(source)}: {exc.message}") from exc
    except _COMPILE_ERRORS as exc:
        raise TemplateError(f"expression {_shown(source)}: {_too_nested(exc)}") from None
    return Expression(source)


def _too_nested(error: BaseException) -> str:
    detail = f" ({error.msg})" if isinstance(error, SyntaxError) and error.msg else ""
    return f"nests too deeply to compile{detail}"


def render_value(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template string inside a JSON value (dicts and lists are walked).

    All its templates share one budget, and the whole rendered value is JSON within
    ``MAX_JSON_BYTES``.

    Raises:
        TemplateRenderError: A template fails.
        TemplateLimitExceeded: A limit is hit (the message names it).
    """
    with template_budget():
        rendered = _render_each(value, context)
    if rendered is not value:
        _check_output(rendered, "the rendered value")
    return rendered


def _render_each(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return compile_template(value).render(context) if is_template(value) else value
    if isinstance(value, Mapping):
        return {k: _render_each(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_each(v, context) for v in value]
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
        raise TemplateError(f"{_shown(source)}: {exc.message}") from exc
    except _COMPILE_ERRORS as exc:
        raise TemplateError(f"{_shown(source)}: {_too_nested(exc)}") from None
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
