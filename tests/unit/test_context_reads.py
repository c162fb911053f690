"""A transform's or validate's request carries the part of the run context it reads."""

from __future__ import annotations

import pytest

from processors import step_reads
from streams.workflow import parse_workflow


@pytest.mark.parametrize(
    ("source", "expression", "reads"),
    [
        ("{{ steps.a.output }} and {{ steps['b'].output }}", False, {"a", "b"}),
        ("steps.a.output > 1 and input.x", True, {"a"}),
        ("{{ input.text }}", False, set()),
        ("{% for s in steps %}{{ s }}{% endfor %}", False, None),
        ("steps[name].output", True, None),
        ("{{ steps | tojson }}", False, None),
        ("{{ steps.a.output }}{{ steps | length }}", False, None),
    ],
)
def test_the_steps_a_template_reads_are_known_unless_it_reads_steps_as_a_whole(
    source: str, expression: bool, reads: set[str] | None
) -> None:
    found = step_reads(source, expression=expression)
    assert (set(found) if found is not None else None) == reads


WORKFLOW = """
workflow: reads
version: 1
input: {type: object}
steps:
  a: {kind: transform, output: 1}
  b: {kind: transform, output: 2}
  pick: {kind: transform, after: [a, b], output: {x: "{{ steps.b.output }}"}}
  loop: {kind: transform, after: [a, b], output: "{% for s in steps %}{{ s }}{% endfor %}"}
  check: {kind: validate, after: [a], value: "{{ input.v }}",
          rules: [{check: "value == steps.a.output", message: "no"}]}
"""


def test_a_workflow_knows_what_each_processor_step_reads() -> None:
    workflow = parse_workflow(WORKFLOW, "reads.yaml")
    pick = workflow.context_reads("pick")
    assert pick.steps == {"b"} and "input" not in pick.names
    assert workflow.context_reads("loop").steps is None
    check = workflow.context_reads("check")
    assert check.steps == {"a"} and {"input", "steps"} <= check.names
