"""The bounded sandbox every template runs in: what a template builds, and how long it takes.

Jinja2's ``ImmutableSandboxedEnvironment`` keeps templates away from Python's internals and from
changing the context, but not from work: ``'x' * 10**6`` repeated with ``~``,
``"a".center(1400000000)``, nested ``range`` loops or ``(((10**64)**64)**64)**64`` each pass
it and hold the event loop (and every partition and heartbeat behind it) for seconds or
minutes. Here every template runs under a budget, with these limits:

- ``MAX_TEMPLATE_CHARS`` (1 MiB): the text a template renders, and any string, list, tuple or
  dict it builds (measured as the length of its text, aliases counted each time they occur);
- ``MAX_TEMPLATE_INT_BITS`` (1024): the size of any integer it computes;
- ``MAX_TEMPLATE_DEPTH`` (64): the nesting of the values it builds, and of macro calls
  (``MAX_TEMPLATE_CALL_DEPTH``, 32);
- ``MAX_TEMPLATE_STEPS`` (100,000): the work of one render, counted deterministically (about
  20-60 ms of work on a small, loaded machine);
- ``TEMPLATE_TIME_BUDGET_S`` (1 s): its wall time, the backstop behind the step limit.

How they are kept:

- every operation that can build a value bigger than its inputs is intercepted: arithmetic
  operators, ``~``, calls (methods, globals, macros), filters, list/tuple/dict literals and
  the buffers of ``{% set %}`` / ``{% filter %}`` / macro bodies. The ones whose result size an
  argument sets (``*``, ``**``, ``%``, ``center``, ``ljust``, ``zfill``, ``indent``, ``join``,
  ``replace``, ``expandtabs``, ``format``, ``to_bytes``, ...) are refused *before* the work
  when the result would be over a limit; every result is measured after;
- every intercepted operation, every loop iteration, every item a filter yields, every chunk
  of output and every container measured is a step, and so is every 64 characters an
  operation moves; filters that go through their input item by item are charged for it
  before they start. Steps stand for work, so a render stops after a bounded amount of it
  (a few tens of milliseconds) the same way on every worker; the deadline is checked at every
  step too, as a backstop;
- no state crosses loop iterations (``namespace()`` is not offered), so a loop's work is its
  length times its body's; ``lipsum`` and the ``random`` filter are gone too (``decide``
  must be deterministic), and so are ``pprint``, ``urlize``, ``wordwrap`` and ``xmlattr``.

Why steps and not mostly time: ``decide`` must be deterministic, and a wall-clock cut-off is
not. A 50 ms deadline failed ordinary templates in the coordinator of a loaded test cluster
(500 runs at once, 2 cores: the process was simply not running for 50 ms), failing their
runs; work counted in steps does not depend on the machine (docs/decisions/0004). Renders
nested in one another (a ``render_value`` over many templates) share one budget, and so do
all renders inside ``template_budget()``.
"""

from __future__ import annotations

import itertools
import re
import string
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson
from jinja2 import StrictUndefined, Template, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from processors._errors import TemplateLimitExceeded
from topics import MAX_JSON_BYTES, MAX_JSON_DEPTH

__all__ = [
    "MAX_TEMPLATE_CALL_DEPTH",
    "MAX_TEMPLATE_CHARS",
    "MAX_TEMPLATE_DEPTH",
    "MAX_TEMPLATE_INT_BITS",
    "MAX_TEMPLATE_STEPS",
    "TEMPLATE_TIME_BUDGET_S",
    "BoundedEnvironment",
    "template_budget",
]

#: Characters of text a template renders, or of any value it builds, at most.
MAX_TEMPLATE_CHARS = MAX_JSON_BYTES
#: Bits of any integer a template computes, at most.
MAX_TEMPLATE_INT_BITS = 1024
#: Nesting of the lists, tuples and dicts a template builds, at most.
MAX_TEMPLATE_DEPTH = MAX_JSON_DEPTH
#: Macro calls (and recursive loops) nested inside each other, at most.
MAX_TEMPLATE_CALL_DEPTH = 32
#: Steps one render takes, at most: an operation, a loop iteration, an item, an output chunk,
#: a container measured, and one more per ``_CHARS_PER_STEP`` characters an operation moves.
MAX_TEMPLATE_STEPS = 100_000
#: Seconds of wall time one render may take, at most: the backstop behind the step limit.
TEMPLATE_TIME_BUDGET_S = 1.0
# Data an operation moves, per step it is charged: 1 MiB of text is 16,384 steps.
_CHARS_PER_STEP = 64

_PRINTF_SPEC = re.compile(
    r"%(?:\([^)]*\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?[a-zA-Z%]"
)
_DIGITS = re.compile(r"\d+")
_SCALARS = frozenset({str, int, float, bool, type(None)})
# Filters that are gone: nondeterministic, unbounded, or HTML-only work no workflow needs.
_REMOVED_FILTERS = ("random", "pprint", "urlize", "wordwrap", "xmlattr")
_REMOVED_GLOBALS = ("lipsum", "namespace")


class _Budget:
    """What one render (or a group of renders) may still spend, and what it has built."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.steps = 0
        self.calls = 0
        # id -> (value, its weight, its depth): built values are never changed (the sandbox is
        # immutable), so each is measured once; the value is kept so its id is not reused.
        self._weights: dict[int, tuple[object, int, int]] = {}

    def tick(self, steps: int = 1) -> None:
        """Count steps; refuse them over the step limit or past the deadline."""
        self.steps += steps
        if self.steps > MAX_TEMPLATE_STEPS:
            raise TemplateLimitExceeded(
                f"over the template step limit ({MAX_TEMPLATE_STEPS} steps)"
            )
        if time.monotonic() > self.deadline:
            raise TemplateLimitExceeded(
                f"over the template time limit ({self.seconds * 1000:g} ms)"
            )

    def charge(self, steps: int, what: str) -> None:
        """Count ``steps`` steps of work at once, before doing it; refuse it over the limit."""
        self.steps += steps
        if self.steps > MAX_TEMPLATE_STEPS:
            raise TemplateLimitExceeded(
                f"{what} would go over the template step limit ({MAX_TEMPLATE_STEPS} steps)"
            )
        self.tick()

    def moved(self, size: int, what: str = "the result") -> None:
        """Charge the steps of moving ``size`` characters, refused over the size limit."""
        _check_chars(size, what)
        if size >= _CHARS_PER_STEP:
            self.tick(size // _CHARS_PER_STEP)

    def bounded(self, value: Any) -> Any:
        """``value`` once measured within the limits; an iterator comes back counted."""
        if isinstance(value, str | bytes | bytearray):
            self.moved(len(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            _check_bits(value.bit_length())
        elif isinstance(value, list | tuple | dict):
            self.weigh(value)
        elif isinstance(value, Iterator):
            return self.iterate(value)
        return value

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Each item of ``iterable`` as a step, measured."""
        for item in iterable:
            self.tick()
            yield self.bounded(item)

    def weigh(self, value: Any) -> int:
        """About the length of ``value``'s text, aliases counted each time they occur.

        Raises:
            TemplateLimitExceeded: It is over ``MAX_TEMPLATE_CHARS`` or nests deeper than
                ``MAX_TEMPLATE_DEPTH`` (found without walking further than that).
        """
        return self._measure(value)[0]

    def _measure(self, value: Any, level: int = 1) -> tuple[int, int]:
        """``value``'s weight and how deep its containers nest (0 for a scalar).

        ``level`` is how deep ``value`` sits in what is being measured, so a value from the
        context nested past the limit is refused on the way down, before Python's stack is.
        """
        if isinstance(value, str | bytes | bytearray):
            return len(value) + 2, 0
        if isinstance(value, int) and not isinstance(value, bool):
            return value.bit_length() // 3 + 2, 0
        if not isinstance(value, list | tuple | dict):
            return 8, 0
        known = self._weights.get(id(value))
        if known is not None:
            return known[1], known[2]
        if level > MAX_TEMPLATE_DEPTH:
            raise TemplateLimitExceeded(_too_deep())
        self.tick()  # a walk over a large value from the context is work like any other
        if 3 * len(value) > MAX_TEMPLATE_CHARS:
            raise TemplateLimitExceeded(_too_large("a value", 3 * len(value)))
        total, depth = _flat_weight(value), 1
        if total is not None:
            self.tick(total // _CHARS_PER_STEP)
        else:
            children = (
                itertools.chain.from_iterable(value.items()) if isinstance(value, dict) else value
            )
            total = 2
            for child in children:
                weight, below = self._measure(child, level + 1)
                total += weight + 2
                depth = max(depth, below + 1)
                if total > MAX_TEMPLATE_CHARS:
                    break
        if total > MAX_TEMPLATE_CHARS:
            raise TemplateLimitExceeded(_too_large("a value", total))
        if level + depth - 1 > MAX_TEMPLATE_DEPTH:
            raise TemplateLimitExceeded(_too_deep())
        self._weights[id(value)] = (value, total, depth)
        return total, depth


def _flat_weight(value: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> int | None:
    """The JSON size of a container of scalars only, at C speed; ``None`` for any other."""
    items: Iterable[Any] = value
    if isinstance(value, dict):
        items = itertools.chain(value.keys(), value.values())
    if not set(map(type, items)) <= _SCALARS:
        return None
    try:
        return len(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:  # an integer past 64 bits
        return None


_ACTIVE: ContextVar[_Budget | None] = ContextVar("baton_template_budget", default=None)


@contextmanager
def template_budget(seconds: float = TEMPLATE_TIME_BUDGET_S) -> Iterator[None]:
    """Every render inside shares one budget (one deadline, one step count).

    Renders already share one when nested (``render_value`` over many templates). Wrap a
    larger piece of work, e.g. one ``decide``, to bound all of its templates together. Inside
    an active budget this is a no-op: the outer one stays in force.

    Args:
        seconds: The time budget.
    """
    if _ACTIVE.get() is not None:
        yield
        return
    token = _ACTIVE.set(_Budget(seconds))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _current() -> _Budget:
    # Outside a render (Jinja folding constants while compiling) each operation gets its own.
    return _ACTIVE.get() or _Budget(TEMPLATE_TIME_BUDGET_S)


def _too_large(what: str, size: int) -> str:
    return (
        f"{what} would be {size} characters: too large for the template size limit "
        f"({MAX_TEMPLATE_CHARS} characters)"
    )


def _too_deep() -> str:
    return f"a value nests deeper than the template depth limit ({MAX_TEMPLATE_DEPTH} levels)"


def _check_chars(size: int, what: str = "the result") -> None:
    if size > MAX_TEMPLATE_CHARS:
        raise TemplateLimitExceeded(_too_large(what, size))


def _check_bits(bits: int, what: str = "the result") -> None:
    if bits > MAX_TEMPLATE_INT_BITS:
        raise TemplateLimitExceeded(
            f"{what} would be an integer of about {bits} bits: too large for the template "
            f"integer limit ({MAX_TEMPLATE_INT_BITS} bits)"
        )


def _check_count(value: Any, what: str) -> None:
    """A width, length or count argument that sets a result's size."""
    if isinstance(value, int) and value > MAX_TEMPLATE_CHARS:
        _check_chars(value, what)


# -- checks before the work -------------------------------------------------------------------


def _check_binop(budget: _Budget, operator: str, left: Any, right: Any) -> None:
    if operator == "**":
        _check_power(left, right)
    elif operator == "*":
        _check_product(budget, left, right)
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            _check_chars(len(left) + len(right))
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            _check_chars(budget.weigh(left) + budget.weigh(right))
    elif operator == "%" and isinstance(left, str | bytes):
        _check_printf(left.decode("latin-1") if isinstance(left, bytes) else left)


def _check_power(base: Any, exponent: Any) -> None:
    if not isinstance(exponent, int | float) or isinstance(exponent, bool):
        return
    if isinstance(base, int) and not isinstance(base, bool) and isinstance(exponent, int):
        if exponent > 0 and abs(base) > 1:
            # At least this many bits; at most twice as many, which is still cheap to compute.
            bits = (base.bit_length() - 1) * exponent + 1
            _check_bits(bits, "exponent too large: the power")
    elif abs(exponent) > MAX_TEMPLATE_INT_BITS:
        # Floats overflow fast, but keep exponents of every kind in one range.
        _check_bits(int(abs(exponent)), "exponent too large: the power")


def _check_product(budget: _Budget, left: Any, right: Any) -> None:
    for sequence, times in ((left, right), (right, left)):
        if not isinstance(times, int) or times <= 0:
            continue
        if isinstance(sequence, str | bytes):
            _check_chars(len(sequence) * times, "the product")
        elif isinstance(sequence, list | tuple):
            _check_chars(budget.weigh(sequence) * times, "the product")
    if isinstance(left, int) and isinstance(right, int):
        _check_bits(left.bit_length() + right.bit_length())


def _check_printf(text: str) -> None:
    for spec in _PRINTF_SPEC.finditer(text):
        for part in (spec.group("width"), spec.group("precision")):
            if part == "*":
                raise TemplateLimitExceeded(
                    "a '*' width or precision is refused: it could go over the template size "
                    f"limit ({MAX_TEMPLATE_CHARS} characters)"
                )
            if part is not None:
                _check_count(int(part) if len(part) < 10 else MAX_TEMPLATE_CHARS + 1, "a width")


def _check_format_string(text: str) -> None:
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError:
        return  # the call itself says what is wrong
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            raise TemplateLimitExceeded(
                "a nested format width is refused: it could go over the template size limit "
                f"({MAX_TEMPLATE_CHARS} characters)"
            )
        for digits in _DIGITS.findall(spec):
            _check_count(int(digits) if len(digits) < 10 else MAX_TEMPLATE_CHARS + 1, "a width")


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _check_replace(text: str | bytes, old: Any, new: Any, count: Any) -> None:
    if not isinstance(old, type(text)) or not isinstance(new, type(text)):
        return
    found = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    _check_chars(len(text) + found * (len(new) - len(old)))


def _joined(budget: _Budget, separator: str | bytes, items: Any) -> list[Any]:
    """The items of a join, listed and measured with the separators between them."""
    listed = list(items)
    size = len(separator) * max(len(listed) - 1, 0) + budget.weigh(listed)
    _check_chars(size)
    return listed


def _checked_method(
    budget: _Budget, method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """Check a method call whose arguments set its result's size; its (listed) arguments."""
    target = getattr(method, "__wrapped__", method)  # the sandbox wraps str.format
    owner = getattr(target, "__self__", None)
    name = getattr(target, "__name__", "")
    if isinstance(owner, int) and not isinstance(owner, bool) and name == "to_bytes":
        _check_count(_argument(args, kwargs, 0, "length"), "the result")
    if not isinstance(owner, str | bytes | bytearray):
        return args
    text: str | bytes = bytes(owner) if isinstance(owner, bytearray) else owner
    if name in ("center", "ljust", "rjust", "zfill"):
        _check_count(_argument(args, kwargs, 0, "width"), "the result")
    elif name == "expandtabs":
        size = _argument(args, kwargs, 0, "tabsize")
        tabs = text.count("\t" if isinstance(text, str) else b"\t")  # type: ignore[arg-type]
        if isinstance(size, int):
            _check_chars(len(text) + tabs * size)
    elif name == "replace":
        _check_replace(
            text,
            _argument(args, kwargs, 0, "old"),
            _argument(args, kwargs, 1, "new"),
            _argument(args, kwargs, 2, "count"),
        )
    elif name == "join" and args:
        return (_joined(budget, text, args[0]), *args[1:])
    elif name in ("format", "format_map") and isinstance(text, str):
        _check_format_string(text)
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        _check_chars(len(text) * longest)
    return args


# -- filters ----------------------------------------------------------------------------------


def _check_indent(s: Any, width: Any = 4, *_: Any, **__: Any) -> Any:
    step = len(width) if isinstance(width, str) else width
    if isinstance(step, int):
        text = str(s)
        _check_chars(len(text) + (text.count("\n") + 1) * step)
    return s


def _check_center(value: Any, width: Any = 80, *_: Any, **__: Any) -> Any:
    _check_count(width, "the result")
    return value


def _check_format(value: Any, *_: Any, **__: Any) -> Any:
    _check_printf(str(value))
    return value


def _check_replace_filter(s: Any, old: Any = "", new: Any = "", count: Any = None) -> Any:
    _check_replace(str(s), str(old), str(new), count)
    return s


def _check_batch(value: Any, linecount: Any = 1, *_: Any, **__: Any) -> Any:
    _check_count(linecount, "a batch")
    return value


def _check_slice(value: Any, slices: Any = 1, *_: Any, **__: Any) -> Any:
    _check_count(slices, "the slices")
    return value


def _check_sum(iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    if not isinstance(start, int | float):
        raise TemplateLimitExceeded(
            "sum adds numbers only in templates (adding lists or strings grows without "
            "bound; use join)"
        )
    return iterable


# Filters that do Python work for each item (or each character, word or line) of their input:
# that work is charged as steps before they start, so one call cannot run past the budget.
_PER_ITEM_FILTERS = frozenset(
    {
        "batch",
        "dictsort",
        "groupby",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)
_PER_CHARACTER_FILTERS = frozenset({"indent", "striptags", "title", "urlencode", "wordcount"})


def _work(budget: _Budget, name: str, value: Any, kwargs: Mapping[str, Any]) -> int:
    """The steps a filter's call will take, known before it starts (0: it counts itself)."""
    if name in _PER_CHARACTER_FILTERS:
        return len(value) if isinstance(value, str) else budget.weigh(value)
    if name in _PER_ITEM_FILTERS or (name == "join" and kwargs.get("attribute") is not None):
        return len(value) if isinstance(value, Sized) else 0  # an iterator counts its items
    return 0


_FILTER_CHECKS: dict[str, Callable[..., Any]] = {
    "batch": _check_batch,
    "center": _check_center,
    "format": _check_format,
    "indent": _check_indent,
    "replace": _check_replace_filter,
    "slice": _check_slice,
    "sum": _check_sum,
}


def _guarded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` as a step: checked before the work (some filters), measured after.

    The guard takes the render context, which also stops Jinja from running filters over
    constants while compiling, where no budget is counting.
    """
    passes = getattr(getattr(function, "jinja_pass_arg", None), "name", None)
    check = _FILTER_CHECKS.get(name)

    @pass_context
    def guarded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        if name == "join":
            separator = _argument(args, kwargs, 0, "d")
            value = _joined(budget, "" if separator is None else str(separator), value)
        elif check is not None:
            value = check(value, *args, **kwargs)
        budget.charge(_work(budget, name, value, kwargs), f"the filter {name}")
        if passes == "context":
            result = function(context, value, *args, **kwargs)
        elif passes == "eval_context":
            result = function(context.eval_ctx, value, *args, **kwargs)
        elif passes == "environment":
            result = function(context.environment, value, *args, **kwargs)
        else:
            result = function(value, *args, **kwargs)
        return budget.bounded(result)

    return guarded


def _tojson(value: Any) -> str:
    # Jinja's own tojson escapes <, > and & for HTML; prompts want the JSON as it is.
    return orjson.dumps(value, default=str).decode()


@pass_context  # never run over constants while compiling, where no budget counts
def _iterate(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    """A for loop's iterable: each iteration is a step."""
    budget = _current()
    for item in iterable:
        budget.tick()
        yield item


# -- the environment --------------------------------------------------------------------------


# A filter name no template can write (not an identifier): what a for loop iterates through.
_ITERATE = "baton:iterate"


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, routing loops, ``~`` and literals through the budget."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            if not (isinstance(loop.iter, nodes.Filter) and loop.iter.name == _ITERATE):
                loop.iter = nodes.Filter(
                    loop.iter, _ITERATE, [], [], None, None, lineno=loop.iter.lineno
                )
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for part in node.nodes:
            self.visit(part, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.bounded_value(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # a loop's or an assignment's targets
            super().visit_Tuple(node, frame)
            return
        self.write("environment.bounded_value(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.bounded_value(")
        super().visit_Dict(node, frame)
        self.write(")")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with every operation counted and measured (see the module)."""

    code_generator_class = _BoundedCodeGenerator
    # ``and`` / ``or`` stay as they are: intercepting them would evaluate both sides.
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        for name in _REMOVED_FILTERS:
            del self.filters[name]
        for name in _REMOVED_GLOBALS:
            del self.globals[name]
        self.filters["tojson"] = _tojson
        self.policies["json.dumps_function"] = _tojson
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}
        self.filters[_ITERATE] = _iterate

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """An arithmetic operator, checked before and measured after."""
        budget = _current()
        budget.tick()
        _check_binop(budget, operator, left, right)
        return budget.bounded(super().call_binop(context, operator, left, right))

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """A call (method, global, macro), checked before and measured after."""
        budget = _current()
        budget.tick()
        args = _checked_method(budget, __obj, args, kwargs)
        budget.calls += 1
        try:
            if budget.calls > MAX_TEMPLATE_CALL_DEPTH:
                raise TemplateLimitExceeded(
                    f"calls nest deeper than the template call limit ({MAX_TEMPLATE_CALL_DEPTH})"
                )
            result = super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.calls -= 1
        return budget.bounded(result)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """An attribute, as a step."""
        _current().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """An item, as a step."""
        _current().tick()
        return super().getitem(obj, argument)

    def render_text(self, template: Template, context: Mapping[str, Any]) -> str:
        """Render ``template`` as a stream, each chunk a step and the total measured as it grows."""
        budget = _current()
        chunks: list[str] = []
        size = 0
        stream = template.generate(**context)
        try:
            for chunk in stream:
                budget.tick()
                size += len(chunk)
                _check_chars(size, "the output")
                budget.moved(len(chunk), "the output")
                chunks.append(chunk)
        finally:
            if isinstance(stream, Generator):  # it is: close it now, not when collected
                stream.close()
        return "".join(chunks)

    def bounded_value(self, value: Any) -> Any:
        """A list, tuple or dict literal, measured."""
        budget = _current()
        budget.tick()
        return budget.bounded(value)

    def bounded_concat(self, parts: Iterable[Any]) -> str:
        """``a ~ b ~ ...``, measured before it is joined."""
        budget = _current()
        budget.tick()
        texts = [str(part) for part in parts]
        budget.moved(sum(map(len, texts)))
        return "".join(texts)

    def concat(self, parts: Iterable[str]) -> str:
        """A buffered block's output (``{% set %}``, ``{% filter %}``, a macro), measured."""
        budget = _current()
        budget.tick()
        texts = parts if isinstance(parts, list) else list(parts)
        budget.moved(sum(map(len, texts)))
        return "".join(texts)
