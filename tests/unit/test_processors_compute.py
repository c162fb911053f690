"""The transform and validate processors: templates over the run context, schema and rules."""

from __future__ import annotations

from typing import Any

import pytest

from processors import (
    InvalidParams,
    TemplateError,
    TemplateRenderError,
    TransformProcessor,
    ValidateProcessor,
    ValidationFailed,
    execute,
)
from tests.fakes.steps import DISPATCHED_AT, step_request
from topics import ConfigurationError, PermanentError, StepKind, StepStatus

CONTEXT: dict[str, Any] = {
    "input": {"ticket_id": "T-7", "text": "My order arrived broken", "refund_usd": 150},
    "steps": {
        "classify": {"output": {"category": "refund", "risk": "high"}, "status": "succeeded"},
        "draft": {"output": "We are sorry. A refund is on its way.", "status": "succeeded"},
    },
    "run": {"id": "run-1", "tenant": "acme", "workflow": "support-triage", "labels": {"a": "b"}},
}


async def _transform(output: Any, context: Any = CONTEXT) -> Any:
    request = step_request(StepKind.transform, {"output": output}, context)
    return (await TransformProcessor().run(request)).output


async def _validate(
    value: Any,
    schema: dict[str, Any] | None = None,
    rules: list[dict[str, str]] | None = None,
    context: Any = CONTEXT,
) -> Any:
    params = {"value": value, "schema": schema, "rules": rules or []}
    outcome = await ValidateProcessor().run(step_request(StepKind.validate, params, context))
    assert outcome.usage is None
    return outcome.output


# -- transform --------------------------------------------------------------------------------


async def test_transform_renders_every_template_in_the_output() -> None:
    output = await _transform(
        {
            "ticket_id": "{{ input.ticket_id }}",
            "category": "{{ steps.classify.output.category | upper }}",
            "classification": "{{ steps.classify.output }}",
            "double": "{{ input.refund_usd * 2 }}",
            "line": "Ticket {{ input.ticket_id }} in run {{ run.id }}",
            "plain": "no template",
            "list": ["{{ run.tenant }}", 3, None, True],
        }
    )
    assert output == {
        "ticket_id": "T-7",
        "category": "REFUND",
        "classification": {"category": "refund", "risk": "high"},
        "double": 300,
        "line": "Ticket T-7 in run run-1",
        "plain": "no template",
        "list": ["acme", 3, None, True],
    }


async def test_transform_output_may_be_a_single_value() -> None:
    assert await _transform("{{ steps.draft.output }}") == "We are sorry. A refund is on its way."
    assert await _transform(42) == 42


async def test_transform_fails_permanently_on_a_missing_value() -> None:
    with pytest.raises(TemplateRenderError, match="nope"):
        await _transform({"x": "{{ steps.nope.output }}"})


async def test_transform_refuses_a_template_that_does_not_compile() -> None:
    with pytest.raises(TemplateError):
        await _transform("{{ oops")


@pytest.mark.parametrize(
    ("params", "context", "fragment"),
    [
        ({"output": 1}, None, "the request has no context object"),
        ({"output": 1}, [1], "the request has no context object"),
        ({}, CONTEXT, "transform params: output: Field required"),
    ],
)
async def test_transform_refuses_requests_of_the_wrong_shape(
    params: Any, context: Any, fragment: str
) -> None:
    with pytest.raises(InvalidParams, match=fragment):
        await TransformProcessor().run(step_request(StepKind.transform, params, context))


# -- validate ---------------------------------------------------------------------------------


async def test_a_valid_value_is_the_output() -> None:
    value = await _validate(
        {"text": "{{ steps.draft.output }}", "category": "{{ steps.classify.output.category }}"},
        schema={
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string", "minLength": 10}},
        },
        rules=[{"check": "'password' not in value.text | lower", "message": "no passwords"}],
    )
    assert value == {"text": "We are sorry. A refund is on its way.", "category": "refund"}


async def test_schema_problems_name_their_path() -> None:
    with pytest.raises(ValidationFailed) as caught:
        await _validate(
            {"text": "x", "items": [1, "two"]},
            schema={
                "type": "object",
                "properties": {
                    "text": {"type": "string", "minLength": 3},
                    "items": {"type": "array", "items": {"type": "integer"}},
                },
            },
        )
    assert str(caught.value) == "value.items[1]: 'two' is not of type 'integer'; " + (
        "value.text: 'x' is too short"
    )
    assert caught.value.problems == (
        "value.items[1]: 'two' is not of type 'integer'",
        "value.text: 'x' is too short",
    )


async def test_every_problem_is_collected_and_joined() -> None:
    with pytest.raises(ValidationFailed) as caught:
        await _validate(
            "{{ steps.draft.output }}",
            schema={"type": "string", "maxLength": 10},
            rules=[
                {"check": "'refund' not in value", "message": "must not promise a refund"},
                {"check": "value | length > 5", "message": "too short"},
                {"check": "input.refund_usd < 100", "message": "refunds over $100 need a person"},
            ],
        )
    assert str(caught.value) == (
        "value: 'We are sorry. A refund is on its way.' is too long; "
        "must not promise a refund; "
        "refunds over $100 need a person"
    )
    assert isinstance(caught.value, PermanentError)
    assert not caught.value.retryable


async def test_rules_see_the_context_and_the_value() -> None:
    rules = [{"check": "value == steps.classify.output.category", "message": "mismatch"}]
    assert await _validate("refund", rules=rules) == "refund"
    with pytest.raises(ValidationFailed, match="^mismatch$"):
        await _validate("bug", rules=rules)


async def test_a_rule_that_cannot_run_is_a_problem_too() -> None:
    with pytest.raises(ValidationFailed) as caught:
        await _validate({"a": 1}, rules=[{"check": "value.b.c > 1", "message": "needs b.c"}])
    (problem,) = caught.value.problems
    assert problem.startswith("needs b.c (the check could not run: ")


async def test_a_problem_never_contains_the_separator() -> None:
    with pytest.raises(ValidationFailed) as caught:
        await _validate(
            1,
            rules=[
                {"check": "false", "message": "one; two"},
                {"check": "false", "message": "three"},
            ],
        )
    assert str(caught.value).split("; ") == ["one, two", "three"]


async def test_the_draft_is_the_one_the_schema_declares() -> None:
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "maximum": 10,
        "exclusiveMaximum": True,
    }
    assert await _validate(9, schema=draft4) == 9
    with pytest.raises(ValidationFailed, match="^value: 10 is greater than or equal to"):
        await _validate(10, schema=draft4)
    # the same keywords are not a valid 2020-12 schema (the default draft)
    with pytest.raises(
        ConfigurationError, match="not a valid JSON Schema: schema.exclusiveMaximum"
    ):
        await _validate(10, schema={"maximum": 10, "exclusiveMaximum": True})


async def test_formats_are_checked() -> None:
    with pytest.raises(ValidationFailed, match="is not a 'email'"):
        await _validate("not-an-address", schema={"type": "string", "format": "email"})


async def test_the_validation_failure_reaches_the_step_result_by_class_name() -> None:
    request = step_request(
        StepKind.validate,
        {"value": "{{ input.text }}", "schema": {"maxLength": 3}, "rules": []},
        CONTEXT,
    )
    result = await execute(ValidateProcessor(), request, worker="w", now=lambda: DISPATCHED_AT)
    assert result.status is StepStatus.failed
    assert result.error is not None
    assert result.error.error_class == "ValidationFailed"
    assert result.error.message == "value: 'My order arrived broken' is too long"
    assert result.error.retryable is False


async def test_a_value_that_does_not_render_is_not_a_validation_failure() -> None:
    with pytest.raises(TemplateRenderError):
        await _validate("{{ steps.missing.output }}", schema={"type": "string"})


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"schema": None}, "validate params: value: Field required"),
        ({"value": 1, "rules": [{"check": "true"}]}, "rules.0.message: Field required"),
        ({"value": 1, "schema": "string"}, "schema: Input should be a valid dictionary"),
    ],
)
async def test_validate_refuses_params_of_the_wrong_shape(params: Any, fragment: str) -> None:
    with pytest.raises(InvalidParams, match=fragment):
        await ValidateProcessor().run(step_request(StepKind.validate, params, CONTEXT))
