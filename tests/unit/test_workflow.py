"""Workflow loading: the format, graph checks, error messages, content-hash versions."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from streams.workflow import (
    WorkflowError,
    WorkflowSpec,
    load_workflow,
    parse_duration,
    parse_workflow,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support-triage.yaml"


def test_the_example_loads() -> None:
    workflow = load_workflow(EXAMPLE)
    assert workflow.name == "support-triage"
    assert workflow.order == ("classify", "draft_refund", "draft_answer", "reply", "check")
    assert workflow.upstream["check"] == {"classify", "draft_refund", "draft_answer", "reply"}
    assert workflow.sinks == ("check",)
    assert workflow.timeout("classify") == 120.0
    assert workflow.spec.budget.deadline == 600.0
    assert workflow.downstream("draft_answer") == {"reply", "check"}
    assert len(workflow.content_hash) == 64


def test_the_hash_pins_content_not_formatting() -> None:
    a = parse_workflow("workflow: w\nversion: 1\nsteps:\n  s: {kind: transform, output: 1}\n")
    b = parse_workflow(
        "# a comment\nversion: 1\nworkflow: w\nsteps:\n  s:\n    kind: transform\n    output: 1\n"
    )
    c = parse_workflow("workflow: w\nversion: 1\nsteps:\n  s: {kind: transform, output: 2}\n")
    assert a.content_hash == b.content_hash != c.content_hash


def test_input_schema_validator() -> None:
    workflow = load_workflow(EXAMPLE)
    assert workflow.input_validator.is_valid({"ticket_id": "1", "text": "hi"})
    errors = list(workflow.input_validator.iter_errors({"ticket_id": "1", "refund_usd": "lots"}))
    assert {e.message for e in errors} == {
        "'text' is a required property",
        "'lots' is not of type 'number'",
    }


def _problems(text: str) -> list[str]:
    with pytest.raises(WorkflowError) as caught:
        parse_workflow(text, "w.yaml")
    assert all(line.startswith("w.yaml: ") for line in str(caught.value).splitlines())
    return caught.value.problems


def test_unknown_steps_and_kinds() -> None:
    assert _problems(
        "workflow: w\nversion: 1\nsteps:\n"
        "  a: {kind: transform, output: 1}\n"
        "  b: {kind: transform, output: 1, after: [a, polcy]}\n"
    ) == ["steps.b.after: unknown step 'polcy' (steps: a, b)"]
    # Any other name is a custom kind (whether it is installed is checked at deploy), but
    # only a name a topic can carry.
    assert _problems("workflow: w\nversion: 1\nsteps:\n  a: {kind: SQL}\n") == [
        "steps.a.kind: 'SQL' is not a step kind name: use lower-case words of a-z 0-9 _ "
        "joined by dots, each starting with a letter (sentiment, acme.score)"
    ]
    assert _problems("workflow: w\nversion: 1\nsteps:\n  a: {output: 1}\n") == [
        "steps.a: missing `kind`; "
        "use one of: llm, agent, tool, retrieve, transform, validate, approval, or a custom kind"
    ]


def test_field_errors_name_step_and_field() -> None:
    problems = _problems(
        "workflow: w\nversion: 1\nsteps:\n"
        "  a: {kind: llm, model: fast}\n"
        "  b: {kind: llm, model: fast, prompt: hi, temperature: 9, colour: red}\n"
        "  c: {kind: transform, output: 1, timeout: soon}\n"
    )
    assert "steps.a: give either `prompt` (with an optional `system`) or `messages`" in problems
    assert "steps.b.temperature: Input should be less than or equal to 2" in problems
    assert "steps.b.colour: Extra inputs are not permitted" in problems
    assert any(p.startswith("steps.c.timeout: ") and "not a duration" in p for p in problems)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("a/b", "'a/b' is not a step name: '/' is not allowed (use a-z 0-9 _ -)"),
        ("Draft", "'Draft' is not a step name: it must start with a lower-case letter or a digit"),
        ("x" * 64, f"{'x' * 64!r} is not a step name: it has 64 characters (1 to 63)"),
    ],
)
def test_step_names_are_from_a_small_alphabet(name: str, problem: str) -> None:
    problems = _problems(
        f'workflow: w\nversion: 1\nsteps:\n  "{name}": {{kind: transform, output: 1}}\n'
    )
    assert any(p.endswith(problem) for p in problems), problems


def test_cycles_are_named() -> None:
    problems = _problems(
        "workflow: w\nversion: 1\nsteps:\n"
        "  a: {kind: transform, output: 1, after: [c]}\n"
        "  b: {kind: transform, output: 1, after: [a]}\n"
        "  c: {kind: transform, output: 1, after: [b]}\n"
    )
    assert problems == ["steps form a cycle: a -> c -> b -> a"]
    assert _problems(
        "workflow: w\nversion: 1\nsteps:\n  a: {kind: transform, output: 1, after: [a]}\n"
    ) == ["steps.a.after: a step cannot run after itself"]


def test_templates_may_only_read_steps_that_run_before() -> None:
    problems = _problems(
        "workflow: w\nversion: 1\nsteps:\n"
        "  a: {kind: llm, model: fast, prompt: '{{ steps.b.output }} {{ inptu.x }}'}\n"
        "  b: {kind: transform, output: '{{ steps.a.output }}', after: [a]}\n"
        "  c: {kind: transform, output: '{{ steps.zz.output }}', when: 'steps.a.output.ok'}\n"
    )
    assert problems == [
        "steps.a.prompt: unknown variable 'inptu' (available: input, run, steps)",
        "steps.a.prompt: reads steps.b, which does not run before a (add it to a.after)",
        "steps.c.when: reads steps.a, which does not run before c (add it to c.after)",
        "steps.c.output: reads steps.zz, which is not a step",
    ]


def test_template_syntax_errors_are_reported_at_load() -> None:
    problems = _problems(
        "workflow: w\nversion: 1\nsteps:\n  a: {kind: llm, model: fast, prompt: '{{ input.x '}\n"
    )
    assert len(problems) == 1 and problems[0].startswith("steps.a.prompt: template")


def test_unreachable_steps_and_on_fail_targets() -> None:
    problems = _problems(
        "workflow: w\nversion: 1\ninput: {type: objekt}\nsteps:\n"
        "  a: {kind: transform, output: 1}\n"
        "  lonely: {kind: transform, output: 2}\n"
        "  v: {kind: validate, after: [a], value: '{{ steps.a.output }}', schema: {type: integer},"
        " on_fail: {retry_step: lonely}}\n"
        "output: '{{ steps.a.output }}'\n"
    )
    assert problems == [
        "input: not a valid JSON Schema: 'objekt' is not valid under any of the given schemas",
        "steps.v.on_fail.retry_step: lonely does not run before v",
        "steps.lonely: unreachable: nothing reads its output (not the workflow output, "
        "no step reads it or runs after it)",
    ]


def test_bad_yaml_and_missing_files(tmp_path: Path) -> None:
    assert _problems("workflow: [unclosed")[0].startswith("not valid YAML")
    assert _problems("- a list") == ["a workflow is a mapping with workflow, version and steps"]
    with pytest.raises(WorkflowError, match="cannot read: No such file"):
        load_workflow(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("10m", 600.0), ("4h", 14400.0), ("250ms", 0.25)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-5s", 0, True, "10 parsecs"])
def test_bad_durations(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_the_editor_schema_in_docs_is_current() -> None:
    committed = json.loads((EXAMPLE.parents[1] / "docs" / "workflow.schema.json").read_text())
    assert committed == WorkflowSpec.model_json_schema(by_alias=True), (
        "run `baton workflows schema > docs/workflow.schema.json`"
    )


def test_the_editor_schema_accepts_the_example() -> None:
    schema = WorkflowSpec.model_json_schema(by_alias=True)
    document = yaml.safe_load(EXAMPLE.read_text())
    jsonschema.validate(document, schema)
