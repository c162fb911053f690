"""Loading a workflow: parse, validate, check the graph, pin the version by content hash.

Every problem is reported at once, each naming the file, the step and the field::

    triage.yaml: steps.draft.after: unknown step 'polcy' (steps: classify, policy, draft)
    triage.yaml: steps.draft.prompt: reads steps.check, which does not run before draft
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from processors import (
    TEMPLATE_GLOBALS,
    InstalledKind,
    TemplateError,
    compile_expression,
    compile_template,
    is_template,
    step_reads,
)
from processors import references as template_references
from streams.workflow._spec import (
    CUSTOM_TIMEOUT,
    DEFAULT_TIMEOUTS,
    AgentStep,
    ApprovalStep,
    CustomStep,
    LlmStep,
    RetrieveStep,
    StepSpec,
    ToolStep,
    TransformStep,
    ValidateStep,
    WorkflowSpec,
)
from topics import ConfigurationError, YamlLimitExceeded, load_yaml

__all__ = [
    "ContextReads",
    "Workflow",
    "WorkflowError",
    "check_kinds",
    "load_workflow",
    "parse_workflow",
]

_CONTEXT_NAMES = frozenset({"input", "steps", "run"})


class WorkflowError(ConfigurationError):
    """A workflow that cannot be used; ``problems`` lists every reason, one per line."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems
        super().__init__("\n".join(f"{origin}: {p}" for p in problems))


@dataclass(frozen=True)
class Workflow:
    """A checked workflow, ready to run.

    Attributes:
        spec: The parsed definition.
        content_hash: sha256 of the canonical definition: the version a run pins.
        source: The YAML text it was loaded from.
        order: Step names in a topological order (declaration order among equals).
        upstream: For each step, every step that runs before it (transitively).
    """

    spec: WorkflowSpec
    content_hash: str
    source: str
    order: tuple[str, ...]
    upstream: Mapping[str, frozenset[str]] = field(repr=False)

    @property
    def name(self) -> str:
        """The workflow's name."""
        return self.spec.workflow

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the content hash."""
        return self.content_hash[:12]

    def step(self, name: str) -> StepSpec:
        """One step's definition."""
        return self.spec.steps[name]

    def timeout(self, name: str) -> float:
        """Seconds an attempt of a step may take."""
        step = self.spec.steps[name]
        if step.timeout is not None:
            return step.timeout
        return DEFAULT_TIMEOUTS.get(step.kind, CUSTOM_TIMEOUT)

    def tool_call_step(self, agent: str, tool: str) -> ToolStep:
        """The ``tool`` step a call of ``agent``'s model to ``tool`` runs as (built once).

        It has the agent's ``tool_retry`` and ``tool_timeout``; the call's arguments are the
        model's, kept with the call, never part of a definition (nor rendered).
        """
        key = (agent, tool)
        step = self._tool_call_steps.get(key)
        if step is None:
            spec = self.spec.steps[agent]
            assert isinstance(spec, AgentStep)
            step = ToolStep(
                kind="tool",
                tool=tool,
                retry=spec.tool_retry,
                timeout=spec.tool_timeout,
                description=f"a tool call of agent {agent}",
            )
            self._tool_call_steps[key] = step
        return step

    @cached_property
    def _tool_call_steps(self) -> dict[tuple[str, str], ToolStep]:
        return {}

    @cached_property
    def sinks(self) -> tuple[str, ...]:
        """Steps nothing runs after."""
        used = {dep for step in self.spec.steps.values() for dep in step.after}
        return tuple(name for name in self.order if name not in used)

    def downstream(self, name: str) -> frozenset[str]:
        """Every step that runs after ``name`` (transitively)."""
        return frozenset(s for s, before in self.upstream.items() if name in before)

    def context_reads(self, name: str) -> ContextReads:
        """What of the run context a ``transform``'s or ``validate``'s templates read.

        Its request carries that much of the context, not all of it.
        """
        found = self._context_reads.get(name)
        if found is None:
            found = _context_reads(self.spec.steps[name])
            self._context_reads[name] = found
        return found

    @cached_property
    def _context_reads(self) -> dict[str, ContextReads]:
        return {}

    @cached_property
    def input_validator(self) -> jsonschema.protocols.Validator:
        """A validator for task inputs."""
        cls = jsonschema.validators.validator_for(self.spec.input)
        validator: jsonschema.protocols.Validator = cls(self.spec.input)
        return validator


def load_workflow(path: str | Path) -> Workflow:
    """Load and check a workflow file.

    Raises:
        WorkflowError: The file is unreadable or the workflow is invalid (every problem).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowError(str(path), [f"cannot read: {exc.strerror}"]) from exc
    return parse_workflow(text, str(path))


def parse_workflow(text: str, origin: str = "<workflow>") -> Workflow:
    """Parse and check a workflow from YAML text.

    Args:
        text: The YAML.
        origin: Where it came from, for error messages (a file name).

    Raises:
        WorkflowError: The workflow is invalid; lists every problem.
    """
    try:
        raw = load_yaml(text, origin=origin)
    except YamlLimitExceeded as exc:
        raise WorkflowError(origin, [str(exc).removeprefix(f"{origin}: ")]) from None
    except yaml.YAMLError as exc:
        raise WorkflowError(origin, [f"not valid YAML: {_yaml_problem(exc)}"]) from exc
    if not isinstance(raw, dict):
        raise WorkflowError(origin, ["a workflow is a mapping with workflow, version and steps"])
    try:
        spec = WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        raise WorkflowError(origin, [_describe(error) for error in exc.errors()]) from None
    problems: list[str] = []
    order = _topological_order(spec, problems)
    if problems:
        raise WorkflowError(origin, problems)
    upstream = _upstream(spec, order)
    _check_schemas(spec, problems)
    _check_templates(spec, upstream, problems)
    _check_on_fail(spec, upstream, problems)
    _check_reachable(spec, problems)
    if problems:
        raise WorkflowError(origin, problems)
    canonical = json.dumps(
        spec.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
    )
    return Workflow(
        spec=spec,
        content_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        source=text,
        order=order,
        upstream=upstream,
    )


def check_kinds(workflow: Workflow, kinds: Mapping[str, InstalledKind], origin: str) -> None:
    """Every custom step's kind must be installed, and its ``params`` fit the kind's model.

    A field holding a template (or inside one) is left to the processor, which checks the
    rendered value: ``threshold: "{{ input.threshold }}"`` is only a number at run time.

    Args:
        workflow: A parsed workflow.
        kinds: The custom kinds installed (``processors.installed_kinds()``).
        origin: Where it came from, for the messages (a file name).

    Raises:
        WorkflowError: Names every step whose kind is unknown or whose params are wrong.
    """
    problems = []
    installed = ", ".join(sorted(kinds)) or "none"
    for name, step in workflow.spec.steps.items():
        if not isinstance(step, CustomStep):
            continue
        kind = kinds.get(step.kind)
        if kind is None:
            problems.append(
                f"steps.{name}.kind: unknown step kind {step.kind!r} (built in: "
                f"{', '.join(DEFAULT_TIMEOUTS)}; custom kinds installed: {installed})"
            )
            continue
        try:
            kind.processor.params_model.model_validate(step.params)
        except ValidationError as exc:
            for error in exc.errors():
                loc = [str(part) for part in error["loc"]]
                if not _under_template(step.params, error["loc"]):
                    where = ".".join([f"steps.{name}.params", *loc])
                    message = error["msg"].removeprefix("Value error, ")
                    problems.append(f"{where}: {message} ({step.kind} params)")
    if problems:
        raise WorkflowError(origin, problems)


def _under_template(value: Any, loc: tuple[int | str, ...]) -> bool:
    """Whether the value at ``loc`` in ``value``, or one holding it, is a template string."""
    for part in loc:
        if isinstance(value, str):
            break
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            value = value[part]
        else:
            return False
    return isinstance(value, str) and is_template(value)


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


def _describe(error: Any) -> str:
    loc = list(error["loc"])
    # A discriminated union puts the step's kind in the location: steps.draft.llm.model.
    if len(loc) >= 3 and loc[0] == "steps" and (loc[2] in DEFAULT_TIMEOUTS or loc[2] == "custom"):
        del loc[2]
    where = ".".join(str(part) for part in loc) or "(workflow)"
    message = error["msg"].removeprefix("Value error, ")
    kinds = f"use one of: {', '.join(DEFAULT_TIMEOUTS)}, or a custom kind"
    if error["type"] == "union_tag_invalid":
        message = f"unknown kind; {kinds}"
    elif error["type"] == "union_tag_not_found":
        message = f"missing `kind`; {kinds}"
    return f"{where}: {message}"


def _topological_order(spec: WorkflowSpec, problems: list[str]) -> tuple[str, ...]:
    names = list(spec.steps)
    for name, step in spec.steps.items():
        for dep in step.after:
            if dep == name:
                problems.append(f"steps.{name}.after: a step cannot run after itself")
            elif dep not in spec.steps:
                problems.append(
                    f"steps.{name}.after: unknown step {dep!r} (steps: {', '.join(names)})"
                )
    if problems:
        return ()
    remaining = {name: set(step.after) for name, step in spec.steps.items()}
    order: list[str] = []
    while remaining:
        ready = [n for n in names if n in remaining and not remaining[n]]
        if not ready:
            problems.append(f"steps form a cycle: {' -> '.join(_a_cycle(remaining))}")
            return ()
        for name in ready:
            order.append(name)
            del remaining[name]
        for deps in remaining.values():
            deps.difference_update(ready)
    return tuple(order)


def _a_cycle(remaining: dict[str, set[str]]) -> list[str]:
    start = next(iter(remaining))
    path = [start]
    while True:
        nxt = sorted(remaining[path[-1]])[0]
        if nxt in path:
            cycle = path[path.index(nxt) :]
            return [*cycle, nxt]
        path.append(nxt)


def _upstream(spec: WorkflowSpec, order: tuple[str, ...]) -> dict[str, frozenset[str]]:
    result: dict[str, frozenset[str]] = {}
    for name in order:
        deps: set[str] = set()
        for dep in spec.steps[name].after:
            deps.add(dep)
            deps.update(result[dep])
        result[name] = frozenset(deps)
    return result


def _check_schemas(spec: WorkflowSpec, problems: list[str]) -> None:
    schemas: list[tuple[str, dict[str, Any]]] = [("input", spec.input)]
    for name, step in spec.steps.items():
        if isinstance(step, LlmStep | AgentStep) and step.output_schema is not None:
            schemas.append((f"steps.{name}.output_schema", step.output_schema))
        if isinstance(step, ValidateStep) and step.schema_ is not None:
            schemas.append((f"steps.{name}.schema", step.schema_))
    for where, schema in schemas:
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            problems.append(f"{where}: not a valid JSON Schema: {exc.message}")


@dataclass(frozen=True)
class ContextReads:
    """What of the run context some templates read.

    Attributes:
        names: The top-level names (``input``, ``steps``, ``run``, ...).
        steps: The steps read, or ``None`` when the templates may read any of them.
    """

    names: frozenset[str]
    steps: frozenset[str] | None


def _context_reads(step: StepSpec) -> ContextReads:
    """What the templates a processor renders for ``step`` read (transform and validate)."""
    sources: list[tuple[str, bool]] = []
    if isinstance(step, TransformStep):
        sources = [(text, False) for _, text in _strings(step.output, "output")]
    elif isinstance(step, ValidateStep):
        sources = [(text, False) for _, text in _strings(step.value, "value")]
        sources += [(rule.check, True) for rule in step.rules]
    names: set[str] = set()
    steps: set[str] | None = set()
    for source, expression in sources:
        if not expression and not is_template(source):
            continue
        found, _ = template_references(source, expression=expression)
        names |= found
        read = step_reads(source, expression=expression)
        steps = None if read is None or steps is None else steps | read
    return ContextReads(frozenset(names), frozenset(steps) if steps is not None else None)


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def _templates_of(name: str, step: StepSpec) -> Iterator[tuple[str, str, bool, frozenset[str]]]:
    """(where, source, is_expression, extra names allowed) for every template of a step."""
    base = f"steps.{name}"
    if isinstance(step.when, str):
        yield f"{base}.when", step.when, True, frozenset()
    if isinstance(step, LlmStep | AgentStep):
        yield f"{base}.model", step.model, False, frozenset()
        for index, route in enumerate(step.fallback):
            yield f"{base}.fallback[{index}]", route, False, frozenset()
        for index, route_rule in enumerate(step.routes):
            yield f"{base}.routes[{index}].when", route_rule.when, True, frozenset()
            yield f"{base}.routes[{index}].model", route_rule.model, False, frozenset()
        for index, route in enumerate(step.cascade if isinstance(step, LlmStep) else []):
            yield f"{base}.cascade[{index}]", route, False, frozenset()
        if step.prompt is not None:
            yield f"{base}.prompt", step.prompt, False, frozenset()
        if step.system is not None:
            yield f"{base}.system", step.system, False, frozenset()
        for index, message in enumerate(step.messages or []):
            yield f"{base}.messages[{index}].content", message.content, False, frozenset()
    elif isinstance(step, ToolStep):
        for where, text in _strings(step.args, f"{base}.args"):
            yield where, text, False, frozenset()
    elif isinstance(step, RetrieveStep):
        yield f"{base}.query", step.query, False, frozenset()
    elif isinstance(step, TransformStep):
        for where, text in _strings(step.output, f"{base}.output"):
            yield where, text, False, frozenset()
    elif isinstance(step, ValidateStep):
        for where, text in _strings(step.value, f"{base}.value"):
            yield where, text, False, frozenset()
        for index, rule in enumerate(step.rules):
            yield f"{base}.rules[{index}].check", rule.check, True, frozenset({"value"})
    elif isinstance(step, CustomStep):
        for where, text in _strings(step.params, f"{base}.params"):
            yield where, text, False, frozenset()
    elif isinstance(step, ApprovalStep):
        yield f"{base}.reason", step.reason, False, frozenset()
        for where, text in _strings(step.show, f"{base}.show"):
            yield where, text, False, frozenset()


def _check_templates(
    spec: WorkflowSpec, upstream: Mapping[str, frozenset[str]], problems: list[str]
) -> None:
    for name, step in spec.steps.items():
        for where, source, expression, extra in _templates_of(name, step):
            if not expression and not is_template(source):
                continue
            reads = _reads(where, source, expression, extra, problems)
            for other in sorted(reads):
                if other not in spec.steps:
                    problems.append(f"{where}: reads steps.{other}, which is not a step")
                elif other not in upstream[name]:
                    problems.append(
                        f"{where}: reads steps.{other}, which does not run before {name} "
                        f"(add it to {name}.after)"
                    )
    for where, source in _strings(spec.output, "output"):
        if is_template(source):
            for other in sorted(_reads(where, source, False, frozenset(), problems)):
                if other not in spec.steps:
                    problems.append(f"{where}: reads steps.{other}, which is not a step")


def _reads(
    where: str, source: str, expression: bool, extra: frozenset[str], problems: list[str]
) -> set[str]:
    try:
        if expression:
            compile_expression(source)
        else:
            compile_template(source)
        names, steps = template_references(source, expression=expression)
    except TemplateError as exc:
        problems.append(f"{where}: {exc}")
        return set()
    allowed = _CONTEXT_NAMES | TEMPLATE_GLOBALS | extra
    for unknown in sorted(names - allowed):
        choices = ", ".join(sorted(_CONTEXT_NAMES | extra))
        problems.append(f"{where}: unknown variable {unknown!r} (available: {choices})")
    return steps


def _check_on_fail(
    spec: WorkflowSpec, upstream: Mapping[str, frozenset[str]], problems: list[str]
) -> None:
    for name, step in spec.steps.items():
        if isinstance(step, ValidateStep) and step.on_fail is not None:
            target = step.on_fail.retry_step
            if target not in spec.steps:
                problems.append(f"steps.{name}.on_fail.retry_step: unknown step {target!r}")
            elif target not in upstream[name]:
                problems.append(
                    f"steps.{name}.on_fail.retry_step: {target} does not run before {name}"
                )


def _check_reachable(spec: WorkflowSpec, problems: list[str]) -> None:
    """With an explicit output, every step must feed it or a step that has an effect."""
    if spec.output is None:
        return
    feeds: dict[str, set[str]] = {name: set(step.after) for name, step in spec.steps.items()}
    for name, step in spec.steps.items():
        for where, source, expression, extra in _templates_of(name, step):
            if expression or is_template(source):
                feeds[name] |= _reads(where, source, expression, extra, []) & set(spec.steps)
    useful: set[str] = set()
    # Steps with an effect of their own are useful even when nobody reads their output.
    frontier = [n for n, s in spec.steps.items() if isinstance(s, ValidateStep | ApprovalStep)]
    for where, source in _strings(spec.output, "output"):
        if is_template(source):
            frontier += _reads(where, source, False, frozenset(), []) & set(spec.steps)
    while frontier:
        name = frontier.pop()
        if name not in useful:
            useful.add(name)
            frontier.extend(feeds[name])
    for name in spec.steps:
        if name not in useful:
            problems.append(
                f"steps.{name}: unreachable: nothing reads its output (not the workflow "
                "output, no step reads it or runs after it)"
            )
